//! `emrflow ledger ...`: create a ledger, run a peer, submit transactions, and verify receipts
//! and chains offline. Each subcommand turns flags into a `ledger` library call.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use ledger::chain::{QueryResult, Receipt, verify_chain};
use ledger::client::Reader;
use ledger::config::{self, InitOptions, NodeConfig};
use ledger::contracts::Query;
use ledger::store::Store;
use ledger::transport::RemoteLedger;

use super::{ExitStatus, print_json, print_lines};

#[derive(Debug, Subcommand)]
pub(crate) enum LedgerCommand {
    /// Write a genesis (four peer keys, an admin identity) and per-peer configs
    Init(InitArgs),
    /// Run one peer over gRPC until interrupted
    Node(NodeArgs),
    /// Submit a stream of signed transactions and report latency and throughput
    Submit(SubmitArgs),
    /// Show a peer's chain head
    Head(HeadArgs),
    /// Check that every transaction of a receipts file is committed on a peer
    Has(HasArgs),
    /// Verify receipts offline against the genesis
    VerifyReceipt(VerifyReceiptArgs),
    /// Re-check a stopped peer's whole chain on disk; names the first bad block
    Verify(VerifyArgs),
    /// Create an identity key and register it with a role (signed by the admin)
    Register(RegisterArgs),
    /// Grant an identity access to an anchored dataset or model (signed by the admin)
    Grant(GrantArgs),
}

#[derive(Debug, Args)]
pub(crate) struct GrantArgs {
    /// The grantee: a key file or its public key (hex)
    #[arg(long, value_name = "KEY|HEX")]
    to: String,
    /// The anchored root of the dataset or model
    #[arg(long, value_name = "ROOT")]
    subject: String,
    /// read, query, update or export
    #[arg(long, default_value = "read")]
    access: String,
    /// The admin's key [default: admin.key beside the ledger]
    #[arg(long, value_name = "KEY")]
    admin_key: Option<PathBuf>,
    /// Print a JSON summary on stdout
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    ledger: super::args::LedgerArgs,
}

#[derive(Debug, Args)]
pub(crate) struct RegisterArgs {
    /// The role: admin, data_engineer, ml_engineer, compliance or clinician
    #[arg(long)]
    role: String,
    /// A human-readable name for the identity (shown by `emrflow audit`)
    #[arg(long)]
    name: String,
    /// Where to write the new key (refuses to overwrite)
    #[arg(long, value_name = "KEY")]
    out: PathBuf,
    /// The admin's key [default: admin.key beside the ledger]
    #[arg(long, value_name = "KEY")]
    admin_key: Option<PathBuf>,
    /// Print a JSON summary on stdout
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    ledger: super::args::LedgerArgs,
}

#[derive(Debug, Args)]
pub(crate) struct InitArgs {
    /// Directory to write genesis.json, admin.key and peerN.toml into
    #[arg(long)]
    out: PathBuf,
    /// Host of the peers' gRPC addresses
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port of peer 0's peer listener; peer i's peer listener (mutual TLS) is on base-port + i,
    /// its client listener (TLS) on base-port + peers + i
    #[arg(long, default_value_t = 7400)]
    base_port: u16,
    /// Number of peers: 3f + 1 (4, 7, 10, ...)
    #[arg(long, default_value_t = 4)]
    peers: usize,
    /// Peer addresses from a template instead of --host/--base-port: {i} is the peer index, e.g.
    /// emrflow-ledger-{i}.emrflow-ledger:7400 for the Kubernetes StatefulSet (each peer's client
    /// listener is on the next port)
    #[arg(long, value_name = "HOST_WITH_{i}:PORT", conflicts_with_all = ["host", "base_port"])]
    peer_address_template: Option<String>,
    /// Print a JSON summary on stdout
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct NodeArgs {
    /// The peer's config file (peerN.toml written by `init`)
    #[arg(long)]
    config: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct SubmitArgs {
    /// Ledger directory (genesis.json and admin.key)
    #[arg(long)]
    dir: PathBuf,
    /// Key file of the signing identity (defaults to DIR/admin.key)
    #[arg(long)]
    key: Option<PathBuf>,
    /// Transactions to submit
    #[arg(long, default_value_t = 1000)]
    count: usize,
    /// Transactions in flight at once
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Append each acknowledged receipt as one JSON line to this file
    #[arg(long)]
    receipts: Option<PathBuf>,
    /// Seconds one attempt at one peer may take before failing over
    #[arg(long, default_value_t = 10)]
    timeout_secs: u64,
    /// Do not verify each receipt on the client (benchmarks: keeps the client's signature
    /// checks off the peers' CPU)
    #[arg(long)]
    skip_verify: bool,
}

#[derive(Debug, Args)]
pub(crate) struct HeadArgs {
    /// Ledger directory (genesis.json)
    #[arg(long)]
    dir: PathBuf,
    /// Peer index
    #[arg(long)]
    peer: usize,
    /// Key file of a registered identity to sign the query with (defaults to DIR/admin.key)
    #[arg(long)]
    key: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct HasArgs {
    /// Ledger directory (genesis.json)
    #[arg(long)]
    dir: PathBuf,
    /// Peer index
    #[arg(long)]
    peer: usize,
    /// Key file of a registered identity to sign the queries with (defaults to DIR/admin.key)
    #[arg(long)]
    key: Option<PathBuf>,
    /// A receipts file written by `submit --receipts`
    #[arg(long)]
    receipts: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct VerifyReceiptArgs {
    /// The ledger's genesis.json
    #[arg(long)]
    genesis: PathBuf,
    /// A receipt (JSON), or a file of receipts, one JSON per line
    #[arg(long)]
    receipt: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// The peer's config file; the peer must be stopped
    #[arg(long)]
    config: PathBuf,
}

pub(crate) async fn run(cmd: LedgerCommand) -> anyhow::Result<ExitStatus> {
    match cmd {
        LedgerCommand::Init(a) => init(a),
        LedgerCommand::Node(a) => node(a).await,
        LedgerCommand::Submit(a) => submit(a).await,
        LedgerCommand::Head(a) => head(a).await,
        LedgerCommand::Has(a) => has(a).await,
        LedgerCommand::VerifyReceipt(a) => verify_receipt(a),
        LedgerCommand::Verify(a) => verify(a),
        LedgerCommand::Register(a) => register(a).await,
        LedgerCommand::Grant(a) => grant(a).await,
    }
}

fn init(a: InitArgs) -> anyhow::Result<ExitStatus> {
    let opts = InitOptions {
        host: a.host,
        base_port: a.base_port,
        peers: a.peers,
        address_template: a.peer_address_template,
        ..InitOptions::default()
    };
    let out = config::init(&a.out, &opts)?;
    if a.json {
        print_json(&out)?;
    } else {
        let mut lines = vec![
            format!("ledger {}", out.ledger_id),
            format!("genesis   {}", out.genesis.display()),
            format!("admin key {}", out.admin_key.display()),
        ];
        lines.extend(
            out.configs
                .iter()
                .map(|c| format!("peer      {}", c.display())),
        );
        print_lines(&lines);
    }
    Ok(ExitStatus::Success)
}

async fn node(a: NodeArgs) -> anyhow::Result<ExitStatus> {
    let cfg = NodeConfig::load(&a.config)?;
    tracing::info!(peer = cfg.id, "starting ledger peer");
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    ledger::transport::run_node(&cfg, shutdown).await?;
    Ok(ExitStatus::Success)
}

fn remote(dir: &std::path::Path) -> anyhow::Result<RemoteLedger> {
    Ok(RemoteLedger::new(config::read_genesis(
        &dir.join("genesis.json"),
    )?)?)
}

/// The identity queries are signed with: `key`, else the ledger directory's admin key.
fn query_key(
    dir: &std::path::Path,
    key: Option<&std::path::Path>,
) -> anyhow::Result<ledger::crypto::KeyPair> {
    let path = key.map_or_else(|| dir.join("admin.key"), std::path::Path::to_path_buf);
    config::read_key(&path).with_context(|| {
        format!(
            "queries are signed by a registered identity: cannot read {}; pass --key",
            path.display()
        )
    })
}

async fn submit(a: SubmitArgs) -> anyhow::Result<ExitStatus> {
    let remote = remote(&a.dir)?.with_timeout(std::time::Duration::from_secs(a.timeout_secs));
    let key = config::read_key(&a.key.unwrap_or_else(|| a.dir.join("admin.key")))?;
    let mut out = match &a.receipts {
        Some(p) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("cannot open {}", p.display()))?,
        ),
        None => None,
    };
    let report = ledger::load::run(&remote, key, a.count, a.concurrency, !a.skip_verify, |r| {
        if let Some(f) = out.as_mut() {
            let line = serde_json::to_string(r)?;
            // One line per acknowledged receipt, flushed at once, so a reader sees exactly
            // what was acknowledged even if this process dies.
            writeln!(f, "{line}").map_err(|e| ledger::Error::io("receipts", e))?;
            f.flush().map_err(|e| ledger::Error::io("receipts", e))?;
        }
        Ok(())
    })
    .await?;
    print_json(&report)?;
    Ok(if report.failed == 0 {
        ExitStatus::Success
    } else {
        ExitStatus::Mismatch
    })
}

async fn head(a: HeadArgs) -> anyhow::Result<ExitStatus> {
    let remote = remote(&a.dir)?;
    let key = query_key(&a.dir, a.key.as_deref())?;
    let q = Reader::new(&remote, key).sign(Query::Head)?;
    match remote.query_peer(a.peer, &q).await? {
        QueryResult::Head(h) => print_json(&h)?,
        other => anyhow::bail!("unexpected answer {other:?}"),
    }
    Ok(ExitStatus::Success)
}

fn read_receipts(path: &std::path::Path) -> anyhow::Result<Vec<Receipt>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut out = Vec::new();
    let text = std::io::read_to_string(file)?;
    if text.trim_start().starts_with('{') && !text.trim().contains('\n') {
        out.push(serde_json::from_str(text.trim())?);
        return Ok(out);
    }
    for (i, line) in std::io::Cursor::new(text).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(
            serde_json::from_str(&line).with_context(|| format!("receipt on line {}", i + 1))?,
        );
    }
    Ok(out)
}

async fn has(a: HasArgs) -> anyhow::Result<ExitStatus> {
    let remote = remote(&a.dir)?;
    let reader = Reader::new(&remote, query_key(&a.dir, a.key.as_deref())?);
    let receipts = read_receipts(&a.receipts)?;
    let mut missing = Vec::new();
    for r in &receipts {
        let id = r.tx_id();
        match remote
            .query_peer(a.peer, &reader.sign(Query::Receipt(id))?)
            .await?
        {
            QueryResult::Receipt(Some(_)) => {}
            _ => missing.push(id.to_hex()),
        }
    }
    print_json(&serde_json::json!({
        "peer": a.peer,
        "checked": receipts.len(),
        "missing": missing,
    }))?;
    Ok(if missing.is_empty() {
        ExitStatus::Success
    } else {
        ExitStatus::Mismatch
    })
}

fn verify_receipt(a: VerifyReceiptArgs) -> anyhow::Result<ExitStatus> {
    let genesis = config::read_genesis(&a.genesis)?;
    let receipts = read_receipts(&a.receipt)?;
    let mut bad = 0;
    let mut lines = Vec::new();
    for r in &receipts {
        match r.verify(&genesis) {
            Ok(()) => lines.push(format!(
                "ok      tx {} in block {} ({:?})",
                r.tx_id(),
                r.header.height.0,
                r.outcome
            )),
            Err(e) => {
                bad += 1;
                lines.push(format!("INVALID tx {}: {e}", r.tx_id()));
            }
        }
    }
    print_lines(&lines);
    Ok(if bad == 0 && !receipts.is_empty() {
        ExitStatus::Success
    } else {
        ExitStatus::Mismatch
    })
}

fn verify(a: VerifyArgs) -> anyhow::Result<ExitStatus> {
    let cfg = NodeConfig::load(&a.config)?;
    let genesis = config::read_genesis(&cfg.genesis)?;
    let store = Store::open(&cfg.store_path())?;
    let (_, blocks) = store.load()?;
    match verify_chain(&genesis, &blocks) {
        Ok(head) => {
            print_json(&head)?;
            Ok(ExitStatus::Success)
        }
        Err(ledger::Error::CorruptChain { seq, reason }) => {
            print_lines(&[format!("first bad block: {} ({reason})", seq.0)]);
            Ok(ExitStatus::Mismatch)
        }
        Err(e) => Err(e.into()),
    }
}

async fn register(a: RegisterArgs) -> anyhow::Result<ExitStatus> {
    let role: ledger::contracts::Role = a.role.parse()?;
    let receipt = super::args::with_ledger(&a.ledger, async |p| {
        p.register_identity(a.admin_key.as_deref(), role, &a.name, &a.out)
            .await
    })
    .await?;
    let key = config::read_key(&a.out)?;
    if a.json {
        print_json(&serde_json::json!({
            "name": a.name,
            "role": role.to_string(),
            "public_key": key.public().to_hex(),
            "key_file": a.out.display().to_string(),
            "height": receipt.header.height.0,
        }))?;
    } else {
        print_lines(&[format!(
            "registered {} as {role} (public key {}, key file {}, height {})",
            a.name,
            key.public().to_hex(),
            a.out.display(),
            receipt.header.height.0
        )]);
    }
    Ok(ExitStatus::Success)
}

async fn grant(a: GrantArgs) -> anyhow::Result<ExitStatus> {
    let access: ledger::contracts::Access = a
        .access
        .parse()
        .map_err(|e| anyhow::anyhow!("--access: {e}"))?;
    let subject = ledger::crypto::Digest::from_hex(&a.subject)
        .map_err(|e| anyhow::anyhow!("--subject is not a root (64 hex digits): {e}"))?;
    let grantee = super::records::public_key(&a.to)?;
    let receipt = super::args::with_ledger(&a.ledger, async |p| {
        p.grant_access(a.admin_key.as_deref(), subject, grantee, access)
            .await
    })
    .await?;
    if a.json {
        print_json(&serde_json::json!({
            "subject": subject.to_hex(),
            "grantee": grantee.to_hex(),
            "access": a.access,
            "height": receipt.header.height.0,
        }))?;
    } else {
        print_lines(&[format!(
            "granted {} {} access to {subject} (height {})",
            grantee.to_hex(),
            a.access,
            receipt.header.height.0
        )]);
    }
    Ok(ExitStatus::Success)
}
