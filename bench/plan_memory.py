"""Memory of a big plan: `engine run` of `bench.noop` with N shards through a
directory store, planned a page at a time (WIT 0.3's `planner`), its shards
stored as `shards/<page>.json` while they are planned, then run by 2 worker
threads for a while and stopped with SIGTERM (a rerun would resume it).

Prints, for each N: the seconds to plan and publish (until `run.json` is
written), the engine's peak RSS while planning, its peak RSS over the whole
run, the shards that ran, and the ratio of each N's peak to the smallest N's.
Flat memory means the ratios stay near 1 while N grows a hundredfold.

    bench/plan_memory.sh [SECONDS_RUNNING] [N ...]   (default: 20 s; 100000 1000000 10000000)
"""

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENGINE = os.environ.get("ENGINE_BIN", str(ROOT / "target/debug/engine"))
PLUGINS = ROOT / "target/bench/plugins"


def rss_kib(pid):
    """(VmRSS, VmHWM) of `pid` in KiB, or None once it is gone."""
    try:
        fields = dict(
            line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
        )
        return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])
    except (FileNotFoundError, KeyError, ProcessLookupError):
        return None


def one(n, running_s):
    with tempfile.TemporaryDirectory(prefix="plan-memory-") as tmp:
        tmp = Path(tmp)
        (tmp / "config.toml").write_text(
            f"""[run]
function = "bench.noop"
[run.args]
shards = {n}
[cluster]
workers = 2
store = "store"
[limits]
max_shards = {n}
[output]
path = "out/result.csv"
"""
        )
        started = time.monotonic()
        proc = subprocess.Popen(
            [ENGINE, "--quiet", "run", "config.toml", "--plugins", str(PLUGINS), "--no-cache"],
            cwd=tmp,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        published = None
        plan_peak = 0
        peak = 0
        while proc.poll() is None:
            r = rss_kib(proc.pid)
            if r:
                peak = max(peak, r[1])
            if published is None:
                if r:
                    plan_peak = max(plan_peak, r[1])
                if list((tmp / "store/runs").glob("*/run.json")):
                    published = time.monotonic() - started
            elif time.monotonic() - started - published > running_s:
                proc.send_signal(signal.SIGTERM)
                break
            time.sleep(0.1)
        _, err = proc.communicate(timeout=120)
        parts = sum(1 for _ in (tmp / "store/runs").glob("*/parts/*.csv"))
        pages = sum(1 for _ in (tmp / "store/runs").glob("*/shards/*.json"))
        if published is None:
            sys.exit(f"error: the run of {n} shards was not published:\n{err[-2000:]}")
        return {"n": n, "publish_s": published, "plan_peak": plan_peak, "peak": peak, "ran": parts, "pages": pages}


def main():
    running_s = float(sys.argv[1]) if len(sys.argv) > 1 else 20.0
    sizes = [int(a) for a in sys.argv[2:]] or [100_000, 1_000_000, 10_000_000]
    rows = []
    for n in sizes:
        r = one(n, running_s)
        rows.append(r)
        print(
            f"  {n:>10,} shards: published in {r['publish_s']:.1f}s ({r['pages']} pages), "
            f"peak RSS {r['plan_peak'] / 1024:.0f} MiB planning, {r['peak'] / 1024:.0f} MiB overall; "
            f"{r['ran']:,} shards ran in {running_s:.0f}s",
            flush=True,
        )
    base = rows[0]
    print()
    print(f"| shards | plan + publish | pages | peak RSS planning | peak RSS overall | vs {base['n']:,} | ran in {running_s:.0f} s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['n']:,} | {r['publish_s']:.1f} s | {r['pages']} | {r['plan_peak'] / 1024:.0f} MiB "
            f"| {r['peak'] / 1024:.0f} MiB | {r['peak'] / base['peak']:.2f}× | {r['ran']:,} |"
        )


if __name__ == "__main__":
    main()
