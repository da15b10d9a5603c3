//! Any fitted model — a decision tree, a random forest or gradient-boosted trees — behind one
//! type, [`Model`], with what a caller (the `predict` command, a server) needs: its canonical
//! bytes and fingerprint parts, the probability of class 1 (calibrated when the model carries a
//! calibration), the class at its operating threshold, and the exact contribution of every
//! feature to a single prediction (TreeSHAP). Each kind keeps its own serialized form, told
//! apart by its `format` field, so a decision tree's file is exactly what it always was. This
//! module does not train.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::calibration::{Calibration, OperatingPoint};
use crate::dataset::FeatureSpec;
use crate::ensemble::{
    GBT_FORMAT, GbtModel, RANDOM_FOREST_FORMAT, RandomForestModel, Tree, normalize,
};
use crate::error::{Error, Result};
use crate::logistic::sigmoid;
use crate::model::{DecisionTreeModel, MODEL_FORMAT, Node, Split, TrainingSummary, format_number};
use crate::params::{DecisionTreeParams, GbtParams, RandomForestParams};
use crate::shap::{Scratch, ShapTree, add_contributions, expected_value, height};

/// A fitted model of any kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Model {
    /// One decision tree.
    DecisionTree(DecisionTreeModel),
    /// A random forest.
    RandomForest(RandomForestModel),
    /// Gradient-boosted trees.
    Gbt(GbtModel),
}

impl Serialize for Model {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Model::DecisionTree(m) => m.serialize(s),
            Model::RandomForest(m) => m.serialize(s),
            Model::Gbt(m) => m.serialize(s),
        }
    }
}

/// A model's parameters, serialized as they are.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(untagged)]
pub enum ParamsRef<'a> {
    /// A decision tree's.
    DecisionTree(&'a DecisionTreeParams),
    /// A random forest's.
    RandomForest(&'a RandomForestParams),
    /// Boosted trees'.
    Gbt(&'a GbtParams),
}

/// What a model's raw output is, and so what its contributions add up to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Output {
    /// A probability of class 1 (trees and forests).
    Probability,
    /// The log-odds of class 1 (boosted trees).
    LogOdds,
}

/// One scored row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scored {
    /// The model's own probability of class 1.
    pub probability: f64,
    /// The probability after the model's calibration (the same without one): the risk to show.
    pub calibrated_probability: f64,
    /// The class at the operating threshold.
    pub prediction: u8,
    /// The operating threshold (class 1 at or above it), or 0.5 (class 1 above it) without one.
    pub threshold: f64,
    /// The decision path (decision trees only).
    pub path: Vec<crate::PathStep>,
    /// The id of the leaf reached (decision trees only).
    pub leaf: Option<u64>,
}

impl Scored {
    /// One line for a reader: a decision tree's path, or else the three largest contributions
    /// (`top`, as [`Explanation::top`] gives them), then the risk to show — "age > 67.5,
    /// atrial_fibrillation = 1 → risk 0.81" or "age = 81 (+0.412), ... → risk 0.34".
    pub fn explain(&self, top: &[(String, f64)]) -> String {
        let why = if self.leaf.is_some() {
            crate::model::path_text(&self.path)
        } else if top.is_empty() {
            "(no feature moves this model)".to_string()
        } else {
            top.iter()
                .take(3)
                .map(|(feature, c)| format!("{feature} ({c:+.3})"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!("{why} → risk {:.2}", self.calibrated_probability)
    }
}

/// Why a row got its output: TreeSHAP contributions of every feature.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Explanation {
    /// What the contributions add up to.
    pub output: Output,
    /// The model's expected output over its training rows.
    pub expected_value: f64,
    /// The model's output for the row: `expected_value` plus the contributions.
    pub value: f64,
    /// One contribution per feature, in model order.
    pub contributions: Vec<f64>,
}

impl Explanation {
    /// The largest contributions by size, with feature names and the row's values in raw units:
    /// `[("age = 81", 0.12), ...]`.
    pub fn top(
        &self,
        features: &[FeatureSpec],
        values: &[Option<f64>],
        n: usize,
    ) -> Vec<(String, f64)> {
        let mut order: Vec<usize> = (0..self.contributions.len()).collect();
        order.sort_by(|a, b| {
            self.contributions[*b]
                .abs()
                .total_cmp(&self.contributions[*a].abs())
                .then(a.cmp(b))
        });
        order
            .into_iter()
            .filter(|i| self.contributions[*i] != 0.0)
            .take(n)
            .map(|i| {
                let f = &features[i];
                let shown = match values.get(i).copied().flatten().filter(|v| !v.is_nan()) {
                    None => "missing".to_string(),
                    Some(v) => match &f.kind {
                        crate::dataset::FeatureKind::Categorical { .. } => {
                            f.category_name(v as u32)
                        }
                        crate::dataset::FeatureKind::Continuous { .. } => format_number(f.raw(v)),
                    },
                };
                (format!("{} = {shown}", f.name), self.contributions[i])
            })
            .collect()
    }
}

/// A decision tree's nodes as TreeSHAP reads them: the cover is the training rows.
struct DecisionNodes<'a>(&'a [Node]);

/// Adds `scale` times one tree's contributions for each row to its part of `phi` (`n` entries
/// per row).
fn tree_contributions<R: AsRef<[Option<f64>]>>(
    tree: &impl ShapTree,
    height: usize,
    scale: f64,
    rows: &[R],
    n: usize,
    phi: &mut [f64],
    buffer: &mut Scratch,
) {
    for (row, phi) in rows.iter().zip(phi.chunks_exact_mut(n)) {
        let values = row.as_ref();
        let goes_left = |s: &Split| s.goes_left(values.get(s.feature).copied().flatten());
        add_contributions(tree, height, &goes_left, scale, phi, buffer);
    }
}

impl ShapTree for DecisionNodes<'_> {
    fn split(&self, i: usize) -> Option<&Split> {
        self.0[i].split.as_ref()
    }

    fn value(&self, i: usize) -> f64 {
        self.0[i].probability
    }

    fn cover(&self, i: usize) -> f64 {
        (self.0[i].class_counts[0] + self.0[i].class_counts[1]) as f64
    }
}

impl Model {
    /// `decision_tree`, `random_forest` or `gbt`.
    pub fn kind(&self) -> &'static str {
        match self {
            Model::DecisionTree(_) => "decision_tree",
            Model::RandomForest(_) => "random_forest",
            Model::Gbt(_) => "gbt",
        }
    }

    /// The label column.
    pub fn label(&self) -> &str {
        match self {
            Model::DecisionTree(m) => &m.label,
            Model::RandomForest(m) => &m.label,
            Model::Gbt(m) => &m.label,
        }
    }

    /// The features, in the order predictions take them.
    pub fn features(&self) -> &[FeatureSpec] {
        match self {
            Model::DecisionTree(m) => &m.features,
            Model::RandomForest(m) => &m.features,
            Model::Gbt(m) => &m.features,
        }
    }

    /// Its parameters.
    pub fn params(&self) -> ParamsRef<'_> {
        match self {
            Model::DecisionTree(m) => ParamsRef::DecisionTree(&m.params),
            Model::RandomForest(m) => ParamsRef::RandomForest(&m.params),
            Model::Gbt(m) => ParamsRef::Gbt(&m.params),
        }
    }

    /// The decision tree, if the model is one.
    pub fn as_decision_tree(&self) -> Option<&DecisionTreeModel> {
        match self {
            Model::DecisionTree(m) => Some(m),
            _ => None,
        }
    }

    /// What it was trained on.
    pub fn training(&self) -> &TrainingSummary {
        match self {
            Model::DecisionTree(m) => &m.training,
            Model::RandomForest(m) => &m.training,
            Model::Gbt(m) => &m.training,
        }
    }

    /// Histogram passes over the data its training took.
    pub fn passes(&self) -> u32 {
        self.training().passes
    }

    /// Trees (1 for a decision tree).
    pub fn num_trees(&self) -> usize {
        match self {
            Model::DecisionTree(_) => 1,
            Model::RandomForest(m) => m.trees.len(),
            Model::Gbt(m) => m.trees.len(),
        }
    }

    /// Depth of the deepest leaf of any tree.
    pub fn depth(&self) -> u32 {
        match self {
            Model::DecisionTree(m) => m.depth(),
            Model::RandomForest(m) => m.trees.iter().map(Tree::depth).max().unwrap_or(0),
            Model::Gbt(m) => m.trees.iter().map(Tree::depth).max().unwrap_or(0),
        }
    }

    /// Nodes in all trees.
    pub fn num_nodes(&self) -> usize {
        match self {
            Model::DecisionTree(m) => m.num_nodes(),
            Model::RandomForest(m) => m.trees.iter().map(|t| t.nodes.len()).sum(),
            Model::Gbt(m) => m.trees.iter().map(|t| t.nodes.len()).sum(),
        }
    }

    /// What the raw output and contributions are.
    pub fn output(&self) -> Output {
        match self {
            Model::Gbt(_) => Output::LogOdds,
            _ => Output::Probability,
        }
    }

    /// The calibration, if the model has one.
    pub fn calibration(&self) -> Option<&Calibration> {
        match self {
            Model::DecisionTree(m) => m.calibration.as_ref(),
            Model::RandomForest(m) => m.calibration.as_ref(),
            Model::Gbt(m) => m.calibration.as_ref(),
        }
    }

    /// The operating threshold, if the model has one.
    pub fn operating_point(&self) -> Option<&OperatingPoint> {
        match self {
            Model::DecisionTree(m) => m.operating_point.as_ref(),
            Model::RandomForest(m) => m.operating_point.as_ref(),
            Model::Gbt(m) => m.operating_point.as_ref(),
        }
    }

    /// Sets the calibration and operating threshold (fitted after the trees).
    pub(crate) fn set_calibration(
        &mut self,
        calibration: Option<Calibration>,
        operating_point: Option<OperatingPoint>,
    ) {
        let (c, o) = match self {
            Model::DecisionTree(m) => (&mut m.calibration, &mut m.operating_point),
            Model::RandomForest(m) => (&mut m.calibration, &mut m.operating_point),
            Model::Gbt(m) => (&mut m.calibration, &mut m.operating_point),
        };
        *c = calibration;
        *o = operating_point;
    }

    /// Importance of each feature from the splits (MLlib's impurity importance: gain × weighted
    /// rows, per tree normalized and averaged for a forest), summing to 1.
    pub fn feature_importances(&self) -> Vec<f64> {
        match self {
            Model::DecisionTree(m) => m.feature_importances(),
            Model::RandomForest(m) => m.feature_importances(),
            Model::Gbt(m) => m.feature_importances(),
        }
    }

    fn check_row(&self, values: &[Option<f64>]) -> Result<()> {
        let n = self.features().len();
        if values.len() != n {
            return Err(Error::PredictInput {
                reason: format!(
                    "the model has {n} features, the row has {} values",
                    values.len()
                ),
            });
        }
        Ok(())
    }

    /// The raw output for one row (`values[i]` is feature `i` in stored units; `None` or NaN
    /// is missing): a probability for trees and forests, the margin for boosted trees.
    pub fn raw_output(&self, values: &[Option<f64>]) -> Result<f64> {
        self.check_row(values)?;
        match self {
            Model::DecisionTree(m) => Ok(m.predict(values)?.probability),
            Model::RandomForest(m) => m.probability(values),
            Model::Gbt(m) => m.margin(values),
        }
    }

    /// The model's own probability for a raw output.
    pub fn probability_of(&self, raw: f64) -> f64 {
        match self {
            Model::Gbt(_) => sigmoid(raw),
            _ => raw,
        }
    }

    /// The calibrated probability for a raw output (the model's own without a calibration).
    pub fn calibrated_of(&self, raw: f64) -> f64 {
        match self.calibration() {
            Some(c) => c.apply(raw),
            None => self.probability_of(raw),
        }
    }

    /// The class of a calibrated probability at the operating threshold.
    pub fn class_of(&self, calibrated: f64) -> u8 {
        match self.operating_point() {
            Some(op) => u8::from(calibrated >= op.threshold),
            None => u8::from(calibrated > 0.5),
        }
    }

    /// Scores one row.
    pub fn predict(&self, values: &[Option<f64>]) -> Result<Scored> {
        self.check_row(values)?;
        let (raw, path, leaf) = match self {
            Model::DecisionTree(m) => {
                let p = m.predict(values)?;
                (p.probability, p.path, Some(p.leaf))
            }
            _ => (self.raw_output(values)?, Vec::new(), None),
        };
        let calibrated = self.calibrated_of(raw);
        Ok(Scored {
            probability: self.probability_of(raw),
            calibrated_probability: calibrated,
            prediction: self.class_of(calibrated),
            threshold: self.operating_point().map_or(0.5, |o| o.threshold),
            path,
            leaf,
        })
    }

    /// The expected raw output over the training rows.
    pub fn expected_value(&self) -> f64 {
        match self {
            Model::DecisionTree(m) => expected_value(&DecisionNodes(&m.nodes)),
            Model::RandomForest(m) => {
                let sum: f64 = m.trees.iter().map(expected_value).sum();
                sum / m.trees.len() as f64
            }
            Model::Gbt(m) => m.init + m.trees.iter().map(expected_value).sum::<f64>(),
        }
    }

    /// The height of each tree (splits on its longest path), as `contributions` takes them.
    fn heights(&self) -> Vec<usize> {
        match self {
            Model::DecisionTree(m) => vec![height(&DecisionNodes(&m.nodes))],
            Model::RandomForest(m) => m.trees.iter().map(height).collect(),
            Model::Gbt(m) => m.trees.iter().map(height).collect(),
        }
    }

    /// Adds every feature's TreeSHAP contribution for each row to its part of `phi` (one
    /// entry per feature, row after row). Tree by tree: a tree's nodes stay in cache while every
    /// row walks it (row by row, the walks of a large forest were bound by memory). Each row
    /// still adds its trees in tree order, so its sums do not depend on how rows are grouped.
    fn contributions<R: AsRef<[Option<f64>]>>(
        &self,
        rows: &[R],
        heights: &[usize],
        phi: &mut [f64],
        buffer: &mut Scratch,
    ) {
        let n = self.features().len();
        match self {
            Model::DecisionTree(m) => {
                let nodes = DecisionNodes(&m.nodes);
                tree_contributions(&nodes, heights[0], 1.0, rows, n, phi, buffer);
            }
            Model::RandomForest(m) => {
                let scale = 1.0 / m.trees.len() as f64;
                for (tree, h) in m.trees.iter().zip(heights) {
                    tree_contributions(tree, *h, scale, rows, n, phi, buffer);
                }
            }
            Model::Gbt(m) => {
                for (tree, h) in m.trees.iter().zip(heights) {
                    tree_contributions(tree, *h, 1.0, rows, n, phi, buffer);
                }
            }
        }
    }

    /// The exact TreeSHAP contribution of every feature to one row's raw output.
    pub fn explain(&self, values: &[Option<f64>]) -> Result<Explanation> {
        self.check_row(values)?;
        let mut contributions = vec![0.0; values.len()];
        self.contributions(
            &[values],
            &self.heights(),
            &mut contributions,
            &mut Scratch::default(),
        );
        Ok(Explanation {
            output: self.output(),
            expected_value: self.expected_value(),
            value: self.raw_output(values)?,
            contributions,
        })
    }

    /// The mean absolute contribution of each feature over rows, normalized to sum 1: the
    /// global importance that follows from the explanations. Rows are explained in chunks on
    /// the machine's cores; chunk sums are added in row order, so the result does not depend on
    /// the number of threads.
    pub fn mean_abs_contributions(&self, rows: &[Vec<Option<f64>>]) -> Result<Vec<f64>> {
        // Rows per unit of work: each unit walks every tree once for all its rows.
        const CHUNK: usize = 64;
        let n = self.features().len();
        for row in rows {
            self.check_row(row)?;
        }
        let chunks: Vec<&[Vec<Option<f64>>]> = rows.chunks(CHUNK).collect();
        let heights = self.heights();
        let threads = std::thread::available_parallelism()
            .map_or(1, |t| t.get())
            .min(chunks.len().max(1));
        let next = std::sync::atomic::AtomicUsize::new(0);
        let mut sums: Vec<Vec<f64>> = vec![Vec::new(); chunks.len()];
        let results = std::sync::Mutex::new(&mut sums);
        std::thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(|| {
                    let mut buffer = Scratch::default();
                    let mut phi = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(chunk) = chunks.get(i) else {
                            break;
                        };
                        phi.clear();
                        phi.resize(chunk.len() * n, 0.0);
                        self.contributions(chunk, &heights, &mut phi, &mut buffer);
                        let mut sum = vec![0.0; n];
                        for row in phi.chunks_exact(n) {
                            for (s, p) in sum.iter_mut().zip(row) {
                                *s += p.abs();
                            }
                        }
                        let mut results = results.lock().unwrap_or_else(|e| e.into_inner());
                        results[i] = sum;
                    }
                });
            }
        });
        let mut mean = vec![0.0; n];
        for sum in &sums {
            for (m, s) in mean.iter_mut().zip(sum) {
                *m += s;
            }
        }
        for m in &mut mean {
            *m /= rows.len().max(1) as f64;
        }
        normalize(&mut mean);
        Ok(mean)
    }

    /// The canonical serialized form (see [`DecisionTreeModel::to_canonical_json`]).
    pub fn to_canonical_json(&self) -> Result<Vec<u8>> {
        Ok(serde_json::to_vec(self)?)
    }

    /// The byte strings the model's fingerprint is computed over.
    pub fn canonical_parts(&self) -> Result<Vec<Vec<u8>>> {
        match self {
            Model::DecisionTree(m) => m.canonical_parts(),
            Model::RandomForest(m) => m.canonical_parts(),
            Model::Gbt(m) => m.canonical_parts(),
        }
    }

    /// SHA-256 of the canonical JSON of the hyperparameters.
    pub fn params_hash(&self) -> Result<[u8; 32]> {
        Ok(match self {
            Model::DecisionTree(m) => m.params_hash()?,
            Model::RandomForest(m) => Sha256::digest(serde_json::to_vec(&m.params)?).into(),
            Model::Gbt(m) => Sha256::digest(serde_json::to_vec(&m.params)?).into(),
        })
    }

    /// SHA-256 of [`Model::to_canonical_json`], hex.
    pub fn sha256_hex(&self) -> Result<String> {
        Ok(hex::encode(Sha256::digest(self.to_canonical_json()?)))
    }

    /// Every tree as text.
    pub fn to_debug_string(&self) -> String {
        match self {
            Model::DecisionTree(m) => m.to_debug_string(),
            Model::RandomForest(m) => m.to_debug_string(),
            Model::Gbt(m) => m.to_debug_string(),
        }
    }

    /// The tree in Graphviz DOT (decision trees only).
    pub fn to_dot(&self) -> Option<String> {
        match self {
            Model::DecisionTree(m) => Some(m.to_dot()),
            _ => None,
        }
    }

    /// Parses a serialized model of any kind; `origin` names it in errors.
    pub fn from_json(bytes: &[u8], origin: &str) -> Result<Self> {
        #[derive(Deserialize)]
        struct Format {
            format: String,
        }
        let fail = |reason: String| Error::Model {
            path: origin.to_string(),
            reason,
        };
        let format: Format = serde_json::from_slice(bytes).map_err(|e| fail(e.to_string()))?;
        match format.format.as_str() {
            MODEL_FORMAT => Ok(Model::DecisionTree(DecisionTreeModel::from_json(
                bytes, origin,
            )?)),
            RANDOM_FOREST_FORMAT => {
                let m: RandomForestModel =
                    serde_json::from_slice(bytes).map_err(|e| fail(e.to_string()))?;
                m.check(origin)?;
                Ok(Model::RandomForest(m))
            }
            GBT_FORMAT => {
                let m: GbtModel = serde_json::from_slice(bytes).map_err(|e| fail(e.to_string()))?;
                m.check(origin)?;
                Ok(Model::Gbt(m))
            }
            other => Err(fail(format!(
                "format {other} is none of {MODEL_FORMAT}, {RANDOM_FOREST_FORMAT}, {GBT_FORMAT}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::ThresholdRule;

    #[test]
    fn a_decision_tree_keeps_its_bytes_and_gains_calibration_only_when_set() {
        let tree = crate::model::tests::small_model();
        let model = Model::DecisionTree(tree.clone());
        assert_eq!(
            model.to_canonical_json().unwrap(),
            tree.to_canonical_json().unwrap()
        );
        assert_eq!(
            model.canonical_parts().unwrap(),
            tree.canonical_parts().unwrap()
        );
        assert_eq!(model.params_hash().unwrap(), tree.params_hash().unwrap());
        let back = Model::from_json(&tree.to_canonical_json().unwrap(), "m.json").unwrap();
        assert_eq!(back, model);
        // Predictions without calibration are the tree's own.
        let row = [Some(0.6), Some(1.0)];
        let scored = model.predict(&row).unwrap();
        let own = tree.predict(&row).unwrap();
        assert_eq!(
            (
                scored.prediction,
                scored.probability,
                scored.calibrated_probability
            ),
            (own.prediction, own.probability, own.probability)
        );
        assert_eq!(scored.leaf, Some(own.leaf));
        // With an operating threshold of 0.9, the 0.81 leaf is class 0; the file says so.
        let mut strict = model.clone();
        strict.set_calibration(
            None,
            Some(OperatingPoint {
                rule: ThresholdRule::MaxF1,
                threshold: 0.9,
                rows: 10,
            }),
        );
        assert_eq!(strict.predict(&row).unwrap().prediction, 0);
        let bytes = strict.to_canonical_json().unwrap();
        assert!(String::from_utf8_lossy(&bytes).contains("\"operating_point\""));
        assert_eq!(Model::from_json(&bytes, "m.json").unwrap(), strict);
        assert_ne!(
            strict.canonical_parts().unwrap()[0],
            model.canonical_parts().unwrap()[0]
        );
    }

    #[test]
    fn contributions_add_up_to_the_output_minus_the_expected_value() {
        // Rows per node that add up: 45 at the root, 15 left, 30 right split 20 / 10.
        let mut tree = crate::model::tests::small_model();
        for (node, counts) in
            tree.nodes
                .iter_mut()
                .zip([[30, 15], [13, 2], [17, 13], [12, 8], [5, 5]])
        {
            node.class_counts = counts;
        }
        let model = Model::DecisionTree(tree);
        for row in [
            [Some(0.6), Some(1.0)],
            [Some(0.2), Some(0.0)],
            [None, Some(1.0)],
        ] {
            let e = model.explain(&row).unwrap();
            let total: f64 = e.contributions.iter().sum();
            assert!(
                (e.expected_value + total - e.value).abs() < 1e-12,
                "{row:?}: {e:?}"
            );
        }
        let e = model.explain(&[Some(0.6), Some(1.0)]).unwrap();
        let top = e.top(model.features(), &[Some(0.6), Some(1.0)], 2);
        assert_eq!(top.len(), 2);
        assert!(top[0].1.abs() >= top[1].1.abs(), "{top:?}");
        let names: Vec<&str> = top.iter().map(|t| t.0.as_str()).collect();
        assert!(names.contains(&"age = 68"), "raw units: {names:?}");
        assert!(
            names.contains(&"atrial_fibrillation = 1"),
            "category names: {names:?}"
        );
    }

    #[test]
    fn unknown_formats_are_named() {
        let err = Model::from_json(br#"{"format": "emrflow.neural_net"}"#, "x.json").unwrap_err();
        assert!(err.to_string().contains("x.json"), "{err}");
        assert!(err.to_string().contains("emrflow.neural_net"), "{err}");
    }
}
