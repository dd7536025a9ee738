#!/usr/bin/env bash
# DeepEcho quality check: our deepecho plugin (through `engine run`, save_samples = true)
# beside DeepEcho 0.8.1's PyTorch models, both sides' samples scored by the same
# independent sktime code (bench/deepecho_quality.py says what it computes).
#   bench/deepecho_quality.sh                                   PAR + GAN, 128 and 1024 epochs, seeds 0,1,2
#       (2-3 h on 2 cores: PyTorch's PAR takes 10-20 min a seed at 1024 epochs, its GAN 5-12)
#   bench/deepecho_quality.sh --models PARModel --epochs 128 --seeds 0 --no-baselines   a quick run (~5 min)
#   bench/deepecho_quality.sh --no-reference ...                ours only
#   bench/deepecho_quality.sh --table-only --models PARModel    the table again, from measurements.jsonl
# Arguments go to deepecho_quality.py (--models, --epochs, --seeds, --reference-seeds,
# --reuse-reference, --metric-seeds, --dataset, --no-reference, --no-ours, --no-baselines,
# --table-only, --work). QUALITY_ENGINE=PATH uses that engine binary instead of building one
# (BENCH_PROFILE=release builds a release engine; default dev). QUALITY_TORCH_THREADS=N sets
# PyTorch's threads (default: its own choice; on a shared machine 1 gives steadier times).
# The table goes to stdout and to WORK/table.md (WORK: --work, default target/deepecho-quality).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
work="$root/target/deepecho-quality"
mkdir -p "$work/plugins"

# The plugin in a target dir of its own, so that this does not replace target/plugins
# under a test run.
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
  rustup target add wasm32-wasip2 >&2
fi
CARGO_TARGET_DIR="$work/guests" cargo build --quiet --release --target wasm32-wasip2 -p deepecho
cp -f "$work/guests/wasm32-wasip2/release/deepecho.wasm" "$work/plugins/deepecho.wasm"

if [ -n "${QUALITY_ENGINE:-}" ]; then
  engine="$QUALITY_ENGINE"
else
  profile="${BENCH_PROFILE:-dev}"
  cargo build --quiet --profile "$profile" -p engine
  engine="$root/target/$([ "$profile" = dev ] && echo debug || echo "$profile")/engine"
fi

venv="$root/target/venv-bench"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import deepecho, sktime, sklearn' 2>/dev/null; then
  echo "setting up $venv (DeepEcho 0.8.1 with PyTorch, sktime 1.2: a large download, once)" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'numpy<3' 'deepecho==0.8.1' 'sktime==1.2.*'
fi

# deepecho_quality.py writes the table to stdout and to WORK/table.md, with this command.
QUALITY_COMMAND="bench/deepecho_quality.sh $*" \
  "$venv/bin/python" -W ignore bench/deepecho_quality.py --engine "$engine" --plugins "$work/plugins" "$@"
