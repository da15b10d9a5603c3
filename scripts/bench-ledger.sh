# Sourced by the benchmarks that need a ledger: four `emrflow ledger node` processes on
# 127.0.0.1 in $WORK/ledger (L), stopped with everything else started into `pids` on exit.
# Needs EMRFLOW_BIN and WORK set; defines `json EXPR` (a Python expression over the JSON on
# stdin, bound to d), `now`, `register ROLE NAME` (a key in $WORK/NAME.key) and `start_ledger`.

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

free_base() {
  while :; do
    local b=$((20000 + RANDOM % 30000)) ok=1
    for i in 0 1 2 3 4 5 6 7; do
      if (exec 3<>"/dev/tcp/127.0.0.1/$((b + i))") 2>/dev/null; then ok=0; break; fi
    done
    [ "$ok" = 1 ] && { echo "$b"; return; }
  done
}
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1], {'json': json}, {'d': d}))" "$1"; }
now() { date +%s.%N; }

start_ledger() {
  L=$WORK/ledger
  "$EMRFLOW_BIN" ledger init --out "$L" --base-port "$(free_base)" >/dev/null
  for i in 0 1 2 3; do
    "$EMRFLOW_BIN" ledger node --config "$L/peer$i.toml" 2>"$WORK/node$i.log" &
    pids+=($!)
  done
  for i in 0 1 2 3; do
    for _ in $(seq 200); do "$EMRFLOW_BIN" ledger head --dir "$L" --peer "$i" >/dev/null 2>&1 && break; sleep 0.1; done
  done
}

register() {
  "$EMRFLOW_BIN" ledger register --ledger "$L/genesis.json" --role "$1" --name "$2" --out "$WORK/$2.key" >/dev/null
}
