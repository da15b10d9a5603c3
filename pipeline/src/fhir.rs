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
}

/// The measured visit columns and their LOINC codes.
pub const MEASURES: &[Measure] = &[
    Measure {
        column: "systolic_bp",
        code: "8480-6",
        display: "Systolic blood pressure",
        unit: "mm[Hg]",
        category: "vital-signs",
    },
    Measure {
        column: "diastolic_bp",
        code: "8462-4",
        display: "Diastolic blood pressure",
        unit: "mm[Hg]",
        category: "vital-signs",
    },
    Measure {
        column: "heart_rate",
        code: "8867-4",
        display: "Heart rate",
        unit: "/min",
        category: "vital-signs",
    },
    Measure {
        column: "bmi",
        code: "39156-5",
        display: "Body mass index (BMI) [Ratio]",
        unit: "kg/m2",
        category: "vital-signs",
    },
    Measure {
        column: "avg_glucose",
        code: "2339-0",
        display: "Glucose [Mass/volume] in Blood",
        unit: "mg/dL",
        category: "laboratory",
    },
    Measure {
        column: "cholesterol",
        code: "2093-3",
        display: "Cholesterol [Mass/volume] in Serum or Plasma",
        unit: "mg/dL",
        category: "laboratory",
    },
];

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
