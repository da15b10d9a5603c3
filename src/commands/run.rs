//! `emrflow run`: a preprocessing job on the embedded engine.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use indicatif::ProgressBar;
use ledger::contracts::{AnchorKind, AnchorSpec, Role};
use ledger::crypto::Digest;
use ml::datafusion::prelude::SessionContext;
use pipeline::fingerprint::FINGERPRINT_FILE;
use pipeline::{Job, Progress, RunOptions, RunSummary, StagedRun};
use serde::Serialize;

use super::cluster::EngineArgs;
use super::provenance::{
    ANCHOR_FILE, AnchorFile, CODE_VERSION, LedgerArgs, Provenance, check_dataset, digest,
};
use super::{ExitStatus, print_json, print_lines, progress};

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// The job file (TOML)
    job: PathBuf,
    /// Read an input from another location: NAME=PATH_OR_URL (repeatable)
    #[arg(long = "input", value_name = "NAME=LOCATION", value_parser = parse_pair)]
    inputs: Vec<(String, String)>,
    /// Publish the dataset here instead of the job's output.path
    #[arg(long)]
    out: Option<String>,
    /// Replace the output if it already exists
    #[arg(long)]
    overwrite: bool,
    /// Read the pseudonymization key from this file instead of the job's key source
    #[arg(long, env = "EMRFLOW_KEY_FILE")]
    key_file: Option<String>,
    /// Hold up to this many MiB of surviving rows in memory so the inputs are read once
    /// (default: a quarter of the available memory; 0 reads them twice; a cluster run always
    /// reads them twice)
    #[arg(long, env = "EMRFLOW_CACHE_MIB", value_name = "MIB")]
    cache_mib: Option<u64>,
    #[command(flatten)]
    engine: EngineArgs,
    /// Print a JSON summary on stdout
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    ledger: LedgerArgs,
}

fn parse_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() && !v.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected NAME=LOCATION, got {s:?}")),
    }
}

/// Draws pipeline progress on a spinner.
pub(crate) struct BarProgress(pub(crate) ProgressBar);

impl Progress for BarProgress {
    fn stage(&self, name: &str) {
        self.0.set_message(name.to_string());
    }
    fn rows(&self, n: u64) {
        self.0.inc(n);
    }
}

pub(crate) async fn run(args: RunArgs) -> anyhow::Result<ExitStatus> {
    let job = Job::from_file(&args.job)?;
    let options = RunOptions {
        input_overrides: args.inputs.into_iter().collect::<BTreeMap<_, _>>(),
        output_override: args.out,
        overwrite: args.overwrite,
        key_file_override: args.key_file,
        cache_limit: match args.cache_mib {
            None => Some(pipeline::default_cache_limit()),
            Some(0) => None,
            Some(mib) => Some(mib << 20),
        },
        // Named by `run_anchored`, which knows which inputs are raw files.
        ..RunOptions::default()
    };
    let provenance = Provenance::open(&args.ledger).await?;
    let result = run_anchored(&job, &options, &args.engine, &provenance).await;
    provenance.close().await?;
    report(&result?, args.json)?;
    Ok(ExitStatus::Success)
}

/// A published, anchored dataset.
#[derive(Debug, Serialize)]
pub(crate) struct Published {
    #[serde(flatten)]
    pub(crate) summary: RunSummary,
    /// The dataset root (hex).
    pub(crate) root: String,
    /// The roots of its inputs, anchored as its parents.
    pub(crate) parents: Vec<String>,
    /// The receipt beside the dataset.
    pub(crate) anchor: String,
    /// Block height of the anchor.
    pub(crate) ledger_height: u64,
}

/// Runs a job (embedded or on a cluster) with a progress spinner, fingerprints what it staged,
/// anchors it (and its raw inputs) and only then publishes it: a job that fails anywhere,
/// anchoring included, publishes nothing and anchors nothing.
pub(crate) async fn run_anchored(
    job: &Job,
    options: &RunOptions,
    engine: &EngineArgs,
    provenance: &Provenance,
) -> anyhow::Result<Published> {
    let ctx = engine.context().await?;
    let bar = Arc::new(BarProgress(progress(&format!("job {}", job.name))));
    // Raw inputs are hashed while the job runs; emrflow datasets read as inputs are anchored
    // already and are not.
    let hash_inputs = job
        .inputs
        .iter()
        .filter(|(name, input)| {
            let raw = options.input_overrides.get(*name).unwrap_or(&input.path);
            pipeline::store::Location::resolve(&ctx, raw)
                .is_ok_and(|location| anchored_input(&location).is_none())
        })
        .map(|(name, _)| name.clone())
        .collect();
    let options = RunOptions {
        cache_limit: options.cache_limit.filter(|_| !engine.is_cluster()),
        hash_inputs,
        ..options.clone()
    };
    let staged = pipeline::stage_job(job, &options, &ctx, bar.as_ref()).await;
    let result = match staged {
        Ok(mut staged) => match anchor_staged(&ctx, &mut staged, provenance, &bar.0).await {
            Ok(anchored) => {
                bar.0.set_message("publishing");
                staged
                    .publish()
                    .await
                    .map_err(anyhow::Error::from)
                    .map(|summary| {
                        let (root, parents, anchor_height) = anchored;
                        Published {
                            anchor: format!("{}/{ANCHOR_FILE}", summary.output),
                            summary,
                            root,
                            parents,
                            ledger_height: anchor_height,
                        }
                    })
            }
            Err(e) => {
                staged.abort().await;
                Err(e)
            }
        },
        Err(e) => Err(e.into()),
    };
    bar.0.finish_and_clear();
    result.with_context(|| format!("job {} failed; nothing was published", job.name))
}

/// Fingerprints the staged dataset, anchors its inputs and itself, and stages
/// `fingerprint.json` and `anchor.json` beside it. Returns the root, the parents and the height.
async fn anchor_staged(
    ctx: &SessionContext,
    staged: &mut StagedRun,
    provenance: &Provenance,
    bar: &ProgressBar,
) -> anyhow::Result<(String, Vec<String>, u64)> {
    // The writers fingerprinted the rows as they encoded them (`emrflow verify` reads the
    // published files back and recomputes the same root).
    let fp = staged.fingerprint().clone();
    if fp.row_count != staged.summary().rows_out {
        bail!(
            "the staged dataset has {} rows, {} were written",
            fp.row_count,
            staged.summary().rows_out
        );
    }
    bar.set_message("anchoring");
    let phase = Instant::now();
    // Raw inputs were hashed while the job ran; they are anchored one after another, in the
    // manifest's order.
    let sources = staged.source_roots().await?;
    let summary = staged.summary();
    let mut parents = Vec::new();
    for input in &summary.manifest.inputs {
        let source = sources.get(&input.name).map(|root| Digest(*root));
        parents.push(input_root(ctx, provenance, input, source, summary).await?);
    }
    tracing::debug!(
        seconds = phase.elapsed().as_secs_f64(),
        "inputs hashed and anchored"
    );
    let phase = Instant::now();
    let target = pipeline::store::Location::resolve(ctx, &summary.output)?;
    let spec = AnchorSpec {
        kind: AnchorKind::Dataset,
        root: digest(&fp.root),
        row_count: fp.row_count,
        schema_hash: digest(&fp.schema_hash),
        location: target.url.to_string(),
        parents: parents.clone(),
        stage: "preprocess".to_string(),
        params_hash: Digest(pipeline::manifest::params_digest(
            &summary.manifest.to_json()?,
        )?),
        code_version: CODE_VERSION.to_string(),
    };
    let params_hash = spec.params_hash;
    let (receipt, existing) = provenance.anchor_once(Role::DataEngineer, spec).await?;
    if let Some(existing) = existing
        && existing.spec.params_hash != params_hash
    {
        // The ledger holds one anchor per root; publishing these rows under another manifest
        // would publish a dataset that fails its own verification.
        bail!(
            "these exact rows (root {}) were anchored at height {} with a different manifest \
             (other inputs, paths or job settings); publish them from the original job, or change \
             the job so its output differs",
            fp.root,
            existing.position.seq.0
        );
    }
    tracing::debug!(seconds = phase.elapsed().as_secs_f64(), "dataset anchored");
    let height = receipt.header.height.0;
    let file = AnchorFile::new(
        AnchorKind::Dataset,
        digest(&fp.root),
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
fn anchored_input(location: &pipeline::store::Location) -> Option<PathBuf> {
    location
        .local_path()
        .filter(|p| p.join(ANCHOR_FILE).is_file())
}

/// The anchored root of an input: the anchor of an emrflow dataset read as input, or the
/// source root of raw files (`source`, hashed while the job ran), anchored (stage `source`) if
/// it is new.
async fn input_root(
    ctx: &SessionContext,
    provenance: &Provenance,
    input: &pipeline::manifest::InputSpec,
    source: Option<Digest>,
    summary: &RunSummary,
) -> anyhow::Result<Digest> {
    let location = pipeline::store::Location::resolve(ctx, &input.location)?;
    // An emrflow dataset read as input is its anchored root, once its content is checked
    // against that anchor: a parent must be what the child was really made from.
    if let Some(dir) = anchored_input(&location) {
        let check = check_dataset(ctx, &dir, provenance).await?;
        check.ensure_matches(&dir)?;
        return Ok(check.anchor.root);
    }
    let Some(root) = source else {
        bail!("input {} was not hashed", input.name);
    };
    let listing = serde_json::to_vec(&input.files)?;
    let spec = AnchorSpec {
        kind: AnchorKind::Dataset,
        root,
        row_count: summary.rows_in.get(&input.name).copied().unwrap_or(0),
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

pub(crate) fn report(published: &Published, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(published);
    }
    let summary = &published.summary;
    let mut lines = vec![format!(
        "published {} rows to {} in {:.2}s",
        summary.rows_out, summary.output, summary.seconds
    )];
    for (input, n) in &summary.rows_in {
        lines.push(format!("  read {n} rows from {input}"));
    }
    for (reason, n) in &summary.rows_dropped {
        lines.push(format!("  dropped {n} rows ({reason})"));
    }
    lines.push(format!(
        "  dataset root {} anchored at height {} (receipt {})",
        published.root, published.ledger_height, published.anchor
    ));
    print_lines(&lines);
    Ok(())
}
