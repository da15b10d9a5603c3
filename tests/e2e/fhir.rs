//! FHIR Bulk Data in: the same generated population as a FHIR export (plain and gzipped) and as
//! CSV tables, through the stroke job, embedded and on a cluster of processes, publishes the
//! same rows under the same root and trains the same model; an export's own LOINC codes and
//! UCUM units are read by the job's map and the unit rules (an unconvertible unit counted as a
//! drop reason); a FHIR input without its table, a gzipped export on a cluster, and bad exports
//! (a broken line, a resource of another type, a reference to a missing encounter, an unknown
//! code system, a file the manifest lists and the export lacks, no manifest) are refused by name
//! (the file and line, never the value) and publish nothing.

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
    let cluster: Vec<&str> = cluster.map_or(Vec::new(), |url| vec!["--cluster", url]);
    let done = run_tables(Path::new(file), (visits, patients), out, ledger, &cluster);
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
    // A gzipped export on the cluster is refused by name before anything runs: the executors'
    // plan format does not carry a scan's compression, so they would read the bytes as text.
    let refused_out = tmp.path().join("out-fhir-gz-cluster");
    let done = run_export(
        Path::new("examples/stroke-fhir.toml"),
        &zipped,
        &refused_out,
        &ledger,
        &["--cluster", cluster.url.as_str()],
    );
    assert_one_line_error(&done, &["ndjson.gz is compressed", "cluster"]);
    assert_nothing_published(&refused_out);
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

/// Rewrites the lines of `file` with `edit` (given the 1-based line number and the line).
fn edit_lines(file: &Path, mut edit: impl FnMut(usize, &str) -> String) {
    let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{e}"));
    let lines: Vec<String> = text
        .lines()
        .enumerate()
        .map(|(i, l)| edit(i + 1, l))
        .collect();
    std::fs::write(file, lines.join("\n") + "\n").unwrap_or_else(|e| panic!("{e}"));
}

fn copy_export(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("{e}"));
    for entry in std::fs::read_dir(from).unwrap_or_else(|e| panic!("{e}")) {
        let entry = entry.unwrap_or_else(|e| panic!("{e}"));
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap_or_else(|e| panic!("{e}"));
    }
}

/// `emrflow run` of `job` over the export at `input` (its directory or manifest) for both
/// tables.
fn run_export(
    job: &Path,
    input: &Path,
    out: &Path,
    ledger: &Path,
    extra: &[&str],
) -> std::process::Output {
    run_tables(job, (input, input), out, ledger, extra)
}

/// `emrflow run --json` of `job` with its visits and patients inputs at the paths given.
fn run_tables(
    job: &Path,
    (visits, patients): (&Path, &Path),
    out: &Path,
    ledger: &Path,
    extra: &[&str],
) -> std::process::Output {
    let (v, p) = (
        format!("visits={}", visits.display()),
        format!("patients={}", patients.display()),
    );
    let (job, out, ledger) = (
        job.display().to_string(),
        out.display().to_string(),
        ledger.display().to_string(),
    );
    let mut args = vec![
        "run", &job, "--input", &v, "--input", &p, "--out", &out, "--ledger", &ledger, "--json",
    ];
    args.extend_from_slice(extra);
    run(&mut emrflow(&args))
}

#[test]
fn an_exports_own_codes_and_units_are_read_by_the_jobs_loinc_map_and_ucum_rules() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (data, fhir) = (tmp.path().join("data"), tmp.path().join("fhir"));
    generate(&data, &[]);
    generate(&fhir, &["--format", "fhir"]);
    let ledger = tmp.path().join("ledger");
    let csv = job(
        "examples/stroke-synthetic.toml",
        &data.join("visits.csv"),
        &data.join("patients.csv"),
        &tmp.path().join("out-csv"),
        &ledger,
    );
    // The hospital codes systolic pressure as "sitting" (8459-0), counts beats as
    // `{beats}/min` and measures oxygen saturation, which the job adds as a column.
    let observations = fhir.join("Observation.ndjson");
    edit_lines(&observations, |_, l| {
        l.replace("\"code\":\"8480-6\"", "\"code\":\"8459-0\"")
            .replace("\"code\":\"/min\"", "\"code\":\"{beats}/min\"")
    });
    let first = std::fs::read_to_string(&observations).unwrap_or_default();
    let encounter = first
        .lines()
        .next()
        .and_then(|l| l.split("\"encounter\":").nth(1))
        .and_then(|r| r.split('}').next())
        .unwrap_or_default()
        .to_string();
    let spo2 = format!(
        r#"{{"resourceType":"Observation","encounter":{encounter}}},"code":{{"coding":[{{"system":"http://loinc.org","code":"2708-6"}}]}},"valueQuantity":{{"value":97,"system":"http://unitsofmeasure.org","code":"%"}}}}"#
    );
    std::fs::write(&observations, format!("{first}{spo2}\n")).unwrap_or_else(|e| panic!("{e}"));
    let text = std::fs::read_to_string("examples/stroke-fhir.toml").unwrap_or_default();
    let mapped = text.replacen(
        "table = \"visits\"\n",
        "table = \"visits\"\n\n[inputs.visits.loinc]\nsystolic_bp = { code = \"8459-0\" }\n\
         spo2 = { code = \"2708-6\", unit = \"%\" }\n",
        1,
    );
    let job_file = tmp.path().join("mapped.toml");
    std::fs::write(&job_file, &mapped).unwrap_or_else(|e| panic!("{e}"));
    let out = tmp.path().join("out-mapped");
    let done = run_export(&job_file, &fhir, &out, &ledger, &[]);
    assert!(done.status.success(), "{}", stderr(&done));
    let mapped_run: Value = serde_json::from_str(&stdout(&done)).unwrap_or_default();
    assert_eq!(mapped_run["rows_out"], csv["rows_out"], "{mapped_run}");
    assert_eq!(mapped_run["rows_dropped"], csv["rows_dropped"]);
    let manifest = std::fs::read_to_string(out.join("manifest.json")).unwrap_or_default();
    assert!(
        manifest.contains("\"spo2\""),
        "the added column is published"
    );

    // Cholesterol in a unit no rule converts: each such visit is dropped and counted.
    let mut broken = 0;
    edit_lines(&observations, |_, l| {
        if broken < 5 && l.contains("\"code\":\"2093-3\"") {
            broken += 1;
            l.replace("\"code\":\"mg/dL\"", "\"code\":\"mmol/mol\"")
        } else {
            l.to_string()
        }
    });
    let done = run_export(
        &job_file,
        &fhir,
        &tmp.path().join("out-units"),
        &ledger,
        &[],
    );
    assert!(done.status.success(), "{}", stderr(&done));
    let units: Value = serde_json::from_str(&stdout(&done)).unwrap_or_default();
    assert_eq!(units["rows_dropped"]["unit: cholesterol"], 5, "{units}");
    assert_eq!(units["rows_in"], csv["rows_in"]);

    // An entry that names no measure is refused by its setting.
    let wrong = mapped.replacen("systolic_bp = {", "stroke = {", 1);
    std::fs::write(&job_file, wrong).unwrap_or_else(|e| panic!("{e}"));
    let done = run_export(
        &job_file,
        &fhir,
        &tmp.path().join("out-wrong"),
        &ledger,
        &[],
    );
    assert_one_line_error(&done, &["inputs.visits.loinc.stroke"]);
}

#[test]
fn bad_exports_are_named_by_file_and_line_and_publish_nothing() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let base = tmp.path().join("base");
    generate(&base, &["--format", "fhir"]);
    let ledger = tmp.path().join("ledger");
    let job_file = Path::new("examples/stroke-fhir.toml");
    let line_count = |file: &str| {
        std::fs::read_to_string(base.join(file))
            .unwrap_or_default()
            .lines()
            .count()
    };
    let conditions = line_count("Condition.ndjson");
    type Edit = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, Edit, Vec<String>)> = vec![
        (
            "a well-formed resource of another type",
            Box::new(|dir: &Path| {
                let file = dir.join("Condition.ndjson");
                let text = std::fs::read_to_string(&file).unwrap_or_default();
                let extra = r#"{"resourceType":"Patient","id":"SECRET-ID"}"#;
                std::fs::write(&file, format!("{text}{extra}\n")).unwrap_or_default();
            }),
            vec![
                format!("Condition.ndjson:{}", conditions + 1),
                "a Patient resource in the Condition file".into(),
            ],
        ),
        (
            "an observation of a missing encounter",
            Box::new(|dir: &Path| {
                edit_lines(&dir.join("Observation.ndjson"), |n, l| {
                    if n == 3 {
                        let at = l.find("\"Encounter/").unwrap_or(0);
                        let end = l[at + 1..].find('"').map_or(l.len(), |e| at + 1 + e);
                        format!("{}\"Encounter/SECRET-ID{}", &l[..at], &l[end..])
                    } else {
                        l.to_string()
                    }
                });
            }),
            vec![
                "Observation.ndjson:3".into(),
                "an Encounter that is not in the export".into(),
            ],
        ),
        (
            "a condition of an unknown code system",
            Box::new(|dir: &Path| {
                edit_lines(&dir.join("Condition.ndjson"), |n, l| {
                    if n == 2 {
                        l.replace("http://hl7.org/fhir/sid/icd-10", "urn:oid:SECRET")
                    } else {
                        l.to_string()
                    }
                });
            }),
            vec![
                "Condition.ndjson:2".into(),
                "no known code system (ICD-10 expected)".into(),
            ],
        ),
        (
            "a file the manifest lists and the export lacks",
            Box::new(|dir: &Path| {
                std::fs::remove_file(dir.join("DocumentReference.ndjson")).unwrap_or_default();
            }),
            vec![
                "no such file".into(),
                "DocumentReference.ndjson (listed in manifest.json)".into(),
            ],
        ),
    ];
    for (what, edit, needles) in cases {
        let dir = tmp.path().join(what.replace(' ', "-"));
        copy_export(&base, &dir);
        edit(&dir);
        let out = tmp.path().join(format!("out-{}", what.replace(' ', "-")));
        let done = run_export(job_file, &dir.join("manifest.json"), &out, &ledger, &[]);
        let needles: Vec<&str> = needles.iter().map(String::as_str).collect();
        assert_one_line_error(&done, &needles);
        assert!(
            !stderr(&done).contains("SECRET"),
            "{what}: {}",
            stderr(&done)
        );
        assert_nothing_published(&out);
    }

    // A manifest that is not there.
    let out = tmp.path().join("out-no-manifest");
    let done = run_export(job_file, &base.join("export.json"), &out, &ledger, &[]);
    assert_one_line_error(&done, &["no such file", "export.json"]);
    assert_nothing_published(&out);

    // Encounters of a patient the export lacks: the job's join drops and counts them.
    let dir = tmp.path().join("missing-patient");
    copy_export(&base, &dir);
    edit_lines(&dir.join("Patient.ndjson"), |n, l| {
        if n == 1 {
            l.replace("\"id\":\"", "\"id\":\"gone-")
        } else {
            l.to_string()
        }
    });
    let done = run_export(
        job_file,
        &dir,
        &tmp.path().join("out-patient"),
        &ledger,
        &[],
    );
    assert!(done.status.success(), "{}", stderr(&done));
    let v: Value = serde_json::from_str(&stdout(&done)).unwrap_or_default();
    assert!(
        v["rows_dropped"]["join: no matching patients row"].as_u64() > Some(0),
        "{v}"
    );
}

#[test]
fn a_records_import_of_an_export_holds_what_the_csv_tables_hold() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (data, fhir) = (tmp.path().join("data"), tmp.path().join("fhir"));
    generate(&data, &[]);
    generate(&fhir, &["--format", "fhir"]);
    let ledger = tmp.path().join("ledger").display().to_string();
    let import = |job: &str, visits: &Path, patients: &Path, store: &str| -> Value {
        let (v, p) = (
            format!("visits={}", visits.display()),
            format!("patients={}", patients.display()),
        );
        let store = tmp.path().join(store).display().to_string();
        let mut cmd = emrflow(&[
            "records", "import", job, "--input", &v, "--input", &p, "--store", &store, "--json",
        ]);
        cmd.env(
            "EMRFLOW_MASTER_KEY",
            "9c1f0e2d3b4a59687766554433221100ffeeddccbbaa99887766554433221100",
        )
        .env("EMRFLOW_LEDGER", &ledger);
        let done = run(&mut cmd);
        assert!(done.status.success(), "{job}: {}", stderr(&done));
        serde_json::from_str(&stdout(&done)).unwrap_or_else(|e| panic!("{e}"))
    };
    let csv = import(
        "examples/stroke-synthetic.toml",
        &data.join("visits.csv"),
        &data.join("patients.csv"),
        "store-csv",
    );
    // A value in a unit no rule converts is held as missing: the store keeps what was sent.
    let mut broken = 0;
    edit_lines(&fhir.join("Observation.ndjson"), |_, l| {
        if broken < 3 && l.contains("\"code\":\"2093-3\"") {
            broken += 1;
            l.replace("\"code\":\"mg/dL\"", "\"code\":\"mmol/mol\"")
        } else {
            l.to_string()
        }
    });
    let from_fhir = import("examples/stroke-fhir.toml", &fhir, &fhir, "store-fhir");
    for field in [
        "records",
        "patients_read",
        "visits_read",
        "visits_without_patient",
    ] {
        assert_eq!(
            from_fhir[field], csv[field],
            "{field}: {from_fhir} against {csv}"
        );
    }
}
