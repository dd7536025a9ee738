#!/usr/bin/env bash
# What idle workers cost the store: many `engine worker` processes waiting on
# a run whose shards are all held, over the test suite's S3 server (see
# bench/idle_workers.py).
#   bench/idle_workers.sh [PROCESSES] [SECONDS]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
cargo build --quiet -p engine --bin engine
CARGO_TARGET_DIR="$root/target/bench/guests" cargo build --quiet --release --target wasm32-wasip2 -p benchfn
mkdir -p target/bench/plugins
cp -f target/bench/guests/wasm32-wasip2/release/benchfn.wasm target/bench/plugins/bench.wasm
[[ -x target/venv-test/bin/moto_server ]] || { echo "error: run scripts/test once first (it makes target/venv-test with moto)" >&2; exit 1; }
exec target/venv-test/bin/python bench/idle_workers.py "$@"
