//! TLS on both listeners of a peer, with the genesis as the only root of trust. Every peer's
//! TLS identity is its consensus key from `genesis.json`, presented as an RFC 7250 raw public
//! key (the ed25519 SubjectPublicKeyInfo, no X.509 certificate, no CA): one genesis configures
//! every peer and every client, and there is nothing else to issue, rotate or expire.
//!
//! * Peer listener: mutual TLS 1.3. A connection whose client does not prove a genesis peer
//!   key is refused in the handshake, before any gRPC frame is read; the key it proved names
//!   the sending peer for everything it sends on that connection ([`PeerIdentity`]).
//! * Client listener: TLS 1.3 authenticated by the peer's key; clients need no certificate
//!   (they sign their transactions and queries).
//! * Peers dialing peers, and clients dialing a peer, accept only the genesis key of the peer
//!   they meant to reach.
//!
//! Reusing the consensus key for TLS is safe: TLS 1.3 signs `0x20 × 64 ‖ context ‖ 0 ‖ hash`,
//! and every ledger signature covers a message starting with an `emrflow-ledger/` domain tag,
//! so no signature of one kind can be taken for the other. It owns the TLS configurations,
//! the listener's accept loop and the dialer; it knows nothing of gRPC services or consensus.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{
    CryptoProvider, WebPkiSupportedAlgorithms, verify_tls13_signature_with_raw_key,
};
use rustls::pki_types::{
    CertificateDer, PrivatePkcs8KeyDer, ServerName, SubjectPublicKeyInfoDer, UnixTime,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, PeerIncompatible,
    ServerConfig, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};

use crate::chain::Genesis;
use crate::crypto::{KeyPair, PublicKey};
use crate::error::{Error, Result};
use crate::ids::ReplicaId;

/// DER of an ed25519 SubjectPublicKeyInfo up to the key (RFC 8410): SEQUENCE { SEQUENCE { OID
/// 1.3.101.112 }, BIT STRING (0 unused bits) }.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
/// DER of an ed25519 PKCS#8 v1 private key up to the 32-byte seed (RFC 8410).
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
/// The name clients put in their handshake; identities are keys, so it is not checked.
const SERVER_NAME: &str = "emrflow-ledger";
/// Longest a TLS handshake may take before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most handshakes in progress on one listener: more connections wait to be accepted.
pub const MAX_HANDSHAKES: usize = 256;

/// The SubjectPublicKeyInfo of an ed25519 key: what a peer presents as its raw public key.
pub fn spki(key: &PublicKey) -> Vec<u8> {
    let mut der = ED25519_SPKI_PREFIX.to_vec();
    der.extend_from_slice(&key.0);
    der
}

/// The ed25519 key of a SubjectPublicKeyInfo, if it is exactly one.
pub fn key_of_spki(der: &[u8]) -> Option<PublicKey> {
    let key = der.strip_prefix(&ED25519_SPKI_PREFIX[..])?;
    Some(PublicKey(key.try_into().ok()?))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_error(e: rustls::Error) -> Error {
    Error::Config(format!("tls: {e}"))
}

/// The raw public key and signer of `key`.
fn certified_key(key: &KeyPair) -> Result<Arc<CertifiedKey>> {
    let mut pkcs8 = ED25519_PKCS8_PREFIX.to_vec();
    pkcs8.extend_from_slice(&key.seed());
    let signer = rustls::crypto::ring::sign::any_eddsa_type(&PrivatePkcs8KeyDer::from(pkcs8))
        .map_err(tls_error)?;
    Ok(Arc::new(CertifiedKey::new(
        vec![CertificateDer::from(spki(&key.public()))],
        signer,
    )))
}

/// Accepts exactly the raw ed25519 public keys it lists, and TLS 1.3 signatures by them.
#[derive(Debug)]
struct KeyList {
    keys: Vec<PublicKey>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl KeyList {
    fn new(keys: Vec<PublicKey>) -> Arc<Self> {
        Arc::new(Self {
            keys,
            algorithms: provider().signature_verification_algorithms,
        })
    }

    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> std::result::Result<(), rustls::Error> {
        let listed = intermediates.is_empty()
            && key_of_spki(end_entity.as_ref()).is_some_and(|k| self.keys.contains(&k));
        if listed {
            Ok(())
        } else {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        if dss.scheme != SignatureScheme::ED25519 {
            return Err(rustls::Error::PeerIncompatible(
                PeerIncompatible::NoSignatureSchemesInCommon,
            ));
        }
        verify_tls13_signature_with_raw_key(
            message,
            &SubjectPublicKeyInfoDer::from(cert.as_ref()),
            dss,
            &self.algorithms,
        )
    }
}

/// TLS 1.2 is never offered (raw public keys need TLS 1.3).
fn no_tls12() -> rustls::Error {
    rustls::Error::PeerIncompatible(PeerIncompatible::Tls12NotOffered)
}

impl ClientCertVerifier for KeyList {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity, intermediates)
            .map(|()| ClientCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        Err(no_tls12())
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.verify13(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

impl ServerCertVerifier for KeyList {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity, intermediates)
            .map(|()| ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        Err(no_tls12())
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.verify13(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

/// The peer listener of the peer holding `key`: mutual TLS, any genesis peer's key.
pub fn peer_server_config(genesis: &Genesis, key: &KeyPair) -> Result<Arc<ServerConfig>> {
    let others: Vec<PublicKey> = genesis
        .peer_keys()
        .into_iter()
        .filter(|k| *k != key.public())
        .collect();
    mutual_server_config(key, others)
}

/// A listener presenting `key` that admits only clients proving one of `clients` (mutual TLS
/// 1.3 with raw public keys). The peer listener is one; so is the emrflow cluster's, whose
/// members all hold one shared cluster key.
pub fn mutual_server_config(key: &KeyPair, clients: Vec<PublicKey>) -> Result<Arc<ServerConfig>> {
    server_config(key, Some(KeyList::new(clients)))
}

/// The client listener of the peer holding `key`: TLS authenticated by the key, no client
/// certificate.
pub fn client_server_config(key: &KeyPair) -> Result<Arc<ServerConfig>> {
    server_config(key, None)
}

fn server_config(key: &KeyPair, clients: Option<Arc<KeyList>>) -> Result<Arc<ServerConfig>> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error)?;
    let resolver = Arc::new(rustls::server::AlwaysResolvesServerRawPublicKeys::new(
        certified_key(key)?,
    ));
    let mut cfg = match clients {
        Some(verifier) => builder
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(resolver),
        None => builder.with_no_client_auth().with_cert_resolver(resolver),
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// A peer (holding `key`) dialing the peer listener of the peer whose key is `to`.
pub fn peer_client_config(key: &KeyPair, to: PublicKey) -> Result<Arc<ClientConfig>> {
    let resolver = Arc::new(rustls::client::AlwaysResolvesClientRawPublicKeys::new(
        certified_key(key)?,
    ));
    client_config(to, Some(resolver))
}

/// A client dialing the client listener of the peer whose key is `to`.
pub fn ledger_client_config(to: PublicKey) -> Result<Arc<ClientConfig>> {
    client_config(to, None)
}

fn client_config(
    to: PublicKey,
    resolver: Option<Arc<rustls::client::AlwaysResolvesClientRawPublicKeys>>,
) -> Result<Arc<ClientConfig>> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error)?
        .dangerous()
        .with_custom_certificate_verifier(KeyList::new(vec![to]));
    let mut cfg = match resolver {
        Some(r) => builder.with_client_cert_resolver(r),
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    cfg.enable_sni = false;
    Ok(Arc::new(cfg))
}

/// Which genesis peer a connection authenticated as (`None` on the client listener), as the
/// gRPC services find it in a request's extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerIdentity(pub Option<ReplicaId>);

/// An accepted TLS connection and the identity it proved.
#[derive(Debug)]
pub struct TlsConn {
    io: tokio_rustls::server::TlsStream<TcpStream>,
    peer: Option<ReplicaId>,
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = PeerIdentity;
    fn connect_info(&self) -> PeerIdentity {
        PeerIdentity(self.peer)
    }
}

/// The connections of `listener` that complete a TLS handshake under `config`, each with the
/// genesis peer its key names (`peers` indexed by replica id). Handshakes run concurrently
/// (at most [`MAX_HANDSHAKES`], each at most [`HANDSHAKE_TIMEOUT`]), so a connection that
/// stalls holds up no other; a failed one is dropped and logged. Must run inside a tokio
/// runtime; stops accepting when the stream is dropped.
pub fn incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    peers: Vec<PublicKey>,
) -> tonic::codegen::tokio_stream::wrappers::ReceiverStream<std::io::Result<TlsConn>> {
    let (tx, rx) = mpsc::channel(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let Ok(permit) = handshakes.clone().acquire_owned().await else {
                return;
            };
            let (tcp, addr) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::debug!(error = %e, "accept failed");
                        continue;
                    }
                },
                () = tx.closed() => return,
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx, peers) = (acceptor.clone(), tx.clone(), peers.clone());
            tokio::spawn(async move {
                let _permit = permit;
                let io = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(io)) => io,
                    // A TCP health probe (Kubernetes' tcpSocket) connects and closes without
                    // a byte; only a handshake that was attempted is worth a line at info.
                    Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                        tracing::debug!(%addr, error = %e, "connection closed before a handshake");
                        return;
                    }
                    Ok(Err(e)) => {
                        tracing::info!(%addr, error = %e, "tls handshake refused");
                        return;
                    }
                    Err(_) => {
                        tracing::info!(%addr, "tls handshake timed out");
                        return;
                    }
                };
                let peer = io
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|certs| certs.first())
                    .and_then(|c| key_of_spki(c.as_ref()))
                    .and_then(|k| peers.iter().position(|p| *p == k))
                    .map(|i| ReplicaId(i as u32));
                let _ = tx.send(Ok(TlsConn { io, peer })).await;
            });
        }
    });
    tonic::codegen::tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Dials one address over TCP and TLS: a tonic channel connector.
#[derive(Clone)]
pub struct Dialer {
    tls: tokio_rustls::TlsConnector,
    addr: String,
}

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Dialer({})", self.addr)
    }
}

impl Dialer {
    /// Dials `addr` (`host:port`) under `config`.
    pub fn new(config: Arc<ClientConfig>, addr: String) -> Self {
        Self {
            tls: tokio_rustls::TlsConnector::from(config),
            addr,
        }
    }
}

/// A dialed connection.
pub type Dialed = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;

impl tonic::codegen::Service<tonic::codegen::http::Uri> for Dialer {
    type Response = Dialed;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Dialed>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: tonic::codegen::http::Uri) -> Self::Future {
        let (tls, addr) = (self.tls.clone(), self.addr.clone());
        Box::pin(async move {
            let tcp = TcpStream::connect(&addr).await?;
            tcp.set_nodelay(true)?;
            let name = ServerName::try_from(SERVER_NAME)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
            let io = tls.connect(name, tcp).await?;
            Ok(hyper_util::rt::TokioIo::new(io))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_public_keys_round_trip_and_nothing_else_parses() {
        let k = KeyPair::from_label("tls").public();
        let der = spki(&k);
        assert_eq!(der.len(), 44);
        assert_eq!(key_of_spki(&der), Some(k));
        assert_eq!(key_of_spki(&der[..43]), None);
        let mut longer = der.clone();
        longer.push(0);
        assert_eq!(key_of_spki(&longer), None);
        let mut other_alg = der.clone();
        other_alg[8] = 0x71; // Ed448's OID
        assert_eq!(key_of_spki(&other_alg), None);
        assert!(certified_key(&KeyPair::from_label("tls")).is_ok());
    }
}
