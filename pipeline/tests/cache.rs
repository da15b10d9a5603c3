//! Holding rows in memory between the passes (`RunOptions::cache_limit`) is an optimization and
//! nothing else: whichever way a run goes (reading the inputs twice, holding the lookup inputs
//! and the surviving rows, holding only the lookups, or overflowing the limit and falling back),
//! it publishes the same rows, the same fingerprint and the same manifest. And the raw inputs
//! hashed while the job runs (`RunOptions::hash_inputs`) have the roots
//! `fingerprint::source_root` gives for the same files.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use arrow::array::{Array, AsArray};
use arrow::datatypes::Int32Type;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use pipeline::fingerprint::{self, Fingerprint};
use pipeline::generate::{GenerateConfig, OutputFormat, generate};
use pipeline::{Job, Manifest, NoProgress, Progress, RunOptions, run_job, stage_job};

/// The example job, so the test covers what users run: a join, PII drops and pseudonyms, an age
/// from dates, range checks, dropna, z-score and min-max normalization and string encodings.
/// `hypertension` (an integer) is encoded too, so a category code is also looked up for a value
/// that is not text and has to read as `CAST(x AS VARCHAR)` did when it was fitted.
fn job() -> Job {
    let text = include_str!("../../examples/stroke-synthetic.toml");
    let encode = r#"columns = ["gender", "facility_id", "smoking_status", "icd10_primary"]"#;
    assert!(text.contains(encode), "the example's encodings changed");
    let text = text.replace(
        encode,
        r#"columns = ["gender", "facility_id", "smoking_status", "icd10_primary", "hypertension"]"#,
    );
    Job::from_toml(&text, "stroke-synthetic.toml").unwrap_or_else(|e| panic!("{e}"))
}

/// Visits whose patient is not in `patients.csv`, so the join's drop reason is counted too (the
/// generator writes none). The second also lacks `systolic_bp`: the earlier reason, the join,
/// must take it.
const ORPHANS: &[&str] = &[
    "VORPHAN001,PNOBODY01,2016-03-01,H1,120,80,70,25.5,100.5,200,0,0,0,0,never smoked,I63.9,0,0,0,0,0,,0",
    "VORPHAN002,PNOBODY02,2017-05-02,H2,,85,72,27.5,110.5,210,1,0,0,0,smokes,I10,0,1,0,0,0,,1",
    "VORPHAN003,PNOBODY01,2018-07-03,H3,130,90,75,29.5,120.5,220,0,1,0,0,unknown,I48.91,1,0,0,0,0,,0",
];

/// A few thousand generated visits (with the generator's missing and impossible readings) plus
/// [`ORPHANS`], and a key file, in `dir`. The same seed gives the same bytes, so two calls give
/// datasets that must have the same root.
fn data(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let config = GenerateConfig {
        visits: 3_000,
        seed: 11,
        format: OutputFormat::Csv,
        gzip: false,
    };
    generate(&config, dir).unwrap_or_else(|e| panic!("{e}"));
    let visits = dir.join("visits.csv");
    let mut text = std::fs::read_to_string(&visits).unwrap_or_else(|e| panic!("{e}"));
    if !text.ends_with('\n') {
        text.push('\n');
    }
    for line in ORPHANS {
        text.push_str(line);
        text.push('\n');
    }
    std::fs::write(&visits, text).unwrap_or_else(|e| panic!("{e}"));
    let key = dir.join("key");
    std::fs::write(
        &key,
        "00112233445566778899aabbccddeeff0123456789abcdeffedcba9876543210\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    (visits, dir.join("patients.csv"), key)
}

fn options(data: &(PathBuf, PathBuf, PathBuf), out: &Path, cache_limit: Option<u64>) -> RunOptions {
    let (visits, patients, key) = data;
    RunOptions {
        input_overrides: [
            ("visits".to_string(), visits.display().to_string()),
            ("patients".to_string(), patients.display().to_string()),
        ]
        .into(),
        output_override: Some(out.display().to_string()),
        key_file_override: Some(key.display().to_string()),
        cache_limit,
        ..RunOptions::default()
    }
}

/// Several partitions, so the surviving rows are held (and can overflow) per partition.
fn context() -> SessionContext {
    engine::embedded_context(Some(4)).unwrap_or_else(|e| panic!("{e}"))
}

/// Records, when pass 2 begins, whether the run holds the surviving rows in memory (the
/// `__emr_kept` table), so each case below can check it took the path it is meant to cover.
struct Probe {
    ctx: SessionContext,
    kept_held: Mutex<Option<bool>>,
}

impl Progress for Probe {
    fn stage(&self, name: &str) {
        if name == "writing dataset" {
            let held = self.ctx.table_exist("__emr_kept").unwrap_or(false);
            *self.kept_held.lock().unwrap_or_else(|e| e.into_inner()) = Some(held);
        }
    }
    fn rows(&self, _n: u64) {}
}

/// The bytes of the in-memory tables the context holds after a run: the lookup inputs the run
/// kept (the surviving rows are released at its end). Zero when it held none.
async fn lookup_bytes(ctx: &SessionContext) -> u64 {
    let options = ctx.copied_config().options().catalog.clone();
    let schema = ctx
        .catalog(&options.default_catalog)
        .and_then(|c| c.schema(&options.default_schema))
        .unwrap_or_else(|| panic!("no default schema"));
    let mut bytes = 0;
    for name in schema.table_names() {
        let table = schema
            .table(&name)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("{name} listed but absent"));
        if let Some(mem) = table.downcast_ref::<MemTable>() {
            for partition in &mem.batches {
                bytes += partition
                    .read()
                    .await
                    .iter()
                    .map(|b| b.get_array_memory_size() as u64)
                    .sum::<u64>();
            }
        }
    }
    bytes
}

/// What one run published and how it ran.
struct Outcome {
    manifest: Manifest,
    fingerprint: Fingerprint,
    kept_held: bool,
    lookup_bytes: u64,
}

async fn run(data: &(PathBuf, PathBuf, PathBuf), out: &Path, cache_limit: Option<u64>) -> Outcome {
    let ctx = context();
    let probe = Probe {
        ctx: ctx.clone(),
        kept_held: Mutex::new(None),
    };
    let staged = stage_job(&job(), &options(data, out, cache_limit), &ctx, &probe)
        .await
        .unwrap_or_else(|e| panic!("cache limit {cache_limit:?}: {e}"));
    let written = staged.fingerprint().clone();
    let summary = staged
        .publish()
        .await
        .unwrap_or_else(|e| panic!("cache limit {cache_limit:?}: {e}"));
    let kept_held = probe
        .kept_held
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .unwrap_or_else(|| panic!("cache limit {cache_limit:?}: pass 2 never began"));
    let bytes = std::fs::read(out.join("manifest.json")).unwrap_or_else(|e| panic!("{e}"));
    let manifest = Manifest::from_json(&bytes, "manifest.json").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        summary.manifest, manifest,
        "the summary's manifest is not the published one"
    );
    let df = fingerprint::read_dataset(&ctx, &out.display().to_string())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let fingerprint = fingerprint::fingerprint(df)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // The root a run anchors is the one its writers took from the batches they encoded; the
    // files read back must give exactly that.
    assert_eq!(
        written, fingerprint,
        "cache limit {cache_limit:?}: the writers' fingerprint is not the files'"
    );
    Outcome {
        manifest,
        fingerprint,
        kept_held,
        lookup_bytes: lookup_bytes(&ctx).await,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_cache_limit_publishes_the_same_dataset_and_manifest() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let data = data(&tmp.path().join("data"));

    let twice = run(&data, &tmp.path().join("none"), None).await;
    let held = run(&data, &tmp.path().join("large"), Some(1 << 30)).await;
    // One byte: nothing fits, so the run falls back to reading the inputs twice.
    let overflow = run(&data, &tmp.path().join("tiny"), Some(1)).await;
    // Room for the lookup input (patients: three columns of a thousand rows) with some to
    // spare, but far from enough for the surviving visits (twenty-odd columns of three
    // thousand rows, two of them 64-character pseudonyms): the lookup is held, the rows
    // overflow.
    let lookups = held.lookup_bytes + held.lookup_bytes / 2;
    let lookup_only = run(&data, &tmp.path().join("lookups"), Some(lookups)).await;

    // Each case took the path it is meant to cover; otherwise the comparisons below would
    // compare one path with itself.
    assert!(
        !twice.kept_held && twice.lookup_bytes == 0,
        "no limit held rows"
    );
    assert!(
        held.kept_held,
        "a 1 GiB limit did not hold the surviving rows"
    );
    assert!(
        held.lookup_bytes > 0,
        "a 1 GiB limit did not hold the lookup input"
    );
    assert!(
        !overflow.kept_held && overflow.lookup_bytes == 0,
        "a 1-byte limit held rows"
    );
    assert!(
        !lookup_only.kept_held && lookup_only.lookup_bytes > 0,
        "a {lookups}-byte limit should hold the lookup input only (held rows: {}, lookup bytes: {})",
        lookup_only.kept_held,
        lookup_only.lookup_bytes
    );

    let m = &twice.manifest;
    assert_eq!(
        m.rows_read.get("visits"),
        Some(&(3_000 + ORPHANS.len() as u64))
    );
    assert_eq!(
        m.rows_dropped.get("join: no matching patients row"),
        Some(&(ORPHANS.len() as u64)),
        "{:?}",
        m.rows_dropped
    );
    assert!(
        m.rows_dropped.keys().any(|r| r.starts_with("null: "))
            && m.rows_dropped
                .keys()
                .any(|r| r.starts_with("out of range: ")),
        "the data no longer exercises every drop reason: {:?}",
        m.rows_dropped
    );
    assert_eq!(
        m.rows_out + m.rows_dropped.values().sum::<u64>(),
        m.rows_read["visits"]
    );
    assert_eq!(twice.fingerprint.row_count, m.rows_out);
    assert_eq!(m.encodings["hypertension"].values, vec!["0", "1"]);

    for (name, other) in [
        ("1 GiB", &held),
        ("1 byte", &overflow),
        ("lookups only", &lookup_only),
    ] {
        assert_eq!(
            other.fingerprint.root, twice.fingerprint.root,
            "{name}: dataset root differs from reading twice"
        );
        assert_eq!(other.fingerprint, twice.fingerprint, "{name}: fingerprint");
        let o = &other.manifest;
        assert_eq!(o.rows_read, m.rows_read, "{name}: rows_read");
        assert_eq!(o.rows_out, m.rows_out, "{name}: rows_out");
        assert_eq!(o.rows_dropped, m.rows_dropped, "{name}: rows_dropped");
        assert_eq!(o.normalization, m.normalization, "{name}: normalization");
        assert_eq!(o.encodings, m.encodings, "{name}: encodings");
        assert_eq!(o.schema, m.schema, "{name}: schema");
        assert_eq!(o.features, m.features, "{name}: features");
        // Everything else but the data files (named per partition) is the same too.
        assert!(!o.files.is_empty(), "{name}: no data files");
        let same_but_files = Manifest {
            files: m.files.clone(),
            ..o.clone()
        };
        assert_eq!(&same_but_files, m, "{name}: manifest");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn encoded_codes_of_kept_rows_are_never_null() {
    // The codes are looked up by `emr_category_index` among the categories pass 1 fitted with
    // `CAST(x AS VARCHAR)` on the same rows, so every kept value has one; a NULL code means the
    // lookup reads a value differently from the fit (a text or layout mismatch).
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let data = data(&tmp.path().join("data"));
    let out = tmp.path().join("out");
    let outcome = run(&data, &out, Some(1 << 30)).await;
    let ctx = context();
    let batches = fingerprint::read_dataset(&ctx, &out.display().to_string())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .collect()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!outcome.manifest.encodings.is_empty());
    for (column, encoding) in &outcome.manifest.encodings {
        let mut rows = 0;
        for batch in &batches {
            let codes = batch
                .column_by_name(column)
                .and_then(|c| c.as_primitive_opt::<Int32Type>())
                .unwrap_or_else(|| panic!("{column} is not an Int32 code column"));
            assert_eq!(codes.null_count(), 0, "{column}: NULL codes");
            for code in codes.iter().flatten() {
                assert!(
                    usize::try_from(code).is_ok_and(|c| c < encoding.values.len()),
                    "{column}: code {code} outside {} categories",
                    encoding.values.len()
                );
            }
            rows += codes.len() as u64;
        }
        assert_eq!(rows, outcome.manifest.rows_out, "{column}");
    }
}

/// Moves the inputs away as pass 2 begins: a run that holds its surviving rows never reads
/// them again, one that reads twice finds them gone.
struct MoveInputsAway {
    inputs: Vec<PathBuf>,
    to: PathBuf,
    moved: Mutex<bool>,
}

impl Progress for MoveInputsAway {
    fn stage(&self, name: &str) {
        if name == "writing dataset" {
            for input in &self.inputs {
                let to = self.to.join(input.file_name().unwrap_or_default());
                std::fs::rename(input, to).unwrap_or_else(|e| panic!("{e}"));
            }
            *self.moved.lock().unwrap_or_else(|e| e.into_inner()) = true;
        }
    }
    fn rows(&self, _n: u64) {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_that_holds_its_rows_reads_the_inputs_once() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let reference = run(
        &data(&tmp.path().join("data")),
        &tmp.path().join("reference"),
        None,
    )
    .await;

    for (limit, name) in [(1 << 30, "held"), (1, "overflow")] {
        let dir = tmp.path().join(format!("data-{name}"));
        let data = data(&dir);
        let away = tmp.path().join(format!("away-{name}"));
        std::fs::create_dir_all(&away).unwrap_or_else(|e| panic!("{e}"));
        let mover = MoveInputsAway {
            inputs: vec![data.0.clone(), data.1.clone()],
            to: away,
            moved: Mutex::new(false),
        };
        let out = tmp.path().join(format!("out-{name}"));
        let result = run_job(
            &job(),
            &options(&data, &out, Some(limit)),
            &context(),
            &mover,
        )
        .await;
        assert!(
            *mover.moved.lock().unwrap_or_else(|e| e.into_inner()),
            "{name}: pass 2 never began"
        );
        if limit == 1 {
            // Falling back means reading the inputs again, and they are gone: this shows the
            // held case below is not passing for want of a second read.
            assert!(result.is_err(), "{name}: read inputs that were moved away");
            assert!(!out.exists(), "{name}: a failed run published");
            continue;
        }
        let summary = result.unwrap_or_else(|e| panic!("{name}: pass 2 read the inputs: {e}"));
        assert_eq!(summary.rows_out, reference.manifest.rows_out);
        let ctx = context();
        let df = fingerprint::read_dataset(&ctx, &out.display().to_string())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let fp = fingerprint::fingerprint(df)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(fp, reference.fingerprint, "{name}: dataset root");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn inputs_hashed_during_the_run_have_their_source_roots() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let data = data(&tmp.path().join("data"));
    let ctx = context();
    let root_of = |path: &Path| {
        let ctx = ctx.clone();
        let files = vec![path.display().to_string()];
        async move {
            fingerprint::source_root(&ctx, &files)
                .await
                .unwrap_or_else(|e| panic!("{e}"))
        }
    };
    let visits_root = root_of(&data.0).await;
    let patients_root = root_of(&data.1).await;
    assert_ne!(visits_root, patients_root);

    for (i, (named, expected)) in [
        (
            vec!["visits", "patients"],
            vec![("patients", patients_root), ("visits", visits_root)],
        ),
        (vec!["patients"], vec![("patients", patients_root)]),
        (vec![], vec![]),
    ]
    .into_iter()
    .enumerate()
    {
        let options = RunOptions {
            hash_inputs: named.iter().map(|n| n.to_string()).collect(),
            ..options(&data, &tmp.path().join(format!("out-{i}")), Some(1 << 30))
        };
        let ctx = context();
        let mut staged = stage_job(&job(), &options, &ctx, &NoProgress)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let roots = staged
            .source_roots()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let expected: std::collections::BTreeMap<String, fingerprint::Hash32> = expected
            .into_iter()
            .map(|(n, r)| (n.to_string(), r))
            .collect();
        assert_eq!(roots, expected, "hash_inputs {named:?}");
        staged.abort().await;
    }
}
