//! Who is asking: every request but the probes and metrics carries an identity token
//! (`Authorization: Bearer`, [`ledger::token`]). The token must verify for this ledger now, and
//! its identity must be registered and not revoked on the ledger at this request: a revoked
//! identity is refused on its next request, not when its token expires.

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use ledger::contracts::Role;
use ledger::crypto::PublicKey;

use crate::error::ApiError;
use crate::state::AppState;

/// The identity a request is bound to.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Its public key.
    pub key: PublicKey,
    /// Its registered name.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// The token it presented, passed on with each read it makes (the contract checks it).
    pub token: String,
}

impl Caller {
    /// Ledger queries with this caller's rights: asked by the gateway, for the caller, with the
    /// caller's own token.
    pub fn reader<'a>(
        &self,
        state: &'a AppState,
    ) -> ledger::client::Reader<'a, provenance::connection::Conn> {
        state
            .provenance
            .reader_with(state.gateway.clone())
            .for_reader(self.key, &self.token)
    }

    /// Refuses a caller whose role is not one of `roles`, naming `what` was asked.
    pub fn require_role(&self, roles: &[Role], what: &str) -> Result<(), ApiError> {
        if roles.contains(&self.role) {
            return Ok(());
        }
        let names: Vec<String> = roles.iter().map(ToString::to_string).collect();
        Err(ApiError::Forbidden(format!(
            "{what} is for the {} roles; this identity's role is {}",
            names.join(" and "),
            self.role
        )))
    }
}

/// The caller of a request with `headers`.
pub async fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err(ApiError::Unauthenticated(
            "send one Authorization: Bearer TOKEN header (make a token with `emrflow token`)"
                .into(),
        ));
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            ApiError::Unauthenticated("the Authorization header is not `Bearer TOKEN`".into())
        })?;
    let (key, _) = ledger::token::verify(token, &state.ledger_id, ledger::node::unix_ms())
        .map_err(|e| ApiError::Unauthenticated(format!("the bearer token: {e}")))?;
    let identity = state
        .provenance
        .reader_with(state.gateway.clone())
        .identity(key)
        .await
        .map_err(|e| {
            if e.is_unavailable() {
                ApiError::Unavailable(format!("the ledger did not answer who is asking: {e}"))
            } else {
                ApiError::Internal(format!("asking the ledger who is asking: {e}"))
            }
        })?;
    match identity {
        None => Err(ApiError::Unauthenticated(
            "the token's identity is not registered on this ledger".into(),
        )),
        Some(i) if i.revoked => Err(ApiError::Unauthenticated(
            "the token's identity is revoked".into(),
        )),
        Some(i) => Ok(Caller {
            key,
            name: i.name,
            role: i.role,
            token: token.to_string(),
        }),
    }
}
