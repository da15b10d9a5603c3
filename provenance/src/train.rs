//! Training on an anchored dataset and publishing the anchored model: the dataset must be
//! exactly what was anchored (its read is audited), the model directory is staged, its root is
//! anchored with the dataset as parent, and only then is it moved into place. Datasets and
//! models may live on any store.

use std::time::Instant;

use engine::Engine;
use engine::datafusion::prelude::{DataFrame, ParquetReadOptions, SessionContext};
use ledger::contracts::{AnchorKind, AnchorSpec, Role};
use merkle::Digest;
use ml::{
    Affine, DatasetSpec, FeatureKind, FeatureSpec, Step, Storage, TrainParams, TrainingReport,
};
use pipeline::manifest::{self, MANIFEST_FILE, Manifest};
use pipeline::store::{Location, Staging};

use crate::anchor::{ANCHOR_FILE, AnchorFile, CODE_VERSION, model_root};
use crate::artifact::Artifact;
use crate::check::check_dataset;
use crate::connection::Provenance;
use crate::error::{Context, Error, Result};

/// The dataset's manifest, copied into the model directory so `predict` can transform raw rows
/// exactly as the training rows were.
pub const DATASET_MANIFEST_FILE: &str = "dataset-manifest.json";

/// What to train, on what, and where the model goes.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    /// A dataset published by `emrflow run` (a path or URL).
    pub dataset: String,
    /// The label column (default: the manifest's label).
    pub label: Option<String>,
    /// The estimator (a decision tree, a random forest or gradient-boosted trees), the split and
    /// cross-validation, the calibration and the operating threshold rule.
    pub params: TrainParams,
    /// The model directory to publish (a path or URL).
    pub out: String,
    /// Replace the model directory if it exists.
    pub overwrite: bool,
}

/// A trained, anchored model.
#[derive(Debug)]
pub struct Trained {
    /// The training report (model, metrics, curves).
    pub report: TrainingReport,
    /// The model root.
    pub root: Digest,
    /// The root of the dataset it was trained on.
    pub dataset_root: Digest,
    /// Block height of the anchor.
    pub height: u64,
    /// Where the model was published.
    pub out: String,
    /// Seconds spent checking the dataset against its anchor (fingerprinting it).
    pub verify_seconds: f64,
    /// Seconds spent training and evaluating (reading, binning, growing, scoring).
    pub training_seconds: f64,
}

/// The training spec of a published dataset: its label (or `label`), row key and features, with
/// the inverse normalization and category names so the tree can be printed in raw units.
pub fn dataset_spec(manifest: &Manifest, label: Option<&str>) -> Result<DatasetSpec> {
    let label = match (label, &manifest.label) {
        (Some(l), _) => l.to_string(),
        (None, Some(l)) => l.clone(),
        (None, None) => {
            return Err(Error::invalid(
                "the dataset's manifest names no label; pass --label",
            ));
        }
    };
    let features = manifest
        .features
        .iter()
        .filter(|f| f.name != label)
        .map(|f| FeatureSpec {
            name: f.name.clone(),
            kind: match &f.kind {
                manifest::FeatureKind::Continuous => FeatureKind::Continuous {
                    raw: manifest.normalization.get(&f.name).map(|n| {
                        let offset = n.invert(0.0);
                        Affine {
                            offset,
                            scale: n.invert(1.0) - offset,
                        }
                    }),
                },
                manifest::FeatureKind::Categorical { categories } => FeatureKind::Categorical {
                    categories: *categories,
                    labels: manifest
                        .encodings
                        .get(&f.name)
                        .map(|e| e.values.clone())
                        .unwrap_or_default(),
                },
            },
        })
        .collect();
    Ok(DatasetSpec {
        label,
        row_key: manifest.row_key.clone(),
        features,
    })
}

/// Reads and parses `DIR/manifest.json`.
pub(crate) async fn read_manifest(dir: &Artifact, name: &str) -> Result<(Manifest, Vec<u8>)> {
    let bytes = dir.require(name).await?;
    let manifest = Manifest::from_json(&bytes, &dir.child_name(name))?;
    Ok((manifest, bytes))
}

/// The dataset's Parquet files (those its manifest lists) as one DataFrame.
async fn read_dataset(
    ctx: &SessionContext,
    dir: &Artifact,
    manifest: &Manifest,
) -> Result<DataFrame> {
    let files: Vec<String> = if manifest.files.is_empty() {
        vec![dir.location.table_url()]
    } else {
        manifest
            .files
            .iter()
            .map(|f| dir.location.url_of(&dir.location.child(f)))
            .collect()
    };
    ctx.read_parquet(files, ParquetReadOptions::default())
        .await
        .with_context(|| format!("cannot read the Parquet files of {}", dir.name()))
}

/// Trains on an anchored dataset and publishes the anchored model directory. The dataset is
/// fingerprinted first and must be exactly what was anchored (the model's anchor names it as
/// parent); its read is audited. The model directory is staged beside `out`, anchored, and only
/// then moved into place.
pub async fn train_model(
    config: &TrainConfig,
    engine: &Engine,
    provenance: &Provenance,
    on_step: &(dyn Fn(Step) + Send + Sync),
) -> Result<Trained> {
    config.params.validate()?;
    let ctx = engine.context().await?;
    let dataset = Artifact::resolve(&ctx, &config.dataset)?;
    let (manifest, manifest_bytes) = read_manifest(&dataset, MANIFEST_FILE).await?;
    let spec = dataset_spec(&manifest, config.label.as_deref())?;
    let target = Location::resolve(&ctx, &config.out)?;
    // Refuse an existing output before any work.
    let mut staging =
        Staging::begin(target.clone(), config.overwrite, ml::report::files::MODEL).await?;
    let result = async {
        // Only a dataset that is exactly what was anchored is trained on; the read is audited.
        #[allow(clippy::disallowed_methods)] // the command reports where its time went
        let verify_started = Instant::now();
        let check = check_dataset(&ctx, &dataset, provenance).await?;
        let verify_seconds = verify_started.elapsed().as_secs_f64();
        check.ensure_matches(dataset.name())?;
        let dataset_root = check.anchor.root;
        provenance
            .record_read(Role::MlEngineer, dataset_root, "train")
            .await?;

        #[allow(clippy::disallowed_methods)] // the command reports where its time went
        let training_started = Instant::now();
        let df = read_dataset(&ctx, &dataset, &manifest).await?;
        // On a cluster every pass must be a plan the executors can run on their own, so the
        // binned rows are recomputed per pass rather than held in this process's memory.
        let storage = if engine.is_cluster() {
            Storage::Inline
        } else {
            Storage::Memory
        };
        let report = ml::train(df, &spec, &config.params, storage, on_step)
            .await
            .with_context(|| format!("training on {}", dataset.name()))?;
        let training_seconds = training_started.elapsed().as_secs_f64();
        let (root, height) = stage_model(
            &report,
            &manifest_bytes,
            &mut staging,
            &target,
            dataset_root,
            provenance,
        )
        .await?;
        Ok::<_, Error>((
            report,
            root,
            dataset_root,
            height,
            verify_seconds,
            training_seconds,
        ))
    }
    .await;
    let (report, root, dataset_root, height, verify_seconds, training_seconds) = match result {
        Ok(done) => done,
        Err(e) => {
            staging.abort().await;
            return Err(e);
        }
    };
    let out = staging.publish(ml::report::files::MODEL).await?;
    Ok(Trained {
        report,
        root,
        dataset_root,
        height,
        out,
        verify_seconds,
        training_seconds,
    })
}

/// Writes the artifacts into staging, anchors the model and stages its receipt beside it.
async fn stage_model(
    report: &TrainingReport,
    manifest_bytes: &[u8],
    staging: &mut Staging,
    target: &Location,
    dataset_root: Digest,
    provenance: &Provenance,
) -> Result<(Digest, u64)> {
    for (name, bytes) in report.artifacts()? {
        staging.put(name, bytes).await?;
    }
    staging
        .put(DATASET_MANIFEST_FILE, manifest_bytes.to_vec())
        .await?;
    let model = &report.model;
    let root = model_root(model, &dataset_root)?;
    let features = serde_json::to_vec(model.features())
        .map_err(|e| Error::invalid(format!("cannot encode the model's features: {e}")))?;
    let spec = AnchorSpec {
        kind: AnchorKind::Model,
        root,
        row_count: model.num_nodes() as u64,
        schema_hash: Digest::of(&features),
        location: target.url.to_string(),
        parents: vec![dataset_root],
        stage: "train".to_string(),
        params_hash: Digest(model.params_hash()?),
        code_version: CODE_VERSION.to_string(),
    };
    let receipt = provenance.anchor_once(Role::MlEngineer, spec).await?;
    let height = receipt.header.height.0;
    let file = AnchorFile::new(
        AnchorKind::Model,
        root,
        Some(dataset_root),
        provenance.genesis(),
        receipt,
    );
    staging.put(ANCHOR_FILE, file.to_json()?).await?;
    Ok((root, height))
}
