//! Exact per-prediction explanations: SHAP values of tree models by TreeSHAP, the exact
//! path-dependent algorithm of Lundberg, Erion and Lee ("Consistent individualized feature
//! attribution for tree ensembles", 2018, Algorithm 2). A feature's contribution is its Shapley
//! value in the game whose value for a set `S` of known features is the tree's expected output
//! when the other features are unknown and a row goes down both sides of their splits in
//! proportion to the training rows that went each way (the node "cover"). Contributions add up
//! to the model's output minus its expected output over the training rows, exactly (up to
//! rounding). The algorithm follows every root-to-leaf path once, keeping for the features on
//! the path the share of the subsets that reach it; its cost is `O(leaves · depth²)` per tree.
//! This module only computes; it knows trees only through [`ShapTree`].

use crate::model::Split;

/// A tree as TreeSHAP reads it: nodes by index (the root is 0), each a leaf with a value or a
/// split with two children, and each with the (weighted) training rows that reached it.
pub(crate) trait ShapTree {
    /// The split of node `i`, or `None` for a leaf.
    fn split(&self, i: usize) -> Option<&Split>;
    /// The value of leaf `i`.
    fn value(&self, i: usize) -> f64;
    /// The training rows that reached node `i`.
    fn cover(&self, i: usize) -> f64;
}

/// The tree's expected output: its leaves' values weighted by the share of training rows that
/// reach them.
pub(crate) fn expected_value(tree: &impl ShapTree) -> f64 {
    fn walk(tree: &impl ShapTree, node: usize) -> f64 {
        match tree.split(node) {
            None => tree.value(node),
            Some(s) => {
                let cover = tree.cover(node);
                if cover <= 0.0 {
                    return 0.5 * (walk(tree, s.left) + walk(tree, s.right));
                }
                tree.cover(s.left) / cover * walk(tree, s.left)
                    + tree.cover(s.right) / cover * walk(tree, s.right)
            }
        }
    }
    walk(tree, 0)
}

/// One feature on the path from the root: the share of its cover the path keeps when the
/// feature is unknown (`zero`), whether a row with its known value follows the path (`one`),
/// and the weight of the subsets of the path's features that reach here.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PathElement {
    feature: Option<usize>,
    zero: f64,
    one: f64,
    weight: f64,
}

/// Adds a feature to a path of `path.len() - 1` elements (its last slot is free) and updates the
/// subset weights (the paper's EXTEND).
fn extend(path: &mut [PathElement], zero: f64, one: f64, feature: Option<usize>) {
    let depth = path.len() - 1;
    path[depth] = PathElement {
        feature,
        zero,
        one,
        weight: if depth == 0 { 1.0 } else { 0.0 },
    };
    let d = depth as f64;
    for i in (0..depth).rev() {
        path[i + 1].weight += one * path[i].weight * (i as f64 + 1.0) / (d + 1.0);
        path[i].weight = zero * path[i].weight * (d - i as f64) / (d + 1.0);
    }
}

/// Removes element `index` from the path, undoing its [`extend`] (the paper's UNWIND); the path
/// is one element shorter afterwards.
fn unwind(path: &mut [PathElement], index: usize) {
    let depth = path.len() - 1;
    let d = depth as f64;
    let PathElement { zero, one, .. } = path[index];
    let mut next = path[depth].weight;
    for i in (0..depth).rev() {
        if one != 0.0 {
            let kept = path[i].weight;
            path[i].weight = next * (d + 1.0) / ((i as f64 + 1.0) * one);
            next = kept - path[i].weight * zero * (d - i as f64) / (d + 1.0);
        } else {
            path[i].weight = path[i].weight * (d + 1.0) / (zero * (d - i as f64));
        }
    }
    for i in index..depth {
        path[i].feature = path[i + 1].feature;
        path[i].zero = path[i + 1].zero;
        path[i].one = path[i + 1].one;
    }
}

/// The total weight the path would have without element `index`, without changing it.
fn unwound_sum(path: &[PathElement], index: usize) -> f64 {
    let depth = path.len() - 1;
    let d = depth as f64;
    let PathElement { zero, one, .. } = path[index];
    let mut next = path[depth].weight;
    let mut total = 0.0;
    for i in (0..depth).rev() {
        if one != 0.0 {
            let w = next * (d + 1.0) / ((i as f64 + 1.0) * one);
            total += w;
            next = path[i].weight - w * zero * ((d - i as f64) / (d + 1.0));
        } else {
            total += (path[i].weight / zero) / ((d - i as f64) / (d + 1.0));
        }
    }
    total
}

/// Adds `scale` times the SHAP values of one row in `tree` to `phi` (one entry per feature).
/// `goes_left` says which way the row goes at a split. `buffer` is scratch space reused from
/// call to call (each level of the recursion copies its path into the next free part of it).
pub(crate) fn add_contributions(
    tree: &impl ShapTree,
    goes_left: &impl Fn(&Split) -> bool,
    scale: f64,
    phi: &mut [f64],
    buffer: &mut Vec<PathElement>,
) {
    let mut walk = Walk {
        tree,
        goes_left,
        scale,
        phi,
        buffer,
    };
    walk.recurse(0, 0, 0, 1.0, 1.0, None);
}

/// One row's walk through one tree.
struct Walk<'a, T, F> {
    tree: &'a T,
    goes_left: &'a F,
    scale: f64,
    phi: &'a mut [f64],
    buffer: &'a mut Vec<PathElement>,
}

impl<T: ShapTree, F: Fn(&Split) -> bool> Walk<'_, T, F> {
    /// Visits `node` with its parent's path at `buffer[parent..parent + len]`, extended by the
    /// parent's split feature.
    fn recurse(
        &mut self,
        node: usize,
        parent: usize,
        len: usize,
        zero: f64,
        one: f64,
        feature: Option<usize>,
    ) {
        let start = parent + len;
        if self.buffer.len() < start + len + 1 {
            self.buffer.resize(start + len + 1, PathElement::default());
        }
        self.buffer.copy_within(parent..parent + len, start);
        let mut len = len + 1;
        extend(&mut self.buffer[start..start + len], zero, one, feature);
        let Some(split) = self.tree.split(node) else {
            let value = self.tree.value(node);
            let path = &self.buffer[start..start + len];
            for i in 1..len {
                let w = unwound_sum(path, i);
                let el = path[i];
                if let Some(f) = el.feature
                    && let Some(slot) = self.phi.get_mut(f)
                {
                    *slot += self.scale * w * (el.one - el.zero) * value;
                }
            }
            return;
        };
        let (hot, cold) = if (self.goes_left)(split) {
            (split.left, split.right)
        } else {
            (split.right, split.left)
        };
        let cover = self.tree.cover(node);
        let share = |child: usize| {
            if cover > 0.0 {
                self.tree.cover(child) / cover
            } else {
                0.5
            }
        };
        let (hot_share, cold_share) = (share(hot), share(cold));
        let (mut incoming_zero, mut incoming_one) = (1.0, 1.0);
        // A feature already on the path is taken off and put back with both splits' shares.
        let path = &mut self.buffer[start..start + len];
        if let Some(k) = path.iter().position(|e| e.feature == Some(split.feature)) {
            incoming_zero = path[k].zero;
            incoming_one = path[k].one;
            unwind(path, k);
            len -= 1;
        }
        let f = Some(split.feature);
        self.recurse(hot, start, len, hot_share * incoming_zero, incoming_one, f);
        self.recurse(cold, start, len, cold_share * incoming_zero, 0.0, f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::mix64;
    use crate::model::SplitRule;

    /// A test tree: nodes with an optional split, a value and a cover.
    struct Toy {
        nodes: Vec<(Option<Split>, f64, f64)>,
    }

    impl ShapTree for Toy {
        fn split(&self, i: usize) -> Option<&Split> {
            self.nodes[i].0.as_ref()
        }
        fn value(&self, i: usize) -> f64 {
            self.nodes[i].1
        }
        fn cover(&self, i: usize) -> f64 {
            self.nodes[i].2
        }
    }

    /// A random full tree of the given depth over `features` features (repeats on one path
    /// included), with random thresholds in [0, 1), values and covers that add up.
    fn random_tree(seed: u64, depth: u32, features: usize) -> Toy {
        let mut state = seed;
        let mut next = move || {
            state = mix64(state.wrapping_add(0x9e37_79b9_7f4a_7c15));
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let mut nodes: Vec<(Option<Split>, f64, f64)> = Vec::new();
        fn build(
            nodes: &mut Vec<(Option<Split>, f64, f64)>,
            next: &mut impl FnMut() -> f64,
            depth: u32,
            features: usize,
            cover: f64,
        ) -> usize {
            let at = nodes.len();
            nodes.push((None, next() * 2.0 - 1.0, cover));
            if depth > 0 {
                let share = 0.1 + 0.8 * next();
                let feature = ((next() * features as f64) as usize).min(features - 1);
                let threshold = next();
                let missing_left = next() < 0.5;
                let left = build(nodes, next, depth - 1, features, cover * share);
                let right = build(nodes, next, depth - 1, features, cover * (1.0 - share));
                nodes[at].0 = Some(Split {
                    feature,
                    rule: SplitRule::Threshold { threshold },
                    missing_left,
                    gain: 0.0,
                    weight: cover,
                    left,
                    right,
                });
            }
            at
        }
        build(&mut nodes, &mut next, depth, features, 1000.0);
        Toy { nodes }
    }

    /// The tree's expected output when only the features in `known` (a bit set) are known.
    fn conditional(tree: &Toy, x: &[Option<f64>], known: u32, node: usize) -> f64 {
        match tree.split(node) {
            None => tree.value(node),
            Some(s) if known & (1 << s.feature) != 0 => {
                let next = if s.goes_left(x[s.feature]) {
                    s.left
                } else {
                    s.right
                };
                conditional(tree, x, known, next)
            }
            Some(s) => {
                let c = tree.cover(node);
                tree.cover(s.left) / c * conditional(tree, x, known, s.left)
                    + tree.cover(s.right) / c * conditional(tree, x, known, s.right)
            }
        }
    }

    /// Shapley values by enumerating every subset of the other features.
    fn brute_force(tree: &Toy, x: &[Option<f64>]) -> Vec<f64> {
        let m = x.len();
        let factorial = |n: usize| (1..=n).map(|k| k as f64).product::<f64>();
        (0..m)
            .map(|i| {
                let mut phi = 0.0;
                for set in 0u32..(1 << m) {
                    if set & (1 << i) != 0 {
                        continue;
                    }
                    let s = set.count_ones() as usize;
                    let weight = factorial(s) * factorial(m - s - 1) / factorial(m);
                    phi += weight
                        * (conditional(tree, x, set | (1 << i), 0) - conditional(tree, x, set, 0));
                }
                phi
            })
            .collect()
    }

    fn leaf_of(tree: &Toy, x: &[Option<f64>]) -> f64 {
        conditional(tree, x, u32::MAX, 0)
    }

    #[test]
    fn contributions_equal_brute_force_shapley_values_on_small_trees() {
        for seed in 0..40u64 {
            let features = 2 + (seed % 4) as usize;
            let tree = random_tree(seed, 1 + (seed % 4) as u32, features);
            for row in 0..5u64 {
                let x: Vec<Option<f64>> = (0..features)
                    .map(|f| {
                        let u = (mix64(seed * 1000 + row * 10 + f as u64) >> 11) as f64
                            / (1u64 << 53) as f64;
                        (u > 0.1).then_some(u)
                    })
                    .collect();
                let goes_left = |s: &Split| s.goes_left(x[s.feature]);
                let mut phi = vec![0.0; features];
                add_contributions(&tree, &goes_left, 1.0, &mut phi, &mut Vec::new());
                let expected = brute_force(&tree, &x);
                for (f, (a, b)) in phi.iter().zip(&expected).enumerate() {
                    assert!(
                        (a - b).abs() < 1e-9,
                        "seed {seed}, row {row}, feature {f}: TreeSHAP {a}, brute force {b}"
                    );
                }
                let total: f64 = phi.iter().sum();
                let gap = leaf_of(&tree, &x) - expected_value(&tree);
                assert!((total - gap).abs() < 1e-9, "seed {seed}: {total} vs {gap}");
            }
        }
    }

    #[test]
    fn a_feature_the_tree_never_splits_on_gets_nothing() {
        let tree = random_tree(7, 3, 2);
        let x = vec![Some(0.3), Some(0.9), Some(0.5)];
        let goes_left = |s: &Split| s.goes_left(x[s.feature]);
        let mut buffer = Vec::new();
        let mut phi = vec![0.0; 3];
        add_contributions(&tree, &goes_left, 2.0, &mut phi, &mut buffer);
        assert_eq!(phi[2], 0.0);
        let mut once = vec![0.0; 3];
        add_contributions(&tree, &goes_left, 1.0, &mut once, &mut buffer);
        assert!((phi[0] - 2.0 * once[0]).abs() < 1e-12, "scale applies");
    }
}
