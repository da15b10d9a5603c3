//! `emrflow verify PATH`: flags → `provenance::verify` → a verdict. Exit 0 on a match, 1 on a
//! mismatch (naming the buckets that differ, or what else does), 2 when it cannot tell
//! (unreadable files, no ledger).

use clap::Args;
use ledger::contracts::Role;
use provenance::Accessor;

use super::args::{EngineArgs, LedgerArgs, with_ledger};
use super::{ExitStatus, print_json, print_lines, progress};

#[derive(Debug, Args)]
#[command(
    after_help = "Exit status: 0 the files are exactly what was anchored; 1 they are not \
(the output says what differs); 2 the check could not be made."
)]
pub(crate) struct VerifyArgs {
    /// A dataset published by `emrflow run`, or a model (directory or its model.json) published
    /// by `emrflow train`: a path or a memory:// or s3:// URL
    path: String,
    #[command(flatten)]
    engine: EngineArgs,
    /// Print a JSON verdict on stdout
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    ledger: LedgerArgs,
}

pub(crate) async fn run(args: VerifyArgs) -> anyhow::Result<ExitStatus> {
    let bar = progress(&format!("verifying {}", args.path));
    let engine = args.engine.engine();
    let verdict = with_ledger(&args.ledger, async |p| {
        provenance::verify(&engine, &args.path, p, Accessor::Role(Role::Compliance)).await
    })
    .await;
    bar.finish_and_clear();
    let verdict = verdict?;
    if args.json {
        print_json(&verdict)?;
    } else {
        print_lines(&verdict_lines(&verdict));
    }
    Ok(if verdict.matches {
        ExitStatus::Success
    } else {
        ExitStatus::Mismatch
    })
}

/// The verdict for people; shared with `demo`.
pub(crate) fn verdict_lines(verdict: &provenance::Verdict) -> Vec<String> {
    let mut lines = vec![if verdict.matches {
        format!(
            "OK: {} {} is exactly what was anchored (root {}, height {}, by {})",
            verdict.kind,
            verdict.path,
            verdict.anchored_root,
            verdict.ledger_height.unwrap_or_default(),
            verdict.anchored_by.as_deref().unwrap_or("?")
        )
    } else {
        format!(
            "MISMATCH: {} {} is not what was anchored (anchored root {}, recomputed {})",
            verdict.kind,
            verdict.path,
            verdict.anchored_root,
            verdict.recomputed_root.as_deref().unwrap_or("none")
        )
    }];
    lines.extend(verdict.problems.iter().map(|p| format!("  {p}")));
    if verdict.derivations.len() > 1 {
        lines.push(format!(
            "  root {}… was published {} times:",
            &verdict.anchored_root[..16],
            verdict.derivations.len()
        ));
        for d in &verdict.derivations {
            lines.push(format!(
                "    height {} {} by {} at {}{}",
                d.height,
                d.stage,
                d.signer,
                d.location,
                if d.this_one { " (this copy)" } else { "" }
            ));
        }
    }
    lines
}
