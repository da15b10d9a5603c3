//! Exact, canonical JSON for floating-point numbers. A model's bytes must not change when it is
//! read back and written again (its hash is anchored), but JSON parsers, serde_json's default
//! among them, may round a 17-digit number to a neighbouring `f64`. Floats in a model are
//! therefore written as strings holding Rust's shortest round-trip representation (`0.1`,
//! `1e-7`) and parsed back with the standard library's correctly rounded parser. Readers accept
//! plain JSON numbers too, so hand-written files and configs stay natural. This module only
//! (de)serializes.

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serializer};

/// The canonical text of a float.
pub(crate) fn to_text(x: f64) -> String {
    format!("{x:?}")
}

struct FloatVisitor;

impl Visitor<'_> for FloatVisitor {
    type Value = f64;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a number, or a string holding one")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<f64, E> {
        v.trim()
            .parse::<f64>()
            .map_err(|_| E::custom(format!("{v:?} is not a number")))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<f64, E> {
        Ok(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<f64, E> {
        Ok(v as f64)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<f64, E> {
        Ok(v as f64)
    }
}

/// `#[serde(with = "crate::exact")]` for an `f64` field.
pub(crate) fn serialize<S: Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&to_text(*x))
}

/// See [`serialize`].
pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    d.deserialize_any(FloatVisitor)
}

/// A float that (de)serializes exactly; for arrays of floats.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Exact(f64);

impl serde::Serialize for Exact {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize(&self.0, s)
    }
}

impl<'de> Deserialize<'de> for Exact {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize(d).map(Exact)
    }
}

/// `#[serde(with = "crate::exact::pair")]` for an `[f64; 2]` field.
pub(crate) mod pair {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::Exact;

    pub(crate) fn serialize<S: Serializer>(x: &[f64; 2], s: S) -> Result<S::Ok, S::Error> {
        [Exact(x[0]), Exact(x[1])].serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[f64; 2], D::Error> {
        let [a, b] = <[Exact; 2]>::deserialize(d)?;
        Ok([a.0, b.0])
    }
}

/// `#[serde(with = "crate::exact::vec")]` for a `Vec<f64>` field.
pub(crate) mod vec {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::Exact;

    pub(crate) fn serialize<S: Serializer>(x: &[f64], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(x.iter().map(|v| Exact(*v)))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
        Ok(Vec::<Exact>::deserialize(d)?
            .into_iter()
            .map(|e| e.0)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct T {
        #[serde(with = "crate::exact")]
        x: f64,
        #[serde(with = "crate::exact::pair")]
        p: [f64; 2],
    }

    #[test]
    fn hard_floats_round_trip_exactly() {
        // serde_json's default parser rounds this one to a neighbour.
        for x in [0.46755674611012277, 0.1, 1e-7, -3.5, 1e300, 0.0] {
            let t = T {
                x,
                p: [x, 1.0 / 3.0],
            };
            let text = serde_json::to_string(&t).unwrap();
            let back: T = serde_json::from_str(&text).unwrap();
            assert_eq!(back.x.to_bits(), x.to_bits(), "{text}");
            assert_eq!(serde_json::to_string(&back).unwrap(), text);
        }
    }

    #[test]
    fn plain_numbers_are_accepted() {
        let t: T = serde_json::from_str(r#"{"x": 2, "p": [0.5, "0.25"]}"#).unwrap();
        assert_eq!(
            t,
            T {
                x: 2.0,
                p: [0.5, 0.25]
            }
        );
        assert!(serde_json::from_str::<T>(r#"{"x": "abc", "p": [0, 0]}"#).is_err());
    }
}
