//! CDS Hooks 2.0: the discovery document, the `patient-view` stroke-risk service, and its
//! feedback endpoint. A card is made from the clinician's own audited read (its uuid is the
//! read's, [`card_uuid`]), so what the card showed is in the trail; feedback — accepted, or
//! overridden with one of the reason codes the card offered — is a ledger transaction of the
//! clinician's, through the gateway, on the anchored model the card came from: override rates
//! per model are an audit query away.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use ledger::contracts::{Call, CardFeedback, CardOutcome, Outcome, card_uuid};
use ledger::crypto::Digest;
use serde_json::{Value, json};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::risk::{Assessment, Band};
use crate::state::AppState;

/// The service's id (its path under `/cds-services`).
pub const SERVICE_ID: &str = "stroke-risk";
/// The code system of the override reasons a card offers.
pub const OVERRIDE_SYSTEM: &str = "https://emrflow.dev/cds/override-reason";
/// The override reasons a card offers: code and display.
pub const OVERRIDE_REASONS: &[(&str, &str)] = &[
    (
        "already-addressed",
        "Stroke risk is already addressed in the care plan",
    ),
    ("not-relevant", "Not relevant to this encounter"),
    ("data-out-of-date", "The record's values are out of date"),
    ("clinical-judgement", "Clinical judgement differs"),
];
/// Cards whose model is remembered for their feedback.
const REMEMBERED_CARDS: usize = 65_536;

/// The model each recent card came from, for its feedback (the feedback names only the card).
#[derive(Debug, Default)]
pub struct IssuedCards {
    inner: Mutex<(HashMap<String, Digest>, VecDeque<String>)>,
}

impl IssuedCards {
    fn remember(&self, card: &str, model: Digest) {
        let mut guard = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (map, order) = &mut *guard;
        if map.insert(card.to_string(), model).is_none() {
            order.push_back(card.to_string());
        }
        while order.len() > REMEMBERED_CARDS {
            if let Some(old) = order.pop_front() {
                map.remove(&old);
            }
        }
    }

    fn model_of(&self, card: &str) -> Option<Digest> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .0
            .get(card)
            .copied()
    }
}

/// `GET /cds-services`.
pub fn discovery() -> Value {
    json!({
        "services": [{
            "hook": "patient-view",
            "id": SERVICE_ID,
            "title": "emrflow stroke risk",
            "description": "The patient's stroke risk at their latest visit, from the anchored \
                model in service, with the features that drove it. The record read is decided \
                and audited by the ledger as the clinician's.",
            "prefetch": {},
            "usageRequirements": "Call with the clinician's emrflow identity token; the \
                clinician needs grants for the categories the model's features are in.",
        }]
    })
}

fn indicator(band: Band) -> &'static str {
    match band {
        Band::High => "critical",
        Band::Moderate => "warning",
        Band::Low => "info",
    }
}

/// The card of an assessment made from the read `tx`.
pub fn card(a: &Assessment, tx: &Digest) -> Value {
    let (band, _) = a.band.code();
    let percent = a.probability * 100.0;
    let summary = format!("Stroke risk {percent:.1}% ({band}) at the latest visit");
    let units = match a.output {
        ml::Output::Probability => "probability",
        ml::Output::LogOdds => "log-odds",
    };
    let mut detail = format!(
        "**Stroke risk {percent:.1}%** ({band}; the model's threshold is {:.1}%).\n\n\
         What moved it most (TreeSHAP, in {units}):\n\n",
        a.threshold * 100.0
    );
    for c in a
        .contributions
        .iter()
        .filter(|c| c.contribution != 0.0)
        .take(5)
    {
        let value = c.value.as_deref().unwrap_or("missing");
        detail.push_str(&format!(
            "- {} = {value}: {:+.3}\n",
            c.feature, c.contribution
        ));
    }
    if !a.path.is_empty() {
        let steps: Vec<&str> = a.path.iter().map(|s| s.text.as_str()).collect();
        detail.push_str(&format!("\nDecision path: {}\n", steps.join(" → ")));
    }
    if !a.missing.is_empty() {
        detail.push_str(&format!(
            "\nNot in the record (taken the model's missing-value way): {}\n",
            a.missing.join(", ")
        ));
    }
    detail.push_str(&format!(
        "\nModel `{}` ({}), trained on dataset `{}`; this read is audit event `{}`.",
        a.model.root,
        a.model.kind,
        a.model.dataset_root.as_deref().unwrap_or("unknown"),
        tx.to_hex()
    ));
    json!({
        "uuid": card_uuid(tx),
        "summary": summary,
        "indicator": indicator(a.band),
        "detail": detail,
        "source": {
            "label": format!("emrflow model {}", &a.model.root[..12.min(a.model.root.len())]),
            "topic": {"system": "https://emrflow.dev/cds", "code": SERVICE_ID, "display": "Stroke risk"},
        },
        "overrideReasons": OVERRIDE_REASONS
            .iter()
            .map(|(code, display)| json!({"system": OVERRIDE_SYSTEM, "code": code, "display": display}))
            .collect::<Vec<_>>(),
    })
}

/// The patient a `patient-view` request is about, checked.
pub fn patient_of(request: &Value) -> Result<String, ApiError> {
    match request.get("hook").and_then(Value::as_str) {
        Some("patient-view") => {}
        Some(_) => {
            return Err(ApiError::BadRequest(format!(
                "hook: the {SERVICE_ID} service answers patient-view"
            )));
        }
        None => return Err(ApiError::BadRequest("hook is required".into())),
    }
    if !request.get("hookInstance").is_some_and(Value::is_string) {
        return Err(ApiError::BadRequest("hookInstance is required".into()));
    }
    let id = request
        .pointer("/context/patientId")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::BadRequest("context.patientId is required".into()))?;
    Ok(id.strip_prefix("Patient/").unwrap_or(id).to_string())
}

/// Remembers the model of a card just issued.
pub fn issued(state: &AppState, card: &Value, model: Digest) {
    if let Some(uuid) = card["uuid"].as_str() {
        state.cards.remember(uuid, model);
    }
}

/// Records each feedback item of `request` on the ledger as `caller`'s; all are checked before
/// any is submitted.
pub async fn feedback(state: &AppState, caller: &Caller, request: &Value) -> Result<(), ApiError> {
    let items = request
        .get("feedback")
        .and_then(Value::as_array)
        .filter(|a| !a.is_empty())
        .ok_or_else(|| ApiError::BadRequest("feedback must be a non-empty array".into()))?;
    let mut calls = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = |field: &str| format!("feedback[{i}].{field}");
        let card = item
            .get("card")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::BadRequest(format!("{} is required", at("card"))))?;
        let model = state.cards.model_of(card).ok_or_else(|| {
            ApiError::NotFound(format!(
                "{}: no card of this server's with that uuid (issued before a restart, or \
                 long ago)",
                at("card")
            ))
        })?;
        let (outcome, reason) = match item.get("outcome").and_then(Value::as_str) {
            Some("accepted") => (CardOutcome::Accepted, None),
            Some("overridden") => {
                let code = item
                    .pointer("/overrideReason/reason/code")
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        ApiError::BadRequest(format!(
                            "{} is required for an overridden card",
                            at("overrideReason.reason.code")
                        ))
                    })?;
                if !OVERRIDE_REASONS.iter().any(|(c, _)| *c == code) {
                    return Err(ApiError::BadRequest(format!(
                        "{} is not one of the card's override reasons ({})",
                        at("overrideReason.reason.code"),
                        OVERRIDE_REASONS
                            .iter()
                            .map(|(c, _)| *c)
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
                (CardOutcome::Overridden, Some(code.to_string()))
            }
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "{} must be accepted or overridden",
                    at("outcome")
                )));
            }
        };
        calls.push(Call::As {
            reader: caller.key,
            token: caller.token.clone(),
            call: Box::new(Call::CardFeedback(CardFeedback {
                card: card.to_string(),
                model,
                outcome,
                reason,
            })),
        });
    }
    let client = state.provenance.client_with(state.gateway.clone());
    for call in calls {
        let receipt = client.call(call).await.map_err(|e| {
            if e.is_unavailable() {
                ApiError::Unavailable(format!(
                    "the ledger did not commit the feedback, so it was not recorded: {e}"
                ))
            } else {
                ApiError::Internal(format!("the feedback could not be submitted: {e}"))
            }
        })?;
        if let Outcome::Denied { reason } = &receipt.outcome {
            return Err(ApiError::Forbidden(format!(
                "the ledger's contract refused the feedback: {reason}"
            )));
        }
    }
    Ok(())
}
