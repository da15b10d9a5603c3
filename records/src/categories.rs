//! Which data category each field of a record falls in: the default mapping for
//! `emrflow generate`'s schema, the job's `[records.categories]` changes to it, and ICD-10
//! codes by chapter.
//!
//! | column | category |
//! |---|---|
//! | `patient_id`, `full_name`, `national_id`, `phone`, `email`, `street_address`, `visit_id` | identifiers |
//! | `date_of_birth`, `gender`, `visit_date`, `facility_id` | demographics |
//! | `systolic_bp`, `diastolic_bp`, `heart_rate`, `bmi` | vitals |
//! | `hypertension`, `heart_disease`, `atrial_fibrillation`, `cholesterol` | cardiology |
//! | `dizziness`, `headache`, `numbness`, `slurred_speech`, `vision_problems` | neurology |
//! | `avg_glucose`, `diabetes` | metabolic |
//! | `smoking_status`, `stroke` | diagnoses |
//! | `clinical_notes` | notes |
//! | an ICD-10 code column (`icd10_primary`) | by its code: see [`icd10_category`] |
//! | any other column | diagnoses |
//!
//! A visit's date and facility are demographics rather than identifiers: a reader granted any
//! category of a visit must be able to place it in time and place.

use std::collections::BTreeMap;

use ledger::contracts::Category;

use crate::error::{Error, Result};

/// The columns of ICD-10 codes, classified per value rather than per column.
pub const DEFAULT_CODE_COLUMNS: &[&str] = &["icd10_primary"];

const DEFAULTS: &[(&str, Category)] = &[
    ("patient_id", Category::Identifiers),
    ("full_name", Category::Identifiers),
    ("national_id", Category::Identifiers),
    ("phone", Category::Identifiers),
    ("email", Category::Identifiers),
    ("street_address", Category::Identifiers),
    ("visit_id", Category::Identifiers),
    ("date_of_birth", Category::Demographics),
    ("gender", Category::Demographics),
    ("visit_date", Category::Demographics),
    ("facility_id", Category::Demographics),
    ("systolic_bp", Category::Vitals),
    ("diastolic_bp", Category::Vitals),
    ("heart_rate", Category::Vitals),
    ("bmi", Category::Vitals),
    ("hypertension", Category::Cardiology),
    ("heart_disease", Category::Cardiology),
    ("atrial_fibrillation", Category::Cardiology),
    ("cholesterol", Category::Cardiology),
    ("dizziness", Category::Neurology),
    ("headache", Category::Neurology),
    ("numbness", Category::Neurology),
    ("slurred_speech", Category::Neurology),
    ("vision_problems", Category::Neurology),
    ("avg_glucose", Category::Metabolic),
    ("diabetes", Category::Metabolic),
    ("smoking_status", Category::Diagnoses),
    ("stroke", Category::Diagnoses),
    ("clinical_notes", Category::Notes),
];

/// The category of an ICD-10 code, by chapter: circulatory (I00–I99) is cardiology except
/// cerebrovascular disease (I60–I69, stroke), which is neurology with the nervous system
/// (G00–G99); endocrine and metabolic (E00–E89) is metabolic; everything else is diagnoses.
pub fn icd10_category(code: &str) -> Category {
    let code = code.trim().to_ascii_uppercase();
    let mut chars = code.chars();
    let (Some(letter), Some(d1), Some(d2)) = (chars.next(), chars.next(), chars.next()) else {
        return Category::Diagnoses;
    };
    let (Some(a), Some(b)) = (d1.to_digit(10), d2.to_digit(10)) else {
        return Category::Diagnoses;
    };
    let n = a * 10 + b;
    match letter {
        'I' if (60..=69).contains(&n) => Category::Neurology,
        'I' => Category::Cardiology,
        'G' => Category::Neurology,
        'E' if n <= 89 => Category::Metabolic,
        _ => Category::Diagnoses,
    }
}

/// The mapping a store classifies fields with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CategoryMap {
    columns: BTreeMap<String, Category>,
    codes: Vec<String>,
}

impl Default for CategoryMap {
    fn default() -> Self {
        Self {
            columns: DEFAULTS
                .iter()
                .map(|(c, cat)| ((*c).to_string(), *cat))
                .collect(),
            codes: DEFAULT_CODE_COLUMNS.iter().map(|c| c.to_string()).collect(),
        }
    }
}

impl CategoryMap {
    /// The default mapping changed by a job's `[records.categories]` (column → category name,
    /// or `icd10` for a column of ICD-10 codes).
    pub fn with_overrides(overrides: &BTreeMap<String, String>) -> Result<Self> {
        let mut map = Self::default();
        for (column, name) in overrides {
            if name == "icd10" {
                map.columns.remove(column);
                if !map.codes.contains(column) {
                    map.codes.push(column.clone());
                }
                continue;
            }
            let category: Category = name.parse().map_err(|e: ledger::Error| {
                Error::Invalid(format!("[records.categories] {column}: {e} (or icd10)"))
            })?;
            map.codes.retain(|c| c != column);
            map.columns.insert(column.clone(), category);
        }
        Ok(map)
    }

    /// A mapping back from [`CategoryMap::describe`].
    pub fn from_described(described: &BTreeMap<String, String>) -> Result<Self> {
        let mut map = Self {
            columns: BTreeMap::new(),
            codes: Vec::new(),
        };
        for (column, name) in described {
            if name == "icd10" {
                map.codes.push(column.clone());
            } else {
                let category: Category = name.parse().map_err(|e: ledger::Error| {
                    Error::Corrupt(format!("the store's category of {column}: {e}"))
                })?;
                map.columns.insert(column.clone(), category);
            }
        }
        Ok(map)
    }

    /// The category of `value` in `column`.
    pub fn classify(&self, column: &str, value: Option<&str>) -> Category {
        if self.codes.iter().any(|c| c == column) {
            return value.map_or(Category::Diagnoses, icd10_category);
        }
        self.columns
            .get(column)
            .copied()
            .unwrap_or(Category::Diagnoses)
    }

    /// The mapping as `column = category` lines, for `records import --json` and the store's
    /// metadata.
    pub fn describe(&self) -> BTreeMap<String, String> {
        let mut out: BTreeMap<String, String> = self
            .columns
            .iter()
            .map(|(c, cat)| (c.clone(), cat.to_string()))
            .collect();
        for c in &self.codes {
            out.insert(c.clone(), "icd10".to_string());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn icd10_chapters() {
        assert_eq!(icd10_category("I63.9"), Category::Neurology);
        assert_eq!(icd10_category("I60"), Category::Neurology);
        assert_eq!(icd10_category("I69.3"), Category::Neurology);
        assert_eq!(icd10_category("I10"), Category::Cardiology);
        assert_eq!(icd10_category("I48.91"), Category::Cardiology);
        assert_eq!(icd10_category("g43.909"), Category::Neurology);
        assert_eq!(icd10_category("E11.9"), Category::Metabolic);
        assert_eq!(icd10_category("E90"), Category::Diagnoses);
        assert_eq!(icd10_category("J45"), Category::Diagnoses);
        assert_eq!(icd10_category("Z"), Category::Diagnoses);
        assert_eq!(icd10_category(""), Category::Diagnoses);
    }

    #[test]
    fn overrides_replace_columns_and_name_the_bad_one() {
        let mut o = BTreeMap::new();
        o.insert("bmi".to_string(), "metabolic".to_string());
        o.insert("other_code".to_string(), "icd10".to_string());
        let m = CategoryMap::with_overrides(&o).expect("valid");
        assert_eq!(m.classify("bmi", Some("31.0")), Category::Metabolic);
        assert_eq!(m.classify("other_code", Some("I21")), Category::Cardiology);
        assert_eq!(m.classify("unknown", None), Category::Diagnoses);
        o.insert("heart_rate".to_string(), "cardio".to_string());
        let err = CategoryMap::with_overrides(&o).expect_err("unknown category");
        assert!(err.to_string().contains("heart_rate"), "{err}");
        assert!(err.to_string().contains("cardio"), "{err}");
    }
}
