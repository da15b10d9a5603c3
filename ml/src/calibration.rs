//! Calibrated risk: mapping a model's score to a probability that can be read as a risk, fitted
//! on held-out rows (Platt scaling, Lin, Lin and Weng's Newton method with Platt's smoothed
//! targets; isotonic regression by pooling adjacent violators), the Brier score and the
//! reliability curve that show how well it worked, and the operating threshold chosen by a
//! stated rule (a target recall, the largest F1, or a cost ratio). Every fit sorts its input
//! first, so it depends on the held-out rows only, never on the order they arrived in. Pure
//! functions over labels and scores; nothing here reads data or trains trees.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::metrics::BinaryMetrics;
use crate::model::format_number;
use crate::params::{CalibrationMethod, ThresholdRule};
use crate::report::UnitChart;

/// A fitted calibration: the model's score (a probability for trees and forests, a margin for
/// boosted trees) to a calibrated probability of class 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "method", deny_unknown_fields)]
pub enum Calibration {
    /// `p = 1 / (1 + e^-(a·score + b))`.
    Platt {
        /// Slope.
        #[serde(with = "crate::exact")]
        a: f64,
        /// Intercept.
        #[serde(with = "crate::exact")]
        b: f64,
        /// Held-out rows it was fitted on.
        rows: u64,
    },
    /// A non-decreasing piecewise-linear map through `(score, probability)` points, constant
    /// beyond the first and the last.
    Isotonic {
        /// Scores, ascending.
        #[serde(with = "crate::exact::vec")]
        scores: Vec<f64>,
        /// Probabilities at those scores, non-decreasing.
        #[serde(with = "crate::exact::vec")]
        probabilities: Vec<f64>,
        /// Held-out rows it was fitted on.
        rows: u64,
    },
}

impl Calibration {
    /// Fits `method` on held-out scores and labels; `None` for [`CalibrationMethod::None`] or
    /// without rows of both classes.
    pub fn fit(method: CalibrationMethod, scores: &[f64], labels: &[u8]) -> Option<Self> {
        let positives = labels.iter().filter(|l| **l != 0).count();
        if positives == 0 || positives == labels.len() {
            return None;
        }
        let pairs = sorted_pairs(scores, labels);
        match method {
            CalibrationMethod::None => None,
            CalibrationMethod::Platt => Some(fit_platt(&pairs)),
            CalibrationMethod::Isotonic => Some(fit_isotonic(&pairs)),
        }
    }

    /// The calibrated probability of a score.
    pub fn apply(&self, score: f64) -> f64 {
        match self {
            Calibration::Platt { a, b, .. } => stable_sigmoid(a * score + b),
            Calibration::Isotonic {
                scores,
                probabilities,
                ..
            } => {
                let (Some(first), Some(last)) = (scores.first(), scores.last()) else {
                    return score;
                };
                if score.is_nan() {
                    return score;
                }
                if score <= *first {
                    return probabilities[0];
                }
                if score >= *last {
                    return probabilities[probabilities.len() - 1];
                }
                let i = scores.partition_point(|s| *s <= score);
                let (x0, x1) = (scores[i - 1], scores[i]);
                let (y0, y1) = (probabilities[i - 1], probabilities[i]);
                y0 + (y1 - y0) * (score - x0) / (x1 - x0)
            }
        }
    }

    /// The method's name.
    pub fn method(&self) -> CalibrationMethod {
        match self {
            Calibration::Platt { .. } => CalibrationMethod::Platt,
            Calibration::Isotonic { .. } => CalibrationMethod::Isotonic,
        }
    }
}

/// The logistic function on the driver (calibration is applied where the model is, never
/// inside a plan).
fn stable_sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// `(score, label)` pairs in a total order, so fits do not depend on the input order.
fn sorted_pairs(scores: &[f64], labels: &[u8]) -> Vec<(f64, u8)> {
    let mut pairs: Vec<(f64, u8)> = scores
        .iter()
        .copied()
        .zip(labels.iter().map(|l| u8::from(*l != 0)))
        .filter(|(s, _)| !s.is_nan())
        .collect();
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    pairs
}

/// Platt scaling by Newton's method with backtracking (Lin, Lin and Weng, 2007), on Platt's
/// smoothed targets `(N₊ + 1) / (N₊ + 2)` and `1 / (N₋ + 2)`, which keep a separable held-out set
/// from driving the slope to infinity.
fn fit_platt(pairs: &[(f64, u8)]) -> Calibration {
    let positives = pairs.iter().filter(|p| p.1 == 1).count() as f64;
    let negatives = pairs.len() as f64 - positives;
    let high = (positives + 1.0) / (positives + 2.0);
    let low = 1.0 / (negatives + 2.0);
    let target = |label: u8| if label == 1 { high } else { low };
    // Cross-entropy at (a, b), computed without overflow for large margins.
    let loss = |a: f64, b: f64| -> f64 {
        pairs
            .iter()
            .map(|&(s, l)| {
                let z = a * s + b;
                let t = target(l);
                if z >= 0.0 {
                    (1.0 - t) * z + (-z).exp().ln_1p()
                } else {
                    -t * z + z.exp().ln_1p()
                }
            })
            .sum()
    };
    let (mut a, mut b) = (1.0, ((positives + 1.0) / (negatives + 1.0)).ln());
    let mut value = loss(a, b);
    for _ in 0..100 {
        let (mut ga, mut gb) = (0.0, 0.0);
        let (mut haa, mut hab, mut hbb) = (1e-12, 0.0, 1e-12);
        for &(s, l) in pairs {
            let p = stable_sigmoid(a * s + b);
            let d = p - target(l);
            let w = (p * (1.0 - p)).max(1e-300);
            ga += d * s;
            gb += d;
            haa += w * s * s;
            hab += w * s;
            hbb += w;
        }
        if ga.abs() < 1e-9 && gb.abs() < 1e-9 {
            break;
        }
        let det = haa * hbb - hab * hab;
        if det <= 0.0 {
            break;
        }
        let (da, db) = (-(hbb * ga - hab * gb) / det, -(haa * gb - hab * ga) / det);
        let slope = ga * da + gb * db;
        let mut step = 1.0;
        let mut moved = false;
        while step >= 1e-10 {
            let (na, nb) = (a + step * da, b + step * db);
            let next = loss(na, nb);
            if next <= value + 1e-4 * step * slope {
                (a, b, value) = (na, nb, next);
                moved = true;
                break;
            }
            step /= 2.0;
        }
        if !moved {
            break;
        }
    }
    Calibration::Platt {
        a,
        b,
        rows: pairs.len() as u64,
    }
}

/// Isotonic regression by pooling adjacent violators over the distinct scores.
fn fit_isotonic(pairs: &[(f64, u8)]) -> Calibration {
    // (sum of labels, rows, lowest score, highest score) per block.
    let mut blocks: Vec<(f64, f64, f64, f64)> = Vec::new();
    let mut i = 0;
    while i < pairs.len() {
        let s = pairs[i].0;
        let mut j = i;
        let mut sum = 0.0;
        while j < pairs.len() && pairs[j].0 == s {
            sum += f64::from(pairs[j].1);
            j += 1;
        }
        blocks.push((sum, (j - i) as f64, s, s));
        while blocks.len() >= 2 {
            let n = blocks.len();
            let (last, prev) = (blocks[n - 1], blocks[n - 2]);
            if prev.0 / prev.1 >= last.0 / last.1 {
                blocks[n - 2] = (prev.0 + last.0, prev.1 + last.1, prev.2, last.3);
                blocks.pop();
            } else {
                break;
            }
        }
        i = j;
    }
    let mut scores = Vec::with_capacity(2 * blocks.len());
    let mut probabilities = Vec::with_capacity(2 * blocks.len());
    for (sum, rows, low, high) in blocks {
        let p = sum / rows;
        scores.push(low);
        probabilities.push(p);
        if high > low {
            scores.push(high);
            probabilities.push(p);
        }
    }
    Calibration::Isotonic {
        scores,
        probabilities,
        rows: pairs.len() as u64,
    }
}

/// The mean squared difference between probabilities and labels (lower is better; always
/// predicting the base rate `p` scores `p(1 - p)`).
pub fn brier_score(labels: &[u8], probabilities: &[f64]) -> Option<f64> {
    if labels.is_empty() {
        return None;
    }
    let sum: f64 = sorted_pairs(probabilities, labels)
        .iter()
        .map(|(p, l)| (p - f64::from(*l)).powi(2))
        .sum();
    Some(sum / labels.len() as f64)
}

/// One bin of a reliability curve.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ReliabilityBin {
    /// The bin's probability range, `[lower, upper)` (the last bin includes 1).
    pub lower: f64,
    /// Upper end of the range.
    pub upper: f64,
    /// Rows whose probability falls in the bin.
    pub rows: u64,
    /// Their mean predicted probability.
    pub mean_predicted: f64,
    /// The share of them labelled 1.
    pub observed: f64,
}

/// The reliability curve: rows binned by predicted probability into `bins` equal ranges, with
/// the mean prediction and the observed share of class 1 in each non-empty bin. A calibrated
/// model's points lie on the diagonal.
pub fn reliability_curve(labels: &[u8], probabilities: &[f64], bins: usize) -> Vec<ReliabilityBin> {
    let bins = bins.max(1);
    let mut acc = vec![(0u64, 0.0f64, 0u64); bins];
    for (p, l) in sorted_pairs(probabilities, labels) {
        let b = ((p * bins as f64) as usize).min(bins - 1);
        acc[b].0 += 1;
        acc[b].1 += p;
        acc[b].2 += u64::from(l);
    }
    acc.iter()
        .enumerate()
        .filter(|(_, a)| a.0 > 0)
        .map(|(i, &(rows, sum, positives))| ReliabilityBin {
            lower: i as f64 / bins as f64,
            upper: (i + 1) as f64 / bins as f64,
            rows,
            mean_predicted: sum / rows as f64,
            observed: positives as f64 / rows as f64,
        })
        .collect()
}

/// A model's operating threshold and the rule that chose it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatingPoint {
    /// The rule.
    pub rule: ThresholdRule,
    /// Class 1 when the (calibrated) probability is at least this.
    #[serde(with = "crate::exact")]
    pub threshold: f64,
    /// Held-out rows it was chosen on.
    pub rows: u64,
}

impl OperatingPoint {
    /// Chooses the threshold by `rule` on held-out labels and probabilities; `None` for
    /// [`ThresholdRule::Default`] or without rows.
    ///
    /// Candidates lie midway between adjacent distinct probabilities (and below the lowest and
    /// above the highest), so on the held-out rows "at least the threshold" and "above it" agree.
    /// Ties in the rule's objective go to the higher threshold (fewer alarms).
    pub fn choose(rule: ThresholdRule, labels: &[u8], probabilities: &[f64]) -> Option<Self> {
        if rule == ThresholdRule::Default || labels.is_empty() {
            return None;
        }
        // Distinct probabilities, highest first, with their positives and negatives.
        let mut groups: Vec<(f64, u64, u64)> = Vec::new();
        for (p, l) in sorted_pairs(probabilities, labels).into_iter().rev() {
            match groups.last_mut() {
                Some(g) if g.0 == p => {
                    g.1 += u64::from(l);
                    g.2 += u64::from(l == 0);
                }
                _ => groups.push((p, u64::from(l), u64::from(l == 0))),
            }
        }
        let positives: u64 = groups.iter().map(|g| g.1).sum();
        let top = groups.first().map_or(1.0, |g| g.0);
        // Threshold, true positives, false positives, from predicting nothing to everything.
        let mut candidates = vec![(
            if top < 1.0 {
                (top + 1.0) / 2.0
            } else {
                1.0f64.next_up()
            },
            0u64,
            0u64,
        )];
        let (mut tp, mut fp) = (0u64, 0u64);
        for (i, g) in groups.iter().enumerate() {
            tp += g.1;
            fp += g.2;
            let below = groups.get(i + 1).map_or(0.0, |n| n.0);
            candidates.push(((g.0 + below) / 2.0, tp, fp));
        }
        let chosen = match rule {
            ThresholdRule::Default => return None,
            ThresholdRule::TargetRecall { recall } => candidates
                .iter()
                .find(|c| positives > 0 && c.1 as f64 / positives as f64 >= recall)
                .or(candidates.last())
                .map(|c| c.0),
            ThresholdRule::MaxF1 => best_by(&candidates, |&(_, tp, fp)| {
                let fn_ = positives - tp;
                let denominator = 2 * tp + fp + fn_;
                if denominator == 0 {
                    0.0
                } else {
                    2.0 * tp as f64 / denominator as f64
                }
            }),
            ThresholdRule::CostRatio { ratio } => best_by(&candidates, |&(_, tp, fp)| {
                -(ratio * (positives - tp) as f64 + fp as f64)
            }),
        }?;
        Some(OperatingPoint {
            rule,
            threshold: chosen,
            rows: labels.len() as u64,
        })
    }
}

/// The threshold of the first candidate (highest threshold) with the largest score.
fn best_by(candidates: &[(f64, u64, u64)], score: impl Fn(&(f64, u64, u64)) -> f64) -> Option<f64> {
    let mut best: Option<(f64, f64)> = None;
    for c in candidates {
        let s = score(c);
        if best.is_none_or(|(b, _)| s > b) {
            best = Some((s, c.0));
        }
    }
    best.map(|b| b.1)
}

/// Metrics of a model at its operating threshold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThresholdMetrics {
    /// The threshold and its rule.
    pub operating_point: OperatingPoint,
    /// Metrics with class 1 at probabilities at least the threshold.
    pub metrics: BinaryMetrics,
}

/// How well probabilities match outcomes on the test rows, before and after calibration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibrationReport {
    /// The calibration applied (`None`: the model's own probabilities).
    pub calibration: Option<Calibration>,
    /// Brier score of the model's own probabilities.
    pub brier_uncalibrated: Option<f64>,
    /// Brier score of the probabilities `predict` gives (calibrated when a calibration is set).
    pub brier: Option<f64>,
    /// Brier score of always predicting the training base rate.
    pub brier_base_rate: Option<f64>,
    /// Reliability of the model's own probabilities.
    pub reliability_uncalibrated: Vec<ReliabilityBin>,
    /// Reliability of the probabilities `predict` gives.
    pub reliability: Vec<ReliabilityBin>,
}

/// The reliability diagram as a standalone SVG image: predicted against observed risk per bin,
/// the model's own probabilities and the calibrated ones, with the diagonal of perfect
/// calibration.
pub fn reliability_svg(report: &CalibrationReport) -> String {
    let (x, y) = (UnitChart::x, UnitChart::y);
    let mut chart = UnitChart::new();
    let svg = &mut chart.svg;
    let mut curve = |bins: &[ReliabilityBin], color: &str, name: &str, legend_y: f64| {
        let points: Vec<String> = bins
            .iter()
            .map(|b| format!("{:.2},{:.2}", x(b.mean_predicted), y(b.observed)))
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"/>"#,
            points.join(" ")
        );
        for b in bins {
            let _ = writeln!(
                svg,
                r#"<circle cx="{:.2}" cy="{:.2}" r="3.5" fill="{color}"><title>{} rows: predicted {}, observed {}</title></circle>"#,
                x(b.mean_predicted),
                y(b.observed),
                b.rows,
                format_number(b.mean_predicted),
                format_number(b.observed)
            );
        }
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{legend_y}" fill="{color}">{name}</text>"#,
            UnitChart::MARGIN + 10.0
        );
    };
    let brier = |b: Option<f64>| b.map_or_else(|| "n/a".to_string(), format_number);
    let calibrated = report.calibration.is_some();
    curve(
        &report.reliability_uncalibrated,
        "#7f8c8d",
        &format!(
            "model probabilities (Brier {})",
            brier(report.brier_uncalibrated)
        ),
        UnitChart::MARGIN + 18.0,
    );
    if calibrated {
        curve(
            &report.reliability,
            "#c0392b",
            &format!("calibrated (Brier {})", brier(report.brier)),
            UnitChart::MARGIN + 34.0,
        );
    }
    chart.finish(
        "Reliability (test rows)",
        "predicted risk",
        "observed share of class 1",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::mix64;

    /// Scores whose true probability of class 1 is `truth(score)`, drawn deterministically.
    fn sample(n: u64, truth: impl Fn(f64) -> f64) -> (Vec<f64>, Vec<u8>) {
        let uniform = |i: u64| (mix64(i) >> 11) as f64 / (1u64 << 53) as f64;
        let scores: Vec<f64> = (0..n).map(|i| uniform(2 * i)).collect();
        let labels = scores
            .iter()
            .enumerate()
            .map(|(i, s)| u8::from(uniform(2 * i as u64 + 1) < truth(*s)))
            .collect();
        (scores, labels)
    }

    #[test]
    fn platt_recovers_a_logistic_relation() {
        // True probability σ(4s − 2): Platt must find a ≈ 4, b ≈ −2.
        let (scores, labels) = sample(40_000, |s| stable_sigmoid(4.0 * s - 2.0));
        let Some(Calibration::Platt { a, b, rows }) =
            Calibration::fit(CalibrationMethod::Platt, &scores, &labels)
        else {
            panic!("no Platt fit");
        };
        assert_eq!(rows, 40_000);
        assert!(
            (a - 4.0).abs() < 0.2 && (b + 2.0).abs() < 0.1,
            "a {a}, b {b}"
        );
    }

    #[test]
    fn isotonic_is_monotone_and_lowers_the_brier_score_of_a_distorted_score() {
        // Scores are the square of the true probability: reliable in order, not in value.
        let (scores, labels) = sample(20_000, f64::sqrt);
        let cal = Calibration::fit(CalibrationMethod::Isotonic, &scores, &labels).unwrap();
        let Calibration::Isotonic {
            scores: xs,
            probabilities,
            ..
        } = &cal
        else {
            panic!("not isotonic");
        };
        assert!(xs.windows(2).all(|w| w[0] <= w[1]));
        assert!(probabilities.windows(2).all(|w| w[0] <= w[1]));
        let calibrated: Vec<f64> = scores.iter().map(|s| cal.apply(*s)).collect();
        let before = brier_score(&labels, &scores).unwrap();
        let after = brier_score(&labels, &calibrated).unwrap();
        assert!(after < before - 0.01, "{after} vs {before}");
        // Near s = 0.25 the truth is 0.5.
        assert!((cal.apply(0.25) - 0.5).abs() < 0.06, "{}", cal.apply(0.25));
    }

    #[test]
    fn fits_do_not_depend_on_row_order() {
        let (scores, labels) = sample(5_000, |s| s * s);
        let (mut rs, mut rl) = (scores.clone(), labels.clone());
        rs.reverse();
        rl.reverse();
        for method in [CalibrationMethod::Platt, CalibrationMethod::Isotonic] {
            assert_eq!(
                Calibration::fit(method, &scores, &labels),
                Calibration::fit(method, &rs, &rl)
            );
        }
        assert!(Calibration::fit(CalibrationMethod::Platt, &[0.1, 0.2], &[1, 1]).is_none());
    }

    #[test]
    fn brier_and_reliability_of_known_predictions() {
        let labels = [0, 0, 1, 1];
        assert_eq!(brier_score(&labels, &[0.0, 0.0, 1.0, 1.0]), Some(0.0));
        assert_eq!(brier_score(&labels, &[0.5; 4]), Some(0.25));
        let curve = reliability_curve(&labels, &[0.05, 0.15, 0.15, 0.95], 10);
        assert_eq!(curve.len(), 3);
        assert_eq!((curve[1].rows, curve[1].observed), (2, 0.5));
        assert!((curve[1].mean_predicted - 0.15).abs() < 1e-12);
        assert_eq!(curve[2].upper, 1.0);
    }

    #[test]
    fn threshold_rules_pick_what_they_state() {
        // Probabilities 0.9 (1), 0.8 (0), 0.6 (1), 0.4 (1), 0.3 (0), 0.1 (0).
        let probs = [0.9, 0.8, 0.6, 0.4, 0.3, 0.1];
        let labels = [1, 0, 1, 1, 0, 0];
        let t = |rule| {
            OperatingPoint::choose(rule, &labels, &probs)
                .unwrap()
                .threshold
        };
        // Recall 2/3 first reached by predicting {0.9, 0.8, 0.6}: threshold between 0.6 and 0.4.
        assert!((t(ThresholdRule::TargetRecall { recall: 0.6 }) - 0.5).abs() < 1e-12);
        // Recall 1 needs 0.4 in: threshold between 0.4 and 0.3.
        assert!((t(ThresholdRule::TargetRecall { recall: 1.0 }) - 0.35).abs() < 1e-12);
        // F1: top 4 → tp 3, fp 1: 6/7, the best.
        assert!((t(ThresholdRule::MaxF1) - 0.35).abs() < 1e-12);
        // A miss costs 0.1 false alarms: predicting nothing (cost 0.3) beats catching the 0.9
        // row (cost 0.2)? No: 0.2 < 0.3, so the top row only.
        assert!((t(ThresholdRule::CostRatio { ratio: 0.1 }) - 0.85).abs() < 1e-12);
        // Expensive misses: all three positives in, one false alarm (cheaper than three).
        assert!((t(ThresholdRule::CostRatio { ratio: 100.0 }) - 0.35).abs() < 1e-12);
        assert!(OperatingPoint::choose(ThresholdRule::Default, &labels, &probs).is_none());
        // The chosen threshold reproduces the rule on the same rows.
        let at = t(ThresholdRule::TargetRecall { recall: 1.0 });
        let m = BinaryMetrics::at_threshold(&labels, &probs, at);
        assert_eq!(m.recall, 1.0);
    }

    #[test]
    fn the_svg_has_both_curves() {
        let (scores, labels) = sample(2_000, |s| s * s);
        let report = CalibrationReport {
            calibration: Calibration::fit(CalibrationMethod::Isotonic, &scores, &labels),
            brier_uncalibrated: brier_score(&labels, &scores),
            brier: Some(0.1),
            brier_base_rate: Some(0.2),
            reliability_uncalibrated: reliability_curve(&labels, &scores, 10),
            reliability: reliability_curve(&labels, &scores, 10),
        };
        let svg = reliability_svg(&report);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("calibrated (Brier 0.1)"), "{svg}");
    }
}
