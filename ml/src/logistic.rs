//! The logistic function, in arithmetic that gives the same bits on every machine, and the
//! fixed-point units gradient sums are kept in. Boosting computes every row's gradient from its
//! score on whichever executor holds the row; the platform's `exp` may differ in the last bit
//! from one C library to the next, and a gradient one unit off would move a fixed-point sum and
//! so, rarely, a split. [`exp`] therefore uses only IEEE additions, multiplications, divisions and
//! exact scalings by powers of two (never a fused multiply-add), which every conforming machine
//! rounds identically. This module holds no training logic.

/// Fixed-point units per 1.0 for gradients and hessians: sums are integers, so they are exact
/// and do not depend on the order partial histograms merge in.
pub(crate) const GRADIENT_SCALE: f64 = 4_294_967_296.0;

/// `ln 2` split so that `k · LN2_HI` is exact for the `k` that occur (its low bits are zero).
const LN2_HI: f64 = 6.931_471_803_691_238e-1;
const LN2_LO: f64 = 1.908_214_929_270_587_7e-10;
const INV_LN2: f64 = std::f64::consts::LOG2_E;

/// `e^x`, to within a few units in the last place (relative error below 1e-15),
/// reproducibly (see the module docs).
pub(crate) fn exp(x: f64) -> f64 {
    if x.is_nan() {
        return x;
    }
    if x > 709.78 {
        return f64::INFINITY;
    }
    if x < -745.2 {
        return 0.0;
    }
    // x = k ln 2 + r with |r| ≤ ln 2 / 2; e^r from its Taylor series (the 14th term is below
    // 1e-17 of the sum), e^x = 2^k e^r.
    let k = (x * INV_LN2).round();
    let r = (x - k * LN2_HI) - k * LN2_LO;
    let mut sum = 1.0;
    let mut term = 1.0;
    for n in 1..=14 {
        term = term * r / f64::from(n);
        sum += term;
    }
    scale_by_power_of_two(sum, k as i32)
}

/// `x · 2^k`, exact unless the result is subnormal (then rounded once, deterministically).
fn scale_by_power_of_two(x: f64, k: i32) -> f64 {
    let pow2 = |e: i32| f64::from_bits(((e + 1023) as u64) << 52);
    if k > 1023 {
        x * pow2(1023) * pow2(k - 1023)
    } else if k < -1022 {
        x * pow2(-1022) * pow2((k + 1022).max(-1022))
    } else {
        x * pow2(k)
    }
}

/// The logistic function `1 / (1 + e^-x)`: the probability of class 1 at margin `x`.
pub(crate) fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + exp(-x))
    } else {
        let e = exp(x);
        e / (1.0 + e)
    }
}

/// A gradient or hessian in fixed point.
pub(crate) fn to_fixed(x: f64) -> i64 {
    (x * GRADIENT_SCALE).round() as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_close_to_the_platform_exp() {
        let mut x = -740.0;
        while x < 709.0 {
            let (ours, std) = (exp(x), x.exp());
            // Our result is within a few units in the last place. Below 2^-1022 results are
            // subnormal, with fewer bits: there a few units of the smallest subnormal.
            let tolerance = (1e-15 * std).max(f64::from_bits(4));
            assert!(
                (ours - std).abs() <= tolerance,
                "exp({x}) = {ours}, std {std}"
            );
            x += 0.37;
        }
        for x in [-1e-300, 0.0, 1e-10, 0.5, -0.5, 1.0, 2.0, -30.0] {
            assert!(((exp(x) - x.exp()) / x.exp()).abs() < 1e-15, "{x}");
        }
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(1000.0), f64::INFINITY);
        assert_eq!(exp(-1000.0), 0.0);
        assert!(exp(f64::NAN).is_nan());
    }

    #[test]
    fn the_bits_are_pinned() {
        // Every build on every machine must compute these bits; a change would move gradients.
        // (The same operations in another language's IEEE doubles give them too.) e itself is
        // one unit in the last place above our exp(1), within the stated accuracy.
        assert_eq!(
            exp(1.0).to_bits(),
            0x4005_bf0a_8b14_5768,
            "{:#x}",
            exp(1.0).to_bits()
        );
        assert_eq!(std::f64::consts::E.to_bits() - exp(1.0).to_bits(), 1);
        assert_eq!(sigmoid(0.0), 0.5);
        assert_eq!(
            sigmoid(0.3).to_bits(),
            0x3fe2_61d5_45e4_6a8b,
            "{:#x}",
            sigmoid(0.3).to_bits()
        );
    }

    #[test]
    fn sigmoid_is_symmetric_and_bounded() {
        for x in [0.1, 1.0, 5.0, 40.0, 800.0] {
            let (p, q) = (sigmoid(x), sigmoid(-x));
            assert!((p + q - 1.0).abs() < 1e-15, "{x}: {p} + {q}");
            assert!((0.0..=1.0).contains(&p) && (0.0..=1.0).contains(&q));
        }
        assert_eq!(sigmoid(f64::INFINITY), 1.0);
        assert_eq!(sigmoid(f64::NEG_INFINITY), 0.0);
    }

    #[test]
    fn fixed_point_round_trips_to_its_resolution() {
        for x in [0.25, -0.7, 1e-6, 0.0] {
            assert!((to_fixed(x) as f64 / GRADIENT_SCALE - x).abs() <= 0.5 / GRADIENT_SCALE);
        }
    }
}
