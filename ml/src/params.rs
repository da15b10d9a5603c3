//! Training parameters in the Spark MLlib mould and their validation. A [`DecisionTreeParams`]
//! is plain data (it derives `Deserialize` and `Default`, so it can come from a TOML file or
//! flags); [`DecisionTreeParams::validate`] checks it before any data is touched. This module
//! holds no training logic.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// MLlib's hard limit on tree depth (node ids are heap-indexed, so depth 30 is the largest that
/// keeps them below 2³¹).
pub const MAX_DEPTH_LIMIT: usize = 30;

/// The largest `max_bins` accepted: bin indices are stored as `u16`, and one index is reserved
/// for missing values.
pub const MAX_BINS_LIMIT: usize = 65_534;

/// How node impurity is measured when scoring a split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Impurity {
    /// Gini impurity `1 - Σ p²` (MLlib's default).
    #[default]
    Gini,
    /// Shannon entropy `-Σ p log₂ p`.
    Entropy,
}

impl std::str::FromStr for Impurity {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "gini" => Ok(Impurity::Gini),
            "entropy" => Ok(Impurity::Entropy),
            other => Err(Error::InvalidParam {
                name: "impurity",
                reason: format!("{other:?} is neither gini nor entropy"),
            }),
        }
    }
}

/// How much each class counts when splits are scored and leaf probabilities computed.
///
/// Class counts are accumulated as integers; these weights are applied on the driver when splits
/// are scored, so they never make a result depend on the order partial histograms merge in.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "mode")]
pub enum ClassWeights {
    /// Every row counts once (or by its weight column).
    #[default]
    None,
    /// `n / (2 · n_c)` for class `c`, from the training rows: both classes weigh the same in
    /// total, so a 5 % minority is not ignored.
    Balanced,
    /// Explicit weights for class 0 and class 1.
    Explicit {
        /// Weight of class 0.
        #[serde(with = "crate::exact")]
        negative: f64,
        /// Weight of class 1.
        #[serde(with = "crate::exact")]
        positive: f64,
    },
}

impl std::str::FromStr for ClassWeights {
    type Err = Error;

    /// Parses `none`, `balanced`, or `W0,W1` (two positive numbers).
    fn from_str(s: &str) -> Result<Self> {
        let lower = s.trim().to_ascii_lowercase();
        match lower.as_str() {
            "none" => return Ok(ClassWeights::None),
            "balanced" => return Ok(ClassWeights::Balanced),
            _ => {}
        }
        let bad = || Error::InvalidParam {
            name: "class_weights",
            reason: format!("{s:?} is not none, balanced, or two weights W0,W1 (e.g. 1,19)"),
        };
        let (a, b) = lower.split_once(',').ok_or_else(bad)?;
        let negative: f64 = a.trim().parse().map_err(|_| bad())?;
        let positive: f64 = b.trim().parse().map_err(|_| bad())?;
        Ok(ClassWeights::Explicit { negative, positive })
    }
}

/// The parameters of one decision tree, named and defaulted as in Spark MLlib's
/// `DecisionTreeClassifier`.
///
/// ```
/// use ml::{DecisionTreeParams, Impurity};
///
/// let params = DecisionTreeParams { max_depth: 10, impurity: Impurity::Entropy, ..Default::default() };
/// params.validate()?;
/// assert_eq!(params.max_bins, 32);
///
/// let too_deep = DecisionTreeParams { max_depth: 31, ..Default::default() };
/// assert!(too_deep.validate().is_err());
/// # Ok::<(), ml::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DecisionTreeParams {
    /// Largest depth of the tree; depth 1 is one split and two leaves. 1..=30.
    pub max_depth: usize,
    /// Largest number of bins per continuous feature (split candidates are the bin edges); also
    /// bounds the number of categories of a categorical feature. Missing values get one extra bin.
    pub max_bins: usize,
    /// A split is rejected if either child would have fewer rows than this (raw rows, as in
    /// MLlib).
    pub min_instances_per_node: u64,
    /// A split is rejected if its impurity decrease is below this.
    #[serde(with = "crate::exact")]
    pub min_info_gain: f64,
    /// Gini or entropy.
    pub impurity: Impurity,
    /// Class weights, applied when splits are scored.
    pub class_weights: ClassWeights,
    /// A column of non-negative row weights, if any.
    pub weight_column: Option<String>,
    /// Seeds the row-key hash behind the train/test split, the CV folds and the sketch sample.
    pub seed: u64,
    /// Memory for the histograms of one pass over the data, in MiB (MLlib's `maxMemoryInMB`):
    /// it bounds how many nodes are split per pass. At least one node is always split.
    pub max_memory_mb: usize,
}

impl Default for DecisionTreeParams {
    fn default() -> Self {
        Self {
            max_depth: 5,
            max_bins: 32,
            min_instances_per_node: 1,
            min_info_gain: 0.0,
            impurity: Impurity::Gini,
            class_weights: ClassWeights::None,
            weight_column: None,
            seed: 42,
            max_memory_mb: 256,
        }
    }
}

impl DecisionTreeParams {
    /// Checks every parameter; the error names the first one that is out of range.
    pub fn validate(&self) -> Result<()> {
        let invalid =
            |name: &'static str, reason: String| Err(Error::InvalidParam { name, reason });
        if self.max_depth == 0 || self.max_depth > MAX_DEPTH_LIMIT {
            return invalid(
                "max_depth",
                format!("{} is outside 1..={MAX_DEPTH_LIMIT}", self.max_depth),
            );
        }
        if self.max_bins < 2 || self.max_bins > MAX_BINS_LIMIT {
            return invalid(
                "max_bins",
                format!("{} is outside 2..={MAX_BINS_LIMIT}", self.max_bins),
            );
        }
        if self.min_instances_per_node == 0 {
            return invalid("min_instances_per_node", "must be at least 1".to_string());
        }
        if !self.min_info_gain.is_finite() || self.min_info_gain < 0.0 {
            return invalid(
                "min_info_gain",
                format!("{} must be a finite number ≥ 0", self.min_info_gain),
            );
        }
        if let ClassWeights::Explicit { negative, positive } = self.class_weights {
            for (class, w) in [(0, negative), (1, positive)] {
                if !w.is_finite() || w <= 0.0 {
                    return invalid(
                        "class_weights",
                        format!("weight of class {class} is {w}; it must be finite and > 0"),
                    );
                }
            }
        }
        if let Some(w) = &self.weight_column
            && w.is_empty()
        {
            return invalid("weight_column", "is empty".to_string());
        }
        if self.max_memory_mb == 0 {
            return invalid("max_memory_mb", "must be at least 1".to_string());
        }
        Ok(())
    }
}

/// How rows are held out: the test fraction and the number of cross-validation folds. Both are
/// assigned by a seeded hash of the row key, so they depend neither on partitioning nor on row
/// order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvaluationConfig {
    /// Fraction of rows held out for the final test metrics, in `[0, 1)`; 0.2 is the published
    /// 80/20 split.
    pub test_fraction: f64,
    /// Cross-validation folds over the training rows; 0 skips cross-validation, otherwise ≥ 2.
    pub folds: u32,
}

impl Default for EvaluationConfig {
    fn default() -> Self {
        Self {
            test_fraction: 0.2,
            folds: 5,
        }
    }
}

impl EvaluationConfig {
    /// Checks the fraction and the fold count.
    pub fn validate(&self) -> Result<()> {
        if !(0.0..1.0).contains(&self.test_fraction) {
            return Err(Error::InvalidParam {
                name: "test_fraction",
                reason: format!("{} is outside [0, 1)", self.test_fraction),
            });
        }
        if self.folds == 1 || self.folds > 100 {
            return Err(Error::InvalidParam {
                name: "folds",
                reason: format!("{} must be 0 (no cross-validation) or 2..=100", self.folds),
            });
        }
        Ok(())
    }
}

/// How many features each node of an ensemble's trees may split on (MLlib's
/// `featureSubsetStrategy`); a fresh random subset per node.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "strategy")]
pub enum FeatureSubset {
    /// MLlib's `auto`: `sqrt` for a forest of more than one tree, `all` otherwise (and for
    /// boosted trees).
    #[default]
    Auto,
    /// Every feature.
    All,
    /// `⌈√n⌉` of `n` features.
    Sqrt,
    /// `max(1, ⌈log₂ n⌉)` features.
    Log2,
    /// `⌈n / 3⌉` features.
    OneThird,
    /// `⌈fraction · n⌉` features, fraction in (0, 1].
    Fraction {
        /// The fraction.
        #[serde(with = "crate::exact")]
        fraction: f64,
    },
}

impl FeatureSubset {
    /// Features per node out of `n`, for a forest of `trees` trees (`auto` depends on it).
    pub fn features_per_node(&self, n: usize, trees: u32) -> usize {
        let n_f = n as f64;
        let m = match self {
            FeatureSubset::Auto if trees > 1 => n_f.sqrt().ceil(),
            FeatureSubset::Auto | FeatureSubset::All => n_f,
            FeatureSubset::Sqrt => n_f.sqrt().ceil(),
            FeatureSubset::Log2 => n_f.log2().ceil().max(1.0),
            FeatureSubset::OneThird => (n_f / 3.0).ceil(),
            FeatureSubset::Fraction { fraction } => (fraction * n_f).ceil(),
        };
        (m as usize).clamp(1, n.max(1))
    }

    fn validate(&self) -> Result<()> {
        if let FeatureSubset::Fraction { fraction } = self
            && !(*fraction > 0.0 && *fraction <= 1.0)
        {
            return Err(Error::InvalidParam {
                name: "feature_subset_strategy",
                reason: format!("fraction {fraction} is outside (0, 1]"),
            });
        }
        Ok(())
    }
}

impl std::str::FromStr for FeatureSubset {
    type Err = Error;

    /// Parses `auto`, `all`, `sqrt`, `log2`, `onethird` or a fraction in (0, 1].
    fn from_str(s: &str) -> Result<Self> {
        let subset = match s.trim().to_ascii_lowercase().as_str() {
            "auto" => FeatureSubset::Auto,
            "all" => FeatureSubset::All,
            "sqrt" => FeatureSubset::Sqrt,
            "log2" => FeatureSubset::Log2,
            "onethird" => FeatureSubset::OneThird,
            other => match other.parse::<f64>() {
                Ok(fraction) => FeatureSubset::Fraction { fraction },
                Err(_) => {
                    return Err(Error::InvalidParam {
                        name: "feature_subset_strategy",
                        reason: format!(
                            "{s:?} is not auto, all, sqrt, log2, onethird or a fraction in (0, 1]"
                        ),
                    });
                }
            },
        };
        subset.validate()?;
        Ok(subset)
    }
}

/// Checks a sampling rate in (0, 1].
fn check_rate(name: &'static str, rate: f64) -> Result<()> {
    if rate > 0.0 && rate <= 1.0 {
        Ok(())
    } else {
        Err(Error::InvalidParam {
            name,
            reason: format!("{rate} is outside (0, 1]"),
        })
    }
}

/// The largest number of trees of an ensemble.
pub const MAX_TREES: u32 = 10_000;

/// A random forest in the mould of MLlib's `RandomForestClassifier`: `num_trees` decision trees
/// (each with the parameters in `tree`), each trained on a bootstrap sample of the rows and
/// choosing each split among a random subset of the features; the forest's probability is the
/// mean of its trees'.
///
/// ```
/// use ml::{FeatureSubset, RandomForestParams};
///
/// let forest = RandomForestParams { num_trees: 50, ..Default::default() };
/// forest.validate()?;
/// assert_eq!(forest.feature_subset_strategy, FeatureSubset::Auto);
/// assert!(RandomForestParams { subsampling_rate: 0.0, ..Default::default() }.validate().is_err());
/// # Ok::<(), ml::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RandomForestParams {
    /// Parameters of every tree (depth, bins, impurity, class and row weights, seed, memory).
    pub tree: DecisionTreeParams,
    /// Trees in the forest, 1..=10,000 (MLlib's default 20).
    pub num_trees: u32,
    /// Features each node may split on.
    pub feature_subset_strategy: FeatureSubset,
    /// Expected share of the rows in each tree's sample, in (0, 1].
    #[serde(with = "crate::exact")]
    pub subsampling_rate: f64,
    /// Sample with replacement (each row counts Poisson(`subsampling_rate`) times, MLlib's
    /// bootstrap for more than one tree); without, each row is in or out with probability
    /// `subsampling_rate`.
    pub bootstrap: bool,
}

impl Default for RandomForestParams {
    fn default() -> Self {
        Self {
            tree: DecisionTreeParams::default(),
            num_trees: 20,
            feature_subset_strategy: FeatureSubset::Auto,
            subsampling_rate: 1.0,
            bootstrap: true,
        }
    }
}

impl RandomForestParams {
    /// Checks every parameter; the error names the first one that is out of range.
    pub fn validate(&self) -> Result<()> {
        self.tree.validate()?;
        if self.num_trees == 0 || self.num_trees > MAX_TREES {
            return Err(Error::InvalidParam {
                name: "num_trees",
                reason: format!("{} is outside 1..={MAX_TREES}", self.num_trees),
            });
        }
        self.feature_subset_strategy.validate()?;
        check_rate("subsampling_rate", self.subsampling_rate)
    }
}

/// Gradient-boosted trees in the mould of MLlib's `GBTClassifier`, with the logistic loss:
/// `max_iter` trees grown one after the other, each on the gradients of the loss at the model
/// so far, by Newton steps (gradient and hessian sums, as XGBoost and LightGBM grow trees),
/// shrunk by `step_size`.
///
/// ```
/// use ml::GbtParams;
///
/// let gbt = GbtParams { max_iter: 100, validation_fraction: 0.1, ..Default::default() };
/// gbt.validate()?;
/// assert_eq!((gbt.max_depth, gbt.step_size), (5, 0.1));
/// assert!(GbtParams { step_size: 0.0, ..Default::default() }.validate().is_err());
/// # Ok::<(), ml::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GbtParams {
    /// Boosting iterations (trees), 1..=10,000 (MLlib's default 20).
    pub max_iter: u32,
    /// Shrinkage of every tree's contribution, in (0, 1] (MLlib's default 0.1).
    #[serde(with = "crate::exact")]
    pub step_size: f64,
    /// Largest depth of each tree, 1..=30.
    pub max_depth: usize,
    /// Largest number of bins per continuous feature.
    pub max_bins: usize,
    /// A split is rejected if either child would have fewer rows than this.
    pub min_instances_per_node: u64,
    /// A split is rejected if its gain is below this.
    #[serde(with = "crate::exact")]
    pub min_info_gain: f64,
    /// L2 regularization of leaf values (XGBoost's λ); at least 0.
    #[serde(with = "crate::exact")]
    pub l2_regularization: f64,
    /// Share of the rows each tree is grown on, drawn afresh per tree without replacement.
    #[serde(with = "crate::exact")]
    pub subsampling_rate: f64,
    /// Features each node may split on (`auto` is every feature).
    pub feature_subset_strategy: FeatureSubset,
    /// Share of the training rows held out to stop early (by row-key hash); 0 grows all
    /// `max_iter` trees.
    #[serde(with = "crate::exact")]
    pub validation_fraction: f64,
    /// MLlib's `validationTol`: boosting stops when the validation loss improves by less than
    /// `validation_tol · max(loss, 0.01)`, and the model keeps the trees up to the best loss.
    #[serde(with = "crate::exact")]
    pub validation_tol: f64,
    /// Class weights, applied to every row's gradient and hessian.
    pub class_weights: ClassWeights,
    /// A column of non-negative row weights, if any.
    pub weight_column: Option<String>,
    /// Seeds the row-key hash behind every split and sample.
    pub seed: u64,
    /// Histogram memory per pass in MiB.
    pub max_memory_mb: usize,
}

impl Default for GbtParams {
    fn default() -> Self {
        Self {
            max_iter: 20,
            step_size: 0.1,
            max_depth: 5,
            max_bins: 32,
            min_instances_per_node: 1,
            min_info_gain: 0.0,
            l2_regularization: 1.0,
            subsampling_rate: 1.0,
            feature_subset_strategy: FeatureSubset::Auto,
            validation_fraction: 0.0,
            validation_tol: 0.01,
            class_weights: ClassWeights::None,
            weight_column: None,
            seed: 42,
            max_memory_mb: 256,
        }
    }
}

impl GbtParams {
    /// The tree parameters the boosted trees share with a decision tree (binning, limits,
    /// weights, seed); impurity does not apply to boosted trees.
    pub(crate) fn tree(&self) -> DecisionTreeParams {
        DecisionTreeParams {
            max_depth: self.max_depth,
            max_bins: self.max_bins,
            min_instances_per_node: self.min_instances_per_node,
            min_info_gain: self.min_info_gain,
            impurity: Impurity::Gini,
            class_weights: self.class_weights,
            weight_column: self.weight_column.clone(),
            seed: self.seed,
            max_memory_mb: self.max_memory_mb,
        }
    }

    /// Checks every parameter; the error names the first one that is out of range.
    pub fn validate(&self) -> Result<()> {
        self.tree().validate()?;
        let invalid =
            |name: &'static str, reason: String| Err(Error::InvalidParam { name, reason });
        if self.max_iter == 0 || self.max_iter > MAX_TREES {
            return invalid(
                "max_iter",
                format!("{} is outside 1..={MAX_TREES}", self.max_iter),
            );
        }
        check_rate("step_size", self.step_size)?;
        if !self.l2_regularization.is_finite() || self.l2_regularization < 0.0 {
            return invalid(
                "l2_regularization",
                format!("{} must be a finite number ≥ 0", self.l2_regularization),
            );
        }
        check_rate("subsampling_rate", self.subsampling_rate)?;
        self.feature_subset_strategy.validate()?;
        if !(0.0..1.0).contains(&self.validation_fraction) {
            return invalid(
                "validation_fraction",
                format!("{} is outside [0, 1)", self.validation_fraction),
            );
        }
        if !self.validation_tol.is_finite() || self.validation_tol < 0.0 {
            return invalid(
                "validation_tol",
                format!("{} must be a finite number ≥ 0", self.validation_tol),
            );
        }
        Ok(())
    }
}

/// Which estimator to train, with its parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "model")]
pub enum ModelParams {
    /// One decision tree.
    DecisionTree(DecisionTreeParams),
    /// A random forest.
    RandomForest(RandomForestParams),
    /// Gradient-boosted trees.
    Gbt(GbtParams),
}

impl Default for ModelParams {
    fn default() -> Self {
        ModelParams::DecisionTree(DecisionTreeParams::default())
    }
}

impl ModelParams {
    /// Checks the estimator's parameters.
    pub fn validate(&self) -> Result<()> {
        match self {
            ModelParams::DecisionTree(p) => p.validate(),
            ModelParams::RandomForest(p) => p.validate(),
            ModelParams::Gbt(p) => p.validate(),
        }
    }

    /// The parameters binning and row placement use (bins, weights, seed).
    pub(crate) fn tree(&self) -> DecisionTreeParams {
        match self {
            ModelParams::DecisionTree(p) => p.clone(),
            ModelParams::RandomForest(p) => p.tree.clone(),
            ModelParams::Gbt(p) => p.tree(),
        }
    }
}

/// How held-out probabilities are mapped to calibrated ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CalibrationMethod {
    /// The model's own probabilities.
    #[default]
    None,
    /// Platt scaling: a logistic regression on the model's score.
    Platt,
    /// Isotonic regression (pool adjacent violators): a monotone step function.
    Isotonic,
}

impl std::str::FromStr for CalibrationMethod {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" => Ok(CalibrationMethod::None),
            "platt" => Ok(CalibrationMethod::Platt),
            "isotonic" => Ok(CalibrationMethod::Isotonic),
            other => Err(Error::InvalidParam {
                name: "calibration",
                reason: format!("{other:?} is not none, platt or isotonic"),
            }),
        }
    }
}

/// The stated rule that picks a model's operating threshold on held-out rows: a row is
/// predicted 1 when its (calibrated) probability is at least the threshold.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "rule")]
pub enum ThresholdRule {
    /// No rule: class 1 above probability 0.5.
    #[default]
    Default,
    /// The highest threshold whose recall on the held-out rows is at least `recall`.
    TargetRecall {
        /// The recall to reach, in (0, 1].
        #[serde(with = "crate::exact")]
        recall: f64,
    },
    /// The threshold with the largest F1 on the held-out rows.
    MaxF1,
    /// The threshold with the least cost on the held-out rows when a missed positive costs
    /// `ratio` times a false alarm.
    CostRatio {
        /// Cost of a false negative over the cost of a false positive, > 0.
        #[serde(with = "crate::exact")]
        ratio: f64,
    },
}

impl std::str::FromStr for ThresholdRule {
    type Err = Error;

    /// Parses `default`, `max-f1`, `recall=R` or `cost=C`.
    fn from_str(s: &str) -> Result<Self> {
        let lower = s.trim().to_ascii_lowercase();
        let bad = || Error::InvalidParam {
            name: "threshold",
            reason: format!(
                "{s:?} is not default, max-f1, recall=R (0 < R ≤ 1) or cost=C (C > 0: a missed \
                 positive costs C false alarms)"
            ),
        };
        let rule = match lower.as_str() {
            "default" | "0.5" => ThresholdRule::Default,
            "max-f1" | "max_f1" | "f1" => ThresholdRule::MaxF1,
            other => match other.split_once('=') {
                Some(("recall", v)) => ThresholdRule::TargetRecall {
                    recall: v.trim().parse().map_err(|_| bad())?,
                },
                Some(("cost", v)) => ThresholdRule::CostRatio {
                    ratio: v.trim().parse().map_err(|_| bad())?,
                },
                _ => return Err(bad()),
            },
        };
        rule.validate()?;
        Ok(rule)
    }
}

/// The rule as the `--threshold` flag spells it, so a printed rule can be passed back.
impl std::fmt::Display for ThresholdRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ThresholdRule::Default => f.write_str("default"),
            ThresholdRule::MaxF1 => f.write_str("max-f1"),
            ThresholdRule::TargetRecall { recall } => write!(f, "recall={recall}"),
            ThresholdRule::CostRatio { ratio } => write!(f, "cost={ratio}"),
        }
    }
}

impl ThresholdRule {
    /// Checks the rule's number.
    pub fn validate(&self) -> Result<()> {
        let ok = match *self {
            ThresholdRule::TargetRecall { recall } => recall > 0.0 && recall <= 1.0,
            ThresholdRule::CostRatio { ratio } => ratio.is_finite() && ratio > 0.0,
            ThresholdRule::Default | ThresholdRule::MaxF1 => true,
        };
        if ok {
            Ok(())
        } else {
            Err(Error::InvalidParam {
                name: "threshold",
                reason: format!("{self:?} is out of range"),
            })
        }
    }
}

/// Calibration and the operating threshold, both fitted on rows held out of the training rows
/// (by row-key hash) after the model is trained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CalibrationConfig {
    /// How probabilities are calibrated.
    pub method: CalibrationMethod,
    /// How the operating threshold is chosen.
    pub threshold: ThresholdRule,
    /// Share of the training rows held out for both, in (0, 1); used only when a method or a
    /// rule is set.
    #[serde(with = "crate::exact")]
    pub holdout_fraction: f64,
}

impl Default for CalibrationConfig {
    fn default() -> Self {
        Self {
            method: CalibrationMethod::None,
            threshold: ThresholdRule::Default,
            holdout_fraction: 0.2,
        }
    }
}

impl CalibrationConfig {
    /// Whether rows are held out at all.
    pub fn holds_out(&self) -> bool {
        self.method != CalibrationMethod::None || self.threshold != ThresholdRule::Default
    }

    /// Checks the fraction and the rule.
    pub fn validate(&self) -> Result<()> {
        self.threshold.validate()?;
        if !(self.holdout_fraction > 0.0 && self.holdout_fraction < 1.0) {
            return Err(Error::InvalidParam {
                name: "holdout_fraction",
                reason: format!("{} is outside (0, 1)", self.holdout_fraction),
            });
        }
        Ok(())
    }
}

/// Everything a training run takes: the estimator, how rows are held out for testing and
/// cross-validation, and calibration. The binary builds one of these from its flags.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainParams {
    /// The estimator.
    pub model: ModelParams,
    /// Test split and cross-validation.
    pub evaluation: EvaluationConfig,
    /// Calibration and the operating threshold.
    pub calibration: CalibrationConfig,
}

impl TrainParams {
    /// Checks everything.
    pub fn validate(&self) -> Result<()> {
        self.model.validate()?;
        self.evaluation.validate()?;
        self.calibration.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_mllib_defaults_and_valid() {
        let p = DecisionTreeParams::default();
        assert_eq!(
            (p.max_depth, p.max_bins, p.min_instances_per_node),
            (5, 32, 1)
        );
        assert_eq!(p.max_memory_mb, 256);
        p.validate().unwrap();
        EvaluationConfig::default().validate().unwrap();
    }

    #[test]
    fn bad_values_name_the_parameter() {
        let cases = [
            (
                DecisionTreeParams {
                    max_depth: 0,
                    ..Default::default()
                },
                "max_depth",
            ),
            (
                DecisionTreeParams {
                    max_depth: 31,
                    ..Default::default()
                },
                "max_depth",
            ),
            (
                DecisionTreeParams {
                    max_bins: 1,
                    ..Default::default()
                },
                "max_bins",
            ),
            (
                DecisionTreeParams {
                    min_instances_per_node: 0,
                    ..Default::default()
                },
                "min_instances_per_node",
            ),
            (
                DecisionTreeParams {
                    min_info_gain: -1.0,
                    ..Default::default()
                },
                "min_info_gain",
            ),
            (
                DecisionTreeParams {
                    class_weights: ClassWeights::Explicit {
                        negative: 1.0,
                        positive: 0.0,
                    },
                    ..Default::default()
                },
                "class_weights",
            ),
            (
                DecisionTreeParams {
                    max_memory_mb: 0,
                    ..Default::default()
                },
                "max_memory_mb",
            ),
        ];
        for (params, name) in cases {
            match params.validate() {
                Err(Error::InvalidParam { name: got, .. }) => assert_eq!(got, name),
                other => panic!("{name}: expected InvalidParam, got {other:?}"),
            }
        }
    }

    #[test]
    fn parses_impurity_and_class_weights() {
        assert_eq!("Entropy".parse::<Impurity>().unwrap(), Impurity::Entropy);
        assert!("mse".parse::<Impurity>().is_err());
        assert_eq!(
            "balanced".parse::<ClassWeights>().unwrap(),
            ClassWeights::Balanced
        );
        assert_eq!(
            "1, 19".parse::<ClassWeights>().unwrap(),
            ClassWeights::Explicit {
                negative: 1.0,
                positive: 19.0
            }
        );
        assert!("heavy".parse::<ClassWeights>().is_err());
    }

    #[test]
    fn evaluation_config_rejects_one_fold() {
        assert!(
            EvaluationConfig {
                folds: 1,
                ..Default::default()
            }
            .validate()
            .is_err()
        );
        assert!(
            EvaluationConfig {
                test_fraction: 1.0,
                ..Default::default()
            }
            .validate()
            .is_err()
        );
    }

    #[test]
    fn ensemble_params_validate_and_parse() {
        RandomForestParams::default().validate().unwrap();
        GbtParams::default().validate().unwrap();
        let bad_forest = [
            RandomForestParams {
                num_trees: 0,
                ..Default::default()
            },
            RandomForestParams {
                subsampling_rate: 1.5,
                ..Default::default()
            },
            RandomForestParams {
                tree: DecisionTreeParams {
                    max_depth: 0,
                    ..Default::default()
                },
                ..Default::default()
            },
        ];
        for (p, name) in bad_forest
            .iter()
            .zip(["num_trees", "subsampling_rate", "max_depth"])
        {
            match p.validate() {
                Err(Error::InvalidParam { name: got, .. }) => assert_eq!(got, name),
                other => panic!("{name}: {other:?}"),
            }
        }
        let bad_gbt = [
            (
                GbtParams {
                    max_iter: 0,
                    ..Default::default()
                },
                "max_iter",
            ),
            (
                GbtParams {
                    step_size: 0.0,
                    ..Default::default()
                },
                "step_size",
            ),
            (
                GbtParams {
                    validation_fraction: 1.0,
                    ..Default::default()
                },
                "validation_fraction",
            ),
            (
                GbtParams {
                    l2_regularization: -1.0,
                    ..Default::default()
                },
                "l2_regularization",
            ),
        ];
        for (p, name) in bad_gbt {
            match p.validate() {
                Err(Error::InvalidParam { name: got, .. }) => assert_eq!(got, name),
                other => panic!("{name}: {other:?}"),
            }
        }
        assert_eq!(
            "sqrt".parse::<FeatureSubset>().unwrap(),
            FeatureSubset::Sqrt
        );
        assert_eq!(
            "0.5".parse::<FeatureSubset>().unwrap(),
            FeatureSubset::Fraction { fraction: 0.5 }
        );
        assert!("1.5".parse::<FeatureSubset>().is_err());
        assert!("half".parse::<FeatureSubset>().is_err());
        assert_eq!(
            "MAX-F1".parse::<ThresholdRule>().unwrap(),
            ThresholdRule::MaxF1
        );
        assert_eq!(
            "recall=0.8".parse::<ThresholdRule>().unwrap(),
            ThresholdRule::TargetRecall { recall: 0.8 }
        );
        assert_eq!(
            "cost=10".parse::<ThresholdRule>().unwrap(),
            ThresholdRule::CostRatio { ratio: 10.0 }
        );
        assert!("recall=0".parse::<ThresholdRule>().is_err());
        assert!("cost=-1".parse::<ThresholdRule>().is_err());
        assert_eq!(
            "Isotonic".parse::<CalibrationMethod>().unwrap(),
            CalibrationMethod::Isotonic
        );
        assert!("beta".parse::<CalibrationMethod>().is_err());
    }

    #[test]
    fn feature_subsets_follow_mllib() {
        // 20 features: sqrt 5, log2 5, onethird 7, half 10; auto is sqrt for a forest.
        let n = 20;
        assert_eq!(FeatureSubset::Sqrt.features_per_node(n, 10), 5);
        assert_eq!(FeatureSubset::Log2.features_per_node(n, 10), 5);
        assert_eq!(FeatureSubset::OneThird.features_per_node(n, 10), 7);
        assert_eq!(
            FeatureSubset::Fraction { fraction: 0.5 }.features_per_node(n, 10),
            10
        );
        assert_eq!(FeatureSubset::Auto.features_per_node(n, 10), 5);
        assert_eq!(FeatureSubset::Auto.features_per_node(n, 1), 20);
        assert_eq!(FeatureSubset::All.features_per_node(n, 10), 20);
        assert_eq!(FeatureSubset::Log2.features_per_node(1, 10), 1);
    }
}
