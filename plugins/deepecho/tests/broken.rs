//! Broken datasets give clear errors (own process: it points ENGINE_DATA_DIR elsewhere).

use deepecho::{DeepEcho, FUNCTION};
use guest_sdk::testing;

#[test]
fn broken_datasets_give_clear_errors() {
    let dir = std::env::temp_dir().join(format!("deepecho-broken-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    for (name, csv) in [
        ("NoEntity", "id,ml_class,dim_0\n1,a,0.5\n"),
        ("BadNumber", "e_id,ml_class,dim_0\n1,a,0.5\n1,a,abc\n"),
        ("Ragged", "e_id,ml_class,dim_0\n1,a\n"),
        (
            "Good",
            "e_id,ml_class,dim_0,dim_1\n1,a,0.5,\n1,a,0.7,1\n2,b,,2\n2,b,0.1,3\n2,b,0.2,4\n3,a,1,1\n",
        ),
    ] {
        std::fs::create_dir_all(dir.join(name)).unwrap();
        std::fs::write(dir.join(name).join(format!("{name}.csv")), csv).unwrap();
    }
    std::fs::write(
        dir.join("datasets.csv"),
        "dataset,size_in_kb\nGood,1\nNoEntity,1\nBadNumber,1\nRagged,1\n",
    )
    .unwrap();
    // SAFETY: this test binary has a single test; nothing else reads the environment.
    unsafe { std::env::set_var("ENGINE_DATA_DIR", &dir) };
    let run = |ds: &str| {
        testing::call::<DeepEcho>(
            FUNCTION,
            &format!(r#"{{"models": ["UniformBaseline"], "datasets": ["{ds}"]}}"#),
        )
    };
    let e = run("NoEntity").unwrap_err().to_string();
    assert!(e.contains("missing entity column `e_id`"), "{e}");
    let e = run("BadNumber").unwrap_err().to_string();
    assert!(
        e.contains("non-numeric value `abc`") && e.contains("dim_0"),
        "{e}"
    );
    let e = run("Ragged").unwrap_err().to_string();
    assert!(e.contains("line 2 has 2 fields"), "{e}");
    // Missing values, no metadata, tiny variable-length data: every model and metric runs.
    let rows =
        testing::call::<DeepEcho>(FUNCTION, r#"{"datasets": ["Good"], "epochs": 3}"#).unwrap();
    assert_eq!(rows.len(), 4);
    for r in &rows {
        assert!(r.get("sdmetrics_score").is_some());
    }
    let _ = std::fs::remove_dir_all(&dir);
}
