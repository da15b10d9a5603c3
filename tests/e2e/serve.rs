//! `emrflow serve` as a process: four ledger peers, a record store, and the server over TLS
//! with a self-signed certificate, read through `emrflow api` (a token made from each caller's
//! key). FHIR reads are decided on the caller's grants and audited as the caller's on every
//! peer, naming the server's gateway identity; bad requests get the status and the
//! OperationOutcome naming the parameter (an unknown patient's 404 audited all the same); with
//! two peers down a read is refused with 503 and returns nothing; SIGTERM stops the server
//! cleanly.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};

use serde_json::Value;

use crate::records::{Hospital, Site};
use crate::support::{emrflow, run, stderr, stdout};

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
    fn start(site: &Site, gateway: &Path, dir: &Path) -> Self {
        let tls = rcgen::generate_simple_self_signed(vec![
            "127.0.0.1".to_string(),
            "localhost".to_string(),
        ])
        .expect("a self-signed certificate");
        let (cert, key) = (dir.join("server.pem"), dir.join("server.key"));
        std::fs::write(&cert, tls.cert.pem()).expect("write the certificate");
        std::fs::write(&key, tls.signing_key.serialize_pem()).expect("write the key");
        let log = std::fs::File::create(dir.join("server.log")).expect("log");
        let mut child = site
            .cmd(
                &[
                    "serve",
                    "--bind",
                    "127.0.0.1:0",
                    "--tls-cert",
                    &cert.display().to_string(),
                    "--tls-key",
                    &key.display().to_string(),
                    "--json",
                ],
                Some(gateway),
            )
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
    let server = Server::start(&site, &gateway, tmp.path());

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

    // Two peers down: the ledger cannot commit, the read is refused with 503 and nothing.
    cluster.kill(2);
    cluster.kill(3);
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
