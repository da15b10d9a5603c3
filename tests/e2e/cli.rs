//! Every command answers `--help`, and usage errors exit 2 with one line.

use crate::support::{emrflow, run, stderr, stdout};

#[test]
fn every_command_has_help() {
    let top = run(&mut emrflow(&["--help"]));
    assert!(top.status.success());
    let text = stdout(&top);
    for cmd in [
        "generate",
        "run",
        "train",
        "predict",
        "demo",
        "ledger",
        "verify",
        "lineage",
        "audit",
        "prove",
        "fingerprint",
    ] {
        assert!(
            text.contains(cmd),
            "top-level help does not list {cmd}:\n{text}"
        );
        let out = run(&mut emrflow(&[cmd, "--help"]));
        assert!(
            out.status.success(),
            "{cmd} --help failed: {}",
            stderr(&out)
        );
        assert!(
            stdout(&out).contains("Usage: emrflow"),
            "{cmd} --help:\n{}",
            stdout(&out)
        );
    }
}

#[test]
fn unknown_flag_is_a_usage_error() {
    let out = run(&mut emrflow(&["generate", "--visitz", "3"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--visitz"));
}
