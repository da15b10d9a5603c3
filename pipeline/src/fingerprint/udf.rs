//! The fingerprint as DataFusion functions, so it runs wherever the plan runs (embedded or on
//! Ballista executors, where functions travel by name):
//!
//! - `emr_fingerprint(c1, c2, …)`: an aggregate over the columns in canonical order. Each
//!   partition hashes its rows into leaves, groups them by bucket and sorts each bucket; its
//!   partial state is that buffer ([`sort_into_buckets`]). The final step merges the sorted
//!   runs bucket by bucket, hashes the buckets on all cores and returns the bucket table
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

use super::buckets::{BUCKETS, SortedLeaves, available_threads, merged_table, sort_into_buckets};
use super::encode::{Hash32, LeafEncoder, leaf_hashes};
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

/// Leaves per chunk of an accumulator's own leaves (2 MiB).
const CHUNK_LEAVES: usize = 64 * 1024;

/// The leaves of the rows this accumulator hashed, and the partial states it merged.
#[derive(Debug, Default)]
pub(crate) struct LeafAccumulator {
    /// Own leaves, in chunks of [`CHUNK_LEAVES`]: a partition's leaves are tens of megabytes,
    /// and a single vector would copy them each time it grew.
    leaves: Vec<Vec<Hash32>>,
    encoder: LeafEncoder,
    /// Partial states (see [`state_fields`](FingerprintUdaf::state_fields)), kept as the
    /// arrays they arrived in rather than copied.
    merged: Vec<ArrayRef>,
}

impl LeafAccumulator {
    /// The partial states merged so far, read.
    fn merged_parts(&self) -> DfResult<Vec<SortedLeaves<'_>>> {
        let mut parts = Vec::with_capacity(self.merged.len());
        for state in &self.merged {
            for bytes in state.as_binary::<i64>().iter().flatten() {
                parts.push(SortedLeaves::parse(bytes).ok_or_else(|| corrupt(bytes.len()))?);
            }
        }
        Ok(parts)
    }
}

fn corrupt(len: usize) -> datafusion::error::DataFusionError {
    Error::Fingerprint(format!(
        "a partial {FINGERPRINT_FN} state of {len} bytes does not match its bucket counts"
    ))
    .into()
}

impl Accumulator for LeafAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> DfResult<()> {
        let rows = values.first().map_or(0, |v| v.len());
        if self
            .leaves
            .last()
            .is_none_or(|c| c.capacity() - c.len() < rows)
        {
            self.leaves.push(Vec::with_capacity(CHUNK_LEAVES.max(rows)));
        }
        if let Some(chunk) = self.leaves.last_mut() {
            self.encoder.hash(values, chunk)?;
        }
        Ok(())
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> DfResult<()> {
        let Some(state) = states.first() else {
            return Ok(());
        };
        // Checked now, so a bad state is reported by the step that received it.
        for bytes in state.as_binary::<i64>().iter().flatten() {
            SortedLeaves::parse(bytes).ok_or_else(|| corrupt(bytes.len()))?;
        }
        self.merged.push(Arc::clone(state));
        Ok(())
    }

    fn state(&mut self) -> DfResult<Vec<ScalarValue>> {
        // A partition sorts its own leaves, on its own thread: the partitions run in parallel,
        // and the final step is left with merging sorted runs. A step that merged others' states
        // (a multi-stage plan) sorts them in with its own into one buffer.
        let own = std::mem::take(&mut self.leaves);
        let mut chunks: Vec<&[Hash32]> = own.iter().map(Vec::as_slice).collect();
        chunks.extend(self.merged_parts()?.iter().map(SortedLeaves::leaves));
        let bytes = chunks
            .iter()
            .any(|c| !c.is_empty())
            .then(|| sort_into_buckets(&chunks, 1));
        self.merged.clear();
        Ok(vec![ScalarValue::LargeBinary(bytes)])
    }

    fn evaluate(&mut self) -> DfResult<ScalarValue> {
        let threads = available_threads();
        let own = std::mem::take(&mut self.leaves);
        let own: Vec<&[Hash32]> = own.iter().map(Vec::as_slice).collect();
        let own = own
            .iter()
            .any(|c| !c.is_empty())
            .then(|| sort_into_buckets(&own, threads));
        let mut parts = self.merged_parts()?;
        parts.extend(own.as_deref().and_then(SortedLeaves::parse));
        let table = merged_table(&parts, threads).ok_or_else(|| {
            Error::Fingerprint(format!(
                "a partial {FINGERPRINT_FN} state holds leaves out of order"
            ))
        })?;
        self.merged.clear();
        let mut out = Vec::with_capacity(BUCKETS * BUCKET_BYTES);
        for (count, root) in table {
            out.extend_from_slice(&count.to_be_bytes());
            out.extend_from_slice(&root);
        }
        Ok(ScalarValue::Binary(Some(out)))
    }

    fn size(&self) -> usize {
        size_of_val(self)
            + self.leaves.iter().map(|c| c.capacity() * 32).sum::<usize>()
            + self
                .merged
                .iter()
                .map(|a| a.get_array_memory_size())
                .sum::<usize>()
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

#[cfg(test)]
mod tests {
    use arrow::array::{Float64Array, Int64Array, StringArray};

    use super::*;

    fn columns(rows: usize, from: usize) -> Vec<ArrayRef> {
        let ids: Vec<String> = (from..from + rows).map(|i| format!("row-{i}")).collect();
        vec![
            Arc::new(Float64Array::from_iter_values(
                (from..from + rows).map(|i| i as f64 / 7.0),
            )),
            Arc::new(Int64Array::from_iter_values(
                (from..from + rows).map(|i| i as i64 % 5),
            )),
            Arc::new(StringArray::from_iter_values(ids)),
        ]
    }

    fn state_of(acc: &mut LeafAccumulator) -> ArrayRef {
        acc.state().unwrap()[0].to_array().unwrap()
    }

    #[test]
    fn partial_states_merge_to_the_single_step_result() {
        let mut single = LeafAccumulator::default();
        single.update_batch(&columns(9_000, 0)).unwrap();
        let want = single.evaluate().unwrap();

        // Three partitions (one empty); two of them merged by an intermediate step whose own
        // state is merged again, as a multi-stage plan does.
        let mut parts: Vec<LeafAccumulator> = (0..3).map(|_| LeafAccumulator::default()).collect();
        parts[0].update_batch(&columns(4_000, 0)).unwrap();
        parts[0].update_batch(&columns(1_000, 4_000)).unwrap();
        parts[2].update_batch(&columns(4_000, 5_000)).unwrap();
        let states: Vec<ArrayRef> = parts.iter_mut().map(state_of).collect();
        let mut middle = LeafAccumulator::default();
        middle.merge_batch(&states[..1]).unwrap();
        middle.merge_batch(&states[1..2]).unwrap();
        let middle_state = state_of(&mut middle);
        let mut last = LeafAccumulator::default();
        last.merge_batch(&[middle_state]).unwrap();
        last.merge_batch(&states[2..]).unwrap();
        assert_eq!(last.evaluate().unwrap(), want);
    }

    #[test]
    fn leaves_spanning_several_chunks_give_the_table_of_all_rows() {
        let mut acc = LeafAccumulator::default();
        let mut all = Vec::new();
        for from in [0, 30_000, 60_000] {
            let batch = columns(30_000, from);
            acc.update_batch(&batch).unwrap();
            leaf_hashes(&batch, &mut all).unwrap();
        }
        assert!(acc.leaves.len() > 1, "the rows should span chunks");
        let (_, table) = crate::fingerprint::buckets::bucket_table(all);
        let ScalarValue::Binary(Some(bytes)) = acc.evaluate().unwrap() else {
            panic!("the result is binary");
        };
        assert_eq!(parse_table(&bytes).unwrap(), table);
    }

    #[test]
    fn a_corrupt_partial_state_is_an_error() {
        let mut part = LeafAccumulator::default();
        part.update_batch(&columns(100, 0)).unwrap();
        let ScalarValue::LargeBinary(Some(mut bytes)) = part.state().unwrap().remove(0) else {
            panic!("the state is large binary");
        };
        bytes.pop();
        let truncated = ScalarValue::LargeBinary(Some(bytes)).to_array().unwrap();
        let err = LeafAccumulator::default()
            .merge_batch(&[truncated])
            .unwrap_err();
        assert!(
            err.to_string().contains("does not match its bucket counts"),
            "{err}"
        );
    }
}
