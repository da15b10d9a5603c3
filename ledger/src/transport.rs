//! gRPC over tonic: the `Peer` service (one client stream from every peer to every other) and
//! the `Ledger` service (submit, query), plus the [`Network`] that feeds the peer streams. It
//! converts between protobuf envelopes and core values and does nothing else; errors map to a
//! `tonic::Status` in one place.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::chain::{Genesis, QueryResult, Receipt};
use crate::codec;
use crate::contracts::Query;
use crate::error::{Error, Result};
use crate::ids::ReplicaId;
use crate::node::{Network, NodeHandle};
use crate::peer::Wire;
use crate::proto::ledger_client::LedgerClient;
use crate::proto::ledger_server::{Ledger, LedgerServer};
use crate::proto::peer_client::PeerClient;
use crate::proto::peer_server::{Peer, PeerServer};
use crate::proto::{Ack, Envelope, QueryReply, QueryRequest, SubmitReply, SubmitRequest};
use crate::tx::SignedTx;

/// Largest gRPC message accepted (state-transfer replies carry many blocks).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        match e {
            Error::Codec(_) | Error::Invalid { .. } | Error::Verification(_) => {
                Status::invalid_argument(e.to_string())
            }
            Error::Stopped(_) => Status::unavailable(e.to_string()),
            Error::Timeout(_) => Status::deadline_exceeded(e.to_string()),
            Error::Rpc(s) => *s,
            _ => Status::internal(e.to_string()),
        }
    }
}

/// Serves both services of one node.
#[derive(Debug, Clone)]
struct Service {
    node: NodeHandle,
}

#[tonic::async_trait]
impl Peer for Service {
    async fn deliver(
        &self,
        request: Request<Streaming<Envelope>>,
    ) -> std::result::Result<Response<Ack>, Status> {
        let mut stream = request.into_inner();
        while let Some(env) = stream.message().await? {
            let wire: Wire = codec::decode(&env.body).map_err(Status::from)?;
            if !self.node.deliver(ReplicaId(env.from), wire) {
                // Ends the stream so the sender reconnects to whoever listens next.
                return Err(Status::unavailable("peer stopped"));
            }
        }
        Ok(Response::new(Ack {}))
    }
}

#[tonic::async_trait]
impl Ledger for Service {
    async fn submit(
        &self,
        request: Request<SubmitRequest>,
    ) -> std::result::Result<Response<SubmitReply>, Status> {
        let tx: SignedTx = codec::decode(&request.into_inner().transaction)?;
        let receipt = self.node.submit(tx).await?;
        Ok(Response::new(SubmitReply {
            receipt: codec::encode(&receipt)?.into(),
        }))
    }

    async fn query(
        &self,
        request: Request<QueryRequest>,
    ) -> std::result::Result<Response<QueryReply>, Status> {
        let q: Query = codec::decode(&request.into_inner().query)?;
        let result = self.node.query(q).await?;
        Ok(Response::new(QueryReply {
            result: codec::encode(&result)?.into(),
        }))
    }
}

/// Serves the node on `addr` until `shutdown` resolves.
pub async fn serve(
    node: NodeHandle,
    addr: SocketAddr,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let svc = Service { node };
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(
            PeerServer::new(svc.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            LedgerServer::new(svc)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .serve_with_shutdown(addr, shutdown)
        .await?;
    Ok(())
}

/// Peer links over gRPC: one outbound queue and one reconnecting stream per peer.
#[derive(Debug)]
pub struct GrpcNetwork {
    queues: Vec<Option<mpsc::UnboundedSender<Wire>>>,
}

impl GrpcNetwork {
    /// Starts one link task per other peer on the current tokio runtime.
    pub fn start(genesis: &Genesis, me: ReplicaId) -> Self {
        let queues = genesis
            .peers
            .iter()
            .map(|p| {
                if p.id == me {
                    return None;
                }
                let (tx, rx) = mpsc::unbounded_channel();
                tokio::spawn(link(me, format!("http://{}", p.address), rx));
                Some(tx)
            })
            .collect();
        Self { queues }
    }
}

impl Network for GrpcNetwork {
    fn send(&self, to: ReplicaId, wire: Wire) {
        if let Some(Some(q)) = self.queues.get(to.0 as usize) {
            let _ = q.send(wire);
        }
    }
}

/// Keeps a stream open to one peer, reconnecting when it breaks. Messages queued while the
/// peer is unreachable are dropped; the protocol retransmits what matters.
async fn link(me: ReplicaId, url: String, mut rx: mpsc::UnboundedReceiver<Wire>) {
    loop {
        let client = match PeerClient::connect(url.clone()).await {
            Ok(c) => c
                .max_encoding_message_size(MAX_MESSAGE_BYTES)
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
            Err(_) => {
                // Drain what piled up while the peer is down, then retry.
                while rx.try_recv().is_ok() {}
                tokio::time::sleep(Duration::from_millis(100)).await;
                if rx.is_closed() {
                    return;
                }
                continue;
            }
        };
        let (tx, stream_rx) = mpsc::channel::<Envelope>(8192);
        let mut client = client;
        let call =
            tokio::spawn(async move { client.deliver(ReceiverStream::new(stream_rx)).await });
        loop {
            let Some(wire) = rx.recv().await else {
                return;
            };
            let Ok(body) = codec::encode(&wire) else {
                continue;
            };
            let env = Envelope {
                from: me.0,
                body: body.into(),
            };
            if tx.send(env).await.is_err() || call.is_finished() {
                break;
            }
        }
        call.abort();
    }
}

/// A client of one or more peers' `Ledger` service, failing over between them. Connections
/// are made lazily and kept, so create it inside a tokio runtime and reuse it.
#[derive(Debug, Clone)]
pub struct RemoteLedger {
    genesis: Arc<Genesis>,
    endpoints: Vec<(String, tonic::transport::Channel)>,
    timeout: Duration,
}

impl RemoteLedger {
    /// A client for every peer listed in the genesis.
    pub fn new(genesis: Genesis) -> Self {
        let endpoints = genesis
            .peers
            .iter()
            .filter_map(|p| {
                let url = format!("http://{}", p.address);
                let ch = tonic::transport::Endpoint::from_shared(url.clone())
                    .ok()?
                    .connect_timeout(Duration::from_secs(2))
                    .tcp_nodelay(true)
                    .connect_lazy();
                Some((url, ch))
            })
            .collect();
        Self {
            genesis: Arc::new(genesis),
            endpoints,
            timeout: Duration::from_secs(10),
        }
    }

    /// Only talk to these peers (by index), in this order of preference.
    pub fn with_peers(mut self, peers: &[usize]) -> Self {
        let all = std::mem::take(&mut self.endpoints);
        self.endpoints = peers.iter().filter_map(|i| all.get(*i).cloned()).collect();
        self
    }

    /// How long one attempt at one peer may take.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The genesis.
    pub fn genesis(&self) -> &Genesis {
        &self.genesis
    }

    async fn client(&self, i: usize) -> Result<LedgerClient<tonic::transport::Channel>> {
        let (_, ch) = self
            .endpoints
            .get(i)
            .ok_or_else(|| Error::Config("no peer endpoints".into()))?;
        Ok(LedgerClient::new(ch.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }

    /// Submits to peer `start` first, then the others; the same signed transaction is
    /// idempotent (a replay of an executed one just returns its receipt).
    pub async fn submit_from(&self, tx: &SignedTx, start: usize) -> Result<Receipt> {
        let body = codec::encode(tx)?;
        let mut last = Error::Stopped("no peer reachable".into());
        for k in 0..self.endpoints.len() * 2 {
            let i = (start + k) % self.endpoints.len().max(1);
            let attempt = async {
                let mut c = self.client(i).await?;
                let reply = c
                    .submit(SubmitRequest {
                        transaction: body.clone().into(),
                    })
                    .await?;
                codec::decode::<Receipt>(&reply.into_inner().receipt)
            };
            match tokio::time::timeout(self.timeout, attempt).await {
                Ok(Ok(r)) => return Ok(r),
                Ok(Err(Error::Rpc(s))) if s.code() == tonic::Code::InvalidArgument => {
                    return Err(Error::Rpc(s));
                }
                Ok(Err(e)) => last = e,
                Err(_) => last = Error::Timeout(format!("submit to {}", self.endpoints[i].0)),
            }
        }
        Err(last)
    }

    /// Asks peer `i` (an index into the endpoints).
    pub async fn query_peer(&self, i: usize, q: &Query) -> Result<QueryResult> {
        let mut c = self.client(i).await?;
        let reply = c
            .query(QueryRequest {
                query: codec::encode(q)?.into(),
            })
            .await?;
        codec::decode(&reply.into_inner().result)
    }
}

impl crate::client::LedgerApi for RemoteLedger {
    async fn submit(&self, tx: SignedTx) -> Result<Receipt> {
        self.submit_from(&tx, 0).await
    }

    async fn query(&self, q: Query) -> Result<QueryResult> {
        let mut last = Error::Stopped("no peer reachable".into());
        for i in 0..self.endpoints.len() {
            match self.query_peer(i, &q).await {
                Ok(r) => return Ok(r),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn genesis(&self) -> &Genesis {
        &self.genesis
    }
}

/// Runs one peer as `emrflow ledger node` does: opens its store, links to the other peers over
/// gRPC and serves until `shutdown` resolves. Must run inside a tokio runtime.
pub async fn run_node(
    cfg: &crate::config::NodeConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let genesis = crate::config::read_genesis(&cfg.genesis)?;
    let id = ReplicaId(cfg.id);
    let key = crate::config::read_key(&cfg.key)?;
    crate::peer::check_key(&genesis, id, &key)?;
    let listen = if cfg.listen.is_empty() {
        genesis
            .peers
            .get(cfg.id as usize)
            .map(|p| p.address.clone())
            .ok_or_else(|| Error::Config(format!("no peer {id} in the genesis")))?
    } else {
        cfg.listen.clone()
    };
    let addr: SocketAddr = listen
        .parse()
        .map_err(|e| Error::Config(format!("listen address {listen:?}: {e}")))?;
    let store = crate::store::Store::open(&cfg.store_path())?;
    let (handle, rx) = crate::node::channel_for(id);
    let replica = cfg.consensus.replica_config(&genesis, id);
    // The peer's network IO (its gRPC server and its links to the other peers) runs on one
    // thread of its own, next to the consensus thread of `node::start`, instead of on the
    // caller's multi-threaded runtime: every message crosses from IO to consensus anyway, and
    // with several workers it also hops between workers, which on a small machine hosting
    // several peers costs more CPU in context switches than the IO itself.
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (done_tx, mut done_rx) = tokio::sync::oneshot::channel::<Result<()>>();
    std::thread::Builder::new()
        .name(format!("ledger-io{}", id.0))
        .spawn(move || {
            let io = || -> Result<()> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| Error::io("io runtime", e))?;
                rt.block_on(async move {
                    let net = Arc::new(GrpcNetwork::start(&genesis, id));
                    let node =
                        crate::node::start(handle.clone(), rx, genesis, replica, key, store, net)?;
                    // Stop at once on shutdown: a graceful drain would wait for the other
                    // peers' streams, which never end.
                    let served = tokio::select! {
                        r = serve(handle, addr, std::future::pending()) => r,
                        _ = stop_rx => Ok(()),
                    };
                    node.stop()?;
                    served
                })
                // The runtime is dropped here, closing the listener before `done` is sent.
            };
            let _ = done_tx.send(io());
        })
        .map_err(|e| Error::io("io thread", e))?;
    let stopped = |r: std::result::Result<Result<()>, _>| {
        r.unwrap_or_else(|_| Err(Error::Stopped(format!("{id}: the io thread died"))))
    };
    tokio::select! {
        r = &mut done_rx => return stopped(r),
        () = shutdown => {}
    }
    let _ = stop_tx.send(());
    stopped(done_rx.await)
}
