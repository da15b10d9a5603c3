//! Runs a job: reads the inputs, joins them, applies the PII policy, drops incomplete and
//! out-of-range rows, fits and applies normalization and encodings, guards the output against
//! PII, and stages Parquet plus a manifest for atomic publication. This module goes down the
//! stages once and owns what a run is (options, progress, summary, the staged result); each
//! stage is a module that builds its own piece of the plan and checks the job settings it
//! reads:
//!
//! | stage | module | plan piece |
//! |---|---|---|
//! | inputs | `inputs.rs` | one registered table per input (SQL where null strings are typed) |
//! | join | `join.rs` | the joined rows with a marker per join (SQL) |
//! | PII | `pii.rs` | each column dropped, generalized or kept (expressions); pseudonyms in pass 2 |
//! | ranges and dropna | `drop_reasons.rs` | the drop conditions, reason and keep predicate (expressions) |
//! | normalize | `normalize.rs` | pass 1's aggregates (SQL), pass 2's scaling (expressions) |
//! | encode | `categorical.rs` | pass 1's aggregate (SQL), pass 2's codes (expressions) |
//! | output | `output.rs` | pass 2's projection; the Parquet writers |
//!
//! `fit.rs` runs pass 1 over the stages' aggregates, and `held.rs` keeps rows in memory between
//! the passes. Every piece is a DataFusion plan over registered tables and emrflow's functions,
//! so the same plans run on any engine the caller's `SessionContext` points at.
//!
//! Two passes: the first counts rows per drop reason and fits the statistics and encodings on
//! the rows that survive; the second writes those rows transformed, scanning them for PII on the
//! way. When the caller allows it ([`RunOptions::cache_limit`], embedded runs), the first pass
//! keeps the surviving rows (joined, de-identified, not yet normalized) in memory, so the inputs
//! are read and parsed once and the second pass starts from memory; a job whose rows outgrow
//! the limit falls back to reading the inputs again, holding nothing beyond one batch per
//! partition.

mod categorical;
mod drop_reasons;
mod fhir;
mod fit;
mod held;
mod inputs;
mod join;
mod normalize;
mod output;
mod pii;
mod sniff;
pub mod sources;
mod sql;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use arrow::datatypes::{DataType, SchemaRef};
use datafusion::logical_expr::ident;
use datafusion::prelude::{DataFrame, SessionContext};
use serde::Serialize;

use self::drop_reasons::DropReasons;
use self::fit::{Fit, TAGGED_TABLE};
use self::held::KEPT_TABLE;
use self::inputs::{Input, InputHashing, diagnose_on_error};
use self::join::Joined;
use self::pii::Deidentified;
use crate::error::{Error, Result};
use crate::fingerprint::{Fingerprint, Hash32};
use crate::job::Job;
use crate::manifest::{ColumnSpec, MANIFEST_FILE, MANIFEST_VERSION, Manifest};
use crate::store::{Location, Staging};

pub use self::pii::{read_key_file, resolve_key};

/// How a job is run, beyond what the job file says.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Replace input locations by name (`--input visits=PATH`).
    pub input_overrides: BTreeMap<String, String>,
    /// Replace the output location (`--out PATH`).
    pub output_override: Option<String>,
    /// Replace an existing output.
    pub overwrite: bool,
    /// Read the pseudonymization key from this file instead of the job's key source.
    pub key_file_override: Option<String>,
    /// Bytes of surviving rows the run may hold in this process's memory between its passes, so
    /// it reads its inputs once. `None` reads them twice and holds nothing: the only choice
    /// when the plans run on a cluster, whose executors cannot see this process's memory.
    pub cache_limit: Option<u64>,
    /// The plans run on a cluster's executors. Their plan format does not carry a file scan's
    /// compression, so a compressed input is refused by name rather than misread there.
    pub on_cluster: bool,
    /// Inputs (by name) whose source roots ([`crate::fingerprint::source_root`], over the raw
    /// files' bytes) to compute while the job runs; [`StagedRun::source_roots`] hands them
    /// over. A single file's SHA-256 is one sequential stream that leaves the other cores
    /// idle, so it costs least alongside the passes.
    pub hash_inputs: Vec<String>,
}

/// A cache limit for an embedded run: a quarter of the memory this machine has available now
/// (2 GiB where that cannot be read).
pub fn default_cache_limit() -> u64 {
    let available = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kib| kib * 1024);
    available.map_or(2 << 30, |bytes| bytes / 4)
}

/// Receives progress; the binary draws it, tests ignore it. Library code never prints.
pub trait Progress: Send + Sync {
    /// A new stage began.
    fn stage(&self, name: &str);
    /// `n` more rows were written.
    fn rows(&self, n: u64);
}

/// Progress that goes nowhere.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn stage(&self, _name: &str) {}
    fn rows(&self, _n: u64) {}
}

/// What a run did.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    /// The job name.
    pub job: String,
    /// Rows read per input.
    pub rows_in: BTreeMap<String, u64>,
    /// Rows written.
    pub rows_out: u64,
    /// Rows dropped per reason.
    pub rows_dropped: BTreeMap<String, u64>,
    /// Where the dataset was published.
    pub output: String,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// The manifest that was published.
    #[serde(skip)]
    pub manifest: Manifest,
}

/// Runs `job` on `ctx` and publishes its dataset.
pub async fn run_job(
    job: &Job,
    options: &RunOptions,
    ctx: &SessionContext,
    progress: &dyn Progress,
) -> Result<RunSummary> {
    stage_job(job, options, ctx, progress)
        .await?
        .publish()
        .await
}

/// A dataset written and checked but not yet published: the caller may read it back (to
/// fingerprint and anchor it) and add files beside it before [`StagedRun::publish`] moves it
/// into place, or [`StagedRun::abort`] removes it.
#[derive(Debug)]
pub struct StagedRun {
    staging: Staging,
    summary: RunSummary,
    fingerprint: Fingerprint,
    hashing: InputHashing,
    started: Instant,
}

impl StagedRun {
    /// What the run did (`output` is where it will be published).
    pub fn summary(&self) -> &RunSummary {
        &self.summary
    }

    /// The source roots of the inputs [`RunOptions::hash_inputs`] named, by input name.
    pub async fn source_roots(&mut self) -> Result<BTreeMap<String, Hash32>> {
        self.hashing.finish().await
    }

    /// The fingerprint of the rows written, taken from the batches as the writers encoded them:
    /// the root reading the staged files back gives.
    pub fn fingerprint(&self) -> &Fingerprint {
        &self.fingerprint
    }

    /// The URL the staged dataset can be read from.
    pub fn staging_url(&self) -> String {
        self.staging.url()
    }

    /// Adds a small file beside the dataset (a fingerprint, a receipt).
    pub async fn put(&mut self, name: &str, bytes: Vec<u8>) -> Result<()> {
        self.staging.put(name, bytes).await
    }

    /// Moves the dataset into place.
    pub async fn publish(self) -> Result<RunSummary> {
        let output = self.staging.publish(MANIFEST_FILE).await?;
        tracing::debug!(
            seconds = self.started.elapsed().as_secs_f64(),
            "dataset published"
        );
        Ok(RunSummary {
            output,
            seconds: self.started.elapsed().as_secs_f64(),
            ..self.summary
        })
    }

    /// Removes everything staged.
    pub async fn abort(self) {
        self.staging.abort().await;
    }
}

/// The view of the joined rows the drop stage and pass 2 read from.
const JOINED_TABLE: &str = "__emr_src";

/// A job's plan pieces, stage by stage, once its inputs' schemas are known.
#[derive(Debug)]
struct Plan {
    joined: Joined,
    columns: Deidentified,
    drops: DropReasons,
    /// The label column's type, when the job has a label.
    label_type: Option<DataType>,
}

impl Plan {
    /// Builds every stage's piece, checking the job's settings against the columns each stage
    /// sees; the first setting that names a missing or unfit column is the error.
    fn build(job: &Job, inputs: &BTreeMap<String, Input>) -> Result<Self> {
        let joined = Joined::build(job, inputs)?;
        let columns = Deidentified::build(job, &joined.data_columns())?;
        normalize::check(job, &columns)?;
        categorical::check(job, &columns)?;
        drop_reasons::check(job, &columns)?;
        output::check(job, &columns)?;
        let drops = DropReasons::build(job, joined.markers(), &columns);
        let label_type = match &job.label {
            Some(l) => Some(columns.type_of(l, "label")?),
            None => None,
        };
        Ok(Self {
            joined,
            columns,
            drops,
            label_type,
        })
    }

    /// The joined rows' de-identified columns and join markers, the rows the drop checks read:
    /// pseudonymized columns are still in clear. Only the rows written are pseudonymized
    /// ([`output::project`]): a held run then keeps the short originals in memory rather than
    /// 64-character pseudonyms (in this process only; nothing is written before pass 2), and
    /// no run hashes a row it drops.
    async fn checked_rows(&self, ctx: &SessionContext) -> Result<DataFrame> {
        let mut select = self.columns.select.clone();
        select.extend(self.joined.markers().iter().map(|m| ident(&m.column)));
        Ok(ctx.table(JOINED_TABLE).await?.select(select)?)
    }

    /// Registers the joined rows and the tagged rows pass 1 reads.
    async fn register(&self, ctx: &SessionContext, job: &Job) -> Result<()> {
        let joined = ctx.sql(&self.joined.sql(job)).await?;
        ctx.register_table(JOINED_TABLE, joined.into_view())?;
        let tagged = self.drops.tagged(self.checked_rows(ctx).await?)?;
        ctx.register_table(TAGGED_TABLE, tagged.into_view())?;
        Ok(())
    }

    /// The rows pass 2 writes, before the output stage transforms them: from memory when pass 1
    /// held them, else read, joined and checked again.
    async fn kept_rows(&self, ctx: &SessionContext, held: bool) -> Result<DataFrame> {
        if held {
            Ok(ctx.table(KEPT_TABLE).await?)
        } else {
            self.drops.kept(self.checked_rows(ctx).await?)
        }
    }
}

/// The type SQL's `VARCHAR` names in `ctx`'s session: the text type pass 1 fitted categories
/// and join keys as, which pass 2 pseudonymizes too.
fn text_type(ctx: &SessionContext) -> DataType {
    if ctx
        .copied_config()
        .options()
        .sql_parser
        .map_string_types_to_utf8view
    {
        DataType::Utf8View
    } else {
        DataType::Utf8
    }
}

/// Runs `job` on `ctx` and stages its dataset for publication.
pub async fn stage_job(
    job: &Job,
    options: &RunOptions,
    ctx: &SessionContext,
    progress: &dyn Progress,
) -> Result<StagedRun> {
    #[allow(clippy::disallowed_methods)] // phase timings in the debug log
    let started = Instant::now();
    inputs::check_overrides(job, &options.input_overrides)?;
    let key = resolve_key(job, options.key_file_override.as_deref())?;
    let key_id = match &key {
        Some(key) => Some(pii::install_key(ctx, key)?),
        None => None,
    };

    let target_raw = options
        .output_override
        .clone()
        .unwrap_or_else(|| job.output.path.clone());
    let target = Location::resolve(ctx, &target_raw)?;
    // Refuse early, before any work, if the output exists (or, to be overwritten, is not an
    // emrflow dataset).
    if options.overwrite {
        target.check_replaceable(MANIFEST_FILE).await?;
    } else if target.exists().await? {
        return Err(Error::OutputExists(target_raw));
    }

    progress.stage("reading inputs");
    let inputs = inputs::register_inputs(job, &options.input_overrides, ctx).await?;
    if options.on_cluster {
        inputs::refuse_compressed(&inputs)?;
    }
    let hashing = InputHashing::start(ctx, &inputs, &options.hash_inputs);
    let plan = Plan::build(job, &inputs)?;
    tracing::debug!(
        seconds = started.elapsed().as_secs_f64(),
        "inputs registered"
    );
    let mut held_bytes = 0;
    let mut key_counts = BTreeMap::new();
    if let Some(limit) = options.cache_limit {
        #[allow(clippy::disallowed_methods)] // phase timings in the debug log
        let phase = Instant::now();
        (held_bytes, key_counts) =
            diagnose_on_error(held::hold_lookups(ctx, job, &inputs, limit).await, &inputs).await?;
        tracing::debug!(
            bytes = held_bytes,
            seconds = phase.elapsed().as_secs_f64(),
            "lookup inputs held in memory"
        );
    }
    plan.register(ctx, job).await?;

    // Pass 1: drop reasons, fitted statistics, encodings, and the right-hand inputs' counts.
    progress.stage("fitting statistics");
    #[allow(clippy::disallowed_methods)] // phase timings in the debug log
    let phase = Instant::now();
    let reasons = plan.drops.reasons();
    let held = match options.cache_limit {
        Some(limit) => {
            let left = limit.saturating_sub(held_bytes);
            diagnose_on_error(held::hold_kept(ctx, reasons.len(), left).await, &inputs).await?
        }
        None => None,
    };
    let mut fit =
        diagnose_on_error(fit::fit(ctx, job, &reasons, held.is_some()).await, &inputs).await?;
    if let Some(dropped) = &held {
        fit.add_dropped(&reasons, dropped);
    }
    tracing::debug!(
        seconds = phase.elapsed().as_secs_f64(),
        "pass 1: fitted statistics"
    );
    #[allow(clippy::disallowed_methods)] // phase timings in the debug log
    let phase = Instant::now();
    let mut rows_in = BTreeMap::new();
    rows_in.insert(job.base_input().to_string(), fit.total);
    rows_in.extend(join::check_keys(ctx, job, &inputs, &key_counts).await?);
    inputs::check_not_empty(&rows_in, &inputs)?;
    fit::check_kept(&fit)?;
    if let (Some(label), Some(label_type)) = (&job.label, &plan.label_type) {
        let classes = job.label_classes();
        if let Err(e) = fit::check_label(label, label_type, &classes, &fit) {
            return Err(inputs::locate_label(&inputs, label, &classes)
                .await
                .unwrap_or(e));
        }
    }
    tracing::debug!(seconds = phase.elapsed().as_secs_f64(), "join keys checked");

    // Pass 2: write the kept rows, transformed, into staging, scanning for PII.
    progress.stage("writing dataset");
    let kept = plan.kept_rows(ctx, held.is_some()).await?;
    let df = output::project(kept, &plan.columns, &fit, &text_type(ctx))?;
    let out_schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
    let scanned = pii::scanned_columns(&out_schema, &plan.columns.pseudonymized);
    pii::guard_schema(job, &out_schema)?;
    let mut staging = Staging::begin(target, options.overwrite, MANIFEST_FILE).await?;
    #[allow(clippy::disallowed_methods)] // phase timings in the debug log
    let phase = Instant::now();
    let props = output::writer_properties(&plan.columns.pseudonymized, job.row_key.as_deref());
    let written = match output::write_partitions(df, &mut staging, &scanned, &props, progress).await
    {
        Ok(w) => w,
        Err(e) => {
            staging.abort().await;
            return Err(diagnose_on_error::<()>(Err(e), &inputs)
                .await
                .err()
                .unwrap_or_else(|| Error::invalid("output", "writing failed")));
        }
    };
    if held.is_some() {
        ctx.deregister_table(KEPT_TABLE)?;
    }
    tracing::debug!(
        seconds = phase.elapsed().as_secs_f64(),
        "pass 2: dataset written"
    );
    if let Err(e) = written.scanner.verdict() {
        staging.abort().await;
        return Err(e);
    }
    if written.rows != fit.kept {
        staging.abort().await;
        return Err(Error::invalid(
            "output",
            format!(
                "wrote {} rows but {} were kept; the inputs changed during the run",
                written.rows, fit.kept
            ),
        ));
    }

    let manifest = manifest(
        job,
        &plan,
        &inputs,
        &out_schema,
        &fit,
        &rows_in,
        &written,
        key_id,
        scanned,
    )?;
    let bytes = manifest.to_json()?;
    if let Err(e) = staging.put(MANIFEST_FILE, bytes).await {
        staging.abort().await;
        return Err(e);
    }
    Ok(StagedRun {
        staging,
        summary: RunSummary {
            job: job.name.clone(),
            rows_in,
            rows_out: written.rows,
            rows_dropped: fit.dropped,
            output: target_raw,
            seconds: started.elapsed().as_secs_f64(),
            manifest,
        },
        fingerprint: written.fingerprint,
        hashing,
        started,
    })
}

/// The manifest of a run that wrote `written`.
#[allow(clippy::too_many_arguments)] // one value from each stage, gathered once
fn manifest(
    job: &Job,
    plan: &Plan,
    inputs: &BTreeMap<String, Input>,
    schema: &SchemaRef,
    fit: &Fit,
    rows_in: &BTreeMap<String, u64>,
    written: &output::Written,
    key_id: Option<String>,
    scanned: Vec<String>,
) -> Result<Manifest> {
    Ok(Manifest {
        format_version: MANIFEST_VERSION,
        job: job.name.clone(),
        created_by: format!("emrflow {}", env!("CARGO_PKG_VERSION")),
        schema: schema
            .fields()
            .iter()
            .map(|f| ColumnSpec {
                name: f.name().clone(),
                data_type: f.data_type().to_string(),
                nullable: f.is_nullable(),
            })
            .collect(),
        rows_read: rows_in.clone(),
        rows_out: written.rows,
        rows_dropped: fit.dropped.clone(),
        label: job.label.clone(),
        row_key: job.row_key.clone(),
        features: output::features(job, &plan.columns.pseudonymized, schema, fit)?,
        normalization: fit.normalizers.clone(),
        encodings: fit.encodings.clone(),
        pii: pii::report(job, key_id, scanned),
        inputs: inputs.iter().map(|(name, i)| i.spec(name)).collect(),
        files: written.files.clone(),
    })
}

#[cfg(test)]
mod plans_test;
