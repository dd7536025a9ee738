//! Fit one model natively and write its samples (for quick quality checks against
//! bench/deepecho_quality.py's scorer): `cargo run -p deepecho --release --example samples --
//! MODEL DATASET EPOCHS SEED OUT.csv` (data from `plugins/deepecho/data`, or
//! `ENGINE_DATA_DIR`). Uses the same seeds as a shard of `run_benchmark` with `seed = SEED`.
//! With `PAR_INIT_OUT=FILE`, also writes PARModel's initial weights as JSON, for
//! bench/deepecho_same_init.py (the reference trained from the same initialisation).

use deepecho::models::{self, ModelParams};
use deepecho::rng::{Rng, derive};
use deepecho::{data, models::Model};
use std::time::Instant;

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let (model_name, dataset) = (a[1].as_str(), a[2].as_str());
    let epochs: usize = a[3].parse().unwrap();
    let seed: u64 = a[4].parse().unwrap();
    let dir = std::env::var("ENGINE_DATA_DIR").unwrap_or_else(|_| "plugins/deepecho/data".into());
    let ds = data::load_dataset(std::path::Path::new(&dir), dataset).unwrap();
    let params = ModelParams {
        epochs: Some(epochs),
        ..Default::default()
    };
    let mut rng = Rng::new(derive(seed, &format!("model/{model_name}/{dataset}")));
    let mut losses = Vec::new();
    let t = Instant::now();
    let mut model: Box<dyn Model> = if model_name == "PARModel" {
        // Built directly to read its loss curve (the same as `models::build`).
        if let Ok(path) = std::env::var("PAR_INIT_OUT") {
            // `Par::fit` draws the network first: a clone of the generator gives the same one.
            let net = models::par::Net::new(&ds, &mut rng.clone());
            let context = ds.context_cols.iter().map(|c| match &c.kind {
                data::Kind::Categorical(names) => names.clone(),
                data::Kind::Numeric => Vec::new(),
            });
            let init = serde_json::json!({
                "n_in": net.layout.n_in,
                "n_out": net.layout.n_out,
                "data_columns": ds.data_cols.iter().map(|c| c.name.clone()).collect::<Vec<_>>(),
                "context_categories": context.collect::<Vec<_>>(),
                "down_w": net.down.w.w, "down_b": net.down.b.w,
                "gru_wi": net.gru.wi.w, "gru_wh": net.gru.wh.w,
                "gru_bi": net.gru.bi.w, "gru_bh": net.gru.bh.w,
                "up_w": net.up.w.w, "up_b": net.up.b.w,
            });
            std::fs::write(path, init.to_string()).unwrap();
        }
        let mut par = models::par::Par::new(epochs, 1);
        par.fit(&ds, &mut rng).unwrap();
        losses = par.losses.clone();
        Box::new(par)
    } else {
        let mut m = models::build(model_name, &params).unwrap();
        m.fit(&ds, &mut rng).unwrap();
        m
    };
    let fit = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let synth = model.sample(&ds, &ds.seqs, &mut rng).unwrap();
    let sample = t.elapsed().as_secs_f64();
    std::fs::write(&a[5], data::to_csv(&ds, &synth)).unwrap();
    println!("{{\"fit_time\": {fit}, \"sample_time\": {sample}, \"losses\": {losses:?}}}");
}
