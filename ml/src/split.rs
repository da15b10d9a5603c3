//! Choosing the best split of a node from its histogram, on the driver. Counters arrive as
//! integers (class counts and fixed-point weights for classification trees; row counts and
//! fixed-point gradient and hessian sums for boosted trees); weights are applied here, in a
//! fixed order, so the choice is a pure function of the histogram. A [`Criterion`] scores the
//! candidates: [`Scoring`] by impurity decrease (Gini or entropy, MLlib's classification
//! trees), [`Newton`] by the second-order gain of the logistic loss (boosted trees, as XGBoost
//! and LightGBM do). Continuous features try every bin edge, with missing values on either side;
//! categorical features order their categories by the criterion's key (the weighted share of
//! class 1, MLlib's ordering for binary labels, or the Newton step of each category) and try
//! every prefix. The best split has the largest gain; exact ties go to the lower feature index,
//! then to the earlier candidate (lower threshold; missing values left before right; fewer
//! categories on the left). This module does not touch data.

use crate::binning::{FeatureBins, MISSING_BIN};
use crate::histogram::{BinRule, Layout, WEIGHT_SCALE};
use crate::logistic::GRADIENT_SCALE;
use crate::params::Impurity;

/// A split must lower impurity by more than this, whatever `min_info_gain` says, so rounding
/// noise never splits a node.
pub(crate) const MIN_GAIN_EPSILON: f64 = 1e-12;

/// The counters of a cell, or of a sum of cells: what split selection adds and subtracts.
pub(crate) trait CellStats:
    Copy + Default + PartialEq + std::fmt::Debug + Send + Sync
{
    /// The cell whose first counter is `block[at]`, in a block with `stats` counters per cell.
    fn read(block: &[u64], at: usize, stats: usize) -> Self;
    /// Adds another cell.
    fn add(&mut self, other: &Self);
    /// This minus a part of it.
    fn minus(&self, other: &Self) -> Self;
    /// Rows (counted with their multiplicity).
    fn rows(&self) -> u64;
}

/// Raw class counts and (weighted) class weights of a set of rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Stats {
    /// Rows of class 0 and 1.
    pub(crate) count: [u64; 2],
    /// Row weights of class 0 and 1, fixed point (equal to `count` when there is no weight
    /// column, in units of 1).
    pub(crate) weight: [u64; 2],
}

impl CellStats for Stats {
    fn read(block: &[u64], i: usize, stats: usize) -> Self {
        if stats == 4 {
            Stats {
                count: [block[i], block[i + 1]],
                weight: [block[i + 2], block[i + 3]],
            }
        } else {
            Stats {
                count: [block[i], block[i + 1]],
                weight: [block[i], block[i + 1]],
            }
        }
    }

    fn add(&mut self, other: &Stats) {
        for c in 0..2 {
            self.count[c] += other.count[c];
            self.weight[c] = self.weight[c].wrapping_add(other.weight[c]);
        }
    }

    fn minus(&self, other: &Stats) -> Stats {
        let mut out = *self;
        for c in 0..2 {
            out.count[c] -= other.count[c];
            out.weight[c] = out.weight[c].wrapping_sub(other.weight[c]);
        }
        out
    }

    fn rows(&self) -> u64 {
        self.count[0] + self.count[1]
    }
}

/// Rows and fixed-point sums of logistic-loss gradients and hessians.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct GradStats {
    /// Rows.
    pub(crate) rows: u64,
    /// Sum of gradients, fixed point.
    pub(crate) grad: i64,
    /// Sum of hessians, fixed point.
    pub(crate) hess: i64,
}

impl GradStats {
    /// The gradient sum.
    pub(crate) fn g(&self) -> f64 {
        self.grad as f64 / GRADIENT_SCALE
    }

    /// The hessian sum.
    pub(crate) fn h(&self) -> f64 {
        self.hess as f64 / GRADIENT_SCALE
    }
}

impl CellStats for GradStats {
    fn read(block: &[u64], i: usize, _stats: usize) -> Self {
        GradStats {
            rows: block[i],
            grad: block[i + 1] as i64,
            hess: block[i + 2] as i64,
        }
    }

    fn add(&mut self, other: &Self) {
        self.rows += other.rows;
        self.grad = self.grad.wrapping_add(other.grad);
        self.hess = self.hess.wrapping_add(other.hess);
    }

    fn minus(&self, other: &Self) -> Self {
        GradStats {
            rows: self.rows - other.rows,
            grad: self.grad.wrapping_sub(other.grad),
            hess: self.hess.wrapping_sub(other.hess),
        }
    }

    fn rows(&self) -> u64 {
        self.rows
    }
}

/// How candidates are scored.
pub(crate) trait Criterion {
    /// The counters it reads.
    type Stats: CellStats;
    /// A node's own score, from which gains are measured; `None` when the node cannot be
    /// improved (it is pure).
    fn parent(&self, s: &Self::Stats) -> Option<f64>;
    /// Gain of splitting `parent` into `left` and the rest, if the split is allowed.
    fn gain(&self, parent: &Self::Stats, parent_score: f64, left: &Self::Stats) -> Option<f64>;
    /// Categories are tried in ascending order of this key.
    fn category_key(&self, s: &Self::Stats) -> f64;
    /// The heavier child by this mass takes missing values when the node saw none.
    fn mass(&self, s: &Self::Stats) -> f64;
    /// Whether a node with these stats is worth a histogram at all (a pure node is not).
    fn may_split(&self, _s: &Self::Stats) -> bool {
        true
    }
}

/// How stats become the weighted class totals that impurity and probabilities are computed on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scoring {
    pub(crate) impurity: Impurity,
    pub(crate) class_weights: [f64; 2],
    pub(crate) weighted: bool,
    pub(crate) min_instances: u64,
    pub(crate) min_info_gain: f64,
}

impl Scoring {
    /// Weighted totals of class 0 and 1.
    pub(crate) fn totals(&self, s: &Stats) -> [f64; 2] {
        let base = |c: usize| {
            if self.weighted {
                s.weight[c] as f64 / WEIGHT_SCALE
            } else {
                s.count[c] as f64
            }
        };
        [
            base(0) * self.class_weights[0],
            base(1) * self.class_weights[1],
        ]
    }

    /// Impurity of weighted totals.
    pub(crate) fn impurity_of(&self, t: [f64; 2]) -> f64 {
        let total = t[0] + t[1];
        if total <= 0.0 {
            return 0.0;
        }
        let p = [t[0] / total, t[1] / total];
        match self.impurity {
            Impurity::Gini => 1.0 - p[0] * p[0] - p[1] * p[1],
            Impurity::Entropy => p.iter().filter(|p| **p > 0.0).map(|p| -p * p.log2()).sum(),
        }
    }

    /// Probability of class 1.
    pub(crate) fn probability(&self, s: &Stats) -> f64 {
        let t = self.totals(s);
        let total = t[0] + t[1];
        if total > 0.0 { t[1] / total } else { 0.0 }
    }
}

impl Criterion for Scoring {
    type Stats = Stats;

    fn parent(&self, s: &Stats) -> Option<f64> {
        let impurity = self.impurity_of(self.totals(s));
        (impurity > 0.0).then_some(impurity)
    }

    fn gain(&self, parent: &Stats, parent_impurity: f64, left: &Stats) -> Option<f64> {
        let right = parent.minus(left);
        if left.rows() < self.min_instances || right.rows() < self.min_instances {
            return None;
        }
        let (tl, tr) = (self.totals(left), self.totals(&right));
        let (wl, wr) = (tl[0] + tl[1], tr[0] + tr[1]);
        if wl <= 0.0 || wr <= 0.0 {
            return None;
        }
        let w = wl + wr;
        let gain = parent_impurity - wl / w * self.impurity_of(tl) - wr / w * self.impurity_of(tr);
        (gain > MIN_GAIN_EPSILON && gain >= self.min_info_gain).then_some(gain)
    }

    fn category_key(&self, s: &Stats) -> f64 {
        self.probability(s)
    }

    fn mass(&self, s: &Stats) -> f64 {
        let t = self.totals(s);
        t[0] + t[1]
    }

    fn may_split(&self, s: &Stats) -> bool {
        s.count[0] > 0 && s.count[1] > 0
    }
}

/// Newton boosting's criterion for the logistic loss: a node with gradient sum `G` and hessian
/// sum `H` scores `G² / (H + λ)`, a split gains half the children's scores minus the parent's,
/// and a leaf's value is `-G / (H + λ)`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Newton {
    /// L2 regularization of leaf values (λ).
    pub(crate) lambda: f64,
    pub(crate) min_instances: u64,
    pub(crate) min_info_gain: f64,
}

impl Newton {
    fn score(&self, s: &GradStats) -> f64 {
        let (g, h) = (s.g(), s.h());
        g * g / (h + self.lambda)
    }

    /// The Newton step of a node: the leaf value that minimizes its second-order loss.
    pub(crate) fn leaf_value(&self, s: &GradStats) -> f64 {
        let h = s.h() + self.lambda;
        if h > 0.0 { -s.g() / h } else { 0.0 }
    }
}

impl Criterion for Newton {
    type Stats = GradStats;

    fn parent(&self, s: &GradStats) -> Option<f64> {
        (s.hess > 0 && s.h() + self.lambda > 0.0).then(|| self.score(s))
    }

    fn gain(&self, parent: &GradStats, parent_score: f64, left: &GradStats) -> Option<f64> {
        let right = parent.minus(left);
        if left.rows < self.min_instances || right.rows < self.min_instances {
            return None;
        }
        if left.hess <= 0 || right.hess <= 0 {
            return None;
        }
        let gain = 0.5 * (self.score(left) + self.score(&right) - parent_score);
        (gain > MIN_GAIN_EPSILON && gain >= self.min_info_gain).then_some(gain)
    }

    fn category_key(&self, s: &GradStats) -> f64 {
        self.leaf_value(s)
    }

    fn mass(&self, s: &GradStats) -> f64 {
        s.h()
    }
}

/// The chosen split of a node.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Candidate<S> {
    pub(crate) feature: usize,
    pub(crate) rule: BinRule,
    pub(crate) gain: f64,
    pub(crate) left: S,
    pub(crate) right: S,
}

/// Stats of one bin of one feature the block holds.
fn cell<S: CellStats>(block: &[u64], layout: &Layout, offset: usize, bin: usize) -> S {
    S::read(block, (offset + bin) * layout.stats, layout.stats)
}

/// Stats of the whole node (every row falls in exactly one bin of each feature; the block's
/// first feature is summed).
pub(crate) fn node_stats<S: CellStats>(block: &[u64], layout: &Layout) -> S {
    let mut total = S::default();
    if let Some((f, offset)) = layout
        .offsets
        .iter()
        .enumerate()
        .find_map(|(f, o)| o.map(|o| (f, o)))
    {
        for bin in 0..layout.bins[f] {
            total.add(&cell(block, layout, offset, bin));
        }
    }
    total
}

/// The best allowed split of a node, among the features its block holds, if any.
pub(crate) fn best_split<C: Criterion>(
    block: &[u64],
    layout: &Layout,
    features: &[FeatureBins],
    criterion: &C,
) -> Option<Candidate<C::Stats>> {
    let parent: C::Stats = node_stats(block, layout);
    let parent_score = criterion.parent(&parent)?;
    let mut best: Option<Candidate<C::Stats>> = None;
    let consider =
        |feature: usize, rule: BinRule, left: C::Stats, best: &mut Option<Candidate<C::Stats>>| {
            if let Some(gain) = criterion.gain(&parent, parent_score, &left)
                && best.as_ref().is_none_or(|b| gain > b.gain)
            {
                *best = Some(Candidate {
                    feature,
                    rule,
                    gain,
                    left,
                    right: parent.minus(&left),
                });
            }
        };
    for (f, bins) in features.iter().enumerate() {
        let Some(offset) = layout.offsets[f] else {
            continue;
        };
        let missing: C::Stats = cell(block, layout, offset, MISSING_BIN as usize);
        match bins {
            FeatureBins::Continuous { .. } => {
                let value_bins = layout.bins[f];
                let mut left = C::Stats::default();
                // Split after value bin b: bins 1..=b left. The last value bin has no edge.
                for b in 1..value_bins - 1 {
                    left.add(&cell(block, layout, offset, b));
                    let mut with_missing = left;
                    with_missing.add(&missing);
                    if missing.rows() > 0 {
                        consider(
                            f,
                            BinRule::Upto {
                                bin: b as u16,
                                missing_left: true,
                            },
                            with_missing,
                            &mut best,
                        );
                        consider(
                            f,
                            BinRule::Upto {
                                bin: b as u16,
                                missing_left: false,
                            },
                            left,
                            &mut best,
                        );
                    } else {
                        consider(
                            f,
                            BinRule::Upto {
                                bin: b as u16,
                                missing_left: true,
                            },
                            left,
                            &mut best,
                        );
                    }
                }
            }
            FeatureBins::Categorical { .. } => {
                // Non-empty bins (missing included) ordered by the criterion's key.
                let mut order: Vec<(f64, u16, C::Stats)> = (0..layout.bins[f])
                    .map(|b| (b as u16, cell::<C::Stats>(block, layout, offset, b)))
                    .filter(|(_, s)| s.rows() > 0)
                    .map(|(b, s)| (criterion.category_key(&s), b, s))
                    .collect();
                order.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                let mut left = C::Stats::default();
                for i in 0..order.len().saturating_sub(1) {
                    left.add(&order[i].2);
                    let mut set: Vec<u16> = order[..=i].iter().map(|o| o.1).collect();
                    set.sort_unstable();
                    consider(f, BinRule::Set { bins: set }, left, &mut best);
                }
            }
        }
    }
    // Where missing values go when the node saw none: to the heavier child (left on a tie).
    if let Some(c) = best.as_mut()
        && let Some(offset) = layout.offsets[c.feature]
    {
        let missing: C::Stats = cell(block, layout, offset, MISSING_BIN as usize);
        if missing.rows() == 0 {
            let left_heavier = criterion.mass(&c.left) >= criterion.mass(&c.right);
            match &mut c.rule {
                BinRule::Upto { missing_left, .. } => *missing_left = left_heavier,
                BinRule::Set { bins } => {
                    if left_heavier {
                        bins.insert(0, MISSING_BIN);
                    }
                }
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scoring() -> Scoring {
        Scoring {
            impurity: Impurity::Gini,
            class_weights: [1.0, 1.0],
            weighted: false,
            min_instances: 1,
            min_info_gain: 0.0,
        }
    }

    /// A one-node block from per-feature, per-bin class counts.
    fn block(features: &[Vec<[u64; 2]>]) -> (Vec<u64>, Layout) {
        let bins: Vec<u32> = features.iter().map(|f| f.len() as u32).collect();
        let layout = Layout::new(&bins, 2);
        let mut block = vec![0; layout.node_stride];
        for (f, cells) in features.iter().enumerate() {
            for (b, c) in cells.iter().enumerate() {
                let i = (layout.offsets[f].unwrap() + b) * 2;
                block[i] = c[0];
                block[i + 1] = c[1];
            }
        }
        (block, layout)
    }

    #[test]
    fn picks_the_separating_threshold() {
        // Feature 0: bins (missing, a, b, c) = (-, 5×0, 5×1, 0). Feature 1 is noise.
        let (block, layout) = block(&[
            vec![[0, 0], [5, 0], [0, 5], [0, 0]],
            vec![[0, 0], [3, 2], [2, 3]],
        ]);
        let features = vec![
            FeatureBins::Continuous {
                edges: vec![1.0, 2.0],
            },
            FeatureBins::Continuous { edges: vec![1.0] },
        ];
        let best = best_split(&block, &layout, &features, &scoring()).unwrap();
        assert_eq!(best.feature, 0);
        assert_eq!(
            best.rule,
            BinRule::Upto {
                bin: 1,
                missing_left: true
            }
        );
        assert!((best.gain - 0.5).abs() < 1e-12);
        assert_eq!(best.left.count, [5, 0]);
    }

    #[test]
    fn ties_go_to_the_lower_feature() {
        let f = vec![[0, 0], [4, 1], [1, 4]];
        let (block, layout) = block(&[f.clone(), f]);
        let features = vec![FeatureBins::Continuous { edges: vec![0.0] }; 2];
        assert_eq!(
            best_split(&block, &layout, &features, &scoring())
                .unwrap()
                .feature,
            0
        );
    }

    #[test]
    fn missing_values_can_go_right() {
        // Missing rows are all class 1, like the high values.
        let (block, layout) = block(&[vec![[0, 4], [5, 0], [0, 5]]]);
        let features = vec![FeatureBins::Continuous { edges: vec![0.0] }];
        let best = best_split(&block, &layout, &features, &scoring()).unwrap();
        assert_eq!(
            best.rule,
            BinRule::Upto {
                bin: 1,
                missing_left: false
            }
        );
        assert_eq!(best.right.count, [0, 9]);
    }

    #[test]
    fn categories_are_ordered_by_class_share() {
        // Categories 0 and 2 are positive, 1 and 3 negative: the best split groups {1, 3}.
        let (block, layout) = block(&[vec![[0, 0], [0, 6], [6, 0], [1, 5], [5, 1]]]);
        let features = vec![FeatureBins::Categorical { categories: 4 }];
        let best = best_split(&block, &layout, &features, &scoring()).unwrap();
        assert_eq!(
            best.rule,
            BinRule::Set {
                bins: vec![0, 2, 4]
            },
            "missing goes with the heavier side"
        );
        assert_eq!(best.left.count, [11, 1]);
    }

    #[test]
    fn min_instances_and_min_info_gain_reject_splits() {
        let (block, layout) = block(&[vec![[0, 0], [1, 0], [3, 4]]]);
        let features = vec![FeatureBins::Continuous { edges: vec![0.0] }];
        let strict = Scoring {
            min_instances: 2,
            ..scoring()
        };
        assert!(best_split(&block, &layout, &features, &strict).is_none());
        let greedy = Scoring {
            min_info_gain: 0.5,
            ..scoring()
        };
        assert!(best_split(&block, &layout, &features, &greedy).is_none());
        assert!(best_split(&block, &layout, &features, &scoring()).is_some());
    }

    #[test]
    fn class_weights_change_the_choice() {
        // 1 positive among 20: unweighted, isolating it is worth little; weighted 19:1 it is
        // worth a lot, and the leaf probability follows the weights.
        let (block, layout) = block(&[vec![[0, 0], [10, 0], [9, 1]]]);
        let features = vec![FeatureBins::Continuous { edges: vec![0.0] }];
        let plain = best_split(&block, &layout, &features, &scoring()).unwrap();
        let weighted = Scoring {
            class_weights: [1.0, 19.0],
            ..scoring()
        };
        let heavy = best_split(&block, &layout, &features, &weighted).unwrap();
        assert!(
            heavy.gain > plain.gain * 5.0,
            "{} vs {}",
            heavy.gain,
            plain.gain
        );
        assert!((weighted.probability(&heavy.right) - 19.0 / 28.0).abs() < 1e-12);
    }

    #[test]
    fn newton_splits_where_gradients_change_sign_and_steps_against_the_gradient() {
        // Feature 0: bin 1 rows pull the margin up (negative gradients), bin 2 rows down.
        let bins = [3u32];
        let layout = Layout::new(&bins, 3);
        let mut block = vec![0u64; layout.node_stride];
        let put = |block: &mut Vec<u64>, bin: usize, rows: u64, g: f64, h: f64| {
            let i = bin * 3;
            block[i] = rows;
            block[i + 1] = crate::logistic::to_fixed(g) as u64;
            block[i + 2] = crate::logistic::to_fixed(h) as u64;
        };
        put(&mut block, 1, 10, -4.0, 2.5);
        put(&mut block, 2, 10, 3.0, 2.0);
        let newton = Newton {
            lambda: 1.0,
            min_instances: 1,
            min_info_gain: 0.0,
        };
        let features = vec![FeatureBins::Continuous { edges: vec![0.5] }];
        let best = best_split(&block, &layout, &features, &newton).unwrap();
        assert_eq!(best.left.rows, 10);
        let expected = 0.5 * (16.0 / 3.5 + 9.0 / 3.0 - 1.0 / 5.5);
        assert!(
            (best.gain - expected).abs() < 1e-9,
            "{} vs {expected}",
            best.gain
        );
        assert!((newton.leaf_value(&best.left) - 4.0 / 3.5).abs() < 1e-9);
        assert!((newton.leaf_value(&best.right) + 1.0).abs() < 1e-9);
        // Too few rows on a side: no split.
        let strict = Newton {
            min_instances: 11,
            ..newton
        };
        assert!(best_split(&block, &layout, &features, &strict).is_none());
    }

    #[test]
    fn a_block_without_a_feature_never_splits_on_it() {
        // Feature 0 separates perfectly but is not in the block; feature 1 is.
        let bins = [3u32, 3];
        let layout = Layout::subset(&bins, 2, &[1]);
        let mut block = vec![0u64; layout.node_stride];
        // Feature 1: bins 1 and 2 each hold a mix.
        block[2..6].copy_from_slice(&[4, 1, 1, 4]);
        let features = vec![FeatureBins::Continuous { edges: vec![0.0] }; 2];
        let best = best_split(&block, &layout, &features, &scoring()).unwrap();
        assert_eq!(best.feature, 1);
        assert_eq!(node_stats::<Stats>(&block, &layout).count, [5, 5]);
    }
}
