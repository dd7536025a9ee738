//! End-to-end tests through `guest_sdk::testing::call`, on the shipped data.

use deepecho::{DeepEcho, FUNCTION};
use guest_sdk::{Cell, Row, testing};
use std::sync::Once;

fn setup() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/data");
        // SAFETY: set once, before any test thread reads the environment through the SDK.
        unsafe { std::env::set_var("ENGINE_DATA_DIR", dir) };
    });
}

fn call(args: &str) -> guest_sdk::Result<Vec<Row>> {
    setup();
    testing::call::<DeepEcho>(FUNCTION, args)
}

fn float(row: &Row, col: &str) -> f64 {
    match row.get(col) {
        Some(Cell::Float(f)) => *f,
        other => panic!("column {col}: {other:?} in {row:?}"),
    }
}

fn text(row: &Row, col: &str) -> String {
    match row.get(col) {
        Some(Cell::Text(s)) => s.clone(),
        other => panic!("column {col}: {other:?}"),
    }
}

#[test]
fn baselines_end_to_end() {
    let rows = call(
        r#"{"models": ["RealDataBaseline", "UniformBaseline"], "datasets": ["BasicMotions"],
            "metrics": ["rf_detection_score", "classification_score", "classification_score_real", "sdmetrics_score"]}"#,
    )
    .unwrap();
    assert_eq!(rows.len(), 2);
    let cols: Vec<&str> = rows[0].cells().iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(
        cols,
        [
            "model",
            "dataset",
            "fit_time",
            "sample_time",
            "classification_score",
            "classification_score_time",
            "classification_score_real",
            "classification_score_real_time",
            "rf_detection_score",
            "rf_detection_score_time",
            "sdmetrics_score",
            "sdmetrics_score_time",
            "metric_errors"
        ]
    );
    for r in &rows {
        eprintln!("{r:?}");
        assert_eq!(text(r, "metric_errors"), "");
        for m in ["rf_detection_score", "sdmetrics_score"] {
            let v = float(r, m);
            assert!((0.0..=1.0).contains(&v), "{m} = {v}");
        }
        assert!(float(r, "classification_score") >= 0.0);
    }
    let (real, uni) = (&rows[0], &rows[1]);
    assert_eq!(text(real, "model"), "RealDataBaseline");
    assert!(float(real, "rf_detection_score") > float(uni, "rf_detection_score") + 0.3);
    assert!(float(real, "sdmetrics_score") > 0.999);
    assert!(float(uni, "sdmetrics_score") < 0.9);
    assert!(float(real, "classification_score") > 0.9);
    assert!(float(uni, "classification_score_real") < 0.6);
}

fn without_times(rows: &[Row]) -> Vec<Vec<(String, Cell)>> {
    rows.iter()
        .map(|r| {
            r.cells()
                .iter()
                .filter(|(c, _)| !c.ends_with("_time"))
                .cloned()
                .collect()
        })
        .collect()
}

#[test]
fn same_seed_same_rows_and_all_models_run() {
    let args = r#"{"models": {"PARModel": {"epochs": 3, "sample_size": 2}, "BasicGANModel": {"epochs": 2}, "UniformBaseline": {}},
                  "datasets": ["Covid3Month", "PickupGestureWiimoteZ"], "max_entities": 12, "seed": 5,
                  "metrics": ["sdmetrics_score", "rf_detection_score", "lstm_detection_score", "classification_score"]}"#;
    let a = call(args).unwrap();
    let b = call(args).unwrap();
    assert_eq!(a.len(), 6);
    // models in the outer loop
    let keys: Vec<(String, String)> = a
        .iter()
        .map(|r| (text(r, "model"), text(r, "dataset")))
        .collect();
    // models in the outer loop; a table's models run in the canonical order
    assert_eq!(keys[0], ("UniformBaseline".into(), "Covid3Month".into()));
    assert_eq!(
        keys[1],
        ("UniformBaseline".into(), "PickupGestureWiimoteZ".into())
    );
    assert_eq!(keys[2].0, "PARModel");
    assert_eq!(keys[4].0, "BasicGANModel");
    assert_eq!(without_times(&a), without_times(&b));
    for r in &a {
        assert_eq!(text(r, "metric_errors"), "", "{r:?}");
        for m in [
            "sdmetrics_score",
            "rf_detection_score",
            "lstm_detection_score",
        ] {
            let v = float(r, m);
            assert!((0.0..=1.0).contains(&v), "{m} = {v}");
        }
    }
    let c = call(&args.replace("\"seed\": 5", "\"seed\": 6")).unwrap();
    assert_ne!(without_times(&a), without_times(&c));
}

#[test]
fn epochs_override_and_datasets_count() {
    setup();
    let call_ = guest_sdk::Call::new(
        FUNCTION,
        &testing::with_defaults::<DeepEcho>(FUNCTION, r#"{"datasets": 2, "epochs": 7, "models": {"PARModel": {"epochs": 1}, "RealDataBaseline": null}}"#).unwrap(),
    )
    .unwrap();
    let jobs = deepecho::jobs(&call_).unwrap();
    assert_eq!(jobs.len(), 4);
    assert_eq!(jobs[0].dataset, "PickupGestureWiimoteZ");
    assert_eq!(jobs[1].dataset, "Tecator");
    assert_eq!(jobs[2].params.epochs, Some(7));
    assert_eq!(jobs[0].model, "RealDataBaseline");
    assert_eq!(jobs[2].model, "PARModel");
    // more than exist: all of them (with a warning)
    let call_ = guest_sdk::Call::new(
        FUNCTION,
        &testing::with_defaults::<DeepEcho>(
            FUNCTION,
            r#"{"datasets": 99, "models": ["UniformBaseline"]}"#,
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(deepecho::jobs(&call_).unwrap().len(), 7);
    let call_ = guest_sdk::Call::new(
        FUNCTION,
        &testing::with_defaults::<DeepEcho>(FUNCTION, "{}").unwrap(),
    )
    .unwrap();
    let jobs = deepecho::jobs(&call_).unwrap();
    assert_eq!(jobs.len(), 4 * 7);
    assert_eq!(jobs[0].metrics.len(), 5);
}

#[test]
fn unknown_names_are_rejected_with_suggestions() {
    let e = call(r#"{"models": ["PARModle"]}"#).unwrap_err().to_string();
    assert!(
        e.contains("PARModle")
            && e.contains("did you mean `PARModel`")
            && e.contains("UniformBaseline"),
        "{e}"
    );
    let e = call(r#"{"metrics": ["rf_detection"]}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("rf_detection_score"), "{e}");
    let e = call(r#"{"datasets": ["BasicMotion"]}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("did you mean `BasicMotions`"), "{e}");
    let e = call(r#"{"models": {"PARModel": {"epoch": 3}}}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("epoch") && e.contains("sample_size"), "{e}");
}

#[test]
fn failing_metric_leaves_null_and_explains() {
    let rows = call(
        r#"{"models": ["RealDataBaseline"], "datasets": ["GunPoint"], "max_entities": 1,
                       "metrics": ["classification_score", "sdmetrics_score"]}"#,
    )
    .unwrap();
    let r = &rows[0];
    assert_eq!(r.get("classification_score"), Some(&Cell::Null));
    assert!(
        text(r, "metric_errors").starts_with("classification_score:"),
        "{r:?}"
    );
    assert!(float(r, "sdmetrics_score") > 0.99);
}

#[test]
fn save_samples_emits_csv_in_the_dataset_layout() {
    testing::take_emitted();
    call(
        r#"{"models": ["UniformBaseline"], "datasets": ["BasicMotions"], "max_entities": 3,
             "metrics": ["sdmetrics_score"], "save_samples": true}"#,
    )
    .unwrap();
    let out = testing::take_emitted();
    let csv = String::from_utf8(out["samples/UniformBaseline/BasicMotions.csv"].clone()).unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("e_id,ml_class,dim_0,dim_1,dim_2,dim_3,dim_4,dim_5")
    );
    assert_eq!(lines.count(), 3 * 100);
}
