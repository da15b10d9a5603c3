//! What every request shares: the record store, the ledger connection, the gateway identity
//! the server reads as, the model in service, the limits and the metrics.

use std::time::Duration;

use ledger::crypto::{Digest, KeyPair};
use provenance::Provenance;
use records::Store;

use crate::metrics::Metrics;
use crate::risk::ModelSlot;

/// The server's shared state.
#[derive(Debug)]
pub struct AppState {
    /// The record store.
    pub store: Store,
    /// The engine a compliance check reads datasets and models with (embedded: a check reads
    /// one artifact, not a cluster's worth).
    pub engine: engine::Engine,
    /// The ledger.
    pub provenance: Provenance,
    /// The gateway identity reads are submitted with (each for its reader, with the reader's
    /// token).
    pub gateway: KeyPair,
    /// The ledger's id: the audience a token must name.
    pub ledger_id: Digest,
    /// The base URL links in Bundles start with (`https://host:port/fhir`).
    pub fhir_base: String,
    /// The longest a request may take.
    pub request_timeout: Duration,
    /// Counters for `/metrics`.
    pub metrics: Metrics,
    /// The model risk is assessed with.
    pub model: ModelSlot,
    /// The model each recent decision-support card came from.
    pub cards: crate::cds::IssuedCards,
}

impl AppState {
    /// Puts a model that passed its anchor check in service, and counts it.
    pub fn put_in_service(&self, model: crate::risk::ServedModel) {
        self.model.set(model);
        self.metrics
            .models_loaded
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}
