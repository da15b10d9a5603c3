//! Blocks, commit certificates, receipts and the genesis. A [`Chain`] applies committed batches
//! in order through the contracts, builds hash-chained blocks with an RFC 6962 transaction root
//! and a running RFC 6962 log root, attaches the `2f + 1` certificates, and answers queries and
//! receipts. It is pure and in memory; persisting blocks is the host's job and ordering them is
//! the PBFT core's. Everything here can be verified offline from the [`Genesis`] alone.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::contracts::{Outcome, Position, Query, State};
use crate::crypto::{Digest, Enc, PublicKey, Signature};
use crate::error::{Error, Result};
use crate::ids::{ReplicaId, SeqNo, Time, View, is_three_f_plus_one, max_faulty, quorum};
use crate::merkle::{self, Frontier};
use crate::pbft::{Batch, Checkpoint, Signed};
use crate::tx::{SignedQuery, SignedTx};

/// Longest chain id, admin name or peer address in a genesis, in bytes.
pub const MAX_GENESIS_TEXT: usize = 256;

/// A peer as the genesis lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// Replica index.
    pub id: ReplicaId,
    /// Its consensus key; also its TLS identity (an RFC 7250 raw public key) on both listeners.
    pub public_key: PublicKey,
    /// Its peer listener (`host:port`): mutual TLS, genesis peers only.
    pub address: String,
    /// Its client listener (`host:port`): TLS authenticated by `public_key`, for clients.
    pub client_address: String,
}

/// The ledger's founding document: the peers' keys and the first admin. Its hash identifies
/// the ledger; transactions name it, so they cannot be replayed on another ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Genesis {
    /// A name for humans.
    pub chain_id: String,
    /// The peers, indexed by replica id.
    pub peers: Vec<PeerInfo>,
    /// The first admin identity.
    pub admin: PublicKey,
    /// Its name.
    pub admin_name: String,
}

impl Genesis {
    /// The genesis hash (the state digest at sequence number 0).
    pub fn hash(&self) -> Digest {
        let mut e = Enc::new(b"emrflow-ledger/genesis/v1");
        e.bytes(self.chain_id.as_bytes())
            .u64(self.peers.len() as u64);
        for p in &self.peers {
            e.u32(p.id.0)
                .bytes(&p.public_key.0)
                .bytes(p.address.as_bytes())
                .bytes(p.client_address.as_bytes());
        }
        e.bytes(&self.admin.0).bytes(self.admin_name.as_bytes());
        e.hash()
    }

    /// The peers' public keys, by replica id.
    pub fn peer_keys(&self) -> Vec<PublicKey> {
        self.peers.iter().map(|p| p.public_key).collect()
    }

    /// Checks the peer list: `n = 3f + 1` peers (any other size tolerates no more faults than
    /// the `3f + 1` below it, and with the textbook quorum `2f + 1` two halves could both
    /// commit), indexed in order, with distinct, valid keys (a key listed twice would let one
    /// peer vote twice), and bounded strings.
    pub fn validate(&self) -> Result<()> {
        let n = self.peers.len();
        if !is_three_f_plus_one(n) {
            return Err(Error::Config(format!(
                "genesis lists {n} peers; pbft needs n = 3f + 1 (4, 7, 10, ...) peers"
            )));
        }
        let mut keys = std::collections::BTreeSet::new();
        for (i, p) in self.peers.iter().enumerate() {
            if p.id.0 as usize != i {
                return Err(Error::Config(format!("genesis peer {i} has id {}", p.id)));
            }
            if !keys.insert(p.public_key) {
                return Err(Error::Config(format!(
                    "genesis peer {i} has the same key as another peer"
                )));
            }
            if !crate::sigcheck::is_usable_key(&p.public_key) {
                return Err(Error::Config(format!(
                    "genesis peer {i} has an invalid or small-order key"
                )));
            }
            for (what, text) in [
                ("address", &p.address),
                ("client address", &p.client_address),
            ] {
                if text.len() > MAX_GENESIS_TEXT {
                    return Err(Error::Config(format!("genesis peer {i}: {what} too long")));
                }
            }
        }
        if !crate::sigcheck::is_usable_key(&self.admin) {
            return Err(Error::Config("the genesis admin key is invalid".into()));
        }
        if self.chain_id.len() > MAX_GENESIS_TEXT || self.admin_name.len() > MAX_GENESIS_TEXT {
            return Err(Error::Config(
                "genesis chain id or admin name too long".into(),
            ));
        }
        Ok(())
    }

    /// The faults the ledger tolerates, `f`.
    pub fn max_faulty(&self) -> usize {
        max_faulty(self.peers.len())
    }
}

/// A block header. Its hash is what `2f + 1` peers sign.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockHeader {
    /// Height (= PBFT sequence number).
    pub height: SeqNo,
    /// Hash of the previous header (the genesis hash for height 1).
    pub prev: Digest,
    /// Block time: the primary's batch time, never earlier than the previous block's.
    pub time: Time,
    /// The PBFT batch digest that committed.
    pub batch: Digest,
    /// Number of transactions.
    pub tx_count: u32,
    /// RFC 6962 root over this block's transaction leaves.
    pub tx_root: Digest,
    /// Transactions in the whole log after this block.
    pub log_size: u64,
    /// RFC 6962 root over every transaction leaf of the log so far.
    pub log_root: Digest,
}

impl BlockHeader {
    /// The block hash.
    pub fn hash(&self) -> Digest {
        let mut e = Enc::new(b"emrflow-ledger/block/v1");
        e.u64(self.height.0)
            .digest(&self.prev)
            .u64(self.time.0)
            .digest(&self.batch)
            .u32(self.tx_count)
            .digest(&self.tx_root)
            .u64(self.log_size)
            .digest(&self.log_root);
        e.hash()
    }
}

/// A block: header, transactions and their outcomes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    /// Header.
    pub header: BlockHeader,
    /// The batch timestamp the primary proposed (the header's time is clamped to be monotone).
    pub batch_time: Time,
    /// Transactions in execution order.
    pub txs: Vec<SignedTx>,
    /// Outcome of each transaction.
    pub outcomes: Vec<Outcome>,
}

/// The leaf of a transaction in the block tree and the log: its id bound to its outcome, so a
/// receipt proves whether the call was accepted or denied.
pub fn tx_leaf(tx_id: &Digest, outcome: &Outcome) -> Digest {
    let mut e = Enc::new(b"emrflow-ledger/leaf/v1");
    e.digest(tx_id);
    match outcome {
        Outcome::Accepted => e.u8(0),
        Outcome::Denied { reason } => e.u8(1).bytes(reason.as_bytes()),
        Outcome::Granted(d) => {
            e.u8(2);
            d.encode(&mut e);
            &mut e
        }
    };
    merkle::leaf_hash(e.finish())
}

impl Block {
    /// The leaves of the transaction tree.
    pub fn leaves(&self) -> Vec<Digest> {
        self.txs
            .iter()
            .zip(&self.outcomes)
            .map(|(tx, o)| tx_leaf(&tx.digest(), o))
            .collect()
    }

    /// Checks that the transactions are the ones the header's batch digest commits to, each
    /// validly signed by its client, and returns their ids. This needs no execution: a block
    /// whose header is authenticated and that passes is exactly what the quorum committed.
    pub fn check_batch(&self) -> Result<Vec<Digest>> {
        let bad =
            |reason: &str| Error::Verification(format!("block {}: {reason}", self.header.height.0));
        if self.txs.len() != self.header.tx_count as usize {
            return Err(bad("transaction count does not match the header"));
        }
        let ids: Vec<Digest> = self.txs.iter().map(SignedTx::digest).collect();
        if Batch::digest_of(self.batch_time, &ids) != self.header.batch {
            return Err(bad("transactions do not match the certified batch digest"));
        }
        if !SignedTx::verify_all(&self.txs).into_iter().all(|ok| ok) {
            return Err(bad("a transaction has a bad client signature"));
        }
        Ok(ids)
    }

    /// An upper bound of the bytes this block takes on the wire.
    pub fn wire_size(&self) -> usize {
        let outcomes: usize = self
            .outcomes
            .iter()
            .map(|o| match o {
                Outcome::Accepted => 1,
                Outcome::Denied { reason } => reason.len() + 11,
                Outcome::Granted(d) => d.wire_size(),
            })
            .sum();
        let txs: usize = self.txs.iter().map(SignedTx::wire_size).sum();
        // Header, batch time and length prefixes.
        256 + txs + outcomes
    }

    /// Checks that the header's transaction count and root match the body.
    pub fn check_body(&self) -> Result<()> {
        if self.txs.len() != self.outcomes.len() || self.txs.len() != self.header.tx_count as usize
        {
            return Err(Error::CorruptChain {
                seq: self.header.height,
                reason: "transaction count does not match the header".into(),
            });
        }
        if merkle::root(&self.leaves()) != self.header.tx_root {
            return Err(Error::CorruptChain {
                seq: self.header.height,
                reason: "transaction root does not match the header".into(),
            });
        }
        Ok(())
    }
}

/// A block executed but not yet appended, with what appending it changes.
#[derive(Debug)]
struct Executed {
    block: Block,
    leaves: Vec<Digest>,
    frontier: Frontier,
    positions: Vec<(Digest, Position)>,
}

/// `2f + 1` peer signatures over a block hash: the PBFT checkpoint messages for that height.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitCertificate {
    /// Height.
    pub height: SeqNo,
    /// Block hash.
    pub block_hash: Digest,
    /// `(peer, signature)` pairs.
    pub signatures: Vec<(ReplicaId, Signature)>,
}

impl CommitCertificate {
    /// Builds a certificate from checkpoint messages for one `(seq, digest)`.
    pub fn from_proof(seq: SeqNo, digest: Digest, proof: &[Signed<Checkpoint>]) -> Self {
        Self {
            height: seq,
            block_hash: digest,
            signatures: proof.iter().map(|m| (m.from, m.sig)).collect(),
        }
    }

    /// Checks a quorum (`2f + 1` of `n = 3f + 1`) of distinct valid peer signatures against the
    /// genesis keys `peers`, made for the ledger whose genesis hash is `ledger`.
    pub fn verify(&self, peers: &[PublicKey], ledger: &Digest) -> Result<()> {
        if !is_three_f_plus_one(peers.len()) {
            return Err(Error::Verification(format!(
                "{} peers is not n = 3f + 1",
                peers.len()
            )));
        }
        let keys: Vec<_> = peers.iter().filter_map(PublicKey::verifying_key).collect();
        if keys.len() != peers.len() {
            return Err(Error::Verification("a genesis peer key is invalid".into()));
        }
        let mut good = std::collections::BTreeSet::new();
        for (from, sig) in &self.signatures {
            let m = Signed {
                from: *from,
                body: Checkpoint {
                    seq: self.height,
                    digest: self.block_hash,
                },
                sig: *sig,
            };
            if m.verify(&keys, ledger) {
                good.insert(*from);
            }
        }
        let need = quorum(peers.len());
        if good.len() < need {
            return Err(Error::Verification(format!(
                "certificate of block {} has {} valid peer signatures, {need} needed",
                self.height.0,
                good.len()
            )));
        }
        Ok(())
    }
}

/// What a client keeps as proof that its transaction committed: verifiable offline against the
/// genesis with [`Receipt::verify`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// The transaction.
    pub tx: SignedTx,
    /// Its outcome.
    pub outcome: Outcome,
    /// Its index in the block.
    pub index: u32,
    /// RFC 6962 audit path from its leaf to the header's `tx_root`.
    pub proof: Vec<Digest>,
    /// The block header.
    pub header: BlockHeader,
    /// The commit certificate over the header's hash.
    pub certificate: CommitCertificate,
}

impl Receipt {
    /// The transaction id.
    pub fn tx_id(&self) -> Digest {
        self.tx.digest()
    }

    /// Checks everything offline: the client signature, the ledger id, the inclusion proof,
    /// the header hash and the `2f + 1` certificate against the genesis peer keys.
    pub fn verify(&self, genesis: &Genesis) -> Result<()> {
        if !self.tx.verify() {
            return Err(Error::Verification("bad client signature".into()));
        }
        let body = self.tx.body()?;
        if body.ledger != genesis.hash() {
            return Err(Error::Verification(
                "the transaction names another ledger".into(),
            ));
        }
        let leaf = tx_leaf(&self.tx.digest(), &self.outcome);
        if !merkle::verify_inclusion(
            u64::from(self.index),
            u64::from(self.header.tx_count),
            &leaf,
            &self.proof,
            &self.header.tx_root,
        ) {
            return Err(Error::Verification(
                "inclusion proof does not lead to the block's transaction root".into(),
            ));
        }
        let cert = &self.certificate;
        if cert.height != self.header.height || cert.block_hash != self.header.hash() {
            return Err(Error::Verification(
                "certificate is not for this block header".into(),
            ));
        }
        cert.verify(&genesis.peer_keys(), &genesis.hash())
    }
}

/// The head of a chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    /// Height.
    pub height: SeqNo,
    /// Hash of the last block (the genesis hash at height 0).
    pub hash: Digest,
    /// Transactions in the log.
    pub log_size: u64,
    /// RFC 6962 root of the log.
    pub log_root: Digest,
    /// Highest height with a certificate.
    pub certified: SeqNo,
    /// The consensus view the answering peer is in (0 where only a chain, not a running peer,
    /// answers).
    pub view: View,
}

/// A block with its certificate, as state transfer and the store carry it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertifiedBlock {
    /// The block.
    pub block: Block,
    /// Its certificate, once known.
    pub certificate: Option<CommitCertificate>,
}

/// The answer to a [`Query`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueryResult {
    /// An anchor.
    Anchor(Option<Box<crate::contracts::AnchorRecord>>),
    /// Every anchor of a root.
    Anchors(Vec<crate::contracts::AnchorRecord>),
    /// A lineage DAG.
    Lineage(crate::contracts::Lineage),
    /// Audit events.
    Audit(Vec<crate::contracts::AuditEvent>),
    /// An identity.
    Identity(Option<crate::contracts::Identity>),
    /// The head.
    Head(Head),
    /// A receipt, once the transaction's block is certified.
    Receipt(Option<Box<Receipt>>),
    /// Record grants.
    RecordGrants(Vec<crate::contracts::RecordGrant>),
}

/// The executed chain of one peer.
#[derive(Debug, Clone)]
pub struct Chain {
    genesis: Genesis,
    genesis_hash: Digest,
    state: State,
    blocks: Vec<Block>,
    leaves: Vec<Vec<Digest>>,
    certs: BTreeMap<SeqNo, CommitCertificate>,
    log_leaves: Vec<Digest>,
    frontier: Frontier,
    tx_index: BTreeMap<Digest, Position>,
}

impl Chain {
    /// An empty chain.
    pub fn new(genesis: Genesis) -> Self {
        let genesis_hash = genesis.hash();
        Self {
            state: State::new(genesis_hash, genesis.admin, &genesis.admin_name),
            genesis,
            genesis_hash,
            blocks: Vec::new(),
            leaves: Vec::new(),
            certs: BTreeMap::new(),
            log_leaves: Vec::new(),
            frontier: Frontier::default(),
            tx_index: BTreeMap::new(),
        }
    }

    /// The genesis.
    pub fn genesis(&self) -> &Genesis {
        &self.genesis
    }
    /// The genesis hash.
    pub fn genesis_hash(&self) -> Digest {
        self.genesis_hash
    }
    /// The contract state.
    pub fn state(&self) -> &State {
        &self.state
    }
    /// Height of the last block.
    pub fn height(&self) -> SeqNo {
        SeqNo(self.blocks.len() as u64)
    }
    /// Hash of the last block, or the genesis hash.
    pub fn head_hash(&self) -> Digest {
        self.blocks
            .last()
            .map_or(self.genesis_hash, |b| b.header.hash())
    }
    /// A block by height.
    pub fn block(&self, height: SeqNo) -> Option<&Block> {
        let i = usize::try_from(height.0).ok()?.checked_sub(1)?;
        self.blocks.get(i)
    }
    /// A certificate by height.
    pub fn certificate(&self, height: SeqNo) -> Option<&CommitCertificate> {
        self.certs.get(&height)
    }
    /// Blocks `from..=to` with their certificates.
    pub fn certified_blocks(&self, from: SeqNo, to: SeqNo) -> Vec<CertifiedBlock> {
        self.certified_blocks_within(from, to, usize::MAX)
    }

    /// Blocks `from..=to` with their certificates, stopping before the total wire size would
    /// pass `budget` bytes (but always at least the first block, which fits any budget of at
    /// least one block's bound).
    pub fn certified_blocks_within(
        &self,
        from: SeqNo,
        to: SeqNo,
        budget: usize,
    ) -> Vec<CertifiedBlock> {
        let mut out = Vec::new();
        let mut used = 0usize;
        for h in from.0.max(1)..=to.0.min(self.height().0) {
            let h = SeqNo(h);
            let Some(block) = self.block(h) else { break };
            let size = block.wire_size() + 128 + 100 * self.genesis.peers.len();
            if !out.is_empty() && used.saturating_add(size) > budget {
                break;
            }
            used = used.saturating_add(size);
            out.push(CertifiedBlock {
                block: block.clone(),
                certificate: self.certs.get(&h).cloned(),
            });
        }
        out
    }

    /// The head.
    pub fn head(&self) -> Head {
        Head {
            height: self.height(),
            hash: self.head_hash(),
            log_size: self.frontier.size(),
            log_root: self.frontier.root(),
            certified: self.certs.keys().next_back().copied().unwrap_or(SeqNo(0)),
            view: View(0),
        }
    }

    /// Executes the batch committed at `seq` and appends its block.
    pub fn apply(&mut self, seq: SeqNo, batch: &Batch) -> Result<&Block> {
        let ids = batch.ids();
        self.apply_owned(seq, batch.clone(), &ids)
    }

    /// [`Chain::apply`] for a batch the caller gives away, whose transaction ids it knows
    /// (the replica hashed them when it accepted the batch).
    pub fn apply_owned(&mut self, seq: SeqNo, batch: Batch, ids: &[Digest]) -> Result<&Block> {
        let executed = self.execute(seq, batch, ids)?;
        Ok(self.append(executed))
    }

    /// Runs a batch through the contracts and builds its block, without appending it: the
    /// contract state changes (journaled if it is staged), nothing else does.
    fn execute(&mut self, seq: SeqNo, batch: Batch, ids: &[Digest]) -> Result<Executed> {
        if ids.len() != batch.txs.len() {
            return Err(Error::Invariant(format!(
                "block {}: {} ids for {} transactions",
                seq.0,
                ids.len(),
                batch.txs.len()
            )));
        }
        if seq != self.height().next() {
            return Err(Error::Invariant(format!(
                "block {} applied at height {}",
                seq.0,
                self.height().0
            )));
        }
        let prev_time = self.blocks.last().map_or(Time(0), |b| b.header.time);
        let time = prev_time.max(batch.timestamp);
        let mut outcomes = Vec::with_capacity(batch.txs.len());
        let mut leaves = Vec::with_capacity(batch.txs.len());
        let mut positions = Vec::with_capacity(batch.txs.len());
        for (i, (tx, id)) in batch.txs.iter().zip(ids).enumerate() {
            let position = Position {
                seq,
                index: i as u32,
            };
            let outcome = self.state.execute_known(tx, *id, position, time);
            leaves.push(tx_leaf(id, &outcome));
            positions.push((*id, position));
            outcomes.push(outcome);
        }
        let mut frontier = self.frontier.clone();
        for l in &leaves {
            frontier.push(*l);
        }
        let header = BlockHeader {
            height: seq,
            prev: self.head_hash(),
            time,
            batch: Batch::digest_of(batch.timestamp, ids),
            tx_count: batch.txs.len() as u32,
            tx_root: merkle::root(&leaves),
            log_size: frontier.size(),
            log_root: frontier.root(),
        };
        Ok(Executed {
            block: Block {
                header,
                batch_time: batch.timestamp,
                txs: batch.txs,
                outcomes,
            },
            leaves,
            frontier,
            positions,
        })
    }

    /// Appends an executed block.
    fn append(&mut self, executed: Executed) -> &Block {
        let Executed {
            block,
            leaves,
            frontier,
            positions,
        } = executed;
        for (id, position) in positions {
            self.tx_index.entry(id).or_insert(position);
        }
        self.log_leaves.extend_from_slice(&leaves);
        self.frontier = frontier;
        self.leaves.push(leaves);
        self.blocks.push(block);
        &self.blocks[self.blocks.len() - 1]
    }

    /// Installs a block received from elsewhere (state transfer, or this peer's own store on
    /// restart) whose header the caller has authenticated (a certificate, or a hash link to a
    /// certified header). Before anything runs, the body must be the one the header commits
    /// to: the header links to our head, and the transactions carry valid client signatures
    /// and hash to the certified batch digest. Then the block executes on a staged state, kept
    /// only if it reproduces the header exactly; otherwise the state is rolled back and the
    /// chain is as it was.
    pub fn apply_block(&mut self, block: &Block) -> Result<()> {
        let seq = block.header.height;
        if seq != self.height().next() {
            return Err(Error::Invariant(format!(
                "block {} offered at height {}",
                seq.0,
                self.height().0
            )));
        }
        if block.header.prev != self.head_hash() {
            return Err(Error::CorruptChain {
                seq,
                reason: "does not link to the previous block".into(),
            });
        }
        let ids = block.check_batch()?;
        let batch = Batch {
            timestamp: block.batch_time,
            txs: block.txs.clone(),
        };
        self.state.stage();
        let executed = match self.execute(seq, batch, &ids) {
            Ok(e) => e,
            Err(e) => {
                self.state.rollback();
                return Err(e);
            }
        };
        if executed.block.header != block.header {
            self.state.rollback();
            // Our own state must differ from the quorum's: a local fault, never the block's
            // (its body was checked against the certified digest above).
            return Err(Error::CorruptChain {
                seq,
                reason: "re-execution does not reproduce the block".into(),
            });
        }
        self.state.keep();
        self.append(executed);
        Ok(())
    }

    /// Attaches a certificate to a block that exists and matches.
    pub fn attach_certificate(&mut self, cert: CommitCertificate) -> Result<()> {
        let Some(block) = self.block(cert.height) else {
            return Err(Error::Invariant(format!(
                "certificate for missing block {}",
                cert.height.0
            )));
        };
        if block.header.hash() != cert.block_hash {
            return Err(Error::CorruptChain {
                seq: cert.height,
                reason: "local block differs from the certified block".into(),
            });
        }
        self.certs.insert(cert.height, cert);
        Ok(())
    }

    fn block_leaves(&self, height: SeqNo) -> Option<&[Digest]> {
        let i = usize::try_from(height.0).ok()?.checked_sub(1)?;
        self.leaves.get(i).map(Vec::as_slice)
    }

    /// The receipt of a transaction, once its block is certified.
    pub fn receipt(&self, tx_id: &Digest) -> Option<Receipt> {
        let pos = self.tx_index.get(tx_id)?;
        let block = self.block(pos.seq)?;
        let certificate = self.certs.get(&pos.seq)?.clone();
        let i = pos.index as usize;
        Some(Receipt {
            tx: block.txs.get(i)?.clone(),
            outcome: block.outcomes.get(i)?.clone(),
            index: pos.index,
            proof: merkle::inclusion_proof(i, self.block_leaves(pos.seq)?),
            header: block.header.clone(),
            certificate,
        })
    }

    /// The receipts of every transaction of a certified block, built in one pass.
    pub fn block_receipts(&self, height: SeqNo) -> Vec<Receipt> {
        let (Some(block), Some(cert), Some(leaves)) = (
            self.block(height),
            self.certs.get(&height),
            self.block_leaves(height),
        ) else {
            return Vec::new();
        };
        merkle::all_inclusion_proofs(leaves)
            .into_iter()
            .zip(block.txs.iter().zip(&block.outcomes))
            .enumerate()
            .map(|(i, (proof, (tx, outcome)))| Receipt {
                tx: tx.clone(),
                outcome: outcome.clone(),
                index: i as u32,
                proof,
                header: block.header.clone(),
                certificate: cert.clone(),
            })
            .collect()
    }

    /// Where a transaction committed.
    pub fn position(&self, tx_id: &Digest) -> Option<Position> {
        self.tx_index.get(tx_id).copied()
    }

    /// RFC 6962 consistency proof between two log sizes.
    pub fn consistency_proof(&self, old_size: u64, new_size: u64) -> Option<Vec<Digest>> {
        let new = usize::try_from(new_size).ok()?;
        let old = usize::try_from(old_size).ok()?;
        (old <= new && new <= self.log_leaves.len())
            .then(|| merkle::consistency_proof(old, &self.log_leaves[..new]))
    }

    /// RFC 6962 root of the first `size` log leaves.
    pub fn log_root_at(&self, size: u64) -> Option<Digest> {
        let size = usize::try_from(size).ok()?;
        (size <= self.log_leaves.len()).then(|| merkle::root(&self.log_leaves[..size]))
    }

    /// Answers a signed query: the signature and the ledger are checked, then whether the
    /// signer may ask it ([`State::authorize_query`]).
    /// A token in a query for another identity must be valid at `now`, the peer's clock.
    pub fn answer(&self, q: &SignedQuery, now: Time) -> Result<QueryResult> {
        let body = q.open(&self.genesis_hash)?;
        self.state
            .authorize_query(&q.signer, &body.query, now)
            .map_err(Error::Denied)?;
        Ok(self.query(&body.query))
    }

    /// Answers a query from this chain's state, for a caller that has authorized it.
    pub fn query(&self, q: &Query) -> QueryResult {
        match q {
            Query::Anchors(root) => QueryResult::Anchors(self.state.anchors(root).to_vec()),
            Query::Anchor(root) => {
                QueryResult::Anchor(self.state.anchor(root).cloned().map(Box::new))
            }
            Query::Lineage { root, max_depth } => {
                QueryResult::Lineage(self.state.lineage(root, *max_depth))
            }
            Query::Audit {
                subject,
                actor,
                from,
                to,
            } => QueryResult::Audit(
                self.state
                    .audit(subject.as_ref(), actor.as_ref(), *from, *to),
            ),
            Query::Identity(k) => QueryResult::Identity(self.state.identity(k).cloned()),
            Query::Head => QueryResult::Head(self.head()),
            Query::Receipt(id) => QueryResult::Receipt(self.receipt(id).map(Box::new)),
            Query::RecordAudit {
                patient,
                actor,
                break_glass,
                from,
                to,
            } => QueryResult::Audit(self.state.record_audit(
                patient.as_ref(),
                actor.as_ref(),
                *break_glass,
                *from,
                *to,
            )),
            Query::RecordGrants(grantee) => {
                QueryResult::RecordGrants(self.state.record_grants(grantee.as_ref()))
            }
            Query::As { query, .. } => self.query(query),
        }
    }
}

/// Re-checks a sequence of stored blocks from genesis: hash chaining, transaction roots, the
/// running log root, and each certificate against the genesis keys. Returns the first bad
/// block.
pub fn verify_chain(genesis: &Genesis, blocks: &[CertifiedBlock]) -> Result<Head> {
    let keys = genesis.peer_keys();
    let ledger = genesis.hash();
    let mut prev = ledger;
    let mut frontier = Frontier::default();
    let mut prev_time = Time(0);
    let mut certified = SeqNo(0);
    for (i, cb) in blocks.iter().enumerate() {
        let b = &cb.block;
        let h = &b.header;
        let bad = |reason: String| Error::CorruptChain {
            seq: h.height,
            reason,
        };
        if h.height != SeqNo(i as u64 + 1) {
            return Err(bad(format!("expected height {}", i + 1)));
        }
        if h.prev != prev {
            return Err(bad("does not link to the previous block".into()));
        }
        if h.time < prev_time {
            return Err(bad("time goes backwards".into()));
        }
        b.check_body()?;
        b.check_batch().map_err(|e| bad(e.to_string()))?;
        for leaf in b.leaves() {
            frontier.push(leaf);
        }
        if frontier.size() != h.log_size || frontier.root() != h.log_root {
            return Err(bad("log root does not match the transactions".into()));
        }
        let hash = h.hash();
        if let Some(c) = &cb.certificate {
            if c.block_hash != hash || c.height != h.height {
                return Err(bad("certificate is for another block".into()));
            }
            c.verify(&keys, &ledger).map_err(|e| bad(e.to_string()))?;
            certified = h.height;
        }
        prev = hash;
        prev_time = h.time;
    }
    Ok(Head {
        height: SeqNo(blocks.len() as u64),
        hash: prev,
        log_size: frontier.size(),
        log_root: frontier.root(),
        certified,
        view: View(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contracts::{Access, Call};
    use crate::crypto::KeyPair;
    use crate::tx::TxBody;

    fn genesis() -> Genesis {
        Genesis {
            chain_id: "t".into(),
            peers: (0..4)
                .map(|i| PeerInfo {
                    id: ReplicaId(i),
                    public_key: KeyPair::from_label(&format!("p{i}")).public(),
                    address: String::new(),
                    client_address: String::new(),
                })
                .collect(),
            admin: KeyPair::from_label("admin").public(),
            admin_name: "admin".into(),
        }
    }

    fn batch(g: &Genesis, from: u64, n: u64) -> Batch {
        let key = KeyPair::from_label("admin");
        Batch {
            timestamp: Time(from),
            txs: (from..from + n)
                .map(|i| {
                    SignedTx::sign(
                        &key,
                        &TxBody {
                            ledger: g.hash(),
                            nonce: i,
                            call: Call::RecordAccess {
                                subject: Digest::ZERO,
                                access: Access::Read,
                                purpose: String::new(),
                            },
                        },
                    )
                    .expect("sign")
                })
                .collect(),
        }
    }

    #[test]
    fn headers_are_linked_by_log_consistency_proofs() {
        let g = genesis();
        let mut chain = Chain::new(g.clone());
        let mut headers = Vec::new();
        let mut next = 0;
        for (h, size) in [3u64, 1, 5, 0, 7].into_iter().enumerate() {
            let b = batch(&g, next, size);
            next += size;
            let header = chain
                .apply(SeqNo(h as u64 + 1), &b)
                .expect("apply")
                .header
                .clone();
            headers.push(header);
        }
        for a in &headers {
            for b in &headers {
                if a.log_size > b.log_size {
                    continue;
                }
                let proof = chain
                    .consistency_proof(a.log_size, b.log_size)
                    .expect("proof");
                assert!(merkle::verify_consistency(
                    a.log_size,
                    b.log_size,
                    &a.log_root,
                    &b.log_root,
                    &proof
                ));
            }
        }
        // Every block's receipts, built in one pass, match one-by-one receipts once certified.
        let keys: Vec<KeyPair> = (0..4)
            .map(|i| KeyPair::from_label(&format!("p{i}")))
            .collect();
        let h = &headers[2];
        let proof: Vec<Signed<Checkpoint>> = keys
            .iter()
            .take(3)
            .enumerate()
            .map(|(i, k)| {
                Signed::new(
                    k,
                    &g.hash(),
                    ReplicaId(i as u32),
                    Checkpoint {
                        seq: h.height,
                        digest: h.hash(),
                    },
                )
            })
            .collect();
        chain
            .attach_certificate(CommitCertificate::from_proof(h.height, h.hash(), &proof))
            .expect("attach");
        let all = chain.block_receipts(h.height);
        assert_eq!(all.len(), 5);
        for r in &all {
            r.verify(&g).expect("receipt");
            assert_eq!(Some(r.clone()), chain.receipt(&r.tx_id()));
        }
        let blocks = chain.certified_blocks(SeqNo(1), chain.height());
        let head = verify_chain(&g, &blocks).expect("chain");
        assert_eq!(head.hash, chain.head_hash());
        assert_eq!(head.certified, h.height);
    }
}
