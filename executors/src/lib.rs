#![doc = include_str!("../README.md")]

use std::sync::Arc;

use ballista_core::registry::BallistaFunctionRegistry;

/// An executor function registry holding Ballista's defaults plus every emrflow function.
pub fn function_registry() -> BallistaFunctionRegistry {
    let mut registry = BallistaFunctionRegistry::default();
    for f in pipeline::udf::functions() {
        registry
            .scalar_functions
            .insert(f.name().to_string(), Arc::clone(&f));
    }
    registry
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executor_registry_knows_emrflow_functions() {
        let registry = function_registry();
        for f in pipeline::udf::functions() {
            assert!(
                registry.scalar_functions.contains_key(f.name()),
                "{} missing",
                f.name()
            );
        }
    }
}
