//! The run's shards in the store, in pages: `shards/<page>.json`, each a
//! JSON list of [`PAGE`] shards (the last one fewer), each checked against
//! its sha256 in `run.json`. They are written as the plan hands them out and
//! read a page at a time, so that neither the orchestrator nor a worker holds
//! a plan of millions of shards.

use super::RunSpec;
use crate::runtime::Shard;
use crate::store::RunStore;
use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// Shards a page.
pub const PAGE: usize = 10_000;

/// Pages a reader keeps (workers of one process walk at different points).
const KEPT: usize = 4;

fn page_name(page: usize) -> String {
    format!("shards/{page:08}.json")
}

/// Writes the pages of a plan as it is made.
pub struct Writer<'a> {
    store: &'a RunStore,
    pending: Vec<Shard>,
    /// The sha256 of each page written.
    hashes: Vec<String>,
    count: usize,
}

impl<'a> Writer<'a> {
    pub fn new(store: &'a RunStore) -> Writer<'a> {
        Writer {
            store,
            pending: Vec::new(),
            hashes: Vec::new(),
            count: 0,
        }
    }

    /// Shards planned so far.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Add shards; each full page is stored at once.
    pub async fn push(&mut self, shards: Vec<Shard>) -> Result<()> {
        self.count += shards.len();
        self.pending.extend(shards);
        while self.pending.len() >= PAGE {
            let rest = self.pending.split_off(PAGE);
            let page = std::mem::replace(&mut self.pending, rest);
            self.write(&page).await?;
        }
        Ok(())
    }

    async fn write(&mut self, page: &[Shard]) -> Result<()> {
        let bytes = serde_json::to_vec(page)?;
        self.hashes.push(hex::encode(Sha256::digest(&bytes)));
        self.store
            .put(&page_name(self.hashes.len() - 1), bytes)
            .await
    }

    /// Store the last page; the number of shards and each page's sha256.
    pub async fn finish(mut self) -> Result<(usize, Vec<String>)> {
        if !self.pending.is_empty() {
            let page = std::mem::take(&mut self.pending);
            self.write(&page).await?;
        }
        Ok((self.count, self.hashes))
    }
}

/// A published run's shards, read a page at a time (the last few kept).
pub struct ShardList {
    store: RunStore,
    run_id: String,
    len: usize,
    hashes: Vec<String>,
    kept: Mutex<VecDeque<(usize, Arc<Vec<Shard>>)>>,
}

impl ShardList {
    /// The shards of `spec`, as its `run.json` describes them; nothing is
    /// read yet.
    pub fn open(store: &RunStore, spec: &RunSpec) -> Result<ShardList> {
        if spec.shard_pages.len() != spec.shards.div_ceil(PAGE) {
            bail!(
                "the stored `run.json` of run `{}` lists {} shard pages for {} shards (pages of {PAGE}): \
                 the store was modified; delete the run's folder and run again",
                spec.run_id,
                spec.shard_pages.len(),
                spec.shards
            );
        }
        Ok(ShardList {
            store: store.clone(),
            run_id: spec.run_id.clone(),
            len: spec.shards,
            hashes: spec.shard_pages.clone(),
            kept: Mutex::new(VecDeque::new()),
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Shard `i`.
    pub async fn get(&self, i: usize) -> Result<Shard> {
        let page = self.page(i / PAGE).await?;
        page.get(i % PAGE)
            .cloned()
            .with_context(|| format!("run `{}` has no shard {i}", self.run_id))
    }

    /// Page `p`'s shards (shards `p * PAGE` on), checked against its sha256.
    pub async fn page(&self, p: usize) -> Result<Arc<Vec<Shard>>> {
        if let Some((_, page)) = self.lock().iter().find(|(q, _)| *q == p) {
            return Ok(page.clone());
        }
        let Some(expected) = self.hashes.get(p) else {
            bail!("run `{}` has no shard page {p}", self.run_id);
        };
        let name = page_name(p);
        let bytes = self
            .store
            .get(&name)
            .await?
            .with_context(|| format!("run `{}` has no `{name}`", self.run_id))?;
        if hex::encode(Sha256::digest(&bytes)) != *expected {
            bail!(
                "the stored `{name}` of run `{}` does not match the sha256 in its `run.json`: \
                 the store was modified; delete the run's folder and run again",
                self.run_id
            );
        }
        let shards: Vec<Shard> = serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "the stored `{name}` of run `{}` is not a shard list",
                self.run_id
            )
        })?;
        let want = PAGE.min(self.len - p * PAGE);
        if shards.len() != want {
            bail!(
                "the stored `{name}` of run `{}` has {} shards where {want} belong",
                self.run_id,
                shards.len()
            );
        }
        let page = Arc::new(shards);
        let mut kept = self.lock();
        if kept.len() == KEPT {
            kept.pop_front();
        }
        kept.push_back((p, page.clone()));
        Ok(page)
    }

    /// Every shard with its index, a page at a time, to `each`.
    pub async fn for_each(&self, mut each: impl FnMut(usize, &Shard) -> Result<()>) -> Result<()> {
        for p in 0..self.hashes.len() {
            let page = self.page(p).await?;
            for (k, shard) in page.iter().enumerate() {
                each(p * PAGE + k, shard)?;
            }
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(usize, Arc<Vec<Shard>>)>> {
        self.kept.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Location;

    fn shard(i: usize) -> Shard {
        Shard {
            key: vec![("i".into(), crate::table::Cell::Int(i as i64))],
            payload: i.to_string(),
            reads: Vec::new(),
        }
    }

    fn spec(shards: usize, pages: Vec<String>) -> RunSpec {
        serde_json::from_value(serde_json::json!({
            "format": super::super::FORMAT, "run_id": "r", "function": "f", "args": {},
            "component_sha256": "c", "data": null, "seed": 0, "tenant": null,
            "limits": crate::config::Limits::default(), "shards": shards, "lease_ms": 1000,
            "shard_pages": pages,
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn shards_written_in_uneven_batches_read_back_by_index() {
        let store = RunStore::new(&Location::parse("memory://").unwrap(), None, "r");
        let mut writer = Writer::new(&store);
        let n = 2 * PAGE + 17;
        let mut next = 0;
        for batch in [1, PAGE - 1, 3, PAGE + 5, 9] {
            writer
                .push((next..next + batch).map(shard).collect())
                .await
                .unwrap();
            next += batch;
        }
        assert_eq!(next, n);
        let (count, hashes) = writer.finish().await.unwrap();
        assert_eq!((count, hashes.len()), (n, 3));
        let list = ShardList::open(&store, &spec(n, hashes)).unwrap();
        for i in [0, PAGE - 1, PAGE, 2 * PAGE + 16, 5] {
            assert_eq!(list.get(i).await.unwrap(), shard(i));
        }
        let mut seen = 0;
        list.for_each(|i, s| {
            assert_eq!(*s, shard(i));
            seen += 1;
            Ok(())
        })
        .await
        .unwrap();
        assert_eq!(seen, n);
        assert!(list.get(n).await.is_err());
    }

    #[tokio::test]
    async fn a_changed_page_is_refused_by_name() {
        let store = RunStore::new(&Location::parse("memory://").unwrap(), None, "r");
        let mut writer = Writer::new(&store);
        writer.push((0..3).map(shard).collect()).await.unwrap();
        let (n, hashes) = writer.finish().await.unwrap();
        store
            .put(
                "shards/00000000.json",
                serde_json::to_vec(&[shard(0), shard(1), shard(9)]).unwrap(),
            )
            .await
            .unwrap();
        let list = ShardList::open(&store, &spec(n, hashes.clone())).unwrap();
        let e = list.get(0).await.unwrap_err().to_string();
        assert!(
            e.contains("`shards/00000000.json` of run `r` does not match the sha256"),
            "{e}"
        );
        let e = ShardList::open(&store, &spec(n + PAGE, hashes))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("lists 1 shard pages for 10003 shards"), "{e}");
    }
}
