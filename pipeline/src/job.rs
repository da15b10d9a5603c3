//! The job file: a TOML description of one preprocessing run. This module parses and validates
//! it (unknown keys are errors that name the key and line); it does not touch data. The
//! pseudonymization key is deliberately not a job-file setting: the job names only where the key
//! comes from (an environment variable or a file).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};

/// A parsed and validated job.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Job {
    /// The job's name; it is recorded in the manifest.
    pub name: String,
    /// Inputs by name. Names are how the join and the manifest refer to them.
    pub inputs: BTreeMap<String, InputConfig>,
    /// Joins applied in order to the first input (the one that `join[0].left` names).
    #[serde(default)]
    pub join: Vec<JoinConfig>,
    /// The de-identification policy.
    #[serde(default)]
    pub pii: PiiConfig,
    /// Valid ranges per numeric column; rows outside are dropped (nulls pass, see `dropna`).
    #[serde(default)]
    pub ranges: BTreeMap<String, [f64; 2]>,
    /// Rows with nulls are dropped.
    #[serde(default)]
    pub dropna: DropNaConfig,
    /// Normalization of numeric columns.
    #[serde(default)]
    pub normalize: NormalizeConfig,
    /// String-to-index encoding of categorical columns.
    #[serde(default)]
    pub encode: EncodeConfig,
    /// The label column, carried through unchanged.
    pub label: Option<String>,
    /// The label's classes: `emrflow run` refuses a row whose label is another value, naming its
    /// file and line (default `[0, 1]`, what the classifiers train on).
    pub classes: Option<Vec<i64>>,
    /// A column that identifies each row (after pseudonymization if it is pseudonymized).
    pub row_key: Option<String>,
    /// Feature columns; by default every output column but the label, the row key and
    /// pseudonymized identifiers.
    pub features: Option<Vec<String>>,
    /// Where the dataset is published.
    pub output: OutputConfig,
    /// How `emrflow records import` reads the inputs as patients and their records.
    #[serde(default)]
    pub records: RecordsConfig,
}

/// The `[records]` section: which input holds the patients, which their visits, and the
/// columns that link them. Every key has a default that fits `emrflow generate`'s schema.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordsConfig {
    /// The input with one row per patient (default: `patients`, or the first join's right side).
    pub patients: Option<String>,
    /// The input with the patients' visits (default: `visits`, or the first join's left side).
    pub visits: Option<String>,
    /// The column naming the patient in both (default: the first join's `on`, else
    /// `patient_id`).
    pub patient_key: Option<String>,
    /// The column identifying a visit (default: the job's `row_key`, else `visit_id`).
    pub record_key: Option<String>,
    /// The visit column naming the facility (default `facility_id`).
    pub facility: Option<String>,
    /// Column → data category, replacing the default mapping for those columns.
    #[serde(default)]
    pub categories: BTreeMap<String, String>,
}

/// The [`RecordsConfig`] with its defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordsLayout {
    /// The patients input.
    pub patients: String,
    /// The visits input.
    pub visits: String,
    /// The patient column of both.
    pub patient_key: String,
    /// The visit id column.
    pub record_key: String,
    /// The facility column of the visits.
    pub facility: String,
}

/// One input.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputConfig {
    /// A local path, or a URL: `file://`, `memory://`, `s3://bucket/key` (credentials and region
    /// from the usual `AWS_*` environment variables).
    pub path: String,
    /// `csv`, `parquet` or `fhir` (a FHIR Bulk Data export: its directory or its
    /// `manifest.json`); by default from the path's extension.
    pub format: Option<InputFormat>,
    /// FHIR only: which table of the export this input is, `patients` or `visits`.
    pub table: Option<FhirTable>,
    /// FHIR visits only: measured columns by name, each replacing the LOINC code (and unit) of
    /// a column of [`crate::fhir::MEASURES`] or adding a column.
    #[serde(default)]
    pub loinc: BTreeMap<String, LoincMeasure>,
    /// CSV only: strings that mean null, besides the empty field (for example `"N/A"`).
    #[serde(default)]
    pub null_values: Vec<String>,
    /// CSV only: the field delimiter (default `,`).
    pub delimiter: Option<char>,
    /// Column types that override inference (`int64`, `float64`, `utf8`, `date32`, `boolean`).
    #[serde(default)]
    pub types: BTreeMap<String, ColumnType>,
}

/// A visit column measured by one LOINC-coded observation.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoincMeasure {
    /// The LOINC code.
    pub code: String,
    /// The UCUM unit of the column (default: the unit of the column it replaces); values in
    /// another unit are converted where a rule exists, and otherwise drop their visit.
    pub unit: Option<String>,
    /// The analyte's molar mass (g/mol), so that values in `mmol/L` convert to mass units.
    pub molar_mass: Option<f64>,
}

/// Input file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputFormat {
    /// Comma-separated values with a header row.
    Csv,
    /// Apache Parquet.
    Parquet,
    /// A FHIR R4 Bulk Data export (NDJSON, one file per resource type).
    Fhir,
}

/// The tables a FHIR export is flattened into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FhirTable {
    /// One row per `Patient`.
    Patients,
    /// One row per `Encounter`, with its observations, conditions and note.
    Visits,
}

impl InputFormat {
    /// The format's name as written in job files and manifests.
    pub fn as_str(&self) -> &'static str {
        match self {
            InputFormat::Csv => "csv",
            InputFormat::Parquet => "parquet",
            InputFormat::Fhir => "fhir",
        }
    }
}

/// A column type a job can declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    /// 64-bit signed integer.
    Int64,
    /// 64-bit float.
    Float64,
    /// UTF-8 string.
    Utf8,
    /// A calendar date (`YYYY-MM-DD`).
    Date32,
    /// `true`/`false`.
    Boolean,
}

impl ColumnType {
    /// The Arrow type.
    pub fn arrow(&self) -> arrow::datatypes::DataType {
        use arrow::datatypes::DataType;
        match self {
            ColumnType::Int64 => DataType::Int64,
            ColumnType::Float64 => DataType::Float64,
            ColumnType::Utf8 => DataType::Utf8,
            ColumnType::Date32 => DataType::Date32,
            ColumnType::Boolean => DataType::Boolean,
        }
    }
}

/// `left JOIN right ON left.on = right.on`. Every left row must find its right row; rows that do
/// not are dropped and counted.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinConfig {
    /// The input (or, after the first join, the joined rows) on the left.
    pub left: String,
    /// The input to join in.
    pub right: String,
    /// The key column, present in both.
    pub on: String,
}

/// The de-identification policy.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PiiConfig {
    /// Columns removed from the output.
    #[serde(default)]
    pub drop: Vec<String>,
    /// Columns replaced by `hex(HMAC-SHA256(key, value))`.
    #[serde(default)]
    pub pseudonymize: Vec<String>,
    /// The environment variable that holds the pseudonymization key.
    pub key_env: Option<String>,
    /// A file that holds the pseudonymization key.
    pub key_file: Option<String>,
    /// Date of birth generalized to age in whole years (ages over 89 become 90, as HIPAA Safe
    /// Harbor requires); the date of birth column is dropped.
    pub age: Option<AgeConfig>,
}

/// Date of birth to age.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgeConfig {
    /// The date-of-birth column.
    pub dob: String,
    /// The date at which the age is taken (the visit date).
    pub at: String,
    /// The new column's name.
    #[serde(rename = "as")]
    pub name: String,
}

/// Which nulls drop a row.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DropNaConfig {
    /// Drop rows with a null in any output column.
    #[serde(default)]
    pub all: bool,
    /// Drop rows with a null in one of these columns.
    #[serde(default)]
    pub columns: Vec<String>,
}

/// Normalization methods by column.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NormalizeConfig {
    /// `(x - min) / (max - min)`.
    #[serde(default)]
    pub minmax: Vec<String>,
    /// `(x - mean) / std`.
    #[serde(default)]
    pub zscore: Vec<String>,
}

/// Categorical encoding.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncodeConfig {
    /// Columns whose strings become indexes into their sorted distinct values.
    #[serde(default)]
    pub columns: Vec<String>,
}

/// Where the dataset goes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    /// A local directory or an object-store URL prefix.
    pub path: String,
}

impl Job {
    /// Reads and validates a job file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| Error::JobRead {
            path: shown.clone(),
            source,
        })?;
        Self::from_toml(&text, &shown)
    }

    /// Parses and validates job TOML; `origin` names the file in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self> {
        let job: Job = toml::from_str(text).map_err(|e| {
            let message = e.message().trim().replace('\n', " ");
            let message = match e.span() {
                Some(span) => {
                    let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                    format!("line {line}: {message}")
                }
                None => message,
            };
            Error::JobParse {
                path: origin.to_string(),
                message,
            }
        })?;
        job.validate()?;
        Ok(job)
    }

    /// The `[records]` section with its defaults, checked against the inputs.
    pub fn records_layout(&self) -> Result<RecordsLayout> {
        let r = &self.records;
        let first = self.join.first();
        let pick = |set: &Option<String>, named: &str, joined: Option<&String>| -> String {
            set.clone().unwrap_or_else(|| {
                if self.inputs.contains_key(named) {
                    named.to_string()
                } else {
                    joined.cloned().unwrap_or_else(|| named.to_string())
                }
            })
        };
        let layout = RecordsLayout {
            patients: pick(&r.patients, "patients", first.map(|j| &j.right)),
            visits: pick(&r.visits, "visits", first.map(|j| &j.left)),
            patient_key: r
                .patient_key
                .clone()
                .or_else(|| first.map(|j| j.on.clone()))
                .unwrap_or_else(|| "patient_id".to_string()),
            record_key: r
                .record_key
                .clone()
                .or_else(|| self.row_key.clone())
                .unwrap_or_else(|| "visit_id".to_string()),
            facility: r
                .facility
                .clone()
                .unwrap_or_else(|| "facility_id".to_string()),
        };
        for (key, input) in [
            ("records.patients", &layout.patients),
            ("records.visits", &layout.visits),
        ] {
            if !self.inputs.contains_key(input) {
                return Err(Error::invalid(
                    key,
                    format!("the job has no input named {input}"),
                ));
            }
        }
        if layout.patients == layout.visits {
            return Err(Error::invalid(
                "records",
                "patients and visits must be two different inputs",
            ));
        }
        Ok(layout)
    }

    /// Checks what can be checked without reading data.
    pub fn validate(&self) -> Result<()> {
        if self.name.trim().is_empty() {
            return Err(Error::invalid("name", "must not be empty"));
        }
        if self.inputs.is_empty() {
            return Err(Error::invalid("inputs", "at least one input is required"));
        }
        if self.inputs.len() != self.join.len() + 1 {
            return Err(Error::invalid(
                "join",
                format!(
                    "{} inputs need {} joins, found {}",
                    self.inputs.len(),
                    self.inputs.len() - 1,
                    self.join.len()
                ),
            ));
        }
        let mut joined: Vec<&str> = Vec::new();
        for (i, j) in self.join.iter().enumerate() {
            let field = format!("join[{i}]");
            for side in [&j.left, &j.right] {
                if !self.inputs.contains_key(side) {
                    return Err(Error::invalid(&field, format!("no input named {side}")));
                }
            }
            if i == 0 {
                joined.push(&j.left);
            } else if !joined.contains(&j.left.as_str()) {
                return Err(Error::invalid(
                    &field,
                    format!("left side {} has not been joined yet", j.left),
                ));
            }
            if joined.contains(&j.right.as_str()) {
                return Err(Error::invalid(
                    &field,
                    format!("{} is joined twice", j.right),
                ));
            }
            joined.push(&j.right);
        }
        for (name, input) in &self.inputs {
            if input.path.trim().is_empty() {
                return Err(Error::invalid(
                    format!("inputs.{name}.path"),
                    "must not be empty",
                ));
            }
            let format = self.format_of(name);
            if format != InputFormat::Csv
                && (!input.null_values.is_empty() || input.delimiter.is_some())
            {
                return Err(Error::invalid(
                    format!("inputs.{name}"),
                    "null_values and delimiter apply to CSV inputs only",
                ));
            }
            match (format, input.table) {
                (InputFormat::Fhir, None) => {
                    return Err(Error::invalid(
                        format!("inputs.{name}.table"),
                        "a FHIR input names its table: \"patients\" or \"visits\"",
                    ));
                }
                (InputFormat::Fhir, Some(_)) if !input.types.is_empty() => {
                    return Err(Error::invalid(
                        format!("inputs.{name}.types"),
                        "a FHIR input's types come from its codes",
                    ));
                }
                (InputFormat::Csv | InputFormat::Parquet, Some(_)) => {
                    return Err(Error::invalid(
                        format!("inputs.{name}.table"),
                        "applies to FHIR inputs only",
                    ));
                }
                _ => {}
            }
            if !input.loinc.is_empty() && input.table != Some(FhirTable::Visits) {
                return Err(Error::invalid(
                    format!("inputs.{name}.loinc"),
                    "applies to the visits table of a FHIR input only",
                ));
            }
            crate::fhir::measures_with(&input.loinc, &format!("inputs.{name}.loinc"))?;
            if let Some(d) = input.delimiter
                && !d.is_ascii()
            {
                return Err(Error::invalid(
                    format!("inputs.{name}.delimiter"),
                    "must be one ASCII character",
                ));
            }
        }
        if !self.pii.pseudonymize.is_empty()
            && self.pii.key_env.is_none()
            && self.pii.key_file.is_none()
        {
            return Err(Error::invalid(
                "pii.pseudonymize",
                "needs pii.key_env or pii.key_file to say where the key comes from",
            ));
        }
        for (col, [lo, hi]) in &self.ranges {
            if lo.is_nan() || hi.is_nan() || lo > hi {
                return Err(Error::invalid(
                    format!("ranges.{col}"),
                    "must be [low, high] with low <= high",
                ));
            }
        }
        let mut seen = BTreeSet::new();
        for c in self.normalize.minmax.iter().chain(&self.normalize.zscore) {
            if !seen.insert(c) {
                return Err(Error::invalid(
                    "normalize",
                    format!("column {c} is normalized twice"),
                ));
            }
        }
        for c in &self.encode.columns {
            if seen.contains(c) {
                return Err(Error::invalid(
                    "encode.columns",
                    format!("column {c} is both normalized and encoded"),
                ));
            }
        }
        for c in self.pii.drop.iter() {
            if self.pii.pseudonymize.contains(c) {
                return Err(Error::invalid(
                    "pii.drop",
                    format!("column {c} is both dropped and pseudonymized"),
                ));
            }
            for (field, list) in [
                (
                    "normalize",
                    self.normalize
                        .minmax
                        .iter()
                        .chain(&self.normalize.zscore)
                        .collect::<Vec<_>>(),
                ),
                ("encode.columns", self.encode.columns.iter().collect()),
                ("dropna.columns", self.dropna.columns.iter().collect()),
            ] {
                if list.contains(&c) {
                    return Err(Error::invalid(
                        field,
                        format!("column {c} is dropped by pii.drop"),
                    ));
                }
            }
            if self.label.as_ref() == Some(c) || self.row_key.as_ref() == Some(c) {
                return Err(Error::invalid(
                    "pii.drop",
                    format!("column {c} is the label or row key"),
                ));
            }
        }
        if let Some(classes) = &self.classes {
            if self.label.is_none() {
                return Err(Error::invalid(
                    "classes",
                    "is given but the job has no label",
                ));
            }
            let distinct: BTreeSet<_> = classes.iter().collect();
            if classes.len() < 2 || distinct.len() != classes.len() {
                return Err(Error::invalid(
                    "classes",
                    "must list at least two distinct classes",
                ));
            }
        }
        if let Some(features) = &self.features {
            if features.is_empty() {
                return Err(Error::invalid("features", "must not be empty when given"));
            }
            if let Some(label) = &self.label
                && features.contains(label)
            {
                return Err(Error::invalid(
                    "features",
                    format!("the label {label} cannot be a feature"),
                ));
            }
        }
        if self.output.path.trim().is_empty() {
            return Err(Error::invalid("output.path", "must not be empty"));
        }
        Ok(())
    }

    /// The label's classes, in the order given (`[0, 1]` unless the job lists others).
    pub fn label_classes(&self) -> Vec<i64> {
        self.classes.clone().unwrap_or_else(|| vec![0, 1])
    }

    /// The columns the job reads as numbers: range-checked and normalized ones.
    pub fn numeric_columns(&self) -> BTreeSet<&str> {
        self.ranges
            .keys()
            .chain(&self.normalize.zscore)
            .chain(&self.normalize.minmax)
            .map(String::as_str)
            .collect()
    }

    /// The format of an input: declared, or from its extension (CSV when unclear).
    pub fn format_of(&self, input: &str) -> InputFormat {
        match self.inputs.get(input) {
            Some(InputConfig {
                format: Some(f), ..
            }) => *f,
            Some(i) if i.path.ends_with(".parquet") || i.path.ends_with(".parq") => {
                InputFormat::Parquet
            }
            _ => InputFormat::Csv,
        }
    }

    /// The input every join starts from.
    pub fn base_input(&self) -> &str {
        match self.join.first() {
            Some(j) => &j.left,
            // Validation guarantees exactly one input when there is no join.
            None => self.inputs.keys().next().map_or("", String::as_str),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
name = "t"
label = "y"
[inputs.a]
path = "a.csv"
[output]
path = "out"
"#;

    #[test]
    fn minimal_job_parses() {
        let job = Job::from_toml(MINIMAL, "job.toml").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(job.base_input(), "a");
        assert_eq!(job.format_of("a"), InputFormat::Csv);
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let text = MINIMAL.replace("[output]", "[dropnaa]\nall = true\n[output]");
        let err = Job::from_toml(&text, "job.toml")
            .map(|_| ())
            .err()
            .map(|e| e.to_string());
        let err = err.unwrap_or_default();
        assert!(err.contains("job.toml"), "{err}");
        assert!(err.contains("dropnaa"), "{err}");
        assert!(err.contains("line 6"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn misspelled_nested_key_is_rejected() {
        let text = MINIMAL.replace(
            "path = \"a.csv\"",
            "path = \"a.csv\"\nnul_values = [\"N/A\"]",
        );
        let err = Job::from_toml(&text, "j.toml")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("nul_values"), "{err}");
    }

    #[test]
    fn pseudonymize_without_key_source_is_rejected() {
        let text = MINIMAL.replace("[output]", "[pii]\npseudonymize = [\"id\"]\n[output]");
        let err = Job::from_toml(&text, "j.toml")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("pii.pseudonymize"), "{err}");
    }

    #[test]
    fn join_count_must_match_inputs() {
        let text = MINIMAL.replace("[output]", "[inputs.b]\npath = \"b.csv\"\n[output]");
        let err = Job::from_toml(&text, "j.toml")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("join"), "{err}");
    }
}
