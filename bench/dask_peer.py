"""The Dask side of bench/compare.sh: the same workloads as bench/guests/benchfn.

Prints one JSON object per measurement on stdout, like every other part of
the benchmark:  {"workload": ..., "side": "dask", "value": ..., "unit": ...}

  python dask_peer.py overhead TASKS         per-task cost of client.map on 2 workers
  python dask_peer.py calibrate MS           loop steps of `spin` that take ~MS ms here
  python dask_peer.py spin WORKERS TASKS STEPS
                                             wall time of TASKS CPU-bound tasks of STEPS steps

The cluster is started before the clock starts: only the tasks are timed.
"""

import json
import sys
import time


def noop(i):
    return i


def spin(work, seed):
    """The same dependent multiply-add chain as benchfn's `spin`."""
    x = 1.0 + seed * 1e-9
    for _ in range(work):
        x = x * 1.0000001 + 1e-7
        if x > 2.0:
            x -= 1.0
    return x


def calibrate(ms):
    """Loop steps that take about `ms` milliseconds in this interpreter."""
    steps = 100_000
    while True:
        t = time.perf_counter()
        spin(steps, 0)
        dt = time.perf_counter() - t
        if dt > 0.05:
            return max(1, int(steps * ms / 1000 / dt))
        steps *= 2


def emit(workload, value, unit):
    print(json.dumps({"workload": workload, "side": "dask", "value": value, "unit": unit}), flush=True)


def main():
    from dask.distributed import Client, LocalCluster

    what = sys.argv[1]
    if what == "overhead":
        tasks = int(sys.argv[2])
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, Client(cluster) as client:
            client.gather(client.map(noop, range(100), key=[f"warm-{i}" for i in range(100)]))
            t = time.perf_counter()
            results = client.gather(client.map(noop, range(tasks)))
            dt = time.perf_counter() - t
            assert len(results) == tasks
        emit("overhead", dt / tasks * 1e6, "us/shard")
    elif what == "calibrate":
        emit("spin/steps", calibrate(float(sys.argv[2])), "steps")
    elif what == "spin":
        # The steps come from one `calibrate` for both worker counts: calibrating
        # per run would compare different amounts of work.
        workers, tasks, steps = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, Client(cluster) as client:
            client.gather(client.map(noop, range(10), key=[f"warm-{i}" for i in range(10)]))
            t = time.perf_counter()
            results = client.gather(client.map(spin, [steps] * tasks, range(tasks)))
            dt = time.perf_counter() - t
            assert len(results) == tasks
        emit(f"spin/{workers}", dt, "s")
    else:
        sys.exit(f"unknown workload {what!r}")


if __name__ == "__main__":
    main()
