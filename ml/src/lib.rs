#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod binning;
pub mod boosting;
pub mod calibration;
pub mod dataset;
pub mod ensemble;
pub mod error;
pub mod evaluate;
mod exact;
pub mod fitted;
pub mod forest;
mod grow;
pub mod hash;
pub mod histogram;
mod logistic;
pub mod metrics;
pub mod model;
pub mod params;
pub mod prepare;
pub mod report;
mod resident;
mod shap;
mod split;
pub mod synthetic;
pub mod tree;

use std::sync::Arc;

/// The DataFusion this crate is built on, for callers that build contexts and read data for it.
pub use datafusion;

use datafusion::execution::FunctionRegistry;
use datafusion::logical_expr::{AggregateUDF, ScalarUDF};

pub use boosting::GradientBoostedTrees;
pub use calibration::{
    Calibration, CalibrationReport, OperatingPoint, ReliabilityBin, ThresholdMetrics,
};
pub use dataset::{Affine, DatasetSpec, FeatureKind, FeatureSpec};
pub use ensemble::{EarlyStopping, GbtModel, RandomForestModel, Tree, TreeNode};
pub use error::{Error, Result};
pub use evaluate::{Step, TrainingReport, train, train_and_evaluate};
pub use fitted::{Explanation, Model, Output, Scored};
pub use forest::RandomForest;
pub use metrics::{BinaryMetrics, ConfusionMatrix, CrossValidation, MeanSd, RocPoint};
pub use model::{
    DecisionTreeModel, Direction, Node, PathStep, Prediction, Split, SplitRule, path_text,
};
pub use params::{
    CalibrationConfig, CalibrationMethod, ClassWeights, DecisionTreeParams, EvaluationConfig,
    FeatureSubset, GbtParams, Impurity, ModelParams, RandomForestParams, ThresholdRule,
    TrainParams,
};
pub use prepare::{BinnedDataset, RowSet, Storage};
pub use tree::DecisionTree;

/// Every scalar UDF of this crate (`ml_row_hash`, `ml_bin`, `ml_tree_score`).
pub fn scalar_functions() -> Vec<Arc<ScalarUDF>> {
    vec![
        Arc::new(hash::RowHashUdf::udf()),
        Arc::new(binning::BinUdf::udf()),
        Arc::new(histogram::TreeScoreUdf::udf()),
    ]
}

/// Every aggregate UDF of this crate (`ml_tree_histogram`).
pub fn aggregate_functions() -> Vec<Arc<AggregateUDF>> {
    vec![Arc::new(histogram::TreeHistogramUdaf::udaf())]
}

/// Registers every function of this crate by name, so plans that use them can be decoded and run
/// wherever the registry is (a client session, a Ballista scheduler's session, an executor).
/// All per-call parameters travel inside the plans as literal arguments.
///
/// ```
/// use ml::datafusion::execution::FunctionRegistry;
///
/// let mut state = ml::datafusion::execution::SessionStateBuilder::new().with_default_features().build();
/// ml::register_functions(&mut state)?;
/// assert!(state.udaf("ml_tree_histogram").is_ok());
/// # Ok::<(), ml::Error>(())
/// ```
pub fn register_functions(registry: &mut dyn FunctionRegistry) -> Result<()> {
    for udf in scalar_functions() {
        registry.register_udf(udf)?;
    }
    for udaf in aggregate_functions() {
        registry.register_udaf(udaf)?;
    }
    Ok(())
}
