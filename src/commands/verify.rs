//! `emrflow verify PATH`: recomputes the fingerprint of a published dataset directory or a
//! model, and checks it against the receipt beside it (offline, against the ledger's genesis)
//! and against the ledger's anchor. Exit 0 on a match, 1 on a mismatch (naming the buckets that
//! differ, or what else does), 2 when it cannot tell (unreadable files, no ledger).

use std::path::{Path, PathBuf};

use clap::Args;
use ledger::contracts::Role;
use pipeline::fingerprint::BucketDiff;
use pipeline::manifest::MANIFEST_FILE;
use serde::Serialize;

use super::cluster::EngineArgs;
use super::provenance::{LedgerArgs, Provenance, check_dataset, check_model};
use super::{ExitStatus, print_json, print_lines, progress};

#[derive(Debug, Args)]
#[command(
    after_help = "Exit status: 0 the files are exactly what was anchored; 1 they are not \
(the output says what differs); 2 the check could not be made."
)]
pub(crate) struct VerifyArgs {
    /// A dataset directory published by `emrflow run`, or a model directory (or its model.json)
    /// published by `emrflow train`
    path: PathBuf,
    #[command(flatten)]
    engine: EngineArgs,
    /// Print a JSON verdict on stdout
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    ledger: LedgerArgs,
}

#[derive(Debug, Serialize)]
pub(crate) struct Verdict {
    path: String,
    kind: &'static str,
    pub(crate) matches: bool,
    pub(crate) anchored_root: String,
    recomputed_root: Option<String>,
    /// Block height and signer of the anchor, when the ledger has it.
    ledger_height: Option<u64>,
    anchored_by: Option<String>,
    /// What differs.
    problems: Vec<String>,
    /// Datasets: the buckets whose rows differ from the anchored fingerprint.
    buckets: Vec<BucketDiff>,
}

pub(crate) async fn run(args: VerifyArgs) -> anyhow::Result<ExitStatus> {
    let provenance = Provenance::open(&args.ledger).await?;
    let bar = progress(&format!("verifying {}", args.path.display()));
    let verdict = verify_path(&args.path, &args.engine, &provenance).await;
    bar.finish_and_clear();
    provenance.close().await?;
    let verdict = verdict?;
    if args.json {
        print_json(&verdict)?;
    } else {
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
        print_lines(&lines);
    }
    Ok(if verdict.matches {
        ExitStatus::Success
    } else {
        ExitStatus::Mismatch
    })
}

/// Verifies a dataset directory or a model against its anchor and records the compliance
/// read; shared with `demo`.
pub(crate) async fn verify_path(
    path: &Path,
    engine: &EngineArgs,
    provenance: &Provenance,
) -> anyhow::Result<Verdict> {
    if !path.exists() {
        anyhow::bail!("{} does not exist", path.display());
    }
    let is_dataset = path.is_dir() && path.join(MANIFEST_FILE).is_file();
    let check = if is_dataset {
        let ctx = engine.context().await?;
        check_dataset(&ctx, path, provenance).await?
    } else {
        check_model(path, provenance).await?
    };
    let matches = check.problems.is_empty();
    // The compliance read is recorded whatever the outcome: who checked what, and when.
    provenance
        .record_read(
            Role::Compliance,
            check.anchor.root,
            if matches {
                "verify: match"
            } else {
                "verify: mismatch"
            },
        )
        .await?;
    Ok(Verdict {
        path: path.display().to_string(),
        kind: if is_dataset { "dataset" } else { "model" },
        matches,
        anchored_root: check.anchor.root.to_hex(),
        recomputed_root: check.recomputed.map(|r| r.to_hex()),
        ledger_height: check.record.as_ref().map(|r| r.position.seq.0),
        anchored_by: check.record.map(|r| r.signer_name),
        problems: check.problems,
        buckets: check.buckets,
    })
}
