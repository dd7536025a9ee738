//! The worker loop: claim a shard, run it in a fresh sandbox (retrying as
//! configured), store its part. The same loop runs in a thread of `engine run`,
//! in an `engine worker` process, or in a pod.

use super::RunSpec;
use super::queue::{Next, Queue, beat};
use crate::runtime::{Plugin, Runtime, Sandbox, Shard};
use crate::store::{Location, RunStore, shard_name};
use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// Everything a worker thread needs.
#[derive(Clone)]
pub struct WorkerCtx {
    pub runtime: Arc<Runtime>,
    pub plugin: Arc<Plugin>,
    pub spec: Arc<RunSpec>,
    pub shards: Arc<Vec<Shard>>,
    pub store: RunStore,
    /// The process whose heartbeat backs this worker's claims.
    pub process: String,
    pub worker_id: String,
    /// Set to stop after the current shard.
    pub stop: Arc<AtomicBool>,
    /// Shards running in this process now.
    pub busy: Arc<AtomicUsize>,
    /// Parts this process stored.
    pub finished: Arc<Finished>,
    /// The next shard this process's workers have not tried to claim.
    pub cursor: Arc<AtomicUsize>,
    pub handle: tokio::runtime::Handle,
}

impl WorkerCtx {
    /// Wait for a store operation on this worker thread. A local store is
    /// driven right here: inside the tokio runtime, object_store hands each
    /// file operation to the blocking pool and back (dozens of futex calls a
    /// shard). A remote store needs the runtime's reactor.
    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        if self.store.root.is_local() {
            futures::executor::block_on(f)
        } else {
            self.handle.block_on(f)
        }
    }
}

/// Parts stored by the workers of this process, for a watcher in the same
/// process (the local backend): counting them is cheaper than listing the store.
#[derive(Debug, Default)]
pub struct Finished {
    pub done: AtomicUsize,
    pub failed: AtomicUsize,
    /// Notified after each stored part.
    pub notify: tokio::sync::Notify,
}

/// Run shards until every shard has a part (or `stop` is set). Returns how
/// many shards this worker ran.
pub fn work(ctx: &WorkerCtx) -> Result<u64> {
    let lease = Duration::from_millis(ctx.spec.lease_ms);
    let mut queue = Queue::new(
        ctx.store.clone(),
        ctx.shards.len(),
        &ctx.process,
        &ctx.worker_id,
        lease,
        ctx.cursor.clone(),
    );
    let args = serde_json::Value::Object(ctx.spec.args.clone()).to_string();
    // Near the end of a run, idle workers ask again this often (the slow path
    // lists the store) and leave within a few ms once the run is stopped.
    let poll = (lease / 4).clamp(Duration::from_millis(50), Duration::from_millis(250));
    let mut ran = 0;
    while !ctx.stop.load(Ordering::Relaxed) {
        let (i, attempt) = match ctx.block_on(queue.next())? {
            Next::Done => break,
            Next::Wait => {
                let until = std::time::Instant::now() + poll;
                while !ctx.stop.load(Ordering::Relaxed) && std::time::Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(5));
                }
                continue;
            }
            Next::Run(i, attempt) => (i, attempt),
        };
        ctx.busy.fetch_add(1, Ordering::Relaxed);
        let result = run_one(ctx, &queue, &args, i, attempt);
        ctx.busy.fetch_sub(1, Ordering::Relaxed);
        result?;
        ran += 1;
    }
    Ok(ran)
}

fn run_one(ctx: &WorkerCtx, queue: &Queue, args: &str, i: usize, claim: u32) -> Result<()> {
    let shard = &ctx.shards[i];
    let sandbox = sandbox_for(&ctx.spec, i);
    let mut retry = 0;
    let output = loop {
        let output = ctx
            .runtime
            .run(&ctx.plugin, &ctx.spec.function, args, shard, &sandbox);
        match &output.failure {
            Some(f) if retry < ctx.spec.limits.retries => {
                retry += 1;
                tracing::info!(shard = i, retry, "retrying after {f}");
            }
            _ => break output,
        }
    };
    tracing::debug!(shard = i, claim, elapsed = ?output.elapsed, failed = output.failure.is_some(), "shard finished");
    let name = shard_name(i);
    let failed = output.failure.is_some();
    let stored = ctx.block_on(async {
        if !output.log.is_empty() {
            ctx.store
                .put(&format!("log/{name}.log"), output.log)
                .await?;
        }
        for (out_name, bytes) in output.outputs {
            ctx.store
                .put(&format!("outputs/{name}/{out_name}"), bytes)
                .await?;
        }
        if let Some(f) = &output.failure {
            ctx.store
                .put(&format!("failed/{name}"), f.to_string())
                .await?;
        }
        queue.complete(i, output.part).await
    })?;
    if stored {
        ctx.finished.done.fetch_add(1, Ordering::Relaxed);
        if failed {
            ctx.finished.failed.fetch_add(1, Ordering::Relaxed);
        }
        ctx.finished.notify.notify_one();
    }
    Ok(())
}

/// The sandbox of shard `i`: the run's limits, its data and its own seed.
pub fn sandbox_for(spec: &RunSpec, i: usize) -> Sandbox {
    Sandbox {
        memory: spec.limits.memory,
        timeout: spec.limits.timeout,
        output_size: spec.limits.output_size,
        log_size: spec.limits.log_size,
        data_dir: spec.data_dir.clone(),
        seed: shard_seed(spec.seed, i as u64),
    }
}

/// splitmix64 of the run seed and the shard index: independent of which
/// worker runs the shard, so results do not depend on the worker count.
fn shard_seed(seed: u64, index: u64) -> u64 {
    let mut z = seed ^ index.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Keep this process's heartbeat fresh until the returned handle is aborted.
/// The first beat is written before this returns, so it lands before the
/// first claim: a claim whose process has never beaten looks dead to other
/// processes and is re-offered.
pub fn spawn_heartbeat(
    store: RunStore,
    process: String,
    busy: Arc<AtomicUsize>,
    lease: Duration,
) -> Result<tokio::task::JoinHandle<()>> {
    let handle = tokio::runtime::Handle::current();
    tokio::task::block_in_place(|| handle.block_on(beat(&store, &process, 0)))?;
    let every = (lease / 4).max(Duration::from_millis(20));
    Ok(tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            if let Err(e) = beat(&store, &process, busy.load(Ordering::Relaxed)).await {
                tracing::warn!("heartbeat failed (will retry): {e:#}");
            }
        }
    }))
}

/// What `engine worker` was asked to do.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The store URL the orchestrator used (`cluster.store`).
    pub store: String,
    pub run: String,
    pub tenant: Option<String>,
    /// This process's name (default: host name and pid).
    pub id: Option<String>,
    /// Worker threads in this process.
    pub threads: usize,
    /// Overrides the run's data directory (where this machine mounts it).
    pub data: Option<PathBuf>,
}

/// `engine worker`: load a published run from the store and work on it until
/// every shard has a part.
pub async fn serve(opts: ServeOptions) -> Result<u64> {
    let base = Location::parse(&opts.store)?;
    let store = RunStore::new(&base, opts.tenant.as_deref(), &opts.run);
    let spec_bytes = store
        .get("run.json")
        .await?
        .with_context(|| format!("no run `{}` in the store `{}`", opts.run, opts.store))?;
    let mut spec: RunSpec =
        serde_json::from_slice(&spec_bytes).context("`run.json` is not a run spec")?;
    if let Some(data) = opts.data {
        spec.data_dir = Some(std::path::absolute(data)?);
    }
    let component = store
        .get("component.wasm")
        .await?
        .context("the run has no `component.wasm`")?;
    let shards: Vec<Shard> = serde_json::from_slice(
        &store
            .get("shards.json")
            .await?
            .context("the run has no `shards.json`")?,
    )
    .context("`shards.json` is not a shard list")?;
    let threads = opts.threads.max(1);
    let runtime = Arc::new(tokio::task::block_in_place(|| {
        Runtime::new(threads as u32)
    })?);
    let origin = format!("component.wasm of run {}", opts.run);
    let plugin = tokio::task::block_in_place(|| runtime.load_bytes(&component, &origin))?;
    if plugin.sha256 != spec.component_sha256 {
        bail!("`{origin}` does not match the sha256 in `run.json`: the store was modified");
    }
    let process = opts.id.unwrap_or_else(default_process_name);
    tracing::info!(run = %opts.run, process = %process, threads, "worker starting");
    let pool = crate::backend::local::LocalPool::start(
        threads,
        &runtime,
        &plugin,
        &Arc::new(spec),
        &Arc::new(shards),
        &store,
        &process,
    )?;
    let ran = tokio::task::spawn_blocking(move || pool.join()).await??;
    tracing::info!(ran, "worker done: every shard has a part");
    Ok(ran)
}

/// `<hostname>-<pid>`: unique enough across pods and processes.
pub fn default_process_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "worker".into());
    format!("{host}-{}", std::process::id())
}
