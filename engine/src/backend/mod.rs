//! How workers come to exist: threads in this process (`local`), `engine
//! worker` processes on this machine (`processes`), pods (`kubernetes`).
//! Every backend runs the same worker loop (`crate::work`) against the same
//! store; the orchestrator sees each only as a [`WorkerPool`].

pub mod kubernetes;
pub mod local;
pub mod processes;

use crate::work::worker::Finished;
use anyhow::Result;
use std::sync::Arc;

/// What workers in other processes are given, only through their
/// environment (a Kubernetes Secret for pods), never on a command line.
#[derive(Clone, Copy, Default)]
pub struct WorkerAccess<'a> {
    /// Store credentials written in the config (`output.key`, `output.secret_key`).
    pub credentials: Option<&'a (String, String)>,
    /// The key proving the compiled component in the store (`ENGINE_ARTIFACT_KEY`).
    pub artifact_key: Option<&'a str>,
}

/// The running workers of one run, however they came to exist. A backend
/// starts them (its `start`), scales them while polled, and stops them.
#[async_trait::async_trait]
pub trait WorkerPool: Send {
    /// Look after the workers (restart the dead, scale to the shards left:
    /// `finished` have a part, as the orchestrator just counted them):
    /// `Some(reason)` once none is left running and none will be; an error
    /// when the run cannot go on (no worker pod can start, say).
    async fn poll(&mut self, finished: usize) -> Result<Option<String>>;

    /// Parts stored by workers in this process, if they all run here: then
    /// the watcher counts instead of listing the store.
    fn finished(&self) -> Option<Arc<Finished>> {
        None
    }

    /// Ask workers to stop after their current shard.
    fn stop(&mut self) {}

    /// Stop workers now (a failed or interrupted run).
    async fn kill(&mut self);

    /// Wait for the workers to exit (every shard has a part) and remove
    /// what the pool created.
    async fn join(self: Box<Self>) -> Result<()>;
}
