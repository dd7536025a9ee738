//! Criterion micro-benchmarks of the engine's per-shard costs; the code is in
//! `benches/shard.rs`. Run with `cargo bench -p micro` after `bench/compare.sh`
//! (or its first lines) has built `target/bench/plugins/bench.wasm`.
