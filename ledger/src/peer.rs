//! A peer without IO: the PBFT [`Replica`] wired to its executed [`Chain`], plus state
//! transfer and the peer-to-peer [`Wire`] vocabulary. It owns the loop "replica output →
//! execute → feed back", which both the real host ([`crate::node`]) and the simulator need, so
//! they run the very same logic. It must not do IO: it returns [`Effect`]s.
//!
//! Contract with the host: within the effects of one [`Peer::handle`] call, apply every
//! `Persist*` effect durably (in one store transaction) *before* carrying out any `Send` or
//! `Broadcast`, so nothing this peer has said or certified is forgotten by a crash.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::chain::{Block, CertifiedBlock, Chain, CommitCertificate, Genesis};
use crate::crypto::{Digest, KeyPair};
use crate::error::{Error, Result};
use crate::ids::{ReplicaId, SeqNo, Time};
use crate::pbft::{Config, Input, Message, Output, PersistentState, Replica, Restore};
use crate::tx::SignedTx;

/// Most blocks in one state-transfer reply.
pub const MAX_BLOCKS_PER_REPLY: u64 = 64;

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
    /// A transaction of [`PeerInput::Client`] was dropped for a bad signature.
    Rejected(Digest),
}

/// One peer: replica, chain and state transfer.
#[derive(Debug)]
pub struct Peer {
    replica: Replica,
    chain: Chain,
    peers: Vec<crate::crypto::PublicKey>,
    pending_certs: BTreeMap<SeqNo, CommitCertificate>,
    /// Blocks we hold without their certificate, with when we got them.
    uncertified: BTreeMap<SeqNo, Time>,
    target: Option<(SeqNo, Digest, Vec<ReplicaId>)>,
    last_fetch: Time,
    fetch_round: usize,
    now: Time,
    faults: Vec<String>,
}

impl Peer {
    /// A peer at genesis. `cfg.peers` and `cfg.genesis` are overwritten from `genesis`.
    pub fn new(genesis: Genesis, mut cfg: Config, key: KeyPair) -> Result<Self> {
        genesis.validate()?;
        cfg.peers = genesis.peer_keys();
        cfg.genesis = genesis.hash();
        let peers = cfg.peers.clone();
        Ok(Self {
            replica: Replica::new(cfg, key)?,
            chain: Chain::new(genesis),
            peers,
            pending_certs: BTreeMap::new(),
            uncertified: BTreeMap::new(),
            target: None,
            last_fetch: Time(0),
            fetch_round: 0,
            now: Time(0),
            faults: Vec::new(),
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
        for cb in blocks {
            let height = cb.block.header.height;
            peer.chain.apply_block(&cb.block)?;
            match cb.certificate {
                Some(c) => peer.chain.attach_certificate(c)?,
                None => {
                    peer.uncertified.insert(height, Time(0));
                }
            }
        }
        let restore = Restore {
            state,
            executed: peer.chain.height(),
            digest: peer.chain.head_hash(),
        };
        let effects = peer.drive(VecDeque::from([Input::Restored(Box::new(restore))]));
        Ok((peer, effects))
    }

    /// The replica.
    pub fn replica(&self) -> &Replica {
        &self.replica
    }
    /// The executed chain.
    pub fn chain(&self) -> &Chain {
        &self.chain
    }
    /// What to persist on [`Effect::PersistState`].
    pub fn persistent_state(&self) -> PersistentState {
        self.replica.persistent_state()
    }
    /// Local faults seen (a certified block differing from ours, a bad transfer).
    pub fn faults(&self) -> &[String] {
        &self.faults
    }

    /// One input in, effects out.
    pub fn handle(&mut self, input: PeerInput) -> Vec<Effect> {
        let mut effects = Vec::new();
        let inputs = match input {
            PeerInput::Client(txs) => VecDeque::from([Input::Request(txs)]),
            PeerInput::Relayed(txs) => VecDeque::from([Input::Relayed(txs)]),
            PeerInput::Tick(now) => {
                self.now = self.now.max(now);
                self.retry_fetch(&mut effects);
                VecDeque::from([Input::Tick(now)])
            }
            PeerInput::Wire { from, wire } => match wire {
                Wire::Consensus(m) => VecDeque::from([Input::Message(m)]),
                Wire::Requests(txs) => VecDeque::from([Input::Relayed(txs)]),
                Wire::FetchBlocks { from: lo, to } => {
                    let hi = SeqNo(to.0.min(lo.0.saturating_add(MAX_BLOCKS_PER_REPLY - 1)));
                    let blocks = self.chain.certified_blocks(lo, hi);
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
        effects
    }

    fn fault(&mut self, f: String) {
        tracing::warn!(replica = self.replica.id().0, fault = %f);
        self.faults.push(f);
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
                    Output::Rejected(d) => effects.push(Effect::Rejected(d)),
                    Output::Persist => effects.push(Effect::PersistState),
                    Output::SetTimer(t) => effects.push(Effect::SetTimer(t)),
                    Output::Committed {
                        seq,
                        digest,
                        batch,
                        ids,
                    } => {
                        if seq <= self.chain.height() {
                            // Already installed by state transfer.
                            match self.chain.block(seq) {
                                Some(b) if b.header.batch == digest => {
                                    inputs.push_back(Input::Executed {
                                        seq,
                                        digest: b.header.hash(),
                                    });
                                }
                                _ => self.fault(format!(
                                    "committed batch at {seq} differs from the transferred block"
                                )),
                            }
                            continue;
                        }
                        match self.chain.apply_owned(seq, batch, &ids) {
                            Ok(block) => {
                                let hash = block.header.hash();
                                effects.push(Effect::PersistBlock(Box::new(block.clone())));
                                self.uncertified.insert(seq, self.now);
                                inputs.push_back(Input::Executed { seq, digest: hash });
                                if let Some(c) = self.pending_certs.remove(&seq) {
                                    self.attach(c, &mut effects);
                                }
                            }
                            Err(e) => self.fault(format!("cannot execute {seq}: {e}")),
                        }
                    }
                    Output::Certified { seq, digest, proof } => {
                        let cert = CommitCertificate::from_proof(seq, digest, &proof);
                        if seq <= self.chain.height() {
                            self.attach(cert, &mut effects);
                        } else {
                            self.pending_certs.insert(seq, cert);
                        }
                    }
                    Output::FetchState { seq, digest, peers } => {
                        if seq > self.chain.height() {
                            self.target = Some((seq, digest, peers));
                            self.last_fetch = Time(0);
                            self.retry_fetch(&mut effects);
                        } else if self.chain.block(seq).map(|b| b.header.hash()) == Some(digest) {
                            // Already have it (installed by an earlier transfer).
                            inputs.push_back(self.transferred(self.chain.height(), Vec::new()));
                        }
                    }
                }
            }
        }
        effects
    }

    fn attach(&mut self, cert: CommitCertificate, effects: &mut Vec<Effect>) {
        let seq = cert.height;
        if self.chain.certificate(seq).is_some() {
            return;
        }
        match self.chain.attach_certificate(cert.clone()) {
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
            digest: self.chain.head_hash(),
            txs,
        }
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
        if let Some((seq, _, peers)) = &self.target {
            if *seq <= self.chain.height() {
                self.target = None;
            } else {
                let from = self.chain.height().next();
                let to = SeqNo(seq.0.min(from.0 + MAX_BLOCKS_PER_REPLY - 1));
                let candidates: Vec<ReplicaId> =
                    peers.iter().copied().filter(|p| *p != me).collect();
                if let Some(to_peer) = candidates.get(self.fetch_round % candidates.len().max(1)) {
                    effects.push(Effect::Send {
                        to: *to_peer,
                        wire: Wire::FetchBlocks { from, to },
                    });
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
            let last_held = self.chain.height().0;
            effects.push(Effect::Send {
                to: to_peer,
                wire: Wire::FetchBlocks {
                    from: first,
                    to: SeqNo(last_held.min(first.0 + MAX_BLOCKS_PER_REPLY - 1)),
                },
            });
        }
    }

    /// Installs transferred blocks (TOCS §5.3): a contiguous run that links to our head by
    /// hashes and ends in a block certified by `2f + 1` peers (or the checkpoint we were
    /// told to reach); each block is re-executed and must reproduce its header exactly.
    fn on_blocks(
        &mut self,
        from: ReplicaId,
        mut blocks: Vec<CertifiedBlock>,
        effects: &mut Vec<Effect>,
    ) -> VecDeque<Input> {
        blocks.sort_by_key(|b| b.block.header.height);
        // Certificates for blocks we already have.
        for cb in &blocks {
            let h = cb.block.header.height;
            if h <= self.chain.height()
                && self.chain.certificate(h).is_none()
                && let Some(c) = &cb.certificate
                && c.verify(&self.peers).is_ok()
            {
                self.attach(c.clone(), effects);
            }
        }
        let start = self.chain.height().next();
        let run: Vec<CertifiedBlock> = blocks
            .into_iter()
            .filter(|b| b.block.header.height >= start)
            .collect();
        // The run must be contiguous from our head and hash-linked.
        let mut prev = self.chain.head_hash();
        let mut anchor = None;
        for (i, cb) in run.iter().enumerate() {
            let h = &cb.block.header;
            if h.height.0 != start.0 + i as u64 || h.prev != prev {
                break;
            }
            prev = h.hash();
            let certified = cb
                .certificate
                .as_ref()
                .is_some_and(|c| c.block_hash == prev && c.verify(&self.peers).is_ok());
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
            if let Err(e) = self.chain.apply_block(&cb.block) {
                self.fault(format!("transferred block {height} from {from}: {e}"));
                return VecDeque::new();
            }
            txs.extend(cb.block.txs.iter().map(SignedTx::digest));
            effects.push(Effect::PersistBlock(Box::new(cb.block)));
            self.uncertified.insert(height, self.now);
            match cb.certificate.filter(|c| c.verify(&self.peers).is_ok()) {
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
        VecDeque::from([self.transferred(self.chain.height(), txs)])
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
