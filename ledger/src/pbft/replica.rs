//! The replica state machine. See the module docs of [`crate::pbft`] for what it owns.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

use super::message::{
    Batch, Checkpoint, CheckpointProof, Commit, Message, NewView, PrePrepare, Prepare,
    PreparedProof, Signed, ViewChange,
};
use crate::crypto::{Digest, KeyPair, PublicKey};
use crate::error::{Error, Result};
use crate::ids::{ReplicaId, SeqNo, Time, View, is_three_f_plus_one, max_faulty, quorum};
use crate::tx::{MAX_TX_BYTES, SignedTx};

/// The largest batch a primary proposes and a backup accepts, in wire bytes of its
/// transactions. With the log window it bounds every consensus message (see
/// [`Config::validate`]), far below [`MAX_MESSAGE_BYTES`] for one pre-prepare.
pub const MAX_BATCH_BYTES: usize = 512 * 1024;
/// The largest message peers exchange (the decoders' limit). The largest messages are a new
/// view and a state-transfer reply; [`Config::validate`] checks that the first fits and
/// [`crate::peer`] splits the second to fit.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;
/// How far ahead of a backup's clock a primary's batch time may be. A faulty primary could
/// otherwise stamp a batch far in the future, and every later block would inherit that time
/// (block times never go backwards). Peers' clocks must agree within this.
pub const MAX_CLOCK_SKEW_MS: u64 = 5_000;
/// How many views above its own a replica keeps a view change for. A correct replica is never
/// further ahead than the few views that timeouts doubling from one second allow; a replica
/// left further behind catches up through a new-view message, which carries its own proof.
pub const MAX_VIEW_AHEAD: u64 = 64;

// A batch always has room for one request of the largest size.
const _: () = assert!(MAX_TX_BYTES + 256 < MAX_BATCH_BYTES);

/// How a replica is set up. Every replica of a ledger must use the same values except `id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// This replica.
    pub id: ReplicaId,
    /// The public keys of all `n` replicas, indexed by [`ReplicaId`].
    pub peers: Vec<PublicKey>,
    /// The state digest at sequence number 0 (the genesis hash).
    pub genesis: Digest,
    /// `L`, the log size: sequence numbers accepted lie in `(h, h + L]` (paper §4.3).
    pub window: u64,
    /// The most requests the primary puts in one batch.
    pub max_batch: usize,
    /// The most sequence numbers the primary keeps proposed but not committed (pipelining).
    pub max_inflight: u64,
    /// The base view-change timeout, in milliseconds; doubled after every view change that
    /// does not lead to progress (paper §4.5.2).
    pub request_timeout_ms: u64,
    /// How long without progress before a replica re-sends its outstanding messages.
    pub retransmit_ms: u64,
}

impl Config {
    /// Defaults for a replica `id` of the ledger with these `peers` and `genesis` hash.
    pub fn new(id: ReplicaId, peers: Vec<PublicKey>, genesis: Digest) -> Self {
        Self {
            id,
            peers,
            genesis,
            window: 64,
            max_batch: 1024,
            max_inflight: 8,
            request_timeout_ms: 1_000,
            retransmit_ms: 200,
        }
    }

    /// Checks the values.
    pub fn validate(&self) -> Result<()> {
        let n = self.peers.len();
        if !is_three_f_plus_one(n) {
            return Err(Error::Config(format!(
                "pbft needs n = 3f + 1 replicas (4, 7, 10, ...), got {n}"
            )));
        }
        // The largest message is a new view: up to `window` re-proposed batches, plus the
        // prepared certificates (a batch each) of a quorum of view changes.
        let new_view = (quorum(n) as u64 + 1)
            .saturating_mul(self.window)
            .saturating_mul((MAX_BATCH_BYTES + 4096) as u64);
        if new_view > MAX_MESSAGE_BYTES as u64 {
            return Err(Error::Config(format!(
                "window {} is too large for {n} peers: a new view could exceed the \
                 {MAX_MESSAGE_BYTES}-byte message limit",
                self.window
            )));
        }
        if self.id.0 as usize >= n {
            return Err(Error::Config(format!(
                "replica {} is not among the {n} peers",
                self.id
            )));
        }
        if self.window < 2 || self.max_batch == 0 || self.max_inflight == 0 {
            return Err(Error::Config(
                "window must be >= 2, max_batch and max_inflight >= 1".into(),
            ));
        }
        if self.max_inflight > self.window {
            return Err(Error::Config("max_inflight must not exceed window".into()));
        }
        Ok(())
    }
}

/// What the host feeds into the replica.
#[derive(Debug, Clone)]
pub enum Input {
    /// Client requests received by this replica's host (paper §4.1), checked as one batch.
    Request(Vec<SignedTx>),
    /// Client requests relayed by other replicas, checked as one batch.
    Relayed(Vec<SignedTx>),
    /// A consensus message from another replica.
    Message(Message),
    /// The current time.
    Tick(Time),
    /// The host executed sequence number `seq`; `digest` is the resulting state (block hash).
    Executed {
        /// The block height.
        seq: SeqNo,
        /// The block hash.
        digest: Digest,
    },
    /// The host installed certified state up to `seq` by state transfer (paper §5.3 of TOCS).
    StateTransferred {
        /// The new height.
        seq: SeqNo,
        /// Its block hash.
        digest: Digest,
        /// The ids of the transactions the transferred blocks contained.
        txs: Vec<Digest>,
    },
    /// The state persisted before a restart, and what the host's chain has executed.
    Restored(Box<Restore>),
}

/// What a restarting host hands back to a fresh replica.
#[derive(Debug, Clone)]
pub struct Restore {
    /// The last persisted consensus state, if any.
    pub state: Option<PersistentState>,
    /// The chain's height.
    pub executed: SeqNo,
    /// The chain's head hash.
    pub digest: Digest,
}

/// What the replica asks the host to do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Send to one replica.
    Send {
        /// Destination.
        to: ReplicaId,
        /// Message.
        msg: Message,
    },
    /// Send to every other replica.
    Broadcast(Message),
    /// Relay these client requests to every other replica.
    Relay(Vec<SignedTx>),
    /// A request handed in through [`Input::Request`] failed its checks (signature, size,
    /// ledger, limits) and was dropped: the host can answer its client.
    Rejected {
        /// The transaction id.
        id: Digest,
        /// Why.
        reason: String,
    },
    /// The consensus state changed: persist [`Replica::persistent_state`] durably before
    /// carrying out any later `Send`/`Broadcast`. Always the first output when present.
    Persist,
    /// Deliver an input `Tick` at or after this time.
    SetTimer(Time),
    /// `seq` committed with this batch; execute it and answer with [`Input::Executed`].
    /// Emitted in sequence order, each once.
    Committed {
        /// Sequence number.
        seq: SeqNo,
        /// Batch digest.
        digest: Digest,
        /// The batch.
        batch: Batch,
        /// The ids of the batch's transactions, in order (so the host need not hash them
        /// again).
        ids: Vec<Digest>,
    },
    /// `2f + 1` replicas signed the state digest at `seq`: the block's commit certificate.
    Certified {
        /// Sequence number.
        seq: SeqNo,
        /// Block hash.
        digest: Digest,
        /// The signed checkpoint messages.
        proof: Vec<Signed<Checkpoint>>,
    },
    /// This replica is behind a stable checkpoint: fetch certified blocks up to `seq` from
    /// `peers`, install them, then answer with [`Input::StateTransferred`].
    FetchState {
        /// Target height.
        seq: SeqNo,
        /// Target block hash.
        digest: Digest,
        /// Replicas that signed the checkpoint.
        peers: Vec<ReplicaId>,
    },
}

/// Whether the replica is ordering requests or changing view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    /// Normal case operation in the current view.
    Normal,
    /// Sent a view change for the current view and waiting for its new view.
    ViewChange,
}

/// Why a message or request was dropped, or a notable transition, with the time it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    /// When.
    pub at: Time,
    /// What.
    pub event: String,
}

/// The durable part of a slot in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotState {
    /// Sequence number.
    pub seq: SeqNo,
    /// The pre-prepare accepted in the slot's view.
    pub pre_prepare: Option<Signed<PrePrepare>>,
    /// The highest-view prepared certificate.
    pub prepared: Option<PreparedProof>,
    /// The view in which this replica sent a commit.
    pub sent_commit: Option<View>,
    /// The committed batch digest.
    pub committed: Option<Digest>,
}

/// Everything a replica must remember across a crash so that it never contradicts what it
/// already signed (no "amnesia").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersistentState {
    /// Current view.
    pub view: View,
    /// Normal or changing view.
    pub status: Status,
    /// Last sequence number assigned as primary.
    pub next_seq: SeqNo,
    /// Last stable checkpoint.
    pub stable: CheckpointProof,
    /// Log above the stable checkpoint.
    pub slots: Vec<SlotState>,
    /// The view change this replica sent for `view`, when changing view.
    pub view_change: Option<Signed<ViewChange>>,
    /// The new-view message that started `view`.
    pub new_view: Option<Signed<NewView>>,
    /// Current view-change timeout.
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, Default)]
struct Slot {
    pre_prepare: Option<Signed<PrePrepare>>,
    /// The transaction ids of `pre_prepare`'s batch, hashed once when it was accepted.
    ids: Vec<Digest>,
    prepares: BTreeMap<(View, Digest), BTreeMap<ReplicaId, Signed<Prepare>>>,
    commits: BTreeMap<(View, Digest), BTreeMap<ReplicaId, Signed<Commit>>>,
    prepared: Option<PreparedProof>,
    sent_commit: Option<View>,
    committed: Option<Digest>,
}

/// Collects outputs of one `handle` call.
#[derive(Default)]
struct Out {
    items: Vec<Output>,
}

impl Out {
    fn push(&mut self, o: Output) {
        self.items.push(o);
    }
    fn broadcast(&mut self, m: Message) {
        self.items.push(Output::Broadcast(m));
    }
}

const TRACE_CAP: usize = 512;

/// The `(n, d, m)` triples of a new view's `O`.
type Reproposals = Vec<(SeqNo, Digest, Batch)>;

/// One PBFT replica. Plain data; drive it with [`Replica::handle`].
#[derive(Debug)]
pub struct Replica {
    cfg: Config,
    key: KeyPair,
    keys: Vec<VerifyingKey>,
    n: usize,
    f: usize,
    q: usize,
    now: Time,
    view: View,
    status: Status,
    next_seq: SeqNo,
    last_ts: Time,
    stable: CheckpointProof,
    log: BTreeMap<SeqNo, Slot>,
    delivered: SeqNo,
    executed: SeqNo,
    own_digests: BTreeMap<SeqNo, Digest>,
    checkpoints: BTreeMap<SeqNo, BTreeMap<Digest, BTreeMap<ReplicaId, Signed<Checkpoint>>>>,
    certified: BTreeSet<SeqNo>,
    pending: BTreeMap<Digest, (SignedTx, Time)>,
    queue: VecDeque<Digest>,
    in_log: BTreeSet<Digest>,
    recent: BTreeMap<SeqNo, Vec<Digest>>,
    recent_set: BTreeSet<Digest>,
    view_changes: BTreeMap<View, BTreeMap<ReplicaId, Signed<ViewChange>>>,
    new_view: Option<Signed<NewView>>,
    deadline: Option<Time>,
    timeout_ms: u64,
    last_progress: Time,
    last_retransmit: Time,
    helped: BTreeMap<ReplicaId, Time>,
    fetching: Option<(SeqNo, Time)>,
    timer: Option<Time>,
    dirty: bool,
    trace: VecDeque<Trace>,
    dropped: u64,
}

impl Replica {
    /// A replica at genesis.
    pub fn new(cfg: Config, key: KeyPair) -> Result<Self> {
        cfg.validate()?;
        if cfg.peers[cfg.id.0 as usize] != key.public() {
            return Err(Error::Config(format!(
                "the signing key does not match the public key of {}",
                cfg.id
            )));
        }
        let keys = cfg
            .peers
            .iter()
            .map(|p| {
                p.verifying_key().ok_or_else(|| Error::Invalid {
                    what: "peer public key",
                    reason: p.to_hex(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let n = cfg.peers.len();
        Ok(Self {
            stable: CheckpointProof::genesis(cfg.genesis),
            own_digests: BTreeMap::from([(SeqNo(0), cfg.genesis)]),
            timeout_ms: cfg.request_timeout_ms,
            cfg,
            key,
            keys,
            n,
            f: max_faulty(n),
            q: quorum(n),
            now: Time(0),
            view: View(0),
            status: Status::Normal,
            next_seq: SeqNo(0),
            last_ts: Time(0),
            log: BTreeMap::new(),
            delivered: SeqNo(0),
            executed: SeqNo(0),
            checkpoints: BTreeMap::new(),
            certified: BTreeSet::new(),
            pending: BTreeMap::new(),
            queue: VecDeque::new(),
            in_log: BTreeSet::new(),
            recent: BTreeMap::new(),
            recent_set: BTreeSet::new(),
            view_changes: BTreeMap::new(),
            new_view: None,
            deadline: None,
            last_progress: Time(0),
            last_retransmit: Time(0),
            helped: BTreeMap::new(),
            fetching: None,
            timer: None,
            dirty: false,
            trace: VecDeque::new(),
            dropped: 0,
        })
    }

    /// This replica's id.
    pub fn id(&self) -> ReplicaId {
        self.cfg.id
    }
    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }
    /// Current view.
    pub fn view(&self) -> View {
        self.view
    }
    /// Normal or changing view.
    pub fn status(&self) -> Status {
        self.status
    }
    /// Whether this replica is the primary of its current view.
    pub fn is_primary(&self) -> bool {
        self.view.primary(self.n) == self.cfg.id
    }
    /// The last executed sequence number.
    pub fn executed(&self) -> SeqNo {
        self.executed
    }
    /// The low watermark `h` (last stable checkpoint).
    pub fn low_watermark(&self) -> SeqNo {
        self.stable.seq
    }
    /// The last stable checkpoint.
    pub fn stable_checkpoint(&self) -> &CheckpointProof {
        &self.stable
    }
    /// Requests received and not yet executed.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
    /// Recent drops and transitions, oldest first.
    pub fn trace(&self) -> impl Iterator<Item = &Trace> {
        self.trace.iter()
    }
    /// Messages and requests dropped since start.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
    /// How many checkpoint votes and view changes the replica holds (what a faulty replica
    /// could try to grow).
    pub fn stored_votes(&self) -> (usize, usize) {
        let votes = self
            .checkpoints
            .values()
            .flat_map(BTreeMap::values)
            .map(BTreeMap::len)
            .sum();
        let view_changes = self.view_changes.values().map(BTreeMap::len).sum();
        (votes, view_changes)
    }

    /// The single entry point: one input in, the effects out.
    pub fn handle(&mut self, input: Input) -> Vec<Output> {
        let mut out = Out::default();
        match input {
            Input::Request(txs) => self.on_requests(txs, false, &mut out),
            Input::Relayed(txs) => self.on_requests(txs, true, &mut out),
            Input::Message(m) => self.on_message(m, &mut out),
            Input::Tick(now) => self.on_tick(now, &mut out),
            Input::Executed { seq, digest } => self.on_executed(seq, digest, &mut out),
            Input::StateTransferred { seq, digest, txs } => {
                self.on_state_transferred(seq, digest, &txs, &mut out);
            }
            Input::Restored(r) => self.on_restored(*r, &mut out),
        }
        self.finish(out)
    }

    fn finish(&mut self, mut out: Out) -> Vec<Output> {
        // Request timer (paper §4.4): running while some received request is not executed.
        if self.status == Status::Normal {
            if self.pending.is_empty() {
                self.deadline = None;
            } else if self.deadline.is_none() {
                self.deadline = Some(self.now.plus(self.timeout_ms));
            }
        }
        let retransmit = self.last_retransmit.plus(self.cfg.retransmit_ms);
        let next = match self.deadline {
            Some(d) => d.min(retransmit),
            None => retransmit,
        };
        if self.timer != Some(next) {
            self.timer = Some(next);
            out.push(Output::SetTimer(next));
        }
        if self.dirty {
            self.dirty = false;
            out.items.insert(0, Output::Persist);
        }
        out.items
    }

    fn note(&mut self, event: impl Into<String>) {
        if self.trace.len() == TRACE_CAP {
            self.trace.pop_front();
        }
        let event = event.into();
        tracing::trace!(replica = self.cfg.id.0, %event);
        self.trace.push_back(Trace {
            at: self.now,
            event,
        });
    }

    fn drop_msg(&mut self, kind: &str, from: ReplicaId, reason: &str) {
        self.dropped += 1;
        self.note(format!("drop {kind} from {from}: {reason}"));
    }

    fn primary(&self, v: View) -> ReplicaId {
        v.primary(self.n)
    }

    fn in_window(&self, seq: SeqNo) -> bool {
        // §4.2: accept only if h < n <= H = h + L.
        seq > self.stable.seq && seq.0 <= self.stable.seq.0 + self.cfg.window
    }

    fn sign<T: super::message::Signable>(&self, body: T) -> Signed<T> {
        Signed::new(&self.key, &self.cfg.genesis, self.cfg.id, body)
    }

    /// Whether `m` carries its sender's valid signature for this ledger.
    fn verify<T: super::message::Signable>(&self, m: &Signed<T>) -> bool {
        m.verify(&self.keys, &self.cfg.genesis)
    }

    // ----- requests and the primary (§4.1, §4.2 batching) -----

    /// Whether a request with id `d` is known to carry a valid client signature: it is
    /// pending (checked on arrival), in an accepted pre-prepare of the log (checked when the
    /// pre-prepare was accepted, or backed by a prepared certificate, so by `f + 1` correct
    /// replicas that checked it), or recently executed (by this replica, or by the `2f + 1`
    /// signers of the blocks it installed by state transfer). The id hashes the signer, payload
    /// and signature, so any other transaction, even one reusing a known signer and nonce, has
    /// another id and is checked on its own. The three sets are bounded by the log window and
    /// emptied as checkpoints become stable (§4.3), so this cache needs no collection of its own.
    fn known_valid(&self, d: &Digest) -> bool {
        self.pending.contains_key(d) || self.in_log.contains(d) || self.recent_set.contains(d)
    }

    fn on_requests(&mut self, txs: Vec<SignedTx>, relayed: bool, out: &mut Out) {
        let mut fresh: Vec<(Digest, SignedTx)> = Vec::with_capacity(txs.len());
        let mut seen = BTreeSet::new();
        for tx in txs {
            let d = tx.digest();
            if self.known_valid(&d) || !seen.insert(d) {
                self.note(format!("drop duplicate request {d:?}"));
                continue;
            }
            fresh.push((d, tx));
        }
        // Bounded and well formed first (cheap, and the same verdict on every replica): a
        // request over the size limit or the contracts' string limits is never ordered.
        let mut shaped = Vec::with_capacity(fresh.len());
        for (d, tx) in fresh {
            match tx.check_shape(&self.cfg.genesis) {
                Ok(_) => shaped.push((d, tx)),
                Err(reason) => self.reject(d, reason, relayed, out),
            }
        }
        // Validity: only requests signed by their client are ever ordered. Each request is
        // checked once per replica; the batch check gives each the verdict a single check
        // would (see `sigcheck`), so replicas that saw it by other paths agree with us.
        let verdicts = SignedTx::verify_all(shaped.iter().map(|(_, tx)| tx));
        let mut relay = Vec::new();
        for ((d, tx), ok) in shaped.into_iter().zip(verdicts) {
            if !ok {
                self.reject(d, "bad client signature".into(), relayed, out);
                continue;
            }
            if !relayed {
                relay.push(tx.clone());
            }
            self.pending.insert(d, (tx, self.now));
            self.queue.push_back(d);
        }
        if !relay.is_empty() {
            out.push(Output::Relay(relay));
        }
        self.try_propose(out);
    }

    fn reject(&mut self, d: Digest, reason: String, relayed: bool, out: &mut Out) {
        self.dropped += 1;
        self.note(format!("drop request {d:?}: {reason}"));
        if !relayed {
            out.push(Output::Rejected { id: d, reason });
        }
    }

    fn try_propose(&mut self, out: &mut Out) {
        if self.status != Status::Normal || !self.is_primary() {
            return;
        }
        loop {
            let seq = self.next_seq.next();
            if !self.in_window(seq)
                || seq.0.saturating_sub(self.delivered.0) > self.cfg.max_inflight
            {
                return;
            }
            let mut txs = Vec::new();
            let mut ids = Vec::new();
            let mut bytes = 0;
            while txs.len() < self.cfg.max_batch {
                let Some(d) = self.queue.front().copied() else {
                    break;
                };
                if self.in_log.contains(&d) {
                    self.queue.pop_front();
                    continue;
                }
                if let Some((tx, _)) = self.pending.get(&d) {
                    // Every request is at most MAX_TX_BYTES, so the first always fits.
                    if bytes + tx.wire_size() > MAX_BATCH_BYTES {
                        break;
                    }
                    bytes += tx.wire_size();
                    txs.push(tx.clone());
                    ids.push(d);
                }
                self.queue.pop_front();
            }
            if txs.is_empty() {
                return;
            }
            self.last_ts = self.last_ts.max(self.now);
            let pp = self.sign(PrePrepare {
                view: self.view,
                seq,
                digest: Batch::digest_of(self.last_ts, &ids),
                batch: Batch {
                    timestamp: self.last_ts,
                    txs,
                },
            });
            self.next_seq = seq;
            self.accept_pre_prepare(pp.clone(), ids, out);
            out.broadcast(Message::PrePrepare(pp));
        }
    }

    // ----- normal case (§4.2) -----

    fn on_message(&mut self, m: Message, out: &mut Out) {
        let from = m.from();
        if from == self.cfg.id || from.0 as usize >= self.n {
            self.drop_msg(m.kind(), from, "unknown or own sender");
            return;
        }
        match m {
            Message::PrePrepare(m) => self.on_pre_prepare(m, out),
            Message::Prepare(m) => self.on_prepare(m, out),
            Message::Commit(m) => self.on_commit(m, out),
            Message::Checkpoint(m) => self.on_checkpoint(m, out),
            Message::ViewChange(m) => self.on_view_change(m, out),
            Message::NewView(m) => self.on_new_view(m, out),
        }
    }

    /// A replica in an older view is talking to us: hand it the new-view message that moved
    /// us on, at most once per retransmission interval.
    fn help_lagging(&mut self, to: ReplicaId, their_view: View, out: &mut Out) {
        if their_view > self.view || self.status != Status::Normal {
            return;
        }
        let Some(nv) = self.new_view.clone() else {
            return;
        };
        if self
            .helped
            .get(&to)
            .is_some_and(|t| self.now < t.plus(self.cfg.retransmit_ms))
        {
            return;
        }
        self.helped.insert(to, self.now);
        out.push(Output::Send {
            to,
            msg: Message::NewView(nv),
        });
    }

    fn normal_view_check(&mut self, kind: &str, from: ReplicaId, v: View, out: &mut Out) -> bool {
        if v < self.view {
            self.help_lagging(from, v, out);
            self.drop_msg(kind, from, "stale view");
            return false;
        }
        if v > self.view || self.status != Status::Normal {
            self.drop_msg(kind, from, "not in that view");
            return false;
        }
        true
    }

    fn on_pre_prepare(&mut self, m: Signed<PrePrepare>, out: &mut Out) {
        let (v, seq, d) = (m.body.view, m.body.seq, m.body.digest);
        if !self.normal_view_check("pre-prepare", m.from, v, out) {
            return;
        }
        if m.from != self.primary(v) {
            return self.drop_msg("pre-prepare", m.from, "sender is not the primary");
        }
        if !self.in_window(seq) {
            return self.drop_msg("pre-prepare", m.from, "outside the watermarks");
        }
        if !self.verify(&m) {
            return self.drop_msg("pre-prepare", m.from, "bad signature");
        }
        if let Some(existing) = self.log.get(&seq).and_then(|s| s.pre_prepare.as_ref())
            && existing.body.view == v
        {
            if existing.body.digest != d {
                // §4.2: a backup accepts at most one pre-prepare per (v, n). Two signed,
                // different ones prove the primary faulty: start a view change at once.
                self.drop_msg(
                    "pre-prepare",
                    m.from,
                    "equivocation: conflicting pre-prepare",
                );
                self.start_view_change(v.next(), out);
            }
            return;
        }
        // A batch stamped further ahead of our clock than peers' clocks may differ: the block
        // time would run ahead for good. Not proof of a fault (our clock may be late), so it is
        // only not prepared here; if it is the primary's doing, the request timer expires.
        if m.body.batch.timestamp > self.now.plus(MAX_CLOCK_SKEW_MS) {
            return self.drop_msg("pre-prepare", m.from, "batch time ahead of our clock");
        }
        // Bounded batches (§4.2 batching, with a size limit every replica computes alike): a
        // larger one is proof of a faulty primary.
        if m.body.batch.wire_size() > MAX_BATCH_BYTES {
            self.drop_msg("pre-prepare", m.from, "batch over the size limit");
            return self.start_view_change(v.next(), out);
        }
        // The primary signed a digest that does not match its batch, or ordered a request no
        // client signed: provably faulty (§4.2 "d is the digest for m"; validity, §2).
        let ids = m.body.batch.ids();
        if Batch::digest_of(m.body.batch.timestamp, &ids) != d {
            self.drop_msg("pre-prepare", m.from, "digest does not match the batch");
            return self.start_view_change(v.next(), out);
        }
        let mut seen = BTreeSet::new();
        let mut unchecked = Vec::new();
        for (tx, td) in m.body.batch.txs.iter().zip(&ids) {
            let td = *td;
            if !seen.insert(td) {
                self.drop_msg("pre-prepare", m.from, "batch repeats a request");
                return self.start_view_change(v.next(), out);
            }
            if !self.known_valid(&td) {
                // The same shape rule as for requests: a request no correct replica would
                // have accepted proves the primary faulty.
                if let Err(reason) = tx.check_shape(&self.cfg.genesis) {
                    self.drop_msg(
                        "pre-prepare",
                        m.from,
                        &format!("batch holds a request: {reason}"),
                    );
                    return self.start_view_change(v.next(), out);
                }
                unchecked.push(tx);
            }
        }
        // The requests this replica has not checked yet, as one batch.
        if !SignedTx::verify_all(unchecked).into_iter().all(|ok| ok) {
            self.drop_msg(
                "pre-prepare",
                m.from,
                "batch holds a request without a valid client signature",
            );
            return self.start_view_change(v.next(), out);
        }
        self.accept_pre_prepare(m, ids, out);
    }

    /// Accepts `m`, whose batch has the transaction ids `ids`.
    fn accept_pre_prepare(&mut self, m: Signed<PrePrepare>, ids: Vec<Digest>, out: &mut Out) {
        let (v, seq, d) = (m.body.view, m.body.seq, m.body.digest);
        self.in_log.extend(ids.iter().copied());
        let me = self.cfg.id;
        let is_backup = self.primary(v) != me;
        let prepare = is_backup.then(|| {
            self.sign(Prepare {
                view: v,
                seq,
                digest: d,
            })
        });
        let slot = self.log.entry(seq).or_default();
        slot.pre_prepare = Some(m);
        slot.ids = ids;
        if let Some(p) = &prepare {
            slot.prepares
                .entry((v, d))
                .or_default()
                .insert(me, p.clone());
        }
        self.dirty = true;
        if let Some(p) = prepare {
            out.broadcast(Message::Prepare(p));
        }
        self.check_prepared(seq, out);
    }

    fn on_prepare(&mut self, m: Signed<Prepare>, out: &mut Out) {
        let (v, seq, d) = (m.body.view, m.body.seq, m.body.digest);
        if !self.normal_view_check("prepare", m.from, v, out) {
            return;
        }
        if m.from == self.primary(v) {
            return self.drop_msg("prepare", m.from, "the primary does not prepare");
        }
        if !self.in_window(seq) {
            return self.drop_msg("prepare", m.from, "outside the watermarks");
        }
        if !self.verify(&m) {
            return self.drop_msg("prepare", m.from, "bad signature");
        }
        let slot = self.log.entry(seq).or_default();
        let conflicting = slot
            .prepares
            .iter()
            .any(|((pv, pd), votes)| *pv == v && *pd != d && votes.contains_key(&m.from));
        if conflicting {
            return self.drop_msg("prepare", m.from, "conflicting prepare in the same view");
        }
        slot.prepares.entry((v, d)).or_default().insert(m.from, m);
        self.check_prepared(seq, out);
    }

    /// `prepared(m, v, n, i)` (§4.2): the pre-prepare and `2f` matching prepares from
    /// distinct backups; then multicast a commit.
    fn check_prepared(&mut self, seq: SeqNo, out: &mut Out) {
        let view = self.view;
        // `2f` prepares from backups, with the pre-prepare a quorum (§4.2).
        let need = self.q - 1;
        let me = self.cfg.id;
        let Some(slot) = self.log.get(&seq) else {
            return;
        };
        let Some(pp) = slot.pre_prepare.as_ref().filter(|p| p.body.view == view) else {
            return;
        };
        let d = pp.body.digest;
        if slot.prepared.as_ref().is_some_and(|p| p.view() == view) {
            return;
        }
        let Some(votes) = slot.prepares.get(&(view, d)) else {
            return;
        };
        if votes.len() < need {
            return;
        }
        let proof = PreparedProof {
            pre_prepare: pp.clone(),
            prepares: votes.values().take(need).cloned().collect(),
        };
        let commit = self.sign(Commit {
            view,
            seq,
            digest: d,
        });
        if let Some(slot) = self.log.get_mut(&seq) {
            slot.prepared = Some(proof);
            slot.sent_commit = Some(view);
            slot.commits
                .entry((view, d))
                .or_default()
                .insert(me, commit.clone());
        }
        self.dirty = true;
        out.broadcast(Message::Commit(commit));
        self.check_committed(seq, out);
    }

    fn on_commit(&mut self, m: Signed<Commit>, out: &mut Out) {
        let (v, seq, d) = (m.body.view, m.body.seq, m.body.digest);
        if !self.normal_view_check("commit", m.from, v, out) {
            return;
        }
        if !self.in_window(seq) {
            return self.drop_msg("commit", m.from, "outside the watermarks");
        }
        if !self.verify(&m) {
            return self.drop_msg("commit", m.from, "bad signature");
        }
        let slot = self.log.entry(seq).or_default();
        let conflicting = slot
            .commits
            .iter()
            .any(|((cv, cd), votes)| *cv == v && *cd != d && votes.contains_key(&m.from));
        if conflicting {
            return self.drop_msg("commit", m.from, "conflicting commit in the same view");
        }
        slot.commits.entry((v, d)).or_default().insert(m.from, m);
        self.check_committed(seq, out);
    }

    /// `committed-local(m, v, n, i)` (§4.2): prepared and `2f + 1` matching commits.
    fn check_committed(&mut self, seq: SeqNo, out: &mut Out) {
        let view = self.view;
        let q = self.q;
        let Some(slot) = self.log.get_mut(&seq) else {
            return;
        };
        let Some(d) = slot
            .prepared
            .as_ref()
            .filter(|p| p.view() == view)
            .map(PreparedProof::digest)
        else {
            return;
        };
        if slot.committed.is_some() {
            return;
        }
        if slot.commits.get(&(view, d)).is_some_and(|c| c.len() >= q) {
            slot.committed = Some(d);
            self.dirty = true;
            self.deliver(out);
        }
    }

    /// Executes committed requests in sequence order (§4.2: "executes the operation after all
    /// requests with lower sequence numbers have been executed").
    fn deliver(&mut self, out: &mut Out) {
        loop {
            let seq = self.delivered.next();
            let Some(slot) = self.log.get(&seq) else {
                return;
            };
            let Some(d) = slot.committed else {
                return;
            };
            let (batch, ids) = match (&slot.pre_prepare, &slot.prepared) {
                (Some(pp), _) if pp.body.digest == d => (pp.body.batch.clone(), slot.ids.clone()),
                (_, Some(p)) if p.digest() == d => {
                    let batch = p.pre_prepare.body.batch.clone();
                    let ids = batch.ids();
                    (batch, ids)
                }
                _ => {
                    self.note(format!("committed {seq} without its batch"));
                    return;
                }
            };
            self.delivered = seq;
            for id in &ids {
                self.pending.remove(id);
                self.in_log.remove(id);
                self.recent_set.insert(*id);
            }
            self.recent.insert(seq, ids.clone());
            self.progress();
            out.push(Output::Committed {
                seq,
                digest: d,
                batch,
                ids,
            });
        }
    }

    fn progress(&mut self) {
        self.last_progress = self.now;
        self.timeout_ms = self.cfg.request_timeout_ms;
        // §4.4: restart the timer if still waiting for other requests.
        self.deadline = (!self.pending.is_empty() && self.status == Status::Normal)
            .then(|| self.now.plus(self.timeout_ms));
    }

    // ----- checkpoints, watermarks and garbage collection (§4.3) -----

    fn on_executed(&mut self, seq: SeqNo, digest: Digest, out: &mut Out) {
        if seq <= self.executed {
            return;
        }
        if seq != self.executed.next() || seq > self.delivered {
            self.note(format!(
                "executed {seq} out of order (at {})",
                self.executed
            ));
            return;
        }
        self.executed = seq;
        self.own_digests.insert(seq, digest);
        let cp = self.sign(Checkpoint { seq, digest });
        self.record_checkpoint(cp.clone());
        out.broadcast(Message::Checkpoint(cp));
        self.check_stable(seq, digest, out);
        self.try_propose(out);
    }

    fn on_checkpoint(&mut self, m: Signed<Checkpoint>, out: &mut Out) {
        let (seq, d) = (m.body.seq, m.body.digest);
        if seq <= self.stable.seq && (self.certified.contains(&seq) || self.cert_horizon() >= seq) {
            return self.drop_msg("checkpoint", m.from, "already stable");
        }
        if !self.verify(&m) {
            return self.drop_msg("checkpoint", m.from, "bad signature");
        }
        // Above the high watermark only the latest vote per replica is kept, so a faulty
        // replica cannot fill memory with far-future checkpoints.
        let high = SeqNo(self.stable.seq.0 + self.cfg.window);
        if seq > high {
            for (s, by_digest) in self.checkpoints.range_mut(high.next()..) {
                if *s != seq {
                    for votes in by_digest.values_mut() {
                        votes.remove(&m.from);
                    }
                    by_digest.retain(|_, votes| !votes.is_empty());
                }
            }
            self.checkpoints
                .retain(|s, by_digest| *s <= high || *s == seq || !by_digest.is_empty());
        }
        self.record_checkpoint(m);
        self.check_stable(seq, d, out);
    }

    /// Checkpoint votes below this are discarded; certificates are still collected for a
    /// window below the stable checkpoint so that slow votes complete block certificates.
    fn cert_horizon(&self) -> SeqNo {
        SeqNo(self.stable.seq.0.saturating_sub(self.cfg.window))
    }

    /// Keeps a checkpoint vote: one per replica and sequence number, so that a faulty replica
    /// cannot add a vote for every digest it makes up. A correct replica signs one state digest
    /// per sequence number; when a replica's votes conflict, the one kept is the one whose
    /// digest more other replicas voted for, so a faulty replica's first, made-up vote cannot
    /// shut out its genuine one when a correct replica forwards it in a checkpoint proof.
    fn record_checkpoint(&mut self, m: Signed<Checkpoint>) {
        let by_digest = self.checkpoints.entry(m.body.seq).or_default();
        let held = by_digest
            .iter()
            .find(|(_, votes)| votes.contains_key(&m.from))
            .map(|(d, _)| *d);
        if let Some(held) = held {
            if held == m.body.digest {
                return;
            }
            let support = |d: &Digest| {
                by_digest
                    .get(d)
                    .map_or(0, |votes| votes.keys().filter(|r| **r != m.from).count())
            };
            if support(&m.body.digest) <= support(&held) {
                return;
            }
            if let Some(votes) = by_digest.get_mut(&held) {
                votes.remove(&m.from);
                if votes.is_empty() {
                    by_digest.remove(&held);
                }
            }
        }
        by_digest
            .entry(m.body.digest)
            .or_default()
            .insert(m.from, m);
    }

    fn check_stable(&mut self, seq: SeqNo, d: Digest, out: &mut Out) {
        let Some(votes) = self.checkpoints.get(&seq).and_then(|m| m.get(&d)) else {
            return;
        };
        if votes.len() < self.q {
            return;
        }
        let proof: Vec<Signed<Checkpoint>> = votes.values().cloned().collect();
        let signers: Vec<ReplicaId> = votes.keys().copied().collect();
        if self.certified.insert(seq) {
            out.push(Output::Certified {
                seq,
                digest: d,
                proof: proof.clone(),
            });
        }
        if seq <= self.stable.seq {
            return;
        }
        if seq <= self.executed {
            if self.own_digests.get(&seq) != Some(&d) {
                // Our state differs from what 2f + 1 replicas certified: we are the faulty one.
                self.note(format!(
                    "state at {seq} diverges from the certified checkpoint"
                ));
                return;
            }
            self.advance_stable(CheckpointProof {
                seq,
                digest: d,
                proof,
            });
            self.try_propose(out);
        } else if seq > self.delivered {
            // A stable checkpoint we do not have: fetch the state (§4.3 / TOCS §5.3).
            let stale = self
                .fetching
                .is_none_or(|(s, t)| s < seq || self.now >= t.plus(self.cfg.retransmit_ms));
            if stale {
                self.fetching = Some((seq, self.now));
                self.note(format!("fetch state up to {seq}"));
                out.push(Output::FetchState {
                    seq,
                    digest: d,
                    peers: signers,
                });
            }
        }
    }

    /// Makes `proof` the stable checkpoint: the low watermark moves to its sequence number
    /// and the log, the checkpoint votes and old view changes below it are discarded (§4.3).
    fn advance_stable(&mut self, proof: CheckpointProof) {
        let seq = proof.seq;
        self.stable = proof;
        self.log = self.log.split_off(&seq.next());
        self.own_digests = self.own_digests.split_off(&seq);
        let horizon = self.cert_horizon();
        self.checkpoints = self.checkpoints.split_off(&horizon.next());
        self.certified = self.certified.split_off(&horizon.next());
        let old = self.recent.split_off(&horizon.next());
        for ids in std::mem::replace(&mut self.recent, old).into_values() {
            for id in ids {
                self.recent_set.remove(&id);
            }
        }
        if self.next_seq < seq {
            self.next_seq = seq;
        }
        self.dirty = true;
    }

    fn on_state_transferred(&mut self, seq: SeqNo, digest: Digest, txs: &[Digest], out: &mut Out) {
        if seq <= self.executed {
            return;
        }
        self.note(format!("state transferred up to {seq}"));
        self.executed = seq;
        self.delivered = self.delivered.max(seq);
        self.next_seq = self.next_seq.max(seq);
        self.own_digests.insert(seq, digest);
        self.fetching = None;
        for id in txs {
            self.pending.remove(id);
            self.in_log.remove(id);
            self.recent_set.insert(*id);
        }
        self.recent.entry(seq).or_default().extend_from_slice(txs);
        self.progress();
        let cp = self.sign(Checkpoint { seq, digest });
        self.record_checkpoint(cp.clone());
        out.broadcast(Message::Checkpoint(cp));
        self.check_stable(seq, digest, out);
        self.deliver(out);
        self.try_propose(out);
    }

    // ----- view changes (§4.4, liveness §4.5.2) -----

    fn on_tick(&mut self, now: Time, out: &mut Out) {
        if now > self.now {
            self.now = now;
        }
        if let Some(deadline) = self.deadline
            && self.now >= deadline
        {
            match self.status {
                Status::Normal => {
                    self.note(format!("request timer expired in {}", self.view));
                    self.start_view_change(self.view.next(), out);
                }
                Status::ViewChange => {
                    // §4.5.2: no new view in time; try the next one with a doubled timeout.
                    self.note(format!("view change to {} timed out", self.view));
                    self.timeout_ms = self.timeout_ms.saturating_mul(2);
                    self.start_view_change(self.view.next(), out);
                }
            }
        }
        if self.now >= self.last_retransmit.plus(self.cfg.retransmit_ms) {
            self.last_retransmit = self.now;
            self.retransmit(out);
        }
    }

    /// Re-sends what others may have lost (the paper assumes links that eventually deliver;
    /// the host's links may drop, so the replica retransmits its own part of the protocol).
    fn retransmit(&mut self, out: &mut Out) {
        // The whole proof of the stable checkpoint, not only our vote: signatures are the
        // signers', so any replica may forward them, and a replica that lags behind (or was
        // fed conflicting votes by a faulty peer) still sees a quorum and fetches the state.
        for m in &self.stable.proof {
            out.broadcast(Message::Checkpoint(m.clone()));
        }
        if let Some(cp) = self
            .checkpoints
            .get(&self.executed)
            .and_then(|m| m.get(self.own_digests.get(&self.executed)?))
            .and_then(|votes| votes.get(&self.cfg.id))
        {
            out.broadcast(Message::Checkpoint(cp.clone()));
        }
        if self.status == Status::ViewChange {
            if let Some(vc) = self
                .view_changes
                .get(&self.view)
                .and_then(|m| m.get(&self.cfg.id))
            {
                out.broadcast(Message::ViewChange(vc.clone()));
            }
            return;
        }
        if self.now < self.last_progress.plus(self.cfg.retransmit_ms) {
            return;
        }
        let me = self.cfg.id;
        for slot in self.log.values() {
            let Some(pp) = slot
                .pre_prepare
                .as_ref()
                .filter(|p| p.body.view == self.view)
            else {
                continue;
            };
            let key = (self.view, pp.body.digest);
            if pp.from == me {
                out.broadcast(Message::PrePrepare(pp.clone()));
            } else if let Some(p) = slot.prepares.get(&key).and_then(|v| v.get(&me)) {
                out.broadcast(Message::Prepare(p.clone()));
            }
            if let Some(c) = slot.commits.get(&key).and_then(|v| v.get(&me)) {
                out.broadcast(Message::Commit(c.clone()));
            }
        }
        // Own votes for blocks still without a certificate, below the stable checkpoint too
        // (down to the certificate horizon): the checkpoint can become stable on votes for a
        // later block while every vote for an earlier one was lost, and then no replica would
        // ever certify it, and no receipt for its transactions could be given.
        for seq in (self.cert_horizon().0 + 1)..self.executed.0 {
            let seq = SeqNo(seq);
            if self.certified.contains(&seq) {
                continue;
            }
            if let Some(cp) = self
                .checkpoints
                .get(&seq)
                .and_then(|by_digest| by_digest.values().find_map(|votes| votes.get(&me)))
            {
                out.broadcast(Message::Checkpoint(cp.clone()));
            }
        }
    }

    /// Moves to view `target` and multicasts `<VIEW-CHANGE, v+1, n, C, P, i>` (§4.4).
    fn start_view_change(&mut self, target: View, out: &mut Out) {
        if target <= self.view {
            return;
        }
        self.note(format!("view change {} -> {target}", self.view));
        self.view = target;
        self.status = Status::ViewChange;
        self.new_view = None;
        // §4.5.2: the timer for the new view starts only once 2f + 1 view changes arrive.
        self.deadline = None;
        let prepared: Vec<PreparedProof> = self
            .log
            .iter()
            .filter(|(s, _)| **s > self.stable.seq)
            .filter_map(|(_, slot)| slot.prepared.clone())
            .collect();
        let vc = self.sign(ViewChange {
            new_view: target,
            checkpoint: self.stable.clone(),
            prepared,
        });
        self.view_changes
            .entry(target)
            .or_default()
            .insert(self.cfg.id, vc.clone());
        self.view_changes = self.view_changes.split_off(&target);
        self.dirty = true;
        out.broadcast(Message::ViewChange(vc));
        self.check_view_change_quorum(out);
    }

    fn valid_view_change(&self, vc: &ViewChange) -> bool {
        let cp = &vc.checkpoint;
        if !cp.is_valid(&self.keys, self.q, &self.cfg.genesis) {
            return false;
        }
        let mut seqs = BTreeSet::new();
        vc.prepared.iter().all(|p| {
            p.view() < vc.new_view
                && p.seq() > cp.seq
                && p.seq().0 <= cp.seq.0 + self.cfg.window
                && seqs.insert(p.seq())
                && p.is_valid(&self.keys, self.q, &self.cfg.genesis)
        })
    }

    fn on_view_change(&mut self, m: Signed<ViewChange>, out: &mut Out) {
        let v = m.body.new_view;
        if v < self.view || (v == self.view && self.status == Status::Normal) {
            // The sender has not seen the new view that we are in.
            self.help_lagging(m.from, v, out);
            return self.drop_msg("view-change", m.from, "view already installed");
        }
        if v.0 > self.view.0.saturating_add(MAX_VIEW_AHEAD) {
            // Kept memory per replica is one view change (below), but a view this far ahead
            // cannot come from a correct replica that is not also able to send the new view.
            return self.drop_msg("view-change", m.from, "view too far ahead");
        }
        // One view change per replica: its latest. A replica that moved on to a higher view no
        // longer takes part in lower ones (§4.4), so older ones are not needed.
        let newer_held = self
            .view_changes
            .range(v..)
            .any(|(_, vs)| vs.contains_key(&m.from));
        if newer_held {
            return;
        }
        if !self.verify(&m) || !self.valid_view_change(&m.body) {
            return self.drop_msg("view-change", m.from, "invalid signature or proofs");
        }
        for vs in self.view_changes.values_mut() {
            vs.remove(&m.from);
        }
        self.view_changes.retain(|_, vs| !vs.is_empty());
        self.view_changes.entry(v).or_default().insert(m.from, m);
        // §4.5.2: f + 1 view changes for views above ours prove a correct replica timed out;
        // join the smallest such view without waiting for our own timer.
        let above: BTreeMap<ReplicaId, View> = self
            .view_changes
            .range(self.view.next()..)
            .flat_map(|(v, vs)| vs.keys().map(move |r| (*r, *v)))
            .fold(BTreeMap::new(), |mut acc, (r, v)| {
                acc.entry(r).or_insert(v);
                acc
            });
        if above.len() > self.f
            && let Some(min) = above.values().min().copied()
        {
            self.start_view_change(min, out);
        }
        self.check_view_change_quorum(out);
    }

    fn check_view_change_quorum(&mut self, out: &mut Out) {
        if self.status != Status::ViewChange {
            return;
        }
        let count = self.view_changes.get(&self.view).map_or(0, BTreeMap::len);
        if count < self.q {
            return;
        }
        if self.deadline.is_none() {
            self.deadline = Some(self.now.plus(self.timeout_ms));
        }
        if self.primary(self.view) == self.cfg.id {
            self.send_new_view(out);
        }
    }

    /// Computes `min-s`, `max-s` and the pre-prepares of `O` (§4.4) from view changes `vcs`.
    /// Returns the checkpoint proof with sequence `min-s` and `(n, d, m)` for `n` in
    /// `(min-s, max-s]`.
    fn compute_o(vcs: &[Signed<ViewChange>]) -> Option<(CheckpointProof, Reproposals)> {
        let min = vcs
            .iter()
            .map(|m| &m.body.checkpoint)
            .max_by_key(|c| c.seq)?;
        let max_s = vcs
            .iter()
            .flat_map(|m| m.body.prepared.iter().map(PreparedProof::seq))
            .max()
            .unwrap_or(min.seq)
            .max(min.seq);
        let mut o = Vec::new();
        for s in (min.seq.0 + 1)..=max_s.0 {
            let s = SeqNo(s);
            // The prepared certificate with the highest view for n, else the null request.
            let best = vcs
                .iter()
                .flat_map(|m| m.body.prepared.iter())
                .filter(|p| p.seq() == s)
                .max_by_key(|p| p.view());
            o.push(match best {
                Some(p) => (s, p.digest(), p.pre_prepare.body.batch.clone()),
                None => {
                    let b = Batch::null();
                    (s, b.digest(), b)
                }
            });
        }
        Some((min.clone(), o))
    }

    fn send_new_view(&mut self, out: &mut Out) {
        let v = self.view;
        let Some(vcs) = self.view_changes.get(&v) else {
            return;
        };
        let vcs: Vec<Signed<ViewChange>> = vcs.values().take(self.q).cloned().collect();
        let Some((_, o)) = Self::compute_o(&vcs) else {
            return;
        };
        let pre_prepares = o
            .into_iter()
            .map(|(seq, digest, batch)| {
                self.sign(PrePrepare {
                    view: v,
                    seq,
                    digest,
                    batch,
                })
            })
            .collect();
        let nv = self.sign(NewView {
            view: v,
            view_changes: vcs,
            pre_prepares,
        });
        self.note(format!("sending new view {v}"));
        out.broadcast(Message::NewView(nv.clone()));
        self.install_new_view(nv, out);
    }

    fn on_new_view(&mut self, m: Signed<NewView>, out: &mut Out) {
        let v = m.body.view;
        if v < self.view || (v == self.view && self.status == Status::Normal) {
            return self.drop_msg("new-view", m.from, "stale view");
        }
        if m.from != self.primary(v) {
            return self.drop_msg("new-view", m.from, "sender is not the new primary");
        }
        if !self.verify(&m) {
            return self.drop_msg("new-view", m.from, "bad signature");
        }
        let nv = &m.body;
        let senders: BTreeSet<ReplicaId> = nv.view_changes.iter().map(|vc| vc.from).collect();
        let vcs_ok = senders.len() == nv.view_changes.len()
            && senders.len() >= self.q
            && nv.view_changes.iter().all(|vc| {
                vc.body.new_view == v && self.verify(vc) && self.valid_view_change(&vc.body)
            });
        if !vcs_ok {
            return self.drop_msg("new-view", m.from, "invalid view-change set");
        }
        // §4.4: a backup checks O by recomputing it from V.
        let Some((_, o)) = Self::compute_o(&nv.view_changes) else {
            return self.drop_msg("new-view", m.from, "empty view-change set");
        };
        let o_ok = o.len() == nv.pre_prepares.len()
            && o.iter().zip(&nv.pre_prepares).all(|((s, d, _), pp)| {
                pp.from == m.from
                    && pp.body.view == v
                    && pp.body.seq == *s
                    && pp.body.digest == *d
                    && pp.body.batch.digest() == *d
                    && self.verify(pp)
            });
        if !o_ok {
            return self.drop_msg("new-view", m.from, "O does not follow from V");
        }
        self.install_new_view(m, out);
    }

    /// Enters the new view: adopts `min-s` as stable checkpoint (fetching state if needed),
    /// accepts the pre-prepares of `O` and prepares them (§4.4).
    fn install_new_view(&mut self, m: Signed<NewView>, out: &mut Out) {
        let v = m.body.view;
        let Some((min, o)) = Self::compute_o(&m.body.view_changes) else {
            return;
        };
        self.note(format!("entering {v}"));
        self.view = v;
        self.status = Status::Normal;
        self.deadline = None;
        self.view_changes = self.view_changes.split_off(&v);
        self.new_view = Some(m.clone());
        self.dirty = true;
        if min.seq > self.stable.seq {
            for cp in &min.proof {
                self.record_checkpoint(cp.clone());
            }
            self.check_stable(min.seq, min.digest, out);
        }
        let max_s = o.last().map_or(min.seq, |(s, _, _)| *s);
        // Discard uncommitted pre-prepares and votes from earlier views.
        for slot in self.log.values_mut() {
            if slot.pre_prepare.as_ref().is_some_and(|p| p.body.view < v) {
                slot.pre_prepare = None;
                slot.ids.clear();
            }
            slot.prepares.retain(|(pv, _), _| *pv >= v);
            slot.commits.retain(|(cv, _), _| *cv >= v);
        }
        let pps: Vec<Signed<PrePrepare>> = m.body.pre_prepares.clone();
        for pp in pps {
            let seq = pp.body.seq;
            if seq <= self.stable.seq {
                continue;
            }
            if let Some(c) = self.log.get(&seq).and_then(|s| s.committed)
                && c != pp.body.digest
            {
                self.note(format!(
                    "new view {v} re-proposes {seq} with another digest"
                ));
            }
            let ids = pp.body.batch.ids();
            self.accept_pre_prepare(pp, ids, out);
        }
        self.in_log = self.ids_in_log();
        self.next_seq = max_s.max(self.stable.seq).max(self.delivered);
        let mut waiting: Vec<(Time, Digest)> = self
            .pending
            .iter()
            .filter(|(d, _)| !self.in_log.contains(*d))
            .map(|(d, (_, t))| (*t, *d))
            .collect();
        waiting.sort();
        self.queue = waiting.into_iter().map(|(_, d)| d).collect();
        if !self.pending.is_empty() {
            self.deadline = Some(self.now.plus(self.timeout_ms));
        }
        self.try_propose(out);
    }

    /// The ids of the requests in accepted pre-prepares not yet delivered.
    fn ids_in_log(&self) -> BTreeSet<Digest> {
        self.log
            .range(self.delivered.next()..)
            .filter(|(_, slot)| slot.pre_prepare.is_some())
            .flat_map(|(_, slot)| slot.ids.iter().copied())
            .collect()
    }

    // ----- persistence and restart -----

    /// The state to persist when an [`Output::Persist`] is emitted.
    pub fn persistent_state(&self) -> PersistentState {
        PersistentState {
            view: self.view,
            status: self.status,
            next_seq: self.next_seq,
            stable: self.stable.clone(),
            slots: self
                .log
                .iter()
                .filter(|(_, s)| s.pre_prepare.is_some() || s.prepared.is_some())
                .map(|(seq, s)| SlotState {
                    seq: *seq,
                    pre_prepare: s.pre_prepare.clone(),
                    prepared: s.prepared.clone(),
                    sent_commit: s.sent_commit,
                    committed: s.committed,
                })
                .collect(),
            view_change: self
                .view_changes
                .get(&self.view)
                .and_then(|m| m.get(&self.cfg.id))
                .cloned()
                .filter(|_| self.status == Status::ViewChange),
            new_view: self.new_view.clone(),
            timeout_ms: self.timeout_ms,
        }
    }

    fn on_restored(&mut self, r: Restore, out: &mut Out) {
        self.executed = r.executed;
        self.delivered = r.executed;
        self.own_digests.insert(r.executed, r.digest);
        let me = self.cfg.id;
        if let Some(st) = r.state {
            self.view = st.view;
            self.status = st.status;
            self.next_seq = st.next_seq;
            self.timeout_ms = st.timeout_ms.max(self.cfg.request_timeout_ms);
            self.new_view = st.new_view;
            if let Some(vc) = st.view_change {
                self.view_changes
                    .entry(vc.body.new_view)
                    .or_default()
                    .insert(me, vc);
            }
            for s in st.slots {
                let mut slot = Slot {
                    prepared: s.prepared,
                    sent_commit: s.sent_commit,
                    committed: s.committed,
                    ..Slot::default()
                };
                // Our own votes are deterministic signatures: re-create them so that we keep
                // saying exactly what we said before the crash.
                if let Some(pp) = &s.pre_prepare {
                    let (v, d) = (pp.body.view, pp.body.digest);
                    if self.primary(v) != me {
                        let p = self.sign(Prepare {
                            view: v,
                            seq: s.seq,
                            digest: d,
                        });
                        slot.prepares.entry((v, d)).or_default().insert(me, p);
                    }
                    if s.sent_commit == Some(v) {
                        let c = self.sign(Commit {
                            view: v,
                            seq: s.seq,
                            digest: d,
                        });
                        slot.commits.entry((v, d)).or_default().insert(me, c);
                    }
                }
                slot.ids = s
                    .pre_prepare
                    .as_ref()
                    .map(|pp| pp.body.batch.ids())
                    .unwrap_or_default();
                slot.pre_prepare = s.pre_prepare;
                self.log.insert(s.seq, slot);
            }
            let stable = st.stable;
            if stable.seq <= self.executed {
                self.advance_stable(stable);
            } else {
                for cp in &stable.proof {
                    self.record_checkpoint(cp.clone());
                }
                self.check_stable(stable.seq, stable.digest, out);
            }
        }
        self.in_log = self.ids_in_log();
        self.note(format!(
            "restored at {} in {} ({:?})",
            self.executed, self.view, self.status
        ));
        if self.executed > SeqNo(0) {
            let cp = self.sign(Checkpoint {
                seq: self.executed,
                digest: r.digest,
            });
            self.record_checkpoint(cp.clone());
            out.broadcast(Message::Checkpoint(cp));
        }
        self.deliver(out);
    }
}

#[cfg(test)]
impl Replica {
    /// Test helper: this replica's own commit for `seq`, if it sent one.
    pub(super) fn log_commit(&self, seq: SeqNo) -> Option<Signed<Commit>> {
        let slot = self.log.get(&seq)?;
        slot.commits
            .values()
            .find_map(|votes| votes.get(&self.cfg.id).cloned())
    }
}
