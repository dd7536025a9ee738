//! `<output>.meta.json` beside the table: what produced it. Engine and
//! wasmtime versions, the component, the WIT version, the data's content
//! hash, the config as resolved (without its secrets), when, where, and for
//! each cell (up to [`CELLS_LISTED`]) whether it came from the cell cache and
//! how often it was attempted.

use super::Prepared;
use crate::store::{Location, RunStore};
use crate::table::Cell;
use crate::work::shards::ShardList;
use anyhow::{Context, Result};
use object_store::path::Path as ObjPath;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashSet};

/// Runs of more cells than this list none of them, only their counts.
pub const CELLS_LISTED: usize = 10_000;

/// The wasmtime the engine is built with (checked against `Cargo.toml` by a test).
pub const WASMTIME_VERSION: &str = "48.0.8";

/// What a run was, for its provenance record.
pub struct Facts<'a> {
    pub run_id: &'a str,
    pub shards: &'a ShardList,
    pub rows: u64,
    pub failed: usize,
    /// Shards that had a part when this invocation started (a resume).
    pub earlier: &'a HashSet<usize>,
    /// Shards filled from the cell cache (`None`: `--no-cache`).
    pub reused: Option<&'a [usize]>,
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
    let n = facts.shards.len();
    let attempts = attempts(store, n <= CELLS_LISTED).await;
    let listed = match n <= CELLS_LISTED {
        true => Some(cells(facts, attempts.as_ref()).await?),
        false => None,
    };
    let record = record(prepared, facts, attempts, listed);
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

/// The attempts of each cell that was claimed (`all`), or of those claimed
/// more than once, by shard index, from the claims read as they are listed;
/// a memory store keeps none: `None`. Attempt `k` of a shard is claimed only
/// after attempt `k - 1`, so a shard with a claim `<i>/k` was tried `k + 1`
/// times: without `all`, only such claims are kept.
async fn attempts(store: &RunStore, all: bool) -> Option<BTreeMap<usize, usize>> {
    if store.root.is_memory() {
        return None;
    }
    let mut by_shard: BTreeMap<usize, usize> = BTreeMap::new();
    store
        .for_each_name("claims", |name| {
            let Some((i, attempt)) = name.split_once('/') else {
                return;
            };
            let (Ok(i), Ok(attempt)) = (i.parse::<usize>(), attempt.parse::<usize>()) else {
                return;
            };
            if all {
                *by_shard.entry(i).or_default() += 1;
            } else if attempt > 0 {
                let tries = by_shard.entry(i).or_default();
                *tries = (*tries).max(attempt + 1);
            }
        })
        .await
        .ok()?;
    Some(by_shard)
}

/// Each cell: its key cells, where its part came from (`cache`: the cell
/// cache; `earlier`: an earlier, interrupted invocation of this run; `run`:
/// computed now) and its attempts (claims made; `null` where not recorded).
async fn cells(f: &Facts<'_>, attempts: Option<&BTreeMap<usize, usize>>) -> Result<Value> {
    let reused: HashSet<usize> = f.reused.unwrap_or_default().iter().copied().collect();
    let mut list = Vec::new();
    f.shards
        .for_each(|i, shard| {
            let key: serde_json::Map<String, Value> = shard
                .key
                .iter()
                .map(|(k, c)| (k.clone(), cell_value(c)))
                .collect();
            let from = if reused.contains(&i) {
                "cache"
            } else if f.earlier.contains(&i) {
                "earlier"
            } else {
                "run"
            };
            let tries = match (from, attempts) {
                ("cache", _) => json!(0),
                (_, Some(a)) => json!(a.get(&i).copied().unwrap_or(0)),
                (_, None) => Value::Null,
            };
            list.push(json!({ "shard": i, "key": key, "from": from, "attempts": tries }));
            Ok(())
        })
        .await?;
    Ok(Value::Array(list))
}

fn cell_value(c: &Cell) -> Value {
    match c {
        Cell::Null => Value::Null,
        Cell::Bool(b) => json!(b),
        Cell::Int(i) => json!(i),
        Cell::Float(x) => json!(x),
        Cell::Text(t) => json!(t),
    }
}

fn record(
    p: &Prepared,
    f: &Facts<'_>,
    attempts: Option<BTreeMap<usize, usize>>,
    listed: Option<Value>,
) -> Value {
    let n = f.shards.len();
    let more_than_once = attempts.as_ref().map(|a| {
        a.iter()
            .filter(|(_, t)| **t > 1)
            .map(|(i, t)| (*i, *t))
            .collect::<BTreeMap<_, _>>()
    });
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
            "shards": n,
            "rows": f.rows,
            "failed": f.failed,
            "from_an_earlier_run": f.earlier.len(),
            "cache": match f.reused {
                Some(r) => json!({ "reused": r.len(), "computed": n - r.len() - f.earlier.len() }),
                None => json!("off (--no-cache)"),
            },
            "attempted_more_than_once": more_than_once,
            "each": listed,
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
