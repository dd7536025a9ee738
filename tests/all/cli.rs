//! The CLI's other jobs: `functions`, `validate`, `--version`, exit codes, the
//! summary at the end of `engine run`.

use crate::util::*;

#[test]
fn functions_lists_the_example_with_its_parameters() {
    let o = run_in(&root(), &["functions"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("hello.greet"), "{text}");
    assert!(text.contains("names     list<string>  required"), "{text}");
    assert!(
        text.contains("greeting  string        default \"hello\""),
        "{text}"
    );
    assert!(text.contains("The word to greet with."), "{text}");
}

#[test]
fn functions_as_json() {
    let o = run_in(
        &root(),
        &[
            "functions",
            "--json",
            "--plugins",
            guests_dir().to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| {
            c["functions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f["name"].as_str().unwrap())
        })
        .collect();
    assert!(
        names.contains(&"faulty.misbehave") && names.contains(&"hello.greet"),
        "{names:?}"
    );
}

#[test]
fn validate_accepts_the_example() {
    let o = run_in(&root(), &["validate", "examples/hello/config.toml"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("calls `hello.greet`"), "{}", stdout(&o));
    assert!(stdout(&o).contains("6 shards"), "{}", stdout(&o));
}

#[test]
fn version() {
    let o = run_in(&root(), &["--version"]);
    assert!(o.status.success());
    assert!(stdout(&o).starts_with("engine "), "{}", stdout(&o));
}

#[test]
fn a_core_module_is_refused_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    // The smallest core module: magic + version 1.
    std::fs::write(dir.path().join("core.wasm"), b"\0asm\x01\0\0\0").unwrap();
    std::fs::write(dir.path().join("junk.wasm"), b"not wasm at all").unwrap();
    let o = run_in(
        &root(),
        &["functions", "--plugins", dir.path().to_str().unwrap()],
    );
    let err = stderr(&o);
    assert!(
        err.contains("core.wasm` is a core WebAssembly module, not a component"),
        "{err}"
    );
    assert!(
        err.contains("junk.wasm` is not a WebAssembly file"),
        "{err}"
    );
}

#[test]
fn a_plugin_built_for_another_wit_version_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    for guest in ["oldwit.wasm", "wit010.wasm", "wit020.wasm"] {
        std::fs::copy(guests_dir().join(guest), dir.path().join(guest)).unwrap();
    }
    let o = run_in(
        &root(),
        &["functions", "--plugins", dir.path().to_str().unwrap()],
    );
    let err = stderr(&o);
    assert!(
        err.contains("oldwit.wasm` was built against `engine:plugin@0.0.9`, but this engine speaks `engine:plugin@0.3.0`; rebuild it against this engine's guest SDK"),
        "{err}"
    );
    // 0.1.0's `run` took the call's arguments: the message says what changed.
    assert!(
        err.contains(
            "wit010.wasm` was built against `engine:plugin@0.1.0`, but this engine speaks \
             `engine:plugin@0.3.0`; since 0.2.0, `run` no longer receives the call's arguments; \
             a shard's payload carries what it needs; since 0.3.0, `plan` hands its shards out \
             a page at a time (the guest SDK's `plan` returns `Shards`); rebuild against this \
             engine's guest SDK"
        ),
        "{err}"
    );
    // 0.2.0's `plan` returned one list.
    assert!(
        err.contains(
            "wit020.wasm` was built against `engine:plugin@0.2.0`, but this engine speaks \
             `engine:plugin@0.3.0`; since 0.3.0, `plan` hands its shards out a page at a time \
             (the `planner` interface; the guest SDK's `plan` returns `Shards`); rebuild \
             against this engine's guest SDK"
        ),
        "{err}"
    );
}

#[test]
fn run_ends_with_a_summary_of_the_table_when_asked() {
    let out = tempfile::tempdir().unwrap();
    let csv = out.path().join("hello.csv");
    let csv = csv.to_str().unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec!["run", "examples/hello/config.toml", "--output", csv];
        args.extend(extra);
        let o = run_in(&root(), &args);
        assert!(o.status.success(), "{}", stderr(&o));
        stderr(&o)
    };
    let text = run(&["--summary"]);
    let (done, summary) = text.split_once("\n\n").unwrap_or_else(|| panic!("{text}"));
    assert!(
        done.lines().last().unwrap().starts_with("done: 6 shards"),
        "{text}"
    );
    assert_eq!(
        summary,
        format!(
            "{csv}: 6 rows, 0 failed rows\n\
             \x20 name     round  message          letters\n\
             \x20 Ada          0  Hello, Ada!            3\n\
             \x20 Grace        0  Hello, Grace!          5\n\
             \x20 Alan         0  Hello, Alan!           4\n\
             \x20 Edsger       0  Hello, Edsger!         6\n\
             \x20 Barbara      0  Hello, Barbara!        7\n\
             \x20 … 1 more row\n"
        )
    );
    // `--summary` beats `--quiet`; `--summary=never` and a stderr that is not
    // a terminal (as here) end with the `done:` line.
    assert!(
        run(&["-q", "--summary"]).ends_with(summary),
        "summary with -q"
    );
    for extra in [&[][..], &["--summary=never"]] {
        let text = run(extra);
        assert!(
            text.lines().last().unwrap().starts_with("done: "),
            "{extra:?}: {text}"
        );
    }
}
