//! `emrflow prove`: record-level proofs against a dataset root. `--dataset DIR --record FILE`
//! emits an inclusion proof when the record is in the dataset, or a non-membership proof (its
//! two sorted neighbours) when it is not; `--verify PROOF --root ROOT` checks either kind with
//! nothing but the root (from the ledger, or from `emrflow lineage`). Flags →
//! `provenance::proof` → the proof or the verdict.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use ledger::contracts::Role;
use merkle::Digest;
use pipeline::fingerprint::{self, Membership, ProofKind};
use provenance::Accessor;

use super::args::{EngineArgs, LedgerArgs, with_ledger};
use super::{ExitStatus, print_json, print_lines, progress};

#[derive(Debug, Args)]
#[command(
    group(clap::ArgGroup::new("mode").required(true).args(["dataset", "verify"])),
    after_help = "The record is one row as the dataset stores it (pseudonymized ids, normalized \
values): a JSON object (FILE.json) or a CSV header plus one row. Exit status: proving, 0; \
verifying, 0 for a valid proof (either kind), 1 for an invalid one, 2 when it cannot be read."
)]
pub(crate) struct ProveArgs {
    /// Dataset to prove a record against: a directory or a memory:// or s3:// URL
    #[arg(long, value_name = "DIR|URL", requires = "record")]
    dataset: Option<String>,
    /// The record (JSON object or one-row CSV)
    #[arg(long, value_name = "FILE")]
    record: Option<PathBuf>,
    /// Write the proof here instead of stdout
    #[arg(long, value_name = "PROOF")]
    out: Option<PathBuf>,
    /// Check a proof file instead
    #[arg(long, value_name = "PROOF", requires = "root")]
    verify: Option<PathBuf>,
    /// The dataset root the proof must lead to (hex)
    #[arg(long, value_name = "ROOT")]
    root: Option<String>,
    #[command(flatten)]
    engine: EngineArgs,
    /// Print a JSON summary on stdout
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    ledger: LedgerArgs,
}

pub(crate) async fn run(args: ProveArgs) -> anyhow::Result<ExitStatus> {
    if let Some(proof_path) = &args.verify {
        return verify(&args, proof_path);
    }
    let (Some(dataset), Some(record_path)) = (&args.dataset, &args.record) else {
        anyhow::bail!("pass --dataset DIR --record FILE, or --verify PROOF --root ROOT");
    };
    let bytes = std::fs::read(record_path)
        .with_context(|| format!("cannot read {}", record_path.display()))?;
    let record = fingerprint::read_record(&bytes, &record_path.display().to_string())?;
    let bar = progress(&format!("hashing {dataset}"));
    let engine = args.engine.engine();
    let proved = with_ledger(&args.ledger, async |p| {
        provenance::proof::prove(
            &engine,
            dataset,
            &record,
            p,
            Accessor::Role(Role::Compliance),
        )
        .await
    })
    .await;
    bar.finish_and_clear();
    let provenance::proof::Proved { proof, anchored } = proved?;

    let text = proof.to_json()?;
    match &args.out {
        Some(out) => {
            std::fs::write(out, &text).with_context(|| format!("cannot write {}", out.display()))?
        }
        None if !args.json => print_lines(&[String::from_utf8_lossy(&text).trim_end().to_string()]),
        None => {}
    }
    let kind = match proof.kind {
        ProofKind::Inclusion => "inclusion",
        ProofKind::NonMembership => "non_membership",
    };
    if args.json {
        print_json(&serde_json::json!({
            "kind": kind,
            "root": proof.root.to_string(),
            "anchored": anchored,
            "proof": args.out.as_ref().map(|p| p.display().to_string()),
        }))?;
    } else if args.out.is_some() {
        print_lines(&[format!(
            "{kind} proof for root {}{} written to {}",
            proof.root,
            match anchored {
                Some(true) => " (the anchored root)",
                Some(false) => " (NOT the root anchored beside the dataset)",
                None => " (the dataset has no anchor)",
            },
            args.out
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        )]);
    }
    Ok(ExitStatus::Success)
}

fn verify(args: &ProveArgs, path: &std::path::Path) -> anyhow::Result<ExitStatus> {
    let root_text = args.root.as_deref().unwrap_or_default();
    let root = Digest::from_hex(root_text).map_err(|e| anyhow::anyhow!("--root: {e}"))?;
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let checked = provenance::proof::check_proof(&bytes, &path.display().to_string(), &root)?;
    if args.json {
        print_json(&checked)?;
    } else {
        print_lines(&[match (&checked.membership, &checked.reason) {
            (Some(Membership::Present), _) => {
                format!("VALID: the record IS in the dataset with root {root}")
            }
            (Some(Membership::Absent), _) => {
                format!("VALID: the record is NOT in the dataset with root {root}")
            }
            (None, reason) => format!("INVALID: {}", reason.as_deref().unwrap_or("?")),
        }]);
    }
    Ok(if checked.valid {
        ExitStatus::Success
    } else {
        ExitStatus::Mismatch
    })
}
