//! The cell cache: a shard's result kept under a key derived from what
//! determines it, so that any later run that plans the same cell reuses it.
//!
//! It lives beside the runs, in `cache/` (`tenants/<t>/cache/` for a tenant:
//! never shared across tenants), one object a cell: `cache/<key>.cell`.
//!
//! The key is the sha256 of:
//! - `RESULTS`: what the engine does to a result (the table's encoding, how
//!   seeds derive), bumped when that changes;
//! - the component's sha256 and the function's name: the code;
//! - the shard itself (its key cells, payload and `reads`): `run` sees
//!   nothing else of the call (WIT 0.2), so this is the cell's whole input;
//! - the data the shard reads, by content: the paths and sha256s of the
//!   files below each of its `reads` directories (the only ones mounted in
//!   its sandbox), or the whole data tree's id when it reads all of `/data`;
//! - the run's seed (the cell's own seed derives from it and the shard).
//!
//! No limit is in the key: only successful cells are cached, and a cell
//! that succeeded within its limits yields the same rows under any others
//! (a limit that is hit makes the cell an error). Errors are never cached:
//! a timeout or a crash deserves another try.
//!
//! An entry is `ENGINE-CELL 1\n`, a JSON header line (sizes, the sha256 of
//! the body, the cell's key cells, the run that made it), then the body: the
//! part, the log and each side output. A reader checks the body's sha256;
//! an entry that does not match is reported and left out, never used.

use super::RESULTS;
use super::data::Tree;
use crate::runtime::{Shard, ShardOutput};
use crate::store::{Location, RunStore};
use crate::table::Cell;
use anyhow::{Context, Result, bail};
use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

const MAGIC: &[u8] = b"ENGINE-CELL 1\n";

/// A run's view of its tenant's cell cache.
#[derive(Clone)]
pub struct CellCache {
    pub folder: RunStore,
    component: String,
    function: String,
    seed: u64,
    /// The run's data, by content (`None`: it reads none).
    data: Option<Arc<Tree>>,
    /// The content hash of each set of `reads` seen, computed once.
    read_hashes: Arc<Mutex<HashMap<Vec<String>, String>>>,
}

/// A cached cell, as read back.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub part: Bytes,
    pub log: Bytes,
    pub outputs: BTreeMap<String, Bytes>,
    /// The run that computed it.
    pub made_by: String,
}

#[derive(Serialize, Deserialize)]
struct Header {
    part: u64,
    log: u64,
    outputs: Vec<(String, u64)>,
    sha256: String,
    key: Vec<(String, Cell)>,
    made_by: String,
}

impl CellCache {
    /// The cache of `base` for a tenant's run of `function` in `component`.
    pub fn new(
        base: &Location,
        tenant: Option<&str>,
        component: &str,
        function: &str,
        seed: u64,
        data: Option<Arc<Tree>>,
    ) -> CellCache {
        CellCache {
            folder: RunStore::beside_runs(base, tenant, "cache"),
            component: component.to_owned(),
            function: function.to_owned(),
            seed,
            data,
            read_hashes: Arc::default(),
        }
    }

    /// The cell's key: see the module's docs for its fields.
    pub fn key(&self, shard: &Shard) -> String {
        let identity = serde_json::json!({
            "cell": 1,
            "format": RESULTS,
            "component": self.component,
            "function": self.function,
            "shard": shard,
            "data": self.data.as_deref().map(|t| self.data_read(t, &shard.reads)),
            "seed": self.seed,
        });
        hex::encode(Sha256::digest(identity.to_string().as_bytes()))
    }

    fn data_read(&self, tree: &Tree, reads: &[String]) -> String {
        let mut known = self.read_hashes.lock().unwrap_or_else(|e| e.into_inner());
        known
            .entry(reads.to_vec())
            .or_insert_with(|| data_read(tree, reads))
            .clone()
    }

    fn name(key: &str) -> String {
        format!("{key}.cell")
    }

    /// The cell under `key`, if it is cached; an entry that is damaged is
    /// an error naming it.
    pub async fn get(&self, key: &str) -> Result<Option<Entry>> {
        let name = Self::name(key);
        let Some(bytes) = self.folder.get(&name).await? else {
            return Ok(None);
        };
        decode(bytes)
            .with_context(|| {
                format!(
                    "the cached cell `{}/{name}` is damaged",
                    self.folder.root.display
                )
            })
            .map(Some)
    }

    /// Keep a successful cell's result (failures are not cached).
    pub async fn put(
        &self,
        key: &str,
        shard: &Shard,
        output: &ShardOutput,
        run_id: &str,
    ) -> Result<()> {
        if output.failure.is_some() {
            return Ok(());
        }
        let entry = encode(shard, output, run_id);
        self.folder.put(&Self::name(key), entry).await
    }
}

/// Cached cells looked up at once.
const CONCURRENCY: usize = 16;

/// Fill the run's unfinished shards that are in the cache with their cached
/// part, log and side outputs; the indices filled. The cache is listed once
/// (a request per 1,000 cells in it) and only hits are read. A cache that
/// cannot be read costs only its reuse: a warning, and the cells run.
pub async fn reuse(
    cache: &CellCache,
    store: &RunStore,
    shards: &super::shards::ShardList,
    finished: &HashSet<usize>,
) -> Result<Vec<usize>> {
    let cached: HashSet<String> = match cache.folder.list("").await {
        Ok(names) => names
            .into_iter()
            .filter_map(|n| n.strip_suffix(".cell").map(str::to_owned))
            .collect(),
        Err(e) => {
            tracing::warn!("no cell is reused: cannot list the cell cache: {e:#}");
            return Ok(Vec::new());
        }
    };
    if cached.is_empty() {
        return Ok(Vec::new());
    }
    // A page of shards at a time: only the hits are kept.
    let mut hits: Vec<(usize, String)> = Vec::new();
    shards
        .for_each(|i, s| {
            if !finished.contains(&i) {
                let key = cache.key(s);
                if cached.contains(&key) {
                    hits.push((i, key));
                }
            }
            Ok(())
        })
        .await?;
    let filled: Vec<Result<Option<usize>>> = futures::stream::iter(hits)
        .map(|(i, key)| async move {
            let entry = match cache.get(&key).await {
                Ok(Some(entry)) => entry,
                Ok(None) => return Ok(None),
                Err(e) => {
                    tracing::warn!(shard = i, "not reused, it runs again: {e:#}");
                    return Ok(None);
                }
            };
            let name = crate::store::shard_name(i);
            if !store.root.is_memory() {
                // Workers elsewhere skip claimed shards.
                super::queue::claim_filled(store, i).await?;
            }
            if !store
                .create(&format!("parts/{name}.csv"), entry.part)
                .await?
            {
                return Ok(None);
            }
            if !entry.log.is_empty() {
                store.put(&format!("log/{name}.log"), entry.log).await?;
            }
            for (out, bytes) in entry.outputs {
                store.put(&format!("outputs/{name}/{out}"), bytes).await?;
            }
            Ok(Some(i))
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let mut reused = Vec::new();
    for f in filled {
        reused.extend(f?);
    }
    reused.sort_unstable();
    Ok(reused)
}

/// How much a cell cache holds.
#[derive(Debug, Default)]
pub struct Usage {
    pub cells: usize,
    pub bytes: u64,
    /// When the oldest and the newest cell were written.
    pub written: Option<(chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>)>,
}

/// The cache of `base` for a tenant (what `engine cache` shows).
pub fn folder(base: &Location, tenant: Option<&str>) -> RunStore {
    RunStore::beside_runs(base, tenant, "cache")
}

/// What `folder` holds.
pub async fn usage(folder: &RunStore) -> Result<Usage> {
    let mut usage = Usage::default();
    for (name, size, at) in folder.list_meta("").await? {
        if !name.ends_with(".cell") {
            continue;
        }
        usage.cells += 1;
        usage.bytes += size;
        usage.written = Some(match usage.written {
            None => (at, at),
            Some((old, new)) => (old.min(at), new.max(at)),
        });
    }
    Ok(usage)
}

/// Delete the cells written longer than `older_than` ago (being reused
/// does not make a cell younger); how many, and their bytes.
pub async fn prune(folder: &RunStore, older_than: std::time::Duration) -> Result<(usize, u64)> {
    let cutoff = chrono::Utc::now()
        - chrono::Duration::from_std(older_than).context("`--older-than` is too long")?;
    let mut deleted = (0, 0);
    for (name, size, at) in folder.list_meta("").await? {
        if name.ends_with(".cell") && at < cutoff {
            folder.delete(&name).await?;
            deleted = (deleted.0 + 1, deleted.1 + size);
        }
    }
    Ok(deleted)
}

/// The content of what a shard reads: the whole tree's id, or the files
/// below its `reads` directories (each path and sha256), hashed.
fn data_read(tree: &Tree, reads: &[String]) -> String {
    if reads.is_empty() {
        return tree.id();
    }
    let mut h = Sha256::new();
    let mut dirs: Vec<&String> = reads.iter().collect();
    dirs.sort();
    dirs.dedup();
    for dir in dirs {
        let prefix = format!("{}/", dir.trim_end_matches('/'));
        h.update(prefix.as_bytes());
        h.update(b"\0");
        for f in tree.files.iter().filter(|f| f.path.starts_with(&prefix)) {
            h.update(f.path.as_bytes());
            h.update(b"\0");
            h.update(f.sha256.as_bytes());
            h.update(b"\n");
        }
    }
    hex::encode(h.finalize())
}

fn encode(shard: &Shard, output: &ShardOutput, run_id: &str) -> Vec<u8> {
    let mut body = Vec::with_capacity(
        output.part.len()
            + output.log.len()
            + output.outputs.values().map(Bytes::len).sum::<usize>(),
    );
    body.extend_from_slice(&output.part);
    body.extend_from_slice(&output.log);
    for b in output.outputs.values() {
        body.extend_from_slice(b);
    }
    let header = Header {
        part: output.part.len() as u64,
        log: output.log.len() as u64,
        outputs: output
            .outputs
            .iter()
            .map(|(n, b)| (n.clone(), b.len() as u64))
            .collect(),
        sha256: hex::encode(Sha256::digest(&body)),
        key: shard.key.clone(),
        made_by: run_id.to_owned(),
    };
    let mut out = MAGIC.to_vec();
    out.extend(serde_json::to_vec(&header).expect("a header serializes"));
    out.push(b'\n');
    out.extend(body);
    out
}

fn decode(bytes: Bytes) -> Result<Entry> {
    let Some(rest) = bytes.strip_prefix(MAGIC) else {
        bail!("it does not start with `ENGINE-CELL 1`");
    };
    let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
        bail!("its header is cut");
    };
    let header: Header = serde_json::from_slice(&rest[..nl]).context("its header is not JSON")?;
    let start = MAGIC.len() + nl + 1;
    let body = bytes.slice(start..);
    if hex::encode(Sha256::digest(&body)) != header.sha256 {
        bail!("its content does not match the sha256 in its header");
    }
    let total = header.part + header.log + header.outputs.iter().map(|(_, n)| n).sum::<u64>();
    if total != body.len() as u64 {
        bail!("its header says {total} bytes, it holds {}", body.len());
    }
    let mut at = 0usize;
    let mut take = |n: u64| {
        let s = body.slice(at..at + n as usize);
        at += n as usize;
        s
    };
    let part = take(header.part);
    let log = take(header.log);
    let outputs = header
        .outputs
        .iter()
        .map(|(name, n)| (name.clone(), take(*n)))
        .collect();
    Ok(Entry {
        part,
        log,
        outputs,
        made_by: header.made_by,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::work::data::Entry as File;
    use std::time::Duration;

    fn shard(model: &str, dataset: &str) -> Shard {
        Shard {
            key: vec![
                ("model".into(), Cell::Text(model.into())),
                ("dataset".into(), Cell::Text(dataset.into())),
            ],
            payload: format!("{{\"model\":\"{model}\",\"dataset\":\"{dataset}\"}}"),
            reads: vec![dataset.into()],
        }
    }

    fn tree(files: &[(&str, &str)]) -> Arc<Tree> {
        Arc::new(Tree {
            format: 1,
            files: files
                .iter()
                .map(|(p, h)| File {
                    path: (*p).into(),
                    sha256: (*h).into(),
                    size: 1,
                })
                .collect(),
        })
    }

    fn cache(data: Arc<Tree>) -> CellCache {
        CellCache::new(
            &Location::parse("memory://").unwrap(),
            None,
            "c0ffee",
            "f",
            7,
            Some(data),
        )
    }

    #[test]
    fn a_cell_key_changes_with_the_data_it_reads_and_nothing_else() {
        let before = cache(tree(&[
            ("A/a.csv", "1"),
            ("B/b.csv", "2"),
            ("other.txt", "3"),
        ]));
        let after = cache(tree(&[
            ("A/a.csv", "1"),
            ("B/b.csv", "9"),
            ("other.txt", "4"),
        ]));
        let (a, b) = (shard("M", "A"), shard("M", "B"));
        assert_eq!(before.key(&a), after.key(&a), "A's files are unchanged");
        assert_ne!(before.key(&b), after.key(&b), "B's file changed");
        // A directory whose name starts like another's is not read with it.
        let ab = cache(tree(&[("A/a.csv", "1"), ("AB/x", "5")]));
        let ab2 = cache(tree(&[("A/a.csv", "1"), ("AB/x", "6")]));
        assert_eq!(ab.key(&a), ab2.key(&a));
        // The seed, component and function are in the key.
        let base = before.key(&a);
        let mut other = before.clone();
        other.seed = 8;
        assert_ne!(other.key(&a), base);
        other = before.clone();
        other.component = "beef".into();
        assert_ne!(other.key(&a), base);
        // A shard reading the whole mount sees any file change.
        let mut whole = shard("M", "A");
        whole.reads.clear();
        assert_ne!(before.key(&whole), after.key(&whole));
    }

    #[tokio::test]
    async fn an_entry_reads_back_as_written_and_a_damaged_one_is_refused() {
        let c = cache(tree(&[("A/a.csv", "1")]));
        let s = shard("M", "A");
        let output = ShardOutput {
            part: Bytes::from_static(b"model,score\nM,0.5\n"),
            failure: None,
            log: Bytes::from_static(b"fitted\n"),
            outputs: [("samples/M/A.csv".to_owned(), Bytes::from_static(b"x\n1\n"))].into(),
            elapsed: Duration::ZERO,
        };
        let key = c.key(&s);
        assert_eq!(c.get(&key).await.unwrap(), None);
        c.put(&key, &s, &output, "run1").await.unwrap();
        let e = c.get(&key).await.unwrap().unwrap();
        assert_eq!(
            (e.part, e.log, e.outputs, e.made_by.as_str()),
            (
                output.part.clone(),
                output.log.clone(),
                output.outputs.clone(),
                "run1"
            )
        );

        let name = format!("{key}.cell");
        let mut bytes = c.folder.get(&name).await.unwrap().unwrap().to_vec();
        *bytes.last_mut().unwrap() ^= 1;
        c.folder.put(&name, bytes).await.unwrap();
        let e = c.get(&key).await.unwrap_err();
        assert!(
            format!("{e:#}").contains("does not match the sha256"),
            "{e:#}"
        );
    }

    #[tokio::test]
    async fn a_failed_cell_is_not_cached() {
        let c = cache(tree(&[]));
        let s = shard("M", "A");
        let failed = ShardOutput::failed(
            &s,
            crate::runtime::GuestFailure {
                kind: crate::runtime::ErrorKind::Timeout,
                message: "slow".into(),
            },
            Vec::new(),
            Duration::ZERO,
        );
        let key = c.key(&s);
        c.put(&key, &s, &failed, "run1").await.unwrap();
        assert_eq!(c.get(&key).await.unwrap(), None);
    }
}
