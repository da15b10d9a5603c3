//! Passkeys and the browser sessions they open. An identity registers a passkey for itself
//! (signed with its own key, or through a gateway with its own token): the contract checks the
//! WebAuthn registration against a challenge bound to this ledger and that identity, and keeps
//! the credential's public key. A person then signs in from a browser without any key file: the
//! browser makes a session key it cannot export, the passkey signs a challenge bound to this
//! ledger, that session key and the session's end, and a gateway submits the assertion. The
//! contract verifies it (the user verified, the counter moved on) and opens the session, whose
//! key may then sign the person's tokens (ES256, [`crate::token::verify_session`]) until the
//! session ends or the identity is revoked. The ledger, not the server, decides who signed in.

use std::collections::BTreeMap;

use passkey::{Assertion, Credential, RelyingParty, UserVerification};
use serde::{Deserialize, Serialize};

use crate::crypto::{Digest, PublicKey};
use crate::ids::Time;

use super::Position;

/// The longest a browser session lasts: a clinician's shift.
pub const MAX_SESSION_MS: u64 = 12 * 3600 * 1000;
/// A session key: an uncompressed SEC1 P-256 point.
pub const SESSION_KEY_LEN: usize = 65;
/// Longest WebAuthn message a transaction may carry (client data, attestation, authenticator
/// data), in bytes.
pub const MAX_WEBAUTHN_LEN: usize = 4096;
/// Most origins a passkey may be used from.
pub const MAX_ORIGINS: usize = 8;

/// A passkey registration: what `navigator.credentials.create` returned, and the relying party
/// (RP ID and origins) it was made for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PasskeyRegistration {
    /// The RP ID the passkey is scoped to.
    pub rp_id: String,
    /// The origins of the pages it may sign in from.
    pub origins: Vec<String>,
    /// `response.clientDataJSON`.
    pub client_data_json: Vec<u8>,
    /// `response.attestationObject`.
    pub attestation_object: Vec<u8>,
}

/// A sign-in: the assertion of a passkey over [`session_challenge`], and the session it opens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionOpening {
    /// The passkey's credential id.
    pub credential: Vec<u8>,
    /// `response.clientDataJSON`.
    pub client_data_json: Vec<u8>,
    /// `response.authenticatorData`.
    pub authenticator_data: Vec<u8>,
    /// `response.signature` (DER).
    pub signature: Vec<u8>,
    /// The browser's session key (SEC1, uncompressed).
    pub session_key: Vec<u8>,
    /// When the session ends, at most [`MAX_SESSION_MS`] after the block that opens it.
    pub expires: Time,
}

/// A registered passkey.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Passkey {
    /// Whose it is.
    pub identity: PublicKey,
    /// The credential id.
    pub credential: Vec<u8>,
    /// Its public key (SEC1).
    pub public_key: Vec<u8>,
    /// The signature counter at its last use.
    pub sign_count: u32,
    /// The RP ID.
    pub rp_id: String,
    /// The origins.
    pub origins: Vec<String>,
    /// Where it was registered.
    pub registered: Position,
}

/// An open browser session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Who signed in.
    pub identity: PublicKey,
    /// With which passkey.
    pub credential: Vec<u8>,
    /// The session key (SEC1).
    pub key: Vec<u8>,
    /// When it ends.
    pub expires: Time,
    /// Where it was opened.
    pub opened: Position,
}

/// The challenge a passkey registration for `identity` on `ledger` signs.
pub fn registration_challenge(ledger: &Digest, identity: &PublicKey) -> [u8; 32] {
    passkey::bound_challenge(&[b"register", &ledger.0, &identity.0])
}

/// The challenge a sign-in signs: this ledger, the session key and the session's end, so the
/// assertion opens that session and no other.
pub fn session_challenge(ledger: &Digest, session_key: &[u8], expires: Time) -> [u8; 32] {
    passkey::bound_challenge(&[b"session", &ledger.0, session_key, &expires.0.to_be_bytes()])
}

fn check_bytes(what: &str, b: &[u8], max: usize) -> Result<(), String> {
    if b.len() > max {
        return Err(format!(
            "{what} of {} bytes is over the {max}-byte limit",
            b.len()
        ));
    }
    Ok(())
}

impl PasskeyRegistration {
    pub(super) fn check_limits(&self) -> Result<(), String> {
        super::check_text("rp_id", &self.rp_id, 253)?;
        if self.origins.is_empty() || self.origins.len() > MAX_ORIGINS {
            return Err(format!("a passkey names 1 to {MAX_ORIGINS} origins"));
        }
        for o in &self.origins {
            super::check_text("origin", o, 256)?;
        }
        check_bytes("clientDataJSON", &self.client_data_json, MAX_WEBAUTHN_LEN)?;
        check_bytes(
            "attestationObject",
            &self.attestation_object,
            MAX_WEBAUTHN_LEN,
        )
    }
}

impl SessionOpening {
    pub(super) fn check_limits(&self) -> Result<(), String> {
        check_bytes("credential id", &self.credential, 1023)?;
        check_bytes("clientDataJSON", &self.client_data_json, MAX_WEBAUTHN_LEN)?;
        check_bytes(
            "authenticatorData",
            &self.authenticator_data,
            MAX_WEBAUTHN_LEN,
        )?;
        check_bytes("signature", &self.signature, 80)?;
        if self.session_key.len() != SESSION_KEY_LEN {
            return Err(format!(
                "a session key is an uncompressed P-256 point of {SESSION_KEY_LEN} bytes"
            ));
        }
        Ok(())
    }
}

/// The passkeys by credential id and the sessions by key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct PasskeyState {
    pub(super) passkeys: BTreeMap<Vec<u8>, Passkey>,
    pub(super) sessions: BTreeMap<Vec<u8>, Session>,
}

impl PasskeyState {
    /// The passkey `registration` registers for `identity`, once the contract has checked it.
    pub(super) fn register(
        &self,
        ledger: &Digest,
        identity: PublicKey,
        registration: &PasskeyRegistration,
        position: Position,
    ) -> Result<Passkey, String> {
        let rp = RelyingParty {
            id: registration.rp_id.clone(),
            origins: registration.origins.clone(),
        };
        let Credential {
            id,
            public_key,
            sign_count,
        } = passkey::verify_registration(
            &rp,
            &registration_challenge(ledger, &identity),
            &registration.client_data_json,
            &registration.attestation_object,
            UserVerification::Required,
        )
        .map_err(|e| format!("passkey registration refused: {e}"))?;
        if self.passkeys.contains_key(&id) {
            return Err("passkey already registered".into());
        }
        Ok(Passkey {
            identity,
            credential: id,
            public_key,
            sign_count,
            rp_id: rp.id,
            origins: rp.origins,
            registered: position,
        })
    }

    /// The passkey with its counter moved on, and the session `opening` opens, once the
    /// contract has checked the assertion at the block's `time`.
    pub(super) fn open(
        &self,
        ledger: &Digest,
        opening: &SessionOpening,
        time: Time,
        position: Position,
    ) -> Result<(Passkey, Session), String> {
        let Some(passkey) = self.passkeys.get(&opening.credential) else {
            return Err("no such passkey".into());
        };
        if opening.expires.0 <= time.0 || opening.expires.0 - time.0 > MAX_SESSION_MS {
            return Err(format!(
                "a session ends after the block and within {} hours",
                MAX_SESSION_MS / 3_600_000
            ));
        }
        if self.sessions.contains_key(&opening.session_key) {
            return Err("the session key opened a session already".into());
        }
        let rp = RelyingParty {
            id: passkey.rp_id.clone(),
            origins: passkey.origins.clone(),
        };
        let credential = Credential {
            id: passkey.credential.clone(),
            public_key: passkey.public_key.clone(),
            sign_count: passkey.sign_count,
        };
        let sign_count = passkey::verify_assertion(
            &rp,
            &session_challenge(ledger, &opening.session_key, opening.expires),
            &credential,
            &Assertion {
                credential_id: &opening.credential,
                client_data_json: &opening.client_data_json,
                authenticator_data: &opening.authenticator_data,
                signature: &opening.signature,
            },
            UserVerification::Required,
        )
        .map_err(|e| format!("sign-in refused: {e}"))?;
        let session = Session {
            identity: passkey.identity,
            credential: passkey.credential.clone(),
            key: opening.session_key.clone(),
            expires: opening.expires,
            opened: position,
        };
        Ok((
            Passkey {
                sign_count,
                ..passkey.clone()
            },
            session,
        ))
    }
}
