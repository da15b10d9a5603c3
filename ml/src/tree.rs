//! Level-wise training, MLlib's `findBestSplits` loop: each pass sends the current tree (as a
//! literal in the plan) to every partition, the `ml_tree_histogram` aggregate returns the merged
//! histograms of the open nodes, and the driver picks each node's split and opens its children.
//! The memory budget bounds how many nodes share a pass; with the default budget every level
//! is one pass. [`DecisionTree`] is the estimator (validated parameters), the result a
//! [`DecisionTreeModel`]. This module does not compute metrics.

use std::collections::VecDeque;

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{Float64Type, UInt8Type};
use datafusion::prelude::{DataFrame, Expr};

use crate::binning::{FeatureBins, MISSING_BIN};
use crate::dataset::{DatasetSpec, column};
use crate::error::{Error, Result};
use crate::histogram::{
    BinRule, Layout, PassSpec, RouteNode, decode_histogram, histogram_expr, score_expr,
};
use crate::model::{
    DecisionTreeModel, MODEL_FORMAT, MODEL_FORMAT_VERSION, Node, Split, SplitRule, TrainingSummary,
};
use crate::params::{ClassWeights, DecisionTreeParams, EvaluationConfig};
use crate::prepare::{BinnedDataset, LABEL_COL, RowSet, Storage, WEIGHT_COL, bin_col};
use crate::split::{Candidate, Scoring, Stats, best_split, node_stats};

/// The decision-tree estimator: parameters checked once, then [`DecisionTree::fit`].
///
/// ```no_run
/// # async fn example(data: datafusion::prelude::DataFrame, spec: ml::DatasetSpec) -> ml::Result<()> {
/// use ml::{DecisionTree, DecisionTreeParams};
///
/// let tree = DecisionTree::new(DecisionTreeParams { max_depth: 10, ..Default::default() })?;
/// let model = tree.fit(data, &spec).await?;
/// println!("{}", model.to_debug_string());
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct DecisionTree {
    params: DecisionTreeParams,
}

impl DecisionTree {
    /// Validates the parameters.
    pub fn new(params: DecisionTreeParams) -> Result<Self> {
        params.validate()?;
        Ok(Self { params })
    }

    /// The parameters.
    pub fn params(&self) -> &DecisionTreeParams {
        &self.params
    }

    /// Trains on every row of `data`.
    pub async fn fit(&self, data: DataFrame, spec: &DatasetSpec) -> Result<DecisionTreeModel> {
        let none = EvaluationConfig {
            test_fraction: 0.0,
            folds: 0,
        };
        let binned =
            BinnedDataset::prepare(data, spec, &self.params, &none, Storage::Memory).await?;
        binned.fit(RowSet::All).await
    }
}

/// A node while the tree grows.
#[derive(Debug, Clone)]
struct GrowNode {
    id: u64,
    depth: u32,
    stats: Option<Stats>,
    split: Option<Candidate>,
    children: Option<(usize, usize)>,
    /// This node's histogram, kept only while one child's histogram is still to be derived
    /// from it.
    hist: Option<Vec<u64>>,
}

impl GrowNode {
    /// The root, before any pass has seen it.
    fn root() -> Self {
        Self {
            id: 1,
            depth: 0,
            stats: None,
            split: None,
            children: None,
            hist: None,
        }
    }
}

/// A node whose histogram the next passes accumulate.
#[derive(Debug, Clone, Copy)]
struct Pending {
    node: usize,
    /// Whether to look for a split of `node` itself (it may be accumulated only so that its
    /// sibling can be derived).
    split: bool,
    /// The sibling whose histogram is the parent's minus this one's, and the parent.
    sibling: Option<(usize, usize)>,
}

impl BinnedDataset {
    fn layout(&self) -> Layout {
        let bins: Vec<u32> = self.bins.iter().map(|b| b.num_bins() as u32).collect();
        Layout::new(&bins, self.params.weight_column.is_some())
    }

    fn rows_df(&self, rows: RowSet) -> Result<DataFrame> {
        Ok(match rows.filter() {
            Some(f) => self.df.clone().filter(f)?,
            None => self.df.clone(),
        })
    }

    fn bin_exprs(&self) -> Vec<Expr> {
        (0..self.bins.len()).map(|i| column(&bin_col(i))).collect()
    }

    /// One histogram pass.
    async fn pass(&self, spec: &PassSpec, layout: &Layout, rows: RowSet) -> Result<Vec<u64>> {
        let weight = self
            .params
            .weight_column
            .as_ref()
            .map(|_| column(WEIGHT_COL));
        let agg = histogram_expr(
            spec,
            column(LABEL_COL),
            weight,
            rows.filter(),
            self.bin_exprs(),
        )?
        .alias("histogram");
        let batches = self
            .df
            .clone()
            .aggregate(vec![], vec![agg])?
            .collect()
            .await?;
        let cells = layout.node_stride * spec.slots as usize;
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

    /// Class weights for the training rows at the root.
    fn class_weights(&self, root: &Stats, weighted: bool) -> Result<[f64; 2]> {
        Ok(match self.params.class_weights {
            ClassWeights::None => [1.0, 1.0],
            ClassWeights::Explicit { negative, positive } => [negative, positive],
            ClassWeights::Balanced => {
                let plain = Scoring {
                    impurity: self.params.impurity,
                    class_weights: [1.0, 1.0],
                    weighted,
                    min_instances: 1,
                    min_info_gain: 0.0,
                };
                let t = plain.totals(root);
                if t[0] <= 0.0 || t[1] <= 0.0 {
                    return Err(Error::SingleClass {
                        column: self.spec.label.clone(),
                        class: u8::from(t[1] > 0.0),
                        rows: root.rows(),
                    });
                }
                let total = t[0] + t[1];
                [total / (2.0 * t[0]), total / (2.0 * t[1])]
            }
        })
    }

    /// Trains a tree on a row set: one pass per level (more if the memory budget is tight).
    ///
    /// Only the smaller child of each split is accumulated in a pass; the larger one's
    /// histogram is its parent's minus the smaller one's (LightGBM's subtraction). Counters are
    /// integers, so a derived histogram is exactly the one a pass would have returned, and the
    /// tree is the same as if every node were accumulated.
    pub async fn fit(&self, rows: RowSet) -> Result<DecisionTreeModel> {
        let params = &self.params;
        let weighted = params.weight_column.is_some();
        let layout = self.layout();
        let budget = params.max_memory_mb.saturating_mul(1 << 20);
        let per_pass = (budget / layout.bytes_per_node().max(1)).max(1);
        let mut grower = Grower {
            dataset: self,
            layout: &layout,
            scoring: Scoring {
                impurity: params.impurity,
                class_weights: [1.0, 1.0],
                weighted,
                min_instances: params.min_instances_per_node,
                min_info_gain: params.min_info_gain,
            },
            nodes: vec![GrowNode::root()],
            queue: VecDeque::from([Pending {
                node: 0,
                split: true,
                sibling: None,
            }]),
        };
        let mut passes = 0u32;
        while !grower.queue.is_empty() {
            let group: Vec<Pending> = grower
                .queue
                .drain(..per_pass.min(grower.queue.len()))
                .collect();
            let open: Vec<usize> = group.iter().map(|p| p.node).collect();
            let spec = route_spec(
                &grower.nodes,
                &open,
                &layout,
                weighted,
                rows.filter().is_some(),
                |_| 0.0,
            );
            let hist = self.pass(&spec, &layout, rows).await?;
            passes += 1;
            tracing::debug!(pass = passes, nodes = group.len(), "histogram pass");
            for (slot, pending) in group.iter().enumerate() {
                let block = &hist[slot * layout.node_stride..(slot + 1) * layout.node_stride];
                if grower.nodes[pending.node].stats.is_none() {
                    let stats = node_stats(block, &layout);
                    if stats.rows() == 0 {
                        return Err(Error::EmptyDataset {
                            what: format!("no training rows in {rows:?}"),
                        });
                    }
                    grower.scoring.class_weights = self.class_weights(&stats, weighted)?;
                    grower.nodes[pending.node].stats = Some(stats);
                }
                if pending.split {
                    grower.split(pending.node, block);
                }
                if let Some((sibling, parent)) = pending.sibling {
                    let Some(mut parent_hist) = grower.nodes[parent].hist.take() else {
                        return Err(Error::Model {
                            path: "(training)".into(),
                            reason: format!("node {} lost its histogram", grower.nodes[parent].id),
                        });
                    };
                    for (p, c) in parent_hist.iter_mut().zip(block.iter()) {
                        *p = p.wrapping_sub(*c);
                    }
                    grower.split(sibling, &parent_hist);
                }
            }
        }
        let Grower { scoring, nodes, .. } = grower;
        let root = nodes[0].stats.unwrap_or_default();
        let mut out = Vec::with_capacity(nodes.len());
        self.emit(&nodes, 0, &scoring, &mut out)?;
        Ok(DecisionTreeModel {
            format: MODEL_FORMAT.to_string(),
            format_version: MODEL_FORMAT_VERSION,
            label: self.spec.label.clone(),
            features: self.spec.features.clone(),
            params: params.clone(),
            training: TrainingSummary {
                rows: root.rows(),
                class_counts: root.count,
                class_weights: scoring.class_weights,
                passes,
            },
            nodes: out,
        })
    }

    /// Writes the subtree at `index` in preorder; returns its index in `out`.
    fn emit(
        &self,
        nodes: &[GrowNode],
        index: usize,
        scoring: &Scoring,
        out: &mut Vec<Node>,
    ) -> Result<usize> {
        let g = &nodes[index];
        let stats = g.stats.unwrap_or_default();
        let probability = scoring.probability(&stats);
        let totals = scoring.totals(&stats);
        let at = out.len();
        out.push(Node {
            id: g.id,
            depth: g.depth,
            class_counts: stats.count,
            probability,
            prediction: u8::from(probability > 0.5),
            impurity: scoring.impurity_of(totals),
            split: None,
        });
        if let (Some(c), Some((l, r))) = (&g.split, g.children) {
            let left = self.emit(nodes, l, scoring, out)?;
            let right = self.emit(nodes, r, scoring, out)?;
            let (rule, missing_left) = self.model_rule(c)?;
            out[at].split = Some(Split {
                feature: c.feature,
                rule,
                missing_left,
                gain: c.gain,
                weight: totals[0] + totals[1],
                left,
                right,
            });
        }
        Ok(at)
    }

    /// A bin rule in the model's terms: thresholds in stored units, category indices.
    fn model_rule(&self, c: &Candidate) -> Result<(SplitRule, bool)> {
        match (&c.rule, &self.bins[c.feature]) {
            (BinRule::Upto { bin, missing_left }, FeatureBins::Continuous { edges }) => {
                let threshold = edges
                    .get(usize::from(*bin).wrapping_sub(1))
                    .copied()
                    .ok_or_else(|| Error::Model {
                        path: "(training)".into(),
                        reason: format!("bin {bin} has no edge"),
                    })?;
                Ok((SplitRule::Threshold { threshold }, *missing_left))
            }
            (BinRule::Set { bins }, FeatureBins::Categorical { .. }) => {
                let left = bins
                    .iter()
                    .filter(|b| **b != MISSING_BIN)
                    .map(|b| u32::from(*b) - 1)
                    .collect();
                Ok((SplitRule::Categories { left }, bins.contains(&MISSING_BIN)))
            }
            _ => Err(Error::Model {
                path: "(training)".into(),
                reason: format!("split rule does not fit feature {}", c.feature),
            }),
        }
    }

    /// A model's tree in bins, for `ml_tree_score`: thresholds map back to their bin edges.
    fn score_spec(&self, model: &DecisionTreeModel) -> Result<PassSpec> {
        let layout = self.layout();
        let mut route = Vec::with_capacity(model.nodes.len());
        for node in &model.nodes {
            route.push(match &node.split {
                None => RouteNode::Leaf {
                    score: node.probability,
                },
                Some(s) => {
                    let rule = match (&s.rule, self.bins.get(s.feature)) {
                        (
                            SplitRule::Threshold { threshold },
                            Some(FeatureBins::Continuous { edges }),
                        ) => {
                            let k = edges.iter().position(|e| e == threshold).ok_or_else(|| {
                                Error::Model {
                                    path: "(evaluation)".into(),
                                    reason: format!(
                                        "threshold {threshold} is not a bin edge of feature {}",
                                        s.feature
                                    ),
                                }
                            })?;
                            BinRule::Upto {
                                bin: (k + 1) as u16,
                                missing_left: s.missing_left,
                            }
                        }
                        (SplitRule::Categories { left }, Some(FeatureBins::Categorical { .. })) => {
                            let mut bins: Vec<u16> = left.iter().map(|c| (*c + 1) as u16).collect();
                            if s.missing_left {
                                bins.insert(0, MISSING_BIN);
                            }
                            BinRule::Set { bins }
                        }
                        _ => {
                            return Err(Error::Model {
                                path: "(evaluation)".into(),
                                reason: format!(
                                    "split on feature {} does not fit the binning",
                                    s.feature
                                ),
                            });
                        }
                    };
                    RouteNode::Split {
                        feature: s.feature as u32,
                        rule,
                        left: s.left as u32,
                        right: s.right as u32,
                    }
                }
            });
        }
        Ok(PassSpec {
            bins: layout.bins.iter().map(|b| *b as u32).collect(),
            weighted: false,
            filtered: false,
            nodes: route,
            slots: 0,
        })
    }

    /// Labels and predicted probabilities of class 1 for a row set, scored inside a plan.
    pub async fn score(
        &self,
        model: &DecisionTreeModel,
        rows: RowSet,
    ) -> Result<(Vec<u8>, Vec<f64>)> {
        let spec = self.score_spec(model)?;
        let df = self.rows_df(rows)?.select(vec![
            column(LABEL_COL),
            score_expr(&spec, self.bin_exprs())?.alias("score"),
        ])?;
        let mut labels = Vec::new();
        let mut scores = Vec::new();
        for batch in df.collect().await? {
            let l = batch.column(0).as_primitive::<UInt8Type>();
            let s = batch.column(1).as_primitive::<Float64Type>();
            labels.extend(l.values().iter().copied());
            scores.extend(s.values().iter().copied());
        }
        Ok((labels, scores))
    }
}

/// The growing tree and the nodes waiting for a pass.
struct Grower<'a> {
    dataset: &'a BinnedDataset,
    layout: &'a Layout,
    scoring: Scoring,
    nodes: Vec<GrowNode>,
    queue: VecDeque<Pending>,
}

impl Grower<'_> {
    /// Splits `index` by its histogram if a split is allowed, and queues the pass work its
    /// children need: the smaller child is accumulated (if either child may split), the larger
    /// one derived from this node's histogram (if it may split).
    fn split(&mut self, index: usize, block: &[u64]) {
        let params = &self.dataset.params;
        let Some(candidate) = best_split(block, self.layout, &self.dataset.bins, &self.scoring)
        else {
            return;
        };
        let depth = self.nodes[index].depth + 1;
        let id = self.nodes[index].id;
        let splittable = |stats: &Stats| {
            (depth as usize) < params.max_depth
                && stats.rows() >= 2 * params.min_instances_per_node
                && stats.count[0] > 0
                && stats.count[1] > 0
        };
        let (left_ok, right_ok) = (splittable(&candidate.left), splittable(&candidate.right));
        let left_smaller = candidate.left.rows() <= candidate.right.rows();
        let mut child = |stats: Stats, id: u64| {
            self.nodes.push(GrowNode {
                id,
                depth,
                stats: Some(stats),
                split: None,
                children: None,
                hist: None,
            });
            self.nodes.len() - 1
        };
        let left = child(candidate.left, 2 * id);
        let right = child(candidate.right, 2 * id + 1);
        self.nodes[index].split = Some(candidate);
        self.nodes[index].children = Some((left, right));
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
            self.nodes[index].hist = Some(block.to_vec());
        }
        self.queue.push_back(Pending {
            node: small,
            split: small_ok,
            sibling,
        });
    }
}

/// The tree as a pass sees it: splits so far, the group's nodes open, everything else a leaf.
fn route_spec(
    nodes: &[GrowNode],
    group: &[usize],
    layout: &Layout,
    weighted: bool,
    filtered: bool,
    score: impl Fn(&GrowNode) -> f64,
) -> PassSpec {
    let mut slots = vec![None; nodes.len()];
    for (slot, &node) in group.iter().enumerate() {
        slots[node] = Some(slot as u32);
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
                None => RouteNode::Leaf { score: score(n) },
            },
        })
        .collect();
    PassSpec {
        bins: layout.bins.iter().map(|b| *b as u32).collect(),
        weighted,
        filtered,
        nodes: route,
        slots: group.len() as u32,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::datasource::MemTable;
    use datafusion::prelude::SessionContext;

    use super::*;
    use crate::synthetic::{stroke_spec, stroke_table};

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
        let layout = binned.layout();
        let scoring = Scoring {
            impurity: params.impurity,
            class_weights: [1.0, 1.0],
            weighted: false,
            min_instances: 1,
            min_info_gain: 0.0,
        };
        let mut nodes = vec![GrowNode::root()];
        let spec = route_spec(&nodes, &[0], &layout, false, true, |_| 0.0);
        let root = binned.pass(&spec, &layout, RowSet::Train).await.unwrap();
        let split = best_split(&root, &layout, &binned.bins, &scoring).unwrap();
        for (id, stats) in [(2, split.left), (3, split.right)] {
            nodes.push(GrowNode {
                id,
                depth: 1,
                stats: Some(stats),
                split: None,
                children: None,
                hist: None,
            });
        }
        nodes[0].split = Some(split);
        nodes[0].children = Some((1, 2));
        // Both children accumulated in one pass.
        let spec = route_spec(&nodes, &[1, 2], &layout, false, true, |_| 0.0);
        let both = binned.pass(&spec, &layout, RowSet::Train).await.unwrap();
        let (left, right) = both.split_at(layout.node_stride);
        let derived: Vec<u64> = root
            .iter()
            .zip(left)
            .map(|(p, l)| p.wrapping_sub(*l))
            .collect();
        assert_eq!(derived, right);
        assert!(right.iter().any(|c| *c > 0));
    }
}
