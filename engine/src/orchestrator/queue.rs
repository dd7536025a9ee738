//! The shard queue over the object store: a shard is claimed by creating
//! `claims/<shard>` if absent, and finished by creating `parts/<shard>.csv` if
//! absent, so exactly one part survives whoever runs a shard twice.

use crate::store::{RunStore, shard_name};
use anyhow::Result;

pub struct Queue {
    store: RunStore,
    shards: usize,
    worker: String,
}

impl Queue {
    pub fn new(store: RunStore, shards: usize, worker: &str) -> Queue {
        Queue { store, shards, worker: worker.to_owned() }
    }

    /// Claim the next unclaimed shard at or after `cursor`.
    pub async fn claim_next(&self, cursor: &mut usize) -> Result<Option<usize>> {
        while *cursor < self.shards {
            let i = *cursor;
            *cursor += 1;
            let claim = serde_json::json!({ "worker": self.worker }).to_string();
            if self.store.create(&format!("claims/{}", shard_name(i)), claim).await? {
                return Ok(Some(i));
            }
        }
        Ok(None)
    }

    /// Store a shard's part; `false` if another worker's part was first.
    pub async fn complete(&self, i: usize, part: Vec<u8>) -> Result<bool> {
        self.store.create(&format!("parts/{}.csv", shard_name(i)), part).await
    }
}
