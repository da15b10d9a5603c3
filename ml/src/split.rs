//! Choosing the best split of a node from its histogram, on the driver. Class counts arrive as
//! integers; class weights and the fixed-point row weights are applied here, in a fixed order, so
//! the choice is a pure function of the histogram. Continuous features try every bin edge, with
//! missing values on either side; categorical features order their categories by the weighted
//! share of class 1 (MLlib's ordering for binary labels) and try every prefix. The best split has
//! the largest gain; exact ties go to the lower feature index, then to the earlier candidate
//! (lower threshold; missing values left before right; fewer categories on the left). This
//! module does not touch data.

use crate::binning::{FeatureBins, MISSING_BIN};
use crate::histogram::{BinRule, Layout, WEIGHT_SCALE};
use crate::params::Impurity;

/// A split must lower impurity by more than this, whatever `min_info_gain` says, so rounding
/// noise never splits a node.
pub(crate) const MIN_GAIN_EPSILON: f64 = 1e-12;

/// Raw class counts and (weighted) class weights of a set of rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Stats {
    /// Rows of class 0 and 1.
    pub(crate) count: [u64; 2],
    /// Row weights of class 0 and 1, fixed point (equal to `count` when there is no weight
    /// column, in units of 1).
    pub(crate) weight: [u64; 2],
}

impl Stats {
    pub(crate) fn rows(&self) -> u64 {
        self.count[0] + self.count[1]
    }

    fn add(&mut self, other: &Stats) {
        for c in 0..2 {
            self.count[c] += other.count[c];
            self.weight[c] = self.weight[c].wrapping_add(other.weight[c]);
        }
    }

    pub(crate) fn minus(&self, other: &Stats) -> Stats {
        let mut out = *self;
        for c in 0..2 {
            out.count[c] -= other.count[c];
            out.weight[c] = out.weight[c].wrapping_sub(other.weight[c]);
        }
        out
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

    /// Gain of splitting `parent` into `left` and the rest, if the split is allowed.
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
}

/// The chosen split of a node.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Candidate {
    pub(crate) feature: usize,
    pub(crate) rule: BinRule,
    pub(crate) gain: f64,
    pub(crate) left: Stats,
    pub(crate) right: Stats,
}

/// Stats of one bin of one feature in a node block.
fn cell(block: &[u64], layout: &Layout, feature: usize, bin: usize) -> Stats {
    let i = (layout.offsets[feature] + bin) * layout.stats;
    if layout.stats == 4 {
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

/// Stats of the whole node (every row falls in exactly one bin of feature 0).
pub(crate) fn node_stats(block: &[u64], layout: &Layout) -> Stats {
    let mut total = Stats::default();
    for bin in 0..layout.bins[0] {
        total.add(&cell(block, layout, 0, bin));
    }
    total
}

/// The best allowed split of a node, if any.
pub(crate) fn best_split(
    block: &[u64],
    layout: &Layout,
    features: &[FeatureBins],
    scoring: &Scoring,
) -> Option<Candidate> {
    let parent = node_stats(block, layout);
    let parent_impurity = scoring.impurity_of(scoring.totals(&parent));
    if parent_impurity <= 0.0 {
        return None;
    }
    let mut best: Option<Candidate> = None;
    let consider = |feature: usize, rule: BinRule, left: Stats, best: &mut Option<Candidate>| {
        if let Some(gain) = scoring.gain(&parent, parent_impurity, &left)
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
        let missing = cell(block, layout, f, MISSING_BIN as usize);
        match bins {
            FeatureBins::Continuous { .. } => {
                let value_bins = layout.bins[f];
                let mut left = Stats::default();
                // Split after value bin b: bins 1..=b left. The last value bin has no edge.
                for b in 1..value_bins - 1 {
                    left.add(&cell(block, layout, f, b));
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
                // Non-empty bins (missing included) ordered by weighted share of class 1.
                let mut order: Vec<(f64, u16, Stats)> = (0..layout.bins[f])
                    .map(|b| (b as u16, cell(block, layout, f, b)))
                    .filter(|(_, s)| s.rows() > 0)
                    .map(|(b, s)| (scoring.probability(&s), b, s))
                    .collect();
                order.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                let mut left = Stats::default();
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
    if let Some(c) = best.as_mut() {
        let missing = cell(block, layout, c.feature, MISSING_BIN as usize);
        if missing.rows() == 0 {
            let (tl, tr) = (scoring.totals(&c.left), scoring.totals(&c.right));
            let left_heavier = tl[0] + tl[1] >= tr[0] + tr[1];
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
        let layout = Layout::new(&bins, false);
        let mut block = vec![0; layout.node_stride];
        for (f, cells) in features.iter().enumerate() {
            for (b, c) in cells.iter().enumerate() {
                let i = (layout.offsets[f] + b) * 2;
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
}
