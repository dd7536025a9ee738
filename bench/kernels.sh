#!/usr/bin/env bash
# Guest compute vs native (issue 6, workload 3); findings in bench/KERNELS.md.
#
# Builds bench/kernels twice — natively (release, `kernels-native`) and for
# wasm32-wasip2 (release, the plugin `bench.kernels`) — and the engine, then runs the
# four kernels natively and in the engine's real runtime (its wasmtime Config: pooling
# allocator, Cranelift settings, epoch deadlines, the sandbox), one side after the
# other, BENCH_RUNS times (default 5), alternating which side goes first. Each kernel
# times itself with std::time::Instant inside the process / the guest (setup excluded).
#
# stdout: one JSON object per line and measurement, nothing else:
#   {"workload": "kernel/<name>", "side": "native"|"wasm", "seconds": <float>}
# stderr: build output, progress, per-run checksums (native and wasm must agree).
#
# Environment: BENCH_RUNS; CARGO_TARGET_DIR (default: the workspace's target/);
# BENCH_KERNELS, a space-separated subset of: float_loop matmul gru_step forest_fit;
# BENCH_ENGINE / BENCH_PROFILE, which engine binary runs the guest (see below).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

runs="${BENCH_RUNS:-5}"
target="${CARGO_TARGET_DIR:-$root/target}"
export CARGO_TARGET_DIR="$target"
kernels="${BENCH_KERNELS:-float_loop matmul gru_step forest_fit}"
data="$root/plugins/deepecho/data"

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
  rustup target add wasm32-wasip2 >&2
fi

echo "kernels.sh: building into $target (native release, wasm32-wasip2 release, engine)" >&2
cargo build --quiet --release -p kernels --bin kernels-native >&2
# .cargo/config.toml adds -C target-feature=+simd128 for this target.
cargo build --quiet --release --target wasm32-wasip2 -p kernels --lib >&2
# The engine's own profile does not matter: guest code is compiled by Cranelift,
# which every profile builds at opt-level 3, and is timed inside the guest. As in
# bench/compare.py: BENCH_ENGINE (an engine binary) or BENCH_PROFILE (dev, release).
profile="${BENCH_PROFILE:-dev}"
if [ -n "${BENCH_ENGINE:-}" ]; then
  engine="$BENCH_ENGINE"
elif [ "$profile" = dev ]; then
  cargo build --quiet -p engine >&2
  engine="$target/debug/engine"
else
  cargo build --quiet --profile "$profile" -p engine >&2
  engine="$target/$profile/engine"
fi

native="$target/release/kernels-native"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/plugins"
# `bench.kernels` is looked up in `bench.wasm` first.
cp "$target/wasm32-wasip2/release/kernels.wasm" "$work/plugins/bench.wasm"

list=""
for k in $kernels; do list="$list${list:+, }\"$k\""; done
cat > "$work/config.toml" <<TOML
[run]
function = "bench.kernels"
data = "$data"

[run.args]
kernels = [$list]
repetitions = 1

[cluster]
backend = "local"
workers = 1

[limits]
memory = "1G"
timeout = "10m"

[output]
path = "out.csv"
TOML

# Compile the component once (the engine caches it by its hash), outside the loop.
"$engine" validate "$work/config.toml" --plugins "$work/plugins" >&2

native_run() {
  # shellcheck disable=SC2086
  "$native" --data "$data" $kernels 2> "$work/native.err"
  cat "$work/native.err" >&2
  sed -n 's/^native \([a-z_]*\): .*checksum \(.*\)$/\1 \2/p' "$work/native.err" >> "$work/checksums.native"
}

wasm_run() {
  rm -f "$work/out.csv"
  "$engine" run "$work/config.toml" --plugins "$work/plugins" -q >&2
  # Columns: kernel, rep, seconds, checksum, error (plain names and numbers, no quoting).
  awk -F, -v sums="$work/checksums.wasm" '
    NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
    {
      if ($col["error"] != "") { print "wasm " $col["kernel"] ": " $col["error"] > "/dev/stderr"; exit 1 }
      printf "{\"workload\": \"kernel/%s\", \"side\": \"wasm\", \"seconds\": %s}\n", $col["kernel"], $col["seconds"]
      printf "wasm %s: %.4f s, checksum %s\n", $col["kernel"], $col["seconds"], $col["checksum"] > "/dev/stderr"
      print $col["kernel"], $col["checksum"] >> sums
    }' "$work/out.csv"
}

for ((r = 1; r <= runs; r++)); do
  echo "kernels.sh: run $r of $runs" >&2
  if ((r % 2)); then
    native_run
    wasm_run
  else
    wasm_run
    native_run
  fi
done

# The same computation on both sides: the checksums should be the same numbers
# (printed differently: Rust's shortest round-trip form on both sides, but the engine's
# CSV writes integral floats with a trailing `.0`).
if ! diff <(sort -u "$work/checksums.native" | sed 's/\.0$//') \
          <(sort -u "$work/checksums.wasm" | sed 's/\.0$//') >&2; then
  echo "kernels.sh: warning: native and wasm checksums differ (above)" >&2
fi
