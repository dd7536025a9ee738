//! What one shard costs the engine, piece by piece: the sandboxed call of a
//! no-op guest (fresh store, WASI context, instantiate from the pooling
//! allocator, call, one row), building its part, and appending parts in the
//! merge. `bench/compare.sh` (group `micro`) reads the medians from
//! `target/criterion`; the whole-run overhead is its `overhead` group.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use engine::runtime::{Runtime, Sandbox};
use engine::table::{Cell, PartBuilder, append_part, parse_header};
use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

/// The bench guest, as `bench/compare.sh` builds it (or `BENCH_PLUGIN`).
fn plugin_path() -> PathBuf {
    std::env::var_os("BENCH_PLUGIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/bench/plugins/bench.wasm")
        })
}

fn sandbox() -> Sandbox {
    Sandbox {
        memory: 64 << 20,
        timeout: Duration::from_secs(60),
        output_size: 64 << 20,
        log_size: 1 << 20,
        outputs: 1000,
        columns: 1000,
        data_dir: None,
        reads: Vec::new(),
        seed: 0,
    }
}

fn shard_call(c: &mut Criterion) {
    let path = plugin_path();
    assert!(
        path.exists(),
        "`{}` is missing: run `bench/compare.sh` once (it builds the bench guest), or set BENCH_PLUGIN",
        path.display()
    );
    let runtime = Runtime::new(2).expect("a runtime");
    let plugin = runtime.load_file(&path).expect("the bench guest loads");
    let sandbox = sandbox();
    let shard = |function: &str, args: &str| {
        runtime
            .plan(&plugin, function, args, &sandbox)
            .unwrap_or_else(|e| panic!("{function} plans: {e}"))
            .remove(0)
    };
    let noop = shard("bench.noop", r#"{"shards": 1}"#);
    let rows = shard("bench.rows", r#"{"shards": 1, "rows": 1000}"#);
    let mut group = c.benchmark_group("shard");
    group.bench_function("noop call", |b| {
        b.iter(|| {
            let out = runtime.run(&plugin, "bench.noop", &noop, &sandbox);
            assert!(out.failure.is_none());
            black_box(out.part)
        })
    });
    group.throughput(Throughput::Elements(1000));
    group.bench_function("1000-row call", |b| {
        b.iter(|| {
            let out = runtime.run(&plugin, "bench.rows", &rows, &sandbox);
            assert!(out.failure.is_none());
            black_box(out.part)
        })
    });
    group.finish();
}

/// A part of `n` rows shaped like `bench.rows` writes them.
fn part(n: i64) -> Vec<u8> {
    let mut part = PartBuilder::new(u64::MAX, u64::MAX);
    for r in 0..n {
        let cells = [
            ("shard", Cell::Int(7)),
            ("row", Cell::Int(r)),
            ("value", Cell::Float(r as f64 * 0.5)),
            (
                "label",
                Cell::Text(if r % 2 == 0 { "even" } else { "odd" }.into()),
            ),
        ];
        part.push(cells.iter().map(|(k, v)| (*k, v)))
            .expect("a valid row");
    }
    part.finish()
}

fn part_and_merge(c: &mut Criterion) {
    let mut group = c.benchmark_group("part");
    group.bench_function("build 1 row", |b| b.iter(|| black_box(part(1))));
    group.throughput(Throughput::Elements(1000));
    group.bench_function("build 1000 rows", |b| b.iter(|| black_box(part(1000))));
    group.finish();

    let mut group = c.benchmark_group("merge");
    for n in [1, 1000] {
        let bytes = part(n);
        let columns = parse_header(&bytes).expect("a header");
        let mut out = Vec::with_capacity(bytes.len() * 2);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(format!("append {n}-row part"), |b| {
            b.iter(|| {
                out.clear();
                black_box(append_part(&bytes, &columns, &mut out).expect("appends"))
            })
        });
        // A part whose columns are in another order takes the parsing path.
        let mut reordered = columns.clone();
        reordered.reverse();
        group.bench_function(format!("append {n}-row part, columns reordered"), |b| {
            b.iter(|| {
                out.clear();
                black_box(append_part(&bytes, &reordered, &mut out).expect("appends"))
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = shard_call, part_and_merge
}
criterion_main!(benches);
