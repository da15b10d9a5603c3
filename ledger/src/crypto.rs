//! Hashes, keys and signatures: SHA-256 [`Digest`]s, ed25519 [`PublicKey`]/[`Signature`]/
//! [`KeyPair`], and [`Enc`], the fixed-layout writer for the bytes that get signed. It owns no
//! randomness: keys come from a 32-byte seed chosen by the caller.
//!
//! Every signature covers a domain tag first, so a signature made for one purpose (a consensus
//! vote, a client transaction) can never be replayed as another.

use std::fmt;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};
/// A SHA-256 digest: a transaction, batch, block or Merkle node hash (one type across emrflow).
pub use merkle::Digest;

macro_rules! byte_newtype {
    ($(#[$doc:meta])* $name:ident, $len:expr, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub [u8; $len]);

        impl $name {
            /// Lowercase hex.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }

            /// Parses lowercase or uppercase hex of the exact length.
            pub fn from_hex(s: &str) -> Result<Self> {
                let bytes = hex::decode(s.trim()).map_err(|e| Error::Invalid {
                    what: $what,
                    reason: e.to_string(),
                })?;
                let arr: [u8; $len] = bytes.try_into().map_err(|v: Vec<u8>| Error::Invalid {
                    what: $what,
                    reason: format!("expected {} bytes, got {}", $len, v.len()),
                })?;
                Ok(Self(arr))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let h = self.to_hex();
                write!(f, "{}({}…)", stringify!($name), &h[..12.min(h.len())])
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                if s.is_human_readable() {
                    s.serialize_str(&self.to_hex())
                } else {
                    s.serialize_bytes(&self.0)
                }
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                if d.is_human_readable() {
                    let s = String::deserialize(d)?;
                    Self::from_hex(&s).map_err(serde::de::Error::custom)
                } else {
                    merkle::fixed_bytes::<_, $len>(d, $what).map(Self)
                }
            }
        }
    };
}

byte_newtype!(
    /// An ed25519 public key: a peer's or a client identity's.
    PublicKey,
    32,
    "public key"
);
byte_newtype!(
    /// An ed25519 signature.
    Signature,
    64,
    "signature"
);

impl PublicKey {
    /// Verifies `sig` over `domain ‖ message`. Malleable or malformed signatures are rejected
    /// (`verify_strict`).
    pub fn verify(&self, domain: &[u8], message: &[u8], sig: &Signature) -> bool {
        let Ok(key) = VerifyingKey::from_bytes(&self.0) else {
            return false;
        };
        verify_with(&key, domain, message, sig)
    }

    /// The decompressed key, for callers that verify many signatures by the same signer.
    pub fn verifying_key(&self) -> Option<VerifyingKey> {
        VerifyingKey::from_bytes(&self.0).ok()
    }
}

/// Verifies `sig` over `domain ‖ message` with an already decompressed key.
pub fn verify_with(key: &VerifyingKey, domain: &[u8], message: &[u8], sig: &Signature) -> bool {
    let sig = ed25519_dalek::Signature::from_bytes(&sig.0);
    let mut buf = Vec::with_capacity(domain.len() + message.len());
    buf.extend_from_slice(domain);
    buf.extend_from_slice(message);
    key.verify_strict(&buf, &sig).is_ok()
}

/// An ed25519 signing key. Deterministic: the same seed gives the same key, and signing uses no
/// randomness (RFC 8032).
#[derive(Clone)]
pub struct KeyPair {
    signing: SigningKey,
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyPair({:?})", self.public())
    }
}

impl KeyPair {
    /// The key whose secret is `seed`.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self {
            signing: SigningKey::from_bytes(&seed),
        }
    }

    /// A key derived from a label, for tests and the simulator only (never for real identities).
    pub fn from_label(label: &str) -> Self {
        Self::from_seed(Digest::of_parts(&[b"emrflow-ledger/test-key/", label.as_bytes()]).0)
    }

    /// The secret seed (to write a key file).
    pub fn seed(&self) -> [u8; 32] {
        self.signing.to_bytes()
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.signing.verifying_key().to_bytes())
    }

    /// Signs `domain ‖ message`.
    pub fn sign(&self, domain: &[u8], message: &[u8]) -> Signature {
        let mut buf = Vec::with_capacity(domain.len() + message.len());
        buf.extend_from_slice(domain);
        buf.extend_from_slice(message);
        Signature(self.signing.sign(&buf).to_bytes())
    }
}

/// A fixed-layout, length-prefixed byte writer for signed and hashed bytes. Infallible by
/// construction, so the PBFT core never has to handle an encoding error.
#[derive(Debug, Default, Clone)]
pub struct Enc(Vec<u8>);

impl Enc {
    /// Starts with a domain tag.
    pub fn new(tag: &[u8]) -> Self {
        let mut e = Self(Vec::with_capacity(128));
        e.bytes(tag);
        e
    }
    /// One byte.
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    /// A big-endian u32.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    /// A big-endian u64.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    /// A digest (fixed length, no prefix).
    pub fn digest(&mut self, d: &Digest) -> &mut Self {
        self.0.extend_from_slice(&d.0);
        self
    }
    /// A length-prefixed byte string.
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.u64(b.len() as u64);
        self.0.extend_from_slice(b);
        self
    }
    /// The bytes written.
    pub fn finish(&self) -> &[u8] {
        &self.0
    }
    /// The SHA-256 of the bytes written.
    pub fn hash(&self) -> Digest {
        Digest::of(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_domain_separation() {
        let k = KeyPair::from_label("a");
        let sig = k.sign(b"d1", b"hello");
        assert!(k.public().verify(b"d1", b"hello", &sig));
        assert!(!k.public().verify(b"d2", b"hello", &sig));
        assert!(!k.public().verify(b"d1", b"hellp", &sig));
        let other = KeyPair::from_label("b");
        assert!(!other.public().verify(b"d1", b"hello", &sig));
    }

    #[test]
    fn hex_and_binary_round_trip() {
        let d = Digest::of(b"x");
        let json = serde_json::to_string(&d).unwrap_or_default();
        assert_eq!(json, format!("\"{}\"", d.to_hex()));
        let back: Digest = serde_json::from_str(&json).unwrap_or(Digest::ZERO);
        assert_eq!(back, d);
        let bin = postcard::to_allocvec(&d).unwrap_or_default();
        assert_eq!(bin.len(), 33);
        let back: Digest = postcard::from_bytes(&bin).unwrap_or(Digest::ZERO);
        assert_eq!(back, d);
        let sig = KeyPair::from_label("a").sign(b"d", b"m");
        let bin = postcard::to_allocvec(&sig).unwrap_or_default();
        let back: Signature = postcard::from_bytes(&bin).unwrap_or(Signature([0; 64]));
        assert_eq!(back, sig);
        assert!(Digest::from_hex("abcd").is_err());
    }
}
