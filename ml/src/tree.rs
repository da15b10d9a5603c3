//! The decision-tree estimator: [`DecisionTree`] (validated parameters) grows one tree level by
//! level through histogram passes (see `grow`) and turns it into a [`DecisionTreeModel`]. This
//! module also holds what every estimator shares on a binned dataset: row sets as filters,
//! class weights, split rules in the model's terms, and scoring a fitted model's trees inside a
//! plan. It does not compute metrics.

use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::{Float64Type, UInt8Type};
use datafusion::prelude::{DataFrame, Expr, lit};

use crate::binning::{FeatureBins, MISSING_BIN};
use crate::dataset::{DatasetSpec, column};
use crate::ensemble::Tree;
use crate::error::{Error, Result};
use crate::fitted::Model;
use crate::grow::{GrowNode, GrowPlan, PassSource, TreePlan};
use crate::histogram::{BinRule, CellKind, Combine, PassSpec, RouteNode, TreeRoute, score_expr};
use crate::model::{
    DecisionTreeModel, MODEL_FORMAT, MODEL_FORMAT_VERSION, Node, Split, SplitRule, TrainingSummary,
};
use crate::params::{ClassWeights, DecisionTreeParams};
use crate::prepare::{
    BinnedDataset, Extras, HOLDOUT_COL, LABEL_COL, RowSet, VALIDATION_COL, bin_col,
};
use crate::split::{Candidate, CellStats, Scoring, Stats};

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
        let binned =
            BinnedDataset::prepare_for_fit(data, spec, &self.params, Extras::default()).await?;
        binned.fit(RowSet::All).await
    }
}

/// A node's value when it is a leaf, and its split, as trees of any model hold them.
pub(crate) type NodeView<'a> = (Option<&'a Split>, f64);

impl BinnedDataset {
    /// Bins per feature, the missing bin included.
    pub(crate) fn num_bins(&self) -> Vec<u32> {
        self.bins.iter().map(|b| b.num_bins() as u32).collect()
    }

    /// The rows of a row set as a Boolean expression (`None`: every row).
    pub(crate) fn row_filter(&self, rows: RowSet) -> Option<Expr> {
        let test = column(crate::prepare::SPLIT_COL);
        let train = test.clone().eq(lit(0u8));
        let holdout = |inside: bool| {
            self.holdout
                .then(|| column(HOLDOUT_COL).eq(lit(u8::from(inside))))
        };
        match rows {
            RowSet::TrainExceptHoldout => Some(match holdout(false) {
                Some(h) => train.and(h),
                None => train,
            }),
            RowSet::Holdout => Some(match holdout(true) {
                Some(h) => train.and(h),
                // Nothing was held out: no row.
                None => lit(false),
            }),
            other => other.filter(),
        }
    }

    /// The rows of a row set, inside or outside the validation rows (when there are any).
    pub(crate) fn validation_filter(&self, rows: RowSet, validation: bool) -> Option<Expr> {
        let base = self.row_filter(rows);
        if !self.validation {
            return if validation { Some(lit(false)) } else { base };
        }
        let v = column(VALIDATION_COL).eq(lit(u8::from(validation)));
        Some(match base {
            Some(b) => b.and(v),
            None => v,
        })
    }

    pub(crate) fn rows_df(&self, rows: RowSet) -> Result<DataFrame> {
        Ok(match self.row_filter(rows) {
            Some(f) => self.df.clone().filter(f)?,
            None => self.df.clone(),
        })
    }

    pub(crate) fn bin_exprs(&self) -> Vec<Expr> {
        (0..self.bins.len()).map(|i| column(&bin_col(i))).collect()
    }

    /// Class weights for the training rows at the root.
    pub(crate) fn class_weights(&self, root: &Stats, weighted: bool) -> Result<[f64; 2]> {
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

    /// The classification criterion of the dataset's tree parameters (class weights unit).
    pub(crate) fn scoring(&self) -> Scoring {
        Scoring {
            impurity: self.params.impurity,
            class_weights: [1.0, 1.0],
            weighted: self.params.weight_column.is_some(),
            min_instances: self.params.min_instances_per_node,
            min_info_gain: self.params.min_info_gain,
        }
    }

    /// The histogram bytes a pass may use.
    pub(crate) fn budget(max_memory_mb: usize) -> usize {
        max_memory_mb.saturating_mul(1 << 20)
    }

    /// Trains a tree on a row set: one pass per level (more if the memory budget is tight).
    pub async fn fit(&self, rows: RowSet) -> Result<DecisionTreeModel> {
        let params = &self.params;
        let weighted = params.weight_column.is_some();
        let mut plan = GrowPlan {
            criterion: self.scoring(),
            cells: CellKind::Classes,
            weighted,
            max_depth: params.max_depth,
            min_instances: params.min_instances_per_node,
            budget: Self::budget(params.max_memory_mb),
            trees: vec![TreePlan {
                sample_seed: 0,
                subset_seed: 0,
            }],
            sampling: None,
            subset: None,
        };
        let source = PassSource {
            df: self.df.clone(),
            include: self.row_filter(rows),
            key: None,
            score: None,
        };
        let mut resident = self.resident(&plan, &source).await?;
        let grown = self
            .grow(
                &mut plan,
                &source,
                resident.as_mut(),
                |scoring, root: &Stats| {
                    if root.rows() == 0 {
                        return Err(Error::EmptyDataset {
                            what: format!("no training rows in {rows:?}"),
                        });
                    }
                    scoring.class_weights = self.class_weights(root, weighted)?;
                    Ok(())
                },
            )
            .await?;
        let scoring = plan.criterion;
        let nodes = grown.trees.into_iter().next().unwrap_or_default();
        let root = nodes.first().and_then(|n| n.stats).unwrap_or_default();
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
                passes: grown.passes,
            },
            nodes: out,
            calibration: None,
            operating_point: None,
        })
    }

    /// Writes the subtree at `index` in preorder; returns its index in `out`.
    fn emit(
        &self,
        nodes: &[GrowNode<Stats>],
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
            out[at].split = Some(self.model_split(c, totals[0] + totals[1], left, right)?);
        }
        Ok(at)
    }

    /// A grown split in the model's terms.
    pub(crate) fn model_split<S>(
        &self,
        c: &Candidate<S>,
        weight: f64,
        left: usize,
        right: usize,
    ) -> Result<Split> {
        let (rule, missing_left) = self.model_rule(&c.rule, c.feature)?;
        Ok(Split {
            feature: c.feature,
            rule,
            missing_left,
            gain: c.gain,
            weight,
            left,
            right,
        })
    }

    /// A bin rule in the model's terms: thresholds in stored units, category indices.
    fn model_rule(&self, rule: &BinRule, feature: usize) -> Result<(SplitRule, bool)> {
        match (rule, &self.bins[feature]) {
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
                reason: format!("split rule does not fit feature {feature}"),
            }),
        }
    }

    /// A model's tree in bins, for `ml_tree_score`: thresholds map back to their bin edges.
    pub(crate) fn route_of<'a>(
        &self,
        nodes: impl Iterator<Item = NodeView<'a>>,
    ) -> Result<TreeRoute> {
        let bad = |reason: String| Error::Model {
            path: "(evaluation)".into(),
            reason,
        };
        let mut route = Vec::new();
        for (split, value) in nodes {
            route.push(match split {
                None => RouteNode::Leaf { score: value },
                Some(s) => {
                    let rule = match (&s.rule, self.bins.get(s.feature)) {
                        (
                            SplitRule::Threshold { threshold },
                            Some(FeatureBins::Continuous { edges }),
                        ) => {
                            let k = edges.iter().position(|e| e == threshold).ok_or_else(|| {
                                bad(format!(
                                    "threshold {threshold} is not a bin edge of feature {}",
                                    s.feature
                                ))
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
                            return Err(bad(format!(
                                "split on feature {} does not fit the binning",
                                s.feature
                            )));
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
        Ok(TreeRoute {
            nodes: route,
            sample_seed: 0,
        })
    }

    /// An ensemble tree in bins.
    pub(crate) fn route_of_tree(&self, tree: &Tree) -> Result<TreeRoute> {
        self.route_of(tree.nodes.iter().map(|n| (n.split.as_ref(), n.value)))
    }

    /// The scoring spec of a model: its raw output (a probability for trees and forests, the
    /// margin for boosted trees).
    pub(crate) fn score_spec(&self, model: &Model) -> Result<PassSpec> {
        let (trees, combine) = match model {
            Model::DecisionTree(m) => (
                vec![self.route_of(m.nodes.iter().map(|n| (n.split.as_ref(), n.probability)))?],
                Combine::Mean,
            ),
            Model::RandomForest(m) => (
                m.trees
                    .iter()
                    .map(|t| self.route_of_tree(t))
                    .collect::<Result<_>>()?,
                Combine::Mean,
            ),
            Model::Gbt(m) => (
                m.trees
                    .iter()
                    .map(|t| self.route_of_tree(t))
                    .collect::<Result<_>>()?,
                Combine::Sum { init: m.init },
            ),
        };
        Ok(PassSpec::scoring(self.num_bins(), trees, combine))
    }

    /// Labels and scores of a row set under a scoring spec, computed inside a plan.
    pub(crate) async fn score_with(
        &self,
        spec: &PassSpec,
        rows: Option<Expr>,
    ) -> Result<(Vec<u8>, Vec<f64>)> {
        let df = match rows {
            Some(f) => self.df.clone().filter(f)?,
            None => self.df.clone(),
        };
        let df = df.select(vec![
            column(LABEL_COL),
            score_expr(spec, None, self.bin_exprs())?.alias("score"),
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

    /// Labels and predicted probabilities of class 1 for a row set, scored inside a plan.
    pub async fn score(
        &self,
        model: &DecisionTreeModel,
        rows: RowSet,
    ) -> Result<(Vec<u8>, Vec<f64>)> {
        let spec = self.score_spec(&Model::DecisionTree(model.clone()))?;
        self.score_with(&spec, self.row_filter(rows)).await
    }

    /// Labels and raw outputs (probabilities for trees and forests, margins for boosted trees)
    /// of any model for a row set, scored inside a plan.
    pub async fn score_model(&self, model: &Model, rows: RowSet) -> Result<(Vec<u8>, Vec<f64>)> {
        let spec = self.score_spec(model)?;
        self.score_with(&spec, self.row_filter(rows)).await
    }
}
