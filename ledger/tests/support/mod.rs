//! A four-peer ledger on 127.0.0.1 for the adversarial tests: real `run_node` peers with their
//! TLS listeners on free ports, a client, and a way to speak to a peer listener with any key
//! (a genesis peer's, to play a Byzantine peer, or an outsider's). Waits poll for a condition;
//! none sleeps a fixed time for progress.
#![allow(dead_code, unreachable_pub)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ledger::chain::{Genesis, Head, QueryResult, Receipt};
use ledger::client::{Client, Reader};
use ledger::config::{self, InitOptions, NodeConfig};
use ledger::contracts::{Access, Call, Query};
use ledger::crypto::{Digest, KeyPair, PublicKey};
use ledger::peer::Wire;
use ledger::proto::Envelope;
use ledger::proto::peer_client::PeerClient;
use ledger::transport::{RemoteLedger, run_node};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;

/// A base port with `2 n` free consecutive ports.
pub fn free_base(n: u16) -> u16 {
    for _ in 0..400 {
        let Ok(l) = TcpListener::bind("127.0.0.1:0") else {
            continue;
        };
        let base = l.local_addr().map(|a| a.port()).unwrap_or(0);
        drop(l);
        if base == 0 || base > 60_000 {
            continue;
        }
        if (0..2 * n).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return base;
        }
    }
    panic!("no free ports on 127.0.0.1");
}

/// Keys from a counter: deterministic ledgers.
pub fn seeded() -> impl FnMut() -> KeyPair {
    let mut n = 0u8;
    move || {
        n += 1;
        KeyPair::from_seed([n; 32])
    }
}

/// A peer running in the test: its stop signal and its task.
type RunningPeer = (oneshot::Sender<()>, JoinHandle<ledger::Result<()>>);

/// A running ledger of four peers.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub genesis: Genesis,
    pub admin: KeyPair,
    pub remote: RemoteLedger,
    nodes: Vec<Option<RunningPeer>>,
}

impl Cluster {
    /// Writes a ledger and starts the peers listed in `running` (the others stay down, for a
    /// test to play them).
    pub async fn start(running: &[usize]) -> Self {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = InitOptions {
            base_port: free_base(4),
            ..InitOptions::default()
        };
        config::init_with(dir.path(), &opts, &mut seeded()).expect("init");
        let genesis = config::read_genesis(&dir.path().join("genesis.json")).expect("genesis");
        let admin = config::read_key(&dir.path().join("admin.key")).expect("admin");
        let remote = RemoteLedger::new(genesis.clone())
            .expect("client")
            .with_timeout(Duration::from_secs(5));
        let mut c = Self {
            dir,
            genesis,
            admin,
            remote,
            nodes: (0..4).map(|_| None).collect(),
        };
        for i in running {
            c.spawn(*i);
        }
        for i in running {
            c.wait_serving(*i).await;
        }
        c
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// The key file of peer `i` (what a test needs to play that peer).
    pub fn peer_key(&self, i: usize) -> KeyPair {
        config::read_key(&self.dir.path().join(format!("peer{i}/key"))).expect("peer key")
    }

    pub fn spawn(&mut self, i: usize) {
        let cfg = NodeConfig::load(&self.dir.path().join(format!("peer{i}.toml"))).expect("config");
        let (stop, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            run_node(&cfg, async {
                let _ = rx.await;
            })
            .await
        });
        self.nodes[i] = Some((stop, task));
    }

    pub async fn stop_all(&mut self) {
        for (stop, task) in self.nodes.iter_mut().filter_map(Option::take) {
            let _ = stop.send(());
            let _ = task.await;
        }
    }

    /// Peer `i`'s head, asked by the admin over the client listener.
    pub async fn head(&self, i: usize) -> Option<Head> {
        let q = Reader::new(&self.remote, self.admin.clone())
            .sign(Query::Head)
            .ok()?;
        match self.remote.query_peer(i, &q).await {
            Ok(QueryResult::Head(h)) => Some(h),
            _ => None,
        }
    }

    pub async fn wait_serving(&self, i: usize) {
        wait_until(
            Duration::from_secs(30),
            &format!("peer {i} to serve"),
            || async { self.head(i).await.map(|_| ()) },
        )
        .await;
    }

    /// The heads of the peers in `peers`, once they all agree (blocks and certificates).
    pub async fn settled_heads(&self, peers: &[usize]) -> Head {
        wait_until(Duration::from_secs(60), "the peers to agree", || async {
            let mut heads = Vec::new();
            for i in peers {
                heads.push(self.head(*i).await?);
            }
            let first = heads.first()?.clone();
            heads
                .iter()
                .all(|h| *h == first && h.certified == h.height)
                .then_some(first)
        })
        .await
    }

    /// Commits a fresh audited access signed by the admin through peer `via` and checks its
    /// receipt: the ledger is still committing.
    pub async fn commits(&self, via: usize, label: &str) -> Receipt {
        let client = Client::new(&self.remote, self.admin.clone());
        let tx = client
            .sign(Call::RecordAccess {
                subject: Digest::of(label.as_bytes()),
                access: Access::Read,
                purpose: label.into(),
            })
            .expect("sign");
        let r = tokio::time::timeout(Duration::from_secs(60), self.remote.submit_from(&tx, via))
            .await
            .expect("commit in time")
            .expect("commit");
        r.verify(&self.genesis).expect("receipt verifies");
        r
    }
}

/// Polls `f` until it returns `Some`, at most `limit`.
pub async fn wait_until<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    #[allow(clippy::disallowed_methods)] // a deadline for the test, not consensus time
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A stream of peer messages to `to`'s peer listener, authenticated (or not) by `key`: what a
/// Byzantine peer (with its genesis key) or an outsider (with any other key) can send. Fails
/// when the listener refuses the handshake.
pub async fn peer_link(
    genesis: &Genesis,
    key: &KeyPair,
    to: usize,
) -> Result<mpsc::Sender<Wire>, String> {
    let peer = &genesis.peers[to];
    let channel = peer_channel(key, peer.public_key, &peer.address).await?;
    let mut client = PeerClient::new(channel).max_encoding_message_size(256 << 20);
    let (tx, rx) = mpsc::channel::<Envelope>(1024);
    let (wires, mut wires_rx) = mpsc::channel::<Wire>(1024);
    tokio::spawn(async move {
        let call = tokio::spawn(async move { client.deliver(ReceiverStream::new(rx)).await });
        while let Some(w) = wires_rx.recv().await {
            let body = ledger::codec::encode(&w).expect("encode");
            if tx.send(Envelope { body: body.into() }).await.is_err() {
                break;
            }
        }
        drop(tx);
        let _ = call.await;
    });
    Ok(wires)
}

/// A connected channel to a peer listener, presenting `key` as its TLS identity.
pub async fn peer_channel(
    key: &KeyPair,
    server: PublicKey,
    addr: &str,
) -> Result<tonic::transport::Channel, String> {
    let config = ledger::tls::peer_client_config(key, server).map_err(|e| e.to_string())?;
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector(ledger::tls::Dialer::new(config, addr.to_string()))
        .await
        .map_err(|e| format!("{e:?}"))
}
