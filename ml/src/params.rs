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
}
