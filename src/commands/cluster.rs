//! `emrflow scheduler` and `emrflow executor`: flags → the `scheduler` and `executors` crates'
//! options → a process that runs until SIGTERM.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use super::{ExitStatus, print_json, print_lines};

#[derive(Debug, Args)]
#[command(
    after_help = "Clients send jobs with --cluster df://HOST:PORT; executors register \
with --scheduler-host/--scheduler-port. One scheduler per cluster (its state is in memory). \
Stops on SIGTERM or Ctrl-C."
)]
pub(crate) struct SchedulerArgs {
    /// Address to listen on; any but loopback needs --cluster-key
    #[arg(long, env = "EMRFLOW_SCHEDULER_BIND_HOST", default_value = "127.0.0.1")]
    bind_host: String,
    /// The cluster's key (`emrflow cluster-key`): the port admits only its holders, over
    /// mutual TLS, and the scheduler's own connections use it
    #[arg(long, env = "EMRFLOW_CLUSTER_KEY", value_name = "FILE")]
    cluster_key: Option<PathBuf>,
    /// Port to listen on (clients use df://HOST:PORT)
    #[arg(long, env = "EMRFLOW_SCHEDULER_PORT", default_value_t = 50050)]
    port: u16,
    /// Host name executors and clients reach this scheduler by
    #[arg(
        long,
        env = "EMRFLOW_SCHEDULER_EXTERNAL_HOST",
        default_value = "localhost"
    )]
    external_host: String,
    /// Seconds without a heartbeat after which an executor is lost and its tasks run elsewhere
    #[arg(long, env = "EMRFLOW_EXECUTOR_TIMEOUT", default_value_t = 30)]
    executor_timeout: u64,
    /// Attempts of a task before its job fails
    #[arg(long, env = "EMRFLOW_TASK_MAX_FAILURES", default_value_t = 4)]
    task_max_failures: usize,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Registers with the scheduler and fetches tasks from it. It listens only on \
--port (Arrow Flight), where other executors read its shuffle output and clients its results. Shuffle \
files go under --work-dir; job inputs and outputs must be at the same paths as on the client \
(a shared filesystem) or in an object store (s3:// with the standard AWS_* variables). Stops on \
SIGTERM or Ctrl-C after telling the scheduler."
)]
pub(crate) struct ExecutorArgs {
    /// Host of the scheduler
    #[arg(long, env = "EMRFLOW_SCHEDULER_HOST", default_value = "localhost")]
    scheduler_host: String,
    /// Port of the scheduler
    #[arg(long, env = "EMRFLOW_SCHEDULER_PORT", default_value_t = 50050)]
    scheduler_port: u16,
    /// Address to listen on; any but loopback needs --cluster-key, and with it the address
    /// others reach this executor by (a pod IP), since Ballista keeps 127.0.0.1 at that port
    #[arg(long, env = "EMRFLOW_EXECUTOR_BIND_HOST", default_value = "127.0.0.1")]
    bind_host: String,
    /// The cluster's key (the scheduler's): the port admits only its holders, over mutual TLS,
    /// and the executor's own connections use it
    #[arg(long, env = "EMRFLOW_CLUSTER_KEY", value_name = "FILE")]
    cluster_key: Option<PathBuf>,
    /// Host name others reach this executor by (default: the bind host; a pod IP on Kubernetes)
    #[arg(long, env = "EMRFLOW_EXECUTOR_EXTERNAL_HOST")]
    external_host: Option<String>,
    /// Arrow Flight port (shuffle data and results)
    #[arg(long, env = "EMRFLOW_EXECUTOR_PORT", default_value_t = 50051)]
    port: u16,
    /// Tasks run at once (0: one per core)
    #[arg(long, env = "EMRFLOW_CONCURRENT_TASKS", default_value_t = 0)]
    concurrent_tasks: usize,
    /// Directory for shuffle and spill files (default: a temporary directory)
    #[arg(long, env = "EMRFLOW_WORK_DIR")]
    work_dir: Option<PathBuf>,
    /// Seconds between heartbeats to the scheduler
    #[arg(long, env = "EMRFLOW_HEARTBEAT_INTERVAL", default_value_t = 5)]
    heartbeat_interval: u64,
    /// Seconds to keep retrying to reach the scheduler at start-up
    #[arg(long, env = "EMRFLOW_SCHEDULER_CONNECT_TIMEOUT", default_value_t = 60)]
    connect_timeout: u16,
    /// Memory for running tasks before they spill, in MiB (default: a share of RAM)
    #[arg(long, env = "EMRFLOW_EXECUTOR_MEMORY_MB")]
    memory_mb: Option<u64>,
    /// The pseudonymization key of the jobs it runs (the file their pii.key_file names, or the
    /// same bytes): keys never travel with a job, which names its key by id only
    #[arg(long, env = "EMRFLOW_PSEUDONYM_KEY_FILE", value_name = "FILE")]
    pseudonym_key_file: Option<PathBuf>,
}

pub(crate) async fn run_scheduler(args: SchedulerArgs) -> anyhow::Result<ExitStatus> {
    let options = scheduler::SchedulerOptions {
        bind_host: args.bind_host,
        cluster_key: args.cluster_key,
        port: args.port,
        external_host: args.external_host,
        executor_timeout_seconds: args.executor_timeout.max(1),
        expire_dead_executor_interval_seconds: (args.executor_timeout / 4).clamp(1, 15),
        task_max_failures: args.task_max_failures.max(1),
        ..scheduler::SchedulerOptions::default()
    };
    tracing::info!(
        "emrflow scheduler on {}:{} (executor timeout {} s)",
        options.bind_host,
        options.port,
        options.executor_timeout_seconds
    );
    scheduler::serve(&options, stop_signal())
        .await
        .with_context(|| format!("scheduler on {}:{}", options.bind_host, options.port))?;
    Ok(ExitStatus::Success)
}

pub(crate) async fn run_executor(args: ExecutorArgs) -> anyhow::Result<ExitStatus> {
    let external_host = args.external_host.or_else(|| {
        // 0.0.0.0 cannot be dialled: advertise nothing and let Ballista use the address the
        // scheduler sees.
        (args.bind_host != "0.0.0.0" && args.bind_host != "::").then(|| args.bind_host.clone())
    });
    let options = executors::ExecutorOptions {
        scheduler_host: args.scheduler_host,
        scheduler_port: args.scheduler_port,
        bind_host: args.bind_host,
        cluster_key: args.cluster_key,
        external_host,
        port: args.port,
        concurrent_tasks: args.concurrent_tasks,
        work_dir: args.work_dir,
        heartbeat_interval_seconds: args.heartbeat_interval,
        scheduler_connect_timeout_seconds: args.connect_timeout,
        memory_pool_bytes: args.memory_mb.map(|mb| mb * 1024 * 1024),
        pseudonym_key_file: args.pseudonym_key_file,
    };
    tracing::info!(
        "emrflow executor on {}:{}, scheduler {}:{}",
        options.bind_host,
        options.port,
        options.scheduler_host,
        options.scheduler_port
    );
    executors::serve(&options).await.with_context(|| {
        format!(
            "executor on {}:{} (scheduler {}:{})",
            options.bind_host, options.port, options.scheduler_host, options.scheduler_port
        )
    })?;
    Ok(ExitStatus::Success)
}

#[derive(Debug, Args)]
#[command(
    after_help = "Give the same file to the scheduler, every executor and every client \
(--cluster-key, or EMRFLOW_CLUSTER_KEY; a Secret on Kubernetes). It never crosses the network: \
each side proves it in a TLS 1.3 handshake, and a connection that cannot is dropped before \
Ballista reads a byte. Exit 2 if FILE exists (it is never overwritten)."
)]
pub(crate) struct ClusterKeyArgs {
    /// Where to write the key (owner-only permissions; refuses to overwrite)
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Print a JSON summary on stdout
    #[arg(long)]
    json: bool,
}

pub(crate) fn new_cluster_key(args: &ClusterKeyArgs) -> anyhow::Result<ExitStatus> {
    let key = engine::cluster::tls::ClusterKey::create(&args.out)?;
    if args.json {
        print_json(&serde_json::json!({ "path": args.out, "cluster_key_id": key.id() }))?;
    } else {
        print_lines(&[format!(
            "cluster key written to {} (id {}); give it to the scheduler, the executors and \
             clients with --cluster-key",
            args.out.display(),
            key.id()
        )]);
    }
    Ok(ExitStatus::Success)
}

/// Completes on SIGTERM (what Kubernetes sends) or Ctrl-C.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
