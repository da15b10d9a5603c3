//! Every provenance command on an S3-compatible object store: moto's server (installed by
//! `scripts/test-deps`, started here on a free port of 127.0.0.1) holds the raw exports, the
//! published dataset and the model. generate → run → fingerprint → train → verify → lineage →
//! predict → prove, then one value of the stored dataset is changed and `verify` finds it.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::support::{emrflow, generate, run, stderr, stdout};

const BUCKET: &str = "emrflow";

/// A moto S3 server, stopped when dropped.
struct Moto {
    child: Child,
    endpoint: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts moto's server, or `None` (with a message saying why the test is skipped) when it is
/// not installed and the run does not require it. `scripts/test` installs it and requires it.
fn start_moto(log: &Path) -> Option<Moto> {
    let server = std::env::var_os("EMRFLOW_MOTO_SERVER").map(PathBuf::from);
    let Some(server) = server.filter(|p| p.is_file()) else {
        assert!(
            std::env::var_os("EMRFLOW_REQUIRE_S3").is_none(),
            "EMRFLOW_REQUIRE_S3 is set but EMRFLOW_MOTO_SERVER names no moto_server \
             (run eval \"$(scripts/test-deps)\")"
        );
        // Library code never prints; a test that skips must say so.
        #[allow(clippy::print_stderr)]
        {
            eprintln!(
                "SKIPPED: no S3-compatible server (set EMRFLOW_MOTO_SERVER, e.g. with \
                 eval \"$(scripts/test-deps)\"); ./scripts/test installs and requires it"
            );
        }
        return None;
    };
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"));
    let file = std::fs::File::create(log).unwrap_or_else(|e| panic!("{e}"));
    let mut child = Command::new(&server)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::from(file))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", server.display()));
    // Ready when the port answers; the bound only keeps a broken install from hanging.
    for _ in 0..600 {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            let endpoint = format!("http://127.0.0.1:{port}");
            create_bucket(port);
            return Some(Moto { child, endpoint });
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "moto exited with {status}: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("moto never listened on {port}");
}

/// S3's CreateBucket, which `object_store` does not offer: a bare `PUT /bucket`.
fn create_bucket(port: u16) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("{e}"));
    write!(
        s,
        "PUT /{BUCKET} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "CreateBucket: {answer}");
}

/// The standard AWS environment pointing at moto.
fn s3_env(cmd: &mut Command, endpoint: &str) {
    cmd.env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_SESSION_TOKEN");
}

fn store(endpoint: &str) -> Arc<AmazonS3> {
    Arc::new(
        AmazonS3Builder::new()
            .with_bucket_name(BUCKET)
            .with_endpoint(endpoint)
            .with_allow_http(true)
            .with_access_key_id("test")
            .with_secret_access_key("test")
            .with_region("us-east-1")
            .build()
            .unwrap_or_else(|e| panic!("{e}")),
    )
}

fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"))
        .block_on(f)
}

fn put(store: &AmazonS3, key: &str, bytes: Vec<u8>) {
    block_on(store.put(&ObjectPath::from(key), PutPayload::from(bytes)))
        .unwrap_or_else(|e| panic!("put {key}: {e}"));
}

fn get(store: &AmazonS3, key: &str) -> Vec<u8> {
    block_on(async {
        store
            .get(&ObjectPath::from(key))
            .await?
            .bytes()
            .await
            .map(|b| b.to_vec())
    })
    .unwrap_or_else(|e| panic!("get {key}: {e}"))
}

fn list(store: &AmazonS3, prefix: &str) -> Vec<String> {
    use futures::TryStreamExt;
    let mut keys: Vec<String> = block_on(
        store
            .list(Some(&ObjectPath::from(prefix)))
            .map_ok(|m| m.location.to_string())
            .try_collect::<Vec<_>>(),
    )
    .unwrap_or_else(|e| panic!("list {prefix}: {e}"));
    keys.sort();
    keys
}

/// Runs emrflow against moto and the test's ledger; returns the output.
fn cmd(endpoint: &str, ledger: &Path, args: &[&str]) -> std::process::Output {
    let mut c = emrflow(args);
    s3_env(&mut c, endpoint);
    c.env("EMRFLOW_LEDGER", ledger);
    run(&mut c)
}

fn json(out: &std::process::Output, what: &str) -> serde_json::Value {
    assert!(out.status.success(), "{what} failed: {}", stderr(out));
    serde_json::from_str(stdout(out).trim()).unwrap_or_else(|e| panic!("{what}: {e}"))
}

#[test]
fn datasets_and_models_on_s3_are_published_anchored_checked_and_tampering_is_found() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let Some(moto) = start_moto(&tmp.path().join("moto.log")) else {
        return;
    };
    let endpoint = moto.endpoint.clone();
    let s3 = store(&endpoint);
    let data = tmp.path().join("data");
    generate(&data, 3_000);
    for name in ["visits.csv", "patients.csv"] {
        let bytes = std::fs::read(data.join(name)).unwrap_or_else(|e| panic!("{e}"));
        put(&s3, &format!("raw/{name}"), bytes);
    }
    let ledger = tmp.path().join("ledger");

    let published = json(
        &cmd(
            &endpoint,
            &ledger,
            &[
                "run",
                "examples/stroke-synthetic.toml",
                "--input",
                "visits=s3://emrflow/raw/visits.csv",
                "--input",
                "patients=s3://emrflow/raw/patients.csv",
                "--out",
                "s3://emrflow/datasets/v1",
                "--json",
            ],
        ),
        "run",
    );
    let root = published["root"].as_str().unwrap_or_default().to_string();
    let keys = list(&s3, "datasets/v1");
    for name in ["manifest.json", "anchor.json", "fingerprint.json"] {
        assert!(
            keys.contains(&format!("datasets/v1/{name}")),
            "{name} missing: {keys:?}"
        );
    }
    assert!(
        !list(&s3, "datasets").iter().any(|k| k.contains("staging")),
        "staging left behind"
    );

    // The same rows from a local copy of the exports give the same root.
    let local = json(
        &cmd(
            &endpoint,
            &ledger,
            &[
                "run",
                "examples/stroke-synthetic.toml",
                "--input",
                &format!("visits={}", data.join("visits.csv").display()),
                "--input",
                &format!("patients={}", data.join("patients.csv").display()),
                "--out",
                &tmp.path().join("local-v1").display().to_string(),
                "--json",
            ],
        ),
        "local run",
    );
    assert_eq!(local["root"], published["root"]);

    let fp = json(
        &cmd(
            &endpoint,
            &ledger,
            &["fingerprint", "s3://emrflow/datasets/v1", "--json"],
        ),
        "fingerprint",
    );
    assert_eq!(fp["root"].as_str(), Some(root.as_str()));

    let trained = json(
        &cmd(
            &endpoint,
            &ledger,
            &[
                "train",
                "--dataset",
                "s3://emrflow/datasets/v1",
                "--out",
                "s3://emrflow/models/tree",
                "--max-depth",
                "4",
                "--folds",
                "0",
                "--json",
            ],
        ),
        "train",
    );
    let model_root = trained["model_root"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(trained["dataset_root"].as_str(), Some(root.as_str()));
    let model_keys = list(&s3, "models/tree");
    for name in [
        "model.json",
        "anchor.json",
        "dataset-manifest.json",
        "metrics.json",
    ] {
        assert!(
            model_keys.contains(&format!("models/tree/{name}")),
            "{name} missing: {model_keys:?}"
        );
    }

    for target in [
        "s3://emrflow/datasets/v1",
        "s3://emrflow/models/tree",
        "s3://emrflow/models/tree/model.json",
    ] {
        let verdict = json(
            &cmd(&endpoint, &ledger, &["verify", target, "--json"]),
            target,
        );
        assert_eq!(verdict["matches"], true, "{target}: {verdict}");
    }
    // Two publications of one root: verify lists both.
    let verdict = json(
        &cmd(
            &endpoint,
            &ledger,
            &["verify", "s3://emrflow/datasets/v1", "--json"],
        ),
        "verify",
    );
    let derivations = verdict["derivations"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(derivations.len(), 2, "{verdict}");

    let lineage = cmd(&endpoint, &ledger, &["lineage", &model_root]);
    assert!(lineage.status.success(), "{}", stderr(&lineage));
    let text = stdout(&lineage);
    assert!(
        text.contains("s3://emrflow/models/tree") && text.contains("s3://emrflow/datasets/v1"),
        "{text}"
    );

    // Scoring raw rows stored in the bucket with the model stored in the bucket.
    let manifest: serde_json::Value =
        serde_json::from_slice(&get(&s3, "datasets/v1/manifest.json")).unwrap_or_default();
    put(
        &s3,
        "raw/score.csv",
        crate::ml::raw_csv(&manifest, false).into_bytes(),
    );
    let scored = json(
        &cmd(
            &endpoint,
            &ledger,
            &[
                "predict",
                "--model",
                "s3://emrflow/models/tree",
                "--input",
                "s3://emrflow/raw/score.csv",
                "--json",
            ],
        ),
        "predict",
    );
    assert_eq!(scored["model_root"].as_str(), Some(model_root.as_str()));
    assert_eq!(
        scored["predictions"].as_array().map(Vec::len),
        Some(1),
        "{scored}"
    );

    // One value of one row of one stored Parquet file.
    let part = first_part(&list(&s3, "datasets/v1"));
    let batches = read_parquet(&get(&s3, &part));
    put(&s3, &part, crate::support::tampered_parquet(&batches));
    let out = cmd(
        &endpoint,
        &ledger,
        &["verify", "s3://emrflow/datasets/v1", "--json"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let verdict: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap_or_default();
    assert_eq!(verdict["matches"], false);
    assert!(
        !verdict["buckets"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .is_empty(),
        "{verdict}"
    );
    // Training refuses it.
    let out = cmd(
        &endpoint,
        &ledger,
        &[
            "train",
            "--dataset",
            "s3://emrflow/datasets/v1",
            "--out",
            "s3://emrflow/models/from-tampered",
            "--folds",
            "0",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("does not match its anchor"),
        "{}",
        stderr(&out)
    );
    assert!(list(&s3, "models/from-tampered").is_empty());
    drop(moto);
}

/// The first Parquet part of a dataset listing.
fn first_part(keys: &[String]) -> String {
    keys.iter()
        .find(|k| k.ends_with(".parquet"))
        .cloned()
        .unwrap_or_else(|| panic!("no part file in {keys:?}"))
}

fn read_parquet(bytes: &[u8]) -> Vec<RecordBatch> {
    ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::copy_from_slice(bytes))
        .and_then(|b| b.build())
        .unwrap_or_else(|e| panic!("{e}"))
        .map(|b| b.unwrap_or_else(|e| panic!("{e}")))
        .collect()
}

#[test]
fn records_import_reads_exports_on_s3_as_it_reads_local_files() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let Some(moto) = start_moto(&tmp.path().join("moto.log")) else {
        return;
    };
    let s3 = store(&moto.endpoint);
    let data = tmp.path().join("data");
    generate(&data, 1_000);
    for name in ["visits.csv", "patients.csv"] {
        let bytes = std::fs::read(data.join(name)).unwrap_or_else(|e| panic!("{e}"));
        put(&s3, &format!("raw/{name}"), bytes);
    }
    let ledger = tmp.path().join("ledger");
    let import = |visits: String, patients: String, store: &str| {
        let mut c = emrflow(&[
            "records",
            "import",
            "examples/stroke-synthetic.toml",
            "--input",
            &visits,
            "--input",
            &patients,
            "--store",
            &tmp.path().join(store).display().to_string(),
            "--json",
        ]);
        s3_env(&mut c, &moto.endpoint);
        c.env("EMRFLOW_LEDGER", &ledger).env(
            "EMRFLOW_MASTER_KEY",
            "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0",
        );
        json(&run(&mut c), "records import")
    };
    let remote = import(
        "visits=s3://emrflow/raw/visits.csv".into(),
        "patients=s3://emrflow/raw/patients.csv".into(),
        "from-s3",
    );
    let local = import(
        format!("visits={}", data.join("visits.csv").display()),
        format!("patients={}", data.join("patients.csv").display()),
        "from-disk",
    );
    // The same records, and the batch's parents are the roots of the same bytes.
    assert!(remote["records"].as_u64().unwrap_or(0) > 1_000, "{remote}");
    assert_eq!(remote["records"], local["records"]);
    assert_eq!(remote["visits_read"], local["visits_read"]);
    assert_eq!(remote["parents"], local["parents"]);
    assert_eq!(remote["parents"].as_array().map(Vec::len), Some(2));
}
