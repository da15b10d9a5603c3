//! The peer host: one OS thread per peer that owns the [`Peer`], its redb [`Store`] and its
//! timer, feeds it inputs (messages, client submissions, ticks) and carries out its effects —
//! persist first, in one durable transaction, then send. It owns all the IO and the clock of a
//! peer; it must not make protocol decisions. How bytes travel is a [`Network`]: in-memory
//! channels for the embedded ledger, tonic gRPC for `emrflow ledger node`.
//!
//! What waits for the consensus thread is bounded per source: each other peer may have at
//! most [`MAX_QUEUED_PER_PEER`] messages and [`MAX_QUEUED_BYTES_PER_PEER`] bytes queued, and
//! clients together [`MAX_QUEUED_SUBMITS`] transactions; beyond that a peer's messages are
//! dropped (the protocol retransmits) and a client is told the peer is busy. A faulty peer or
//! a flood of clients can thus neither exhaust memory nor crowd out the other peers. Queries
//! never reach the consensus thread: they are answered from the shared chain by the caller.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::chain::{Genesis, QueryResult, Receipt};
use crate::crypto::{Digest, KeyPair};
use crate::error::{Error, Result};
use crate::ids::{ReplicaId, Time, View};
use crate::pbft::{Config, MAX_MESSAGE_BYTES};
use crate::peer::{Effect, Peer, PeerInput, SharedChain, Wire, read_chain};
use crate::store::{Store, WriteBatch};
use crate::tx::{SignedQuery, SignedTx};

/// Most messages from one peer waiting for the consensus thread.
pub const MAX_QUEUED_PER_PEER: usize = 8192;
/// Most bytes of messages from one peer waiting for the consensus thread (one message of the
/// largest size is always let through when nothing of that peer waits).
pub const MAX_QUEUED_BYTES_PER_PEER: usize = MAX_MESSAGE_BYTES;
/// Most client transactions waiting for the consensus thread, all clients together.
pub const MAX_QUEUED_SUBMITS: usize = 16_384;

/// How a node reaches the other peers. Sending never blocks and may lose messages; the
/// protocol retransmits.
pub trait Network: Send + Sync + 'static {
    /// Sends `wire` from this node to peer `to`.
    fn send(&self, to: ReplicaId, wire: Wire);
}

/// What a node's thread receives.
#[derive(Debug)]
pub enum Command {
    /// A message from another peer, with the bytes it took on the wire.
    Wire(ReplicaId, Wire, usize),
    /// A client transaction; answered with its receipt once certified.
    Submit(SignedTx, oneshot::Sender<Result<Receipt>>),
    /// Stop the thread.
    Shutdown,
}

/// What is queued for the consensus thread, per source.
#[derive(Debug)]
struct Admission {
    /// Per peer: messages and bytes queued.
    peers: Vec<(AtomicUsize, AtomicUsize)>,
    submits: AtomicUsize,
}

impl Admission {
    fn new(n: usize) -> Self {
        Self {
            peers: (0..n)
                .map(|_| (AtomicUsize::new(0), AtomicUsize::new(0)))
                .collect(),
            submits: AtomicUsize::new(0),
        }
    }

    /// Takes a place for a message of `bytes` from `from`, if its share allows.
    fn admit_peer(&self, from: ReplicaId, bytes: usize) -> bool {
        let Some((count, queued)) = self.peers.get(from.0 as usize) else {
            return false;
        };
        if count.fetch_add(1, Ordering::AcqRel) >= MAX_QUEUED_PER_PEER {
            count.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        let before = queued.fetch_add(bytes, Ordering::AcqRel);
        if before > 0 && before + bytes > MAX_QUEUED_BYTES_PER_PEER {
            queued.fetch_sub(bytes, Ordering::AcqRel);
            count.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    fn release_peer(&self, from: ReplicaId, bytes: usize) {
        if let Some((count, queued)) = self.peers.get(from.0 as usize) {
            count.fetch_sub(1, Ordering::AcqRel);
            queued.fetch_sub(bytes, Ordering::AcqRel);
        }
    }

    fn admit_submit(&self) -> bool {
        if self.submits.fetch_add(1, Ordering::AcqRel) >= MAX_QUEUED_SUBMITS {
            self.submits.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    fn release_submit(&self) {
        self.submits.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A cloneable handle to a running node.
#[derive(Debug, Clone)]
pub struct NodeHandle {
    id: ReplicaId,
    tx: Sender<Command>,
    admission: Arc<Admission>,
    chain: Arc<OnceLock<SharedChain>>,
    /// The view the consensus thread is in, for status queries.
    view: Arc<AtomicU64>,
}

impl NodeHandle {
    /// The node's replica id.
    pub fn id(&self) -> ReplicaId {
        self.id
    }

    /// Hands a message from peer `from` (authenticated by the caller), which took `bytes` on
    /// the wire, to the node. Dropped when `from`'s share of the queue is full (the protocol
    /// retransmits); false once the node has stopped.
    pub fn deliver(&self, from: ReplicaId, wire: Wire, bytes: usize) -> bool {
        if !self.admission.admit_peer(from, bytes) {
            tracing::debug!(peer = self.id.0, %from, "queue full: message dropped");
            return true;
        }
        if self.tx.send(Command::Wire(from, wire, bytes)).is_err() {
            self.admission.release_peer(from, bytes);
            return false;
        }
        true
    }

    /// Submits a transaction and waits for its receipt (commit plus a quorum certificate).
    pub async fn submit(&self, tx: SignedTx) -> Result<Receipt> {
        if !self.admission.admit_submit() {
            return Err(Error::Busy(format!(
                "{} has {MAX_QUEUED_SUBMITS} transactions waiting",
                self.id
            )));
        }
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Command::Submit(tx, reply)).is_err() {
            self.admission.release_submit();
            return Err(Error::Stopped(format!("{} is not running", self.id)));
        }
        rx.await
            .map_err(|_| Error::Stopped(format!("{} stopped before answering", self.id)))?
    }

    /// Answers a signed query from the node's executed chain, on the caller's thread (never
    /// the consensus thread's): the signature, the ledger and the signer's right to ask are
    /// checked first.
    pub fn answer(&self, q: &SignedQuery) -> Result<QueryResult> {
        let chain = self
            .chain
            .get()
            .ok_or_else(|| Error::Stopped(format!("{} has not started", self.id)))?;
        let mut answer = read_chain(chain).answer(q, unix_ms())?;
        if let QueryResult::Head(head) = &mut answer {
            head.view = View(self.view.load(Ordering::Relaxed));
        }
        Ok(answer)
    }

    /// Asks the node to stop.
    pub fn shutdown(&self) {
        let _ = self.tx.send(Command::Shutdown);
    }
}

/// A running node: its handle and its thread.
#[derive(Debug)]
pub struct Node {
    handle: NodeHandle,
    thread: Option<JoinHandle<Result<()>>>,
}

impl Node {
    /// The handle.
    pub fn handle(&self) -> &NodeHandle {
        &self.handle
    }

    /// Stops the node and waits for its thread.
    pub fn stop(mut self) -> Result<()> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Result<()> {
        self.handle.shutdown();
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| Error::Stopped(format!("{} panicked", self.handle.id)))?,
            None => Ok(()),
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.stop_inner();
    }
}

/// Milliseconds since the Unix epoch: the host's clock, fed to the core as `Tick`s.
#[allow(clippy::disallowed_methods)] // the host is the one place that reads the clock
pub fn unix_ms() -> Time {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    Time(ms)
}

/// Creates the command channel of node `id` among `n` peers before it starts, so that
/// networks can be wired to every node first.
pub fn channel_for(id: ReplicaId, n: usize) -> (NodeHandle, Receiver<Command>) {
    let (tx, rx) = channel();
    (
        NodeHandle {
            id,
            tx,
            admission: Arc::new(Admission::new(n)),
            chain: Arc::new(OnceLock::new()),
            view: Arc::new(AtomicU64::new(0)),
        },
        rx,
    )
}

/// Starts a node thread: restores the peer from `store`, then serves `commands`.
pub fn start(
    handle: NodeHandle,
    commands: Receiver<Command>,
    genesis: Genesis,
    cfg: Config,
    key: KeyPair,
    store: Store,
    network: Arc<dyn Network>,
) -> Result<Node> {
    let (state, blocks) = store.load()?;
    let (mut peer, mut effects) = Peer::restore(genesis, cfg, key, state, blocks)?;
    if handle.chain.set(peer.shared_chain()).is_err() {
        return Err(Error::Invariant(format!("{} started twice", handle.id)));
    }
    // The replica's clock starts at zero: set it before any request can arm a timer.
    effects.extend(peer.handle(PeerInput::Tick(unix_ms())));
    let id = handle.id;
    let mut host = Host {
        peer,
        store,
        network,
        admission: handle.admission.clone(),
        view: handle.view.clone(),
        timer: None,
        waiters: HashMap::new(),
    };
    host.carry_out(effects)?;
    host.view
        .store(host.peer.replica().view().0, Ordering::Relaxed);
    let thread = std::thread::Builder::new()
        .name(format!("ledger-peer{}", id.0))
        .spawn(move || host.run(&commands))
        .map_err(|e| Error::io("thread", e))?;
    Ok(Node {
        handle,
        thread: Some(thread),
    })
}

/// Most commands folded into one persist-then-send step.
const MAX_STEP: usize = 4096;
/// Longest sleep without a tick.
const IDLE: Duration = Duration::from_millis(50);

/// The client requests of one step, handed to the peer together.
#[derive(Default)]
struct Requests {
    client: Vec<SignedTx>,
    relayed: Vec<SignedTx>,
}

struct Host {
    peer: Peer,
    store: Store,
    network: Arc<dyn Network>,
    admission: Arc<Admission>,
    view: Arc<AtomicU64>,
    timer: Option<Time>,
    waiters: HashMap<Digest, Vec<oneshot::Sender<Result<Receipt>>>>,
}

impl Host {
    fn run(mut self, commands: &Receiver<Command>) -> Result<()> {
        loop {
            let now = unix_ms();
            let wait = self
                .timer
                .map_or(IDLE, |t| Duration::from_millis(t.0.saturating_sub(now.0)))
                .min(IDLE);
            let first = match commands.recv_timeout(wait) {
                Ok(c) => Some(c),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            };
            let mut effects = Vec::new();
            let now = unix_ms();
            if self.timer.is_none_or(|t| now >= t) {
                effects.extend(self.peer.handle(PeerInput::Tick(now)));
            }
            let mut stop = false;
            let mut next = first;
            let mut taken = 0;
            let mut requests = Requests::default();
            while let Some(cmd) = next {
                taken += 1;
                match cmd {
                    Command::Shutdown => {
                        stop = true;
                        break;
                    }
                    c => self.command(c, &mut requests, &mut effects),
                }
                next = if taken < MAX_STEP {
                    commands.try_recv().ok()
                } else {
                    None
                };
            }
            // The step's client requests go in together, so the replica checks their
            // signatures as one batch (and relays them in one message per peer).
            if !requests.relayed.is_empty() {
                effects.extend(self.peer.handle(PeerInput::Relayed(requests.relayed)));
            }
            if !requests.client.is_empty() {
                effects.extend(self.peer.handle(PeerInput::Client(requests.client)));
            }
            self.carry_out(effects)?;
            self.view
                .store(self.peer.replica().view().0, Ordering::Relaxed);
            if stop {
                return Ok(());
            }
        }
    }

    fn command(&mut self, cmd: Command, requests: &mut Requests, effects: &mut Vec<Effect>) {
        match cmd {
            Command::Wire(from, Wire::Requests(txs), bytes) => {
                self.admission.release_peer(from, bytes);
                requests.relayed.extend(txs);
            }
            Command::Wire(from, wire, bytes) => {
                self.admission.release_peer(from, bytes);
                effects.extend(self.peer.handle(PeerInput::Wire { from, wire }));
            }
            Command::Submit(tx, reply) => {
                self.admission.release_submit();
                // The replica checks the signature (once, in the step's batch) and answers
                // with `Effect::Rejected` if it is bad.
                let id = tx.digest();
                let known = self.peer.chain().receipt(&id);
                if let Some(r) = known {
                    let _ = reply.send(Ok(r));
                    return;
                }
                self.waiters.entry(id).or_default().push(reply);
                requests.client.push(tx);
            }
            Command::Shutdown => {}
        }
    }

    /// Persist (one durable transaction), then send, then answer clients.
    fn carry_out(&mut self, effects: Vec<Effect>) -> Result<()> {
        let mut batch = WriteBatch::default();
        let mut certified = Vec::new();
        let mut sends = Vec::new();
        for e in effects {
            match e {
                Effect::PersistState => batch.state = Some(self.peer.persistent_state()),
                Effect::PersistBlock(b) => batch.blocks.push(*b),
                Effect::PersistCertificate(c) => batch.certs.push(c),
                Effect::SetTimer(t) => self.timer = Some(t),
                Effect::Certified(seq) => certified.push(seq),
                Effect::Rejected { id, reason } => {
                    for w in self.waiters.remove(&id).into_iter().flatten() {
                        let _ = w.send(Err(Error::Denied(format!(
                            "refused before ordering: {reason}"
                        ))));
                    }
                }
                other => sends.push(other),
            }
        }
        self.store.write(&batch)?;
        let me = self.peer.replica().id();
        let n = self.peer.chain().genesis().peers.len() as u32;
        let chain = self.peer.shared_chain();
        let chain = read_chain(&chain);
        for e in sends {
            match e {
                Effect::Send { to, wire } => self.network.send(to, wire),
                Effect::Broadcast(wire) => {
                    for to in (0..n).map(ReplicaId).filter(|p| *p != me) {
                        self.network.send(to, wire.clone());
                    }
                }
                _ => {}
            }
        }
        if self.waiters.is_empty() {
            return Ok(());
        }
        for seq in certified {
            let has_waiter = chain.block(seq).is_some_and(|b| {
                b.txs
                    .iter()
                    .any(|tx| self.waiters.contains_key(&tx.digest()))
            });
            if !has_waiter {
                continue;
            }
            for receipt in chain.block_receipts(seq) {
                if let Some(waiting) = self.waiters.remove(&receipt.tx_id()) {
                    for w in waiting {
                        let _ = w.send(Ok(receipt.clone()));
                    }
                }
            }
        }
        Ok(())
    }
}
