#![doc = include_str!("../README.md")]

use datafusion::error::Result;
use datafusion::execution::SessionState;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::prelude::SessionConfig;

/// A scheduler-side session state with every emrflow function registered and emrflow's session
/// options known, built from the configuration a client sent.
pub fn session_state(config: SessionConfig) -> Result<SessionState> {
    let config = config.with_option_extension(pipeline::udf::EmrflowOptions::default());
    let mut state = SessionStateBuilder::new()
        .with_config(config)
        .with_default_features()
        .build();
    pipeline::udf::register_functions(&mut state)?;
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::execution::FunctionRegistry;

    #[test]
    fn scheduler_state_knows_emrflow_functions() {
        let state = session_state(SessionConfig::new()).unwrap_or_else(|e| panic!("{e}"));
        for f in pipeline::udf::functions() {
            assert!(state.udf(f.name()).is_ok(), "{} missing", f.name());
        }
    }
}
