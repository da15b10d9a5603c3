//! Runs a job: reads the inputs, joins them, applies the PII policy, drops incomplete and
//! out-of-range rows, fits and applies normalization and encodings, guards the output against
//! PII, and publishes Parquet plus a manifest atomically. Every stage is a DataFusion plan (SQL
//! over registered tables and emrflow's functions), so the same plans run on any engine the
//! caller's `SessionContext` points at.
//!
//! Two passes: the first counts rows per drop reason and fits the statistics and encodings on
//! the rows that survive; the second writes those rows transformed, scanning them for PII on the
//! way. When the caller allows it ([`RunOptions::cache_limit`], embedded runs), the first pass
//! keeps the surviving rows (joined, de-identified, not yet normalized) in memory, so the inputs
//! are read and parsed once and the second pass starts from memory; a job whose rows outgrow
//! the limit falls back to reading the inputs again, holding nothing beyond one batch per
//! partition.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::{filter_record_batch, is_null};
use arrow::datatypes::{DataType, Field, Float64Type, Int32Type, Int64Type, Schema, SchemaRef};
use datafusion::datasource::MemTable;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::prelude::{CsvReadOptions, DataFrame, ParquetReadOptions, SessionContext};
use futures::StreamExt;
use object_store::ObjectStoreExt;
use object_store::buffered::BufWriter;
use parquet::arrow::AsyncArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use regex::Regex;
use serde::Serialize;

use crate::csvcheck;
use crate::error::{Error, Result};
use crate::fingerprint::{
    Fingerprint, Hash32, PartHasher, PartState, RowsFingerprint, start_source_root,
};
use crate::guard::PiiScanner;
use crate::job::{InputFormat, Job};
use crate::manifest::{
    ColumnSpec, Encoding, FeatureKind, FeatureSpec, InputFile, InputSpec, MANIFEST_FILE,
    MANIFEST_VERSION, Manifest, Normalizer, PiiReport,
};
use crate::store::{Location, Sink, Staging};
use crate::udf::{self, AGE_FN, CATEGORY_INDEX_FN, FIRST_TRUE_FN, PSEUDONYM_FN};

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

/// Reads the pseudonymization key from the job's source (or the override file). The key is the
/// file's bytes without a trailing newline, or the variable's value.
pub fn resolve_key(job: &Job, key_file_override: Option<&str>) -> Result<Option<Vec<u8>>> {
    if job.pii.pseudonymize.is_empty() {
        return Ok(None);
    }
    let from_file = |path: &str| -> Result<Vec<u8>> {
        let mut bytes = std::fs::read(path)
            .map_err(|e| Error::KeyMissing(format!("cannot read key file {path}: {e}")))?;
        while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            bytes.pop();
        }
        Ok(bytes)
    };
    let key = if let Some(path) = key_file_override {
        from_file(path)?
    } else if let Some(var) = &job.pii.key_env {
        match std::env::var(var) {
            Ok(v) => v.into_bytes(),
            Err(_) => match &job.pii.key_file {
                Some(path) => from_file(path)?,
                None => {
                    return Err(Error::KeyMissing(format!(
                        "environment variable {var} (pii.key_env) is not set"
                    )));
                }
            },
        }
    } else if let Some(path) = &job.pii.key_file {
        from_file(path)?
    } else {
        return Err(Error::KeyMissing("the job names no key source".into()));
    };
    if key.len() < 16 {
        return Err(Error::KeyMissing(format!(
            "the key has {} bytes; at least 16 are required",
            key.len()
        )));
    }
    Ok(Some(key))
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

/// Source roots being computed in the background, by input name. Dropping it stops what has
/// not started.
#[derive(Debug, Default)]
struct InputHashing(Vec<(String, tokio::task::JoinHandle<Result<Hash32>>)>);

impl InputHashing {
    fn start(ctx: &SessionContext, inputs: &BTreeMap<String, Input>, names: &[String]) -> Self {
        let mut tasks = Vec::new();
        for name in names {
            let Some(input) = inputs.get(name) else {
                continue;
            };
            let files: Vec<String> = input
                .files
                .iter()
                .map(|(p, _)| input.location.url_of(p))
                .collect();
            let task = match start_source_root(ctx, &files) {
                Ok(root) => tokio::spawn(root),
                Err(e) => tokio::spawn(async move { Err(e) }),
            };
            tasks.push((name.clone(), task));
        }
        Self(tasks)
    }
}

impl Drop for InputHashing {
    fn drop(&mut self) {
        for (_, task) in &self.0 {
            task.abort();
        }
    }
}

impl StagedRun {
    /// What the run did (`output` is where it will be published).
    pub fn summary(&self) -> &RunSummary {
        &self.summary
    }

    /// The source roots of the inputs [`RunOptions::hash_inputs`] named, by input name.
    pub async fn source_roots(&mut self) -> Result<BTreeMap<String, Hash32>> {
        let mut roots = BTreeMap::new();
        for (name, task) in std::mem::take(&mut self.hashing.0) {
            let root = task
                .await
                .map_err(|e| Error::Fingerprint(format!("hashing input {name} stopped: {e}")))??;
            roots.insert(name, root);
        }
        Ok(roots)
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

/// Runs `job` on `ctx` and stages its dataset for publication.
pub async fn stage_job(
    job: &Job,
    options: &RunOptions,
    ctx: &SessionContext,
    progress: &dyn Progress,
) -> Result<StagedRun> {
    #[allow(clippy::disallowed_methods)] // phase timings in the debug log
    let started = Instant::now();
    for name in options.input_overrides.keys() {
        if !job.inputs.contains_key(name) {
            return Err(Error::invalid(
                format!("--input {name}"),
                "the job has no input of that name",
            ));
        }
    }
    let key = resolve_key(job, options.key_file_override.as_deref())?;
    let key_id = key.as_ref().map(|k| {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(k))
    });
    if let Some(key) = &key {
        ctx.state_ref()
            .write()
            .config_mut()
            .options_mut()
            .set("emrflow.pseudonym_key", &hex::encode(key))?;
    }

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
    let inputs = register_inputs(job, options, ctx).await?;
    let hashing = InputHashing::start(ctx, &inputs, &options.hash_inputs);
    let plan = Plan::build(job, &inputs)?;
    tracing::debug!(
        seconds = started.elapsed().as_secs_f64(),
        "inputs registered"
    );
    let mut cached_bytes = 0;
    let mut key_counts = BTreeMap::new();
    if let Some(limit) = options.cache_limit {
        #[allow(clippy::disallowed_methods)] // phase timings in the debug log
        let phase = Instant::now();
        (cached_bytes, key_counts) =
            diagnose_on_error(cache_lookups(ctx, job, &inputs, limit).await, &inputs).await?;
        tracing::debug!(
            bytes = cached_bytes,
            seconds = phase.elapsed().as_secs_f64(),
            "lookup inputs held in memory"
        );
    }
    for (sql, name) in [
        (&plan.src_sql, "__emr_src"),
        (&plan.tagged_sql, "__emr_tagged"),
    ] {
        let df = ctx.sql(sql).await?;
        ctx.register_table(name, df.into_view())?;
    }

    // Pass 1: drop reasons, fitted statistics, encodings, and the right-hand inputs' counts.
    progress.stage("fitting statistics");
    #[allow(clippy::disallowed_methods)] // phase timings in the debug log
    let phase = Instant::now();
    let held = match options.cache_limit {
        Some(limit) => {
            let left = limit.saturating_sub(cached_bytes);
            diagnose_on_error(cache_kept(ctx, &plan, left).await, &inputs).await?
        }
        None => None,
    };
    let mut fit = diagnose_on_error(fit(ctx, &plan, held.is_some()).await, &inputs).await?;
    if let Some(dropped) = &held {
        for (reason, n) in plan.reasons.iter().zip(dropped) {
            if *n > 0 {
                fit.dropped.insert(reason.clone(), *n);
                fit.total += n;
            }
        }
    }
    tracing::debug!(
        seconds = phase.elapsed().as_secs_f64(),
        "pass 1: fitted statistics"
    );
    #[allow(clippy::disallowed_methods)] // phase timings in the debug log
    let phase = Instant::now();
    let mut rows_in = BTreeMap::new();
    rows_in.insert(job.base_input().to_string(), fit.total);
    for (j, join) in job.join.iter().enumerate() {
        let (n, d) = match key_counts.get(&join.right) {
            Some(counts) => *counts,
            None => {
                let table = &inputs[&join.right].table;
                let sql = format!(
                    "SELECT count(*) AS n, count(DISTINCT {k}) AS d FROM {table}",
                    k = ident(&join.on)
                );
                let batches = diagnose_on_error(collect(ctx, &sql).await, &inputs).await?;
                (int_at(&batches, 0), int_at(&batches, 1))
            }
        };
        if n != d {
            return Err(Error::invalid(
                format!("join[{j}].on"),
                format!(
                    "{} is not unique in input {} ({} duplicate keys)",
                    join.on,
                    join.right,
                    n - d
                ),
            ));
        }
        rows_in.insert(join.right.clone(), n);
    }
    for (name, n) in &rows_in {
        if *n == 0 {
            return Err(Error::InputEmpty {
                input: name.clone(),
                path: inputs[name].location.raw.clone(),
            });
        }
    }
    if fit.kept == 0 {
        return Err(Error::invalid(
            "dropna",
            format!("every row was dropped ({})", describe_drops(&fit.dropped)),
        ));
    }
    if let Some(label) = &job.label {
        check_label(label, &fit)?;
    }
    tracing::debug!(seconds = phase.elapsed().as_secs_f64(), "join keys checked");

    // Pass 2: write the kept rows, transformed, into staging, scanning for PII.
    progress.stage("writing dataset");
    let final_sql = match held {
        Some(_) => plan.final_sql(&fit, &format!("SELECT * FROM {KEPT_TABLE}")),
        None => plan.final_sql(&fit, &plan.kept_sql),
    };
    let df = ctx.sql(&final_sql).await?;
    let out_schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
    let scanned: Vec<String> = out_schema
        .fields()
        .iter()
        .filter(|f| {
            matches!(
                f.data_type(),
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
            )
        })
        .map(|f| f.name().clone())
        .filter(|n| !plan.pseudonymized_out.contains(n))
        .collect();
    guard_schema(job, &out_schema)?;
    let mut staging = Staging::begin(target, options.overwrite, MANIFEST_FILE).await?;
    #[allow(clippy::disallowed_methods)] // phase timings in the debug log
    let phase = Instant::now();
    let props = writer_properties(&plan.pseudonymized_out, job.row_key.as_deref());
    let written = match write_partitions(df, &mut staging, &scanned, &props, progress).await {
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

    let manifest = Manifest {
        format_version: MANIFEST_VERSION,
        job: job.name.clone(),
        created_by: format!("emrflow {}", env!("CARGO_PKG_VERSION")),
        schema: out_schema
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
        features: plan.features(job, &out_schema, &fit)?,
        normalization: fit.normalizers.clone(),
        encodings: fit.encodings.clone(),
        pii: PiiReport {
            dropped: job.pii.drop.clone(),
            pseudonymized: job.pii.pseudonymize.clone(),
            generalized: job
                .pii
                .age
                .iter()
                .map(|a| (a.dob.clone(), a.name.clone()))
                .collect(),
            key_id,
            scanned,
        },
        inputs: inputs
            .iter()
            .map(|(name, i)| InputSpec {
                name: name.clone(),
                location: i.location.raw.clone(),
                format: i.format.as_str().to_string(),
                files: i
                    .files
                    .iter()
                    .map(|(p, size)| InputFile {
                        path: i.location.url_of(p),
                        size: *size,
                    })
                    .collect(),
            })
            .collect(),
        files: written.files.clone(),
    };
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

/// A registered input.
#[derive(Debug)]
struct Input {
    table: String,
    location: Location,
    format: InputFormat,
    files: Vec<(object_store::path::Path, u64)>,
    schema: SchemaRef,
    delimiter: u8,
    nulls: Option<Regex>,
}

/// Opens every input at once, each on its own task: inferring a CSV's column types parses its
/// first rows, which would otherwise happen one file after another while other cores wait. An
/// error is reported for the first input (in the job's order) that has one.
async fn register_inputs(
    job: &Job,
    options: &RunOptions,
    ctx: &SessionContext,
) -> Result<BTreeMap<String, Input>> {
    let tasks: Vec<_> = job
        .inputs
        .iter()
        .enumerate()
        .map(|(i, (name, cfg))| {
            let raw = options
                .input_overrides
                .get(name)
                .unwrap_or(&cfg.path)
                .clone();
            let default_format = job.format_of(name);
            let (ctx, name, cfg) = (ctx.clone(), name.clone(), cfg.clone());
            tokio::spawn(
                async move { open_input(&ctx, i, &name, &cfg, &raw, default_format).await },
            )
        })
        .collect();
    let mut out = BTreeMap::new();
    for task in tasks {
        let (name, input) = task
            .await
            .map_err(|e| Error::invalid("inputs", format!("opening an input failed: {e}")))??;
        out.insert(name, input);
    }
    Ok(out)
}

/// Resolves, lists and (for CSV) types input number `i`, and registers it as `__emr_in_{i}`.
async fn open_input(
    ctx: &SessionContext,
    i: usize,
    name: &str,
    cfg: &crate::job::InputConfig,
    raw: &str,
    default_format: InputFormat,
) -> Result<(String, Input)> {
    let location = Location::resolve(ctx, raw)?;
    let files = location.files().await?;
    if files.is_empty() {
        return Err(Error::InputMissing {
            input: name.to_string(),
            location: raw.to_string(),
        });
    }
    let format = match cfg.format {
        Some(f) => f,
        None if raw.ends_with(".parquet") || raw.ends_with(".parq") => InputFormat::Parquet,
        None => default_format,
    };
    for (path, size) in &files {
        if *size == 0 {
            return Err(Error::InputEmpty {
                input: name.to_string(),
                path: location.url_of(path),
            });
        }
    }
    let table = format!("__emr_in_{i}");
    let url = location.table_url();
    let delimiter = cfg.delimiter.map_or(b',', |c| c as u8);
    let nulls = null_regex(name, &cfg.null_values)?;
    let df = match format {
        InputFormat::Csv => {
            let read = |schema: Option<Schema>| {
                read_csv(
                    ctx,
                    url.clone(),
                    schema,
                    delimiter,
                    nulls.as_str().to_string(),
                )
            };
            let inferred = match read(None).await {
                Ok(df) => df,
                Err(e) => {
                    let probe = Input {
                        table: table.clone(),
                        location: location.clone(),
                        format,
                        files: files.clone(),
                        schema: Arc::new(Schema::empty()),
                        delimiter,
                        nulls: Some(nulls.clone()),
                    };
                    return Err(diagnose(e.into(), &[&probe]).await);
                }
            };
            let schema = override_types(name, inferred.schema().as_arrow(), &cfg.types)?;
            if cfg.null_values.is_empty() {
                read(Some(schema)).await?
            } else {
                // The engine's CSV reader honours null strings only while inferring types, so
                // such inputs are read as text and typed here, with the null strings mapped
                // to null first.
                let text = Schema::new(
                    schema
                        .fields()
                        .iter()
                        .map(|f| Field::new(f.name(), DataType::Utf8, true))
                        .collect::<Vec<_>>(),
                );
                let raw = read(Some(text)).await?;
                let raw_table = format!("{table}_text");
                ctx.register_table(raw_table.as_str(), raw.into_view())?;
                let nulls_sql: Vec<String> = cfg.null_values.iter().map(|v| literal(v)).collect();
                let cols: Vec<String> = schema
                    .fields()
                    .iter()
                    .map(|f| {
                        let c = ident(f.name());
                        let value = match f.data_type() {
                            DataType::Utf8 => c.clone(),
                            t => format!("arrow_cast({c}, {})", literal(&t.to_string())),
                        };
                        format!(
                            "CASE WHEN {c} IN ({}) THEN NULL ELSE {value} END AS {c}",
                            nulls_sql.join(", ")
                        )
                    })
                    .collect();
                ctx.sql(&format!("SELECT {} FROM {raw_table}", cols.join(", ")))
                    .await?
            }
        }
        InputFormat::Parquet => {
            if !cfg.types.is_empty() {
                return Err(Error::invalid(
                    format!("inputs.{name}.types"),
                    "Parquet inputs carry their own types",
                ));
            }
            ctx.read_parquet(url, ParquetReadOptions::default().file_extension(""))
                .await?
        }
    };
    let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
    if schema.fields().is_empty() {
        return Err(Error::InputEmpty {
            input: name.to_string(),
            path: raw.to_string(),
        });
    }
    ctx.register_table(table.as_str(), df.into_view())?;
    Ok((
        name.to_string(),
        Input {
            table,
            location,
            format,
            files,
            schema,
            delimiter,
            nulls: Some(nulls),
        },
    ))
}

/// The empty field and every declared null string, matched whole.
fn null_regex(input: &str, values: &[String]) -> Result<Regex> {
    let alts: Vec<String> = std::iter::once(String::new())
        .chain(values.iter().map(|v| regex::escape(v)))
        .collect();
    Regex::new(&format!("^(?:{})$", alts.join("|")))
        .map_err(|e| Error::invalid(format!("inputs.{input}.null_values"), e.to_string()))
}

async fn read_csv(
    ctx: &SessionContext,
    url: String,
    schema: Option<Schema>,
    delimiter: u8,
    nulls: String,
) -> datafusion::error::Result<DataFrame> {
    let mut opts = CsvReadOptions::new()
        .has_header(true)
        .delimiter(delimiter)
        .file_extension("")
        .schema_infer_max_records(10_000)
        .null_regex(Some(nulls));
    if let Some(s) = &schema {
        opts = opts.schema(s);
    }
    ctx.read_csv(url, opts).await
}

fn override_types(
    input: &str,
    inferred: &Schema,
    types: &BTreeMap<String, crate::job::ColumnType>,
) -> Result<Schema> {
    for col in types.keys() {
        if inferred.field_with_name(col).is_err() {
            return Err(Error::MissingColumn {
                column: col.clone(),
                field: format!("inputs.{input}.types"),
                available: names(inferred),
            });
        }
    }
    Ok(Schema::new(
        inferred
            .fields()
            .iter()
            .map(|f| {
                let t = types
                    .get(f.name())
                    .map_or_else(|| f.data_type().clone(), |t| t.arrow());
                Field::new(f.name(), t, true)
            })
            .collect::<Vec<_>>(),
    ))
}

fn names(schema: &Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Quotes an identifier for SQL.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes a string literal for SQL.
fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// A float literal that round-trips exactly.
fn float(x: f64) -> String {
    format!("CAST({x:?} AS DOUBLE)")
}

/// The SQL of a job, built once its inputs' schemas are known.
#[derive(Debug)]
struct Plan {
    src_sql: String,
    /// The joined rows with their drop reason; pseudonymized columns are still in clear, and
    /// only the rows written are pseudonymized ([`Plan::final_sql`]): a held run then keeps
    /// the short originals in memory rather than 64-character pseudonyms (in this process
    /// only; nothing is written before pass 2), and no run hashes a row it drops.
    tagged_sql: String,
    /// The rows pass 2 keeps: `__emr_tagged`'s rows whose reason is NULL, without the reason.
    kept_sql: String,
    /// Drop reasons by the number `__emr_reason` holds.
    reasons: Vec<String>,
    /// Output columns in order with their base expression over `__emr_tagged`'s columns.
    outputs: Vec<OutputColumn>,
    pseudonymized_out: Vec<String>,
    minmax: Vec<String>,
    zscore: Vec<String>,
    encode: Vec<String>,
    label: Option<String>,
    label_type: Option<DataType>,
}

#[derive(Debug, Clone)]
struct OutputColumn {
    name: String,
    data_type: DataType,
}

impl Plan {
    fn build(job: &Job, inputs: &BTreeMap<String, Input>) -> Result<Self> {
        // Columns of the joined rows, each owned by the input alias it comes from.
        let base = job.base_input();
        let mut columns: Vec<(String, String, DataType)> = Vec::new(); // (alias, name, type)
        let mut aliases: BTreeMap<&str, String> = BTreeMap::new();
        aliases.insert(base, "t0".into());
        for f in inputs[base].schema.fields() {
            columns.push(("t0".into(), f.name().clone(), f.data_type().clone()));
        }
        let mut from = format!("{} t0", inputs[base].table);
        let mut join_markers = Vec::new();
        for (j, join) in job.join.iter().enumerate() {
            let alias = format!("t{}", j + 1);
            let right = &inputs[&join.right];
            let Some(left_col) = columns.iter().find(|c| c.1 == join.on).cloned() else {
                return Err(Error::MissingColumn {
                    column: join.on.clone(),
                    field: format!("join[{j}].on"),
                    available: columns
                        .iter()
                        .map(|c| c.1.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            };
            if right.schema.field_with_name(&join.on).is_err() {
                return Err(Error::MissingColumn {
                    column: join.on.clone(),
                    field: format!("join[{j}].on (input {})", join.right),
                    available: names(&right.schema),
                });
            }
            // Every row of the left side is kept, so this is a left join; it is written as the
            // right input RIGHT JOIN the rows so far because DataFusion builds its hash table
            // from the join's left input when it has no statistics to choose by (CSV inputs),
            // and the table to hold in memory is the lookup table, not the stream of visits.
            let left_side = if j == 0 { from } else { format!("({from})") };
            from = format!(
                "{} {alias} RIGHT JOIN {left_side} ON {}.{} = {alias}.{}",
                right.table,
                left_col.0,
                ident(&join.on),
                ident(&join.on)
            );
            let marker = format!("__emr_join_{j}");
            join_markers.push((
                marker.clone(),
                format!("join: no matching {} row", join.right),
            ));
            columns.push((alias.clone(), join.on.clone(), DataType::Null));
            let last = columns.len() - 1;
            columns[last].1 = marker;
            for f in right.schema.fields() {
                if f.name() == &join.on {
                    continue;
                }
                if columns.iter().any(|c| &c.1 == f.name()) {
                    return Err(Error::invalid(
                        format!("join[{j}]"),
                        format!(
                            "column {} exists in {} and in an earlier input",
                            f.name(),
                            join.right
                        ),
                    ));
                }
                columns.push((alias.clone(), f.name().clone(), f.data_type().clone()));
            }
            aliases.insert(&join.right, alias);
        }
        let src_select: Vec<String> = columns
            .iter()
            .filter(|(_, name, _)| !never_read(job, name))
            .map(|(alias, name, _)| match name.strip_prefix("__emr_join_") {
                Some(j) => {
                    let on = &job.join[j.parse::<usize>().unwrap_or(0)].on;
                    format!("{alias}.{} AS {}", ident(on), ident(name))
                }
                None => format!("{alias}.{}", ident(name)),
            })
            .collect();
        let src_sql = format!("SELECT {} FROM {from}", src_select.join(", "));
        let data_cols: Vec<(String, DataType)> = columns
            .iter()
            .filter(|c| !c.1.starts_with("__emr_join_"))
            .map(|c| (c.1.clone(), c.2.clone()))
            .collect();
        let available = data_cols
            .iter()
            .map(|c| c.0.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let require = |col: &str, field: &str| -> Result<DataType> {
            data_cols
                .iter()
                .find(|c| c.0 == col)
                .map(|c| c.1.clone())
                .ok_or_else(|| Error::MissingColumn {
                    column: col.to_string(),
                    field: field.to_string(),
                    available: available.clone(),
                })
        };
        for c in &job.pii.drop {
            require(c, "pii.drop")?;
        }
        for c in &job.pii.pseudonymize {
            require(c, "pii.pseudonymize")?;
        }
        if let Some(age) = &job.pii.age {
            for (c, f) in [(&age.dob, "pii.age.dob"), (&age.at, "pii.age.at")] {
                let t = require(c, f)?;
                if t != DataType::Date32 {
                    return Err(Error::invalid(
                        f,
                        format!("column {c} is {t}, not a date (YYYY-MM-DD)"),
                    ));
                }
            }
            if data_cols.iter().any(|c| c.0 == age.name) {
                return Err(Error::invalid(
                    "pii.age.as",
                    format!("column {} already exists", age.name),
                ));
            }
        }

        // Output columns (base expressions, before normalization and encoding).
        let dropped = |c: &str| {
            job.pii.drop.iter().any(|d| d == c) || job.pii.age.as_ref().is_some_and(|a| a.dob == c)
        };
        let mut tagged_select: Vec<String> = Vec::new();
        let mut outputs = Vec::new();
        let mut pseudonymized_out = Vec::new();
        for (name, t) in &data_cols {
            if let Some(age) = &job.pii.age
                && &age.dob == name
            {
                tagged_select.push(format!(
                    "{AGE_FN}({}, {}) AS {}",
                    ident(&age.dob),
                    ident(&age.at),
                    ident(&age.name)
                ));
                outputs.push(OutputColumn {
                    name: age.name.clone(),
                    data_type: DataType::Int64,
                });
                continue;
            }
            if dropped(name) {
                continue;
            }
            if job.pii.pseudonymize.contains(name) {
                tagged_select.push(ident(name));
                pseudonymized_out.push(name.clone());
                outputs.push(OutputColumn {
                    name: name.clone(),
                    data_type: DataType::Utf8,
                });
            } else {
                tagged_select.push(ident(name));
                outputs.push(OutputColumn {
                    name: name.clone(),
                    data_type: t.clone(),
                });
            }
        }
        let out_type = |col: &str, field: &str| -> Result<DataType> {
            outputs
                .iter()
                .find(|c| c.name == col)
                .map(|c| c.data_type.clone())
                .ok_or_else(|| Error::MissingColumn {
                    column: col.to_string(),
                    field: field.to_string(),
                    available: outputs
                        .iter()
                        .map(|c| c.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                })
        };
        for c in job.normalize.minmax.iter().chain(&job.normalize.zscore) {
            let t = out_type(c, "normalize")?;
            if !t.is_numeric() {
                return Err(Error::invalid(
                    "normalize",
                    format!("column {c} is {t}, not numeric"),
                ));
            }
        }
        for c in &job.encode.columns {
            let t = out_type(c, "encode.columns")?;
            if job.pii.pseudonymize.contains(c) {
                return Err(Error::invalid(
                    "encode.columns",
                    format!("column {c} is pseudonymized"),
                ));
            }
            if t == DataType::Date32 {
                return Err(Error::invalid(
                    "encode.columns",
                    format!("column {c} is a date"),
                ));
            }
        }
        for c in job.ranges.keys() {
            let t = out_type(c, "ranges")?;
            if !t.is_numeric() {
                return Err(Error::invalid(
                    format!("ranges.{c}"),
                    format!("column {c} is {t}, not numeric"),
                ));
            }
        }
        for c in &job.dropna.columns {
            out_type(c, "dropna.columns")?;
        }
        if let Some(label) = &job.label {
            out_type(label, "label")?;
        }
        if let Some(key) = &job.row_key {
            out_type(key, "row_key")?;
        }
        if let Some(features) = &job.features {
            for c in features {
                out_type(c, "features")?;
            }
        }

        // Drop reasons, in order: unmatched joins, nulls, out-of-range values.
        let mut cases: Vec<(String, String)> = join_markers
            .iter()
            .map(|(m, reason)| (format!("{} IS NULL", ident(m)), reason.clone()))
            .collect();
        let mut null_cols: Vec<String> = if job.dropna.all {
            outputs.iter().map(|c| c.name.clone()).collect()
        } else {
            job.dropna.columns.clone()
        };
        if let Some(label) = &job.label
            && !null_cols.contains(label)
        {
            null_cols.push(label.clone());
        }
        for c in &null_cols {
            cases.push((format!("{} IS NULL", ident(c)), format!("null: {c}")));
        }
        for (c, [lo, hi]) in &job.ranges {
            cases.push((
                format!(
                    "CAST({c} AS DOUBLE) < {} OR CAST({c} AS DOUBLE) > {}",
                    float(*lo),
                    float(*hi),
                    c = ident(c)
                ),
                format!("out of range: {c}"),
            ));
        }
        // The reason is a number into `reasons`: pass 1 groups by it, and grouping a million
        // rows by a small integer costs far less than building and hashing their strings.
        let reason_expr = if cases.is_empty() {
            "CAST(NULL AS INT)".to_string()
        } else {
            let conditions: Vec<String> =
                cases.iter().map(|(cond, _)| format!("({cond})")).collect();
            format!("{FIRST_TRUE_FN}({})", conditions.join(", "))
        };
        let reasons: Vec<String> = cases.iter().map(|(_, reason)| reason.clone()).collect();
        let label_type = match &job.label {
            Some(l) => Some(out_type(l, "label")?),
            None => None,
        };
        let inner_cols: Vec<String> = tagged_select
            .iter()
            .cloned()
            .chain(join_markers.iter().map(|(m, _)| ident(m)))
            .collect();
        let tagged_sql = format!(
            "SELECT *, {reason_expr} AS __emr_reason FROM (SELECT {} FROM __emr_src)",
            inner_cols.join(", ")
        );
        // Pass 2 keeps the rows no reason matched. Saying so as a conjunction of `IS NOT TRUE`
        // (a NULL condition does not match a CASE branch either) spares it building the reason
        // strings only to test them for NULL.
        let kept_predicate = if cases.is_empty() {
            "TRUE".to_string()
        } else {
            cases
                .iter()
                .map(|(cond, _)| format!("({cond}) IS NOT TRUE"))
                .collect::<Vec<_>>()
                .join(" AND ")
        };
        let kept_sql = format!(
            "SELECT * FROM (SELECT {} FROM __emr_src) WHERE {kept_predicate}",
            inner_cols.join(", ")
        );
        Ok(Self {
            src_sql,
            tagged_sql,
            kept_sql,
            reasons,
            outputs,
            pseudonymized_out,
            minmax: job.normalize.minmax.clone(),
            zscore: job.normalize.zscore.clone(),
            encode: job.encode.columns.clone(),
            label: job.label.clone(),
            label_type,
        })
    }

    /// The output rows: `kept` (the surviving rows, as `kept_sql` gives them) normalized,
    /// encoded and pseudonymized.
    fn final_sql(&self, fit: &Fit, kept: &str) -> String {
        let cols: Vec<String> = self
            .outputs
            .iter()
            .map(|c| {
                let id = ident(&c.name);
                if let Some(n) = fit.normalizers.get(&c.name) {
                    let x = format!("CAST({id} AS DOUBLE)");
                    let expr = match *n {
                        Normalizer::MinMax { min, max } if max > min => {
                            format!("({x} - {}) / {}", float(min), float(max - min))
                        }
                        Normalizer::ZScore { mean, std } if std > 0.0 => {
                            format!("({x} - {}) / {}", float(mean), float(std))
                        }
                        // A constant column carries no information; it maps to 0 (nulls stay).
                        _ => format!("CASE WHEN {id} IS NULL THEN NULL ELSE CAST(0 AS DOUBLE) END"),
                    };
                    format!("{expr} AS {id}")
                } else if let Some(enc) = fit.encodings.get(&c.name) {
                    let categories: Vec<String> = enc.values.iter().map(|v| literal(v)).collect();
                    format!(
                        "{CATEGORY_INDEX_FN}({id}, {}) AS {id}",
                        categories.join(", ")
                    )
                } else if self.pseudonymized_out.contains(&c.name) {
                    format!("{PSEUDONYM_FN}(CAST({id} AS VARCHAR)) AS {id}")
                } else {
                    id
                }
            })
            .collect();
        format!("SELECT {} FROM ({kept})", cols.join(", "))
    }

    fn features(&self, job: &Job, schema: &Schema, fit: &Fit) -> Result<Vec<FeatureSpec>> {
        let excluded = |name: &str| {
            job.label.as_deref() == Some(name)
                || job.row_key.as_deref() == Some(name)
                || self.pseudonymized_out.iter().any(|p| p == name)
        };
        let spec = |name: &str| -> Option<FeatureSpec> {
            if let Some(enc) = fit.encodings.get(name) {
                return Some(FeatureSpec {
                    name: name.to_string(),
                    kind: FeatureKind::Categorical {
                        categories: enc.values.len() as u32,
                    },
                });
            }
            let field = schema.field_with_name(name).ok()?;
            (field.data_type().is_numeric() || field.data_type() == &DataType::Boolean).then(|| {
                FeatureSpec {
                    name: name.to_string(),
                    kind: FeatureKind::Continuous,
                }
            })
        };
        match &job.features {
            Some(list) => list
                .iter()
                .map(|name| {
                    spec(name).ok_or_else(|| {
                        Error::invalid(
                            "features",
                            format!("column {name} is neither numeric nor encoded"),
                        )
                    })
                })
                .collect(),
            None => Ok(schema
                .fields()
                .iter()
                .filter(|f| !excluded(f.name()))
                .filter_map(|f| spec(f.name()))
                .collect()),
        }
    }
}

/// What pass 1 learned.
#[derive(Debug, Default)]
struct Fit {
    total: u64,
    kept: u64,
    dropped: BTreeMap<String, u64>,
    normalizers: BTreeMap<String, Normalizer>,
    encodings: BTreeMap<String, Encoding>,
    label_min: Option<i64>,
    label_max: Option<i64>,
    label_type: Option<DataType>,
}

async fn collect(ctx: &SessionContext, sql: &str) -> Result<Vec<RecordBatch>> {
    Ok(ctx.sql(sql).await?.collect().await?)
}

fn int_at(batches: &[RecordBatch], col: usize) -> u64 {
    batches
        .iter()
        .find(|b| b.num_rows() > 0)
        .and_then(|b| {
            b.column(col)
                .as_primitive_opt::<Int64Type>()
                .map(|a| a.value(0))
        })
        .unwrap_or(0) as u64
}

/// Whether the job never reads a column past its input: the policy drops it and nothing
/// derives from it (the age's dates do) or joins on it.
fn never_read(job: &Job, column: &str) -> bool {
    job.pii.drop.iter().any(|d| d == column)
        && !job
            .pii
            .age
            .as_ref()
            .is_some_and(|a| a.dob == column || a.at == column)
        && !job.join.iter().any(|j| j.on == column)
}

/// Holds each join's lookup input (its columns the job reads) in memory in place of its files,
/// so it is parsed once for the join and the key check rather than once for each; returns the
/// bytes held and, by input name, the rows and distinct join keys of each input held (the key
/// check's `count(*)` and `count(DISTINCT key)`). An input that would take more than `limit`
/// stays on its files.
async fn cache_lookups(
    ctx: &SessionContext,
    job: &Job,
    inputs: &BTreeMap<String, Input>,
    limit: u64,
) -> Result<(u64, BTreeMap<String, (u64, u64)>)> {
    let mut used = 0u64;
    let mut counts = BTreeMap::new();
    for join in &job.join {
        let input = &inputs[&join.right];
        let columns: Vec<String> = input
            .schema
            .fields()
            .iter()
            .map(|f| f.name())
            .filter(|name| **name == join.on || !never_read(job, name))
            .map(|name| ident(name))
            .collect();
        let df = ctx
            .sql(&format!(
                "SELECT {} FROM {}",
                columns.join(", "),
                input.table
            ))
            .await?;
        let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        let mut partitions = Vec::new();
        let mut bytes = 0u64;
        for stream in df.execute_stream_partitioned().await? {
            partitions.push(tokio::spawn(
                stream.map(|b| b.map_err(Error::from)).collect::<Vec<_>>(),
            ));
        }
        let mut held = Vec::new();
        for task in partitions {
            let batches = task
                .await
                .map_err(|e| Error::invalid("inputs", format!("a reader task failed: {e}")))?
                .into_iter()
                .collect::<Result<Vec<_>>>()?;
            bytes += batches
                .iter()
                .map(|b| b.get_array_memory_size() as u64)
                .sum::<u64>();
            held.push(batches);
        }
        if used + bytes > limit {
            continue;
        }
        used += bytes;
        let key = schema.index_of(&join.on)?;
        counts.insert(join.right.clone(), key_counts(held.iter().flatten(), key)?);
        ctx.deregister_table(input.table.as_str())?;
        ctx.register_table(
            input.table.as_str(),
            Arc::new(MemTable::try_new(schema, held)?),
        )?;
    }
    Ok((used, counts))
}

/// Rows, and distinct non-null values of column `key`, over `batches`: what `count(*)` and
/// `count(DISTINCT key)` give, for keys compared as text (`CAST(key AS VARCHAR)`), which is
/// what every key type a CSV or Parquet export joins on compares by.
fn key_counts<'a>(
    batches: impl Iterator<Item = &'a RecordBatch> + Clone,
    key: usize,
) -> Result<(u64, u64)> {
    let rows: usize = batches.clone().map(|b| b.num_rows()).sum();
    let mut keys = udf::TextSet::with_capacity(rows);
    for batch in batches {
        keys.insert_array(batch.column(key))?;
    }
    Ok((rows as u64, keys.len() as u64))
}

/// The in-memory table of surviving rows: `__emr_tagged`'s columns (pseudonymized columns still
/// in clear), reason always NULL.
const KEPT_TABLE: &str = "__emr_kept";

/// Runs `__emr_tagged` once, counting the rows each drop reason takes and keeping the rest in
/// memory as [`KEPT_TABLE`], one partition per stream so pass 2 keeps the parallelism; returns
/// the rows dropped, by index into [`Plan::reasons`]. `None` (and nothing registered) once the
/// kept rows need more than `limit` bytes.
async fn cache_kept(ctx: &SessionContext, plan: &Plan, limit: u64) -> Result<Option<Vec<u64>>> {
    #[allow(clippy::disallowed_methods)] // phase timings in the debug log
    let started = Instant::now();
    let df = ctx.table("__emr_tagged").await?;
    let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
    let reason = schema.index_of("__emr_reason")?;
    let used = Arc::new(AtomicU64::new(0));
    let reasons = plan.reasons.len();
    let tasks: Vec<_> = df
        .execute_stream_partitioned()
        .await?
        .into_iter()
        .map(|stream| {
            let used = Arc::clone(&used);
            tokio::spawn(keep_partition(stream, reason, reasons, used, limit))
        })
        .collect();
    let mut partitions = Vec::new();
    let mut dropped = vec![0u64; reasons];
    let mut over = false;
    for task in tasks {
        let kept = task
            .await
            .map_err(|e| Error::invalid("inputs", format!("a reader task failed: {e}")))??;
        match kept {
            Some((batches, counts)) => {
                partitions.push(batches);
                for (total, n) in dropped.iter_mut().zip(counts) {
                    *total += n;
                }
            }
            None => over = true,
        }
    }
    if over {
        tracing::info!(
            limit,
            "the surviving rows outgrow the cache limit; reading the inputs again"
        );
        return Ok(None);
    }
    tracing::debug!(
        bytes = used.load(Ordering::Relaxed),
        seconds = started.elapsed().as_secs_f64(),
        "surviving rows held in memory"
    );
    let table = MemTable::try_new(schema, partitions)?;
    ctx.register_table(KEPT_TABLE, Arc::new(table))?;
    Ok(Some(dropped))
}

/// One partition of [`cache_kept`]: its kept batches and its drops per reason, or `None` when
/// all partitions together passed `limit`.
async fn keep_partition(
    mut stream: SendableRecordBatchStream,
    reason: usize,
    reasons: usize,
    used: Arc<AtomicU64>,
    limit: u64,
) -> Result<Option<(Vec<RecordBatch>, Vec<u64>)>> {
    let mut batches = Vec::new();
    let mut dropped = vec![0u64; reasons];
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        let Some(tags) = batch.column(reason).as_primitive_opt::<Int32Type>() else {
            return Err(Error::invalid(
                "inputs",
                "the drop reasons are not integers",
            ));
        };
        let kept = if tags.null_count() == tags.len() {
            batch
        } else {
            for r in tags.iter().flatten() {
                let slot = usize::try_from(r).ok().and_then(|i| dropped.get_mut(i));
                match slot {
                    Some(n) => *n += 1,
                    None => {
                        return Err(Error::invalid(
                            "inputs",
                            format!("a row was dropped for an unknown reason {r}"),
                        ));
                    }
                }
            }
            filter_record_batch(&batch, &is_null(tags)?)?
        };
        if kept.num_rows() == 0 {
            continue;
        }
        let bytes = kept.get_array_memory_size() as u64;
        if used.fetch_add(bytes, Ordering::Relaxed) + bytes > limit {
            return Ok(None);
        }
        batches.push(kept);
        // A sibling partition woken by this one (the join's shared build side finishing wakes
        // every prober) lands in this worker's slot that other workers cannot steal from, and
        // a stream that never waits would run to its end before it; yielding lets another
        // worker take this task over and the sibling run at once.
        tokio::task::yield_now().await;
    }
    Ok(Some((batches, dropped)))
}

/// Pass 1's aggregate: over `__emr_tagged` grouped by drop reason, or over the rows held in
/// [`KEPT_TABLE`] (`held`), all kept, without a GROUP BY, so the functions see whole batches
/// instead of each group's rows gathered out of them.
async fn fit(ctx: &SessionContext, plan: &Plan, held: bool) -> Result<Fit> {
    let reason = if held {
        "CAST(NULL AS INT)"
    } else {
        "__emr_reason"
    };
    let mut aggs = vec![reason.to_string(), "count(*)".to_string()];
    let x = |c: &str| format!("CAST({} AS DOUBLE)", ident(c));
    for c in &plan.minmax {
        aggs.push(format!("min({})", x(c)));
        aggs.push(format!("max({})", x(c)));
    }
    for c in &plan.zscore {
        // Exact, so the fitted normalizer does not depend on the partitioning.
        aggs.push(format!("{}({})", crate::moments::MOMENTS_FN, x(c)));
    }
    for c in &plan.encode {
        aggs.push(format!(
            "{}({})",
            crate::categories::CATEGORIES_FN,
            ident(c)
        ));
    }
    if let Some(label) = &plan.label {
        aggs.push(format!("min(CAST({} AS BIGINT))", ident(label)));
        aggs.push(format!("max(CAST({} AS BIGINT))", ident(label)));
    }
    let sql = if held {
        format!("SELECT {} FROM {KEPT_TABLE}", aggs.join(", "))
    } else {
        format!(
            "SELECT {} FROM __emr_tagged GROUP BY __emr_reason",
            aggs.join(", ")
        )
    };
    let batches = collect(ctx, &sql).await?;
    let mut fit = Fit {
        label_type: plan.label_type.clone(),
        ..Fit::default()
    };
    for batch in &batches {
        let reasons = arrow::compute::cast(batch.column(0), &DataType::Int64)?;
        let reasons = reasons.as_primitive_opt::<Int64Type>();
        let counts = batch.column(1).as_primitive::<Int64Type>();
        for row in 0..batch.num_rows() {
            let n = counts.value(row) as u64;
            if n == 0 {
                // An aggregate without GROUP BY over no rows: nothing was kept to fit on.
                continue;
            }
            fit.total += n;
            let reason = reasons.filter(|r| r.is_valid(row)).map(|r| {
                usize::try_from(r.value(row))
                    .ok()
                    .and_then(|i| plan.reasons.get(i))
                    .cloned()
                    .unwrap_or_else(|| format!("reason {}", r.value(row)))
            });
            if let Some(reason) = reason {
                fit.dropped.insert(reason, n);
                continue;
            }
            fit.kept = n;
            let mut col = 2;
            let f64_at = |col: usize| -> Option<f64> {
                let a = batch.column(col).as_primitive_opt::<Float64Type>()?;
                a.is_valid(row).then(|| a.value(row))
            };
            for c in &plan.minmax {
                let (min, max) = (f64_at(col), f64_at(col + 1));
                col += 2;
                let (Some(min), Some(max)) = (min, max) else {
                    return Err(Error::invalid(
                        "normalize.minmax",
                        format!("column {c} has no values to fit"),
                    ));
                };
                fit.normalizers
                    .insert(c.clone(), Normalizer::MinMax { min, max });
            }
            for c in &plan.zscore {
                let moments = batch.column(col).as_struct_opt();
                col += 1;
                let field = |i: usize| {
                    moments
                        .filter(|m| m.is_valid(row))
                        .and_then(|m| m.column(i).as_primitive_opt::<Float64Type>())
                        .filter(|a| a.is_valid(row))
                        .map(|a| a.value(row))
                };
                let (mean, std) = (field(1), field(2));
                let (Some(mean), Some(std)) = (mean, std) else {
                    return Err(Error::invalid(
                        "normalize.zscore",
                        format!("column {c} has no values to fit"),
                    ));
                };
                if !mean.is_finite() || !std.is_finite() {
                    return Err(Error::invalid(
                        "normalize.zscore",
                        format!("column {c} has NaN or infinite values"),
                    ));
                }
                fit.normalizers
                    .insert(c.clone(), Normalizer::ZScore { mean, std });
            }
            for c in &plan.encode {
                let list = batch.column(col).as_list_opt::<i32>();
                col += 1;
                let mut values: Vec<String> = match list.filter(|l| l.is_valid(row)) {
                    Some(l) => {
                        let item = arrow::compute::cast(&l.value(row), &DataType::Utf8)?;
                        let strings = item.as_string_opt::<i32>();
                        match strings {
                            Some(s) => s.iter().flatten().map(str::to_string).collect(),
                            None => Vec::new(),
                        }
                    }
                    None => Vec::new(),
                };
                values.sort();
                values.dedup();
                if values.is_empty() {
                    return Err(Error::invalid(
                        "encode.columns",
                        format!("column {c} has no values to encode"),
                    ));
                }
                fit.encodings.insert(c.clone(), Encoding { values });
            }
            if plan.label.is_some() {
                let int_at = |col: usize| -> Option<i64> {
                    let a = batch.column(col).as_primitive_opt::<Int64Type>()?;
                    a.is_valid(row).then(|| a.value(row))
                };
                fit.label_min = int_at(col);
                fit.label_max = int_at(col + 1);
            }
        }
    }
    Ok(fit)
}

fn check_label(label: &str, fit: &Fit) -> Result<()> {
    match &fit.label_type {
        Some(t) if t.is_integer() || t == &DataType::Boolean => {}
        Some(t) => {
            return Err(Error::Label {
                column: label.to_string(),
                message: format!("is {t}; a label must be an integer class (0/1)"),
            });
        }
        None => {}
    }
    if let (Some(lo), Some(_)) = (fit.label_min, fit.label_max)
        && lo < 0
    {
        return Err(Error::Label {
            column: label.to_string(),
            message: "has negative values; classes are 0, 1, ...".into(),
        });
    }
    Ok(())
}

fn describe_drops(dropped: &BTreeMap<String, u64>) -> String {
    dropped
        .iter()
        .map(|(r, n)| format!("{r}: {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The guard's schema half: nothing the policy drops may survive under its own name.
fn guard_schema(job: &Job, schema: &Schema) -> Result<()> {
    let mut survived: Vec<&str> = job
        .pii
        .drop
        .iter()
        .map(String::as_str)
        .chain(job.pii.age.iter().map(|a| a.dob.as_str()))
        .filter(|c| schema.field_with_name(c).is_ok())
        .collect();
    survived.sort();
    if survived.is_empty() {
        Ok(())
    } else {
        Err(Error::PiiGuard(format!(
            "dropped column(s) {} are still in the output; nothing was published",
            survived.join(", ")
        )))
    }
}

struct Written {
    rows: u64,
    files: Vec<String>,
    scanner: PiiScanner,
    fingerprint: Fingerprint,
}

/// Rows per output row group. A reader fetches a whole row group's column chunks before it
/// decodes the first row; groups of this size let it start at once, hold a few megabytes
/// rather than the whole file, and split a file between cores.
const ROW_GROUP_ROWS: usize = 128 * 1024;

/// How output files are written.
///
/// - LZ4_RAW, not Snappy: on these datasets both leave the same size (the pseudonyms are hex
///   of random bytes, which neither compresses, and the numeric columns are dictionary codes
///   already), and LZ4 pages decode about twice as fast for every later reader.
/// - No dictionary for pseudonymized columns: their values are (nearly) all distinct, so the
///   writer would build a dictionary for every page only to fall back to plain encoding.
/// - No min/max statistics for them either: the range of a page of keyed hashes says nothing
///   a reader could skip pages by, and finding it compares every 64-byte value.
/// - A pseudonymized row key is stored uncompressed. Hex of random bytes holds four bits per
///   byte, which LZ4 (no entropy coder) cannot use, and a key repeats nowhere, so LZ4 only
///   finds runs of a few bytes: 1.5 % smaller for over half of the job's compression time. Other
///   pseudonyms repeat (a patient's visits sit together) and keep LZ4: 59 MB -> 22 MB.
fn writer_properties(pseudonymized: &[String], row_key: Option<&str>) -> WriterProperties {
    let mut props = WriterProperties::builder()
        .set_compression(Compression::LZ4_RAW)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_created_by(format!("emrflow {}", env!("CARGO_PKG_VERSION")));
    for column in pseudonymized {
        let path = ColumnPath::from(column.as_str());
        if row_key == Some(column.as_str()) {
            props = props.set_column_compression(path.clone(), Compression::UNCOMPRESSED);
        }
        props = props
            .set_column_dictionary_enabled(path.clone(), false)
            .set_column_statistics_enabled(path, EnabledStatistics::None);
    }
    props.build()
}

/// Streams each output partition into its own Parquet file in staging.
async fn write_partitions(
    df: DataFrame,
    staging: &mut Staging,
    scanned: &[String],
    props: &WriterProperties,
    progress: &dyn Progress,
) -> Result<Written> {
    let fingerprint = RowsFingerprint::new(df.schema().as_arrow())?;
    let streams = df.execute_stream_partitioned().await?;
    let mut tasks = Vec::new();
    for (i, stream) in streams.into_iter().enumerate() {
        let name = format!("part-{i:05}.parquet");
        let sink = staging.sink_for(&name)?;
        let scanned = scanned.to_vec();
        let props = props.clone();
        let hasher = fingerprint.part();
        tasks.push(tokio::spawn(async move {
            write_one(stream, sink, &scanned, props, hasher)
                .await
                .map(|(rows, scanner, leaves)| (name, rows, scanner, leaves))
        }));
    }
    let mut rows = 0;
    let mut files = Vec::new();
    let mut scanner = PiiScanner::new(scanned);
    let mut parts = Vec::new();
    for task in tasks {
        let (name, n, part_scanner, leaves) = task
            .await
            .map_err(|e| Error::invalid("output", format!("a writer task failed: {e}")))??;
        progress.rows(n);
        rows += n;
        scanner.merge(part_scanner);
        parts.push(leaves);
        if n > 0 {
            files.push(name);
        }
    }
    files.sort();
    Ok(Written {
        rows,
        files,
        scanner,
        fingerprint: fingerprint.finish(parts)?,
    })
}

async fn write_one(
    mut stream: SendableRecordBatchStream,
    sink: Sink,
    scanned: &[String],
    props: WriterProperties,
    mut hasher: PartHasher,
) -> Result<(u64, PiiScanner, PartState)> {
    let mut scanner = PiiScanner::new(scanned);
    let mut writer: Option<PartWriter> = None;
    let mut rows = 0u64;
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        if batch.num_rows() == 0 {
            continue;
        }
        scanner.scan(&batch);
        hasher.update(&batch)?;
        rows += batch.num_rows() as u64;
        let w = match writer.as_mut() {
            Some(w) => w,
            None => writer.insert(PartWriter::open(&sink, batch.schema(), &props)?),
        };
        w.write(&batch).await?;
    }
    match writer {
        Some(w) => w.close().await?,
        // An empty partition writes no file; make sure none is left half-created.
        None => sink.discard().await,
    }
    Ok((rows, scanner, hasher.finish()?))
}

/// One part file's Parquet writer. A local staging directory is written straight to the file:
/// the async writer encodes each row group into a fresh in-memory buffer that grows by doubling
/// (a sixth of the job's page faults, and a copy of every byte) before the store writes it out
/// again. Writes to a local file land in the page cache, so they do not hold the worker up.
enum PartWriter {
    File(
        parquet::arrow::ArrowWriter<std::io::BufWriter<std::fs::File>>,
        std::path::PathBuf,
    ),
    Store(AsyncArrowWriter<BufWriter>),
}

impl PartWriter {
    fn open(sink: &Sink, schema: SchemaRef, props: &WriterProperties) -> Result<Self> {
        Ok(match sink {
            Sink::File(path) => {
                let file = std::fs::File::create(path)
                    .map_err(|e| Error::io(path.display().to_string(), e))?;
                Self::File(
                    parquet::arrow::ArrowWriter::try_new(
                        std::io::BufWriter::with_capacity(1 << 20, file),
                        schema,
                        Some(props.clone()),
                    )?,
                    path.clone(),
                )
            }
            Sink::Store(store, path) => Self::Store(AsyncArrowWriter::try_new(
                BufWriter::new(Arc::clone(store), path.clone()),
                schema,
                Some(props.clone()),
            )?),
        })
    }

    async fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        match self {
            Self::File(w, _) => w.write(batch)?,
            Self::Store(w) => w.write(batch).await?,
        }
        Ok(())
    }

    async fn close(self) -> Result<()> {
        match self {
            Self::File(w, path) => {
                w.into_inner()?
                    .into_inner()
                    .map_err(|e| Error::io(path.display().to_string(), e.into_error()))?;
            }
            Self::Store(w) => {
                w.close().await?;
            }
        }
        Ok(())
    }
}

/// When a scan fails, finds the exact file and line in the CSV inputs; otherwise passes the
/// error on.
async fn diagnose_on_error<T>(result: Result<T>, inputs: &BTreeMap<String, Input>) -> Result<T> {
    match result {
        Ok(v) => Ok(v),
        Err(e @ (Error::DataFusion(_) | Error::Arrow(_))) => {
            let all: Vec<&Input> = inputs.values().collect();
            Err(diagnose(e, &all).await)
        }
        Err(e) => Err(e),
    }
}

async fn diagnose(error: Error, inputs: &[&Input]) -> Error {
    for input in inputs.iter().filter(|i| i.format == InputFormat::Csv) {
        for (path, _) in &input.files {
            let Ok(got) = input.location.store.get(path).await else {
                continue;
            };
            let Ok(bytes) = got.bytes().await else {
                continue;
            };
            let schema = if input.schema.fields().is_empty() {
                // Inference failed: check structure and encoding only.
                header_schema(&bytes, input.delimiter)
            } else {
                (*input.schema).clone()
            };
            if let Some(problem) =
                csvcheck::diagnose(&bytes, &schema, input.delimiter, input.nulls.as_ref())
            {
                return Error::Csv {
                    path: input
                        .location
                        .url_of(path)
                        .trim_start_matches("file://")
                        .to_string(),
                    line: problem.line,
                    message: problem.message,
                };
            }
        }
    }
    // The engine's parse and cast messages quote values and whole rows, which may be PHI.
    let text = error.to_string();
    if text.contains("Row data") || text.contains("parsing value") || text.contains("Cannot cast") {
        return Error::invalid(
            "inputs",
            "a value could not be read as its column's type (the engine's message is withheld because it quotes row data)",
        );
    }
    error
}

fn header_schema(bytes: &[u8], delimiter: u8) -> Schema {
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .from_reader(bytes);
    let fields: Vec<Field> = match reader.byte_headers() {
        Ok(h) => h
            .iter()
            .map(|n| Field::new(String::from_utf8_lossy(n), DataType::Utf8, true))
            .collect(),
        Err(_) => Vec::new(),
    };
    Schema::new(fields)
}

#[cfg(test)]
mod tests {
    use arrow::array::{ArrayRef, Int64Array, StringViewArray};

    use super::*;

    fn batch(column: ArrayRef) -> RecordBatch {
        RecordBatch::try_from_iter([("k", column)]).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn key_counts_count_rows_and_distinct_non_null_keys_as_sql_does() {
        // Short keys (inline in their views) and long ones, split across batches, with a
        // duplicate of each kind and nulls, which count(DISTINCT) skips but count(*) counts.
        let long = "a key longer than twelve bytes";
        let first = batch(Arc::new(StringViewArray::from(vec![
            Some("P1"),
            Some(long),
            None,
            Some("P2"),
        ])));
        let second = batch(Arc::new(StringViewArray::from(vec![
            Some("P2"),
            Some(long),
            Some("a key longer than twelve bytez"),
            None,
        ])));
        let counts = key_counts([&first, &second].into_iter(), 0).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(counts, (8, 4));
        // Twelve and thirteen bytes sharing a prefix are different keys.
        let edge = batch(Arc::new(StringViewArray::from(vec![
            "twelve bytes",
            "twelve bytes!",
        ])));
        assert_eq!(key_counts([&edge].into_iter(), 0).ok(), Some((2, 2)));
        let ints = batch(Arc::new(Int64Array::from(vec![
            Some(1),
            Some(1),
            None,
            Some(3),
        ])));
        assert_eq!(key_counts([&ints].into_iter(), 0).ok(), Some((4, 2)));
    }
}
