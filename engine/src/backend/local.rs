//! `local`: worker threads in this process.

use super::WorkerPool;
use crate::work::threads::Threads;
use crate::work::worker::{Finished, LoadedRun};
use anyhow::Result;
use std::sync::Arc;

/// `n` worker threads on `run`, their heartbeat written as `process`.
pub fn start(n: usize, run: &LoadedRun, process: &str) -> Result<Box<dyn WorkerPool>> {
    Ok(Box::new(Local(Threads::start(n, run, process)?)))
}

struct Local(Threads);

#[async_trait::async_trait]
impl WorkerPool for Local {
    async fn poll(&mut self, _finished: usize) -> Result<Option<String>> {
        Ok(self.0.all_stopped())
    }

    fn finished(&self) -> Option<Arc<Finished>> {
        Some(self.0.finished.clone())
    }

    fn stop(&mut self) {
        self.0.stop();
    }

    async fn kill(&mut self) {
        self.0.stop();
    }

    async fn join(self: Box<Self>) -> Result<()> {
        let threads = self.0;
        tokio::task::spawn_blocking(move || threads.join()).await??;
        Ok(())
    }
}
