"""Coordination cost: store requests per finished shard against the test
suite's S3 server (moto), for several numbers of worker processes.

    bench/coordination.sh [SHARDS] [WORKERS...]     # default 10000 shards, 1 4 16 64

Each run: a fresh moto on loopback, `engine run` with the `processes` backend
(`workers` processes of one thread), no-op shards (`bench.noop`), the store and
the output in S3. The requests are the engine's own counts (every process
counts what it sends; worker processes store theirs in `stats/` as they end,
the orchestrator adds them up): by kind, per shard, and the orchestrator's
rate while it waits. moto's access log is counted too, as a check of the
engine's counts (it sees every HTTP request, retries included).
"""

import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENGINE = str(Path(os.environ.get("ENGINE_BIN", ROOT / "target/debug/engine")).resolve())
# The protocol's cost alone: the cell cache (one PUT more per computed cell)
# is left out, by engines that have one (`ENGINE_BIN` may be an older one).
NO_CACHE = (
    ["--no-cache"]
    if "--no-cache" in subprocess.run([ENGINE, "run", "--help"], capture_output=True, text=True).stdout
    else []
)
PLUGINS = ROOT / "target/bench/plugins"
MOTO = ROOT / "target/venv-test/bin/moto_server"
PYTHON = ROOT / "target/venv-test/bin/python"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start_moto(log, bucket):
    """A fresh moto on a free loopback port, logging to `log`, with `bucket`
    made: (its process, the environment that points S3 clients at it)."""
    port = free_port()
    moto = subprocess.Popen([MOTO, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log)
    env = dict(
        os.environ,
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
        AWS_ACCESS_KEY_ID="test",
        AWS_SECRET_ACCESS_KEY="test",
        AWS_REGION="us-east-1",
    )
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    subprocess.run(
        [PYTHON, "-c", f"import boto3; boto3.client('s3').create_bucket(Bucket='{bucket}')"],
        env=env,
        check=True,
    )
    return moto, env


def run(shards, workers, work):
    log = open(work / f"moto-{workers}.log", "w")
    moto, env = start_moto(log, "coord")
    try:
        folder = work / f"w{workers}"
        folder.mkdir()
        (folder / "config.toml").write_text(
            f"""[run]
function = "bench.noop"
[run.args]
shards = {shards}
[cluster]
backend = "processes"
workers = {workers}
store = "s3://coord/store"
[limits]
memory = "64M"
timeout = "60s"
retries = 0
[output]
path = "s3://coord/out.csv"
"""
        )
        started = time.monotonic()
        p = subprocess.run(
            [ENGINE, "run", "config.toml", "--plugins", PLUGINS, *NO_CACHE],
            cwd=folder,
            env=env,
            capture_output=True,
            text=True,
        )
        wall = time.monotonic() - started
        # Kept for a look afterwards: the engine's messages and moto's log.
        logs = ROOT / "target/bench/coordination-logs"
        logs.mkdir(parents=True, exist_ok=True)
        (logs / f"{shards}-{workers}.stderr").write_text(p.stderr)
        if p.returncode != 0:
            sys.exit(f"engine run failed ({workers} workers):\n{p.stderr[-3000:]}")
        time.sleep(0.5)
        return wall, p.stderr, count_log(work / f"moto-{workers}.log")
    finally:
        moto.kill()
        moto.wait()
        log.close()
        logs = ROOT / "target/bench/coordination-logs"
        logs.mkdir(parents=True, exist_ok=True)
        (logs / f"{shards}-{workers}.moto.log").write_bytes((work / f"moto-{workers}.log").read_bytes())


ANSI = re.compile(r"\x1b\[[0-9;]*m")
REQUEST = re.compile(r'"(GET|PUT|HEAD|POST|DELETE) (\S+) HTTP/[\d.]+" (\d+)')


def count_log(path):
    """Requests moto served, by kind (its access log: a line each), and by
    the part of the run they touch (`claims`, `parts`, `heartbeats`, …)."""
    kinds = dict.fromkeys(["PUT", "412", "GET", "HEAD", "LIST", "other"], 0)
    areas = {}
    for line in open(path):
        m = REQUEST.search(ANSI.sub("", line))
        if not m:
            continue
        method, target, status = m.groups()
        listing = method == "GET" and ("list-type=" in target or "prefix=" in target)
        if listing:
            kinds["LIST"] += 1
        elif method in kinds:
            kinds[method] += 1
        else:
            kinds["other"] += 1
        if status == "412":
            kinds["412"] += 1
        areas[area(target)] = areas.get(area(target), 0) + 1
    kinds["areas"] = areas
    return kinds


def area(target):
    """`claims`, `parts`, … : the folder of the run a request is about."""
    from urllib.parse import unquote

    path, _, query = unquote(target).partition("?")
    m = re.search(r"prefix=([^&]*)", query)
    key = m.group(1) if m else path
    m = re.search(r"runs/[^/]+/([^/]+)", key)
    if m:
        return m.group(1).removesuffix(".json")
    return "output" if "out.csv" in key else "other"


def engine_counts(stderr):
    """The engine's own `store requests:` line, if this engine prints one:
    (total, the orchestrator's rate while waiting)."""
    line = next((l for l in stderr.splitlines() if l.startswith("store requests:")), None)
    if line is None:
        return None
    total = int(re.search(r"store requests: (\d+)", line).group(1))
    waiting = float(re.search(r"while waiting ([\d.]+)/s", line).group(1))
    return total, waiting


def main():
    args = sys.argv[1:]
    shards = int(args[0]) if args else 10_000
    workers = [int(a) for a in args[1:]] or [1, 4, 16, 64]
    print(f"# {time.strftime('%Y-%m-%dT%H:%MZ', time.gmtime())} on {os.cpu_count()} cores; "
          f"{shards} no-op shards, processes backend, moto on loopback; engine {ENGINE}")
    print()
    print("| workers | wall s | requests/shard | PUT | of which 412 | GET | HEAD | LIST | orchestrator waiting req/s | engine counted / moto served |")
    print("|--------:|-------:|---------------:|----:|-------------:|----:|-----:|-----:|---------------------------:|-----------------------------:|")
    with tempfile.TemporaryDirectory() as tmp:
        for w in workers:
            wall, stderr, k = run(shards, w, Path(tmp))
            # The bucket's creation is not the run's.
            k["PUT"] -= 1
            areas = k.pop("areas")
            served = sum(v for n, v in k.items() if n != "412")
            own = engine_counts(stderr)
            waiting = f"{own[1]:.1f}" if own else "n/a"
            check = f"{own[0] / max(served, 1):.3f}" if own else "n/a"
            per = lambda n: f"{k[n] / shards:.2f}"
            print(
                f"| {w} | {wall:.1f} | {served / shards:.2f} | {per('PUT')} | {per('412')} | {per('GET')} | "
                f"{per('HEAD')} | {k['LIST'] / shards:.3f} | {waiting} | {check} |",
                flush=True,
            )
            print(
                "|   | by folder: "
                + ", ".join(f"{a} {n / shards:.2f}" for a, n in sorted(areas.items(), key=lambda x: -x[1]))
                + " |",
                flush=True,
            )


if __name__ == "__main__":
    main()
