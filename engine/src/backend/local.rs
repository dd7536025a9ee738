//! Worker threads in this process, sharing one wasmtime engine.

use crate::orchestrator::RunSpec;
use crate::orchestrator::worker::{WorkerCtx, work};
use crate::runtime::{Plugin, Runtime, Shard};
use crate::store::RunStore;
use anyhow::{Result, anyhow};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

pub struct LocalPool {
    threads: Vec<JoinHandle<Result<u64>>>,
    stop: Arc<AtomicBool>,
}

impl LocalPool {
    pub fn start(
        n: usize,
        runtime: &Arc<Runtime>,
        plugin: &Arc<Plugin>,
        spec: &Arc<RunSpec>,
        shards: &Arc<Vec<Shard>>,
        store: &RunStore,
    ) -> Result<LocalPool> {
        let stop = Arc::new(AtomicBool::new(false));
        let handle = tokio::runtime::Handle::current();
        let threads = (0..n)
            .map(|i| {
                let ctx = WorkerCtx {
                    runtime: runtime.clone(),
                    plugin: plugin.clone(),
                    spec: spec.clone(),
                    shards: shards.clone(),
                    store: store.clone(),
                    worker_id: format!("local-{i}"),
                    stop: stop.clone(),
                    handle: handle.clone(),
                };
                std::thread::Builder::new().name(format!("worker-{i}")).spawn(move || work(&ctx))
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(LocalPool { threads, stop })
    }

    pub fn all_stopped(&mut self) -> Option<String> {
        if !self.threads.iter().all(|t| t.is_finished()) {
            return None;
        }
        Some(
            std::mem::take(&mut self.threads)
                .into_iter()
                .filter_map(|t| match t.join() {
                    Ok(Ok(_)) => None,
                    Ok(Err(e)) => Some(format!("{e:#}")),
                    Err(_) => Some("a worker thread panicked".into()),
                })
                .next()
                .unwrap_or_else(|| "all workers exited".into()),
        )
    }

    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    pub fn join(self) -> Result<()> {
        for t in self.threads {
            t.join().map_err(|_| anyhow!("a worker thread panicked"))??;
        }
        Ok(())
    }
}
