//! Guest compute vs native (issue 6, workload 3): four numeric kernels, timed with
//! `std::time::Instant` around the kernel only (setup excluded), the same code natively
//! (`kernels-native`) and as the engine plugin `bench.kernels` (one shard per
//! kernel × repetition).
//!
//! * `float_loop` — a plain scalar `f64` loop (logistic map + a harmonic-weighted sum),
//!   2·10⁸ steps.
//! * `matmul` — deepecho's `nn::matmul` (the 4×8 register-blocked `f32` kernel), 256³,
//!   300 times.
//! * `gru_step` — 24 PARModel training epochs on BasicMotions (80 entities, 101 steps):
//!   each the full-batch loss and backward pass through `Linear → GRU(32) → Linear`, and
//!   one Adam step.
//! * `forest_fit` — deepecho's time-series forest (50 trees; `rf_detection_score` grows
//!   100) fitted on BasicMotions' real series (label 0) against noisy copies (label 1),
//!   then predicting the training series.
//!
//! Each kernel returns a checksum of what it computed, so nothing is optimised away and
//! native and wasm results can be compared (they are equal: see bench/KERNELS.md).
//! Sizes are fixed so that each kernel takes about half a second natively.

use deepecho::data::{Dataset, load_dataset};
use deepecho::metrics::concat;
use deepecho::metrics::forest::Forest;
use deepecho::models::nn::{Adam, F, matmul};
use deepecho::models::par::{Batch, Net, Work};
use deepecho::rng::Rng;
use guest_sdk::{Call, Error, Function, Param, Plugin, Result, Row, Shard, Shards, Table, bail};
use serde::{Deserialize, Serialize};
use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

pub const FUNCTION: &str = "bench.kernels";

/// The kernels, in the order they run.
pub const KERNELS: &[&str] = &["float_loop", "matmul", "gru_step", "forest_fit"];

/// The dataset the deepecho kernels use.
pub const DATASET: &str = "BasicMotions";

const FLOAT_LOOP_ITERS: usize = 200_000_000;
const MATMUL_N: usize = 256;
const MATMUL_REPS: usize = 300;
const GRU_EPOCHS: usize = 24;
const FOREST_TREES: usize = 50;
/// The synthetic side of the forest kernel: real values plus N(0, NOISE²) (separable
/// enough that trees stay shallow-ish, hard enough that they are not stumps).
const NOISE: f64 = 1.0;

/// One timed kernel run.
#[derive(Clone, Debug, PartialEq)]
pub struct Timing {
    pub seconds: f64,
    pub checksum: f64,
}

fn timed(f: impl FnOnce() -> f64) -> Timing {
    let t = Instant::now();
    let checksum = black_box(f());
    Timing {
        seconds: t.elapsed().as_secs_f64(),
        checksum,
    }
}

/// Run kernel `name`; `data_dir` holds deepecho's datasets (BasicMotions).
pub fn run_kernel(name: &str, data_dir: &Path) -> Result<Timing> {
    match name {
        "float_loop" => Ok(timed(|| float_loop(black_box(FLOAT_LOOP_ITERS)))),
        "matmul" => Ok(matmul_kernel()),
        "gru_step" => gru_step(&load(data_dir)?),
        "forest_fit" => Ok(forest_fit(&load(data_dir)?)),
        other => bail!("unknown kernel `{other}`; kernels: {}", KERNELS.join(", ")),
    }
}

fn load(dir: &Path) -> Result<Dataset> {
    load_dataset(dir, DATASET)
}

/// A plain scalar loop: a logistic map (a dependent multiply chain) and a sum with a
/// division and an int→float conversion per step. Nothing to vectorise.
pub fn float_loop(n: usize) -> f64 {
    let (mut x, mut s) = (0.5f64, 0.0f64);
    for i in 0..n {
        x = 3.9 * x * (1.0 - x);
        s += x / (1.0 + i as f64);
    }
    s + x
}

fn matmul_kernel() -> Timing {
    let n = MATMUL_N;
    let mut rng = Rng::new(1);
    let a: Vec<F> = (0..n * n).map(|_| rng.uniform(-1.0, 1.0) as F).collect();
    let b: Vec<F> = (0..n * n).map(|_| rng.uniform(-1.0, 1.0) as F).collect();
    let mut c = vec![0.0 as F; n * n];
    timed(|| {
        for r in 0..MATMUL_REPS {
            // Accumulate after the first product so every repetition depends on the last.
            matmul(black_box(&a), black_box(&b), &mut c, n, n, n, r > 0);
        }
        c.iter().map(|&v| f64::from(v)).sum()
    })
}

/// PARModel's training loop (`Par::fit` without the bookkeeping), `GRU_EPOCHS` epochs.
fn gru_step(ds: &Dataset) -> Result<Timing> {
    let mut rng = Rng::new(7);
    let mut net = Net::new(ds, &mut rng);
    let batch = Batch::new(&net.layout, &ds.seqs);
    let mut adam = Adam::new(1e-3);
    let mut work = Work::default();
    let t = timed(|| {
        let mut last = 0.0;
        for _ in 0..GRU_EPOCHS {
            for p in net.params() {
                p.zero_grad();
            }
            last = net.loss(&batch, &mut work, true);
            adam.step(&mut net.params());
        }
        f64::from(last)
    });
    if !t.checksum.is_finite() {
        return Err(Error::new(format!(
            "gru_step: the loss became {}",
            t.checksum
        )));
    }
    Ok(t)
}

/// The forest of `rf_detection_score`: real series (0) vs noisy copies (1). Timed: the
/// fit and the predictions for the training series; the checksum comes from predictions
/// for held-out noisy copies (untimed), which depend on every tree.
fn forest_fit(ds: &Dataset) -> Timing {
    let mut rng = Rng::new(11);
    let mut series = Vec::new();
    let mut y = Vec::new();
    for s in &ds.seqs {
        let real = concat(ds, s);
        let noisy = real.iter().map(|v| v + NOISE * rng.normal()).collect();
        series.push(real);
        y.push(0);
        series.push(noisy);
        y.push(1);
    }
    let mut held_out_rng = Rng::new(12);
    let held_out: Vec<Vec<f64>> = ds
        .seqs
        .iter()
        .map(|s| {
            let real = concat(ds, s);
            real.iter()
                .map(|v| v + NOISE * held_out_rng.normal())
                .collect()
        })
        .collect();
    let mut forest = None;
    let mut t = timed(|| {
        let f = Forest::fit(&series, &y, 2, FOREST_TREES, &mut rng);
        let acc = f.accuracy(&series, &y);
        forest = Some(f);
        acc
    });
    if let Some(f) = forest {
        t.checksum = held_out
            .iter()
            .enumerate()
            .map(|(i, s)| ((i + 1) * f.predict(s)) as f64)
            .sum();
    }
    t
}

#[cfg(feature = "bump-alloc")]
mod bump {
    //! Small allocations from 1 MiB chunks, never freed; the rest from the system.
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    const SMALL: usize = 256;
    const CHUNK: usize = 1 << 20;

    pub struct Bump;

    thread_local! {
        static ARENA: Cell<(usize, usize)> = const { Cell::new((0, 0)) };
    }

    unsafe impl GlobalAlloc for Bump {
        unsafe fn alloc(&self, l: Layout) -> *mut u8 {
            if l.size() > SMALL || l.align() > 16 {
                return unsafe { System.alloc(l) };
            }
            ARENA.with(|a| {
                let (mut next, mut end) = a.get();
                let start = (next + l.align() - 1) & !(l.align() - 1);
                if next == 0 || start + l.size() > end {
                    // SAFETY: a valid, non-zero layout.
                    let chunk =
                        unsafe { System.alloc(Layout::from_size_align_unchecked(CHUNK, 16)) };
                    if chunk.is_null() {
                        return chunk;
                    }
                    next = chunk as usize;
                    end = next + CHUNK;
                } else {
                    next = start;
                }
                a.set((next + l.size(), end));
                next as *mut u8
            })
        }
        unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
            if l.size() > SMALL || l.align() > 16 {
                unsafe { System.dealloc(p, l) }
            }
        }
    }

    #[global_allocator]
    static GLOBAL: Bump = Bump;
}

// ------------------------------------------------------------------- the plugin

pub struct Kernels;

#[derive(Serialize, Deserialize)]
struct Job {
    kernel: String,
    rep: i64,
}

impl Plugin for Kernels {
    fn describe() -> Vec<Function> {
        vec![
            Function::new(
                FUNCTION,
                "Time numeric kernels inside the guest (float_loop, matmul, gru_step, \
                 forest_fit); one shard per kernel × repetition. Needs deepecho's data \
                 directory (BasicMotions) as the run's data.",
            )
            .param(Param::new("kernels", "list<string>", "Which kernels to time.").default(KERNELS))
            .param(Param::new("repetitions", "int", "Repetitions of each kernel.").default(1)),
        ]
    }

    fn plan(call: &Call) -> Result<Shards> {
        if call.function() != FUNCTION {
            bail!("unknown function `{}`", call.function());
        }
        let kernels: Vec<String> = call.arg("kernels")?;
        let reps: i64 = call.arg("repetitions")?;
        for k in &kernels {
            if !KERNELS.contains(&k.as_str()) {
                bail!("unknown kernel `{k}`; kernels: {}", KERNELS.join(", "));
            }
        }
        let mut shards = Vec::new();
        for rep in 0..reps.max(0) {
            for k in &kernels {
                let shard = Shard::new()
                    .key("kernel", k.as_str())
                    .key("rep", rep)
                    .payload(Job {
                        kernel: k.clone(),
                        rep,
                    })?;
                // The kernels that load data read only its one dataset.
                let reads: &[&str] = match k.as_str() {
                    "gru_step" | "forest_fit" => &[DATASET],
                    _ => &[],
                };
                shards.push(shard.reads(reads.iter().copied()));
            }
        }
        Ok(shards.into())
    }

    fn run(_function: &str, shard: &Shard, out: &mut Table) -> Result<()> {
        let job: Job = shard.get()?;
        let t = run_kernel(&job.kernel, &guest_sdk::data_dir())?;
        out.push(
            Row::new()
                .set("kernel", job.kernel.as_str())
                .set("rep", job.rep)
                .set("seconds", t.seconds)
                .set("checksum", t.checksum),
        )
    }
}

// Only in WebAssembly: natively, a build of the whole workspace unifies deepecho's
// default `plugin` feature into this crate's dependency, and its exports (which carry
// the same symbol names on every target) would clash with ours in the cdylib. The same
// clash in wasm is why this crate must be built on its own (`-p kernels`), not in one
// `cargo build --target wasm32-wasip2` together with `-p deepecho`.
#[cfg(target_arch = "wasm32")]
guest_sdk::export!(Kernels);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_one_shard_per_kernel_and_repetition() -> Result<()> {
        let call = Call::new(
            FUNCTION,
            r#"{"kernels": ["matmul", "float_loop"], "repetitions": 3}"#,
        )?;
        assert_eq!(Kernels::plan(&call)?.count(), 6);
        let bad = Call::new(FUNCTION, r#"{"kernels": ["nope"], "repetitions": 1}"#)?;
        assert!(Kernels::plan(&bad).is_err());
        Ok(())
    }

    #[test]
    fn float_loop_is_deterministic() {
        assert_eq!(float_loop(1000), float_loop(1000));
    }
}
