//! A stable, seeded 64-bit hash of row values and the `ml_row_hash` scalar UDF built on it. The
//! train/test split, the cross-validation folds, the quantile-sketch sample, the calibration and
//! validation hold-outs and every tree's bootstrap multiplicities are all decided by this hash
//! of a row's key, so they depend on neither partitioning nor row order, and they are the same on
//! every executor. The algorithm is fixed here (a splitmix64-style mixer over 8-byte words) and
//! must never change silently: models would no longer reproduce. This module knows nothing
//! about trees.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, Int64Array, LargeStringArray, StringArray,
    StringViewArray, UInt64Array,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type, Int64Type};
use datafusion::common::ScalarValue;
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::{Expr, lit};

use crate::error::Error;

/// The name `ml_row_hash` is registered under.
pub const ROW_HASH_UDF: &str = "ml_row_hash";

/// Salts that derive independent hashes from one seed.
pub(crate) const SALT_TEST_SPLIT: u64 = 1;
/// Salt of the cross-validation fold hash.
pub(crate) const SALT_FOLD: u64 = 2;
/// Salt of the quantile-sketch sample hash.
pub(crate) const SALT_SAMPLE: u64 = 3;
/// Salt of the calibration hold-out hash.
pub(crate) const SALT_HOLDOUT: u64 = 4;
/// Salt of boosting's validation hash.
pub(crate) const SALT_VALIDATION: u64 = 5;
/// Salt of the row key hash that bootstrap and subsample multiplicities are drawn from.
pub(crate) const SALT_ROW_KEY: u64 = 6;
/// Salt of the per-tree multiplicity seeds.
pub(crate) const SALT_TREE_SAMPLE: u64 = 7;
/// Salt of the per-tree feature-subset seeds.
pub(crate) const SALT_TREE_FEATURES: u64 = 8;
/// Salt of the hash that picks the rows global explanations are averaged over.
pub(crate) const SALT_EXPLAIN: u64 = 9;

/// The seed of tree `index` for a purpose (a salt) under a user seed.
pub(crate) fn tree_seed(seed: u64, salt: u64, index: u64) -> u64 {
    mix64(derive_seed(seed, salt) ^ mix64(index.wrapping_add(1)))
}

/// The splitmix64 finalizer: a bijection on `u64` with full avalanche.
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The hash seed for one purpose (a salt) under a user seed.
pub(crate) fn derive_seed(seed: u64, salt: u64) -> u64 {
    mix64(seed ^ mix64(salt.wrapping_add(0x9e37_79b9_7f4a_7c15)))
}

/// Feeds values into a running hash.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RowHasher(u64);

impl RowHasher {
    pub(crate) fn new(seed: u64) -> Self {
        RowHasher(mix64(seed))
    }

    fn word(&mut self, w: u64) {
        self.0 = mix64(self.0.rotate_left(23) ^ w).wrapping_add(0x9e37_79b9_7f4a_7c15);
    }

    pub(crate) fn null(&mut self) {
        self.word(0);
    }

    pub(crate) fn int(&mut self, v: i64) {
        self.word(1);
        self.word(v as u64);
    }

    pub(crate) fn float(&mut self, v: f64) {
        // -0.0 equals 0.0 and all NaNs are one value, so equal numbers hash equally.
        let canonical = if v == 0.0 {
            0.0
        } else if v.is_nan() {
            f64::NAN
        } else {
            v
        };
        self.word(2);
        self.word(canonical.to_bits());
    }

    pub(crate) fn bytes(&mut self, b: &[u8]) {
        self.word(3);
        for chunk in b.chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.word(u64::from_le_bytes(w));
        }
        self.word(b.len() as u64);
    }

    pub(crate) fn finish(self) -> u64 {
        mix64(self.0)
    }
}

/// A column brought to one of the three canonical types the hash reads. Strings are read in
/// place in any of Arrow's string layouts (they hash alike), which spares a copy of the column.
enum Canonical {
    Int(Int64Array),
    Float(Float64Array),
    Str(StringArray),
    LargeStr(LargeStringArray),
    ViewStr(StringViewArray),
    Null,
}

fn canonical(array: &ArrayRef) -> DfResult<Canonical> {
    let dt = array.data_type();
    Ok(if dt == &DataType::Null {
        Canonical::Null
    } else if dt.is_integer() || dt == &DataType::Boolean {
        Canonical::Int(
            cast(array, &DataType::Int64)?
                .as_primitive::<Int64Type>()
                .clone(),
        )
    } else if dt.is_floating() || matches!(dt, DataType::Decimal128(..) | DataType::Decimal256(..))
    {
        Canonical::Float(
            cast(array, &DataType::Float64)?
                .as_primitive::<Float64Type>()
                .clone(),
        )
    } else if dt == &DataType::Utf8View {
        Canonical::ViewStr(array.as_string_view().clone())
    } else if dt == &DataType::LargeUtf8 {
        Canonical::LargeStr(array.as_string::<i64>().clone())
    } else {
        Canonical::Str(cast(array, &DataType::Utf8)?.as_string::<i32>().clone())
    })
}

/// Hashes the given columns row by row under `seed`.
pub(crate) fn hash_columns(seed: u64, columns: &[ArrayRef], rows: usize) -> DfResult<UInt64Array> {
    let canon = columns
        .iter()
        .map(canonical)
        .collect::<DfResult<Vec<_>>>()?;
    let mut out = Vec::with_capacity(rows);
    for row in 0..rows {
        let mut h = RowHasher::new(seed);
        for c in &canon {
            match c {
                Canonical::Null => h.null(),
                Canonical::Int(a) if a.is_valid(row) => h.int(a.value(row)),
                Canonical::Float(a) if a.is_valid(row) => h.float(a.value(row)),
                Canonical::Str(a) if a.is_valid(row) => h.bytes(a.value(row).as_bytes()),
                Canonical::LargeStr(a) if a.is_valid(row) => h.bytes(a.value(row).as_bytes()),
                Canonical::ViewStr(a) if a.is_valid(row) => h.bytes(a.value(row).as_bytes()),
                _ => h.null(),
            }
        }
        out.push(h.finish());
    }
    Ok(UInt64Array::from(out))
}

/// `ml_row_hash(seed UInt64, col, ...) -> UInt64`: the seeded stable hash of the given columns.
/// Integers of any width hash alike, as do `Utf8`, `LargeUtf8` and `Utf8View` strings.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct RowHashUdf {
    signature: Signature,
}

impl Default for RowHashUdf {
    fn default() -> Self {
        Self {
            signature: Signature::variadic_any(Volatility::Immutable),
        }
    }
}

impl RowHashUdf {
    /// The UDF, ready to register.
    pub fn udf() -> ScalarUDF {
        ScalarUDF::new_from_impl(Self::default())
    }
}

impl ScalarUDFImpl for RowHashUdf {
    fn name(&self) -> &str {
        ROW_HASH_UDF
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::UInt64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let rows = args.number_rows;
        let mut values = args.args.into_iter();
        let seed = match values.next() {
            Some(ColumnarValue::Scalar(ScalarValue::UInt64(Some(seed)))) => seed,
            _ => {
                return Err(Error::FunctionArgument {
                    function: "ml_row_hash",
                    reason: "the first argument must be a UInt64 seed literal".to_string(),
                }
                .into_datafusion());
            }
        };
        let columns = values
            .map(|v| v.into_array(rows))
            .collect::<DfResult<Vec<_>>>()?;
        Ok(ColumnarValue::Array(Arc::new(hash_columns(
            seed, &columns, rows,
        )?)))
    }
}

/// `ml_row_hash(seed, keys...)` as an expression.
pub(crate) fn row_hash_expr(seed: u64, keys: Vec<Expr>) -> Expr {
    let mut args = vec![lit(ScalarValue::UInt64(Some(seed)))];
    args.extend(keys);
    RowHashUdf::udf().call(args)
}

/// The hash value below which a row falls in a set of the given fraction.
pub(crate) fn fraction_threshold(fraction: f64) -> u64 {
    if fraction >= 1.0 {
        u64::MAX
    } else if fraction <= 0.0 {
        0
    } else {
        // 2^64 · fraction, saturating; the cast is exact enough for a sampling rate.
        (fraction * 18_446_744_073_709_551_616.0) as u64
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::Int32Array;

    use super::*;

    #[test]
    fn same_values_hash_alike_across_types() {
        let a: ArrayRef = Arc::new(Int32Array::from(vec![1, 2, 3]));
        let b: ArrayRef = Arc::new(Int64Array::from(vec![1, 2, 3]));
        assert_eq!(
            hash_columns(7, &[a], 3).unwrap(),
            hash_columns(7, &[b], 3).unwrap()
        );
        // Long enough for views that point into a data buffer, with a null among them.
        let values = vec![
            Some("v1"),
            None,
            Some("a visit key longer than twelve bytes"),
        ];
        let s: ArrayRef = Arc::new(StringArray::from(values.clone()));
        let l: ArrayRef = Arc::new(LargeStringArray::from(values.clone()));
        let v: ArrayRef = Arc::new(StringViewArray::from(values));
        let expected = hash_columns(7, &[s], 3).unwrap();
        assert_eq!(expected, hash_columns(7, &[l], 3).unwrap());
        assert_eq!(expected, hash_columns(7, &[v], 3).unwrap());
    }

    #[test]
    fn the_hash_is_pinned() {
        // Changing the hash would change every split and fold: this value must not move.
        let s: ArrayRef = Arc::new(StringArray::from(vec!["visit-1"]));
        let h = hash_columns(derive_seed(42, SALT_FOLD), &[s], 1)
            .unwrap()
            .value(0);
        assert_eq!(h, 0xe0fc_d20e_5aeb_c4d4, "{h:#x}");
    }

    #[test]
    fn seeds_and_salts_give_different_hashes() {
        let s: ArrayRef = Arc::new(StringArray::from(vec!["visit-1"]));
        let a = hash_columns(derive_seed(1, SALT_FOLD), std::slice::from_ref(&s), 1).unwrap();
        let b = hash_columns(derive_seed(2, SALT_FOLD), std::slice::from_ref(&s), 1).unwrap();
        let c = hash_columns(derive_seed(1, SALT_TEST_SPLIT), &[s], 1).unwrap();
        assert_ne!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn thresholds_split_fractions() {
        assert_eq!(fraction_threshold(0.0), 0);
        assert_eq!(fraction_threshold(1.0), u64::MAX);
        let t = fraction_threshold(0.2);
        let n = 20_000u64;
        let inside = (0..n).filter(|i| mix64(*i) < t).count() as f64 / n as f64;
        assert!((inside - 0.2).abs() < 0.01, "{inside}");
    }
}
