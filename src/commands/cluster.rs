//! `emrflow scheduler` and `emrflow executor`: flags → the `scheduler` and `executors` crates'
//! options → a process that runs until SIGTERM.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use super::ExitStatus;

#[derive(Debug, Args)]
#[command(
    after_help = "Clients send jobs with --cluster df://HOST:PORT; executors register \
with --scheduler-host/--scheduler-port. One scheduler per cluster (its state is in memory). \
Stops on SIGTERM or Ctrl-C."
)]
pub(crate) struct SchedulerArgs {
    /// Address to listen on
    // Loopback unless told otherwise: the scheduler authenticates no one, so another interface
    // (0.0.0.0) belongs only on a network that admits the cluster's hosts alone.
    #[arg(long, env = "EMRFLOW_SCHEDULER_BIND_HOST", default_value = "127.0.0.1")]
    bind_host: String,
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
    /// Address to listen on
    // Loopback unless told otherwise: anyone who reaches an executor's Flight port reads
    // shuffle data and results.
    #[arg(long, env = "EMRFLOW_EXECUTOR_BIND_HOST", default_value = "127.0.0.1")]
    bind_host: String,
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
}

pub(crate) async fn run_scheduler(args: SchedulerArgs) -> anyhow::Result<ExitStatus> {
    let options = scheduler::SchedulerOptions {
        bind_host: args.bind_host,
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
        external_host,
        port: args.port,
        concurrent_tasks: args.concurrent_tasks,
        work_dir: args.work_dir,
        heartbeat_interval_seconds: args.heartbeat_interval,
        scheduler_connect_timeout_seconds: args.connect_timeout,
        memory_pool_bytes: args.memory_mb.map(|mb| mb * 1024 * 1024),
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
