//! The ledger's process test: four `emrflow ledger node` processes on 127.0.0.1 (mutual TLS
//! between peers, TLS to clients), a client streaming transactions, the primary killed with
//! SIGKILL mid-stream. The other three change
//! view and keep committing; every acknowledged transaction is on every surviving peer; the
//! killed peer restarts from its redb store and catches up to the same head hash.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::support::{emrflow, run, stderr, stdout};

/// Four `emrflow ledger node` processes of a new ledger, each killed when dropped, so a failing
/// test leaves no peer behind.
pub(crate) struct Cluster {
    dir: PathBuf,
    peers: Vec<Option<Child>>,
}

impl Cluster {
    /// Writes a ledger into `dir` (on free ports of 127.0.0.1) and starts its four peers.
    pub(crate) fn start(dir: &Path) -> Self {
        let base = free_base();
        let out = run(&mut emrflow(&[
            "ledger",
            "init",
            "--out",
            &dir.to_string_lossy(),
            "--base-port",
            &base.to_string(),
            "--json",
        ]));
        assert!(out.status.success(), "init: {}", stderr(&out));
        let mut cluster = Self {
            dir: dir.to_path_buf(),
            peers: (0..4).map(|_| None).collect(),
        };
        for i in 0..4 {
            cluster.restart(i);
        }
        for i in 0..4 {
            wait_for(
                Duration::from_secs(30),
                &format!("peer {i} to serve"),
                || cluster.head(i),
            );
        }
        cluster
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The genesis that names the peers, which clients pass as their ledger.
    pub(crate) fn genesis(&self) -> PathBuf {
        self.dir.join("genesis.json")
    }

    /// Starts peer `i` from its store.
    pub(crate) fn restart(&mut self, i: usize) {
        let child = emrflow(&[
            "ledger",
            "node",
            "--config",
            &self.dir.join(format!("peer{i}.toml")).to_string_lossy(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start peer {i}: {e}"));
        self.peers[i] = Some(child);
    }

    /// SIGKILLs peer `i`.
    pub(crate) fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.peers[i].take() {
            p.kill().unwrap_or_else(|e| panic!("SIGKILL peer {i}: {e}"));
            let _ = p.wait();
        }
    }

    /// Stops every peer (the stores stay).
    pub(crate) fn stop(&mut self) {
        for i in 0..self.peers.len() {
            self.kill(i);
        }
    }

    /// Peer `i`'s head (`emrflow ledger head`), or `None` while it does not answer.
    pub(crate) fn head(&self, i: usize) -> Option<serde_json::Value> {
        let out = emrflow(&[
            "ledger",
            "head",
            "--dir",
            &self.dir.to_string_lossy(),
            "--peer",
            &i.to_string(),
        ])
        .output()
        .ok()?;
        if !out.status.success() {
            return None;
        }
        serde_json::from_str(stdout(&out).trim()).ok()
    }

    /// Waits until peer `i` has `j`'s head hash and the certificates up to it: a receipt needs
    /// its block's certificate, which can arrive after the block itself, so an equal hash alone
    /// is not yet "caught up".
    pub(crate) fn wait_caught_up(&self, i: usize, j: usize) {
        wait_for(
            Duration::from_secs(60),
            &format!("peer {i} to catch up"),
            || {
                let a = self.head(i)?;
                let b = self.head(j)?;
                (a["height"] == b["height"]
                    && a["hash"] == b["hash"]
                    && a["certified"] == b["certified"])
                    .then_some(())
            },
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_base() -> u16 {
    for _ in 0..200 {
        let Ok(l) = TcpListener::bind("127.0.0.1:0") else {
            continue;
        };
        let base = l.local_addr().map(|a| a.port()).unwrap_or(0);
        drop(l);
        if base == 0 || base > 60_000 {
            continue;
        }
        // Four peer listeners and four client listeners.
        if (0..8).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return base;
        }
    }
    panic!("no eight free consecutive ports on 127.0.0.1");
}

/// Polls `f` until it returns `Some`, at most `limit`.
pub(crate) fn wait_for<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    #[allow(clippy::disallowed_methods)] // a bound on polling, not a timed assertion
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |s| s.lines().count())
}

/// Whether peer `peer` holds every transaction of `receipts`, with the command's output.
fn has(dir: &Path, peer: usize, receipts: &Path) -> (bool, String) {
    let out = run(&mut emrflow(&[
        "ledger",
        "has",
        "--dir",
        &dir.to_string_lossy(),
        "--peer",
        &peer.to_string(),
        "--receipts",
        &receipts.to_string_lossy(),
    ]));
    (
        out.status.success(),
        format!("{} {}", stdout(&out), stderr(&out)),
    )
}

#[test]
fn primary_killed_mid_stream_loses_nothing_and_catches_up() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir: PathBuf = tmp.path().join("ledger");
    let mut cluster = Cluster::start(&dir);

    let receipts = dir.join("receipts.jsonl");
    let total = 2_000;
    let mut client: Child = emrflow(&[
        "ledger",
        "submit",
        "--dir",
        &dir.to_string_lossy(),
        "--count",
        &total.to_string(),
        "--concurrency",
        "16",
        "--timeout-secs",
        "5",
        "--receipts",
        &receipts.to_string_lossy(),
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .expect("start the client");

    // Mid-stream: SIGKILL the primary of view 0.
    wait_for(Duration::from_secs(60), "the first receipts", || {
        (lines(&receipts) >= 200).then_some(())
    });
    cluster.kill(0);
    let acknowledged_at_kill = lines(&receipts);
    assert!(
        acknowledged_at_kill < total,
        "the stream was over before the kill"
    );

    let status = wait_for(Duration::from_secs(180), "the client to finish", || {
        client.try_wait().ok().flatten()
    });
    let mut report = String::new();
    if let Some(mut s) = client.stdout.take() {
        use std::io::Read;
        let _ = s.read_to_string(&mut report);
    }
    assert!(status.success(), "client: {report}");
    assert_eq!(
        lines(&receipts),
        total,
        "every transaction acknowledged: {report}"
    );

    // Every acknowledged receipt verifies offline and is on every surviving peer.
    let out = run(&mut emrflow(&[
        "ledger",
        "verify-receipt",
        "--genesis",
        &dir.join("genesis.json").to_string_lossy(),
        "--receipt",
        &receipts.to_string_lossy(),
    ]));
    assert!(out.status.success(), "verify-receipt: {}", stdout(&out));
    for p in 1..4 {
        let (ok, out) = has(&dir, p, &receipts);
        assert!(ok, "peer {p} lacks acknowledged transactions: {out}");
    }
    let h1 = cluster.head(1).expect("peer 1 head");
    assert!(h1["log_size"].as_u64().unwrap_or(0) >= total as u64);

    // The killed peer restarts from its store and catches up.
    cluster.restart(0);
    cluster.wait_caught_up(0, 1);
    let (ok, out) = has(&dir, 0, &receipts);
    assert!(ok, "restarted peer lacks acknowledged transactions: {out}");

    // Stopped, every peer's chain re-verifies from genesis on disk.
    cluster.stop();
    for p in 0..4 {
        let out = run(&mut emrflow(&[
            "ledger",
            "verify",
            "--config",
            &dir.join(format!("peer{p}.toml")).to_string_lossy(),
        ]));
        assert!(
            out.status.success(),
            "verify peer {p}: {} {}",
            stdout(&out),
            stderr(&out)
        );
    }
}
