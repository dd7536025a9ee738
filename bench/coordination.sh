#!/usr/bin/env bash
# Store requests per shard for 1, 4, 16 and 64 worker processes over the test
# suite's S3 server (see bench/coordination.py).
#   bench/coordination.sh [SHARDS] [WORKERS...]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
source bench/prepare-benchfn.sh
exec target/venv-test/bin/python bench/coordination.py "$@"
