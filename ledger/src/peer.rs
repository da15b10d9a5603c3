//! A peer without IO: the PBFT [`Replica`] wired to its executed [`Chain`], plus state
//! transfer, the admission of client requests, and the peer-to-peer [`Wire`] vocabulary. It
//! owns the loop "replica output → execute → feed back", which both the real host
//! ([`crate::node`]) and the simulator need, so they run the very same logic. It must not do
//! IO: it returns [`Effect`]s.
//!
//! Contract with the host: within the effects of one [`Peer::handle`] call, apply every
//! `Persist*` effect durably (in one store transaction) *before* carrying out any `Send` or
//! `Broadcast`, so nothing this peer has said or certified is forgotten by a crash. The host
//! must also name the sender of a [`PeerInput::Wire`] from an authenticated channel: the peer
//! trusts `from` to decide who may answer its state-transfer requests.
//!
//! The chain is shared read-only ([`SharedChain`]) so that queries are answered off the
//! consensus thread; only the peer writes it, for as long as one block takes to install.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use serde::{Deserialize, Serialize};

use crate::chain::{Block, CertifiedBlock, Chain, CommitCertificate, Genesis};
use crate::crypto::{Digest, KeyPair, PublicKey};
use crate::error::{Error, Result};
use crate::ids::{ReplicaId, SeqNo, Time};
use crate::pbft::{
    Config, Input, MAX_MESSAGE_BYTES, Message, Output, PersistentState, Replica, Restore,
};
use crate::tx::SignedTx;

/// Most blocks in one state-transfer reply.
pub const MAX_BLOCKS_PER_REPLY: u64 = 64;
/// Most bytes in one state-transfer reply: a quarter of the message limit, so a reply always
/// fits whatever the blocks hold (one block is at most a batch and its outcomes).
pub const MAX_REPLY_BYTES: usize = MAX_MESSAGE_BYTES / 4;
/// Most requests from identities not (yet) registered held back at once (see
/// [`Peer::handle`]); more are refused at once.
pub const MAX_PARKED: usize = 1024;
/// Most local faults remembered.
const MAX_FAULTS: usize = 64;

/// A peer's executed chain, written by the peer and read by query handlers.
pub type SharedChain = Arc<RwLock<Chain>>;

/// Reads a shared chain; a writer that panicked left it whole (every write is one block
/// appended or not), so a poisoned lock is still readable.
pub fn read_chain(chain: &SharedChain) -> RwLockReadGuard<'_, Chain> {
    chain.read().unwrap_or_else(PoisonError::into_inner)
}

/// Everything peers say to each other.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Wire {
    /// A signed consensus message.
    Consensus(Message),
    /// Client requests relayed to every replica (clients multicast, paper §4.1), as many as
    /// the sender gathered in one step.
    Requests(Vec<SignedTx>),
    /// Asks for blocks `from..=to` with their certificates (state transfer).
    FetchBlocks {
        /// First height.
        from: SeqNo,
        /// Last height.
        to: SeqNo,
    },
    /// Blocks answering a [`Wire::FetchBlocks`]; self-authenticating through certificates
    /// and hash links, so they need no signature of their own.
    Blocks(Vec<CertifiedBlock>),
}

/// What the host feeds into a peer.
#[derive(Debug, Clone)]
pub enum PeerInput {
    /// Transactions submitted by clients to this peer.
    Client(Vec<SignedTx>),
    /// Client requests relayed by other peers, gathered from one or more [`Wire::Requests`]
    /// so that their signatures are checked as one batch.
    Relayed(Vec<SignedTx>),
    /// A message from another peer.
    Wire {
        /// The sending peer (as the transport knows it).
        from: ReplicaId,
        /// The message.
        wire: Wire,
    },
    /// The current time.
    Tick(Time),
}

/// What a peer asks its host to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Send to one peer.
    Send {
        /// Destination.
        to: ReplicaId,
        /// Message.
        wire: Wire,
    },
    /// Send to every other peer.
    Broadcast(Wire),
    /// Persist [`Peer::persistent_state`].
    PersistState,
    /// Persist a newly executed block.
    PersistBlock(Box<Block>),
    /// Persist a block's certificate.
    PersistCertificate(CommitCertificate),
    /// Deliver a `Tick` at or after this time.
    SetTimer(Time),
    /// Block `seq` is certified: receipts of its transactions are available.
    Certified(SeqNo),
    /// A transaction of [`PeerInput::Client`] was refused before ordering (bad signature,
    /// over a limit, unknown or revoked signer).
    Rejected {
        /// The transaction id.
        id: Digest,
        /// Why.
        reason: String,
    },
}

/// A request held back because its signer is not a registered identity here yet.
#[derive(Debug, Clone)]
struct Parked {
    tx: SignedTx,
    /// Submitted by a client to this peer (answered when refused), or relayed by a peer.
    client: bool,
    since: Time,
}

/// One peer: replica, chain and state transfer.
#[derive(Debug)]
pub struct Peer {
    replica: Replica,
    chain: SharedChain,
    peers: Vec<PublicKey>,
    ledger: Digest,
    pending_certs: BTreeMap<SeqNo, CommitCertificate>,
    /// Blocks we hold without their certificate, with when we got them.
    uncertified: BTreeMap<SeqNo, Time>,
    target: Option<(SeqNo, Digest, Vec<ReplicaId>)>,
    /// State-transfer requests sent and not yet answered: to whom, which heights. Only those
    /// peers' replies, for those heights, are looked at.
    asked: BTreeMap<ReplicaId, (SeqNo, SeqNo)>,
    last_fetch: Time,
    fetch_round: usize,
    parked: VecDeque<Parked>,
    now: Time,
    faults: Vec<String>,
    refused: u64,
}

impl Peer {
    /// A peer at genesis. `cfg.peers` and `cfg.genesis` are overwritten from `genesis`.
    pub fn new(genesis: Genesis, mut cfg: Config, key: KeyPair) -> Result<Self> {
        genesis.validate()?;
        cfg.peers = genesis.peer_keys();
        cfg.genesis = genesis.hash();
        let peers = cfg.peers.clone();
        let ledger = cfg.genesis;
        Ok(Self {
            replica: Replica::new(cfg, key)?,
            chain: Arc::new(RwLock::new(Chain::new(genesis))),
            peers,
            ledger,
            pending_certs: BTreeMap::new(),
            uncertified: BTreeMap::new(),
            target: None,
            asked: BTreeMap::new(),
            last_fetch: Time(0),
            fetch_round: 0,
            parked: VecDeque::new(),
            now: Time(0),
            faults: Vec::new(),
            refused: 0,
        })
    }

    /// Rebuilds a peer from what its host persisted: blocks are re-executed and checked
    /// against their stored headers and certificates, then the replica gets its state back.
    pub fn restore(
        genesis: Genesis,
        cfg: Config,
        key: KeyPair,
        state: Option<PersistentState>,
        blocks: Vec<CertifiedBlock>,
    ) -> Result<(Self, Vec<Effect>)> {
        let mut peer = Self::new(genesis, cfg, key)?;
        let mut uncertified = Vec::new();
        let (executed, digest) = {
            let mut chain = peer.chain_mut();
            for cb in blocks {
                let height = cb.block.header.height;
                chain.apply_block(&cb.block)?;
                match cb.certificate {
                    Some(c) => chain.attach_certificate(c)?,
                    None => uncertified.push(height),
                }
            }
            (chain.height(), chain.head_hash())
        };
        peer.uncertified
            .extend(uncertified.into_iter().map(|h| (h, Time(0))));
        let restore = Restore {
            state,
            executed,
            digest,
        };
        let effects = peer.drive(VecDeque::from([Input::Restored(Box::new(restore))]));
        Ok((peer, effects))
    }

    /// The replica.
    pub fn replica(&self) -> &Replica {
        &self.replica
    }
    /// The executed chain (a read lock: drop it before handing the peer another input).
    pub fn chain(&self) -> RwLockReadGuard<'_, Chain> {
        read_chain(&self.chain)
    }
    /// The executed chain, to share with readers on other threads.
    pub fn shared_chain(&self) -> SharedChain {
        self.chain.clone()
    }
    fn chain_mut(&self) -> RwLockWriteGuard<'_, Chain> {
        self.chain.write().unwrap_or_else(PoisonError::into_inner)
    }
    /// What to persist on [`Effect::PersistState`].
    pub fn persistent_state(&self) -> PersistentState {
        self.replica.persistent_state()
    }
    /// Local faults seen (a certified block differing from ours). Never caused by another
    /// peer's messages alone: what a faulty peer sends is refused and counted in
    /// [`Peer::refused`].
    pub fn faults(&self) -> &[String] {
        &self.faults
    }
    /// Messages from other peers refused outside the PBFT core: unrequested, out-of-range or
    /// forged state-transfer replies.
    pub fn refused(&self) -> u64 {
        self.refused
    }
    /// Requests held back until their signer is registered here.
    pub fn parked(&self) -> usize {
        self.parked.len()
    }

    /// One input in, effects out.
    pub fn handle(&mut self, input: PeerInput) -> Vec<Effect> {
        let mut effects = Vec::new();
        let height = self.chain().height();
        let inputs = match input {
            PeerInput::Client(txs) => self.admit(txs, true, &mut effects),
            PeerInput::Relayed(txs) => self.admit(txs, false, &mut effects),
            PeerInput::Tick(now) => {
                self.now = self.now.max(now);
                self.expire_parked(&mut effects);
                self.retry_fetch(&mut effects);
                VecDeque::from([Input::Tick(now)])
            }
            PeerInput::Wire { from, wire } => match wire {
                Wire::Consensus(m) => VecDeque::from([Input::Message(m)]),
                Wire::Requests(txs) => self.admit(txs, false, &mut effects),
                Wire::FetchBlocks { from: lo, to } => {
                    // Only to the asker (the host authenticated `from`), and split to fit a
                    // message whatever the blocks hold.
                    let hi = SeqNo(to.0.min(lo.0.saturating_add(MAX_BLOCKS_PER_REPLY - 1)));
                    let blocks = self
                        .chain()
                        .certified_blocks_within(lo, hi, MAX_REPLY_BYTES);
                    if !blocks.is_empty() {
                        effects.push(Effect::Send {
                            to: from,
                            wire: Wire::Blocks(blocks),
                        });
                    }
                    VecDeque::new()
                }
                Wire::Blocks(blocks) => self.on_blocks(from, blocks, &mut effects),
            },
        };
        let more = self.drive(inputs);
        effects.extend(more);
        if self.chain().height() > height && !self.parked.is_empty() {
            self.release_parked(&mut effects);
        }
        effects
    }

    /// Lets requests of registered, unrevoked signers through to the replica and holds back
    /// the others: a transaction nobody may make is never ordered (it would otherwise take a
    /// place in a block and the audit trail for good). Held back, not refused at once, because
    /// a signer registered in a block this peer has not executed yet is only a moment away.
    fn admit(
        &mut self,
        txs: Vec<SignedTx>,
        client: bool,
        effects: &mut Vec<Effect>,
    ) -> VecDeque<Input> {
        let mut known = Vec::with_capacity(txs.len());
        {
            let chain = read_chain(&self.chain);
            for tx in txs {
                if chain.state().is_active(&tx.signer) {
                    known.push(tx);
                } else if self.parked.len() < MAX_PARKED {
                    self.parked.push_back(Parked {
                        tx,
                        client,
                        since: self.now,
                    });
                } else if client {
                    effects.push(Effect::Rejected {
                        id: tx.digest(),
                        reason: "too many requests from unregistered identities".into(),
                    });
                }
            }
        }
        if known.is_empty() {
            VecDeque::new()
        } else if client {
            VecDeque::from([Input::Request(known)])
        } else {
            VecDeque::from([Input::Relayed(known)])
        }
    }

    /// Hands the replica the held-back requests whose signer is now registered.
    fn release_parked(&mut self, effects: &mut Vec<Effect>) {
        let (mut client, mut relayed) = (Vec::new(), Vec::new());
        {
            let chain = read_chain(&self.chain);
            self.parked.retain(|p| {
                if !chain.state().is_active(&p.tx.signer) {
                    return true;
                }
                if p.client {
                    client.push(p.tx.clone());
                } else {
                    relayed.push(p.tx.clone());
                }
                false
            });
        }
        let mut inputs = VecDeque::new();
        if !relayed.is_empty() {
            inputs.push_back(Input::Relayed(relayed));
        }
        if !client.is_empty() {
            inputs.push_back(Input::Request(client));
        }
        effects.extend(self.drive(inputs));
    }

    /// Refuses held-back requests whose signer did not appear within a request timeout.
    fn expire_parked(&mut self, effects: &mut Vec<Effect>) {
        let limit = self.replica.config().request_timeout_ms;
        let now = self.now;
        while let Some(p) = self.parked.front() {
            if now < p.since.plus(limit) {
                break;
            }
            if let Some(p) = self.parked.pop_front()
                && p.client
            {
                effects.push(Effect::Rejected {
                    id: p.tx.digest(),
                    reason: "unknown or revoked identity".into(),
                });
            }
        }
    }

    fn fault(&mut self, f: String) {
        tracing::warn!(replica = self.replica.id().0, fault = %f);
        if self.faults.len() < MAX_FAULTS {
            self.faults.push(f);
        }
    }

    fn refuse(&mut self, from: ReplicaId, what: String) {
        self.refused += 1;
        tracing::debug!(replica = self.replica.id().0, %from, "refused: {what}");
    }

    fn drive(&mut self, mut inputs: VecDeque<Input>) -> Vec<Effect> {
        let mut effects = Vec::new();
        while let Some(input) = inputs.pop_front() {
            for out in self.replica.handle(input) {
                match out {
                    Output::Send { to, msg } => effects.push(Effect::Send {
                        to,
                        wire: Wire::Consensus(msg),
                    }),
                    Output::Broadcast(msg) => effects.push(Effect::Broadcast(Wire::Consensus(msg))),
                    Output::Relay(txs) => effects.push(Effect::Broadcast(Wire::Requests(txs))),
                    Output::Rejected { id, reason } => {
                        effects.push(Effect::Rejected { id, reason });
                    }
                    Output::Persist => effects.push(Effect::PersistState),
                    Output::SetTimer(t) => effects.push(Effect::SetTimer(t)),
                    Output::Committed {
                        seq,
                        digest,
                        batch,
                        ids,
                    } => self.on_committed(seq, digest, batch, &ids, &mut inputs, &mut effects),
                    Output::Certified { seq, digest, proof } => {
                        let cert = CommitCertificate::from_proof(seq, digest, &proof);
                        if seq <= self.chain().height() {
                            self.attach(cert, &mut effects);
                        } else {
                            self.pending_certs.insert(seq, cert);
                        }
                    }
                    Output::FetchState { seq, digest, peers } => {
                        let (height, have) = {
                            let chain = self.chain();
                            (chain.height(), chain.block(seq).map(|b| b.header.hash()))
                        };
                        if seq > height {
                            self.target = Some((seq, digest, peers));
                            self.last_fetch = Time(0);
                            self.retry_fetch(&mut effects);
                        } else if have == Some(digest) {
                            // Already have it (installed by an earlier transfer).
                            inputs.push_back(self.transferred(height, Vec::new()));
                        }
                    }
                }
            }
        }
        effects
    }

    /// Executes a committed batch (§4.2) and feeds the block hash back as the state digest.
    fn on_committed(
        &mut self,
        seq: SeqNo,
        digest: Digest,
        batch: crate::pbft::Batch,
        ids: &[Digest],
        inputs: &mut VecDeque<Input>,
        effects: &mut Vec<Effect>,
    ) {
        let applied = {
            let mut chain = self.chain_mut();
            if seq <= chain.height() {
                // Already installed by state transfer.
                match chain.block(seq) {
                    Some(b) if b.header.batch == digest => Ok(None),
                    _ => Err(format!(
                        "committed batch at {seq} differs from the transferred block"
                    )),
                }
            } else {
                chain
                    .apply_owned(seq, batch, ids)
                    .map(|b| Some(b.clone()))
                    .map_err(|e| format!("cannot execute {seq}: {e}"))
            }
        };
        match applied {
            Ok(Some(block)) => {
                let hash = block.header.hash();
                effects.push(Effect::PersistBlock(Box::new(block)));
                self.uncertified.insert(seq, self.now);
                inputs.push_back(Input::Executed { seq, digest: hash });
                if let Some(c) = self.pending_certs.remove(&seq) {
                    self.attach(c, effects);
                }
            }
            Ok(None) => {
                let hash = self.chain().block(seq).map(|b| b.header.hash());
                if let Some(digest) = hash {
                    inputs.push_back(Input::Executed { seq, digest });
                }
            }
            Err(f) => self.fault(f),
        }
    }

    fn attach(&mut self, cert: CommitCertificate, effects: &mut Vec<Effect>) {
        let seq = cert.height;
        let attached = {
            let mut chain = self.chain_mut();
            if chain.certificate(seq).is_some() {
                return;
            }
            chain.attach_certificate(cert.clone())
        };
        match attached {
            Ok(()) => {
                self.uncertified.remove(&seq);
                effects.push(Effect::PersistCertificate(cert));
                effects.push(Effect::Certified(seq));
            }
            Err(e) => self.fault(e.to_string()),
        }
    }

    fn transferred(&self, seq: SeqNo, txs: Vec<Digest>) -> Input {
        Input::StateTransferred {
            seq,
            digest: self.chain().head_hash(),
            txs,
        }
    }

    /// Sends a state-transfer request and remembers it: only its answer is accepted.
    fn ask(&mut self, to: ReplicaId, from: SeqNo, upto: SeqNo, effects: &mut Vec<Effect>) {
        self.asked.insert(to, (from, upto));
        effects.push(Effect::Send {
            to,
            wire: Wire::FetchBlocks { from, to: upto },
        });
    }

    /// Asks for what we miss: blocks up to the transfer target, and certificates of blocks
    /// the quorum has moved past.
    fn retry_fetch(&mut self, effects: &mut Vec<Effect>) {
        let retry = self.replica.config().retransmit_ms;
        if self.last_fetch != Time(0) && self.now < self.last_fetch.plus(retry) {
            return;
        }
        let n = self.peers.len() as u32;
        let me = self.replica.id();
        let height = self.chain().height();
        if let Some((seq, _, peers)) = &self.target {
            if *seq <= height {
                self.target = None;
            } else {
                let from = height.next();
                let to = SeqNo(seq.0.min(from.0 + MAX_BLOCKS_PER_REPLY - 1));
                let candidates: Vec<ReplicaId> =
                    peers.iter().copied().filter(|p| *p != me).collect();
                let pick = candidates
                    .get(self.fetch_round % candidates.len().max(1))
                    .copied();
                if let Some(to_peer) = pick {
                    self.ask(to_peer, from, to, effects);
                }
                self.fetch_round += 1;
                self.last_fetch = self.now.max(Time(1));
                return;
            }
        }
        // A block's certificate normally forms here from the commit votes within milliseconds.
        // One still missing after a retransmission period, or below the stable checkpoint,
        // will not: the votes were lost (a crash between persisting the block and its
        // certificate, dropped messages) and a quiet ledger sends no more. Without it this
        // peer could never serve those transactions' receipts, so it asks a peer for it.
        let low = self.replica.low_watermark();
        let now = self.now;
        let first = self
            .uncertified
            .iter()
            .find(|(seq, since)| **seq < low || now >= since.plus(retry))
            .map(|(seq, _)| *seq);
        if let Some(first) = first {
            let to_peer = ReplicaId((me.0 + 1 + (self.fetch_round as u32 % (n - 1))) % n);
            self.fetch_round += 1;
            self.last_fetch = self.now.max(Time(1));
            let upto = SeqNo(height.0.min(first.0 + MAX_BLOCKS_PER_REPLY - 1));
            self.ask(to_peer, first, upto, effects);
        }
    }

    /// Installs transferred blocks (TOCS §5.3). Only a reply to a request this peer sent, from
    /// the peer it asked and within the heights asked, is looked at. A contiguous run that
    /// links to our head by hashes and ends in a block certified by a quorum (or the checkpoint
    /// we were told to reach) authenticates every header of the run; each body must then match
    /// its header before it runs, and each block must reproduce its header exactly
    /// ([`Chain::apply_block`]).
    fn on_blocks(
        &mut self,
        from: ReplicaId,
        mut blocks: Vec<CertifiedBlock>,
        effects: &mut Vec<Effect>,
    ) -> VecDeque<Input> {
        let Some((lo, hi)) = self.asked.get(&from).copied() else {
            self.refuse(from, format!("{} blocks nobody asked it for", blocks.len()));
            return VecDeque::new();
        };
        blocks.sort_by_key(|b| b.block.header.height);
        let heights_ok = blocks
            .iter()
            .all(|b| b.block.header.height >= lo && b.block.header.height <= hi)
            && blocks
                .windows(2)
                .all(|w| w[0].block.header.height < w[1].block.header.height);
        if !heights_ok {
            self.refuse(
                from,
                format!("blocks outside the heights {lo}..={hi} asked"),
            );
            return VecDeque::new();
        }
        self.asked.remove(&from);
        // Certificates for blocks we already have.
        let height = self.chain().height();
        for cb in &blocks {
            let h = cb.block.header.height;
            if h <= height
                && self.chain().certificate(h).is_none()
                && let Some(c) = &cb.certificate
                && c.verify(&self.peers, &self.ledger).is_ok()
            {
                self.attach(c.clone(), effects);
            }
        }
        let start = height.next();
        let run: Vec<CertifiedBlock> = blocks
            .into_iter()
            .filter(|b| b.block.header.height >= start)
            .collect();
        // The run must be contiguous from our head and hash-linked.
        let mut prev = self.chain().head_hash();
        let mut anchor = None;
        for (i, cb) in run.iter().enumerate() {
            let h = &cb.block.header;
            if h.height.0 != start.0 + i as u64 || h.prev != prev {
                break;
            }
            prev = h.hash();
            let certified = cb.certificate.as_ref().is_some_and(|c| {
                c.block_hash == prev
                    && c.height == h.height
                    && c.verify(&self.peers, &self.ledger).is_ok()
            });
            let is_target = self
                .target
                .as_ref()
                .is_some_and(|(s, d, _)| *s == h.height && *d == prev);
            if certified || is_target {
                anchor = Some(i);
            }
        }
        let Some(last) = anchor else {
            // Nothing in the reply is certified or our target (a stale or duplicate reply,
            // or a peer that has not certified these blocks yet): nothing can be trusted.
            if !run.is_empty() {
                tracing::debug!(replica = self.replica.id().0, %from, "ignoring unanchored blocks");
            }
            return VecDeque::new();
        };
        let mut txs = Vec::new();
        for cb in run.into_iter().take(last + 1) {
            let height = cb.block.header.height;
            let applied = {
                let mut chain = self.chain_mut();
                chain
                    .apply_block(&cb.block)
                    .map(|()| chain.block(height).cloned())
            };
            let block = match applied {
                Ok(Some(block)) => block,
                Ok(None) => break,
                Err(Error::Verification(e)) => {
                    // The body is not what the certified header commits to: the sender is
                    // faulty. Nothing ran; ask someone else.
                    self.refuse(from, format!("transferred block {height}: {e}"));
                    break;
                }
                Err(e) => {
                    self.fault(format!("transferred block {height} from {from}: {e}"));
                    break;
                }
            };
            txs.extend(block.txs.iter().map(SignedTx::digest));
            // Our own execution of it, which reproduced the certified header.
            effects.push(Effect::PersistBlock(Box::new(block)));
            self.uncertified.insert(height, self.now);
            match cb
                .certificate
                .filter(|c| c.verify(&self.peers, &self.ledger).is_ok())
            {
                Some(c) => self.attach(c, effects),
                None => {
                    if let Some(c) = self.pending_certs.remove(&height) {
                        self.attach(c, effects);
                    }
                }
            }
        }
        // Keep fetching if the target is further.
        self.last_fetch = Time(0);
        self.retry_fetch(effects);
        if txs.is_empty() && self.chain().height() < start {
            return VecDeque::new();
        }
        VecDeque::from([self.transferred(self.chain().height(), txs)])
    }
}

/// Checks that a peer key file matches the genesis entry of `id`.
pub fn check_key(genesis: &Genesis, id: ReplicaId, key: &KeyPair) -> Result<()> {
    match genesis.peers.get(id.0 as usize) {
        Some(p) if p.public_key == key.public() => Ok(()),
        _ => Err(Error::Config(format!(
            "the key does not belong to {id} in the genesis"
        ))),
    }
}
