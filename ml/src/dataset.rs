//! What the trainer needs to know about a dataset: the label, the row key and each feature's
//! kind, plus how to show a feature in raw units (the inverse of the normalization, the category
//! names). The binary builds a [`DatasetSpec`] from the pipeline's manifest; `ml` never reads the
//! manifest itself. This module also checks a spec against a DataFrame's schema. It does not read
//! data.

use datafusion::arrow::datatypes::{DataType, Schema};
use datafusion::common::Column;
use datafusion::prelude::Expr;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The label, row key and features of a dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetSpec {
    /// The binary 0/1 label column.
    pub label: String,
    /// A column identifying each row. The train/test split, CV folds and the sketch sample hash
    /// it with the seed; without one, the label and feature values are hashed instead (identical
    /// rows then always land on the same side).
    pub row_key: Option<String>,
    /// Features in model order.
    pub features: Vec<FeatureSpec>,
}

/// One feature column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureSpec {
    /// Column name.
    pub name: String,
    /// Continuous or categorical, and how to show it in raw units.
    pub kind: FeatureKind,
}

/// The kind of a feature column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum FeatureKind {
    /// An ordered number (normalized or not); splits are thresholds `x ≤ t`.
    Continuous {
        /// Maps a value back to raw units (`raw = offset + scale · value`), to print thresholds
        /// a clinician can read; `None` if the column was not normalized.
        #[serde(default)]
        raw: Option<Affine>,
    },
    /// An index in `0..categories`; splits are sets of categories.
    Categorical {
        /// Number of categories.
        categories: u32,
        /// The category names in index order, if known (empty otherwise).
        #[serde(default)]
        labels: Vec<String>,
    },
}

impl FeatureKind {
    /// A continuous feature shown as stored.
    pub fn continuous() -> Self {
        FeatureKind::Continuous { raw: None }
    }

    /// A categorical feature without category names.
    pub fn categorical(categories: u32) -> Self {
        FeatureKind::Categorical {
            categories,
            labels: Vec::new(),
        }
    }
}

/// An affine map `raw = offset + scale · value`; both min-max and z-score normalization invert
/// to one.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Affine {
    /// Added after scaling.
    #[serde(with = "crate::exact")]
    pub offset: f64,
    /// Multiplies the stored value.
    #[serde(with = "crate::exact")]
    pub scale: f64,
}

impl Affine {
    /// Maps a stored value to raw units.
    pub fn apply(&self, value: f64) -> f64 {
        self.offset + self.scale * value
    }
}

impl DatasetSpec {
    /// Checks that every named column exists with a usable type, and that feature names are
    /// unique and the spec has at least one feature.
    pub fn check_schema(&self, schema: &Schema, weight_column: Option<&str>) -> Result<()> {
        let available = || {
            schema
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let find = |name: &str, role: &'static str| {
            schema
                .field_with_name(name)
                .map_err(|_| Error::MissingColumn {
                    column: name.to_string(),
                    role,
                    available: available(),
                })
        };
        if self.features.is_empty() {
            return Err(Error::InvalidParam {
                name: "features",
                reason: "the dataset spec names no feature".to_string(),
            });
        }
        let label = find(&self.label, "label")?;
        if !(label.data_type().is_integer() || label.data_type() == &DataType::Boolean) {
            return Err(Error::LabelNotBinary {
                column: self.label.clone(),
                reason: format!(
                    "its type is {}, expected an integer 0/1 column",
                    label.data_type()
                ),
            });
        }
        if let Some(key) = &self.row_key {
            find(key, "row key")?;
        }
        if let Some(w) = weight_column {
            let field = find(w, "weight")?;
            if !field.data_type().is_numeric() {
                return Err(Error::ColumnType {
                    column: w.to_string(),
                    data_type: field.data_type().to_string(),
                    role: "a row weight",
                });
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for feature in &self.features {
            if !seen.insert(feature.name.as_str()) {
                return Err(Error::InvalidParam {
                    name: "features",
                    reason: format!("feature {} is listed twice", feature.name),
                });
            }
            if feature.name == self.label {
                return Err(Error::InvalidParam {
                    name: "features",
                    reason: format!("the label {} is also listed as a feature", feature.name),
                });
            }
            let field = find(&feature.name, "feature")?;
            let dt = field.data_type();
            let ok = match &feature.kind {
                FeatureKind::Continuous { .. } => dt.is_numeric() || dt == &DataType::Boolean,
                FeatureKind::Categorical { categories, .. } => {
                    if *categories == 0 {
                        return Err(Error::InvalidParam {
                            name: "features",
                            reason: format!(
                                "categorical feature {} has 0 categories",
                                feature.name
                            ),
                        });
                    }
                    dt.is_integer()
                }
            };
            if !ok {
                return Err(Error::ColumnType {
                    column: feature.name.clone(),
                    data_type: dt.to_string(),
                    role: match feature.kind {
                        FeatureKind::Continuous { .. } => "a continuous feature (numeric)",
                        FeatureKind::Categorical { .. } => "a categorical feature (integer index)",
                    },
                });
            }
        }
        Ok(())
    }

    /// The expressions hashed to place a row: the row key, or the label and all features.
    pub(crate) fn key_exprs(&self) -> Vec<Expr> {
        match &self.row_key {
            Some(key) => vec![column(key)],
            None => std::iter::once(column(&self.label))
                .chain(self.features.iter().map(|f| column(&f.name)))
                .collect(),
        }
    }
}

/// An unqualified column reference that keeps the name exactly as given (no case folding, no
/// splitting at dots).
pub(crate) fn column(name: &str) -> Expr {
    Expr::Column(Column::new_unqualified(name))
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::datatypes::Field;

    use super::*;

    fn spec() -> DatasetSpec {
        DatasetSpec {
            label: "stroke".into(),
            row_key: Some("visit".into()),
            features: vec![
                FeatureSpec {
                    name: "age".into(),
                    kind: FeatureKind::continuous(),
                },
                FeatureSpec {
                    name: "smoking".into(),
                    kind: FeatureKind::categorical(3),
                },
            ],
        }
    }

    fn schema(label: DataType) -> Schema {
        Schema::new(vec![
            Field::new("visit", DataType::Utf8, false),
            Field::new("age", DataType::Float64, true),
            Field::new("smoking", DataType::Int32, true),
            Field::new("stroke", label, false),
        ])
    }

    #[test]
    fn accepts_a_matching_schema() {
        spec().check_schema(&schema(DataType::Int64), None).unwrap();
    }

    #[test]
    fn names_a_missing_label_and_a_string_label() {
        let mut s = spec();
        s.label = "outcome".into();
        let err = s.check_schema(&schema(DataType::Int64), None).unwrap_err();
        assert!(
            matches!(err, Error::MissingColumn { ref column, role: "label", .. } if column == "outcome"),
            "{err}"
        );
        let err = spec()
            .check_schema(&schema(DataType::Utf8), None)
            .unwrap_err();
        assert!(matches!(err, Error::LabelNotBinary { .. }), "{err}");
    }

    #[test]
    fn rejects_a_float_categorical_column() {
        let mut s = spec();
        s.features[0].kind = FeatureKind::categorical(4);
        let err = s.check_schema(&schema(DataType::Int64), None).unwrap_err();
        assert!(
            matches!(err, Error::ColumnType { ref column, .. } if column == "age"),
            "{err}"
        );
    }
}
