//! `engine new` (a plugin crate that builds and runs as scaffolded) and
//! `engine report` (leaderboards and the HTML report).

use crate::util::*;
use std::path::Path;
use std::process::Command;

/// `cargo` with a target dir shared by every run of these tests.
fn cargo(dir: &Path, args: &[&str]) -> std::process::Output {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    Command::new(cargo)
        .args(args)
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", root().join("target/scaffold-test"))
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .output()
        .expect("cannot start cargo")
}

#[test]
fn new_scaffolds_a_plugin_that_builds_runs_and_tests() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sort-bench");
    let o = run_in(
        tmp.path(),
        &["new", "sort-bench", "--path", dir.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("`sort_bench.run`"), "{out}");
    assert!(
        out.contains("cargo build --target wasm32-wasip2 --release"),
        "{out}"
    );
    assert!(
        out.contains("engine run config.toml --plugins target/wasm32-wasip2/release"),
        "{out}"
    );
    for f in ["Cargo.toml", "src/lib.rs", "config.toml"] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }

    // A second time into the same (now non-empty) directory: refused.
    let o = run_in(
        tmp.path(),
        &["new", "sort-bench", "--path", dir.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("not empty"), "{}", stderr(&o));

    let o = cargo(&dir, &["build", "--target", "wasm32-wasip2", "--release"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let plugins = root().join("target/scaffold-test/wasm32-wasip2/release");
    let o = run_in(
        &dir,
        &[
            "run",
            "config.toml",
            "--plugins",
            plugins.to_str().unwrap(),
            "-q",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let (header, rows) = read_csv(&dir.join("results/sort_bench.csv"));
    assert_eq!(
        header,
        ["size", "repeats", "best_time", "checksum", "error"],
        "{rows:?}"
    );
    let sizes: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(sizes, ["1000", "10000", "100000"]);
    for r in &rows {
        assert_eq!(r[1], "3");
        assert!(r[2].parse::<f64>().unwrap() >= 0.0, "{r:?}");
        assert!(r[3].parse::<i64>().unwrap() > 0, "{r:?}");
        assert_eq!(r[4], "", "{r:?}");
    }

    // The scaffold's own unit tests, natively.
    let o = cargo(&dir, &["test", "-q"]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("2 passed"), "{}", stdout(&o));
}

#[test]
fn new_refuses_bad_names() {
    let tmp = tempfile::tempdir().unwrap();
    for bad in ["My-Bench", "1bench", "a.b"] {
        let o = run_in(tmp.path(), &["new", bad]);
        assert_eq!(o.status.code(), Some(2), "{bad}: {}", stderr(&o));
        assert!(stderr(&o).contains("invalid plugin name"), "{}", stderr(&o));
    }
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
}

const RESULTS: &str = "\
model,dataset,fit_time,sample_time,rf_detection_score,rf_detection_score_time,sdmetrics_score,error
Uniform,ds<1>,0.0001,0.0001,0.1,0.01,0.70,
Uniform,ds2,0.0001,0.0001,0.0,0.01,0.75,
PAR,ds<1>,8.0,0.01,0.4,0.3,0.8,
PAR,ds2,2.0,0.02,0.5,0.3,0.9,
GAN & co,ds<1>,20.0,0.06,0.2,0.2,,
GAN & co,ds2,,,,,,timeout: deadline of 30m exceeded
";

#[test]
fn report_ranks_models_and_writes_a_self_contained_html() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("results.csv"), RESULTS).unwrap();
    let o = run_in(
        tmp.path(),
        &["report", "results.csv", "--html", "report.html"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    // rf_detection_score: PAR 0.45 > GAN 0.2 (one failure) > Uniform 0.05.
    let rf = text
        .split("\nrf_detection_score")
        .nth(1)
        .unwrap_or_else(|| panic!("{text}"));
    let order: Vec<&str> = ["PAR", "GAN & co", "Uniform"]
        .iter()
        .map(|m| (rf.find(m).unwrap_or(usize::MAX), *m))
        .collect::<std::collections::BTreeMap<_, _>>()
        .into_values()
        .collect();
    assert_eq!(order, ["PAR", "GAN & co", "Uniform"], "{text}");
    assert!(rf.lines().nth(2).unwrap().starts_with("  1  PAR"), "{text}");
    assert!(text.contains("sdmetrics_score"), "{text}");
    assert!(text.contains("fit_time"), "{text}");

    let html = std::fs::read_to_string(tmp.path().join("report.html")).unwrap();
    assert!(html.contains("<svg"), "{html}");
    assert!(html.contains("GAN &amp; co") && html.contains("ds&lt;1&gt;"));
    assert!(!html.contains("ds<1>"));
    assert!(!html.contains("<script"));
    let urls = html.matches("http").count();
    let ns = html.matches("http://www.w3.org/2000/svg").count();
    assert_eq!(urls, ns, "only the SVG namespace may be a URL");

    // A metric that is not a column: a usage error.
    let o = run_in(tmp.path(), &["report", "results.csv", "--metric", "nope"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("no column `nope`"), "{}", stderr(&o));
}
