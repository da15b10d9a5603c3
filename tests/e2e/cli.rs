//! Every command answers `--help` (each help text is a snapshot, so a change to a flag shows
//! in review), and bad input exits 2 with one line naming what is wrong (snapshots too).

use std::process::Output;

use crate::support::{emrflow, run, stderr, stdout};

/// `emrflow ARGS` with a fixed terminal width, so help text wraps the same everywhere.
fn cli(args: &[&str]) -> Output {
    let mut cmd = emrflow(args);
    cmd.env("COLUMNS", "100");
    run(&mut cmd)
}

/// The subcommands a help text lists under `Commands:` (without `help`).
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| l.trim() != "Commands:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter(|l| l.starts_with("  ") && !l.starts_with("    "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|c| c != "help")
        .collect()
}

#[test]
fn every_command_has_help_and_its_text_is_a_snapshot() {
    let mut pending: Vec<Vec<String>> = vec![Vec::new()];
    let mut seen = 0;
    while let Some(path) = pending.pop() {
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        let out = cli(&args);
        assert!(
            out.status.success(),
            "{} failed: {}",
            args.join(" "),
            stderr(&out)
        );
        let text = stdout(&out);
        assert!(
            text.contains("Usage: emrflow"),
            "{}:\n{text}",
            args.join(" ")
        );
        let name = if path.is_empty() {
            "help".to_string()
        } else {
            format!("help-{}", path.join("-"))
        };
        insta::assert_snapshot!(name, text);
        seen += 1;
        for sub in subcommands(&text) {
            let mut next = path.clone();
            next.push(sub);
            pending.push(next);
        }
    }
    // generate, run, train, predict, demo, verify, lineage, audit, prove, fingerprint, ledger
    // (and its eight), scheduler, executor, bench (and its one), and the top level.
    assert!(seen >= 24, "only {seen} help texts");
}

/// The one-line errors a user meets first: each names the file, flag or value at fault.
#[test]
fn bad_input_is_one_line_naming_what_is_wrong() {
    let cases: &[(&str, &[&str])] = &[
        ("error-run-missing-job", &["run", "no/such/job.toml"]),
        ("error-lineage-bad-root", &["lineage", "not-a-root"]),
        ("error-audit-bad-subject", &["audit", "--subject", "abc"]),
        (
            "error-prove-bad-root",
            &["prove", "--verify", "no/such/proof.json", "--root", "xyz"],
        ),
        ("error-verify-missing", &["verify", "no/such/dataset"]),
        (
            "error-train-bad-depth",
            &["train", "--dataset", "d", "--out", "m", "--max-depth", "0"],
        ),
        (
            "error-train-bad-weights",
            &[
                "train",
                "--dataset",
                "d",
                "--out",
                "m",
                "--class-weights",
                "heavy",
            ],
        ),
        (
            "error-run-bad-input-flag",
            &["run", "job.toml", "--input", "visits"],
        ),
        (
            "error-cluster-bad-url",
            &["fingerprint", "x", "--cluster", "http://scheduler:1"],
        ),
        (
            "error-generate-zero",
            &["generate", "--visits", "0", "--out", "x"],
        ),
    ];
    for (name, args) in cases {
        let out = cli(args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{}: {}",
            args.join(" "),
            stderr(&out)
        );
        let err = stderr(&out);
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        // clap's usage errors add a usage line and a hint; emrflow's own errors are one line.
        if !lines
            .first()
            .is_some_and(|l| l.starts_with("error: invalid value"))
        {
            assert_eq!(lines.len(), 1, "{}:\n{err}", args.join(" "));
        }
        insta::assert_snapshot!(*name, err);
    }
}

#[test]
fn unknown_flag_is_a_usage_error() {
    let out = cli(&["generate", "--visitz", "3"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--visitz"));
}
