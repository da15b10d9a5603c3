//! The lineage of an anchored dataset or model, from the ledger: the DAG of its ancestors, as an
//! indented tree, Graphviz DOT, or OpenLineage run events (one JSON object per line, parents
//! first) whose output dataset carries an `emrflow_provenance` facet with the Merkle root, row
//! count and ledger position, so lineage tools such as Marquez can read it.

use std::collections::BTreeMap;

use ledger::contracts::{AnchorKind, AnchorRecord, Lineage};
use merkle::Digest;
use serde_json::json;

use crate::connection::Provenance;
use crate::error::{Error, Result};

/// The lineage of `root` up to `depth` parent levels; an error when the root is not anchored.
pub async fn lineage(provenance: &Provenance, root: Digest, depth: u32) -> Result<Lineage> {
    let lineage = provenance.reader()?.lineage(root, depth).await?;
    if lineage.nodes.is_empty() {
        return Err(Error::invalid(format!(
            "root {root} is not anchored on this ledger"
        )));
    }
    Ok(lineage)
}

/// The anchors of each root, in commit order.
fn derivations(l: &Lineage) -> BTreeMap<Digest, Vec<&AnchorRecord>> {
    let mut by_root: BTreeMap<Digest, Vec<&AnchorRecord>> = BTreeMap::new();
    for a in &l.nodes {
        by_root.entry(a.spec.root).or_default().push(a);
    }
    by_root
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

/// An indented tree from the root down to its sources; a node reached twice is shown once,
/// and a root published several times shows each publication.
pub fn text(l: &Lineage) -> Vec<String> {
    let by_root = derivations(l);
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
        match by_root.get(&r).and_then(|d| d.split_first()) {
            Some((a, more)) => {
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
                    for d in more {
                        out.push(format!(
                            "{pad}   also published at {} by {} at {} [height {}, tx {}] \
                             (parameters {}…)",
                            d.spec.location,
                            d.signer_name,
                            time(d.time.0),
                            d.position.seq.0,
                            d.position.index,
                            &d.spec.params_hash.to_hex()[..16]
                        ));
                    }
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

/// Graphviz DOT: one node per anchored root (datasets boxes, models ellipses), edges from child
/// to parent.
pub fn dot(l: &Lineage) -> Vec<String> {
    let mut out = vec![
        "digraph lineage {".to_string(),
        "  rankdir=BT;".to_string(),
        "  node [shape=box, fontname=\"Helvetica\"];".to_string(),
    ];
    let by_root = derivations(l);
    let mut shown = std::collections::BTreeSet::new();
    for a in l.nodes.iter().filter(|a| shown.insert(a.spec.root)) {
        let times = by_root.get(&a.spec.root).map_or(1, Vec::len);
        let r = a.spec.root.to_hex();
        let shape = match a.spec.kind {
            AnchorKind::Dataset => "box",
            AnchorKind::Model => "ellipse",
        };
        out.push(format!(
            "  \"{r}\" [shape={shape}, label=\"{} ({})\\n{} {}\\n{}…\\nheight {} by {}{}\"];",
            kind(a),
            a.spec.stage,
            a.spec.row_count,
            units(a),
            &r[..16],
            a.position.seq.0,
            a.signer_name.replace('"', "'"),
            if times > 1 {
                format!("\\npublished {times} times")
            } else {
                String::new()
            }
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

/// OpenLineage run events, one JSON object per line, parents first: one run per anchor (a root
/// published twice is two runs with the same output dataset name space).
pub fn openlineage(l: &Lineage) -> Result<Vec<String>> {
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
        out.push(
            serde_json::to_string(&event)
                .map_err(|e| Error::invalid(format!("cannot encode a run event: {e}")))?,
        );
    }
    Ok(out)
}
