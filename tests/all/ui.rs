//! Golden config errors: each `tests/ui/NAME.toml` must make `engine validate`
//! exit 2 and print exactly `tests/ui/NAME.stderr`. `BLESS=1` rewrites them.

use crate::util::*;

#[test]
fn config_errors_match_their_golden_messages() {
    let ui = root().join("tests/ui");
    let mut cases: Vec<_> = std::fs::read_dir(&ui)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml" || x == "json"))
        .collect();
    cases.sort();
    assert!(cases.len() >= 8, "the golden cases are missing");
    let mut failures = Vec::new();
    for case in &cases {
        let name = case.file_name().unwrap().to_str().unwrap();
        let rel = format!("ui/{name}");
        let o = run_in(
            &root().join("tests"),
            &[
                "validate",
                &rel,
                "--plugins",
                guests_dir().to_str().unwrap(),
            ],
        );
        let actual = stderr(&o).replace(&root().display().to_string(), "$ROOT");
        let golden = case.with_extension("stderr");
        if std::env::var_os("BLESS").is_some() {
            std::fs::write(&golden, &actual).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&golden).unwrap_or_default();
        if o.status.code() != Some(2) || actual != expected {
            failures.push(format!(
                "{name}: exit {:?}\n--- expected\n{expected}--- actual\n{actual}",
                o.status.code()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
