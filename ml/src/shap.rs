//! Exact per-prediction explanations: SHAP values of tree models, path-dependent as in
//! TreeSHAP (Lundberg, Erion and Lee, "Consistent individualized feature attribution for tree
//! ensembles", 2018). A feature's contribution is its Shapley value in the game whose value for
//! a set `S` of known features is the tree's expected output when the other features are
//! unknown and a row goes down both sides of their splits in proportion to the training rows
//! that went each way (the node "cover"). Contributions add up to the model's output minus its
//! expected output over the training rows, exactly (up to rounding).
//!
//! The values are TreeSHAP's, computed as Linear TreeSHAP (Yu et al., 2022) does. On the path
//! to a leaf `v`, each distinct feature `j` has the share `q_j` of the cover the path keeps when
//! the feature is unknown (a product over its splits on the path) and `p_j` = 1 if the row
//! follows all of them, else 0. Write `g_j(t) = (1 − t) q_j + t p_j` and `G_v = Π_j g_j`. The
//! leaf gives feature `i` its value times `(p_i − q_i) ∫₀¹ G_v(t) / g_i(t) dt`: the Shapley
//! weights `|S|! (n − |S| − 1)! / n!` are that Beta integral. Summed over the leaves below the
//! split that last set `g_i`, this is `(p_i − q_i) ∫ (Σ_v value_v G_v(t)) / g_i(t) dt`, and the
//! sum in brackets is gathered bottom-up, one polynomial per node, so a tree costs a few
//! operations per node and quadrature point instead of Algorithm 2's depth² per leaf. (Leaves
//! below a later split on the same feature use that split's `g_i`; their sum is taken back out.)
//! The polynomials are kept as their values at Gauss–Legendre points: a product of `n` linear
//! factors over `n − 1` is a polynomial of degree below `n`, which `⌈n / 2⌉` points integrate
//! exactly. This module only computes; it knows trees only through [`ShapTree`].

use std::sync::OnceLock;

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

/// One distinct feature on the path from the root: the share of the cover the path keeps when
/// the feature is unknown (`zero`, the product over its splits on the path) and whether a row
/// with its known value follows the path (`one`, 0 or 1).
#[derive(Debug, Clone, Copy)]
struct PathElement {
    feature: usize,
    zero: f64,
    one: f64,
}

impl PathElement {
    /// `g(t) = (1 − t) zero + t one`.
    #[inline]
    fn factor(&self, t: f64) -> f64 {
        self.zero + t * (self.one - self.zero)
    }
}

/// Buffers a walk reuses (and callers from row to row). Vectors of quadrature values are stored
/// `m` at a time, one per path element or recursion level.
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    path: Vec<PathElement>,
    /// Per path element: the leaf sums below later splits on its feature, taken back out.
    later: Vec<f64>,
    /// Saved `later` values of elements a split on the same feature replaces for a while.
    saved: Vec<f64>,
    /// Per recursion level: `G` of the path to the node.
    products: Vec<f64>,
    /// Per recursion level: `Σ value · G` over the leaves below the node.
    sums: Vec<f64>,
}

/// Gauss–Legendre points on [0, 1] and their weights.
#[derive(Debug, Clone)]
struct Quadrature {
    points: Vec<f64>,
    weights: Vec<f64>,
}

impl Quadrature {
    /// `m` points: exact for polynomials of degree below `2m`. The points are the roots of the
    /// Legendre polynomial `P_m`, found by Newton's method from the usual cosine guesses.
    fn new(m: usize) -> Self {
        let mut points = vec![0.0; m];
        let mut weights = vec![0.0; m];
        let n = m as f64;
        for i in 0..m.div_ceil(2) {
            let mut x = (std::f64::consts::PI * (i as f64 + 0.75) / (n + 0.5)).cos();
            let mut derivative = 1.0;
            for _ in 0..100 {
                // P_m(x) and P_m'(x) by the three-term recurrence.
                let (mut p0, mut p1) = (1.0, 0.0);
                for k in 0..m {
                    let k = k as f64;
                    let p2 = p1;
                    p1 = p0;
                    p0 = ((2.0 * k + 1.0) * x * p1 - k * p2) / (k + 1.0);
                }
                derivative = n * (x * p0 - p1) / (x * x - 1.0);
                let step = p0 / derivative;
                x -= step;
                if step.abs() <= 1e-15 {
                    break;
                }
            }
            // From [-1, 1] to [0, 1]: points (1 ∓ x) / 2, weights halved.
            let w = 1.0 / ((1.0 - x * x) * derivative * derivative);
            points[i] = 0.5 * (1.0 - x);
            points[m - 1 - i] = 0.5 * (1.0 + x);
            weights[i] = w;
            weights[m - 1 - i] = w;
        }
        Quadrature { points, weights }
    }
}

/// The rule with `m` points (computed once for the depths trees have).
fn quadrature(m: usize) -> std::borrow::Cow<'static, Quadrature> {
    const CACHED: usize = 32;
    static RULES: OnceLock<Vec<Quadrature>> = OnceLock::new();
    let rules = RULES.get_or_init(|| (0..=CACHED).map(Quadrature::new).collect());
    match rules.get(m) {
        Some(rule) => std::borrow::Cow::Borrowed(rule),
        None => std::borrow::Cow::Owned(Quadrature::new(m)),
    }
}

/// Splits on the tree's longest path: [`add_contributions`] needs it, and callers that explain
/// many rows compute it once.
pub(crate) fn height(tree: &impl ShapTree) -> usize {
    fn below(tree: &impl ShapTree, node: usize) -> usize {
        match tree.split(node) {
            None => 0,
            Some(s) => 1 + below(tree, s.left).max(below(tree, s.right)),
        }
    }
    below(tree, 0)
}

/// Adds `scale` times the SHAP values of one row in `tree`, whose [`height`] is `height`, to
/// `phi` (one entry per feature). `goes_left` says which way the row goes at a split.
pub(crate) fn add_contributions(
    tree: &impl ShapTree,
    height: usize,
    goes_left: &impl Fn(&Split) -> bool,
    scale: f64,
    phi: &mut [f64],
    scratch: &mut Scratch,
) {
    // A path holds at most this many distinct features.
    let distinct = height.min(phi.len());
    let rule = quadrature(distinct.div_ceil(2).max(1));
    let m = rule.points.len();
    scratch.path.clear();
    scratch.later.clear();
    scratch.saved.clear();
    scratch.products.clear();
    scratch.products.resize(m, 1.0);
    scratch.sums.clear();
    scratch.sums.resize(m, 0.0);
    let mut walk = Walk {
        tree,
        goes_left,
        scale,
        phi,
        scratch,
        rule: &rule,
        m,
    };
    walk.visit(0, 0);
}

/// One row's walk through one tree.
struct Walk<'a, T, F> {
    tree: &'a T,
    goes_left: &'a F,
    scale: f64,
    phi: &'a mut [f64],
    scratch: &'a mut Scratch,
    rule: &'a Quadrature,
    m: usize,
}

impl<T: ShapTree, F: Fn(&Split) -> bool> Walk<'_, T, F> {
    /// Visits `node` at recursion level `level`, whose `G` is `products[level]`, and leaves
    /// `Σ value · G` over the leaves below it in `sums[level]`.
    fn visit(&mut self, node: usize, level: usize) {
        let m = self.m;
        let (here, below) = (level * m, (level + 1) * m);
        let Some(split) = self.tree.split(node) else {
            let value = self.tree.value(node);
            let s = &mut self.scratch;
            for (sum, g) in s.sums[here..below].iter_mut().zip(&s.products[here..below]) {
                *sum = value * g;
            }
            return;
        };
        if self.scratch.products.len() < below + m {
            self.scratch.products.resize(below + m, 0.0);
            self.scratch.sums.resize(below + m, 0.0);
        }
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
        // A feature already on the path combines its splits: shares multiply, and the row
        // follows the path only if it follows every one of them.
        let feature = split.feature;
        let s = &mut *self.scratch;
        let (at, before) = match s.path.iter().position(|e| e.feature == feature) {
            Some(k) => {
                s.saved.extend_from_slice(&s.later[k * m..(k + 1) * m]);
                (k, Some(s.path[k]))
            }
            None => {
                s.path.push(PathElement {
                    feature,
                    zero: 1.0,
                    one: 1.0,
                });
                s.later.resize(s.later.len() + m, 0.0);
                (s.path.len() - 1, None)
            }
        };
        let (zero, one) = before.map_or((1.0, 1.0), |e| (e.zero, e.one));
        s.sums[here..below].fill(0.0);
        for (child, child_share, follows) in [(hot, hot_share, one), (cold, cold_share, 0.0)] {
            let element = PathElement {
                feature,
                zero: zero * child_share,
                one: follows,
            };
            let s = &mut *self.scratch;
            s.path[at] = element;
            s.later[at * m..(at + 1) * m].fill(0.0);
            // G of the child: the parent's with this feature's factor replaced (or added).
            let (parent, child_products) = s.products.split_at_mut(below);
            let parent = &parent[here..];
            let child_products = &mut child_products[..m];
            match before {
                Some(old) if old.zero == 0.0 && old.one == 0.0 => child_products.fill(0.0),
                Some(old) => {
                    for ((c, p), t) in child_products.iter_mut().zip(parent).zip(&self.rule.points)
                    {
                        *c = p / old.factor(*t) * element.factor(*t);
                    }
                }
                None => {
                    for ((c, p), t) in child_products.iter_mut().zip(parent).zip(&self.rule.points)
                    {
                        *c = p * element.factor(*t);
                    }
                }
            }
            self.visit(child, level + 1);
            let s = &mut *self.scratch;
            // This split's factor covers the leaves below the child that no later split on
            // the feature reaches.
            if element.one != element.zero {
                let later = &s.later[at * m..(at + 1) * m];
                let mut integral = 0.0;
                for (((sum, later), t), w) in s.sums[below..below + m]
                    .iter()
                    .zip(later)
                    .zip(&self.rule.points)
                    .zip(&self.rule.weights)
                {
                    integral += w * (sum - later) / element.factor(*t);
                }
                if let Some(slot) = self.phi.get_mut(feature) {
                    *slot += self.scale * (element.one - element.zero) * integral;
                }
            }
            let (upper, lower) = s.sums.split_at_mut(below);
            for (u, l) in upper[here..].iter_mut().zip(&lower[..m]) {
                *u += l;
            }
        }
        let s = &mut *self.scratch;
        match before {
            Some(old) => {
                // Restore the earlier split's element; the leaves below this node are taken
                // out of its share.
                s.path[at] = old;
                let saved_at = s.saved.len() - m;
                for ((l, saved), sum) in s.later[at * m..(at + 1) * m]
                    .iter_mut()
                    .zip(&s.saved[saved_at..])
                    .zip(&s.sums[here..below])
                {
                    *l = saved + sum;
                }
                s.saved.truncate(saved_at);
            }
            None => {
                s.path.pop();
                s.later.truncate(s.later.len() - m);
            }
        }
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
                add_contributions(
                    &tree,
                    height(&tree),
                    &goes_left,
                    1.0,
                    &mut phi,
                    &mut Scratch::default(),
                );
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
    fn deep_trees_with_repeated_features_match_brute_force() {
        // Paths of up to 9 splits over 8 features: long paths, most with repeats.
        for seed in 0..6u64 {
            let features = 8;
            let tree = random_tree(100 + seed, 8 + (seed % 2) as u32, features);
            for row in 0..3u64 {
                let x: Vec<Option<f64>> = (0..features)
                    .map(|f| {
                        let u = (mix64(seed * 7919 + row * 31 + f as u64) >> 11) as f64
                            / (1u64 << 53) as f64;
                        (u > 0.05).then_some(u)
                    })
                    .collect();
                let goes_left = |s: &Split| s.goes_left(x[s.feature]);
                let mut phi = vec![0.0; features];
                add_contributions(
                    &tree,
                    height(&tree),
                    &goes_left,
                    1.0,
                    &mut phi,
                    &mut Scratch::default(),
                );
                for (f, (a, b)) in phi.iter().zip(&brute_force(&tree, &x)).enumerate() {
                    assert!(
                        (a - b).abs() < 1e-9,
                        "seed {seed}, row {row}, feature {f}: {a} vs brute force {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn quadrature_integrates_polynomials_below_twice_its_points_exactly() {
        for m in 1..=32 {
            let rule = quadrature(m);
            for k in 0..2 * m {
                let integral: f64 = rule
                    .points
                    .iter()
                    .zip(&rule.weights)
                    .map(|(t, w)| w * t.powi(k as i32))
                    .sum();
                let exact = 1.0 / (k as f64 + 1.0);
                assert!(
                    (integral - exact).abs() < 1e-13,
                    "{m} points, t^{k}: {integral} vs {exact}"
                );
            }
        }
    }

    #[test]
    fn a_feature_the_tree_never_splits_on_gets_nothing() {
        let tree = random_tree(7, 3, 2);
        let x = [Some(0.3), Some(0.9), Some(0.5)];
        let goes_left = |s: &Split| s.goes_left(x[s.feature]);
        let mut buffer = Scratch::default();
        let mut phi = vec![0.0; 3];
        add_contributions(&tree, height(&tree), &goes_left, 2.0, &mut phi, &mut buffer);
        assert_eq!(phi[2], 0.0);
        let mut once = vec![0.0; 3];
        add_contributions(
            &tree,
            height(&tree),
            &goes_left,
            1.0,
            &mut once,
            &mut buffer,
        );
        assert!((phi[0] - 2.0 * once[0]).abs() < 1e-12, "scale applies");
    }
}
