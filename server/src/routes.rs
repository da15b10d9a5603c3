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
use ledger::contracts::{Categories, Category, Purpose};
use records::{PatientView, ReadRequest, Records};
use serde_json::{Value, json};
use std::sync::atomic::Ordering;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{Caller, authenticate};
use crate::cds;
use crate::compliance;
use crate::error::ApiError;
use crate::fhir;
use crate::openapi;
use crate::risk::{self, Assessment};
use crate::state::AppState;

/// The page size of a search when `_count` is not given, and the largest allowed.
const DEFAULT_COUNT: usize = 100;
const MAX_COUNT: usize = 1000;

/// The application: every route, the body limit, and the timing and time-limit layer. Every
/// route is declared with its OpenAPI description (`routes!`), so `/openapi.json` cannot miss
/// one.
pub fn router(state: Arc<AppState>, max_body_bytes: usize) -> Router {
    let authenticated = OpenApiRouter::new()
        .routes(routes!(whoami))
        .routes(routes!(read_patient))
        .routes(routes!(search_encounters))
        .routes(routes!(search_observations))
        .routes(routes!(search_conditions))
        .routes(routes!(audit_events))
        .routes(routes!(ledger_status))
        .routes(routes!(patient_risk))
        .routes(routes!(values_risk))
        .routes(routes!(break_glass))
        .routes(routes!(cds_discovery))
        .routes(routes!(cds_service))
        .routes(routes!(cds_feedback))
        .routes(routes!(compliance::lineage))
        .routes(routes!(compliance::verify))
        .routes(routes!(compliance::prove))
        .routes(routes!(compliance::check_proof))
        .routes(routes!(compliance::audit))
        .routes(routes!(compliance::record_audit))
        .routes(routes!(compliance::break_glass_report))
        .route_layer(from_fn_with_state(state.clone(), require_caller));
    let (app, spec) = OpenApiRouter::with_openapi(openapi::base())
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes(routes!(openapi::document))
        .merge(authenticated)
        .split_for_parts();
    app.fallback(not_found)
        .layer(axum::Extension(openapi::Document::of(spec)))
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

#[utoipa::path(get, path = "/healthz", tag = "operations", security(()),
    responses((status = 200, description = "The process is up")))]
async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready when the ledger answers and the store reads.
#[utoipa::path(get, path = "/readyz", tag = "operations", security(()),
    responses((status = 200, description = "The ledger answers and the store reads"),
        (status = 503, description = "The ledger or the store is not ready")))]
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

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "operations", security(()),
    responses((status = 200, description = "Counters and latency histograms, Prometheus text format")))]
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

/// The identity the bearer token binds the request to.
#[utoipa::path(get, path = "/api/whoami", tag = "identity",
    responses((status = 200, description = "Name, role and public key"), (status = 401, description = "No valid token")))]
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
#[utoipa::path(get, path = "/api/patients/{id}/risk", tag = "risk",
    params(("id" = String, Path, description = "The patient id"),
        ("X-Purpose-Of-Use" = Option<String>, Header, description = "treatment (default), research, operations or audit"),
        ("X-Facility" = Option<String>, Header, description = "The facility the caller reads as")),
    responses((status = 200, description = "The risk at the latest visit, explained, with the model and dataset roots and a FHIR RiskAssessment"),
        (status = 403, description = "The contract withheld a category the model needs"),
        (status = 404, description = "No such patient, or no visit the caller may see"),
        (status = 503, description = "No model in service, or the ledger cannot commit the read")))]
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

/// `POST /api/patients/{id}/break-glass`: opens an emergency access to the patient's whole
/// record for the calling clinician, with a mandatory reason, for at most the ledger's limit:
/// decided and audited as the clinician's, flagged for review.
#[utoipa::path(post, path = "/api/patients/{id}/break-glass", tag = "records",
    params(("id" = String, Path, description = "The patient id")),
    request_body(content = String, content_type = "application/json",
        description = r#"{"reason": "the emergency (no PHI)", "minutes": 1 to 240}"#),
    responses((status = 200, description = "The access opened: its id, expiry and ledger height"),
        (status = 400, description = "No reason, or minutes out of range"),
        (status = 403, description = "Break-glass is for clinicians"),
        (status = 404, description = "No such patient")))]
async fn break_glass(
    State(state): State<Arc<AppState>>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    check_id(&id, "the patient id")?;
    let request = json_body(&headers, &body)?;
    let reason = request
        .get("reason")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .ok_or_else(|| {
            ApiError::BadRequest("reason is required: say what the emergency is".into())
        })?;
    let max = ledger::contracts::MAX_BREAK_GLASS_MINUTES;
    let minutes = request
        .get("minutes")
        .and_then(Value::as_u64)
        .filter(|m| (1..=u64::from(max)).contains(m))
        .ok_or_else(|| {
            ApiError::BadRequest(format!("minutes must be a whole number from 1 to {max}"))
        })?;
    let made = Records::new(&state.store, &state.provenance)
        .break_glass_as(
            &state.gateway,
            caller.key,
            &caller.token,
            &id,
            minutes as u32,
            reason,
        )
        .await
        .map_err(|e| {
            if e.is_denied() {
                state.metrics.denials.fetch_add(1, Ordering::Relaxed);
            }
            ApiError::from_records(e)
        })?;
    Ok(axum::Json(json!({
        "grant": made.grant,
        "expires": provenance::audit::time(made.expires_ms),
        "expires_ms": made.expires_ms,
        "height": made.height,
    }))
    .into_response())
}

/// `POST /api/risk`: the risk of raw clinical values (a JSON object of feature → number, text
/// or null), for a patient who is not in the store. No record is read, so there is nothing to
/// audit; the answer names the model.
#[utoipa::path(post, path = "/api/risk", tag = "risk",
    request_body(content = String, content_type = "application/json",
        description = "A JSON object of the model's feature names to raw values (number, text or null)"),
    responses((status = 200, description = "The risk, explained, with the model and dataset roots and a FHIR RiskAssessment"),
        (status = 400, description = "An unknown feature or a value of the wrong type"),
        (status = 415, description = "A body that is not application/json"),
        (status = 422, description = "A value the model's transforms cannot use"),
        (status = 503, description = "No model in service")))]
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
#[utoipa::path(get, path = "/fhir/AuditEvent", tag = "fhir",
    params(("patient" = Option<String>, Query, description = "A patient id"),
        ("agent" = Option<String>, Query, description = "An identity's public key"),
        ("date" = Option<String>, Query, description = "A day, with an optional eq, ne, gt, lt, ge or le prefix"),
        ("_count" = Option<usize>, Query, description = "Page size (default 100, at most 1000)"),
        ("_offset" = Option<usize>, Query, description = "Page start")),
    responses((status = 200, description = "A searchset Bundle of AuditEvents"),
        (status = 403, description = "The record trail is for the compliance and admin roles")))]
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
    let query = ledger::contracts::Query::RecordAudit {
        patient: patient.as_deref().map(|p| state.store.pseudonym(p)),
        actor: agent,
        break_glass: false,
        from: ledger::ids::Time(0),
        to: ledger::ids::Time(u64::MAX),
    };
    let entries = audit_entries(&state, &caller, query).await?;
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

/// The record-access events `query` selects, asked of the ledger with the caller's rights.
pub(crate) async fn audit_entries(
    state: &AppState,
    caller: &Caller,
    query: ledger::contracts::Query,
) -> Result<Vec<records::access::ReportEntry>, ApiError> {
    let reader = caller.reader(state);
    records::access::audit_entries(&state.provenance, &reader, query, None)
        .await
        .map_err(|e| {
            if e.is_denied() {
                state.metrics.denials.fetch_add(1, Ordering::Relaxed);
            }
            ApiError::from_records(e)
        })
}

/// `GET /api/ledger/status`: each peer's own head (height, certified height, log size and root),
/// or that it did not answer, and whether enough peers answer for the ledger to commit.
#[utoipa::path(get, path = "/api/ledger/status", tag = "compliance",
    responses((status = 200, description = "Each peer's height, certified height, view and log root, and whether the ledger can commit")))]
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
                "view": h.view.0,
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
pub(crate) fn json_body(headers: &HeaderMap, body: &[u8]) -> Result<Value, ApiError> {
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
#[utoipa::path(get, path = "/cds-services", tag = "cds-hooks",
    responses((status = 200, description = "The CDS Hooks discovery document")))]
async fn cds_discovery() -> axum::Json<Value> {
    axum::Json(cds::discovery())
}

/// `POST /cds-services/stroke-risk`: a `patient-view` card from the clinician's own read.
#[utoipa::path(post, path = "/cds-services/stroke-risk", tag = "cds-hooks",
    request_body(content = String, content_type = "application/json", description = "A CDS Hooks patient-view request"),
    responses((status = 200, description = "One card: the risk band, its explanation and the model it came from"),
        (status = 403, description = "The contract withheld a category the model needs")))]
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
#[utoipa::path(post, path = "/cds-services/stroke-risk/feedback", tag = "cds-hooks",
    request_body(content = String, content_type = "application/json", description = "CDS Hooks feedback on a card"),
    responses((status = 200, description = "Recorded on the ledger"),
        (status = 403, description = "The card is not one of the clinician's own reads")))]
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
pub(crate) struct Params(Vec<(String, String)>);

impl Params {
    pub(crate) fn checked(raw: Vec<(String, String)>, allowed: &[&str]) -> Result<Self, ApiError> {
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

    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn count(&self, name: &str, default: usize, max: usize) -> Result<usize, ApiError> {
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
    pub(crate) fn patient(&self) -> Result<String, ApiError> {
        let raw = self
            .get("patient")
            .ok_or_else(|| ApiError::BadRequest("the patient parameter is required".into()))?;
        let id = raw.strip_prefix("Patient/").unwrap_or(raw);
        check_id(id, "patient")?;
        Ok(id.to_string())
    }
}

/// A FHIR logical id: 1 to 64 of `A-Za-z0-9-.`.
pub(crate) fn check_id(id: &str, what: &str) -> Result<(), ApiError> {
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

/// `GET /fhir/Patient/{id}`.
#[utoipa::path(get, path = "/fhir/Patient/{id}", tag = "fhir",
    params(("id" = String, Path, description = "The patient id"),
        ("X-Purpose-Of-Use" = Option<String>, Header, description = "treatment (default), research, operations or audit"),
        ("X-Facility" = Option<String>, Header, description = "The facility the caller reads as")),
    responses((status = 200, description = "The Patient, with its record's inclusion proof"),
        (status = 403, description = "The contract granted none of the patient's own record"),
        (status = 404, description = "No such patient (the query is still audited)"),
        (status = 503, description = "The ledger cannot commit the read's audit event")))]
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

/// `GET /fhir/Encounter?patient=`.
#[utoipa::path(get, path = "/fhir/Encounter", tag = "fhir",
    params(("patient" = String, Query, description = "The patient id"),
        ("_count" = Option<usize>, Query, description = "Page size (default 100, at most 1000)"),
        ("_offset" = Option<usize>, Query, description = "Page start")),
    responses((status = 200, description = "A searchset Bundle of Encounters"),
        (status = 404, description = "No such patient (the query is still audited)")))]
async fn search_encounters(
    State(state): State<Arc<AppState>>,
    axum::Extension(caller): axum::Extension<Caller>,
    Query(raw): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    search(
        &state,
        &caller,
        &headers,
        "Encounter",
        raw,
        &[],
        |id, v, _| Ok(fhir::encounters(id, v)),
    )
    .await
}

/// `GET /fhir/Observation?patient=&category=&date=`.
#[utoipa::path(get, path = "/fhir/Observation", tag = "fhir",
    params(("patient" = String, Query, description = "The patient id"),
        ("category" = Option<String>, Query, description = "vital-signs or laboratory"),
        ("date" = Option<String>, Query, description = "A day, with an optional eq, ne, gt, lt, ge or le prefix"),
        ("_count" = Option<usize>, Query, description = "Page size (default 100, at most 1000)"),
        ("_offset" = Option<usize>, Query, description = "Page start")),
    responses((status = 200, description = "A searchset Bundle of Observations, LOINC-coded"),
        (status = 404, description = "No such patient (the query is still audited)")))]
async fn search_observations(
    State(state): State<Arc<AppState>>,
    axum::Extension(caller): axum::Extension<Caller>,
    Query(raw): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    search(
        &state,
        &caller,
        &headers,
        "Observation",
        raw,
        &["category", "date"],
        observations,
    )
    .await
}

/// `GET /fhir/Condition?patient=`.
#[utoipa::path(get, path = "/fhir/Condition", tag = "fhir",
    params(("patient" = String, Query, description = "The patient id"),
        ("_count" = Option<usize>, Query, description = "Page size (default 100, at most 1000)"),
        ("_offset" = Option<usize>, Query, description = "Page start")),
    responses((status = 200, description = "A searchset Bundle of Conditions, ICD-10-coded"),
        (status = 404, description = "No such patient (the query is still audited)")))]
async fn search_conditions(
    State(state): State<Arc<AppState>>,
    axum::Extension(caller): axum::Extension<Caller>,
    Query(raw): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    search(
        &state,
        &caller,
        &headers,
        "Condition",
        raw,
        &[],
        |id, v, _| Ok(fhir::conditions(id, v)),
    )
    .await
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
