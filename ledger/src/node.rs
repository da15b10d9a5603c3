//! The peer host: one OS thread per peer that owns the [`Peer`], its redb [`Store`] and its
//! timer, feeds it inputs (messages, client submissions, ticks) and carries out its effects —
//! persist first, in one durable transaction, then send. It owns all the IO and the clock of a
//! peer; it must not make protocol decisions. How bytes travel is a [`Network`]: in-memory
//! channels for the embedded ledger, tonic gRPC for `emrflow ledger node`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::chain::{Genesis, QueryResult, Receipt};
use crate::contracts::Query;
use crate::crypto::{Digest, KeyPair};
use crate::error::{Error, Result};
use crate::ids::{ReplicaId, Time};
use crate::pbft::Config;
use crate::peer::{Effect, Peer, PeerInput, Wire};
use crate::store::{Store, WriteBatch};
use crate::tx::SignedTx;

/// How a node reaches the other peers. Sending never blocks and may lose messages; the
/// protocol retransmits.
pub trait Network: Send + Sync + 'static {
    /// Sends `wire` from this node to peer `to`.
    fn send(&self, to: ReplicaId, wire: Wire);
}

/// What a node's thread receives.
#[derive(Debug)]
pub enum Command {
    /// A message from another peer.
    Wire(ReplicaId, Wire),
    /// A client transaction; answered with its receipt once certified.
    Submit(SignedTx, oneshot::Sender<Result<Receipt>>),
    /// A read-only query.
    Query(Query, oneshot::Sender<QueryResult>),
    /// Stop the thread.
    Shutdown,
}

/// A cloneable handle to a running node.
#[derive(Debug, Clone)]
pub struct NodeHandle {
    id: ReplicaId,
    tx: Sender<Command>,
}

impl NodeHandle {
    /// The node's replica id.
    pub fn id(&self) -> ReplicaId {
        self.id
    }

    /// Hands a message from peer `from` to the node; false once the node has stopped.
    pub fn deliver(&self, from: ReplicaId, wire: Wire) -> bool {
        self.tx.send(Command::Wire(from, wire)).is_ok()
    }

    /// Submits a transaction and waits for its receipt (commit plus `2f + 1` certificate).
    pub async fn submit(&self, tx: SignedTx) -> Result<Receipt> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Submit(tx, reply))
            .map_err(|_| Error::Stopped(format!("{} is not running", self.id)))?;
        rx.await
            .map_err(|_| Error::Stopped(format!("{} stopped before answering", self.id)))?
    }

    /// Asks the node's state a question.
    pub async fn query(&self, q: Query) -> Result<QueryResult> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Query(q, reply))
            .map_err(|_| Error::Stopped(format!("{} is not running", self.id)))?;
        rx.await
            .map_err(|_| Error::Stopped(format!("{} stopped before answering", self.id)))
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

/// Creates the command channel of a node before it starts, so that networks can be wired
/// to every node first.
pub fn channel_for(id: ReplicaId) -> (NodeHandle, Receiver<Command>) {
    let (tx, rx) = channel();
    (NodeHandle { id, tx }, rx)
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
    // The replica's clock starts at zero: set it before any request can arm a timer.
    effects.extend(peer.handle(PeerInput::Tick(unix_ms())));
    let id = handle.id;
    let mut host = Host {
        peer,
        store,
        network,
        timer: None,
        waiters: HashMap::new(),
    };
    host.carry_out(effects)?;
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
            if stop {
                return Ok(());
            }
        }
    }

    fn command(&mut self, cmd: Command, requests: &mut Requests, effects: &mut Vec<Effect>) {
        match cmd {
            Command::Wire(_, Wire::Requests(txs)) => requests.relayed.extend(txs),
            Command::Wire(from, wire) => {
                effects.extend(self.peer.handle(PeerInput::Wire { from, wire }));
            }
            Command::Submit(tx, reply) => {
                // The replica checks the signature (once, in the step's batch) and answers
                // with `Effect::Rejected` if it is bad.
                let id = tx.digest();
                if let Some(r) = self.peer.chain().receipt(&id) {
                    let _ = reply.send(Ok(r));
                    return;
                }
                self.waiters.entry(id).or_default().push(reply);
                requests.client.push(tx);
            }
            Command::Query(q, reply) => {
                let _ = reply.send(self.peer.chain().query(&q));
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
                Effect::Rejected(id) => {
                    for w in self.waiters.remove(&id).into_iter().flatten() {
                        let _ = w.send(Err(Error::Verification("bad client signature".into())));
                    }
                }
                other => sends.push(other),
            }
        }
        self.store.write(&batch)?;
        let me = self.peer.replica().id();
        let n = self.peer.chain().genesis().peers.len() as u32;
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
            let has_waiter = self.peer.chain().block(seq).is_some_and(|b| {
                b.txs
                    .iter()
                    .any(|tx| self.waiters.contains_key(&tx.digest()))
            });
            if !has_waiter {
                continue;
            }
            for receipt in self.peer.chain().block_receipts(seq) {
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
