# Sourced by the store benchmarks: builds the engine (dev profile) and the
# `bench.*` component into target/bench/plugins, and checks for the test
# suite's venv (moto).
cargo build --quiet -p engine --bin engine
# Its own target dir: a component in target/guests would show up in the tests' plugin path.
CARGO_TARGET_DIR="$root/target/bench/guests" cargo build --quiet --release --target wasm32-wasip2 -p benchfn
mkdir -p target/bench/plugins
cp -f target/bench/guests/wasm32-wasip2/release/benchfn.wasm target/bench/plugins/bench.wasm
[[ -x target/venv-test/bin/moto_server ]] || { echo "error: run scripts/test once first (it makes target/venv-test with moto)" >&2; exit 1; }
