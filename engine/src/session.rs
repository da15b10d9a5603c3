//! The settings every emrflow context starts from, the runtime with emrflow's object stores,
//! and [`Engine`]: where a command's plans run.

use std::sync::Arc;

use ballista_core::extension::SessionConfigExt;
use datafusion::execution::SessionState;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use pipeline::functions::EmrflowOptions;
use pipeline::store::EngineStores;
use serde::Deserialize;

use crate::{Result, cluster, functions};

/// Where a command's plans run: embedded on this machine's cores (the default) or on the emrflow
/// cluster whose scheduler is at `df://HOST:PORT`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Engine {
    /// The scheduler's `df://HOST:PORT`; embedded when absent.
    pub cluster: Option<String>,
    /// Partitions to run with (default: all cores embedded, 16 on a cluster).
    pub partitions: Option<usize>,
    /// The cluster's key file, when its links use mutual TLS ([`cluster::tls`]). Given on the
    /// command line or in the environment, never in a job file.
    #[serde(skip)]
    pub cluster_key: Option<std::path::PathBuf>,
}

impl Engine {
    /// Embedded on all cores.
    pub fn embedded() -> Self {
        Self::default()
    }

    /// A context for this engine, with emrflow's functions registered.
    pub async fn context(&self) -> Result<SessionContext> {
        match &self.cluster {
            None => embedded_context(self.partitions),
            Some(url) => {
                let key = match &self.cluster_key {
                    Some(path) => Some(cluster::tls::ClusterKey::read(path)?),
                    None => None,
                };
                cluster::connect(url, self.partitions, key.as_ref()).await
            }
        }
    }

    /// Whether plans leave this process: then nothing may be held in its memory between them.
    pub fn is_cluster(&self) -> bool {
        self.cluster.is_some()
    }
}

/// The runtime of every emrflow context: emrflow's object stores, and spill files under
/// `spill_dir` when given (an executor's work directory).
pub fn runtime(spill_dir: Option<&str>) -> datafusion::error::Result<Arc<RuntimeEnv>> {
    let mut builder =
        RuntimeEnvBuilder::new().with_object_store_registry(Arc::new(EngineStores::new()));
    if let Some(dir) = spill_dir {
        builder = builder.with_temp_file_path(dir);
    }
    builder.build_arc()
}

/// The configuration of an embedded context.
pub fn embedded_config(target_partitions: Option<usize>) -> SessionConfig {
    let mut config = SessionConfig::new().with_option_extension(EmrflowOptions::default());
    // A join's build side (the lookup input, patients) goes into one hash table that every
    // partition probes, instead of both sides being hash-partitioned: the stream side (visits)
    // then flows through the join in the partition that read it rather than being copied row
    // by row into another first. One process holds the whole table either way. (The engine
    // would choose this by size, but CSV inputs report none.)
    config.options_mut().optimizer.repartition_joins = false;
    if let Some(n) = target_partitions {
        config = config.with_target_partitions(n.max(1));
    }
    config
}

/// A local DataFusion context with emrflow's functions, settings and object stores, using all
/// cores (or `target_partitions` of them).
///
/// ```
/// use datafusion::execution::FunctionRegistry;
///
/// let ctx = engine::embedded_context(Some(2))?;
/// assert!(ctx.udaf("emr_fingerprint").is_ok() && ctx.udaf("ml_tree_histogram").is_ok());
/// # Ok::<(), engine::Error>(())
/// ```
pub fn embedded_context(target_partitions: Option<usize>) -> Result<SessionContext> {
    let state = SessionStateBuilder::new()
        .with_config(embedded_config(target_partitions))
        .with_runtime_env(runtime(None)?)
        .with_default_features()
        .build();
    let mut ctx = SessionContext::new_with_state(state);
    functions::register(&mut ctx)?;
    Ok(ctx)
}

/// The session configuration every emrflow engine in a cluster starts from: Ballista's, plus
/// emrflow's session options, so that settings a client sends are accepted instead of being
/// dropped as unknown keys.
///
/// Ballista 55's adaptive planner is turned off: after an executor is lost mid-job its graph
/// re-runs the map stage but then rejects the new stage outputs ("Can't find active stage to
/// update stage outputs") and the job never finishes. The static planner recovers, and
/// emrflow's jobs gain nothing from adaptive joins: their right-hand inputs are small dimension
/// tables.
pub fn cluster_config() -> SessionConfig {
    SessionConfig::new_with_ballista()
        .with_ballista_adaptive_query_planner(false)
        .with_option_extension(EmrflowOptions::default())
}

/// A scheduler-side session state built from the configuration a client sent (`config` comes
/// from [`cluster_config`] with the client's settings applied): Ballista's defaults, emrflow's
/// functions (so plans naming them decode) and object stores.
pub fn scheduler_state(config: SessionConfig) -> datafusion::error::Result<SessionState> {
    let base = ballista_core::utils::default_session_builder(config)?;
    let mut state = SessionStateBuilder::new_from_existing(base)
        .with_runtime_env(runtime(None)?)
        .build();
    functions::register(&mut state)?;
    Ok(state)
}

#[cfg(test)]
mod tests {
    use datafusion::execution::FunctionRegistry;

    use super::*;

    #[test]
    fn client_settings_reach_the_scheduler_session() {
        use ballista_core::extension::SessionConfigHelperExt;
        let mut client = cluster_config();
        client
            .options_mut()
            .set("emrflow.pseudonym_key_id", "00ff")
            .unwrap_or_else(|e| panic!("{e}"));
        let produced = cluster_config().update_from_key_value_pair(&client.to_key_value_pairs());
        let state = scheduler_state(produced).unwrap_or_else(|e| panic!("{e}"));
        let key = state
            .config()
            .options()
            .extensions
            .get::<EmrflowOptions>()
            .map(|o| o.pseudonym_key_id.clone());
        assert_eq!(key.as_deref(), Some("00ff"));
        // Ballista's own functions survive beside emrflow's.
        assert!(state.udaf("count").is_ok() && state.udaf("ml_tree_histogram").is_ok());
    }

    #[test]
    fn embedded_contexts_share_one_hash_table_per_join() {
        let ctx = embedded_context(Some(3)).unwrap_or_else(|e| panic!("{e}"));
        let state = ctx.state();
        assert!(!state.config().options().optimizer.repartition_joins);
        assert_eq!(state.config().target_partitions(), 3);
    }
}
