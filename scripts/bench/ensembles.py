"""Ensembles benchmark: emrflow's random forest and gradient-boosted trees against scikit-learn,
LightGBM, XGBoost (hist) and Spark MLlib local[2], at matched trees and depth, on the same rows.

Every system trains on the rows `emrflow run` published, with emrflow's 80/20 split: the script
recomputes emrflow's seeded row-key hash (scripts/bench_train.py) and checks that its test rows
are exactly as many as emrflow's. Every peer uses 2 threads (n_jobs=2, local[2]). emrflow's time
is the `training_seconds` its `train` command reports (reading Parquet, profiling, binning,
growing, scoring the test rows and explaining a sample of them); the peers' is `fit` alone on
data already in memory (Spark's cached and counted first), so the comparison is conservative for
emrflow. Writes the "## Ensembles" section of BENCHMARKS.md.

Usage: scripts/bench-ensembles [VISITS]
"""

import argparse
import datetime
import glob
import json
import math
import os
import platform
import re
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench_train import SALT_TEST_SPLIT, derive_seed, hash_keys  # noqa: E402

SEED = 42
THREADS = 2


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def load(dataset):
    """Features, train and test arrays of a published dataset, split as emrflow splits it."""
    manifest = json.load(open(os.path.join(dataset, "manifest.json")))
    label, key = manifest["label"], manifest["row_key"]
    features = [f["name"] for f in manifest["features"] if f["name"] != label]
    files = sorted(glob.glob(os.path.join(dataset, "*.parquet")))
    table = pa.concat_tables([pq.read_table(f, columns=features + [label, key]) for f in files])
    df = table.to_pandas()
    h = hash_keys(derive_seed(SEED, SALT_TEST_SPLIT), df[key].to_numpy())
    test = h < np.uint64(int(0.2 * 18446744073709551616.0))
    X = df[features].to_numpy(dtype=np.float64)
    y = df[label].to_numpy(dtype=np.int64)
    return features, X[~test], y[~test], X[test], y[test]


def best_of(runs, fit):
    """The shortest of `runs` timed calls of `fit`, and the last result."""
    best, result = None, None
    for _ in range(runs):
        start = time.perf_counter()
        result = fit()
        elapsed = time.perf_counter() - start
        best = elapsed if best is None else min(best, elapsed)
    return best, result


def auc(y, p):
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, p))


def emrflow(args, dataset, out, extra, runs, test_rows):
    cmd = [args.emrflow, "train", "--dataset", dataset, "--out", out, "--max-bins", "32",
           "--folds", "0", "--seed", str(SEED), "--overwrite", "--json"] + extra
    walls, fits, summary = [], [], None
    for _ in range(runs):
        start = time.perf_counter()
        done = subprocess.run(cmd, check=True, capture_output=True, text=True)
        walls.append(time.perf_counter() - start)
        summary = json.loads(done.stdout)
        fits.append(summary["training_seconds"])
    if summary["test_rows"] != test_rows:
        raise SystemExit(f"split mismatch: emrflow tested {summary['test_rows']} rows, this script {test_rows}")
    return {"seconds": min(fits), "wall": min(walls), "auc": summary["test"]["roc_auc"],
            "passes": json.load(open(os.path.join(out, "metrics.json")))["passes"]}


def spark_session():
    from pyspark.sql import SparkSession

    spark = (SparkSession.builder.master(f"local[{THREADS}]").appName("emrflow-bench-ensembles")
             .config("spark.driver.memory", "8g").config("spark.ui.enabled", "false")
             .config("spark.sql.shuffle.partitions", "4").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def spark_frames(spark, X_train, y_train, X_test, y_test):
    import pandas as pd
    from pyspark.ml.feature import VectorAssembler

    cols = [f"f{i}" for i in range(X_train.shape[1])]

    def frame(X, y):
        pdf = pd.DataFrame(X, columns=cols)
        pdf["label"] = y.astype(float)
        sdf = spark.createDataFrame(pdf)
        assembler = VectorAssembler(inputCols=cols, outputCol="features", handleInvalid="keep")
        return assembler.transform(sdf).select("features", "label").cache()

    train, test = frame(X_train, y_train), frame(X_test, y_test)
    train.count()
    test.count()
    return train, test


def spark_auc(model, test):
    pred = model.transform(test).select("label", "probability").toPandas()
    return auc(pred["label"].to_numpy().astype(int), np.array([v[1] for v in pred["probability"]]))


def run_dataset(args, name, dataset, work, sizes, emrflow_runs, peer_runs, spark):
    """Every system on one dataset; returns rows of (family, system, seconds, auc, note)."""
    features, X_train, y_train, X_test, y_test = load(dataset)
    n_features = len(features)
    per_node = math.ceil(math.sqrt(n_features))
    trees, fdepth, iters, gdepth = sizes
    log(f"== {name}: {len(y_train):,} train / {len(y_test):,} test rows, {n_features} features")
    rows = []

    def add(family, system, seconds, score, note=""):
        rows.append((family, system, seconds, score, note))
        log(f"   {family:<6} {system:<34} {seconds:8.2f} s  AUC {score:.4f} {note}")

    # Random forests: `trees` trees of depth `fdepth`, √n features per node, bootstrap samples.
    r = emrflow(args, dataset, os.path.join(work, f"{name}-forest"),
                ["--model", "random-forest", "--num-trees", str(trees), "--max-depth", str(fdepth)],
                emrflow_runs, len(y_test))
    add("forest", "emrflow", r["seconds"], r["auc"], f"(whole command {r['wall']:.2f} s, {r['passes']} passes)")

    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    import lightgbm
    import sklearn
    import xgboost

    s, m = best_of(peer_runs, lambda: RandomForestClassifier(
        n_estimators=trees, max_depth=fdepth, max_features="sqrt", n_jobs=THREADS,
        random_state=0).fit(X_train, y_train))
    add("forest", f"scikit-learn {sklearn.__version__}", s, auc(y_test, m.predict_proba(X_test)[:, 1]))
    s, m = best_of(peer_runs, lambda: lightgbm.LGBMClassifier(
        boosting_type="rf", n_estimators=trees, max_depth=fdepth, num_leaves=2 ** fdepth,
        bagging_fraction=0.632, bagging_freq=1, feature_fraction_bynode=per_node / n_features,
        max_bin=32, min_child_samples=1, n_jobs=THREADS, verbose=-1).fit(X_train, y_train))
    add("forest", f"LightGBM {lightgbm.__version__} (rf)", s, auc(y_test, m.predict_proba(X_test)[:, 1]))
    s, m = best_of(peer_runs, lambda: xgboost.XGBRFClassifier(
        n_estimators=trees, max_depth=fdepth, subsample=0.632, colsample_bynode=per_node / n_features,
        tree_method="hist", max_bin=32, n_jobs=THREADS).fit(X_train, y_train))
    add("forest", f"XGBoost {xgboost.__version__} (hist, rf)", s, auc(y_test, m.predict_proba(X_test)[:, 1]))

    # Boosted trees: `iters` trees of depth `gdepth`, step 0.1, λ = 1.
    r = emrflow(args, dataset, os.path.join(work, f"{name}-gbt"),
                ["--model", "gbt", "--max-iter", str(iters), "--max-depth", str(gdepth),
                 "--step-size", "0.1"],
                emrflow_runs, len(y_test))
    add("gbt", "emrflow", r["seconds"], r["auc"], f"(whole command {r['wall']:.2f} s, {r['passes']} passes)")
    s, m = best_of(peer_runs, lambda: HistGradientBoostingClassifier(
        max_iter=iters, max_depth=gdepth, max_leaf_nodes=None, learning_rate=0.1, max_bins=31,
        l2_regularization=1.0, min_samples_leaf=1, early_stopping=False,
        random_state=0).fit(X_train, y_train))
    add("gbt", f"scikit-learn {sklearn.__version__} (HistGradientBoosting)", s,
        auc(y_test, m.predict_proba(X_test)[:, 1]))
    s, m = best_of(peer_runs, lambda: lightgbm.LGBMClassifier(
        n_estimators=iters, max_depth=gdepth, num_leaves=2 ** gdepth, learning_rate=0.1,
        max_bin=32, reg_lambda=1.0, min_child_samples=1, n_jobs=THREADS, verbose=-1).fit(X_train, y_train))
    add("gbt", f"LightGBM {lightgbm.__version__}", s, auc(y_test, m.predict_proba(X_test)[:, 1]))
    s, m = best_of(peer_runs, lambda: xgboost.XGBClassifier(
        n_estimators=iters, max_depth=gdepth, learning_rate=0.1, tree_method="hist", max_bin=32,
        reg_lambda=1.0, n_jobs=THREADS).fit(X_train, y_train))
    add("gbt", f"XGBoost {xgboost.__version__} (hist)", s, auc(y_test, m.predict_proba(X_test)[:, 1]))

    # Spark MLlib: fit on cached DataFrames.
    import pyspark
    from pyspark.ml.classification import GBTClassifier, RandomForestClassifier as SparkForest

    train, test = spark_frames(spark, X_train, y_train, X_test, y_test)
    s, m = best_of(1, lambda: SparkForest(numTrees=trees, maxDepth=fdepth, maxBins=32,
                                          featureSubsetStrategy="sqrt", seed=SEED).fit(train))
    add("forest", f"Spark MLlib {pyspark.__version__} local[2]", s, spark_auc(m, test))
    s, m = best_of(1, lambda: GBTClassifier(maxIter=iters, maxDepth=gdepth, stepSize=0.1, maxBins=32,
                                            seed=SEED).fit(train))
    add("gbt", f"Spark MLlib {pyspark.__version__} local[2]", s, spark_auc(m, test))
    train.unpersist()
    test.unpersist()
    return rows, len(y_train), len(y_test), n_features


def table(rows, family):
    ours = next(r for r in rows if r[0] == family and r[1] == "emrflow")
    lines = ["| system | fit s | emrflow faster by | ROC AUC | AUC − emrflow (points) |",
             "|---|---:|---:|---:|---:|"]
    for fam, system, seconds, score, note in rows:
        if fam != family:
            continue
        if system == "emrflow":
            lines.append(f"| **emrflow** {note} | {seconds:.2f} | 1× | {score:.4f} | |")
        else:
            lines.append(f"| {system} | {seconds:.2f} | {seconds / ours[2]:.1f}× | {score:.4f} | "
                         f"{100 * (score - ours[3]):+.2f} |")
    return lines


def verdict(rows, family):
    ours = next(r for r in rows if r[0] == family and r[1] == "emrflow")
    peers = [r for r in rows if r[0] == family and r[1] != "emrflow"]
    best = max(peers, key=lambda r: r[3])
    by = {r[1].split(" ")[0]: r for r in peers}
    gap = 100 * (best[3] - ours[3])

    def ratio(system):
        return by[system][2] / ours[2]

    def met(ok):
        return "met" if ok else "missed"

    return (f"{family}: AUC {100 * ours[3]:.2f} vs best peer {100 * best[3]:.2f} ({best[1]}), "
            f"{gap:+.2f} points behind ({met(gap <= 0.5)}); fit {ratio('Spark'):.1f}× faster than Spark "
            f"({met(ratio('Spark') >= 20)}), {ratio('scikit-learn'):.1f}× scikit-learn ({met(ratio('scikit-learn') >= 3)}), "
            f"{ratio('LightGBM'):.2f}× LightGBM ({met(ratio('LightGBM') >= 1)})")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--emrflow", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--visits", type=int, required=True)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--kaggle-dataset")
    ap.add_argument("--benchmarks", required=True)
    args = ap.parse_args()
    sizes = (int(os.environ.get("BENCH_TREES", "50")), int(os.environ.get("BENCH_FOREST_DEPTH", "10")),
             int(os.environ.get("BENCH_ITERATIONS", "100")), int(os.environ.get("BENCH_GBT_DEPTH", "6")))
    os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))
    load_before = os.getloadavg()
    spark = spark_session()
    big, n_train, n_test, n_features = run_dataset(args, "visits", args.dataset, args.work, sizes, 3, 2, spark)
    small = None
    if args.kaggle_dataset:
        small = run_dataset(args, "kaggle", args.kaggle_dataset, args.work, sizes, 3, 3, spark)
    spark.stop()
    load_after = os.getloadavg()
    trees, fdepth, iters, gdepth = sizes
    lines = [
        "## Ensembles",
        "",
        f"Random forests of {trees} trees of depth {fdepth} (√n features per node, bootstrap) and "
        f"{iters} boosted trees of depth {gdepth} (step 0.1, λ = 1), 32 bins, on the same 80/20 split for "
        "every system (the script recomputes emrflow's row-key hash and checks the test row count), "
        f"2 threads each. Run {datetime.date.today().isoformat()} on {platform.machine()}, "
        f"{os.cpu_count()} cores; 1-minute load average {load_before[0]:.1f} before, {load_after[0]:.1f} after; "
        f"`scripts/bench-ensembles {args.visits}`.",
        "",
        "emrflow's time is its command's `training_seconds` (reading Parquet, profiling, binning, growing, "
        "scoring the test rows, explaining 256 of them), best of 3; the peers' is `fit` alone on arrays "
        "in memory (Spark's cached), best of 2 (Spark: 1). The whole command adds checking the dataset "
        "against its ledger anchor and anchoring the model.",
        "",
        f"### {args.visits:,} generated visits ({n_train:,} train / {n_test:,} test rows, {n_features} features)",
        "",
        "Random forest:",
        "",
        *table(big, "forest"),
        "",
        "Gradient-boosted trees:",
        "",
        *table(big, "gbt"),
        "",
        f"- {verdict(big, 'forest')}.",
        f"- {verdict(big, 'gbt')}.",
        "",
    ]
    if small:
        rows, s_train, s_test, s_features = small
        lines += [
            f"### The public stroke file ({s_train:,} train / {s_test:,} test rows, {s_features} features)",
            "",
            "Random forest:",
            "",
            *table(rows, "forest"),
            "",
            "Gradient-boosted trees:",
            "",
            *table(rows, "gbt"),
            "",
            f"- {verdict(rows, 'forest')}.",
            f"- {verdict(rows, 'gbt')}.",
            "",
        ]
    section = "\n".join(lines)
    text = open(args.benchmarks).read() if os.path.exists(args.benchmarks) else "# Benchmarks\n"
    pattern = re.compile(r"^## Ensembles\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(section + "\n", text)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    open(args.benchmarks, "w").write(text.rstrip("\n") + "\n")
    print(section)


if __name__ == "__main__":
    main()
