//! Instant, explained stroke risk: the model in service (checked against its anchor before it
//! serves, replaced without a restart when a new anchored model is published at its location),
//! raw clinical values taken to the model's units by its training data's fitted transforms
//! (the same arithmetic as `emrflow predict`), and an answer that says why: the probability and the class at the
//! model's operating threshold, a band, the decision path in raw units, every feature's exact
//! contribution (TreeSHAP), and the roots of the model and of its training data.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use ml::PathStep;
use provenance::Provenance;
use provenance::score::{LoadedModel, load_verified, model_version};
use serde::Serialize;
use std::sync::atomic::Ordering;

use crate::error::ApiError;
use crate::state::AppState;

/// The model in service and where it was loaded from.
#[derive(Debug)]
pub struct ServedModel {
    /// The model, its training data's transforms and roots.
    pub loaded: LoadedModel,
    /// Where it was published (a model directory on any store).
    pub location: String,
}

/// The model in service, swapped whole: a request holds the model it started with to its end.
#[derive(Debug, Default)]
pub struct ModelSlot {
    current: RwLock<Option<Arc<ServedModel>>>,
}

impl ModelSlot {
    /// The model in service, if any.
    pub fn get(&self) -> Option<Arc<ServedModel>> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Puts `model` in service.
    pub fn set(&self, model: ServedModel) {
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::new(model));
    }

    /// The model in service, or the 503 that says there is none.
    pub fn require(&self) -> Result<Arc<ServedModel>, ApiError> {
        self.get().ok_or_else(|| {
            ApiError::Unavailable(
                "no model is in service: start the server with --model (a model published by \
                 `emrflow train`)"
                    .into(),
            )
        })
    }
}

/// Loads the model at `location` once it passes its anchor check.
pub async fn load(location: &str, provenance: &Provenance) -> provenance::Result<ServedModel> {
    let ctx = engine::embedded_context(Some(1))?;
    let loaded = load_verified(&ctx, location, provenance).await?;
    Ok(ServedModel {
        loaded,
        location: location.to_string(),
    })
}

/// Watches `location` every `every`: a changed model file is checked against its anchor and put
/// in service if it passes; one that fails is refused (logged and counted) and the model in
/// service stays. Ends when `stop` changes.
pub async fn watch(
    state: Arc<AppState>,
    location: String,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let Ok(ctx) = engine::embedded_context(Some(1)) else {
        tracing::warn!("cannot make a session to watch the model; it will not be replaced");
        return;
    };
    // The bytes last looked at, loaded or refused: a refused file is not rechecked every poll.
    let mut seen = model_version(&ctx, &location).await.ok();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        let bytes = match model_version(&ctx, &location).await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the model location; the model in service stays");
                continue;
            }
        };
        if seen.as_ref() == Some(&bytes) {
            continue;
        }
        seen = Some(bytes);
        match load_verified(&ctx, &location, &state.provenance).await {
            Ok(loaded) => {
                tracing::info!(root = %loaded.root, "a new anchored model is in service");
                state.put_in_service(ServedModel {
                    loaded,
                    location: location.clone(),
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "the model published at the location fails its anchor check and is not served");
                state
                    .metrics
                    .models_rejected
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// A risk band: `high` at or above the model's operating threshold (the class it predicts),
/// `moderate` above the share of strokes among the rows it was trained on, `low` otherwise. The
/// codes are FHIR's risk-probability codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Band {
    /// At or below the training population's rate.
    Low,
    /// Above the training population's rate, below the operating threshold.
    Moderate,
    /// At or above the operating threshold.
    High,
}

impl Band {
    /// The band's code and display.
    pub fn code(self) -> (&'static str, &'static str) {
        match self {
            Band::Low => ("low", "Low likelihood"),
            Band::Moderate => ("moderate", "Moderate likelihood"),
            Band::High => ("high", "High likelihood"),
        }
    }
}

/// One feature's share of the answer.
#[derive(Debug, Clone, Serialize)]
pub struct Share {
    /// The feature.
    pub feature: String,
    /// The raw value used (absent: the value was missing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Its TreeSHAP contribution, in the model's output units.
    pub contribution: f64,
}

/// The model an answer came from.
#[derive(Debug, Clone, Serialize)]
pub struct ModelRef {
    /// Its anchored root.
    pub root: String,
    /// The root of the dataset it was trained on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dataset_root: Option<String>,
    /// `decision_tree`, `random_forest` or `gbt`.
    pub kind: &'static str,
    /// Where it was published.
    pub location: String,
}

/// A risk, with why.
#[derive(Debug, Clone, Serialize)]
pub struct Assessment {
    /// The risk to show: the model's probability after its calibration.
    pub probability: f64,
    /// The model's own probability, before calibration.
    pub model_probability: f64,
    /// The class at the model's operating threshold.
    pub class: u8,
    /// Class 1 at or above this.
    pub threshold: f64,
    /// The band.
    pub band: Band,
    /// The answer in one line.
    pub explanation: String,
    /// The decision path in raw units (a decision tree's; empty for ensembles).
    pub path: Vec<PathStep>,
    /// What the contributions add up to (`probability` or `log_odds`).
    pub output: ml::Output,
    /// The model's expected output over its training rows.
    pub expected_value: f64,
    /// Every feature's contribution, largest first; with `expected_value` they add up to the
    /// model's output before calibration.
    pub contributions: Vec<Share>,
    /// Features without a value (the model sends them its missing-value way).
    pub missing: Vec<String>,
    /// The model.
    pub model: ModelRef,
}

/// Assesses one row whose raw values `value` gives by feature name (`None`: missing). A value the
/// model cannot take is refused by feature name (422), never echoed.
pub fn assess(
    served: &ServedModel,
    value: &dyn Fn(&str) -> Option<String>,
) -> Result<Assessment, ApiError> {
    let model = &served.loaded.model;
    let features = model.features();
    let raw: Vec<Option<String>> = features.iter().map(|f| value(&f.name)).collect();
    let manifest = &served.loaded.manifest;
    let stored = features
        .iter()
        .zip(&raw)
        .map(|(f, r)| {
            r.as_deref()
                .map(|r| pipeline::transforms::fitted_value(manifest, &f.name, r))
                .transpose()
                .map_err(ApiError::Unprocessable)
        })
        .collect::<Result<Vec<Option<f64>>, ApiError>>()?;
    let internal = |e: ml::Error| ApiError::Internal(format!("the model cannot score: {e}"));
    let scored = model.predict(&stored).map_err(internal)?;
    let explained = model.explain(&stored).map_err(internal)?;
    // The one-line explanation names at most three; `contributions` below has every feature.
    let top = explained.top(features, &stored, 3);
    let mut contributions: Vec<Share> = features
        .iter()
        .zip(&raw)
        .zip(&explained.contributions)
        .map(|((f, r), c)| Share {
            feature: f.name.clone(),
            value: r.clone(),
            contribution: *c,
        })
        .collect();
    contributions.sort_by(|a, b| {
        b.contribution
            .abs()
            .total_cmp(&a.contribution.abs())
            .then_with(|| a.feature.cmp(&b.feature))
    });
    let training = model.training();
    let base_rate = if training.rows > 0 {
        training.class_counts[1] as f64 / training.rows as f64
    } else {
        0.0
    };
    let band = if scored.prediction == 1 {
        Band::High
    } else if scored.calibrated_probability > base_rate {
        Band::Moderate
    } else {
        Band::Low
    };
    Ok(Assessment {
        probability: scored.calibrated_probability,
        model_probability: scored.probability,
        class: scored.prediction,
        threshold: scored.threshold,
        band,
        explanation: scored.explain(&top),
        path: scored.path,
        output: explained.output,
        expected_value: explained.expected_value,
        contributions,
        missing: features
            .iter()
            .zip(&raw)
            .filter(|(_, r)| r.is_none())
            .map(|(f, _)| f.name.clone())
            .collect(),
        model: ModelRef {
            root: served.loaded.root.to_hex(),
            dataset_root: served.loaded.dataset_root.map(|d| d.to_hex()),
            kind: model.kind(),
            location: served.location.clone(),
        },
    })
}
