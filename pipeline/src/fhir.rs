//! The FHIR vocabulary of the generator's schema: which LOINC code measures which visit column
//! (with its UCUM unit and observation category), which ICD-10 condition a yes/no column
//! records, how smoking status is coded, and the identifier systems. One table, used by the FHIR
//! Bulk Data export the generator writes, by the server's FHIR-shaped reads, and by anything
//! that maps FHIR back to the schema's columns.

/// LOINC.
pub const LOINC: &str = "http://loinc.org";
/// ICD-10.
pub const ICD10: &str = "http://hl7.org/fhir/sid/icd-10";
/// SNOMED CT.
pub const SNOMED: &str = "http://snomed.info/sct";
/// UCUM units.
pub const UCUM: &str = "http://unitsofmeasure.org";
/// FHIR observation categories.
pub const OBSERVATION_CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/observation-category";
/// FHIR condition categories.
pub const CONDITION_CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/condition-category";
/// The identifier system of the hospital's patient ids (the medical record number).
pub const PATIENT_ID_SYSTEM: &str = "urn:emrflow:patient-id";
/// The identifier system of national identification numbers.
pub const NATIONAL_ID_SYSTEM: &str = "http://hl7.org/fhir/sid/us-ssn";
/// The identifier system of facilities.
pub const FACILITY_SYSTEM: &str = "urn:emrflow:facility";

/// The resource types of an export of the generator's schema, in the order of its manifest.
pub const RESOURCE_TYPES: [&str; 5] = [
    "Patient",
    "Encounter",
    "Observation",
    "Condition",
    "DocumentReference",
];

/// One LOINC-coded measurement.
#[derive(Debug, Clone, Copy)]
pub struct Measure {
    /// The visit column.
    pub column: &'static str,
    /// Its LOINC code.
    pub code: &'static str,
    /// The code's display.
    pub display: &'static str,
    /// The UCUM unit values are in.
    pub unit: &'static str,
    /// The FHIR observation category.
    pub category: &'static str,
    /// The analyte's molar mass in g/mol, for a laboratory value reported in moles per volume
    /// (`mmol/L` into `mg/dL`); `None` where moles do not apply.
    pub molar_mass: Option<f64>,
}

/// The measured visit columns and their LOINC codes.
pub const MEASURES: &[Measure] = &[
    Measure {
        column: "systolic_bp",
        code: "8480-6",
        display: "Systolic blood pressure",
        unit: "mm[Hg]",
        category: "vital-signs",
        molar_mass: None,
    },
    Measure {
        column: "diastolic_bp",
        code: "8462-4",
        display: "Diastolic blood pressure",
        unit: "mm[Hg]",
        category: "vital-signs",
        molar_mass: None,
    },
    Measure {
        column: "heart_rate",
        code: "8867-4",
        display: "Heart rate",
        unit: "/min",
        category: "vital-signs",
        molar_mass: None,
    },
    Measure {
        column: "bmi",
        code: "39156-5",
        display: "Body mass index (BMI) [Ratio]",
        unit: "kg/m2",
        category: "vital-signs",
        molar_mass: None,
    },
    Measure {
        column: "avg_glucose",
        code: "2339-0",
        display: "Glucose [Mass/volume] in Blood",
        unit: "mg/dL",
        category: "laboratory",
        molar_mass: Some(180.156),
    },
    Measure {
        column: "cholesterol",
        code: "2093-3",
        display: "Cholesterol [Mass/volume] in Serum or Plasma",
        unit: "mg/dL",
        category: "laboratory",
        molar_mass: Some(386.654),
    },
];

/// A rule converting values in one UCUM unit into another: `value × factor`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Conversion {
    /// The unit values arrive in.
    pub from: &'static str,
    /// The unit they are converted into.
    pub to: &'static str,
    /// The factor.
    pub factor: f64,
}

/// The unit conversions exports need for the measures of a visit, by UCUM code. Conversions
/// between mass and moles depend on the analyte and come from [`Measure::molar_mass`] instead
/// (see [`conversions_into`]).
pub const CONVERSIONS: &[Conversion] = &[
    Conversion {
        from: "kPa",
        to: "mm[Hg]",
        factor: 7.500_615_758,
    },
    Conversion {
        from: "{beats}/min",
        to: "/min",
        factor: 1.0,
    },
    Conversion {
        from: "1/min",
        to: "/min",
        factor: 1.0,
    },
    Conversion {
        from: "[lb_av]/[in_i]2",
        to: "kg/m2",
        factor: 703.069_58,
    },
    Conversion {
        from: "g/L",
        to: "mg/dL",
        factor: 100.0,
    },
    Conversion {
        from: "mg/L",
        to: "mg/dL",
        factor: 0.1,
    },
    Conversion {
        from: "g/dL",
        to: "mg/dL",
        factor: 1000.0,
    },
];

/// Every unit a value of a measure in `unit` may arrive in, with the factor that brings it into
/// `unit`: the unit itself (factor 1), the rules of [`CONVERSIONS`] into it, and, for a mass
/// concentration with a `molar_mass`, the molar concentrations (`mmol/L`, `umol/L`).
pub fn conversions_into(unit: &str, molar_mass: Option<f64>) -> Vec<(String, f64)> {
    let mut out = vec![(unit.to_string(), 1.0)];
    out.extend(
        CONVERSIONS
            .iter()
            .filter(|c| c.to == unit)
            .map(|c| (c.from.to_string(), c.factor)),
    );
    if let Some(mass) = molar_mass {
        // mmol/L × g/mol = mg/L, and a decilitre is a tenth of a litre.
        let per_mg_dl = match unit {
            "mg/dL" => Some(mass / 10.0),
            "g/L" => Some(mass / 1000.0),
            "mg/L" => Some(mass),
            _ => None,
        };
        if let Some(f) = per_mg_dl {
            out.push(("mmol/L".to_string(), f));
            out.push(("umol/L".to_string(), f / 1000.0));
        }
    }
    out
}

/// A yes/no visit column recorded as an ICD-10-coded condition of the encounter when yes.
#[derive(Debug, Clone, Copy)]
pub struct Flag {
    /// The visit column (1 when the condition is recorded, 0 when not).
    pub column: &'static str,
    /// Its ICD-10 code.
    pub code: &'static str,
    /// The code's display.
    pub display: &'static str,
}

/// The yes/no visit columns: history, the label (stroke), and the presenting symptoms.
pub const FLAGS: &[Flag] = &[
    Flag {
        column: "hypertension",
        code: "I10",
        display: "Essential (primary) hypertension",
    },
    Flag {
        column: "heart_disease",
        code: "I51.9",
        display: "Heart disease, unspecified",
    },
    Flag {
        column: "atrial_fibrillation",
        code: "I48.91",
        display: "Unspecified atrial fibrillation",
    },
    Flag {
        column: "diabetes",
        code: "E11.9",
        display: "Type 2 diabetes mellitus without complications",
    },
    Flag {
        column: "stroke",
        code: "I63.9",
        display: "Cerebral infarction, unspecified",
    },
    Flag {
        column: "dizziness",
        code: "R42",
        display: "Dizziness and giddiness",
    },
    Flag {
        column: "headache",
        code: "R51.9",
        display: "Headache, unspecified",
    },
    Flag {
        column: "numbness",
        code: "R20.0",
        display: "Anesthesia of skin",
    },
    Flag {
        column: "slurred_speech",
        code: "R47.81",
        display: "Slurred speech",
    },
    Flag {
        column: "vision_problems",
        code: "H53.9",
        display: "Unspecified visual disturbance",
    },
];

/// The visit column of the primary diagnosis (`Encounter.reasonCode`, ICD-10).
pub const PRIMARY_DIAGNOSIS: &str = "icd10_primary";

/// Smoking status: the LOINC code of the observation, and each value's SNOMED CT code.
pub const SMOKING_COLUMN: &str = "smoking_status";
/// LOINC "Tobacco smoking status".
pub const SMOKING_CODE: &str = "72166-2";
/// The column's values and their SNOMED CT codes and displays.
pub const SMOKING_VALUES: &[(&str, &str, &str)] = &[
    ("never smoked", "266919005", "Never smoked tobacco"),
    ("formerly smoked", "8517006", "Ex-smoker"),
    ("smokes", "77176002", "Smoker"),
    (
        "unknown",
        "266927001",
        "Tobacco smoking consumption unknown",
    ),
];

/// A measured visit column as a job reads it from an export: the vocabulary's measure, or the
/// job's `loinc` entry for it.
#[derive(Debug, Clone, PartialEq)]
pub struct MeasureMap {
    /// The visit column.
    pub column: String,
    /// Its LOINC code.
    pub code: String,
    /// The UCUM unit of the column.
    pub unit: String,
    /// Every unit a value is accepted in, with its factor into `unit` (`unit` itself first).
    pub units: Vec<(String, f64)>,
    /// Whether the job added the column (it then follows the generator's columns).
    pub added: bool,
}

/// The measures of [`MEASURES`] with the job's `loinc` entries (`field` names the section in
/// errors): an entry for a measured column replaces its code (and unit, and molar mass), any
/// other entry adds a column. Codes, units and names are checked, since they are compared in
/// the plan.
pub fn measures_with(
    map: &std::collections::BTreeMap<String, crate::job::LoincMeasure>,
    field: &str,
) -> crate::error::Result<Vec<MeasureMap>> {
    use crate::error::Error;
    let mut out: Vec<MeasureMap> = MEASURES
        .iter()
        .map(|m| MeasureMap {
            column: m.column.to_string(),
            code: m.code.to_string(),
            unit: m.unit.to_string(),
            units: conversions_into(m.unit, m.molar_mass),
            added: false,
        })
        .collect();
    let schema = crate::generate::visits_schema();
    for (column, entry) in map {
        let at = format!("{field}.{column}");
        let name_ok = column
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
            && column
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !name_ok || column.starts_with("__") {
            return Err(Error::invalid(
                at,
                "a column name is lowercase letters, digits and underscores",
            ));
        }
        if entry.code.is_empty()
            || !entry
                .code
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        {
            return Err(Error::invalid(
                format!("{at}.code"),
                "a LOINC code is letters, digits, '-' and '.'",
            ));
        }
        if let Some(unit) = &entry.unit
            && (unit.is_empty() || !unit.chars().all(|c| c.is_ascii_graphic() && c != '\''))
        {
            return Err(Error::invalid(
                format!("{at}.unit"),
                "a UCUM unit is printable ASCII without quotes",
            ));
        }
        if let Some(mass) = entry.molar_mass
            && !(mass.is_finite() && mass > 0.0)
        {
            return Err(Error::invalid(
                format!("{at}.molar_mass"),
                "must be a positive number of g/mol",
            ));
        }
        let known = MEASURES.iter().find(|m| m.column == column);
        if known.is_none() && schema.field_with_name(column).is_ok() {
            return Err(Error::invalid(
                at,
                format!("{column} is a visit column that no observation measures"),
            ));
        }
        let unit = match (&entry.unit, known) {
            (Some(u), _) => u.clone(),
            (None, Some(m)) => m.unit.to_string(),
            (None, None) => {
                return Err(Error::invalid(
                    format!("{at}.unit"),
                    "an added column names its UCUM unit",
                ));
            }
        };
        let molar_mass = entry.molar_mass.or(known.and_then(|m| m.molar_mass));
        let measure = MeasureMap {
            column: column.clone(),
            code: entry.code.clone(),
            units: conversions_into(&unit, molar_mass),
            unit,
            added: known.is_none(),
        };
        match out.iter_mut().find(|m| m.column == *column) {
            Some(m) => *m = measure,
            None => out.push(measure),
        }
    }
    for (i, m) in out.iter().enumerate() {
        if out[..i].iter().any(|o| o.code == m.code) || m.code == SMOKING_CODE {
            return Err(Error::invalid(
                format!("{field}.{}", m.column),
                format!("LOINC {} measures another column too", m.code),
            ));
        }
    }
    Ok(out)
}
