"""Run every workload of the benchmark on both sides, alternating, and print one table.

Called by bench/compare.sh, which builds what is needed and sets up the venv.
Every measurement is also appended, one JSON object per line, to
target/bench/measurements.jsonl, so a table can be re-derived later.

Environment:
  BENCH_RUNS     runs per side of the cheap workloads (default 5)
  BENCH_QUICK=1  smaller sizes and one run of the slow ones (a smoke test, not for BENCHMARKS.md)
  BENCH_ONLY     comma-separated workload groups: overhead,micro,parallel,kernels,start,scale,processes,deepecho
  BENCH_EPOCHS   PARModel epochs to compare with PyTorch (default 128,1024; 1024 takes ~8 min)
  BENCH_PROFILE  the engine's cargo profile: dev (default: the binary the demo and the tests
                 build, dependencies at opt-level 3, the engine crate at 1) or release (thin LTO,
                 a 20-minute build on 2 cores; only makes the engine side faster)
"""

import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
PROFILE = os.environ.get("BENCH_PROFILE", "dev")
ENGINE = Path(os.environ.get("BENCH_ENGINE", TARGET / ("debug" if PROFILE == "dev" else PROFILE) / "engine"))
WORK = ROOT / "target" / "bench"
PLUGINS = WORK / "plugins"
PYTHON = sys.executable
QUICK = os.environ.get("BENCH_QUICK") == "1"
RUNS = int(os.environ.get("BENCH_RUNS", "2" if QUICK else "5"))
ONLY = set(filter(None, os.environ.get("BENCH_ONLY", "").split(",")))
DATA = ROOT / "plugins" / "deepecho" / "data"

measurements = []


def log(message):
    print(message, file=sys.stderr, flush=True)


def record(workload, side, value, unit):
    m = {"workload": workload, "side": side, "value": value, "unit": unit}
    measurements.append(m)
    with open(WORK / "measurements.jsonl", "a") as f:
        f.write(json.dumps(m) + "\n")
    log(f"  {workload:<28} {side:<10} {value:12.3f} {unit}")


def run_process(cmd, env=None, cwd=None):
    """Run a command; wall seconds, peak RSS in MB, stdout and stderr text."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=cwd)
        _, status, usage = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if p.returncode != 0:
        raise SystemExit(f"`{' '.join(map(str, cmd))}` failed ({p.returncode}):\n{stderr[-3000:]}")
    return wall, usage.ru_maxrss / 1024, stdout, stderr


def engine_env(cache=None):
    env = dict(os.environ)
    env["ENGINE_CACHE_DIR"] = str(cache or WORK / "cache")
    env.pop("RUST_LOG", None)
    return env


def write_config(name, function, args, workers=2, store=None, backend="local", memory="64M"):
    """A config for the bench plugin; returns its path. The output goes beside it."""
    folder = WORK / "runs" / name
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    args_toml = "\n".join(f"{k} = {json.dumps(v)}" for k, v in args.items())
    store_line = f'store = "{store}"' if store else ""
    (folder / "config.toml").write_text(
        f"""[run]
function = "{function}"
[run.args]
{args_toml}
[cluster]
backend = "{backend}"
workers = {workers}
{store_line}
[limits]
memory = "{memory}"
timeout = "60s"
retries = 0
max_shards = 2000000
[output]
path = "out.csv"
"""
    )
    return folder / "config.toml"


def engine_run(config, *extra, cache=None):
    """`engine run`, timed; a fresh run each time (its store is removed first)."""
    folder = config.parent
    for old in [folder / "store", folder / ".engine", folder / "out.csv"]:
        if old.is_dir():
            shutil.rmtree(old)
        elif old.exists():
            old.unlink()
    cmd = [ENGINE, "-v", "run", config, "--plugins", PLUGINS, *extra]
    return run_process(cmd, env=engine_env(cache))


def merge_seconds(stderr):
    """The merge time the engine logs at info level (`merged … in …s`)."""
    for line in stderr.splitlines():
        if "merged" in line and "seconds=" in line:
            return float(line.split("seconds=")[1].split()[0])
    return None


def dask(*args):
    _, _, stdout, _ = run_process([PYTHON, ROOT / "bench" / "dask_peer.py", *map(str, args)])
    return json.loads(stdout.strip().splitlines()[-1])["value"]


def wanted(group):
    return not ONLY or group in ONLY


# ---------------------------------------------------------------- workloads


def overhead():
    """1. Per-shard overhead: no-op shards on 2 workers, engine vs Dask."""
    n = 2000 if QUICK else 20000
    one = write_config("noop-1", "bench.noop", {"shards": 1})
    many = write_config("noop-n", "bench.noop", {"shards": n})
    dask_runs = max(1, RUNS // 2 if not QUICK else 1)
    engine_run(one)  # fills the compile cache
    for r in range(RUNS):
        t1, *_ = engine_run(one)
        tn, *_ = engine_run(many)
        record("overhead", "engine", (tn - t1) / (n - 1) * 1e6, "us/shard")
        if r < dask_runs:
            record("overhead", "dask", dask("overhead", n), "us/shard")


def calibrate_spin(ms):
    """Loop steps that make one engine shard take about `ms` milliseconds."""
    work = 2_000_000
    while True:
        config = write_config("spin-cal", "bench.spin", {"shards": 4, "work": work}, workers=1)
        idle = write_config("spin-cal0", "bench.spin", {"shards": 4, "work": 0}, workers=1)
        t, *_ = engine_run(config)
        t0, *_ = engine_run(idle)
        per = (t - t0) / 4
        if per > 0.02:
            return int(work * ms / 1000 / per)
        work *= 4


def micro():
    """1b. Criterion micro-benchmarks of one shard's parts (bench/micro): the call, the part, the merge."""
    results = TARGET / "criterion"
    shutil.rmtree(results, ignore_errors=True)
    subprocess.run(
        ["cargo", "bench", "--quiet", "--profile", PROFILE, "-p", "micro", "--bench", "shard"],
        cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
        env=dict(os.environ, BENCH_PLUGIN=str(PLUGINS / "bench.wasm")),
    )
    for found in sorted(results.glob("**/new/benchmark.json")):
        name = json.loads(found.read_text())["full_id"]
        estimates = json.loads((found.parent / "estimates.json").read_text())
        # What criterion prints as `time`: the slope of its linear sampling.
        best = estimates.get("slope") or estimates["mean"]
        record(f"micro/{name}", "engine", best["point_estimate"] / 1e3, "us")


def parallel():
    """2. Parallel efficiency: 64 CPU-bound shards of ~50 ms, 2 workers over 1."""
    shards, ms = 64, 50
    work = calibrate_spin(ms)
    log(f"  spin: {work} steps per shard for ~{ms} ms")
    one = write_config("spin-1", "bench.spin", {"shards": shards, "work": work}, workers=1)
    two = write_config("spin-2", "bench.spin", {"shards": shards, "work": work}, workers=2)
    steps = int(dask("calibrate", ms))
    log(f"  dask spin: {steps} steps per task for ~{ms} ms")
    for _ in range(RUNS):
        t1, *_ = engine_run(one)
        t2, *_ = engine_run(two)
        record("parallel", "engine", t1 / t2 / 2, "efficiency")
        d1 = dask("spin", 1, shards, steps)
        d2 = dask("spin", 2, shards, steps)
        record("parallel", "dask", d1 / d2 / 2, "efficiency")


def kernels():
    """3. Guest compute vs native: bench/kernels.sh prints its own measurements."""
    script = ROOT / "bench" / "kernels.sh"
    if not script.exists():
        log("  bench/kernels.sh is missing: skipped")
        return
    env = dict(os.environ, BENCH_RUNS=str(RUNS), ENGINE_CACHE_DIR=str(WORK / "cache"))
    proc = subprocess.run(["bash", script], stdout=subprocess.PIPE, env=env, check=True, text=True)
    for line in proc.stdout.splitlines():
        m = json.loads(line)
        record(m["workload"], m["side"], m["seconds"], "s")


def start():
    """4. Cold and warm start: one no-op shard, over the bare process start."""
    config = write_config("start", "bench.noop", {"shards": 1})
    for _ in range(RUNS * 2):
        cache = Path(tempfile.mkdtemp(dir=WORK))
        bare, *_ = run_process([ENGINE, "--version"], env=engine_env(cache))
        cold, *_ = engine_run(config, cache=cache)
        warm, *_ = engine_run(config, cache=cache)
        shutil.rmtree(cache)
        record("start/process", "engine", bare * 1e3, "ms")
        record("start/cold", "engine", (cold - bare) * 1e3, "ms over process")
        record("start/warm", "engine", (warm - bare) * 1e3, "ms over process")


def scale():
    """5. Scale: 1M shards planned, run and merged; 10M rows merged. Peak RSS."""
    shards = 100_000 if QUICK else 1_000_000
    rows_shards, rows_per = (100, 10_000) if QUICK else (200, 50_000)
    runs = 1 if QUICK else 2
    for _ in range(runs):
        # The in-memory store (the local default): a directory store costs
        # ~0.5 ms a shard in file operations (see `processes`).
        config = write_config("scale-shards", "bench.noop", {"shards": shards}, memory="1G")
        wall, rss, _, err = engine_run(config)
        record("scale/1M-shards", "engine", wall, "s")
        record("scale/1M-shards-rss", "engine", rss, "MB")
        merged = merge_seconds(err)
        if merged:
            record("scale/1M-shards-merge", "engine", shards / merged / 1e3, "k parts/s")
        config = write_config("scale-rows", "bench.rows", {"shards": rows_shards, "rows": rows_per}, store="store")
        wall, rss, _, err = engine_run(config)
        record("scale/10M-rows", "engine", wall, "s")
        record("scale/10M-rows-rss", "engine", rss, "MB")
        merged = merge_seconds(err)
        if merged:
            record("scale/10M-rows-merge", "engine", rows_shards * rows_per / merged / 1e6, "M rows/s")


def processes():
    """6. Two `engine worker` processes over a local-directory store vs the in-process pool."""
    n = 1000 if QUICK else 5000
    cases = {
        "processes": {"backend": "processes"},
        "threads+dir": {"store": "store"},
        "threads+memory": {},
    }
    configs = {
        side: (
            write_config(f"mp-{side}-1", "bench.noop", {"shards": 1}, **kw),
            write_config(f"mp-{side}-n", "bench.noop", {"shards": n}, **kw),
        )
        for side, kw in cases.items()
    }
    for one, _ in configs.values():
        engine_run(one)  # fills the compile cache
    for _ in range(RUNS):
        for side, (one, many) in configs.items():
            t1, *_ = engine_run(one)
            tn, *_ = engine_run(many)
            record("processes", side, (tn - t1) / (n - 1) * 1e6, "us/shard")


def par_config(epochs, threads):
    return f"""[run]
function = "deepecho.benchmark.run_benchmark"
data = "{DATA}"
seed = 0
[run.args]
datasets = ["BasicMotions"]
models = ["PARModel"]
metrics = []
epochs = {epochs}
[cluster]
workers = 1
[limits]
memory = "4G"
timeout = "60m"
threads = {threads}
[output]
path = "out.csv"
"""


def deepecho():
    """7. PARModel on BasicMotions beside DeepEcho 0.8.1's PyTorch PARModel; the example's wall time."""
    shutil.copy(TARGET / "plugins" / "deepecho.wasm", PLUGINS / "deepecho.wasm")
    epochs_list = [int(e) for e in os.environ.get("BENCH_EPOCHS", "128" if QUICK else "128,1024").split(",")]
    for epochs in epochs_list:
        folder = WORK / "runs" / f"par-{epochs}"
        folder.mkdir(parents=True, exist_ok=True)
        # Two threads, as PyTorch's default here (2 cores): PAR's second half-batch in a
        # helper. Also one thread: the same result bits, for the per-core figure.
        for threads in (1, 2):
            (folder / f"config-{threads}.toml").write_text(par_config(epochs, threads))
        # PyTorch's fits take minutes (1 run at 1024 epochs, 2 at 128); the engine's take
        # seconds, so its figure is a median of RUNS, not one sample of a noisy machine.
        runs = 1 if epochs > 128 or QUICK else 2
        engine_runs = 1 if QUICK else RUNS
        for side, threads, n in [("engine", 2, engine_runs), ("engine-1thread", 1, engine_runs)]:
            for _ in range(n):
                engine_run(folder / f"config-{threads}.toml")
                with open(folder / "out.csv") as f:
                    row = next(csv.DictReader(f))
                if row["error"]:
                    raise SystemExit(f"the engine's PARModel run failed: {row['error']}")
                record(f"deepecho/PAR-{epochs}-fit", side, float(row["fit_time"]), "s")
                if side == "engine":
                    record(f"deepecho/PAR-{epochs}-sample", side, float(row["sample_time"]), "s")
        for _ in range(runs):
            _, _, stdout, _ = run_process([PYTHON, ROOT / "bench" / "deepecho_reference.py", DATA, "BasicMotions", str(epochs)])
            ref = json.loads(stdout.strip().splitlines()[-1])
            record(f"deepecho/PAR-{epochs}-fit", "pytorch", ref["fit_time"], "s")
            record(f"deepecho/PAR-{epochs}-sample", "pytorch", ref["sample_time"], "s")
    example = ROOT / "examples" / "deepecho" / "config.toml"
    out = WORK / "runs" / "example.csv"
    for _ in range(1 if QUICK else 2):
        wall, *_ = run_process(
            [ENGINE, "--quiet", "run", example, "--plugins", PLUGINS, "--output", out, "--no-cache"],
            env=engine_env(),
        )
        record("deepecho/example", "engine", wall, "s")


# ---------------------------------------------------------------- the table

def describe(values):
    return statistics.median(values), min(values), max(values), len(values)


def table():
    by = {}
    for m in measurements:
        by.setdefault(m["workload"], {}).setdefault(m["side"], []).append(m["value"])
    units = {m["workload"]: m["unit"] for m in measurements}
    head = f"| {'workload':<28} | {'side':<14} | {'median':>10} | {'min':>10} | {'max':>10} | runs | {'unit':<16} | ratio | target |"
    lines = [head, "|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|"]
    for workload, sides in by.items():
        ratio, target = "", ""
        if workload.startswith("kernel/") and {"native", "wasm"} <= sides.keys():
            r = statistics.median(sides["wasm"]) / statistics.median(sides["native"])
            ratio, target = f"{r:.2f}x wasm/native", ("met" if r <= 1.5 else "MISSED") + " (<= 1.5x)"
        elif workload == "overhead" and {"engine", "dask"} <= sides.keys():
            r = statistics.median(sides["dask"]) / statistics.median(sides["engine"])
            ratio, target = f"{r:.0f}x faster", ("met" if r >= 50 else "MISSED") + " (>= 50x)"
        elif workload == "parallel" and {"engine", "dask"} <= sides.keys():
            e, d = statistics.median(sides["engine"]), statistics.median(sides["dask"])
            ratio = f"{e / d:.2f}x engine/dask"
            target = ("met" if e >= 0.9 and e > d else "MISSED") + " (>= 0.9, > dask)"
        elif workload.startswith("deepecho/PAR") and {"engine", "pytorch"} <= sides.keys():
            r = statistics.median(sides["pytorch"]) / statistics.median(sides["engine"])
            # Issue 12: fit ≥ 20× at 1024 epochs, sampling ≥ 100×; the 128-epoch fit keeps
            # the first issue's ≥ 5×.
            want = 100 if workload.endswith("sample") else 20 if "-1024-" in workload else 5
            ratio, target = f"{r:.1f}x faster", ("met" if r >= want else "MISSED") + f" (>= {want}x)"
            if "engine-1thread" in sides:
                one = statistics.median(sides["pytorch"]) / statistics.median(sides["engine-1thread"])
                ratio += f" ({one:.1f}x on 1 thread)"
        elif workload == "start/warm":
            r = statistics.median(sides["engine"])
            target = ("met" if r <= 20 else "MISSED") + " (<= 20 ms)"
        elif workload.endswith("-rss"):
            r = statistics.median(sides["engine"])
            target = ("met" if r <= 300 else "MISSED") + " (<= 300 MB)"
        elif workload == "processes" and {"processes", "threads+dir", "threads+memory"} <= sides.keys():
            procs = statistics.median(sides["processes"])
            dirs = statistics.median(sides["threads+dir"])
            memory = statistics.median(sides["threads+memory"])
            ratio = f"procs {procs / dirs:.2f}x threads+dir, {procs / memory:.0f}x threads+memory"
        for side, values in sides.items():
            med, lo, hi, n = describe(values)
            lines.append(
                f"| {workload:<28} | {side:<14} | {med:>10.3f} | {lo:>10.3f} | {hi:>10.3f} | {n:>4} | {units[workload]:<16} | {ratio} | {target} |"
            )
            ratio, target = "", ""
    return "\n".join(lines)


def main():
    WORK.mkdir(parents=True, exist_ok=True)
    (WORK / "measurements.jsonl").unlink(missing_ok=True)
    PLUGINS.mkdir(parents=True, exist_ok=True)
    groups = [overhead, micro, parallel, kernels, start, scale, processes, deepecho]
    started = time.time()
    for group in groups:
        if wanted(group.__name__):
            log(f"== {group.__name__}: {group.__doc__.strip().splitlines()[0]}")
            group()
    print(table())
    print(f"\n{RUNS} runs per side (fewer for the slow workloads, see `runs`); {time.time() - started:.0f} s in all.")


if __name__ == "__main__":
    main()
