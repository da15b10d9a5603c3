//! The routes: probes and metrics (open), the caller's identity, and the FHIR reads (each bound
//! to the caller and decided and audited by the ledger through the gateway).

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use ledger::contracts::{Categories, Category, Purpose};
use records::{PatientView, ReadRequest, Records};
use serde_json::{Value, json};
use std::sync::atomic::Ordering;

use crate::auth::{Caller, authenticate};
use crate::cds;
use crate::error::ApiError;
use crate::fhir;
use crate::risk::{self, Assessment};
use crate::state::AppState;

/// The page size of a search when `_count` is not given, and the largest allowed.
const DEFAULT_COUNT: usize = 100;
const MAX_COUNT: usize = 1000;

/// The application: every route, the body limit, and the timing and time-limit layer.
pub fn router(state: Arc<AppState>, max_body_bytes: usize) -> Router {
    let authenticated = Router::new()
        .route("/api/whoami", get(whoami))
        .route("/fhir/Patient/{id}", get(read_patient))
        .route(
            "/fhir/Encounter",
            search_route("Encounter", &[], |id, v, _| Ok(fhir::encounters(id, v))),
        )
        .route(
            "/fhir/Observation",
            search_route("Observation", &["category", "date"], observations),
        )
        .route(
            "/fhir/Condition",
            search_route("Condition", &[], |id, v, _| Ok(fhir::conditions(id, v))),
        )
        .route("/fhir/AuditEvent", get(audit_events))
        .route("/api/ledger/status", get(ledger_status))
        .route("/api/patients/{id}/risk", get(patient_risk))
        .route("/api/risk", post(values_risk))
        .route("/cds-services", get(cds_discovery))
        .route(
            &format!("/cds-services/{}", cds::SERVICE_ID),
            post(cds_service),
        )
        .route(
            &format!("/cds-services/{}/feedback", cds::SERVICE_ID),
            post(cds_feedback),
        )
        .route_layer(from_fn_with_state(state.clone(), require_caller));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(authenticated)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// Times every request, bounds it by the server's time limit, and counts it by route
/// template and status. Logs name the route and status, never the path's values.
async fn observe(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    #[allow(clippy::disallowed_methods)] // request latency, for the metrics
    let start = Instant::now();
    let response = match tokio::time::timeout(state.request_timeout, next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError::Timeout(format!(
            "the request took longer than the server's limit of {} s",
            state.request_timeout.as_secs()
        ))
        .into_response(),
    };
    let took = start.elapsed();
    let status = response.status().as_u16();
    state.metrics.observe(&route, status, took);
    tracing::debug!(route, status, ms = took.as_millis() as u64, "request");
    response
}

/// Binds the request to the identity of its bearer token, or refuses it.
async fn require_caller(
    State(state): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Response {
    match authenticate(&state, req.headers()).await {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err(e) => {
            state
                .metrics
                .unauthenticated
                .fetch_add(1, Ordering::Relaxed);
            e.into_response()
        }
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready when the ledger answers and the store reads.
async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let ledger = state
        .provenance
        .reader_with(state.gateway.clone())
        .identity(state.gateway.public())
        .await;
    let store = state.store.batches();
    match (ledger, store) {
        (Ok(Some(_)), Ok(_)) => (StatusCode::OK, "ready\n").into_response(),
        (Ok(None), _) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the gateway identity is not registered on the ledger\n",
        )
            .into_response(),
        (Err(e), _) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the ledger does not answer: {e}\n"),
        )
            .into_response(),
        (_, Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the record store does not read: {e}\n"),
        )
            .into_response(),
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let mut r = state.metrics.render().into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}

async fn whoami(axum::Extension(caller): axum::Extension<Caller>) -> axum::Json<Value> {
    axum::Json(json!({
        "name": caller.name,
        "role": caller.role.to_string(),
        "public_key": caller.key.to_hex(),
    }))
}

fn fhir_json(body: Value) -> Response {
    let mut r = axum::Json(body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(fhir::FHIR_JSON),
    );
    r
}

/// A patient's risk at their latest visit the caller may see: the record read asks for the
/// categories of the model's features (decided and audited as any read), and a risk needing a
/// category the contract withheld is refused, naming it, rather than guessed without it.
pub async fn assess_patient(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    id: &str,
) -> Result<(Assessment, Value, PatientView), ApiError> {
    check_id(id, "the patient id")?;
    let served = state.model.require()?;
    let model = &served.loaded.model;
    let generalized = &served.loaded.manifest.pii.generalized;
    let needs: Categories = model
        .features()
        .iter()
        .map(|f| {
            if generalized.values().any(|age| *age == f.name) {
                Category::Demographics
            } else {
                state.store.categories().classify(&f.name, None)
            }
        })
        .chain([Category::Demographics])
        .collect();
    let view = read(state, caller, headers, id, needs).await?;
    if !view.denied.is_empty() {
        return Err(ApiError::Forbidden(format!(
            "the risk needs {} of the record, which the ledger's contract did not grant you \
             (the refused read is in the audit trail)",
            view.denied
        )));
    }
    let (visit, own) = fhir::latest_visit(&view);
    let visit =
        visit.ok_or_else(|| ApiError::NotFound("the patient has no visit you may see".into()))?;
    let value = |name: &str| -> Option<String> {
        if let Some((dob, _)) = generalized.iter().find(|(_, age)| *age == name) {
            let born = own.and_then(|r| fhir::field(r, dob))?;
            let at = fhir::field(visit, fhir::VISIT_DATE)?;
            return pipeline::functions::age_between(born, at).map(|a| a.to_string());
        }
        fhir::field(visit, name)
            .or_else(|| own.and_then(|r| fhir::field(r, name)))
            .map(str::to_string)
    };
    let assessment = risk::assess(&served, &value)?;
    let resource = fhir::risk_assessment(&assessment, Some(id), Some(visit));
    state
        .metrics
        .risk_assessments
        .fetch_add(1, Ordering::Relaxed);
    Ok((assessment, resource, view))
}

/// `GET /api/patients/{id}/risk`.
async fn patient_risk(
    State(state): State<Arc<AppState>>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<String>,
    Query(raw): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    Params::checked(raw, &[])?;
    let (assessment, resource, view) = assess_patient(&state, &caller, &headers, &id).await?;
    let mut body = serde_json::to_value(&assessment)
        .map_err(|e| ApiError::Internal(format!("cannot encode the assessment: {e}")))?;
    body["patient"] = json!(id);
    body["audit"] = json!({"tx": view.tx, "height": view.height});
    body["risk_assessment"] = resource;
    Ok(axum::Json(body).into_response())
}

/// `POST /api/risk`: the risk of raw clinical values (a JSON object of feature → number, text
/// or null), for a patient who is not in the store. No record is read, so there is nothing to
/// audit; the answer names the model.
async fn values_risk(
    State(state): State<Arc<AppState>>,
    Query(raw): Query<Vec<(String, String)>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    Params::checked(raw, &[])?;
    let values: serde_json::Map<String, Value> = match json_body(&headers, &body)? {
        Value::Object(m) => m,
        _ => {
            return Err(ApiError::BadRequest(
                "the body must be a JSON object of feature names to values".into(),
            ));
        }
    };
    let served = state.model.require()?;
    let features = served.loaded.model.features();
    let mut given = std::collections::BTreeMap::new();
    for (name, v) in &values {
        if !features.iter().any(|f| f.name == *name) {
            return Err(ApiError::BadRequest(format!(
                "unknown field {name:?}: the model's features are {}",
                features
                    .iter()
                    .map(|f| f.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let text = match v {
            Value::Null => continue,
            Value::Number(n) => n.to_string(),
            Value::String(s) => s.clone(),
            Value::Bool(b) => u8::from(*b).to_string(),
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "field {name} must be a number, text or null"
                )));
            }
        };
        given.insert(name.clone(), text);
    }
    let assessment = risk::assess(&served, &|name| given.get(name).cloned())?;
    let resource = fhir::risk_assessment(&assessment, None, None);
    state
        .metrics
        .risk_assessments
        .fetch_add(1, Ordering::Relaxed);
    let mut body = serde_json::to_value(&assessment)
        .map_err(|e| ApiError::Internal(format!("cannot encode the assessment: {e}")))?;
    body["risk_assessment"] = resource;
    Ok(axum::Json(body).into_response())
}

/// `GET /fhir/AuditEvent?patient=|agent=|date=`: the record-access trail in the FHIR AuditEvent
/// shape, asked of the ledger for the caller (compliance and admin may read it; the contract
/// decides), newest first.
async fn audit_events(
    State(state): State<Arc<AppState>>,
    axum::Extension(caller): axum::Extension<Caller>,
    Query(raw): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let params = Params::checked(raw, &["patient", "agent", "date", "_count", "_offset"])?;
    let patient = params
        .get("patient")
        .map(|_| params.patient())
        .transpose()?;
    let agent = params
        .get("agent")
        .map(|a| {
            ledger::crypto::PublicKey::from_hex(a).map_err(|_| {
                ApiError::BadRequest(
                    "agent must be an identity's public key (64 hex digits)".into(),
                )
            })
        })
        .transpose()?;
    if patient.is_none() && agent.is_none() {
        return Err(ApiError::BadRequest(
            "give patient or agent: the whole trail is not one search".into(),
        ));
    }
    let date = params.get("date").map(DateFilter::parse).transpose()?;
    let count = params.count("_count", DEFAULT_COUNT, MAX_COUNT)?.max(1);
    let offset = params.count("_offset", 0, usize::MAX)?;
    let query = ledger::contracts::Query::As {
        reader: caller.key,
        token: caller.token.clone(),
        query: Box::new(ledger::contracts::Query::RecordAudit {
            patient: patient.as_deref().map(|p| state.store.pseudonym(p)),
            actor: agent,
            break_glass: false,
            from: ledger::ids::Time(0),
            to: ledger::ids::Time(u64::MAX),
        }),
    };
    let entries = records::access::audit_entries(&state.provenance, &state.gateway, query, None)
        .await
        .map_err(|e| {
            if e.is_denied() {
                state.metrics.denials.fetch_add(1, Ordering::Relaxed);
            }
            ApiError::from_records(e)
        })?;
    let ledger_id = state.ledger_id.to_hex();
    let resources: Vec<Value> = entries
        .iter()
        .rev()
        .map(|e| fhir::audit_event(e, patient.as_deref(), &ledger_id))
        .filter(|r| {
            date.as_ref()
                .is_none_or(|d| r["recorded"].as_str().is_some_and(|t| d.holds(t)))
        })
        .collect();
    Ok(page(
        &state,
        "AuditEvent",
        &params,
        resources,
        (offset, count),
        Categories::default(),
    ))
}

/// `GET /api/ledger/status`: each peer's own head (height, certified height, log size and root),
/// or that it did not answer, and whether enough peers answer for the ledger to commit.
async fn ledger_status(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let reader = state.provenance.reader_with(state.gateway.clone());
    let answers = reader
        .ask_each(ledger::contracts::Query::Head)
        .await
        .map_err(|e| ApiError::Internal(format!("cannot sign the status query: {e}")))?;
    let genesis = state.provenance.genesis();
    let peers: Vec<Value> = genesis
        .peers
        .iter()
        .zip(answers)
        .map(|(peer, answer)| match answer {
            Ok(ledger::chain::QueryResult::Head(h)) => json!({
                "peer": peer.id.0,
                "address": peer.client_address,
                "up": true,
                "height": h.height.0,
                "certified": h.certified.0,
                "hash": h.hash.to_hex(),
                "log_size": h.log_size,
                "log_root": h.log_root.to_hex(),
            }),
            Ok(_) => json!({"peer": peer.id.0, "address": peer.client_address, "up": false,
                "error": "answered something else"}),
            Err(e) => json!({"peer": peer.id.0, "address": peer.client_address, "up": false,
                "error": e.to_string()}),
        })
        .collect();
    let n = genesis.peers.len();
    let up = peers.iter().filter(|p| p["up"] == true).count();
    let quorum = ledger::ids::quorum(n);
    Ok(axum::Json(json!({
        "ledger": state.ledger_id.to_hex(),
        "peers": peers,
        "peers_up": up,
        "quorum": quorum,
        "can_commit": up >= quorum,
    }))
    .into_response())
}

/// A JSON request body, refused with 415 in another media type and 400 (naming where) when it
/// does not parse.
fn json_body(headers: &HeaderMap, body: &[u8]) -> Result<Value, ApiError> {
    let json_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"));
    if !json_type {
        return Err(ApiError::UnsupportedMediaType(
            "the body must be application/json".into(),
        ));
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::BadRequest(format!(
            "the body is not JSON (line {}, column {})",
            e.line(),
            e.column()
        ))
    })
}

/// `GET /cds-services`.
async fn cds_discovery() -> axum::Json<Value> {
    axum::Json(cds::discovery())
}

/// `POST /cds-services/stroke-risk`: a `patient-view` card from the clinician's own read.
async fn cds_service(
    State(state): State<Arc<AppState>>,
    axum::Extension(caller): axum::Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request = json_body(&headers, &body)?;
    let patient = cds::patient_of(&request)?;
    let (assessment, _, view) = assess_patient(&state, &caller, &headers, &patient).await?;
    let internal = |what: &str| ApiError::Internal(format!("{what} is not a digest"));
    let tx = ledger::crypto::Digest::from_hex(&view.tx).map_err(|_| internal("the read's tx"))?;
    let model = ledger::crypto::Digest::from_hex(&assessment.model.root)
        .map_err(|_| internal("the model root"))?;
    let card = cds::card(&assessment, &tx);
    cds::issued(&state, &card, model);
    Ok(axum::Json(json!({"cards": [card]})).into_response())
}

/// `POST /cds-services/stroke-risk/feedback`.
async fn cds_feedback(
    State(state): State<Arc<AppState>>,
    axum::Extension(caller): axum::Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request = json_body(&headers, &body)?;
    cds::feedback(&state, &caller, &request).await?;
    Ok(axum::Json(json!({})).into_response())
}

/// A search's query parameters, checked: unknown or repeated parameters are refused by name.
struct Params(Vec<(String, String)>);

impl Params {
    fn checked(raw: Vec<(String, String)>, allowed: &[&str]) -> Result<Self, ApiError> {
        for (i, (name, _)) in raw.iter().enumerate() {
            if !allowed.contains(&name.as_str()) {
                return Err(ApiError::BadRequest(format!(
                    "unknown parameter {name:?}: this search takes {}",
                    allowed.join(", ")
                )));
            }
            if raw[..i].iter().any(|(n, _)| n == name) {
                return Err(ApiError::BadRequest(format!(
                    "parameter {name} is repeated"
                )));
            }
        }
        Ok(Self(raw))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn count(&self, name: &str, default: usize, max: usize) -> Result<usize, ApiError> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| *n <= max)
                .ok_or_else(|| {
                    ApiError::BadRequest(format!("{name} must be a whole number up to {max}"))
                }),
        }
    }

    /// The `patient` parameter: an id or `Patient/ID`, checked as a FHIR id.
    fn patient(&self) -> Result<String, ApiError> {
        let raw = self
            .get("patient")
            .ok_or_else(|| ApiError::BadRequest("the patient parameter is required".into()))?;
        let id = raw.strip_prefix("Patient/").unwrap_or(raw);
        check_id(id, "patient")?;
        Ok(id.to_string())
    }
}

/// A FHIR logical id: 1 to 64 of `A-Za-z0-9-.`.
fn check_id(id: &str, what: &str) -> Result<(), ApiError> {
    let ok = (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "{what} is not a FHIR id (1 to 64 letters, digits, '-' or '.')"
        )))
    }
}

/// The purpose of use a request states (`X-Purpose-Of-Use`, default treatment), and the
/// facility it reads as (`X-Facility`, for facility-scoped grants).
fn context(headers: &HeaderMap) -> Result<(Purpose, Option<String>), ApiError> {
    let text = |name: &str| -> Result<Option<String>, ApiError> {
        headers
            .get(name)
            .map(|v| {
                v.to_str()
                    .map(|s| s.trim().to_string())
                    .map_err(|_| ApiError::BadRequest(format!("header {name} is not text")))
            })
            .transpose()
    };
    let purpose = match text("x-purpose-of-use")? {
        None => Purpose::Treatment,
        Some(p) => p.parse().map_err(|_| {
            ApiError::BadRequest(
                "header X-Purpose-Of-Use is not one of treatment, research, operations, audit"
                    .into(),
            )
        })?,
    };
    let facility = text("x-facility")?;
    if let Some(f) = &facility {
        check_id(f, "header X-Facility")?;
    }
    Ok((purpose, facility))
}

/// The caller's read of `patient`'s `categories`, through the gateway: decided and audited by
/// the ledger as the caller's.
async fn read(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    patient: &str,
    categories: Categories,
) -> Result<PatientView, ApiError> {
    let (purpose, facility) = context(headers)?;
    let records = Records::new(&state.store, &state.provenance);
    let req = ReadRequest {
        patient_id: patient.to_string(),
        categories,
        purpose,
        facility,
        history: false,
    };
    match records
        .read_as(&state.gateway, caller.key, &caller.token, &req)
        .await
    {
        Ok(view) => {
            state.metrics.audited_reads.fetch_add(1, Ordering::Relaxed);
            Ok(view)
        }
        Err(e) => {
            if e.is_denied() {
                state.metrics.denials.fetch_add(1, Ordering::Relaxed);
            } else if e.is_unavailable() {
                state
                    .metrics
                    .ledger_unavailable
                    .fetch_add(1, Ordering::Relaxed);
            }
            Err(ApiError::from_records(e))
        }
    }
}

async fn read_patient(
    State(state): State<Arc<AppState>>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<String>,
    Query(raw): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    Params::checked(raw, &[])?;
    check_id(&id, "the patient id")?;
    let view = read(
        &state,
        &caller,
        &headers,
        &id,
        fhir::categories_for("Patient"),
    )
    .await?;
    let patient = fhir::patient(&id, &view).ok_or_else(|| {
        ApiError::Forbidden(format!(
            "the ledger's contract granted none of the patient's own record (withheld: {})",
            view.denied
        ))
    })?;
    Ok(fhir_json(patient))
}

/// Runs a search of `resource` over one patient's record and pages it.
async fn search(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    resource: &str,
    raw: Vec<(String, String)>,
    extra: &[&str],
    build: fn(&str, &PatientView, &Params) -> Result<Vec<Value>, ApiError>,
) -> Result<Response, ApiError> {
    let mut allowed = vec!["patient", "_count", "_offset"];
    allowed.extend_from_slice(extra);
    let params = Params::checked(raw, &allowed)?;
    let patient = params.patient()?;
    let count = params.count("_count", DEFAULT_COUNT, MAX_COUNT)?.max(1);
    let offset = params.count("_offset", 0, usize::MAX)?;
    let view = read(
        state,
        caller,
        headers,
        &patient,
        fhir::categories_for(resource),
    )
    .await?;
    let entries = build(&patient, &view, &params)?;
    Ok(page(
        state,
        resource,
        &params,
        entries,
        (offset, count),
        view.denied,
    ))
}

/// One page (`offset`, `count`) of a search's `entries` as a searchset Bundle, with its links
/// repeating the search's parameters.
fn page(
    state: &AppState,
    resource: &str,
    params: &Params,
    entries: Vec<Value>,
    (offset, count): (usize, usize),
    withheld: Categories,
) -> Response {
    let query: Vec<String> = params
        .0
        .iter()
        .filter(|(n, _)| n != "_offset" && n != "_count")
        .map(|(n, v)| format!("{n}={}", encode(v)))
        .collect();
    let link = |at: usize| {
        let mut q = query.clone();
        q.push(format!("_count={count}"));
        q.push(format!("_offset={at}"));
        format!("{}/{resource}?{}", state.fhir_base, q.join("&"))
    };
    fhir_json(fhir::searchset(
        &state.fhir_base,
        entries,
        offset,
        count,
        link,
        withheld,
    ))
}

/// Percent-encodes a query value.
fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A search route over one patient's record: `build` makes the resources of the read.
fn search_route(
    resource: &'static str,
    extra: &'static [&'static str],
    build: fn(&str, &PatientView, &Params) -> Result<Vec<Value>, ApiError>,
) -> MethodRouter<Arc<AppState>> {
    get(
        move |State(state): State<Arc<AppState>>,
              axum::Extension(caller): axum::Extension<Caller>,
              Query(raw): Query<Vec<(String, String)>>,
              headers: HeaderMap| async move {
            search(&state, &caller, &headers, resource, raw, extra, build).await
        },
    )
}

/// Observations of one category (`vital-signs`, `laboratory`) or all, on one day or a range.
fn observations(id: &str, view: &PatientView, params: &Params) -> Result<Vec<Value>, ApiError> {
    let category = match params.get("category") {
        None => None,
        Some(c @ ("vital-signs" | "laboratory")) => Some(c),
        Some(_) => {
            return Err(ApiError::BadRequest(
                "category must be vital-signs or laboratory".into(),
            ));
        }
    };
    let date = params.get("date").map(DateFilter::parse).transpose()?;
    Ok(fhir::observations(id, view, category)
        .into_iter()
        .filter(|o| {
            date.as_ref()
                .is_none_or(|d| o["effectiveDateTime"].as_str().is_some_and(|t| d.holds(t)))
        })
        .collect())
}

/// A FHIR date search (`eq`, `ne`, `gt`, `lt`, `ge`, `le` prefixes on a `YYYY-MM-DD` day).
struct DateFilter {
    op: &'static str,
    day: String,
}

impl DateFilter {
    fn parse(v: &str) -> Result<Self, ApiError> {
        let (op, day) = ["eq", "ne", "gt", "lt", "ge", "le"]
            .into_iter()
            .find_map(|p| v.strip_prefix(p).map(|d| (p, d)))
            .unwrap_or(("eq", v));
        let b = day.as_bytes();
        let well_formed = b.len() == 10
            && b[4] == b'-'
            && b[7] == b'-'
            && b.iter()
                .enumerate()
                .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
        if !well_formed {
            return Err(ApiError::BadRequest(
                "date must be a day (YYYY-MM-DD), optionally after eq, ne, gt, lt, ge or le".into(),
            ));
        }
        Ok(Self {
            op,
            day: day.to_string(),
        })
    }

    fn holds(&self, when: &str) -> bool {
        let d = when.get(..10).unwrap_or(when);
        match self.op {
            "ne" => d != self.day,
            "gt" => d > self.day.as_str(),
            "lt" => d < self.day.as_str(),
            "ge" => d >= self.day.as_str(),
            "le" => d <= self.day.as_str(),
            _ => d == self.day,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_refused_by_name_when_unknown_or_repeated() {
        let p = |v: &[(&str, &str)]| {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect::<Vec<_>>()
        };
        let e = Params::checked(p(&[("patient", "P1"), ("colour", "x")]), &["patient"]);
        assert!(matches!(e, Err(ApiError::BadRequest(m)) if m.contains("\"colour\"")));
        let e = Params::checked(p(&[("patient", "P1"), ("patient", "P2")]), &["patient"]);
        assert!(matches!(e, Err(ApiError::BadRequest(m)) if m.contains("repeated")));
        let ok = Params::checked(p(&[("patient", "Patient/P1")]), &["patient"]).expect("ok");
        assert_eq!(ok.patient().expect("id"), "P1");
        let bad = Params::checked(p(&[("patient", "P 1")]), &["patient"]).expect("ok");
        assert!(bad.patient().is_err());
    }

    #[test]
    fn date_filters_follow_the_fhir_prefixes() {
        let ge = DateFilter::parse("ge2020-01-01").expect("ok");
        assert!(ge.holds("2020-01-01") && ge.holds("2021-05-02") && !ge.holds("2019-12-31"));
        let eq = DateFilter::parse("2020-01-01").expect("ok");
        assert!(eq.holds("2020-01-01") && !eq.holds("2020-01-02"));
        assert!(DateFilter::parse("ge2020-1-1").is_err());
        assert!(DateFilter::parse("yesterday").is_err());
    }
}
