#!/usr/bin/env bash
# A job over gzipped exports: the same rows, delivered compressed, publish the same dataset.
#
#   examples/gzipped-exports.sh [WORKDIR]     # default ./emrflow-examples/gzipped-exports
set -euo pipefail
. "$(dirname "$0")/common.sh"
workdir "${1:-}" gzipped-exports
cd "$WORK"

"$EMRFLOW" generate --visits 20000 --seed 42 --out plain >/dev/null 2>&1
echo "generated 20000 visits (seed 42) into plain/"
mkdir gzipped
gzip -c plain/visits.csv >gzipped/visits.csv.gz
# No extension at all: the content says it is gzip.
gzip -c plain/patients.csv >gzipped/patients-export
echo "compressed them into gzipped/visits.csv.gz and gzipped/patients-export"

publish() {
  "$EMRFLOW" run "$EXAMPLES/stroke-synthetic.toml" \
    --input "visits=$1/$2" --input "patients=$1/$3" --out "datasets/$1" --json 2>/dev/null
}
publish plain visits.csv patients.csv >plain.json
publish gzipped visits.csv.gz patients-export >gzipped.json
for source in plain gzipped; do
  printf '%-8s dataset: %s rows, root %s\n' "$source" \
    "$(json_field rows_out <$source.json)" "$(json_field root <$source.json)"
done
if [ "$(json_field root <plain.json)" = "$(json_field root <gzipped.json)" ]; then
  echo "same rows, same dataset root"
else
  echo "the roots differ" && exit 1
fi
# Each dataset's lineage starts from its raw files as delivered: the gzipped bytes have their
# own fingerprint.
parents() { grep -o '"parents":\[[^]]*\]' "$1"; }
if [ "$(parents plain.json)" != "$(parents gzipped.json)" ]; then
  echo "raw inputs fingerprinted as delivered: the gzipped files have roots of their own"
fi
"$EMRFLOW" verify datasets/gzipped
