#!/usr/bin/env bash
# Memory of a plan of up to ten million shards through a directory store (see
# bench/plan_memory.py).
#   bench/plan_memory.sh [SECONDS_RUNNING] [N ...]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
source bench/prepare-benchfn.sh
exec python3 bench/plan_memory.py "$@"
