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

/// Kills the child processes it owns when dropped, so a failing test leaves no peer behind.
struct Peers(Vec<Option<Child>>);

impl Drop for Peers {
    fn drop(&mut self) {
        for c in self.0.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
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

fn node(dir: &Path, i: usize) -> Child {
    emrflow(&[
        "ledger",
        "node",
        "--config",
        &dir.join(format!("peer{i}.toml")).to_string_lossy(),
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap_or_else(|e| panic!("cannot start peer {i}: {e}"))
}

fn head(dir: &Path, i: usize) -> Option<serde_json::Value> {
    let out = emrflow(&[
        "ledger",
        "head",
        "--dir",
        &dir.to_string_lossy(),
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

/// Polls `f` until it returns `Some`, at most `limit`.
fn wait_for<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
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
    let mut peers = Peers((0..4).map(|i| Some(node(&dir, i))).collect());
    for i in 0..4 {
        wait_for(
            Duration::from_secs(30),
            &format!("peer {i} to serve"),
            || head(&dir, i),
        );
    }

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
    if let Some(mut p) = peers.0[0].take() {
        p.kill().expect("SIGKILL peer 0");
        let _ = p.wait();
    }
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
    let h1 = head(&dir, 1).expect("peer 1 head");
    assert!(h1["log_size"].as_u64().unwrap_or(0) >= total as u64);

    // The killed peer restarts from its store and reaches the same head hash, with the
    // certificates up to it: a receipt needs its block's certificate, which can arrive after
    // the block itself, so an equal hash alone is not yet "caught up".
    peers.0[0] = Some(node(&dir, 0));
    wait_for(Duration::from_secs(60), "peer 0 to catch up", || {
        let h0 = head(&dir, 0)?;
        let h1 = head(&dir, 1)?;
        (h0["height"] == h1["height"]
            && h0["hash"] == h1["hash"]
            && h0["certified"] == h1["certified"])
            .then_some(())
    });
    let (ok, out) = has(&dir, 0, &receipts);
    assert!(ok, "restarted peer lacks acknowledged transactions: {out}");

    // Stopped, every peer's chain re-verifies from genesis on disk.
    drop(peers);
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
