//! Deterministic simulation of the four-peer ledger: seeds × fault mixes, with agreement,
//! validity, total order and liveness checked after every step. CI runs 512 seeds; a longer
//! sweep is `LEDGER_SIM_SEEDS=100000 cargo test -p ledger --no-default-features --features sim
//! --test sim -- --ignored sweep`; one failing seed replays with the command it prints.

use ledger::sim::{Report, run_seed};

fn run_range(range: std::ops::Range<u64>) {
    let mut failures = Vec::new();
    for seed in range {
        if let Err(f) = run_seed(seed) {
            failures.push(f.to_string());
        }
    }
    assert!(
        failures.is_empty(),
        "{} seeds failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// 512 seeds in eight tests so that the test runner spreads them over the cores.
#[test]
fn seeds_000_063() {
    run_range(0..64);
}
#[test]
fn seeds_064_127() {
    run_range(64..128);
}
#[test]
fn seeds_128_191() {
    run_range(128..192);
}
#[test]
fn seeds_192_255() {
    run_range(192..256);
}
#[test]
fn seeds_256_319() {
    run_range(256..320);
}
#[test]
fn seeds_320_383() {
    run_range(320..384);
}
#[test]
fn seeds_384_447() {
    run_range(384..448);
}
#[test]
fn seeds_448_511() {
    run_range(448..512);
}

/// Replays one seed: `LEDGER_SIM_SEED=N cargo test -p ledger --no-default-features --features
/// sim --test sim -- replay --nocapture`.
#[test]
#[allow(clippy::print_stdout)] // the replayed run's summary is the point of this test
fn replay() {
    let Ok(seed) = std::env::var("LEDGER_SIM_SEED") else {
        return;
    };
    let seed: u64 = seed.parse().expect("LEDGER_SIM_SEED is a number");
    match run_seed(seed) {
        Ok(r) => println!("{r:?}"),
        Err(f) => panic!("{f}"),
    }
}

/// A long sweep: `LEDGER_SIM_SEEDS` seeds from `LEDGER_SIM_FROM` (default 512).
#[test]
#[ignore = "long sweep; run with --ignored"]
fn sweep() {
    let count: u64 = std::env::var("LEDGER_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let from: u64 = std::env::var("LEDGER_SIM_FROM")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(512);
    run_range(from..from + count);
}

/// Every scenario kind makes progress and some exercise view changes.
#[test]
fn scenarios_exercise_view_changes() {
    let reports: Vec<Report> = (0..16).filter_map(|s| run_seed(s).ok()).collect();
    assert_eq!(reports.len(), 16);
    assert!(reports.iter().all(|r| r.height > 0));
    assert!(
        reports.iter().any(|r| r.max_view > 0),
        "no run changed view"
    );
}
