//! The record store end to end: an import of generated exports, reads decided by grants on the
//! ledger (the cardiologist of facility A, the general practitioner), revocation, break-glass,
//! an amendment with its history, an erasure, the access report, encryption at rest, and reads
//! against four `emrflow ledger node` processes while one peer is killed and restarted.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use crate::ledger::Cluster;
use crate::support::{emrflow, generate, run, stderr, stdout};

/// The master key the tests' stores are sealed with.
const MASTER: &str = "9c1f0e2d3b4a59687766554433221100ffeeddccbbaa99887766554433221100";

/// A hospital: generated exports and a record store in one directory, and a ledger: embedded
/// in the same directory, or a cluster of peer processes.
pub(crate) struct Site {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    pub(crate) data: PathBuf,
    ledger: PathBuf,
    /// Who signs when a command names no identity: the admin, on a cluster (on an embedded
    /// ledger, its local identity for the command's role).
    signer: Option<PathBuf>,
}

impl Site {
    fn new(visits: u64) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ledger = tmp.path().join("ledger");
        Self::with(tmp, visits, ledger, None)
    }

    /// A site whose ledger is the cluster of `genesis`, administered with `admin`.
    pub(crate) fn on(visits: u64, genesis: PathBuf, admin: PathBuf) -> Self {
        Self::with(
            tempfile::tempdir().expect("tempdir"),
            visits,
            genesis,
            Some(admin),
        )
    }

    fn with(tmp: tempfile::TempDir, visits: u64, ledger: PathBuf, signer: Option<PathBuf>) -> Self {
        let dir = tmp.path().to_path_buf();
        let data = dir.join("data");
        generate(&data, visits);
        Self {
            _tmp: tmp,
            dir,
            data,
            ledger,
            signer,
        }
    }

    pub(crate) fn store(&self) -> PathBuf {
        self.dir.join("store")
    }

    pub(crate) fn ledger(&self) -> PathBuf {
        self.ledger.clone()
    }

    /// `emrflow ARGS` against this site's store and ledger, signing as `identity` (a key file)
    /// or, with `None`, as the site's default signer.
    pub(crate) fn cmd(&self, args: &[&str], identity: Option<&Path>) -> Command {
        let mut cmd = emrflow(args);
        cmd.env("EMRFLOW_MASTER_KEY", MASTER)
            .env("EMRFLOW_RECORDS", self.store())
            .env("EMRFLOW_LEDGER", self.ledger());
        if let Some(key) = identity.or(self.signer.as_deref()) {
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

    /// The JSON a successful command printed.
    pub(crate) fn json_of(&self, cmd: &mut Command) -> Value {
        let out = run(cmd);
        assert!(out.status.success(), "{cmd:?}: {}", stderr(&out));
        let text = stdout(&out);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    }

    pub(crate) fn json(&self, args: &[&str], identity: Option<&Path>) -> Value {
        let mut args = args.to_vec();
        args.push("--json");
        let text = self.ok(&args, identity);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    }

    fn import(&self) -> Value {
        self.import_as(None)
    }

    /// Peer `peer`'s own copy of `patient`'s access trail, asked as `auditor`.
    pub(crate) fn peer_report(&self, patient: &str, peer: usize, auditor: &Path) -> Value {
        let peer = peer.to_string();
        self.json(
            &["access", "report", "--patient", patient, "--peer", &peer],
            Some(auditor),
        )
    }

    pub(crate) fn import_as(&self, identity: Option<&Path>) -> Value {
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
            identity,
        )
    }

    /// Registers an identity with `role` and returns its key file.
    pub(crate) fn identity(&self, role: &str, name: &str) -> PathBuf {
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

    pub(crate) fn grant(&self, to: &Path, scope: &str, categories: &str, purpose: &str) -> String {
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
    pub(crate) fn facilities(&self) -> BTreeMap<String, BTreeSet<String>> {
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

/// A hospital on a cluster of four `emrflow ledger node` processes: 300 generated visits
/// imported by a data engineer, a cardiologist, a general practitioner and a compliance officer
/// registered (no grants yet), and a patient seen at one facility only.
pub(crate) struct Hospital {
    pub(crate) _tmp: tempfile::TempDir,
    pub(crate) cluster: Cluster,
    pub(crate) site: Site,
    pub(crate) cardio: PathBuf,
    pub(crate) gp: PathBuf,
    pub(crate) officer: PathBuf,
    pub(crate) patient: String,
    pub(crate) facility: String,
}

impl Hospital {
    pub(crate) fn start() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let cluster = Cluster::start(&tmp.path().join("ledger"));
        let site = Site::on(300, cluster.genesis(), cluster.dir().join("admin.key"));
        let engineer = site.identity("data_engineer", "etl");
        site.import_as(Some(&engineer));
        let (patient, facility) = site
            .facilities()
            .into_iter()
            .find_map(|(p, f)| (f.len() == 1).then(|| (p, f.into_iter().next())))
            .and_then(|(p, f)| Some((p, f?)))
            .expect("a patient of one facility");
        Self {
            cardio: site.identity("clinician", "cardiologist"),
            gp: site.identity("clinician", "general-practitioner"),
            officer: site.identity("compliance", "compliance-officer"),
            _tmp: tmp,
            cluster,
            site,
            patient,
            facility,
        }
    }
}

/// The transaction ids of the reads a client received, with who read.
fn received_tx(out: &Output) -> String {
    let view: Value = serde_json::from_str(&stdout(out)).expect("json");
    assert!(
        !view["records"].as_array().expect("records").is_empty(),
        "{view}"
    );
    view["tx"].as_str().expect("tx").to_string()
}

#[test]
fn reads_on_four_peer_processes_are_audited_on_every_peer_and_refused_without_a_quorum() {
    let Hospital {
        _tmp,
        mut cluster,
        site,
        cardio,
        gp,
        officer,
        patient,
        facility,
    } = Hospital::start();
    site.grant(
        &cardio,
        &format!("facility:{facility}"),
        "cardiology,vitals",
        "treatment",
    );
    site.grant(&gp, "all", "demographics,vitals,diagnoses", "treatment");
    site.grant(&officer, "all", "identifiers", "audit");

    let readers: [(&str, &Path, Vec<&str>); 3] = [
        (
            "cardiologist",
            &cardio,
            vec!["--facility", &facility, "--categories", "cardiology,vitals"],
        ),
        (
            "general-practitioner",
            &gp,
            vec!["--categories", "demographics,vitals,diagnoses"],
        ),
        (
            "compliance-officer",
            &officer,
            vec!["--purpose", "audit", "--categories", "identifiers"],
        ),
    ];
    // Twelve rounds of the three kinds of read; the primary of view 0 is SIGKILLed before the
    // fourth and restarted from its store before the ninth. Three peers commit on their own, so
    // every read is served, each after its audit event committed.
    let mut received: Vec<(String, &str)> = Vec::new();
    for round in 0..12 {
        if round == 3 {
            cluster.kill(0);
        }
        if round == 8 {
            cluster.restart(0);
        }
        for (name, key, extra) in &readers {
            let out = site.get(key, &patient, extra);
            assert!(
                out.status.success(),
                "round {round}, {name}: {}",
                stderr(&out)
            );
            received.push((received_tx(&out), name));
        }
    }

    // Every read received is an audit event on every peer, the restarted one included, with
    // its reader and the categories the contract granted.
    cluster.wait_caught_up(0, 1);
    for peer in 0..4 {
        let report = site.peer_report(&patient, peer, &officer);
        let events: BTreeMap<String, &Value> = report
            .as_array()
            .expect("entries")
            .iter()
            .map(|e| (e["event"]["tx"].as_str().expect("tx").to_string(), e))
            .collect();
        for (tx, name) in &received {
            let entry = events
                .get(tx)
                .unwrap_or_else(|| panic!("peer {peer} has no audit event for read {tx}"));
            assert_eq!(entry["actor_name"], *name, "peer {peer}: {entry}");
            assert_eq!(entry["event"]["action"], "read_record", "{entry}");
        }
    }

    // Two peers down: the ledger cannot commit, so a read is refused and returns nothing.
    cluster.kill(2);
    cluster.kill(3);
    let out = run(site
        .cmd(
            &[
                "records",
                "get",
                "--patient",
                &patient,
                "--categories",
                "vitals",
                "--json",
            ],
            Some(&gp),
        )
        .env("EMRFLOW_LEDGER_TIMEOUT", "2"));
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stdout(&out).is_empty(), "a refused read returns nothing");
    assert!(stderr(&out).contains("did not commit"), "{}", stderr(&out));
}

#[test]
fn an_import_killed_at_any_point_leaves_all_of_it_or_none() {
    let site = Site::new(20_000);
    let data = |name: &str| format!("{name}={}", site.data.join(format!("{name}.csv")).display());
    let import_into = |store: &Path| {
        let mut args = vec!["records", "import", "examples/stroke-synthetic.toml"];
        let (visits, patients) = (data("visits"), data("patients"));
        let store = store.display().to_string();
        args.extend_from_slice(&["--input", &visits, "--input", &patients, "--store", &store]);
        site.cmd(&args, None)
    };
    let whole = site.dir.join("whole");
    let clean = site.json_of(import_into(&whole).arg("--json"));
    let total = clean["records"].as_u64().expect("records");

    // SIGKILLed at several points of an import (the embedded ledger dies with it); each time
    // the rerun finds every record of the killed import held or none, never a part, and
    // completes the store.
    let mut finished_before_the_kill = 0;
    for (i, after_ms) in [50, 200, 400, 700, 1_000, 1_500].into_iter().enumerate() {
        let store = site.dir.join(format!("killed-{i}"));
        let mut child = import_into(&store)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start the import");
        std::thread::sleep(std::time::Duration::from_millis(after_ms));
        let _ = child.kill();
        let status = child.wait().expect("wait");
        finished_before_the_kill += usize::from(status.success());
        let rerun = site.json_of(import_into(&store).arg("--json"));
        let written = &rerun["written"];
        let held = written["unchanged"].as_u64().expect("unchanged");
        assert!(
            held == 0 || held == total,
            "kill {i}: {held} of {total} held"
        );
        assert_eq!(held + written["new"].as_u64().expect("new"), total);
    }
    assert!(
        finished_before_the_kill < 6,
        "no kill landed inside an import"
    );
}
