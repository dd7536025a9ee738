//! `<output>.meta.json` beside the table: what produced it. Engine and
//! wasmtime versions, the component, the WIT version, the data's content
//! hash, the config as resolved (without its secrets), when, where, and how
//! often each cell was attempted.

use super::Prepared;
use crate::store::{Location, RunStore};
use anyhow::{Context, Result};
use object_store::path::Path as ObjPath;
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// The wasmtime the engine is built with (checked against `Cargo.toml` by a test).
pub const WASMTIME_VERSION: &str = "48.0.8";

/// What a run was, for its provenance record.
pub struct Facts<'a> {
    pub run_id: &'a str,
    pub shards: usize,
    pub rows: u64,
    pub failed: usize,
    pub resumed: usize,
    pub started: chrono::DateTime<chrono::Utc>,
}

/// `results.csv` → `results.meta.json`, beside it.
pub fn meta_path(output: &Location) -> ObjPath {
    let p = output.path.as_ref();
    ObjPath::from(format!("{}.meta.json", p.strip_suffix(".csv").unwrap_or(p)))
}

/// Write the record beside the output; its path, as the user would write it.
pub async fn write(
    prepared: &Prepared,
    store: &RunStore,
    output: &Location,
    facts: &Facts<'_>,
) -> Result<String> {
    let record = record(prepared, facts, attempts(store).await);
    let path = meta_path(output);
    output
        .store
        .put(&path, serde_json::to_vec_pretty(&record)?.into())
        .await
        .with_context(|| format!("cannot write `{path}`"))?;
    let shown = output
        .display
        .strip_suffix(".csv")
        .unwrap_or(&output.display);
    Ok(format!("{shown}.meta.json"))
}

/// The cells attempted more than once, by shard index (from the claims; a
/// memory store keeps none: `None`).
async fn attempts(store: &RunStore) -> Option<BTreeMap<usize, usize>> {
    if store.root.is_memory() {
        return None;
    }
    let mut by_shard: BTreeMap<usize, usize> = BTreeMap::new();
    for name in store.list("claims").await.ok()? {
        if let Some(i) = name.split_once('/').and_then(|(i, _)| i.parse().ok()) {
            *by_shard.entry(i).or_default() += 1;
        }
    }
    by_shard.retain(|_, n| *n > 1);
    Some(by_shard)
}

fn record(p: &Prepared, f: &Facts<'_>, attempts: Option<BTreeMap<usize, usize>>) -> Value {
    // The config as resolved; its secrets (`output.key`, `output.secret_key`)
    // are never serialized.
    let config = serde_json::to_value(&p.config).unwrap_or(Value::Null);
    let ended = chrono::Utc::now();
    let read = |path: &str| {
        std::fs::read_to_string(path)
            .map(|s| s.trim().to_owned())
            .ok()
    };
    json!({
        "format": 1,
        "engine": { "version": env!("CARGO_PKG_VERSION"), "wasmtime": WASMTIME_VERSION },
        "run": {
            "id": f.run_id,
            "format": crate::work::FORMAT,
            "function": p.config.run.function,
            "component": { "path": p.component_path.display().to_string(), "sha256": p.plugin.sha256 },
            "wit": crate::WIT_VERSION,
            "data": p.data.as_ref().map(|d| d.id.clone()),
            "seed": p.config.run.seed,
            "store": p.store,
        },
        "config": config,
        "started_at": f.started.to_rfc3339(),
        "ended_at": ended.to_rfc3339(),
        "elapsed_s": (ended - f.started).num_milliseconds() as f64 / 1000.0,
        "host": {
            "name": read("/proc/sys/kernel/hostname"),
            "os": std::env::consts::OS,
            "arch": std::env::consts::ARCH,
            "kernel": read("/proc/sys/kernel/osrelease"),
            "cpus": std::thread::available_parallelism().map(|n| n.get()).ok(),
        },
        "cells": {
            "shards": f.shards,
            "rows": f.rows,
            "failed": f.failed,
            "from_an_earlier_run": f.resumed,
            // No cell cache yet: every cell of this run was computed by it or
            // by the interrupted run it resumed.
            "cache": "none",
            "attempted_more_than_once": attempts,
        },
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_wasmtime_version_is_the_one_built_with() {
        let manifest = include_str!("../../Cargo.toml");
        assert!(
            manifest.contains(&format!(
                "wasmtime = {{ version = \"={}\"",
                super::WASMTIME_VERSION
            )),
            "update WASMTIME_VERSION to engine/Cargo.toml's wasmtime"
        );
    }
}
