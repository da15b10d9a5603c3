//! The whole training run the `train` command performs: bin the dataset once, cross-validate on
//! the training side (k folds by row-key hash), train the final model (a decision tree, a random
//! forest or boosted trees) on the training rows, calibrate it and choose its operating
//! threshold on rows held out of them, and evaluate it on the test side: metrics at 0.5 and at
//! the threshold, the always-negative baseline, the ROC curve, the Brier score and reliability
//! curve, and the mean absolute TreeSHAP contribution of each feature over a sample of test rows.
//! Every step is a plan over the same binned table. This module orchestrates; it does not write
//! files.

use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, UInt16Type, UInt64Type};
use datafusion::prelude::{DataFrame, lit};
use serde::Serialize;

use crate::binning::{FeatureBins, MISSING_BIN};
use crate::boosting::gbt_extras;
use crate::calibration::{
    Calibration, CalibrationReport, OperatingPoint, ThresholdMetrics, brier_score,
    reliability_curve,
};
use crate::dataset::DatasetSpec;
use crate::error::Result;
use crate::fitted::Model;
use crate::forest::forest_extras;
use crate::hash::{SALT_EXPLAIN, derive_seed, fraction_threshold, row_hash_expr};
use crate::metrics::{BinaryMetrics, CrossValidation, RocPoint, roc_curve};
use crate::params::{DecisionTreeParams, EvaluationConfig, ModelParams, TrainParams};
use crate::prepare::{BinnedDataset, Extras, RowSet, Storage};

/// Test rows whose explanations are averaged into the global importance, at most.
pub const EXPLAINED_ROWS: u64 = 256;

/// Bins of a reliability curve.
const RELIABILITY_BINS: usize = 10;

/// A step of a training run, for progress display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Profiling, sketching and binning the dataset.
    Binning,
    /// Training and evaluating cross-validation fold `k` of `n`.
    Fold(u32, u32),
    /// Training the final model.
    Final,
    /// Calibrating it and choosing its threshold on held-out rows.
    Calibrating,
    /// Evaluating it on the test rows.
    Test,
    /// Explaining test rows for the global importance.
    Explaining,
}

/// Everything a training run produced.
#[derive(Debug, Clone, Serialize)]
pub struct TrainingReport {
    /// The final model, trained on the training rows (less any held-out rows).
    pub model: Model,
    /// Rows in the dataset.
    pub rows: u64,
    /// Rows the final model was trained on.
    pub train_rows: u64,
    /// Rows held out of training for calibration and the operating threshold.
    pub holdout_rows: u64,
    /// Held-out test rows.
    pub test_rows: u64,
    /// Metrics of the final model on the test rows at probability 0.5 (`None` with no test
    /// rows); the probabilities are the ones `predict` gives (calibrated when calibrated).
    pub test: Option<BinaryMetrics>,
    /// The same at the model's operating threshold, when it has one.
    pub test_at_threshold: Option<ThresholdMetrics>,
    /// The always-negative baseline on the same test rows, so that accuracy on imbalanced data
    /// is read against it.
    pub baseline: Option<BinaryMetrics>,
    /// ROC curve of the final model on the test rows.
    pub roc: Vec<RocPoint>,
    /// Brier scores and reliability curves on the test rows.
    pub calibration: Option<CalibrationReport>,
    /// Cross-validation on the training rows (`None` with `folds = 0`), of the model's own
    /// probabilities at 0.5.
    pub cross_validation: Option<CrossValidation>,
    /// Mean absolute TreeSHAP contribution of each feature, normalized to sum 1, over up to
    /// [`EXPLAINED_ROWS`] test rows.
    pub mean_abs_contributions: Vec<f64>,
    /// Rows those contributions were averaged over.
    pub explained_rows: u64,
}

/// Bins `data`, cross-validates, trains the final decision tree and evaluates it.
pub async fn train_and_evaluate(
    data: DataFrame,
    spec: &DatasetSpec,
    params: &DecisionTreeParams,
    evaluation: &EvaluationConfig,
    storage: Storage,
    on_step: &(dyn Fn(Step) + Send + Sync),
) -> Result<TrainingReport> {
    let params = TrainParams {
        model: ModelParams::DecisionTree(params.clone()),
        evaluation: evaluation.clone(),
        ..Default::default()
    };
    train(data, spec, &params, storage, on_step).await
}

/// The columns an estimator needs in its binned table.
fn extras(params: &TrainParams) -> Extras {
    let mut extras = match &params.model {
        ModelParams::DecisionTree(_) => Extras::default(),
        ModelParams::RandomForest(p) => forest_extras(p),
        ModelParams::Gbt(p) => gbt_extras(p),
    };
    if params.calibration.holds_out() {
        extras.holdout_fraction = Some(params.calibration.holdout_fraction);
    }
    extras
}

impl BinnedDataset {
    /// Trains the estimator on a row set.
    pub async fn fit_model(&self, params: &ModelParams, rows: RowSet) -> Result<Model> {
        Ok(match params {
            ModelParams::DecisionTree(_) => Model::DecisionTree(self.fit(rows).await?),
            ModelParams::RandomForest(p) => Model::RandomForest(self.fit_forest(p, rows).await?),
            ModelParams::Gbt(p) => Model::Gbt(self.fit_gbt(p, rows).await?),
        })
    }

    /// `min(limit, rows in the set)` rows of a row set as feature values that route exactly as
    /// their bins do: the rows with the smallest seeded hash of their bins (a uniform sample of
    /// exactly that size; only identical rows share a hash), sorted by their bins. A filter on
    /// the hash keeps about twice the cap, so a few hundred rows reach the driver whatever the
    /// set's size; in the rare case it keeps fewer than the cap, the set is read whole. Either
    /// way the rows chosen are the same, for any partitioning and row order.
    async fn sample_values(
        &self,
        rows: RowSet,
        available: u64,
        limit: u64,
    ) -> Result<Vec<Vec<Option<f64>>>> {
        let want = limit.min(available) as usize;
        let oversampled = 2.0 * limit as f64 / available.max(1) as f64;
        let mut hashed = self
            .hashed_rows(rows, (oversampled < 1.0).then_some(oversampled))
            .await?;
        if hashed.len() < want && oversampled < 1.0 {
            hashed = self.hashed_rows(rows, None).await?;
        }
        hashed.sort_unstable();
        hashed.truncate(limit as usize);
        let mut binned: Vec<Vec<u16>> = hashed.into_iter().map(|(_, row)| row).collect();
        binned.sort_unstable();
        Ok(binned
            .iter()
            .map(|row| {
                row.iter()
                    .zip(&self.bins)
                    .map(|(b, bins)| representative(bins, *b))
                    .collect()
            })
            .collect())
    }

    /// The rows of a row set as (explanation hash, bins), only those whose hash falls in the
    /// given fraction when one is given.
    async fn hashed_rows(
        &self,
        rows: RowSet,
        fraction: Option<f64>,
    ) -> Result<Vec<(u64, Vec<u16>)>> {
        let h = row_hash_expr(
            derive_seed(self.params.seed, SALT_EXPLAIN),
            self.bin_exprs(),
        );
        let mut df = self.rows_df(rows)?;
        if let Some(fraction) = fraction {
            df = df.filter(h.clone().lt(lit(fraction_threshold(fraction))))?;
        }
        let mut columns = vec![h.alias("explain_hash")];
        columns.extend(self.bin_exprs());
        let batches = df.select(columns)?.collect().await?;
        let mut out = Vec::new();
        for batch in &batches {
            let hashes = batch.column(0).as_primitive::<UInt64Type>();
            let bins = rows_of(&batch.project(&(1..batch.num_columns()).collect::<Vec<_>>())?)?;
            out.extend(hashes.values().iter().copied().zip(bins));
        }
        Ok(out)
    }
}

/// The bins of every row of a batch.
fn rows_of(batch: &RecordBatch) -> Result<Vec<Vec<u16>>> {
    let columns: Vec<ArrayRef> = batch
        .columns()
        .iter()
        .map(|c| cast(c, &DataType::UInt16))
        .collect::<std::result::Result<_, _>>()?;
    let columns: Vec<_> = columns
        .iter()
        .map(|c| c.as_primitive::<UInt16Type>())
        .collect();
    Ok((0..batch.num_rows())
        .map(|r| {
            columns
                .iter()
                .map(|c| {
                    if c.is_valid(r) {
                        c.value(r)
                    } else {
                        MISSING_BIN
                    }
                })
                .collect()
        })
        .collect())
}

/// A value in bin `bin` that every split of the model sends where the bin goes: a continuous
/// value bin's upper edge (the bin holds the values above the previous edge up to it), beyond
/// the last edge for the last bin; a category's index; missing for the missing bin.
fn representative(bins: &FeatureBins, bin: u16) -> Option<f64> {
    if bin == MISSING_BIN {
        return None;
    }
    let k = usize::from(bin) - 1;
    Some(match bins {
        FeatureBins::Continuous { edges } => edges.get(k).copied().unwrap_or(f64::INFINITY),
        FeatureBins::Categorical { .. } => k as f64,
    })
}

/// Bins `data`, cross-validates, trains the final model, calibrates it, chooses its threshold,
/// evaluates and explains it.
pub async fn train(
    data: DataFrame,
    spec: &DatasetSpec,
    params: &TrainParams,
    storage: Storage,
    on_step: &(dyn Fn(Step) + Send + Sync),
) -> Result<TrainingReport> {
    params.validate()?;
    on_step(Step::Binning);
    tracing::debug!("training starts");
    let evaluation = &params.evaluation;
    let binned = BinnedDataset::prepare_with(
        data,
        spec,
        &params.model.tree(),
        evaluation,
        storage,
        extras(params),
    )
    .await?;
    let mut folds = Vec::new();
    for k in 0..evaluation.folds {
        on_step(Step::Fold(k + 1, evaluation.folds));
        let model = binned
            .fit_model(&params.model, RowSet::TrainExceptFold(k))
            .await?;
        let (labels, raw) = binned.score_model(&model, RowSet::Fold(k)).await?;
        let probabilities: Vec<f64> = raw.iter().map(|r| model.probability_of(*r)).collect();
        folds.push(BinaryMetrics::compute(&labels, &probabilities));
    }
    on_step(Step::Final);
    let calibrating = params.calibration.holds_out();
    let train_rows = match (calibrating, evaluation.test_fraction > 0.0) {
        (true, _) => RowSet::TrainExceptHoldout,
        (false, true) => RowSet::Train,
        (false, false) => RowSet::All,
    };
    let mut model = binned.fit_model(&params.model, train_rows).await?;
    tracing::debug!("trained");
    let mut holdout_rows = 0;
    if calibrating {
        on_step(Step::Calibrating);
        let (labels, raw) = binned.score_model(&model, RowSet::Holdout).await?;
        holdout_rows = labels.len() as u64;
        let calibration = Calibration::fit(params.calibration.method, &raw, &labels);
        let calibrated: Vec<f64> = raw
            .iter()
            .map(|r| match &calibration {
                Some(c) => c.apply(*r),
                None => model.probability_of(*r),
            })
            .collect();
        let operating = OperatingPoint::choose(params.calibration.threshold, &labels, &calibrated);
        model.set_calibration(calibration, operating);
    }
    on_step(Step::Test);
    let training = model.training().clone();
    let base_rate = training.class_counts[1] as f64 / training.rows.max(1) as f64;
    let mut report = TrainingReport {
        train_rows: training.rows,
        rows: binned.profile().rows,
        holdout_rows,
        test_rows: 0,
        test: None,
        test_at_threshold: None,
        baseline: None,
        roc: Vec::new(),
        calibration: None,
        cross_validation: CrossValidation::summarize(folds),
        mean_abs_contributions: vec![0.0; spec.features.len()],
        explained_rows: 0,
        model,
    };
    let explain_from = if evaluation.test_fraction > 0.0 {
        let (labels, raw) = binned.score_model(&report.model, RowSet::Test).await?;
        if !labels.is_empty() {
            let model = &report.model;
            let own: Vec<f64> = raw.iter().map(|r| model.probability_of(*r)).collect();
            let calibrated: Vec<f64> = raw.iter().map(|r| model.calibrated_of(*r)).collect();
            report.test_rows = labels.len() as u64;
            report.test = Some(BinaryMetrics::compute(&labels, &calibrated));
            report.test_at_threshold = model.operating_point().map(|op| ThresholdMetrics {
                operating_point: *op,
                metrics: BinaryMetrics::at_threshold(&labels, &calibrated, op.threshold),
            });
            report.baseline = Some(BinaryMetrics::compute(&labels, &vec![0.0; labels.len()]));
            report.roc = roc_curve(&labels, &calibrated);
            report.calibration = Some(CalibrationReport {
                calibration: model.calibration().cloned(),
                brier_uncalibrated: brier_score(&labels, &own),
                brier: brier_score(&labels, &calibrated),
                brier_base_rate: brier_score(&labels, &vec![base_rate; labels.len()]),
                reliability_uncalibrated: reliability_curve(&labels, &own, RELIABILITY_BINS),
                reliability: reliability_curve(&labels, &calibrated, RELIABILITY_BINS),
            });
        }
        (RowSet::Test, report.test_rows)
    } else {
        (train_rows, training.rows)
    };
    tracing::debug!("evaluated");
    on_step(Step::Explaining);
    let sample = binned
        .sample_values(explain_from.0, explain_from.1, EXPLAINED_ROWS)
        .await?;
    if !sample.is_empty() {
        report.mean_abs_contributions = report.model.mean_abs_contributions(&sample)?;
        report.explained_rows = sample.len() as u64;
    }
    tracing::debug!("explained");
    Ok(report)
}
