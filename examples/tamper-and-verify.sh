#!/usr/bin/env bash
# A compliance walk: a published dataset and model verify against the ledger; one value changed
# in the dataset, however carefully, is caught, and which part of the rows moved is shown;
# the restored files verify again; the model's lineage leads back to the raw inputs.
#
#   examples/tamper-and-verify.sh [WORKDIR]   # default ./emrflow-examples/tamper-and-verify
set -euo pipefail
. "$(dirname "$0")/common.sh"
workdir "${1:-}" tamper-and-verify
cd "$WORK"

"$EMRFLOW" generate --visits 5000 --seed 42 --out data >/dev/null 2>&1
run() {
  "$EMRFLOW" run "$EXAMPLES/stroke-synthetic.toml" --input "visits=$1" \
    --input patients=data/patients.csv --out "$2" --ledger "$3" --json 2>/dev/null
}
run data/visits.csv datasets/stroke ledger >dataset.json
"$EMRFLOW" train --dataset datasets/stroke --out models/stroke-tree --max-depth 6 --folds 0 --ledger ledger \
  --json >model.json 2>/dev/null
echo "== 1. the published dataset and model verify against the ledger"
"$EMRFLOW" verify datasets/stroke --ledger ledger
"$EMRFLOW" verify models/stroke-tree --ledger ledger

echo "== 2. someone changes one visit's smoking status and republishes the files quietly"
# The same job over the edited export, anchored on a ledger of its own, so the forged files
# are a well-formed dataset with one value changed.
mkdir edited
sed 's/^\(V000000004,.*\),never smoked,/\1,smokes,/' data/visits.csv >edited/visits.csv
run edited/visits.csv forged/stroke elsewhere >/dev/null
cp -r datasets/stroke original
cp forged/stroke/part-*.parquet datasets/stroke/
set +e
"$EMRFLOW" verify datasets/stroke --ledger ledger
status=$?
set -e
echo "verify exit code: $status (1: mismatch)"

echo "== 3. the original files restored verify again"
cp original/part-*.parquet datasets/stroke/
"$EMRFLOW" verify datasets/stroke --ledger ledger | head -1

echo "== 4. where the model came from"
"$EMRFLOW" lineage "$(json_field model_root <model.json)" --ledger ledger
