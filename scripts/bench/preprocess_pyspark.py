"""The stroke-synthetic job written in PySpark, for the preprocessing benchmark.

The same work as `emrflow run examples/stroke-synthetic.toml`, step for step:

- read visits.csv and patients.csv (schema given here: emrflow infers its schema from the first
  10,000 rows, while Spark's `inferSchema` would read both files through an extra time);
- check that patient_id is unique in patients (emrflow refuses a join on a non-unique key);
- left join visits with patients on patient_id, drop the PII columns and the visit date, age at
  the visit in whole years (birthdays counted as emrflow counts them, capped at 90), and
  patient_id and visit_id replaced by hex(HMAC-SHA256(key, value));
- tag every row with its first drop reason (no matching patient, a null in a dropna column or
  the label, a value outside a range) and, in one aggregate grouped by that reason (emrflow's
  pass 1), count the rows per reason and fit z-score (population std), min-max and the sorted
  category lists on the kept rows;
- a second pass over the inputs (emrflow's pass 2; neither engine caches the joined rows)
  writes the kept rows, normalized and encoded, as Snappy Parquet.

HMAC: Spark has no HMAC function, so by default it is computed from the built-in `sha2` the way
RFC 2104 defines it, sha2(K^opad || unhex(sha2(K^ipad || m))), in the JVM; `--hmac pandas-udf`
uses a vectorized pandas UDF with Python's `hmac` instead (Python workers, Arrow transfers).
Both give the same bytes as emrflow's pseudonyms.

Prints one JSON line: rows out, drop counts and seconds (the job only, after the session is up;
reading the output back to count its rows happens after the clock stops).
"""

import argparse
import hashlib
import hmac
import json
import os
import sys
import time

# Python workers (pandas UDFs) must run this interpreter, the venv's, not the first `python3`
# on PATH, which may lack pandas and pyarrow.
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)

from pyspark.sql import SparkSession, functions as F, types as T  # noqa: E402

VISITS_SCHEMA = (
    "visit_id STRING, patient_id STRING, visit_date DATE, facility_id STRING, systolic_bp BIGINT, "
    "diastolic_bp BIGINT, heart_rate BIGINT, bmi DOUBLE, avg_glucose DOUBLE, cholesterol BIGINT, "
    "hypertension BIGINT, heart_disease BIGINT, diabetes BIGINT, atrial_fibrillation BIGINT, "
    "smoking_status STRING, icd10_primary STRING, dizziness BIGINT, headache BIGINT, numbness BIGINT, "
    "slurred_speech BIGINT, vision_problems BIGINT, clinical_notes STRING, stroke BIGINT"
)
PATIENTS_SCHEMA = (
    "patient_id STRING, full_name STRING, national_id STRING, phone STRING, email STRING, "
    "street_address STRING, date_of_birth DATE, gender STRING"
)
LABEL = "stroke"
DROP = ["full_name", "national_id", "phone", "email", "street_address", "clinical_notes", "visit_date"]
PSEUDONYMIZE = ["patient_id", "visit_id"]
AGE_CAP = 90
# emrflow applies ranges in column-name order (a sorted map); the order only decides which
# reason a row with several problems is counted under.
RANGES = sorted({"systolic_bp": (60.0, 260.0), "heart_rate": (25.0, 250.0), "bmi": (10.0, 80.0),
                 "avg_glucose": (40.0, 600.0)}.items())
DROPNA = ["systolic_bp", "heart_rate", "bmi", "avg_glucose", "cholesterol", "smoking_status"]
ZSCORE = ["age", "systolic_bp", "diastolic_bp", "heart_rate", "bmi", "cholesterol"]
MINMAX = ["avg_glucose"]
ENCODE = ["gender", "facility_id", "smoking_status", "icd10_primary"]


def hmac_sha256_sql(key: bytes, column):
    """hex(HMAC-SHA256(key, column)) from Spark built-ins (RFC 2104, 64-byte blocks)."""
    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    key = key.ljust(64, b"\0")
    ipad = bytes(b ^ 0x36 for b in key)
    opad = bytes(b ^ 0x5C for b in key)
    inner = F.unhex(F.sha2(F.concat(F.lit(ipad), column.cast("binary")), 256))
    return F.sha2(F.concat(F.lit(opad), inner), 256)


def hmac_sha256_pandas(key: bytes):
    @F.pandas_udf(T.StringType())
    def pseudonym(s):
        return s.map(lambda v: None if v is None else hmac.new(key, v.encode(), hashlib.sha256).hexdigest())

    return lambda column: pseudonym(column.cast("string"))


def age_years(dob, at):
    """Whole years from dob to at as a birthday counts them (chrono's years_since), 0 if at is
    before dob, capped at 90; null if either is null."""
    years = F.year(at) - F.year(dob)
    before_birthday = (F.month(at) * 32 + F.dayofmonth(at)) < (F.month(dob) * 32 + F.dayofmonth(dob))
    years = years - F.when(before_birthday, 1).otherwise(0)
    return F.least(F.greatest(years, F.lit(0)), F.lit(AGE_CAP)).cast("long")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--key", required=True, help="the key's bytes, as EMRFLOW_PSEUDONYM_KEY holds them")
    ap.add_argument("--hmac", choices=["sql", "pandas-udf"], default="sql")
    args = ap.parse_args()
    key = args.key.encode()
    pseudonym = (lambda c: hmac_sha256_sql(key, c)) if args.hmac == "sql" else hmac_sha256_pandas(key)

    spark = (
        SparkSession.builder.master("local[2]")
        .appName("emrflow-bench-preprocess")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.driver.memory", "8g")
        .config("spark.ui.enabled", "false")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")

    started = time.time()
    visits = spark.read.csv(f"{args.data}/visits.csv", header=True, schema=VISITS_SCHEMA)
    patients = spark.read.csv(f"{args.data}/patients.csv", header=True, schema=PATIENTS_SCHEMA)

    # The join key must be unique on the right.
    n, distinct = patients.agg(F.count("*"), F.countDistinct("patient_id")).first()
    if n != distinct:
        sys.exit(f"patient_id is not unique in patients ({n - distinct} duplicate keys)")

    right = patients.withColumn("__emr_join_0", F.col("patient_id")).drop("patient_id")
    joined = visits.join(right, visits["patient_id"] == right["__emr_join_0"], "left")

    # De-identified rows in emrflow's column order: visit columns, then patient columns with the
    # date of birth replaced by the age.
    cols = []
    for name in visits.columns + [c for c in patients.columns if c != "patient_id"]:
        if name == "date_of_birth":
            cols.append(age_years(F.col("date_of_birth"), F.col("visit_date")).alias("age"))
        elif name in DROP:
            continue
        elif name in PSEUDONYMIZE:
            cols.append(pseudonym(F.col(name)).alias(name))
        else:
            cols.append(F.col(name))
    cases = [(F.col("__emr_join_0").isNull(), "join: no matching patients row")]
    cases += [(F.col(c).isNull(), f"null: {c}") for c in DROPNA + [LABEL]]
    cases += [((F.col(c).cast("double") < lo) | (F.col(c).cast("double") > hi), f"out of range: {c}")
              for c, (lo, hi) in RANGES]
    reason = F.when(cases[0][0], cases[0][1])
    for cond, text in cases[1:]:
        reason = reason.when(cond, text)
    tagged = joined.select(*cols, F.col("__emr_join_0")).withColumn("__emr_reason", reason)
    names = [c for c in tagged.columns if c not in ("__emr_join_0", "__emr_reason")]

    # Pass 1: rows per reason and the fitted statistics, in one aggregate grouped by reason.
    def x(c):
        return F.col(c).cast("double")

    aggs = [F.count("*").alias("n")]
    for c in MINMAX:
        aggs += [F.min(x(c)).alias(f"{c}_min"), F.max(x(c)).alias(f"{c}_max")]
    for c in ZSCORE:
        aggs += [F.avg(x(c)).alias(f"{c}_mean"), F.stddev_pop(x(c)).alias(f"{c}_std")]
    for c in ENCODE:
        aggs += [F.collect_set(F.col(c).cast("string")).alias(f"{c}_values")]
    aggs += [F.min(F.col(LABEL).cast("long")).alias("label_min"), F.max(F.col(LABEL).cast("long")).alias("label_max")]
    groups = tagged.groupBy("__emr_reason").agg(*aggs).collect()
    dropped = {g["__emr_reason"]: g["n"] for g in groups if g["__emr_reason"] is not None}
    kept = [g for g in groups if g["__emr_reason"] is None]
    if not kept:
        sys.exit(f"every row was dropped ({dropped})")
    stats = kept[0].asDict()
    if stats["label_min"] is not None and stats["label_min"] < 0:
        sys.exit("the label has negative values")

    # Pass 2: the kept rows, normalized and encoded, written as Parquet.
    out = []
    for c in names:
        if c in ZSCORE or c in MINMAX:
            if c in ZSCORE:
                mean, std = stats[f"{c}_mean"], stats[f"{c}_std"]
                expr = (x(c) - F.lit(mean)) / F.lit(std) if std > 0 else F.when(F.col(c).isNotNull(), F.lit(0.0))
            else:
                lo, hi = stats[f"{c}_min"], stats[f"{c}_max"]
                expr = (x(c) - F.lit(lo)) / F.lit(hi - lo) if hi > lo else F.when(F.col(c).isNotNull(), F.lit(0.0))
            out.append(expr.alias(c))
        elif c in ENCODE:
            values = sorted(stats[f"{c}_values"])
            s = F.col(c).cast("string")
            expr = F.when(s == values[0], F.lit(0))
            for i, v in enumerate(values[1:], start=1):
                expr = expr.when(s == v, F.lit(i))
            out.append(expr.cast("int").alias(c))
        else:
            out.append(F.col(c))
    tagged.where(F.col("__emr_reason").isNull()).select(*out).write.mode("overwrite").option(
        "compression", "snappy").parquet(args.out)
    seconds = time.time() - started

    rows = spark.read.parquet(args.out).count()
    spark.stop()
    print(json.dumps({"rows_out": rows, "rows_kept": stats["n"], "rows_in": sum(g["n"] for g in groups),
                      "rows_dropped": dict(sorted(dropped.items())), "seconds": seconds, "hmac": args.hmac}))


if __name__ == "__main__":
    main()
