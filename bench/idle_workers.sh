#!/usr/bin/env bash
# What idle workers cost the store: many `engine worker` processes waiting on
# a run whose shards are all held, over the test suite's S3 server (see
# bench/idle_workers.py).
#   bench/idle_workers.sh [PROCESSES] [SECONDS]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
source bench/prepare-benchfn.sh
exec target/venv-test/bin/python bench/idle_workers.py "$@"
