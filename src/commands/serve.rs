//! `emrflow serve` (flags → the record store, the ledger and the gateway identity → `server`),
//! `emrflow token` (an identity token from a key file) and `emrflow api` (one authenticated
//! request to a server, for scripts and tests).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use ledger::contracts::Role;
use ledger::crypto::Digest;
use records::{MasterKey, Store};

use super::args::LedgerArgs;
use super::{ExitStatus, print_json, print_lines};

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Address to listen on (port 0 picks a free one, printed at start)
    #[arg(long, env = "EMRFLOW_BIND", default_value = "127.0.0.1:8443")]
    bind: SocketAddr,
    /// TLS certificate chain (PEM)
    #[arg(
        long,
        env = "EMRFLOW_TLS_CERT",
        value_name = "PEM",
        requires = "tls_key"
    )]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM)
    #[arg(
        long,
        env = "EMRFLOW_TLS_KEY",
        value_name = "PEM",
        requires = "tls_cert"
    )]
    tls_key: Option<PathBuf>,
    /// Serve plain HTTP (only behind a proxy that terminates TLS)
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key"])]
    plain_http: bool,
    /// The URL clients reach the server at, for links in responses [default: from --bind]
    #[arg(long, value_name = "URL")]
    public_url: Option<String>,
    /// Largest request body accepted, in bytes
    #[arg(long, default_value_t = 1 << 20)]
    max_body_bytes: usize,
    /// Longest a request may take, in seconds
    #[arg(long, default_value_t = 30)]
    timeout_secs: u64,
    /// The record store's directory [default: $EMRFLOW_HOME/records]
    #[arg(long, env = "EMRFLOW_RECORDS", value_name = "DIR")]
    store: Option<PathBuf>,
    /// File holding the store's master key (64 hex digits) [default: $EMRFLOW_MASTER_KEY]
    #[arg(long, value_name = "FILE")]
    master_key_file: Option<PathBuf>,
    /// The model risk is assessed with: a model directory published by `emrflow train`, on any
    /// store. It must pass its anchor check to serve, and a new model published there is checked
    /// and put in service without a restart [default: none; the risk routes answer 503]
    #[arg(long, env = "EMRFLOW_MODEL", value_name = "DIR|URL")]
    model: Option<String>,
    /// How often the model location is looked at for a newly published model, in seconds
    #[arg(long, default_value_t = 5, value_name = "SECS")]
    model_poll_secs: u64,
    /// Print the listening address as JSON on stdout
    #[arg(long)]
    json: bool,
    /// The ledger, and with --identity the key of the server's gateway identity (registered
    /// with `emrflow ledger register --role gateway`)
    #[command(flatten)]
    ledger: LedgerArgs,
}

pub(crate) async fn serve(args: ServeArgs) -> anyhow::Result<ExitStatus> {
    let tls = match (&args.tls_cert, &args.tls_key, args.plain_http) {
        (Some(cert), Some(key), _) => Some(server::tls_config(cert, key)?),
        (_, _, true) => None,
        _ => bail!(
            "give --tls-cert and --tls-key (or EMRFLOW_TLS_CERT and EMRFLOW_TLS_KEY), or \
             --plain-http behind a proxy that terminates TLS"
        ),
    };
    if args.ledger.identity.is_none() {
        bail!(
            "give the server's gateway identity with --identity KEY (or EMRFLOW_IDENTITY): a key \
             registered with `emrflow ledger register --role gateway`"
        );
    }
    let master = MasterKey::load(args.master_key_file.as_deref())?;
    let dir = args
        .store
        .clone()
        .unwrap_or_else(|| provenance::emrflow_home().join("records"));
    let store = Store::open(&dir, &master)?;
    let provenance = provenance::Provenance::open(&args.ledger.config()).await?;
    let gateway = provenance.key_for(Role::Gateway).await?;
    let served = match &args.model {
        Some(location) => Some(
            server::risk::load(location, &provenance)
                .await
                .with_context(|| format!("the model at {location} cannot be served"))?,
        ),
        None => None,
    };
    let ledger_id = provenance.genesis().hash();
    let (listener, bound) = server::bind(args.bind).await?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let url = args
        .public_url
        .clone()
        .unwrap_or_else(|| format!("{scheme}://{bound}"));
    let state = Arc::new(server::AppState {
        store,
        engine: engine::Engine::embedded(),
        provenance,
        gateway,
        ledger_id,
        fhir_base: format!("{}/fhir", url.trim_end_matches('/')),
        request_timeout: Duration::from_secs(args.timeout_secs.max(1)),
        metrics: Default::default(),
        model: Default::default(),
        cards: Default::default(),
    });
    let (stop_watch, stopped) = tokio::sync::watch::channel(false);
    let watcher = match (served, &args.model) {
        (Some(served), Some(location)) => {
            tracing::info!(root = %served.loaded.root, "model in service");
            state.put_in_service(served);
            Some(tokio::spawn(server::risk::watch(
                state.clone(),
                location.clone(),
                Duration::from_secs(args.model_poll_secs.max(1)),
                stopped,
            )))
        }
        _ => None,
    };
    if args.json {
        print_json(&serde_json::json!({"listening": url, "bound": bound.to_string()}))?;
    } else {
        print_lines(&[format!("listening on {url}")]);
    }
    tracing::info!(%bound, "serving");
    let app = server::routes::router(state.clone(), args.max_body_bytes);
    server::serve(listener, tls, app, shutdown_signal()).await;
    tracing::info!("stopped accepting; in-flight requests done");
    let _ = stop_watch.send(true);
    if let Some(w) = watcher {
        let _ = w.await;
    }
    // Every connection has finished, so the routes' clones of the state are gone.
    if let Ok(state) = Arc::try_unwrap(state) {
        state.provenance.close().await?;
    }
    Ok(ExitStatus::Success)
}

/// SIGTERM (what an orchestrator sends) or Ctrl-C.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[derive(Debug, Args)]
pub(crate) struct TokenArgs {
    /// Key file of the identity the token is for
    #[arg(long, env = "EMRFLOW_IDENTITY", value_name = "KEY")]
    identity: PathBuf,
    /// The ledger the identity is registered on: a cluster's genesis.json or an embedded
    /// ledger's directory [default: $EMRFLOW_HOME/ledger]
    #[arg(long, env = "EMRFLOW_LEDGER", value_name = "DIR|GENESIS")]
    ledger: Option<PathBuf>,
    /// Lifetime in minutes (at most 15)
    #[arg(long, default_value_t = 15)]
    minutes: u64,
}

/// The id of the ledger at `location` (a genesis file, or a directory holding one).
fn ledger_id(location: Option<&Path>) -> anyhow::Result<Digest> {
    let location = location.map_or_else(
        || provenance::emrflow_home().join("ledger"),
        Path::to_path_buf,
    );
    let genesis = if location.is_dir() {
        location.join("genesis.json")
    } else {
        location
    };
    let g = ledger::config::read_genesis(&genesis)
        .with_context(|| format!("cannot read the ledger's genesis {}", genesis.display()))?;
    Ok(g.hash())
}

fn make_token(identity: &Path, ledger: Option<&Path>, minutes: u64) -> anyhow::Result<String> {
    if minutes == 0 || minutes * 60_000 > ledger::token::MAX_LIFETIME_MS {
        bail!(
            "--minutes must be 1 to {}",
            ledger::token::MAX_LIFETIME_MS / 60_000
        );
    }
    let key = ledger::config::read_key(identity)
        .with_context(|| format!("cannot read the identity key {}", identity.display()))?;
    let id = ledger_id(ledger)?;
    let now = ledger::node::unix_ms();
    let jti = uuid::Uuid::new_v4().to_string();
    Ok(ledger::token::issue(&key, &id, now, minutes * 60_000, &jti))
}

pub(crate) fn token(args: &TokenArgs) -> anyhow::Result<ExitStatus> {
    let token = make_token(&args.identity, args.ledger.as_deref(), args.minutes)?;
    print_lines(&[token]);
    Ok(ExitStatus::Success)
}

#[derive(Debug, Args)]
pub(crate) struct ApiArgs {
    /// The path, e.g. /fhir/Patient/P00000042 or "/fhir/Observation?patient=P00000042"
    path: String,
    /// The server's base URL
    #[arg(long, env = "EMRFLOW_SERVER", value_name = "URL")]
    server: String,
    /// The CA certificate (PEM) to trust for the server's TLS certificate
    #[arg(long, env = "EMRFLOW_CA", value_name = "PEM")]
    ca: Option<PathBuf>,
    /// Key file of the identity to call as (a token is made for the call)
    #[arg(long, env = "EMRFLOW_IDENTITY", value_name = "KEY")]
    identity: Option<PathBuf>,
    /// The ledger the identity is registered on (a genesis.json or an embedded ledger's
    /// directory) [default: $EMRFLOW_HOME/ledger]
    #[arg(long, env = "EMRFLOW_LEDGER", value_name = "DIR|GENESIS")]
    ledger: Option<PathBuf>,
    /// An extra request header, NAME:VALUE (repeatable), e.g. X-Purpose-Of-Use:research
    #[arg(long = "header", value_name = "NAME:VALUE")]
    headers: Vec<String>,
    /// POST this body instead of a GET: JSON text, or @FILE (sent as application/json unless a
    /// --header Content-Type says otherwise)
    #[arg(long, value_name = "JSON|@FILE")]
    data: Option<String>,
}

/// Sends the request and prints the response body; the exit code says how it went: 0 for a
/// 2xx, 3 refused (401, 403), 4 unavailable: the ledger could not commit (503), 2 anything
/// else.
pub(crate) async fn api(args: ApiArgs) -> anyhow::Result<ExitStatus> {
    use http_body_util::BodyExt;
    let base = url::Url::parse(&args.server).context("--server is not a URL")?;
    let host = base.host_str().context("--server has no host")?.to_string();
    let port = base
        .port_or_known_default()
        .context("--server has no port")?;
    if !args.path.starts_with('/') {
        bail!("the path must start with /");
    }
    let body = match args.data.as_deref() {
        None => None,
        Some(d) => Some(match d.strip_prefix('@') {
            Some(file) => {
                std::fs::read(file).with_context(|| format!("cannot read --data {file}"))?
            }
            None => d.as_bytes().to_vec(),
        }),
    };
    let method = if body.is_some() {
        hyper::Method::POST
    } else {
        hyper::Method::GET
    };
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(&args.path)
        .header(hyper::header::HOST, format!("{host}:{port}"));
    let typed = args
        .headers
        .iter()
        .any(|h| h.to_ascii_lowercase().starts_with("content-type:"));
    if body.is_some() && !typed {
        request = request.header(hyper::header::CONTENT_TYPE, "application/json");
    }
    if let Some(identity) = &args.identity {
        let token = make_token(identity, args.ledger.as_deref(), 5)?;
        request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    for h in &args.headers {
        let (name, value) = h
            .split_once(':')
            .with_context(|| format!("--header {h:?} is not NAME:VALUE"))?;
        request = request.header(name.trim(), value.trim());
    }
    let request = request
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.unwrap_or_default(),
        )))
        .context("building the request")?;
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .with_context(|| format!("cannot connect to {host}:{port}"))?;
    let response = match base.scheme() {
        "https" => {
            let ca = args
                .ca
                .as_deref()
                .context("an https server needs --ca PEM (or EMRFLOW_CA) to trust")?;
            let connector = tls_client(ca)?;
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .context("--server's host is not a TLS server name")?;
            let tls = connector
                .connect(name, tcp)
                .await
                .with_context(|| format!("TLS handshake with {host}:{port}"))?;
            send(hyper_util::rt::TokioIo::new(tls), request).await?
        }
        "http" => send(hyper_util::rt::TokioIo::new(tcp), request).await?,
        other => bail!("--server scheme {other} is not http or https"),
    };
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .context("reading the response")?
        .to_bytes();
    print_lines(&[String::from_utf8_lossy(&body).trim_end().to_string()]);
    Ok(match status.as_u16() {
        200..=299 => ExitStatus::Success,
        401 | 403 => ExitStatus::Denied,
        503 => ExitStatus::Unavailable,
        _ => ExitStatus::Error,
    })
}

async fn send<I>(
    io: I,
    request: hyper::Request<http_body_util::Full<bytes::Bytes>>,
) -> anyhow::Result<hyper::Response<hyper::body::Incoming>>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .context("HTTP handshake")?;
    tokio::spawn(conn);
    sender
        .send_request(request)
        .await
        .context("sending the request")
}

fn tls_client(ca: &Path) -> anyhow::Result<tokio_rustls::TlsConnector> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)
        .with_context(|| format!("cannot read the CA certificate {}", ca.display()))?
    {
        roots
            .add(cert.with_context(|| format!("the CA certificate {}", ca.display()))?)
            .with_context(|| format!("the CA certificate {}", ca.display()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}
