//! A plugin written in Python (`tests/guests-py/pywords`, built with
//! componentize-py) through `engine run`: the WIT is language-neutral.

use crate::util::*;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The componentize-py release the tests use (installed by `scripts/test`).
const COMPONENTIZE_PY: &str = "0.25.1";

/// Every file below `dir` (sorted, no `__pycache__`), fed to `h`.
fn hash_tree(dir: &Path, h: &mut impl Hasher) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.file_name().is_some_and(|n| n != "__pycache__"))
        .collect();
    entries.sort();
    for path in entries {
        path.file_name().hash(h);
        if path.is_dir() {
            hash_tree(&path, h);
        } else {
            std::fs::read(&path).expect("read source").hash(h);
        }
    }
}

/// A folder holding `pywords.wasm`. Building it takes a minute, so it is
/// cached under `target/guests-py/`, keyed by the Python source, the WIT and
/// the componentize-py version.
fn pywords_plugins() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let venv = std::env::var_os("ENGINE_TEST_VENV")
            .map_or_else(|| root().join("target/venv-test"), PathBuf::from);
        let tool = venv.join("bin/componentize-py");
        let version = Command::new(&tool).arg("--version").output();
        let version = match version {
            Ok(o) if o.status.success() => stdout(&o).trim().to_owned(),
            _ => panic!(
                "cannot run {}: run the tests with scripts/test, which installs \
                 componentize-py {COMPONENTIZE_PY}",
                tool.display()
            ),
        };
        assert_eq!(
            version,
            format!("componentize-py {COMPONENTIZE_PY}"),
            "scripts/test installs the version these tests expect"
        );
        let source = root().join("tests/guests-py/pywords");
        let wit = root().join("guest-sdk/wit");
        // A rebuild after a Rust upgrade changes the hasher is harmless.
        let mut h = std::hash::DefaultHasher::new();
        version.hash(&mut h);
        hash_tree(&source, &mut h);
        hash_tree(&wit, &mut h);
        let dir = root()
            .join("target/guests-py")
            .join(format!("pywords-{:016x}", h.finish()));
        let wasm = dir.join("pywords.wasm");
        if !wasm.exists() {
            std::fs::create_dir_all(&dir).expect("create the cache folder");
            let tmp = dir.join(format!("pywords.wasm.tmp{}", std::process::id()));
            let o = Command::new(&tool)
                .arg("-d")
                .arg(&wit)
                .args(["-w", "plugin", "componentize", "app", "-p"])
                .arg(&source)
                .arg("-o")
                .arg(&tmp)
                .env_remove("VIRTUAL_ENV")
                .output()
                .expect("start componentize-py");
            assert!(
                o.status.success(),
                "componentize-py failed:\n{}{}",
                stdout(&o),
                stderr(&o)
            );
            std::fs::rename(&tmp, &wasm).expect("move the component into the cache");
        }
        // Compile it into the engine's cache once here, rather than in every
        // test's engine at the same time.
        let o = engine()
            .arg("functions")
            .arg("--plugins")
            .arg(&dir)
            .output()
            .expect("start the engine");
        assert!(o.status.success(), "{}", stderr(&o));
        dir
    })
}

const TEXTS: &str = r#"texts = ["The cat sat on the mat.", "To be, or not to be: that is the question.", "   ", "Route 66 is 2448 miles long"]"#;

#[test]
fn a_python_plugin_runs_shards_and_writes_typed_rows() {
    let plugins = pywords_plugins().to_str().unwrap();
    let dir = config(&format!(
        "[run]\nfunction = \"pywords.count\"\n[run.args]\n{TEXTS}\n\
         [cluster]\nworkers = 2\nstore = \"state\"\n[output]\npath = \"out/words.csv\"\n"
    ));
    let o = run_in(dir.path(), &["run", "config.toml", "--plugins", plugins]);
    // The blank text fails (the plugin raises `Err`); the others do not.
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("4 shards (3 ok, 1 failed)"),
        "{}",
        stderr(&o)
    );
    let (header, rows) = read_csv(&dir.path().join("out/words.csv"));
    assert_eq!(
        header,
        [
            "text",
            "words",
            "distinct",
            "mean_length",
            "top",
            "has_digits",
            "error"
        ]
    );
    // Integers, floats (`3.0`, not `3`), text and booleans, as the plugin typed them.
    assert_eq!(
        rows,
        [
            [
                "0",
                "6",
                "5",
                "2.8333333333333335",
                "the:2 cat:1",
                "false",
                ""
            ],
            ["1", "10", "8", "3.0", "to:2 be:2", "false", ""],
            [
                "2",
                "",
                "",
                "",
                "",
                "",
                "guest-error: the text has no words"
            ],
            [
                "3",
                "6",
                "6",
                "3.6666666666666665",
                "route:1 66:1",
                "true",
                ""
            ],
        ]
    );
    // `host.log` from Python lands in the shard's log in the run store.
    let runs: Vec<_> = std::fs::read_dir(dir.path().join("state/runs"))
        .unwrap()
        .collect();
    assert_eq!(runs.len(), 1);
    let run = runs[0].as_ref().unwrap().path();
    let log = std::fs::read_to_string(run.join("log/00000001.log")).unwrap();
    assert!(log.contains("[info] 10 words"), "{log}");

    // `describe` from Python: the function and its parameters.
    let o = run_in(dir.path(), &["functions", "--plugins", plugins]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("pywords.count"), "{text}");
    assert!(text.contains("top    int           default 2"), "{text}");
}

#[test]
fn a_python_plan_refusal_stops_the_run() {
    let dir = config(&format!(
        "[run]\nfunction = \"pywords.count\"\n[run.args]\n{TEXTS}\ntop = 0\n\
         [output]\npath = \"out/words.csv\"\n"
    ));
    let plugins = pywords_plugins().to_str().unwrap();
    let o = run_in(dir.path(), &["run", "config.toml", "--plugins", plugins]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("`top` must be at least 1, not 0"),
        "{}",
        stderr(&o)
    );
    assert!(!dir.path().join("out").exists(), "nothing ran");
}

#[test]
fn a_python_shard_reads_its_file_through_the_mount_of_its_folder() {
    // Each file's shard declares `reads = [its folder]`: CPython (wasi-libc)
    // opens `/data/a/one.txt` through the `/data/a` preopen, the only one.
    let dir = config(
        "[run]\nfunction = \"pywords.count\"\ndata = \"data\"\n[run.args]\ntexts = []\n\
         files = [\"a/one.txt\", \"b/two.txt\"]\n[output]\npath = \"out/words.csv\"\n",
    );
    for (folder, file, text) in [("a", "one.txt", "one two two"), ("b", "two.txt", "three 3")] {
        let folder = dir.path().join("data").join(folder);
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::write(folder.join(file), text).unwrap();
    }
    let plugins = pywords_plugins().to_str().unwrap();
    let o = run_in(dir.path(), &["run", "config.toml", "--plugins", plugins]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (header, rows) = read_csv(&dir.path().join("out/words.csv"));
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    let got: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r[col("file")].as_str(), r[col("top")].as_str()))
        .collect();
    assert_eq!(
        got,
        [("a/one.txt", "two:2 one:1"), ("b/two.txt", "three:1 3:1")]
    );
}
