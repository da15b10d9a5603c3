//! gRPC over tonic and TLS ([`crate::tls`]): the `Peer` service on the peer listener (one
//! client stream from every peer to every other, mutual TLS), the `Ledger` service on the
//! client listener (submit, query), and the [`GrpcNetwork`] that feeds the peer streams. It
//! converts between protobuf envelopes and core values and does nothing else; errors map to a
//! `tonic::Status` in one place.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status, Streaming};

use crate::chain::{Genesis, QueryResult, Receipt};
use crate::codec;
use crate::crypto::KeyPair;
use crate::error::{Error, Result};
use crate::ids::{ReplicaId, max_faulty};
use crate::node::{Network, NodeHandle};
use crate::peer::Wire;
use crate::proto::ledger_client::LedgerClient;
use crate::proto::ledger_server::{Ledger, LedgerServer};
use crate::proto::peer_client::PeerClient;
use crate::proto::peer_server::{Peer, PeerServer};
use crate::proto::{Ack, Envelope, QueryReply, QueryRequest, SubmitReply, SubmitRequest};
use crate::tls::{self, PeerIdentity};
use crate::tx::{MAX_QUERY_BYTES, MAX_TX_BYTES, SignedQuery, SignedTx};

pub use crate::pbft::MAX_MESSAGE_BYTES;

/// Largest request the client listener decodes: a transaction or a query of the largest size
/// with its envelope. Anything an outsider sends beyond that is refused before decoding.
pub const MAX_CLIENT_REQUEST_BYTES: usize = MAX_TX_BYTES + MAX_QUERY_BYTES + 1024;
/// Most messages waiting to be sent to one peer; when full, messages are dropped (the
/// protocol retransmits).
pub const MAX_OUTBOUND_PER_PEER: usize = 8192;

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        match e {
            Error::Codec(_) | Error::Invalid { .. } | Error::Verification(_) => {
                Status::invalid_argument(e.to_string())
            }
            Error::Denied(_) => Status::permission_denied(e.to_string()),
            Error::Busy(_) => Status::resource_exhausted(e.to_string()),
            Error::Stopped(_) => Status::unavailable(e.to_string()),
            Error::Timeout(_) => Status::deadline_exceeded(e.to_string()),
            Error::Rpc(s) => *s,
            _ => Status::internal(e.to_string()),
        }
    }
}

/// The `Peer` service of one node.
#[derive(Debug, Clone)]
struct PeerService {
    node: NodeHandle,
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn deliver(
        &self,
        request: Request<Streaming<Envelope>>,
    ) -> std::result::Result<Response<Ack>, Status> {
        // The sender is the genesis peer the TLS handshake proved; the listener accepts no
        // other connection, so a stream without one is a wiring error, refused all the same.
        let Some(from) = request.extensions().get::<PeerIdentity>().and_then(|p| p.0) else {
            return Err(Status::unauthenticated("not a genesis peer"));
        };
        let mut stream = request.into_inner();
        while let Some(env) = stream.message().await? {
            let wire: Wire = codec::decode(&env.body).map_err(Status::from)?;
            if !self.node.deliver(from, wire, env.body.len()) {
                // Ends the stream so the sender reconnects to whoever listens next.
                return Err(Status::unavailable("peer stopped"));
            }
        }
        Ok(Response::new(Ack {}))
    }
}

/// The `Ledger` service of one node.
#[derive(Debug, Clone)]
struct LedgerService {
    node: NodeHandle,
}

#[tonic::async_trait]
impl Ledger for LedgerService {
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
        let q: SignedQuery = codec::decode(&request.into_inner().query)?;
        // Off the IO thread as well as the consensus thread: a large answer is built under a
        // read lock of the chain on a blocking-pool thread.
        let node = self.node.clone();
        let result = tokio::task::spawn_blocking(move || node.answer(&q))
            .await
            .map_err(|e| Status::internal(e.to_string()))??;
        Ok(Response::new(QueryReply {
            result: codec::encode(&result)?.into(),
        }))
    }
}

/// Where and how one node serves.
#[derive(Debug, Clone)]
pub struct Listeners {
    /// The peer listener (mutual TLS).
    pub peer: SocketAddr,
    /// The client listener (TLS).
    pub client: SocketAddr,
}

async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::io(format!("listen on {addr}"), e))
}

/// Serves the node's two listeners until `shutdown` resolves: the `Peer` service under mutual
/// TLS for the genesis peers on `at.peer`, the `Ledger` service under TLS on `at.client`.
pub async fn serve(
    node: NodeHandle,
    genesis: &Genesis,
    key: &KeyPair,
    at: Listeners,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let peers = genesis.peer_keys();
    let peer_incoming = tls::incoming(
        bind(at.peer).await?,
        tls::peer_server_config(genesis, key)?,
        peers.clone(),
    );
    let client_incoming = tls::incoming(
        bind(at.client).await?,
        tls::client_server_config(key)?,
        peers,
    );
    let peer_server = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(
            PeerServer::new(PeerService { node: node.clone() })
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .serve_with_incoming(peer_incoming);
    let client_server = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(
            LedgerServer::new(LedgerService { node })
                .max_decoding_message_size(MAX_CLIENT_REQUEST_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .serve_with_incoming(client_incoming);
    tokio::select! {
        r = peer_server => r?,
        r = client_server => r?,
        () = shutdown => {}
    }
    Ok(())
}

/// A tonic channel to `addr` over TLS under `config`, connected on first use.
fn channel(addr: &str, config: Arc<rustls::ClientConfig>) -> Result<Channel> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(2))
        .connect_with_connector_lazy(tls::Dialer::new(config, addr.to_string())))
}

/// Peer links over gRPC and mutual TLS: one bounded outbound queue and one reconnecting
/// stream per peer.
#[derive(Debug)]
pub struct GrpcNetwork {
    queues: Vec<Option<mpsc::Sender<Wire>>>,
}

impl GrpcNetwork {
    /// Starts one link task per other peer on the current tokio runtime; `key` is this peer's
    /// key, its TLS identity.
    pub fn start(genesis: &Genesis, me: ReplicaId, key: &KeyPair) -> Result<Self> {
        let mut queues = Vec::with_capacity(genesis.peers.len());
        for p in &genesis.peers {
            if p.id == me {
                queues.push(None);
                continue;
            }
            let config = tls::peer_client_config(key, p.public_key)?;
            let (tx, rx) = mpsc::channel(MAX_OUTBOUND_PER_PEER);
            tokio::spawn(link(p.address.clone(), config, rx));
            queues.push(Some(tx));
        }
        Ok(Self { queues })
    }
}

impl Network for GrpcNetwork {
    fn send(&self, to: ReplicaId, wire: Wire) {
        if let Some(Some(q)) = self.queues.get(to.0 as usize)
            && q.try_send(wire).is_err()
        {
            tracing::debug!(%to, "outbound queue full: message dropped");
        }
    }
}

/// Keeps a stream open to one peer, reconnecting when it breaks. Messages queued while the
/// peer is unreachable are dropped; the protocol retransmits what matters.
async fn link(addr: String, config: Arc<rustls::ClientConfig>, mut rx: mpsc::Receiver<Wire>) {
    loop {
        let connected = match Endpoint::from_shared(format!("http://{addr}")) {
            Ok(e) => {
                e.connect_timeout(Duration::from_secs(2))
                    .connect_with_connector(tls::Dialer::new(config.clone(), addr.clone()))
                    .await
            }
            Err(e) => {
                tracing::error!(%addr, error = %e, "bad peer address");
                return;
            }
        };
        let client = match connected {
            Ok(c) => PeerClient::new(c)
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
        let (tx, stream_rx) = mpsc::channel::<Envelope>(MAX_OUTBOUND_PER_PEER);
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
            let env = Envelope { body: body.into() };
            if tx.send(env).await.is_err() || call.is_finished() {
                break;
            }
        }
        call.abort();
    }
}

/// A client of one or more peers' `Ledger` service over TLS, failing over between them.
/// Each peer is authenticated by its genesis key. Connections are made lazily and kept, so
/// create it inside a tokio runtime and reuse it.
#[derive(Debug, Clone)]
pub struct RemoteLedger {
    genesis: Arc<Genesis>,
    endpoints: Vec<(String, Channel)>,
    timeout: Duration,
}

impl RemoteLedger {
    /// A client for every peer listed in the genesis, at its client address.
    pub fn new(genesis: Genesis) -> Result<Self> {
        let endpoints = genesis
            .peers
            .iter()
            .map(|p| {
                let config = tls::ledger_client_config(p.public_key)?;
                Ok((
                    p.client_address.clone(),
                    channel(&p.client_address, config)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            genesis: Arc::new(genesis),
            endpoints,
            timeout: Duration::from_secs(10),
        })
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

    fn client(&self, i: usize) -> Result<LedgerClient<Channel>> {
        let (_, ch) = self
            .endpoints
            .get(i)
            .ok_or_else(|| Error::Config("no peer endpoints".into()))?;
        Ok(LedgerClient::new(ch.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_CLIENT_REQUEST_BYTES))
    }

    /// Submits to peer `start` first, then the others; the same signed transaction is
    /// idempotent (a replay of an executed one just returns its receipt). A refusal (a bad
    /// signature, a limit, an unknown signer) is final; an unreachable or busy peer is not.
    pub async fn submit_from(&self, tx: &SignedTx, start: usize) -> Result<Receipt> {
        let body = codec::encode(tx)?;
        let mut last = Error::Stopped("no peer reachable".into());
        for k in 0..self.endpoints.len() * 2 {
            let i = (start + k) % self.endpoints.len().max(1);
            let attempt = async {
                let mut c = self.client(i)?;
                let reply = c
                    .submit(SubmitRequest {
                        transaction: body.clone().into(),
                    })
                    .await?;
                codec::decode::<Receipt>(&reply.into_inner().receipt)
            };
            match tokio::time::timeout(self.timeout, attempt).await {
                Ok(Ok(r)) => return Ok(r),
                Ok(Err(Error::Rpc(s)))
                    if matches!(
                        s.code(),
                        tonic::Code::InvalidArgument | tonic::Code::PermissionDenied
                    ) =>
                {
                    return Err(Error::Rpc(s));
                }
                Ok(Err(e)) => last = e,
                Err(_) => last = Error::Timeout(format!("submit to {}", self.endpoints[i].0)),
            }
        }
        Err(last)
    }

    /// Asks peer `i` (an index into the endpoints).
    pub async fn query_peer(&self, i: usize, q: &SignedQuery) -> Result<QueryResult> {
        let mut c = self.client(i)?;
        let attempt = async {
            let reply = c
                .query(QueryRequest {
                    query: codec::encode(q)?.into(),
                })
                .await?;
            codec::decode(&reply.into_inner().result)
        };
        tokio::time::timeout(self.timeout, attempt)
            .await
            .map_err(|_| Error::Timeout(format!("query to {}", self.endpoints[i].0)))?
    }
}

impl crate::client::LedgerApi for RemoteLedger {
    async fn submit(&self, tx: SignedTx) -> Result<Receipt> {
        self.submit_from(&tx, 0).await
    }

    async fn query(&self, q: SignedQuery) -> Result<QueryResult> {
        let mut last = Error::Stopped("no peer reachable".into());
        for i in 0..self.endpoints.len() {
            match self.query_peer(i, &q).await {
                Ok(r) => return Ok(r),
                // A refusal is the ledger's answer, not a peer's failure.
                Err(Error::Rpc(s)) if s.code() == tonic::Code::PermissionDenied => {
                    return Err(Error::Rpc(s));
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    async fn query_all(&self, q: SignedQuery) -> Vec<Result<QueryResult>> {
        let asks = (0..self.endpoints.len()).map(|i| self.query_peer(i, &q));
        futures::future::join_all(asks).await
    }

    fn max_faulty(&self) -> usize {
        max_faulty(self.genesis.peers.len())
    }

    fn genesis(&self) -> &Genesis {
        &self.genesis
    }
}

/// Runs one peer as `emrflow ledger node` does: opens its store, links to the other peers over
/// mutual TLS, serves its peer and client listeners until `shutdown` resolves. Must run inside
/// a tokio runtime.
pub async fn run_node(
    cfg: &crate::config::NodeConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let genesis = crate::config::read_genesis(&cfg.genesis)?;
    let id = ReplicaId(cfg.id);
    let key = crate::config::read_key(&cfg.key)?;
    crate::peer::check_key(&genesis, id, &key)?;
    let me = genesis
        .peers
        .get(cfg.id as usize)
        .ok_or_else(|| Error::Config(format!("no peer {id} in the genesis")))?;
    let parse = |configured: &str, default: &str, what: &str| -> Result<SocketAddr> {
        let a = if configured.is_empty() {
            default
        } else {
            configured
        };
        a.parse()
            .map_err(|e| Error::Config(format!("{what} address {a:?}: {e}")))
    };
    let at = Listeners {
        peer: parse(&cfg.listen, &me.address, "listen")?,
        client: parse(&cfg.client_listen, &me.client_address, "client listen")?,
    };
    let store = crate::store::Store::open(&cfg.store_path())?;
    let (handle, rx) = crate::node::channel_for(id, genesis.peers.len());
    let replica = cfg.consensus.replica_config(&genesis, id);
    // The peer's network IO (its gRPC servers and its links to the other peers) runs on one
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
                    let net = Arc::new(GrpcNetwork::start(&genesis, id, &key)?);
                    let node = crate::node::start(
                        handle.clone(),
                        rx,
                        genesis.clone(),
                        replica,
                        key.clone(),
                        store,
                        net,
                    )?;
                    // Stop at once on shutdown: a graceful drain would wait for the other
                    // peers' streams, which never end.
                    let served = tokio::select! {
                        r = serve(handle, &genesis, &key, at, std::future::pending()) => r,
                        _ = stop_rx => Ok(()),
                    };
                    node.stop()?;
                    served
                })
                // The runtime is dropped here, closing the listeners before `done` is sent.
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
