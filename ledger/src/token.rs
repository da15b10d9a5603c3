//! Identity tokens: JSON Web Tokens (RFC 7519) signed with an identity's own ed25519 key (the
//! `EdDSA` algorithm of RFC 8037), short-lived and bound to one ledger. A person or a script
//! makes one from its key file (`emrflow token`) and presents it as an HTTP bearer token; the
//! server checks it against the identity registered on the ledger, and passes it on with every
//! read it makes for that identity, so that the contract itself checks that the identity asked
//! (a server cannot read in the name of someone who never signed in).
//!
//! Verification is pure (the ledger's block time is the clock) and strict: header `alg` must be
//! `EdDSA` and `kid` the signer's key; `iss`, `sub` and `kid` must agree; `aud` must be this
//! ledger's id; the lifetime is at most [`MAX_LIFETIME_MS`]; a token issued more than
//! [`CLOCK_SKEW_MS`] in the future or already expired is refused.

use serde::{Deserialize, Serialize};

use crate::crypto::{Digest, KeyPair, PublicKey, Signature};
use crate::ids::Time;

/// The longest a token may live: its holder's reads are recorded under this identity.
pub const MAX_LIFETIME_MS: u64 = 15 * 60 * 1000;
/// How far ahead of the verifier's clock a token's issue time may be.
pub const CLOCK_SKEW_MS: u64 = 60 * 1000;
/// The longest token accepted (a compact EdDSA JWT is about 400 bytes).
pub const MAX_TOKEN_LEN: usize = 2048;

/// The registered claims a token carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The issuer: the identity's public key (hex).
    pub iss: String,
    /// The subject: the same key.
    pub sub: String,
    /// The audience: the ledger's id (hex of the genesis hash).
    pub aud: String,
    /// Issued at (seconds since the Unix epoch).
    pub iat: u64,
    /// Expires at (seconds since the Unix epoch).
    pub exp: u64,
    /// A unique id.
    pub jti: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    alg: String,
    typ: String,
    kid: String,
}

/// A token for `key` on the ledger `ledger`, issued at `now`, living `lifetime_ms` (capped at
/// [`MAX_LIFETIME_MS`]), with id `jti`.
pub fn issue(key: &KeyPair, ledger: &Digest, now: Time, lifetime_ms: u64, jti: &str) -> String {
    let me = key.public().to_hex();
    let header = Header {
        alg: "EdDSA".into(),
        typ: "JWT".into(),
        kid: me.clone(),
    };
    let iat = now.0 / 1000;
    let claims = Claims {
        iss: me.clone(),
        sub: me,
        aud: ledger.to_hex(),
        iat,
        exp: iat + lifetime_ms.min(MAX_LIFETIME_MS) / 1000,
        jti: jti.to_string(),
    };
    let input = format!(
        "{}.{}",
        b64url_encode(&serde_json::to_vec(&header).unwrap_or_default()),
        b64url_encode(&serde_json::to_vec(&claims).unwrap_or_default())
    );
    let sig = key.sign(b"", input.as_bytes());
    format!("{input}.{}", b64url_encode(&sig.0))
}

/// The identity that signed `token` and its claims, if the token is valid for `ledger` at
/// `now`; otherwise why not (never echoing the token).
pub fn verify(token: &str, ledger: &Digest, now: Time) -> Result<(PublicKey, Claims), String> {
    let Compact {
        header,
        input,
        payload: p,
        signature: s,
    } = Compact::split(token, "EdDSA")?;
    let key = PublicKey::from_hex(&header.kid).map_err(|_| "the token's kid is not a key")?;
    let sig: [u8; 64] = b64url_decode(s)
        .and_then(|b| b.try_into().ok())
        .ok_or("bad token signature")?;
    if !key.verify(b"", input.as_bytes(), &Signature(sig)) {
        return Err("the token's signature does not verify".into());
    }
    let claims: Claims = serde_json::from_slice(&b64url_decode(p).ok_or("bad token payload")?)
        .map_err(|_| "bad token claims")?;
    if claims.iss != header.kid || claims.sub != header.kid {
        return Err("the token's issuer, subject and key differ".into());
    }
    check_claims(&claims, ledger, now)?;
    Ok((key, claims))
}

/// Whether `token` claims to be a browser session's (`ES256`), which [`verify_session`] checks.
pub fn is_session_token(token: &str) -> bool {
    token
        .split('.')
        .next()
        .and_then(b64url_decode)
        .and_then(|h| serde_json::from_slice::<Header>(&h).ok())
        .is_some_and(|h| h.alg == "ES256")
}

/// A browser session's token (RFC 7515 `ES256`, signed by the session key a passkey opened,
/// [`crate::contracts::passkeys`]): its session key (the `kid`, SEC1 hex) and claims, if it is
/// well made and valid for `ledger` at `now`. The caller checks that the session is open and
/// belongs to the token's subject.
pub fn verify_session(
    token: &str,
    ledger: &Digest,
    now: Time,
) -> Result<(Vec<u8>, Claims), String> {
    let Compact {
        header,
        input,
        payload: p,
        signature: s,
    } = Compact::split(token, "ES256")?;
    let key = hex::decode(&header.kid).map_err(|_| "the token's kid is not a key")?;
    let sig = b64url_decode(s).ok_or("bad token signature")?;
    if !passkey::verify_es256(&key, input.as_bytes(), &sig) {
        return Err("the token's signature does not verify".into());
    }
    let claims: Claims = serde_json::from_slice(&b64url_decode(p).ok_or("bad token payload")?)
        .map_err(|_| "bad token claims")?;
    if claims.iss != claims.sub {
        return Err("the token's issuer and subject differ".into());
    }
    check_claims(&claims, ledger, now)?;
    Ok((key, claims))
}

/// A compact JWT's parts: its header (of the algorithm expected), the signed input, and the
/// payload and signature as sent.
struct Compact<'a> {
    header: Header,
    input: &'a str,
    payload: &'a str,
    signature: &'a str,
}

impl<'a> Compact<'a> {
    fn split(token: &'a str, alg: &str) -> Result<Self, String> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(format!("the token is longer than {MAX_TOKEN_LEN} bytes"));
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("the token is not a compact JWT (header.payload.signature)".into());
        };
        let header: Header = serde_json::from_slice(&b64url_decode(h).ok_or("bad token header")?)
            .map_err(|_| "bad token header")?;
        if header.alg != alg {
            return Err(format!("token algorithm {:?} is not {alg}", header.alg));
        }
        Ok(Self {
            header,
            input: &token[..h.len() + 1 + p.len()],
            payload: p,
            signature: s,
        })
    }
}

/// The audience and lifetime checks every token passes.
fn check_claims(claims: &Claims, ledger: &Digest, now: Time) -> Result<(), String> {
    if claims.aud != ledger.to_hex() {
        return Err("the token is for another ledger".into());
    }
    let (iat, exp) = (claims.iat * 1000, claims.exp * 1000);
    if exp <= iat || exp - iat > MAX_LIFETIME_MS {
        return Err(format!(
            "a token lives at most {} minutes",
            MAX_LIFETIME_MS / 60_000
        ));
    }
    if iat > now.0 + CLOCK_SKEW_MS {
        return Err("the token is issued in the future".into());
    }
    if exp <= now.0 {
        return Err("the token has expired".into());
    }
    Ok(())
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// base64url without padding (RFC 4648 §5), as JWTs use.
pub fn b64url_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

/// The bytes of unpadded base64url text; `None` for anything else (padding, other alphabets,
/// non-canonical trailing bits).
pub fn b64url_decode(text: &str) -> Option<Vec<u8>> {
    if text.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    for chunk in text.as_bytes().chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            let v = ALPHABET.iter().position(|a| a == c)? as u32;
            n |= v << (18 - 6 * i);
        }
        let bytes = chunk.len() - 1;
        let unused = 8 * (3 - bytes);
        if unused < 24 && n & ((1 << unused) - 1) != 0 {
            return None;
        }
        for i in 0..bytes {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger() -> Digest {
        Digest::of(b"genesis")
    }

    #[test]
    fn base64url_round_trips_and_matches_rfc4648() {
        for (plain, text) in [
            (&b""[..], ""),
            (b"f", "Zg"),
            (b"fo", "Zm8"),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg"),
            (b"fooba", "Zm9vYmE"),
            (b"foobar", "Zm9vYmFy"),
            (&[0xfb, 0xff], "-_8"),
        ] {
            assert_eq!(b64url_encode(plain), text);
            assert_eq!(b64url_decode(text).as_deref(), Some(plain));
        }
        assert_eq!(b64url_decode("Zg=="), None);
        assert_eq!(b64url_decode("Zh"), None, "non-zero trailing bits");
        assert_eq!(b64url_decode("Z"), None);
    }

    #[test]
    fn a_token_verifies_only_for_its_key_ledger_and_lifetime() {
        let key = KeyPair::from_label("clinician");
        let now = Time(1_800_000_000_000);
        let token = issue(&key, &ledger(), now, 10 * 60 * 1000, "t1");
        let (who, claims) = verify(&token, &ledger(), now).expect("valid");
        assert_eq!(who, key.public());
        assert_eq!(claims.exp - claims.iat, 600);
        assert!(
            verify(&token, &Digest::of(b"other"), now)
                .unwrap_err()
                .contains("another ledger")
        );
        assert!(
            verify(&token, &ledger(), Time(now.0 + 600_000))
                .unwrap_err()
                .contains("expired")
        );
        assert!(
            verify(&token, &ledger(), Time(now.0 - 120_000))
                .unwrap_err()
                .contains("future")
        );
        // Forged: another key's signature under this kid, or a changed claim.
        let other = issue(&KeyPair::from_label("x"), &ledger(), now, 60_000, "t2");
        let (h, rest) = token.split_once('.').expect("dots");
        let (_, sig) = other.rsplit_once('.').expect("dots");
        let (p, _) = rest.split_once('.').expect("dots");
        let forged = format!("{h}.{p}.{sig}");
        assert!(
            verify(&forged, &ledger(), now)
                .unwrap_err()
                .contains("signature")
        );
        let mut claims_changed: Claims =
            serde_json::from_slice(&b64url_decode(p).expect("b64")).expect("json");
        claims_changed.exp += 3600;
        let p2 = b64url_encode(&serde_json::to_vec(&claims_changed).expect("json"));
        let (_, sig) = token.rsplit_once('.').expect("dots");
        assert!(
            verify(&format!("{h}.{p2}.{sig}"), &ledger(), now)
                .unwrap_err()
                .contains("signature")
        );
        assert!(verify("a.b", &ledger(), now).is_err());
        // Lifetimes are capped at issue.
        let long = issue(&key, &ledger(), now, 24 * 3600 * 1000, "t3");
        let (_, c) = verify(&long, &ledger(), now).expect("valid");
        assert_eq!((c.exp - c.iat) * 1000, MAX_LIFETIME_MS);
    }
}
