#![doc = include_str!("../README.md")]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ballista::prelude::SessionContextExt;
use ballista_core::config::TaskSchedulingPolicy;
use ballista_core::extension::SessionConfigExt;
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig;
use ballista_scheduler::scheduler_process::start_server;
use datafusion::execution::SessionState;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use pipeline::store::EngineStores;
use pipeline::udf::EmrflowOptions;

/// Why the scheduler could not start, or a client could not reach it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag or URL that cannot work.
    #[error("{0}")]
    Config(String),
    /// The scheduler named by a `df://` URL does not answer.
    #[error("cannot reach the scheduler at {url}: {message}")]
    Unreachable {
        /// The URL the user gave.
        url: String,
        /// What connecting said.
        message: String,
    },
    /// Ballista refused to start or stopped with an error.
    #[error("scheduler: {0}")]
    Ballista(#[from] ballista_core::error::BallistaError),
    /// Building a session failed.
    #[error(transparent)]
    DataFusion(#[from] datafusion::error::DataFusionError),
}

/// The scheduler's settings; every field has a flag and an environment variable in
/// `emrflow scheduler`.
#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    /// Address to listen on (`0.0.0.0` for every interface).
    pub bind_host: String,
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
            bind_host: "0.0.0.0".into(),
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

/// How tasks reach executors: they fetch them (Ballista's pull-staged policy). With push-staged,
/// a task cancelled because its stage was rolled back after an executor loss never returns its
/// slot to the scheduler's books and the job waits forever; pull-staged re-runs the lost work and
/// finishes. Executors must use the same policy.
pub const SCHEDULING_POLICY: TaskSchedulingPolicy = TaskSchedulingPolicy::PullStaged;

/// The session configuration every emrflow engine in a cluster starts from: Ballista's, plus
/// emrflow's session options, so that settings a client sends (`emrflow.pseudonym_key`) are
/// accepted instead of being dropped as unknown keys.
///
/// Ballista 55's adaptive planner is turned off: after an executor is lost mid-job its graph
/// re-runs the map stage but then rejects the new stage outputs ("Can't find active stage to
/// update stage outputs") and the job never finishes. The static planner recovers (the lost
/// tasks and the map stage are re-run and the job completes), and emrflow's jobs gain nothing
/// from adaptive joins: their right-hand inputs are small dimension tables.
pub fn session_config() -> SessionConfig {
    SessionConfig::new_with_ballista()
        .with_ballista_adaptive_query_planner(false)
        .with_option_extension(EmrflowOptions::default())
}

/// A scheduler-side session state built from the configuration a client sent: Ballista's
/// defaults, emrflow's functions (so plans naming them decode), and object stores that resolve
/// the `s3://` buckets a job names from the scheduler's environment.
///
/// `config` comes from [`session_config`] with the client's settings applied.
pub fn session_state(config: SessionConfig) -> datafusion::error::Result<SessionState> {
    let runtime = RuntimeEnvBuilder::new()
        .with_object_store_registry(Arc::new(EngineStores::new()))
        .build_arc()?;
    let base = ballista_core::utils::default_session_builder(config)?;
    let mut state = SessionStateBuilder::new_from_existing(base)
        .with_runtime_env(runtime)
        .build();
    pipeline::udf::register_functions(&mut state)?;
    Ok(state)
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
    let mut config = SchedulerConfig::default()
        .with_hostname(options.external_host.clone())
        .with_port(options.port)
        .with_scheduler_policy(SCHEDULING_POLICY)
        .with_no_executors_grace_period_seconds(options.executor_timeout_seconds)
        .with_override_config_producer(Arc::new(session_config))
        .with_override_session_builder(Arc::new(session_state));
    config.bind_host = options.bind_host.clone();
    config.executor_timeout_seconds = options.executor_timeout_seconds;
    config.expire_dead_executor_interval_seconds = options.expire_dead_executor_interval_seconds;
    config.task_max_failures = options.task_max_failures;
    config.stage_max_failures = options.stage_max_failures;
    let cluster = BallistaCluster::new_from_config(&config).await?;
    tokio::select! {
        served = start_server(cluster, addr, Arc::new(config)) => served.map_err(Error::from),
        () = shutdown => Ok(()),
    }
}

/// A client context whose queries run on the cluster behind `url` (`df://HOST:PORT`), with
/// emrflow's functions and session options. The scheduler is contacted first so that a wrong
/// address is reported as such rather than as a failed query.
pub async fn connect(url: &str, target_partitions: Option<usize>) -> Result<SessionContext, Error> {
    let (host, port) = parse_url(url)?;
    reach(&host, port, Duration::ZERO)
        .await
        .map_err(|message| Error::Unreachable {
            url: url.to_string(),
            message,
        })?;
    let mut config = session_config();
    if let Some(n) = target_partitions {
        config = config.with_target_partitions(n.max(1));
    }
    let state = SessionStateBuilder::new()
        .with_config(config)
        .with_default_features()
        .build();
    let mut ctx = SessionContext::remote_with_state(&format!("df://{host}:{port}"), state).await?;
    // Ballista replaces the state's function lists while upgrading it, so emrflow's functions
    // are registered on the context it returns.
    pipeline::udf::register_functions(&mut ctx)?;
    Ok(ctx)
}

/// Opens a TCP connection to a scheduler, retrying every half second for `retry_for` (at least
/// one attempt, each given 5 s); the last error when it never answers. Clients try once, so a
/// wrong address fails at once; executors started before their scheduler wait for it.
pub async fn reach(host: &str, port: u16, retry_for: Duration) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + retry_for;
    loop {
        let attempt = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::net::TcpStream::connect((host, port)),
        )
        .await;
        let message = match attempt {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "no answer within 5 s".to_string(),
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(message);
        }
        tracing::warn!("scheduler {host}:{port} not reachable yet ({message}); retrying");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `df://HOST[:PORT]` → host and port (50050 when absent).
pub fn parse_url(url: &str) -> Result<(String, u16), Error> {
    let bad =
        |why: &str| Error::Config(format!("--cluster {url}: {why} (expected df://HOST:PORT)"));
    let parsed = url::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
    if parsed.scheme() != "df" {
        return Err(bad("the scheme must be df://"));
    }
    if !matches!(parsed.path(), "" | "/") || parsed.query().is_some() {
        return Err(bad("a scheduler URL has no path"));
    }
    let host = match parsed.host() {
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        Some(host) => host.to_string(),
        None => return Err(bad("no host")),
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    Ok((host, parsed.port().unwrap_or(50050)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::execution::FunctionRegistry;

    #[test]
    fn scheduler_state_knows_every_emrflow_function_and_option() {
        let state = session_state(session_config()).unwrap_or_else(|e| panic!("{e}"));
        for f in pipeline::udf::engine_functions() {
            assert!(state.udf(f.name()).is_ok(), "{} missing", f.name());
        }
        for f in pipeline::udf::engine_aggregate_functions() {
            assert!(state.udaf(f.name()).is_ok(), "{} missing", f.name());
        }
        assert!(state.udaf("emr_fingerprint").is_ok());
        assert!(state.udaf("ml_tree_histogram").is_ok());
        // Ballista's own functions survive.
        assert!(state.udaf("count").is_ok());
    }

    #[test]
    fn client_settings_reach_the_scheduler_session() {
        use ballista_core::extension::SessionConfigHelperExt;
        let mut client = session_config();
        client
            .options_mut()
            .set("emrflow.pseudonym_key", "00ff")
            .unwrap_or_else(|e| panic!("{e}"));
        let produced = session_config().update_from_key_value_pair(&client.to_key_value_pairs());
        let state = session_state(produced).unwrap_or_else(|e| panic!("{e}"));
        let key = state
            .config()
            .options()
            .extensions
            .get::<EmrflowOptions>()
            .map(|o| o.pseudonym_key.clone());
        assert_eq!(key.as_deref(), Some("00ff"));
    }

    #[test]
    fn scheduler_urls() {
        assert_eq!(
            parse_url("df://10.0.0.5:6000").ok(),
            Some(("10.0.0.5".to_string(), 6000))
        );
        assert_eq!(
            parse_url("df://scheduler").ok(),
            Some(("scheduler".to_string(), 50050))
        );
        for bad in [
            "http://x:1",
            "df://",
            "df://x:notaport",
            "df://x:1/path",
            "x:1",
        ] {
            let e = parse_url(bad)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains(bad), "{bad}: {e}");
        }
    }

    #[tokio::test]
    async fn an_unreachable_scheduler_is_named() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("{e}"))
            .port();
        drop(listener);
        let url = format!("df://127.0.0.1:{port}");
        let e = connect(&url, None)
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains(&url) && e.contains("cannot reach"), "{e}");
    }
}
