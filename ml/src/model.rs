//! The fitted decision tree: its versioned, canonical serialized form, prediction with the
//! decision path (in raw units when the dataset spec says how to get back to them), feature
//! importances, MLlib-style `toDebugString` text and Graphviz DOT. A model is self-contained: it
//! records its features and parameters, and predicting needs nothing else. This module does not
//! train and does not read data files.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::calibration::{Calibration, OperatingPoint};
use crate::dataset::{FeatureKind, FeatureSpec};
use crate::error::{Error, Result};
use crate::params::DecisionTreeParams;

/// The model format this build writes and reads.
pub const MODEL_FORMAT_VERSION: u32 = 1;

/// The `format` tag of a serialized model.
pub const MODEL_FORMAT: &str = "emrflow.decision_tree";

/// A trained binary decision tree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionTreeModel {
    /// Always [`MODEL_FORMAT`].
    pub format: String,
    /// Always [`MODEL_FORMAT_VERSION`] for models written by this build.
    pub format_version: u32,
    /// The label column the model predicts.
    pub label: String,
    /// The features, in the order [`DecisionTreeModel::predict`] takes them.
    pub features: Vec<FeatureSpec>,
    /// The parameters it was trained with.
    pub params: DecisionTreeParams,
    /// What it was trained on.
    pub training: TrainingSummary,
    /// Nodes in preorder; `nodes[0]` is the root.
    pub nodes: Vec<Node>,
    /// The calibration of its probabilities, fitted on held-out rows (absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<Calibration>,
    /// Its operating threshold (absent: class 1 above probability 0.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operating_point: Option<OperatingPoint>,
}

/// The rows a model was trained on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingSummary {
    /// Training rows.
    pub rows: u64,
    /// Rows of class 0 and class 1.
    pub class_counts: [u64; 2],
    /// The class weights applied (1, 1 without class weighting).
    #[serde(with = "crate::exact::pair")]
    pub class_weights: [f64; 2],
    /// Passes over the data the training took.
    pub passes: u32,
}

/// One node of the tree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    /// Heap-style id as in MLlib: the root is 1, the children of `i` are `2i` and `2i + 1`.
    pub id: u64,
    /// Depth; the root is 0.
    pub depth: u32,
    /// Training rows that reached the node, per class.
    pub class_counts: [u64; 2],
    /// The weighted share of class 1 among them: the predicted probability at a leaf.
    #[serde(with = "crate::exact")]
    pub probability: f64,
    /// The predicted class (1 iff `probability > 0.5`).
    pub prediction: u8,
    /// Weighted impurity of the node.
    #[serde(with = "crate::exact")]
    pub impurity: f64,
    /// The split, for an internal node.
    pub split: Option<Split>,
}

/// How an internal node sends a row, and where its children are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Split {
    /// Index into [`DecisionTreeModel::features`].
    pub feature: usize,
    /// The test a row must pass to go left.
    pub rule: SplitRule,
    /// Where missing values (null, NaN) go.
    pub missing_left: bool,
    /// Impurity decrease of the split.
    #[serde(with = "crate::exact")]
    pub gain: f64,
    /// Weighted rows of the node, used for importances.
    #[serde(with = "crate::exact")]
    pub weight: f64,
    /// Index of the left child in [`DecisionTreeModel::nodes`].
    pub left: usize,
    /// Index of the right child.
    pub right: usize,
}

impl Split {
    /// Whether a row whose feature value is `value` (`None`: missing) goes left. A category the
    /// model does not know goes right.
    pub fn goes_left(&self, value: Option<f64>) -> bool {
        match (value.filter(|v| !v.is_nan()), &self.rule) {
            (None, _) => self.missing_left,
            (Some(v), SplitRule::Threshold { threshold }) => v <= *threshold,
            (Some(v), SplitRule::Categories { left }) => {
                v >= 0.0
                    && v.fract() == 0.0
                    && v <= f64::from(u32::MAX)
                    && left.binary_search(&(v as u32)).is_ok()
            }
        }
    }
}

/// The test of a split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum SplitRule {
    /// `value ≤ threshold` goes left (threshold in the dataset's stored units).
    Threshold {
        /// The threshold.
        #[serde(with = "crate::exact")]
        threshold: f64,
    },
    /// A category in this set goes left; any other category goes right.
    Categories {
        /// Category indices, ascending.
        left: Vec<u32>,
    },
}

/// One prediction.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    /// Predicted class.
    pub prediction: u8,
    /// Probability of class 1.
    pub probability: f64,
    /// Id of the leaf reached.
    pub leaf: u64,
    /// The tests passed on the way, in raw units where known.
    pub path: Vec<PathStep>,
}

/// One test a row passed on its way to a leaf, in raw units where the dataset says how (what a
/// console draws and an API returns; `text` is the same in words).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PathStep {
    /// The feature tested.
    pub feature: String,
    /// Which way the row went.
    pub direction: Direction,
    /// The threshold in raw units (a threshold test).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// The categories of the side the row went to (a category test).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub categories: Vec<String>,
    /// The row had no value; it went the way the split sends missing values.
    pub missing: bool,
    /// The test in words: `age > 67.5`, `smoking_status ∈ {formerly smoked, smokes}`.
    pub text: String,
}

/// Which way a row went at a split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// At or below the threshold.
    AtOrBelow,
    /// Above the threshold.
    Above,
    /// Among the listed categories.
    In,
}

/// The steps' texts joined: "age > 67.5, atrial_fibrillation = 1", or "(root)" for none.
pub fn path_text(path: &[PathStep]) -> String {
    if path.is_empty() {
        "(root)".to_string()
    } else {
        path.iter()
            .map(|s| s.text.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl Prediction {
    /// "age > 67.5, atrial_fibrillation = 1 → risk 0.81".
    pub fn explain(&self) -> String {
        let path = path_text(&self.path);
        format!("{path} → risk {:.2}", self.probability)
    }
}

/// Formats a number in raw units readably: about four significant digits, no trailing zeros.
pub(crate) fn format_number(x: f64) -> String {
    if !x.is_finite() {
        return x.to_string();
    }
    if x == 0.0 {
        return "0".to_string();
    }
    let magnitude = x.abs().log10().floor() as i32;
    let decimals = (3 - magnitude).clamp(0, 8) as usize;
    let s = format!("{x:.decimals$}");
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    };
    if s == "-0" { "0".to_string() } else { s }
}

impl FeatureSpec {
    pub(crate) fn category_name(&self, index: u32) -> String {
        match &self.kind {
            FeatureKind::Categorical { labels, .. } => labels
                .get(index as usize)
                .cloned()
                .unwrap_or_else(|| index.to_string()),
            FeatureKind::Continuous { .. } => index.to_string(),
        }
    }

    pub(crate) fn raw(&self, value: f64) -> f64 {
        match &self.kind {
            FeatureKind::Continuous { raw: Some(map) } => map.apply(value),
            _ => value,
        }
    }

    fn categories(&self) -> u32 {
        match &self.kind {
            FeatureKind::Categorical { categories, .. } => *categories,
            FeatureKind::Continuous { .. } => 0,
        }
    }

    /// The test a row passed, in raw units and in words.
    pub(crate) fn describe(&self, rule: &SplitRule, left: bool, missing: bool) -> PathStep {
        let name = &self.name;
        let (direction, threshold, categories, mut text) = match rule {
            SplitRule::Threshold { threshold } => {
                let raw = self.raw(*threshold);
                let t = format_number(raw);
                if left {
                    (
                        Direction::AtOrBelow,
                        Some(raw),
                        Vec::new(),
                        format!("{name} ≤ {t}"),
                    )
                } else {
                    (
                        Direction::Above,
                        Some(raw),
                        Vec::new(),
                        format!("{name} > {t}"),
                    )
                }
            }
            SplitRule::Categories { left: set } => {
                let side: Vec<u32> = if left {
                    set.clone()
                } else {
                    (0..self.categories())
                        .filter(|c| set.binary_search(c).is_err())
                        .collect()
                };
                let names: Vec<String> = side.iter().map(|c| self.category_name(*c)).collect();
                let text = match names.len() {
                    0 => format!("{name} unseen"),
                    1 => format!("{name} = {}", names[0]),
                    _ => format!("{name} ∈ {{{}}}", names.join(", ")),
                };
                (Direction::In, None, names, text)
            }
        };
        if missing {
            text = format!("{name} missing (→ {text})");
        }
        PathStep {
            feature: name.clone(),
            direction,
            threshold,
            categories,
            missing,
            text,
        }
    }
}

impl DecisionTreeModel {
    /// Depth of the deepest leaf.
    pub fn depth(&self) -> u32 {
        self.nodes.iter().map(|n| n.depth).max().unwrap_or(0)
    }

    /// Number of nodes.
    pub fn num_nodes(&self) -> usize {
        self.nodes.len()
    }

    /// Predicts one row: `values[i]` is feature `i` in stored units (normalized, encoded);
    /// `None` or NaN is missing. A category the model does not know goes right.
    pub fn predict(&self, values: &[Option<f64>]) -> Result<Prediction> {
        if values.len() != self.features.len() {
            return Err(Error::PredictInput {
                reason: format!(
                    "the model has {} features, the row has {} values",
                    self.features.len(),
                    values.len()
                ),
            });
        }
        let mut index = 0;
        let mut path = Vec::new();
        for _ in 0..=self.nodes.len() {
            let node = self
                .nodes
                .get(index)
                .ok_or_else(|| self.corrupt("a child index is out of range"))?;
            let Some(split) = &node.split else {
                return Ok(Prediction {
                    prediction: node.prediction,
                    probability: node.probability,
                    leaf: node.id,
                    path,
                });
            };
            let feature = self
                .features
                .get(split.feature)
                .ok_or_else(|| self.corrupt("a split names no feature"))?;
            let value = values[split.feature].filter(|v| !v.is_nan());
            let left = split.goes_left(value);
            path.push(feature.describe(&split.rule, left, value.is_none()));
            index = if left { split.left } else { split.right };
        }
        Err(self.corrupt("the tree has a cycle"))
    }

    fn corrupt(&self, reason: &str) -> Error {
        Error::Model {
            path: "(in memory)".to_string(),
            reason: reason.to_string(),
        }
    }

    /// Importance of each feature: the sum over its splits of gain × weighted rows, normalized to
    /// sum 1 (MLlib's definition). All zeros for a tree without splits.
    pub fn feature_importances(&self) -> Vec<f64> {
        let mut imp = vec![0.0; self.features.len()];
        for node in &self.nodes {
            if let Some(s) = &node.split
                && let Some(slot) = imp.get_mut(s.feature)
            {
                *slot += s.gain * s.weight;
            }
        }
        let total: f64 = imp.iter().sum();
        if total > 0.0 {
            for v in &mut imp {
                *v /= total;
            }
        }
        imp
    }

    /// The canonical serialized form: compact JSON with fields in declaration order and floats in
    /// their shortest exact representation. Training the same data with the same parameters gives
    /// the same bytes, so they can be hashed and anchored.
    pub fn to_canonical_json(&self) -> Result<Vec<u8>> {
        Ok(serde_json::to_vec(self)?)
    }

    /// The byte strings a model fingerprint is computed over, in order: the model without its
    /// nodes (format, label, features, parameters, training summary, and the calibration and
    /// operating threshold when it has them), then every node in preorder, each as canonical
    /// JSON. Changing any threshold, category set, probability or
    /// parameter changes exactly the part that holds it.
    pub fn canonical_parts(&self) -> Result<Vec<Vec<u8>>> {
        #[derive(Serialize)]
        struct Header<'a> {
            format: &'a str,
            format_version: u32,
            label: &'a str,
            features: &'a [FeatureSpec],
            params: &'a DecisionTreeParams,
            training: &'a TrainingSummary,
            #[serde(skip_serializing_if = "Option::is_none")]
            calibration: Option<&'a Calibration>,
            #[serde(skip_serializing_if = "Option::is_none")]
            operating_point: Option<&'a OperatingPoint>,
        }
        let mut parts = Vec::with_capacity(self.nodes.len() + 1);
        parts.push(serde_json::to_vec(&Header {
            format: &self.format,
            format_version: self.format_version,
            label: &self.label,
            features: &self.features,
            params: &self.params,
            training: &self.training,
            calibration: self.calibration.as_ref(),
            operating_point: self.operating_point.as_ref(),
        })?);
        for node in &self.nodes {
            parts.push(serde_json::to_vec(node)?);
        }
        Ok(parts)
    }

    /// SHA-256 of the canonical JSON of the hyperparameters.
    pub fn params_hash(&self) -> Result<[u8; 32]> {
        Ok(Sha256::digest(serde_json::to_vec(&self.params)?).into())
    }

    /// SHA-256 of [`DecisionTreeModel::to_canonical_json`], hex.
    pub fn sha256_hex(&self) -> Result<String> {
        Ok(hex::encode(Sha256::digest(self.to_canonical_json()?)))
    }

    /// Parses a serialized model; `origin` names it in errors.
    pub fn from_json(bytes: &[u8], origin: &str) -> Result<Self> {
        let model: DecisionTreeModel = serde_json::from_slice(bytes).map_err(|e| Error::Model {
            path: origin.to_string(),
            reason: e.to_string(),
        })?;
        if model.format != MODEL_FORMAT || model.format_version != MODEL_FORMAT_VERSION {
            return Err(Error::Model {
                path: origin.to_string(),
                reason: format!(
                    "format {} version {} is not {MODEL_FORMAT} version {MODEL_FORMAT_VERSION}",
                    model.format, model.format_version
                ),
            });
        }
        model.check().map_err(|reason| Error::Model {
            path: origin.to_string(),
            reason,
        })?;
        Ok(model)
    }

    /// Structural checks: children in range and after their parent, features in range.
    fn check(&self) -> std::result::Result<(), String> {
        if self.nodes.is_empty() {
            return Err("the tree has no nodes".to_string());
        }
        for (i, node) in self.nodes.iter().enumerate() {
            if let Some(s) = &node.split {
                if s.feature >= self.features.len() {
                    return Err(format!(
                        "node {} splits on feature {}, which does not exist",
                        node.id, s.feature
                    ));
                }
                if s.left <= i
                    || s.right <= i
                    || s.left >= self.nodes.len()
                    || s.right >= self.nodes.len()
                {
                    return Err(format!("node {} has children out of order", node.id));
                }
            }
        }
        Ok(())
    }

    /// The tree as text, in the shape of MLlib's `toDebugString` but with feature names and raw
    /// units.
    pub fn to_debug_string(&self) -> String {
        let mut out = format!(
            "DecisionTreeClassificationModel: label={}, depth={}, numNodes={}, numClasses=2, numFeatures={}\n",
            self.label,
            self.depth(),
            self.num_nodes(),
            self.features.len()
        );
        self.debug_node(0, 1, &mut out);
        out
    }

    fn debug_node(&self, index: usize, indent: usize, out: &mut String) {
        let pad = "  ".repeat(indent);
        let node = &self.nodes[index];
        match &node.split {
            None => {
                let _ = writeln!(
                    out,
                    "{pad}Predict: {} (risk {}, {} rows)",
                    node.prediction,
                    format_number(node.probability),
                    node.class_counts[0] + node.class_counts[1]
                );
            }
            Some(s) => {
                let feature = &self.features[s.feature];
                for (left, child) in [(true, s.left), (false, s.right)] {
                    let mut test = feature.describe(&s.rule, left, false).text;
                    if s.missing_left == left {
                        test.push_str(" or missing");
                    }
                    let word = if left { "If" } else { "Else" };
                    let _ = writeln!(out, "{pad}{word} ({test})");
                    self.debug_node(child, indent + 1, out);
                }
            }
        }
    }

    /// The tree in Graphviz DOT.
    pub fn to_dot(&self) -> String {
        let escape = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
        let mut out = String::from(
            "digraph decision_tree {\n  node [shape=box, style=\"rounded,filled\", fontname=\"Helvetica\"];\n  edge [fontname=\"Helvetica\"];\n",
        );
        for node in &self.nodes {
            let rows = node.class_counts[0] + node.class_counts[1];
            let (label, color) = match &node.split {
                Some(s) => {
                    let f = &self.features[s.feature];
                    (
                        format!(
                            "{}\\n{rows} rows, risk {}",
                            escape(&f.describe(&s.rule, true, false).text),
                            format_number(node.probability)
                        ),
                        "#f2f2f2",
                    )
                }
                None => {
                    let color = if node.prediction == 1 {
                        "#f4b6b6"
                    } else {
                        "#b6d7f4"
                    };
                    (
                        format!(
                            "predict {}\\nrisk {}\\n{rows} rows",
                            node.prediction,
                            format_number(node.probability)
                        ),
                        color,
                    )
                }
            };
            let _ = writeln!(
                out,
                "  n{} [label=\"{label}\", fillcolor=\"{color}\"];",
                node.id
            );
        }
        for node in &self.nodes {
            if let Some(s) = &node.split {
                let _ = writeln!(
                    out,
                    "  n{} -> n{} [label=\"yes\"];",
                    node.id, self.nodes[s.left].id
                );
                let _ = writeln!(
                    out,
                    "  n{} -> n{} [label=\"no\"];",
                    node.id, self.nodes[s.right].id
                );
            }
        }
        out.push_str("}\n");
        out
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::dataset::Affine;

    /// age ≤ 0.5 (raw 60) → leaf 0.1; else atrial_fibrillation ∈ {0} → 0.4 else 0.81.
    pub(crate) fn small_model() -> DecisionTreeModel {
        let leaf = |id, depth, p: f64| Node {
            id,
            depth,
            class_counts: [10, 5],
            probability: p,
            prediction: u8::from(p > 0.5),
            impurity: 0.1,
            split: None,
        };
        DecisionTreeModel {
            format: MODEL_FORMAT.into(),
            format_version: MODEL_FORMAT_VERSION,
            label: "stroke".into(),
            features: vec![
                FeatureSpec {
                    name: "age".into(),
                    kind: FeatureKind::Continuous {
                        raw: Some(Affine {
                            offset: 20.0,
                            scale: 80.0,
                        }),
                    },
                },
                FeatureSpec {
                    name: "atrial_fibrillation".into(),
                    kind: FeatureKind::Categorical {
                        categories: 2,
                        labels: vec!["0".into(), "1".into()],
                    },
                },
            ],
            params: DecisionTreeParams::default(),
            training: TrainingSummary {
                rows: 45,
                class_counts: [30, 15],
                class_weights: [1.0, 1.0],
                passes: 2,
            },
            nodes: vec![
                Node {
                    split: Some(Split {
                        feature: 0,
                        rule: SplitRule::Threshold { threshold: 0.5 },
                        missing_left: true,
                        gain: 0.2,
                        weight: 45.0,
                        left: 1,
                        right: 2,
                    }),
                    ..leaf(1, 0, 0.33)
                },
                leaf(2, 1, 0.1),
                Node {
                    split: Some(Split {
                        feature: 1,
                        rule: SplitRule::Categories { left: vec![0] },
                        missing_left: false,
                        gain: 0.1,
                        weight: 30.0,
                        left: 3,
                        right: 4,
                    }),
                    ..leaf(3, 1, 0.6)
                },
                leaf(6, 2, 0.4),
                leaf(7, 2, 0.81),
            ],
            calibration: None,
            operating_point: None,
        }
    }

    #[test]
    fn predicts_with_a_path_in_raw_units() {
        let model = small_model();
        let p = model.predict(&[Some(0.6), Some(1.0)]).unwrap();
        assert_eq!((p.prediction, p.leaf), (1, 7));
        assert_eq!(p.explain(), "age > 60, atrial_fibrillation = 1 → risk 0.81");
        let p = model.predict(&[None, Some(1.0)]).unwrap();
        assert_eq!(path_text(&p.path), "age missing (→ age ≤ 60)");
        assert!(p.path[0].missing);
        assert_eq!(p.path[0].direction, Direction::AtOrBelow);
        assert_eq!(p.path[0].threshold, Some(60.0));
        assert!(model.predict(&[Some(0.1)]).is_err());
    }

    #[test]
    fn serializes_canonically_and_round_trips() {
        let model = small_model();
        let bytes = model.to_canonical_json().unwrap();
        let back = DecisionTreeModel::from_json(&bytes, "model.json").unwrap();
        assert_eq!(back, model);
        assert_eq!(back.to_canonical_json().unwrap(), bytes);
        let mut wrong = model.clone();
        wrong.format_version = 99;
        let err = DecisionTreeModel::from_json(&wrong.to_canonical_json().unwrap(), "m.json")
            .unwrap_err();
        assert!(err.to_string().contains("m.json"), "{err}");
    }

    #[test]
    fn importances_sum_to_one() {
        let imp = small_model().feature_importances();
        assert!((imp.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!(imp[0] > imp[1]);
    }

    #[test]
    fn debug_string_and_dot_name_features() {
        let model = small_model();
        let text = model.to_debug_string();
        assert!(text.contains("If (age ≤ 60 or missing)"), "{text}");
        assert!(
            text.contains("Else (atrial_fibrillation = 1 or missing)"),
            "{text}"
        );
        let dot = model.to_dot();
        assert!(
            dot.starts_with("digraph") && dot.contains("n1 -> n2"),
            "{dot}"
        );
    }

    #[test]
    fn numbers_are_short() {
        assert_eq!(format_number(67.5), "67.5");
        assert_eq!(format_number(151.0000001), "151");
        assert_eq!(format_number(0.812345), "0.8123");
        assert_eq!(format_number(12345.6), "12346");
    }
}
