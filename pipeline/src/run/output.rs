//! The output stage: pass 2's rows (each kept row normalized, encoded and pseudonymized, the
//! expressions coming from those stages), the manifest's feature list, and writing the rows
//! into staging, one Parquet file per partition, while the PII guard scans them and the
//! fingerprint hashes them as they are encoded. Publishing the staged files is `store.rs`'s.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Schema, SchemaRef};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::logical_expr::{Expr, ident};
use datafusion::prelude::DataFrame;
use futures::StreamExt;
use object_store::buffered::BufWriter;
use parquet::arrow::AsyncArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use super::Progress;
use super::fit::Fit;
use super::pii::{self, Deidentified};
use super::{categorical, normalize};
use crate::error::{Error, Result};
use crate::fingerprint::{Fingerprint, PartHasher, PartState, RowsFingerprint};
use crate::guard::PiiScanner;
use crate::job::Job;
use crate::manifest::{FeatureKind, FeatureSpec};
use crate::store::{Sink, Staging};

/// Refuses a label, row key or feature that names no output column.
pub(super) fn check(job: &Job, columns: &Deidentified) -> Result<()> {
    if let Some(label) = &job.label {
        columns.type_of(label, "label")?;
    }
    if let Some(key) = &job.row_key {
        columns.type_of(key, "row_key")?;
    }
    if let Some(features) = &job.features {
        for c in features {
            columns.type_of(c, "features")?;
        }
    }
    Ok(())
}

/// The output rows: `kept` (the surviving rows, de-identified but not yet pseudonymized)
/// normalized, encoded and pseudonymized as `fit` and the policy say. `text` is the type SQL's
/// `VARCHAR` names in the session (see [`pii::pseudonym`]).
pub(super) fn project(
    kept: DataFrame,
    columns: &Deidentified,
    fit: &Fit,
    text: &DataType,
) -> Result<DataFrame> {
    let exprs = columns
        .columns
        .iter()
        .map(|c| {
            Ok(if let Some(n) = fit.normalizers.get(&c.name) {
                normalize::scaled(&c.name, n)?
            } else if let Some(enc) = fit.encodings.get(&c.name) {
                categorical::coded(&c.name, enc)
            } else if columns.pseudonymized.contains(&c.name) {
                pii::pseudonym(&c.name, text)
            } else {
                ident(&c.name)
            })
        })
        .collect::<Result<Vec<Expr>>>()?;
    Ok(kept.select(exprs)?)
}

/// The manifest's features: the job's list, or every numeric, boolean or encoded output column
/// but the label, the row key and the pseudonyms.
pub(super) fn features(
    job: &Job,
    pseudonymized: &[String],
    schema: &Schema,
    fit: &Fit,
) -> Result<Vec<FeatureSpec>> {
    let excluded = |name: &str| {
        job.label.as_deref() == Some(name)
            || job.row_key.as_deref() == Some(name)
            || pseudonymized.iter().any(|p| p == name)
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

/// What [`write_partitions`] wrote.
pub(super) struct Written {
    pub(super) rows: u64,
    pub(super) files: Vec<String>,
    pub(super) scanner: PiiScanner,
    pub(super) fingerprint: Fingerprint,
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
pub(super) fn writer_properties(
    pseudonymized: &[String],
    row_key: Option<&str>,
) -> WriterProperties {
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
pub(super) async fn write_partitions(
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

#[cfg(test)]
mod tests {
    use arrow::array::{ArrayRef, AsArray, Float64Array, Int64Array, StringArray};
    use arrow::datatypes::Field;
    use datafusion::prelude::SessionContext;

    use super::*;
    use crate::manifest::{Encoding, MANIFEST_FILE, Normalizer};
    use crate::run::NoProgress;
    use crate::store::Location;

    fn job(extra: &str) -> Job {
        let text = format!(
            "name = \"t\"\nlabel = \"stroke\"\nrow_key = \"id\"\n{extra}\n[inputs.v]\n\
             path = \"v.csv\"\n[pii]\npseudonymize = [\"id\"]\nkey_env = \"K\"\n\
             [output]\npath = \"out\"\n"
        );
        Job::from_toml(&text, "job.toml").unwrap_or_else(|e| panic!("{e}"))
    }

    fn columns(job: &Job) -> Deidentified {
        let joined = [
            ("id", DataType::Utf8),
            ("bmi", DataType::Float64),
            ("sex", DataType::Utf8),
            ("note", DataType::Utf8),
            ("stroke", DataType::Int64),
        ]
        .map(|(n, t)| (n.to_string(), t));
        Deidentified::build(job, &joined).unwrap_or_else(|e| panic!("{e}"))
    }

    fn fit() -> Fit {
        let mut fit = Fit::default();
        fit.normalizers.insert(
            "bmi".into(),
            Normalizer::MinMax {
                min: 10.0,
                max: 30.0,
            },
        );
        fit.encodings.insert(
            "sex".into(),
            Encoding {
                values: vec!["F".into(), "M".into()],
            },
        );
        fit
    }

    fn kept() -> RecordBatch {
        RecordBatch::try_from_iter([
            (
                "id",
                Arc::new(StringArray::from(vec!["V1", "V2"])) as ArrayRef,
            ),
            ("bmi", Arc::new(Float64Array::from(vec![10.0, 20.0]))),
            ("sex", Arc::new(StringArray::from(vec!["M", "F"]))),
            ("note", Arc::new(StringArray::from(vec!["ok", "fine"]))),
            ("stroke", Arc::new(Int64Array::from(vec![0, 1]))),
        ])
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// A context that pseudonymizes with a fixed key, as a run's does after the PII stage.
    fn context() -> SessionContext {
        let mut ctx = SessionContext::new_with_config(
            datafusion::prelude::SessionConfig::new()
                .with_option_extension(crate::functions::EmrflowOptions::default()),
        );
        crate::functions::register_functions(&mut ctx).unwrap_or_else(|e| panic!("{e}"));
        pii::install_key(&ctx, b"0123456789abcdef").unwrap_or_else(|e| panic!("{e}"));
        ctx
    }

    #[tokio::test]
    async fn each_column_is_written_as_its_stage_transforms_it() {
        let job = job("");
        let ctx = context();
        let df = ctx.read_batch(kept()).unwrap_or_else(|e| panic!("{e}"));
        let out = project(df, &columns(&job), &fit(), &DataType::Utf8View)
            .unwrap_or_else(|e| panic!("{e}"))
            .collect()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let batch = arrow::compute::concat_batches(&out[0].schema(), &out)
            .unwrap_or_else(|e| panic!("{e}"));
        let written: Vec<Option<&str>> = batch.column(0).as_string::<i32>().iter().collect();
        let pseudonyms = [
            crate::functions::pseudonym(b"0123456789abcdef", b"V1"),
            crate::functions::pseudonym(b"0123456789abcdef", b"V2"),
        ];
        assert_eq!(
            written,
            [Some(pseudonyms[0].as_str()), Some(pseudonyms[1].as_str())]
        );
        // The 64-digit pseudonyms, checked above, shown by what they stand for.
        let named: ArrayRef = Arc::new(StringArray::from(vec![
            "<pseudonym of V1>",
            "<pseudonym of V2>",
        ]));
        let shown = RecordBatch::try_new(
            batch.schema(),
            std::iter::once(named)
                .chain(batch.columns()[1..].iter().cloned())
                .collect(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let text = arrow::util::pretty::pretty_format_batches(&[shown])
            .unwrap_or_else(|e| panic!("{e}"))
            .to_string();
        insta::assert_snapshot!(text, @r"
        +-------------------+-----+-----+------+--------+
        | id                | bmi | sex | note | stroke |
        +-------------------+-----+-----+------+--------+
        | <pseudonym of V1> | 0.0 | 1   | ok   | 0      |
        | <pseudonym of V2> | 0.5 | 0   | fine | 1      |
        +-------------------+-----+-----+------+--------+
        ");
    }

    #[test]
    fn features_leave_out_the_label_the_key_and_pseudonyms() {
        let schema = Schema::new(vec![
            Field::new("id", DataType::Utf8, true),
            Field::new("bmi", DataType::Float64, true),
            Field::new("sex", DataType::Int32, true),
            Field::new("note", DataType::Utf8, true),
            Field::new("stroke", DataType::Int64, true),
        ]);
        let job = job("");
        let features =
            features(&job, &["id".to_string()], &schema, &fit()).unwrap_or_else(|e| panic!("{e}"));
        let names: Vec<String> = features
            .iter()
            .map(|f| format!("{} {:?}", f.name, f.kind))
            .collect();
        assert_eq!(
            names,
            ["bmi Continuous", "sex Categorical { categories: 2 }"]
        );
        let listed = self::job("features = [\"note\"]");
        let err = super::features(&listed, &[], &schema, &fit())
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("invalid job: features: column note is neither numeric nor encoded")
        );
        let unknown = self::job("features = [\"weight\"]");
        let err = check(&unknown, &columns(&unknown))
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some(
                "column weight named in features does not exist \
                 (available: id, bmi, sex, note, stroke)"
            )
        );
    }

    #[test]
    fn only_a_pseudonymized_row_key_is_stored_uncompressed() {
        let props = writer_properties(&["id".to_string(), "patient".to_string()], Some("id"));
        let id = ColumnPath::from("id");
        let patient = ColumnPath::from("patient");
        let bmi = ColumnPath::from("bmi");
        assert_eq!(props.compression(&id), Compression::UNCOMPRESSED);
        assert_eq!(props.compression(&patient), Compression::LZ4_RAW);
        assert_eq!(props.compression(&bmi), Compression::LZ4_RAW);
        assert!(!props.dictionary_enabled(&patient) && props.dictionary_enabled(&bmi));
        assert_eq!(props.statistics_enabled(&id), EnabledStatistics::None);
        assert_eq!(props.max_row_group_row_count(), Some(ROW_GROUP_ROWS));
    }

    #[tokio::test]
    async fn each_partition_with_rows_becomes_one_part_file() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let ctx = SessionContext::new();
        let target = Location::resolve(&ctx, &dir.path().join("out").display().to_string())
            .unwrap_or_else(|e| panic!("{e}"));
        let mut staging = Staging::begin(target, false, MANIFEST_FILE)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let empty = RecordBatch::new_empty(kept().schema());
        let table = datafusion::datasource::MemTable::try_new(
            kept().schema(),
            vec![vec![kept()], vec![empty], vec![kept(), kept()]],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let df = ctx
            .read_table(Arc::new(table))
            .unwrap_or_else(|e| panic!("{e}"));
        let props = writer_properties(&[], None);
        let written =
            write_partitions(df, &mut staging, &["note".to_string()], &props, &NoProgress)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(written.rows, 6);
        assert_eq!(written.files, ["part-00000.parquet", "part-00002.parquet"]);
        assert!(written.scanner.verdict().is_ok());
        staging.abort().await;
    }
}
