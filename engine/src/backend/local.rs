//! Worker threads in this process, sharing one wasmtime engine and one
//! heartbeat. `engine run` uses it directly; `engine worker` uses it too.

use crate::orchestrator::RunSpec;
use crate::orchestrator::worker::{Finished, WorkerCtx, spawn_heartbeat, work};
use crate::runtime::{Plugin, Runtime, Shard};
use crate::store::RunStore;
use anyhow::{Result, anyhow};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

pub struct LocalPool {
    threads: Vec<JoinHandle<Result<u64>>>,
    stop: Arc<AtomicBool>,
    heartbeat: tokio::task::JoinHandle<()>,
    /// Parts stored by these threads.
    pub finished: Arc<Finished>,
}

impl LocalPool {
    pub fn start(
        n: usize,
        runtime: &Arc<Runtime>,
        plugin: &Arc<Plugin>,
        spec: &Arc<RunSpec>,
        shards: &Arc<Vec<Shard>>,
        store: &RunStore,
        process: &str,
    ) -> Result<LocalPool> {
        let stop = Arc::new(AtomicBool::new(false));
        let busy = Arc::new(AtomicUsize::new(0));
        let finished = Arc::new(Finished::default());
        let cursor = Arc::new(AtomicUsize::new(0));
        let handle = tokio::runtime::Handle::current();
        let lease = Duration::from_millis(spec.lease_ms);
        let heartbeat = spawn_heartbeat(store.clone(), process.to_owned(), busy.clone(), lease)?;
        let threads = (0..n)
            .map(|i| {
                let ctx = WorkerCtx {
                    runtime: runtime.clone(),
                    plugin: plugin.clone(),
                    spec: spec.clone(),
                    shards: shards.clone(),
                    store: store.clone(),
                    process: process.to_owned(),
                    worker_id: format!("{process}/{i}"),
                    stop: stop.clone(),
                    busy: busy.clone(),
                    finished: finished.clone(),
                    cursor: cursor.clone(),
                    handle: handle.clone(),
                };
                std::thread::Builder::new()
                    .name(format!("worker-{i}"))
                    .spawn(move || work(&ctx))
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(LocalPool {
            threads,
            stop,
            heartbeat,
            finished,
        })
    }

    /// `Some(reason)` once every thread has exited.
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

    /// Wait for every thread; the total number of shards they ran.
    pub fn join(self) -> Result<u64> {
        let mut ran = 0;
        let mut first_error = None;
        for t in self.threads {
            match t.join() {
                Ok(Ok(n)) => ran += n,
                Ok(Err(e)) => first_error = first_error.or(Some(e)),
                Err(_) => first_error = first_error.or(Some(anyhow!("a worker thread panicked"))),
            }
        }
        self.heartbeat.abort();
        match first_error {
            Some(e) => Err(e),
            None => Ok(ran),
        }
    }
}
