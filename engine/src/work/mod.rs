//! The store protocol: what every worker does, whichever process it is in.
//!
//! A run is published in the store as `run.json` ([`RunSpec`]), the component
//! and its shards in pages (`shards`); workers claim shards (`queue`), run them in fresh
//! sandboxes and store one part per shard (`worker`), in threads of one
//! process (`threads`); `engine worker` (`serve`) is that process on another
//! machine. It depends on the store and the runtime alone: the orchestrator
//! and the backends build on it, never the other way round.

pub mod artifact;
pub mod cache;
pub mod data;
pub mod queue;
mod serve;
pub mod shards;
pub mod threads;
pub mod worker;

pub use serve::{ServeOptions, serve};

use crate::config::Limits;
use crate::store::RunStore;
use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// The version of the run layout and its protocol, part of the run id, so
/// that engines of two formats never share a run. 3: shard seeds derive from
/// the shard (its key and payload), not its index. 4: a shard's `run` sees
/// only the shard (WIT 0.2, which added the shard's `reads`), and the limits
/// are no longer part of the run id. 5: a process beats only while it holds
/// a claim a quarter lease old (a reader holds a claim it has watched for
/// less than a lease), and `finished` marks a run whose shards all have a part.
/// 6: the shards are stored in pages (`shards/<page>.json`, [`shards::PAGE`]
/// a page, each page's sha256 in `run.json`), not in one `shards.json`.
pub const FORMAT: u32 = 6;

/// The version of what a cell's result depends on beside its inputs (the
/// table's encoding, how seeds derive; 4 since WIT 0.2): part of every
/// cell's cache key, so that results an older engine made otherwise are
/// never reused, while cells of a run of an older layout still are.
pub const RESULTS: u32 = 4;

/// The run as published in the store (`run.json`): everything a worker needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunSpec {
    /// Version of this layout.
    pub format: u32,
    pub run_id: String,
    pub function: String,
    /// Checked against the function's parameters, defaults filled in.
    pub args: Map<String, Value>,
    pub component_sha256: String,
    /// The id of the run's data tree in the store (`data`), if it reads data.
    pub data: Option<String>,
    pub seed: u64,
    pub tenant: Option<String>,
    /// Not part of the run id: a rerun with other limits (a longer timeout,
    /// say) resumes the run, and its unfinished shards run with the new ones.
    pub limits: Limits,
    pub shards: usize,
    /// Claims whose process has not beaten for this long are re-offered.
    pub lease_ms: u64,
    /// The sha256 of each page of shards (`shards/<page>.json`), so that a
    /// worker can tell none was changed.
    #[serde(default)]
    pub shard_pages: Vec<String>,
    /// Whether workers keep each successful cell in the tenant's cell cache
    /// (`work::cache`); off with `engine run --no-cache`.
    #[serde(default)]
    pub cache: bool,
}

impl RunSpec {
    /// Refuse a spec that does not hash to the run id it is stored under:
    /// the store was changed by something other than the engine.
    pub fn check_id(&self, run_id: &str) -> Result<()> {
        if self.format != FORMAT {
            bail!(
                "run `{run_id}` was stored by an engine of run format {} (this one is format {FORMAT}, \
                 whose layout or results differ): it cannot be resumed or served here; \
                 run the config again with this engine (it gets a new run id; its cached cells \
                 are reused where their results are made the same way)",
                self.format
            );
        }
        let id = identity(
            &self.function,
            &self.args,
            &self.component_sha256,
            self.data.as_deref(),
            self.seed,
            self.tenant.as_deref(),
        );
        if id != run_id || self.run_id != run_id {
            bail!(
                "the stored `run.json` of run `{run_id}` does not hash to its id (it hashes to `{id}`): \
                 the store was modified; delete the run's folder and run again"
            );
        }
        Ok(())
    }
}

/// A run in a store, as `engine runs` lists it.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub id: String,
    /// `None` when its `run.json` is missing or unreadable.
    pub function: Option<String>,
    pub format: Option<u64>,
    pub shards: Option<u64>,
    pub finished: usize,
    pub failed: usize,
    /// When its last part was stored.
    pub last_part: Option<chrono::DateTime<chrono::Utc>>,
}

/// The runs of a tenant (or outside tenants) in `base`, by id: a listing of
/// the runs, then per run its `run.json` and two listings (parts, failures).
pub async fn list_runs(
    base: &crate::store::Location,
    tenant: Option<&str>,
) -> Result<Vec<RunInfo>> {
    let runs = RunStore::beside_runs(base, tenant, "runs");
    let mut out = Vec::new();
    for id in runs.folders("").await? {
        let store = RunStore::new(base, tenant, &id);
        let spec: Option<Value> = store
            .get("run.json")
            .await?
            .and_then(|b| serde_json::from_slice(&b).ok());
        let field = |k: &str| spec.as_ref().and_then(|s| s.get(k).cloned());
        let parts = store.list_meta("parts").await?;
        out.push(RunInfo {
            function: field("function").and_then(|v| v.as_str().map(str::to_owned)),
            format: field("format").and_then(|v| v.as_u64()),
            shards: field("shards").and_then(|v| v.as_u64()),
            finished: parts.len(),
            failed: store.count("failed").await?,
            last_part: parts.iter().map(|p| p.2).max(),
            id,
        });
    }
    Ok(out)
}

/// The run id: a hash of everything that determines the results (the data
/// by its content), so a rerun of the same config finds its earlier work.
/// The limits are not in it: they decide whether a cell succeeds, not what a
/// successful cell yields.
pub fn identity(
    function: &str,
    args: &Map<String, Value>,
    component: &str,
    data: Option<&str>,
    seed: u64,
    tenant: Option<&str>,
) -> String {
    let identity = serde_json::json!({
        "format": FORMAT,
        "function": function,
        "args": args,
        "component": component,
        "data": data,
        "seed": seed,
        "tenant": tenant,
    });
    hex::encode(&Sha256::digest(identity.to_string().as_bytes())[..8])
}
