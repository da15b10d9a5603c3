//! The ceremonies against a software authenticator that builds its messages as WebAuthn
//! specifies them (client data JSON, authenticator data, COSE key, attestation object), so
//! each check is seen to pass for a good message and to fail for the one thing changed.

use p256::ecdsa::SigningKey;
use p256::ecdsa::signature::Signer as _;

use super::*;

const ORIGIN: &str = "https://localhost:8443";

fn rp() -> RelyingParty {
    RelyingParty {
        id: "localhost".into(),
        origins: vec![ORIGIN.into()],
    }
}

struct Authenticator {
    key: SigningKey,
    id: Vec<u8>,
    count: u32,
    flags: u8,
    rp_id: String,
}

impl Authenticator {
    fn new(seed: u8) -> Self {
        Self {
            key: SigningKey::from_slice(&[seed; 32]).unwrap_or_else(|e| panic!("{e}")),
            id: vec![seed, 1, 2, 3],
            count: 0,
            flags: USER_PRESENT | USER_VERIFIED,
            rp_id: "localhost".into(),
        }
    }

    fn cose_key(&self) -> Vec<u8> {
        let point = self.key.verifying_key().to_encoded_point(false);
        let (x, y) = (point.x().map(|x| x.to_vec()), point.y().map(|y| y.to_vec()));
        let key = Value::Map(vec![
            (Value::from(1), Value::from(2)),
            (Value::from(3), Value::from(-7)),
            (Value::from(-1), Value::from(1)),
            (Value::from(-2), Value::Bytes(x.unwrap_or_default())),
            (Value::from(-3), Value::Bytes(y.unwrap_or_default())),
        ]);
        let mut out = Vec::new();
        ciborium::ser::into_writer(&key, &mut out).unwrap_or_else(|e| panic!("{e}"));
        out
    }

    fn auth_data(&self, attested: bool) -> Vec<u8> {
        let mut out = Sha256::digest(self.rp_id.as_bytes()).to_vec();
        out.push(self.flags | if attested { ATTESTED } else { 0 });
        out.extend_from_slice(&self.count.to_be_bytes());
        if attested {
            out.extend_from_slice(&[0; 16]);
            out.extend_from_slice(&(self.id.len() as u16).to_be_bytes());
            out.extend_from_slice(&self.id);
            out.extend_from_slice(&self.cose_key());
        }
        out
    }

    fn create(&self, challenge: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let client = client_data("webauthn.create", challenge, ORIGIN);
        let object = Value::Map(vec![
            (Value::from("fmt"), Value::from("none")),
            (Value::from("attStmt"), Value::Map(Vec::new())),
            (Value::from("authData"), Value::Bytes(self.auth_data(true))),
        ]);
        let mut bytes = Vec::new();
        ciborium::ser::into_writer(&object, &mut bytes).unwrap_or_else(|e| panic!("{e}"));
        (client, bytes)
    }

    /// `(client data, authenticator data, signature)` of an assertion.
    fn get(&mut self, challenge: &[u8], origin: &str) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        self.count += 1;
        let client = client_data("webauthn.get", challenge, origin);
        let data = self.auth_data(false);
        let signature = self.sign(&data, &client);
        (client, data, signature)
    }

    fn sign(&self, data: &[u8], client: &[u8]) -> Vec<u8> {
        let mut signed = data.to_vec();
        signed.extend_from_slice(&Sha256::digest(client));
        let signature: Signature = self.key.sign(&signed);
        signature.to_der().as_bytes().to_vec()
    }
}

fn client_data(kind: &str, challenge: &[u8], origin: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "type": kind,
        "challenge": URL_SAFE_NO_PAD.encode(challenge),
        "origin": origin,
        "crossOrigin": false,
    }))
    .unwrap_or_default()
}

fn register(a: &Authenticator) -> Credential {
    let challenge = [7u8; 32];
    let (client, object) = a.create(&challenge);
    verify_registration(
        &rp(),
        &challenge,
        &client,
        &object,
        UserVerification::Required,
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

fn assert_with(
    credential: &Credential,
    challenge: &[u8],
    (client, data, signature): &(Vec<u8>, Vec<u8>, Vec<u8>),
) -> Result<u32, Error> {
    verify_assertion(
        &rp(),
        challenge,
        credential,
        &Assertion {
            credential_id: &credential.id,
            client_data_json: client,
            authenticator_data: data,
            signature,
        },
        UserVerification::Required,
    )
}

#[test]
fn a_registered_passkey_signs_in_and_its_counter_moves_on() {
    let mut a = Authenticator::new(3);
    let mut credential = register(&a);
    assert_eq!(credential.id, a.id);
    assert_eq!(credential.public_key.len(), 65);
    for _ in 0..2 {
        let challenge = bound_challenge(&[b"ledger", b"session key", b"expiry"]);
        let signed = a.get(&challenge, ORIGIN);
        credential.sign_count =
            assert_with(&credential, &challenge, &signed).unwrap_or_else(|e| panic!("{e}"));
    }
    assert_eq!(credential.sign_count, 2);
}

#[test]
fn each_check_refuses_the_one_thing_changed() {
    let mut a = Authenticator::new(4);
    let credential = register(&a);
    let challenge = [9u8; 32];

    let signed = a.get(&challenge, ORIGIN);
    assert_eq!(
        assert_with(&credential, &[8u8; 32], &signed),
        Err(Error::Challenge)
    );
    let elsewhere = a.get(&challenge, "https://evil.example");
    assert_eq!(
        assert_with(&credential, &challenge, &elsewhere),
        Err(Error::Origin("https://evil.example".into()))
    );
    // A registration's client data presented as an assertion's.
    let (create, _) = a.create(&challenge);
    let (_, data, _) = a.get(&challenge, ORIGIN);
    let signature = a.sign(&data, &create);
    assert!(matches!(
        assert_with(&credential, &challenge, &(create, data, signature)),
        Err(Error::ClientData(m)) if m.contains("webauthn.create")
    ));
    // Tampered authenticator data: the signature no longer covers it.
    let (client, mut data, signature) = a.get(&challenge, ORIGIN);
    data[36] ^= 0xff;
    assert_eq!(
        assert_with(&credential, &challenge, &(client, data, signature)),
        Err(Error::Signature)
    );
    // Another key's signature.
    let mut other = Authenticator::new(5);
    other.count = 100;
    let forged = other.get(&challenge, ORIGIN);
    assert_eq!(
        assert_with(&credential, &challenge, &forged),
        Err(Error::Signature)
    );
    // Another relying party's credential.
    let mut foreign = Authenticator::new(4);
    foreign.rp_id = "hospital.example".into();
    foreign.count = 200;
    assert_eq!(
        assert_with(&credential, &challenge, &foreign.get(&challenge, ORIGIN)),
        Err(Error::RelyingParty)
    );
    // Presence without verification, where verification is required.
    let mut lazy = Authenticator::new(4);
    lazy.flags = USER_PRESENT;
    lazy.count = 300;
    assert!(matches!(
        assert_with(&credential, &challenge, &lazy.get(&challenge, ORIGIN)),
        Err(Error::User(_))
    ));
}

#[test]
fn a_counter_that_goes_back_is_a_cloned_passkey() {
    let mut a = Authenticator::new(6);
    let mut credential = register(&a);
    let challenge = [1u8; 32];
    a.count = 10;
    credential.sign_count = assert_with(&credential, &challenge, &a.get(&challenge, ORIGIN))
        .unwrap_or_else(|e| panic!("{e}"));
    a.count = 5;
    assert_eq!(
        assert_with(&credential, &challenge, &a.get(&challenge, ORIGIN)),
        Err(Error::Counter {
            stored: 11,
            seen: 6
        })
    );
}

#[test]
fn registrations_with_certificates_or_other_keys_are_refused() {
    let a = Authenticator::new(7);
    let challenge = [2u8; 32];
    let client = client_data("webauthn.create", &challenge, ORIGIN);
    let with_x5c = Value::Map(vec![
        (Value::from("fmt"), Value::from("packed")),
        (
            Value::from("attStmt"),
            Value::Map(vec![(Value::from("x5c"), Value::Array(Vec::new()))]),
        ),
        (Value::from("authData"), Value::Bytes(a.auth_data(true))),
    ]);
    let mut bytes = Vec::new();
    ciborium::ser::into_writer(&with_x5c, &mut bytes).unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(
        verify_registration(&rp(), &challenge, &client, &bytes, UserVerification::Required),
        Err(Error::Attestation(m)) if m.contains("packed")
    ));
    // An RS256 key (kty RSA) is not ES256.
    let rsa = Value::Map(vec![
        (Value::from(1), Value::from(3)),
        (Value::from(3), Value::from(-257)),
    ]);
    assert!(matches!(cose_p256(&rsa), Err(Error::Key(_))));
    // Self attestation, signed by the credential's own key.
    let data = a.auth_data(true);
    let sig = a.sign(&data, &client);
    let packed = Value::Map(vec![
        (Value::from("fmt"), Value::from("packed")),
        (
            Value::from("attStmt"),
            Value::Map(vec![
                (Value::from("alg"), Value::from(-7)),
                (Value::from("sig"), Value::Bytes(sig)),
            ]),
        ),
        (Value::from("authData"), Value::Bytes(data)),
    ]);
    let mut bytes = Vec::new();
    ciborium::ser::into_writer(&packed, &mut bytes).unwrap_or_else(|e| panic!("{e}"));
    let credential = verify_registration(
        &rp(),
        &challenge,
        &client,
        &bytes,
        UserVerification::Required,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(credential.id, a.id);
}

#[test]
fn bound_challenges_differ_with_any_part_and_its_boundaries() {
    let a = bound_challenge(&[b"ab", b"c"]);
    assert_ne!(a, bound_challenge(&[b"a", b"bc"]));
    assert_ne!(a, bound_challenge(&[b"ab", b"d"]));
    assert_eq!(a, bound_challenge(&[b"ab", b"c"]));
}
