//! The digest type: a SHA-256 hash that prints and parses as 64 hex digits. It owns the
//! representation only; what is hashed, and how, belongs to its callers.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

use crate::Error;

/// 32 raw bytes, for the loops that hash millions of leaves and keep them in flat buffers.
pub type Hash32 = [u8; 32];

/// A SHA-256 digest: a Merkle leaf or node, a dataset or model root, a transaction, batch or
/// block hash.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Digest(pub Hash32);

impl Digest {
    /// The all-zero digest (the parent of the first block).
    pub const ZERO: Self = Self([0; 32]);

    /// SHA-256 of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    /// SHA-256 over several parts, as if concatenated.
    pub fn of_parts(parts: &[&[u8]]) -> Self {
        let mut h = Sha256::new();
        for p in parts {
            h.update(p);
        }
        Self(h.finalize().into())
    }

    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses lowercase or uppercase hex of exactly 32 bytes (surrounding white space ignored).
    pub fn from_hex(s: &str) -> Result<Self, Error> {
        let bad = |reason: String| Error::NotADigest {
            text: s.chars().take(80).collect(),
            reason,
        };
        let bytes = hex::decode(s.trim()).map_err(|e| bad(e.to_string().to_lowercase()))?;
        let arr: Hash32 = bytes
            .try_into()
            .map_err(|v: Vec<u8>| bad(format!("expected 32 bytes, got {}", v.len())))?;
        Ok(Self(arr))
    }
}

impl From<Hash32> for Digest {
    fn from(bytes: Hash32) -> Self {
        Self(bytes)
    }
}

impl std::str::FromStr for Digest {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Self::from_hex(s)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = self.to_hex();
        write!(f, "Digest({}…)", &h[..12])
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&self.to_hex())
        } else {
            s.serialize_bytes(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            Self::from_hex(&s).map_err(serde::de::Error::custom)
        } else {
            fixed_bytes(d, "digest").map(Self)
        }
    }
}

/// Reads exactly `N` bytes from a binary deserializer, naming `what` when the length differs.
/// Every fixed-size byte value on the wire (digests here, keys and signatures in the ledger)
/// is read through this one function, so they all fail the same way.
pub fn fixed_bytes<'de, D: Deserializer<'de>, const N: usize>(
    d: D,
    what: &str,
) -> Result<[u8; N], D::Error> {
    let v = d.deserialize_bytes(BytesVisitor)?;
    v.try_into().map_err(|v: Vec<u8>| {
        serde::de::Error::custom(format!("{what}: expected {N} bytes, got {}", v.len()))
    })
}

/// Reads a byte string from a binary deserializer.
struct BytesVisitor;

impl serde::de::Visitor<'_> for BytesVisitor {
    type Value = Vec<u8>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("bytes")
    }
    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
        Ok(v.to_vec())
    }
    fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_in_text_formats_and_bytes_in_binary_ones() {
        let d = Digest::of(b"x");
        let json = serde_json::to_string(&d).unwrap_or_default();
        assert_eq!(json, format!("\"{}\"", d.to_hex()));
        let back: Digest = serde_json::from_str(&json).unwrap_or(Digest::ZERO);
        assert_eq!(back, d);
        let bin = postcard::to_allocvec(&d).unwrap_or_default();
        assert_eq!(bin.len(), 33);
        let back: Digest = postcard::from_bytes(&bin).unwrap_or(Digest::ZERO);
        assert_eq!(back, d);
    }

    #[test]
    fn bad_hex_is_named() {
        for bad in ["abcd", "zz", &"0".repeat(66)] {
            let e = Digest::from_hex(bad).err().map(|e| e.to_string());
            assert!(e.is_some_and(|e| e.contains("hex digest")), "{bad}");
        }
        let upper = Digest::of(b"y").to_hex().to_uppercase();
        assert_eq!(Digest::from_hex(&upper).ok(), Some(Digest::of(b"y")));
        assert_eq!(format!("{:?}", Digest::ZERO), "Digest(000000000000…)");
    }
}
