//! The shard queue over the object store.
//!
//! - A shard is claimed by creating `claims/<shard>/<attempt>` if absent.
//! - A process proves it is alive by rewriting `heartbeats/<process>` every
//!   quarter lease. A claim whose process has not beaten for a lease is dead,
//!   and the shard is claimed again with the next attempt number.
//! - A shard is finished by creating `parts/<shard>.csv` if absent, so exactly
//!   one part survives whoever runs a shard twice.
//!
//! Only create-if-absent and overwrite are used: every object store has them.

use crate::store::{RunStore, shard_name};
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What a claim object says.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClaimRecord {
    /// The process that must keep beating for the claim to hold.
    pub process: String,
    pub worker: String,
    pub at_ms: u64,
}

/// What a heartbeat object says.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Heartbeat {
    pub at_ms: u64,
    /// Shards this process is running now (for `engine status`).
    #[serde(default)]
    pub busy: usize,
}

/// The answer to "what should I do next?".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Run this shard (attempt number given).
    Run(usize, u32),
    /// Every unfinished shard is held by a live worker: wait and ask again.
    Wait,
    /// Every shard has its part.
    Done,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One worker's view of the queue.
pub struct Queue {
    store: RunStore,
    shards: usize,
    process: String,
    worker: String,
    lease: Duration,
    /// Next never-claimed shard to try (the fast path).
    cursor: usize,
}

impl Queue {
    pub fn new(
        store: RunStore,
        shards: usize,
        process: &str,
        worker: &str,
        lease: Duration,
    ) -> Queue {
        Queue {
            store,
            shards,
            process: process.into(),
            worker: worker.into(),
            lease,
            cursor: 0,
        }
    }

    fn record(&self) -> String {
        let r = ClaimRecord {
            process: self.process.clone(),
            worker: self.worker.clone(),
            at_ms: now_ms(),
        };
        serde_json::to_string(&r).unwrap_or_default()
    }

    /// Claim the next shard to run.
    pub async fn next(&mut self) -> Result<Next> {
        // Fast path: walk the shards once, creating first claims.
        while self.cursor < self.shards {
            let i = self.cursor;
            self.cursor += 1;
            if self
                .store
                .create(&format!("claims/{}/0", shard_name(i)), self.record())
                .await?
            {
                return Ok(Next::Run(i, 0));
            }
        }
        // Slow path: find shards whose claim died with its process.
        let state = QueueState::read(&self.store, self.lease).await?;
        if state.done.len() >= self.shards {
            return Ok(Next::Done);
        }
        for (i, attempt) in state.orphaned(self.shards) {
            let rel = format!("claims/{}/{}", shard_name(i), attempt + 1);
            if self.store.create(&rel, self.record()).await? {
                tracing::info!(
                    shard = i,
                    attempt = attempt + 1,
                    "re-offering a shard whose worker stopped"
                );
                return Ok(Next::Run(i, attempt + 1));
            }
        }
        Ok(Next::Wait)
    }

    /// Store a shard's part; `false` if another worker's part was first.
    pub async fn complete(&self, i: usize, part: Vec<u8>) -> Result<bool> {
        self.store
            .create(&format!("parts/{}.csv", shard_name(i)), part)
            .await
    }
}

/// Write this process's heartbeat.
pub async fn beat(store: &RunStore, process: &str, busy: usize) -> Result<()> {
    let hb = Heartbeat {
        at_ms: now_ms(),
        busy,
    };
    store
        .put(&format!("heartbeats/{process}"), serde_json::to_vec(&hb)?)
        .await
}

/// A snapshot of the queue, read from the store alone.
#[derive(Debug, Default)]
pub struct QueueState {
    /// Shards with a part.
    pub done: HashSet<usize>,
    /// Shards with a failure marker.
    pub failed: HashSet<usize>,
    /// Highest claim attempt per shard, and who holds it.
    pub claims: HashMap<usize, (u32, Option<ClaimRecord>)>,
    /// Processes whose heartbeat is fresh.
    pub alive: HashSet<String>,
    /// Every claim object (attempts), i.e. executions started.
    pub attempts: usize,
}

impl QueueState {
    pub async fn read(store: &RunStore, lease: Duration) -> Result<QueueState> {
        let mut s = QueueState::default();
        for name in store.list("parts").await? {
            if let Some(i) = name.strip_suffix(".csv").and_then(|n| n.parse().ok()) {
                s.done.insert(i);
            }
        }
        for name in store.list("failed").await? {
            if let Ok(i) = name.parse() {
                s.failed.insert(i);
            }
        }
        for name in store.list("claims").await? {
            let Some((i, a)) = name.split_once('/') else {
                continue;
            };
            let (Ok(i), Ok(a)) = (i.parse::<usize>(), a.parse::<u32>()) else {
                continue;
            };
            s.attempts += 1;
            let e = s.claims.entry(i).or_insert((a, None));
            e.0 = e.0.max(a);
        }
        let now = now_ms();
        for name in store.list("heartbeats").await? {
            let Some(bytes) = store.get(&format!("heartbeats/{name}")).await? else {
                continue;
            };
            if let Ok(hb) = serde_json::from_slice::<Heartbeat>(&bytes)
                && now.saturating_sub(hb.at_ms) < lease.as_millis() as u64
            {
                s.alive.insert(name);
            }
        }
        // Who holds the claims of unfinished shards.
        let open: Vec<(usize, u32)> = s
            .claims
            .iter()
            .filter(|(i, _)| !s.done.contains(i))
            .map(|(i, (a, _))| (*i, *a))
            .collect();
        for (i, a) in open {
            let rel = format!("claims/{}/{a}", shard_name(i));
            let record = store
                .get(&rel)
                .await?
                .and_then(|b| serde_json::from_slice::<ClaimRecord>(&b).ok());
            if let Some(e) = s.claims.get_mut(&i) {
                e.1 = record;
            }
        }
        Ok(s)
    }

    /// Unfinished shards whose claim is held by no live process, with the
    /// attempt number of that claim. Unclaimed shards count as attempt -1 in
    /// spirit: they are left to the fast path.
    pub fn orphaned(&self, shards: usize) -> Vec<(usize, u32)> {
        let mut v: Vec<(usize, u32)> = (0..shards)
            .filter(|i| !self.done.contains(i))
            .filter_map(|i| {
                let (a, rec) = self.claims.get(&i)?;
                let alive = rec
                    .as_ref()
                    .is_some_and(|r| self.alive.contains(&r.process));
                (!alive).then_some((i, *a))
            })
            .collect();
        v.sort();
        v
    }

    /// Shards claimed by a live process and not finished.
    pub fn running(&self) -> usize {
        self.claims
            .iter()
            .filter(|(i, (_, rec))| {
                !self.done.contains(i)
                    && rec
                        .as_ref()
                        .is_some_and(|r| self.alive.contains(&r.process))
            })
            .count()
    }
}
