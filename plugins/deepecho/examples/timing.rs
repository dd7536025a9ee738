//! Time models natively: `ENGINE_DATA_DIR=plugins/deepecho/data cargo run -p deepecho
//! --release --example timing -- [MODEL] [DATASET] [EPOCHS] [METRICS,..]`.

use deepecho::{Job, run_job};
use guest_sdk::Cell;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let model = args.get(1).cloned().unwrap_or_else(|| "PARModel".into());
    let dataset = args
        .get(2)
        .cloned()
        .unwrap_or_else(|| "BasicMotions".into());
    let epochs: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(128);
    let metrics: Vec<String> = args
        .get(4)
        .map(|s| s.split(',').map(str::to_owned).collect())
        .unwrap_or_else(|| {
            vec![
                "classification_score".into(),
                "rf_detection_score".into(),
                "sdmetrics_score".into(),
            ]
        });
    let job = Job {
        model,
        params: deepecho::models::ModelParams {
            epochs: Some(epochs),
            ..Default::default()
        },
        dataset,
        metrics,
        seed: 0,
        max_entities: None,
        save_samples: false,
    };
    match run_job(&job) {
        Ok(row) => {
            for (c, v) in row.cells() {
                let v = match v {
                    Cell::Float(f) => format!("{f:.4}"),
                    Cell::Text(s) => s.clone(),
                    other => format!("{other:?}"),
                };
                println!("{c:>32} {v}");
            }
        }
        Err(e) => println!("error: {e}"),
    }
}
