//! `emrflow verify PATH`: recomputes the fingerprint of a published dataset directory or a
//! model, and checks it against the receipt beside it (offline, against the ledger's genesis)
//! and against the ledger's anchor. Exit 0 on a match, 1 on a mismatch (naming the buckets that
//! differ, or what else does), 2 when it cannot tell (unreadable files, no ledger).

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use ledger::contracts::{AnchorRecord, Role};
use ledger::crypto::Digest;
use pipeline::fingerprint::{self, BucketDiff, FINGERPRINT_FILE, Fingerprint};
use pipeline::manifest::MANIFEST_FILE;
use serde::Serialize;

use super::provenance::{AnchorFile, LedgerArgs, Provenance, digest, model_root};
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
    /// Partitions to fingerprint with (default: all cores)
    #[arg(long)]
    partitions: Option<usize>,
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
    recomputed_root: String,
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
    let verdict = verify_path(&args.path, args.partitions, &provenance).await;
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
                verdict.kind, verdict.path, verdict.anchored_root, verdict.recomputed_root
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

/// Verifies a dataset directory or a model against its anchor; shared with `demo`.
pub(crate) async fn verify_path(
    path: &Path,
    partitions: Option<usize>,
    provenance: &Provenance,
) -> anyhow::Result<Verdict> {
    if !path.exists() {
        anyhow::bail!("{} does not exist", path.display());
    }
    let dir = if path.is_dir() {
        path.to_path_buf()
    } else {
        path.parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
    };
    let anchor = AnchorFile::read(&dir)?.with_context(|| {
        format!(
            "{} has no anchor.json: it was not published by `emrflow run` or `emrflow train`",
            dir.display()
        )
    })?;
    let mut problems = Vec::new();
    let spec = match anchor.check(provenance.genesis()) {
        Ok(spec) => Some(spec),
        Err(e) => {
            problems.push(format!("the receipt: {e:#}"));
            None
        }
    };
    let record = provenance.anchor_of(anchor.root).await?;
    if record.is_none() {
        problems.push(format!(
            "root {} is not anchored on {}",
            anchor.root, provenance.describe
        ));
    }
    let is_dataset = dir.join(MANIFEST_FILE).is_file() && path.is_dir();
    let mut buckets = Vec::new();
    let recomputed = if is_dataset {
        let ctx = pipeline::embedded_context(partitions)?;
        let fp = fingerprint::fingerprint(
            fingerprint::read_dataset(&ctx, &dir.display().to_string()).await?,
        )
        .await?;
        let recomputed = digest(&fp.root);
        if recomputed != anchor.root {
            problems.push(format!(
                "the rows differ: {} rows now, recomputed root {}",
                fp.row_count, fp.root
            ));
            buckets = differing_buckets(&dir, &fp, &anchor.root, &mut problems);
        }
        if let Some(spec) = &spec {
            let manifest = std::fs::read(dir.join(MANIFEST_FILE))
                .with_context(|| format!("cannot read {}", dir.join(MANIFEST_FILE).display()))?;
            if Digest::of(&manifest) != spec.params_hash {
                problems.push("manifest.json differs from the one anchored with the data".into());
            }
        }
        recomputed
    } else {
        let file = if path.is_dir() {
            dir.join(ml::report::files::MODEL)
        } else {
            path.to_path_buf()
        };
        let bytes =
            std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
        match ml::DecisionTreeModel::from_json(&bytes, &file.display().to_string()) {
            Ok(model) => match anchor.dataset_root {
                Some(dataset_root) => {
                    let root = model_root(&model, &dataset_root)?;
                    if root != anchor.root {
                        problems.push(format!(
                            "{} differs from the anchored model (a threshold, a parameter or a \
                             node changed)",
                            file.display()
                        ));
                    }
                    if spec
                        .as_ref()
                        .is_some_and(|s| !s.parents.contains(&dataset_root))
                    {
                        problems.push(format!(
                            "anchor.json names dataset {dataset_root}, which the anchor does not"
                        ));
                    }
                    root
                }
                None => {
                    problems.push("anchor.json names no training dataset".into());
                    Digest([0; 32])
                }
            },
            Err(e) => {
                problems.push(format!("the model file: {e}"));
                Digest([0; 32])
            }
        }
    };
    // The compliance read is recorded whatever the outcome: who checked what, and when.
    provenance
        .record_read(
            Role::Compliance,
            anchor.root,
            if problems.is_empty() {
                "verify: match"
            } else {
                "verify: mismatch"
            },
        )
        .await?;
    Ok(Verdict {
        path: path.display().to_string(),
        kind: if is_dataset { "dataset" } else { "model" },
        matches: problems.is_empty(),
        anchored_root: anchor.root.to_hex(),
        recomputed_root: recomputed.to_hex(),
        ledger_height: record.as_ref().map(|r: &AnchorRecord| r.position.seq.0),
        anchored_by: record.map(|r| r.signer_name),
        problems,
        buckets,
    })
}

/// Names the buckets that differ, when the fingerprint stored beside the data is the anchored
/// one (its own root must be the anchored root, or it proves nothing).
fn differing_buckets(
    dir: &Path,
    now: &Fingerprint,
    anchored: &Digest,
    problems: &mut Vec<String>,
) -> Vec<BucketDiff> {
    let path = dir.join(FINGERPRINT_FILE);
    let stored = std::fs::read(&path)
        .map_err(|e| e.to_string())
        .and_then(|b| {
            Fingerprint::from_json(&b, &path.display().to_string()).map_err(|e| e.to_string())
        });
    match stored {
        Ok(stored) if stored.root.0 == anchored.0 => {
            let diff = now.diff(&stored);
            for d in diff.iter().take(16) {
                problems.push(format!(
                    "bucket {:02x} differs ({} rows anchored, {} now)",
                    d.bucket, d.expected_rows, d.actual_rows
                ));
            }
            if diff.len() > 16 {
                problems.push(format!("… and {} more buckets", diff.len() - 16));
            }
            diff
        }
        Ok(_) => {
            problems.push(format!(
                "{FINGERPRINT_FILE} is not the anchored fingerprint; buckets cannot be named"
            ));
            Vec::new()
        }
        Err(e) => {
            problems.push(format!("{FINGERPRINT_FILE}: {e}; buckets cannot be named"));
            Vec::new()
        }
    }
}
