//! FHIR Bulk Data in: the same generated population as a FHIR export (plain and gzipped) and as
//! CSV tables, through the stroke job, embedded and on a cluster of processes, publishes the
//! same rows under the same root and trains the same model; a FHIR input without its table, and
//! an export with a broken line, are refused by name (the file and line, never the value) and
//! publish nothing.

use std::path::Path;

use serde_json::Value;

use crate::support::{
    assert_nothing_published, assert_one_line_error, emrflow, run, stderr, stdout,
};

fn generate(out: &Path, extra: &[&str]) {
    let out = out.display().to_string();
    let mut args = vec!["generate", "--visits", "4000", "--seed", "9", "--out", &out];
    args.extend_from_slice(extra);
    let done = run(&mut emrflow(&args));
    assert!(done.status.success(), "{}", stderr(&done));
}

fn job(file: &str, visits: &Path, patients: &Path, out: &Path, ledger: &Path) -> Value {
    job_on(file, (visits, patients), out, ledger, None)
}

fn job_on(
    file: &str,
    (visits, patients): (&Path, &Path),
    out: &Path,
    ledger: &Path,
    cluster: Option<&str>,
) -> Value {
    let (v, p) = (
        format!("visits={}", visits.display()),
        format!("patients={}", patients.display()),
    );
    let (out, ledger) = (out.display().to_string(), ledger.display().to_string());
    let mut args = vec![
        "run", file, "--input", &v, "--input", &p, "--out", &out, "--ledger", &ledger, "--json",
    ];
    if let Some(url) = cluster {
        args.extend(["--cluster", url]);
    }
    let done = run(&mut emrflow(&args));
    assert!(done.status.success(), "{file}: {}", stderr(&done));
    serde_json::from_str(&stdout(&done)).unwrap_or_else(|e| panic!("{e}: {}", stdout(&done)))
}

fn train(dataset: &Path, out: &Path, ledger: &Path) -> String {
    let (dataset, out, ledger) = (
        dataset.display().to_string(),
        out.display().to_string(),
        ledger.display().to_string(),
    );
    let done = run(&mut emrflow(&[
        "train",
        "--dataset",
        &dataset,
        "--out",
        &out,
        "--ledger",
        &ledger,
        "--folds",
        "0",
        "--max-depth",
        "5",
        "--json",
    ]));
    assert!(done.status.success(), "{}", stderr(&done));
    let v: Value = serde_json::from_str(&stdout(&done)).unwrap_or_default();
    v["model_root"].as_str().unwrap_or_default().to_string()
}

#[test]
fn a_fhir_export_gives_the_csv_tables_dataset_root_and_model() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (data, fhir, zipped) = (
        tmp.path().join("data"),
        tmp.path().join("fhir"),
        tmp.path().join("fhir-gz"),
    );
    generate(&data, &[]);
    generate(&fhir, &["--format", "fhir"]);
    generate(&zipped, &["--format", "fhir", "--gzip"]);
    let ledger = tmp.path().join("ledger");

    let csv = job(
        "examples/stroke-synthetic.toml",
        &data.join("visits.csv"),
        &data.join("patients.csv"),
        &tmp.path().join("out-csv"),
        &ledger,
    );
    let manifest = fhir.join("manifest.json");
    let from_fhir = job(
        "examples/stroke-fhir.toml",
        &manifest,
        &manifest,
        &tmp.path().join("out-fhir"),
        &ledger,
    );
    // The export named by its directory, gzipped.
    let from_zipped = job(
        "examples/stroke-fhir.toml",
        &zipped,
        &zipped,
        &tmp.path().join("out-fhir-gz"),
        &ledger,
    );
    // On a cluster of processes: the executors read the export and flatten it.
    let cluster = crate::cluster::Cluster::start(tmp.path(), 2);
    let on_cluster = job_on(
        "examples/stroke-fhir.toml",
        (&fhir, &fhir),
        &tmp.path().join("out-fhir-cluster"),
        &ledger,
        Some(cluster.url.as_str()),
    );
    drop(cluster);
    for v in [&from_fhir, &from_zipped, &on_cluster] {
        assert_eq!(v["rows_in"], csv["rows_in"], "{v}");
        assert_eq!(v["rows_out"], csv["rows_out"], "{v}");
        assert_eq!(v["rows_dropped"], csv["rows_dropped"], "{v}");
        assert_eq!(v["root"], csv["root"], "the same rows: {v} against {csv}");
    }
    // The raw sources are the bytes as delivered: each export has its own source root.
    assert_ne!(from_fhir["parents"][0], csv["parents"][0]);
    assert_ne!(from_fhir["parents"][0], from_zipped["parents"][0]);

    let a = train(
        &tmp.path().join("out-csv"),
        &tmp.path().join("model-csv"),
        &ledger,
    );
    let b = train(
        &tmp.path().join("out-fhir"),
        &tmp.path().join("model-fhir"),
        &ledger,
    );
    assert!(!a.is_empty());
    assert_eq!(a, b, "the same model from the same rows");
}

#[test]
fn a_fhir_input_without_its_table_is_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let text = std::fs::read_to_string("examples/stroke-fhir.toml").unwrap_or_default();
    let job = tmp.path().join("job.toml");
    std::fs::write(&job, text.replacen("table = \"visits\"\n", "", 1)).unwrap_or_default();
    let done = run(&mut emrflow(&["run", &job.display().to_string()]));
    assert_eq!(done.status.code(), Some(2), "{}", stderr(&done));
    assert!(
        stderr(&done).contains("inputs.visits.table"),
        "{}",
        stderr(&done)
    );
}

#[test]
fn a_broken_line_of_an_export_is_named_by_file_and_line_and_nothing_is_published() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let fhir = tmp.path().join("fhir");
    generate(&fhir, &["--format", "fhir"]);
    // Line 7 of the observations cut in the middle of a value.
    let file = fhir.join("Observation.ndjson");
    let text = std::fs::read_to_string(&file).unwrap_or_default();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let cut = lines[6].len() / 2;
    lines[6].truncate(cut);
    std::fs::write(&file, lines.join("\n") + "\n").unwrap_or_else(|e| panic!("{e}"));
    let (dir, out) = (fhir.display().to_string(), tmp.path().join("out"));
    let (v, p) = (format!("visits={dir}"), format!("patients={dir}"));
    let done = run(&mut emrflow(&[
        "run",
        "examples/stroke-fhir.toml",
        "--input",
        &v,
        "--input",
        &p,
        "--out",
        &out.display().to_string(),
        "--ledger",
        &tmp.path().join("ledger").display().to_string(),
    ]));
    assert_one_line_error(&done, &["Observation.ndjson:7", "not a JSON resource"]);
    assert!(
        !stderr(&done).contains(&lines[6][cut.saturating_sub(8)..]),
        "{}",
        stderr(&done)
    );
    assert_nothing_published(&out);
}
