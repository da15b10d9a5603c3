//! Subcommand definitions and dispatch. Each subcommand module owns its clap `Args` struct and a
//! `run` function that converts flags into a library `Config` and calls the library; none of them
//! holds pipeline, training or consensus logic.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

mod args;
mod audit;
mod bench;
mod cluster;
mod demo;
mod fingerprint;
mod generate;
mod ledger;
mod lineage;
mod predict;
mod prove;
mod records;
mod run;
mod serve;
mod train;
mod verify;

/// What the process reports to its caller. Scripts rely on these values, so they never change:
/// 0 success, 1 a negative result (a verification mismatch), 2 an error (bad input, bad
/// configuration, a failed job), 3 a refusal by the ledger's contracts (a read or change the
/// caller's grants do not allow).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ExitStatus {
    Success,
    Mismatch,
    Error,
    Denied,
    Unavailable,
}

impl From<ExitStatus> for ExitCode {
    fn from(status: ExitStatus) -> Self {
        match status {
            ExitStatus::Success => ExitCode::from(0),
            ExitStatus::Mismatch => ExitCode::from(1),
            ExitStatus::Error => ExitCode::from(2),
            ExitStatus::Denied => ExitCode::from(3),
            ExitStatus::Unavailable => ExitCode::from(4),
        }
    }
}

/// emrflow: a provable batch pipeline for electronic medical records.
#[derive(Debug, Parser)]
#[command(name = "emrflow", version, about, long_about = None, propagate_version = true)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: GlobalArgs,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Flags every subcommand accepts.
#[derive(Debug, Args)]
pub(crate) struct GlobalArgs {
    /// More log output on stderr (-v info, -vv debug); RUST_LOG overrides it
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub(crate) verbose: u8,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Write synthetic EMRs (patients.csv and visits.csv) in the published shape
    Generate(generate::GenerateArgs),
    /// Run a preprocessing job file and publish a de-identified Parquet dataset
    Run(run::RunArgs),
    /// Train a decision tree, random forest or boosted trees on a dataset from `emrflow run`
    // Boxed: the ensemble, calibration and threshold flags make it several times larger than
    // any other command's arguments.
    Train(Box<train::TrainArgs>),
    /// Score raw rows with a trained model: the risk, the class at its threshold, and why
    Predict(predict::PredictArgs),
    /// Generate, preprocess, train, anchor and verify end to end on one machine
    Demo(demo::DemoArgs),
    /// Check a dataset or model against its anchor (exit 0 match, 1 mismatch, 2 error)
    Verify(verify::VerifyArgs),
    /// Print the lineage of an anchored root (text, Graphviz DOT, OpenLineage)
    Lineage(lineage::LineageArgs),
    /// List who did what to an anchored root, or what an identity did
    Audit(audit::AuditArgs),
    /// Prove a record is, or is not, in a dataset; check such a proof
    Prove(prove::ProveArgs),
    /// Compute the canonical fingerprint of a Parquet dataset
    Fingerprint(fingerprint::FingerprintArgs),
    /// The clinical record store: import, read, history, amend, erase (every read decided and
    /// recorded by the ledger)
    #[command(subcommand)]
    Records(records::RecordsCommand),
    /// Who may read which records: grants, revocations, break-glass, access reports
    #[command(subcommand)]
    Access(records::AccessCommand),
    /// Serve the online API: FHIR-shaped record reads, each decided and audited by the ledger
    Serve(Box<serve::ServeArgs>),
    /// Print an identity token (a JWT signed with the identity's key) for the API
    Token(serve::TokenArgs),
    /// Send one authenticated request (a GET, or a POST with --data) to a server, print the answer
    Api(serve::ApiArgs),
    /// Run and inspect the four-peer PBFT ledger
    #[command(subcommand)]
    Ledger(ledger::LedgerCommand),
    /// Run a cluster scheduler (Ballista) that --cluster clients send their plans to
    Scheduler(cluster::SchedulerArgs),
    /// Run a cluster executor (Ballista) that fetches and runs its scheduler's tasks
    Executor(cluster::ExecutorArgs),
    /// Create the key a cluster's scheduler, executors and clients share (mutual TLS on every
    /// link)
    ClusterKey(cluster::ClusterKeyArgs),
    /// Baselines for benchmark scripts
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

pub(crate) async fn dispatch(cli: Cli) -> anyhow::Result<ExitStatus> {
    match cli.command {
        Command::Generate(args) => generate::run(args).await,
        Command::Run(args) => run::run(args).await,
        Command::Train(args) => train::run(*args).await,
        Command::Predict(args) => predict::run(args).await,
        // Boxed: the demo's future holds a whole training run's state.
        Command::Demo(args) => Box::pin(demo::run(args)).await,
        Command::Verify(args) => verify::run(args).await,
        Command::Lineage(args) => lineage::run(args).await,
        Command::Audit(args) => audit::run(args).await,
        Command::Prove(args) => prove::run(args).await,
        Command::Fingerprint(args) => fingerprint::run(args).await,
        Command::Records(cmd) => records::run_records(cmd).await,
        Command::Access(cmd) => records::run_access(cmd).await,
        Command::Serve(args) => serve::serve(*args).await,
        Command::Token(args) => serve::token(&args),
        Command::Api(args) => serve::api(args).await,
        Command::Ledger(cmd) => ledger::run(cmd).await,
        Command::Scheduler(args) => cluster::run_scheduler(args).await,
        Command::Executor(args) => cluster::run_executor(args).await,
        Command::ClusterKey(args) => cluster::new_cluster_key(&args),
        Command::Bench(cmd) => bench::run(cmd).await,
    }
}

impl Command {
    /// Cluster services log what they do (executors joining and lost, jobs, task retries) by
    /// default; other commands only warnings.
    pub(crate) fn is_server(&self) -> bool {
        matches!(
            self,
            Command::Scheduler(_) | Command::Executor(_) | Command::Serve(_)
        )
    }
}

/// Logs go to stderr through `tracing`; `RUST_LOG` wins over `-v`. Ballista logs through the
/// `log` crate; its records are forwarded to the same output under the target `ballista`.
pub(crate) fn init_tracing(verbose: u8, server: bool) {
    let default = match (verbose, server) {
        (0, false) => "warn",
        (0, true) | (1, _) => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    if log::set_logger(&LOG_BRIDGE).is_ok() {
        log::set_max_level(log::LevelFilter::Trace);
    }
}

static LOG_BRIDGE: LogBridge = LogBridge;

/// Forwards `log` records (Ballista's) to `tracing`.
struct LogBridge;

impl log::Log for LogBridge {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        match metadata.level() {
            log::Level::Error => tracing::enabled!(target: "ballista", tracing::Level::ERROR),
            log::Level::Warn => tracing::enabled!(target: "ballista", tracing::Level::WARN),
            log::Level::Info => tracing::enabled!(target: "ballista", tracing::Level::INFO),
            log::Level::Debug => tracing::enabled!(target: "ballista", tracing::Level::DEBUG),
            log::Level::Trace => tracing::enabled!(target: "ballista", tracing::Level::TRACE),
        }
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let (from, args) = (record.target(), record.args());
        match record.level() {
            log::Level::Error => tracing::error!(target: "ballista", "{from}: {args}"),
            log::Level::Warn => tracing::warn!(target: "ballista", "{from}: {args}"),
            log::Level::Info => tracing::info!(target: "ballista", "{from}: {args}"),
            log::Level::Debug => tracing::debug!(target: "ballista", "{from}: {args}"),
            log::Level::Trace => tracing::trace!(target: "ballista", "{from}: {args}"),
        }
    }

    fn flush(&self) {}
}

/// One line on stderr: the error and its causes, outermost first.
#[allow(clippy::print_stderr)]
pub(crate) fn report_error(err: &anyhow::Error) {
    let chain: Vec<String> = err.chain().map(ToString::to_string).collect();
    eprintln!("error: {}", dedup_chain(&chain).join(": "));
}

/// Library errors often repeat their source's text in their own message; printing both would
/// say the same thing twice.
fn dedup_chain(chain: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for msg in chain {
        if out.last().is_some_and(|prev| prev.contains(msg.as_str())) {
            continue;
        }
        out.push(msg.clone());
    }
    out
}

/// Prints a value as one line of JSON on stdout, for `--json`.
#[allow(clippy::print_stdout)]
pub(crate) fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}

/// Prints human-readable lines on stdout.
#[allow(clippy::print_stdout)]
pub(crate) fn print_lines(lines: &[String]) {
    for line in lines {
        println!("{line}");
    }
}

/// A spinner with a message on stderr, drawn only when stderr is a terminal, so pipes and CI logs
/// stay clean.
pub(crate) fn progress(message: &str) -> ProgressBar {
    let bar = if std::io::stderr().is_terminal() {
        ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    if let Ok(style) = ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg} {pos}") {
        bar.set_style(style);
    }
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    bar.set_message(message.to_string());
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        // Catches two flags of one command sharing a name (a flattened group and the command's
        // own), which clap otherwise resolves silently by handing both the same value.
        <Cli as clap::CommandFactory>::command().debug_assert();
    }
}
