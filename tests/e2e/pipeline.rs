//! `emrflow generate` and `emrflow run`: the example jobs publish clean datasets, no planted PII
//! survives, and bad input fails with one precise line and publishes nothing.

use std::collections::BTreeSet;
use std::path::Path;

use crate::support::{
    all_cells, assert_nothing_published, assert_one_line_error, emrflow, generate,
    read_parquet_dir, root, run, stderr, stdout,
};

fn run_synthetic(data: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    run_stroke_job(
        &data.join("visits.csv"),
        &data.join("patients.csv"),
        out,
        extra,
    )
}

/// Runs the synthetic example job over these visits and patients files.
fn run_stroke_job(
    visits: &Path,
    patients: &Path,
    out: &Path,
    extra: &[&str],
) -> std::process::Output {
    let visits = format!("visits={}", visits.display());
    let patients = format!("patients={}", patients.display());
    let out = out.display().to_string();
    let mut args = vec![
        "run",
        "examples/stroke-synthetic.toml",
        "--input",
        &visits,
        "--input",
        &patients,
        "--out",
        &out,
    ];
    args.extend_from_slice(extra);
    run(&mut emrflow(&args))
}

/// Reads one CSV column's values (the generator's files have a header and RFC 4180 quoting).
fn csv_column(path: &Path, column: &str) -> Vec<String> {
    let mut reader = csv::Reader::from_path(path).unwrap_or_else(|e| panic!("{e}"));
    let idx = reader
        .headers()
        .unwrap_or_else(|e| panic!("{e}"))
        .iter()
        .position(|h| h == column)
        .unwrap_or_else(|| panic!("no column {column}"));
    reader
        .records()
        .filter_map(|r| r.ok())
        .map(|r| r.get(idx).unwrap_or_default().to_string())
        .filter(|v| !v.is_empty())
        .collect()
}

#[test]
fn synthetic_job_publishes_a_dataset_without_any_planted_pii() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let data = tmp.path().join("data");
    let out_dir = tmp.path().join("out");
    generate(&data, 6_000);
    let out = run_synthetic(&data, &out_dir, &["--json"]);
    assert!(out.status.success(), "run failed: {}", stderr(&out));

    let summary: serde_json::Value = serde_json::from_str(stdout(&out).trim())
        .unwrap_or_else(|e| panic!("{e}: {}", stdout(&out)));
    let rows_out = summary["rows_out"].as_u64().unwrap_or(0);
    let read = summary["rows_in"]["visits"].as_u64().unwrap_or(0);
    let dropped: u64 = summary["rows_dropped"]
        .as_object()
        .map(|m| m.values().filter_map(|v| v.as_u64()).sum())
        .unwrap_or(0);
    assert_eq!(read, 6_000);
    assert_eq!(rows_out + dropped, read, "rows do not add up: {summary}");
    assert!(rows_out > 4_000, "too many rows dropped: {summary}");
    assert!(summary["seconds"].as_f64().is_some());

    let manifest_text =
        std::fs::read_to_string(out_dir.join("manifest.json")).unwrap_or_else(|e| panic!("{e}"));
    let manifest: serde_json::Value =
        serde_json::from_str(&manifest_text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(manifest["rows_out"].as_u64(), Some(rows_out));
    assert!(manifest["normalization"]["age"]["mean"].as_f64().is_some());
    assert!(manifest["encodings"]["smoking_status"]["values"].is_array());
    assert_eq!(manifest["pii"]["key_id"].as_str().map(str::len), Some(64));
    assert!(
        !manifest_text.contains(crate::support::TEST_PSEUDONYM_KEY),
        "key leaked into manifest"
    );

    let batches = read_parquet_dir(&out_dir);
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows as u64, rows_out);
    let schema = batches[0].schema();
    let columns: BTreeSet<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    for gone in [
        "full_name",
        "national_id",
        "phone",
        "email",
        "street_address",
        "date_of_birth",
        "clinical_notes",
        "visit_date",
    ] {
        assert!(!columns.contains(gone), "{gone} survived");
    }
    for kept in [
        "patient_id",
        "visit_id",
        "age",
        "bmi",
        "stroke",
        "smoking_status",
    ] {
        assert!(columns.contains(kept), "{kept} missing");
    }

    // Every planted identifier, searched in every published cell and in the manifest.
    let cells: BTreeSet<String> = all_cells(&batches).into_iter().collect();
    let haystack: String = cells.iter().cloned().collect::<Vec<_>>().join("\n");
    let patients = data.join("patients.csv");
    let visits = data.join("visits.csv");
    let mut planted = 0;
    for column in [
        "patient_id",
        "full_name",
        "national_id",
        "phone",
        "email",
        "street_address",
        "date_of_birth",
    ] {
        for value in csv_column(&patients, column) {
            planted += 1;
            assert!(
                !cells.contains(&value),
                "{column} value published as a cell"
            );
            if value.len() >= 8 {
                assert!(
                    !haystack.contains(&value),
                    "{column} value found in published data"
                );
                assert!(
                    !manifest_text.contains(&value),
                    "{column} value found in the manifest"
                );
            }
        }
    }
    for value in csv_column(&visits, "visit_id")
        .into_iter()
        .chain(csv_column(&visits, "clinical_notes"))
    {
        planted += 1;
        assert!(
            !haystack.contains(&value),
            "visit id or note text found in published data"
        );
    }
    assert!(
        planted > 20_000,
        "too few planted values checked: {planted}"
    );
}

#[test]
fn same_input_and_key_give_the_same_pseudonyms() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let data = tmp.path().join("data");
    generate(&data, 1_000);
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    assert!(run_synthetic(&data, &a, &[]).status.success());
    assert!(
        run_synthetic(&data, &b, &["--partitions", "1"])
            .status
            .success()
    );
    let ids = |dir: &Path| -> BTreeSet<String> {
        let batches = read_parquet_dir(dir);
        let mut out = BTreeSet::new();
        for batch in &batches {
            let idx = batch
                .schema()
                .index_of("visit_id")
                .unwrap_or_else(|e| panic!("{e}"));
            let col = batch.column(idx);
            let strings = arrow::array::AsArray::as_string::<i32>(col);
            out.extend(strings.iter().flatten().map(str::to_string));
        }
        out
    };
    let ids_a = ids(&a);
    assert!(!ids_a.is_empty());
    assert!(
        ids_a
            .iter()
            .all(|v| v.len() == 64 && v.chars().all(|c| c.is_ascii_hexdigit()))
    );
    assert_eq!(ids_a, ids(&b));
}

#[test]
#[allow(clippy::print_stderr)] // the skip must be visible in the test output
fn kaggle_example_runs_with_only_its_job_file() {
    let csv = root().join("../shared/data/healthcare-dataset-stroke-data.csv");
    if !csv.exists() {
        eprintln!(
            "skipping kaggle_example_runs_with_only_its_job_file: {} is absent",
            csv.display()
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let out_dir = tmp.path().join("kaggle");
    let out = run(&mut emrflow(&[
        "run",
        "examples/stroke-kaggle.toml",
        "--out",
        &out_dir.display().to_string(),
        "--json",
    ]));
    assert!(out.status.success(), "kaggle run failed: {}", stderr(&out));
    let summary: serde_json::Value =
        serde_json::from_str(stdout(&out).trim()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(summary["rows_in"]["patients"].as_u64(), Some(5110));
    assert_eq!(summary["rows_dropped"]["null: bmi"].as_u64(), Some(201));
    assert_eq!(summary["rows_out"].as_u64(), Some(4909));
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out_dir.join("manifest.json")).unwrap_or_default(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let smoking = manifest["encodings"]["smoking_status"]["values"].to_string();
    assert!(
        smoking.contains("Unknown"),
        "Unknown is not a category: {smoking}"
    );
}

#[test]
fn keeping_the_notes_trips_the_pii_guard_and_publishes_nothing() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let data = tmp.path().join("data");
    generate(&data, 2_000);
    let job = std::fs::read_to_string(root().join("examples/stroke-synthetic.toml"))
        .unwrap_or_default()
        .replace("\"clinical_notes\", ", "");
    let job_path = tmp.path().join("leaky.toml");
    std::fs::write(&job_path, job).unwrap_or_else(|e| panic!("{e}"));
    let out_dir = tmp.path().join("out");
    let visits = format!("visits={}", data.join("visits.csv").display());
    let patients = format!("patients={}", data.join("patients.csv").display());
    let out = run(&mut emrflow(&[
        "run",
        &job_path.display().to_string(),
        "--input",
        &visits,
        "--input",
        &patients,
        "--out",
        &out_dir.display().to_string(),
    ]));
    assert_one_line_error(
        &out,
        &["PII guard", "column clinical_notes", "phone numbers"],
    );
    assert!(!stderr(&out).contains("Callback"), "a note was printed");
    assert_nothing_published(&out_dir);
}

/// A tiny job over one CSV with declared types, for the bad-input cases.
const SMALL_JOB: &str = r#"
name = "small"
label = "y"
row_key = "id"
[inputs.rows]
path = "rows.csv"
types = { bp = "int64", y = "int64" }
[pii]
pseudonymize = ["id"]
key_env = "EMRFLOW_PSEUDONYM_KEY"
[dropna]
columns = ["bp"]
[normalize]
zscore = ["bp"]
[output]
path = "out"
"#;

const GOOD_ROWS: &str = "id,bp,y\na1,120,0\na2,130,1\na3,,0\na4,140,1\n";

struct Case {
    dir: tempfile::TempDir,
}

impl Case {
    fn new(job: &str, rows: &[u8]) -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.path().join("job.toml"), job).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.path().join("rows.csv"), rows).unwrap_or_else(|e| panic!("{e}"));
        Self { dir }
    }

    fn out(&self) -> std::path::PathBuf {
        self.dir.path().join("out")
    }

    fn run(&self, extra: &[&str]) -> std::process::Output {
        let job = self.dir.path().join("job.toml").display().to_string();
        let rows = format!("rows={}", self.dir.path().join("rows.csv").display());
        let out = self.out().display().to_string();
        let mut args = vec![
            "run",
            job.as_str(),
            "--input",
            rows.as_str(),
            "--out",
            out.as_str(),
        ];
        args.extend_from_slice(extra);
        run(&mut emrflow(&args))
    }
}

#[test]
fn small_job_succeeds_and_counts_its_drop() {
    let case = Case::new(SMALL_JOB, GOOD_ROWS.as_bytes());
    let out = case.run(&["--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let summary: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap_or_default();
    assert_eq!(summary["rows_out"].as_u64(), Some(3));
    assert_eq!(summary["rows_dropped"]["null: bp"].as_u64(), Some(1));
}

#[test]
fn missing_input_file_is_named() {
    let case = Case::new(SMALL_JOB, GOOD_ROWS.as_bytes());
    let missing = case.dir.path().join("nope.csv").display().to_string();
    let out = run(&mut emrflow(&[
        "run",
        &case.dir.path().join("job.toml").display().to_string(),
        "--input",
        &format!("rows={missing}"),
        "--out",
        &case.out().display().to_string(),
    ]));
    assert_one_line_error(&out, &["input rows", "nope.csv"]);
    assert_nothing_published(&case.out());
}

#[test]
fn missing_column_names_the_column_and_the_key() {
    let case = Case::new(
        &SMALL_JOB.replace("columns = [\"bp\"]", "columns = [\"bpp\"]"),
        GOOD_ROWS.as_bytes(),
    );
    let out = case.run(&[]);
    assert_one_line_error(&out, &["bpp", "dropna.columns"]);
    assert_nothing_published(&case.out());
}

#[test]
fn malformed_row_names_file_and_line() {
    let case = Case::new(SMALL_JOB, b"id,bp,y\na1,120,0\na2,130\na3,140,1\n");
    let out = case.run(&[]);
    assert_one_line_error(&out, &["rows.csv:3", "expected 3 fields, found 2"]);
    assert_nothing_published(&case.out());
}

#[test]
fn wrong_type_names_file_line_and_column_but_not_the_value() {
    let case = Case::new(SMALL_JOB, b"id,bp,y\na1,120,0\na2,130,1\na3,high,0\n");
    let out = case.run(&[]);
    assert_one_line_error(&out, &["rows.csv:4", "column bp", "integer"]);
    assert!(
        !stderr(&out).contains("high"),
        "the value was printed: {}",
        stderr(&out)
    );
    assert_nothing_published(&case.out());
}

#[test]
fn empty_file_is_named() {
    let case = Case::new(SMALL_JOB, b"");
    let out = case.run(&[]);
    assert_one_line_error(&out, &["rows.csv", "empty"]);
    assert_nothing_published(&case.out());
}

#[test]
fn non_utf8_bytes_name_file_and_line() {
    let case = Case::new(SMALL_JOB, b"id,bp,y\na1,120,0\na\xff\xfe2,130,1\n");
    let out = case.run(&[]);
    assert_one_line_error(&out, &["rows.csv:3", "UTF-8"]);
    assert_nothing_published(&case.out());
}

/// [`SMALL_JOB`] with every type inferred, as a first job over an export usually is.
fn inferred_job() -> String {
    SMALL_JOB.replace("types = { bp = \"int64\", y = \"int64\" }\n", "")
}

#[test]
fn a_header_without_rows_is_named() {
    let case = Case::new(&inferred_job(), b"id,bp,y\r\n");
    let out = case.run(&[]);
    assert_one_line_error(&out, &["rows.csv:2", "input rows has no rows"]);
    assert_nothing_published(&case.out());
}

#[test]
fn a_label_outside_the_classes_is_refused_by_run_with_its_line() {
    for rows in [
        &b"id,bp,y\na1,120,0\na2,130,1\na3,140,2\na4,150,1\n"[..],
        b"id,bp,y\r\na1,120,0\r\na2,130,1\r\na3,140,-1\r\na4,150,1\r\n",
    ] {
        let case = Case::new(&inferred_job(), rows);
        let out = case.run(&[]);
        assert_one_line_error(
            &out,
            &["rows.csv:4", "column y", "outside the job's classes (0, 1)"],
        );
        assert_nothing_published(&case.out());
    }
    // A label that is not a number at all is found the same way.
    let case = Case::new(&inferred_job(), b"id,bp,y\na1,120,0\na2,130,yes\n");
    let out = case.run(&[]);
    assert_one_line_error(&out, &["rows.csv:3", "column y", "integer"]);
    assert!(!stderr(&out).contains("yes"), "{}", stderr(&out));
    assert_nothing_published(&case.out());
    // The job says which classes there are.
    let three = format!("classes = [0, 1, 2]\n{}", inferred_job());
    let case = Case::new(&three, b"id,bp,y\na1,120,0\na2,130,1\na3,140,2\n");
    let out = case.run(&[]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_word_in_a_number_column_is_named_by_line_when_types_are_inferred() {
    // One bad value makes inference read the column as text; the job normalizes it, so it is
    // read as a number and the bad line is named.
    let case = Case::new(
        &inferred_job(),
        b"id,bp,y\na1,120,0\na2,130,1\na3,n.a.,0\na4,140,1\n",
    );
    let out = case.run(&[]);
    assert_one_line_error(&out, &["rows.csv:4", "column bp", "not a valid number"]);
    assert!(!stderr(&out).contains("n.a."), "{}", stderr(&out));
    assert_nothing_published(&case.out());
}

#[test]
fn another_delimiter_is_named_with_the_setting_that_reads_it() {
    let rows = b"id;bp;y\na1;120;0\na2;130;1\na3;140;0\n";
    let case = Case::new(&inferred_job(), rows);
    let out = case.run(&[]);
    assert_one_line_error(
        &out,
        &[
            "rows.csv:1",
            "semicolons",
            "delimiter = \";\" in [inputs.rows]",
        ],
    );
    assert_nothing_published(&case.out());
    let semicolons = inferred_job().replace(
        "path = \"rows.csv\"\n",
        "path = \"rows.csv\"\ndelimiter = \";\"\n",
    );
    let out = Case::new(&semicolons, rows).run(&[]);
    assert!(out.status.success(), "{}", stderr(&out));
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap_or_else(|e| panic!("{e}"));
    e.finish().unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn gzip_and_zstd_exports_give_the_dataset_of_their_rows_and_their_own_source_roots() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let data = tmp.path().join("data");
    generate(&data, 3_000);
    let plain = std::fs::read(data.join("visits.csv")).unwrap_or_else(|e| panic!("{e}"));
    let zstd = zstd::stream::encode_all(plain.as_slice(), 3).unwrap_or_else(|e| panic!("{e}"));
    let summary = |visits: &Path, out: &str| {
        let run = run_stroke_job(
            visits,
            &data.join("patients.csv"),
            &tmp.path().join(out),
            &["--json"],
        );
        assert!(run.status.success(), "{}", stderr(&run));
        serde_json::from_str::<serde_json::Value>(stdout(&run).trim())
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let reference = summary(&data.join("visits.csv"), "plain");
    // Compression is read from the content: the gzip file keeps its usual name, the zstd
    // one has no extension at all.
    let gz = tmp.path().join("visits.csv.gz");
    std::fs::write(&gz, gzip(&plain)).unwrap_or_else(|e| panic!("{e}"));
    let zst = tmp.path().join("visits-export");
    std::fs::write(&zst, &zstd).unwrap_or_else(|e| panic!("{e}"));
    let mut source_roots = BTreeSet::new();
    source_roots.insert(reference["parents"].to_string());
    for (file, out) in [(&gz, "gz"), (&zst, "zst")] {
        let got = summary(file, out);
        assert_eq!(got["root"], reference["root"], "{out}");
        assert_eq!(got["rows_out"], reference["rows_out"], "{out}");
        // The source root is of the bytes as delivered.
        assert!(source_roots.insert(got["parents"].to_string()), "{out}");
    }
}

#[test]
fn misspelled_job_key_names_key_and_line() {
    let case = Case::new(
        &SMALL_JOB.replace("[dropna]", "[dropnaa]"),
        GOOD_ROWS.as_bytes(),
    );
    let out = case.run(&[]);
    assert_one_line_error(&out, &["job.toml", "dropnaa", "line 11"]);
    assert_nothing_published(&case.out());
}

#[test]
fn existing_output_is_refused_unless_overwrite() {
    let case = Case::new(SMALL_JOB, GOOD_ROWS.as_bytes());
    assert!(case.run(&[]).status.success());
    let manifest = case.out().join("manifest.json");
    let before = std::fs::read(&manifest).unwrap_or_default();
    let out = case.run(&[]);
    assert_one_line_error(&out, &["already exists", "--overwrite"]);
    assert_eq!(
        std::fs::read(&manifest).unwrap_or_default(),
        before,
        "existing output changed"
    );
    let out = case.run(&["--overwrite"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(manifest.exists());
}

#[test]
fn missing_pseudonym_key_is_named() {
    let case = Case::new(SMALL_JOB, GOOD_ROWS.as_bytes());
    let job = case.dir.path().join("job.toml").display().to_string();
    let rows = format!("rows={}", case.dir.path().join("rows.csv").display());
    let out = run(emrflow(&[
        "run",
        &job,
        "--input",
        &rows,
        "--out",
        &case.out().display().to_string(),
    ])
    .env_remove("EMRFLOW_PSEUDONYM_KEY"));
    assert_one_line_error(&out, &["pseudonym key missing", "EMRFLOW_PSEUDONYM_KEY"]);
    assert_nothing_published(&case.out());
}

#[test]
fn generator_is_deterministic_through_the_cli() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    generate(&a, 2_500);
    generate(&b, 2_500);
    for f in ["patients.csv", "visits.csv"] {
        assert_eq!(
            std::fs::read(a.join(f)).ok(),
            std::fs::read(b.join(f)).ok(),
            "{f}"
        );
    }
    let out = run(&mut emrflow(&[
        "generate",
        "--visits",
        "500",
        "--out",
        &tmp.path().join("p").display().to_string(),
        "--format",
        "parquet",
        "--json",
    ]));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(tmp.path().join("p/visits.parquet").exists());
    let summary: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap_or_default();
    assert_eq!(summary["visits"].as_u64(), Some(500));
}

#[test]
fn duplicate_join_key_is_refused_whether_rows_are_held_in_memory_or_not() {
    // The key check runs on the lookup input held in memory by default, by SQL over its files
    // with --cache-mib 0; both must refuse a lookup table with a key twice.
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let job = r#"
name = "joined"
[inputs.visits]
path = "visits.csv"
[inputs.people]
path = "people.csv"
[[join]]
left = "visits"
right = "people"
on = "pid"
[output]
path = "out"
"#;
    std::fs::write(dir.path().join("job.toml"), job).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(
        dir.path().join("visits.csv"),
        "vid,pid,bp\nv1,p1,120\nv2,p2,130\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(
        dir.path().join("people.csv"),
        "pid,age\np1,40\np2,50\np1,41\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    for extra in [&[][..], &["--cache-mib", "0"][..]] {
        let out_dir = dir.path().join("out");
        let mut args = vec![
            "run".to_string(),
            dir.path().join("job.toml").display().to_string(),
            "--input".to_string(),
            format!("visits={}", dir.path().join("visits.csv").display()),
            "--input".to_string(),
            format!("people={}", dir.path().join("people.csv").display()),
            "--out".to_string(),
            out_dir.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run(&mut emrflow(&args));
        assert_one_line_error(
            &out,
            &[
                "join[0].on",
                "pid is not unique in input people",
                "1 duplicate keys",
            ],
        );
        assert_nothing_published(&out_dir);
    }
}
