//! The gradient-boosted trees estimator in the mould of MLlib's `GBTClassifier`, with the
//! logistic loss and Newton steps: tree `m` is grown on the gradients and hessians of the loss
//! at the margin of trees `0..m`, its leaves take the step `-G / (H + λ)` shrunk by the step
//! size, and boosting stops early when the loss on held-out validation rows stops improving by
//! MLlib's `validationTol` rule. Gradients are computed for each row where the row is, and
//! summed in fixed point, so the model is byte-identical for any partitioning.
//!
//! The margin of every row is kept between iterations: with [`Storage::Memory`] the training
//! and validation rows are held in memory with their margins, to which each new tree adds its
//! leaf values; with [`Storage::Inline`] it is recomputed from all trees so far inside each
//! pass's plan (executors keep nothing between jobs). Both add the same leaf values in the same
//! order, so they give the same bits. The result is a [`GbtModel`]. This module does not
//! compute metrics.

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{DataType, Float64Type, UInt8Type};
use datafusion::prelude::{DataFrame, Expr, cast, lit};

use crate::dataset::{DatasetSpec, column};
use crate::ensemble::{
    ENSEMBLE_FORMAT_VERSION, EarlyStopping, GBT_FORMAT, GbtModel, Tree, TreeNode,
};
use crate::error::{Error, Result};
use crate::forest::subsample_thresholds;
use crate::grow::{GrowNode, GrowPlan, PassSource, TreePlan};
use crate::hash::{SALT_TREE_FEATURES, SALT_TREE_SAMPLE, tree_seed};
use crate::histogram::{CellKind, Combine, PassSpec, Sampling, score_expr};
use crate::logistic::GRADIENT_SCALE;
use crate::model::TrainingSummary;
use crate::params::GbtParams;
use crate::prepare::{BinnedDataset, Extras, KEY_COL, LABEL_COL, RowSet, Storage, WEIGHT_COL};
use crate::resident::{HeldRows, ResidentPasses};
use crate::split::{CellStats, GradStats, Newton};

/// The gradient-boosted trees estimator: parameters checked once, then
/// [`GradientBoostedTrees::fit`].
///
/// ```no_run
/// # async fn example(data: datafusion::prelude::DataFrame, spec: ml::DatasetSpec) -> ml::Result<()> {
/// use ml::{GbtParams, GradientBoostedTrees};
///
/// let gbt = GradientBoostedTrees::new(GbtParams { max_iter: 100, max_depth: 4, ..Default::default() })?;
/// let model = gbt.fit(data, &spec).await?;
/// assert!(model.trees.len() <= 100);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct GradientBoostedTrees {
    params: GbtParams,
}

impl GradientBoostedTrees {
    /// Validates the parameters.
    pub fn new(params: GbtParams) -> Result<Self> {
        params.validate()?;
        Ok(Self { params })
    }

    /// The parameters.
    pub fn params(&self) -> &GbtParams {
        &self.params
    }

    /// Trains on every row of `data` (less the validation rows, when a validation fraction is
    /// set).
    pub async fn fit(&self, data: DataFrame, spec: &DatasetSpec) -> Result<GbtModel> {
        let binned = BinnedDataset::prepare_for_fit(
            data,
            spec,
            &self.params.tree(),
            gbt_extras(&self.params),
        )
        .await?;
        binned.fit_gbt(&self.params, RowSet::All).await
    }
}

/// The columns boosting needs in its binned table.
pub(crate) fn gbt_extras(params: &GbtParams) -> Extras {
    Extras {
        key: params.subsampling_rate < 1.0,
        validation_fraction: (params.validation_fraction > 0.0)
            .then_some(params.validation_fraction),
        ..Extras::default()
    }
}

/// The logistic loss of a row at margin `f`: `ln(1 + e^-f)` for class 1, `ln(1 + e^f)` for
/// class 0, without overflow.
fn log_loss(f: f64, label: u8) -> f64 {
    let z = if label != 0 { -f } else { f };
    if z > 0.0 {
        z + (-z).exp().ln_1p()
    } else {
        z.exp().ln_1p()
    }
}

/// The mean weighted log loss of rows given as (label, row weight, margin). Each row's loss is
/// summed in fixed point, so the mean does not depend on the order rows arrive in.
fn mean_log_loss(rows: impl Iterator<Item = (u8, f64, f64)>, class_weights: [f64; 2]) -> f64 {
    let mut total: i128 = 0;
    let mut weights: i128 = 0;
    for (label, w, margin) in rows {
        let weight = w * class_weights[usize::from(label != 0)];
        total += (log_loss(margin, label) * weight * GRADIENT_SCALE).round() as i128;
        weights += (weight * GRADIENT_SCALE).round() as i128;
    }
    if weights > 0 {
        total as f64 / weights as f64
    } else {
        0.0
    }
}

impl BinnedDataset {
    /// Trains boosted trees on a row set (less its validation rows).
    pub async fn fit_gbt(&self, params: &GbtParams, rows: RowSet) -> Result<GbtModel> {
        let weighted = params.weight_column.is_some();
        let sampling = (params.subsampling_rate < 1.0).then(|| Sampling {
            thresholds: subsample_thresholds(params.subsampling_rate),
        });
        let include = self.validation_filter(rows, false);
        let key = sampling.as_ref().map(|_| column(KEY_COL));
        let counting = PassSource {
            df: self.df.clone(),
            include: include.clone(),
            key: None,
            score: None,
        };
        let root = self.root_stats(&counting).await?;
        if root.rows() == 0 {
            return Err(Error::EmptyDataset {
                what: format!("no training rows in {rows:?}"),
            });
        }
        let mut passes = 1u32;
        let mut scoring = self.scoring();
        scoring.class_weights = self.class_weights(&root, weighted)?;
        // The starting margin: the log-odds of the weighted training rows.
        let totals = scoring.totals(&root);
        let p = (totals[1] / (totals[0] + totals[1])).clamp(1e-15, 1.0 - 1e-15);
        let init = (p / (1.0 - p)).ln();
        let newton = Newton {
            lambda: params.l2_regularization,
            min_instances: params.min_instances_per_node,
            min_info_gain: params.min_info_gain,
        };
        let features = self.bins.len();
        let per_node = params
            .feature_subset_strategy
            .features_per_node(features, 1);
        let subset = (per_node < features).then_some(per_node);
        let cells = CellKind::Gradients {
            class_weights: scoring.class_weights,
        };
        let validating = params.validation_fraction > 0.0;
        let validation_rows = self.validation_filter(rows, true);
        // With the table in memory, the training rows (and the validation rows) are held with
        // their margins, which each new tree's leaf values are added to.
        let mut held = if self.storage == Storage::Memory {
            let source = PassSource {
                df: self.df.clone(),
                include: include.clone(),
                key: key.clone(),
                score: None,
            };
            let passes =
                ResidentPasses::load(self, &source, cells, weighted, sampling.clone(), 1).await?;
            let margins = vec![init; passes.len()];
            let validation = if validating {
                Some(HeldRows::load(self, validation_rows.clone(), weighted, init).await?)
            } else {
                None
            };
            Some((passes, margins, validation))
        } else {
            None
        };
        let mut trees: Vec<Tree> = Vec::new();
        let mut losses = Vec::new();
        let (mut best_loss, mut kept) = (f64::INFINITY, 0usize);
        for m in 0..params.max_iter {
            let m = u64::from(m);
            let source = PassSource {
                df: self.df.clone(),
                include: include.clone(),
                key: key.clone(),
                score: match held {
                    Some(_) => None,
                    None => Some(self.margin_expr(init, &trees)?),
                },
            };
            let mut plan = GrowPlan {
                criterion: newton,
                cells,
                weighted,
                max_depth: params.max_depth,
                min_instances: params.min_instances_per_node,
                budget: Self::budget(params.max_memory_mb),
                trees: vec![TreePlan {
                    sample_seed: tree_seed(params.seed, SALT_TREE_SAMPLE, m),
                    subset_seed: tree_seed(params.seed, SALT_TREE_FEATURES, m),
                }],
                sampling: sampling.clone(),
                subset,
            };
            if let Some((passes, margins, _)) = &mut held {
                passes.start_boosted_tree(margins, scoring.class_weights);
            }
            let resident = held.as_mut().map(|(passes, _, _)| passes);
            let grown = self
                .grow(&mut plan, &source, resident, |_, _| Ok(()))
                .await?;
            passes += grown.passes;
            let nodes = grown.trees.into_iter().next().unwrap_or_default();
            let mut out = Vec::with_capacity(nodes.len());
            self.emit_boosted_node(&nodes, 0, &newton, params.step_size, &mut out)?;
            let tree = Tree { nodes: out };
            if let Some((passes, margins, validation)) = &mut held {
                let route = self.route_of_tree(&tree)?;
                passes.add_tree(&route, margins)?;
                if let Some(validation) = validation {
                    validation.add_tree(&route)?;
                }
            }
            trees.push(tree);
            if !validating {
                continue;
            }
            // MLlib's rule: stop when the loss improves by less than `validation_tol` of
            // itself (at least 0.01); keep the trees up to the best loss.
            let loss = match &held {
                Some((_, _, Some(validation))) => {
                    mean_log_loss(validation.each(), scoring.class_weights)
                }
                _ => {
                    self.validation_loss(
                        init,
                        &trees,
                        validation_rows.clone(),
                        scoring.class_weights,
                    )
                    .await?
                }
            };
            losses.push(loss);
            if m == 0 {
                (best_loss, kept) = (loss, 1);
            } else if best_loss - loss < params.validation_tol * loss.max(0.01) {
                break;
            } else if loss < best_loss {
                (best_loss, kept) = (loss, trees.len());
            }
        }
        let early_stopping = if validating {
            trees.truncate(kept);
            Some(EarlyStopping {
                validation_rows: match &held {
                    Some((_, _, Some(validation))) => validation.len() as u64,
                    _ => self.count_where(validation_rows).await?,
                },
                losses,
                kept: kept as u32,
            })
        } else {
            None
        };
        Ok(GbtModel {
            format: GBT_FORMAT.to_string(),
            format_version: ENSEMBLE_FORMAT_VERSION,
            label: self.spec.label.clone(),
            features: self.spec.features.clone(),
            params: params.clone(),
            training: TrainingSummary {
                rows: root.rows(),
                class_counts: root.count,
                class_weights: scoring.class_weights,
                passes,
            },
            init,
            early_stopping,
            calibration: None,
            operating_point: None,
            trees,
        })
    }

    /// The margin of trees so far, scored inside the plan.
    fn margin_expr(&self, init: f64, trees: &[Tree]) -> Result<Expr> {
        if trees.is_empty() {
            return Ok(lit(init));
        }
        let spec = PassSpec::scoring(
            self.num_bins(),
            trees
                .iter()
                .map(|t| self.route_of_tree(t))
                .collect::<Result<_>>()?,
            Combine::Sum { init },
        );
        score_expr(&spec, None, self.bin_exprs())
    }

    /// Rows a filter keeps.
    async fn count_where(&self, filter: Option<Expr>) -> Result<u64> {
        let df = match filter {
            Some(f) => self.df.clone().filter(f)?,
            None => self.df.clone(),
        };
        Ok(df.count().await? as u64)
    }

    /// The mean weighted log loss of the validation rows at the margin of `trees`, scored
    /// inside a plan.
    async fn validation_loss(
        &self,
        init: f64,
        trees: &[Tree],
        rows: Option<Expr>,
        class_weights: [f64; 2],
    ) -> Result<f64> {
        let source = match rows {
            Some(f) => self.df.clone().filter(f)?,
            None => self.df.clone(),
        };
        let weight = if self.params.weight_column.is_some() {
            column(WEIGHT_COL)
        } else {
            lit(1.0f64)
        };
        let margin = self.margin_expr(init, trees)?;
        let df = source.select(vec![
            column(LABEL_COL),
            cast(margin, DataType::Float64).alias("margin"),
            cast(weight, DataType::Float64).alias("weight"),
        ])?;
        let batches = df.collect().await?;
        let mut rows = Vec::new();
        for batch in &batches {
            let labels = batch.column(0).as_primitive::<UInt8Type>();
            let margins = batch.column(1).as_primitive::<Float64Type>();
            let w = batch.column(2).as_primitive::<Float64Type>();
            for r in 0..batch.num_rows() {
                if margins.is_valid(r) {
                    rows.push((labels.value(r), w.value(r), margins.value(r)));
                }
            }
        }
        Ok(mean_log_loss(rows.into_iter(), class_weights))
    }

    /// Writes the subtree at `index` in preorder; returns its index in `out`.
    fn emit_boosted_node(
        &self,
        nodes: &[GrowNode<GradStats>],
        index: usize,
        newton: &Newton,
        step: f64,
        out: &mut Vec<TreeNode>,
    ) -> Result<usize> {
        let g = &nodes[index];
        let stats = g.stats.unwrap_or_default();
        let at = out.len();
        out.push(TreeNode {
            id: g.id,
            rows: stats.rows(),
            value: newton.leaf_value(&stats) * step,
            split: None,
        });
        if let (Some(c), Some((l, r))) = (&g.split, g.children) {
            let left = self.emit_boosted_node(nodes, l, newton, step, out)?;
            let right = self.emit_boosted_node(nodes, r, newton, step, out)?;
            out[at].split = Some(self.model_split(c, stats.h(), left, right)?);
        }
        Ok(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_loss_is_stable_and_symmetric() {
        assert!((log_loss(0.0, 1) - 2f64.ln()).abs() < 1e-15);
        assert!((log_loss(3.0, 1) - log_loss(-3.0, 0)).abs() < 1e-15);
        assert!(log_loss(800.0, 1) < 1e-300);
        assert!((log_loss(800.0, 0) - 800.0).abs() < 1e-9);
    }
}
