//! Checking a published dataset or model against its anchor: the receipt beside it (offline,
//! against the genesis), the ledger's anchor of its root, and the files themselves (the dataset
//! fingerprinted again, the model root recomputed). `verify` is the compliance check built on
//! them, recorded as an audited read.

use engine::Engine;
use engine::datafusion::prelude::SessionContext;
use ledger::contracts::{Access, AnchorRecord, AnchorSpec};
use merkle::Digest;
use pipeline::fingerprint::{self, BucketDiff, FINGERPRINT_FILE, Fingerprint};
use pipeline::manifest::MANIFEST_FILE;
use serde::Serialize;

use crate::anchor::{ANCHOR_FILE, AnchorFile, model_root};
use crate::artifact::Artifact;
use crate::connection::{Accessor, Provenance};
use crate::error::{Error, Result};

/// An anchored artifact checked against its anchor. `problems` is empty when the files are
/// exactly what was anchored; each entry says what differs. Errors (no receipt, unreadable
/// files) are `Err`, not problems.
#[derive(Debug)]
pub struct Check {
    /// The receipt beside the artifact.
    pub anchor: AnchorFile,
    /// The ledger's record of the receipt's anchor, if the ledger has it.
    pub record: Option<AnchorRecord>,
    /// Every anchor of the root: each publication of the same content.
    pub derivations: Vec<AnchorRecord>,
    /// The root recomputed from the files (`None` when they could not be read as a model).
    pub recomputed: Option<Digest>,
    /// Datasets: the recomputed fingerprint.
    pub fingerprint: Option<Fingerprint>,
    /// Datasets: the buckets that differ from the anchored fingerprint.
    pub buckets: Vec<BucketDiff>,
    /// What differs.
    pub problems: Vec<String>,
}

impl Check {
    /// `Ok` when nothing differs, else [`Error::Mismatch`] naming what does.
    pub fn ensure_matches(&self, path: &str) -> Result<()> {
        if self.problems.is_empty() {
            return Ok(());
        }
        Err(Error::Mismatch {
            path: path.to_string(),
            problems: self.problems.clone(),
        })
    }

    /// The receipt's offline check and the ledger's anchor, shared by datasets and models.
    async fn start(dir: &Artifact, provenance: &Provenance) -> Result<(Self, Option<AnchorSpec>)> {
        let anchor = AnchorFile::read(dir).await?.ok_or_else(|| {
            Error::invalid(format!(
                "{} has no {ANCHOR_FILE}: it was not published by `emrflow run` or `emrflow train`",
                dir.name()
            ))
        })?;
        let mut problems = Vec::new();
        let spec = match anchor.check(provenance.genesis()) {
            Ok(spec) => Some(spec),
            Err(e) => {
                problems.push(format!("the receipt: {e}"));
                None
            }
        };
        let derivations = provenance.anchors_of(anchor.root).await?;
        let record = derivations
            .iter()
            .find(|a| a.tx == anchor.receipt.tx.digest())
            .cloned();
        if derivations.is_empty() {
            problems.push(format!(
                "root {} is not anchored on {}",
                anchor.root,
                provenance.describe()
            ));
        } else if record.is_none() {
            problems.push(format!(
                "the receipt's transaction is not an anchor of root {} on {}",
                anchor.root,
                provenance.describe()
            ));
        }
        let check = Check {
            anchor,
            record,
            derivations,
            recomputed: None,
            fingerprint: None,
            buckets: Vec::new(),
            problems,
        };
        Ok((check, spec))
    }
}

/// Checks a published dataset directory: its receipt, its rows (fingerprinted on `ctx`), and
/// its manifest (whose hash the anchor carries as the parameter hash).
pub async fn check_dataset(
    ctx: &SessionContext,
    dir: &Artifact,
    provenance: &Provenance,
) -> Result<Check> {
    let (mut check, spec) = Check::start(dir, provenance).await?;
    let fp = fingerprint::fingerprint(fingerprint::read_dataset(ctx, dir.name()).await?).await?;
    let recomputed = fp.root;
    if recomputed != check.anchor.root {
        check.problems.push(format!(
            "the rows differ: {} rows now, recomputed root {}",
            fp.row_count, fp.root
        ));
        check.buckets = differing_buckets(dir, &fp, &check.anchor.root, &mut check.problems).await;
    }
    if let Some(spec) = &spec {
        let bytes = dir.require(MANIFEST_FILE).await?;
        match pipeline::Manifest::from_json(&bytes, &dir.child_name(MANIFEST_FILE)) {
            Ok(manifest) => {
                if Digest(pipeline::manifest::params_digest(&bytes)?) != spec.params_hash {
                    check
                        .problems
                        .push("manifest.json differs from the one anchored with the data".into());
                }
                // Training reads the files the manifest lists; the fingerprint covers every
                // Parquet file present. They must be the same files.
                let present: Vec<String> = dir
                    .names()
                    .await?
                    .into_iter()
                    .filter(|n| n.ends_with(".parquet"))
                    .collect();
                if present != manifest.files {
                    check.problems.push(format!(
                        "manifest.json lists the files [{}] but the directory holds [{}]",
                        manifest.files.join(", "),
                        present.join(", ")
                    ));
                }
            }
            Err(e) => check
                .problems
                .push(format!("manifest.json is unreadable: {e}")),
        }
    }
    check.recomputed = Some(recomputed);
    check.fingerprint = Some(fp);
    Ok(check)
}

/// A model directory and its `model.json`, given either.
pub(crate) async fn model_files(
    ctx: &SessionContext,
    path: &Artifact,
) -> Result<(Artifact, Vec<u8>, String)> {
    if let Some(bytes) = path.read(ml::report::files::MODEL).await? {
        return Ok((
            path.clone(),
            bytes,
            path.child_name(ml::report::files::MODEL),
        ));
    }
    match path.read_self().await? {
        Some(bytes) => Ok((path.parent(ctx)?, bytes, path.name().to_string())),
        None => Err(Error::invalid(format!(
            "{} is neither a model directory nor a model.json",
            path.name()
        ))),
    }
}

/// Checks a model directory (or its model.json): its receipt, and its root recomputed from the
/// model file and the training dataset's root, which the anchor must name as a parent.
pub async fn check_model(
    ctx: &SessionContext,
    path: &Artifact,
    provenance: &Provenance,
) -> Result<Check> {
    let (dir, bytes, file) = model_files(ctx, path).await?;
    let (mut check, spec) = Check::start(&dir, provenance).await?;
    let model = match ml::Model::from_json(&bytes, &file) {
        Ok(model) => model,
        Err(e) => {
            check.problems.push(format!("the model file: {e}"));
            return Ok(check);
        }
    };
    let Some(dataset_root) = check.anchor.dataset_root else {
        check
            .problems
            .push(format!("{ANCHOR_FILE} names no training dataset"));
        return Ok(check);
    };
    if spec.is_some_and(|s| !s.parents.contains(&dataset_root)) {
        check.problems.push(format!(
            "{ANCHOR_FILE} names dataset {dataset_root}, which the anchor does not"
        ));
    }
    let root = model_root(&model, &dataset_root)?;
    if root != check.anchor.root {
        check.problems.push(format!(
            "{file} differs from the anchored model (a threshold, a parameter or a node changed)"
        ));
    }
    check.recomputed = Some(root);
    Ok(check)
}

/// Names the buckets that differ, when the fingerprint stored beside the data is the anchored
/// one (its own root must be the anchored root, or it proves nothing).
async fn differing_buckets(
    dir: &Artifact,
    now: &Fingerprint,
    anchored: &Digest,
    problems: &mut Vec<String>,
) -> Vec<BucketDiff> {
    let path = dir.child_name(FINGERPRINT_FILE);
    let stored = match dir.read(FINGERPRINT_FILE).await {
        Ok(Some(bytes)) => Fingerprint::from_json(&bytes, &path).map_err(|e| e.to_string()),
        Ok(None) => Err("no such file".to_string()),
        Err(e) => Err(e.to_string()),
    };
    match stored {
        Ok(stored) if stored.root == *anchored => {
            let diff = now.diff(&stored);
            for d in diff.iter().take(16) {
                problems.push(format!(
                    "bucket {:02x} differs ({} rows anchored, {} now)",
                    d.bucket, d.expected_rows, d.actual_rows
                ));
            }
            if diff.len() > 16 {
                problems.push(format!("… and {} more buckets", diff.len() - 16));
            }
            diff
        }
        Ok(_) => {
            problems.push(format!(
                "{FINGERPRINT_FILE} is not the anchored fingerprint; buckets cannot be named"
            ));
            Vec::new()
        }
        Err(e) => {
            problems.push(format!("{FINGERPRINT_FILE}: {e}; buckets cannot be named"));
            Vec::new()
        }
    }
}

/// One publication of an anchored root.
#[derive(Debug, Clone, Serialize)]
pub struct Derivation {
    /// Block height of the anchor.
    pub height: u64,
    /// Where it was published.
    pub location: String,
    /// The stage that produced it.
    pub stage: String,
    /// Who anchored it.
    pub signer: String,
    /// Its parameter hash (the manifest's, for datasets).
    pub params_hash: String,
    /// Whether this is the anchor of the receipt beside the checked files.
    pub this_one: bool,
}

/// The verdict of [`verify`].
#[derive(Debug, Serialize)]
pub struct Verdict {
    /// What was checked, as given.
    pub path: String,
    /// `dataset` or `model`.
    pub kind: &'static str,
    /// Whether the files are exactly what was anchored.
    pub matches: bool,
    /// The root of the receipt beside the files.
    pub anchored_root: String,
    /// The root recomputed from the files.
    pub recomputed_root: Option<String>,
    /// Block height of the receipt's anchor, when the ledger has it.
    pub ledger_height: Option<u64>,
    /// Who anchored it.
    pub anchored_by: Option<String>,
    /// Every anchor of the root: each publication of the same content.
    pub derivations: Vec<Derivation>,
    /// What differs.
    pub problems: Vec<String>,
    /// Datasets: the buckets whose rows differ from the anchored fingerprint.
    pub buckets: Vec<BucketDiff>,
}

/// Verifies a dataset or model (directory, or a model's `model.json`) against its anchor, on
/// any store, and records the read as `by`'s whatever the outcome: who checked what, and when.
pub async fn verify(
    engine: &Engine,
    path: &str,
    provenance: &Provenance,
    by: Accessor<'_>,
) -> Result<Verdict> {
    let ctx = engine.context().await?;
    let artifact = Artifact::resolve(&ctx, path)?;
    if !artifact.exists().await? {
        return Err(Error::invalid(format!("{path} does not exist")));
    }
    let is_dataset = artifact.read(MANIFEST_FILE).await?.is_some();
    let check = if is_dataset {
        check_dataset(&ctx, &artifact, provenance).await?
    } else {
        check_model(&ctx, &artifact, provenance).await?
    };
    let matches = check.problems.is_empty();
    provenance
        .record_access_by(
            by,
            check.anchor.root,
            Access::Read,
            if matches {
                "verify: match"
            } else {
                "verify: mismatch"
            },
        )
        .await?;
    let tx = check.anchor.receipt.tx.digest();
    Ok(Verdict {
        path: path.to_string(),
        kind: if is_dataset { "dataset" } else { "model" },
        matches,
        anchored_root: check.anchor.root.to_hex(),
        recomputed_root: check.recomputed.map(|r| r.to_hex()),
        ledger_height: check.record.as_ref().map(|r| r.position.seq.0),
        anchored_by: check.record.map(|r| r.signer_name),
        derivations: check
            .derivations
            .iter()
            .map(|a| Derivation {
                height: a.position.seq.0,
                location: a.spec.location.clone(),
                stage: a.spec.stage.clone(),
                signer: a.signer_name.clone(),
                params_hash: a.spec.params_hash.to_hex(),
                this_one: a.tx == tx,
            })
            .collect(),
        problems: check.problems,
        buckets: check.buckets,
    })
}
