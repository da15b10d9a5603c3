//! Scoring raw rows with an anchored model: the model must be exactly what was anchored (the
//! read is audited), the dataset manifest copied beside it says how the training rows were
//! normalized and encoded, `pipeline::transforms::apply_fitted` applies the same transforms to the
//! raw rows, and the model (a decision tree, a random forest or boosted trees) gives each row its
//! calibrated probability, its class at the model's operating threshold, the exact contribution
//! of every feature (TreeSHAP), and for a tree its decision path in words (thresholds in raw
//! units). Models and inputs may live on any store.

use engine::datafusion::arrow::array::{Array, AsArray};
use engine::datafusion::arrow::compute::cast;
use engine::datafusion::arrow::datatypes::{DataType, Float64Type};
use engine::datafusion::common::Column;
use engine::datafusion::prelude::{
    CsvReadOptions, DataFrame, Expr, ParquetReadOptions, SessionContext,
};
use ledger::contracts::Role;
use ml::Model;
use pipeline::Manifest;
use pipeline::store::Location;
use serde::Serialize;

use crate::anchor::model_root;
use crate::artifact::Artifact;
use crate::check::{check_model, model_files};
use crate::connection::Provenance;
use crate::error::{Context, Error, Result};
use crate::train::{DATASET_MANIFEST_FILE, dataset_spec, read_manifest};

/// One scored row.
#[derive(Debug, Clone, Serialize)]
pub struct RowPrediction {
    /// 1-based row number in the input.
    pub row: usize,
    /// The row key's raw value, when the input has the dataset's row key column.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The class at the model's operating threshold.
    pub prediction: u8,
    /// The model's own probability of class 1.
    pub probability: f64,
    /// The probability after the model's calibration (the same without one): the risk to show.
    pub calibrated_probability: f64,
    /// Class 1 at or above this (0.5: above it, for a model without an operating threshold).
    pub threshold: f64,
    /// The leaf reached (decision trees only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leaf: Option<u64>,
    /// The decision path, one condition per step, in raw units (decision trees only).
    pub path: Vec<String>,
    /// The path (or the largest contributions) and the risk in one line.
    pub explanation: String,
    /// What the contributions add up to: `probability` or `log_odds`.
    pub output: ml::Output,
    /// The model's expected output over its training rows.
    pub expected_value: f64,
    /// Every feature's TreeSHAP contribution, largest first; with `expected_value` they add up
    /// to the model's output for the row (before calibration).
    pub contributions: Vec<Contribution>,
}

/// One feature's share of a prediction.
#[derive(Debug, Clone, Serialize)]
pub struct Contribution {
    /// The feature and the row's value in raw units, e.g. `age = 81`.
    pub feature: String,
    /// Its TreeSHAP value, in the model's output units.
    pub contribution: f64,
}

/// An anchored model, loaded with the transforms of its training data.
#[derive(Debug)]
pub struct LoadedModel {
    /// The model.
    pub model: Model,
    /// The manifest of the dataset it was trained on.
    pub manifest: Manifest,
    /// Its anchored root.
    pub root: merkle::Digest,
    /// The root of its training dataset.
    pub dataset_root: Option<merkle::Digest>,
}

/// Loads the model at `path` (a model directory or its `model.json`) once it is checked against
/// its anchor, recording the read as `role` for `purpose`.
pub async fn load_model(
    ctx: &SessionContext,
    path: &str,
    provenance: &Provenance,
    role: Role,
    purpose: &str,
) -> Result<LoadedModel> {
    let loaded = load_verified(ctx, path, provenance).await?;
    provenance.record_read(role, loaded.root, purpose).await?;
    Ok(loaded)
}

/// Loads the model at `path` once it is checked against its anchor, without recording a read:
/// for a server that holds a model to answer its callers, whose own reads are what the trail
/// records (each answer names the model's root).
pub async fn load_verified(
    ctx: &SessionContext,
    path: &str,
    provenance: &Provenance,
) -> Result<LoadedModel> {
    let artifact = Artifact::resolve(ctx, path)?;
    let check = check_model(ctx, &artifact, provenance).await?;
    check.ensure_matches(path)?;
    let (dir, bytes, file) = model_files(ctx, &artifact).await?;
    let model = Model::from_json(&bytes, &file)?;
    // The check read the file once and this is a second read: the root must hold for the bytes
    // that are used, or a file replaced in between would be served unchecked.
    let anchored = check.anchor.root;
    let held = match &check.anchor.dataset_root {
        Some(dataset_root) => Some(model_root(&model, dataset_root)?),
        None => None,
    };
    if held != Some(anchored) {
        return Err(Error::Mismatch {
            path: path.to_string(),
            problems: vec![format!("{file} changed while it was being checked")],
        });
    }
    let (manifest, _) = read_manifest(&dir, DATASET_MANIFEST_FILE).await?;
    // The manifest copied beside the model is not anchored itself; its transforms are, through
    // the model's features (their raw-unit maps and category names), so they must agree.
    let spec = dataset_spec(&manifest, Some(model.label()))?;
    for feature in model.features() {
        if spec.features.iter().find(|s| s.name == feature.name) != Some(feature) {
            return Err(Error::Mismatch {
                path: path.to_string(),
                problems: vec![format!(
                    "{DATASET_MANIFEST_FILE} does not match the anchored model's transform of {}",
                    feature.name
                )],
            });
        }
    }
    Ok(LoadedModel {
        model,
        manifest,
        root: anchored,
        dataset_root: check.anchor.dataset_root,
    })
}

/// The bytes of the model file at `path` (a model directory or its `model.json`) and of its
/// anchor file: what a server compares to notice that a new model was published there (both,
/// so a model copied in file by file is looked at again once the last file lands).
pub async fn model_version(ctx: &SessionContext, path: &str) -> Result<Vec<u8>> {
    let artifact = Artifact::resolve(ctx, path)?;
    let (dir, mut bytes, _) = model_files(ctx, &artifact).await?;
    bytes.extend(dir.read(crate::ANCHOR_FILE).await?.unwrap_or_default());
    Ok(bytes)
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

/// Raw rows: a CSV file with a header, or Parquet (by extension), on any store.
async fn read_input(
    ctx: &SessionContext,
    input: &str,
    null_values: &[String],
) -> Result<DataFrame> {
    let location = Location::resolve(ctx, input)?;
    let url = location.table_url();
    let extension = location
        .path
        .extension()
        .map(|e| e.to_ascii_lowercase())
        .unwrap_or_default();
    let df = if extension == "parquet" {
        ctx.read_parquet(url, ParquetReadOptions::default()).await
    } else {
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
        let suffix = if extension.is_empty() {
            String::new()
        } else {
            format!(".{extension}")
        };
        let options = CsvReadOptions::new()
            .has_header(true)
            .file_extension(&suffix)
            .null_regex(null_regex);
        ctx.read_csv(url, options).await
    };
    df.with_context(|| format!("cannot read {input}"))
}

/// Scores every row of `input` (raw values) with `model`.
pub async fn score_rows(
    ctx: &SessionContext,
    model: &LoadedModel,
    input: &str,
    null_values: &[String],
) -> Result<Vec<RowPrediction>> {
    let (fitted, manifest) = (&model.model, &model.manifest);
    let raw = read_input(ctx, input, null_values).await?;
    let available: Vec<String> = raw
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    for feature in fitted.features() {
        if !available.contains(&feature.name) {
            return Err(Error::invalid(format!(
                "{input} has no column {} (a feature of the model); it has: {}",
                feature.name,
                available.join(", ")
            )));
        }
    }
    let key = manifest.row_key.clone().filter(|k| available.contains(k));
    let prepared = pipeline::transforms::apply_fitted(raw, manifest)
        .await
        .with_context(|| format!("cannot apply the dataset's transforms to {input}"))?;
    let mut select: Vec<Expr> = fitted.features().iter().map(|f| column(&f.name)).collect();
    if let Some(k) = &key {
        select.push(column(k));
    }
    let batches = prepared
        .select(select)?
        .collect()
        .await
        .with_context(|| format!("cannot read rows of {input}"))?;

    let mut out = Vec::new();
    for batch in batches {
        let features = fitted
            .features()
            .iter()
            .enumerate()
            .map(|(i, f)| {
                cast(batch.column(i), &DataType::Float64).with_context(|| {
                    format!(
                        "column {} of {input} is not numeric after the dataset's transforms",
                        f.name
                    )
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let keys = match &key {
            Some(_) => Some(cast(
                batch.column(fitted.features().len()),
                &DataType::Utf8,
            )?),
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
            let p = fitted.predict(&values)?;
            let e = fitted.explain(&values)?;
            let top = e.top(fitted.features(), &values, values.len());
            let explanation = p.explain(&top);
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
                explanation,
                path: p.path.into_iter().map(|s| s.text).collect(),
                output: e.output,
                expected_value: e.expected_value,
                contributions: top
                    .into_iter()
                    .map(|(feature, contribution)| Contribution {
                        feature,
                        contribution,
                    })
                    .collect(),
            });
        }
    }
    Ok(out)
}

/// The predictions of [`predict`].
#[derive(Debug, Serialize)]
pub struct Predictions {
    /// The model, as given.
    pub model: String,
    /// SHA-256 of the model file.
    pub model_sha256: String,
    /// The model root.
    pub model_root: String,
    /// The input, as given.
    pub input: String,
    /// One per input row.
    pub predictions: Vec<RowPrediction>,
}

/// Scores the raw rows of `input` with the anchored model at `model` as a clinician: only a
/// model that is exactly what was anchored scores anything, and the read is audited.
pub async fn predict(
    model: &str,
    input: &str,
    null_values: &[String],
    provenance: &Provenance,
) -> Result<Predictions> {
    // One partition: the rows come back in input order.
    let ctx = engine::embedded_context(Some(1))?;
    let loaded = load_model(&ctx, model, provenance, Role::Clinician, "predict").await?;
    let predictions = score_rows(&ctx, &loaded, input, null_values).await?;
    Ok(Predictions {
        model: model.to_string(),
        model_sha256: loaded.model.sha256_hex()?,
        model_root: loaded.root.to_hex(),
        input: input.to_string(),
        predictions,
    })
}
