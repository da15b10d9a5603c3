//! Binary classification metrics computed from labels and predicted probabilities: accuracy,
//! precision, recall and F1 of class 1 at the 0.5 threshold (or at an operating threshold), the
//! confusion matrix, ROC AUC and PR AUC (trapezoids over the curves, equal scores grouped, as
//! Spark's `BinaryClassificationMetrics` does), and the mean ± standard deviation of each over
//! cross-validation folds. Pure functions; nothing here reads data or trains.

use serde::{Deserialize, Serialize};

/// Counts of the four outcomes at the 0.5 threshold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfusionMatrix {
    /// Label 0, predicted 0.
    pub true_negative: u64,
    /// Label 0, predicted 1.
    pub false_positive: u64,
    /// Label 1, predicted 0.
    pub false_negative: u64,
    /// Label 1, predicted 1.
    pub true_positive: u64,
}

/// Metrics of one evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BinaryMetrics {
    /// Rows evaluated.
    pub rows: u64,
    /// Share of correct predictions.
    pub accuracy: f64,
    /// Of the rows predicted 1, the share labelled 1 (0 when nothing is predicted 1).
    pub precision: f64,
    /// Of the rows labelled 1, the share predicted 1.
    pub recall: f64,
    /// Harmonic mean of precision and recall.
    pub f1: f64,
    /// Area under the ROC curve; `None` when only one class is present.
    pub roc_auc: Option<f64>,
    /// Area under the precision-recall curve; `None` when there is no positive row.
    pub pr_auc: Option<f64>,
    /// The confusion matrix.
    pub confusion: ConfusionMatrix,
}

/// One point of the ROC curve.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RocPoint {
    /// False positive rate.
    pub fpr: f64,
    /// True positive rate.
    pub tpr: f64,
    /// The score threshold (rows with a score ≥ it are predicted 1).
    pub threshold: f64,
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

/// (score, positives, negatives) for each distinct score, highest first.
fn groups(labels: &[u8], scores: &[f64]) -> Vec<(f64, u64, u64)> {
    let mut pairs: Vec<(f64, u8)> = scores.iter().copied().zip(labels.iter().copied()).collect();
    // Rows with equal scores are summed into one group, so their order does not matter.
    pairs.sort_unstable_by(|a, b| b.0.total_cmp(&a.0));
    let mut out: Vec<(f64, u64, u64)> = Vec::new();
    for (s, l) in pairs {
        match out.last_mut() {
            Some(g) if g.0 == s => {
                if l != 0 {
                    g.1 += 1
                } else {
                    g.2 += 1
                }
            }
            _ => out.push((s, u64::from(l != 0), u64::from(l == 0))),
        }
    }
    out
}

/// The ROC curve from (0, 0) to (1, 1).
pub fn roc_curve(labels: &[u8], scores: &[f64]) -> Vec<RocPoint> {
    let g = groups(labels, scores);
    let p: u64 = g.iter().map(|x| x.1).sum();
    let n: u64 = g.iter().map(|x| x.2).sum();
    let mut points = vec![RocPoint {
        fpr: 0.0,
        tpr: 0.0,
        threshold: f64::INFINITY,
    }];
    let (mut tp, mut fp) = (0, 0);
    for (s, pos, neg) in g {
        tp += pos;
        fp += neg;
        points.push(RocPoint {
            fpr: ratio(fp, n),
            tpr: ratio(tp, p),
            threshold: s,
        });
    }
    points
}

fn trapezoid(points: &[(f64, f64)]) -> f64 {
    points
        .windows(2)
        .map(|w| (w[1].0 - w[0].0) * (w[1].1 + w[0].1) / 2.0)
        .sum()
}

impl BinaryMetrics {
    /// Metrics of probabilities `scores` against `labels` (0/1); a row is predicted 1 when its
    /// score is above 0.5.
    pub fn compute(labels: &[u8], scores: &[f64]) -> Self {
        Self::with_rule(labels, scores, |s| s > 0.5)
    }

    /// Metrics with a row predicted 1 when its score is at least `threshold` (an operating
    /// threshold chosen by a rule); the AUCs do not depend on it.
    pub fn at_threshold(labels: &[u8], scores: &[f64], threshold: f64) -> Self {
        Self::with_rule(labels, scores, |s| s >= threshold)
    }

    fn with_rule(labels: &[u8], scores: &[f64], positive: impl Fn(f64) -> bool) -> Self {
        let mut cm = ConfusionMatrix::default();
        for (l, s) in labels.iter().zip(scores) {
            match (*l != 0, positive(*s)) {
                (false, false) => cm.true_negative += 1,
                (false, true) => cm.false_positive += 1,
                (true, false) => cm.false_negative += 1,
                (true, true) => cm.true_positive += 1,
            }
        }
        let rows = labels.len() as u64;
        let precision = ratio(cm.true_positive, cm.true_positive + cm.false_positive);
        let recall = ratio(cm.true_positive, cm.true_positive + cm.false_negative);
        let f1 = if precision + recall > 0.0 {
            2.0 * precision * recall / (precision + recall)
        } else {
            0.0
        };
        let positives = cm.true_positive + cm.false_negative;
        let negatives = cm.true_negative + cm.false_positive;
        let roc_auc = (positives > 0 && negatives > 0).then(|| {
            let points: Vec<(f64, f64)> = roc_curve(labels, scores)
                .iter()
                .map(|p| (p.fpr, p.tpr))
                .collect();
            trapezoid(&points)
        });
        let pr_auc = (positives > 0).then(|| {
            let g = groups(labels, scores);
            let (mut tp, mut fp) = (0u64, 0u64);
            let mut points = Vec::with_capacity(g.len() + 1);
            for (_, pos, neg) in g {
                tp += pos;
                fp += neg;
                points.push((ratio(tp, positives), ratio(tp, tp + fp)));
            }
            // Spark starts the curve at recall 0 with the first precision.
            let first = points.first().map_or(1.0, |p| p.1);
            points.insert(0, (0.0, first));
            trapezoid(&points)
        });
        BinaryMetrics {
            rows,
            accuracy: ratio(cm.true_positive + cm.true_negative, rows),
            precision,
            recall,
            f1,
            roc_auc,
            pr_auc,
            confusion: cm,
        }
    }
}

/// Mean and sample standard deviation of one metric over folds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MeanSd {
    /// Mean.
    pub mean: f64,
    /// Sample standard deviation (0 for one fold).
    pub sd: f64,
}

impl MeanSd {
    fn of(values: &[f64]) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let sd = if values.len() > 1 {
            (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
        } else {
            0.0
        };
        Some(MeanSd { mean, sd })
    }
}

/// Cross-validation results: each fold's metrics and their mean ± sd.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CrossValidation {
    /// Metrics of each fold, evaluated on the fold after training on the other folds.
    pub folds: Vec<BinaryMetrics>,
    /// Accuracy over folds.
    pub accuracy: MeanSd,
    /// Precision over folds.
    pub precision: MeanSd,
    /// Recall over folds.
    pub recall: MeanSd,
    /// F1 over folds.
    pub f1: MeanSd,
    /// ROC AUC over the folds that have both classes.
    pub roc_auc: Option<MeanSd>,
    /// PR AUC over the folds that have positives.
    pub pr_auc: Option<MeanSd>,
}

impl CrossValidation {
    /// Summarizes fold metrics; `None` without folds.
    pub fn summarize(folds: Vec<BinaryMetrics>) -> Option<Self> {
        let of =
            |f: fn(&BinaryMetrics) -> f64| MeanSd::of(&folds.iter().map(f).collect::<Vec<_>>());
        let opt = |f: fn(&BinaryMetrics) -> Option<f64>| {
            MeanSd::of(&folds.iter().filter_map(f).collect::<Vec<_>>())
        };
        Some(CrossValidation {
            accuracy: of(|m| m.accuracy)?,
            precision: of(|m| m.precision)?,
            recall: of(|m| m.recall)?,
            f1: of(|m| m.f1)?,
            roc_auc: opt(|m| m.roc_auc),
            pr_auc: opt(|m| m.pr_auc),
            folds,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_ratios() {
        let labels = [1, 1, 1, 0, 0, 0, 0, 0];
        let scores = [0.9, 0.8, 0.2, 0.7, 0.1, 0.1, 0.3, 0.2];
        let m = BinaryMetrics::compute(&labels, &scores);
        assert_eq!(
            m.confusion,
            ConfusionMatrix {
                true_negative: 4,
                false_positive: 1,
                false_negative: 1,
                true_positive: 2
            }
        );
        assert!((m.accuracy - 0.75).abs() < 1e-12);
        assert!((m.precision - 2.0 / 3.0).abs() < 1e-12);
        assert!((m.recall - 2.0 / 3.0).abs() < 1e-12);
        assert!((m.f1 - 2.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn auc_of_perfect_random_and_tied_scores() {
        let labels = [0, 0, 1, 1];
        let perfect = BinaryMetrics::compute(&labels, &[0.1, 0.2, 0.8, 0.9]);
        assert_eq!(perfect.roc_auc, Some(1.0));
        assert_eq!(perfect.pr_auc, Some(1.0));
        let tied = BinaryMetrics::compute(&labels, &[0.5; 4]);
        assert_eq!(tied.roc_auc, Some(0.5));
        // One positive ranked first, one last: AUC 0.5 as well.
        let mixed = BinaryMetrics::compute(&labels, &[0.3, 0.2, 0.9, 0.1]);
        assert_eq!(mixed.roc_auc, Some(0.5));
    }

    #[test]
    fn always_negative_baseline_has_high_accuracy_and_no_recall() {
        let labels: Vec<u8> = (0..100).map(|i| u8::from(i < 5)).collect();
        let m = BinaryMetrics::compute(&labels, &[0.0; 100]);
        assert!((m.accuracy - 0.95).abs() < 1e-12);
        assert_eq!((m.recall, m.precision, m.f1), (0.0, 0.0, 0.0));
        assert_eq!(m.roc_auc, Some(0.5));
    }

    #[test]
    fn one_class_has_no_auc_and_cv_summarizes() {
        let m = BinaryMetrics::compute(&[0, 0], &[0.2, 0.7]);
        assert_eq!(m.roc_auc, None);
        let a = BinaryMetrics::compute(&[0, 1], &[0.2, 0.7]);
        let b = BinaryMetrics::compute(&[0, 1], &[0.7, 0.2]);
        let cv = CrossValidation::summarize(vec![a, b]).unwrap();
        assert!((cv.accuracy.mean - 0.5).abs() < 1e-12);
        assert!((cv.accuracy.sd - 2f64.sqrt() / 2.0).abs() < 1e-12);
        assert!(CrossValidation::summarize(Vec::new()).is_none());
    }
}
