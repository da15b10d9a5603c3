//! `emrflow run`: a preprocessing job on the embedded engine.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use indicatif::ProgressBar;
use pipeline::{Job, Progress, RunOptions, RunSummary};

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
    /// Partitions to run with (default: all cores)
    #[arg(long)]
    partitions: Option<usize>,
    /// Print a JSON summary on stdout
    #[arg(long)]
    json: bool,
}

fn parse_pair(s: &str) -> Result<(String, String), String> {
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
    };
    let summary = run_embedded(&job, &options, args.partitions).await?;
    report(&summary, args.json)?;
    Ok(ExitStatus::Success)
}

/// Runs a job on the embedded engine with a progress spinner.
pub(crate) async fn run_embedded(
    job: &Job,
    options: &RunOptions,
    partitions: Option<usize>,
) -> anyhow::Result<RunSummary> {
    let ctx = pipeline::embedded_context(partitions)?;
    let bar = Arc::new(BarProgress(progress(&format!("job {}", job.name))));
    let result = pipeline::run_job(job, options, &ctx, bar.as_ref()).await;
    bar.0.finish_and_clear();
    result.with_context(|| format!("job {} failed; nothing was published", job.name))
}

pub(crate) fn report(summary: &RunSummary, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(summary);
    }
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
    print_lines(&lines);
    Ok(())
}
