"""Preprocessing benchmark: emrflow run vs a plain DataFusion CSV-to-Parquet copy vs PySpark
local[2], on the same generated visits, in one run. The three legs run in interleaved rounds
(emrflow, copy, PySpark, then again), so a noisy stretch of a shared machine hits all of them.
After the timed rounds it checks that PySpark and emrflow kept and dropped the same rows and
wrote the same values. Prints a Markdown table for BENCHMARKS.md.

Usage: scripts/bench-preprocess [VISITS]   (BENCH_RUNS=N rounds, default 3)
"""

import os
import platform
import statistics
import subprocess
import sys

from legs import load, log, run_json as run_leg

BIN, PY, WORK, VISITS = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
KEY = "b3e1c0d5a9f2e4b7c6d8a1f0e3b5c7d9a2e4f6b8c0d1e3f5a7b9c2d4e6f8a0b1"
DATA = f"{WORK}/data"
ENV = dict(os.environ, EMRFLOW_PSEUDONYM_KEY=KEY, RUST_LOG="error")
EMR_OUT, COPY_OUT, SPARK_OUT = f"{WORK}/emrflow-out", f"{WORK}/copy-out", f"{WORK}/spark-out"


def run_json(name, cmd):
    return run_leg(name, cmd, ENV)


if not os.path.exists(f"{DATA}/visits.csv"):
    subprocess.run([BIN, "generate", "--visits", str(VISITS), "--seed", "42", "--out", DATA], check=True, env=ENV)

legs = {
    "emrflow": [BIN, "run", "examples/stroke-synthetic.toml", "--input", f"visits={DATA}/visits.csv",
                "--input", f"patients={DATA}/patients.csv", "--out", EMR_OUT, "--overwrite", "--json"],
    "copy": [BIN, "bench", "csv-to-parquet", "--out", COPY_OUT, "--json",
             f"{DATA}/visits.csv", f"{DATA}/patients.csv"],
    "pyspark": [PY, "scripts/bench/preprocess_pyspark.py", "--data", DATA, "--out", SPARK_OUT, "--key", KEY],
}
runs = {name: [] for name in legs}
loads = [load()]
for r in range(RUNS):
    log(f"round {r + 1} of {RUNS}")
    for name, cmd in legs.items():
        if name == "copy":
            subprocess.run(["rm", "-rf", COPY_OUT], check=True)
        runs[name].append(run_json(name, cmd))
        loads.append(load())


def summary(name):
    jobs = [r[0]["seconds"] for r in runs[name]]
    walls = [r[1] for r in runs[name]]
    return min(jobs), statistics.median(jobs), min(walls), statistics.median(walls), runs[name][-1][0]


emr_best, emr_med, emr_wbest, emr_wmed, emr = summary("emrflow")
copy_best, copy_med, copy_wbest, copy_wmed, copy = summary("copy")
spark_best, spark_med, spark_wbest, spark_wmed, spark = summary("pyspark")

# Same rows? Compare counts per drop reason, then the written values row by row (by pseudonym).
log("checking that PySpark and emrflow wrote the same dataset")
import numpy as np  # noqa: E402
import pyarrow.dataset as ds  # noqa: E402

checks = []
if spark["rows_out"] != emr["rows_out"]:
    checks.append(f"rows out differ: emrflow {emr['rows_out']}, PySpark {spark['rows_out']}")
if spark["rows_dropped"] != emr["rows_dropped"]:
    checks.append(f"drop counts differ: emrflow {emr['rows_dropped']}, PySpark {spark['rows_dropped']}")
a = ds.dataset(EMR_OUT, format="parquet", exclude_invalid_files=True).to_table().to_pandas()
b = ds.dataset(SPARK_OUT, format="parquet", exclude_invalid_files=True).to_table().to_pandas()
if list(a.columns) != list(b.columns):
    checks.append(f"columns differ: emrflow {list(a.columns)}, PySpark {list(b.columns)}")
else:
    a = a.set_index("visit_id").sort_index()
    b = b.set_index("visit_id").sort_index()
    if not a.index.equals(b.index):
        checks.append("the pseudonymized visit_id values differ")
    else:
        worst = 0.0
        for c in a.columns:
            x, y = a[c], b[c]
            if x.dtype.kind == "f" or y.dtype.kind == "f":
                xs, ys = x.astype(float).to_numpy(), y.astype(float).to_numpy()
                if not np.array_equal(np.isnan(xs), np.isnan(ys)):
                    checks.append(f"{c}: nulls differ")
                else:
                    worst = max(worst, float(np.nanmax(np.abs(xs - ys), initial=0.0)))
            elif not (x.astype(str).to_numpy() == y.astype(str).to_numpy()).all():
                checks.append(f"{c}: values differ")
        if worst > 1e-9:
            checks.append(f"normalized values differ by up to {worst:g}")
verdict = "; ".join(checks) if checks else (
    f"same {emr['rows_out']:,} rows, same drop counts, same values "
    f"(pseudonyms and encodings equal, normalized floats within {worst:.0e})")
log(verdict)

cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
print(f"Machine: {platform.machine()}, {os.cpu_count()} cores ({cpu}), Linux {platform.release()}; "
      f"{RUNS} interleaved rounds; 1-minute load average {min(loads):.2f}-{max(loads):.2f} during the run.")
print()
print(f"| leg ({VISITS:,} visits + join) | job s, best | job s, median | process wall s, median | rows out |")
print("|---|---:|---:|---:|---:|")
print(f"| emrflow run | {emr_best:.2f} | {emr_med:.2f} | {emr_wmed:.2f} | {emr['rows_out']:,} |")
print(f"| plain DataFusion CSV→Parquet copy | {copy_best:.2f} | {copy_med:.2f} | {copy_wmed:.2f} | "
      f"{copy['rows']:,} copied |")
print(f"| PySpark local[2] | {spark_best:.2f} | {spark_med:.2f} | {spark_wmed:.2f} | {spark['rows_out']:,} |")
print()
print(f"- emrflow vs PySpark: {spark_best / emr_best:.1f}x faster (best job), {spark_med / emr_med:.1f}x (median job), "
      f"{spark_wmed / emr_wmed:.1f}x (median process wall); target >= 10x.")
print(f"- emrflow vs plain copy: {copy_best / emr_best:.2f}x the copy's speed (best job), "
      f"{copy_med / emr_med:.2f}x (median job); target >= 0.8x.")
print(f"- Output check: {verdict}.")
