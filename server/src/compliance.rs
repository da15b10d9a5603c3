//! What compliance officers ask: the lineage of a root as a graph, a dataset or model checked
//! against its anchor, record proofs made and checked, the audit trail filtered (as JSON or CSV),
//! and the break-glass report. Every ledger question is asked with the caller's own rights (the
//! contract decides), and every read of an anchored artifact is audited as the caller's.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use ledger::contracts::{Action, AnchorKind, Lineage, Outcome, Role};
use ledger::crypto::PublicKey;
use ledger::ids::Time;
use merkle::Digest;
use provenance::Accessor;
use provenance::audit::{AuditFilter, AuditRow};
use records::access::ReportEntry;
use serde_json::{Value, json};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::routes::{Params, audit_entries, json_body};
use crate::state::AppState;

/// The lineage depth when `depth` is not given, and the deepest allowed.
const DEFAULT_DEPTH: usize = 8;
const MAX_DEPTH: usize = 64;

/// The roles whose work reading anchored artifacts on the server's storage is.
const AUDITORS: &[Role] = &[Role::Compliance, Role::Admin];

/// `GET /api/lineage/{root}?depth=`: the ancestry of an anchored root as a graph. Nodes are
/// roots (with every anchor of each), edges run from a parent to what was derived from it.
#[utoipa::path(get, path = "/api/lineage/{root}", tag = "compliance",
    params(
        ("root" = String, Path, description = "An anchored dataset or model root (64 hex digits)"),
        ("depth" = Option<u32>, Query, description = "Parent levels to follow (default 8, at most 64)"),
    ),
    responses(
        (status = 200, description = "The lineage graph: nodes, edges, missing parents"),
        (status = 400, description = "A malformed root or depth"),
        (status = 404, description = "The root is not anchored on this ledger"),
    ))]
pub async fn lineage(
    State(state): State<Arc<AppState>>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(root): Path<String>,
    Query(raw): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let params = Params::checked(raw, &["depth"])?;
    let root = digest(&root, "root")?;
    let depth = params.count("depth", DEFAULT_DEPTH, MAX_DEPTH)?;
    let graph = caller.reader(&state).lineage(root, depth as u32).await?;
    if graph.nodes.is_empty() {
        return Err(ApiError::NotFound(format!(
            "root {root} is not anchored on this ledger"
        )));
    }
    Ok(axum::Json(lineage_graph(&graph, depth)).into_response())
}

/// The lineage as nodes (one per root, its anchors in commit order) and parent → child edges.
fn lineage_graph(l: &Lineage, depth: usize) -> Value {
    let mut nodes: BTreeMap<Digest, Value> = BTreeMap::new();
    let mut order = Vec::new();
    for a in &l.nodes {
        let anchor = json!({
            "tx": a.tx.to_hex(),
            "height": a.position.seq.0,
            "index": a.position.index,
            "time": provenance::audit::time(a.time.0),
            "signer": provenance::audit::escape(&a.signer_name),
            "signer_key": a.signer.to_hex(),
            "location": provenance::audit::escape(&a.spec.location),
            "stage": provenance::audit::escape(&a.spec.stage),
            "params_hash": a.spec.params_hash.to_hex(),
            "code_version": provenance::audit::escape(&a.spec.code_version),
        });
        let node = nodes.entry(a.spec.root).or_insert_with(|| {
            order.push(a.spec.root);
            let (kind, units) = match a.spec.kind {
                AnchorKind::Dataset => ("dataset", "rows"),
                AnchorKind::Model => ("model", "nodes"),
            };
            json!({
                "id": a.spec.root.to_hex(),
                "kind": kind,
                "source": a.spec.parents.is_empty(),
                "count": a.spec.row_count,
                "units": units,
                "schema_hash": a.spec.schema_hash.to_hex(),
                "anchors": [],
            })
        });
        if let Some(list) = node["anchors"].as_array_mut() {
            list.push(anchor);
        }
    }
    let edges: Vec<Value> = l
        .edges
        .iter()
        .map(|(child, parent)| json!({"from": parent.to_hex(), "to": child.to_hex()}))
        .collect();
    json!({
        "root": l.root.to_hex(),
        "depth": depth,
        "nodes": order.iter().filter_map(|r| nodes.remove(r)).collect::<Vec<_>>(),
        "edges": edges,
        "missing": l.missing.iter().map(Digest::to_hex).collect::<Vec<_>>(),
    })
}

/// `POST /api/verify`: checks the dataset or model at `location` against its anchor (the rows'
/// or the model's root recomputed from the bytes found), and records the check as the caller's
/// read of the root, whatever its outcome.
#[utoipa::path(post, path = "/api/verify", tag = "compliance",
    request_body(content = String, content_type = "application/json",
        description = r#"{"location": "a dataset directory or model (path or object-store URL)"}"#),
    responses(
        (status = 200, description = "The verdict: whether the artifact matches its anchor, and what differs"),
        (status = 400, description = "No such location, or not an anchored dataset or model"),
        (status = 403, description = "Verifying is for the compliance and admin roles"),
    ))]
pub async fn verify(
    State(state): State<Arc<AppState>>,
    axum::Extension(caller): axum::Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    caller.require_role(AUDITORS, "verifying an artifact on the server's storage")?;
    let request = json_body(&headers, &body)?;
    let location = text_field(&request, "location")?;
    let verdict = provenance::verify(
        &state.engine,
        location,
        &state.provenance,
        accessor(&state, &caller),
    )
    .await?;
    let value = serde_json::to_value(&verdict)
        .map_err(|e| ApiError::Internal(format!("cannot encode the verdict: {e}")))?;
    Ok(axum::Json(value).into_response())
}

/// `POST /api/prove`: an inclusion proof of a record (one row as the dataset stores it) in the
/// dataset at `dataset`, or the non-membership proof of a record that is not there; the query
/// is audited as the caller's when the dataset is anchored.
#[utoipa::path(post, path = "/api/prove", tag = "compliance",
    request_body(content = String, content_type = "application/json",
        description = r#"{"dataset": "a dataset directory or URL", "record": {"column": "value", …}}"#),
    responses(
        (status = 200, description = "The proof, and whether its root is the dataset's anchored root"),
        (status = 400, description = "No such dataset, or a record that is not one of its rows' shape"),
        (status = 403, description = "Proving is for the compliance and admin roles"),
    ))]
pub async fn prove(
    State(state): State<Arc<AppState>>,
    axum::Extension(caller): axum::Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    caller.require_role(
        AUDITORS,
        "proving a record of a dataset on the server's storage",
    )?;
    let request = json_body(&headers, &body)?;
    let dataset = text_field(&request, "dataset")?;
    // The record is taken from the body's own text: a number must hash exactly as written.
    let record = serde_json::from_slice::<RecordBody>(&body)
        .ok()
        .and_then(|b| serde_json::from_str::<pipeline::fingerprint::Record>(b.record.get()).ok())
        .ok_or_else(|| {
            ApiError::BadRequest(
                "record must be a JSON object of column → value (text, number or null)".into(),
            )
        })?;
    let proved = provenance::proof::prove(
        &state.engine,
        dataset,
        &record,
        &state.provenance,
        accessor(&state, &caller),
    )
    .await?;
    // The proof goes out as its own text: its record's numbers must stay as written.
    let proof = proved
        .proof
        .to_json()
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| serde_json::value::RawValue::from_string(text).ok())
        .ok_or_else(|| ApiError::Internal("cannot encode the proof".into()))?;
    #[derive(serde::Serialize)]
    struct Answer<'a> {
        anchored: Option<bool>,
        proof: &'a serde_json::value::RawValue,
    }
    let body = serde_json::to_vec(&Answer {
        anchored: proved.anchored,
        proof: &proof,
    })
    .map_err(|e| ApiError::Internal(format!("cannot encode the proof: {e}")))?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// The record of a prove request, as written.
#[derive(serde::Deserialize)]
struct RecordBody {
    record: Box<serde_json::value::RawValue>,
}

/// The proof of a check request, as written.
#[derive(serde::Deserialize)]
struct ProofBody {
    proof: Box<serde_json::value::RawValue>,
}

/// `POST /api/proofs/check`: checks a proof against a root with nothing else (no store, no
/// ledger): what anyone holding a proof and an anchored root can do offline.
#[utoipa::path(post, path = "/api/proofs/check", tag = "compliance",
    request_body(content = String, content_type = "application/json",
        description = r#"{"root": "64 hex digits", "proof": {…a proof from /api/prove…}}"#),
    responses(
        (status = 200, description = "Whether the proof is valid and what it proves"),
        (status = 400, description = "A malformed root or proof"),
    ))]
pub async fn check_proof(headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    let request = json_body(&headers, &body)?;
    let root = digest(text_field(&request, "root")?, "root")?;
    // The proof is checked as written: its record's numbers must hash as they were sent.
    let proof = serde_json::from_slice::<ProofBody>(&body)
        .map_err(|_| ApiError::BadRequest("proof must be a proof object".into()))?;
    let checked = provenance::proof::check_proof(proof.proof.get().as_bytes(), "proof", &root)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let value = serde_json::to_value(&checked)
        .map_err(|e| ApiError::Internal(format!("cannot encode the check: {e}")))?;
    Ok(axum::Json(value).into_response())
}

/// `GET /api/audit?subject=|actor=&from=&to=&format=`: the audit trail of an anchored dataset or
/// model, or of an identity (a name or a public key), in commit order.
#[utoipa::path(get, path = "/api/audit", tag = "compliance",
    params(
        ("subject" = Option<String>, Query, description = "An anchored root (64 hex digits)"),
        ("actor" = Option<String>, Query, description = "An identity: its registered name or public key"),
        ("from" = Option<String>, Query, description = "Earliest time (RFC 3339, or a day YYYY-MM-DD)"),
        ("to" = Option<String>, Query, description = "Latest time (RFC 3339, or a day YYYY-MM-DD, inclusive)"),
        ("format" = Option<String>, Query, description = "json (default) or csv"),
    ),
    responses(
        (status = 200, description = "The events, as JSON or CSV"),
        (status = 400, description = "Neither or both of subject and actor, or a malformed parameter"),
        (status = 403, description = "The contract refused the caller this trail"),
    ))]
pub async fn audit(
    State(state): State<Arc<AppState>>,
    axum::Extension(caller): axum::Extension<Caller>,
    Query(raw): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let params = Params::checked(raw, &["subject", "actor", "from", "to", "format"])?;
    let filter = match (params.get("subject"), params.get("actor")) {
        (Some(s), None) => AuditFilter::Subject(digest(s, "subject")?),
        (None, Some(a)) => AuditFilter::Identity(a.to_string()),
        _ => {
            return Err(ApiError::BadRequest(
                "give one of subject and actor: the whole trail is not one search".into(),
            ));
        }
    };
    let (from, to) = time_range(&params)?;
    let csv = format(&params)?;
    let rows: Vec<AuditRow> =
        provenance::audit::audit_with(&caller.reader(&state), &filter, (from, to)).await?;
    if csv {
        let mut out = String::from(
            "time,height,index,actor,actor_name,role,action,subject,purpose,outcome,tx\n",
        );
        for r in &rows {
            let cells = [
                r.time.clone(),
                r.height.to_string(),
                r.index.to_string(),
                r.actor.clone(),
                r.actor_name.clone(),
                r.role.clone(),
                r.action.clone(),
                r.subject.clone().unwrap_or_default(),
                r.purpose.clone().unwrap_or_default(),
                r.outcome.clone(),
                r.tx.clone(),
            ];
            push_csv(&mut out, &cells);
        }
        return Ok(csv_response(out, "audit.csv"));
    }
    Ok(axum::Json(json!({"events": rows})).into_response())
}

/// `GET /api/audit/records?patient=&actor=&purpose=&break_glass=&from=&to=&format=`: the
/// record-access trail filtered as a compliance officer reviews it, each event with its ledger
/// receipt (the proof that it is in a certified block).
#[utoipa::path(get, path = "/api/audit/records", tag = "compliance",
    params(
        ("patient" = Option<String>, Query, description = "A patient id"),
        ("actor" = Option<String>, Query, description = "An identity's public key (64 hex digits)"),
        ("purpose" = Option<String>, Query, description = "treatment, research, operations or audit"),
        ("break_glass" = Option<bool>, Query, description = "Only break-glass accesses"),
        ("from" = Option<String>, Query, description = "Earliest time (RFC 3339, or a day YYYY-MM-DD)"),
        ("to" = Option<String>, Query, description = "Latest time (RFC 3339, or a day YYYY-MM-DD, inclusive)"),
        ("format" = Option<String>, Query, description = "json (default, with receipts) or csv"),
    ),
    responses(
        (status = 200, description = "The events, oldest first"),
        (status = 400, description = "A malformed parameter"),
        (status = 403, description = "The record trail is for the compliance and admin roles"),
    ))]
pub async fn record_audit(
    State(state): State<Arc<AppState>>,
    axum::Extension(caller): axum::Extension<Caller>,
    Query(raw): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let params = Params::checked(
        raw,
        &[
            "patient",
            "actor",
            "purpose",
            "break_glass",
            "from",
            "to",
            "format",
        ],
    )?;
    let patient = params
        .get("patient")
        .map(|_| params.patient())
        .transpose()?;
    let actor = params.get("actor").map(key).transpose()?;
    let purpose: Option<ledger::contracts::Purpose> = params
        .get("purpose")
        .map(|p| {
            p.parse().map_err(|_| {
                ApiError::BadRequest(
                    "purpose must be one of treatment, research, operations, audit".into(),
                )
            })
        })
        .transpose()?;
    let break_glass = match params.get("break_glass") {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => {
            return Err(ApiError::BadRequest(
                "break_glass must be true or false".into(),
            ));
        }
    };
    let (from, to) = time_range(&params)?;
    let csv = format(&params)?;
    let entries = audit_entries(
        &state,
        &caller,
        ledger::contracts::Query::RecordAudit {
            patient: patient.as_deref().map(|p| state.store.pseudonym(p)),
            actor,
            break_glass,
            from,
            to,
        },
    )
    .await?;
    let entries: Vec<ReportEntry> = entries
        .into_iter()
        .filter(|e| {
            purpose.is_none_or(|p| e.event.record.as_ref().and_then(|r| r.purpose) == Some(p))
        })
        .collect();
    if csv {
        let mut out = String::from(
            "time,height,index,actor,actor_name,role,via,action,patient,purpose,break_glass,asked,granted,outcome,tx,receipt_verified\n",
        );
        for e in &entries {
            push_csv(&mut out, &record_cells(e));
        }
        return Ok(csv_response(out, "record-audit.csv"));
    }
    Ok(axum::Json(json!({"events": entries})).into_response())
}

/// One record-access event as CSV cells, in the header's order.
fn record_cells(e: &ReportEntry) -> Vec<String> {
    let ev = &e.event;
    let rec = ev.record.as_ref();
    let (outcome, granted) = match &ev.outcome {
        Outcome::Accepted => ("accepted".to_string(), String::new()),
        Outcome::Granted(d) => ("granted".to_string(), d.everywhere.to_string()),
        Outcome::Denied { reason } => (format!("denied: {reason}"), String::new()),
    };
    vec![
        provenance::audit::time(ev.time.0),
        ev.position.seq.0.to_string(),
        ev.position.index.to_string(),
        ev.actor.to_hex(),
        e.actor_name.clone().unwrap_or_default(),
        e.actor_role.clone().unwrap_or_default(),
        ev.via.map(|v| v.to_hex()).unwrap_or_default(),
        format!("{:?}", ev.action),
        rec.map(|r| r.patient.to_hex()).unwrap_or_default(),
        rec.and_then(|r| r.purpose)
            .map(|p| p.to_string())
            .unwrap_or_default(),
        rec.is_some_and(|r| r.break_glass).to_string(),
        rec.map(|r| r.asked.to_string()).unwrap_or_default(),
        granted,
        provenance::audit::escape(&outcome),
        ev.tx.to_hex(),
        e.verified.to_string(),
    ]
}

/// `GET /api/reports/break-glass?from=&to=`: every break-glass access opened, with its reason,
/// and the reads the clinician made under it, for the review every emergency access gets.
#[utoipa::path(get, path = "/api/reports/break-glass", tag = "compliance",
    params(
        ("from" = Option<String>, Query, description = "Earliest time (RFC 3339, or a day YYYY-MM-DD)"),
        ("to" = Option<String>, Query, description = "Latest time (RFC 3339, or a day YYYY-MM-DD, inclusive)"),
    ),
    responses(
        (status = 200, description = "Each access opened, with the reads made under it"),
        (status = 403, description = "The record trail is for the compliance and admin roles"),
    ))]
pub async fn break_glass_report(
    State(state): State<Arc<AppState>>,
    axum::Extension(caller): axum::Extension<Caller>,
    Query(raw): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let params = Params::checked(raw, &["from", "to"])?;
    let (from, to) = time_range(&params)?;
    let entries = audit_entries(
        &state,
        &caller,
        ledger::contracts::Query::RecordAudit {
            patient: None,
            actor: None,
            break_glass: true,
            from,
            to,
        },
    )
    .await?;
    // Events come in commit order: each read under break-glass belongs to the latest opening by
    // the same clinician on the same patient.
    let mut accesses: Vec<Value> = Vec::new();
    let mut open: BTreeMap<(PublicKey, Digest), usize> = BTreeMap::new();
    let mut unmatched = Vec::new();
    for e in &entries {
        let Some(rec) = &e.event.record else { continue };
        let who = (e.event.actor, rec.patient);
        if e.event.action == Action::BreakGlass {
            open.insert(who, accesses.len());
            accesses.push(json!({
                "opened": provenance::audit::time(e.event.time.0),
                "height": e.event.position.seq.0,
                "tx": e.event.tx.to_hex(),
                "clinician": e.actor_name,
                "clinician_key": e.event.actor.to_hex(),
                "patient": rec.patient.to_hex(),
                "reason": e.event.purpose.as_deref().map(provenance::audit::escape),
                "outcome": outcome_text(&e.event.outcome),
                "receipt_verified": e.verified,
                "reads": [],
            }));
            continue;
        }
        let read = json!({
            "time": provenance::audit::time(e.event.time.0),
            "tx": e.event.tx.to_hex(),
            "asked": rec.asked.to_string(),
            "outcome": outcome_text(&e.event.outcome),
            "receipt_verified": e.verified,
        });
        match open.get(&who).and_then(|i| accesses.get_mut(*i)) {
            Some(access) => {
                if let Some(reads) = access["reads"].as_array_mut() {
                    reads.push(read);
                }
            }
            // Opened before `from`: listed apart rather than dropped.
            None => unmatched.push(read),
        }
    }
    Ok(axum::Json(json!({
        "accesses": accesses,
        "reads_opened_before_the_range": unmatched,
    }))
    .into_response())
}

fn outcome_text(o: &Outcome) -> String {
    match o {
        Outcome::Accepted => "accepted".into(),
        Outcome::Granted(d) => format!("granted: {}", d.everywhere),
        Outcome::Denied { reason } => format!("denied: {}", provenance::audit::escape(reason)),
    }
}

/// The caller, acting through the server's gateway identity.
fn accessor<'a>(state: &'a AppState, caller: &'a Caller) -> Accessor<'a> {
    Accessor::Reader {
        gateway: &state.gateway,
        reader: caller.key,
        token: &caller.token,
    }
}

/// A digest parameter, refused by name when it is not 64 hex digits.
fn digest(text: &str, name: &str) -> Result<Digest, ApiError> {
    Digest::from_hex(text)
        .map_err(|_| ApiError::BadRequest(format!("{name} must be a root: 64 hex digits")))
}

fn key(text: &str) -> Result<PublicKey, ApiError> {
    PublicKey::from_hex(text).map_err(|_| {
        ApiError::BadRequest("actor must be an identity's public key (64 hex digits)".into())
    })
}

/// A required text field of a JSON body.
fn text_field<'a>(body: &'a Value, name: &str) -> Result<&'a str, ApiError> {
    body.get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::BadRequest(format!("the body needs {name} as text")))
}

/// Whether CSV was asked for (`format=csv`; `format=json` or none is JSON).
fn format(params: &Params) -> Result<bool, ApiError> {
    match params.get("format") {
        None | Some("json") => Ok(false),
        Some("csv") => Ok(true),
        Some(_) => Err(ApiError::BadRequest("format must be json or csv".into())),
    }
}

/// `from` and `to` as block times: RFC 3339 instants, or days (`to` a day means its end).
fn time_range(params: &Params) -> Result<(Time, Time), ApiError> {
    let parse = |name: &str, end: bool| -> Result<Option<u64>, ApiError> {
        let Some(v) = params.get(name) else {
            return Ok(None);
        };
        let ms = match chrono::DateTime::parse_from_rfc3339(v) {
            Ok(t) => Some(t.timestamp_millis()),
            Err(_) => chrono::NaiveDate::parse_from_str(v, "%Y-%m-%d")
                .ok()
                .and_then(|d| {
                    if end {
                        d.and_hms_milli_opt(23, 59, 59, 999)
                    } else {
                        d.and_hms_opt(0, 0, 0)
                    }
                })
                .map(|t| t.and_utc().timestamp_millis()),
        };
        ms.and_then(|m| u64::try_from(m).ok())
            .map(Some)
            .ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "{name} must be an RFC 3339 time or a day (YYYY-MM-DD)"
                ))
            })
    };
    let from = parse("from", false)?.unwrap_or(0);
    let to = parse("to", true)?.unwrap_or(u64::MAX);
    if from > to {
        return Err(ApiError::BadRequest("from is after to".into()));
    }
    Ok((Time(from), Time(to)))
}

/// Appends one CSV row (RFC 4180 quoting; a cell that a spreadsheet would run as a formula is
/// prefixed with an apostrophe).
fn push_csv(out: &mut String, cells: &[String]) {
    for (i, cell) in cells.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let cell = if cell.starts_with(['=', '+', '-', '@']) {
            format!("'{cell}")
        } else {
            cell.clone()
        };
        if cell.contains([',', '"', '\n', '\r']) {
            out.push('"');
            out.push_str(&cell.replace('"', "\"\""));
            out.push('"');
        } else {
            out.push_str(&cell);
        }
    }
    out.push('\n');
}

fn csv_response(body: String, name: &str) -> Response {
    let mut r = body.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        r.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_cells_are_quoted_and_formulas_defused() {
        let mut out = String::new();
        push_csv(
            &mut out,
            &[
                "a,b".into(),
                "say \"hi\"".into(),
                "=SUM(A1)".into(),
                "plain".into(),
            ],
        );
        assert_eq!(out, "\"a,b\",\"say \"\"hi\"\"\",'=SUM(A1),plain\n");
    }

    #[test]
    fn time_ranges_take_instants_and_whole_days() {
        let p = |v: &[(&str, &str)]| {
            Params::checked(
                v.iter()
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .collect(),
                &["from", "to"],
            )
            .expect("params")
        };
        let (from, to) =
            time_range(&p(&[("from", "2026-01-01"), ("to", "2026-01-01")])).expect("a day");
        assert_eq!(to.0 - from.0, 86_399_999);
        let (from, _) = time_range(&p(&[("from", "2026-01-01T00:00:01Z")])).expect("an instant");
        assert_eq!(from.0, 1_767_225_601_000);
        assert!(time_range(&p(&[("from", "yesterday")])).is_err());
        assert!(time_range(&p(&[("from", "2026-01-02"), ("to", "2026-01-01")])).is_err());
    }
}
