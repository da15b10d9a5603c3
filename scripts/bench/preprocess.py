"""Preprocessing benchmark: emrflow run vs a plain DataFusion CSV-to-Parquet copy vs PySpark
local[2], on the same generated visits, in one run. Prints a Markdown table for BENCHMARKS.md.

Usage: scripts/bench-preprocess [VISITS]
"""

import json
import os
import statistics
import subprocess
import sys
import time

BIN, PY, WORK, VISITS = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
KEY = "benchmark-key-0123456789abcdef"
DATA = f"{WORK}/data"
ENV = dict(os.environ, EMRFLOW_PSEUDONYM_KEY=KEY, RUST_LOG="error")


def run_json(cmd):
    t = time.time()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=ENV)
    wall = time.time() - t
    return json.loads(out.stdout.strip().splitlines()[-1]), wall


def median_of(cmd, runs):
    results = [run_json(cmd) for _ in range(runs)]
    return statistics.median(r[0]["seconds"] for r in results), statistics.median(r[1] for r in results), results[-1][0]


if not os.path.exists(f"{DATA}/visits.csv"):
    subprocess.run([BIN, "generate", "--visits", str(VISITS), "--seed", "42", "--out", DATA], check=True, env=ENV)

emr_job, emr_wall, emr = median_of(
    [BIN, "run", "examples/stroke-synthetic.toml", "--input", f"visits={DATA}/visits.csv",
     "--input", f"patients={DATA}/patients.csv", "--out", f"{WORK}/emrflow-out", "--overwrite", "--json"], RUNS)
subprocess.run(["rm", "-rf", f"{WORK}/copy-out"], check=True)
copy_runs = []
for _ in range(RUNS):
    subprocess.run(["rm", "-rf", f"{WORK}/copy-out"], check=True)
    copy_runs.append(run_json([BIN, "bench", "csv-to-parquet", "--out", f"{WORK}/copy-out", "--json",
                               f"{DATA}/visits.csv", f"{DATA}/patients.csv"]))
copy_job = statistics.median(r[0]["seconds"] for r in copy_runs)
copy_wall = statistics.median(r[1] for r in copy_runs)
spark_runs = [run_json([PY, "scripts/bench/preprocess_pyspark.py", "--data", DATA, "--out", f"{WORK}/spark-out", "--key", KEY])
              for _ in range(max(1, RUNS - 1))]
spark_job = statistics.median(r[0]["seconds"] for r in spark_runs)
spark_wall = statistics.median(r[1] for r in spark_runs)

print(f"| engine ({VISITS:,} visits + join) | job seconds (median of runs) | process wall seconds | rows out |")
print("|---|---|---|---|")
print(f"| emrflow run (DataFusion embedded) | {emr_job:.2f} | {emr_wall:.2f} | {emr['rows_out']:,} |")
print(f"| plain DataFusion CSV→Parquet copy | {copy_job:.2f} | {copy_wall:.2f} | {copy_runs[-1][0]['rows']:,} (copied) |")
print(f"| PySpark local[2] | {spark_job:.2f} | {spark_wall:.2f} | {spark_runs[-1][0]['rows_out']:,} |")
print()
print(f"emrflow vs PySpark: {spark_job / emr_job:.1f}x faster (job), {spark_wall / emr_wall:.1f}x (wall); "
      f"emrflow vs plain copy: {emr_job / copy_job:.2f}x the copy's time")
