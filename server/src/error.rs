//! The one error type of the API, answered as a FHIR `OperationOutcome` with the status that
//! says what happened. Messages name the parameter, the header or the grant at fault, never a
//! value a request carried.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Why a request was not served.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No credential, or one that does not verify (401).
    #[error("{0}")]
    Unauthenticated(String),
    /// The ledger's contract, or the caller's role, refused (403).
    #[error("{0}")]
    Forbidden(String),
    /// A malformed request: a parameter, an id, a header (400).
    #[error("{0}")]
    BadRequest(String),
    /// No such patient, resource or route (404).
    #[error("{0}")]
    NotFound(String),
    /// A body in a media type the route does not take (415).
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// Well-formed, but a value the operation cannot use: a category the model does not know
    /// (422).
    #[error("{0}")]
    Unprocessable(String),
    /// The ledger could not commit the read's audit event, or the store is not open: nothing
    /// was returned (503).
    #[error("{0}")]
    Unavailable(String),
    /// The request took longer than the server's limit (503, with a timeout code).
    #[error("{0}")]
    Timeout(String),
    /// Anything else (500); the message is logged without request data.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unavailable(_) | ApiError::Timeout(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The FHIR issue type (`OperationOutcome.issue.code`).
    fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthenticated(_) => "login",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::BadRequest(_) => "invalid",
            ApiError::NotFound(_) => "not-found",
            ApiError::UnsupportedMediaType(_) => "not-supported",
            ApiError::Unprocessable(_) => "processing",
            ApiError::Unavailable(_) => "transient",
            ApiError::Timeout(_) => "timeout",
            ApiError::Internal(_) => "exception",
        }
    }

    /// The error of a records operation: a refusal, an unavailable ledger, an unknown patient
    /// or a failure.
    pub fn from_records(e: records::Error) -> Self {
        if e.is_denied() {
            return ApiError::Forbidden(e.to_string());
        }
        if e.is_unavailable() {
            return ApiError::Unavailable(e.to_string());
        }
        let text = e.to_string();
        match e {
            records::Error::NotFound(_) => ApiError::NotFound(text),
            records::Error::Invalid(_) => ApiError::BadRequest(text),
            _ => ApiError::Internal(text),
        }
    }
}

impl From<ledger::Error> for ApiError {
    /// A ledger refusal (403), a ledger that did not answer (503), or a failure.
    fn from(e: ledger::Error) -> Self {
        if e.is_denied() {
            ApiError::Forbidden(e.to_string())
        } else if e.is_unavailable() {
            ApiError::Unavailable(e.to_string())
        } else {
            ApiError::Internal(e.to_string())
        }
    }
}

impl From<provenance::Error> for ApiError {
    /// A ledger refusal (403), a ledger that did not answer (503), a location or document the
    /// request named that is not what it must be (400), or a failure.
    fn from(e: provenance::Error) -> Self {
        if e.is_denied() {
            return ApiError::Forbidden(e.to_string());
        }
        if e.is_unavailable() {
            return ApiError::Unavailable(e.to_string());
        }
        let text = e.to_string();
        match e {
            provenance::Error::Invalid(_)
            | provenance::Error::File { .. }
            | provenance::Error::Pipeline(_)
            | provenance::Error::ObjectStore(_) => ApiError::BadRequest(text),
            _ => ApiError::Internal(text),
        }
    }
}

/// A FHIR `OperationOutcome` with one issue.
pub fn operation_outcome(severity: &str, code: &str, diagnostics: &str) -> serde_json::Value {
    json!({
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}],
    })
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            // The message names what the request asked for (a patient id): the caller may
            // see it, the log may not.
            tracing::warn!(
                status = status.as_u16(),
                code = self.code(),
                "request failed"
            );
        }
        let body = operation_outcome("error", self.code(), &self.to_string());
        let mut response = (status, axum::Json(body)).into_response();
        response.headers_mut().insert(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static(crate::fhir::FHIR_JSON),
        );
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}
