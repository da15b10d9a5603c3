#![doc = include_str!("../README.md")]

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use ballista_core::extension::EndpointOverrideFn;
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig;
use ballista_scheduler::scheduler_process::{
    create_scheduler, start_grpc_service_with_listener, start_server,
};
use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};
use engine::cluster::tls;

/// Why the scheduler could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag that cannot work.
    #[error("{0}")]
    Config(String),
    /// Ballista refused to start or stopped with an error.
    #[error("scheduler: {0}")]
    Ballista(#[from] ballista_core::error::BallistaError),
}

/// The scheduler's settings; every field has a flag and an environment variable in
/// `emrflow scheduler`.
#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    /// Address to listen on: loopback by default. Any other address needs `cluster_key`.
    pub bind_host: String,
    /// The cluster's key: the port is then a mutual-TLS front admitting only its holders, and
    /// Ballista's plaintext service listens on loopback behind it.
    pub cluster_key: Option<PathBuf>,
    /// Port of the scheduler's gRPC service (clients use `df://HOST:PORT`).
    pub port: u16,
    /// Host name executors and clients reach this scheduler by.
    pub external_host: String,
    /// An executor silent this long is declared lost and its tasks rescheduled.
    pub executor_timeout_seconds: u64,
    /// How often lost executors are looked for.
    pub expire_dead_executor_interval_seconds: u64,
    /// Attempts of one task before its job fails.
    pub task_max_failures: usize,
    /// Attempts of one stage (re-runs after lost shuffle data) before its job fails.
    pub stage_max_failures: usize,
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        Self {
            bind_host: "127.0.0.1".into(),
            cluster_key: None,
            port: 50050,
            external_host: "localhost".into(),
            // Ballista's 180 s suits long-lived services; a batch job that loses an executor
            // should notice within a heartbeat or two.
            executor_timeout_seconds: 30,
            expire_dead_executor_interval_seconds: 5,
            task_max_failures: 4,
            stage_max_failures: 4,
        }
    }
}

/// Runs a scheduler until `shutdown` completes (or the server fails).
pub async fn serve(
    options: &SchedulerOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let addr: SocketAddr = format!("{}:{}", options.bind_host, options.port)
        .parse()
        .map_err(|e| {
            Error::Config(format!(
                "--bind-host {} --port {}: {e}",
                options.bind_host, options.port
            ))
        })?;
    let key = tls::key_for_listener(
        "scheduler",
        &options.bind_host,
        options.cluster_key.as_deref(),
    )
    .map_err(|e| Error::Config(e.to_string()))?;
    let mut config = SchedulerConfig::default()
        .with_hostname(options.external_host.clone())
        .with_port(options.port)
        .with_scheduler_policy(engine::cluster::SCHEDULING_POLICY)
        .with_no_executors_grace_period_seconds(options.executor_timeout_seconds)
        .with_override_config_producer(Arc::new(engine::session::cluster_config))
        .with_override_session_builder(Arc::new(engine::session::scheduler_state));
    config.bind_host = options.bind_host.clone();
    config.executor_timeout_seconds = options.executor_timeout_seconds;
    config.expire_dead_executor_interval_seconds = options.expire_dead_executor_interval_seconds;
    config.task_max_failures = options.task_max_failures;
    config.stage_max_failures = options.stage_max_failures;
    let Some(key) = key else {
        let cluster = BallistaCluster::new_from_config(&config).await?;
        return tokio::select! {
            served = start_server(cluster, addr, Arc::new(config)) => served.map_err(Error::from),
            () = shutdown => Ok(()),
        };
    };
    // Ballista listens on a loopback port of its own; the advertised port is the TLS front.
    let inner = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| Error::Config(format!("cannot listen on 127.0.0.1: {e}")))?;
    let inner_addr = inner
        .local_addr()
        .map_err(|e| Error::Config(e.to_string()))?;
    let through_tunnels: EndpointOverrideFn =
        tls::endpoint_override(&key).map_err(|e| Error::Config(e.to_string()))?;
    config = config.with_override_create_grpc_client_endpoint(through_tunnels);
    config.validate()?;
    let front = tls::front(&addr.to_string(), inner_addr, &key)
        .await
        .map_err(|e| Error::Config(format!("--bind-host/--port: {e}")))?;
    tracing::info!(
        "scheduler: mutual TLS on {} (cluster key {}), Ballista on {inner_addr}",
        front.addr(),
        key.id()
    );
    let cluster = BallistaCluster::new_from_config(&config).await?;
    let scheduler =
        create_scheduler::<LogicalPlanNode, PhysicalPlanNode>(cluster, Arc::new(config)).await?;
    tokio::select! {
        served = start_grpc_service_with_listener(inner, scheduler) => served.map_err(Error::from),
        () = shutdown => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Why a scheduler with `options` does not start.
    async fn start_error(options: SchedulerOptions) -> String {
        serve(&options, std::future::pending())
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn a_bad_bind_address_is_named() {
        let e = start_error(SchedulerOptions {
            bind_host: "not an address".into(),
            ..SchedulerOptions::default()
        })
        .await;
        assert!(e.contains("--bind-host not an address"), "{e}");
    }

    #[tokio::test]
    async fn an_exposed_scheduler_needs_the_cluster_key() {
        let e = start_error(SchedulerOptions {
            bind_host: "0.0.0.0".into(),
            port: 0,
            ..SchedulerOptions::default()
        })
        .await;
        assert!(
            e.contains("--bind-host 0.0.0.0") && e.contains("--cluster-key"),
            "{e}"
        );
    }
}
