//! FHIR R4 shapes of what a read returned: `Patient`, `Encounter`, `Observation` and
//! `Condition` from the granted fields of a patient's records, and `Bundle` searchsets with
//! paging links. Only the shapes emrflow
//! serves are built here; a field the contract withheld is absent from the resource and its
//! category is named in the Bundle's outcome entry, so nothing goes silently missing.

use ledger::contracts::{Categories, Category};
use pipeline::fhir::{
    FLAGS, ICD10, LOINC, MEASURES, OBSERVATION_CATEGORY, PATIENT_ID_SYSTEM, PRIMARY_DIAGNOSIS, UCUM,
};
use records::PatientView;
use records::access::{RecordProof, RecordView};
use records::record::Kind;
use serde_json::{Value, json};

/// The media type of every FHIR answer.
pub const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";
/// The extension carrying a resource's Merkle inclusion proof.
pub const PROOF_EXTENSION: &str =
    "https://emrflow.dev/fhir/StructureDefinition/record-inclusion-proof";

/// The categories each resource type is built from: what a read for it asks the contract.
pub fn categories_for(resource: &str) -> Categories {
    let list: &[Category] = match resource {
        "Patient" => &[Category::Identifiers, Category::Demographics],
        "Encounter" => &[Category::Demographics],
        "Observation" => &[
            Category::Demographics,
            Category::Vitals,
            Category::Metabolic,
            Category::Cardiology,
        ],
        "Condition" => &[
            Category::Demographics,
            Category::Diagnoses,
            Category::Cardiology,
            Category::Neurology,
            Category::Metabolic,
        ],
        _ => &[],
    };
    list.iter().copied().collect()
}

/// The field of a visit that dates it.
pub const VISIT_DATE: &str = "visit_date";
/// The extension naming the anchored model (and its training data) an answer came from.
pub const MODEL_EXTENSION: &str = "https://emrflow.dev/fhir/StructureDefinition/anchored-model";

/// A granted, non-empty field of a record.
pub fn field<'a>(r: &'a RecordView, name: &str) -> Option<&'a str> {
    r.fields
        .iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| v.as_deref())
        .filter(|v| !v.trim().is_empty())
}

fn yes(v: Option<&str>) -> bool {
    matches!(
        v.map(str::trim),
        Some("1" | "true" | "yes" | "Yes" | "TRUE")
    )
}

/// The proof extension of a record.
pub fn proof_extension(p: &RecordProof) -> Value {
    json!({
        "url": PROOF_EXTENSION,
        "extension": [
            {"url": "batchRoot", "valueString": p.batch_root.to_hex()},
            {"url": "batchSize", "valueString": p.batch_size.to_string()},
            {"url": "anchorHeight", "valueString": p.anchor_height.to_string()},
            {"url": "leaf", "valueString": p.leaf.to_hex()},
            {"url": "leafIndex", "valueString": p.index.to_string()},
            {"url": "auditPath", "valueString": p.path.iter().map(|d| d.to_hex()).collect::<Vec<_>>().join(",")},
        ],
    })
}

/// A resource id for a visit-derived resource that names no one: the record's place in its
/// anchored batch.
fn record_ref(r: &RecordView) -> String {
    format!("{}-{}", &r.proof.batch_root.to_hex()[..16], r.proof.index)
}

/// The `Patient` resource of the patient's own record, if the read returned it.
pub fn patient(id: &str, view: &PatientView) -> Option<Value> {
    let r = view.records.iter().find(|r| r.kind == Kind::Patient)?;
    let mut p = json!({
        "resourceType": "Patient",
        "id": id,
        "meta": {"versionId": r.version.to_string()},
        "extension": [proof_extension(&r.proof)],
    });
    let obj = p.as_object_mut()?;
    if let Some(v) = field(r, "patient_id") {
        let mut ids = vec![json!({"system": PATIENT_ID_SYSTEM, "value": v})];
        if let Some(n) = field(r, "national_id") {
            ids.push(json!({"system": "urn:emrflow:national-id", "value": n}));
        }
        obj.insert("identifier".into(), Value::from(ids));
    }
    if let Some(v) = field(r, "full_name") {
        obj.insert("name".into(), json!([{"text": v}]));
    }
    let mut telecom = Vec::new();
    if let Some(v) = field(r, "phone") {
        telecom.push(json!({"system": "phone", "value": v}));
    }
    if let Some(v) = field(r, "email") {
        telecom.push(json!({"system": "email", "value": v}));
    }
    if !telecom.is_empty() {
        obj.insert("telecom".into(), Value::from(telecom));
    }
    if let Some(v) = field(r, "street_address") {
        obj.insert("address".into(), json!([{"text": v}]));
    }
    if let Some(v) = field(r, "gender") {
        let g = match v.trim() {
            "F" | "f" | "Female" | "female" => "female",
            "M" | "m" | "Male" | "male" => "male",
            "O" | "Other" | "other" => "other",
            _ => "unknown",
        };
        obj.insert("gender".into(), Value::from(g));
    }
    if let Some(v) = field(r, "date_of_birth") {
        obj.insert("birthDate".into(), Value::from(v));
    }
    Some(p)
}

fn visits(view: &PatientView) -> impl Iterator<Item = &RecordView> {
    view.records.iter().filter(|r| r.kind == Kind::Visit)
}

/// The latest visit the read returned (by date; the later record of a day), and the patient's
/// own record.
pub fn latest_visit(view: &PatientView) -> (Option<&RecordView>, Option<&RecordView>) {
    let visit = visits(view).max_by(|a, b| {
        field(a, VISIT_DATE)
            .cmp(&field(b, VISIT_DATE))
            .then(a.proof.index.cmp(&b.proof.index))
    });
    let own = view.records.iter().find(|r| r.kind == Kind::Patient);
    (visit, own)
}

/// A `RiskAssessment` of stroke for `subject` (a patient id; absent for values sent without
/// one), based on a visit: the probability, its band as a FHIR risk-probability code, the
/// explanation as a note, and the anchored model in an extension.
pub fn risk_assessment(
    a: &crate::risk::Assessment,
    subject: Option<&str>,
    visit: Option<&RecordView>,
) -> Value {
    let (band, band_display) = a.band.code();
    let mut r = json!({
        "resourceType": "RiskAssessment",
        "status": "final",
        "subject": match subject {
            Some(id) => json!({"reference": format!("Patient/{id}")}),
            None => json!({"display": "clinical values given in the request"}),
        },
        "method": {"text": format!("emrflow {} model {}", a.model.kind, a.model.root)},
        "prediction": [{
            "outcome": {
                "coding": [{"system": "http://snomed.info/sct", "code": "230690007", "display": "Cerebrovascular accident"}],
                "text": "Stroke",
            },
            "probabilityDecimal": a.probability,
            "qualitativeRisk": {
                "coding": [{"system": "http://terminology.hl7.org/CodeSystem/risk-probability", "code": band, "display": band_display}],
            },
        }],
        "note": [{"text": a.explanation}],
        "extension": [{
            "url": MODEL_EXTENSION,
            "extension": [
                {"url": "modelRoot", "valueString": a.model.root},
                {"url": "datasetRoot", "valueString": a.model.dataset_root.clone().unwrap_or_default()},
                {"url": "threshold", "valueDecimal": a.threshold},
            ],
        }],
    });
    if let Some(v) = visit {
        let reference = json!({"reference": format!("Encounter/{}", record_ref(v))});
        r["encounter"] = reference.clone();
        r["basis"] = json!([reference]);
        if let Some(d) = field(v, VISIT_DATE) {
            r["occurrenceDateTime"] = json!(d);
        }
    }
    r
}

/// One `Encounter` per visit.
pub fn encounters(id: &str, view: &PatientView) -> Vec<Value> {
    visits(view)
        .map(|r| {
            let mut e = json!({
                "resourceType": "Encounter",
                "id": record_ref(r),
                "meta": {"versionId": r.version.to_string()},
                "status": "finished",
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB", "display": "ambulatory"},
                "subject": {"reference": format!("Patient/{id}")},
                "serviceProvider": {"display": r.facility},
                "extension": [proof_extension(&r.proof)],
            });
            if let Some(d) = field(r, VISIT_DATE) {
                e["period"] = json!({"start": d, "end": d});
            }
            if !r.id.is_empty() {
                e["identifier"] = json!([{"system": "urn:emrflow:visit-id", "value": r.id}]);
            }
            e
        })
        .collect()
}

/// `Observation`s of every measured value of every visit, of one FHIR category (`vital-signs`
/// or `laboratory`) or all.
pub fn observations(id: &str, view: &PatientView, category: Option<&str>) -> Vec<Value> {
    let mut out = Vec::new();
    for r in visits(view) {
        for m in MEASURES {
            if category.is_some_and(|c| c != m.category) {
                continue;
            }
            let Some(raw) = field(r, m.column) else {
                continue;
            };
            let Ok(value) = raw.trim().parse::<f64>() else {
                continue;
            };
            let mut o = json!({
                "resourceType": "Observation",
                "id": format!("{}-{}", record_ref(r), m.code),
                "status": "final",
                "category": [{"coding": [{"system": OBSERVATION_CATEGORY, "code": m.category}]}],
                "code": {"coding": [{"system": LOINC, "code": m.code, "display": m.display}], "text": m.display},
                "subject": {"reference": format!("Patient/{id}")},
                "encounter": {"reference": format!("Encounter/{}", record_ref(r))},
                "valueQuantity": {"value": value, "unit": m.unit, "system": UCUM, "code": m.unit},
                "extension": [proof_extension(&r.proof)],
            });
            if let Some(d) = field(r, VISIT_DATE) {
                o["effectiveDateTime"] = Value::from(d);
            }
            out.push(o);
        }
    }
    out
}

/// `Condition`s: each visit's primary ICD-10 code and its yes/no findings (history, symptoms,
/// stroke), each code once.
pub fn conditions(id: &str, view: &PatientView) -> Vec<Value> {
    let mut out = Vec::new();
    for r in visits(view) {
        let mut codes: Vec<(String, String)> = Vec::new();
        if let Some(code) = field(r, PRIMARY_DIAGNOSIS) {
            codes.push((code.trim().to_string(), String::new()));
        }
        for flag in FLAGS {
            if yes(field(r, flag.column)) && !codes.iter().any(|(c, _)| c == flag.code) {
                codes.push((flag.code.to_string(), flag.display.to_string()));
            }
        }
        for (code, display) in codes {
            let mut coding = json!({"system": ICD10, "code": code});
            if !display.is_empty() {
                coding["display"] = Value::from(display);
            }
            let mut c = json!({
                "resourceType": "Condition",
                "id": format!("{}-{}", record_ref(r), code.replace('.', "")),
                "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
                "code": {"coding": [coding]},
                "subject": {"reference": format!("Patient/{id}")},
                "encounter": {"reference": format!("Encounter/{}", record_ref(r))},
                "extension": [proof_extension(&r.proof)],
            });
            if let Some(d) = field(r, VISIT_DATE) {
                c["recordedDate"] = Value::from(d);
            }
            out.push(c);
        }
    }
    out
}

/// A searchset `Bundle` of one page of `entries` (`offset`, at most `count`), with `self` and
/// `next` links built from `link(offset)`, and an outcome entry naming withheld categories.
pub fn searchset(
    base: &str,
    entries: Vec<Value>,
    offset: usize,
    count: usize,
    link: impl Fn(usize) -> String,
    withheld: Categories,
) -> Value {
    let total = entries.len();
    let mut page: Vec<Value> = entries
        .into_iter()
        .skip(offset)
        .take(count)
        .map(|resource| {
            let url = format!(
                "{base}/{}/{}",
                resource["resourceType"].as_str().unwrap_or_default(),
                resource["id"].as_str().unwrap_or_default()
            );
            json!({"fullUrl": url, "resource": resource, "search": {"mode": "match"}})
        })
        .collect();
    if !withheld.is_empty() {
        page.push(json!({
            "resource": crate::error::operation_outcome(
                "information",
                "suppressed",
                &format!("the ledger's contract withheld {withheld}"),
            ),
            "search": {"mode": "outcome"},
        }));
    }
    let mut links = vec![json!({"relation": "self", "url": link(offset)})];
    if offset + count < total {
        links.push(json!({"relation": "next", "url": link(offset + count)}));
    }
    json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "total": total,
        "link": links,
        "entry": page,
    })
}

/// The v3 ActReason code of a purpose of use.
fn purpose_code(p: ledger::contracts::Purpose, break_glass: bool) -> (&'static str, &'static str) {
    use ledger::contracts::Purpose;
    match (p, break_glass) {
        (_, true) => ("ETREAT", "Emergency treatment"),
        (Purpose::Treatment, _) => ("TREAT", "Treatment"),
        (Purpose::Research, _) => ("HRESCH", "Healthcare research"),
        (Purpose::Operations, _) => ("HOPERAT", "Healthcare operations"),
        (Purpose::Audit, _) => ("HCOMPL", "Health compliance"),
    }
}

/// An `AuditEvent` (IHE Basic Audit Log Patterns: a RESTful read or query of a patient's
/// record) from a ledger audit event and its entry's names: who, through which gateway, for
/// which purpose, on which patient (`patient_id` when the search named one, else the
/// pseudonym), with the outcome and the transaction's ledger position.
pub fn audit_event(
    entry: &records::access::ReportEntry,
    patient_id: Option<&str>,
    ledger_id: &str,
) -> Value {
    use ledger::contracts::{Action, Outcome};
    let e = &entry.event;
    let (subtype, action) = match e.action {
        Action::ReadRecord => ("read", "R"),
        Action::AmendRecord => ("update", "U"),
        Action::ErasePatient => ("delete", "D"),
        _ => ("operation", "E"),
    };
    let mut agents = vec![json!({
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP", "display": "information recipient"}]},
        "who": {
            "identifier": {"system": "urn:emrflow:identity", "value": e.actor.to_hex()},
            "display": entry.actor_name.clone().unwrap_or_default(),
        },
        "requestor": true,
    })];
    if let Some(gateway) = &e.via {
        agents.push(json!({
            "type": {"coding": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110153", "display": "Source Role ID"}]},
            "who": {"identifier": {"system": "urn:emrflow:identity", "value": gateway.to_hex()}},
            "requestor": false,
        }));
    }
    let mut r = json!({
        "resourceType": "AuditEvent",
        "id": e.tx.to_hex(),
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest", "display": "RESTful Operation"},
        "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": subtype}],
        "action": action,
        "recorded": provenance::audit::time(e.time.0),
        "agent": agents,
        "source": {
            "observer": {"display": format!("emrflow ledger {ledger_id}")},
            "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4", "display": "Application Server"}],
        },
        "extension": [{
            "url": "https://emrflow.dev/fhir/StructureDefinition/ledger-position",
            "extension": [
                {"url": "height", "valueString": e.position.seq.0.to_string()},
                {"url": "index", "valueString": e.position.index.to_string()},
                {"url": "receiptVerified", "valueBoolean": entry.verified},
            ],
        }],
    });
    match &e.outcome {
        Outcome::Denied { reason } => {
            r["outcome"] = json!("4");
            r["outcomeDesc"] = json!(reason);
        }
        _ => r["outcome"] = json!("0"),
    }
    if let Some(rec) = &e.record {
        if let Some(p) = rec.purpose {
            let (code, display) = purpose_code(p, rec.break_glass);
            r["purposeOfEvent"] = json!([{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": code, "display": display}]}]);
        }
        let what = match patient_id {
            Some(id) => json!({"reference": format!("Patient/{id}")}),
            None => {
                json!({"identifier": {"system": "urn:emrflow:patient-pseudonym", "value": rec.patient.to_hex()}})
            }
        };
        r["entity"] = json!([{
            "what": what,
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1", "display": "Person"},
            "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1", "display": "Patient"},
            "description": format!("categories asked: {}", rec.asked),
        }]);
    }
    r
}
