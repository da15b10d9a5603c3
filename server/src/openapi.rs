//! `GET /openapi.json`: the OpenAPI 3.1 description of every route. Each route is declared with
//! its description where it is routed ([`crate::routes::router`] uses `routes!`), so the document
//! and the router cannot drift apart.

use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ComponentsBuilder, InfoBuilder, OpenApi, OpenApiBuilder};

/// The document every route's description is added to: the API's name and version, and the
/// bearer-token scheme every route but the probes, metrics and this document requires.
pub fn base() -> OpenApi {
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("emrflow")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "FHIR R4-shaped record reads decided and audited by the ledger's contracts, \
                     explained stroke risk from an anchored model, CDS Hooks, and the \
                     compliance endpoints. Authenticate with `Authorization: Bearer TOKEN` \
                     (an identity token from `emrflow token`).",
                ))
                .build(),
        )
        .components(Some(
            ComponentsBuilder::new()
                .security_scheme(
                    "bearer",
                    SecurityScheme::Http(
                        HttpBuilder::new()
                            .scheme(HttpAuthScheme::Bearer)
                            .bearer_format("JWT (EdDSA, RFC 8037)")
                            .build(),
                    ),
                )
                .build(),
        ))
        .security(Some(vec![SecurityRequirement::new(
            "bearer",
            Vec::<String>::new(),
        )]))
        .build()
}

/// The finished document, serialized once.
#[derive(Debug, Clone)]
pub struct Document(Arc<Vec<u8>>);

impl Document {
    /// The document of `spec`.
    pub fn of(spec: OpenApi) -> Self {
        // A document of plain strings and maps always serializes.
        Self(Arc::new(
            spec.to_pretty_json().unwrap_or_default().into_bytes(),
        ))
    }
}

/// `GET /openapi.json`.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", security(()),
    responses((status = 200, description = "This document")))]
pub async fn document(axum::Extension(doc): axum::Extension<Document>) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        doc.0.as_ref().clone(),
    )
        .into_response()
}
