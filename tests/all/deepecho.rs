//! The DeepEcho plugin through the engine: real models, real metrics, real data.

use crate::util::*;

fn deepecho_config(extra_args: &str) -> tempfile::TempDir {
    let data = root().join("plugins/deepecho/data");
    config(&format!(
        "[run]\nfunction = \"deepecho.benchmark.run_benchmark\"\ndata = \"{}\"\nseed = 3\n\
         [run.args]\ndatasets = [\"BasicMotions\"]\nmodels = [\"RealDataBaseline\", \"UniformBaseline\"]\n\
         metrics = [\"rf_detection_score\", \"sdmetrics_score\"]\nmax_entities = 40\n{extra_args}\n\
         [cluster]\nworkers = 2\n[output]\npath = \"out/results.csv\"\n",
        data.display()
    ))
}

#[test]
fn baselines_score_as_the_reference_says() {
    let dir = deepecho_config("save_samples = true");
    let o = run_in(dir.path(), &["run", "config.toml", "--summary"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (header, rows) = read_csv(&dir.path().join("out/results.csv"));
    assert_eq!(
        header,
        [
            "model",
            "dataset",
            "fit_time",
            "sample_time",
            "rf_detection_score",
            "rf_detection_score_time",
            "sdmetrics_score",
            "sdmetrics_score_time",
            "metric_errors",
            "error"
        ]
    );
    assert_eq!(rows.len(), 2);
    let score = |row: &Vec<String>, col: usize| row[col].parse::<f64>().unwrap();
    let (real, uniform) = (&rows[0], &rows[1]);
    assert_eq!(
        (real[0].as_str(), uniform[0].as_str()),
        ("RealDataBaseline", "UniformBaseline")
    );
    for row in &rows {
        assert_eq!((row[8].as_str(), row[9].as_str()), ("", ""), "no error");
        for col in [4, 6] {
            assert!(
                (0.0..=1.0).contains(&score(row, col)),
                "score in [0, 1]: {row:?}"
            );
        }
    }
    // Real data is harder to tell from real data than uniform noise is.
    assert!(
        score(real, 4) > score(uniform, 4) + 0.3,
        "{real:?} vs {uniform:?}"
    );
    assert!(
        score(real, 6) > score(uniform, 6),
        "{real:?} vs {uniform:?}"
    );
    // The run's summary is a leaderboard: the real data first on both metrics.
    let text = stderr(&o);
    let summary = text.split("2 models, 1 dataset, 0 failed rows\n").nth(1);
    let lines: Vec<&str> = summary
        .unwrap_or_else(|| panic!("{text}"))
        .lines()
        .collect();
    assert_eq!(
        lines[1].split_whitespace().collect::<Vec<_>>(),
        ["model", "rf_detection", "sdmetrics", "failed"],
        "{text}"
    );
    assert!(
        lines[2].starts_with("  RealDataBaseline") && lines[2].matches("(1)").count() == 2,
        "{text}"
    );
    assert!(
        lines[3].starts_with("  UniformBaseline") && lines[3].matches("(2)").count() == 2,
        "{text}"
    );
    // save_samples: each shard's synthetic sequences stored beside the
    // output, in a folder of that shard's own.
    let outputs = dir.path().join("out/results.outputs");
    let samples = outputs
        .join("00000001-model=UniformBaseline,dataset=BasicMotions/samples/UniformBaseline/BasicMotions.csv");
    let (sample_header, sample_rows) = read_csv(&samples);
    assert_eq!(&sample_header[..3], ["e_id", "ml_class", "dim_0"]);
    assert!(sample_rows.len() > 100, "sequences of ~100 steps");
    assert!(
        outputs
            .join("00000000-model=RealDataBaseline,dataset=BasicMotions/samples/RealDataBaseline/BasicMotions.csv")
            .exists()
    );
}

#[test]
fn the_reference_example_validates_and_plans_every_dataset() {
    let o = run_in(&root(), &["validate", "examples/deepecho/reference.toml"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("7 shards"),
        "datasets = 20 means all 7: {}",
        stdout(&o)
    );
}

#[test]
fn an_unknown_model_is_refused_when_planning() {
    let d = deepecho_config("");
    let text = std::fs::read_to_string(d.path().join("config.toml"))
        .unwrap()
        .replace("\"UniformBaseline\"", "\"UniformBaselin\"");
    std::fs::write(d.path().join("config.toml"), text).unwrap();
    let o = run_in(d.path(), &["run", "config.toml"]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "the plugin refused the arguments: nothing ran"
    );
    assert!(stderr(&o).contains("UniformBaselin"), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("UniformBaseline"),
        "suggests the right name: {}",
        stderr(&o)
    );
}

#[test]
fn the_reference_example_runs_with_the_datasets_the_plugin_ships() {
    // The reference runner's example as written (no `run.data`), made small
    // enough for a test: two datasets, fewer entities, a baseline.
    let text = std::fs::read_to_string(root().join("examples/deepecho/reference.toml"))
        .unwrap()
        .replace(
            "datasets = 20",
            "datasets = 2\nmax_entities = 10\nmetrics = [\"sdmetrics_score\"]",
        )
        .replace("[\"PARModel\"]", "[\"UniformBaseline\"]");
    assert!(!text.contains("data ="), "no data key: {text}");
    let dir = config(&text);
    let o = run_in(dir.path(), &["run", "config.toml"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (_, rows) = read_csv(&dir.path().join("results/reference.csv"));
    let datasets: Vec<&str> = rows.iter().map(|r| r[1].as_str()).collect();
    assert_eq!(datasets, ["PickupGestureWiimoteZ", "Tecator"], "{rows:?}");
}

#[test]
fn a_plugin_without_its_data_says_to_set_run_data_without_errno_numbers() {
    // The component alone, without the `deepecho.data/` it ships with.
    let plugins = tempfile::tempdir().unwrap();
    let built = root().join("target/plugins/deepecho.wasm");
    std::fs::copy(&built, plugins.path().join("deepecho.wasm")).unwrap();
    let dir = config(
        "[run]\nfunction = \"deepecho.benchmark.run_benchmark\"\n[run.args]\ndatasets = 1\n\
         [output]\npath = \"out.csv\"\n",
    );
    let o = run_in(
        dir.path(),
        &[
            "run",
            "config.toml",
            "--plugins",
            plugins.path().to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("/data/datasets.csv"), "names the path: {err}");
    assert!(err.contains("`run.data`"), "names the key: {err}");
    assert!(!err.contains("os error"), "no errno numbers: {err}");
}
