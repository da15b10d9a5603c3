//! Level-wise growing of one or many trees, MLlib's `findBestSplits` loop: each pass sends the
//! trees grown so far (as a literal in the plan) to every partition, the `ml_tree_histogram`
//! aggregate returns the merged histograms of the open nodes, and the driver picks each node's
//! split and opens its children. A forest grows all its trees together: the frontier nodes of
//! every tree share a pass, as MLlib groups them. The memory budget bounds how many nodes share
//! a pass; with the default budget every level is one pass.
//!
//! When every node looks at every feature, only the smaller child of a split is accumulated;
//! the larger child's histogram is its parent's minus the smaller one's (LightGBM's
//! subtraction), which is exact because the counters are integers, so the tree is the same as
//! if every node were accumulated. When nodes look at random subsets of the features (a
//! forest), each child is accumulated over its own subset. This module grows trees of split
//! candidates; turning them into models is the estimators' job.

use std::collections::VecDeque;

use datafusion::arrow::array::{Array, AsArray};
use datafusion::prelude::{DataFrame, Expr};

use crate::dataset::column;
use crate::error::{Error, Result};
use crate::hash::mix64;
use crate::histogram::{
    CellKind, Combine, Layout, PassColumns, PassSpec, RouteNode, Sampling, TreeRoute,
    decode_histogram, histogram_expr,
};
use crate::prepare::{BinnedDataset, LABEL_COL, Storage, WEIGHT_COL};
use crate::resident::ResidentPasses;
use crate::split::{Candidate, CellStats, Criterion, Stats, best_split, node_stats};

/// A node while its tree grows.
#[derive(Debug, Clone)]
pub(crate) struct GrowNode<S> {
    /// Heap-style id (the root is 1).
    pub(crate) id: u64,
    pub(crate) depth: u32,
    pub(crate) stats: Option<S>,
    pub(crate) split: Option<Candidate<S>>,
    pub(crate) children: Option<(usize, usize)>,
    /// The index of its parent (`None` for the root).
    pub(crate) parent: Option<usize>,
    /// The node's histogram, kept only while one child's histogram is still to be derived
    /// from it.
    hist: Option<Vec<u64>>,
    /// The features its histogram holds (`None`: all).
    features: Option<Vec<u32>>,
}

impl<S> GrowNode<S> {
    fn new(
        id: u64,
        depth: u32,
        stats: Option<S>,
        features: Option<Vec<u32>>,
        parent: Option<usize>,
    ) -> Self {
        Self {
            id,
            depth,
            stats,
            split: None,
            children: None,
            parent,
            hist: None,
            features,
        }
    }
}

/// A node whose histogram the next passes accumulate.
#[derive(Debug, Clone, Copy)]
struct Pending {
    tree: usize,
    node: usize,
    /// Whether to look for a split of `node` itself (it may be accumulated only so that its
    /// sibling can be derived).
    split: bool,
    /// The sibling whose histogram is the parent's minus this one's, and the parent.
    sibling: Option<(usize, usize)>,
}

/// One tree to grow.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TreePlan {
    /// Seeds its row multiplicities.
    pub(crate) sample_seed: u64,
    /// Seeds its nodes' feature subsets.
    pub(crate) subset_seed: u64,
}

/// How trees grow.
#[derive(Debug, Clone)]
pub(crate) struct GrowPlan<C> {
    pub(crate) criterion: C,
    pub(crate) cells: CellKind,
    pub(crate) weighted: bool,
    pub(crate) max_depth: usize,
    pub(crate) min_instances: u64,
    /// Histogram bytes per pass.
    pub(crate) budget: usize,
    pub(crate) trees: Vec<TreePlan>,
    pub(crate) sampling: Option<Sampling>,
    /// Features each node looks at, when fewer than all.
    pub(crate) subset: Option<usize>,
}

/// Grown trees, nodes in creation order (the root first).
#[derive(Debug)]
pub(crate) struct Grown<S> {
    pub(crate) trees: Vec<Vec<GrowNode<S>>>,
    pub(crate) passes: u32,
}

/// What passes read: a table of binned rows and the optional columns the spec asks for.
#[derive(Debug, Clone)]
pub(crate) struct PassSource {
    pub(crate) df: DataFrame,
    /// Which rows count.
    pub(crate) include: Option<Expr>,
    /// Row key hashes, for sampling.
    pub(crate) key: Option<Expr>,
    /// Margins, for gradients.
    pub(crate) score: Option<Expr>,
}

/// `count` distinct features of `n` for the node `id`, ascending: a seeded partial shuffle.
pub(crate) fn feature_subset(seed: u64, id: u64, n: usize, count: usize) -> Vec<u32> {
    let mut all: Vec<u32> = (0..n as u32).collect();
    let mut state = mix64(seed ^ mix64(id));
    for i in 0..count.min(n) {
        state = mix64(state.wrapping_add(0x9e37_79b9_7f4a_7c15));
        let j = i + (state % (n - i) as u64) as usize;
        all.swap(i, j);
    }
    all.truncate(count.min(n));
    all.sort_unstable();
    all
}

impl BinnedDataset {
    /// One histogram pass.
    pub(crate) async fn run_pass(&self, spec: &PassSpec, source: &PassSource) -> Result<Vec<u64>> {
        let weight = spec.weighted.then(|| column(WEIGHT_COL));
        let columns = PassColumns {
            weight,
            include: source.include.clone().filter(|_| spec.filtered),
            key: source.key.clone().filter(|_| spec.sampling.is_some()),
            score: source
                .score
                .clone()
                .filter(|_| matches!(spec.cells, CellKind::Gradients { .. })),
        };
        let agg =
            histogram_expr(spec, column(LABEL_COL), columns, self.bin_exprs())?.alias("histogram");
        let batches = source
            .df
            .clone()
            .aggregate(vec![], vec![agg])?
            .collect()
            .await?;
        let cells: usize = (0..spec.slots as usize)
            .map(|s| spec.slot_layout(s).node_stride)
            .sum();
        for batch in batches {
            if batch.num_rows() == 1 {
                let hist = batch.column(0).as_binary::<i32>();
                if hist.is_valid(0) {
                    return decode_histogram(hist.value(0), cells);
                }
            }
        }
        Ok(vec![0; cells])
    }

    /// Class counts (and weights) of the rows a source includes, unsampled: one pass that
    /// accumulates feature 0 only.
    pub(crate) async fn root_stats(&self, source: &PassSource) -> Result<Stats> {
        let spec = PassSpec {
            weighted: self.params.weight_column.is_some(),
            filtered: source.include.is_some(),
            slots: 1,
            slot_features: vec![vec![0]],
            ..PassSpec::scoring(
                self.num_bins(),
                vec![TreeRoute {
                    nodes: vec![RouteNode::Open { slot: 0 }],
                    sample_seed: 0,
                }],
                Combine::Mean,
            )
        };
        let hist = self.run_pass(&spec, source).await?;
        Ok(node_stats(&hist, &spec.slot_layout(0)))
    }

    /// The source's rows held in memory for the plan's passes, with [`Storage::Memory`] (with
    /// [`Storage::Inline`] every pass is a plan).
    pub(crate) async fn resident<C>(
        &self,
        plan: &GrowPlan<C>,
        source: &PassSource,
    ) -> Result<Option<ResidentPasses>> {
        if self.storage != Storage::Memory {
            return Ok(None);
        }
        let passes = ResidentPasses::load(
            self,
            source,
            plan.cells,
            plan.weighted,
            plan.sampling.clone(),
            plan.trees.len(),
        )
        .await?;
        Ok(Some(passes))
    }

    /// Grows the plan's trees level by level, each pass over `resident` rows when given, else
    /// as a plan over the source. `on_root` sees each root's stats when its first histogram
    /// arrives (and may set the criterion's class weights from it).
    pub(crate) async fn grow<C: Criterion + Clone>(
        &self,
        plan: &mut GrowPlan<C>,
        source: &PassSource,
        mut resident: Option<&mut ResidentPasses>,
        mut on_root: impl FnMut(&mut C, &C::Stats) -> Result<()>,
    ) -> Result<Grown<C::Stats>> {
        let bins = self.num_bins();
        let stats_per_cell = plan.cells.stats(plan.weighted);
        let features = self.bins.len();
        let mut grower = Grower {
            dataset: self,
            plan,
            trees: Vec::new(),
            queue: VecDeque::new(),
        };
        for t in 0..grower.plan.trees.len() {
            let subset = grower.node_features(t, 1);
            grower
                .trees
                .push(vec![GrowNode::new(1, 0, None, subset, None)]);
            grower.queue.push_back(Pending {
                tree: t,
                node: 0,
                split: true,
                sibling: None,
            });
        }
        let layout_of = |f: &Option<Vec<u32>>| match f {
            Some(features) => Layout::subset(&bins, stats_per_cell, features),
            None => Layout::new(&bins, stats_per_cell),
        };
        let mut passes = 0u32;
        while !grower.queue.is_empty() {
            // As many nodes as the budget holds, at least one.
            let mut bytes = 0usize;
            let mut take = 0usize;
            for p in &grower.queue {
                let b = layout_of(&grower.trees[p.tree][p.node].features).bytes_per_node();
                if take > 0 && bytes + b > grower.plan.budget {
                    break;
                }
                bytes += b;
                take += 1;
            }
            let group: Vec<Pending> = grower.queue.drain(..take).collect();
            let layouts: Vec<Layout> = group
                .iter()
                .map(|p| layout_of(&grower.trees[p.tree][p.node].features))
                .collect();
            let hist = match resident.as_deref_mut() {
                Some(resident) => {
                    let slots: Vec<(usize, usize)> =
                        group.iter().map(|p| (p.tree, p.node)).collect();
                    resident.pass(&slots, &layouts, &grower.trees, &grower.plan.trees)?
                }
                None => {
                    let spec = grower.pass_spec(&group, source.include.is_some(), features);
                    self.run_pass(&spec, source).await?
                }
            };
            passes += 1;
            tracing::debug!(pass = passes, nodes = group.len(), "histogram pass");
            let mut start = 0usize;
            for (slot, pending) in group.iter().enumerate() {
                let layout = &layouts[slot];
                let block = &hist[start..start + layout.node_stride];
                start += layout.node_stride;
                let node = &mut grower.trees[pending.tree][pending.node];
                if node.stats.is_none() {
                    let stats: C::Stats = node_stats(block, layout);
                    on_root(&mut grower.plan.criterion, &stats)?;
                    node.stats = Some(stats);
                }
                if pending.split {
                    grower.split(pending.tree, pending.node, block, layout);
                }
                if let Some((sibling, parent)) = pending.sibling {
                    let Some(mut parent_hist) = grower.trees[pending.tree][parent].hist.take()
                    else {
                        return Err(Error::Model {
                            path: "(training)".into(),
                            reason: format!(
                                "node {} lost its histogram",
                                grower.trees[pending.tree][parent].id
                            ),
                        });
                    };
                    for (p, c) in parent_hist.iter_mut().zip(block.iter()) {
                        *p = p.wrapping_sub(*c);
                    }
                    grower.split(pending.tree, sibling, &parent_hist, layout);
                }
            }
        }
        Ok(Grown {
            trees: grower.trees,
            passes,
        })
    }
}

/// The growing trees and the nodes waiting for a pass.
struct Grower<'a, C: Criterion> {
    dataset: &'a BinnedDataset,
    plan: &'a mut GrowPlan<C>,
    trees: Vec<Vec<GrowNode<C::Stats>>>,
    queue: VecDeque<Pending>,
}

impl<C: Criterion> Grower<'_, C> {
    /// The features node `id` of tree `tree` looks at (`None`: all).
    fn node_features(&self, tree: usize, id: u64) -> Option<Vec<u32>> {
        let n = self.dataset.bins.len();
        self.plan
            .subset
            .filter(|m| *m < n)
            .map(|m| feature_subset(self.plan.trees[tree].subset_seed, id, n, m))
    }

    /// Splits node `index` of tree `tree` by its histogram if a split is allowed, and queues
    /// the pass work its children need.
    fn split(&mut self, tree: usize, index: usize, block: &[u64], layout: &Layout) {
        let Some(candidate) = best_split(block, layout, &self.dataset.bins, &self.plan.criterion)
        else {
            return;
        };
        let depth = self.trees[tree][index].depth + 1;
        let id = self.trees[tree][index].id;
        let (max_depth, min_instances) = (self.plan.max_depth, self.plan.min_instances);
        let criterion = &self.plan.criterion;
        let splittable = |stats: &C::Stats| {
            (depth as usize) < max_depth
                && stats.rows() >= 2 * min_instances
                && criterion.may_split(stats)
        };
        let (left_ok, right_ok) = (splittable(&candidate.left), splittable(&candidate.right));
        let left_smaller = candidate.left.rows() <= candidate.right.rows();
        let (left_features, right_features) = (
            self.node_features(tree, 2 * id),
            self.node_features(tree, 2 * id + 1),
        );
        let subsets = left_features.is_some();
        let nodes = &mut self.trees[tree];
        nodes.push(GrowNode::new(
            2 * id,
            depth,
            Some(candidate.left),
            left_features,
            Some(index),
        ));
        let left = nodes.len() - 1;
        nodes.push(GrowNode::new(
            2 * id + 1,
            depth,
            Some(candidate.right),
            right_features,
            Some(index),
        ));
        let right = nodes.len() - 1;
        nodes[index].split = Some(candidate);
        nodes[index].children = Some((left, right));
        if subsets {
            // Each child looks at features of its own: no histogram to derive from the parent.
            for (child, ok) in [(left, left_ok), (right, right_ok)] {
                if ok {
                    self.queue.push_back(Pending {
                        tree,
                        node: child,
                        split: true,
                        sibling: None,
                    });
                }
            }
            return;
        }
        if !(left_ok || right_ok) {
            return;
        }
        let ((small, small_ok), (large, large_ok)) = if left_smaller {
            ((left, left_ok), (right, right_ok))
        } else {
            ((right, right_ok), (left, left_ok))
        };
        let sibling = large_ok.then_some((large, index));
        if sibling.is_some() {
            nodes[index].hist = Some(block.to_vec());
        }
        self.queue.push_back(Pending {
            tree,
            node: small,
            split: small_ok,
            sibling,
        });
    }

    /// The pass over a group of pending nodes: the trees that have one, splits so far, the
    /// group's nodes open, everything else a leaf.
    fn pass_spec(&self, group: &[Pending], filtered: bool, features: usize) -> PassSpec {
        let mut trees: Vec<usize> = group.iter().map(|p| p.tree).collect();
        trees.sort_unstable();
        trees.dedup();
        let mut routes = Vec::with_capacity(trees.len());
        for &t in &trees {
            let nodes = &self.trees[t];
            let mut slots = vec![None; nodes.len()];
            for (slot, p) in group.iter().enumerate() {
                if p.tree == t {
                    slots[p.node] = Some(slot as u32);
                }
            }
            let route = nodes
                .iter()
                .enumerate()
                .map(|(i, n)| match (&n.split, n.children) {
                    (Some(c), Some((l, r))) => RouteNode::Split {
                        feature: c.feature as u32,
                        rule: c.rule.clone(),
                        left: l as u32,
                        right: r as u32,
                    },
                    _ => match slots[i] {
                        Some(slot) => RouteNode::Open { slot },
                        None => RouteNode::Leaf { score: 0.0 },
                    },
                })
                .collect();
            routes.push(TreeRoute {
                nodes: route,
                sample_seed: self.plan.trees[t].sample_seed,
            });
        }
        let slot_features = if self.plan.subset.is_some_and(|m| m < features) {
            group
                .iter()
                .map(|p| {
                    self.trees[p.tree][p.node]
                        .features
                        .clone()
                        .unwrap_or_else(|| (0..features as u32).collect())
                })
                .collect()
        } else {
            Vec::new()
        };
        PassSpec {
            weighted: self.plan.weighted,
            filtered,
            slots: group.len() as u32,
            slot_features,
            sampling: self.plan.sampling.clone(),
            cells: self.plan.cells,
            ..PassSpec::scoring(self.dataset.num_bins(), routes, Combine::Mean)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::datasource::MemTable;
    use datafusion::prelude::SessionContext;

    use super::*;
    use crate::params::{DecisionTreeParams, EvaluationConfig};
    use crate::prepare::{RowSet, Storage};
    use crate::split::Scoring;
    use crate::synthetic::{stroke_spec, stroke_table};

    #[test]
    fn feature_subsets_are_distinct_sorted_and_seeded() {
        let a = feature_subset(7, 3, 20, 5);
        assert_eq!(a.len(), 5);
        assert!(a.windows(2).all(|w| w[0] < w[1]) && a.iter().all(|f| *f < 20));
        assert_eq!(a, feature_subset(7, 3, 20, 5));
        assert_ne!(a, feature_subset(7, 4, 20, 5));
        assert_eq!(feature_subset(1, 1, 4, 9), vec![0, 1, 2, 3]);
        // Every feature gets chosen about equally often.
        let mut counts = [0u32; 10];
        for id in 0..10_000 {
            for f in feature_subset(5, id, 10, 3) {
                counts[f as usize] += 1;
            }
        }
        assert!(
            counts.iter().all(|c| (2700..3300).contains(c)),
            "{counts:?}"
        );
    }

    #[tokio::test]
    async fn a_derived_histogram_is_the_one_a_pass_accumulates() {
        let batch = stroke_table(2000, 5, false).unwrap();
        let table = MemTable::try_new(batch.schema(), vec![vec![batch]]).unwrap();
        let data = SessionContext::new().read_table(Arc::new(table)).unwrap();
        let params = DecisionTreeParams::default();
        let binned = BinnedDataset::prepare(
            data,
            &stroke_spec(),
            &params,
            &EvaluationConfig::default(),
            Storage::Memory,
        )
        .await
        .unwrap();
        let scoring = Scoring {
            impurity: params.impurity,
            class_weights: [1.0, 1.0],
            weighted: false,
            min_instances: 1,
            min_info_gain: 0.0,
        };
        let mut plan = GrowPlan {
            criterion: scoring,
            cells: CellKind::Classes,
            weighted: false,
            max_depth: 1,
            min_instances: 1,
            budget: 1 << 20,
            trees: vec![TreePlan {
                sample_seed: 0,
                subset_seed: 0,
            }],
            sampling: None,
            subset: None,
        };
        let source = PassSource {
            df: binned.df.clone(),
            include: binned.row_filter(RowSet::Train),
            key: None,
            score: None,
        };
        let grown = binned
            .grow(&mut plan, &source, None, |_, _| Ok(()))
            .await
            .unwrap();
        let nodes = &grown.trees[0];
        assert_eq!(nodes.len(), 3, "a stump");
        // Both children accumulated in one pass of their own; the derived one matches.
        let grower = Grower {
            dataset: &binned,
            plan: &mut plan,
            trees: grown.trees.clone(),
            queue: VecDeque::new(),
        };
        let group = [
            Pending {
                tree: 0,
                node: 1,
                split: false,
                sibling: None,
            },
            Pending {
                tree: 0,
                node: 2,
                split: false,
                sibling: None,
            },
        ];
        // Route to the root only: a spec whose root is open.
        let root_only = PassSpec {
            trees: vec![TreeRoute {
                nodes: vec![RouteNode::Open { slot: 0 }],
                sample_seed: 0,
            }],
            slots: 1,
            ..grower.pass_spec(&group, true, binned.bins.len())
        };
        let root = binned.run_pass(&root_only, &source).await.unwrap();
        let both = binned
            .run_pass(&grower.pass_spec(&group, true, binned.bins.len()), &source)
            .await
            .unwrap();
        let stride = root.len();
        let (left, right) = both.split_at(stride);
        let derived: Vec<u64> = root
            .iter()
            .zip(left)
            .map(|(p, l)| p.wrapping_sub(*l))
            .collect();
        assert_eq!(derived, right);
        assert!(right.iter().any(|c| *c > 0));
    }
}
