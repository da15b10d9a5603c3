//! The generated population as a FHIR R4 Bulk Data export: one NDJSON file per resource type
//! (`Patient`, `Encounter`, `Observation`, `Condition`, `DocumentReference`), one resource a
//! line, and the export manifest (`manifest.json`: `transactionTime`, `output`). The same rows
//! as the CSV output, coded by [`crate::fhir`]:
//!
//! - a patient is a `Patient` (the id as a `urn:emrflow:patient-id` identifier, the national id,
//!   the name split into given and family, phone and email, the address, birth date, gender);
//! - a visit is an `Encounter` (finished, ambulatory, its date as the period, the facility as the
//!   service provider's identifier, the primary ICD-10 code as its `reasonCode`);
//! - each measured value present is a LOINC-coded `Observation` (`valueQuantity` in the UCUM
//!   unit of [`crate::fhir::MEASURES`]); smoking status, when recorded, a social-history
//!   `Observation` with its SNOMED CT code;
//! - each yes/no column that is yes is an ICD-10-coded `Condition` of the encounter (history,
//!   symptoms, and the stroke label): a flag that is no has no resource;
//! - the clinical note, when there is one, a `DocumentReference` with the text as its
//!   attachment.
//!
//! Resources are written in the CSV's row order with their keys in a fixed order, so the same
//! seed gives byte-identical files; gzipped files have no timestamp in their header for the same
//! reason.

use std::fmt::Write as _;
use std::io::Write;
use std::path::Path;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Date32Type, Float64Type, Int64Type};
use base64::Engine as _;

use super::Out;
use crate::error::{Error, Result};
use crate::fhir::{
    CONDITION_CATEGORY, FACILITY_SYSTEM, FLAGS, ICD10, LOINC, MEASURES, NATIONAL_ID_SYSTEM,
    OBSERVATION_CATEGORY, PATIENT_ID_SYSTEM, PRIMARY_DIAGNOSIS, RESOURCE_TYPES, SMOKING_CODE,
    SMOKING_COLUMN, SMOKING_VALUES, SNOMED, UCUM,
};

/// The manifest's file name.
pub const MANIFEST: &str = "manifest.json";

/// An export being written.
pub(super) struct Export {
    files: Vec<Ndjson>,
    manifest: std::path::PathBuf,
    line: String,
}

struct Ndjson {
    name: String,
    path: String,
    out: Out,
    count: u64,
}

impl Export {
    /// Creates the five files in `dir` (`.ndjson`, or `.ndjson.gz` with `gzip`).
    pub(super) fn create(dir: &Path, gzip: bool) -> Result<Self> {
        let files = RESOURCE_TYPES
            .iter()
            .map(|t| {
                let name = format!("{t}.ndjson{}", if gzip { ".gz" } else { "" });
                let path = dir.join(&name);
                Ok(Ndjson {
                    out: Out::create(&path, gzip)?,
                    path: path.display().to_string(),
                    name,
                    count: 0,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            files,
            manifest: dir.join(MANIFEST),
            line: String::with_capacity(1024),
        })
    }

    /// The paths written, the manifest last.
    pub(super) fn paths(&self) -> Vec<String> {
        let mut out: Vec<String> = self.files.iter().map(|f| f.path.clone()).collect();
        out.push(self.manifest.display().to_string());
        out
    }

    /// Writes one chunk's patients and visits.
    pub(super) fn write(&mut self, patients: &RecordBatch, visits: &RecordBatch) -> Result<()> {
        let text = |b: &RecordBatch, name: &str| -> Result<arrow::array::StringArray> {
            column(b, name).map(|c| c.as_string::<i32>().clone())
        };
        let p_id = text(patients, "patient_id")?;
        let name = text(patients, "full_name")?;
        let national = text(patients, "national_id")?;
        let phone = text(patients, "phone")?;
        let email = text(patients, "email")?;
        let address = text(patients, "street_address")?;
        let gender = text(patients, "gender")?;
        let born = column(patients, "date_of_birth")?
            .as_primitive::<Date32Type>()
            .clone();
        for i in 0..patients.num_rows() {
            let (given, family) = name.value(i).split_once(' ').unwrap_or(("", name.value(i)));
            let l = &mut self.line;
            l.clear();
            let id = p_id.value(i);
            let _ = write!(
                l,
                r#"{{"resourceType":"Patient","id":{},"identifier":[{{"system":"{PATIENT_ID_SYSTEM}","value":{}}},{{"system":"{NATIONAL_ID_SYSTEM}","value":{}}}],"name":[{{"text":{},"family":{},"given":[{}]}}],"telecom":[{{"system":"phone","value":{},"use":"home"}},{{"system":"email","value":{}}}],"gender":"{}","birthDate":"{}","address":[{{"text":{}}}]}}"#,
                q(id),
                q(id),
                q(national.value(i)),
                q(name.value(i)),
                q(family),
                q(given),
                q(phone.value(i)),
                q(email.value(i)),
                if gender.value(i) == "F" {
                    "female"
                } else {
                    "male"
                },
                day(born.value(i)),
                q(address.value(i)),
            );
            self.emit(0)?;
        }

        let v_id = text(visits, "visit_id")?;
        let v_patient = text(visits, "patient_id")?;
        let facility = text(visits, "facility_id")?;
        let primary = text(visits, PRIMARY_DIAGNOSIS)?;
        let smoking = text(visits, SMOKING_COLUMN)?;
        let notes = text(visits, "clinical_notes")?;
        let date = column(visits, "visit_date")?
            .as_primitive::<Date32Type>()
            .clone();
        let measures = MEASURES
            .iter()
            .map(|m| column(visits, m.column).map(|c| (m, c.clone())))
            .collect::<Result<Vec<_>>>()?;
        let flags = FLAGS
            .iter()
            .map(|f| column(visits, f.column).map(|c| (f, c.as_primitive::<Int64Type>().clone())))
            .collect::<Result<Vec<_>>>()?;
        for i in 0..visits.num_rows() {
            let (id, patient, when) = (v_id.value(i), v_patient.value(i), day(date.value(i)));
            let subject = format!(r#""subject":{{"reference":"Patient/{}"}}"#, esc(patient));
            let encounter = format!(r#""encounter":{{"reference":"Encounter/{}"}}"#, esc(id));
            let l = &mut self.line;
            l.clear();
            let _ = write!(
                l,
                r#"{{"resourceType":"Encounter","id":{},"status":"finished","class":{{"system":"http://terminology.hl7.org/CodeSystem/v3-ActCode","code":"AMB","display":"ambulatory"}},{subject},"period":{{"start":"{when}","end":"{when}"}},"reasonCode":[{{"coding":[{{"system":"{ICD10}","code":{}}}]}}],"serviceProvider":{{"identifier":{{"system":"{FACILITY_SYSTEM}","value":{}}}}}}}"#,
                q(id),
                q(primary.value(i)),
                q(facility.value(i)),
            );
            self.emit(1)?;

            for (m, values) in &measures {
                if values.is_null(i) {
                    continue;
                }
                let value = match values.data_type() {
                    arrow::datatypes::DataType::Int64 => {
                        values.as_primitive::<Int64Type>().value(i).to_string()
                    }
                    _ => number(values.as_primitive::<Float64Type>().value(i)),
                };
                let l = &mut self.line;
                l.clear();
                let _ = write!(
                    l,
                    r#"{{"resourceType":"Observation","id":"{}-{}","status":"final","category":[{{"coding":[{{"system":"{OBSERVATION_CATEGORY}","code":"{}"}}]}}],"code":{{"coding":[{{"system":"{LOINC}","code":"{}","display":"{}"}}]}},{subject},{encounter},"effectiveDateTime":"{when}","valueQuantity":{{"value":{value},"unit":"{}","system":"{UCUM}","code":"{}"}}}}"#,
                    esc(id),
                    m.code,
                    m.category,
                    m.code,
                    m.display,
                    m.unit,
                    m.unit,
                );
                self.emit(2)?;
            }
            if !smoking.is_null(i) {
                let value = smoking.value(i);
                let (_, code, display) = SMOKING_VALUES
                    .iter()
                    .find(|(v, _, _)| *v == value)
                    .ok_or_else(|| {
                        Error::invalid("generate", format!("no SNOMED code for {value:?}"))
                    })?;
                let l = &mut self.line;
                l.clear();
                let _ = write!(
                    l,
                    r#"{{"resourceType":"Observation","id":"{}-{SMOKING_CODE}","status":"final","category":[{{"coding":[{{"system":"{OBSERVATION_CATEGORY}","code":"social-history"}}]}}],"code":{{"coding":[{{"system":"{LOINC}","code":"{SMOKING_CODE}","display":"Tobacco smoking status"}}]}},{subject},{encounter},"effectiveDateTime":"{when}","valueCodeableConcept":{{"coding":[{{"system":"{SNOMED}","code":"{code}","display":"{display}"}}],"text":{}}}}}"#,
                    esc(id),
                    q(value),
                );
                self.emit(2)?;
            }
            for (f, values) in &flags {
                if values.value(i) != 1 {
                    continue;
                }
                let l = &mut self.line;
                l.clear();
                let _ = write!(
                    l,
                    r#"{{"resourceType":"Condition","id":"{}-{}","clinicalStatus":{{"coding":[{{"system":"http://terminology.hl7.org/CodeSystem/condition-clinical","code":"active"}}]}},"category":[{{"coding":[{{"system":"{CONDITION_CATEGORY}","code":"encounter-diagnosis"}}]}}],"code":{{"coding":[{{"system":"{ICD10}","code":"{}","display":"{}"}}]}},{subject},{encounter},"recordedDate":"{when}"}}"#,
                    esc(id),
                    f.code.replace('.', ""),
                    f.code,
                    f.display,
                );
                self.emit(3)?;
            }
            if !notes.is_null(i) {
                let data = base64::engine::general_purpose::STANDARD.encode(notes.value(i));
                let l = &mut self.line;
                l.clear();
                let _ = write!(
                    l,
                    r#"{{"resourceType":"DocumentReference","id":"{}-note","status":"current","type":{{"coding":[{{"system":"{LOINC}","code":"11506-3","display":"Progress note"}}]}},{subject},"context":{{"encounter":[{{"reference":"Encounter/{}"}}],"period":{{"start":"{when}"}}}},"content":[{{"attachment":{{"contentType":"text/plain; charset=utf-8","data":"{data}"}}}}]}}"#,
                    esc(id),
                    esc(id),
                );
                self.emit(4)?;
            }
        }
        Ok(())
    }

    /// Writes the line built as a resource of type `RESOURCE_TYPES[t]`.
    fn emit(&mut self, t: usize) -> Result<()> {
        let file = &mut self.files[t];
        self.line.push('\n');
        file.out
            .write_all(self.line.as_bytes())
            .map_err(|e| Error::io(&file.path, e))?;
        file.count += 1;
        Ok(())
    }

    /// Closes every file (durably) and writes the manifest, dated at the end of the visits'
    /// span so that it is the same for the same seed.
    pub(super) fn finish(self, request: &str, transaction_day: i32) -> Result<()> {
        let mut output = Vec::new();
        for (t, f) in RESOURCE_TYPES.iter().zip(self.files) {
            output.push(serde_json::json!({"type": t, "url": f.name, "count": f.count}));
            f.out.close(&f.path)?;
        }
        let manifest = serde_json::json!({
            "transactionTime": format!("{}T00:00:00Z", day(transaction_day)),
            "request": request,
            "requiresAccessToken": false,
            "output": output,
            "error": [],
        });
        let path = self.manifest.display().to_string();
        let bytes = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| Error::invalid("generate", format!("the manifest: {e}")))?;
        std::fs::write(&self.manifest, bytes).map_err(|e| Error::io(&path, e))
    }
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a arrow::array::ArrayRef> {
    batch
        .column_by_name(name)
        .ok_or_else(|| Error::invalid("generate", format!("no column {name}")))
}

/// A day (days since 1970-01-01) as `YYYY-MM-DD`.
fn day(days: i32) -> String {
    chrono::DateTime::from_timestamp(i64::from(days) * 86_400, 0)
        .map_or_else(|| days.to_string(), |d| d.format("%Y-%m-%d").to_string())
}

/// A finite float as the shortest decimal that reads back as the same number.
fn number(x: f64) -> String {
    if x.is_finite() {
        format!("{x}")
    } else {
        "null".to_string()
    }
}

/// `text` as a JSON string.
fn q(text: &str) -> String {
    format!("\"{}\"", esc(text))
}

/// `text` escaped for the inside of a JSON string.
fn esc(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped_as_json() {
        assert_eq!(q("plain"), "\"plain\"");
        let text = "say \"hi\"\\\n\tnow\u{1}";
        let parsed: String = serde_json::from_str(&q(text)).unwrap_or_default();
        assert_eq!(parsed, text);
        assert_eq!(number(27.0), "27");
        assert_eq!(number(27.3), "27.3");
        assert_eq!(day(0), "1970-01-01");
    }
}
