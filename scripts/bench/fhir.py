"""FHIR Bulk Data input benchmark: the stroke job over a FHIR R4 export (examples/stroke-fhir.toml)
against the same job over the CSV tables of the same population (examples/stroke-synthetic.toml),
and PySpark local[2] flattening the export (scripts/bench/fhir_pyspark.py), in one run.

The population is generated once per size with seed 7, in both formats, and kept in the work
directory. The three legs run in interleaved rounds (emrflow over FHIR, over CSV, PySpark, then
again), so a noisy stretch of a shared machine hits all of them. Every round checks that the two
emrflow runs publish the same dataset root; after the rounds it checks that PySpark wrote one row
per visit emrflow read, with the values of the CSV tables. Prints a Markdown table and, last,
one JSON line. Exits 1 when a check fails.

Usage: scripts/bench-fhir [VISITS]   (BENCH_RUNS=N rounds, default 3)
"""

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys

from legs import load, log, run_json as run_leg

BIN, PY, WORK, VISITS = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
SEED = 7
KEY = "b3e1c0d5a9f2e4b7c6d8a1f0e3b5c7d9a2e4f6b8c0d1e3f5a7b9c2d4e6f8a0b1"
CSV, FHIR = f"{WORK}/csv", f"{WORK}/fhir"
# `emrflow run` always anchors: the embedded ledger lives in the work directory, and the figures
# are of the embedded engine whatever the caller's environment names.
ENV = {k: v for k, v in os.environ.items() if k not in ("EMRFLOW_LEDGER", "EMRFLOW_IDENTITY", "EMRFLOW_CLUSTER")}
ENV.update(EMRFLOW_PSEUDONYM_KEY=KEY, EMRFLOW_HOME=f"{WORK}/home", RUST_LOG="error")
FHIR_OUT, CSV_OUT, SPARK_OUT = f"{WORK}/emrflow-fhir-out", f"{WORK}/emrflow-csv-out", f"{WORK}/spark-out"


def run_json(name, cmd):
    return run_leg(name, cmd, ENV)


def generate(fmt, out):
    """Writes the population in `fmt` once; a stamp written last marks a finished copy of this
    size and seed, so an interrupted generation is redone rather than benchmarked. The stamp
    sits beside the directory: emrflow reads and hashes every file of an export's directory."""
    stamp = f"{out}.generated.json"
    want = {"visits": VISITS, "seed": SEED, "format": fmt}
    if os.path.exists(stamp):
        with open(stamp) as f:
            if {k: v for k, v in json.load(f).items() if k in want} == want:
                return
    log(f"generating {VISITS:,} visits as {fmt} in {out}")
    shutil.rmtree(out, ignore_errors=True)
    got = subprocess.run([BIN, "generate", "--visits", str(VISITS), "--seed", str(SEED), "--format", fmt,
                          "--out", out, "--json"], check=True, capture_output=True, text=True, env=ENV)
    summary = json.loads(got.stdout.strip().splitlines()[-1])
    with open(stamp, "w") as f:
        json.dump({**want, "summary": summary}, f)


def size(directory):
    return sum(e.stat().st_size for e in os.scandir(directory) if e.is_file())


def human(n):
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


generate("csv", CSV)
generate("fhir", FHIR)

legs = {
    "emrflow-fhir": [BIN, "run", "examples/stroke-fhir.toml", "--input", f"visits={FHIR}/manifest.json",
                     "--input", f"patients={FHIR}/manifest.json", "--out", FHIR_OUT, "--overwrite", "--json"],
    "emrflow-csv": [BIN, "run", "examples/stroke-synthetic.toml", "--input", f"visits={CSV}/visits.csv",
                    "--input", f"patients={CSV}/patients.csv", "--out", CSV_OUT, "--overwrite", "--json"],
    "pyspark-fhir": [PY, "scripts/bench/fhir_pyspark.py", "--export", FHIR, "--out", SPARK_OUT],
}
runs = {name: [] for name in legs}
loads = [load()]
checks = []
for r in range(RUNS):
    log(f"round {r + 1} of {RUNS}")
    for name, cmd in legs.items():
        runs[name].append(run_json(name, cmd))
        loads.append(load())
    fhir, csv = runs["emrflow-fhir"][-1][0], runs["emrflow-csv"][-1][0]
    if fhir["root"] != csv["root"]:
        checks.append(f"round {r + 1}: dataset roots differ: FHIR {fhir['root']}, CSV {csv['root']}")
roots = {res["root"] for name in ("emrflow-fhir", "emrflow-csv") for res, _ in runs[name]}
if len(roots) > 1 and not checks:
    checks.append(f"the dataset root changed between rounds: {sorted(roots)}")

fhir, csv, spark = (runs[name][-1][0] for name in legs)
if fhir["rows_in"] != csv["rows_in"] or fhir["rows_out"] != csv["rows_out"]:
    checks.append(f"emrflow's rows differ: FHIR in {fhir['rows_in']} out {fhir['rows_out']}, "
                  f"CSV in {csv['rows_in']} out {csv['rows_out']}")
if spark["rows_out"] != fhir["rows_in"]["visits"]:
    checks.append(f"PySpark wrote {spark['rows_out']:,} rows, emrflow read {fhir['rows_in']['visits']:,} visits")

# Same values? PySpark's rows against the CSV tables of the same population joined the same way:
# emrflow's FHIR and CSV runs publish one root, so the CSV tables are what both flattenings
# must give.
log("checking PySpark's rows against the CSV tables")
import pyarrow.csv as pacsv  # noqa: E402
import pyarrow.dataset as ds  # noqa: E402

got = ds.dataset(SPARK_OUT, format="parquet", exclude_invalid_files=True).to_table()
types = {f.name: f.type for f in got.schema}


def read_csv(name):
    with open(f"{CSV}/{name}") as f:
        names = f.readline().strip().split(",")
    options = pacsv.ConvertOptions(column_types={c: types[c] for c in names if c in types},
                                   strings_can_be_null=True)
    return pacsv.read_csv(f"{CSV}/{name}", convert_options=options)


want = read_csv("visits.csv").join(read_csv("patients.csv"), "patient_id", join_type="left outer")
differ = []
if sorted(want.column_names) != sorted(got.column_names) or want.num_rows != got.num_rows:
    differ.append(f"columns or rows differ: CSV {want.num_rows:,} rows {sorted(want.column_names)}, "
                  f"PySpark {got.num_rows:,} rows {sorted(got.column_names)}")
else:
    want, got = want.sort_by("visit_id"), got.sort_by("visit_id")
    for c in got.column_names:
        a, b = want.column(c).combine_chunks(), got.column(c).combine_chunks()
        if not a.cast(b.type).equals(b):
            differ.append(c)
if differ:
    checks.append(f"PySpark's rows differ from the CSV tables: {', '.join(differ)}")
verdict = "; ".join(checks) if checks else (
    f"same root {fhir['root'][:16]}… over FHIR and CSV in every round, {fhir['rows_in']['visits']:,} visits in, "
    f"{fhir['rows_out']:,} rows out; PySpark wrote {spark['rows_out']:,} rows, equal to the CSV tables joined, "
    f"column for column")
log(verdict)


def seconds(name):
    return [res["seconds"] for res, _ in runs[name]]


def walls(name):
    return [wall for _, wall in runs[name]]


names = list(legs)
best = {name: min(seconds(name)) for name in names}
fhir_over_csv = best["emrflow-fhir"] / best["emrflow-csv"]
spark_over_fhir = best["pyspark-fhir"] / best["emrflow-fhir"]
export_bytes, csv_bytes = size(FHIR), size(CSV)

cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
print(f"Machine: {platform.machine()}, {os.cpu_count()} cores ({cpu}), Linux {platform.release()}; "
      f"{RUNS} interleaved rounds; 1-minute load average {min(loads):.2f}-{max(loads):.2f} during the run.")
print(f"Data: {VISITS:,} visits, seed {SEED}: FHIR export {human(export_bytes)} of NDJSON, "
      f"CSV tables {human(csv_bytes)}.")
print()
print("| round | emrflow FHIR s | emrflow CSV s | PySpark FHIR s | FHIR / CSV | PySpark / FHIR |")
print("|---|---:|---:|---:|---:|---:|")
for r in range(RUNS):
    f, c, s = (seconds(name)[r] for name in names)
    print(f"| {r + 1} | {f:.2f} | {c:.2f} | {s:.2f} | {f / c:.1f}x | {s / f:.1f}x |")
print(f"| best | {best['emrflow-fhir']:.2f} | {best['emrflow-csv']:.2f} | {best['pyspark-fhir']:.2f} | "
      f"{fhir_over_csv:.1f}x | {spark_over_fhir:.1f}x |")
print()
print("- Job seconds (emrflow's --json, PySpark after its session is up); process wall, median: "
      + ", ".join(f"{name} {statistics.median(walls(name)):.2f} s" for name in names) + ".")
print("- PySpark flattens, joins and writes; it does not de-identify, drop, normalize, encode or anchor "
      "(see scripts/bench/fhir_pyspark.py), so its time is a lower bound for the whole job.")
print(f"- Targets: FHIR <= 2x the CSV job (now {fhir_over_csv:.1f}x), PySpark >= 10x the FHIR job "
      f"(now {spark_over_fhir:.1f}x).")
print(f"- Check: {verdict}.")
print(json.dumps({
    "bench": "fhir", "visits": VISITS, "seed": SEED, "rounds": RUNS,
    "seconds": {name: seconds(name) for name in names},
    "wall_seconds": {name: walls(name) for name in names},
    "best_seconds": best,
    "fhir_over_csv": fhir_over_csv, "pyspark_over_fhir": spark_over_fhir,
    "root": fhir["root"], "rows_in": fhir["rows_in"], "rows_out": fhir["rows_out"],
    "pyspark_rows": spark["rows_out"], "export_bytes": export_bytes, "csv_bytes": csv_bytes,
    "ok": not checks, "checks": checks,
}))
sys.exit(1 if checks else 0)
