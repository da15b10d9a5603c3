//! `emrflow generate`: synthetic EMRs in the published shape.

use std::path::PathBuf;
use std::time::Instant;

use clap::{Args, ValueEnum};
use pipeline::generate::{DEFAULT_VISITS, GenerateConfig, OutputFormat, generate};
use serde::Serialize;

use super::{ExitStatus, print_json, print_lines, progress};

#[derive(Debug, Args)]
pub(crate) struct GenerateArgs {
    /// Number of visits to write (about three per patient)
    #[arg(long, default_value_t = DEFAULT_VISITS)]
    visits: u64,
    /// Seed; the same seed writes byte-identical files
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Directory to write patients and visits into (created if missing)
    #[arg(long)]
    out: PathBuf,
    /// File format: CSV tables, Parquet tables, or a FHIR R4 Bulk Data export (one NDJSON file
    /// per resource type and manifest.json)
    #[arg(long, value_enum, default_value_t = Format::Csv)]
    format: Format,
    /// Gzip the CSV or NDJSON files (.gz), as exports are often delivered
    #[arg(long)]
    gzip: bool,
    /// Print a JSON summary on stdout
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Csv,
    Parquet,
    Fhir,
}

#[derive(Serialize)]
struct Summary {
    #[serde(flatten)]
    inner: pipeline::generate::GenerateSummary,
    seconds: f64,
}

pub(crate) async fn run(args: GenerateArgs) -> anyhow::Result<ExitStatus> {
    let config = GenerateConfig {
        visits: args.visits,
        seed: args.seed,
        format: match args.format {
            Format::Csv => OutputFormat::Csv,
            Format::Parquet => OutputFormat::Parquet,
            Format::Fhir => OutputFormat::Fhir,
        },
        gzip: args.gzip,
    };
    let bar = progress(&format!("generating {} visits", args.visits));
    #[allow(clippy::disallowed_methods)] // the command reports its own wall-clock time
    let started = Instant::now();
    let out = args.out.clone();
    let summary = tokio::task::spawn_blocking(move || generate(&config, &out)).await??;
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    if args.json {
        print_json(&Summary {
            inner: summary,
            seconds,
        })?;
    } else {
        let mut lines = vec![format!(
            "wrote {} visits of {} patients ({:.1}% stroke) in {seconds:.2}s",
            summary.visits,
            summary.patients,
            100.0 * summary.positive as f64 / summary.visits.max(1) as f64
        )];
        lines.extend(summary.files.iter().map(|f| format!("  {f}")));
        print_lines(&lines);
    }
    Ok(ExitStatus::Success)
}
