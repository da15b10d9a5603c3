#!/usr/bin/env bash
# The ledger benchmark: four `emrflow ledger node` processes on 127.0.0.1, then
#   1. commit latency: one transaction at a time (p50 / p99 submit-to-receipt, certificate included)
#   2. throughput: many in flight, so the primary batches
# Usage: ledger/scripts/bench-loopback.sh [EMRFLOW_BINARY] [COUNT] [CONCURRENCY]
set -euo pipefail
bin=${1:-${CARGO_TARGET_DIR:-target}/debug/emrflow}
count=${2:-30000}
conc=${3:-512}
dir=$(mktemp -d)
base=$((47000 + RANDOM % 2000))
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$dir"; }
trap cleanup EXIT
"$bin" ledger init --out "$dir" --base-port "$base" >/dev/null
for i in 0 1 2 3; do
  "$bin" ledger node --config "$dir/peer$i.toml" 2>"$dir/node$i.log" &
  pids+=($!)
done
for i in 0 1 2 3; do
  for _ in $(seq 100); do "$bin" ledger head --dir "$dir" --peer "$i" >/dev/null 2>&1 && break; sleep 0.1; done
done
echo "latency (concurrency 1):"
"$bin" ledger submit --dir "$dir" --count 2000 --concurrency 1 --skip-verify
echo "throughput (concurrency $conc):"
"$bin" ledger submit --dir "$dir" --count "$count" --concurrency "$conc" --skip-verify
