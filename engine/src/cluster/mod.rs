//! The `--cluster` client, and what a cluster's client, scheduler and executors agree on: the
//! scheduling policy, the `df://` URL, the start-up reachability check and the TLS of their
//! links ([`tls`]).

pub mod tls;

use std::time::Duration;

use ballista::prelude::SessionContextExt;
use ballista_core::config::TaskSchedulingPolicy;
use ballista_core::extension::SessionConfigExt;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::prelude::SessionContext;

use crate::session::cluster_config;
use crate::{Error, Result, functions};

/// How tasks reach executors: they fetch them (Ballista's pull-staged policy). With push-staged,
/// a task cancelled because its stage was rolled back after an executor loss never returns its
/// slot to the scheduler's books and the job waits forever; pull-staged re-runs the lost work and
/// finishes. The scheduler and executors both take it from here.
pub const SCHEDULING_POLICY: TaskSchedulingPolicy = TaskSchedulingPolicy::PullStaged;

/// The port of a `df://` URL that names none.
pub const DEFAULT_PORT: u16 = 50050;

/// A client context whose queries run on the cluster behind `url` (`df://HOST:PORT`), with
/// emrflow's functions and session options; its connections use mutual TLS under `key` when
/// given. The scheduler is contacted first (and the TLS handshake tried) so that a wrong
/// address or key is reported as such rather than as a failed query.
pub async fn connect(
    url: &str,
    target_partitions: Option<usize>,
    key: Option<&tls::ClusterKey>,
) -> Result<SessionContext> {
    let (host, port) = parse_url(url)?;
    let unreachable = |message| Error::Unreachable {
        url: url.to_string(),
        message,
    };
    reach(&host, port, Duration::ZERO)
        .await
        .map_err(unreachable)?;
    let mut config = cluster_config();
    if let Some(key) = key {
        tls::probe(&host, port, key).await.map_err(|message| {
            unreachable(format!(
                "{message} (--cluster-key {})",
                key.path().display()
            ))
        })?;
        config =
            config.with_ballista_override_create_grpc_client_endpoint(tls::endpoint_override(key)?);
    }
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
    functions::register(&mut ctx)?;
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

/// `df://HOST[:PORT]` → host and port ([`DEFAULT_PORT`] when absent).
pub fn parse_url(url: &str) -> Result<(String, u16)> {
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
    Ok((host, parsed.port().unwrap_or(DEFAULT_PORT)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheduler_urls() {
        assert_eq!(
            parse_url("df://10.0.0.5:6000").ok(),
            Some(("10.0.0.5".to_string(), 6000))
        );
        assert_eq!(
            parse_url("df://scheduler").ok(),
            Some(("scheduler".to_string(), DEFAULT_PORT))
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
        let e = connect(&url, None, None)
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains(&url) && e.contains("cannot reach"), "{e}");
    }
}
