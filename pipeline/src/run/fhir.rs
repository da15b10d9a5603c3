//! FHIR Bulk Data inputs: an export (its directory, or its `manifest.json`) read with the
//! engine's NDJSON reader and flattened by plan operations (unnest, and a pivot of coded
//! resources by code), so it runs embedded and on cluster executors alike. A job names which of
//! the export's two tables an input is (`table = "patients"` or `"visits"`), so the join and
//! everything after it are the same as for CSV:
//!
//! - `patients`: one row per `Patient` (id, name, national id, phone, email, address, birth date,
//!   gender as `F`/`M`), in the generator's column names;
//! - `visits`: one row per `Encounter` (id, patient, date, facility, primary ICD-10 code), the
//!   `Observation` values by the LOINC codes of [`crate::fhir::MEASURES`] (only values in the
//!   map's UCUM unit), smoking status from its SNOMED CT code, 1/0 for each condition of
//!   [`crate::fhir::FLAGS`], and the note of its `DocumentReference`.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Fields, Schema};
use datafusion::prelude::{DataFrame, JsonReadOptions, SessionContext};

use crate::error::{Error, Result};
use crate::fhir::{FLAGS, MEASURES, RESOURCE_TYPES, SMOKING_CODE, SMOKING_VALUES};
use crate::job::FhirTable;
use crate::store::Location;

/// The first line of `bytes` (the file `name` of an export, gzipped or not) that is not one
/// JSON object of the file's resource type: its 1-based number and what is wrong, naming no
/// value. `None` when every line is one.
pub(super) fn check_lines(name: &str, bytes: &[u8]) -> Option<(u64, String)> {
    let stem = name.trim_end_matches(".gz").trim_end_matches(".ndjson");
    let plain;
    let bytes = if name.ends_with(".gz") {
        let mut out = Vec::new();
        let mut reader = flate2::read::MultiGzDecoder::new(bytes);
        if let Err(e) = std::io::Read::read_to_end(&mut reader, &mut out) {
            return Some((1, format!("not a gzip stream: {e}")));
        }
        plain = out;
        &plain[..]
    } else {
        bytes
    };
    #[derive(serde::Deserialize)]
    struct Head {
        #[serde(rename = "resourceType")]
        resource_type: Option<String>,
    }
    for (i, line) in bytes.split(|b| *b == b'\n').enumerate() {
        let line_no = i as u64 + 1;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<Head>(line) {
            Err(e) => {
                return Some((
                    line_no,
                    format!("not a JSON resource (column {}: {})", e.column(), kind(&e)),
                ));
            }
            Ok(Head {
                resource_type: None,
            }) => return Some((line_no, "a resource without resourceType".into())),
            Ok(Head {
                resource_type: Some(t),
            }) if t != stem => {
                let t = if RESOURCE_TYPES.contains(&t.as_str()) {
                    t
                } else {
                    "another type".to_string()
                };
                return Some((line_no, format!("a {t} resource in the {stem} file")));
            }
            Ok(_) => {}
        }
    }
    None
}

/// What kind of JSON error, without the text around it.
fn kind(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Io => "unreadable",
        serde_json::error::Category::Syntax => "malformed JSON",
        serde_json::error::Category::Data => "not an object",
        serde_json::error::Category::Eof => "the line ends inside a value",
    }
}

/// The export's files: `{Type}.ndjson` or `{Type}.ndjson.gz` in `dir`.
fn file_of(dir: &Location, files: &[(object_store::path::Path, u64)], t: &str) -> Option<String> {
    files
        .iter()
        .find(|(p, _)| {
            p.filename()
                .is_some_and(|f| f == format!("{t}.ndjson") || f == format!("{t}.ndjson.gz"))
        })
        .map(|(p, _)| dir.url_of(p))
}

fn text(name: &str) -> Field {
    Field::new(name, DataType::Utf8, true)
}

fn strukt(name: &str, fields: Vec<Field>) -> Field {
    Field::new(name, DataType::Struct(Fields::from(fields)), true)
}

fn list(name: &str, item: DataType) -> Field {
    Field::new(
        name,
        DataType::List(Arc::new(Field::new("item", item, true))),
        true,
    )
}

fn struct_of(fields: Vec<Field>) -> DataType {
    DataType::Struct(Fields::from(fields))
}

/// `coding` lists: `[{system, code}]`.
fn coding() -> DataType {
    struct_of(vec![list(
        "coding",
        struct_of(vec![text("system"), text("code")]),
    )])
}

fn reference(name: &str) -> Field {
    strukt(name, vec![text("reference")])
}

/// Registers the resource type `t` of the export as table `table`, read with `schema` (fields
/// it does not name are ignored).
async fn register(
    ctx: &SessionContext,
    input: &str,
    dir: &Location,
    files: &[(object_store::path::Path, u64)],
    t: &str,
    table: &str,
    schema: Schema,
) -> Result<()> {
    let url = file_of(dir, files, t).ok_or_else(|| Error::InputMissing {
        input: input.to_string(),
        location: format!("{}/{t}.ndjson", dir.raw.trim_end_matches('/')),
    })?;
    let gz = url.ends_with(".gz");
    let mut options = JsonReadOptions::default()
        .schema(&schema)
        .file_extension(if gz { ".ndjson.gz" } else { ".ndjson" });
    if gz {
        options = options.file_compression_type(
            datafusion::datasource::file_format::file_compression_type::FileCompressionType::GZIP,
        );
    }
    let df = ctx.read_json(url, options).await?;
    ctx.register_table(table, df.into_view())?;
    Ok(())
}

/// The `table` of the export at `dir` (with its `files`), for input `input` registered as
/// `prefix`.
pub(super) async fn read(
    ctx: &SessionContext,
    input: &str,
    dir: &Location,
    files: &[(object_store::path::Path, u64)],
    table: FhirTable,
    prefix: &str,
) -> Result<DataFrame> {
    match table {
        FhirTable::Patients => patients(ctx, input, dir, files, prefix).await,
        FhirTable::Visits => visits(ctx, input, dir, files, prefix).await,
    }
}

async fn patients(
    ctx: &SessionContext,
    input: &str,
    dir: &Location,
    files: &[(object_store::path::Path, u64)],
    prefix: &str,
) -> Result<DataFrame> {
    let schema = Schema::new(vec![
        text("resourceType"),
        text("id"),
        list("identifier", struct_of(vec![text("system"), text("value")])),
        list("name", struct_of(vec![text("text")])),
        list("telecom", struct_of(vec![text("system"), text("value")])),
        text("gender"),
        text("birthDate"),
        list("address", struct_of(vec![text("text")])),
    ]);
    let p = format!("{prefix}_patient");
    register(ctx, input, dir, files, "Patient", &p, schema).await?;
    let sql = format!(
        r#"WITH ids AS (SELECT id, unnest(identifier) AS i FROM {p}),
        tel AS (SELECT id, unnest(telecom) AS t FROM {p}),
        nid AS (SELECT id, max(CASE WHEN i['system'] = '{nat}' THEN i['value'] END) AS national_id
                FROM ids GROUP BY id),
        contact AS (SELECT id,
                max(CASE WHEN t['system'] = 'phone' THEN t['value'] END) AS phone,
                max(CASE WHEN t['system'] = 'email' THEN t['value'] END) AS email
                FROM tel GROUP BY id)
        SELECT p.id AS patient_id, p.name[1]['text'] AS full_name, nid.national_id,
            contact.phone, contact.email, p.address[1]['text'] AS street_address,
            CAST(p."birthDate" AS DATE) AS date_of_birth,
            CASE p.gender WHEN 'female' THEN 'F' WHEN 'male' THEN 'M' END AS gender
        FROM {p} p LEFT JOIN nid ON nid.id = p.id LEFT JOIN contact ON contact.id = p.id"#,
        nat = crate::fhir::NATIONAL_ID_SYSTEM,
    );
    Ok(ctx.sql(&sql).await?)
}

async fn visits(
    ctx: &SessionContext,
    input: &str,
    dir: &Location,
    files: &[(object_store::path::Path, u64)],
    prefix: &str,
) -> Result<DataFrame> {
    let (e, o, c, d) = (
        format!("{prefix}_encounter"),
        format!("{prefix}_observation"),
        format!("{prefix}_condition"),
        format!("{prefix}_document"),
    );
    let encounter = Schema::new(vec![
        text("id"),
        reference("subject"),
        strukt("period", vec![text("start")]),
        list("reasonCode", coding()),
        strukt(
            "serviceProvider",
            vec![strukt("identifier", vec![text("value")])],
        ),
    ]);
    register(ctx, input, dir, files, "Encounter", &e, encounter).await?;
    let observation = Schema::new(vec![
        reference("encounter"),
        Field::new("code", coding(), true),
        strukt(
            "valueQuantity",
            vec![Field::new("value", DataType::Float64, true), text("code")],
        ),
        Field::new("valueCodeableConcept", coding(), true),
    ]);
    register(ctx, input, dir, files, "Observation", &o, observation).await?;
    let condition = Schema::new(vec![
        reference("encounter"),
        Field::new("code", coding(), true),
    ]);
    register(ctx, input, dir, files, "Condition", &c, condition).await?;
    let document = Schema::new(vec![
        strukt(
            "context",
            vec![list("encounter", struct_of(vec![text("reference")]))],
        ),
        list(
            "content",
            struct_of(vec![strukt("attachment", vec![text("data")])]),
        ),
    ]);
    register(ctx, input, dir, files, "DocumentReference", &d, document).await?;

    // Each column's expression; they are selected in the generator's column order and cast to
    // its types, so the dataset's features come as from its CSV tables.
    let mut column: std::collections::BTreeMap<&str, String> = [
        ("visit_id", "enc.vid".to_string()),
        ("patient_id", "enc.patient_id".to_string()),
        ("visit_date", "enc.visit_date".to_string()),
        ("facility_id", "enc.facility_id".to_string()),
        ("smoking_status", "o.smoking_status".to_string()),
        (
            crate::fhir::PRIMARY_DIAGNOSIS,
            "enc.primary_code".to_string(),
        ),
        ("clinical_notes", "notes.note".to_string()),
    ]
    .into_iter()
    .collect();
    // One column per LOINC code: the value when it is in the map's unit (else null).
    let mut pivot = Vec::new();
    for m in MEASURES {
        pivot.push(format!(
            "max(CASE WHEN code = '{}' AND unit = '{}' THEN value END) AS {}",
            m.code, m.unit, m.column
        ));
        column.insert(m.column, format!("o.{}", m.column));
    }
    let smoking = SMOKING_VALUES
        .iter()
        .map(|(value, code, _)| format!("WHEN '{code}' THEN '{value}'"))
        .collect::<Vec<_>>()
        .join(" ");
    pivot.push(format!(
        "max(CASE WHEN code = '{SMOKING_CODE}' THEN CASE answer {smoking} END END) AS smoking_status"
    ));
    let flags: Vec<String> = FLAGS
        .iter()
        .map(|f| {
            format!(
                "max(CASE WHEN code = '{}' THEN 1 ELSE 0 END) AS {}",
                f.code, f.column
            )
        })
        .collect();
    for f in FLAGS {
        column.insert(f.column, format!("coalesce(f.{}, 0)", f.column));
    }
    let select = crate::generate::visits_schema()
        .fields()
        .iter()
        .map(|field| {
            column
                .get(field.name().as_str())
                .map(|e| match field.data_type() {
                    DataType::Int64 => format!("CAST({e} AS BIGINT) AS {}", field.name()),
                    DataType::Float64 => format!("CAST({e} AS DOUBLE) AS {}", field.name()),
                    DataType::Date32 => format!("CAST({e} AS DATE) AS {}", field.name()),
                    _ => format!("{e} AS {}", field.name()),
                })
                .ok_or_else(|| {
                    Error::invalid(
                        "fhir",
                        format!("no FHIR mapping of column {}", field.name()),
                    )
                })
        })
        .collect::<Result<Vec<_>>>()?;
    let sql = format!(
        r#"WITH enc AS (SELECT id AS vid, substr(subject['reference'], 9) AS patient_id,
                period['start'] AS visit_date,
                "serviceProvider"['identifier']['value'] AS facility_id,
                "reasonCode"[1]['coding'][1]['code'] AS primary_code FROM {e}),
        obs AS (SELECT substr(encounter['reference'], 11) AS vid,
                code['coding'][1]['code'] AS code, "valueQuantity"['value'] AS value,
                "valueQuantity"['code'] AS unit,
                "valueCodeableConcept"['coding'][1]['code'] AS answer FROM {o}),
        o AS (SELECT vid, {pivot} FROM obs GROUP BY vid),
        cond AS (SELECT substr(encounter['reference'], 11) AS vid,
                code['coding'][1]['code'] AS code FROM {c}),
        f AS (SELECT vid, {flags} FROM cond GROUP BY vid),
        notes AS (SELECT substr(context['encounter'][1]['reference'], 11) AS vid,
                CAST(decode(content[1]['attachment']['data'], 'base64') AS VARCHAR) AS note
                FROM {d})
        SELECT {select}
        FROM enc LEFT JOIN o ON o.vid = enc.vid LEFT JOIN f ON f.vid = enc.vid
            LEFT JOIN notes ON notes.vid = enc.vid"#,
        pivot = pivot.join(", "),
        flags = flags.join(", "),
        select = select.join(", "),
    );
    Ok(ctx.sql(&sql).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_that_are_not_resources_of_the_file_are_named_without_their_values() {
        let good =
            b"{\"resourceType\":\"Condition\",\"id\":\"a\"}\n\n{\"resourceType\":\"Condition\"}\n";
        assert_eq!(check_lines("Condition.ndjson", good), None);
        let broken =
            b"{\"resourceType\":\"Condition\"}\n{\"resourceType\":\"Condition\",\"id\":\"SECRET\n";
        let (line, message) = check_lines("Condition.ndjson", broken).expect("a problem");
        assert_eq!(line, 2);
        assert!(message.contains("not a JSON resource") && !message.contains("SECRET"));
        let wrong =
            b"{\"resourceType\":\"Condition\"}\n{\"resourceType\":\"Patient\",\"id\":\"P1\"}\n";
        assert_eq!(
            check_lines("Condition.ndjson", wrong),
            Some((2, "a Patient resource in the Condition file".into()))
        );
        let odd = b"{\"resourceType\":\"SECRET\"}\n";
        let (_, message) = check_lines("Condition.ndjson", odd).expect("a problem");
        assert!(!message.contains("SECRET"), "{message}");
        let mut zipped = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut zipped, wrong).expect("gzip");
        let zipped = zipped.finish().expect("gzip");
        assert_eq!(
            check_lines("Condition.ndjson.gz", &zipped).map(|p| p.0),
            Some(2)
        );
    }
}
