//! The fitted ensembles: [`RandomForestModel`] (trees whose leaves hold a probability of class
//! 1; the forest's probability is their mean) and [`GbtModel`] (trees whose leaves hold a step
//! of the log-odds margin; the model's probability is the logistic function of a starting margin
//! plus the steps). Each is versioned and serialized canonically like the decision tree (floats
//! as exact strings, fields in declaration order), self-contained (features, parameters,
//! calibration and operating threshold travel with it), and split into canonical parts for its
//! fingerprint. Every node keeps the training rows that reached it, which TreeSHAP needs. This
//! module does not train and does not read data.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::calibration::{Calibration, OperatingPoint};
use crate::dataset::FeatureSpec;
use crate::error::{Error, Result};
use crate::logistic::sigmoid;
use crate::model::{Split, TrainingSummary, format_number};
use crate::params::{GbtParams, RandomForestParams};
use crate::shap::ShapTree;

/// The `format` tag of a serialized random forest.
pub const RANDOM_FOREST_FORMAT: &str = "emrflow.random_forest";

/// The `format` tag of serialized gradient-boosted trees.
pub const GBT_FORMAT: &str = "emrflow.gbt";

/// The ensemble format this build writes and reads.
pub const ENSEMBLE_FORMAT_VERSION: u32 = 1;

/// One node of an ensemble's tree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TreeNode {
    /// Heap-style id: the root is 1, the children of `i` are `2i` and `2i + 1`.
    pub id: u64,
    /// Training rows that reached the node in its tree's sample, each counted as often as it
    /// was drawn: the node's cover.
    pub rows: u64,
    /// At a leaf, the tree's output: a probability of class 1 in a forest, a step of the margin
    /// (shrinkage applied) in a boosted model. At an internal node, the same quantity had the
    /// node been a leaf.
    #[serde(with = "crate::exact")]
    pub value: f64,
    /// The split, for an internal node.
    pub split: Option<Split>,
}

/// One tree of an ensemble, nodes in preorder (`nodes[0]` is the root).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tree {
    /// The nodes.
    pub nodes: Vec<TreeNode>,
}

impl ShapTree for Tree {
    fn split(&self, i: usize) -> Option<&Split> {
        self.nodes[i].split.as_ref()
    }

    fn value(&self, i: usize) -> f64 {
        self.nodes[i].value
    }

    fn cover(&self, i: usize) -> f64 {
        self.nodes[i].rows as f64
    }
}

/// The depth of a heap-style node id (the root, 1, is at depth 0).
pub(crate) fn id_depth(id: u64) -> u32 {
    63 - id.max(1).leading_zeros()
}

impl Tree {
    /// Depth of the deepest leaf.
    pub fn depth(&self) -> u32 {
        self.nodes.iter().map(|n| id_depth(n.id)).max().unwrap_or(0)
    }

    /// The index of the leaf a row reaches (`values[i]` is feature `i`; `None` or NaN is
    /// missing).
    pub fn leaf(&self, values: &[Option<f64>]) -> Result<usize> {
        let mut index = 0;
        for _ in 0..=self.nodes.len() {
            let node = self
                .nodes
                .get(index)
                .ok_or_else(|| corrupt("a child index is out of range"))?;
            let Some(split) = &node.split else {
                return Ok(index);
            };
            let value = values
                .get(split.feature)
                .ok_or_else(|| corrupt("a split names no feature"))?;
            index = if split.goes_left(*value) {
                split.left
            } else {
                split.right
            };
        }
        Err(corrupt("a tree has a cycle"))
    }

    /// The tree's output for a row.
    pub fn output(&self, values: &[Option<f64>]) -> Result<f64> {
        Ok(self.nodes[self.leaf(values)?].value)
    }

    /// Each feature's share of the tree's split gains (gain × weighted rows), summing to 1.
    pub(crate) fn importances(&self, features: usize) -> Vec<f64> {
        let mut imp = vec![0.0; features];
        for node in &self.nodes {
            if let Some(s) = &node.split
                && let Some(slot) = imp.get_mut(s.feature)
            {
                *slot += s.gain * s.weight;
            }
        }
        normalize(&mut imp);
        imp
    }

    /// Structural checks: children in range and after their parent, features in range.
    fn check(&self, features: usize) -> std::result::Result<(), String> {
        if self.nodes.is_empty() {
            return Err("a tree has no nodes".to_string());
        }
        for (i, node) in self.nodes.iter().enumerate() {
            if let Some(s) = &node.split {
                if s.feature >= features {
                    return Err(format!(
                        "node {} splits on feature {}, which does not exist",
                        node.id, s.feature
                    ));
                }
                let n = self.nodes.len();
                if s.left <= i || s.right <= i || s.left >= n || s.right >= n {
                    return Err(format!("node {} has children out of order", node.id));
                }
            }
        }
        Ok(())
    }

    /// The tree as indented text.
    fn debug(&self, features: &[FeatureSpec], index: usize, indent: usize, out: &mut String) {
        let pad = "  ".repeat(indent);
        let node = &self.nodes[index];
        match &node.split {
            None => {
                let _ = writeln!(
                    out,
                    "{pad}Predict: {} ({} rows)",
                    format_number(node.value),
                    node.rows
                );
            }
            Some(s) => {
                let feature = &features[s.feature];
                for (left, child) in [(true, s.left), (false, s.right)] {
                    let mut test = feature.describe(&s.rule, left, false).text;
                    if s.missing_left == left {
                        test.push_str(" or missing");
                    }
                    let word = if left { "If" } else { "Else" };
                    let _ = writeln!(out, "{pad}{word} ({test})");
                    self.debug(features, child, indent + 1, out);
                }
            }
        }
    }
}

fn corrupt(reason: &str) -> Error {
    Error::Model {
        path: "(in memory)".to_string(),
        reason: reason.to_string(),
    }
}

/// Scales non-negative numbers to sum 1 (all zeros stay zeros).
pub(crate) fn normalize(values: &mut [f64]) {
    let total: f64 = values.iter().sum();
    if total > 0.0 {
        for v in values {
            *v /= total;
        }
    }
}

/// What boosting's early stopping saw.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EarlyStopping {
    /// Held-out validation rows.
    pub validation_rows: u64,
    /// Mean log loss on them after each tree grown.
    #[serde(with = "crate::exact::vec")]
    pub losses: Vec<f64>,
    /// Trees kept: those up to the lowest loss before boosting stopped.
    pub kept: u32,
}

/// A trained random forest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RandomForestModel {
    /// Always [`RANDOM_FOREST_FORMAT`].
    pub format: String,
    /// Always [`ENSEMBLE_FORMAT_VERSION`] for models written by this build.
    pub format_version: u32,
    /// The label column the model predicts.
    pub label: String,
    /// The features, in the order predictions take them.
    pub features: Vec<FeatureSpec>,
    /// The parameters it was trained with.
    pub params: RandomForestParams,
    /// What it was trained on.
    pub training: TrainingSummary,
    /// The calibration of its probabilities (absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<Calibration>,
    /// Its operating threshold (absent: class 1 above probability 0.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operating_point: Option<OperatingPoint>,
    /// The trees.
    pub trees: Vec<Tree>,
}

/// Trained gradient-boosted trees.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GbtModel {
    /// Always [`GBT_FORMAT`].
    pub format: String,
    /// Always [`ENSEMBLE_FORMAT_VERSION`] for models written by this build.
    pub format_version: u32,
    /// The label column the model predicts.
    pub label: String,
    /// The features, in the order predictions take them.
    pub features: Vec<FeatureSpec>,
    /// The parameters it was trained with.
    pub params: GbtParams,
    /// What it was trained on.
    pub training: TrainingSummary,
    /// The starting margin: the log-odds of class 1 among the (weighted) training rows.
    #[serde(with = "crate::exact")]
    pub init: f64,
    /// Early stopping, when a validation fraction was held out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub early_stopping: Option<EarlyStopping>,
    /// The calibration of its probabilities (absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<Calibration>,
    /// Its operating threshold (absent: class 1 above probability 0.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operating_point: Option<OperatingPoint>,
    /// The trees, in the order they were grown.
    pub trees: Vec<Tree>,
}

/// The canonical parts of a model with trees: its header, then per tree a line giving its
/// index and size followed by its nodes, each as canonical JSON.
fn tree_parts(header: Vec<u8>, trees: &[Tree]) -> Result<Vec<Vec<u8>>> {
    #[derive(Serialize)]
    struct TreeHeader {
        tree: usize,
        nodes: usize,
    }
    let mut parts = vec![header];
    for (i, tree) in trees.iter().enumerate() {
        parts.push(serde_json::to_vec(&TreeHeader {
            tree: i,
            nodes: tree.nodes.len(),
        })?);
        for node in &tree.nodes {
            parts.push(serde_json::to_vec(node)?);
        }
    }
    Ok(parts)
}

/// Checks a parsed ensemble's format, version and trees.
fn check_ensemble(
    format: &str,
    expected: &str,
    version: u32,
    trees: &[Tree],
    features: usize,
    origin: &str,
) -> Result<()> {
    let fail = |reason: String| Error::Model {
        path: origin.to_string(),
        reason,
    };
    if format != expected || version != ENSEMBLE_FORMAT_VERSION {
        return Err(fail(format!(
            "format {format} version {version} is not {expected} version {ENSEMBLE_FORMAT_VERSION}"
        )));
    }
    if trees.is_empty() {
        return Err(fail("the model has no trees".to_string()));
    }
    for tree in trees {
        tree.check(features).map_err(fail)?;
    }
    Ok(())
}

/// Text of every tree, under a header line.
fn trees_text(header: String, features: &[FeatureSpec], trees: &[Tree]) -> String {
    let mut out = header;
    for (i, tree) in trees.iter().enumerate() {
        let _ = writeln!(out, "  Tree {i}:");
        tree.debug(features, 0, 2, &mut out);
    }
    out
}

impl RandomForestModel {
    /// The forest's probability of class 1: the mean of its trees' (summed in tree order, as
    /// `ml_tree_score` sums them, so the bits agree).
    pub fn probability(&self, values: &[Option<f64>]) -> Result<f64> {
        let mut sum = 0.0;
        for tree in &self.trees {
            sum += tree.output(values)?;
        }
        Ok(sum / self.trees.len() as f64)
    }

    /// MLlib's ensemble importance: each tree's normalized importances, averaged and
    /// normalized.
    pub fn feature_importances(&self) -> Vec<f64> {
        let mut imp = vec![0.0; self.features.len()];
        for tree in &self.trees {
            for (a, b) in imp.iter_mut().zip(tree.importances(self.features.len())) {
                *a += b;
            }
        }
        normalize(&mut imp);
        imp
    }

    /// The byte strings its fingerprint is computed over.
    pub fn canonical_parts(&self) -> Result<Vec<Vec<u8>>> {
        #[derive(Serialize)]
        struct Header<'a> {
            format: &'a str,
            format_version: u32,
            label: &'a str,
            features: &'a [FeatureSpec],
            params: &'a RandomForestParams,
            training: &'a TrainingSummary,
            #[serde(skip_serializing_if = "Option::is_none")]
            calibration: Option<&'a Calibration>,
            #[serde(skip_serializing_if = "Option::is_none")]
            operating_point: Option<&'a OperatingPoint>,
            trees: usize,
        }
        let header = serde_json::to_vec(&Header {
            format: &self.format,
            format_version: self.format_version,
            label: &self.label,
            features: &self.features,
            params: &self.params,
            training: &self.training,
            calibration: self.calibration.as_ref(),
            operating_point: self.operating_point.as_ref(),
            trees: self.trees.len(),
        })?;
        tree_parts(header, &self.trees)
    }

    /// Checks a parsed forest.
    pub(crate) fn check(&self, origin: &str) -> Result<()> {
        check_ensemble(
            &self.format,
            RANDOM_FOREST_FORMAT,
            self.format_version,
            &self.trees,
            self.features.len(),
            origin,
        )
    }

    /// Every tree as text, in the shape of MLlib's `toDebugString`.
    pub fn to_debug_string(&self) -> String {
        trees_text(
            format!(
                "RandomForestClassificationModel: label={}, numTrees={}, numClasses=2, numFeatures={}\n",
                self.label,
                self.trees.len(),
                self.features.len()
            ),
            &self.features,
            &self.trees,
        )
    }
}

impl GbtModel {
    /// The model's margin (log-odds of class 1): the starting margin plus each tree's step, in
    /// tree order (as `ml_tree_score` adds them, so the bits agree).
    pub fn margin(&self, values: &[Option<f64>]) -> Result<f64> {
        let mut margin = self.init;
        for tree in &self.trees {
            margin += tree.output(values)?;
        }
        Ok(margin)
    }

    /// The model's probability of class 1.
    pub fn probability(&self, values: &[Option<f64>]) -> Result<f64> {
        Ok(sigmoid(self.margin(values)?))
    }

    /// Each feature's share of the split gains over all trees (gain × weighted rows), summing
    /// to 1.
    pub fn feature_importances(&self) -> Vec<f64> {
        let mut imp = vec![0.0; self.features.len()];
        for tree in &self.trees {
            for node in &tree.nodes {
                if let Some(s) = &node.split
                    && let Some(slot) = imp.get_mut(s.feature)
                {
                    *slot += s.gain * s.weight;
                }
            }
        }
        normalize(&mut imp);
        imp
    }

    /// The byte strings its fingerprint is computed over.
    pub fn canonical_parts(&self) -> Result<Vec<Vec<u8>>> {
        #[derive(Serialize)]
        struct Header<'a> {
            format: &'a str,
            format_version: u32,
            label: &'a str,
            features: &'a [FeatureSpec],
            params: &'a GbtParams,
            training: &'a TrainingSummary,
            #[serde(with = "crate::exact")]
            init: f64,
            #[serde(skip_serializing_if = "Option::is_none")]
            early_stopping: Option<&'a EarlyStopping>,
            #[serde(skip_serializing_if = "Option::is_none")]
            calibration: Option<&'a Calibration>,
            #[serde(skip_serializing_if = "Option::is_none")]
            operating_point: Option<&'a OperatingPoint>,
            trees: usize,
        }
        let header = serde_json::to_vec(&Header {
            format: &self.format,
            format_version: self.format_version,
            label: &self.label,
            features: &self.features,
            params: &self.params,
            training: &self.training,
            init: self.init,
            early_stopping: self.early_stopping.as_ref(),
            calibration: self.calibration.as_ref(),
            operating_point: self.operating_point.as_ref(),
            trees: self.trees.len(),
        })?;
        tree_parts(header, &self.trees)
    }

    /// Checks a parsed model.
    pub(crate) fn check(&self, origin: &str) -> Result<()> {
        check_ensemble(
            &self.format,
            GBT_FORMAT,
            self.format_version,
            &self.trees,
            self.features.len(),
            origin,
        )
    }

    /// Every tree as text, in the shape of MLlib's `toDebugString`.
    pub fn to_debug_string(&self) -> String {
        trees_text(
            format!(
                "GBTClassificationModel: label={}, numTrees={}, numFeatures={}, initial margin {}\n",
                self.label,
                self.trees.len(),
                self.features.len(),
                format_number(self.init)
            ),
            &self.features,
            &self.trees,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::FeatureKind;
    use crate::model::SplitRule;

    pub(crate) fn stump(feature: usize, threshold: f64, low: f64, high: f64) -> Tree {
        Tree {
            nodes: vec![
                TreeNode {
                    id: 1,
                    rows: 10,
                    value: (low + high) / 2.0,
                    split: Some(Split {
                        feature,
                        rule: SplitRule::Threshold { threshold },
                        missing_left: true,
                        gain: 0.5,
                        weight: 10.0,
                        left: 1,
                        right: 2,
                    }),
                },
                TreeNode {
                    id: 2,
                    rows: 5,
                    value: low,
                    split: None,
                },
                TreeNode {
                    id: 3,
                    rows: 5,
                    value: high,
                    split: None,
                },
            ],
        }
    }

    fn features() -> Vec<FeatureSpec> {
        ["age", "bmi"]
            .iter()
            .map(|n| FeatureSpec {
                name: n.to_string(),
                kind: FeatureKind::continuous(),
            })
            .collect()
    }

    fn forest() -> RandomForestModel {
        RandomForestModel {
            format: RANDOM_FOREST_FORMAT.into(),
            format_version: ENSEMBLE_FORMAT_VERSION,
            label: "stroke".into(),
            features: features(),
            params: RandomForestParams::default(),
            training: TrainingSummary {
                rows: 10,
                class_counts: [6, 4],
                class_weights: [1.0, 1.0],
                passes: 2,
            },
            calibration: None,
            operating_point: None,
            trees: vec![stump(0, 0.5, 0.1, 0.7), stump(1, 0.2, 0.3, 0.9)],
        }
    }

    #[test]
    fn a_forest_averages_and_a_boosted_model_adds() {
        let f = forest();
        let p = f.probability(&[Some(0.9), Some(0.1)]).unwrap();
        assert!((p - 0.5).abs() < 1e-12, "{p}");
        let gbt = GbtModel {
            format: GBT_FORMAT.into(),
            format_version: ENSEMBLE_FORMAT_VERSION,
            label: "stroke".into(),
            features: features(),
            params: GbtParams::default(),
            training: f.training.clone(),
            init: -1.0,
            early_stopping: None,
            calibration: None,
            operating_point: None,
            trees: vec![stump(0, 0.5, -0.1, 0.4), stump(1, 0.2, -0.2, 0.3)],
        };
        let m = gbt.margin(&[Some(0.9), None]).unwrap();
        assert!((m - (-1.0 + 0.4 - 0.2)).abs() < 1e-12, "{m}");
        assert_eq!(gbt.probability(&[Some(0.9), None]).unwrap(), sigmoid(m));
        let imp = gbt.feature_importances();
        assert!((imp[0] - 0.5).abs() < 1e-12 && (imp[1] - 0.5).abs() < 1e-12);
    }

    #[test]
    fn parts_bind_trees_and_the_text_names_features() {
        let f = forest();
        let parts = f.canonical_parts().unwrap();
        // Header, then per tree its size line and 3 nodes.
        assert_eq!(parts.len(), 1 + 2 * 4);
        let mut moved = f.clone();
        moved.trees[1].nodes[2].value = 0.91;
        assert_ne!(moved.canonical_parts().unwrap()[8], parts[8]);
        assert_eq!(moved.canonical_parts().unwrap()[..8], parts[..8]);
        let text = f.to_debug_string();
        assert!(
            text.contains("Tree 1:") && text.contains("If (bmi ≤ 0.2 or missing)"),
            "{text}"
        );
        assert_eq!(id_depth(1), 0);
        assert_eq!(id_depth(7), 2);
        assert_eq!(f.trees[0].depth(), 1);
    }
}
