//! `emrflow fingerprint PATH`: the canonical fingerprint of any Parquet dataset (every
//! `*.parquet` under PATH, local or an object-store URL), computed by the `emr_fingerprint`
//! aggregate on all cores. It reads no ledger; `emrflow verify` compares with an anchor.

use clap::Args;
use serde::Serialize;

use super::args::EngineArgs;
use super::{ExitStatus, print_json, print_lines, progress};

#[derive(Debug, Args)]
pub(crate) struct FingerprintArgs {
    /// A dataset directory, a Parquet file, or an object-store URL
    path: String,
    #[command(flatten)]
    engine: EngineArgs,
    /// Write the full fingerprint (schema, 256 buckets) to this file
    #[arg(long, value_name = "FILE")]
    out: Option<std::path::PathBuf>,
    /// Print a JSON summary on stdout
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Summary {
    path: String,
    root: String,
    schema_hash: String,
    rows: u64,
    columns: usize,
    seconds: f64,
    rows_per_second: f64,
}

pub(crate) async fn run(args: FingerprintArgs) -> anyhow::Result<ExitStatus> {
    #[allow(clippy::disallowed_methods)] // the command reports its own wall-clock time
    let started = std::time::Instant::now();
    let bar = progress(&format!("fingerprinting {}", args.path));
    let fp = provenance::fingerprint(&args.engine.engine(), &args.path).await;
    bar.finish_and_clear();
    let fp = fp?;
    let seconds = started.elapsed().as_secs_f64();
    if let Some(out) = &args.out {
        std::fs::write(out, fp.to_json()?)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", out.display()))?;
    }
    let summary = Summary {
        path: args.path.clone(),
        root: fp.root.to_string(),
        schema_hash: fp.schema_hash.to_string(),
        rows: fp.row_count,
        columns: fp.schema.len(),
        seconds,
        rows_per_second: fp.row_count as f64 / seconds.max(1e-9),
    };
    if args.json {
        print_json(&summary)?;
    } else {
        print_lines(&[
            format!("{}  {}", summary.root, summary.path),
            format!(
                "  {} rows, {} columns, schema {}, {:.3} s ({:.0} rows/s)",
                summary.rows,
                summary.columns,
                summary.schema_hash,
                seconds,
                summary.rows_per_second
            ),
        ]);
    }
    Ok(ExitStatus::Success)
}
