//! `emrflow bench`: baselines that benchmark scripts time next to emrflow's own commands.

use std::time::Instant;

use clap::Subcommand;
use serde::Serialize;

use super::{ExitStatus, print_json, print_lines};

#[derive(Debug, Subcommand)]
pub(crate) enum BenchCommand {
    /// Plain DataFusion CSV-to-Parquet copy of the given files (the preprocessing baseline)
    CsvToParquet {
        /// Output directory (one subdirectory per input)
        #[arg(long)]
        out: String,
        /// Partitions to run with (default: all cores)
        #[arg(long)]
        partitions: Option<usize>,
        /// Print a JSON summary on stdout
        #[arg(long)]
        json: bool,
        /// CSV files to copy
        #[arg(required = true)]
        inputs: Vec<String>,
    },
}

#[derive(Serialize)]
struct CopySummary {
    rows: u64,
    seconds: f64,
}

pub(crate) async fn run(cmd: BenchCommand) -> anyhow::Result<ExitStatus> {
    match cmd {
        BenchCommand::CsvToParquet {
            out,
            partitions,
            json,
            inputs,
        } => {
            let ctx = engine::embedded_context(partitions)?;
            #[allow(clippy::disallowed_methods)] // the baseline reports its own wall-clock time
            let started = Instant::now();
            let rows = pipeline::baseline::csv_to_parquet(&ctx, &inputs, &out).await?;
            let summary = CopySummary {
                rows,
                seconds: started.elapsed().as_secs_f64(),
            };
            if json {
                print_json(&summary)?;
            } else {
                print_lines(&[format!(
                    "copied {} rows in {:.2}s",
                    summary.rows, summary.seconds
                )]);
            }
            Ok(ExitStatus::Success)
        }
    }
}
