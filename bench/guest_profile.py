"""Attribute `perf record` samples of an engine run to the guest's own functions.

wasmtime loads a guest's compiled code (the engine's cached `.cwasm`, an ELF file) into
anonymous memory, so `perf report` shows it as `[JIT]` addresses. This maps each sample
in that mapping back to a function through the `.cwasm`'s symbol table.

  perf record -F 1999 -o perf.data target/debug/engine run config.toml --no-cache -q
  python3 bench/guest_profile.py perf.data [CWASM] [TOP]

CWASM defaults to the newest file in the engine's cache dir ($ENGINE_CACHE_DIR, else
$XDG_CACHE_HOME/engine, else ~/.cache/engine): run the engine once before recording so
that the guest is compiled and cached. Prints the TOP (default 25) functions by share of
all samples; host code is listed as `native: SYMBOL (DSO)`.
"""

import bisect
import collections
import os
import re
import subprocess
import sys
from pathlib import Path


def cache_dir():
    if os.environ.get("ENGINE_CACHE_DIR"):
        return Path(os.environ["ENGINE_CACHE_DIR"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "engine"
    return Path.home() / ".cache" / "engine"


def main():
    data = sys.argv[1] if len(sys.argv) > 1 else "perf.data"
    cwasm = sys.argv[2] if len(sys.argv) > 2 and sys.argv[2] else str(max(cache_dir().glob("*.cwasm"), key=os.path.getmtime))
    top = int(sys.argv[3]) if len(sys.argv) > 3 else 25
    text = int(re.search(r"\.text\s+PROGBITS\s+\S+\s+\S+\s+(\S+)",
                         subprocess.run(["readelf", "-SW", cwasm], capture_output=True, text=True).stdout).group(1), 16)
    mmaps = subprocess.run(["perf", "script", "-i", data, "--show-mmap-events"], capture_output=True, text=True).stdout
    bases = [int(m.group(1), 16) for m in re.finditer(r"\[(0x[0-9a-f]+)\((0x[0-9a-f]+)\) @ \S+ 00:00 0 0\]: r-xp //anon", mmaps)
             if int(m.group(2), 16) >= text]
    if not bases:
        raise SystemExit("no anonymous executable mapping of the guest's size in the recording")
    base = bases[-1]
    syms = []
    for line in subprocess.run(["nm", "-C", cwasm], capture_output=True, text=True).stdout.splitlines():
        addr, _, name = line.split(" ", 2)
        syms.append((int(addr, 16), re.sub(r"^wasm\[\d+\]::function\[\d+\]::", "", name)))
    syms.sort()
    addrs = [a for a, _ in syms]
    samples = subprocess.run(["perf", "script", "-i", data, "-F", "ip,sym,dso"], capture_output=True, text=True).stdout
    counts, total = collections.Counter(), 0
    for line in samples.splitlines():
        parts = line.split()
        if not parts:
            continue
        total += 1
        ip = int(parts[0], 16)
        if base <= ip < base + text:
            i = bisect.bisect_right(addrs, ip - base) - 1
            counts[syms[i][1] if i >= 0 else "?"] += 1
        else:
            counts["native: " + " ".join(parts[1:])] += 1
    best = counts.most_common(top)
    # Rust's legacy symbol mangling is Itanium's: c++filt reads it (the trailing hash stays).
    names = subprocess.run(["c++filt"], input="\n".join(n for n, _ in best), capture_output=True,
                           text=True).stdout.splitlines()
    for name, (_, n) in zip(names, best):
        print(f"{100 * n / total:6.2f}%  {re.sub(r'::h[0-9a-f]{16}$', '', name)[:120]}")


if __name__ == "__main__":
    main()
