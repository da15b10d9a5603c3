//! Publishing a dataset: the job runs (embedded or on a cluster) into a staging location, its
//! rows are fingerprinted as they are written, its raw inputs and then itself are anchored, and
//! only then is it moved into place. A job that fails anywhere, anchoring included, publishes
//! nothing and anchors nothing.

use std::collections::BTreeMap;
use std::time::Instant;

use engine::Engine;
use engine::datafusion::prelude::SessionContext;
use ledger::contracts::{AnchorKind, AnchorSpec, Role};
use merkle::Digest;
use pipeline::fingerprint::FINGERPRINT_FILE;
use pipeline::store::Location;
use pipeline::{Job, Progress, RunOptions, RunSummary, StagedRun};
use serde::Serialize;

use crate::anchor::{ANCHOR_FILE, AnchorFile, CODE_VERSION};
use crate::artifact::Artifact;
use crate::check::check_dataset;
use crate::connection::Provenance;
use crate::error::{Context, Error, Result};

/// A published, anchored dataset.
#[derive(Debug, Serialize)]
pub struct Published {
    /// What the run did.
    #[serde(flatten)]
    pub summary: RunSummary,
    /// The dataset root (hex).
    pub root: String,
    /// The roots of its inputs, anchored as its parents.
    pub parents: Vec<String>,
    /// The receipt beside the dataset.
    pub anchor: String,
    /// Block height of the anchor.
    pub ledger_height: u64,
}

/// Runs `job` on `engine` with `progress`, fingerprints what it staged, anchors it (and its raw
/// inputs) as the data engineer, and only then publishes it.
///
/// `options.hash_inputs` is filled in here (the raw inputs are the ones that are not emrflow
/// datasets), and a cluster run never holds rows in this process's memory.
pub async fn publish_dataset(
    job: &Job,
    options: &RunOptions,
    engine: &Engine,
    provenance: &Provenance,
    progress: &dyn Progress,
) -> Result<Published> {
    let result = async {
        let ctx = engine.context().await?;
        // Raw inputs are hashed while the job runs; emrflow datasets read as inputs are anchored
        // already and are not.
        let mut hash_inputs = Vec::new();
        for (name, input) in &job.inputs {
            let raw = options.input_overrides.get(name).unwrap_or(&input.path);
            let Ok(location) = Location::resolve(&ctx, raw) else {
                continue;
            };
            if anchored_input(&location).await?.is_none() {
                hash_inputs.push(name.clone());
            }
        }
        let options = RunOptions {
            cache_limit: options.cache_limit.filter(|_| !engine.is_cluster()),
            on_cluster: engine.is_cluster(),
            hash_inputs,
            ..options.clone()
        };
        let mut staged = pipeline::stage_job(job, &options, &ctx, progress).await?;
        match anchor_staged(&ctx, &mut staged, provenance, progress).await {
            Ok((root, parents, ledger_height)) => {
                progress.stage("publishing");
                let summary = staged.publish().await?;
                Ok(Published {
                    anchor: format!("{}/{ANCHOR_FILE}", summary.output),
                    summary,
                    root,
                    parents,
                    ledger_height,
                })
            }
            Err(e) => {
                staged.abort().await;
                Err(e)
            }
        }
    }
    .await;
    result.with_context(|| format!("job {} failed; nothing was published", job.name))
}

/// Fingerprints the staged dataset, anchors its inputs and itself, and stages
/// `fingerprint.json` and `anchor.json` beside it. Returns the root, the parents and the height.
async fn anchor_staged(
    ctx: &SessionContext,
    staged: &mut StagedRun,
    provenance: &Provenance,
    progress: &dyn Progress,
) -> Result<(String, Vec<String>, u64)> {
    // The writers fingerprinted the rows as they encoded them (`emrflow verify` reads the
    // published files back and recomputes the same root).
    let fp = staged.fingerprint().clone();
    if fp.row_count != staged.summary().rows_out {
        return Err(Error::invalid(format!(
            "the staged dataset has {} rows, {} were written",
            fp.row_count,
            staged.summary().rows_out
        )));
    }
    progress.stage("anchoring");
    #[allow(clippy::disallowed_methods)] // a debug log of where the job's time goes
    let phase = Instant::now();
    // Raw inputs were hashed while the job ran; they are anchored one after another, in the
    // manifest's order.
    let sources = staged.source_roots().await?;
    let summary = staged.summary();
    let mut parents = Vec::new();
    for input in &summary.manifest.inputs {
        let source = sources.get(&input.name).map(|root| Digest(*root));
        let root = input_root(ctx, provenance, input, source, &summary.rows_in).await?;
        // Two inputs of one export (a FHIR export's two tables) are one parent.
        if !parents.contains(&root) {
            parents.push(root);
        }
    }
    tracing::debug!(
        seconds = phase.elapsed().as_secs_f64(),
        "inputs hashed and anchored"
    );
    #[allow(clippy::disallowed_methods)] // a debug log of where the job's time goes
    let phase = Instant::now();
    let target = Location::resolve(ctx, &summary.output)?;
    let spec = AnchorSpec {
        kind: AnchorKind::Dataset,
        root: fp.root,
        row_count: fp.row_count,
        schema_hash: fp.schema_hash,
        location: target.url.to_string(),
        parents: parents.clone(),
        stage: "preprocess".to_string(),
        params_hash: Digest(pipeline::manifest::params_digest(
            &summary.manifest.to_json()?,
        )?),
        code_version: CODE_VERSION.to_string(),
    };
    // The same rows published again under another manifest (another job, another folder) are
    // anchored as a derivation of their own; an identical manifest reuses its anchor.
    let receipt = provenance.anchor_once(Role::DataEngineer, spec).await?;
    tracing::debug!(seconds = phase.elapsed().as_secs_f64(), "dataset anchored");
    let height = receipt.header.height.0;
    let file = AnchorFile::new(
        AnchorKind::Dataset,
        fp.root,
        None,
        provenance.genesis(),
        receipt,
    );
    staged.put(FINGERPRINT_FILE, fp.to_json()?).await?;
    staged.put(ANCHOR_FILE, file.to_json()?).await?;
    Ok((
        fp.root.to_string(),
        parents.iter().map(Digest::to_hex).collect(),
        height,
    ))
}

/// The emrflow dataset an input reads, if it reads one (a directory with an anchor file).
async fn anchored_input(location: &Location) -> Result<Option<Artifact>> {
    if let Some(path) = location.local_path() {
        return Ok(path.join(ANCHOR_FILE).is_file().then(|| Artifact {
            location: location.clone(),
        }));
    }
    let artifact = Artifact {
        location: location.clone(),
    };
    Ok(artifact
        .read(ANCHOR_FILE)
        .await?
        .is_some()
        .then_some(artifact))
}

/// The anchored root of an input: the anchor of an emrflow dataset read as input, or the
/// source root of raw files (`source`, hashed while the job ran), anchored (stage `source`) if
/// it is new. The record store's imports name their sources the same way.
pub async fn input_root(
    ctx: &SessionContext,
    provenance: &Provenance,
    input: &pipeline::manifest::InputSpec,
    source: Option<Digest>,
    rows_in: &BTreeMap<String, u64>,
) -> Result<Digest> {
    let location = Location::resolve(ctx, &input.location)?;
    // An emrflow dataset read as input is its anchored root, once its content is checked
    // against that anchor: a parent must be what the child was really made from.
    if let Some(dir) = anchored_input(&location).await? {
        let check = check_dataset(ctx, &dir, provenance).await?;
        check.ensure_matches(dir.name())?;
        return Ok(check.anchor.root);
    }
    let Some(root) = source else {
        return Err(Error::invalid(format!(
            "input {} was not hashed",
            input.name
        )));
    };
    let listing = serde_json::to_vec(&input.files)
        .map_err(|e| Error::invalid(format!("input {}: {e}", input.name)))?;
    let spec = AnchorSpec {
        kind: AnchorKind::Dataset,
        root,
        row_count: rows_in.get(&input.name).copied().unwrap_or(0),
        schema_hash: Digest::of(format!("emrflow.source.v1\n{}", input.format).as_bytes()),
        location: location.url.to_string(),
        parents: Vec::new(),
        stage: "source".to_string(),
        params_hash: Digest::of(&listing),
        code_version: CODE_VERSION.to_string(),
    };
    provenance.anchor_once(Role::DataEngineer, spec).await?;
    Ok(root)
}
