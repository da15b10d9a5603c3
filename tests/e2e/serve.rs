//! `emrflow serve` as a process: four ledger peers, a record store, and the server over TLS
//! with a self-signed certificate, read through `emrflow api` (a token made from each caller's
//! key). FHIR reads are decided on the caller's grants and audited as the caller's on every
//! peer, naming the server's gateway identity; bad requests get the status and the
//! OperationOutcome naming the parameter (an unknown patient's 404 audited all the same); with
//! two peers down a read is refused with 503 and returns nothing; SIGTERM stops the server
//! cleanly; a server SIGKILLed under load and restarted gave no answer whose audit event is
//! missing. Risk comes from the anchored model in service (replaced without a restart, refused
//! when tampered), equal to `emrflow predict`'s, as CDS Hooks cards whose feedback is on the
//! ledger.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::Value;

use crate::ledger::wait_for;
use crate::records::{Hospital, Site};
use crate::support::{emrflow, run, stderr, stdout, stroke_job_args};

/// A running `emrflow serve`, killed when dropped.
struct Server {
    child: Child,
    url: String,
    ca: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(site: &Site, gateway: &Path, dir: &Path, extra: &[&str]) -> Self {
        let tls = rcgen::generate_simple_self_signed(vec![
            "127.0.0.1".to_string(),
            "localhost".to_string(),
        ])
        .expect("a self-signed certificate");
        let (cert, key) = (dir.join("server.pem"), dir.join("server.key"));
        std::fs::write(&cert, tls.cert.pem()).expect("write the certificate");
        std::fs::write(&key, tls.signing_key.serialize_pem()).expect("write the key");
        let log = std::fs::File::create(dir.join("server.log")).expect("log");
        let (cert_arg, key_arg) = (cert.display().to_string(), key.display().to_string());
        let mut args = vec![
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--tls-cert",
            &cert_arg,
            "--tls-key",
            &key_arg,
            "--json",
        ];
        args.extend_from_slice(extra);
        let mut child = site
            .cmd(&args, Some(gateway))
            .env("EMRFLOW_LEDGER_TIMEOUT", "2")
            .env("RUST_LOG", "debug")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start emrflow serve");
        let mut first = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut first)
            .expect("the listening line");
        let listening: Value = serde_json::from_str(&first)
            .unwrap_or_else(|e| panic!("{e}: {first:?}, log: {}", log_of(dir)));
        Self {
            child,
            url: listening["listening"].as_str().expect("url").to_string(),
            ca: cert,
        }
    }

    /// `emrflow api PATH` as `who` (a key file), or with no credential at all.
    fn get(&self, site: &Site, who: Option<&Path>, path: &str, headers: &[&str]) -> Output {
        self.call(site, who, path, headers, None)
    }

    /// `emrflow api PATH --data BODY` (a POST) as `who`.
    fn post(&self, site: &Site, who: &Path, path: &str, headers: &[&str], body: &str) -> Output {
        self.call(site, Some(who), path, headers, Some(body))
    }

    fn call(
        &self,
        site: &Site,
        who: Option<&Path>,
        path: &str,
        headers: &[&str],
        body: Option<&str>,
    ) -> Output {
        let mut args = vec![
            "api".to_string(),
            path.to_string(),
            "--server".into(),
            self.url.clone(),
            "--ca".into(),
            self.ca.display().to_string(),
        ];
        for h in headers {
            args.push("--header".into());
            args.push((*h).to_string());
        }
        if let Some(b) = body {
            args.push("--data".into());
            args.push(b.to_string());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        match who {
            Some(key) => run(&mut site.cmd(&args, Some(key))),
            None => run(emrflow(&args)
                .env_remove("EMRFLOW_IDENTITY")
                .env("EMRFLOW_LEDGER", site.ledger())),
        }
    }

    fn json(&self, site: &Site, who: &Path, path: &str, headers: &[&str]) -> Value {
        let out = self.get(site, Some(who), path, headers);
        assert!(
            out.status.success(),
            "GET {path}: {} {}",
            stdout(&out),
            stderr(&out)
        );
        serde_json::from_str(&stdout(&out)).unwrap_or_else(|e| panic!("{e}: {}", stdout(&out)))
    }
}

fn log_of(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
}

fn codes(bundle: &Value) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["search"]["mode"] == "match")
        .map(|e| {
            e["resource"]["code"]["coding"][0]["code"]
                .as_str()
                .expect("a code")
                .to_string()
        })
        .collect()
}

#[test]
fn fhir_reads_over_tls_are_decided_and_audited_as_the_callers_and_fail_closed() {
    let Hospital {
        _tmp: tmp,
        mut cluster,
        site,
        cardio,
        gp,
        officer,
        patient,
        facility,
    } = Hospital::start();
    let gateway = site.identity("gateway", "emrflow-serve");
    site.grant(
        &cardio,
        &format!("facility:{facility}"),
        "cardiology,vitals",
        "treatment",
    );
    site.grant(
        &gp,
        "all",
        "identifiers,demographics,vitals,cardiology,metabolic,diagnoses",
        "treatment",
    );
    let server = Server::start(&site, &gateway, tmp.path(), &[]);

    // Probes: alive and ready (the ledger answers, the gateway is registered).
    let ready = server.get(&site, Some(&gp), "/readyz", &[]);
    assert!(ready.status.success(), "{}", log_of(tmp.path()));

    // The general practitioner: the Patient, and every observation, LOINC-coded, with proofs.
    let who = server.json(&site, &gp, "/api/whoami", &[]);
    assert_eq!(who["name"], "general-practitioner");
    let p = server.json(&site, &gp, &format!("/fhir/Patient/{patient}"), &[]);
    assert_eq!(p["resourceType"], "Patient");
    assert_eq!(p["identifier"][0]["value"], patient.as_str());
    assert!(
        p["name"][0]["text"].is_string() && p["birthDate"].is_string(),
        "{p}"
    );
    assert_eq!(
        p["extension"][0]["url"],
        "https://emrflow.dev/fhir/StructureDefinition/record-inclusion-proof"
    );
    let obs = server.json(
        &site,
        &gp,
        &format!("/fhir/Observation?patient={patient}"),
        &[],
    );
    assert_eq!(obs["type"], "searchset");
    let all = codes(&obs);
    for loinc in ["8480-6", "8462-4", "8867-4", "39156-5", "2339-0", "2093-3"] {
        assert!(all.iter().any(|c| c == loinc), "{loinc} missing: {all:?}");
    }
    let vitals = server.json(
        &site,
        &gp,
        &format!("/fhir/Observation?patient={patient}&category=vital-signs&_count=2"),
        &[],
    );
    assert!(codes(&vitals).len() <= 2);
    assert_eq!(vitals["link"][1]["relation"], "next", "{vitals}");

    // The cardiologist at the patient's facility: vitals and cholesterol, not glucose, and the
    // withheld categories said; no Patient resource at all.
    let at = format!("X-Facility:{facility}");
    let obs = server.json(
        &site,
        &cardio,
        &format!("/fhir/Observation?patient={patient}"),
        &[&at],
    );
    let seen = codes(&obs);
    assert!(seen.iter().any(|c| c == "2093-3") && !seen.iter().any(|c| c == "2339-0"));
    let outcome = obs["entry"]
        .as_array()
        .expect("entries")
        .iter()
        .find(|e| e["search"]["mode"] == "outcome")
        .expect("an outcome entry naming what was withheld");
    assert!(
        outcome["resource"]["issue"][0]["diagnostics"]
            .as_str()
            .is_some_and(|d| d.contains("metabolic")),
        "{outcome}"
    );
    let out = server.get(
        &site,
        Some(&cardio),
        &format!("/fhir/Patient/{patient}"),
        &[&at],
    );
    assert_eq!(out.status.code(), Some(3), "{}", stdout(&out));
    assert!(stdout(&out).contains("OperationOutcome") && stdout(&out).contains("forbidden"));

    // Bad requests: no credential, an unknown or repeated parameter, a malformed id, an unknown
    // patient, an unknown route.
    let out = server.get(&site, None, &format!("/fhir/Patient/{patient}"), &[]);
    assert_eq!(out.status.code(), Some(3), "{}", stdout(&out));
    assert!(stdout(&out).contains("login"), "{}", stdout(&out));
    for (path, status_text) in [
        (
            format!("/fhir/Observation?patient={patient}&colour=red"),
            "colour",
        ),
        (
            format!("/fhir/Observation?patient={patient}&patient={patient}"),
            "repeated",
        ),
        ("/fhir/Patient/not%20an%20id".to_string(), "FHIR id"),
        ("/fhir/Patient/P99999999".to_string(), "not-found"),
        ("/fhir/Nothing".to_string(), "not-found"),
    ] {
        let out = server.get(&site, Some(&gp), &path, &[]);
        assert_eq!(out.status.code(), Some(2), "{path}: {}", stdout(&out));
        assert!(
            stdout(&out).contains(status_text),
            "{path}: {}",
            stdout(&out)
        );
    }

    let metrics = server.get(&site, Some(&gp), "/metrics", &[]);
    let text = stdout(&metrics);
    assert!(text.contains("emrflow_audited_reads_total"), "{text}");
    assert!(text.contains("emrflow_denials_total 1"), "{text}");

    let status = server.json(&site, &officer, "/api/ledger/status", &[]);
    assert_eq!(status["peers_up"], 4, "{status}");
    assert_eq!(status["can_commit"], true, "{status}");

    // The trail in the FHIR AuditEvent shape: the compliance officer's to read, through the
    // gateway with the officer's rights; a clinician's is refused by the contract.
    let trail = server.json(
        &site,
        &officer,
        &format!("/fhir/AuditEvent?patient={patient}&_count=50"),
        &[],
    );
    assert_eq!(trail["type"], "searchset", "{trail}");
    let events: Vec<&Value> = trail["entry"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| &e["resource"])
        .collect();
    let gp_read = events
        .iter()
        .find(|e| e["agent"][0]["who"]["display"] == "general-practitioner")
        .unwrap_or_else(|| panic!("no read by the general practitioner: {trail}"));
    assert_eq!(gp_read["resourceType"], "AuditEvent");
    assert_eq!(gp_read["action"], "R");
    assert_eq!(gp_read["outcome"], "0");
    assert_eq!(gp_read["purposeOfEvent"][0]["coding"][0]["code"], "TREAT");
    assert_eq!(
        gp_read["entity"][0]["what"]["reference"],
        format!("Patient/{patient}")
    );
    assert_eq!(
        gp_read["agent"][1]["requestor"], false,
        "the gateway: {gp_read}"
    );
    assert!(
        events.iter().any(|e| e["outcome"] == "4"),
        "the cardiologist's refused Patient read is in the trail: {trail}"
    );
    let out = server.get(
        &site,
        Some(&gp),
        &format!("/fhir/AuditEvent?patient={patient}"),
        &[],
    );
    assert_eq!(out.status.code(), Some(3), "{}", stdout(&out));
    let out = server.get(&site, Some(&officer), "/fhir/AuditEvent", &[]);
    assert!(
        stdout(&out).contains("patient or agent"),
        "{}",
        stdout(&out)
    );

    // Two peers down: the ledger cannot commit, the read is refused with 503 and nothing.
    cluster.kill(2);
    cluster.kill(3);
    let status = server.json(&site, &officer, "/api/ledger/status", &[]);
    assert_eq!(status["peers_up"], 2, "{status}");
    assert_eq!(status["can_commit"], false, "{status}");
    assert!(
        status["peers"][0]["height"].as_u64().is_some_and(|h| h > 0),
        "{status}"
    );
    let out = server.get(&site, Some(&gp), &format!("/fhir/Patient/{patient}"), &[]);
    assert_eq!(out.status.code(), Some(4), "{}", stdout(&out));
    assert!(!stdout(&out).contains("birthDate"), "{}", stdout(&out));

    // SIGTERM: the server stops accepting, finishes, and exits cleanly.
    let mut server = server;
    let pid = server.child.id().to_string();
    assert!(
        run(std::process::Command::new("kill").args(["-TERM", &pid]))
            .status
            .success()
    );
    let status = server.child.wait().expect("wait");
    assert!(status.success(), "{status}: {}", log_of(tmp.path()));

    // Every read served is on every peer (the two stopped ones restarted and caught up), as
    // the reader's, through the gateway. (The store is the server's while it runs.)
    cluster.restart(2);
    cluster.restart(3);
    cluster.wait_caught_up(2, 0);
    cluster.wait_caught_up(3, 0);
    for peer in 0..4 {
        let report = site.peer_report(&patient, peer, &officer);
        let events = report.as_array().expect("entries");
        let by = |name: &str| {
            events
                .iter()
                .filter(|e| e["actor_name"] == name && !e["event"]["via"].is_null())
                .count()
        };
        assert!(by("general-practitioner") >= 3, "peer {peer}: {report}");
        assert!(by("cardiologist") >= 2, "peer {peer}: {report}");
    }
    // Asking for a patient who is not in the store was answered 404 and audited all the same.
    let probe = site.json(
        &["access", "report", "--patient", "P99999999"],
        Some(&officer),
    );
    assert!(
        probe
            .as_array()
            .expect("entries")
            .iter()
            .any(|e| e["actor_name"] == "general-practitioner"),
        "{probe}"
    );

    // Nothing the requests carried is in the server's log.
    let log = log_of(tmp.path());
    let leaks: Vec<&str> = log.lines().filter(|l| l.contains(&patient)).collect();
    assert!(leaks.is_empty(), "the patient id is in the log: {leaks:#?}");
}

/// Copies every file of the model directory `from` into `to`, the way a deployment publishes a
/// new model at the location a server watches.
fn publish_model(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("model location");
    for entry in std::fs::read_dir(from).expect("model dir").flatten() {
        if entry.path().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
        }
    }
}

fn float(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn risk_is_explained_tied_to_its_anchored_model_and_replaced_without_a_restart() {
    let Hospital {
        _tmp: tmp,
        cluster,
        site,
        cardio,
        gp,
        officer,
        patient,
        facility,
    } = Hospital::start();
    let gateway = site.identity("gateway", "emrflow-serve");
    let engineer = site.identity("data_engineer", "analyst");
    let mlops = site.identity("ml_engineer", "mlops");
    site.grant(&gp, "all", "all", "treatment");
    site.grant(
        &cardio,
        &format!("facility:{facility}"),
        "cardiology,vitals",
        "treatment",
    );

    // A dataset of the site's visits, and two models trained on it, all anchored on the cluster;
    // the ML engineer reads the dataset under an admin's grant.
    let ledger = site.ledger().display().to_string();
    let dataset = tmp.path().join("dataset");
    let args = stroke_job_args(&site.data, &dataset, &ledger);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let published = site.json_of(&mut site.cmd(&args, Some(&engineer)));
    let dataset_root = published["root"].as_str().expect("root").to_string();
    let grant = |to: &Path, root: &str| {
        site.json(
            &[
                "ledger",
                "grant",
                "--to",
                &to.display().to_string(),
                "--subject",
                root,
            ],
            None,
        )
    };
    grant(&mlops, &dataset_root);
    let train = |out: &str, depth: &str| {
        let out = tmp.path().join(out);
        let model = site.json(
            &[
                "train",
                "--dataset",
                &dataset.display().to_string(),
                "--out",
                &out.display().to_string(),
                "--max-depth",
                depth,
                "--folds",
                "0",
            ],
            Some(&mlops),
        );
        (out, model["model_root"].as_str().expect("root").to_string())
    };
    let (first, first_root) = train("model-1", "4");
    let live = tmp.path().join("live-model");
    publish_model(&first, &live);
    let live_arg = live.display().to_string();
    let server = Server::start(
        &site,
        &gateway,
        tmp.path(),
        &["--model", &live_arg, "--model-poll-secs", "1"],
    );

    // The general practitioner: the risk at the patient's latest visit, with why.
    let path = format!("/api/patients/{patient}/risk");
    let risk = server.json(&site, &gp, &path, &[]);
    assert_eq!(risk["model"]["root"], first_root.as_str(), "{risk}");
    assert_eq!(risk["model"]["dataset_root"], dataset_root.as_str());
    let p = float(&risk["probability"]);
    assert!((0.0..=1.0).contains(&p), "{risk}");
    assert_eq!(
        risk["class"].as_u64(),
        Some(u64::from(p >= float(&risk["threshold"]))),
        "{risk}"
    );
    assert!(["low", "moderate", "high"].contains(&risk["band"].as_str().expect("band")));
    let contributions = risk["contributions"].as_array().expect("contributions");
    assert!(contributions.len() >= 10, "{risk}");
    let total: f64 = contributions
        .iter()
        .map(|c| float(&c["contribution"]))
        .sum();
    assert_eq!(risk["output"], "probability", "a tree's output");
    assert!(
        (float(&risk["expected_value"]) + total - float(&risk["model_probability"])).abs() < 1e-9,
        "contributions add up to the model's output: {risk}"
    );
    let steps = risk["path"].as_array().expect("path");
    assert!(!steps.is_empty(), "{risk}");
    for step in steps {
        assert!(
            step["feature"].is_string() && step["text"].is_string(),
            "{step}"
        );
        match step["direction"].as_str() {
            Some("at_or_below" | "above") => assert!(step["threshold"].is_number(), "{step}"),
            Some("in") => assert!(step["categories"].is_array(), "{step}"),
            other => panic!("direction {other:?}"),
        }
    }
    let assessment = &risk["risk_assessment"];
    assert_eq!(assessment["resourceType"], "RiskAssessment");
    assert_eq!(
        assessment["subject"]["reference"],
        format!("Patient/{patient}")
    );
    assert_eq!(float(&assessment["prediction"][0]["probabilityDecimal"]), p);
    let read_tx = risk["audit"]["tx"]
        .as_str()
        .expect("the read's tx")
        .to_string();

    // The same raw values sent as a body get the same answer, and `emrflow predict` (the batch
    // path, through the dataset's transforms on the engine) the same probability.
    let values: serde_json::Map<String, Value> = contributions
        .iter()
        .map(|c| {
            let name = c["feature"].as_str().expect("feature").to_string();
            (name, c.get("value").cloned().unwrap_or(Value::Null))
        })
        .collect();
    let body = Value::Object(values.clone()).to_string();
    let out = server.post(&site, &gp, "/api/risk", &[], &body);
    assert!(out.status.success(), "{}", stdout(&out));
    let posted: Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(posted["probability"], risk["probability"], "{posted}");
    assert_eq!(posted["contributions"], risk["contributions"]);
    assert_eq!(posted["path"], risk["path"]);
    let row = tmp.path().join("row.csv");
    let (names, cells): (Vec<&str>, Vec<String>) = values
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str().unwrap_or_default().to_string()))
        .unzip();
    std::fs::write(&row, format!("{}\n{}\n", names.join(","), cells.join(","))).expect("row");
    grant(&gp, &first_root);
    let predicted = site.json(
        &[
            "predict",
            "--model",
            &first.display().to_string(),
            "--input",
            &row.display().to_string(),
        ],
        Some(&gp),
    );
    let batch = float(&predicted["predictions"][0]["calibrated_probability"]);
    assert!((batch - p).abs() < 1e-12, "batch {batch} vs online {p}");

    // Bad bodies: named, never echoed.
    let post_values = |v: serde_json::Map<String, Value>| {
        server.post(&site, &gp, "/api/risk", &[], &Value::Object(v).to_string())
    };
    let mut wrong = values.clone();
    wrong.insert("colour".into(), Value::from("red"));
    let out = post_values(wrong);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stdout(&out).contains(r#"unknown field \"colour\""#),
        "{}",
        stdout(&out)
    );
    let mut wrong = values.clone();
    wrong.insert("systolic_bp".into(), Value::from("PLANTED-VALUE"));
    let out = post_values(wrong);
    assert_eq!(out.status.code(), Some(2));
    let text = stdout(&out);
    assert!(
        text.contains("systolic_bp is not a number") && !text.contains("PLANTED"),
        "{text}"
    );
    let out = server.post(&site, &gp, "/api/risk", &["Content-Type:text/plain"], &body);
    assert!(
        stdout(&out).contains("application/json"),
        "{}",
        stdout(&out)
    );

    // CDS Hooks: discovery, a patient-view card made from the clinician's own audited read,
    // and feedback recorded on the ledger, on the model the card came from.
    let services = server.json(&site, &gp, "/cds-services", &[]);
    assert_eq!(services["services"][0]["id"], "stroke-risk", "{services}");
    assert_eq!(services["services"][0]["hook"], "patient-view");
    let hook = serde_json::json!({
        "hook": "patient-view",
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "context": {"userId": "Practitioner/gp", "patientId": patient},
    })
    .to_string();
    let out = server.post(&site, &gp, "/cds-services/stroke-risk", &[], &hook);
    assert!(out.status.success(), "{}", stdout(&out));
    let cards: Value = serde_json::from_str(&stdout(&out)).expect("json");
    let card = &cards["cards"][0];
    assert!(
        card["summary"].as_str().expect("summary").chars().count() < 140,
        "{card}"
    );
    let indicator = match risk["band"].as_str() {
        Some("high") => "critical",
        Some("moderate") => "warning",
        _ => "info",
    };
    assert_eq!(card["indicator"], indicator, "{card}");
    let detail = card["detail"].as_str().expect("detail");
    assert!(
        detail.contains(&first_root) && detail.contains("TreeSHAP"),
        "{detail}"
    );
    assert!(
        card["source"]["label"]
            .as_str()
            .is_some_and(|l| first_root.starts_with(&l[14..]))
    );
    let uuid = card["uuid"].as_str().expect("uuid").to_string();
    let feedback = |card: &str, code: &str| {
        serde_json::json!({"feedback": [{
            "card": card,
            "outcome": "overridden",
            "overrideReason": {
                "reason": {"system": "https://emrflow.dev/cds/override-reason", "code": code},
                "userComment": "PLANTED-COMMENT",
            },
            "outcomeTimestamp": "2026-12-07T10:00:00Z",
        }]})
        .to_string()
    };
    let feedback_path = "/cds-services/stroke-risk/feedback";
    let out = server.post(
        &site,
        &gp,
        feedback_path,
        &[],
        &feedback(&uuid, "not-relevant"),
    );
    assert!(out.status.success(), "{}", stdout(&out));
    let out = server.post(&site, &gp, feedback_path, &[], &feedback(&uuid, "bored"));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stdout(&out).contains("overrideReason.reason.code"),
        "{}",
        stdout(&out)
    );
    let unknown = "00000000-0000-0000-0000-000000000000";
    let out = server.post(
        &site,
        &gp,
        feedback_path,
        &[],
        &feedback(unknown, "not-relevant"),
    );
    assert!(stdout(&out).contains("not-found"), "{}", stdout(&out));
    // Feedback on someone else's card is the contract's to refuse.
    let out = server.post(
        &site,
        &cardio,
        feedback_path,
        &[],
        &feedback(&uuid, "not-relevant"),
    );
    assert_eq!(out.status.code(), Some(3), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("not a read of this clinician"),
        "{}",
        stdout(&out)
    );

    // The cardiologist may not see what the risk needs: refused, naming it, and audited.
    let at = format!("X-Facility:{facility}");
    let out = server.get(&site, Some(&cardio), &path, &[&at]);
    assert_eq!(out.status.code(), Some(3), "{}", stdout(&out));
    assert!(stdout(&out).contains("neurology"), "{}", stdout(&out));

    // A newly anchored model published at the location is in service without a restart.
    let (second, second_root) = train("model-2", "2");
    assert_ne!(first_root, second_root);
    publish_model(&second, &live);
    wait_for(Duration::from_secs(60), "the new model in service", || {
        let r = server.json(&site, &gp, &path, &[]);
        (r["model"]["root"] == second_root.as_str()).then_some(())
    });

    // A model file changed after its anchoring is refused; the anchored one stays in service.
    let file = live.join("model.json");
    let mut model: Value =
        serde_json::from_slice(&std::fs::read(&file).expect("model")).expect("json");
    let rows = model["training"]["rows"].as_u64().expect("rows");
    model["training"]["rows"] = Value::from(rows + 1);
    std::fs::write(&file, serde_json::to_vec(&model).expect("json")).expect("tamper");
    wait_for(
        Duration::from_secs(60),
        "the tampered model refused",
        || {
            let m = stdout(&server.get(&site, Some(&gp), "/metrics", &[]));
            m.contains("emrflow_models_rejected_total 1").then_some(())
        },
    );
    let r = server.json(&site, &gp, &path, &[]);
    assert_eq!(r["model"]["root"], second_root.as_str(), "{r}");

    compliance_endpoints(&Compliance {
        server: &server,
        site: &site,
        officer: &officer,
        clinician: &gp,
        cardio: &cardio,
        facility: &facility,
        patient: &patient,
        dataset: &dataset,
        dataset_root: &dataset_root,
        model: &first,
        model_root: &first_root,
    });

    // Every risk read is the reader's audited read; the cardiologist's refusal too.
    drop(server);
    let report = site.json(&["access", "report", "--patient", &patient], Some(&officer));
    let events = report.as_array().expect("entries");
    assert!(
        events
            .iter()
            .any(|e| e["event"]["tx"] == read_tx.as_str()
                && e["actor_name"] == "general-practitioner"),
        "{report}"
    );
    assert!(
        events.iter().any(|e| e["actor_name"] == "cardiologist"),
        "{report}"
    );
    // The override is on the model's trail, as the general practitioner's.
    let trail = site.json(&["audit", "--subject", &first_root], Some(&officer));
    assert!(
        trail.as_array().expect("events").iter().any(|e| {
            e["actor_name"] == "general-practitioner"
                && e["purpose"] == "overridden: not-relevant"
                && e["outcome"] == "accepted"
        }),
        "{trail}"
    );
    let log = log_of(tmp.path());
    assert!(!log.contains(&patient) && !log.contains("PLANTED"), "{log}");
    drop(cluster);
}

/// What the compliance endpoints are asked about: a running server, its site, an anchored
/// dataset and a model trained on it.
struct Compliance<'a> {
    server: &'a Server,
    site: &'a Site,
    officer: &'a Path,
    clinician: &'a Path,
    cardio: &'a Path,
    facility: &'a str,
    patient: &'a str,
    dataset: &'a Path,
    dataset_root: &'a str,
    model: &'a Path,
    model_root: &'a str,
}

/// The OpenAPI document names every route, and every route it names is served; lineage as a
/// graph, verify, prove and check, the audit trails filtered (JSON and CSV) and the break-glass
/// report, each asked with the caller's rights and audited as the caller's.
fn compliance_endpoints(c: &Compliance<'_>) {
    let (server, site, officer) = (c.server, c.site, c.officer);
    let post_json = |who: &Path, path: &str, body: &Value| -> (Option<i32>, Value) {
        let out = server.post(site, who, path, &[], &body.to_string());
        let v = serde_json::from_str(&stdout(&out))
            .unwrap_or_else(|e| panic!("{path}: {e}: {}", stdout(&out)));
        (out.status.code(), v)
    };

    // /openapi.json: open, and every route the server has is in it and answers.
    let out = server.get(site, None, "/openapi.json", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let spec: Value = serde_json::from_str(&stdout(&out)).expect("the OpenAPI document");
    assert!(
        spec["openapi"].as_str().is_some_and(|v| v.starts_with('3')),
        "{spec}"
    );
    let paths = spec["paths"].as_object().expect("paths");
    let expected = [
        ("get", "/healthz"),
        ("get", "/readyz"),
        ("get", "/metrics"),
        ("get", "/openapi.json"),
        ("get", "/api/whoami"),
        ("get", "/fhir/Patient/{id}"),
        ("get", "/fhir/Encounter"),
        ("get", "/fhir/Observation"),
        ("get", "/fhir/Condition"),
        ("get", "/fhir/AuditEvent"),
        ("get", "/api/ledger/status"),
        ("get", "/api/patients/{id}/risk"),
        ("post", "/api/patients/{id}/break-glass"),
        ("post", "/api/risk"),
        ("get", "/cds-services"),
        ("post", "/cds-services/stroke-risk"),
        ("post", "/cds-services/stroke-risk/feedback"),
        ("get", "/api/lineage/{root}"),
        ("post", "/api/verify"),
        ("post", "/api/prove"),
        ("post", "/api/proofs/check"),
        ("get", "/api/audit"),
        ("get", "/api/audit/records"),
        ("get", "/api/reports/break-glass"),
    ];
    let mut documented = Vec::new();
    for (path, item) in paths {
        for method in item.as_object().expect("a path item").keys() {
            documented.push((method.clone(), path.clone()));
        }
    }
    documented.sort();
    let mut wanted: Vec<(String, String)> = expected
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    wanted.sort();
    assert_eq!(documented, wanted, "the documented routes");
    for (method, path) in &documented {
        let path = path
            .replace("{id}", c.patient)
            .replace("{root}", c.model_root);
        let out = if method == "post" {
            server.post(site, officer, &path, &[], "{}")
        } else {
            server.get(site, Some(officer), &path, &[])
        };
        assert!(
            !stdout(&out).contains("no such route"),
            "{method} {path} is documented but not served"
        );
    }

    // Lineage: raw inputs → the dataset → the model, with each node's anchor.
    let path = format!("/api/lineage/{}?depth=4", c.model_root);
    let graph = server.json(site, officer, &path, &[]);
    let nodes = graph["nodes"].as_array().expect("nodes");
    let node = |root: &str| {
        nodes
            .iter()
            .find(|n| n["id"] == root)
            .unwrap_or_else(|| panic!("{root} is not in {graph}"))
    };
    assert_eq!(node(c.model_root)["kind"], "model");
    let dataset = node(c.dataset_root);
    assert_eq!(dataset["kind"], "dataset");
    assert!(
        dataset["count"].as_u64().is_some_and(|n| n > 0),
        "{dataset}"
    );
    assert_eq!(dataset["anchors"][0]["signer"], "analyst", "{dataset}");
    assert!(
        dataset["anchors"][0]["height"].as_u64().is_some(),
        "{dataset}"
    );
    assert!(
        nodes.iter().any(|n| n["source"] == true),
        "raw inputs: {graph}"
    );
    let edges = graph["edges"].as_array().expect("edges");
    assert!(
        edges
            .iter()
            .any(|e| e["from"] == c.dataset_root && e["to"] == c.model_root),
        "{graph}"
    );
    let shallow = server.json(
        site,
        officer,
        &format!("/api/lineage/{}?depth=0", c.model_root),
        &[],
    );
    assert_eq!(
        shallow["nodes"].as_array().map(Vec::len),
        Some(1),
        "{shallow}"
    );
    let out = server.get(site, Some(officer), "/api/lineage/abc", &[]);
    assert!(stdout(&out).contains("64 hex digits"), "{}", stdout(&out));

    // Verify: the dataset and the model match their anchors; a clinician may not ask.
    for location in [c.dataset, c.model] {
        let body = serde_json::json!({"location": location.display().to_string()});
        let (code, verdict) = post_json(officer, "/api/verify", &body);
        assert_eq!(code, Some(0), "{verdict}");
        assert_eq!(verdict["matches"], true, "{verdict}");
        let (code, refused) = post_json(c.clinician, "/api/verify", &body);
        assert_eq!(code, Some(3), "{refused}");
    }
    let (_, missing) = post_json(
        officer,
        "/api/verify",
        &serde_json::json!({"location": "/nowhere/at/all"}),
    );
    assert!(missing.to_string().contains("does not exist"), "{missing}");

    // Prove a row of the dataset; the proof checks against the dataset's root, not the model's.
    let file = crate::provenance::parquet_files(c.dataset).remove(0);
    let row = crate::provenance::record(&crate::provenance::read(&file), 3);
    let body = serde_json::json!({"dataset": c.dataset.display().to_string(), "record": row});
    let out = server.post(site, officer, "/api/prove", &[], &body.to_string());
    assert!(out.status.success(), "{}", stdout(&out));
    // The proof is passed on as its text: a number's digits are what its leaf hashes.
    let proved: std::collections::BTreeMap<String, Box<serde_json::value::RawValue>> =
        serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(proved["anchored"].get(), "true", "{}", stdout(&out));
    let check = |root: &str| {
        let body = format!(r#"{{"root":"{root}","proof":{}}}"#, proved["proof"].get());
        let out = server.post(site, c.clinician, "/api/proofs/check", &[], &body);
        serde_json::from_str::<Value>(&stdout(&out)).expect("json")
    };
    let valid = check(c.dataset_root);
    assert_eq!(valid["valid"], true, "{valid}");
    assert_eq!(valid["membership"], "present", "{valid}");
    assert_eq!(check(c.model_root)["valid"], false);

    // The subject trail: the verifications and the proof are the officer's, through the server.
    let trail = server.json(
        site,
        officer,
        &format!("/api/audit?subject={}", c.dataset_root),
        &[],
    );
    let events = trail["events"].as_array().expect("events");
    let officers: Vec<&str> = events
        .iter()
        .filter(|e| e["actor_name"] == "compliance-officer")
        .filter_map(|e| e["purpose"].as_str())
        .collect();
    assert!(
        officers.contains(&"verify: match") && officers.contains(&"prove"),
        "{trail}"
    );
    let out = server.get(
        site,
        Some(officer),
        &format!(
            "/api/audit?subject={}&format=csv&from=2020-01-01",
            c.dataset_root
        ),
        &[],
    );
    let csv = stdout(&out);
    assert!(csv.starts_with("time,height,index,actor,"), "{csv}");
    assert!(csv.contains("verify: match"), "{csv}");
    let out = server.get(
        site,
        Some(c.clinician),
        &format!("/api/audit?subject={}", c.dataset_root),
        &[],
    );
    assert_eq!(out.status.code(), Some(3), "{}", stdout(&out));

    // Break-glass through the API: a reason is required; the access opened and the read made
    // under it are in the report, as the cardiologist's.
    let glass = format!("/api/patients/{}/break-glass", c.patient);
    let (code, refused) = post_json(c.cardio, &glass, &serde_json::json!({"minutes": 30}));
    assert_eq!(code, Some(2), "{refused}");
    assert!(
        refused.to_string().contains("reason is required"),
        "{refused}"
    );
    let body =
        serde_json::json!({"reason": "unconscious in the emergency department", "minutes": 30});
    let (code, opened) = post_json(c.cardio, &glass, &body);
    assert_eq!(code, Some(0), "{opened}");
    assert!(opened["expires"].is_string(), "{opened}");
    let at = format!("X-Facility:{}", c.facility);
    let p = server.json(
        site,
        c.cardio,
        &format!("/fhir/Patient/{}", c.patient),
        &[&at],
    );
    assert_eq!(
        p["resourceType"], "Patient",
        "break-glass gives the whole record: {p}"
    );
    let report = server.json(site, officer, "/api/reports/break-glass", &[]);
    let access = &report["accesses"][0];
    assert_eq!(access["clinician"], "cardiologist", "{report}");
    assert_eq!(access["reason"], "unconscious in the emergency department");
    assert!(
        access["reads"].as_array().is_some_and(|r| !r.is_empty()),
        "the read under break-glass: {report}"
    );
    let out = server.get(site, Some(c.cardio), "/api/reports/break-glass", &[]);
    assert_eq!(out.status.code(), Some(3), "{}", stdout(&out));

    // The record trail filtered and exported: the break-glass read, with its receipt.
    let path = format!("/api/audit/records?patient={}&break_glass=true", c.patient);
    let records = server.json(site, officer, &path, &[]);
    let events = records["events"].as_array().expect("events");
    assert!(events.len() >= 2, "{records}");
    assert!(events.iter().all(|e| e["verified"] == true), "{records}");
    let out = server.get(
        site,
        Some(officer),
        &format!(
            "/api/audit/records?patient={}&purpose=treatment&format=csv",
            c.patient
        ),
        &[],
    );
    let csv = stdout(&out);
    assert!(
        csv.starts_with("time,height,index,actor,actor_name,"),
        "{csv}"
    );
    assert!(
        csv.contains("general-practitioner") && csv.contains("cardiologist"),
        "{csv}"
    );
    assert!(
        !csv.contains(c.patient),
        "the CSV names the pseudonym, not the id: {csv}"
    );

    let status = server.json(site, officer, "/api/ledger/status", &[]);
    assert!(status["peers"][0]["view"].is_u64(), "{status}");
}

#[test]
fn a_peer_and_then_the_server_killed_under_load_lost_no_audit_event_of_an_answer_given() {
    let Hospital {
        _tmp: tmp,
        mut cluster,
        site,
        gp,
        officer,
        patient,
        ..
    } = Hospital::start();
    let gateway = site.identity("gateway", "emrflow-serve");
    site.grant(&gp, "all", "all", "treatment");
    let path = format!("/fhir/Patient/{patient}");
    let reads = |server: &Server, n: usize| {
        (0..n)
            .filter(|_| server.get(&site, Some(&gp), &path, &[]).status.success())
            .count()
    };
    let audited_on = |peer: usize| {
        site.peer_report(&patient, peer, &officer)
            .as_array()
            .expect("entries")
            .iter()
            .filter(|e| e["actor_name"] == "general-practitioner" && !e["event"]["via"].is_null())
            .count()
    };

    // The primary SIGKILLed under load and restarted: reads go on through the view change.
    let server = Server::start(&site, &gateway, tmp.path(), &[]);
    let (given, refused) = (
        std::sync::atomic::AtomicUsize::new(0),
        std::sync::atomic::AtomicUsize::new(0),
    );
    let stop = std::sync::atomic::AtomicBool::new(false);
    let mut answered = std::thread::scope(|s| {
        let load = s.spawn(|| {
            while !stop.load(Ordering::SeqCst) {
                if server.get(&site, Some(&gp), &path, &[]).status.success() {
                    given.fetch_add(1, Ordering::SeqCst);
                } else {
                    refused.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        let after = |n: usize, what: &str| {
            let target = given.load(Ordering::SeqCst) + n;
            wait_for(Duration::from_secs(90), what, || {
                (given.load(Ordering::SeqCst) >= target).then_some(())
            });
        };
        after(4, "answers before the peer is killed");
        cluster.kill(0);
        after(8, "answers while the primary is down");
        cluster.restart(0);
        cluster.wait_caught_up(0, 1);
        after(4, "answers after the restart");
        stop.store(true, Ordering::SeqCst);
        load.join().expect("the reads");
        given.load(Ordering::SeqCst)
    });
    let refused = refused.load(Ordering::SeqCst);
    assert!(
        refused * 10 <= answered,
        "{refused} reads refused against {answered} answered with one peer down: {}",
        log_of(tmp.path())
    );

    // Reads in flight while the server is SIGKILLed: an answer is only given once its audit
    // event committed, so none of those given can be missing from the trail.
    let pid = server.child.id().to_string();
    let before = given.load(Ordering::SeqCst);
    answered += std::thread::scope(|s| {
        // Reading until the server is gone; the kill comes once a few answers were given.
        let load = s.spawn(|| {
            while given.load(Ordering::SeqCst) < before + 1000
                && server.get(&site, Some(&gp), &path, &[]).status.success()
            {
                given.fetch_add(1, Ordering::SeqCst);
            }
        });
        wait_for(Duration::from_secs(60), "answers before the kill", || {
            (given.load(Ordering::SeqCst) >= before + 4).then_some(())
        });
        assert!(
            run(std::process::Command::new("kill").args(["-KILL", &pid]))
                .status
                .success()
        );
        load.join().expect("the reads");
        given.load(Ordering::SeqCst) - before
    });
    drop(server);

    // Restarted on the same store and ledger, it serves again.
    let server = Server::start(&site, &gateway, tmp.path(), &[]);
    assert_eq!(reads(&server, 3), 3, "{}", log_of(tmp.path()));
    answered += 3;
    drop(server);

    // Every answer given is audited on every peer, the one that was killed included. (The
    // store is the server's while it runs, so the trail is read now.)
    cluster.wait_caught_up(0, 1);
    for peer in 0..4 {
        let audited = audited_on(peer);
        assert!(
            audited >= answered,
            "peer {peer}: {answered} answers given, {audited} audit events"
        );
    }
    drop(cluster);
}
