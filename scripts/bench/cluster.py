"""1 vs 2 executors: `emrflow run` and `emrflow train` with --cluster on generated visits.

Usage: cluster.py EMRFLOW_BIN WORK_DIR VISITS

Starts a scheduler and N executors (N = 1, then 2) on 127.0.0.1, runs the preprocessing job and
training on the cluster, and records wall time and peak memory (VmHWM) of the client and of
every executor. The embedded engine runs the same job for reference. Prints a Markdown table
and writes results.json into WORK_DIR.
"""

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, log):
    for _ in range(600):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if proc.poll() is not None:
                sys.exit(f"server exited: {open(log).read()}")
            time.sleep(0.1)
    sys.exit(f"nothing listens on {port}")


def peak_rss_mb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def timed(cmd, env):
    """Runs cmd; returns (seconds, peak RSS MiB of the child, parsed JSON stdout)."""
    started = time.perf_counter()
    out = subprocess.run(
        ["/usr/bin/time", "-f", "%M", *cmd],
        env=env,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr}")
    rss_kb = int(out.stderr.strip().splitlines()[-1])
    return seconds, rss_kb / 1024, json.loads(out.stdout)


def main():
    binary, work, visits = sys.argv[1], sys.argv[2], int(sys.argv[3])
    os.makedirs(work, exist_ok=True)
    data = os.path.join(work, "data")
    if not os.path.exists(os.path.join(data, "visits.csv")):
        subprocess.run(
            [binary, "generate", "--visits", str(visits), "--out", data], check=True,
            stdout=subprocess.DEVNULL,
        )
    env = dict(os.environ)
    env["EMRFLOW_HOME"] = os.path.join(work, "home")
    env["EMRFLOW_PSEUDONYM_KEY"] = "b3e1c0d5a9f2e4b7c6d8a1f0e3b5c7d9a2e4f6b8c0d1e3f5a7b9c2d4e6f8a0b1"
    env["RUST_LOG"] = "warn"
    job = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "stroke-synthetic.toml")
    inputs = [
        "--input", f"visits={os.path.join(data, 'visits.csv')}",
        "--input", f"patients={os.path.join(data, 'patients.csv')}",
    ]
    partitions = os.environ.get("BENCH_PARTITIONS", "8")
    train_args = ["--max-depth", "5", "--folds", "0", "--overwrite", "--json"]
    results = []

    # Embedded reference.
    ds = os.path.join(work, "ds-embedded")
    run_s, run_mb, run_json = timed(
        [binary, "run", job, *inputs, "--out", ds, "--overwrite", "--json"], env
    )
    train_s, train_mb, train_json = timed(
        [binary, "train", "--dataset", ds, "--out", os.path.join(work, "m-embedded"), *train_args],
        env,
    )
    results.append(dict(engine="embedded", executors=0, run_s=run_s, run_client_mb=run_mb,
                        train_s=train_s, train_client_mb=train_mb, executor_mb=[],
                        root=run_json["root"], model_root=train_json["model_root"],
                        rows=run_json["rows_out"]))

    for n in (1, 2):
        procs = []
        port = free_port()
        log = os.path.join(work, "scheduler.log")
        sched = subprocess.Popen(
            [binary, "scheduler", "--bind-host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=subprocess.DEVNULL, stderr=open(log, "w"),
        )
        procs.append(sched)
        wait_port(port, sched, log)
        executors = []
        for i in range(n):
            flight = free_port()
            elog = os.path.join(work, f"executor-{i}.log")
            # BENCH_PIN=1: each executor gets one core of its own and runs one task at a time,
            # so that on one host "2 executors" has twice the CPU of "1 executor", as two
            # machines would.
            pin = ["taskset", "-c", str(i % os.cpu_count())] if os.environ.get("BENCH_PIN") else []
            slots = ["--concurrent-tasks", "1"] if pin else []
            p = subprocess.Popen(
                [*pin, binary, "executor", *slots, "--scheduler-host", "127.0.0.1", "--scheduler-port",
                 str(port), "--bind-host", "127.0.0.1", "--port", str(flight),
                 "--work-dir", os.path.join(work, f"work-{i}")],
                env=env, stdout=subprocess.DEVNULL, stderr=open(elog, "w"),
            )
            procs.append(p)
            executors.append(p)
            wait_port(flight, p, elog)
        url = f"df://127.0.0.1:{port}"
        try:
            ds = os.path.join(work, f"ds-{n}")
            cluster = ["--cluster", url, "--partitions", partitions]
            run_s, run_mb, run_json = timed(
                [binary, "run", job, *inputs, "--out", ds, "--overwrite", "--json", *cluster], env
            )
            train_s, train_mb, train_json = timed(
                [binary, "train", "--dataset", ds, "--out", os.path.join(work, f"m-{n}"),
                 *train_args, *cluster],
                env,
            )
            executor_mb = [peak_rss_mb(p.pid) for p in executors]
        finally:
            for p in procs:
                p.send_signal(signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
        results.append(dict(engine="cluster", executors=n, run_s=run_s, run_client_mb=run_mb,
                            train_s=train_s, train_client_mb=train_mb, executor_mb=executor_mb,
                            root=run_json["root"], model_root=train_json["model_root"],
                            rows=run_json["rows_out"]))

    with open(os.path.join(work, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    size_mb = sum(os.path.getsize(os.path.join(data, f)) for f in os.listdir(data)) / 2**20
    print(f"{visits:,} visits ({size_mb:,.0f} MiB of CSV), {results[0]['rows']:,} rows out, "
          f"cluster partitions {partitions}, {os.cpu_count()} cores"
          + (", each executor pinned to one core" if os.environ.get("BENCH_PIN") else ""))
    print()
    print("| engine | run s | train s | total s | client peak MiB (run/train) | executor peak MiB |")
    print("|---|---|---|---|---|---|")
    for r in results:
        name = "embedded" if r["executors"] == 0 else f"{r['executors']} executor(s)"
        ex = ", ".join(f"{m:.0f}" for m in r["executor_mb"] if m is not None) or "-"
        print(f"| {name} | {r['run_s']:.2f} | {r['train_s']:.2f} | {r['run_s'] + r['train_s']:.2f} "
              f"| {r['run_client_mb']:.0f} / {r['train_client_mb']:.0f} | {ex} |")
    one, two = results[1], results[2]
    total = lambda r: r["run_s"] + r["train_s"]
    print()
    print(f"2 vs 1 executors: run {one['run_s'] / two['run_s']:.2f}x, "
          f"train {one['train_s'] / two['train_s']:.2f}x, total {total(one) / total(two):.2f}x")
    same = len({r["root"] for r in results}) == 1 and len({r["model_root"] for r in results}) == 1
    print(f"identical dataset and model roots across engines: {same}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
