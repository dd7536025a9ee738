//! Worker threads in this process, sharing one wasmtime engine and one
//! heartbeat: the `local` backend's workers, and those of `engine worker`.

use super::queue::{ActiveClaims, Walk};
use super::worker::{Finished, LoadedRun, Stop, WorkerCtx, spawn_heartbeat, stuck_after, work};
use anyhow::{Result, anyhow};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// A worker thread's stack: guest code runs on wasmtime's own stacks, but
/// the host's side of a call (the store client, the CSV writer) runs here.
const THREAD_STACK: usize = 8 << 20;

/// `n` worker threads working on one run.
pub struct Threads {
    threads: Vec<JoinHandle<Result<u64>>>,
    stop: Arc<Stop>,
    heartbeat: tokio::task::JoinHandle<()>,
    /// Parts stored by these threads.
    pub finished: Arc<Finished>,
}

impl Threads {
    pub fn start(n: usize, run: &LoadedRun, process: &str) -> Result<Threads> {
        let runtime = &run.runtime;
        if n as u64 + 2 > u64::from(runtime.slots()) {
            anyhow::bail!(
                "{n} worker threads need {} sandboxes, but the engine was sized for {}",
                n + 2,
                runtime.slots()
            );
        }
        let stop = Arc::new(Stop::default());
        let active = Arc::new(ActiveClaims::default());
        let finished = Arc::new(Finished::default());
        let walk = Arc::new(Walk::skipping(process, run.known_done.to_vec()));
        let handle = tokio::runtime::Handle::current();
        let lease = Duration::from_millis(run.spec.lease_ms);
        let heartbeat = spawn_heartbeat(
            run.store.clone(),
            process.to_owned(),
            active.clone(),
            lease,
            stuck_after(&run.spec.limits),
        )?;
        let threads = (0..n)
            .map(|i| {
                let ctx = WorkerCtx {
                    run: run.clone(),
                    process: process.to_owned(),
                    worker_id: format!("{process}/{i}"),
                    stop: stop.clone(),
                    active: active.clone(),
                    finished: finished.clone(),
                    walk: walk.clone(),
                    handle: handle.clone(),
                };
                std::thread::Builder::new()
                    .name(format!("worker-{i}"))
                    .stack_size(THREAD_STACK)
                    .spawn(move || work(&ctx))
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(Threads {
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
        self.stop.set();
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
