//! `emrflow predict`: scores raw rows with a model directory written by `emrflow train`. The
//! dataset manifest copied beside the model says how the training rows were normalized and
//! encoded; `pipeline::prepare::apply_fitted` applies the same transforms to the raw rows, and
//! the `ml` model (a decision tree, a random forest or boosted trees) gives each row its
//! calibrated probability, its class at the model's operating threshold, the exact contribution
//! of every feature (TreeSHAP), and for a tree its decision path in words (thresholds shown in
//! raw units). No prediction logic lives here.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use ledger::contracts::Role;
use ml::Model;
use ml::datafusion::arrow::array::{Array, AsArray};
use ml::datafusion::arrow::compute::cast;
use ml::datafusion::arrow::datatypes::{DataType, Float64Type};
use ml::datafusion::common::Column;
use ml::datafusion::prelude::{
    CsvReadOptions, DataFrame, Expr, ParquetReadOptions, SessionContext,
};
use serde::Serialize;

use super::provenance::{LedgerArgs, Provenance, check_model};
use super::train::{DATASET_MANIFEST_FILE, read_manifest};
use super::{ExitStatus, print_json, print_lines, progress};

#[derive(Debug, Args)]
#[command(
    after_help = "The input holds raw rows: the model's features in the units and category \
names of the original data (before normalization and encoding). Each row gets a prediction \
(0/1) at the model's operating threshold, the probability of class 1 (calibrated when the model \
is), each feature's contribution to it (TreeSHAP), and for a decision tree its path, e.g.\n  \
age > 67.5, atrial_fibrillation = 1, systolic_bp > 151 → risk 0.81"
)]
pub(crate) struct PredictArgs {
    /// Model directory written by `emrflow train`
    #[arg(long, value_name = "MODEL_DIR")]
    model: PathBuf,
    /// Raw rows to score: a CSV file with a header, or a Parquet file (by extension)
    #[arg(long, value_name = "FILE")]
    input: PathBuf,
    /// A CSV cell text that means "missing" (repeatable), e.g. N/A
    #[arg(long = "null-value", value_name = "TEXT")]
    null_values: Vec<String>,
    /// Print JSON on stdout (one object with every prediction)
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    ledger: LedgerArgs,
}

#[derive(Debug, Serialize)]
struct RowPrediction {
    /// 1-based row number in the input.
    row: usize,
    /// The row key's raw value, when the input has the dataset's row key column.
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    /// The class at the model's operating threshold.
    prediction: u8,
    /// The model's own probability of class 1.
    probability: f64,
    /// The probability after the model's calibration (the same without one).
    calibrated_probability: f64,
    /// Class 1 at or above this (0.5: above it, without an operating threshold).
    threshold: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    leaf: Option<u64>,
    path: Vec<String>,
    explanation: String,
    /// What the contributions add up to: `probability` or `log_odds`.
    output: ml::Output,
    /// The model's expected output over its training rows.
    expected_value: f64,
    /// Every feature's TreeSHAP contribution, largest first.
    contributions: Vec<Contribution>,
}

#[derive(Debug, Serialize)]
struct Contribution {
    /// The feature and the row's value in raw units, e.g. `age = 81`.
    feature: String,
    contribution: f64,
}

#[derive(Debug, Serialize)]
struct PredictOutput {
    model: String,
    model_sha256: String,
    input: String,
    predictions: Vec<RowPrediction>,
}

fn column(name: &str) -> Expr {
    Expr::Column(Column::new_unqualified(name))
}

fn escape_regex(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let special = "\\.+*?()|[]{}^$#&-~".contains(c);
            special
                .then_some('\\')
                .into_iter()
                .chain(std::iter::once(c))
        })
        .collect()
}

async fn read_input(
    ctx: &SessionContext,
    path: &Path,
    null_values: &[String],
) -> anyhow::Result<DataFrame> {
    let name = path.display().to_string();
    let is_parquet = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("parquet"));
    let df = if is_parquet {
        ctx.read_parquet(name.as_str(), ParquetReadOptions::default())
            .await
    } else {
        let extension = path
            .extension()
            .and_then(|e| e.to_str())
            .map(|e| format!(".{e}"))
            .unwrap_or_default();
        let null_regex = (!null_values.is_empty()).then(|| {
            format!(
                "^({})$",
                null_values
                    .iter()
                    .map(|v| escape_regex(v))
                    .collect::<Vec<_>>()
                    .join("|")
            )
        });
        let options = CsvReadOptions::new()
            .has_header(true)
            .file_extension(&extension)
            .null_regex(null_regex);
        ctx.read_csv(name.as_str(), options).await
    };
    df.with_context(|| format!("cannot read {name}"))
}

/// Scores every row of `input` with the model in `model_dir`.
async fn predict_file(
    model_dir: &Path,
    input: &Path,
    null_values: &[String],
) -> anyhow::Result<(Model, Vec<RowPrediction>)> {
    let model_path = model_dir.join(ml::report::files::MODEL);
    let bytes = std::fs::read(&model_path)
        .with_context(|| format!("cannot read {}", model_path.display()))?;
    let model = Model::from_json(&bytes, &model_path.display().to_string())?;
    let manifest = read_manifest(&model_dir.join(DATASET_MANIFEST_FILE))?;

    let ctx = pipeline::embedded_context(Some(1))?;
    let raw = read_input(&ctx, input, null_values).await?;
    let available: Vec<String> = raw
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    for feature in model.features() {
        if !available.contains(&feature.name) {
            anyhow::bail!(
                "{} has no column {} (a feature of the model); it has: {}",
                input.display(),
                feature.name,
                available.join(", ")
            );
        }
    }
    let key = manifest.row_key.clone().filter(|k| available.contains(k));
    let prepared = pipeline::prepare::apply_fitted(raw, &manifest)
        .await
        .with_context(|| {
            format!(
                "cannot apply the dataset's transforms to {}",
                input.display()
            )
        })?;
    let mut select: Vec<Expr> = model.features().iter().map(|f| column(&f.name)).collect();
    if let Some(k) = &key {
        select.push(column(k));
    }
    let batches = prepared
        .select(select)?
        .collect()
        .await
        .with_context(|| format!("cannot read rows of {}", input.display()))?;

    let mut out = Vec::new();
    for batch in batches {
        let features = model
            .features()
            .iter()
            .enumerate()
            .map(|(i, f)| {
                cast(batch.column(i), &DataType::Float64).with_context(|| {
                    format!(
                        "column {} of {} is not numeric after the dataset's transforms",
                        f.name,
                        input.display()
                    )
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let keys = match &key {
            Some(_) => Some(cast(batch.column(model.features().len()), &DataType::Utf8)?),
            None => None,
        };
        for r in 0..batch.num_rows() {
            let values: Vec<Option<f64>> = features
                .iter()
                .map(|c| {
                    let c = c.as_primitive::<Float64Type>();
                    c.is_valid(r).then(|| c.value(r))
                })
                .collect();
            let p = model.predict(&values)?;
            let e = model.explain(&values)?;
            let contributions: Vec<Contribution> = e
                .top(model.features(), &values, values.len())
                .into_iter()
                .map(|(feature, contribution)| Contribution {
                    feature,
                    contribution,
                })
                .collect();
            let why = if !p.path.is_empty() || p.leaf.is_some() {
                if p.path.is_empty() {
                    "(root)".to_string()
                } else {
                    p.path.join(", ")
                }
            } else {
                contributions
                    .iter()
                    .take(3)
                    .map(|c| format!("{} ({:+.3})", c.feature, c.contribution))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            out.push(RowPrediction {
                row: out.len() + 1,
                key: keys.as_ref().and_then(|k| {
                    let k = k.as_string::<i32>();
                    k.is_valid(r).then(|| k.value(r).to_string())
                }),
                prediction: p.prediction,
                probability: p.probability,
                calibrated_probability: p.calibrated_probability,
                threshold: p.threshold,
                leaf: p.leaf,
                explanation: format!("{why} → risk {:.2}", p.calibrated_probability),
                path: p.path,
                output: e.output,
                expected_value: e.expected_value,
                contributions,
            });
        }
    }
    Ok((model, out))
}

pub(crate) async fn run(args: PredictArgs) -> anyhow::Result<ExitStatus> {
    // Only a model that is exactly what was anchored scores anything, and the read is audited.
    let provenance = Provenance::open(&args.ledger).await?;
    let checked = async {
        let check = check_model(&args.model, &provenance).await?;
        check.ensure_matches(&args.model)?;
        provenance
            .record_read(Role::Clinician, check.anchor.root, "predict")
            .await
    }
    .await;
    provenance.close().await?;
    checked?;
    let bar = progress(&format!("scoring {}", args.input.display()));
    let result = predict_file(&args.model, &args.input, &args.null_values).await;
    bar.finish_and_clear();
    let (model, predictions) = result?;
    if args.json {
        print_json(&PredictOutput {
            model: args.model.display().to_string(),
            model_sha256: model.sha256_hex()?,
            input: args.input.display().to_string(),
            predictions,
        })?;
        return Ok(ExitStatus::Success);
    }
    let lines: Vec<String> = predictions
        .iter()
        .map(|p| {
            let who = p.key.as_ref().map_or_else(
                || format!("row {}", p.row),
                |k| format!("row {} ({k})", p.row),
            );
            format!("{who}: predict {} — {}", p.prediction, p.explanation)
        })
        .collect();
    print_lines(&lines);
    Ok(ExitStatus::Success)
}
