//! The inputs stage: resolves each input's location, lists its files, reads CSV (plain, gzip or
//! zstd, as [`sniff`](super::sniff) finds; types inferred, overridden, declared null strings
//! mapped to null) or Parquet, and registers it as the table `__emr_in_{i}` the join reads. A
//! column the job uses as a number, or as the label, is read as one even when a bad value made
//! inference call it text, so that the bad value is found and named by its line. It also owns
//! naming a broken CSV's file, line and column when the engine cannot parse it (or a label is
//! not a class), and hashing the raw files, as delivered, for their source roots. It reads no
//! row itself except to sniff a file's head or to diagnose a failure.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::prelude::{CsvReadOptions, DataFrame, ParquetReadOptions, SessionContext};
use object_store::ObjectStoreExt;
use regex::Regex;

use super::sniff::{Compression, HEAD_BYTES, sniff};
use super::sql::{ident, literal};
use crate::csvcheck;
use crate::error::{Error, Result};
use crate::fingerprint::{Hash32, start_source_root};
use crate::job::{ColumnType, InputConfig, InputFormat, Job};
use crate::manifest::{InputFile, InputSpec};
use crate::store::Location;

/// A registered input.
#[derive(Debug)]
pub(super) struct Input {
    /// The table the input is registered as.
    pub(super) table: String,
    pub(super) location: Location,
    pub(super) format: InputFormat,
    pub(super) files: Vec<(object_store::path::Path, u64)>,
    pub(super) schema: SchemaRef,
    delimiter: u8,
    nulls: Option<Regex>,
    compression: Compression,
}

impl Input {
    /// What the manifest (or a record batch) says of the input named `name`.
    pub(super) fn spec(&self, name: &str) -> InputSpec {
        InputSpec {
            name: name.to_string(),
            location: self.location.raw.clone(),
            format: self.format.as_str().to_string(),
            files: self
                .files
                .iter()
                .map(|(p, size)| InputFile {
                    path: self.location.url_of(p),
                    size: *size,
                })
                .collect(),
        }
    }
}

/// Refuses `--input NAME=...` for a name the job does not have.
pub(super) fn check_overrides(job: &Job, overrides: &BTreeMap<String, String>) -> Result<()> {
    for name in overrides.keys() {
        if !job.inputs.contains_key(name) {
            return Err(Error::invalid(
                format!("--input {name}"),
                "the job has no input of that name",
            ));
        }
    }
    Ok(())
}

/// Opens every input at once, each on its own task: inferring a CSV's column types parses its
/// first rows, which would otherwise happen one file after another while other cores wait. An
/// error is reported for the first input (in the job's order) that has one.
pub(super) async fn register_inputs(
    job: &Job,
    overrides: &BTreeMap<String, String>,
    ctx: &SessionContext,
) -> Result<BTreeMap<String, Input>> {
    let tasks: Vec<_> = job
        .inputs
        .iter()
        .enumerate()
        .map(|(i, (name, cfg))| {
            let raw = overrides.get(name).unwrap_or(&cfg.path).clone();
            let typing = Typing {
                default_format: job.format_of(name),
                numeric: job
                    .numeric_columns()
                    .into_iter()
                    .map(str::to_string)
                    .collect(),
                label: job.label.clone(),
            };
            let (ctx, name, cfg) = (ctx.clone(), name.clone(), cfg.clone());
            tokio::spawn(async move { open_input(&ctx, i, &name, &cfg, &raw, &typing).await })
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

/// Refuses, by input and file, an input delivered compressed: a cluster's executors would read
/// its bytes as they are (their plan format does not carry a scan's compression).
pub(super) fn refuse_compressed(inputs: &BTreeMap<String, Input>) -> Result<()> {
    for (name, input) in inputs {
        if input.compression == Compression::None {
            continue;
        }
        // Named by the file most likely to say so by its name.
        let file = input
            .files
            .iter()
            .find(|(p, _)| p.filename().is_some_and(|f| f.ends_with(".gz")))
            .map_or(&input.files[0].0, |(p, _)| p);
        return Err(Error::invalid(
            format!("inputs.{name}"),
            format!(
                "{} is compressed, which the cluster's executors cannot read; decompress the \
                 input or run it on the embedded engine",
                shown_path(&input.location, file)
            ),
        ));
    }
    Ok(())
}

/// What the job says about an input's types beyond its own section.
struct Typing {
    /// The format when neither the input nor its path names one.
    default_format: InputFormat,
    /// Columns the job reads as numbers.
    numeric: BTreeSet<String>,
    label: Option<String>,
}

/// Resolves, lists and (for CSV) sniffs and types input number `i`, and registers it as
/// `__emr_in_{i}`.
async fn open_input(
    ctx: &SessionContext,
    i: usize,
    name: &str,
    cfg: &InputConfig,
    raw: &str,
    typing: &Typing,
) -> Result<(String, Input)> {
    // A FHIR export is named by its directory or by its manifest: either way it is the
    // directory's files that are read and hashed.
    let fhir_manifest = cfg.format == Some(InputFormat::Fhir) && raw.ends_with(".json");
    let dir = if fhir_manifest {
        raw.rsplit_once('/').map_or(".", |(d, _)| d)
    } else {
        raw
    };
    let location = Location::resolve(ctx, dir)?;
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
        None => typing.default_format,
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
    let mut compression = Compression::None;
    let df = match format {
        InputFormat::Csv => {
            compression = sniff_files(name, &location, &files, delimiter).await?;
            let read = |schema: Option<Schema>| {
                read_csv(
                    ctx,
                    url.clone(),
                    schema,
                    delimiter,
                    nulls.as_str().to_string(),
                    compression,
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
                        compression,
                    };
                    return Err(diagnose(e.into(), &[&probe]).await);
                }
            };
            let schema = override_types(name, inferred.schema().as_arrow(), &cfg.types, typing)?;
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
                ctx.sql(&typed_sql(&raw_table, &schema, &cfg.null_values))
                    .await?
            }
        }
        InputFormat::Fhir => {
            let table_of = cfg.table.ok_or_else(|| {
                Error::invalid(
                    format!("inputs.{name}.table"),
                    "a FHIR input names its table",
                )
            })?;
            if fhir_manifest {
                super::fhir::check_manifest(name, raw, &location, &files).await?;
            }
            // An export's files say by their names whether they are gzipped, as the engine's
            // NDJSON reader reads them.
            if files
                .iter()
                .any(|(p, _)| p.filename().is_some_and(|f| f.ends_with(".ndjson.gz")))
            {
                compression = Compression::Gzip;
            }
            super::fhir::read(ctx, name, cfg, &location, &files, table_of, &table).await?
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
            compression,
        },
    ))
}

/// Sniffs the head of every file of a CSV input: they must share one compression, and at least
/// one must have a row after its header. Returns the compression.
async fn sniff_files(
    name: &str,
    location: &Location,
    files: &[(object_store::path::Path, u64)],
    delimiter: u8,
) -> Result<Compression> {
    let heads = futures::future::try_join_all(files.iter().map(|(path, size)| async move {
        let end = (*size).min(HEAD_BYTES);
        let bytes = location.store.get_range(path, 0..end).await?;
        let shown = shown_path(location, path);
        let head = sniff(name, &shown, &bytes, end == *size, delimiter)?;
        Ok::<_, Error>((shown, head))
    }))
    .await?;
    let Some((first, first_head)) = heads.first() else {
        return Ok(Compression::None);
    };
    if let Some((path, head)) = heads
        .iter()
        .find(|(_, h)| h.compression != first_head.compression)
    {
        return Err(Error::invalid(
            format!("inputs.{name}"),
            format!(
                "{path} is {} but {first} is {}; the files of one input must share a compression",
                head.compression.name(),
                first_head.compression.name()
            ),
        ));
    }
    if heads.iter().all(|(_, h)| h.has_rows == Some(false)) {
        return Err(Error::Csv {
            path: first.clone(),
            line: 2,
            message: format!("input {name} has no rows (a header and nothing after it)"),
        });
    }
    Ok(first_head.compression)
}

/// A file of `location` as messages show it: a local path plainly, other stores by URL.
fn shown_path(location: &Location, path: &object_store::path::Path) -> String {
    location
        .url_of(path)
        .trim_start_matches("file://")
        .to_string()
}

/// The rows of `text_table` (every column read as text) typed as `schema` says, with each of
/// `null_values` read as null. SQL: a CASE per column reads plainly here, and `arrow_cast`
/// takes the Arrow type by the name the schema prints.
fn typed_sql(text_table: &str, schema: &Schema, null_values: &[String]) -> String {
    let nulls_sql: Vec<String> = null_values.iter().map(|v| literal(v)).collect();
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
    format!("SELECT {} FROM {text_table}", cols.join(", "))
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
    compression: Compression,
) -> datafusion::error::Result<DataFrame> {
    let mut opts = CsvReadOptions::new()
        .has_header(true)
        .delimiter(delimiter)
        .file_compression_type(compression.engine())
        .file_extension("")
        .schema_infer_max_records(10_000)
        .null_regex(Some(nulls));
    if let Some(s) = &schema {
        opts = opts.schema(s);
    }
    ctx.read_csv(url, opts).await
}

/// The schema an input is read with: inferred, then the input's declared types, then (for columns
/// the job uses as numbers or as the label, inferred as text because some value is not one)
/// the type the job needs, so that reading the bad value fails and its line is named.
fn override_types(
    input: &str,
    inferred: &Schema,
    types: &BTreeMap<String, ColumnType>,
    typing: &Typing,
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
                let t = match types.get(f.name()) {
                    Some(t) => t.arrow(),
                    None if f.data_type() == &DataType::Utf8
                        && typing.label.as_ref() == Some(f.name()) =>
                    {
                        DataType::Int64
                    }
                    None if f.data_type() == &DataType::Utf8
                        && typing.numeric.contains(f.name()) =>
                    {
                        DataType::Float64
                    }
                    None => f.data_type().clone(),
                };
                Field::new(f.name(), t, true)
            })
            .collect::<Vec<_>>(),
    ))
}

/// The column names of `schema`, for an error's list of what is available.
pub(super) fn names(schema: &Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Refuses an input that yielded no rows, naming it and where it was read from.
pub(super) fn check_not_empty(
    rows_in: &BTreeMap<String, u64>,
    inputs: &BTreeMap<String, Input>,
) -> Result<()> {
    for (name, n) in rows_in {
        if *n == 0 {
            return Err(Error::InputEmpty {
                input: name.clone(),
                path: inputs[name].location.raw.clone(),
            });
        }
    }
    Ok(())
}

/// Source roots being computed in the background, by input name. Inputs of the same files (the
/// two tables of one FHIR export) share one hash. Dropping it stops what has not started.
#[derive(Debug, Default)]
pub(super) struct InputHashing(Vec<(Vec<String>, tokio::task::JoinHandle<Result<Hash32>>)>);

impl InputHashing {
    pub(super) fn start(
        ctx: &SessionContext,
        inputs: &BTreeMap<String, Input>,
        names: &[String],
    ) -> Self {
        let mut tasks: Vec<(Vec<String>, tokio::task::JoinHandle<Result<Hash32>>)> = Vec::new();
        let mut started: Vec<Vec<String>> = Vec::new();
        for name in names {
            let Some(input) = inputs.get(name) else {
                continue;
            };
            let files: Vec<String> = input
                .files
                .iter()
                .map(|(p, _)| input.location.url_of(p))
                .collect();
            if let Some(i) = started.iter().position(|f| *f == files) {
                tasks[i].0.push(name.clone());
                continue;
            }
            let task = match start_source_root(ctx, &files) {
                Ok(root) => tokio::spawn(root),
                Err(e) => tokio::spawn(async move { Err(e) }),
            };
            started.push(files);
            tasks.push((vec![name.clone()], task));
        }
        Self(tasks)
    }

    /// The roots, by input name, once every hash has finished.
    pub(super) async fn finish(&mut self) -> Result<BTreeMap<String, Hash32>> {
        let mut roots = BTreeMap::new();
        for (names, task) in std::mem::take(&mut self.0) {
            let root = task.await.map_err(|e| {
                Error::Fingerprint(format!("hashing input {} stopped: {e}", names.join(", ")))
            })??;
            for name in names {
                roots.insert(name, root);
            }
        }
        Ok(roots)
    }
}

impl Drop for InputHashing {
    fn drop(&mut self) {
        for (_, task) in &self.0 {
            task.abort();
        }
    }
}

/// When a scan fails, finds the exact file and line in the CSV inputs; otherwise passes the
/// error on.
pub(super) async fn diagnose_on_error<T>(
    result: Result<T>,
    inputs: &BTreeMap<String, Input>,
) -> Result<T> {
    match result {
        Ok(v) => Ok(v),
        Err(e @ (Error::DataFusion(_) | Error::Arrow(_))) => {
            let all: Vec<&Input> = inputs.values().collect();
            Err(diagnose(e, &all).await)
        }
        Err(e) => Err(e),
    }
}

/// The content of a CSV input's file, decompressed; `None` when it cannot be read.
async fn content(input: &Input, path: &object_store::path::Path) -> Option<Vec<u8>> {
    let bytes = input
        .location
        .store
        .get(path)
        .await
        .ok()?
        .bytes()
        .await
        .ok()?;
    Some(match input.compression {
        Compression::None => bytes.to_vec(),
        c => c.decode(&bytes, u64::MAX).0,
    })
}

async fn diagnose(error: Error, inputs: &[&Input]) -> Error {
    // A FHIR export: the first resource its checks refuse.
    for input in inputs.iter().filter(|i| i.format == InputFormat::Fhir) {
        let mut files = Vec::new();
        for (path, _) in &input.files {
            let name = path.filename().unwrap_or_default();
            if !name.ends_with(".ndjson") && !name.ends_with(".ndjson.gz") {
                continue;
            }
            if let Some(bytes) = content(input, path).await {
                files.push((name.to_string(), bytes));
            }
        }
        if let Some((name, line, message)) = super::fhir::check_export(&files) {
            let path = input
                .files
                .iter()
                .find(|(p, _)| p.filename() == Some(name.as_str()))
                .map_or(name.clone(), |(p, _)| shown_path(&input.location, p));
            return Error::Ndjson {
                path,
                line,
                message,
            };
        }
    }
    for input in inputs.iter().filter(|i| i.format == InputFormat::Csv) {
        for (path, _) in &input.files {
            let Some(bytes) = content(input, path).await else {
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
                    path: shown_path(&input.location, path),
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

/// The first line of a CSV input holding `label` whose label is neither null nor one of
/// `classes`, as an error naming its file, line and column; `None` when no CSV input has one
/// (the label comes from Parquet).
pub(super) async fn locate_label(
    inputs: &BTreeMap<String, Input>,
    label: &str,
    classes: &[i64],
) -> Option<Error> {
    let is_class = |text: &str| {
        let text = text.trim();
        let value = match text.to_ascii_lowercase().as_str() {
            "true" => Some(1),
            "false" => Some(0),
            _ => text.parse::<i64>().ok(),
        };
        value.is_some_and(|v| classes.contains(&v))
    };
    let holding = inputs
        .values()
        .filter(|i| i.format == InputFormat::Csv && i.schema.field_with_name(label).is_ok());
    for input in holding {
        for (path, _) in &input.files {
            let Some(bytes) = content(input, path).await else {
                continue;
            };
            let line = csvcheck::first_line_not_matching(
                &bytes,
                input.delimiter,
                label,
                input.nulls.as_ref(),
                is_class,
            );
            if let Some(line) = line {
                return Some(Error::Csv {
                    path: shown_path(&input.location, path),
                    line,
                    message: format!(
                        "column {label}: a label outside the job's classes ({})",
                        super::fit::classes_text(classes)
                    ),
                });
            }
        }
    }
    None
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

/// Registers `batches` as input number `i` named `name`, in memory, as [`register_inputs`]
/// would have registered a file: for the other stages' tests.
#[cfg(test)]
pub(super) fn memory_input(
    ctx: &SessionContext,
    i: usize,
    name: &str,
    batch: arrow::array::RecordBatch,
) -> Input {
    let table = format!("__emr_in_{i}");
    let schema = batch.schema();
    let mem = datafusion::datasource::MemTable::try_new(Arc::clone(&schema), vec![vec![batch]])
        .unwrap_or_else(|e| panic!("{e}"));
    ctx.register_table(table.as_str(), Arc::new(mem))
        .unwrap_or_else(|e| panic!("{e}"));
    let location = Location::resolve(ctx, &format!("memory:///inputs-test/{name}"))
        .unwrap_or_else(|e| panic!("{e}"));
    Input {
        table,
        location,
        format: InputFormat::Parquet,
        files: Vec::new(),
        schema,
        delimiter: b',',
        nulls: None,
        compression: Compression::None,
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Float64Type, Int64Type};

    use super::*;

    fn job(inputs: &str) -> Job {
        let text = format!("name = \"t\"\n{inputs}\n[output]\npath = \"out\"\n");
        Job::from_toml(&text, "job.toml").unwrap_or_else(|e| panic!("{e}"))
    }

    async fn open(
        job: &Job,
        path: &std::path::Path,
    ) -> (SessionContext, Result<BTreeMap<String, Input>>) {
        let ctx = SessionContext::new();
        let overrides = [("v".to_string(), path.display().to_string())].into();
        let inputs = register_inputs(job, &overrides, &ctx).await;
        (ctx, inputs)
    }

    fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> std::path::PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
        path
    }

    #[tokio::test]
    async fn declared_null_strings_read_as_null_in_typed_columns() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = write(&dir, "v.csv", "id,bmi,note\n1,N/A,x\n2,31.5,N/A\n3,,y\n");
        let job = job(
            "[inputs.v]\npath = \"v.csv\"\nnull_values = [\"N/A\"]\ntypes = { id = \"int64\" }",
        );
        let (ctx, inputs) = open(&job, &path).await;
        let inputs = inputs.unwrap_or_else(|e| panic!("{e}"));
        let input = &inputs["v"];
        assert_eq!(input.table, "__emr_in_0");
        let types: Vec<String> = input
            .schema
            .fields()
            .iter()
            .map(|f| f.data_type().to_string())
            .collect();
        assert_eq!(types, ["Int64", "Float64", "Utf8"]);
        let batches = ctx
            .sql("SELECT id, bmi, note FROM __emr_in_0 ORDER BY id")
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .collect()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let batch = arrow::compute::concat_batches(&batches[0].schema(), &batches)
            .unwrap_or_else(|e| panic!("{e}"));
        let ids: Vec<i64> = batch
            .column(0)
            .as_primitive::<Int64Type>()
            .values()
            .to_vec();
        assert_eq!(ids, [1, 2, 3]);
        let bmi = batch.column(1).as_primitive::<Float64Type>();
        assert!(bmi.is_null(0) && bmi.is_null(2));
        assert_eq!(bmi.value(1), 31.5);
        let note = batch.column(2);
        assert_eq!(
            (note.is_null(0), note.is_null(1), note.is_null(2)),
            (false, true, false)
        );
    }

    #[test]
    fn null_strings_match_whole_fields_only() {
        let nulls = null_regex("v", &["N/A".into(), "?".into()]).unwrap_or_else(|e| panic!("{e}"));
        for null in ["", "N/A", "?"] {
            assert!(nulls.is_match(null), "{null:?} should be null");
        }
        for value in ["N/A2", "xN/A", "??", "a"] {
            assert!(!nulls.is_match(value), "{value:?} should not be null");
        }
    }

    #[tokio::test]
    async fn errors_name_the_input_and_the_setting() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let csv = write(&dir, "v.csv", "a,b\n1,2\n");
        let typed = job("[inputs.v]\npath = \"v.csv\"\ntypes = { c = \"int64\" }");
        let err = open(&typed, &csv).await.1.err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("column c named in inputs.v.types does not exist (available: a, b)")
        );
        let empty = write(&dir, "empty.csv", "");
        let plain = job("[inputs.v]\npath = \"v.csv\"");
        let err = open(&plain, &empty)
            .await
            .1
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.starts_with("input v: ") && err.ends_with("empty.csv is empty"),
            "{err}"
        );
        let missing = dir.path().join("absent.csv");
        let err = open(&plain, &missing)
            .await
            .1
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.starts_with("input v: no such file: ") && err.ends_with("absent.csv"),
            "{err}"
        );
        let err = check_overrides(&plain, &[("w".to_string(), "x".to_string())].into())
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("invalid job: --input w: the job has no input of that name")
        );
    }

    #[tokio::test]
    async fn a_value_the_engine_cannot_read_is_named_by_file_and_line() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let csv = write(&dir, "v.csv", "id,age\n1,40\n2,forty\n3,50\n");
        let job = job("[inputs.v]\npath = \"v.csv\"\ntypes = { age = \"int64\" }");
        let (ctx, inputs) = open(&job, &csv).await;
        let inputs = inputs.unwrap_or_else(|e| panic!("{e}"));
        let scan =
            async { Ok::<_, Error>(ctx.sql("SELECT * FROM __emr_in_0").await?.collect().await?) };
        let err = diagnose_on_error(scan.await, &inputs)
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("v.csv:3: "), "{err}");
        assert!(err.contains("age"), "{err}");
        assert!(!err.contains("forty"), "the value is quoted: {err}");
    }
}
