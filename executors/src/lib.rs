#![doc = include_str!("../README.md")]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ballista_core::RuntimeProducer;
use ballista_core::extension::SessionConfigExt;
use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};
use engine::cluster::tls;
use engine::datafusion::prelude::SessionConfig;

/// Why an executor could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag that cannot work.
    #[error("{0}")]
    Config(String),
    /// The scheduler did not answer within the start-up timeout.
    #[error("cannot reach the scheduler at {address} (tried for {seconds} s): {message}")]
    SchedulerUnreachable {
        /// `host:port`.
        address: String,
        /// How long it was tried.
        seconds: u64,
        /// The last connection error.
        message: String,
    },
    /// Ballista refused to start, could not reach the scheduler, or stopped with an error.
    #[error("executor: {0}")]
    Ballista(#[from] ballista_core::error::BallistaError),
}

/// The executor's settings; every field has a flag and an environment variable in
/// `emrflow executor`.
#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    /// Host of the scheduler to register with.
    pub scheduler_host: String,
    /// Port of that scheduler.
    pub scheduler_port: u16,
    /// Address to listen on: loopback by default (Ballista's executor authenticates no one,
    /// and anyone who reaches its port reads shuffle data and results). Any other address
    /// needs `cluster_key`.
    pub bind_host: String,
    /// The cluster's key: the Flight port on `bind_host` is then a mutual-TLS front admitting
    /// only its holders, Ballista's plaintext service listens on 127.0.0.1 at the same port
    /// (the port it advertises must be the front's), and every connection it opens goes
    /// through a TLS tunnel.
    pub cluster_key: Option<PathBuf>,
    /// Host name the scheduler, other executors and clients reach this executor by (a pod IP
    /// on Kubernetes); the bind host when absent.
    pub external_host: Option<String>,
    /// Arrow Flight port: shuffle data and results are fetched from here.
    pub port: u16,
    /// Tasks run at once (0: one per core).
    pub concurrent_tasks: usize,
    /// Where shuffle files are written; a fresh temporary directory when absent.
    pub work_dir: Option<PathBuf>,
    /// Seconds between heartbeats; the scheduler declares the executor lost after its
    /// executor timeout without one.
    pub heartbeat_interval_seconds: u64,
    /// How long to keep retrying to reach the scheduler at start-up.
    pub scheduler_connect_timeout_seconds: u16,
    /// Memory all running tasks may use before they spill, in bytes (default: a share of RAM).
    pub memory_pool_bytes: Option<u64>,
    /// The pseudonymization key file of the jobs this executor runs (the same bytes as the
    /// job's key source). A key never travels with a job: sessions name it by id, and a task
    /// whose job names another key fails.
    pub pseudonym_key_file: Option<PathBuf>,
}

impl Default for ExecutorOptions {
    fn default() -> Self {
        Self {
            scheduler_host: "localhost".into(),
            scheduler_port: 50050,
            bind_host: "127.0.0.1".into(),
            cluster_key: None,
            external_host: None,
            port: 50051,
            concurrent_tasks: 0,
            work_dir: None,
            heartbeat_interval_seconds: 5,
            scheduler_connect_timeout_seconds: 60,
            memory_pool_bytes: None,
            pseudonym_key_file: None,
        }
    }
}

/// Runs an executor until SIGTERM or Ctrl-C (Ballista installs those handlers and tells the
/// scheduler it is leaving), or until it fails.
pub async fn serve(options: &ExecutorOptions) -> Result<(), Error> {
    let key = tls::key_for_listener(
        "executor",
        &options.bind_host,
        options.cluster_key.as_deref(),
    )
    .map_err(|e| Error::Config(e.to_string()))?;
    if key.is_some() && matches!(options.bind_host.as_str(), "127.0.0.1" | "0.0.0.0" | "::") {
        return Err(Error::Config(format!(
            "--bind-host {}: with --cluster-key, give the address others reach this executor by \
             (a pod IP on Kubernetes): the TLS front listens there, Ballista on 127.0.0.1 at the \
             same port",
            options.bind_host
        )));
    }
    if let Some(path) = &options.pseudonym_key_file {
        let key = pipeline::run::read_key_file(&path.display().to_string())
            .map_err(|e| Error::Config(format!("--pseudonym-key-file: {e}")))?;
        let id = pipeline::functions::hold_key(&key);
        tracing::info!("executor: holds pseudonymization key {id}");
    }
    // Executors started before their scheduler (as on Kubernetes) wait for it.
    let retry_for = Duration::from_secs(u64::from(options.scheduler_connect_timeout_seconds));
    engine::cluster::reach(&options.scheduler_host, options.scheduler_port, retry_for)
        .await
        .map_err(|message| Error::SchedulerUnreachable {
            address: format!("{}:{}", options.scheduler_host, options.scheduler_port),
            seconds: retry_for.as_secs(),
            message,
        })?;
    // Kept alive for the whole run when the directory is a temporary one.
    let mut _temp = None;
    let work_dir = match &options.work_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| {
                Error::Config(format!(
                    "--work-dir {}: cannot create it: {e}",
                    dir.display()
                ))
            })?;
            dir.clone()
        }
        None => {
            let dir = tempfile::Builder::new()
                .prefix("emrflow-executor-")
                .tempdir()
                .map_err(|e| Error::Config(format!("cannot create a work directory: {e}")))?;
            let path = dir.path().to_path_buf();
            _temp = Some(dir);
            path
        }
    };
    let work_dir_str = work_dir
        .to_str()
        .ok_or_else(|| Error::Config(format!("--work-dir {}: not UTF-8", work_dir.display())))?
        .to_string();
    let spill_dir = work_dir_str.clone();
    let runtime_producer: RuntimeProducer =
        Arc::new(move |_config: &SessionConfig| engine::session::runtime(Some(&spill_dir)));
    let (bind_host, through_tunnels, _front) = match &key {
        None => (options.bind_host.clone(), None, None),
        Some(key) => {
            let through_tunnels =
                tls::endpoint_override(key).map_err(|e| Error::Config(e.to_string()))?;
            let inner = std::net::SocketAddr::from(([127, 0, 0, 1], options.port));
            let front = tls::front(
                &format!("{}:{}", options.bind_host, options.port),
                inner,
                key,
            )
            .await
            .map_err(|e| Error::Config(format!("--bind-host/--port: {e}")))?;
            tracing::info!(
                "executor: mutual TLS on {} (cluster key {}), Ballista on {inner}",
                front.addr(),
                key.id()
            );
            ("127.0.0.1".to_string(), Some(through_tunnels), Some(front))
        }
    };
    // Shuffle reads run in task contexts, which take their settings from the producer.
    let task_tunnels = through_tunnels.clone();
    let config_producer = Arc::new(move || {
        let config = engine::session::cluster_config();
        match &task_tunnels {
            Some(f) => config.with_ballista_override_create_grpc_client_endpoint(f.clone()),
            None => config,
        }
    });
    let config = ExecutorProcessConfig {
        scheduler_host: options.scheduler_host.clone(),
        scheduler_port: options.scheduler_port,
        bind_host,
        // Behind a front, Ballista's own bind address (loopback) must not be what it
        // advertises.
        external_host: options
            .external_host
            .clone()
            .or_else(|| key.is_some().then(|| options.bind_host.clone())),
        port: options.port,
        vcores: if options.concurrent_tasks == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            options.concurrent_tasks
        },
        work_dir: Some(work_dir_str),
        task_scheduling_policy: engine::cluster::SCHEDULING_POLICY,
        executor_heartbeat_interval_seconds: options.heartbeat_interval_seconds.max(1),
        // Reached above; Ballista 55's own retry loop measures elapsed time from a fresh
        // `Instant` each round, so its timeout never expires.
        scheduler_connect_timeout_seconds: 0,
        memory_pool_size: options.memory_pool_bytes,
        override_function_registry: Some(Arc::new(engine::functions::executor_registry())),
        // Each task's configuration is the cluster's defaults with the client's settings
        // applied over them; it must know emrflow's options or the pseudonym key is dropped.
        override_config_producer: Some(config_producer),
        override_runtime_producer: Some(runtime_producer),
        override_create_grpc_client_endpoint: through_tunnels,
        ..ExecutorProcessConfig::default()
    };
    start_executor_process(Arc::new(config)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unreachable_scheduler_ends_start_up_with_its_address() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("{e}"))
            .port();
        drop(listener);
        let options = ExecutorOptions {
            scheduler_host: "127.0.0.1".into(),
            scheduler_port: port,
            scheduler_connect_timeout_seconds: 1,
            ..ExecutorOptions::default()
        };
        let e = serve(&options)
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains(&format!("127.0.0.1:{port}")) && e.contains("cannot reach"),
            "{e}"
        );
    }
}
