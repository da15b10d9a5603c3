//! The fingerprint as DataFusion functions, so it runs wherever the plan runs (embedded or on
//! Ballista executors, where functions travel by name):
//!
//! - `emr_fingerprint(c1, c2, …)`: an aggregate over the columns in canonical order. Each
//!   partition hashes its rows into leaves and sorts them; partial states (the sorted leaves)
//!   merge like any aggregate state; the final step buckets them and returns the bucket table
//!   (256 × `count_be64 ‖ root`) as bytes.
//! - `emr_row_leaf(c1, c2, …)`: the leaf hash of each row, for proofs.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, FixedSizeBinaryBuilder};
use arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::ScalarValue;
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, ColumnarValue, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature, Volatility,
};

use super::encode::{Hash32, LeafEncoder, leaf_hashes};
use super::tree::{BUCKETS, bucket_table};
use crate::error::Error;

/// Name of the fingerprint aggregate.
pub const FINGERPRINT_FN: &str = "emr_fingerprint";
/// Name of the row-leaf function.
pub const ROW_LEAF_FN: &str = "emr_row_leaf";

/// Bytes of one bucket in the aggregate's result.
pub const BUCKET_BYTES: usize = 8 + 32;

/// The fingerprint aggregate.
pub fn fingerprint_udaf() -> Arc<AggregateUDF> {
    Arc::new(AggregateUDF::new_from_impl(FingerprintUdaf {
        signature: Signature::variadic_any(Volatility::Immutable),
    }))
}

/// The row-leaf function.
pub fn row_leaf_udf() -> Arc<ScalarUDF> {
    Arc::new(ScalarUDF::new_from_impl(RowLeaf {
        signature: Signature::variadic_any(Volatility::Immutable),
    }))
}

/// Parses the aggregate's result into `(count, root)` per bucket.
pub fn parse_table(bytes: &[u8]) -> Option<Vec<(u64, Hash32)>> {
    if bytes.len() != BUCKETS * BUCKET_BYTES {
        return None;
    }
    bytes
        .chunks_exact(BUCKET_BYTES)
        .map(|c| {
            let count = u64::from_be_bytes(c[..8].try_into().ok()?);
            let root: Hash32 = c[8..].try_into().ok()?;
            Some((count, root))
        })
        .collect()
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct FingerprintUdaf {
    signature: Signature,
}

impl AggregateUDFImpl for FingerprintUdaf {
    fn name(&self) -> &str {
        FINGERPRINT_FN
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Binary)
    }

    fn accumulator(&self, _acc_args: AccumulatorArgs<'_>) -> DfResult<Box<dyn Accumulator>> {
        Ok(Box::new(LeafAccumulator::default()))
    }

    fn state_fields(&self, args: StateFieldsArgs<'_>) -> DfResult<Vec<FieldRef>> {
        // Large: a partition of 70M rows would overflow a 32-bit offset.
        Ok(vec![Arc::new(Field::new(
            format!("{}[leaves]", args.name),
            DataType::LargeBinary,
            true,
        ))])
    }
}

/// The leaves of the rows seen so far.
#[derive(Debug, Default)]
struct LeafAccumulator {
    leaves: Vec<Hash32>,
    encoder: LeafEncoder,
}

impl Accumulator for LeafAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> DfResult<()> {
        self.encoder.hash(values, &mut self.leaves)?;
        Ok(())
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> DfResult<()> {
        let Some(state) = states.first() else {
            return Ok(());
        };
        let state = state.as_binary::<i64>();
        for i in 0..state.len() {
            if state.is_null(i) {
                continue;
            }
            let bytes = state.value(i);
            let (leaves, rest) = bytes.as_chunks::<32>();
            if !rest.is_empty() {
                return Err(Error::Fingerprint(format!(
                    "a partial {FINGERPRINT_FN} state has {} bytes, not a multiple of 32",
                    bytes.len()
                ))
                .into());
            }
            self.leaves.extend_from_slice(leaves);
        }
        Ok(())
    }

    fn state(&mut self) -> DfResult<Vec<ScalarValue>> {
        // Unsorted: the final step buckets by first byte and sorts the buckets on all cores.
        // The leaves move into the state rather than being copied: DataFusion's contract is
        // that state() consumes the intermediate state and is called once.
        Ok(vec![ScalarValue::LargeBinary(Some(
            std::mem::take(&mut self.leaves).into_flattened(),
        ))])
    }

    fn evaluate(&mut self) -> DfResult<ScalarValue> {
        let (_, table) = bucket_table(std::mem::take(&mut self.leaves));
        let mut out = Vec::with_capacity(BUCKETS * BUCKET_BYTES);
        for (count, root) in table {
            out.extend_from_slice(&count.to_be_bytes());
            out.extend_from_slice(&root);
        }
        Ok(ScalarValue::Binary(Some(out)))
    }

    fn size(&self) -> usize {
        size_of_val(self) + self.leaves.capacity() * 32
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct RowLeaf {
    signature: Signature,
}

impl ScalarUDFImpl for RowLeaf {
    fn name(&self) -> &str {
        ROW_LEAF_FN
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::FixedSizeBinary(32))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let rows = args.number_rows;
        let arrays: Vec<ArrayRef> = args
            .args
            .iter()
            .map(|a| a.to_array(rows))
            .collect::<DfResult<_>>()?;
        let mut leaves = Vec::with_capacity(rows);
        leaf_hashes(&arrays, &mut leaves)?;
        let mut out = FixedSizeBinaryBuilder::with_capacity(rows, 32);
        for leaf in &leaves {
            out.append_value(leaf)?;
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}
