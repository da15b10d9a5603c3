//! The manifest published beside every dataset: what the job read, what it dropped and why, the
//! statistics it fitted, the encodings it chose and the PII policy it applied. Prediction reads the
//! fitted statistics and encodings back from here, so a model sees raw rows exactly as the
//! training data was transformed. This module only describes and (de)serializes the manifest; it
//! does not compute anything.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The manifest format version this build writes and reads.
pub const MANIFEST_VERSION: u32 = 1;

/// The file name of the manifest inside a published dataset directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// Everything a reader needs to know about a published dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`MANIFEST_VERSION`] for manifests written by this build.
    pub format_version: u32,
    /// The job name from the job file.
    pub job: String,
    /// The emrflow version that wrote the dataset.
    pub created_by: String,
    /// Output columns in order.
    pub schema: Vec<ColumnSpec>,
    /// Rows read per input name.
    pub rows_read: BTreeMap<String, u64>,
    /// Rows written.
    pub rows_out: u64,
    /// Rows dropped, per reason (`"join: no matching patient"`, `"null: bmi"`, ...).
    pub rows_dropped: BTreeMap<String, u64>,
    /// The label column, if the job names one.
    pub label: Option<String>,
    /// A column that identifies each row (a pseudonymized visit id, for instance). Train/test
    /// splits and cross-validation folds hash it, so they do not depend on row order.
    pub row_key: Option<String>,
    /// Model features in output order (the label, the row key and identifiers are not features).
    pub features: Vec<FeatureSpec>,
    /// Fitted normalization per normalized column.
    pub normalization: BTreeMap<String, Normalizer>,
    /// String-to-index encodings per encoded column.
    pub encodings: BTreeMap<String, Encoding>,
    /// The PII policy that was applied.
    pub pii: PiiReport,
    /// The input files that were read.
    pub inputs: Vec<InputSpec>,
    /// Output data files, relative to the dataset directory, in name order.
    pub files: Vec<String>,
}

/// One output column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnSpec {
    /// Column name.
    pub name: String,
    /// Arrow data type, as Arrow displays it (`Int64`, `Float64`, `Utf8`, ...).
    pub data_type: String,
    /// Whether the column may hold nulls.
    pub nullable: bool,
}

/// How a model should treat a feature column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureSpec {
    /// Column name.
    pub name: String,
    /// Continuous (ordered numbers) or categorical (an encoded index).
    pub kind: FeatureKind,
}

/// The kind of a feature column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum FeatureKind {
    /// A number; splits are thresholds.
    Continuous,
    /// An index in `0..categories` (see [`Manifest::encodings`]); splits are category sets.
    Categorical {
        /// How many distinct categories the encoding has.
        categories: u32,
    },
}

/// The statistics a normalization was fitted with, so the same transform can be applied (and
/// undone, to explain a split in raw units) later.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "method")]
pub enum Normalizer {
    /// `(x - min) / (max - min)`; a constant column maps to 0.
    MinMax {
        /// The smallest value seen.
        min: f64,
        /// The largest value seen.
        max: f64,
    },
    /// `(x - mean) / std`; a constant column maps to 0.
    ZScore {
        /// The mean.
        mean: f64,
        /// The population standard deviation.
        std: f64,
    },
}

impl Normalizer {
    /// Applies the fitted transform to a raw value.
    pub fn apply(&self, x: f64) -> f64 {
        match *self {
            Normalizer::MinMax { min, max } => {
                let span = max - min;
                if span > 0.0 { (x - min) / span } else { 0.0 }
            }
            Normalizer::ZScore { mean, std } => {
                if std > 0.0 {
                    (x - mean) / std
                } else {
                    0.0
                }
            }
        }
    }

    /// Maps a normalized value back to raw units (used to print thresholds a clinician can read).
    pub fn invert(&self, y: f64) -> f64 {
        match *self {
            Normalizer::MinMax { min, max } => min + y * (max - min),
            Normalizer::ZScore { mean, std } => mean + y * std,
        }
    }
}

/// A string-to-index encoding: `values[i]` is encoded as `i`. Values unseen at fit time are
/// rejected at prediction time rather than silently mapped to some category.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Encoding {
    /// The categories, in index order (sorted, so the encoding does not depend on row order).
    pub values: Vec<String>,
}

impl Encoding {
    /// The index of a category, if it was seen when the encoding was fitted.
    pub fn index_of(&self, value: &str) -> Option<u32> {
        self.values
            .binary_search_by(|v| v.as_str().cmp(value))
            .ok()
            .map(|i| i as u32)
    }
}

/// What the PII policy did. The pseudonymization key itself never appears; `key_id` is a hash of
/// it, so two datasets can be checked for having used the same key.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PiiReport {
    /// Columns removed.
    pub dropped: Vec<String>,
    /// Columns replaced by their keyed HMAC-SHA256 pseudonym.
    pub pseudonymized: Vec<String>,
    /// Date-of-birth columns generalized to an age, as `dob column -> age column`.
    pub generalized: BTreeMap<String, String>,
    /// SHA-256 of the pseudonymization key (hex), if a key was used.
    pub key_id: Option<String>,
    /// Columns the output guard scanned for identifier patterns.
    pub scanned: Vec<String>,
}

/// One input of the job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// The input's name in the job file.
    pub name: String,
    /// Where it was read from.
    pub location: String,
    /// `csv` or `parquet`.
    pub format: String,
    /// Files read, with their sizes in bytes.
    pub files: Vec<InputFile>,
}

/// One file of an input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputFile {
    /// Path or URL.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
}

/// What a dataset's anchor carries as its parameter hash: SHA-256 over the manifest's fields
/// except `files`, each as its key and its exact JSON text, in key order.
///
/// How rows are split into files depends on the partitioning (cores, a cluster), which the
/// dataset root already ignores; everything else (inputs, policy, fitted statistics, schema) is
/// the same for the same job on the same inputs, so the same dataset gets one parameter hash
/// wherever it was computed. The text is hashed as written rather than re-serialized, because
/// parsing a 17-digit float may move it by one ulp.
pub fn params_digest(manifest_json: &[u8]) -> Result<[u8; 32]> {
    use sha2::Digest;
    let fields: BTreeMap<String, Box<serde_json::value::RawValue>> =
        serde_json::from_slice(manifest_json).map_err(|source| Error::Manifest {
            path: MANIFEST_FILE.to_string(),
            source,
        })?;
    let mut hasher = sha2::Sha256::new();
    hasher.update(b"emrflow.manifest.v1");
    for (key, value) in fields.iter().filter(|(k, _)| k.as_str() != "files") {
        let text = value.get();
        hasher.update((key.len() as u64).to_be_bytes());
        hasher.update(key.as_bytes());
        hasher.update((text.len() as u64).to_be_bytes());
        hasher.update(text.as_bytes());
    }
    Ok(hasher.finalize().into())
}

impl Manifest {
    /// Parses a manifest; `origin` names the file in errors.
    pub fn from_json(bytes: &[u8], origin: &str) -> Result<Self> {
        let manifest: Manifest =
            serde_json::from_slice(bytes).map_err(|source| Error::Manifest {
                path: origin.to_string(),
                source,
            })?;
        if manifest.format_version != MANIFEST_VERSION {
            return Err(Error::ManifestVersion {
                path: origin.to_string(),
                found: manifest.format_version,
            });
        }
        Ok(manifest)
    }

    /// Serializes the manifest as pretty JSON.
    pub fn to_json(&self) -> Result<Vec<u8>> {
        serde_json::to_vec_pretty(self).map_err(|source| Error::Manifest {
            path: MANIFEST_FILE.to_string(),
            source,
        })
    }

    /// The feature spec of a column, if it is a feature.
    pub fn feature(&self, name: &str) -> Option<&FeatureSpec> {
        self.features.iter().find(|f| f.name == name)
    }
}

#[cfg(test)]
mod params_tests {
    use super::params_digest;

    fn digest(json: &str) -> [u8; 32] {
        params_digest(json.as_bytes()).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn the_file_layout_does_not_change_the_parameter_hash_and_everything_else_does() {
        let base =
            digest(r#"{"job":"j","mean":27.915904401650554,"files":["part-00000.parquet"]}"#);
        assert_eq!(
            base,
            digest(
                r#"{"files":["part-00000.parquet","part-00001.parquet"],"job":"j","mean":27.915904401650554}"#
            )
        );
        assert_ne!(
            base,
            digest(r#"{"job":"j","mean":27.915904401650557,"files":["part-00000.parquet"]}"#)
        );
        assert_ne!(
            base,
            digest(r#"{"job":"k","mean":27.915904401650554,"files":[]}"#)
        );
        assert!(params_digest(b"[1]").is_err());
    }
}
