"""A FHIR R4 Bulk Data export flattened in PySpark, for the FHIR input benchmark.

It flattens the export the way emrflow's FHIR reader does (pipeline/src/run/fhir.rs), with the
vocabulary of pipeline/src/fhir.rs, step for step:

- read Patient, Encounter, Observation, Condition and DocumentReference NDJSON (plain or
  gzipped) with `spark.read.json` and an explicit schema of the fields used, as emrflow does
  (inferring one would read every file through an extra time);
- patients: one row per Patient: id, the first name and address text, the national id picked
  from the exploded identifiers by its system, phone and email pivoted from the exploded telecom
  by system, the birth date as a date, gender as F/M;
- visits: one row per Encounter: id, patient (the subject reference), date, facility, primary
  ICD-10 code; the Observations pivoted by LOINC code (a value only when it is in the code's UCUM
  unit) and smoking status mapped from its SNOMED CT answer; the Conditions pivoted by ICD-10
  code into 1/0 flags; the DocumentReference note base64-decoded; every column cast to the
  generator's type and in its order, so the rows are those of the CSV tables;
- check that patient ids are unique (emrflow refuses a join on a non-unique key), left join
  visits with patients on patient_id, and write the joined rows as Snappy Parquet.

The pivots are given their values (the codes), as emrflow's plan names them; without them Spark
would first scan for the distinct codes.

emrflow's reader also checks every resource (its type, references, code systems, and that each
observation, condition and note belongs to an encounter of the export) and converts values in
other UCUM units by rule; the generated export holds only the vocabulary's units, so the rows
are the same. What emrflow's job does beyond this and this job does not: de-identification (dropping the PII
columns, the age at the visit, HMAC pseudonyms), the drops (nulls, ranges), fitting and applying
z-score, min-max and category encoding, and anchoring the dataset's root on the ledger. Those
steps are PySpark's side of scripts/bench/preprocess_pyspark.py. So this job does less work
than emrflow's, and its time is a lower bound for PySpark running the whole job on the export.

Prints one JSON line: rows written, patients, and seconds (the job only, after the session is
up; reading the output back to count its rows happens after the clock stops).
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)

from pyspark.sql import SparkSession, functions as F  # noqa: E402

# (column, LOINC code, UCUM unit), as pipeline/src/fhir.rs MEASURES.
MEASURES = [
    ("systolic_bp", "8480-6", "mm[Hg]"),
    ("diastolic_bp", "8462-4", "mm[Hg]"),
    ("heart_rate", "8867-4", "/min"),
    ("bmi", "39156-5", "kg/m2"),
    ("avg_glucose", "2339-0", "mg/dL"),
    ("cholesterol", "2093-3", "mg/dL"),
]
SMOKING_CODE = "72166-2"
# SNOMED CT answer -> the column's value.
SMOKING_VALUES = [
    ("266919005", "never smoked"),
    ("8517006", "formerly smoked"),
    ("77176002", "smokes"),
    ("266927001", "unknown"),
]
# (column, ICD-10 code), as pipeline/src/fhir.rs FLAGS.
FLAGS = [
    ("hypertension", "I10"),
    ("heart_disease", "I51.9"),
    ("atrial_fibrillation", "I48.91"),
    ("diabetes", "E11.9"),
    ("stroke", "I63.9"),
    ("dizziness", "R42"),
    ("headache", "R51.9"),
    ("numbness", "R20.0"),
    ("slurred_speech", "R47.81"),
    ("vision_problems", "H53.9"),
]
NATIONAL_ID_SYSTEM = "http://hl7.org/fhir/sid/us-ssn"
# The generator's visits table, in its order and types.
VISIT_COLUMNS = [
    ("visit_id", "string"), ("patient_id", "string"), ("visit_date", "date"), ("facility_id", "string"),
    ("systolic_bp", "bigint"), ("diastolic_bp", "bigint"), ("heart_rate", "bigint"), ("bmi", "double"),
    ("avg_glucose", "double"), ("cholesterol", "bigint"), ("hypertension", "bigint"),
    ("heart_disease", "bigint"), ("diabetes", "bigint"), ("atrial_fibrillation", "bigint"),
    ("smoking_status", "string"), ("icd10_primary", "string"), ("dizziness", "bigint"),
    ("headache", "bigint"), ("numbness", "bigint"), ("slurred_speech", "bigint"),
    ("vision_problems", "bigint"), ("clinical_notes", "string"), ("stroke", "bigint"),
]
PATIENT_COLUMNS = ["full_name", "national_id", "phone", "email", "street_address", "date_of_birth", "gender"]

CODING = "STRUCT<coding: ARRAY<STRUCT<system: STRING, code: STRING>>>"
SCHEMAS = {
    "Patient": "id STRING, identifier ARRAY<STRUCT<system: STRING, value: STRING>>, "
               "name ARRAY<STRUCT<text: STRING>>, telecom ARRAY<STRUCT<system: STRING, value: STRING>>, "
               "gender STRING, birthDate STRING, address ARRAY<STRUCT<text: STRING>>",
    "Encounter": f"id STRING, subject STRUCT<reference: STRING>, period STRUCT<start: STRING>, "
                 f"reasonCode ARRAY<{CODING}>, serviceProvider STRUCT<identifier: STRUCT<value: STRING>>",
    "Observation": f"encounter STRUCT<reference: STRING>, code {CODING}, "
                   f"valueQuantity STRUCT<value: DOUBLE, code: STRING>, valueCodeableConcept {CODING}",
    "Condition": f"encounter STRUCT<reference: STRING>, code {CODING}",
    "DocumentReference": "context STRUCT<encounter: ARRAY<STRUCT<reference: STRING>>>, "
                         "content ARRAY<STRUCT<attachment: STRUCT<data: STRING>>>",
}


def first(array):
    """The first element, null when the array is null or empty: Spark 4 runs with ANSI mode on,
    where `arr[0]` fails on an empty array and SQL's `arr[1]` in emrflow gives null."""
    return F.try_element_at(array, F.lit(1))


def after(reference, prefix):
    """The id in a reference such as `Patient/P1`, by position as emrflow's `substr` takes it."""
    return F.substring(reference, len(prefix) + 1, 1 << 30)


def pivoted(code):
    """A pivot output column: its name is the code itself, which may hold dots."""
    return F.col(f"`{code}`")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--export", required=True, help="the export's directory")
    ap.add_argument("--out", required=True)
    ap.add_argument("--driver-memory", default="8g")
    args = ap.parse_args()

    def path(t):
        for name in (f"{t}.ndjson", f"{t}.ndjson.gz"):
            if os.path.exists(f"{args.export}/{name}"):
                return f"{args.export}/{name}"
        sys.exit(f"the export at {args.export} has no {t}.ndjson")

    paths = {t: path(t) for t in SCHEMAS}
    spark = (
        SparkSession.builder.master("local[2]")
        .appName("emrflow-bench-fhir")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.driver.memory", args.driver_memory)
        .config("spark.ui.enabled", "false")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")

    started = time.time()
    r = {t: spark.read.json(p, schema=SCHEMAS[t]) for t, p in paths.items()}

    # Patients.
    p = r["Patient"]
    n, distinct = p.agg(F.count("*"), F.countDistinct("id")).first()
    if n != distinct:
        sys.exit(f"patient_id is not unique in patients ({n - distinct} duplicate keys)")
    nid = (p.select("id", F.explode("identifier").alias("i"))
           .where(F.col("i.system") == NATIONAL_ID_SYSTEM)
           .groupBy("id").agg(F.max("i.value").alias("national_id")))
    contact = (p.select("id", F.explode("telecom").alias("t"))
               .select("id", F.col("t.system").alias("system"), F.col("t.value").alias("value"))
               .groupBy("id").pivot("system", ["phone", "email"]).agg(F.max("value")))
    patients = p.join(nid, "id", "left").join(contact, "id", "left").select(
        F.col("id").alias("patient_id"),
        first(F.col("name")).getField("text").alias("full_name"),
        "national_id", "phone", "email",
        first(F.col("address")).getField("text").alias("street_address"),
        F.col("birthDate").cast("date").alias("date_of_birth"),
        F.when(F.col("gender") == "female", "F").when(F.col("gender") == "male", "M").alias("gender"),
    )

    # Visits: encounters, then what other resources say of each.
    enc = r["Encounter"].select(
        F.col("id").alias("visit_id"),
        after(F.col("subject.reference"), "Patient/").alias("patient_id"),
        F.col("period.start").alias("visit_date"),
        F.col("serviceProvider.identifier.value").alias("facility_id"),
        first(first(F.col("reasonCode")).getField("coding")).getField("code").alias("icd10_primary"),
    )
    obs = r["Observation"].select(
        after(F.col("encounter.reference"), "Encounter/").alias("visit_id"),
        first(F.col("code.coding")).getField("code").alias("code"),
        F.col("valueQuantity.value").alias("value"),
        F.col("valueQuantity.code").alias("unit"),
        first(F.col("valueCodeableConcept.coding")).getField("code").alias("answer"),
    )
    code, unit = F.col("code"), F.col("unit")
    measured = F.when((code == MEASURES[0][1]) & (unit == MEASURES[0][2]), F.col("value"))
    for _, c, u in MEASURES[1:]:
        measured = measured.when((code == c) & (unit == u), F.col("value"))
    answer = F.when(F.col("answer") == SMOKING_VALUES[0][0], SMOKING_VALUES[0][1])
    for a, v in SMOKING_VALUES[1:]:
        answer = answer.when(F.col("answer") == a, v)
    smoking = F.when(code == SMOKING_CODE, answer)
    o = (obs.select("visit_id", "code", measured.alias("v"), smoking.alias("s"))
         .groupBy("visit_id").pivot("code", [c for _, c, _ in MEASURES] + [SMOKING_CODE])
         .agg(F.max("v").alias("v"), F.max("s").alias("s"))
         .select("visit_id", *[pivoted(f"{c}_v").alias(col) for col, c, _ in MEASURES],
                 pivoted(f"{SMOKING_CODE}_s").alias("smoking_status")))
    cond = r["Condition"].select(
        after(F.col("encounter.reference"), "Encounter/").alias("visit_id"),
        first(F.col("code.coding")).getField("code").alias("code"),
    )
    f = (cond.groupBy("visit_id").pivot("code", [c for _, c in FLAGS]).agg(F.max(F.lit(1)))
         .select("visit_id", *[pivoted(c).alias(col) for col, c in FLAGS]))
    notes = r["DocumentReference"].select(
        after(first(F.col("context.encounter")).getField("reference"), "Encounter/").alias("visit_id"),
        F.unbase64(first(F.col("content")).getField("attachment").getField("data"))
        .cast("string").alias("clinical_notes"),
    )
    joined = enc.join(o, "visit_id", "left").join(f, "visit_id", "left").join(notes, "visit_id", "left")
    flags = {col for col, _ in FLAGS}
    visits = joined.select(*[
        (F.coalesce(F.col(c), F.lit(0)) if c in flags else F.col(c)).cast(t).alias(c) for c, t in VISIT_COLUMNS
    ])

    # The job's join, and its rows in emrflow's column order (before de-identification).
    out = visits.join(patients, "patient_id", "left").select(*[c for c, _ in VISIT_COLUMNS], *PATIENT_COLUMNS)
    out.write.mode("overwrite").option("compression", "snappy").parquet(args.out)
    seconds = time.time() - started

    rows = spark.read.parquet(args.out).count()
    spark.stop()
    print(json.dumps({"rows_out": rows, "patients": n, "seconds": seconds}))


if __name__ == "__main__":
    main()
