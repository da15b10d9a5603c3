//! The random-forest estimator in the mould of MLlib's `RandomForestClassifier`: every tree is
//! grown on a bootstrap sample of the rows, each split chosen among a fresh random subset of the
//! features, and all trees grow together, level by level, their frontier nodes sharing each
//! histogram pass under the memory budget. A row's multiplicity in tree `t` (Poisson with mean
//! `subsampling_rate`, or 0/1 without replacement) is drawn from a seeded hash of the row key and
//! `t`, inside the pass: there is no sampling pass, and the sample is the same for any
//! partitioning. The result is a [`RandomForestModel`]. This module does not compute metrics.

use datafusion::prelude::DataFrame;

use crate::dataset::{DatasetSpec, column};
use crate::ensemble::{
    ENSEMBLE_FORMAT_VERSION, RANDOM_FOREST_FORMAT, RandomForestModel, Tree, TreeNode,
};
use crate::error::Result;
use crate::grow::{GrowNode, GrowPlan, PassSource, TreePlan};
use crate::hash::{SALT_TREE_FEATURES, SALT_TREE_SAMPLE, tree_seed};
use crate::histogram::{CellKind, Sampling};
use crate::model::TrainingSummary;
use crate::params::RandomForestParams;
use crate::prepare::{BinnedDataset, Extras, KEY_COL, RowSet};
use crate::split::{CellStats, Scoring, Stats};

/// 2⁶⁴ as a float, to scale probabilities to hash thresholds.
const TWO_POW_64: f64 = 18_446_744_073_709_551_616.0;

/// The thresholds of Poisson(`mean`) multiplicities: its CDF scaled to 2⁶⁴, up to where the
/// remaining probability is below one part in 2⁶⁴.
pub(crate) fn poisson_thresholds(mean: f64) -> Vec<u64> {
    let mut thresholds = Vec::new();
    let mut p = (-mean).exp();
    let mut cdf = 0.0;
    for k in 0..64 {
        cdf += p;
        let t = cdf * TWO_POW_64;
        if t >= TWO_POW_64 {
            break;
        }
        thresholds.push(t as u64);
        p *= mean / f64::from(k + 1);
    }
    thresholds
}

/// The threshold of a 0/1 subsample keeping `rate` of the rows.
pub(crate) fn subsample_thresholds(rate: f64) -> Vec<u64> {
    vec![((1.0 - rate) * TWO_POW_64) as u64]
}

/// The random-forest estimator: parameters checked once, then [`RandomForest::fit`].
///
/// ```no_run
/// # async fn example(data: datafusion::prelude::DataFrame, spec: ml::DatasetSpec) -> ml::Result<()> {
/// use ml::{RandomForest, RandomForestParams};
///
/// let forest = RandomForest::new(RandomForestParams { num_trees: 50, ..Default::default() })?;
/// let model = forest.fit(data, &spec).await?;
/// assert_eq!(model.trees.len(), 50);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct RandomForest {
    params: RandomForestParams,
}

impl RandomForest {
    /// Validates the parameters.
    pub fn new(params: RandomForestParams) -> Result<Self> {
        params.validate()?;
        Ok(Self { params })
    }

    /// The parameters.
    pub fn params(&self) -> &RandomForestParams {
        &self.params
    }

    /// Trains on every row of `data`.
    pub async fn fit(&self, data: DataFrame, spec: &DatasetSpec) -> Result<RandomForestModel> {
        let binned = BinnedDataset::prepare_for_fit(
            data,
            spec,
            &self.params.tree,
            forest_extras(&self.params),
        )
        .await?;
        binned.fit_forest(&self.params, RowSet::All).await
    }
}

/// The sampling of a forest's trees, if any.
fn forest_sampling(params: &RandomForestParams) -> Option<Sampling> {
    if params.bootstrap {
        Some(Sampling {
            thresholds: poisson_thresholds(params.subsampling_rate),
        })
    } else if params.subsampling_rate < 1.0 {
        Some(Sampling {
            thresholds: subsample_thresholds(params.subsampling_rate),
        })
    } else {
        None
    }
}

/// The columns a forest needs in its binned table.
pub(crate) fn forest_extras(params: &RandomForestParams) -> Extras {
    Extras {
        key: forest_sampling(params).is_some(),
        ..Extras::default()
    }
}

impl BinnedDataset {
    /// Trains a forest on a row set.
    pub async fn fit_forest(
        &self,
        params: &RandomForestParams,
        rows: RowSet,
    ) -> Result<RandomForestModel> {
        let tree = &params.tree;
        let weighted = tree.weight_column.is_some();
        let sampling = forest_sampling(params);
        let source = PassSource {
            df: self.df.clone(),
            include: self.row_filter(rows),
            key: sampling.as_ref().map(|_| column(KEY_COL)),
            score: None,
        };
        // The unsampled training rows: the summary, and the class weights of `balanced`.
        let root = self.root_stats(&source).await?;
        if root.rows() == 0 {
            return Err(crate::error::Error::EmptyDataset {
                what: format!("no training rows in {rows:?}"),
            });
        }
        let mut scoring = self.scoring();
        scoring.class_weights = self.class_weights(&root, weighted)?;
        let features = self.bins.len();
        let per_node = params
            .feature_subset_strategy
            .features_per_node(features, params.num_trees);
        let mut plan = GrowPlan {
            criterion: scoring,
            cells: CellKind::Classes,
            weighted,
            max_depth: tree.max_depth,
            min_instances: tree.min_instances_per_node,
            budget: Self::budget(tree.max_memory_mb),
            trees: (0..u64::from(params.num_trees))
                .map(|t| TreePlan {
                    sample_seed: tree_seed(tree.seed, SALT_TREE_SAMPLE, t),
                    subset_seed: tree_seed(tree.seed, SALT_TREE_FEATURES, t),
                })
                .collect(),
            sampling,
            subset: (per_node < features).then_some(per_node),
        };
        let mut resident = self.resident(&plan, &source).await?;
        let grown = self
            .grow(&mut plan, &source, resident.as_mut(), |_, _| Ok(()))
            .await?;
        let trees = grown
            .trees
            .iter()
            .map(|nodes| {
                let mut out = Vec::with_capacity(nodes.len());
                self.emit_forest_node(nodes, 0, &scoring, &mut out)?;
                Ok(Tree { nodes: out })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(RandomForestModel {
            format: RANDOM_FOREST_FORMAT.to_string(),
            format_version: ENSEMBLE_FORMAT_VERSION,
            label: self.spec.label.clone(),
            features: self.spec.features.clone(),
            params: params.clone(),
            training: TrainingSummary {
                rows: root.rows(),
                class_counts: root.count,
                class_weights: scoring.class_weights,
                passes: grown.passes + 1,
            },
            calibration: None,
            operating_point: None,
            trees,
        })
    }

    /// Writes the subtree at `index` in preorder; returns its index in `out`.
    fn emit_forest_node(
        &self,
        nodes: &[GrowNode<Stats>],
        index: usize,
        scoring: &Scoring,
        out: &mut Vec<TreeNode>,
    ) -> Result<usize> {
        let g = &nodes[index];
        let stats = g.stats.unwrap_or_default();
        let at = out.len();
        out.push(TreeNode {
            id: g.id,
            rows: stats.rows(),
            value: scoring.probability(&stats),
            split: None,
        });
        if let (Some(c), Some((l, r))) = (&g.split, g.children) {
            let left = self.emit_forest_node(nodes, l, scoring, out)?;
            let right = self.emit_forest_node(nodes, r, scoring, out)?;
            let t = scoring.totals(&stats);
            out[at].split = Some(self.model_split(c, t[0] + t[1], left, right)?);
        }
        Ok(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poisson_thresholds_are_the_cdf() {
        let t = poisson_thresholds(1.0);
        assert!(t.windows(2).all(|w| w[0] <= w[1]));
        let p0 = t[0] as f64 / TWO_POW_64;
        let p1 = t[1] as f64 / TWO_POW_64;
        assert!((p0 - (-1f64).exp()).abs() < 1e-12);
        assert!((p1 - 2.0 * (-1f64).exp()).abs() < 1e-12);
        assert!(t.len() > 10 && t.len() < 30, "{}", t.len());
        let half = poisson_thresholds(0.5);
        assert!((half[0] as f64 / TWO_POW_64 - (-0.5f64).exp()).abs() < 1e-12);
        let keep = subsample_thresholds(0.25);
        assert!((keep[0] as f64 / TWO_POW_64 - 0.75).abs() < 1e-12);
    }
}
