//! `emr_moments(x)`: the count, mean and population standard deviation of a column, exact
//! whatever the partitioning.
//!
//! A z-score normalizer fitted with floating-point `avg`/`stddev_pop` depends on the order rows
//! were added in, so the same job on 2 partitions, 16 partitions or a cluster would write
//! datasets differing in the last bits, with different fingerprints. Here each partition keeps
//! Σx and Σx² as exact sums (Shewchuk's non-overlapping partials, as in Python's `math.fsum`;
//! each x² is split exactly into a product and its rounding error), partial states merge by
//! exact addition, and only the final values are rounded: `mean = round(Σx) / n` and
//! `var = round(n·Σx² − (Σx)²) / n²`, the numerator computed exactly too. The result is a
//! pure function of the multiset of values.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, StructArray, UInt64Array};
use arrow::datatypes::{DataType, Field, FieldRef, Fields, Float64Type};
use datafusion::common::{ScalarValue, exec_err};
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Signature, Volatility,
};

/// Name of the aggregate.
pub const MOMENTS_FN: &str = "emr_moments";

/// The aggregate: `emr_moments(double) -> struct<count: uint64, mean: double, std: double>`
/// (`mean` and `std` null when no value was seen; nulls are skipped; a NaN or infinite value
/// makes both NaN).
pub fn moments_udaf() -> Arc<AggregateUDF> {
    Arc::new(AggregateUDF::new_from_impl(MomentsUdaf {
        signature: Signature::exact(vec![DataType::Float64], Volatility::Immutable),
    }))
}

fn result_fields() -> Fields {
    Fields::from(vec![
        Field::new("count", DataType::UInt64, false),
        Field::new("mean", DataType::Float64, true),
        Field::new("std", DataType::Float64, true),
    ])
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct MomentsUdaf {
    signature: Signature,
}

impl AggregateUDFImpl for MomentsUdaf {
    fn name(&self) -> &str {
        MOMENTS_FN
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Struct(result_fields()))
    }

    fn accumulator(&self, _acc_args: AccumulatorArgs<'_>) -> DfResult<Box<dyn Accumulator>> {
        Ok(Box::new(Moments::default()))
    }

    fn state_fields(&self, args: StateFieldsArgs<'_>) -> DfResult<Vec<FieldRef>> {
        Ok(vec![Arc::new(Field::new(
            format!("{}[moments]", args.name),
            DataType::Binary,
            true,
        ))])
    }
}

/// An exact sum: non-overlapping partials in increasing magnitude, whose real sum is exactly
/// the sum of everything added (barring overflow past f64's range).
#[derive(Debug, Default, Clone, PartialEq)]
struct ExactSum {
    partials: Vec<f64>,
}

impl ExactSum {
    fn add(&mut self, mut x: f64) {
        let mut kept = 0;
        for j in 0..self.partials.len() {
            let mut y = self.partials[j];
            if x.abs() < y.abs() {
                std::mem::swap(&mut x, &mut y);
            }
            let hi = x + y;
            let lo = y - (hi - x);
            if lo != 0.0 {
                self.partials[kept] = lo;
                kept += 1;
            }
            x = hi;
        }
        self.partials.truncate(kept);
        self.partials.push(x);
    }

    /// The exact sum rounded to nearest, ties to even.
    fn round(&self) -> f64 {
        let p = &self.partials;
        let Some(mut n) = p.len().checked_sub(1) else {
            return 0.0;
        };
        let mut hi = p[n];
        let mut lo = 0.0;
        while n > 0 {
            n -= 1;
            let x = hi;
            let y = p[n];
            hi = x + y;
            lo = y - (hi - x);
            if lo != 0.0 {
                break;
            }
        }
        // `hi + lo` is exact only if the rest does not push `lo` past half an ulp: when the
        // next partial has lo's sign, round away from the tie.
        if n > 0 && ((lo < 0.0 && p[n - 1] < 0.0) || (lo > 0.0 && p[n - 1] > 0.0)) {
            let y = lo * 2.0;
            let x = hi + y;
            if y == x - hi {
                hi = x;
            }
        }
        hi
    }
}

/// Limbs of a [`FixedSum`]: enough 32-bit digits for every finite double and its square's
/// parts, with room above for carries.
const LIMBS: usize = 68;

/// Values at least this large (or NaN, or infinite) take the partial-by-partial path, so a
/// [`FixedSum`] of a batch's squares can never leave f64's range.
const FIXED_MAX: f64 = 1e120;

/// An exact sum in fixed point: the value is Σ `limbs[k]`·2^(32k − 1074), which covers every
/// finite double down to the smallest subnormal. Adding a double is three integer additions
/// (carries wait until [`FixedSum::drain_into`]), where an [`ExactSum`] walks its partials: a
/// batch is summed here and its total handed to the `ExactSum` as a few exact doubles, which
/// leaves the exact sum, and so every rounded result, unchanged.
struct FixedSum {
    limbs: [i64; LIMBS],
}

impl FixedSum {
    fn new() -> Self {
        Self { limbs: [0; LIMBS] }
    }

    fn add(&mut self, x: f64) {
        let bits = x.to_bits();
        let exponent = (bits >> 52) & 0x7ff;
        let fraction = bits & ((1 << 52) - 1);
        // x = m·2^(s − 1074), with m < 2^53 and s in 0..2046.
        let (m, s) = if exponent == 0 {
            (fraction, 0)
        } else {
            (fraction | (1 << 52), exponent - 1)
        };
        let at = (s / 32) as usize;
        let v = u128::from(m) << (s % 32);
        let digits = [
            (v & 0xffff_ffff) as i64,
            ((v >> 32) & 0xffff_ffff) as i64,
            (v >> 64) as i64,
        ];
        let limbs = &mut self.limbs[at..at + 3];
        if bits >> 63 == 0 {
            limbs.iter_mut().zip(digits).for_each(|(l, d)| *l += d);
        } else {
            limbs.iter_mut().zip(digits).for_each(|(l, d)| *l -= d);
        }
    }

    /// Settles carries so every limb but the top one is a digit in 0..2^32; the top one then
    /// carries the sign.
    fn normalize(&mut self) {
        for k in 0..LIMBS - 1 {
            let carry = self.limbs[k] >> 32;
            self.limbs[k] -= carry << 32;
            self.limbs[k + 1] += carry;
        }
    }

    /// Adds the sum to `exact` and starts again from zero.
    fn drain_into(&mut self, exact: &mut ExactSum) {
        self.normalize();
        // Digits of a negative total would borrow all the way up; take its magnitude instead.
        let negative = self.limbs[LIMBS - 1] < 0;
        if negative {
            self.limbs.iter_mut().for_each(|l| *l = -*l);
            self.normalize();
        }
        for (k, limb) in self.limbs.iter_mut().enumerate() {
            if *limb != 0 {
                // A digit below 2^32 times a power of two: exact, subnormal or not.
                let part = *limb as f64 * pow2(32 * k as i32 - 1074);
                exact.add(if negative { -part } else { part });
                *limb = 0;
            }
        }
    }
}

/// 2^e for e in −1074..=1023.
fn pow2(e: i32) -> f64 {
    debug_assert!((-1074..=1023).contains(&e), "2^{e} is not a double");
    if e >= -1022 {
        f64::from_bits(((e + 1023) as u64) << 52)
    } else {
        f64::from_bits(1u64 << (e + 1074))
    }
}

/// `a·b` as `hi + lo` exactly.
fn two_product(a: f64, b: f64) -> (f64, f64) {
    let hi = a * b;
    (hi, a.mul_add(b, -hi))
}

#[derive(Debug, Default)]
struct Moments {
    count: u64,
    sum: ExactSum,
    sum_sq: ExactSum,
    /// A NaN or infinity was seen: exact arithmetic no longer means anything.
    non_finite: bool,
}

impl Moments {
    fn add(&mut self, x: f64) {
        self.count += 1;
        if !x.is_finite() {
            self.non_finite = true;
            return;
        }
        self.sum.add(x);
        let (hi, lo) = two_product(x, x);
        self.sum_sq.add(hi);
        self.sum_sq.add(lo);
    }

    /// Adds a batch of values (no nulls).
    fn add_batch(&mut self, values: &[f64]) {
        if !values.iter().all(|x| x.abs() < FIXED_MAX) {
            values.iter().for_each(|&x| self.add(x));
            return;
        }
        let mut sum = FixedSum::new();
        let mut sum_sq = FixedSum::new();
        for &x in values {
            sum.add(x);
            let (hi, lo) = two_product(x, x);
            sum_sq.add(hi);
            sum_sq.add(lo);
        }
        self.count += values.len() as u64;
        sum.drain_into(&mut self.sum);
        sum_sq.drain_into(&mut self.sum_sq);
    }

    fn mean_std(&self) -> Option<(f64, f64)> {
        if self.count == 0 {
            return None;
        }
        if self.non_finite {
            return Some((f64::NAN, f64::NAN));
        }
        let n = self.count as f64;
        // n·Σx² − (Σx)², every product split exactly, summed exactly, rounded once.
        let mut numerator = ExactSum::default();
        for &p in &self.sum_sq.partials {
            let (hi, lo) = two_product(n, p);
            numerator.add(hi);
            numerator.add(lo);
        }
        for &a in &self.sum.partials {
            for &b in &self.sum.partials {
                let (hi, lo) = two_product(a, b);
                numerator.add(-hi);
                numerator.add(-lo);
            }
        }
        let var = (numerator.round() / n / n).max(0.0);
        Some((self.sum.round() / n, var.sqrt()))
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            8 + 1 + 8 + 8 * (self.sum.partials.len() + self.sum_sq.partials.len()),
        );
        out.extend_from_slice(&self.count.to_le_bytes());
        out.push(u8::from(self.non_finite));
        out.extend_from_slice(&(self.sum.partials.len() as u32).to_le_bytes());
        out.extend_from_slice(&(self.sum_sq.partials.len() as u32).to_le_bytes());
        for p in self.sum.partials.iter().chain(&self.sum_sq.partials) {
            out.extend_from_slice(&p.to_le_bytes());
        }
        out
    }

    fn merge_encoded(&mut self, bytes: &[u8]) -> DfResult<()> {
        let bad = || {
            exec_err!(
                "a partial {MOMENTS_FN} state of {} bytes is malformed",
                bytes.len()
            )
        };
        let take = |at: usize, n: usize| bytes.get(at..at + n);
        let (Some(count), Some(flag), Some(n1), Some(n2)) =
            (take(0, 8), take(8, 1), take(9, 4), take(13, 4))
        else {
            return bad();
        };
        let count = u64::from_le_bytes(count.try_into().unwrap_or_default());
        let n1 = u32::from_le_bytes(n1.try_into().unwrap_or_default()) as usize;
        let n2 = u32::from_le_bytes(n2.try_into().unwrap_or_default()) as usize;
        let Some(values) = take(17, 8 * (n1 + n2)) else {
            return bad();
        };
        if bytes.len() != 17 + 8 * (n1 + n2) {
            return bad();
        }
        let mut floats = values
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap_or_default()));
        for p in floats.by_ref().take(n1) {
            self.sum.add(p);
        }
        for p in floats {
            self.sum_sq.add(p);
        }
        self.count += count;
        self.non_finite |= flag[0] != 0;
        Ok(())
    }
}

impl Accumulator for Moments {
    fn update_batch(&mut self, values: &[ArrayRef]) -> DfResult<()> {
        let Some(values) = values.first() else {
            return Ok(());
        };
        let Some(values) = values.as_primitive_opt::<Float64Type>() else {
            return exec_err!("{MOMENTS_FN} takes a DOUBLE, not {}", values.data_type());
        };
        if values.null_count() == 0 {
            self.add_batch(values.values());
        } else {
            let present: Vec<f64> = values.iter().flatten().collect();
            self.add_batch(&present);
        }
        Ok(())
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> DfResult<()> {
        let Some(state) = states.first() else {
            return Ok(());
        };
        let state = state.as_binary::<i32>();
        for i in 0..state.len() {
            if state.is_valid(i) {
                self.merge_encoded(state.value(i))?;
            }
        }
        Ok(())
    }

    fn state(&mut self) -> DfResult<Vec<ScalarValue>> {
        Ok(vec![ScalarValue::Binary(Some(self.encode()))])
    }

    fn evaluate(&mut self) -> DfResult<ScalarValue> {
        let (mean, std) = match self.mean_std() {
            Some((m, s)) => (Some(m), Some(s)),
            None => (None, None),
        };
        let array = StructArray::try_new(
            result_fields(),
            vec![
                Arc::new(UInt64Array::from(vec![self.count])),
                Arc::new(Float64Array::from(vec![mean])),
                Arc::new(Float64Array::from(vec![std])),
            ],
            None,
        )?;
        Ok(ScalarValue::Struct(Arc::new(array)))
    }

    fn size(&self) -> usize {
        size_of_val(self) + 8 * (self.sum.partials.capacity() + self.sum_sq.partials.capacity())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moments(values: &[f64]) -> Moments {
        let mut m = Moments::default();
        values.iter().for_each(|&x| m.add(x));
        m
    }

    #[test]
    fn exact_sum_is_correctly_rounded() {
        // Python: math.fsum([1e100, 1.0, -1e100, 1e-100, 1e50, -1.0, -1e50]) == 1e-100
        let mut s = ExactSum::default();
        for x in [1e100, 1.0, -1e100, 1e-100, 1e50, -1.0, -1e50] {
            s.add(x);
        }
        assert_eq!(s.round(), 1e-100);
        let mut tenth = ExactSum::default();
        (0..10).for_each(|_| tenth.add(0.1));
        assert_eq!(tenth.round(), 1.0);
        // math.fsum([2.0**53, 1.0, 2.0**-100]) rounds up past the tie.
        let mut tie = ExactSum::default();
        for x in [2f64.powi(53), 1.0, 2f64.powi(-100)] {
            tie.add(x);
        }
        assert_eq!(tie.round(), 2f64.powi(53) + 2.0);
    }

    #[test]
    fn order_and_partitioning_do_not_change_the_result() {
        let values: Vec<f64> = (0..5000)
            .map(|i| (i as f64 * 0.7311).sin() * 1e3 + 1e6 + 1.0 / (1.0 + i as f64))
            .collect();
        let whole = moments(&values).mean_std();
        let mut reversed = values.clone();
        reversed.reverse();
        assert_eq!(moments(&reversed).mean_std(), whole);
        for parts in [2, 3, 7, 64] {
            let mut merged = Moments::default();
            for chunk in values.chunks(values.len().div_ceil(parts)) {
                merged
                    .merge_encoded(&moments(chunk).encode())
                    .unwrap_or_else(|e| panic!("{e}"));
            }
            assert_eq!(merged.mean_std(), whole, "{parts} parts");
            assert_eq!(merged.count, 5000);
        }
    }

    #[test]
    fn a_batch_sums_exactly_what_its_values_sum_one_by_one() {
        // Mixed signs and magnitudes (down to subnormals, whose squares vanish), a total that
        // cancels to a tiny remainder, and an all-negative batch: the batch path must leave
        // the same exact sums as adding partial by partial.
        let mut values: Vec<f64> = (0..3000)
            .map(|i| {
                let x = (i as f64 * 0.37).sin() * 10f64.powi(i % 40 - 20);
                if i % 3 == 0 { -x } else { x }
            })
            .collect();
        values.extend([1e100, -1e100, 5e-324, -5e-324, 2.5e-310, 1e119, -1e119]);
        let negative: Vec<f64> = values.iter().map(|x| -x.abs()).collect();
        for batch in [
            values.as_slice(),
            negative.as_slice(),
            &[0.1; 1000],
            &[-0.0, 0.0],
        ] {
            let mut fast = Moments::default();
            fast.add_batch(batch);
            let slow = moments(batch);
            assert_eq!(fast.sum.round(), slow.sum.round());
            assert_eq!(fast.sum_sq.round(), slow.sum_sq.round());
            assert_eq!(fast.mean_std(), slow.mean_std());
            assert_eq!(fast.count, slow.count);
        }
        // Too large for the fixed-point path: the batch falls back and still agrees.
        let mut fast = Moments::default();
        fast.add_batch(&[1e200, 3.0, f64::NAN]);
        let (m, s) = fast.mean_std().unwrap_or_default();
        assert!(m.is_nan() && s.is_nan());
    }

    #[test]
    fn known_values() {
        let (mean, std) = moments(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0])
            .mean_std()
            .unwrap_or_default();
        assert_eq!((mean, std), (5.0, 2.0));
        // A constant column has exactly zero spread, not a rounding residue.
        let (mean, std) = moments(&[0.1; 1000]).mean_std().unwrap_or_default();
        assert_eq!((mean, std), (0.1, 0.0));
        assert_eq!(moments(&[]).mean_std(), None);
        let (m, s) = moments(&[1.0, f64::NAN]).mean_std().unwrap_or_default();
        assert!(m.is_nan() && s.is_nan());
        assert!(Moments::default().merge_encoded(&[1, 2, 3]).is_err());
    }
}
