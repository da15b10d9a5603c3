//! Mutual TLS on every link of an emrflow cluster, under one shared cluster key.
//!
//! Ballista's scheduler and executors speak plaintext gRPC and authenticate no one, and what
//! crosses their links is patient data (shuffle partitions, results). So their own listeners
//! stay on loopback, and an exposed port is a TLS *front* in the same process: it completes a
//! TLS 1.3 handshake in which the caller proves the cluster key, and only then forwards bytes
//! to the loopback listener. A connection that cannot prove the key is dropped before any gRPC
//! frame reaches Ballista.
//!
//! Outgoing connections (client → scheduler, executor → scheduler, scheduler → executor,
//! executor → executor, client → executor) leave through *tunnels*. Ballista's one hook on its
//! client connections rewrites a tonic `Endpoint`, and tonic's own TLS takes X.509
//! certificates only, so the hook points each endpoint at a loopback port of this process
//! whose listener dials the real address and speaks TLS there. The local end of a tunnel is a
//! loopback port, so the host's other users are trusted exactly as on Ballista's own loopback
//! listeners.
//!
//! The handshake is the ledger's ([`ledger::tls`]): raw ed25519 public keys (RFC 7250), no
//! certificate authority. Every member holds the same key file, presents it and accepts only
//! it, so the key is a shared secret that never crosses the wire and whose holders alone can
//! join, read or submit.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ballista_core::extension::EndpointOverrideFn;
use ballista_core::utils::GrpcClientConfig;
use ledger::crypto::KeyPair;
use rustls::pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tonic::transport::Endpoint;

use crate::{Error, Result};

/// The name a tunnel puts in its handshake; identities are keys, so it is not checked.
const SERVER_NAME: &str = "emrflow-cluster";
/// Longest a connection to a cluster member may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// Most connections a front or a tunnel forwards at once; more wait to be accepted. Ballista
/// keeps a few pooled connections per pair of members.
const MAX_CONNECTIONS: usize = 1024;

/// The key every member of one cluster holds (`--cluster-key`): 64 hex characters in a file
/// readable by its owner only, as the ledger's identity keys.
#[derive(Clone)]
pub struct ClusterKey {
    key: Arc<KeyPair>,
    path: PathBuf,
}

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterKey")
            .field("path", &self.path)
            .field("id", &self.id())
            .finish()
    }
}

impl ClusterKey {
    /// Reads a cluster key file.
    pub fn read(path: &Path) -> Result<Self> {
        let key = ledger::config::read_key(path)
            .map_err(|e| Error::Config(format!("--cluster-key {}: {e}", path.display())))?;
        Ok(Self {
            key: Arc::new(key),
            path: path.to_path_buf(),
        })
    }

    /// Creates a new cluster key from the operating system's randomness (owner-only from
    /// creation; never over an existing file).
    pub fn create(path: &Path) -> Result<Self> {
        let key = ledger::config::new_key_file(path)
            .map_err(|e| Error::Config(format!("--out {}: {e}", path.display())))?;
        Ok(Self {
            key: Arc::new(key),
            path: path.to_path_buf(),
        })
    }

    /// The public half in hex: names the cluster in logs without revealing the key.
    pub fn id(&self) -> String {
        self.key.public().to_hex()
    }

    /// Where the key was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn server_config(&self) -> Result<Arc<rustls::ServerConfig>> {
        ledger::tls::mutual_server_config(&self.key, vec![self.key.public()])
            .map_err(|e| Error::Config(e.to_string()))
    }

    fn client_config(&self) -> Result<Arc<rustls::ClientConfig>> {
        ledger::tls::peer_client_config(&self.key, self.key.public())
            .map_err(|e| Error::Config(e.to_string()))
    }
}

/// The key a scheduler or executor (`role`) listening on `bind_host` runs with: read from
/// `path` when given; when not, `None` on loopback and a refusal on any other address, since
/// Ballista authenticates no one and what crosses its ports is patient data.
pub fn key_for_listener(
    role: &str,
    bind_host: &str,
    path: Option<&Path>,
) -> Result<Option<ClusterKey>> {
    match path {
        Some(path) => ClusterKey::read(path).map(Some),
        None if is_exposed(bind_host) => Err(Error::Config(format!(
            "--bind-host {bind_host} exposes the {role} beyond this machine, and Ballista \
             authenticates no one: give --cluster-key FILE (made by `emrflow cluster-key`) so \
             that only the cluster's members can connect, over TLS"
        ))),
        None => Ok(None),
    }
}

/// Whether listening on `host` exposes a port beyond this machine.
pub fn is_exposed(host: &str) -> bool {
    !matches!(host, "localhost" | "::1") && !host.starts_with("127.")
}

/// A running TLS front; stops when dropped.
#[derive(Debug)]
pub struct Front {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Front {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Listens on `expose` (`host:port`) with mutual TLS under `key` and forwards each
/// authenticated connection to `backend`. Binds before returning, so a port in use is an
/// error here; serves in the background.
pub async fn front(expose: &str, backend: SocketAddr, key: &ClusterKey) -> Result<Front> {
    let listener = TcpListener::bind(expose)
        .await
        .map_err(|e| Error::Config(format!("cannot listen on {expose}: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Config(format!("{expose}: {e}")))?;
    let config = key.server_config()?;
    let mut incoming = ledger::tls::incoming(listener, config, vec![key.key.public()]).into_inner();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let task = tokio::spawn(async move {
        while let Some(accepted) = incoming.recv().await {
            let Ok(mut tls) = accepted else { continue };
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            tokio::spawn(async move {
                let _permit = permit;
                match TcpStream::connect(backend).await {
                    Ok(mut plain) => {
                        let _ = plain.set_nodelay(true);
                        // Either side closing or resetting ends the pair; nothing to report.
                        let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                    }
                    Err(e) => {
                        tracing::warn!(%backend, error = %e, "cluster front: backend refused")
                    }
                }
            });
        }
    });
    Ok(Front { addr, task })
}

/// The loopback tunnels of one process, one per remote `host:port`, opened on first use.
struct Tunnels {
    config: Arc<rustls::ClientConfig>,
    open: Mutex<HashMap<String, (SocketAddr, JoinHandle<()>)>>,
}

impl Tunnels {
    /// The loopback address whose connections reach `remote` over TLS.
    fn local(&self, remote: &str) -> std::io::Result<SocketAddr> {
        let mut open = self
            .open
            .lock()
            .map_err(|_| std::io::Error::other("cluster tunnels: a previous user panicked"))?;
        if let Some((addr, task)) = open.get(remote)
            && !task.is_finished()
        {
            return Ok(*addr);
        }
        // Ballista calls the hook from async code; a tunnel runs on that code's runtime.
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|e| std::io::Error::other(format!("cluster tunnel to {remote}: {e}")))?;
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let listener = {
            let _entered = runtime.enter();
            TcpListener::from_std(std_listener)?
        };
        let task = runtime.spawn(tunnel(listener, remote.to_string(), self.config.clone()));
        open.insert(remote.to_string(), (addr, task));
        Ok(addr)
    }
}

async fn tunnel(listener: TcpListener, remote: String, config: Arc<rustls::ClientConfig>) {
    let connector = tokio_rustls::TlsConnector::from(config);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let Ok((mut local, _)) = listener.accept().await else {
            continue;
        };
        let (connector, remote) = (connector.clone(), remote.clone());
        tokio::spawn(async move {
            let _permit = permit;
            match dial(&connector, &remote).await {
                Ok(mut tls) => {
                    let _ = local.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut local, &mut tls).await;
                }
                // Ballista reports the closed connection as its own transport error; this
                // line says why.
                Err(e) => tracing::warn!("cluster TLS to {remote}: {e}"),
            }
        });
    }
}

/// A TLS connection to the cluster member at `remote` (`host:port`).
async fn dial(
    connector: &tokio_rustls::TlsConnector,
    remote: &str,
) -> std::result::Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(remote))
        .await
        .map_err(|_| format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()))?
        .map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(SERVER_NAME).map_err(|e| e.to_string())?;
    tokio::time::timeout(ledger::tls::HANDSHAKE_TIMEOUT, connector.connect(name, tcp))
        .await
        .map_err(|_| "the TLS handshake timed out".to_string())?
        .map_err(|e| {
            format!("TLS handshake refused ({e}); is it an emrflow cluster with this cluster key?")
        })
}

/// Checks that the member at `host:port` completes a handshake under `key`: a client learns
/// at once, and by name, that its key or the address is wrong.
pub async fn probe(host: &str, port: u16, key: &ClusterKey) -> std::result::Result<(), String> {
    let connector =
        tokio_rustls::TlsConnector::from(key.client_config().map_err(|e| e.to_string())?);
    dial(&connector, &format!("{host}:{port}")).await.map(drop)
}

/// The hook that sends every Ballista client connection of this process through a TLS tunnel.
pub fn endpoint_override(key: &ClusterKey) -> Result<EndpointOverrideFn> {
    let tunnels = Arc::new(Tunnels {
        config: key.client_config()?,
        open: Mutex::new(HashMap::new()),
    });
    Ok(Arc::new(move |endpoint: Endpoint| {
        let uri = endpoint.uri();
        let remote = uri
            .authority()
            .ok_or_else(|| format!("cluster endpoint {uri} names no host"))?
            .to_string();
        let local = tunnels.local(&remote)?;
        // A new endpoint loses the settings Ballista put on the old one (tonic has no getters);
        // these are Ballista's defaults, without a per-request timeout, which would cut a long
        // result stream.
        let c = GrpcClientConfig::default();
        let rewritten = Endpoint::from_shared(format!("http://{local}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .tcp_keepalive(Some(Duration::from_secs(c.tcp_keepalive_seconds)))
            .http2_keep_alive_interval(Duration::from_secs(c.http2_keepalive_interval_seconds))
            .keep_alive_timeout(Duration::from_secs(20))
            .keep_alive_while_idle(true)
            .initial_connection_window_size(Some(c.initial_connection_window_size))
            .initial_stream_window_size(Some(c.initial_stream_window_size));
        Ok(rewritten)
    }))
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn key(dir: &Path, name: &str) -> ClusterKey {
        ClusterKey::create(&dir.join(name)).unwrap_or_else(|e| panic!("{e}"))
    }

    /// An echo server on loopback: what a front forwards to.
    async fn echo() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn round_trip(local: SocketAddr) -> std::io::Result<Vec<u8>> {
        let mut s = TcpStream::connect(local).await?;
        s.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut buf))
            .await
            .map_err(|_| std::io::Error::other("timed out"))??;
        Ok(buf.to_vec())
    }

    #[tokio::test]
    async fn only_holders_of_the_cluster_key_get_through_a_front() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let cluster = key(dir.path(), "cluster.key");
        let front = front("127.0.0.1:0", echo().await, &cluster)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let remote = front.addr().to_string();

        let member = Tunnels {
            config: cluster.client_config().unwrap_or_else(|e| panic!("{e}")),
            open: Mutex::new(HashMap::new()),
        };
        let local = member.local(&remote).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(round_trip(local).await.ok(), Some(b"ping".to_vec()));
        assert_eq!(
            member.local(&remote).ok(),
            Some(local),
            "one tunnel per remote"
        );

        let outsider = key(dir.path(), "other.key");
        let stranger = Tunnels {
            config: outsider.client_config().unwrap_or_else(|e| panic!("{e}")),
            open: Mutex::new(HashMap::new()),
        };
        let local = stranger.local(&remote).unwrap_or_else(|e| panic!("{e}"));
        assert!(round_trip(local).await.is_err(), "another key is refused");
        let e = probe("127.0.0.1", front.addr().port(), &outsider)
            .await
            .err()
            .unwrap_or_default();
        assert!(e.contains("cluster key"), "{e}");
        assert!(
            probe("127.0.0.1", front.addr().port(), &cluster)
                .await
                .is_ok()
        );

        // Plaintext (what Ballista itself speaks) never reaches the backend.
        let mut plain = TcpStream::connect(front.addr())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        plain
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(15), plain.read_to_end(&mut buf)).await;
        assert!(
            !buf.windows(4).any(|w| w == b"PRI "),
            "plaintext was echoed back: {buf:?} ({read:?})"
        );
    }

    #[test]
    fn what_counts_as_exposed() {
        for host in ["0.0.0.0", "::", "10.0.0.5", "scheduler.emrflow.svc"] {
            assert!(is_exposed(host), "{host}");
        }
        for host in ["127.0.0.1", "localhost", "::1"] {
            assert!(!is_exposed(host), "{host}");
        }
    }

    #[test]
    fn a_key_file_is_never_overwritten_and_a_bad_one_is_named() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("cluster.key");
        let k = key(dir.path(), "cluster.key");
        let again = ClusterKey::create(&path).err().map(|e| e.to_string());
        assert!(again.is_some_and(|e| e.contains("refusing to overwrite")));
        assert_eq!(ClusterKey::read(&path).ok().map(|r| r.id()), Some(k.id()));
        std::fs::write(dir.path().join("bad.key"), "not hex").unwrap_or_else(|e| panic!("{e}"));
        let e = ClusterKey::read(&dir.path().join("bad.key"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("--cluster-key") && e.contains("bad.key"), "{e}");
    }
}
