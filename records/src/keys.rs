//! Keys: the master key (from a file or the environment, never from a job file or the store),
//! the keys derived from it, each patient's data key wrapped by it, and sealing with
//! XChaCha20-Poly1305.
//!
//! Derived keys are HMAC-SHA256 of the master key over a label, so one secret opens a store:
//! - the pseudonym key turns a patient id into the pseudonym the ledger sees;
//! - the handle key turns a record id into the key a record is stored under;
//! - the wrapping key seals each patient's data key (the associated data binds it to the store
//!   and the patient, so a wrapped key copied onto another patient does not open).
//!
//! A patient's records are sealed with the patient's own data key; erasing the patient destroys
//! that key, and with it every record and salt of the patient (crypto-shredding).

use std::path::Path;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use merkle::Digest;
use rand::{RngCore, SeedableRng, TryRngCore};
use rand_chacha::ChaCha20Rng;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// The environment variable a master key is read from (64 hex digits) when no file is named.
pub const MASTER_KEY_ENV: &str = "EMRFLOW_MASTER_KEY";

const NONCE_LEN: usize = 24;

/// The store's master key.
pub struct MasterKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    /// Reads the key from `file` (64 hex digits, surrounding whitespace ignored), else from
    /// [`MASTER_KEY_ENV`].
    pub fn load(file: Option<&Path>) -> Result<Self> {
        match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    Error::Invalid(format!(
                        "cannot read the master key {}: {e}",
                        path.display()
                    ))
                })?;
                Self::from_hex(text.trim())
                    .map_err(|e| Error::Invalid(format!("master key {}: {e}", path.display())))
            }
            None => {
                let text = std::env::var(MASTER_KEY_ENV).map_err(|_| {
                    Error::Invalid(format!(
                        "no master key: set {MASTER_KEY_ENV} (64 hex digits) or pass \
                         --master-key-file FILE"
                    ))
                })?;
                Self::from_hex(text.trim())
                    .map_err(|e| Error::Invalid(format!("{MASTER_KEY_ENV}: {e}")))
            }
        }
    }

    /// A key from 64 hex digits.
    pub fn from_hex(text: &str) -> std::result::Result<Self, String> {
        let bytes =
            Zeroizing::new(hex::decode(text).map_err(|_| "is not 64 hex digits".to_string())?);
        let key: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| format!("is {} bytes, not 32", bytes.len()))?;
        Ok(Self(Zeroizing::new(key)))
    }

    /// A fresh random key, as 64 hex digits.
    pub fn generate_hex() -> String {
        let mut key = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng
            .try_fill_bytes(key.as_mut())
            .expect("the operating system gives random bytes");
        hex::encode(key.as_ref())
    }

    fn derive(&self, label: &str) -> Zeroizing<[u8; 32]> {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(self.0.as_ref()).expect("HMAC takes any key");
        mac.update(b"emrflow-records/");
        mac.update(label.as_bytes());
        Zeroizing::new(mac.finalize().into_bytes().into())
    }

    /// The keys a store works with.
    pub fn keys(&self) -> Keys {
        let keyed = |label: &str| {
            <Hmac<Sha256> as Mac>::new_from_slice(self.derive(label).as_ref())
                .expect("HMAC takes any key")
        };
        Keys {
            pseudonym: keyed("pseudonym/v1"),
            handle: keyed("handle/v1"),
            wrap: Sealer::new(&self.derive("wrap/v1")),
        }
    }
}

/// The keys derived from the master key. The HMACs are kept keyed (their inner and outer pads
/// hashed once), since an import computes two for every record.
pub struct Keys {
    pseudonym: Hmac<Sha256>,
    handle: Hmac<Sha256>,
    wrap: Sealer,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(..)")
    }
}

fn hmac(keyed: &Hmac<Sha256>, parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = keyed.clone();
    for p in parts {
        mac.update(&(p.len() as u64).to_le_bytes());
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

impl Keys {
    /// The pseudonym of a patient id: what the ledger knows the patient by.
    pub fn pseudonym(&self, patient_id: &str) -> Digest {
        Digest(hmac(&self.pseudonym, &[patient_id.as_bytes()]))
    }

    /// The storage handle of a record of `kind` with id `id`: record ids are identifiers too,
    /// and are never stored in clear.
    pub fn handle(&self, kind: u8, id: &str) -> [u8; 16] {
        let full = hmac(&self.handle, &[&[kind], id.as_bytes()]);
        full[..16].try_into().expect("16 of 32 bytes")
    }

    /// The sealer of the data keys.
    pub fn wrap(&self) -> &Sealer {
        &self.wrap
    }
}

/// XChaCha20-Poly1305 under one key. Sealed bytes are the 24-byte random nonce, then the
/// ciphertext and tag.
pub struct Sealer(XChaCha20Poly1305);

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

impl Sealer {
    /// A sealer under `key`.
    pub fn new(key: &[u8; 32]) -> Self {
        Self(XChaCha20Poly1305::new(key.into()))
    }

    /// Seals `plain`, bound to `aad`, with a nonce from `rng`.
    pub fn seal(&self, rng: &mut Rng, plain: &[u8], aad: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill(&mut nonce);
        let sealed = self
            .0
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: plain, aad })
            .expect("XChaCha20-Poly1305 seals any message that fits in memory");
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// Opens what [`Sealer::seal`] sealed with the same `aad`; `None` if the key, the data or
    /// the associated data differ.
    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        if sealed.len() < NONCE_LEN {
            return None;
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        self.0
            .decrypt(XNonce::from_slice(nonce), Payload { msg: body, aad })
            .ok()
            .map(Zeroizing::new)
    }
}

/// The random source of data keys, salts and nonces: ChaCha20 seeded from the operating system
/// once per store handle, rather than a system call for each of a million records.
pub struct Rng(ChaCha20Rng);

impl std::fmt::Debug for Rng {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Rng(..)")
    }
}

impl Rng {
    /// A generator seeded from the operating system.
    pub fn from_os() -> Self {
        Self(ChaCha20Rng::from_os_rng())
    }

    /// Fills `out` with random bytes.
    pub fn fill(&mut self, out: &mut [u8]) {
        self.0.fill_bytes(out);
    }

    /// 32 random bytes.
    pub fn bytes32(&mut self) -> [u8; 32] {
        let mut b = [0u8; 32];
        self.fill(&mut b);
        b
    }
}

/// One patient's data key.
pub struct DataKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(..)")
    }
}

impl DataKey {
    /// A fresh data key.
    pub fn generate(rng: &mut Rng) -> Self {
        Self(Zeroizing::new(rng.bytes32()))
    }

    /// The data key sealed under the wrapping key, bound to `aad` (store and patient).
    pub fn wrap(&self, keys: &Keys, rng: &mut Rng, aad: &[u8]) -> Vec<u8> {
        keys.wrap().seal(rng, self.0.as_ref(), aad)
    }

    /// Opens a wrapped data key.
    pub fn unwrap(keys: &Keys, wrapped: &[u8], aad: &[u8]) -> Option<Self> {
        let plain = keys.wrap().open(wrapped, aad)?;
        let key: [u8; 32] = plain.as_slice().try_into().ok()?;
        Some(Self(Zeroizing::new(key)))
    }

    /// The sealer of this patient's records.
    pub fn sealer(&self) -> Sealer {
        Sealer::new(&self.0)
    }
}
