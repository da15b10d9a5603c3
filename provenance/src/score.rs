//! Scoring raw rows with an anchored model: the model must be exactly what was anchored (the
//! read is audited), the dataset manifest copied beside it says how the training rows were
//! normalized and encoded, `pipeline::transforms::apply_fitted` applies the same transforms to the
//! raw rows, and the model predicts each row with its decision path in words (thresholds in raw
//! units). Models and inputs may live on any store.

use engine::datafusion::arrow::array::{Array, AsArray};
use engine::datafusion::arrow::compute::cast;
use engine::datafusion::arrow::datatypes::{DataType, Float64Type};
use engine::datafusion::common::Column;
use engine::datafusion::prelude::{
    CsvReadOptions, DataFrame, Expr, ParquetReadOptions, SessionContext,
};
use ledger::contracts::Role;
use ml::DecisionTreeModel;
use pipeline::Manifest;
use pipeline::store::Location;
use serde::Serialize;

use crate::artifact::Artifact;
use crate::check::{check_model, model_files};
use crate::connection::Provenance;
use crate::error::{Context, Error, Result};
use crate::train::{DATASET_MANIFEST_FILE, read_manifest};

/// One scored row.
#[derive(Debug, Clone, Serialize)]
pub struct RowPrediction {
    /// 1-based row number in the input.
    pub row: usize,
    /// The row key's raw value, when the input has the dataset's row key column.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// 0 or 1.
    pub prediction: u8,
    /// The probability of class 1.
    pub probability: f64,
    /// The leaf reached.
    pub leaf: u64,
    /// The decision path, one condition per step, in raw units.
    pub path: Vec<String>,
    /// The path and the risk in one line.
    pub explanation: String,
}

/// An anchored model, loaded with the transforms of its training data.
#[derive(Debug)]
pub struct LoadedModel {
    /// The model.
    pub model: DecisionTreeModel,
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
    let artifact = Artifact::resolve(ctx, path)?;
    let check = check_model(ctx, &artifact, provenance).await?;
    check.ensure_matches(path)?;
    provenance
        .record_read(role, check.anchor.root, purpose)
        .await?;
    let (dir, bytes, file) = model_files(ctx, &artifact).await?;
    let model = DecisionTreeModel::from_json(&bytes, &file)?;
    let (manifest, _) = read_manifest(&dir, DATASET_MANIFEST_FILE).await?;
    Ok(LoadedModel {
        model,
        manifest,
        root: check.anchor.root,
        dataset_root: check.anchor.dataset_root,
    })
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
    let (tree, manifest) = (&model.model, &model.manifest);
    let raw = read_input(ctx, input, null_values).await?;
    let available: Vec<String> = raw
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    for feature in &tree.features {
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
    let mut select: Vec<Expr> = tree.features.iter().map(|f| column(&f.name)).collect();
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
        let features = tree
            .features
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
            Some(_) => Some(cast(batch.column(tree.features.len()), &DataType::Utf8)?),
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
            let p = tree.predict(&values)?;
            out.push(RowPrediction {
                row: out.len() + 1,
                key: keys.as_ref().and_then(|k| {
                    let k = k.as_string::<i32>();
                    k.is_valid(r).then(|| k.value(r).to_string())
                }),
                prediction: p.prediction,
                probability: p.probability,
                leaf: p.leaf,
                explanation: p.explain(),
                path: p.path,
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
