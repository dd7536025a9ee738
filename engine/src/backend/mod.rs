//! How workers come to exist: threads in this process (`local`); worker
//! processes and pods come in their own modules. Every backend runs the same
//! worker loop against the same store-backed queue.

mod local;

use crate::orchestrator::RunSpec;
use crate::runtime::{Plugin, Runtime, Shard};
use crate::store::RunStore;
use anyhow::Result;
use std::sync::Arc;

/// The running workers of one run.
pub enum Workers {
    Local(local::LocalPool),
}

impl Workers {
    /// `n` worker threads in this process.
    pub fn start_local(
        n: usize,
        runtime: &Arc<Runtime>,
        plugin: &Arc<Plugin>,
        spec: &Arc<RunSpec>,
        shards: &Arc<Vec<Shard>>,
        store: &RunStore,
    ) -> Result<Workers> {
        Ok(Workers::Local(local::LocalPool::start(n, runtime, plugin, spec, shards, store)?))
    }

    /// `Some(reason)` once no worker is left running.
    pub fn all_stopped(&mut self) -> Option<String> {
        match self {
            Workers::Local(p) => p.all_stopped(),
        }
    }

    /// Ask workers to stop after their current shard.
    pub fn stop(&mut self) {
        match self {
            Workers::Local(p) => p.stop(),
        }
    }

    /// Wait for the workers to exit.
    pub fn join(self) -> Result<()> {
        match self {
            Workers::Local(p) => p.join(),
        }
    }
}
