//! `emrflow run`: flags → a job and its options → `provenance::publish_dataset` → a summary.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::Args;
use indicatif::ProgressBar;
use pipeline::{Job, Progress, RunOptions};
use provenance::Published;

use super::args::{EngineArgs, LedgerArgs, with_ledger};
use super::{ExitStatus, print_json, print_lines, progress};

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// The job file (TOML)
    job: PathBuf,
    /// Read an input from another location: NAME=PATH_OR_URL (repeatable)
    #[arg(long = "input", value_name = "NAME=LOCATION", value_parser = parse_pair)]
    inputs: Vec<(String, String)>,
    /// Publish the dataset here instead of the job's output.path
    #[arg(long)]
    out: Option<String>,
    /// Replace the output if it already exists
    #[arg(long)]
    overwrite: bool,
    /// Read the pseudonymization key from this file instead of the job's key source
    #[arg(long, env = "EMRFLOW_KEY_FILE")]
    key_file: Option<String>,
    /// Hold up to this many MiB of surviving rows in memory so the inputs are read once
    /// (default: a quarter of the available memory; 0 reads them twice; a cluster run always
    /// reads them twice)
    #[arg(long, env = "EMRFLOW_CACHE_MIB", value_name = "MIB")]
    cache_mib: Option<u64>,
    #[command(flatten)]
    engine: EngineArgs,
    /// Print a JSON summary on stdout
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    ledger: LedgerArgs,
}

pub(crate) fn parse_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() && !v.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected NAME=LOCATION, got {s:?}")),
    }
}

/// Draws pipeline progress on a spinner.
pub(crate) struct BarProgress(pub(crate) ProgressBar);

impl Progress for BarProgress {
    fn stage(&self, name: &str) {
        self.0.set_message(name.to_string());
    }
    fn rows(&self, n: u64) {
        self.0.inc(n);
    }
}

pub(crate) async fn run(args: RunArgs) -> anyhow::Result<ExitStatus> {
    let job = Job::from_file(&args.job)?;
    let options = RunOptions {
        input_overrides: args.inputs.into_iter().collect::<BTreeMap<_, _>>(),
        output_override: args.out,
        overwrite: args.overwrite,
        key_file_override: args.key_file,
        cache_limit: match args.cache_mib {
            None => Some(pipeline::default_cache_limit()),
            Some(0) => None,
            Some(mib) => Some(mib << 20),
        },
        ..RunOptions::default()
    };
    let engine = args.engine.engine();
    let bar = BarProgress(progress(&format!("job {}", job.name)));
    let published = with_ledger(&args.ledger, async |p| {
        provenance::publish_dataset(&job, &options, &engine, p, &bar).await
    })
    .await;
    bar.0.finish_and_clear();
    report(&published?, args.json)?;
    Ok(ExitStatus::Success)
}

pub(crate) fn report(published: &Published, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(published);
    }
    let summary = &published.summary;
    let mut lines = vec![format!(
        "published {} rows to {} in {:.2}s",
        summary.rows_out, summary.output, summary.seconds
    )];
    for (input, n) in &summary.rows_in {
        lines.push(format!("  read {n} rows from {input}"));
    }
    for (reason, n) in &summary.rows_dropped {
        lines.push(format!("  dropped {n} rows ({reason})"));
    }
    lines.push(format!(
        "  dataset root {} anchored at height {} (receipt {})",
        published.root, published.ledger_height, published.anchor
    ));
    print_lines(&lines);
    Ok(())
}
