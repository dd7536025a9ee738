#!/usr/bin/env bash
# The benchmark: builds the engine (dev profile unless BENCH_PROFILE) and the bench guests, sets up a
# Python venv with the peers (Dask; DeepEcho 0.8.1 with PyTorch), runs every
# workload on both sides in alternation and prints one table.
#   bench/compare.sh                          everything (~30 min; see BENCHMARKS.md)
#   BENCH_QUICK=1 bench/compare.sh            smaller sizes, a smoke test
#   BENCH_ONLY=overhead,start bench/compare.sh some workload groups
#   BENCH_PROFILE=release bench/compare.sh    a release engine (see bench/compare.py)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

bash scripts/build-plugins
# Its own target dir: a component in target/guests would show up in the tests' plugin path.
CARGO_TARGET_DIR="$root/target/bench/guests" cargo build --quiet --release --target wasm32-wasip2 -p benchfn
profile="${BENCH_PROFILE:-dev}"
cargo build --quiet --profile "$profile" -p engine
engine="target/$([ "$profile" = dev ] && echo debug || echo "$profile")/engine"
mkdir -p target/bench/plugins
cp -f target/bench/guests/wasm32-wasip2/release/benchfn.wasm target/bench/plugins/bench.wasm

venv="$root/target/venv-bench"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import dask.distributed, deepecho' 2>/dev/null; then
  echo "setting up $venv (Dask, DeepEcho 0.8.1 and PyTorch: a large download, once)" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    'dask[distributed]==2026.8.*' 'numpy<3' 'deepecho==0.8.1'
fi

{
  echo "# $(date -u +%Y-%m-%dT%H:%MZ) on $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/ {print $2}') GiB; load before: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "# engine $("$engine" --version | cut -d' ' -f2) ($profile profile), rustc $(rustc --version | cut -d' ' -f2), $("$venv/bin/python" -c 'import dask, deepecho, torch, sys; print(f"python {sys.version.split()[0]}, dask {dask.__version__}, deepecho {deepecho.__version__}, torch {torch.__version__}")')"
  "$venv/bin/python" bench/compare.py
} | tee target/bench/table.md
