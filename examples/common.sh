# Shared by the example walks: the emrflow binary, a working directory and a fixed key.
# Sourced, not run.

# The binary: EMRFLOW_BIN, else the one ./scripts/demo built, else emrflow on the PATH.
EMRFLOW=${EMRFLOW_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/emrflow-target}/debug/emrflow}
if [ ! -x "$EMRFLOW" ]; then
  EMRFLOW=$(command -v emrflow || true)
fi
if [ -z "$EMRFLOW" ]; then
  echo "no emrflow binary: run ./scripts/demo first (it builds one), or set EMRFLOW_BIN" >&2
  exit 2
fi
EXAMPLES=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# The working directory: the first argument, else ./emrflow-examples/NAME. It is emptied.
workdir() {
  WORK=${1:-emrflow-examples/$2}
  rm -rf "$WORK"
  mkdir -p "$WORK"
  WORK=$(cd "$WORK" && pwd)
  # Its own embedded ledger and identities, away from the user's.
  export EMRFLOW_HOME=$WORK/home
  # A fixed pseudonymization key, so that every root printed below is the one the README
  # shows. Real data gets a random one: head -c 32 /dev/urandom | xxd -p -c 64
  export EMRFLOW_PSEUDONYM_KEY=5f0c8e2a7d91b4c63e0a9f1d2b7c4e8a6d3f0b9c1e5a7d2f4b8c6e0a3d9f1b7c
}

# A field of a one-line JSON summary: json_field NAME < summary.json
json_field() {
  sed -n "s/.*\"$1\":\"\{0,1\}\([^\",}]*\).*/\1/p" | head -1
}
