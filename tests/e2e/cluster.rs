//! `emrflow scheduler` and `emrflow executor` as separate processes on 127.0.0.1: the same job,
//! training (a tree, a random forest, boosted trees) and fingerprint give the same dataset root,
//! model root and metrics as embedded, and a job that loses an executor to SIGKILL either
//! completes with the same root or fails without publishing or anchoring anything.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::{emrflow, generate, run, stderr, stdout};

/// A port nothing listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

/// Polls until `addr` accepts connections or the process exits. Start-up is not a speed
/// target: the bound only keeps a broken build from hanging the suite.
fn wait_for(addr: SocketAddr, child: &mut Child, log: &Path) {
    let port = addr.port();
    for _ in 0..600 {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "server exited with {status} before listening on {port}: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "nothing listens on {port}: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// One scheduler and some executors, killed when dropped.
pub(crate) struct Cluster {
    pub(crate) url: String,
    scheduler: Child,
    executors: Vec<Child>,
    logs: PathBuf,
}

impl Cluster {
    pub(crate) fn start(dir: &Path, executors: usize) -> Self {
        Self::start_on(dir, executors, [127, 0, 0, 1], None)
    }

    /// A cluster whose executors hold `pseudonym_key` rather than the test jobs' key.
    fn start_holding(dir: &Path, pseudonym_key: &str) -> Self {
        std::fs::write(dir.join("pseudonym.key"), pseudonym_key).unwrap_or_else(|e| panic!("{e}"));
        Self::start_on(dir, 1, [127, 0, 0, 1], None)
    }

    /// A cluster whose every port is a mutual-TLS front under `key`, on 127.0.0.2: an address
    /// that counts as the one others reach it by, so Ballista's own listeners stay on 127.0.0.1.
    fn start_tls(dir: &Path, executors: usize, key: &Path) -> Self {
        Self::start_on(dir, executors, [127, 0, 0, 2], Some(key))
    }

    fn start_on(dir: &Path, executors: usize, ip: [u8; 4], key: Option<&Path>) -> Self {
        let host = std::net::Ipv4Addr::from(ip).to_string();
        let with_key = |mut args: Vec<String>| {
            if let Some(key) = key {
                args.extend(["--cluster-key".to_string(), key.display().to_string()]);
            }
            args
        };
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs).unwrap_or_else(|e| panic!("{e}"));
        // The executors hold the jobs' pseudonymization key themselves.
        let pseudonym_key = dir.join("pseudonym.key");
        if !pseudonym_key.exists() {
            std::fs::write(&pseudonym_key, crate::support::TEST_PSEUDONYM_KEY)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let port = free_port();
        let spawn = |args: &[String], log: &Path| -> Child {
            let file = std::fs::File::create(log).unwrap_or_else(|e| panic!("{e}"));
            let mut cmd: Command = emrflow(&args.iter().map(String::as_str).collect::<Vec<_>>());
            cmd.env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(Stdio::from(file));
            cmd.spawn()
                .unwrap_or_else(|e| panic!("cannot start emrflow: {e}"))
        };
        let s = |v: &str| v.to_string();
        let scheduler_log = logs.join("scheduler.log");
        let mut scheduler = spawn(
            &with_key(vec![
                s("scheduler"),
                s("--bind-host"),
                host.clone(),
                s("--port"),
                port.to_string(),
                // A lost executor is noticed after 3 s without a heartbeat.
                s("--executor-timeout"),
                s("3"),
            ]),
            &scheduler_log,
        );
        wait_for(SocketAddr::from((ip, port)), &mut scheduler, &scheduler_log);
        let mut cluster = Cluster {
            url: format!("df://{host}:{port}"),
            scheduler,
            executors: Vec::new(),
            logs,
        };
        for i in 0..executors {
            let flight = free_port();
            let log = cluster.executor_log(i);
            let mut child = spawn(
                &with_key(vec![
                    s("executor"),
                    s("--scheduler-host"),
                    host.clone(),
                    s("--scheduler-port"),
                    port.to_string(),
                    s("--bind-host"),
                    host.clone(),
                    s("--port"),
                    flight.to_string(),
                    s("--concurrent-tasks"),
                    s("1"),
                    s("--heartbeat-interval"),
                    s("1"),
                    s("--work-dir"),
                    dir.join(format!("work-{i}")).display().to_string(),
                    s("--pseudonym-key-file"),
                    pseudonym_key.display().to_string(),
                ]),
                &log,
            );
            wait_for(SocketAddr::from((ip, flight)), &mut child, &log);
            cluster.executors.push(child);
        }
        cluster
    }

    fn executor_log(&self, i: usize) -> PathBuf {
        self.logs.join(format!("executor-{i}.log"))
    }

    fn logs(&self) -> String {
        let mut all = String::new();
        if let Ok(entries) = std::fs::read_dir(&self.logs) {
            for e in entries.flatten() {
                all.push_str(&format!("== {}\n", e.path().display()));
                all.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
            }
        }
        all
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self
            .executors
            .iter_mut()
            .chain(std::iter::once(&mut self.scheduler))
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The command line of the stroke job over the generated data in `data`, publishing to `out`.
fn run_args(data: &Path, out: &Path, ledger: &Path, cluster: Option<&str>) -> Vec<String> {
    let mut args = crate::support::stroke_job_args(data, out, &ledger.display().to_string());
    if let Some(url) = cluster {
        args.extend(["--cluster".to_string(), url.to_string()]);
    }
    args
}

/// Runs the stroke job over the generated data in `data`, publishing to `out`.
fn run_job(data: &Path, out: &Path, ledger: &Path, cluster: Option<&str>) -> std::process::Output {
    let args = run_args(data, out, ledger, cluster);
    run(&mut emrflow(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    ))
}

fn json(out: &std::process::Output, what: &str) -> serde_json::Value {
    assert!(out.status.success(), "{what} failed: {}", stderr(out));
    serde_json::from_str(stdout(out).trim())
        .unwrap_or_else(|e| panic!("{what}: {e}: {}", stdout(out)))
}

fn train(dataset: &Path, out: &Path, ledger: &Path, cluster: Option<&str>) -> serde_json::Value {
    train_with(
        dataset,
        out,
        ledger,
        cluster,
        &["--max-depth", "6", "--folds", "2"],
    )
}

fn train_with(
    dataset: &Path,
    out: &Path,
    ledger: &Path,
    cluster: Option<&str>,
    args: &[&str],
) -> serde_json::Value {
    let ledger = ledger.display().to_string();
    let mut extra = args.to_vec();
    extra.extend(["--ledger", &ledger]);
    if let Some(url) = cluster {
        extra.extend(["--cluster", url]);
    }
    crate::ml::train(dataset, out, &extra)
}

/// A forest and boosted trees, with sampling, feature subsets, early stopping, calibration and
/// a threshold rule: everything whose determinism a cluster could break.
const ENSEMBLES: [(&str, &[&str]); 2] = [
    (
        "forest",
        &[
            "--model",
            "random-forest",
            "--num-trees",
            "6",
            "--max-depth",
            "4",
            "--subsampling-rate",
            "0.7",
            "--folds",
            "0",
            "--calibration",
            "isotonic",
            "--threshold",
            "max-f1",
        ],
    ),
    (
        "gbt",
        &[
            "--model",
            "gbt",
            "--max-iter",
            "5",
            "--max-depth",
            "3",
            "--subsampling-rate",
            "0.8",
            "--validation-fraction",
            "0.2",
            "--folds",
            "0",
            "--calibration",
            "platt",
            "--threshold",
            "recall=0.7",
        ],
    ),
];

fn fingerprint(path: &Path, cluster: Option<&str>) -> String {
    let path = path.display().to_string();
    let mut args = vec!["fingerprint", path.as_str(), "--json"];
    if let Some(url) = cluster {
        args.extend(["--cluster", url]);
    }
    json(&run(&mut emrflow(&args)), "fingerprint")["root"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_cluster_gives_the_embedded_dataset_model_and_metrics() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let data = tmp.path().join("data");
    generate(&data, 20_000);
    let ledger = tmp.path().join("ledger");
    let cluster = Cluster::start(tmp.path(), 2);
    let url = Some(cluster.url.as_str());

    let embedded = json(
        &run_job(&data, &tmp.path().join("ds-embedded"), &ledger, None),
        "embedded run",
    );
    let distributed = run_job(&data, &tmp.path().join("ds-cluster"), &ledger, url);
    assert!(
        distributed.status.success(),
        "cluster run failed: {}\n{}",
        stderr(&distributed),
        cluster.logs()
    );
    let distributed = json(&distributed, "cluster run");
    assert_eq!(distributed["root"], embedded["root"], "dataset roots");
    assert_eq!(distributed["rows_out"], embedded["rows_out"]);
    assert_eq!(distributed["rows_dropped"], embedded["rows_dropped"]);

    let root = embedded["root"].as_str().unwrap_or_default().to_string();
    assert_eq!(fingerprint(&tmp.path().join("ds-embedded"), url), root);
    assert_eq!(fingerprint(&tmp.path().join("ds-cluster"), None), root);

    let model_embedded = train(
        &tmp.path().join("ds-embedded"),
        &tmp.path().join("model-embedded"),
        &ledger,
        None,
    );
    let model_cluster = train(
        &tmp.path().join("ds-cluster"),
        &tmp.path().join("model-cluster"),
        &ledger,
        url,
    );
    for key in [
        "model_root",
        "dataset_root",
        "model_sha256",
        "test",
        "cross_validation",
        "feature_importances",
        "nodes",
        "depth",
    ] {
        assert_eq!(model_cluster[key], model_embedded[key], "{key}");
    }
    let model =
        |dir: &str| std::fs::read(tmp.path().join(dir).join("model.json")).unwrap_or_default();
    assert_eq!(model("model-cluster"), model("model-embedded"));

    for (name, args) in ENSEMBLES {
        let embedded = train_with(
            &tmp.path().join("ds-embedded"),
            &tmp.path().join(format!("{name}-embedded")),
            &ledger,
            None,
            args,
        );
        let distributed = train_with(
            &tmp.path().join("ds-cluster"),
            &tmp.path().join(format!("{name}-cluster")),
            &ledger,
            url,
            args,
        );
        assert_eq!(
            embedded["model"],
            name.replace("forest", "random_forest").as_str()
        );
        for key in [
            "model_root",
            "model_sha256",
            "test",
            "test_at_threshold",
            "brier",
            "feature_importances",
            "nodes",
            "trees",
        ] {
            assert_eq!(distributed[key], embedded[key], "{name}: {key}");
        }
        assert_eq!(
            model(&format!("{name}-cluster")),
            model(&format!("{name}-embedded")),
            "{name}"
        );
    }
}

#[test]
fn a_cluster_over_mutual_tls_admits_its_key_holders_only() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let data = tmp.path().join("data");
    generate(&data, 5_000);
    let ledger = tmp.path().join("ledger");
    let key = tmp.path().join("cluster.key");
    let made = json(
        &run(&mut emrflow(&[
            "cluster-key",
            "--out",
            &key.display().to_string(),
            "--json",
        ])),
        "cluster-key",
    );
    assert_eq!(made["cluster_key_id"].as_str().map(str::len), Some(64));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).map(|m| m.permissions().mode() & 0o777);
        assert_eq!(mode.ok(), Some(0o600));
    }
    let again = run(&mut emrflow(&[
        "cluster-key",
        "--out",
        &key.display().to_string(),
    ]));
    crate::support::assert_one_line_error(&again, &["refusing to overwrite"]);

    // An exposed port without the key is refused at start-up (before binding), by flag.
    for role in ["scheduler", "executor"] {
        let exposed = run(&mut emrflow(&[
            role,
            "--bind-host",
            "0.0.0.0",
            "--port",
            &free_port().to_string(),
        ]));
        crate::support::assert_one_line_error(&exposed, &["--bind-host 0.0.0.0", "--cluster-key"]);
    }

    let cluster = Cluster::start_tls(tmp.path(), 2, &key);
    let embedded = json(
        &run_job(&data, &tmp.path().join("ds-embedded"), &ledger, None),
        "embedded run",
    );
    let key_arg = key.display().to_string();
    let with_key = |out: &str, key: &str| {
        let mut args = run_args(&data, &tmp.path().join(out), &ledger, Some(&cluster.url));
        args.extend(["--cluster-key".to_string(), key.to_string()]);
        run(&mut emrflow(
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
        ))
    };
    let member = with_key("ds-tls", &key_arg);
    assert!(
        member.status.success(),
        "TLS cluster run failed: {}\n{}",
        stderr(&member),
        cluster.logs()
    );
    assert_eq!(json(&member, "TLS cluster run")["root"], embedded["root"]);

    // Another key: the handshake is refused and the client says which flag to look at.
    let other = tmp.path().join("other.key");
    json(
        &run(&mut emrflow(&[
            "cluster-key",
            "--out",
            &other.display().to_string(),
            "--json",
        ])),
        "cluster-key",
    );
    let outsider = with_key("ds-outsider", &other.display().to_string());
    crate::support::assert_one_line_error(&outsider, &["cluster key", "--cluster-key"]);
    crate::support::assert_nothing_published(&tmp.path().join("ds-outsider"));

    // No key: Ballista's plaintext gRPC never gets past the front.
    let plain = run_job(
        &data,
        &tmp.path().join("ds-plain"),
        &ledger,
        Some(&cluster.url),
    );
    assert_eq!(plain.status.code(), Some(2), "{}", stderr(&plain));
    crate::support::assert_nothing_published(&tmp.path().join("ds-plain"));
}

#[test]
fn the_pseudonym_key_never_travels_and_an_executor_holding_another_fails_by_id() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let data = tmp.path().join("data");
    generate(&data, 500);
    let other = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";
    let cluster = Cluster::start_holding(tmp.path(), other);
    let out = tmp.path().join("out");
    let result = run_job(&data, &out, &tmp.path().join("ledger"), Some(&cluster.url));
    assert_eq!(result.status.code(), Some(2), "{}", stderr(&result));
    let err = stderr(&result);
    assert!(
        err.contains("holds no pseudonymization key with id")
            && err.contains("--pseudonym-key-file"),
        "{err}"
    );
    for secret in [crate::support::TEST_PSEUDONYM_KEY, other] {
        assert!(!err.contains(secret), "a key in the error: {err}");
        assert!(
            !cluster.logs().contains(secret),
            "a key in the cluster's logs"
        );
    }
    crate::support::assert_nothing_published(&out);
}

#[test]
fn an_unreachable_cluster_is_a_one_line_error_and_publishes_nothing() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let data = tmp.path().join("data");
    generate(&data, 500);
    let url = format!("df://127.0.0.1:{}", free_port());
    let out = tmp.path().join("out");
    let result = run_job(&data, &out, &tmp.path().join("ledger"), Some(&url));
    crate::support::assert_one_line_error(&result, &["cannot reach the scheduler", &url]);
    crate::support::assert_nothing_published(&out);
}

/// Waits until the executor's log shows it has started a task of the job.
fn wait_for_task(log: &Path, job: &mut Child) -> bool {
    // Returns as soon as the task shows or the job ends; the bound only stops a hang.
    for _ in 0..3000 {
        if std::fs::read_to_string(log)
            .unwrap_or_default()
            .contains("Received task")
        {
            return true;
        }
        if let Ok(Some(_)) = job.try_wait() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn an_executor_killed_mid_job_is_survived_or_fails_cleanly_and_a_rerun_gives_the_same_root() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let data = tmp.path().join("data");
    // Large enough that each executor runs several tasks of every stage.
    generate(&data, 300_000);
    let ledger = tmp.path().join("ledger");
    let mut cluster = Cluster::start(tmp.path(), 2);
    let out = tmp.path().join("ds-killed");

    let args = run_args(&data, &out, &ledger, Some(&cluster.url));
    let mut job = emrflow(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    // SIGKILL the second executor as soon as it works on the job.
    let started = wait_for_task(&cluster.executor_log(1), &mut job);
    assert!(
        started,
        "executor 1 never received a task:\n{}",
        cluster.logs()
    );
    let mut victim = cluster.executors.remove(1);
    victim.kill().unwrap_or_else(|e| panic!("{e}"));
    let _ = victim.wait();
    let result = job.wait_with_output().unwrap_or_else(|e| panic!("{e}"));

    // The reference: the same job on the surviving executor alone.
    let rerun_out = tmp.path().join("ds-rerun");
    let rerun = run_job(&data, &rerun_out, &ledger, Some(&cluster.url));
    assert!(
        rerun.status.success(),
        "rerun failed: {}\n{}",
        stderr(&rerun),
        cluster.logs()
    );
    let rerun = json(&rerun, "rerun");

    if result.status.success() {
        // The lost tasks (and the map output they had written) were re-run elsewhere.
        let survived = json(&result, "killed run");
        assert_eq!(survived["root"], rerun["root"], "{}", cluster.logs());
        let logs = cluster.logs();
        assert!(
            ["lost Executor", "heartbeat timed out", "already dead"]
                .iter()
                .any(|s| logs.contains(s)),
            "the scheduler did not see the executor go: {logs}"
        );
    } else {
        assert_eq!(result.status.code(), Some(2), "{}", stderr(&result));
        let err = stderr(&result);
        assert!(
            err.contains("nothing was published") && err.contains("executor"),
            "{err}"
        );
        crate::support::assert_nothing_published(&out);
    }
    // The embedded engine agrees with what the cluster produced after the loss.
    let embedded = json(
        &run_job(&data, &tmp.path().join("ds-embedded"), &ledger, None),
        "embedded run",
    );
    assert_eq!(embedded["root"], rerun["root"]);
}
