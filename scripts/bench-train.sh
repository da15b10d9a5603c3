#!/usr/bin/env bash
# Training benchmark (not a test): emrflow vs scikit-learn vs Spark MLlib local[2] on the same
# preprocessed data and the same 80/20 split, decision tree depth 10, 32 bins.
#
#   scripts/bench-train.sh [VISITS]        # default 1,000,000
#
# Writes the "## Training" section of BENCHMARKS.md. Its Python dependencies live in the virtual
# environment scripts/bench-venv creates under ~/.cache on first use. Needs python3 and java 17.
set -euo pipefail

VISITS="${1:-1000000}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="${EMRFLOW_BENCH_DIR:-$ROOT/bench-out/train}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/emrflow-target}"

cd "$ROOT"
if [ -n "${EMRFLOW_BIN:-}" ]; then
  BIN="$EMRFLOW_BIN"
else
  echo "== building emrflow (dev profile, optimized)" >&2
  cargo build --workspace --bins >&2
  BIN="$CARGO_TARGET_DIR/debug/emrflow"
fi

PY="$(scripts/bench-venv)"

mkdir -p "$WORK"
# Its own embedded ledger: the datasets it keeps between runs are anchored there, and the
# user's ledger gets no benchmark anchors.
export EMRFLOW_HOME="$WORK/home"
if [ ! -d "$EMRFLOW_HOME/ledger" ]; then
  rm -rf "$WORK"/dataset-*
fi
if [ ! -f "$WORK/data-$VISITS/visits.csv" ]; then
  echo "== generating $VISITS visits" >&2
  "$BIN" generate --visits "$VISITS" --seed 7 --out "$WORK/data-$VISITS" >&2
fi
if [ ! -f "$WORK/dataset-$VISITS/manifest.json" ]; then
  echo "== preprocessing" >&2
  EMRFLOW_PSEUDONYM_KEY="b3e1c0d5a9f2e4b7c6d8a1f0e3b5c7d9a2e4f6b8c0d1e3f5a7b9c2d4e6f8a0b1" "$BIN" run examples/stroke-synthetic.toml \
    --input "visits=$WORK/data-$VISITS/visits.csv" \
    --input "patients=$WORK/data-$VISITS/patients.csv" \
    --out "$WORK/dataset-$VISITS" --overwrite >&2
fi

# Quality figures: the published size (130,070 visits) and the public stroke dataset.
QUALITY=130070
if [ ! -f "$WORK/dataset-$QUALITY/manifest.json" ]; then
  echo "== generating and preprocessing $QUALITY visits" >&2
  "$BIN" generate --visits "$QUALITY" --seed 7 --out "$WORK/data-$QUALITY" >&2
  EMRFLOW_PSEUDONYM_KEY="b3e1c0d5a9f2e4b7c6d8a1f0e3b5c7d9a2e4f6b8c0d1e3f5a7b9c2d4e6f8a0b1" "$BIN" run examples/stroke-synthetic.toml \
    --input "visits=$WORK/data-$QUALITY/visits.csv" \
    --input "patients=$WORK/data-$QUALITY/patients.csv" \
    --out "$WORK/dataset-$QUALITY" --overwrite >&2
fi
KAGGLE_ARGS=()
if [ -f ../shared/data/healthcare-dataset-stroke-data.csv ]; then
  EMRFLOW_PSEUDONYM_KEY="b3e1c0d5a9f2e4b7c6d8a1f0e3b5c7d9a2e4f6b8c0d1e3f5a7b9c2d4e6f8a0b1" "$BIN" run examples/stroke-kaggle.toml \
    --out "$WORK/dataset-kaggle" --overwrite >&2
  KAGGLE_ARGS=(--kaggle-dataset "$WORK/dataset-kaggle")
else
  echo "== ../shared/data/healthcare-dataset-stroke-data.csv is absent: skipping the Kaggle figures" >&2
fi

echo "== running the benchmark" >&2
"$PY" scripts/bench_train.py \
  --emrflow "$BIN" --dataset "$WORK/dataset-$VISITS" --work "$WORK" \
  --visits "$VISITS" --benchmarks "$ROOT/BENCHMARKS.md" \
  --quality-dataset "$WORK/dataset-$QUALITY" --quality-visits "$QUALITY" "${KAGGLE_ARGS[@]}"
