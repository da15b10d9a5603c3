//! The record store end to end: an import of generated exports, reads decided by grants on the
//! ledger (the cardiologist of facility A, the general practitioner), revocation, break-glass,
//! an amendment with its history, an erasure, the access report, and encryption at rest.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use crate::support::{emrflow, generate, run, stderr, stdout};

/// The master key the tests' stores are sealed with.
const MASTER: &str = "9c1f0e2d3b4a59687766554433221100ffeeddccbbaa99887766554433221100";

/// A hospital: generated exports, a record store and an embedded ledger in one directory.
struct Site {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    data: PathBuf,
}

impl Site {
    fn new(visits: u64) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let data = dir.join("data");
        generate(&data, visits);
        Self {
            _tmp: tmp,
            dir,
            data,
        }
    }

    fn store(&self) -> PathBuf {
        self.dir.join("store")
    }

    fn ledger(&self) -> PathBuf {
        self.dir.join("ledger")
    }

    /// `emrflow ARGS` against this site's store and ledger, signing as `identity` (a key file)
    /// or, with `None`, as the embedded ledger's local identity for the command's role.
    fn cmd(&self, args: &[&str], identity: Option<&Path>) -> Command {
        let mut cmd = emrflow(args);
        cmd.env("EMRFLOW_MASTER_KEY", MASTER)
            .env("EMRFLOW_RECORDS", self.store())
            .env("EMRFLOW_LEDGER", self.ledger());
        if let Some(key) = identity {
            cmd.env("EMRFLOW_IDENTITY", key);
        }
        cmd
    }

    fn ok(&self, args: &[&str], identity: Option<&Path>) -> String {
        let out = run(&mut self.cmd(args, identity));
        assert!(
            out.status.success(),
            "emrflow {args:?} failed: {}",
            stderr(&out)
        );
        stdout(&out)
    }

    fn json(&self, args: &[&str], identity: Option<&Path>) -> Value {
        let mut args = args.to_vec();
        args.push("--json");
        let text = self.ok(&args, identity);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    }

    fn import(&self) -> Value {
        let visits = format!("visits={}", self.data.join("visits.csv").display());
        let patients = format!("patients={}", self.data.join("patients.csv").display());
        self.json(
            &[
                "records",
                "import",
                "examples/stroke-synthetic.toml",
                "--input",
                &visits,
                "--input",
                &patients,
            ],
            None,
        )
    }

    /// Registers an identity with `role` and returns its key file.
    fn identity(&self, role: &str, name: &str) -> PathBuf {
        let key = self.dir.join(format!("{name}.key"));
        let ledger = self.ledger().display().to_string();
        let out = run(&mut emrflow(&[
            "ledger",
            "register",
            "--role",
            role,
            "--name",
            name,
            "--out",
            &key.display().to_string(),
            "--ledger",
            &ledger,
        ]));
        assert!(out.status.success(), "register: {}", stderr(&out));
        key
    }

    fn grant(&self, to: &Path, scope: &str, categories: &str, purpose: &str) -> String {
        let made = self.json(
            &[
                "access",
                "grant",
                "--to",
                &to.display().to_string(),
                "--scope",
                scope,
                "--categories",
                categories,
                "--purpose",
                purpose,
            ],
            None,
        );
        made["grant"].as_str().expect("a grant id").to_string()
    }

    fn get(&self, who: &Path, patient: &str, extra: &[&str]) -> Output {
        let mut args = vec!["records", "get", "--patient", patient, "--json"];
        args.extend_from_slice(extra);
        run(&mut self.cmd(&args, Some(who)))
    }

    /// Patients by facility, and each patient's facilities, from the generated visits.
    fn facilities(&self) -> BTreeMap<String, BTreeSet<String>> {
        let mut reader = csv::Reader::from_path(self.data.join("visits.csv")).expect("visits");
        let headers = reader.headers().expect("header").clone();
        let p = headers.iter().position(|h| h == "patient_id").expect("p");
        let f = headers.iter().position(|h| h == "facility_id").expect("f");
        let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for row in reader.records() {
            let row = row.expect("row");
            out.entry(row[p].to_string())
                .or_default()
                .insert(row[f].to_string());
        }
        out
    }
}

fn fields_of(view: &Value) -> BTreeSet<String> {
    view["records"]
        .as_array()
        .expect("records")
        .iter()
        .flat_map(|r| r["fields"].as_array().expect("fields").iter())
        .map(|f| f[0].as_str().expect("column").to_string())
        .collect()
}

fn names(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .expect("a list")
        .iter()
        .map(|c| c.as_str().expect("a name").to_string())
        .collect()
}

fn set(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn the_cardiologist_sees_cardiology_and_vitals_of_facility_a_and_the_gp_sees_more() {
    let site = Site::new(600);
    let imported = site.import();
    assert!(imported["records"].as_u64().expect("records") > 600);
    assert!(imported["root"].is_string(), "{imported}");
    assert_eq!(imported["parents"].as_array().expect("parents").len(), 2);

    let by_patient = site.facilities();
    let one_facility: Vec<(&String, &String)> = by_patient
        .iter()
        .filter(|(_, f)| f.len() == 1)
        .map(|(p, f)| (p, f.iter().next().expect("one")))
        .collect();
    let (a_patient, a) = one_facility[0];
    let (b_patient, b) = one_facility
        .iter()
        .find(|(_, f)| *f != a)
        .copied()
        .expect("patients of two facilities");

    let cardio = site.identity("clinician", "cardiologist");
    let gp = site.identity("clinician", "general-practitioner");
    site.grant(
        &cardio,
        &format!("facility:{a}"),
        "cardiology,vitals",
        "treatment",
    );
    let gp_grant = site.grant(
        &gp,
        "all",
        "demographics,identifiers,vitals,cardiology,neurology,metabolic,diagnoses",
        "treatment",
    );

    // The cardiologist, reading a patient of A as A: exactly cardiology and vitals.
    let out = site.get(&cardio, a_patient, &["--facility", a]);
    assert!(out.status.success(), "{}", stderr(&out));
    let view: Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(names(&view["granted"]), set(&["vitals", "cardiology"]));
    assert_eq!(
        fields_of(&view),
        set(&[
            "systolic_bp",
            "diastolic_bp",
            "heart_rate",
            "bmi",
            "hypertension",
            "heart_disease",
            "atrial_fibrillation",
            "cholesterol",
        ])
    );
    for r in view["records"].as_array().expect("records") {
        assert_eq!(r["id"], "", "no identifiers were granted");
        if r["kind"] == "visit" {
            assert_eq!(r["facility"], a.as_str(), "only facility A's records");
        }
    }
    // ... and nothing of B's patient: as A the proof fails, as B no grant covers it.
    let out = site.get(&cardio, b_patient, &["--facility", a]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("has no records at facility"));
    assert!(stdout(&out).is_empty());
    let out = site.get(&cardio, b_patient, &["--facility", b]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("denied"), "{}", stderr(&out));
    assert!(stdout(&out).is_empty(), "a refused read returns nothing");

    // The general practitioner sees every category but notes, of both.
    for p in [a_patient, b_patient] {
        let out = site.get(&gp, p, &[]);
        assert!(out.status.success(), "{}", stderr(&out));
        let view: Value = serde_json::from_str(&stdout(&out)).expect("json");
        assert_eq!(names(&view["denied"]), set(&["notes"]));
        let fields = fields_of(&view);
        assert!(fields.contains("full_name") && fields.contains("systolic_bp"));
        assert!(!fields.contains("clinical_notes"));
        for r in view["records"].as_array().expect("records") {
            assert!(names(&r["withheld"]).is_subset(&set(&["notes"])), "{r}");
        }
    }

    // Revoked: nothing.
    site.ok(&["access", "revoke", "--grant", &gp_grant], None);
    let out = site.get(&gp, a_patient, &[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));

    // The access report lists each read with its receipt, verified.
    let report = site.json(&["access", "report", "--patient", a_patient], None);
    let entries = report.as_array().expect("entries");
    assert!(entries.len() >= 3, "{report}");
    assert!(entries.iter().all(|e| e["verified"] == true), "{report}");
    let actors: BTreeSet<String> = entries
        .iter()
        .filter_map(|e| e["actor_name"].as_str().map(str::to_string))
        .collect();
    assert!(actors.contains("cardiologist") && actors.contains("general-practitioner"));
}

#[test]
fn break_glass_amendment_history_erasure_and_the_review() {
    let site = Site::new(300);
    site.import();
    let patients = site.facilities();
    let mut ids = patients.keys();
    let (first, second) = (
        ids.next().expect("a patient").clone(),
        ids.next().expect("another").clone(),
    );
    let doc = site.identity("clinician", "emergency-physician");

    // No grant: refused, and recorded.
    let out = site.get(&doc, &first, &[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    // Break-glass with a reason: the whole record, flagged.
    site.ok(
        &[
            "access",
            "break-glass",
            "--patient",
            &first,
            "--reason",
            "unresponsive on arrival, stroke code",
            "--minutes",
            "15",
        ],
        Some(&doc),
    );
    let out = site.get(&doc, &first, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let view: Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(view["decision"]["break_glass"], true);
    assert!(fields_of(&view).contains("clinical_notes"));
    let visit = view["records"]
        .as_array()
        .expect("records")
        .iter()
        .find(|r| r["kind"] == "visit")
        .expect("a visit")["id"]
        .as_str()
        .expect("visit id")
        .to_string();

    // An amendment: a new, anchored version; the history shows both, each verified.
    let amended = site.json(
        &[
            "records",
            "amend",
            "--patient",
            &first,
            "--visit",
            &visit,
            "--set",
            "systolic_bp=131",
            "--reason",
            "transcription error",
        ],
        Some(&doc),
    );
    assert_eq!(amended["version"], 2);
    assert_eq!(names(&amended["categories"]), set(&["vitals"]));
    let out = run(&mut site.cmd(
        &["records", "history", "--patient", &first, "--json"],
        Some(&doc),
    ));
    assert!(out.status.success(), "{}", stderr(&out));
    let history: Value = serde_json::from_str(&stdout(&out)).expect("json");
    let versions: Vec<&Value> = history["records"]
        .as_array()
        .expect("records")
        .iter()
        .filter(|r| r["id"] == visit.as_str())
        .collect();
    assert_eq!(versions.len(), 2);
    assert_eq!(versions[1]["reason"], "transcription error");
    let bp = |r: &Value| {
        r["fields"]
            .as_array()
            .expect("fields")
            .iter()
            .find(|f| f[0] == "systolic_bp")
            .map(|f| f[1].clone())
    };
    assert_eq!(bp(versions[1]), Some(Value::from("131")));
    assert_ne!(
        versions[0]["proof"]["batch_root"],
        versions[1]["proof"]["batch_root"]
    );

    // The review lists the break-glass opening and its reads.
    let review = site.json(&["access", "report", "--break-glass"], None);
    let actions: Vec<&str> = review
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["event"]["action"].as_str().expect("action"))
        .collect();
    assert!(
        actions.contains(&"break_glass") && actions.contains(&"read_record"),
        "{actions:?}"
    );

    // Erasure: the patient is gone; every other record still verifies.
    let erased = site.json(
        &[
            "records",
            "erase",
            "--patient",
            &first,
            "--reason",
            "request 2026-17",
        ],
        None,
    );
    assert!(erased["records_destroyed"].as_u64().expect("count") >= 3);
    let out = site.get(&doc, &first, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("erased"));
    site.ok(
        &[
            "access",
            "break-glass",
            "--patient",
            &second,
            "--reason",
            "transfer from the emergency room",
        ],
        Some(&doc),
    );
    let out = site.get(&doc, &second, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    // The patient's report still holds every event, the erasure's too.
    let report = site.json(&["access", "report", "--patient", &first], None);
    let actions: Vec<&str> = report
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["event"]["action"].as_str().expect("action"))
        .collect();
    assert_eq!(actions.first(), Some(&"read_record"));
    assert!(actions.contains(&"erase_patient"), "{actions:?}");
    assert!(actions.contains(&"amend_record"), "{actions:?}");
}

/// Rewrites one column of the first data row of a CSV file.
fn plant(path: &Path, values: &[(&str, &str)]) {
    let mut reader = csv::Reader::from_path(path).expect("read");
    let headers = reader.headers().expect("header").clone();
    let mut rows: Vec<csv::StringRecord> = reader.records().map(|r| r.expect("row")).collect();
    let mut first: Vec<String> = rows[0].iter().map(str::to_string).collect();
    for (column, value) in values {
        let i = headers.iter().position(|h| h == *column).expect("column");
        first[i] = value.to_string();
    }
    rows[0] = csv::StringRecord::from(first);
    let mut writer = csv::Writer::from_path(path).expect("write");
    writer.write_record(&headers).expect("header");
    for r in &rows {
        writer.write_record(r).expect("row");
    }
    writer.flush().expect("flush");
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn planted_identifiers_notes_and_vitals_are_nowhere_in_the_store_or_the_ledger() {
    let site = Site::new(200);
    let planted = [
        "Quentin Plantedname",
        "PLANT-777-004242",
        "planted-note-zebra-quasar",
        "47.31415",
    ];
    plant(
        &site.data.join("patients.csv"),
        &[("full_name", planted[0]), ("national_id", planted[1])],
    );
    plant(
        &site.data.join("visits.csv"),
        &[("clinical_notes", planted[2]), ("bmi", planted[3])],
    );
    site.import();
    let files: Vec<PathBuf> = files_under(&site.store())
        .into_iter()
        .chain(files_under(&site.ledger()))
        .collect();
    assert!(files.len() >= 2, "{files:?}");
    for file in &files {
        let bytes = std::fs::read(file).expect("read");
        for value in planted {
            assert!(
                !bytes.windows(value.len()).any(|w| w == value.as_bytes()),
                "{value} found in {}",
                file.display()
            );
        }
    }
    // They were imported: a reader granted everything sees them.
    let mut reader = csv::Reader::from_path(site.data.join("patients.csv")).expect("read");
    let id = reader.records().next().expect("row").expect("row")[0].to_string();
    let gp = site.identity("clinician", "gp");
    site.grant(&gp, "all", "all", "treatment");
    let out = site.get(&gp, &id, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains(planted[0]) && text.contains(planted[1]),
        "{text}"
    );
}
