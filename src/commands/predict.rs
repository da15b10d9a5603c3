//! `emrflow predict`: flags → `provenance::predict` (an anchored model, checked and audited, on
//! raw rows) → one line or one JSON object per prediction. No prediction logic here.

use clap::Args;

use super::args::{LedgerArgs, with_ledger};
use super::{ExitStatus, print_json, print_lines, progress};

#[derive(Debug, Args)]
#[command(
    after_help = "The input holds raw rows: the model's features in the units and category \
names of the original data (before normalization and encoding). Each row gets the model's \
probability of class 1, its calibrated probability (the risk to show; the same when the model \
is not calibrated), and a prediction (0/1) at the operating threshold stored in the model by \
`emrflow train --threshold` (without one, class 1 above 0.5). A decision tree's line gives its \
decision path, e.g.\n  \
age > 67.5, atrial_fibrillation = 1, systolic_bp > 151 → risk 0.81\n\
for a forest or boosted trees, the three largest contributions, e.g.\n  \
age = 81 (+0.412), atrial_fibrillation = 1 (+0.093), systolic_bp = 162 (+0.051) → risk 0.34\n\
With --json every prediction also carries the threshold, the leaf (trees), and every feature's \
exact TreeSHAP contribution with the expected value they start from: the contributions add up \
to the model's output (a probability for trees and forests, log-odds for boosted trees) before \
calibration."
)]
pub(crate) struct PredictArgs {
    /// Model written by `emrflow train`: a directory (or its model.json), or a memory:// or
    /// s3:// URL
    #[arg(long, value_name = "MODEL_DIR|URL")]
    model: String,
    /// Raw rows to score: a CSV file with a header, or a Parquet file (by extension); a path or
    /// a URL
    #[arg(long, value_name = "FILE|URL")]
    input: String,
    /// A CSV cell text that means "missing" (repeatable), e.g. N/A
    #[arg(long = "null-value", value_name = "TEXT")]
    null_values: Vec<String>,
    /// Print JSON on stdout (one object with every prediction)
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    ledger: LedgerArgs,
}

pub(crate) async fn run(args: PredictArgs) -> anyhow::Result<ExitStatus> {
    let bar = progress(&format!("scoring {}", args.input));
    let scored = with_ledger(&args.ledger, async |p| {
        provenance::predict(&args.model, &args.input, &args.null_values, p).await
    })
    .await;
    bar.finish_and_clear();
    let scored = scored?;
    if args.json {
        print_json(&scored)?;
        return Ok(ExitStatus::Success);
    }
    let lines: Vec<String> = scored
        .predictions
        .iter()
        .map(|p| {
            let who = p.key.as_ref().map_or_else(
                || format!("row {}", p.row),
                |k| format!("row {} ({k})", p.row),
            );
            format!("{who}: predict {} — {}", p.prediction, p.explanation)
        })
        .collect();
    print_lines(&lines);
    Ok(ExitStatus::Success)
}
