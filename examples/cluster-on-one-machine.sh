#!/usr/bin/env bash
# A cluster run on 127.0.0.1: a scheduler and two executors as separate processes, the example
# job and a training run sent to them, and the same dataset and model roots as on one machine.
#
#   examples/cluster-on-one-machine.sh [WORKDIR]  # default ./emrflow-examples/cluster-on-one-machine
set -euo pipefail
. "$(dirname "$0")/common.sh"
workdir "${1:-}" cluster-on-one-machine
cd "$WORK"

# A port nothing listens on yet (the kernel's pick for a socket bound to port 0).
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_for_port() {
  for _ in $(seq 1 300); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  echo "nothing listens on 127.0.0.1:$1; see $WORK/logs" >&2
  exit 2
}
pids=()
stop() {
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
}
trap stop EXIT

mkdir logs
# The executors hold the pseudonymization key themselves; it never travels with a job.
printf '%s' "$EMRFLOW_PSEUDONYM_KEY" >pseudonym.key
chmod 600 pseudonym.key
port=$(free_port)
"$EMRFLOW" scheduler --bind-host 127.0.0.1 --port "$port" 2>logs/scheduler.log &
pids+=($!)
wait_for_port "$port"
for i in 1 2; do
  flight=$(free_port)
  "$EMRFLOW" executor --scheduler-host 127.0.0.1 --scheduler-port "$port" \
    --bind-host 127.0.0.1 --port "$flight" --concurrent-tasks 1 --work-dir "work-$i" \
    --pseudonym-key-file pseudonym.key 2>"logs/executor-$i.log" &
  pids+=($!)
  wait_for_port "$flight"
done
echo "a scheduler and 2 executors are running on 127.0.0.1"

"$EMRFLOW" generate --visits 20000 --seed 42 --out data >/dev/null 2>&1
for where in embedded cluster; do
  flags=()
  if [ "$where" = cluster ]; then
    flags=(--cluster "df://127.0.0.1:$port")
  fi
  "$EMRFLOW" run "$EXAMPLES/stroke-synthetic.toml" --input visits=data/visits.csv \
    --input patients=data/patients.csv --out "datasets/$where" "${flags[@]}" \
    --json >"dataset-$where.json" 2>/dev/null
  "$EMRFLOW" train --dataset "datasets/$where" --out "models/$where" --max-depth 8 --folds 0 \
    "${flags[@]}" --json >"model-$where.json" 2>/dev/null
  printf '%-8s dataset root %s\n' "$where" "$(json_field root <"dataset-$where.json")"
  printf '%-8s model root   %s\n' "$where" "$(json_field model_root <"model-$where.json")"
done
same() { [ "$(json_field "$1" <"$2-embedded.json")" = "$(json_field "$1" <"$2-cluster.json")" ]; }
if same root dataset && same model_root model; then
  echo "the cluster published the same dataset and the same model"
else
  echo "the cluster's roots differ from the embedded ones" && exit 1
fi
