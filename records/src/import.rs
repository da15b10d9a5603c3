//! `records import`: a job's patients and visits, as the hospital sent them, into the store as
//! one batch. The raw files are hashed and anchored (as `emrflow run` anchors them), the batch
//! root is anchored with them as parents, and only then is the batch written, in one durable
//! transaction: a failure anywhere writes nothing.

use std::collections::BTreeMap;
use std::time::Instant;

use engine::Engine;
use engine::datafusion::arrow::array::{Array, AsArray, RecordBatch};
use engine::datafusion::arrow::compute::cast;
use engine::datafusion::arrow::datatypes::DataType;
use engine::datafusion::prelude::DataFrame;
use futures::StreamExt;
use ledger::contracts::records::{RECORDS_SCHEMA, RECORDS_STAGE};
use ledger::contracts::{AnchorKind, AnchorSpec, Role};
use merkle::Digest;
use pipeline::job::RecordsLayout;
use pipeline::run::sources::Sources;
use pipeline::{Job, Progress};
use provenance::Provenance;
use serde::Serialize;

use crate::categories::CategoryMap;
use crate::error::{Error, Result};
use crate::keys::MasterKey;
use crate::record::{Kind, Record};
use crate::store::{BatchKind, STORE_FILE, Store, WriteStats, Writer, Written};

/// What an import did.
#[derive(Debug, Serialize)]
pub struct Imported {
    /// The store directory.
    pub store: String,
    /// The batch's number in the store; `None` when every record was held already.
    pub batch: Option<u32>,
    /// The batch root anchored (hex); `None` when every record was held already.
    pub root: Option<String>,
    /// Leaves in the batch.
    pub records: u64,
    /// Patient rows read.
    pub patients_read: u64,
    /// Visit rows read.
    pub visits_read: u64,
    /// Visits whose patient has no row in the patients input (kept, as the patient's records).
    pub visits_without_patient: u64,
    /// What was written.
    pub written: WriteStats,
    /// The anchored roots of the source files, the batch's parents (hex).
    pub parents: Vec<String>,
    /// Block height of the batch anchor.
    pub ledger_height: Option<u64>,
    /// The store's size on disk afterwards, in bytes.
    pub store_bytes: u64,
    /// The inputs' size on disk, in bytes.
    pub input_bytes: u64,
    /// Seconds, reading to commit.
    pub seconds: f64,
}

/// Imports `job`'s patients and visits (`overrides` replacing input locations by name) into
/// the store in `dir` (created if missing) with `master`, anchoring on `provenance` as the data
/// engineer.
pub async fn import_job(
    job: &Job,
    overrides: &BTreeMap<String, String>,
    dir: &std::path::Path,
    master: &MasterKey,
    provenance: &Provenance,
    progress: &dyn Progress,
) -> Result<Imported> {
    #[allow(clippy::disallowed_methods)] // the import's own duration, reported to the user
    let started = Instant::now();
    let layout = job.records_layout()?;
    let categories = CategoryMap::with_overrides(&job.records.categories)?;
    let store = Store::open_or_create(dir, master, &categories)?;
    if store.categories() != &categories {
        return Err(Error::Invalid(format!(
            "[records.categories] maps columns differently from the store in {}, which was \
             created with another mapping; a store classifies all its records one way",
            dir.display()
        )));
    }
    let engine = Engine::embedded();
    let ctx = engine.context().await?;
    progress.stage("reading inputs");
    let mut sources = pipeline::run::sources::open_sources(job, overrides, &ctx).await?;
    let mut writer = store.writer(BatchKind::Import)?;
    let mut counts = Counts::default();
    let patients = sources.frame(&ctx, &layout.patients).await?;
    let visits = sources.frame(&ctx, &layout.visits).await?;
    progress.stage("sealing patients");
    let read = add_rows(
        &mut writer,
        patients,
        &layout,
        Kind::Patient,
        &mut counts,
        progress,
    );
    diagnosed(&sources, read.await).await?;
    progress.stage("sealing visits");
    let read = add_rows(
        &mut writer,
        visits,
        &layout,
        Kind::Visit,
        &mut counts,
        progress,
    );
    diagnosed(&sources, read.await).await?;
    let specs = sources.specs();
    let input_bytes = specs
        .iter()
        .flat_map(|s| s.files.iter().map(|f| f.size))
        .sum();

    progress.stage("anchoring");
    let roots = sources.source_roots().await?;
    let rows_in = BTreeMap::from([
        (layout.patients.clone(), counts.patients),
        (layout.visits.clone(), counts.visits),
    ]);
    let mut parents = Vec::new();
    for spec in &specs {
        let source = roots.get(&spec.name).map(|r| Digest(*r));
        let root =
            provenance::publish::input_root(&ctx, provenance, spec, source, &rows_in).await?;
        // Two inputs of one export (a FHIR export's two tables) are one parent.
        if !parents.contains(&root) {
            parents.push(root);
        }
    }
    let (root, ledger_height, number) = match writer.root() {
        None => (None, None, None),
        Some((root, size)) => {
            let spec = AnchorSpec {
                kind: AnchorKind::Dataset,
                root,
                row_count: size,
                schema_hash: Digest::of(RECORDS_SCHEMA),
                location: format!("file://{}", dir.join(STORE_FILE).display()),
                parents: parents.clone(),
                stage: RECORDS_STAGE.to_string(),
                params_hash: Digest::of(
                    serde_json::to_string(&categories.describe())
                        .unwrap_or_default()
                        .as_bytes(),
                ),
                code_version: provenance::anchor::CODE_VERSION.to_string(),
            };
            let receipt = provenance.anchor(Role::DataEngineer, spec).await?;
            progress.stage("writing the store");
            let height = receipt.header.height.0;
            let batch = writer.commit(receipt.tx_id(), height, parents.clone())?;
            (Some(root.to_hex()), Some(height), Some(batch.number))
        }
    };
    let written = counts.written;
    Ok(Imported {
        store: dir.display().to_string(),
        batch: number,
        root,
        records: written.new + written.superseding,
        patients_read: counts.patients,
        visits_read: counts.visits,
        visits_without_patient: counts.orphans,
        written,
        parents: parents.iter().map(Digest::to_hex).collect(),
        ledger_height,
        store_bytes: dir_size(dir),
        input_bytes,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// `result`, or, when the engine failed reading a CSV, the error naming its file, line and
/// column.
async fn diagnosed(sources: &Sources, result: Result<()>) -> Result<()> {
    let engine_error = match result {
        Err(Error::DataFusion(e)) => pipeline::Error::from(*e),
        Err(Error::Arrow(e)) => pipeline::Error::from(*e),
        other => return other,
    };
    Err(sources
        .diagnose::<()>(Err(engine_error))
        .await
        .err()
        .map_or_else(
            || Error::Invalid("reading the inputs failed".into()),
            Error::from,
        ))
}

fn dir_size(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

#[derive(Debug, Default)]
struct Counts {
    patients: u64,
    visits: u64,
    orphans: u64,
    written: WriteStats,
    seen_patients: std::collections::HashSet<String>,
}

/// Reads every row of `frame` as text and adds it to `writer` as a record of `kind`.
async fn add_rows(
    writer: &mut Writer<'_>,
    frame: DataFrame,
    layout: &RecordsLayout,
    kind: Kind,
    counts: &mut Counts,
    progress: &dyn Progress,
) -> Result<()> {
    let input = match kind {
        Kind::Patient => &layout.patients,
        Kind::Visit => &layout.visits,
    };
    let schema = frame.schema().inner().clone();
    let column = |name: &str| -> Result<usize> {
        schema.index_of(name).map_err(|_| {
            Error::Invalid(format!(
                "input {input} has no column {name} (the [records] section names it)"
            ))
        })
    };
    let patient_col = column(&layout.patient_key)?;
    let (id_col, facility_col) = match kind {
        Kind::Patient => (patient_col, None),
        Kind::Visit => (column(&layout.record_key)?, Some(column(&layout.facility)?)),
    };
    let names: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    let mut stream = frame.execute_stream().await?;
    let mut row_no = 0u64;
    while let Some(batch) = stream.next().await {
        let batch: RecordBatch = batch?;
        let text: Vec<_> = batch
            .columns()
            .iter()
            .map(|c| cast(c, &DataType::Utf8))
            .collect::<std::result::Result<_, _>>()?;
        let text: Vec<_> = text.iter().map(|c| c.as_string::<i32>()).collect();
        for r in 0..batch.num_rows() {
            row_no += 1;
            let value = |c: usize| (!text[c].is_null(r)).then(|| text[c].value(r));
            let required = |c: usize, what: &str| -> Result<String> {
                match value(c) {
                    Some(v) if !v.trim().is_empty() => Ok(v.to_string()),
                    _ => Err(Error::Invalid(format!(
                        "input {input}, row {row_no}: column {} ({what}) is empty",
                        names[c]
                    ))),
                }
            };
            let patient_id = required(patient_col, "the patient")?;
            let id = required(id_col, "the record id")?;
            let facility = match facility_col {
                Some(c) => required(c, "the facility")?,
                None => String::new(),
            };
            match kind {
                Kind::Patient => {
                    counts.patients += 1;
                    counts.seen_patients.insert(patient_id.clone());
                }
                Kind::Visit => {
                    counts.visits += 1;
                    if !counts.seen_patients.contains(&patient_id) {
                        counts.orphans += 1;
                    }
                }
            }
            let record = Record {
                kind,
                id,
                facility,
                fields: names
                    .iter()
                    .enumerate()
                    .map(|(c, n)| (n.clone(), value(c).map(str::to_string)))
                    .collect(),
            };
            if writer.add(&patient_id, record, None, None)? == Written::Duplicate {
                return Err(Error::Invalid(format!(
                    "input {input}, row {row_no}: the record id in column {} was read before in \
                     this import; a record is imported once",
                    names[id_col]
                )));
            }
        }
        progress.rows(batch.num_rows() as u64);
    }
    counts.written = writer.stats().clone();
    Ok(())
}
