//! `emrflow lineage ROOT`: flags → `provenance::lineage` → text, Graphviz DOT or OpenLineage
//! run events.

use clap::{Args, ValueEnum};
use merkle::Digest;

use super::args::{LedgerArgs, with_ledger};
use super::{ExitStatus, print_lines};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Text,
    Dot,
    Openlineage,
}

#[derive(Debug, Args)]
pub(crate) struct LineageArgs {
    /// The root of an anchored dataset or model (hex)
    root: String,
    /// Output format
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
    /// Parent levels to follow
    #[arg(long, default_value_t = 20)]
    depth: u32,
    /// Same as --format openlineage (JSON, one run event per line)
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    ledger: LedgerArgs,
}

pub(crate) async fn run(args: LineageArgs) -> anyhow::Result<ExitStatus> {
    let root = Digest::from_hex(&args.root).map_err(|e| anyhow::anyhow!("ROOT: {e}"))?;
    let lineage = with_ledger(&args.ledger, async |p| {
        provenance::lineage::lineage(p, root, args.depth).await
    })
    .await?;
    let format = if args.json {
        Format::Openlineage
    } else {
        args.format
    };
    let lines = match format {
        Format::Text => provenance::lineage::text(&lineage),
        Format::Dot => provenance::lineage::dot(&lineage),
        Format::Openlineage => provenance::lineage::openlineage(&lineage)?,
    };
    print_lines(&lines);
    Ok(ExitStatus::Success)
}
