//! Passkeys (W3C WebAuthn Level 2) as emrflow checks them: registering an authenticator's
//! public key for an identity, and verifying the assertions it signs. The checks are the
//! relying party's steps of §7.1 and §7.2 for ES256 credentials (ECDSA on P-256 with SHA-256,
//! the algorithm every platform authenticator offers) with attestation `none` or self
//! attestation: a hospital trusts a passkey because a signed-in identity registered it, not
//! because of its maker's certificate.
//!
//! Nothing here keeps state. The caller makes each challenge ([`bound_challenge`] binds one to
//! what is being signed in, so an assertion cannot be replayed for anything else), stores the
//! [`Credential`] a registration returns, and stores the signature counter each assertion
//! returns. Errors say which check failed, never a key or a challenge.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ciborium::Value;
use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{Signature, VerifyingKey};
use sha2::{Digest as _, Sha256};

/// The curve crate, for callers that make or hold ES256 keys (a browser session's, in tests).
pub use p256;

/// Why a ceremony was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The client data is not the JSON WebAuthn defines, or is for another ceremony.
    #[error("clientDataJSON: {0}")]
    ClientData(String),
    /// The client data's challenge is not the one issued.
    #[error("the challenge is not the one issued for this ceremony")]
    Challenge,
    /// The ceremony ran in a page this relying party does not serve.
    #[error("origin {0} is not one of this server's origins")]
    Origin(String),
    /// The authenticator data is malformed.
    #[error("authenticatorData: {0}")]
    AuthenticatorData(String),
    /// The authenticator scoped the credential to another relying party.
    #[error("the credential belongs to another relying party (rpIdHash)")]
    RelyingParty,
    /// The user was not present, or not verified where verification is required.
    #[error("the authenticator did not confirm {0}")]
    User(&'static str),
    /// The attestation object is malformed or of an unsupported format.
    #[error("attestationObject: {0}")]
    Attestation(String),
    /// The credential's key is not an ES256 P-256 key.
    #[error("the credential key: {0}")]
    Key(String),
    /// The signature does not verify under the registered key.
    #[error("the signature does not verify under the registered passkey")]
    Signature,
    /// The assertion is of another credential than the one it is checked against.
    #[error("the assertion is of another credential")]
    Credential,
    /// The signature counter did not increase: the authenticator may have been cloned.
    #[error("the signature counter went from {stored} to {seen}: the passkey may have been cloned")]
    Counter {
        /// The counter stored at the last assertion.
        stored: u32,
        /// The counter this assertion carries.
        seen: u32,
    },
}

/// The relying party: the domain passkeys are scoped to, and the web origins its pages are
/// served from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelyingParty {
    /// The RP ID: a registrable domain (`hospital.example`, `localhost`).
    pub id: String,
    /// Exact origins (`https://console.hospital.example`, `https://localhost:8443`).
    pub origins: Vec<String>,
}

/// Whether the authenticator must have verified the user (PIN or biometrics), not only seen
/// them present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserVerification {
    /// UV must be set: the passkey alone signs a clinician in.
    Required,
    /// Presence is enough.
    Preferred,
}

/// A registered passkey.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// The credential id the authenticator chose.
    pub id: Vec<u8>,
    /// Its public key, SEC1 uncompressed (65 bytes).
    pub public_key: Vec<u8>,
    /// The signature counter at registration (0 for authenticators that keep none).
    pub sign_count: u32,
}

/// What a browser returns from `navigator.credentials.get`, decoded from base64url.
#[derive(Debug, Clone, Copy)]
pub struct Assertion<'a> {
    /// `rawId`.
    pub credential_id: &'a [u8],
    /// `response.clientDataJSON`.
    pub client_data_json: &'a [u8],
    /// `response.authenticatorData`.
    pub authenticator_data: &'a [u8],
    /// `response.signature` (ASN.1 DER).
    pub signature: &'a [u8],
}

/// A challenge bound to `parts` (for example a ledger's id, the session key being signed in
/// and the session's expiry): SHA-256 over a domain tag and each part with its length, so that
/// no two lists of parts give the same challenge.
pub fn bound_challenge(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"emrflow.passkey.challenge.v1");
    for part in parts {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.finalize().into()
}

/// Verifies a registration (`navigator.credentials.create` with attestation `none`) made for
/// `challenge` and returns the credential to store.
pub fn verify_registration(
    rp: &RelyingParty,
    challenge: &[u8],
    client_data_json: &[u8],
    attestation_object: &[u8],
    uv: UserVerification,
) -> Result<Credential, Error> {
    let client_data_hash = check_client_data(rp, "webauthn.create", challenge, client_data_json)?;
    let object: Value = ciborium::de::from_reader(attestation_object)
        .map_err(|_| Error::Attestation("not CBOR".into()))?;
    let field = |name: &str| {
        object.as_map().and_then(|m| {
            m.iter()
                .find(|(k, _)| k.as_text() == Some(name))
                .map(|(_, v)| v)
        })
    };
    let fmt = field("fmt")
        .and_then(Value::as_text)
        .ok_or_else(|| Error::Attestation("no fmt".into()))?;
    let statement = field("attStmt")
        .and_then(Value::as_map)
        .ok_or_else(|| Error::Attestation("no attStmt".into()))?;
    let auth_data = field("authData")
        .and_then(Value::as_bytes)
        .ok_or_else(|| Error::Attestation("no authData".into()))?;
    let data = AuthData::parse(auth_data)?;
    data.check(rp, uv)?;
    let Some((id, public_key)) = data.attested else {
        return Err(Error::AuthenticatorData("no attested credential".into()));
    };
    match fmt {
        "none" if statement.is_empty() => {}
        // Self attestation: signed by the credential's own key, with no certificate.
        "packed" if !statement.iter().any(|(k, _)| k.as_text() == Some("x5c")) => {
            let alg = statement
                .iter()
                .find(|(k, _)| k.as_text() == Some("alg"))
                .and_then(|(_, v)| v.as_integer())
                .map(i128::from);
            if alg != Some(-7) {
                return Err(Error::Attestation(
                    "packed self attestation is not ES256".into(),
                ));
            }
            let sig = statement
                .iter()
                .find(|(k, _)| k.as_text() == Some("sig"))
                .and_then(|(_, v)| v.as_bytes())
                .ok_or_else(|| Error::Attestation("packed attestation without sig".into()))?;
            verify_signature(&public_key, auth_data, &client_data_hash, sig)?;
        }
        other => {
            return Err(Error::Attestation(format!(
                "format {other} is not accepted (register with attestation \"none\")"
            )));
        }
    }
    Ok(Credential {
        id,
        public_key,
        sign_count: data.sign_count,
    })
}

/// Verifies an assertion (`navigator.credentials.get`) made for `challenge` by `credential`,
/// and returns the signature counter to store in place of the credential's.
pub fn verify_assertion(
    rp: &RelyingParty,
    challenge: &[u8],
    credential: &Credential,
    assertion: &Assertion<'_>,
    uv: UserVerification,
) -> Result<u32, Error> {
    if assertion.credential_id != credential.id.as_slice() {
        return Err(Error::Credential);
    }
    let client_data_hash =
        check_client_data(rp, "webauthn.get", challenge, assertion.client_data_json)?;
    let data = AuthData::parse(assertion.authenticator_data)?;
    data.check(rp, uv)?;
    verify_signature(
        &credential.public_key,
        assertion.authenticator_data,
        &client_data_hash,
        assertion.signature,
    )?;
    // Counters that both sides keep must grow; an authenticator that keeps none sends 0.
    if (data.sign_count != 0 || credential.sign_count != 0)
        && data.sign_count <= credential.sign_count
    {
        return Err(Error::Counter {
            stored: credential.sign_count,
            seen: data.sign_count,
        });
    }
    Ok(data.sign_count)
}

/// §7.1 steps 5–12 / §7.2 steps 10–16: the client data is this ceremony's, for this challenge,
/// in one of this relying party's pages. Returns its SHA-256.
fn check_client_data(
    rp: &RelyingParty,
    ceremony: &str,
    challenge: &[u8],
    json: &[u8],
) -> Result<[u8; 32], Error> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct ClientData {
        #[serde(rename = "type")]
        kind: String,
        challenge: String,
        origin: String,
        #[serde(default)]
        cross_origin: bool,
    }
    let data: ClientData = serde_json::from_slice(json)
        .map_err(|e| Error::ClientData(format!("not the client data JSON ({e})")))?;
    if data.kind != ceremony {
        return Err(Error::ClientData(format!(
            "type is {}, not {ceremony}",
            if data.kind.starts_with("webauthn.") {
                data.kind.as_str()
            } else {
                "another"
            }
        )));
    }
    let sent = URL_SAFE_NO_PAD
        .decode(data.challenge.trim_end_matches('='))
        .map_err(|_| Error::Challenge)?;
    if sent != challenge {
        return Err(Error::Challenge);
    }
    if !rp.origins.contains(&data.origin) {
        return Err(Error::Origin(data.origin));
    }
    if data.cross_origin {
        return Err(Error::ClientData(
            "the ceremony ran in a frame of another origin".into(),
        ));
    }
    Ok(Sha256::digest(json).into())
}

/// Whether `signature` (JWS ES256: `r ‖ s`, 64 bytes) is `public_key`'s (SEC1) over `message`.
pub fn verify_es256(public_key: &[u8], message: &[u8], signature: &[u8]) -> bool {
    let (Ok(key), Ok(signature)) = (
        VerifyingKey::from_sec1_bytes(public_key),
        Signature::from_slice(signature),
    ) else {
        return false;
    };
    key.verify(message, &signature).is_ok()
}

fn verify_signature(
    public_key: &[u8],
    auth_data: &[u8],
    client_data_hash: &[u8; 32],
    signature: &[u8],
) -> Result<(), Error> {
    let key = VerifyingKey::from_sec1_bytes(public_key)
        .map_err(|_| Error::Key("not a P-256 point".into()))?;
    let signature = Signature::from_der(signature).map_err(|_| Error::Signature)?;
    let mut signed = Vec::with_capacity(auth_data.len() + 32);
    signed.extend_from_slice(auth_data);
    signed.extend_from_slice(client_data_hash);
    key.verify(&signed, &signature)
        .map_err(|_| Error::Signature)
}

/// Authenticator data (§6.1): the RP ID hash, flags, counter, and on registration the attested
/// credential (its id and COSE key, as a SEC1 point).
#[derive(Debug)]
struct AuthData {
    rp_id_hash: [u8; 32],
    flags: u8,
    sign_count: u32,
    attested: Option<(Vec<u8>, Vec<u8>)>,
}

const USER_PRESENT: u8 = 0x01;
const USER_VERIFIED: u8 = 0x04;
const ATTESTED: u8 = 0x40;

impl AuthData {
    fn parse(bytes: &[u8]) -> Result<Self, Error> {
        let short = || Error::AuthenticatorData("too short".into());
        let rp_id_hash: [u8; 32] = bytes
            .get(..32)
            .ok_or_else(short)?
            .try_into()
            .map_err(|_| short())?;
        let flags = *bytes.get(32).ok_or_else(short)?;
        let count: [u8; 4] = bytes
            .get(33..37)
            .ok_or_else(short)?
            .try_into()
            .map_err(|_| short())?;
        let mut attested = None;
        if flags & ATTESTED != 0 {
            // aaguid (16), credential id length (2), credential id, COSE key.
            let rest = bytes.get(37..).ok_or_else(short)?;
            let len = rest.get(16..18).ok_or_else(short)?;
            let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
            let id = rest.get(18..18 + len).ok_or_else(short)?.to_vec();
            let mut key_bytes = rest.get(18 + len..).ok_or_else(short)?;
            let key: Value = ciborium::de::from_reader(&mut key_bytes)
                .map_err(|_| Error::Key("not a COSE key".into()))?;
            attested = Some((id, cose_p256(&key)?));
        }
        Ok(Self {
            rp_id_hash,
            flags,
            sign_count: u32::from_be_bytes(count),
            attested,
        })
    }

    fn check(&self, rp: &RelyingParty, uv: UserVerification) -> Result<(), Error> {
        let expected: [u8; 32] = Sha256::digest(rp.id.as_bytes()).into();
        if self.rp_id_hash != expected {
            return Err(Error::RelyingParty);
        }
        if self.flags & USER_PRESENT == 0 {
            return Err(Error::User("the user's presence"));
        }
        if uv == UserVerification::Required && self.flags & USER_VERIFIED == 0 {
            return Err(Error::User("the user's verification (PIN or biometrics)"));
        }
        Ok(())
    }
}

/// A COSE_Key (RFC 9053) as a SEC1 uncompressed point: kty EC2 (2), alg ES256 (-7), crv P-256
/// (1), x and y of 32 bytes each.
fn cose_p256(key: &Value) -> Result<Vec<u8>, Error> {
    let map = key
        .as_map()
        .ok_or_else(|| Error::Key("not a COSE key".into()))?;
    let get = |label: i64| {
        map.iter()
            .find(|(k, _)| k.as_integer().map(i128::from) == Some(i128::from(label)))
            .map(|(_, v)| v)
    };
    let int = |label: i64| get(label).and_then(Value::as_integer).map(i128::from);
    if int(1) != Some(2) || int(3) != Some(-7) || int(-1) != Some(1) {
        return Err(Error::Key(
            "not an ES256 P-256 key (register with pubKeyCredParams alg -7)".into(),
        ));
    }
    let coordinate = |label: i64| {
        get(label)
            .and_then(Value::as_bytes)
            .filter(|b| b.len() == 32)
            .ok_or_else(|| Error::Key("a coordinate is not 32 bytes".into()))
    };
    let mut point = vec![0x04];
    point.extend_from_slice(coordinate(-2)?);
    point.extend_from_slice(coordinate(-3)?);
    VerifyingKey::from_sec1_bytes(&point).map_err(|_| Error::Key("not on the curve".into()))?;
    Ok(point)
}

#[cfg(test)]
mod tests;
