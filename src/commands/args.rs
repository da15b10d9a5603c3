//! Flag groups several commands share: where plans run (`--cluster`, `--partitions`) and which
//! ledger and identity provenance uses (`--ledger`, `--identity`). Each becomes a library
//! config value; nothing else happens here.

use std::path::PathBuf;

use clap::Args;

/// Where a command's queries run: the embedded engine (default) or a Ballista cluster.
#[derive(Debug, Clone, Args)]
pub(crate) struct EngineArgs {
    /// Run the plans on the emrflow cluster whose scheduler is at df://HOST:PORT instead of
    /// embedded; every input and output path must be reachable by the executors (a shared
    /// filesystem mounted at the same path, or s3:// URLs)
    #[arg(long, env = "EMRFLOW_CLUSTER", value_name = "df://HOST:PORT")]
    pub(crate) cluster: Option<String>,
    /// Partitions to run with (default: all cores embedded, 16 on a cluster)
    #[arg(long)]
    pub(crate) partitions: Option<usize>,
    /// The cluster's key file, when its links use mutual TLS (the scheduler and executors
    /// were started with --cluster-key)
    #[arg(long, env = "EMRFLOW_CLUSTER_KEY", value_name = "FILE")]
    pub(crate) cluster_key: Option<PathBuf>,
}

impl EngineArgs {
    pub(crate) fn engine(&self) -> engine::Engine {
        engine::Engine {
            cluster: self.cluster.clone(),
            partitions: self.partitions,
            cluster_key: self.cluster_key.clone(),
        }
    }
}

/// Where provenance goes. Every command that publishes or reads anchored artifacts takes these.
#[derive(Debug, Clone, Args)]
pub(crate) struct LedgerArgs {
    /// The ledger: a directory holds an embedded four-peer ledger (created on first use); a
    /// genesis.json file names the peers of a running cluster [default: $EMRFLOW_HOME/ledger]
    #[arg(long, env = "EMRFLOW_LEDGER", value_name = "DIR|GENESIS")]
    pub(crate) ledger: Option<PathBuf>,
    /// Key file of the identity to sign with [default, on an embedded ledger: the per-role
    /// identity kept in the ledger directory's identities/, created and registered on first
    /// use when the ledger's admin key is there]
    #[arg(long, env = "EMRFLOW_IDENTITY", value_name = "KEY")]
    pub(crate) identity: Option<PathBuf>,
    /// With a cluster: how long one attempt at one peer may take before the next peer is tried
    /// (each peer is tried twice) [default: 10]
    #[arg(long, env = "EMRFLOW_LEDGER_TIMEOUT", value_name = "SECONDS")]
    pub(crate) ledger_timeout: Option<u64>,
}

impl LedgerArgs {
    pub(crate) fn config(&self) -> provenance::LedgerConfig {
        provenance::LedgerConfig {
            ledger: self.ledger.clone(),
            identity: self.identity.clone(),
            timeout_secs: self.ledger_timeout,
        }
    }
}

/// Opens the ledger, runs `body` with it, and closes it whatever `body` returned, so an
/// embedded ledger's peers always stop cleanly.
pub(crate) async fn with_ledger<T>(
    args: &LedgerArgs,
    body: impl AsyncFnOnce(&provenance::Provenance) -> provenance::Result<T>,
) -> anyhow::Result<T> {
    let provenance = provenance::Provenance::open(&args.config()).await?;
    let result = body(&provenance).await;
    provenance.close().await?;
    Ok(result?)
}
