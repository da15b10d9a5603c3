//! FHIR Bulk Data inputs: an export (its directory, or its `manifest.json`) read with the
//! engine's NDJSON reader and flattened by plan operations (codings picked by system, and a
//! pivot of coded resources by code), so it runs embedded and on cluster executors alike. A job names which of
//! the export's two tables an input is (`table = "patients"` or `"visits"`), so the join and
//! everything after it are the same as for CSV:
//!
//! - `patients`: one row per `Patient` (id, name, national id, phone, email, address, birth date,
//!   gender as `F`/`M`), in the generator's column names;
//! - `visits`: one row per `Encounter` (id, patient, date, facility, primary ICD-10 code), the
//!   `Observation` values by the LOINC codes of [`crate::fhir::MEASURES`] and the job's `loinc`
//!   map (in the column's UCUM unit, or converted into it by a rule), smoking status from its SNOMED CT code, 1/0 for each condition of
//!   [`crate::fhir::FLAGS`], and the note of its `DocumentReference`.

use std::collections::HashSet;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Fields, Schema};
use datafusion::prelude::{DataFrame, JsonReadOptions, SessionContext};
use object_store::ObjectStoreExt;

use crate::error::{Error, Result};
use crate::fhir::{
    FLAGS, ICD10, LOINC, RESOURCE_TYPES, SMOKING_CODE, SMOKING_VALUES, SNOMED, UCUM,
};
use crate::functions::{FHIR_CHECK_FN as CHECK, FHIR_CODE_FN as CODE};
use crate::job::{FhirTable, InputConfig};
use crate::store::Location;

/// The first line of `bytes` (a file of `stem` resources, decompressed) that is not one JSON
/// object of the file's resource type: its 1-based number and what is wrong, naming no value.
/// `None` when every line is one.
fn check_lines(stem: &str, bytes: &[u8]) -> Option<(u64, String)> {
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

/// Checks the export's manifest (`raw`, in `dir` with its `files`): present, a Bulk Data
/// manifest, and every file its `output` lists present beside it (by file name: a manifest
/// names its files by the URLs they were served at).
pub(super) async fn check_manifest(
    input: &str,
    raw: &str,
    dir: &Location,
    files: &[(object_store::path::Path, u64)],
) -> Result<()> {
    let manifest_name = raw.rsplit('/').next().unwrap_or(raw);
    let missing = |location: String| Error::InputMissing {
        input: input.to_string(),
        location,
    };
    let Some((path, _)) = files
        .iter()
        .find(|(p, _)| p.filename() == Some(manifest_name))
    else {
        return Err(missing(raw.to_string()));
    };
    let bytes = dir
        .store
        .get(path)
        .await
        .map_err(|_| missing(raw.to_string()))?
        .bytes()
        .await
        .map_err(|_| missing(raw.to_string()))?;
    #[derive(serde::Deserialize)]
    struct Output {
        url: String,
    }
    #[derive(serde::Deserialize)]
    struct Manifest {
        output: Vec<Output>,
    }
    let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| {
        Error::invalid(
            format!("inputs.{input}.path"),
            format!(
                "{raw} is not a Bulk Data manifest (line {}: {})",
                e.line(),
                kind(&e)
            ),
        )
    })?;
    for output in &manifest.output {
        let name = output.url.rsplit('/').next().unwrap_or(&output.url);
        if !files.iter().any(|(p, _)| p.filename() == Some(name)) {
            return Err(missing(format!(
                "{}/{name} (listed in {manifest_name})",
                dir.raw.trim_end_matches('/')
            )));
        }
    }
    Ok(())
}

/// The `table` of the export at `dir` (with its `files`), for input `input` registered as
/// `prefix`.
pub(super) async fn read(
    ctx: &SessionContext,
    input: &str,
    cfg: &InputConfig,
    dir: &Location,
    files: &[(object_store::path::Path, u64)],
    table: FhirTable,
    prefix: &str,
) -> Result<DataFrame> {
    match table {
        FhirTable::Patients => patients(ctx, input, dir, files, prefix).await,
        FhirTable::Visits => visits(ctx, input, cfg, dir, files, prefix).await,
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
    // Identifiers and contact points are lists keyed by system: each is picked by its system in
    // place, so the file is read once (an unnest and a re-grouping per list would read it once
    // per list).
    let sql = format!(
        r#"SELECT id AS patient_id, name[1]['text'] AS full_name,
            {CODE}(identifier, '{nat}', 'value') AS national_id,
            {CODE}(telecom, 'phone', 'value') AS phone,
            {CODE}(telecom, 'email', 'value') AS email,
            address[1]['text'] AS street_address,
            CAST("birthDate" AS DATE) AS date_of_birth,
            CASE gender WHEN 'female' THEN 'F' WHEN 'male' THEN 'M' END AS gender
        FROM {p} WHERE {CHECK}("resourceType" = 'Patient', 'Patient')"#,
        nat = crate::fhir::NATIONAL_ID_SYSTEM,
    );
    Ok(ctx.sql(&sql).await?)
}

/// The prefix of the visits table's unit markers: `{prefix}{column}` is set on a visit with an
/// observation of that column in a unit no rule converts, and such a visit is dropped for it.
pub(super) const UNIT_MARKER: &str = "__emr_unit_";

/// The drop reason of a unit marker's visits.
pub(super) fn unit_reason(marker: &str) -> Option<String> {
    marker
        .strip_prefix(UNIT_MARKER)
        .map(|column| format!("unit: {column}"))
}

async fn visits(
    ctx: &SessionContext,
    input: &str,
    cfg: &InputConfig,
    dir: &Location,
    files: &[(object_store::path::Path, u64)],
    prefix: &str,
) -> Result<DataFrame> {
    let measures = crate::fhir::measures_with(&cfg.loinc, &format!("inputs.{input}.loinc"))?;
    let (e, o, c, d) = (
        format!("{prefix}_encounter"),
        format!("{prefix}_observation"),
        format!("{prefix}_condition"),
        format!("{prefix}_document"),
    );
    let encounter = Schema::new(vec![
        text("resourceType"),
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
        text("resourceType"),
        reference("encounter"),
        Field::new("code", coding(), true),
        strukt(
            "valueQuantity",
            vec![
                Field::new("value", DataType::Float64, true),
                text("system"),
                text("code"),
            ],
        ),
        Field::new("valueCodeableConcept", coding(), true),
    ]);
    register(ctx, input, dir, files, "Observation", &o, observation).await?;
    let condition = Schema::new(vec![
        text("resourceType"),
        reference("encounter"),
        Field::new("code", coding(), true),
    ]);
    register(ctx, input, dir, files, "Condition", &c, condition).await?;
    let document = Schema::new(vec![
        text("resourceType"),
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
    // its types, so the dataset's features come as from its CSV tables. Columns the job's map
    // adds follow, as numbers.
    let mut column: std::collections::BTreeMap<String, String> = [
        ("visit_id", "enc.vid"),
        ("patient_id", "enc.patient_id"),
        ("visit_date", "enc.visit_date"),
        ("facility_id", "enc.facility_id"),
        ("smoking_status", "o.smoking_status"),
        (crate::fhir::PRIMARY_DIAGNOSIS, "enc.primary_code"),
        ("clinical_notes", "notes.note"),
    ]
    .into_iter()
    .map(|(c, e)| (c.to_string(), e.to_string()))
    .collect();
    // One column per LOINC code: the value in the column's unit, or converted into it by the
    // unit's rule; beside it a marker of the visits with a value in a unit no rule converts.
    let mut pivot = Vec::new();
    let mut markers = Vec::new();
    for m in &measures {
        let units = m
            .units
            .iter()
            .map(|(unit, factor)| {
                if *factor == 1.0 {
                    format!("WHEN '{unit}' THEN value")
                } else {
                    format!("WHEN '{unit}' THEN value * {factor:?}")
                }
            })
            .collect::<Vec<_>>()
            .join(" ");
        let known = m
            .units
            .iter()
            .map(|(unit, _)| format!("'{unit}'"))
            .collect::<Vec<_>>()
            .join(", ");
        let marker = format!("{UNIT_MARKER}{}", m.column);
        pivot.push(format!(
            "max(CASE WHEN code = '{code}' THEN CASE unit {units} END END) AS {col}, \
             max(CASE WHEN code = '{code}' AND value IS NOT NULL \
                 AND (unit IS NULL OR unit NOT IN ({known})) THEN 1 END) AS {marker}",
            code = m.code,
            col = m.column,
        ));
        column.insert(m.column.clone(), format!("o.{}", m.column));
        markers.push(format!("o.{marker} AS {marker}"));
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
        column.insert(f.column.to_string(), format!("coalesce(f.{}, 0)", f.column));
    }
    let cast = |name: &str, t: &DataType, e: &str| match t {
        // A converted value of a whole-number measure is rounded to it, not truncated.
        DataType::Int64 if measures.iter().any(|m| m.column == name) => {
            format!("CAST(round({e}) AS BIGINT) AS {name}")
        }
        DataType::Int64 => format!("CAST({e} AS BIGINT) AS {name}"),
        DataType::Float64 => format!("CAST({e} AS DOUBLE) AS {name}"),
        DataType::Date32 => format!("CAST({e} AS DATE) AS {name}"),
        _ => format!("{e} AS {name}"),
    };
    let mut select = crate::generate::visits_schema()
        .fields()
        .iter()
        .map(|field| {
            column
                .get(field.name().as_str())
                .map(|e| cast(field.name(), field.data_type(), e))
                .ok_or_else(|| {
                    Error::invalid(
                        "fhir",
                        format!("no FHIR mapping of column {}", field.name()),
                    )
                })
        })
        .collect::<Result<Vec<_>>>()?;
    for m in measures.iter().filter(|m| m.added) {
        select.push(cast(&m.column, &DataType::Float64, &column[&m.column]));
    }
    select.extend(markers);
    // Each resource is checked where it is read (its type, its references' form, its codes'
    // systems), and the full joins keep resources whose encounter is not in the export so
    // that the last check sees them: a failed check stops the run, which then names the line.
    let sql = format!(
        r#"WITH enc AS (SELECT id AS vid, substr(subject['reference'], 9) AS patient_id,
                period['start'] AS visit_date,
                "serviceProvider"['identifier']['value'] AS facility_id,
                {CODE}("reasonCode"[1]['coding'], '{ICD10}') AS primary_code FROM {e}
            WHERE {CHECK}("resourceType" = 'Encounter'
                AND starts_with(subject['reference'], 'Patient/')
                AND ("reasonCode" IS NULL
                    OR {CODE}("reasonCode"[1]['coding'], '{ICD10}') IS NOT NULL), 'Encounter')),
        obs AS (SELECT substr(encounter['reference'], 11) AS vid,
                {CODE}(code['coding'], '{LOINC}') AS code, "valueQuantity"['value'] AS value,
                "valueQuantity"['code'] AS unit,
                {CODE}("valueCodeableConcept"['coding'], '{SNOMED}') AS answer FROM {o}
            WHERE {CHECK}("resourceType" = 'Observation'
                AND starts_with(encounter['reference'], 'Encounter/')
                AND {CODE}(code['coding'], '{LOINC}') IS NOT NULL
                AND ("valueQuantity" IS NULL OR "valueQuantity"['system'] = '{UCUM}')
                AND ({CODE}(code['coding'], '{LOINC}') <> '{SMOKING_CODE}'
                    OR {CODE}("valueCodeableConcept"['coding'], '{SNOMED}') IS NOT NULL),
                'Observation')),
        o AS (SELECT vid, {pivot} FROM obs GROUP BY vid),
        cond AS (SELECT substr(encounter['reference'], 11) AS vid,
                {CODE}(code['coding'], '{ICD10}') AS code FROM {c}
            WHERE {CHECK}("resourceType" = 'Condition'
                AND starts_with(encounter['reference'], 'Encounter/')
                AND {CODE}(code['coding'], '{ICD10}') IS NOT NULL, 'Condition')),
        f AS (SELECT vid, {flags} FROM cond GROUP BY vid),
        notes AS (SELECT substr(context['encounter'][1]['reference'], 11) AS vid,
                CAST(decode(content[1]['attachment']['data'], 'base64') AS VARCHAR) AS note
                FROM {d}
            WHERE {CHECK}("resourceType" = 'DocumentReference'
                AND starts_with(context['encounter'][1]['reference'], 'Encounter/'),
                'DocumentReference'))
        SELECT {select}
        FROM enc FULL JOIN o ON o.vid = enc.vid FULL JOIN f ON f.vid = enc.vid
            FULL JOIN notes ON notes.vid = enc.vid
        WHERE {CHECK}(enc.vid IS NOT NULL, 'referring')"#,
        pivot = pivot.join(", "),
        flags = flags.join(", "),
        select = select.join(", "),
    );
    Ok(ctx.sql(&sql).await?)
}

/// What is wrong with the resource `v` of the export's `file` (a resource type), by the
/// checks the plan makes, given the export's encounter ids; `None` when nothing is. Never
/// quotes a value.
fn problem(file: &str, v: &serde_json::Value, encounters: &HashSet<String>) -> Option<String> {
    let has_code = |codings: &serde_json::Value, system: &str| {
        codings.as_array().is_some_and(|c| {
            c.iter()
                .any(|c| c["system"].as_str() == Some(system) && c["code"].as_str().is_some())
        })
    };
    let refers = |reference: &serde_json::Value, to: &str| -> Option<String> {
        match reference.as_str().and_then(|r| r.strip_prefix(to)) {
            None if to == "Patient/" => Some("no reference to a Patient".into()),
            None => Some("no reference to an Encounter".into()),
            Some(id) if to == "Encounter/" && !encounters.contains(id) => {
                Some("a reference to an Encounter that is not in the export".into())
            }
            Some(_) => None,
        }
    };
    match file {
        "Encounter" => {
            if let Some(p) = refers(&v["subject"]["reference"], "Patient/") {
                return Some(p);
            }
            let reason = &v["reasonCode"];
            (!reason.is_null() && !has_code(&reason[0]["coding"], ICD10))
                .then(|| "a reasonCode of no known code system (ICD-10 expected)".into())
        }
        "Observation" => {
            if let Some(p) = refers(&v["encounter"]["reference"], "Encounter/") {
                return Some(p);
            }
            if !has_code(&v["code"]["coding"], LOINC) {
                return Some("a code of no known code system (LOINC expected)".into());
            }
            let quantity = &v["valueQuantity"];
            if !quantity.is_null() && quantity["system"].as_str() != Some(UCUM) {
                return Some("a valueQuantity whose unit is not a UCUM code".into());
            }
            let smoking = v["code"]["coding"].as_array().is_some_and(|c| {
                c.iter().any(|c| {
                    c["system"].as_str() == Some(LOINC) && c["code"].as_str() == Some(SMOKING_CODE)
                })
            });
            (smoking && !has_code(&v["valueCodeableConcept"]["coding"], SNOMED))
                .then(|| "a smoking status of no known code system (SNOMED CT expected)".into())
        }
        "Condition" => {
            if let Some(p) = refers(&v["encounter"]["reference"], "Encounter/") {
                return Some(p);
            }
            (!has_code(&v["code"]["coding"], ICD10))
                .then(|| "a code of no known code system (ICD-10 expected)".into())
        }
        "DocumentReference" => refers(&v["context"]["encounter"][0]["reference"], "Encounter/"),
        _ => None,
    }
}

/// The first resource of an export (its NDJSON files by name, decompressed) that the plan's
/// checks refuse: the file, its 1-based line and what is wrong, naming no value. Lines that
/// are not resources of their file's type come first, then references and codes. `None` when
/// every resource passes. Resources are parsed one line at a time, so an export of millions of
/// them is checked in the memory of its files.
pub(super) fn check_export(files: &[(String, Vec<u8>)]) -> Option<(String, u64, String)> {
    for (name, bytes) in files {
        if let Some((line, message)) = check_lines(stem(name), bytes) {
            return Some((name.clone(), line, message));
        }
    }
    #[derive(serde::Deserialize)]
    struct Id {
        id: Option<String>,
    }
    let encounters: HashSet<String> = files
        .iter()
        .filter(|(name, _)| stem(name) == "Encounter")
        .flat_map(|(_, bytes)| bytes.split(|b| *b == b'\n'))
        .filter_map(|l| serde_json::from_slice::<Id>(l).ok()?.id)
        .collect();
    for (name, bytes) in files {
        for (line, v) in resources(bytes) {
            if let Some(message) = problem(stem(name), &v, &encounters) {
                return Some((name.clone(), line, message));
            }
        }
    }
    None
}

/// The resources of an NDJSON file with their 1-based line numbers, parsed as they are taken.
fn resources(bytes: &[u8]) -> impl Iterator<Item = (u64, serde_json::Value)> + '_ {
    bytes
        .split(|b| *b == b'\n')
        .enumerate()
        .filter(|(_, l)| !l.iter().all(u8::is_ascii_whitespace))
        .filter_map(|(i, l)| Some((i as u64 + 1, serde_json::from_slice(l).ok()?)))
}

/// The resource type a file of an export holds, by its name.
fn stem(name: &str) -> &str {
    name.trim_end_matches(".gz").trim_end_matches(".ndjson")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn export(files: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        files
            .iter()
            .map(|(n, b)| (n.to_string(), b.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn lines_that_are_not_resources_of_the_file_are_named_without_their_values() {
        let good =
            b"{\"resourceType\":\"Condition\",\"id\":\"a\"}\n\n{\"resourceType\":\"Condition\"}\n";
        assert_eq!(check_lines("Condition", good), None);
        let broken =
            b"{\"resourceType\":\"Condition\"}\n{\"resourceType\":\"Condition\",\"id\":\"SECRET\n";
        let (line, message) = check_lines("Condition", broken).expect("a problem");
        assert_eq!(line, 2);
        assert!(message.contains("not a JSON resource") && !message.contains("SECRET"));
        let wrong =
            b"{\"resourceType\":\"Condition\"}\n{\"resourceType\":\"Patient\",\"id\":\"P1\"}\n";
        assert_eq!(
            check_lines("Condition", wrong),
            Some((2, "a Patient resource in the Condition file".into()))
        );
        let odd = b"{\"resourceType\":\"SECRET\"}\n";
        let (_, message) = check_lines("Condition", odd).expect("a problem");
        assert!(!message.contains("SECRET"), "{message}");
        // A gzipped file, as the run hands it over: decompressed by the input's compression.
        let mut zipped = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut zipped, wrong).expect("gzip");
        let zipped = zipped.finish().expect("gzip");
        let (plain, complete) = super::super::sniff::Compression::Gzip.decode(&zipped, u64::MAX);
        assert!(complete);
        let found = check_export(&[("Condition.ndjson.gz".into(), plain)]);
        assert_eq!(
            found.map(|p| (p.0, p.1)),
            Some(("Condition.ndjson.gz".into(), 2))
        );
    }

    const ENCOUNTER: &str = r#"{"resourceType":"Encounter","id":"V1","subject":{"reference":"Patient/P1"},"reasonCode":[{"coding":[{"system":"http://hl7.org/fhir/sid/icd-10","code":"I10"}]}]}"#;

    #[test]
    fn references_codes_and_units_are_checked_as_the_plan_checks_them() {
        let obs = |encounter: &str, system: &str, unit_system: &str| {
            format!(
                r#"{{"resourceType":"Observation","encounter":{{"reference":"Encounter/{encounter}"}},"code":{{"coding":[{{"system":"{system}","code":"8480-6"}}]}},"valueQuantity":{{"value":120,"system":"{unit_system}","code":"mm[Hg]"}}}}"#
            )
        };
        let good = obs("V1", LOINC, UCUM);
        let files = export(&[
            ("Encounter.ndjson", ENCOUNTER),
            ("Observation.ndjson", &good),
        ]);
        assert_eq!(check_export(&files), None);
        let cases = [
            (
                obs("V2", LOINC, UCUM),
                "an Encounter that is not in the export",
            ),
            (
                obs("V1", "urn:local", UCUM),
                "no known code system (LOINC expected)",
            ),
            (obs("V1", LOINC, "urn:local"), "not a UCUM code"),
        ];
        for (bad, expected) in cases {
            let body = format!("{good}\n{bad}\n");
            let files = export(&[
                ("Encounter.ndjson", ENCOUNTER),
                ("Observation.ndjson", &body),
            ]);
            let (file, line, message) = check_export(&files).expect("a problem");
            assert_eq!(
                (file.as_str(), line),
                ("Observation.ndjson", 2),
                "{message}"
            );
            assert!(message.contains(expected), "{message}");
        }
        let condition = r#"{"resourceType":"Condition","encounter":{"reference":"Encounter/V1"},"code":{"coding":[{"system":"http://snomed.info/sct","code":"230690007"}]}}"#;
        let files = export(&[
            ("Encounter.ndjson", ENCOUNTER),
            ("Condition.ndjson", condition),
        ]);
        let (_, line, message) = check_export(&files).expect("a problem");
        assert_eq!(line, 1);
        assert!(message.contains("ICD-10 expected"), "{message}");
        let orphan = r#"{"resourceType":"Encounter","id":"V2","subject":{"display":"SECRET"}}"#;
        let files = export(&[("Encounter.ndjson", orphan)]);
        let (_, _, message) = check_export(&files).expect("a problem");
        assert_eq!(message, "no reference to a Patient");
    }

    /// A one-visit export: its observations given, one condition and one note.
    use arrow::array::Array;

    fn tiny_export(dir: &std::path::Path, observations: &[String]) {
        let write = |name: &str, lines: &[String]| {
            std::fs::write(dir.join(name), lines.join("\n") + "\n")
                .unwrap_or_else(|e| panic!("{e}"));
        };
        let provider = r#""serviceProvider":{"identifier":{"value":"F1"}}"#;
        write(
            "Encounter.ndjson",
            &[format!(
                r#"{}, "period":{{"start":"2024-01-02"}}, {provider}}}"#,
                ENCOUNTER.trim_end_matches('}')
            )],
        );
        write("Observation.ndjson", observations);
        write(
            "Condition.ndjson",
            &[format!(
                r#"{{"resourceType":"Condition","encounter":{{"reference":"Encounter/V1"}},"code":{{"coding":[{{"system":"urn:local","code":"x"}},{{"system":"{ICD10}","code":"I63.9"}}]}}}}"#
            )],
        );
        write(
            "DocumentReference.ndjson",
            &[r#"{"resourceType":"DocumentReference","context":{"encounter":[{"reference":"Encounter/V1"}]},"content":[{"attachment":{"data":"bm90ZQ=="}}]}"#.to_string()],
        );
    }

    fn quantity(code: &str, value: f64, unit: &str) -> String {
        format!(
            r#"{{"resourceType":"Observation","encounter":{{"reference":"Encounter/V1"}},"code":{{"coding":[{{"system":"{LOINC}","code":"{code}"}}]}},"valueQuantity":{{"value":{value},"system":"{UCUM}","code":"{unit}"}}}}"#
        )
    }

    #[tokio::test]
    async fn values_are_converted_into_the_columns_units_and_an_unknown_unit_marks_its_visit() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        tiny_export(
            tmp.path(),
            &[
                quantity("8480-6", 16.0, "kPa"),
                quantity("2339-0", 5.5, "mmol/L"),
                quantity("2093-3", 5.0, "mmol/mol"),
                quantity("8867-4", 70.0, "{beats}/min"),
                quantity("2708-6", 97.0, "%"),
                quantity("9999-9", 1.0, "kg"),
            ],
        );
        let mut ctx = SessionContext::new();
        crate::functions::register_functions(&mut ctx).unwrap_or_else(|e| panic!("{e}"));
        let dir = tmp.path().display().to_string();
        let location = Location::resolve(&ctx, &dir).unwrap_or_else(|e| panic!("{e}"));
        let files = location.files().await.unwrap_or_else(|e| panic!("{e}"));
        let cfg: InputConfig = toml::from_str(&format!(
            "path = \"{dir}\"\nformat = \"fhir\"\ntable = \"visits\"\n\
             [loinc]\nspo2 = {{ code = \"2708-6\", unit = \"%\" }}\n"
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        let df = read(
            &ctx,
            "visits",
            &cfg,
            &location,
            &files,
            FhirTable::Visits,
            "t",
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        let batches = df.collect().await.unwrap_or_else(|e| panic!("{e}"));
        let batch = arrow::compute::concat_batches(&batches[0].schema(), &batches)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(batch.num_rows(), 1);
        let number = |name: &str| {
            let column = batch
                .column_by_name(name)
                .unwrap_or_else(|| panic!("no column {name}"));
            let column =
                arrow::compute::cast(column, &DataType::Float64).unwrap_or_else(|e| panic!("{e}"));
            let values = column
                .as_any()
                .downcast_ref::<arrow::array::Float64Array>()
                .cloned()
                .unwrap_or_else(|| panic!("{name}"));
            values.is_valid(0).then(|| values.value(0))
        };
        let close = |a: Option<f64>, b: f64| a.is_some_and(|a| (a - b).abs() < 1e-9);
        assert_eq!(
            number("systolic_bp"),
            Some((16.0 * 7.500_615_758_f64).round())
        );
        assert!(close(number("avg_glucose"), 5.5 * 18.0156));
        assert_eq!(number("heart_rate"), Some(70.0));
        assert_eq!(number("spo2"), Some(97.0), "the job's added column");
        assert_eq!(
            number("stroke"),
            Some(1.0),
            "ICD-10 found among the codings"
        );
        assert_eq!(number("cholesterol"), None);
        assert_eq!(number("__emr_unit_cholesterol"), Some(1.0));
        assert_eq!(number("__emr_unit_avg_glucose"), None);
        assert_eq!(
            unit_reason("__emr_unit_cholesterol").as_deref(),
            Some("unit: cholesterol")
        );
    }
}
