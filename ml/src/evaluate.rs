//! The whole training run the `train` command performs: bin the dataset once, cross-validate on
//! the training side (k folds by row-key hash), train the final model on the whole training side
//! and evaluate it on the held-out test side. Every step is a plan over the same binned table.
//! This module orchestrates; it does not write files.

use datafusion::prelude::DataFrame;
use serde::Serialize;

use crate::dataset::DatasetSpec;
use crate::error::Result;
use crate::metrics::{BinaryMetrics, CrossValidation, RocPoint, roc_curve};
use crate::model::DecisionTreeModel;
use crate::params::{DecisionTreeParams, EvaluationConfig};
use crate::prepare::{BinnedDataset, RowSet, Storage};

/// A step of a training run, for progress display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Profiling, sketching and binning the dataset.
    Binning,
    /// Training and evaluating cross-validation fold `k` of `n`.
    Fold(u32, u32),
    /// Training the final model.
    Final,
    /// Evaluating it on the test rows.
    Test,
}

/// Everything a training run produced.
#[derive(Debug, Clone, Serialize)]
pub struct TrainingReport {
    /// The final model, trained on all training rows.
    pub model: DecisionTreeModel,
    /// Rows in the dataset.
    pub rows: u64,
    /// Rows the final model was trained on.
    pub train_rows: u64,
    /// Held-out rows.
    pub test_rows: u64,
    /// Metrics of the final model on the test rows (`None` with no test rows).
    pub test: Option<BinaryMetrics>,
    /// The always-negative baseline on the same test rows, so that accuracy on imbalanced data
    /// is read against it.
    pub baseline: Option<BinaryMetrics>,
    /// ROC curve of the final model on the test rows.
    pub roc: Vec<RocPoint>,
    /// Cross-validation on the training rows (`None` with `folds = 0`).
    pub cross_validation: Option<CrossValidation>,
}

/// Bins `data`, cross-validates, trains the final model and evaluates it.
pub async fn train_and_evaluate(
    data: DataFrame,
    spec: &DatasetSpec,
    params: &DecisionTreeParams,
    evaluation: &EvaluationConfig,
    storage: Storage,
    on_step: &(dyn Fn(Step) + Send + Sync),
) -> Result<TrainingReport> {
    on_step(Step::Binning);
    tracing::debug!("training starts");
    let binned = BinnedDataset::prepare(data, spec, params, evaluation, storage).await?;
    let mut folds = Vec::new();
    for k in 0..evaluation.folds {
        on_step(Step::Fold(k + 1, evaluation.folds));
        let model = binned.fit(RowSet::TrainExceptFold(k)).await?;
        let (labels, scores) = binned.score(&model, RowSet::Fold(k)).await?;
        folds.push(BinaryMetrics::compute(&labels, &scores));
    }
    on_step(Step::Final);
    let train = if evaluation.test_fraction > 0.0 {
        RowSet::Train
    } else {
        RowSet::All
    };
    let model = binned.fit(train).await?;
    tracing::debug!("trained");
    on_step(Step::Test);
    let (test, baseline, roc, test_rows) = if evaluation.test_fraction > 0.0 {
        let (labels, scores) = binned.score(&model, RowSet::Test).await?;
        if labels.is_empty() {
            (None, None, Vec::new(), 0)
        } else {
            let baseline = BinaryMetrics::compute(&labels, &vec![0.0; labels.len()]);
            (
                Some(BinaryMetrics::compute(&labels, &scores)),
                Some(baseline),
                roc_curve(&labels, &scores),
                labels.len() as u64,
            )
        }
    } else {
        (None, None, Vec::new(), 0)
    };
    tracing::debug!("evaluated");
    Ok(TrainingReport {
        train_rows: model.training.rows,
        rows: binned.profile().rows,
        model,
        test_rows,
        test,
        baseline,
        roc,
        cross_validation: CrossValidation::summarize(folds),
    })
}
