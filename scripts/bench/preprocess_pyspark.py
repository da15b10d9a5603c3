"""The stroke-synthetic job written in PySpark, for the preprocessing benchmark.

Same work as examples/stroke-synthetic.toml: left join visits with patients, drop the PII
columns, pseudonymize patient_id and visit_id with HMAC-SHA256 (a vectorized pandas UDF, since
Spark has no built-in HMAC), age at the visit from the date of birth (capped at 90), range checks,
dropna, fit z-score/min-max statistics and category lists on the kept rows, transform, and write
Parquet. Prints one JSON line: rows out and seconds (the job only, after the session is up).
"""

import argparse
import hashlib
import hmac
import json
import time

import pandas as pd
from pyspark.sql import SparkSession, functions as F, types as T

DROP = ["full_name", "national_id", "phone", "email", "street_address", "clinical_notes"]
RANGES = {"systolic_bp": (60, 260), "heart_rate": (25, 250), "bmi": (10, 80), "avg_glucose": (40, 600)}
DROPNA = ["systolic_bp", "heart_rate", "bmi", "avg_glucose", "cholesterol", "smoking_status"]
ZSCORE = ["age", "systolic_bp", "diastolic_bp", "heart_rate", "bmi", "cholesterol"]
MINMAX = ["avg_glucose"]
ENCODE = ["gender", "facility_id", "smoking_status", "icd10_primary"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--key", required=True)
    args = ap.parse_args()
    key = args.key.encode()

    spark = (
        SparkSession.builder.master("local[2]")
        .appName("emrflow-bench-preprocess")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.driver.memory", "8g")
        .config("spark.ui.enabled", "false")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")

    @F.pandas_udf(T.StringType())
    def pseudonym(s: pd.Series) -> pd.Series:
        return s.map(lambda v: None if v is None else hmac.new(key, v.encode(), hashlib.sha256).hexdigest())

    started = time.time()
    visits = spark.read.csv(f"{args.data}/visits.csv", header=True, inferSchema=True)
    patients = spark.read.csv(f"{args.data}/patients.csv", header=True, inferSchema=True)
    df = visits.join(patients, on="patient_id", how="left")
    df = df.withColumn("age", F.least(F.floor(F.months_between("visit_date", "date_of_birth") / 12), F.lit(90)))
    df = df.drop(*DROP, "date_of_birth", "visit_date")
    df = df.withColumn("patient_id", pseudonym(F.col("patient_id").cast("string")))
    df = df.withColumn("visit_id", pseudonym(F.col("visit_id").cast("string")))
    for c in DROPNA + ["stroke"]:
        df = df.filter(F.col(c).isNotNull())
    for c, (lo, hi) in RANGES.items():
        df = df.filter((F.col(c) >= lo) & (F.col(c) <= hi))

    aggs = []
    for c in ZSCORE:
        aggs += [F.avg(c).alias(f"{c}_mean"), F.stddev_pop(c).alias(f"{c}_std")]
    for c in MINMAX:
        aggs += [F.min(c).alias(f"{c}_min"), F.max(c).alias(f"{c}_max")]
    for c in ENCODE:
        aggs += [F.collect_set(c).alias(f"{c}_values")]
    stats = df.agg(*aggs).collect()[0].asDict()

    for c in ZSCORE:
        df = df.withColumn(c, (F.col(c) - stats[f"{c}_mean"]) / stats[f"{c}_std"])
    for c in MINMAX:
        df = df.withColumn(c, (F.col(c) - stats[f"{c}_min"]) / (stats[f"{c}_max"] - stats[f"{c}_min"]))
    for c in ENCODE:
        values = sorted(stats[f"{c}_values"])
        expr = F.lit(None).cast("int")
        for i, v in enumerate(values):
            expr = F.when(F.col(c) == v, F.lit(i)).otherwise(expr)
        df = df.withColumn(c, expr)
    df.write.mode("overwrite").parquet(args.out)
    rows = spark.read.parquet(args.out).count()
    seconds = time.time() - started
    spark.stop()
    print(json.dumps({"rows_out": rows, "seconds": seconds}))


if __name__ == "__main__":
    main()
