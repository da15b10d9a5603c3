//! Passkeys on the contract: a registration checked against the challenge bound to the ledger
//! and the identity, a sign-in opening a session the passkey approved, session tokens accepted
//! for their identity only while the session is open and the identity is not revoked.

use ciborium::Value;
use passkey::p256::ecdsa::signature::Signer as _;
use passkey::p256::ecdsa::{Signature, SigningKey};
use sha2::{Digest as _, Sha256};

use super::passkeys::{
    MAX_SESSION_MS, PasskeyRegistration, SessionOpening, registration_challenge, session_challenge,
};
use super::tests::execute_signed;
use super::*;
use crate::crypto::KeyPair;
use crate::token::{Claims, b64url_encode};

const ORIGIN: &str = "https://localhost:8443";

/// A platform authenticator in software: one P-256 credential, user present and verified.
struct Authenticator {
    key: SigningKey,
    id: Vec<u8>,
    count: u32,
}

impl Authenticator {
    fn new(seed: u8) -> Self {
        Self {
            key: SigningKey::from_slice(&[seed; 32]).expect("key"),
            id: vec![seed; 16],
            count: 0,
        }
    }

    fn auth_data(&self, attested: bool) -> Vec<u8> {
        let mut out = Sha256::digest(b"localhost").to_vec();
        out.push(0x05 | if attested { 0x40 } else { 0 });
        out.extend_from_slice(&self.count.to_be_bytes());
        if attested {
            let point = self.key.verifying_key().to_encoded_point(false);
            let cose = Value::Map(vec![
                (Value::from(1), Value::from(2)),
                (Value::from(3), Value::from(-7)),
                (Value::from(-1), Value::from(1)),
                (
                    Value::from(-2),
                    Value::Bytes(point.x().expect("x").to_vec()),
                ),
                (
                    Value::from(-3),
                    Value::Bytes(point.y().expect("y").to_vec()),
                ),
            ]);
            out.extend_from_slice(&[0; 16]);
            out.extend_from_slice(&(self.id.len() as u16).to_be_bytes());
            out.extend_from_slice(&self.id);
            ciborium::ser::into_writer(&cose, &mut out).expect("cbor");
        }
        out
    }

    fn register(&self, challenge: &[u8]) -> PasskeyRegistration {
        let object = Value::Map(vec![
            (Value::from("fmt"), Value::from("none")),
            (Value::from("attStmt"), Value::Map(Vec::new())),
            (Value::from("authData"), Value::Bytes(self.auth_data(true))),
        ]);
        let mut attestation_object = Vec::new();
        ciborium::ser::into_writer(&object, &mut attestation_object).expect("cbor");
        PasskeyRegistration {
            rp_id: "localhost".into(),
            origins: vec![ORIGIN.into()],
            client_data_json: client_data("webauthn.create", challenge),
            attestation_object,
        }
    }

    fn sign_in(&mut self, ledger: &Digest, session_key: &[u8], expires: Time) -> SessionOpening {
        self.count += 1;
        let client = client_data(
            "webauthn.get",
            &session_challenge(ledger, session_key, expires),
        );
        let data = self.auth_data(false);
        let mut signed = data.clone();
        signed.extend_from_slice(&Sha256::digest(&client));
        let signature: Signature = self.key.sign(&signed);
        SessionOpening {
            credential: self.id.clone(),
            client_data_json: client,
            authenticator_data: data,
            signature: signature.to_der().as_bytes().to_vec(),
            session_key: session_key.to_vec(),
            expires,
        }
    }
}

fn client_data(kind: &str, challenge: &[u8]) -> Vec<u8> {
    format!(
        r#"{{"type":"{kind}","challenge":"{}","origin":"{ORIGIN}","crossOrigin":false}}"#,
        b64url_encode(challenge)
    )
    .into_bytes()
}

/// A browser's session key and an ES256 token it signs for `identity`.
struct Browser {
    key: SigningKey,
}

impl Browser {
    fn new(seed: u8) -> Self {
        Self {
            key: SigningKey::from_slice(&[seed; 32]).expect("key"),
        }
    }

    fn public(&self) -> Vec<u8> {
        self.key
            .verifying_key()
            .to_encoded_point(false)
            .as_bytes()
            .to_vec()
    }

    fn token(&self, ledger: &Digest, identity: &PublicKey, now: Time, lifetime_s: u64) -> String {
        let header =
            serde_json::json!({"alg": "ES256", "typ": "JWT", "kid": hex::encode(self.public())});
        let claims = Claims {
            iss: identity.to_hex(),
            sub: identity.to_hex(),
            aud: ledger.to_hex(),
            iat: now.0 / 1000,
            exp: now.0 / 1000 + lifetime_s,
            jti: "s1".into(),
        };
        let input = format!(
            "{}.{}",
            b64url_encode(header.to_string().as_bytes()),
            b64url_encode(&serde_json::to_vec(&claims).expect("json"))
        );
        let signature: Signature = self.key.sign(input.as_bytes());
        format!("{input}.{}", b64url_encode(&signature.to_bytes()))
    }
}

struct World {
    state: State,
    ledger: Digest,
    nonce: u64,
    now: u64,
    admin: KeyPair,
    clinician: KeyPair,
    gateway: KeyPair,
}

impl World {
    fn new() -> Self {
        let ledger = Digest::of(b"passkey-ledger");
        let admin = KeyPair::from_label("admin");
        let mut w = Self {
            state: State::new(ledger, admin.public(), "admin"),
            ledger,
            nonce: 0,
            now: 1_800_000_000_000,
            clinician: KeyPair::from_label("clinician"),
            gateway: KeyPair::from_label("gateway"),
            admin,
        };
        let admin = w.admin.clone();
        for (key, role) in [
            (w.clinician.public(), Role::Clinician),
            (w.gateway.public(), Role::Gateway),
        ] {
            let o = w.exec(
                &admin,
                Call::RegisterIdentity {
                    key,
                    name: role.to_string(),
                    role,
                },
            );
            assert_eq!(o, Outcome::Accepted);
        }
        w
    }

    fn exec(&mut self, key: &KeyPair, call: Call) -> Outcome {
        self.nonce += 1;
        self.now += 1_000;
        execute_signed(
            &mut self.state,
            key,
            self.nonce,
            SeqNo(self.nonce),
            Time(self.now),
            call,
        )
    }

    /// A read of the clinician's own dataset accesses, made by the gateway with `token`.
    fn read_with(&mut self, token: String) -> Outcome {
        let gateway = self.gateway.clone();
        let reader = self.clinician.public();
        self.exec(
            &gateway,
            Call::As {
                reader,
                token,
                call: Box::new(Call::BreakGlass {
                    patient: Digest::of(b"patient"),
                    minutes: 5,
                    reason: "test".into(),
                }),
            },
        )
    }
}

fn denied(o: &Outcome) -> String {
    match o {
        Outcome::Denied { reason } => reason.clone(),
        other => panic!("accepted: {other:?}"),
    }
}

#[test]
fn a_passkey_registered_by_its_identity_opens_a_session_whose_tokens_read_as_it() {
    let mut w = World::new();
    let mut authenticator = Authenticator::new(1);
    let clinician = w.clinician.clone();

    // Registered by the clinician, for the challenge bound to the ledger and the clinician.
    let wrong = authenticator.register(&registration_challenge(&w.ledger, &w.admin.public()));
    let o = w.exec(&clinician, Call::RegisterPasskey(Box::new(wrong)));
    assert!(denied(&o).contains("challenge"), "{o:?}");
    let right = authenticator.register(&registration_challenge(&w.ledger, &clinician.public()));
    let o = w.exec(&clinician, Call::RegisterPasskey(Box::new(right.clone())));
    assert_eq!(o, Outcome::Accepted);
    assert_eq!(w.state.passkeys_of(&clinician.public()).len(), 1);
    let o = w.exec(&clinician, Call::RegisterPasskey(Box::new(right)));
    assert!(denied(&o).contains("already registered"));

    // A sign-in through the gateway opens the session the passkey approved.
    let browser = Browser::new(9);
    let expires = Time(w.now + 3_600_000);
    let opening = authenticator.sign_in(&w.ledger, &browser.public(), expires);
    let clinician_self = w.exec(&clinician, Call::OpenSession(Box::new(opening.clone())));
    assert!(
        denied(&clinician_self).contains("may not"),
        "only a gateway opens sessions"
    );
    let gateway = w.gateway.clone();
    // The clinician's own refused attempt consumed nothing: the same assertion opens it now.
    let o = w.exec(&gateway, Call::OpenSession(Box::new(opening.clone())));
    assert_eq!(o, Outcome::Accepted);
    let now = Time(w.now);
    let session = w.state.session(&browser.public(), now).expect("open");
    assert_eq!(session.identity, clinician.public());
    // Replayed, the assertion's counter has not moved on (and the key is used).
    let o = w.exec(&gateway, Call::OpenSession(Box::new(opening)));
    assert!(!o.is_accepted());

    // Its tokens read as the clinician, through the gateway.
    let token = browser.token(&w.ledger, &clinician.public(), Time(w.now), 600);
    assert_eq!(w.read_with(token), Outcome::Accepted);
    let event = w.state.audit.last().expect("event").clone();
    assert_eq!(event.actor, clinician.public());
    assert_eq!(event.via, Some(w.gateway.public()));

    // Not for another identity, not from a key that opened no session, not past the session.
    let for_admin = browser.token(&w.ledger, &w.admin.public(), Time(w.now), 600);
    assert!(!w.read_with(for_admin).is_accepted());
    let stranger = Browser::new(10).token(&w.ledger, &clinician.public(), Time(w.now), 600);
    assert!(denied(&w.read_with(stranger)).contains("never opened"));
    w.now = expires.0 - 60_000;
    let outliving = browser.token(&w.ledger, &clinician.public(), Time(w.now), 600);
    assert!(denied(&w.read_with(outliving)).contains("outlives"));

    // A revoked identity's session reads nothing.
    let admin = w.admin.clone();
    let o = w.exec(
        &admin,
        Call::RevokeIdentity {
            key: clinician.public(),
        },
    );
    assert_eq!(o, Outcome::Accepted);
    let token = browser.token(&w.ledger, &clinician.public(), Time(w.now), 30);
    assert!(denied(&w.read_with(token)).contains("revoked"));
}

#[test]
fn sessions_are_bounded_and_bound_to_their_key_and_end() {
    let mut w = World::new();
    let mut authenticator = Authenticator::new(2);
    let clinician = w.clinician.clone();
    let registration =
        authenticator.register(&registration_challenge(&w.ledger, &clinician.public()));
    assert_eq!(
        w.exec(&clinician, Call::RegisterPasskey(Box::new(registration))),
        Outcome::Accepted
    );
    let gateway = w.gateway.clone();
    let browser = Browser::new(11);

    // Longer than a shift.
    let too_long = Time(w.now + MAX_SESSION_MS + 60_000);
    let opening = authenticator.sign_in(&w.ledger, &browser.public(), too_long);
    assert!(denied(&w.exec(&gateway, Call::OpenSession(Box::new(opening)))).contains("hours"));

    // The assertion approved one key and one end: another key or end is refused.
    let expires = Time(w.now + 3_600_000);
    let mut opening = authenticator.sign_in(&w.ledger, &browser.public(), expires);
    opening.session_key = Browser::new(12).public();
    assert!(denied(&w.exec(&gateway, Call::OpenSession(Box::new(opening)))).contains("challenge"));
    let mut opening = authenticator.sign_in(&w.ledger, &browser.public(), expires);
    opening.expires = Time(expires.0 + 1);
    assert!(denied(&w.exec(&gateway, Call::OpenSession(Box::new(opening)))).contains("challenge"));

    // Policy: every role but the gateway registers its own passkeys; only a gateway opens.
    for role in Role::ALL {
        let register = policy(role, Action::RegisterPasskey);
        let open = policy(role, Action::OpenSession);
        if role == Role::Gateway {
            assert_eq!((register, open), (Permission::Denied, Permission::Allowed));
        } else {
            assert_eq!((register, open), (Permission::Allowed, Permission::Denied));
        }
    }
}
