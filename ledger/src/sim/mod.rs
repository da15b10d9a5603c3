//! The deterministic simulator: four [`Peer`]s (the same code the host runs), a virtual clock
//! and a message queue ordered by `(deliver_at, seq)`. Every random choice comes from one
//! `StdRng::seed_from_u64(seed)`, so a seed replays exactly. Faults are switched on per
//! scenario: drop, duplicate, delay/reorder, partition and heal, crash and restart from the
//! persisted state, and one Byzantine peer (equivocating primary, bad signatures, wrong
//! digests, conflicting votes, forged client requests relayed or slipped into pre-prepares,
//! replayed requests, forged, replayed and unrequested state-transfer blocks, batches stamped
//! far in the future, oversized requests, floods of checkpoint votes and view changes). After
//! every step the checkers of the `invariants` module run, and correct peers' vote stores are
//! checked to stay bounded. It owns no async code and touches no clock, file or socket.

mod invariants;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::chain::{CertifiedBlock, Genesis, PeerInfo};
use crate::contracts::{Access, Call, Role};
use crate::crypto::{Digest, KeyPair};
use crate::ids::{ReplicaId, SeqNo, Time, View};
use crate::pbft::{
    Batch, Checkpoint, CheckpointProof, Config, MAX_CLOCK_SKEW_MS, Message, PersistentState,
    PrePrepare, Signed, ViewChange,
};
use crate::peer::{Effect, Peer, PeerInput, Wire};
use crate::tx::{SignedTx, TxBody};
use invariants::{Agreement, Liveness, Order, Validity};

/// How a Byzantine peer misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Byzantine {
    /// As primary, sends different pre-prepares for the same `(v, n)` to different backups.
    Equivocate,
    /// Corrupts the signature of about half of its messages.
    BadSignatures,
    /// As primary, signs pre-prepares whose digest does not match the batch.
    WrongDigest,
    /// Sends prepares, commits and checkpoints for conflicting digests to some peers.
    ConflictingVotes,
    /// As primary, adds to every pre-prepare a twin of one of its requests: same signer,
    /// nonce and signature, another call. The batch digest and the primary's signature are
    /// right, so only the client signature check can catch it.
    ForgedRequest,
    /// As primary, adds to every pre-prepare the requests it proposed at the sequence number
    /// before: validly signed and already ordered, so the second copy must execute as a denied
    /// replay.
    Replay,
    /// Answers state-transfer requests with genuine certified headers over other (validly
    /// signed) transactions, and sends its earlier replies again, unrequested, to everyone.
    ForgeTransfer,
    /// As primary, stamps every batch far beyond the clock skew peers allow.
    FutureTime,
    /// With every checkpoint it sends, also sends votes for made-up digests and far-future
    /// sequence numbers, and view changes for a run of future views and for the last view.
    Flood,
    /// Relays, and as primary proposes, a validly signed request over the size limit.
    Oversized,
}

/// The faults of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// A short name.
    pub name: &'static str,
    /// Probability that a message is lost.
    pub drop: f64,
    /// Probability that a message is delivered twice.
    pub duplicate: f64,
    /// Smallest and largest delivery delay, in ms (different delays reorder messages).
    pub delay: (u64, u64),
    /// Partition the peers once, then heal.
    pub partition: bool,
    /// Crash one peer (often the primary), then restart it from its persisted state.
    pub crash: bool,
    /// One Byzantine peer.
    pub byzantine: Option<(usize, Byzantine)>,
    /// Transactions submitted.
    pub requests: usize,
}

impl Scenario {
    /// The fault mix for a seed: the scenario kind cycles with the seed, its parameters are
    /// drawn from it.
    pub fn for_seed(seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5ce7_a410);
        let drop = rng.random_range(0.0..0.08);
        let duplicate = rng.random_range(0.0..0.05);
        let delay = (1, rng.random_range(2..30));
        let requests = rng.random_range(8..24);
        let base = Self {
            name: "lossy network",
            drop,
            duplicate,
            delay,
            partition: false,
            crash: false,
            byzantine: None,
            requests,
        };
        let byz_node = rng.random_range(0..4usize);
        let byz = |kind| Some((byz_node, kind));
        match seed % 14 {
            0 => base,
            1 => Self {
                name: "partition and heal",
                partition: true,
                ..base
            },
            2 => Self {
                name: "crash and restart",
                crash: true,
                ..base
            },
            3 => Self {
                name: "equivocating primary",
                byzantine: Some((0, Byzantine::Equivocate)),
                ..base
            },
            4 => Self {
                name: "byzantine bad signatures",
                byzantine: byz(Byzantine::BadSignatures),
                ..base
            },
            5 => Self {
                name: "byzantine wrong digest",
                byzantine: Some((0, Byzantine::WrongDigest)),
                ..base
            },
            6 => Self {
                name: "byzantine conflicting votes",
                byzantine: byz(Byzantine::ConflictingVotes),
                ..base
            },
            7 => Self {
                name: "byzantine primary forges a request",
                byzantine: Some((0, Byzantine::ForgedRequest)),
                ..base
            },
            8 => Self {
                name: "byzantine primary replays requests",
                byzantine: Some((0, Byzantine::Replay)),
                ..base
            },
            9 => Self {
                name: "crash, partition and lossy network",
                crash: true,
                partition: true,
                ..base
            },
            10 => Self {
                // A crash and a partition leave a correct peer behind, so it fetches state;
                // the faulty peer may be the one it asks.
                name: "byzantine forges and replays state transfer",
                crash: true,
                partition: true,
                byzantine: byz(Byzantine::ForgeTransfer),
                ..base
            },
            11 => Self {
                name: "byzantine primary stamps batches in the future",
                byzantine: Some((0, Byzantine::FutureTime)),
                ..base
            },
            12 => Self {
                name: "byzantine floods checkpoints and view changes",
                byzantine: byz(Byzantine::Flood),
                ..base
            },
            _ => Self {
                name: "byzantine relays and proposes oversized requests",
                byzantine: Some((0, Byzantine::Oversized)),
                ..base
            },
        }
    }
}

/// A failed run: what broke, where, and how to replay it.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The seed.
    pub seed: u64,
    /// The scenario name.
    pub scenario: &'static str,
    /// Step at which a check failed.
    pub step: u64,
    /// Virtual time.
    pub at: Time,
    /// What failed.
    pub message: String,
}

impl Failure {
    /// The command that replays this run.
    pub fn replay_command(&self) -> String {
        format!(
            "LEDGER_SIM_SEED={} cargo test -p ledger --no-default-features --features sim --test sim -- replay --nocapture",
            self.seed
        )
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed {} ({}) failed at step {} (t = {} ms): {}\n  replay: {}",
            self.seed,
            self.scenario,
            self.step,
            self.at.0,
            self.message,
            self.replay_command()
        )
    }
}

/// What a successful run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// The scenario name.
    pub scenario: &'static str,
    /// Steps executed.
    pub steps: u64,
    /// Virtual time at the end.
    pub virtual_ms: u64,
    /// Final height of the correct peers.
    pub height: u64,
    /// Highest view reached by a correct peer.
    pub max_view: u64,
    /// Messages dropped by the network.
    pub lost: u64,
}

#[derive(Debug, Clone)]
enum Event {
    Deliver { to: usize, from: usize, wire: Wire },
    Tick(usize),
    Submit(usize, usize),
    ClientRetry,
    Crash(usize),
    Restart(usize),
    Partition(Vec<usize>),
    Heal,
}

#[derive(Debug, Default)]
struct Disk {
    state: Option<PersistentState>,
    blocks: BTreeMap<SeqNo, CertifiedBlock>,
}

struct Node {
    peer: Option<Peer>,
    disk: Disk,
    key: KeyPair,
    timer: Option<Time>,
}

const MAX_STEPS: u64 = 2_000_000;
const RETRY_MS: u64 = 1_000;

/// One simulated ledger.
pub struct Sim {
    seed: u64,
    scenario: Scenario,
    rng: StdRng,
    now: Time,
    step: u64,
    seq: u64,
    queue: BTreeMap<(Time, u64), Event>,
    nodes: Vec<Node>,
    genesis: Genesis,
    cfg: Config,
    txs: Vec<SignedTx>,
    side: Option<BTreeSet<usize>>,
    faults_pending: usize,
    lost: u64,
    /// What a replaying primary first proposed at each sequence number.
    proposed: BTreeMap<SeqNo, Vec<SignedTx>>,
    /// The last state-transfer reply a forging peer sent, replayed unrequested.
    last_reply: Option<Vec<CertifiedBlock>>,
    /// A validly signed request over the size limit, for an oversizing peer.
    oversized: Option<SignedTx>,
    agreement: Agreement,
    validity: Validity,
    order: Order,
    liveness: Liveness,
}

impl Sim {
    /// A simulation of `scenario` driven by `seed`.
    pub fn new(seed: u64, scenario: Scenario) -> Result<Self, String> {
        let n = 4;
        let keys: Vec<KeyPair> = (0..n)
            .map(|i| KeyPair::from_label(&format!("sim-peer-{i}")))
            .collect();
        let admin = KeyPair::from_label("sim-admin");
        let genesis = Genesis {
            chain_id: "sim".into(),
            peers: keys
                .iter()
                .enumerate()
                .map(|(i, k)| PeerInfo {
                    id: ReplicaId(i as u32),
                    public_key: k.public(),
                    address: format!("sim:{i}"),
                    client_address: format!("sim-client:{i}"),
                })
                .collect(),
            admin: admin.public(),
            admin_name: "admin".into(),
        };
        let mut cfg = Config::new(ReplicaId(0), genesis.peer_keys(), genesis.hash());
        cfg.window = 16;
        cfg.max_batch = 4;
        cfg.max_inflight = 4;
        cfg.request_timeout_ms = 400;
        cfg.retransmit_ms = 150;
        let mut nodes = Vec::new();
        for (i, key) in keys.into_iter().enumerate() {
            let peer = Peer::new(
                genesis.clone(),
                Config {
                    id: ReplicaId(i as u32),
                    ..cfg.clone()
                },
                key.clone(),
            )
            .map_err(|e| e.to_string())?;
            nodes.push(Node {
                peer: Some(peer),
                disk: Disk::default(),
                key,
                timer: None,
            });
        }
        let other = KeyPair::from_label("sim-client");
        let ledger = genesis.hash();
        let mut txs = Vec::new();
        for i in 0..scenario.requests {
            // The admin registers the other client first; until that commits, the other
            // client's requests wait on every peer (only registered signers are ordered).
            let key = if i % 2 == 0 { &admin } else { &other };
            let call = if i == 0 {
                Call::RegisterIdentity {
                    key: other.public(),
                    name: "sim client".into(),
                    role: Role::Clinician,
                }
            } else {
                Call::RecordAccess {
                    subject: Digest::of(&(i as u64).to_be_bytes()),
                    access: Access::Read,
                    purpose: format!("sim {i}"),
                }
            };
            let tx = SignedTx::sign(
                key,
                &TxBody {
                    ledger,
                    nonce: i as u64,
                    call,
                },
            )
            .map_err(|e| e.to_string())?;
            txs.push(tx);
        }
        let mut sim = Self {
            rng: StdRng::seed_from_u64(seed),
            seed,
            scenario,
            now: Time(0),
            step: 0,
            seq: 0,
            queue: BTreeMap::new(),
            nodes,
            genesis,
            cfg,
            validity: Validity {
                submitted: txs.iter().map(SignedTx::digest).collect(),
            },
            txs,
            side: None,
            faults_pending: 0,
            lost: 0,
            proposed: BTreeMap::new(),
            last_reply: None,
            oversized: SignedTx::sign(
                &admin,
                &TxBody {
                    ledger,
                    nonce: u64::MAX,
                    call: Call::RecordAccess {
                        subject: Digest::of(b"oversized"),
                        access: Access::Read,
                        purpose: "x".repeat(crate::tx::MAX_TX_BYTES),
                    },
                },
            )
            .ok(),
            agreement: Agreement::default(),
            order: Order::new(n),
            liveness: Liveness::default(),
        };
        sim.schedule_initial();
        Ok(sim)
    }

    fn at(&mut self, at: Time, ev: Event) {
        self.seq += 1;
        self.queue.insert((at, self.seq), ev);
    }

    fn schedule_initial(&mut self) {
        for i in 0..self.nodes.len() {
            self.at(Time(1), Event::Tick(i));
        }
        for t in 0..self.txs.len() {
            let at = Time(self.rng.random_range(1..3_000));
            let to = self.rng.random_range(0..self.nodes.len());
            self.at(at, Event::Submit(to, t));
        }
        self.at(Time(RETRY_MS), Event::ClientRetry);
        if self.scenario.partition {
            let at = self.rng.random_range(100..2_500);
            let heal = at + self.rng.random_range(500..5_000);
            let mut side: Vec<usize> = vec![self.rng.random_range(0..4)];
            if self.rng.random_bool(0.5) {
                let other = (side[0] + self.rng.random_range(1..4)) % 4;
                side.push(other);
            }
            self.faults_pending += 1;
            self.at(Time(at), Event::Partition(side));
            self.at(Time(heal), Event::Heal);
        }
        if self.scenario.crash {
            // Crash the primary of view 0 half of the time.
            let node = if self.rng.random_bool(0.5) {
                0
            } else {
                self.rng.random_range(0..4)
            };
            let at = self.rng.random_range(50..3_000);
            let back = at + self.rng.random_range(200..4_000);
            self.faults_pending += 1;
            self.at(Time(at), Event::Crash(node));
            self.at(Time(back), Event::Restart(node));
        }
        if let Some((b, kind)) = self.scenario.byzantine {
            // A Byzantine peer also relays a forged request: a real one with its payload
            // altered, so the client signature no longer matches; an oversizing one also
            // relays its oversized request.
            if let Some(tx) = self.txs.first().cloned() {
                let mut forged = tx;
                forged.payload.push(0);
                let mut bad = vec![forged];
                if kind == Byzantine::Oversized {
                    bad.extend(self.oversized.clone());
                }
                for to in 0..self.nodes.len() {
                    if to != b {
                        self.at(
                            Time(5),
                            Event::Deliver {
                                to,
                                from: b,
                                wire: Wire::Requests(bad.clone()),
                            },
                        );
                    }
                }
            }
        }
    }

    fn is_correct(&self, i: usize) -> bool {
        self.scenario.byzantine.is_none_or(|(b, _)| b != i)
    }

    fn fail(&self, message: String) -> Failure {
        Failure {
            seed: self.seed,
            scenario: self.scenario.name,
            step: self.step,
            at: self.now,
            message,
        }
    }

    /// Runs until every correct peer committed every request and agrees on the head, or a
    /// check fails.
    pub fn run(mut self) -> Result<Report, Failure> {
        loop {
            let Some(((at, _), ev)) = self.queue.pop_first() else {
                return Err(self.fail("event queue ran dry".into()));
            };
            self.now = at;
            self.step += 1;
            if self.step > MAX_STEPS {
                return Err(self.fail("step limit reached".into()));
            }
            let touched = self.apply(ev).map_err(|m| self.fail(m))?;
            if let Some(i) = touched {
                self.check_node(i).map_err(|m| self.fail(m))?;
            }
            if self.faults_pending == 0 {
                let done = Liveness::done(
                    &self.validity.submitted,
                    self.nodes
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| self.is_correct(*i))
                        .filter_map(|(_, n)| n.peer.as_ref().map(|p| p.chain())),
                );
                if done {
                    return Ok(self.report());
                }
                if let Err(m) = self.liveness.check(self.now, done) {
                    return Err(self.fail(format!("{m}\n{}", self.describe())));
                }
            }
        }
    }

    /// One line per peer: height, view, status, pending requests and its last traces.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let Some(p) = n.peer.as_ref() else {
                out.push_str(&format!("  peer{i}: down\n"));
                continue;
            };
            let r = p.replica();
            let missing = self
                .validity
                .submitted
                .iter()
                .filter(|id| p.chain().position(id).is_none())
                .count();
            let uncertified: Vec<u64> = (1..=p.chain().height().0)
                .filter(|h| p.chain().certificate(SeqNo(*h)).is_none())
                .collect();
            out.push_str(&format!(
                "  peer{i}{}: height {} view {} {:?} h={} pending {} missing {} uncertified {uncertified:?} dropped {}\n",
                if self.is_correct(i) {
                    ""
                } else {
                    " (byzantine)"
                },
                p.chain().height().0,
                r.view().0,
                r.status(),
                r.low_watermark().0,
                r.pending(),
                missing,
                r.dropped()
            ));
            let traces: Vec<_> = r.trace().collect();
            for t in traces.iter().skip(traces.len().saturating_sub(6)) {
                out.push_str(&format!("      {} ms: {}\n", t.at.0, t.event));
            }
        }
        out
    }

    fn report(&self) -> Report {
        let correct = || {
            self.nodes
                .iter()
                .enumerate()
                .filter(|(i, _)| self.is_correct(*i))
                .filter_map(|(_, n)| n.peer.as_ref())
        };
        Report {
            seed: self.seed,
            scenario: self.scenario.name,
            steps: self.step,
            virtual_ms: self.now.0,
            height: correct().map(|p| p.chain().height().0).max().unwrap_or(0),
            max_view: correct().map(|p| p.replica().view().0).max().unwrap_or(0),
            lost: self.lost,
        }
    }

    fn check_node(&mut self, i: usize) -> Result<(), String> {
        if !self.is_correct(i) {
            return Ok(());
        }
        let Some(peer) = self.nodes[i].peer.as_ref() else {
            return Ok(());
        };
        if let Some(f) = peer.faults().first() {
            return Err(format!("peer{i} reports a local fault: {f}"));
        }
        // What a faulty peer sends may not grow a correct peer's memory: at most one checkpoint
        // vote per replica for each sequence number within the window on either side of the
        // stable checkpoint (plus one above it), and one view change per replica.
        let n = self.nodes.len();
        let (votes, view_changes) = peer.replica().stored_votes();
        let vote_bound = n * (2 * self.cfg.window as usize + 2);
        if votes > vote_bound || view_changes > n {
            return Err(format!(
                "peer{i} holds {votes} checkpoint votes (bound {vote_bound}) and \
                 {view_changes} view changes (bound {n})"
            ));
        }
        let chain = peer.chain();
        let chain = &*chain;
        let from = self.order.height(i);
        self.agreement.check(i, chain, from)?;
        self.validity.check(i, chain, from)?;
        self.order.check(i, chain.height(), peer.replica().view())
    }

    fn apply(&mut self, ev: Event) -> Result<Option<usize>, String> {
        match ev {
            Event::Tick(i) => {
                if self.nodes[i].timer.is_some_and(|t| t > self.now) {
                    return Ok(None);
                }
                self.nodes[i].timer = None;
                self.input(i, PeerInput::Tick(self.now))
            }
            Event::Deliver { to, from, wire } => self.input(
                to,
                PeerInput::Wire {
                    from: ReplicaId(from as u32),
                    wire,
                },
            ),
            Event::Submit(to, t) => {
                let tx = self.txs[t].clone();
                self.input(to, PeerInput::Client(vec![tx]))
            }
            Event::ClientRetry => {
                // PBFT clients re-send unanswered requests to every replica (paper §4.1).
                for t in 0..self.txs.len() {
                    let id = self.txs[t].digest();
                    let all_have = self
                        .nodes
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| self.is_correct(*i))
                        .filter_map(|(_, n)| n.peer.as_ref())
                        .all(|p| p.chain().position(&id).is_some());
                    if !all_have {
                        let to = self.rng.random_range(0..self.nodes.len());
                        let at = self.now.plus(self.rng.random_range(1..50));
                        self.at(at, Event::Submit(to, t));
                    }
                }
                let next = self.now.plus(RETRY_MS);
                self.at(next, Event::ClientRetry);
                Ok(None)
            }
            Event::Crash(i) => {
                self.nodes[i].peer = None;
                self.nodes[i].timer = None;
                Ok(None)
            }
            Event::Restart(i) => {
                let node = &self.nodes[i];
                let blocks: Vec<CertifiedBlock> = node.disk.blocks.values().cloned().collect();
                let cfg = Config {
                    id: ReplicaId(i as u32),
                    ..self.cfg.clone()
                };
                let (peer, effects) = Peer::restore(
                    self.genesis.clone(),
                    cfg,
                    node.key.clone(),
                    node.disk.state.clone(),
                    blocks,
                )
                .map_err(|e| format!("peer{i} cannot restart: {e}"))?;
                // Nothing executed before the crash may be lost.
                let before = self.order.height(i);
                if peer.chain().height() < before {
                    return Err(format!(
                        "peer{i} restarted at height {} but had executed {}",
                        peer.chain().height().0,
                        before.0
                    ));
                }
                self.nodes[i].peer = Some(peer);
                self.carry_out(i, effects);
                self.at(self.now.plus(1), Event::Tick(i));
                self.healed();
                Ok(Some(i))
            }
            Event::Partition(side) => {
                self.side = Some(side.into_iter().collect());
                Ok(None)
            }
            Event::Heal => {
                self.side = None;
                self.healed();
                Ok(None)
            }
        }
    }

    fn healed(&mut self) {
        self.faults_pending = self.faults_pending.saturating_sub(1);
        self.liveness.healed_at = self.now;
    }

    fn input(&mut self, i: usize, input: PeerInput) -> Result<Option<usize>, String> {
        let Some(peer) = self.nodes[i].peer.as_mut() else {
            return Ok(None);
        };
        let effects = peer.handle(input);
        self.carry_out(i, effects);
        Ok(Some(i))
    }

    /// Carries out effects as the host does: persist first, then send.
    fn carry_out(&mut self, i: usize, effects: Vec<Effect>) {
        let node = &mut self.nodes[i];
        let Some(peer) = node.peer.as_ref() else {
            return;
        };
        let mut sends = Vec::new();
        for e in effects {
            match e {
                Effect::PersistState => node.disk.state = Some(peer.persistent_state()),
                Effect::PersistBlock(b) => {
                    node.disk.blocks.insert(
                        b.header.height,
                        CertifiedBlock {
                            block: *b,
                            certificate: None,
                        },
                    );
                }
                Effect::PersistCertificate(c) => {
                    if let Some(cb) = node.disk.blocks.get_mut(&c.height) {
                        cb.certificate = Some(c);
                    }
                }
                Effect::SetTimer(t) => {
                    if node.timer.is_none_or(|old| t < old || old <= self.now) {
                        node.timer = Some(t);
                    }
                    sends.push(Effect::SetTimer(t));
                }
                Effect::Certified(_) | Effect::Rejected { .. } => {}
                other => sends.push(other),
            }
        }
        for e in sends {
            match e {
                Effect::Send { to, wire } => self.send(i, to.0 as usize, wire),
                Effect::Broadcast(wire) => {
                    for to in 0..self.nodes.len() {
                        if to != i {
                            self.send(i, to, wire.clone());
                        }
                    }
                }
                Effect::SetTimer(t) => self.at(t.max(self.now.plus(1)), Event::Tick(i)),
                _ => {}
            }
        }
    }

    fn send(&mut self, from: usize, to: usize, wire: Wire) {
        let wire = match self.scenario.byzantine {
            Some((b, kind)) if b == from => {
                for extra in self.extras(from, kind, &wire) {
                    self.deliver(from, to, extra);
                }
                match self.corrupt(from, to, kind, wire) {
                    Some(w) => w,
                    None => return,
                }
            }
            _ => wire,
        };
        self.deliver(from, to, wire);
    }

    /// Puts `wire` on the simulated network: partition, loss, duplication and delay.
    fn deliver(&mut self, from: usize, to: usize, wire: Wire) {
        if let Some(side) = &self.side
            && side.contains(&from) != side.contains(&to)
        {
            self.lost += 1;
            return;
        }
        if self.rng.random_bool(self.scenario.drop) {
            self.lost += 1;
            return;
        }
        let copies = if self.rng.random_bool(self.scenario.duplicate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let (lo, hi) = self.scenario.delay;
            let at = self.now.plus(self.rng.random_range(lo..=hi));
            self.at(
                at,
                Event::Deliver {
                    to,
                    from,
                    wire: wire.clone(),
                },
            );
        }
    }

    /// What a Byzantine peer sends instead of `wire`.
    fn corrupt(&mut self, from: usize, to: usize, kind: Byzantine, wire: Wire) -> Option<Wire> {
        let key = self.nodes[from].key.clone();
        let me = ReplicaId(from as u32);
        let ledger = self.genesis.hash();
        let msg = match wire {
            Wire::Consensus(msg) => msg,
            Wire::Blocks(blocks) if kind == Byzantine::ForgeTransfer => {
                self.last_reply = Some(blocks.clone());
                return Some(Wire::Blocks(self.forge(blocks)));
            }
            other => return Some(other),
        };
        let random = Digest::of(&self.rng.random::<u64>().to_be_bytes());
        // A pre-prepare for another batch, with its digest, signed by this peer: what an
        // equivocating, forging or replaying primary sends.
        let repropose = |body: PrePrepare, batch: Batch| {
            Message::PrePrepare(Signed::new(
                &key,
                &ledger,
                me,
                PrePrepare {
                    digest: batch.digest(),
                    batch,
                    ..body
                },
            ))
        };
        let msg = match (kind, msg) {
            (Byzantine::Equivocate, Message::PrePrepare(pp)) if to.is_multiple_of(2) => {
                let mut batch = pp.body.batch.clone();
                batch.timestamp = batch.timestamp.plus(1);
                batch.txs.reverse();
                repropose(pp.body, batch)
            }
            (Byzantine::WrongDigest, Message::PrePrepare(pp)) => Message::PrePrepare(Signed::new(
                &key,
                &ledger,
                me,
                PrePrepare {
                    digest: random,
                    ..pp.body
                },
            )),
            (Byzantine::BadSignatures, mut m) if self.rng.random_bool(0.5) => {
                match &mut m {
                    Message::PrePrepare(s) => s.sig.0[0] ^= 1,
                    Message::Prepare(s) => s.sig.0[0] ^= 1,
                    Message::Commit(s) => s.sig.0[0] ^= 1,
                    Message::Checkpoint(s) => s.sig.0[0] ^= 1,
                    Message::ViewChange(s) => s.sig.0[0] ^= 1,
                    Message::NewView(s) => s.sig.0[0] ^= 1,
                }
                m
            }
            (Byzantine::ConflictingVotes, Message::Prepare(p)) if to % 2 == 1 => {
                let mut body = p.body;
                body.digest = random;
                Message::Prepare(Signed::new(&key, &ledger, me, body))
            }
            (Byzantine::ConflictingVotes, Message::Commit(c)) if to % 2 == 1 => {
                let mut body = c.body;
                body.digest = random;
                Message::Commit(Signed::new(&key, &ledger, me, body))
            }
            (Byzantine::ConflictingVotes, Message::Checkpoint(c)) if to % 2 == 1 => {
                let mut body = c.body;
                body.digest = random;
                Message::Checkpoint(Signed::new(&key, &ledger, me, body))
            }
            (Byzantine::ForgedRequest, Message::PrePrepare(pp)) => {
                let mut batch = pp.body.batch.clone();
                if let Some(twin) = batch.txs.first().and_then(forged_twin) {
                    batch.txs.push(twin);
                }
                repropose(pp.body, batch)
            }
            (Byzantine::Replay, Message::PrePrepare(pp)) => {
                // The same corruption for every backup and every retransmission: the requests
                // first proposed at the previous sequence number.
                let seq = pp.body.seq;
                self.proposed
                    .entry(seq)
                    .or_insert_with(|| pp.body.batch.txs.clone());
                let mut batch = pp.body.batch.clone();
                let before = self
                    .proposed
                    .get(&SeqNo(seq.0.saturating_sub(1)))
                    .cloned()
                    .unwrap_or_default();
                batch.txs.extend(
                    before
                        .into_iter()
                        .filter(|tx| !pp.body.batch.txs.contains(tx)),
                );
                repropose(pp.body, batch)
            }
            (Byzantine::FutureTime, Message::PrePrepare(pp)) => {
                let mut batch = pp.body.batch.clone();
                batch.timestamp = batch.timestamp.plus(10 * MAX_CLOCK_SKEW_MS);
                repropose(pp.body, batch)
            }
            (Byzantine::Oversized, Message::PrePrepare(pp)) => {
                let mut batch = pp.body.batch.clone();
                batch.txs.extend(self.oversized.clone());
                repropose(pp.body, batch)
            }
            (_, m) => m,
        };
        Some(Wire::Consensus(msg))
    }

    /// What a Byzantine peer sends besides `wire`.
    fn extras(&mut self, from: usize, kind: Byzantine, wire: &Wire) -> Vec<Wire> {
        let Wire::Consensus(Message::Checkpoint(cp)) = wire else {
            return Vec::new();
        };
        let key = self.nodes[from].key.clone();
        let me = ReplicaId(from as u32);
        let ledger = self.genesis.hash();
        match kind {
            Byzantine::ForgeTransfer => self
                .last_reply
                .clone()
                .map(|blocks| vec![Wire::Blocks(self.forge(blocks))])
                .unwrap_or_default(),
            Byzantine::Flood => {
                let seq = cp.body.seq;
                let view = self
                    .nodes
                    .iter()
                    .filter_map(|n| n.peer.as_ref())
                    .map(|p| p.replica().view())
                    .max()
                    .unwrap_or_default();
                let mut out = Vec::new();
                for k in 0..8u64 {
                    let digest = Digest::of(&self.rng.random::<u64>().to_be_bytes());
                    for s in [seq, SeqNo(seq.0 + 1_000 + k)] {
                        out.push(Wire::Consensus(Message::Checkpoint(Signed::new(
                            &key,
                            &ledger,
                            me,
                            Checkpoint { seq: s, digest },
                        ))));
                    }
                }
                for v in (1..=8).map(|k| View(view.0 + k)).chain([View(u64::MAX)]) {
                    out.push(Wire::Consensus(Message::ViewChange(Signed::new(
                        &key,
                        &ledger,
                        me,
                        ViewChange {
                            new_view: v,
                            checkpoint: CheckpointProof::genesis(ledger),
                            prepared: Vec::new(),
                        },
                    ))));
                }
                out
            }
            _ => Vec::new(),
        }
    }

    /// Genuine certified headers over other transactions: validly signed ones from the
    /// clients' pool, so only the check against the certified batch digest catches them.
    fn forge(&mut self, mut blocks: Vec<CertifiedBlock>) -> Vec<CertifiedBlock> {
        for cb in &mut blocks {
            // As many transactions as the header counts, so only the digest tells them apart.
            for tx in &mut cb.block.txs {
                let i = self.rng.random_range(0..self.txs.len());
                *tx = self.txs[i].clone();
            }
        }
        blocks
    }

    /// The highest view a correct peer is in.
    pub fn max_view(&self) -> View {
        self.nodes
            .iter()
            .filter_map(|n| n.peer.as_ref())
            .map(|p| p.replica().view())
            .max()
            .unwrap_or_default()
    }
}

/// `tx` with another call under its signature: the same signer and nonce, another id, and no
/// valid signature.
fn forged_twin(tx: &SignedTx) -> Option<SignedTx> {
    let mut body = tx.body().ok()?;
    body.call = Call::RecordAccess {
        subject: Digest::of(b"forged"),
        access: Access::Export,
        purpose: "forged".into(),
    };
    Some(SignedTx {
        payload: crate::codec::encode(&body).ok()?,
        ..tx.clone()
    })
}

/// Runs the scenario of `seed`.
pub fn run_seed(seed: u64) -> Result<Report, Failure> {
    let scenario = Scenario::for_seed(seed);
    let name = scenario.name;
    match Sim::new(seed, scenario) {
        Ok(sim) => sim.run(),
        Err(message) => Err(Failure {
            seed,
            scenario: name,
            step: 0,
            at: Time(0),
            message,
        }),
    }
}
