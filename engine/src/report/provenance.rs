//! The header of `engine report`: what produced the table, from the
//! `<stem>.meta.json` that `engine run` writes beside it.

use serde_json::Value;
use std::fmt::Write;
use std::path::{Path, PathBuf};

/// `results.csv` → `results.meta.json`.
pub fn meta_path(results: &Path) -> PathBuf {
    let name = results
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name.strip_suffix(".csv").unwrap_or(&name);
    results.with_file_name(format!("{stem}.meta.json"))
}

/// A few lines on the run behind a table: engine, component, data, seed,
/// when and where, and where its cells came from.
pub fn render_provenance(meta: &Value) -> String {
    let s = |v: &Value| {
        v.as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| v.to_string())
    };
    let short = |v: &Value| s(v).chars().take(12).collect::<String>();
    // `2026-12-01T18:34:47.958317413+00:00` → `2026-12-01 18:34:47`.
    let when = |v: &Value| {
        s(v).chars()
            .take(19)
            .collect::<String>()
            .replacen('T', " ", 1)
    };
    let run = &meta["run"];
    let cells = &meta["cells"];
    let mut out = String::new();
    let _ = writeln!(
        out,
        "run {} of `{}`: engine {} (wasmtime {}), component {} (WIT {}), data {}, seed {}",
        s(&run["id"]),
        s(&run["function"]),
        s(&meta["engine"]["version"]),
        s(&meta["engine"]["wasmtime"]),
        short(&run["component"]["sha256"]),
        s(&run["wit"]),
        if run["data"].is_null() {
            "none".to_owned()
        } else {
            short(&run["data"])
        },
        s(&run["seed"]),
    );
    let cache = match &cells["cache"] {
        Value::Object(c) => format!(
            "{} from the cache, {} computed",
            s(&c["reused"]),
            s(&c["computed"])
        ),
        other => format!("cache {}", s(other)),
    };
    let _ = writeln!(
        out,
        "{} cells ({} from an earlier run, {cache}), {} failed; {} to {} UTC on {} ({} CPUs)",
        s(&cells["shards"]),
        s(&cells["from_an_earlier_run"]),
        s(&cells["failed"]),
        when(&meta["started_at"]),
        when(&meta["ended_at"]),
        s(&meta["host"]["name"]),
        s(&meta["host"]["cpus"]),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_names_the_run_its_code_and_its_cells() {
        let meta = serde_json::json!({
            "engine": { "version": "0.1.0", "wasmtime": "48.0.8" },
            "run": { "id": "abcd", "function": "f.g", "component": { "sha256": "0123456789abcdef" },
                     "wit": "0.2.0", "data": null, "seed": 3 },
            "cells": { "shards": 6, "failed": 0, "from_an_earlier_run": 0,
                       "cache": { "reused": 4, "computed": 2 } },
            "started_at": "2026-12-01T18:34:47.958317413+00:00", "ended_at": "2026-12-01T18:40:51.1+00:00",
            "host": { "name": "h", "cpus": 2 },
        });
        let text = render_provenance(&meta);
        assert!(text.contains("run abcd of `f.g`: engine 0.1.0 (wasmtime 48.0.8), component 0123456789ab (WIT 0.2.0), data none, seed 3"), "{text}");
        assert!(
            text.contains(
                "6 cells (0 from an earlier run, 4 from the cache, 2 computed), 0 failed"
            ),
            "{text}"
        );
        assert_eq!(
            meta_path(Path::new("out/r.csv")),
            Path::new("out/r.meta.json")
        );
    }
}
