#!/usr/bin/env bash
# Store requests per shard for 1, 4, 16 and 64 worker processes over the test
# suite's S3 server (see bench/coordination.py).
#   bench/coordination.sh [SHARDS] [WORKERS...]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
cargo build --quiet -p engine --bin engine
CARGO_TARGET_DIR="$root/target/bench/guests" cargo build --quiet --release --target wasm32-wasip2 -p benchfn
mkdir -p target/bench/plugins
cp -f target/bench/guests/wasm32-wasip2/release/benchfn.wasm target/bench/plugins/bench.wasm
[[ -x target/venv-test/bin/moto_server ]] || { echo "error: run scripts/test once first (it makes target/venv-test with moto)" >&2; exit 1; }
exec target/venv-test/bin/python bench/coordination.py "$@"
