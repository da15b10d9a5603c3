//! `emrflow lineage ROOT`: the lineage DAG of an anchored dataset or model, from the ledger, as
//! text, Graphviz DOT, or OpenLineage run events (one JSON object per line, parents first) whose
//! output dataset carries an `emrflow_provenance` facet with the Merkle root, row count and
//! ledger position, so lineage tools such as Marquez can read it.

use std::collections::BTreeMap;

use clap::{Args, ValueEnum};
use ledger::contracts::{AnchorKind, AnchorRecord, Lineage};
use ledger::crypto::Digest;
use serde_json::json;

use super::provenance::{LedgerArgs, Provenance};
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
    let root = Digest::from_hex(&args.root)
        .map_err(|e| anyhow::anyhow!("ROOT {:?} is not a 64-digit hex root: {e}", args.root))?;
    let provenance = Provenance::open(&args.ledger).await?;
    let lineage = match provenance.reader().await {
        Ok(reader) => reader.lineage(root, args.depth).await.map_err(Into::into),
        Err(e) => Err(e),
    };
    provenance.close().await?;
    let lineage = lineage?;
    if lineage.nodes.is_empty() {
        anyhow::bail!("root {root} is not anchored on this ledger");
    }
    let format = if args.json {
        Format::Openlineage
    } else {
        args.format
    };
    let lines = match format {
        Format::Text => text(&lineage),
        Format::Dot => dot(&lineage),
        Format::Openlineage => openlineage(&lineage)?,
    };
    print_lines(&lines);
    Ok(ExitStatus::Success)
}

fn kind(a: &AnchorRecord) -> &'static str {
    match a.spec.kind {
        AnchorKind::Dataset => "dataset",
        AnchorKind::Model => "model",
    }
}

fn time(ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(ms as i64).map_or_else(
        || ms.to_string(),
        |t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
    )
}

fn units(a: &AnchorRecord) -> &'static str {
    match a.spec.kind {
        AnchorKind::Dataset => "rows",
        AnchorKind::Model => "nodes",
    }
}

/// An indented tree from the root down to its sources; a node reached twice is shown once.
fn text(l: &Lineage) -> Vec<String> {
    let by_root: BTreeMap<Digest, &AnchorRecord> =
        l.nodes.iter().map(|a| (a.spec.root, a)).collect();
    let mut parents: BTreeMap<Digest, Vec<Digest>> = BTreeMap::new();
    for (child, parent) in &l.edges {
        parents.entry(*child).or_default().push(*parent);
    }
    let mut out = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    let mut stack = vec![(l.root, 0usize)];
    while let Some((r, depth)) = stack.pop() {
        let pad = "  ".repeat(depth);
        let arrow = if depth == 0 { "" } else { "<- " };
        match by_root.get(&r) {
            Some(a) => {
                let again = !seen.insert(r);
                out.push(format!(
                    "{pad}{arrow}{} {} {} ({} {}) by {} at {} [height {}, tx {}]{}",
                    kind(a),
                    a.spec.stage,
                    r,
                    a.spec.row_count,
                    units(a),
                    a.signer_name,
                    time(a.time.0),
                    a.position.seq.0,
                    a.position.index,
                    if again { " (shown above)" } else { "" }
                ));
                if !again {
                    out.push(format!("{pad}   at {}", a.spec.location));
                    for p in parents.get(&r).into_iter().flatten().rev() {
                        stack.push((*p, depth + 1));
                    }
                }
            }
            None => out.push(format!("{pad}{arrow}{r} (not anchored)")),
        }
    }
    // Parents the ledger lacks were printed "(not anchored)" where the walk reached them.
    out
}

fn dot(l: &Lineage) -> Vec<String> {
    let mut out = vec![
        "digraph lineage {".to_string(),
        "  rankdir=BT;".to_string(),
        "  node [shape=box, fontname=\"Helvetica\"];".to_string(),
    ];
    for a in &l.nodes {
        let r = a.spec.root.to_hex();
        let shape = match a.spec.kind {
            AnchorKind::Dataset => "box",
            AnchorKind::Model => "ellipse",
        };
        out.push(format!(
            "  \"{r}\" [shape={shape}, label=\"{} ({})\\n{} {}\\n{}…\\nheight {} by {}\"];",
            kind(a),
            a.spec.stage,
            a.spec.row_count,
            units(a),
            &r[..16],
            a.position.seq.0,
            a.signer_name.replace('"', "'")
        ));
    }
    for (child, parent) in &l.edges {
        out.push(format!("  \"{child}\" -> \"{parent}\";"));
    }
    out.push("}".to_string());
    out
}

const PRODUCER: &str = concat!("https://emrflow.dev/emrflow/", env!("CARGO_PKG_VERSION"));
const RUN_EVENT_SCHEMA: &str = "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent";
const FACET_SCHEMA: &str = "https://emrflow.dev/spec/facets/1-0-0/EmrflowProvenanceFacet.json";

/// The OpenLineage dataset of an anchor, with the provenance facet.
fn dataset(a: &AnchorRecord) -> serde_json::Value {
    let (namespace, name) = split_location(&a.spec.location);
    json!({
        "namespace": namespace,
        "name": name,
        "facets": {
            "emrflow_provenance": {
                "_producer": PRODUCER,
                "_schemaURL": FACET_SCHEMA,
                "kind": kind(a),
                "merkleRoot": a.spec.root.to_hex(),
                "rowCount": a.spec.row_count,
                "schemaHash": a.spec.schema_hash.to_hex(),
                "paramsHash": a.spec.params_hash.to_hex(),
                "codeVersion": a.spec.code_version,
                "signer": a.signer_name,
                "ledgerPosition": {"height": a.position.seq.0, "index": a.position.index},
                "transaction": a.tx.to_hex(),
            }
        }
    })
}

/// `scheme://authority` as the namespace and the path as the name, as OpenLineage names
/// datasets.
fn split_location(location: &str) -> (String, String) {
    match location.split_once("://") {
        Some((scheme, rest)) => match rest.find('/') {
            Some(i) => (format!("{scheme}://{}", &rest[..i]), rest[i..].to_string()),
            None => (format!("{scheme}://{rest}"), "/".to_string()),
        },
        None => ("file://".to_string(), location.to_string()),
    }
}

/// The run id of an anchor: a UUID made from its transaction id, so the same anchor always
/// exports the same run.
fn run_id(tx: &Digest) -> String {
    let mut b = [0u8; 16];
    b.copy_from_slice(&tx.0[..16]);
    b[6] = (b[6] & 0x0f) | 0x80; // version 8 (custom)
    b[8] = (b[8] & 0x3f) | 0x80; // RFC 4122 variant
    uuid::Uuid::from_bytes(b).to_string()
}

fn openlineage(l: &Lineage) -> anyhow::Result<Vec<String>> {
    let by_root: BTreeMap<Digest, &AnchorRecord> =
        l.nodes.iter().map(|a| (a.spec.root, a)).collect();
    let mut nodes: Vec<&AnchorRecord> = l.nodes.iter().collect();
    nodes.sort_by_key(|a| a.position);
    let mut out = Vec::new();
    for a in nodes {
        let inputs: Vec<serde_json::Value> = a
            .spec
            .parents
            .iter()
            .filter_map(|p| by_root.get(p).map(|p| dataset(p)))
            .collect();
        let event = json!({
            "eventType": "COMPLETE",
            "eventTime": time(a.time.0),
            "producer": PRODUCER,
            "schemaURL": RUN_EVENT_SCHEMA,
            "run": {"runId": run_id(&a.tx)},
            "job": {"namespace": "emrflow", "name": a.spec.stage},
            "inputs": inputs,
            "outputs": [dataset(a)],
        });
        out.push(serde_json::to_string(&event)?);
    }
    Ok(out)
}
