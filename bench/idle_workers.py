"""Idle workers over the test suite's S3 server (moto): what waiting costs the
store, measured beside the cost model of BENCHMARKS.md.

    bench/idle_workers.sh [PROCESSES] [SECONDS]      # default 200 processes, 60 s

A run of `HOLDERS` shards that each sleep for longer than the measurement
(`bench.sleep`) is started with the `processes` backend and one worker
process per shard, so every shard is claimed and held. Then PROCESSES more
`engine worker` processes join it: with nothing left to claim, each loops
idle, as the workers of a big run do near its end. Over a window of SECONDS
(after a warm-up) the requests moto served are counted from its access log,
by kind and by the run's folder, and set beside the model:

    per idle worker: 1 read of `finished` a poll (every 2 s)
                     + a look at min(8, open) open shards every half lease
                       (a HEAD of the part, a GET of the holder's beat each)
    per holder:      1 beat (PUT) every quarter lease
    orchestrator:    1 listing of the parts and 1 of the failures every 400 ms

The processes are then killed; nothing of the run is kept.
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from coordination import ANSI, REQUEST, area, start_moto  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ENGINE = str(Path(os.environ.get("ENGINE_BIN", ROOT / "target/debug/engine")).resolve())
PLUGINS = ROOT / "target/bench/plugins"
PYTHON = ROOT / "target/venv-test/bin/python"
HOLDERS = 8
LEASE_S = 30
WATCH = 8
POLL_S = 2.0
COUNT_S = 0.4


def boto(env, code):
    out = subprocess.run(
        [PYTHON, "-c", "import boto3; s3 = boto3.client('s3'); " + code],
        env=env, check=True, capture_output=True, text=True,
    )
    return out.stdout


def rss_mb(pids):
    total = 0
    for pid in pids:
        try:
            for line in open(f"/proc/{pid}/status"):
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def main():
    args = sys.argv[1:]
    processes = int(args[0]) if args else 200
    seconds = float(args[1]) if len(args) > 1 else 60.0
    warmup = 30 + processes * 0.15
    work = Path(tempfile.mkdtemp(prefix="idle-workers-"))
    log_path = work / "moto.log"
    log = open(log_path, "w")
    moto, env = start_moto(log, "idle")
    children = []
    try:
        sleep_ms = int((warmup + seconds + 120) * 1000)
        (work / "config.toml").write_text(
            f"""[run]
function = "bench.sleep"
[run.args]
shards = {HOLDERS}
ms = {sleep_ms}
[cluster]
backend = "processes"
workers = {HOLDERS}
store = "s3://idle/store"
lease = "{LEASE_S}s"
[limits]
memory = "64M"
timeout = "2h"
retries = 0
[output]
path = "s3://idle/out.csv"
"""
        )
        run = subprocess.Popen(
            [ENGINE, "run", "config.toml", "--plugins", PLUGINS, "--no-cache"],
            cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=open(work / "run.log", "w"),
        )
        children.append(run)
        run_id, claims = None, 0
        started = time.monotonic()
        while claims < HOLDERS:
            if time.monotonic() - started > 300 or run.poll() is not None:
                sys.exit(f"the run did not get its {HOLDERS} shards claimed; see {work}/run.log")
            time.sleep(1)
            keys = boto(
                env,
                "r = s3.list_objects_v2(Bucket='idle', Prefix='store/runs/'); "
                "print('\\n'.join(o['Key'] for o in r.get('Contents', [])))",
            ).split()
            ids = {m.group(1) for k in keys if (m := re.match(r"store/runs/([^/]+)/claims/", k))}
            claims = sum(1 for k in keys if "/claims/" in k)
            run_id = next(iter(ids), None)
        for k in range(processes):
            children.append(
                subprocess.Popen(
                    [ENGINE, "worker", "--store", "s3://idle/store", "--run", run_id, "--id", f"idle-{k}"],
                    cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )
            )
        time.sleep(warmup)
        alive = sum(1 for c in children[1:] if c.poll() is None)
        log.flush()
        start_at, t0 = os.path.getsize(log_path), time.monotonic()
        time.sleep(seconds)
        end_at, window = os.path.getsize(log_path), time.monotonic() - t0
        rss = rss_mb([c.pid for c in children[1:]])
    finally:
        for c in children:
            c.kill()
        for c in children:
            c.wait()
        moto.kill()
        moto.wait()
        log.close()

    kinds, areas = {}, {}
    with open(log_path, "rb") as f:
        f.seek(start_at)
        text = f.read(end_at - start_at).decode(errors="replace")
    shutil.rmtree(work, ignore_errors=True)
    for line in text.splitlines():
        m = REQUEST.search(ANSI.sub("", line))
        if not m:
            continue
        method, target, _ = m.groups()
        kind = "LIST" if method == "GET" and ("list-type=" in target or "prefix=" in target) else method
        kinds[kind] = kinds.get(kind, 0) + 1
        a = area(target)
        areas[a] = areas.get(a, 0) + 1
    served = sum(kinds.values())
    watched = min(WATCH, HOLDERS)
    per_idle = 1 / POLL_S + 2 * watched / (LEASE_S / 2)
    model = alive * per_idle + HOLDERS / (LEASE_S / 4) + 2 / COUNT_S
    print(f"# {time.strftime('%Y-%m-%dT%H:%MZ', time.gmtime())} on {os.cpu_count()} cores; "
          f"{alive} idle worker processes (of {processes} started) and {HOLDERS} holding a shard each, "
          f"lease {LEASE_S} s; moto on loopback; engine {ENGINE}")
    print()
    print("| idle processes | window s | served req/s | model req/s | served / model | a worker, req/s | by kind, req/s | by folder, req/s | idle workers' RSS |")
    print("|---:|---:|---:|---:|---:|---:|---|---|---:|")
    rate = lambda d: ", ".join(f"{k} {v / window:.1f}" for k, v in sorted(d.items(), key=lambda x: -x[1]))
    print(
        f"| {alive} | {window:.0f} | {served / window:.1f} | {model:.1f} | {served / window / model:.2f} | "
        f"{served / window / max(alive, 1):.2f} (model {per_idle:.2f}) | {rate(kinds)} | {rate(areas)} | {rss:.0f} MB |"
    )


if __name__ == "__main__":
    main()
