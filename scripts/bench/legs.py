"""What the benchmark drivers share: logging to stderr, the machine's load, and running one leg
that prints a JSON line with its `seconds` (emrflow's --json, or a PySpark job's own line)."""

import json
import os
import subprocess
import sys
import time


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def load():
    return os.getloadavg()[0]


def run_json(name, cmd, env):
    """Runs `cmd` with `env`; returns its last stdout line as JSON and the wall seconds. A
    failing leg stops the benchmark with its stderr's tail: a figure of a failed run is none."""
    t = time.time()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.time() - t
    if out.returncode != 0:
        log(f"{name} exited {out.returncode}: {' '.join(cmd)}")
        log("\n".join(out.stderr.strip().splitlines()[-40:]))
        sys.exit(1)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    log(f"  {name}: {result['seconds']:.2f} s job, {wall:.2f} s wall, load {load():.2f}")
    return result, wall
