//! Helpers: run the real `engine` binary, write configs, read CSVs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The test guests (`tests/guests/*`), built for wasm.
pub fn guests_dir() -> PathBuf {
    PathBuf::from(env!("ENGINE_TEST_GUESTS_DIR"))
}

/// `engine` with a shared compile cache and no plugin path from the caller.
pub fn engine() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_engine-cli"));
    cmd.env("ENGINE_CACHE_DIR", root().join("target/test-cache"))
        .env_remove("ENGINE_PLUGIN_PATH")
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1");
    cmd
}

/// Run `engine ARGS…` in `dir`.
pub fn run_in(dir: &Path, args: &[&str]) -> Output {
    engine()
        .args(args)
        .current_dir(dir)
        .output()
        .expect("cannot start the engine binary")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A temporary directory with `config.toml` holding `text`.
pub fn config(text: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("config.toml"), text).expect("write config");
    dir
}

/// A config calling `faulty.misbehave` with the given extra args and workers;
/// `extra` holds more `[limits]` lines (memory 64M and timeout 5s unless given).
pub fn faulty_config(args: &str, workers: usize, extra: &str) -> tempfile::TempDir {
    let mut limits = String::new();
    if !extra.contains("memory =") {
        limits.push_str("memory = \"64M\"\n");
    }
    if !extra.contains("timeout =") {
        limits.push_str("timeout = \"5s\"\n");
    }
    config(&format!(
        "[run]\nfunction = \"faulty.misbehave\"\nseed = 7\n[run.args]\n{args}\n\
         [cluster]\nworkers = {workers}\n[limits]\n{limits}{extra}\n\
         [output]\npath = \"out/result.csv\"\n"
    ))
}

/// Parse a CSV file into a header and rows.
pub fn read_csv(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let mut reader = csv::Reader::from_path(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let header = reader
        .headers()
        .expect("header")
        .iter()
        .map(str::to_owned)
        .collect();
    let rows = reader
        .records()
        .map(|r| r.expect("record").iter().map(str::to_owned).collect())
        .collect();
    (header, rows)
}
