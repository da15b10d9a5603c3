//! From a dataset to the binned table training passes read: profile the data once (row count,
//! label values, nulls, category ranges, weights — the bad-input errors come from here), pick
//! split candidates from a hash-selected sample, then bin every row and tag it with its train/test
//! side and cross-validation fold. Everything is a DataFusion plan over the caller's
//! DataFrame; with [`Storage::Memory`] the binned table is computed once and kept in memory, with
//! [`Storage::Inline`] each pass recomputes it inside its own plan (nothing local in the plan, for
//! a cluster). This module does not choose splits.

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::compute::cast as cast_array;
use datafusion::arrow::datatypes::{DataType, Float64Type, Int64Type};
use datafusion::common::stats::Precision;
use datafusion::functions::core::expr_fn::named_struct;
use datafusion::functions_aggregate::expr_fn::{array_agg, count, max, min, sum};
use datafusion::logical_expr::ExprFunctionExt;
use datafusion::logical_expr::{ExprSchemable, when};
use datafusion::physical_plan::{StatisticsArgs, StatisticsContext};
use datafusion::prelude::{DataFrame, Expr, cast, lit};

use crate::binning::{FeatureBins, bin_expr, candidate_edges};
use crate::dataset::{DatasetSpec, FeatureKind, column};
use crate::error::{Error, Result};
use crate::hash::{
    SALT_FOLD, SALT_HOLDOUT, SALT_ROW_KEY, SALT_SAMPLE, SALT_TEST_SPLIT, SALT_VALIDATION,
    derive_seed, fraction_threshold, row_hash_expr,
};
use crate::histogram::MAX_ROW_WEIGHT;
use crate::params::{DecisionTreeParams, EvaluationConfig};

/// Column names of the binned table.
pub(crate) const LABEL_COL: &str = "__ml_label";
pub(crate) const WEIGHT_COL: &str = "__ml_weight";
pub(crate) const SPLIT_COL: &str = "__ml_test";
pub(crate) const FOLD_COL: &str = "__ml_fold";
/// 1 for the training rows held out for calibration and the operating threshold.
pub(crate) const HOLDOUT_COL: &str = "__ml_holdout";
/// 1 for the training rows boosting validates on.
pub(crate) const VALIDATION_COL: &str = "__ml_validation";
/// The seeded hash of the row key that sample multiplicities are drawn from.
pub(crate) const KEY_COL: &str = "__ml_key";

/// The name of the binned column of feature `i`.
pub(crate) fn bin_col(i: usize) -> String {
    format!("__ml_bin_{i}")
}

/// Rows of the sketch sample, at least (MLlib samples `max(max_bins², 10000)` rows).
const MIN_SKETCH_ROWS: f64 = 10_000.0;

/// Where the binned table lives between passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Storage {
    /// Bin once and keep the result in memory as a table of the session (fast on one machine).
    #[default]
    Memory,
    /// Recompute the binning inside every pass's plan (every plan stands alone, as a cluster
    /// needs).
    Inline,
}

/// Which rows a training run or an evaluation uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowSet {
    /// Every row.
    All,
    /// The training side of the train/test split.
    Train,
    /// The held-out test side.
    Test,
    /// Training rows outside cross-validation fold `k`.
    TrainExceptFold(u32),
    /// Training rows inside cross-validation fold `k`.
    Fold(u32),
    /// Training rows outside the calibration hold-out (all training rows when nothing is held
    /// out).
    TrainExceptHoldout,
    /// Training rows held out for calibration and the operating threshold.
    Holdout,
}

impl RowSet {
    /// The row set as a filter on the columns every binned table has (the hold-out sets need
    /// the dataset: see `BinnedDataset::row_filter`).
    pub(crate) fn filter(&self) -> Option<Expr> {
        let test = column(SPLIT_COL);
        let fold = column(FOLD_COL);
        match *self {
            RowSet::All => None,
            RowSet::Train => Some(test.eq(lit(0u8))),
            RowSet::Test => Some(test.eq(lit(1u8))),
            RowSet::TrainExceptFold(k) => Some(test.eq(lit(0u8)).and(fold.not_eq(lit(k)))),
            RowSet::Fold(k) => Some(test.eq(lit(0u8)).and(fold.eq(lit(k)))),
            RowSet::TrainExceptHoldout => Some(test.eq(lit(0u8))),
            RowSet::Holdout => Some(lit(false)),
        }
    }
}

/// What the profile pass found.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    /// Rows in the dataset.
    pub rows: u64,
    /// Rows with label 1.
    pub positives: u64,
    /// Non-null values per feature.
    pub present: Vec<u64>,
}

/// A dataset binned for training, with its split candidates.
#[derive(Debug, Clone)]
pub struct BinnedDataset {
    pub(crate) df: DataFrame,
    pub(crate) spec: DatasetSpec,
    pub(crate) params: DecisionTreeParams,
    pub(crate) bins: Vec<FeatureBins>,
    pub(crate) profile: Profile,
    pub(crate) folds: u32,
    /// Whether the table has [`HOLDOUT_COL`].
    pub(crate) holdout: bool,
    /// Whether the table has [`VALIDATION_COL`].
    pub(crate) validation: bool,
    pub(crate) storage: Storage,
}

/// Columns a binned table carries beyond bins, label, weight, test side and fold, for
/// ensembles and calibration.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Extras {
    /// Share of training rows held out for calibration and the threshold.
    pub(crate) holdout_fraction: Option<f64>,
    /// Share of rows boosting validates on.
    pub(crate) validation_fraction: Option<f64>,
    /// Whether sample multiplicities need the row key hash.
    pub(crate) key: bool,
}

/// Reads one row of aggregates as i64/f64 values.
struct Row(RecordBatch);

impl Row {
    fn int(&self, name: &str) -> Result<Option<i64>> {
        let Some(array) = self.0.column_by_name(name) else {
            return Ok(None);
        };
        let array = cast_array(array, &DataType::Int64)?;
        let a = array.as_primitive::<Int64Type>();
        Ok((a.len() == 1 && a.is_valid(0)).then(|| a.value(0)))
    }

    fn float(&self, name: &str) -> Result<Option<f64>> {
        let Some(array) = self.0.column_by_name(name) else {
            return Ok(None);
        };
        let array = cast_array(array, &DataType::Float64)?;
        let a = array.as_primitive::<Float64Type>();
        Ok((a.len() == 1 && a.is_valid(0)).then(|| a.value(0)))
    }
}

async fn one_row(df: DataFrame) -> Result<Row> {
    let batches = df.collect().await?;
    let batch = batches
        .into_iter()
        .find(|b| b.num_rows() > 0)
        .ok_or_else(|| Error::EmptyDataset {
            what: "the profile query returned nothing".to_string(),
        })?;
    Ok(Row(batch))
}

/// Which rows and values the sketch samples.
struct SampleQuery {
    /// Indices of the continuous features.
    continuous: Vec<usize>,
    /// Sampled values as `f{i}` (feature `i` as Float64) and `w` (the row weight).
    values: Vec<Expr>,
    /// Rows in the sample (`None`: every row).
    filter: Option<Expr>,
}

impl SampleQuery {
    /// The sample of a dataset of `rows` rows; `None` with no continuous feature.
    fn new(spec: &DatasetSpec, params: &DecisionTreeParams, rows: u64) -> Option<Self> {
        let continuous: Vec<usize> = spec
            .features
            .iter()
            .enumerate()
            .filter(|(_, f)| matches!(f.kind, FeatureKind::Continuous { .. }))
            .map(|(i, _)| i)
            .collect();
        if continuous.is_empty() {
            return None;
        }
        let wanted = MIN_SKETCH_ROWS.max((params.max_bins * params.max_bins) as f64);
        let fraction = wanted / rows as f64;
        let filter = (fraction < 1.0).then(|| {
            row_hash_expr(derive_seed(params.seed, SALT_SAMPLE), spec.key_exprs())
                .lt(lit(fraction_threshold(fraction)))
        });
        let mut values: Vec<Expr> = continuous
            .iter()
            .map(|i| {
                cast(column(&spec.features[*i].name), DataType::Float64).alias(format!("f{i}"))
            })
            .collect();
        if let Some(w) = &params.weight_column {
            values.push(cast(column(w), DataType::Float64).alias("w"));
        }
        Some(SampleQuery {
            continuous,
            values,
            filter,
        })
    }

    /// `array_agg` of the sampled rows' values as one struct per row.
    fn aggregate(&self) -> Result<Expr> {
        let mut fields = Vec::with_capacity(2 * self.values.len());
        for value in &self.values {
            let (inner, name) = match value {
                Expr::Alias(a) => ((*a.expr).clone(), a.name.clone()),
                other => (other.clone(), other.schema_name().to_string()),
            };
            fields.push(lit(name));
            fields.push(inner);
        }
        let agg = array_agg(named_struct(fields));
        Ok(match &self.filter {
            Some(f) => agg.filter(f.clone()).build()?,
            None => agg,
        })
    }

    /// Adds a batch of sampled values (columns named as in [`SampleQuery::values`]).
    fn add(&self, batch: &RecordBatch, samples: &mut [Vec<(f64, f64)>]) {
        let weights = batch
            .column_by_name("w")
            .map(|w| w.as_primitive::<Float64Type>().clone());
        for i in &self.continuous {
            let Some(values) = batch.column_by_name(&format!("f{i}")) else {
                continue;
            };
            let values = values.as_primitive::<Float64Type>();
            for r in 0..values.len() {
                if values.is_valid(r) {
                    let w = weights.as_ref().map_or(1.0, |w| w.value(r));
                    samples[*i].push((values.value(r), w));
                }
            }
        }
    }

    /// The sample drawn by a scan of its own.
    async fn collect(&self, data: &DataFrame, features: usize) -> Result<Vec<Vec<(f64, f64)>>> {
        let mut sample = data.clone();
        if let Some(f) = &self.filter {
            sample = sample.filter(f.clone())?;
        }
        let mut samples = vec![Vec::new(); features];
        for batch in sample.select(self.values.clone())?.collect().await? {
            self.add(&batch, &mut samples);
        }
        Ok(samples)
    }
}

/// Profiles the dataset and reports the first bad input, naming the column. With a sample
/// query, the same scan also draws the sketch sample.
async fn profile(
    data: &DataFrame,
    spec: &DatasetSpec,
    params: &DecisionTreeParams,
    sample: Option<&SampleQuery>,
) -> Result<(Profile, Option<Vec<Vec<(f64, f64)>>>)> {
    let label = column(&spec.label);
    let label_i = cast(label.clone(), DataType::Int64);
    let mut aggs = vec![
        count(lit(1)).alias("rows"),
        count(label.clone()).alias("label_present"),
        sum(when(
            label_i
                .clone()
                .eq(lit(0i64))
                .or(label_i.clone().eq(lit(1i64))),
            lit(0i64),
        )
        .when(label.clone().is_null(), lit(0i64))
        .otherwise(lit(1i64))?)
        .alias("label_other"),
        sum(label_i.clone()).alias("label_sum"),
        min(label_i.clone()).alias("label_min"),
        max(label_i).alias("label_max"),
    ];
    for (i, f) in spec.features.iter().enumerate() {
        let c = column(&f.name);
        aggs.push(count(c.clone()).alias(format!("present_{i}")));
        if let FeatureKind::Categorical { .. } = f.kind {
            aggs.push(min(cast(c.clone(), DataType::Int64)).alias(format!("min_{i}")));
            aggs.push(max(cast(c, DataType::Int64)).alias(format!("max_{i}")));
        }
    }
    if let Some(w) = &params.weight_column {
        let c = cast(column(w), DataType::Float64);
        aggs.push(count(c.clone()).alias("weight_present"));
        aggs.push(min(c.clone()).alias("weight_min"));
        aggs.push(max(c).alias("weight_max"));
    }
    if let Some(sample) = sample {
        aggs.push(sample.aggregate()?.alias("sample"));
    }
    let row = one_row(data.clone().aggregate(vec![], aggs)?).await?;
    let rows = row.int("rows")?.unwrap_or(0) as u64;
    let column_name = spec.label.clone();
    if rows == 0 {
        return Err(Error::EmptyDataset {
            what: "the dataset has no rows".to_string(),
        });
    }
    let present = row.int("label_present")?.unwrap_or(0) as u64;
    if present < rows {
        return Err(Error::LabelNotBinary {
            column: column_name,
            reason: format!("{} of {rows} rows have no label", rows - present),
        });
    }
    let other = row.int("label_other")?.unwrap_or(0);
    if other > 0 {
        let (lo, hi) = (
            row.int("label_min")?.unwrap_or(0),
            row.int("label_max")?.unwrap_or(0),
        );
        return Err(Error::LabelNotBinary {
            column: column_name,
            reason: format!(
                "{other} rows hold values other than 0 and 1 (values range {lo}..={hi})"
            ),
        });
    }
    let positives = row.int("label_sum")?.unwrap_or(0) as u64;
    if positives == 0 || positives == rows {
        return Err(Error::SingleClass {
            column: column_name,
            class: u8::from(positives > 0),
            rows,
        });
    }
    let mut present = Vec::with_capacity(spec.features.len());
    for (i, f) in spec.features.iter().enumerate() {
        let n = row.int(&format!("present_{i}"))?.unwrap_or(0) as u64;
        if n == 0 {
            return Err(Error::AllNullFeature {
                column: f.name.clone(),
                rows,
            });
        }
        if let FeatureKind::Categorical { categories, .. } = f.kind {
            let lo = row.int(&format!("min_{i}"))?.unwrap_or(0);
            let hi = row.int(&format!("max_{i}"))?.unwrap_or(0);
            for value in [lo, hi] {
                if value < 0 || value >= i64::from(categories) {
                    return Err(Error::CategoryOutOfRange {
                        column: f.name.clone(),
                        value,
                        categories,
                    });
                }
            }
            if categories as usize > params.max_bins {
                return Err(Error::InvalidParam {
                    name: "max_bins",
                    reason: format!(
                        "{} is below the {categories} categories of feature {} (MLlib requires max_bins ≥ every categorical arity)",
                        params.max_bins, f.name
                    ),
                });
            }
        }
        present.push(n);
    }
    if let Some(w) = &params.weight_column {
        let bad = |reason: String| {
            Err(Error::BadWeight {
                column: w.clone(),
                reason,
            })
        };
        let n = row.int("weight_present")?.unwrap_or(0) as u64;
        if n < rows {
            return bad(format!("is null in {} rows", rows - n));
        }
        let lo = row.float("weight_min")?.unwrap_or(0.0);
        let hi = row.float("weight_max")?.unwrap_or(0.0);
        if lo.is_nan() || hi.is_nan() || lo < 0.0 {
            return bad(format!("holds a negative or NaN weight (smallest {lo})"));
        }
        if hi > MAX_ROW_WEIGHT {
            return bad(format!(
                "holds weight {hi}, above the limit {MAX_ROW_WEIGHT}"
            ));
        }
    }
    let sampled = match (sample, row.0.column_by_name("sample")) {
        (Some(query), Some(list)) => {
            let mut samples = vec![Vec::new(); spec.features.len()];
            let list = list.as_list::<i32>();
            if list.is_valid(0) {
                let rows = RecordBatch::from(list.value(0).as_struct());
                query.add(&rows, &mut samples);
            }
            Some(samples)
        }
        _ => None,
    };
    Ok((
        Profile {
            rows,
            positives,
            present,
        },
        sampled,
    ))
}

/// Split candidates for every feature from its sampled values.
fn feature_bins(
    spec: &DatasetSpec,
    params: &DecisionTreeParams,
    samples: Vec<Vec<(f64, f64)>>,
) -> Vec<FeatureBins> {
    spec.features
        .iter()
        .zip(samples)
        .map(|(f, sample)| match f.kind {
            FeatureKind::Continuous { .. } => FeatureBins::Continuous {
                edges: candidate_edges(sample, params.max_bins),
            },
            FeatureKind::Categorical { categories, .. } => FeatureBins::Categorical { categories },
        })
        .collect()
}

/// The row count of `data` when its plan knows it without a scan (Parquet footers, tables in
/// memory).
async fn known_rows(data: &DataFrame) -> Result<Option<u64>> {
    let plan = data.clone().create_physical_plan().await?;
    let stats = StatisticsContext::new().compute(plan.as_ref(), &StatisticsArgs::new())?;
    Ok(match stats.num_rows {
        Precision::Exact(n) => Some(n as u64),
        _ => None,
    })
}

impl BinnedDataset {
    /// Profiles, sketches and bins `data`. Errors name the column or parameter at fault.
    pub async fn prepare(
        data: DataFrame,
        spec: &DatasetSpec,
        params: &DecisionTreeParams,
        evaluation: &EvaluationConfig,
        storage: Storage,
    ) -> Result<Self> {
        Self::prepare_with(data, spec, params, evaluation, storage, Extras::default()).await
    }

    /// Every row of `data`, held in this process, for one fit: no test rows, no folds.
    pub(crate) async fn prepare_for_fit(
        data: DataFrame,
        spec: &DatasetSpec,
        params: &DecisionTreeParams,
        extras: Extras,
    ) -> Result<Self> {
        let none = EvaluationConfig {
            test_fraction: 0.0,
            folds: 0,
        };
        Self::prepare_with(data, spec, params, &none, Storage::Memory, extras).await
    }

    /// [`BinnedDataset::prepare`] with the extra columns ensembles and calibration need.
    pub(crate) async fn prepare_with(
        data: DataFrame,
        spec: &DatasetSpec,
        params: &DecisionTreeParams,
        evaluation: &EvaluationConfig,
        storage: Storage,
        extras: Extras,
    ) -> Result<Self> {
        params.validate()?;
        evaluation.validate()?;
        spec.check_schema(data.schema().as_arrow(), params.weight_column.as_deref())?;
        // Which rows the sketch samples depends on the row count. When the plan knows it, the
        // profile's scan draws the sample too; otherwise a second scan does, once the profile
        // has counted.
        let known = known_rows(&data).await?;
        let early = known.and_then(|rows| SampleQuery::new(spec, params, rows));
        let (profile, sampled) = profile(&data, spec, params, early.as_ref()).await?;
        tracing::debug!(rows = profile.rows, "profiled");
        let samples = match sampled {
            Some(samples) if known == Some(profile.rows) => samples,
            _ => match SampleQuery::new(spec, params, profile.rows) {
                Some(query) => query.collect(&data, spec.features.len()).await?,
                None => vec![Vec::new(); spec.features.len()],
            },
        };
        let bins = feature_bins(spec, params, samples);
        tracing::debug!("sketched");

        let keys = spec.key_exprs();
        let mut select = vec![cast(column(&spec.label), DataType::UInt8).alias(LABEL_COL)];
        if let Some(w) = &params.weight_column {
            select.push(cast(column(w), DataType::Float64).alias(WEIGHT_COL));
        }
        let test = if evaluation.test_fraction > 0.0 {
            let h = row_hash_expr(derive_seed(params.seed, SALT_TEST_SPLIT), keys.clone());
            when(
                h.lt(lit(fraction_threshold(evaluation.test_fraction))),
                lit(1u8),
            )
            .otherwise(lit(0u8))?
        } else {
            lit(0u8)
        };
        select.push(test.alias(SPLIT_COL));
        let fold = if evaluation.folds > 0 {
            let h = row_hash_expr(derive_seed(params.seed, SALT_FOLD), keys.clone());
            cast(h % lit(u64::from(evaluation.folds)), DataType::UInt32)
        } else {
            lit(0u32)
        };
        select.push(fold.alias(FOLD_COL));
        let share = |salt: u64, fraction: f64| {
            let h = row_hash_expr(derive_seed(params.seed, salt), keys.clone());
            when(h.lt(lit(fraction_threshold(fraction))), lit(1u8)).otherwise(lit(0u8))
        };
        if let Some(fraction) = extras.holdout_fraction {
            select.push(share(SALT_HOLDOUT, fraction)?.alias(HOLDOUT_COL));
        }
        if let Some(fraction) = extras.validation_fraction {
            select.push(share(SALT_VALIDATION, fraction)?.alias(VALIDATION_COL));
        }
        if extras.key {
            select.push(
                row_hash_expr(derive_seed(params.seed, SALT_ROW_KEY), keys.clone()).alias(KEY_COL),
            );
        }
        // One byte per bin when every feature fits: each pass reads half as much.
        let narrow = bins.iter().all(|b| b.num_bins() <= 256);
        for (i, (f, b)) in spec.features.iter().zip(&bins).enumerate() {
            let bin = bin_expr(column(&f.name), &f.name, b)?;
            let bin = if narrow {
                cast(bin, DataType::UInt8)
            } else {
                bin
            };
            select.push(bin.alias(bin_col(i)));
        }
        let mut df = data.select(select)?;
        if storage == Storage::Memory {
            df = df.cache().await?;
        }
        tracing::debug!("binned");
        // The schema is known now; make sure the plan is well typed before training starts.
        let _ = column(LABEL_COL).get_type(df.schema())?;
        Ok(BinnedDataset {
            df,
            spec: spec.clone(),
            params: params.clone(),
            bins,
            profile,
            folds: evaluation.folds,
            holdout: extras.holdout_fraction.is_some(),
            validation: extras.validation_fraction.is_some(),
            storage,
        })
    }

    /// What the profile pass found.
    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// Cross-validation folds the rows were assigned to (0: none).
    pub fn folds(&self) -> u32 {
        self.folds
    }

    /// The bins of each feature.
    pub fn bins(&self) -> &[FeatureBins] {
        &self.bins
    }

    /// Rows of a row set (one counting pass).
    pub async fn count(&self, rows: RowSet) -> Result<u64> {
        let df = match rows.filter() {
            Some(f) => self.df.clone().filter(f)?,
            None => self.df.clone(),
        };
        Ok(df.count().await? as u64)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::Float64Array;
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::datasource::MemTable;
    use datafusion::prelude::SessionContext;

    use super::*;
    use crate::synthetic::{stroke_spec, stroke_table};

    #[tokio::test]
    async fn the_profile_draws_the_same_sample_as_a_scan_of_its_own() {
        // More rows than the sketch samples, so the sample is a hash-selected subset; a weight
        // column, so values travel with their row's weight.
        let batch = stroke_table(30_000, 11, false).unwrap();
        let weights = Float64Array::from_iter_values((0..30_000).map(|i| f64::from(1 + i % 3)));
        let mut fields = batch.schema().fields().to_vec();
        fields.push(Arc::new(Field::new("w", DataType::Float64, false)));
        let mut columns = batch.columns().to_vec();
        columns.push(Arc::new(weights));
        let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap();
        let table = MemTable::try_new(batch.schema(), vec![vec![batch]]).unwrap();
        let ctx = SessionContext::new();
        let known = ctx.read_table(Arc::new(table)).unwrap();
        // A filter that keeps every row, but leaves the row count unknown to the plan.
        let unknown = known
            .clone()
            .filter(column("stroke").gt_eq(lit(0i64)))
            .unwrap();
        assert_eq!(known_rows(&known).await.unwrap(), Some(30_000));
        assert_eq!(known_rows(&unknown).await.unwrap(), None);
        let spec = stroke_spec();
        for weight_column in [None, Some("w".to_string())] {
            let params = DecisionTreeParams {
                weight_column,
                ..Default::default()
            };
            let mut bins = Vec::new();
            for data in [known.clone(), unknown.clone()] {
                let binned = BinnedDataset::prepare(
                    data,
                    &spec,
                    &params,
                    &EvaluationConfig::default(),
                    Storage::Inline,
                )
                .await
                .unwrap();
                bins.push(binned.bins().to_vec());
            }
            assert_eq!(bins[0], bins[1]);
            match &bins[0][0] {
                FeatureBins::Continuous { edges } => assert_eq!(edges.len(), 31),
                other => panic!("age is continuous: {other:?}"),
            }
        }
    }
}
