//! Every function an emrflow plan may name, registered by name on any registry. Per-call
//! parameters travel inside plans as literal arguments; nothing here holds state.

use std::sync::Arc;

use ballista_core::registry::BallistaFunctionRegistry;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::FunctionRegistry;
use datafusion::logical_expr::{AggregateUDF, ScalarUDF};

/// Every scalar function: the pipeline's and the `ml` crate's.
pub fn scalar_functions() -> Vec<Arc<ScalarUDF>> {
    let mut all = pipeline::functions::functions();
    all.extend(ml::scalar_functions());
    all
}

/// Every aggregate function: the pipeline's (fingerprint, exact moments, categories) and the
/// training histogram.
pub fn aggregate_functions() -> Vec<Arc<AggregateUDF>> {
    let mut all = pipeline::functions::aggregate_functions();
    all.extend(ml::aggregate_functions());
    all
}

/// Registers every function with a context or a session state.
pub fn register(registry: &mut dyn FunctionRegistry) -> DfResult<()> {
    pipeline::functions::register_functions(registry)?;
    ml::register_functions(registry).map_err(|e| DataFusionError::External(Box::new(e)))
}

/// An executor's function registry: Ballista's defaults, the nested-type functions (list and
/// struct access, `unnest`'s companions: a FHIR export is flattened with them), and every
/// emrflow function.
pub fn executor_registry() -> BallistaFunctionRegistry {
    let mut registry = BallistaFunctionRegistry::default();
    for f in datafusion::functions_nested::all_default_nested_functions() {
        registry.scalar_functions.insert(f.name().to_string(), f);
    }
    for f in scalar_functions() {
        registry.scalar_functions.insert(f.name().to_string(), f);
    }
    for f in aggregate_functions() {
        registry.aggregate_functions.insert(f.name().to_string(), f);
    }
    registry
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_side_knows_every_function() {
        let mut state = datafusion::execution::SessionStateBuilder::new()
            .with_default_features()
            .build();
        register(&mut state).unwrap_or_else(|e| panic!("{e}"));
        let executor = executor_registry();
        for f in scalar_functions() {
            assert!(state.udf(f.name()).is_ok(), "{} missing", f.name());
            assert!(executor.scalar_functions.contains_key(f.name()));
        }
        for f in aggregate_functions() {
            assert!(state.udaf(f.name()).is_ok(), "{} missing", f.name());
            assert!(executor.aggregate_functions.contains_key(f.name()));
        }
        for name in ["array_element", "get_field", "decode"] {
            assert!(executor.scalar_functions.contains_key(name), "{name}");
        }
        for name in ["emr_fingerprint", "ml_tree_histogram", "count", "sum"] {
            assert!(executor.aggregate_functions.contains_key(name), "{name}");
        }
        for name in ["emr_pseudonym", "ml_bin", "ml_row_hash"] {
            assert!(state.udf(name).is_ok(), "{name}");
        }
    }
}
