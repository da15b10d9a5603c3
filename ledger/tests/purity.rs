//! The pure modules (PBFT core, chain, contracts, peer, Merkle, simulator) never reach for IO,
//! the clock or a global RNG. The `--no-default-features` build proves tokio/tonic/redb are
//! not needed; this scan also keeps `std` clocks, files, sockets and global randomness out.
//! (A workspace `clippy.toml` ban on `Instant::now` would also hit the other crates' timing
//! code, so the ledger checks its own modules here.)

use std::path::Path;

const PURE: &[&str] = &[
    "src/pbft",
    "src/chain.rs",
    "src/contracts.rs",
    "src/contracts",
    "src/peer.rs",
    "../merkle/src",
    "src/crypto.rs",
    "src/sigcheck.rs",
    "src/tx.rs",
    "src/ids.rs",
    "src/sim",
];

const FORBIDDEN: &[&str] = &[
    "tokio",
    "tonic",
    "redb",
    "std::fs",
    "std::net",
    "std::thread",
    "Instant::now",
    "SystemTime",
    "thread_rng",
    "rand::rng(",
    "from_os_rng",
    "OsRng",
];

fn scan(path: &Path, hits: &mut Vec<String>) {
    if path.is_dir() {
        for e in std::fs::read_dir(path).expect("read dir").flatten() {
            scan(&e.path(), hits);
        }
        return;
    }
    let text = std::fs::read_to_string(path).expect("read source");
    for (n, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("//") {
            continue;
        }
        for f in FORBIDDEN {
            if line.contains(f) {
                hits.push(format!("{}:{}: {f}", path.display(), n + 1));
            }
        }
    }
}

#[test]
fn pure_modules_do_no_io_and_read_no_clock() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut hits = Vec::new();
    for p in PURE {
        let path = root.join(p);
        if path.exists() {
            scan(&path, &mut hits);
        }
    }
    assert!(
        hits.is_empty(),
        "IO, clock or global RNG in a pure module:\n{}",
        hits.join("\n")
    );
}
