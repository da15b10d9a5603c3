#!/usr/bin/env bash
# The ledger benchmark: four `emrflow ledger node` processes on 127.0.0.1, then
#   1. commit latency: one transaction at a time (p50 / p99 submit-to-receipt, certificate included)
#   2. throughput: many in flight, so the primary batches
# Usage: ledger/scripts/bench-loopback.sh [EMRFLOW_BINARY] [COUNT] [CONCURRENCY] [BASELINE_BINARY] [ROUNDS]
#
# With BASELINE_BINARY (an emrflow built from another commit, e.g. before mutual TLS), both
# binaries are measured ROUNDS times each (default 3), alternating, each round on a fresh ledger,
# so that a machine whose load drifts weighs on both alike; the medians and the ratios
# binary/baseline are printed last. Needs jq.
set -euo pipefail
bin=${1:-${CARGO_TARGET_DIR:-target}/debug/emrflow}
count=${2:-30000}
conc=${3:-512}
baseline=${4:-}
rounds=${5:-3}
pids=()
dirs=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for d in "${dirs[@]}"; do rm -rf "$d"; done
}
trap cleanup EXIT

free_base() {
  # Eight consecutive free ports: peer listeners base..base+3, client listeners base+4..base+7
  # (an older binary uses only the first four).
  while :; do
    local b=$((20000 + RANDOM % 30000)) ok=1
    for i in 0 1 2 3 4 5 6 7; do
      if (exec 3<>"/dev/tcp/127.0.0.1/$((b + i))") 2>/dev/null; then ok=0; break; fi
    done
    [ "$ok" = 1 ] && { echo "$b"; return; }
  done
}

# bench BINARY OUT: starts four peers of a fresh ledger, writes the latency run's JSON and the
# throughput run's JSON to OUT (one line each), stops the peers. Not run in a subshell, so that
# the exit trap knows every peer it started.
bench() {
  local b=$1 out=$2 dir base
  dir=$(mktemp -d)
  dirs+=("$dir")
  base=$(free_base)
  "$b" ledger init --out "$dir" --base-port "$base" >/dev/null
  local mine=()
  for i in 0 1 2 3; do
    "$b" ledger node --config "$dir/peer$i.toml" 2>"$dir/node$i.log" &
    mine+=($!)
    pids+=($!)
  done
  for i in 0 1 2 3; do
    for _ in $(seq 200); do "$b" ledger head --dir "$dir" --peer "$i" >/dev/null 2>&1 && break; sleep 0.1; done
  done
  { "$b" ledger submit --dir "$dir" --count 2000 --concurrency 1 --skip-verify | jq -c .
    "$b" ledger submit --dir "$dir" --count "$count" --concurrency "$conc" --skip-verify | jq -c .
  } >"$out"
  for p in "${mine[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$dir"
}

command -v jq >/dev/null || { echo "this script needs jq" >&2; exit 2; }
out=$(mktemp)
results=$(mktemp)
dirs+=("$out" "$results")
if [ -z "$baseline" ]; then
  bench "$bin" "$out"
  echo "latency (concurrency 1):"
  sed -n 1p "$out"
  echo "throughput (concurrency $conc):"
  sed -n 2p "$out"
  exit 0
fi

for r in $(seq "$rounds"); do
  for which in baseline binary; do
    b=$bin
    [ "$which" = baseline ] && b=$baseline
    bench "$b" "$out"
    sed -n 1p "$out" | jq -c --arg w "$which" --argjson r "$r" '{which: $w, round: $r, run: "latency"} + .' >>"$results"
    sed -n 2p "$out" | jq -c --arg w "$which" --argjson r "$r" '{which: $w, round: $r, run: "throughput"} + .' >>"$results"
    echo "round $r $which: $(tail -n 2 "$results" | jq -r '"\(.run) p50 \(.p50_ms) ms p99 \(.p99_ms) ms \(.tx_per_s) tx/s"' | paste -sd ';')"
  done
done
echo "medians over $rounds rounds (binary / baseline):"
jq -rs '
  def median: sort | if length % 2 == 1 then .[length / 2 | floor]
                     else (.[length / 2 - 1] + .[length / 2]) / 2 end;
  def med(w; r; f): [.[] | select(.which == w and .run == r) | f] | median;
  . as $all
  | ["latency", "throughput"][] as $r
  | ["p50_ms", "p99_ms", "tx_per_s"][] as $f
  | ($all | med("binary"; $r; .[$f])) as $new
  | ($all | med("baseline"; $r; .[$f])) as $old
  | "\($r) \($f): \($new * 100 | round / 100) vs \($old * 100 | round / 100) = \(if $old == 0 then "n/a" else ($new / $old * 1000 | round / 1000 | tostring) + "x" end)"
' "$results"
