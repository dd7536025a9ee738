//! The worker loop: claim a shard, run it in a fresh sandbox (retrying as
//! configured), store its part. The same loop runs in a thread of `engine run`,
//! in an `engine worker` process, or in a pod.

use super::RunSpec;
use super::queue::{ActiveClaims, LOST_MAX, Next, Queue, beat};
use crate::config::Limits;
use crate::runtime::{ErrorKind, GuestFailure, Plugin, Runtime, Sandbox, Shard, ShardOutput};
use crate::store::{RunStore, shard_name};
use anyhow::Result;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A published run, loaded in this process: what its workers share.
#[derive(Clone)]
pub struct LoadedRun {
    pub runtime: Arc<Runtime>,
    pub plugin: Arc<Plugin>,
    pub spec: Arc<RunSpec>,
    pub shards: Arc<super::shards::ShardList>,
    pub store: RunStore,
    /// The data directory on this machine (never a path read from the store).
    pub data_dir: Option<PathBuf>,
    /// Where successful cells are kept for later runs (`None`: `--no-cache`).
    pub cache: Option<super::cache::CellCache>,
    /// Shards known to have a part before these workers start (finished by
    /// an earlier run, or filled from the cell cache): never tried.
    pub known_done: Arc<Vec<usize>>,
}

/// Tells a process's workers to stop after their current shard; a waiting
/// worker wakes at once (it sleeps on the condition, not in a polling loop:
/// 200 idle worker processes used to wake 40,000 times a second).
#[derive(Debug, Default)]
pub struct Stop {
    set: std::sync::Mutex<bool>,
    changed: std::sync::Condvar,
}

impl Stop {
    pub fn set(&self) {
        *self.lock() = true;
        self.changed.notify_all();
    }

    pub fn is_set(&self) -> bool {
        *self.lock()
    }

    /// Sleep for `d`, or less if the stop is set meanwhile.
    pub fn wait(&self, d: Duration) {
        let set = self.lock();
        let _unused = self
            .changed
            .wait_timeout_while(set, d, |set| !*set)
            .map_err(|e| e.into_inner());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, bool> {
        self.set.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Everything a worker thread needs.
#[derive(Clone)]
pub struct WorkerCtx {
    pub run: LoadedRun,
    /// The process whose heartbeat backs this worker's claims.
    pub process: String,
    pub worker_id: String,
    /// Set to stop after the current shard.
    pub stop: Arc<Stop>,
    /// The claims this process's workers hold (its heartbeat lists them).
    pub active: Arc<ActiveClaims>,
    /// Parts this process stored.
    pub finished: Arc<Finished>,
    /// The next shard this process's workers have not tried to claim.
    pub walk: Arc<super::queue::Walk>,
    pub handle: tokio::runtime::Handle,
}

impl WorkerCtx {
    /// Wait for a store operation on this worker thread. A local store is
    /// driven right here: inside the tokio runtime, object_store hands each
    /// file operation to the blocking pool and back (dozens of futex calls a
    /// shard). A remote store needs the runtime's reactor.
    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        if self.run.store.root.is_local() {
            futures::executor::block_on(f)
        } else {
            self.handle.block_on(f)
        }
    }
}

/// `op` until it succeeds, waited out as an [`Outage`]: a store outage
/// costs time, not the run.
fn retrying<T>(what: &str, mut op: impl FnMut() -> Result<T>) -> Result<T> {
    let mut outage = Outage::default();
    loop {
        let tried = Instant::now();
        match op() {
            Ok(v) => {
                outage.over(what);
                return Ok(v);
            }
            Err(e) => std::thread::sleep(outage.failed(what, e, tried)?),
        }
    }
}

/// How long a worker, or the orchestrator waiting for the workers, keeps
/// retrying a failing store before it gives up.
pub(crate) const STORE_PATIENCE: Duration = Duration::from_secs(300);

/// A store that keeps failing, waited out: tries doubling apart from 200 ms
/// to 15 s, the last one [`STORE_PATIENCE`] after the start of the first
/// failed try. The first failure is warned about; the rest are debug logs.
#[derive(Debug, Default)]
pub(crate) struct Outage {
    /// When the first failed try started, and the last wait.
    since: Option<(Instant, Duration)>,
}

impl Outage {
    /// `what`, tried at `tried`, failed with `e`: how long to wait before
    /// trying again, or `e` once the store has failed for [`STORE_PATIENCE`].
    pub(crate) fn failed(
        &mut self,
        what: &str,
        e: anyhow::Error,
        tried: Instant,
    ) -> Result<Duration> {
        let (since, wait) = match self.since {
            Some((since, last)) => (since, (last * 2).min(Duration::from_secs(15))),
            None => (tried, Duration::from_millis(200)),
        };
        let Some(left) = STORE_PATIENCE.checked_sub(since.elapsed()) else {
            return Err(e.context(format!(
                "{what} kept failing for {}s",
                since.elapsed().as_secs()
            )));
        };
        // The last try comes when the patience runs out.
        let wait = wait.min(left);
        if self.since.is_none() {
            tracing::warn!(
                "{what} failed; retrying for up to {}s: {e:#}",
                STORE_PATIENCE.as_secs()
            );
        } else {
            tracing::debug!("{what} failed again (retrying in {wait:?}): {e:#}");
        }
        self.since = Some((since, wait));
        Ok(wait)
    }

    /// `what` succeeded: the outage, if there was one, is over.
    pub(crate) fn over(&mut self, what: &str) {
        if let Some((since, _)) = self.since.take() {
            tracing::info!(
                "{what} succeeded after {:.1}s of store errors",
                since.elapsed().as_secs_f64()
            );
        }
    }

    /// Whether the store is failing.
    pub(crate) fn is_on(&self) -> bool {
        self.since.is_some()
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
    let lease = Duration::from_millis(ctx.run.spec.lease_ms);
    let mut queue = Queue::new(
        ctx.run.store.clone(),
        ctx.run.shards.len(),
        &ctx.process,
        &ctx.worker_id,
        lease,
        ctx.walk.clone(),
        ctx.active.clone(),
    );
    // Near the end of a run, idle workers ask again (the slow path reads the
    // open shards' claims and their holders' heartbeats): first soon, then
    // less and less often, up to half a lease or 2 s (a worker process ends,
    // and with it the run, only once it has seen every part), so that idle
    // workers cost the store less; they leave within a few ms once stopped.
    let first_poll = (lease / 4).clamp(Duration::from_millis(50), Duration::from_millis(250));
    let mut poll = first_poll;
    let mut ran = 0;
    while !ctx.stop.is_set() {
        let next = retrying("asking the store for work", || ctx.block_on(queue.next()))?;
        let (i, attempt) = match next {
            Next::Done => break,
            Next::Wait => {
                ctx.stop.wait(poll);
                poll = (poll * 2).min((lease / 2).min(Duration::from_secs(2)).max(first_poll));
                continue;
            }
            Next::GiveUp(i, attempt) => {
                let message = format!(
                    "the worker running this shard stopped {LOST_MAX} times before it finished \
                     (killed, e.g. for memory, or aborted); it is not run again"
                );
                let failure = GuestFailure {
                    kind: ErrorKind::Crashed,
                    message,
                };
                tracing::warn!(shard = i, "{failure}");
                let shard = read_shard(ctx, i)?;
                let output = ShardOutput::failed(&shard, failure, Vec::new(), Duration::ZERO);
                settle(ctx, &queue, (i, &shard), attempt, output)?;
                continue;
            }
            Next::Run(i, attempt) => {
                poll = first_poll;
                (i, attempt)
            }
        };
        let shard = match read_shard(ctx, i) {
            Ok(shard) => shard,
            Err(e) => {
                ctx.active.release(i, attempt);
                return Err(e);
            }
        };
        let output = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run_with_retries(ctx, i, &shard)
        }));
        let Ok(output) = output else {
            // A bug of ours, not the guest's: give the claim back, to be
            // tried again (at most LOST_MAX times), and go on.
            tracing::error!(
                shard = i,
                attempt,
                "the host panicked while running this shard"
            );
            ctx.active.release(i, attempt);
            continue;
        };
        settle(ctx, &queue, (i, &shard), attempt, output)?;
        ran += 1;
    }
    Ok(ran)
}

/// Shard `i`, from its page (a store that fails is waited out; a page that
/// was changed is not).
fn read_shard(ctx: &WorkerCtx, i: usize) -> Result<Shard> {
    retrying(&format!("reading shard {i}"), || {
        match ctx.block_on(ctx.run.shards.get(i)) {
            Err(e) if !crate::store::is_store_error(&e) => Ok(Err(e)),
            other => other.map(Ok),
        }
    })?
}

fn run_with_retries(ctx: &WorkerCtx, i: usize, shard: &Shard) -> ShardOutput {
    let sandbox = sandbox_for(&ctx.run.spec, ctx.run.data_dir.as_deref(), shard);
    let mut retry = 0;
    loop {
        let output = ctx
            .run
            .runtime
            .run(&ctx.run.plugin, &ctx.run.spec.function, shard, &sandbox);
        match &output.failure {
            Some(f) if retry < ctx.run.spec.limits.retries => {
                retry += 1;
                tracing::info!(shard = i, retry, "retrying after {f}");
            }
            _ => break output,
        }
    }
}

/// Store a shard's result and let its claim go. A store that keeps failing
/// gives the claim back to the other workers before this one stops.
fn settle(
    ctx: &WorkerCtx,
    queue: &Queue,
    (i, shard): (usize, &Shard),
    attempt: u32,
    output: ShardOutput,
) -> Result<()> {
    tracing::debug!(shard = i, attempt, elapsed = ?output.elapsed, failed = output.failure.is_some(), "shard finished");
    let failed = output.failure.is_some();
    let stored = retrying(&format!("storing shard {i}"), || {
        ctx.block_on(store_result(&ctx.run.store, queue, i, &output))
    });
    let won = match stored {
        Ok(won) => won,
        Err(e) => {
            ctx.active.release(i, attempt);
            return Err(e);
        }
    };
    ctx.active.leave(i, attempt);
    if won
        && !failed
        && let Some(cache) = &ctx.run.cache
    {
        // A later run that plans the same cell reuses it; losing it costs
        // only that.
        let key = cache.key(shard);
        if let Err(e) = ctx.block_on(cache.put(&key, shard, &output, &ctx.run.spec.run_id)) {
            tracing::warn!(shard = i, "cannot keep this cell in the cache: {e:#}");
        }
    }
    if won {
        ctx.finished.done.fetch_add(1, Ordering::Relaxed);
        if failed {
            ctx.finished.failed.fetch_add(1, Ordering::Relaxed);
        }
        ctx.finished.notify.notify_one();
    }
    Ok(())
}

/// Store the part; only if it is the shard's part (the first one stored)
/// its log, failure marker and side outputs, so that a losing duplicate
/// attempt cannot write over the winner's. Whether this part won. Safe to
/// repeat after an error: a repeat finds its own part and writes the rest.
pub async fn store_result(
    store: &RunStore,
    queue: &Queue,
    i: usize,
    output: &ShardOutput,
) -> Result<bool> {
    let name = shard_name(i);
    if !queue.complete(i, output.part.clone()).await? {
        let ours = store
            .get(&format!("parts/{name}.csv"))
            .await?
            .is_some_and(|p| p == output.part);
        if !ours {
            return Ok(false);
        }
    }
    if !output.log.is_empty() {
        store
            .put(&format!("log/{name}.log"), output.log.clone())
            .await?;
    }
    if let Some(f) = &output.failure {
        store.put(&format!("failed/{name}"), f.to_string()).await?;
    }
    for (out_name, bytes) in &output.outputs {
        store
            .put(&format!("outputs/{name}/{out_name}"), bytes.clone())
            .await?;
    }
    Ok(true)
}

/// The sandbox of `shard`: the run's limits, the data directories it reads
/// and its own seed.
pub fn sandbox_for(spec: &RunSpec, data_dir: Option<&Path>, shard: &Shard) -> Sandbox {
    Sandbox {
        reads: shard.reads.clone(),
        ..sandbox(&spec.limits, data_dir, cell_seed(spec.seed, shard))
    }
}

/// A sandbox with the run's limits and all of its data (`plan`'s).
pub fn sandbox(limits: &Limits, data_dir: Option<&Path>, seed: u64) -> Sandbox {
    Sandbox {
        memory: limits.memory,
        timeout: limits.timeout,
        output_size: limits.output_size,
        log_size: limits.log_size,
        outputs: limits.outputs,
        columns: limits.columns,
        threads: limits.threads,
        data_dir: data_dir.map(Path::to_path_buf),
        reads: Vec::new(),
        seed,
    }
}

/// A shard's seed: a hash of the run seed and the shard itself (its key
/// cells and payload), not of its index. Independent of which worker runs
/// it, and of the rest of the plan: adding a model to a sweep does not
/// change the other cells' randomness. (Two shards with the same key and
/// payload are the same cell, and get the same seed.)
pub fn cell_seed(seed: u64, shard: &Shard) -> u64 {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"engine cell seed 1\0");
    h.update(seed.to_le_bytes());
    h.update(serde_json::to_vec(shard).unwrap_or_default());
    let d = h.finalize();
    u64::from_le_bytes(d[..8].try_into().unwrap_or_default())
}

/// Keep this process's heartbeat fresh until the returned handle is aborted,
/// listing the claims its workers hold (leaving out one held past
/// `stuck_after`, so that another worker takes that shard). The first beat
/// is written before this returns, so it lands before the first claim.
///
/// A beat is written only while a claim has been held for a quarter lease
/// or more, every quarter lease: a reader counts a claim it has watched
/// for less than a lease as held (see [`Liveness`](super::queue::Liveness)),
/// so a shard that ends sooner needs no beat. Busy workers of short shards
/// then cost the store nothing beside their claims and parts.
pub fn spawn_heartbeat(
    store: RunStore,
    process: String,
    active: Arc<ActiveClaims>,
    lease: Duration,
    stuck_after: Duration,
) -> Result<tokio::task::JoinHandle<()>> {
    let handle = tokio::runtime::Handle::current();
    tokio::task::block_in_place(|| {
        handle.block_on(beat(&store, &process, &active.heartbeat(stuck_after)))
    })?;
    let every = (lease / 4).max(Duration::from_millis(20));
    let tick = every / 4;
    Ok(tokio::spawn(async move {
        let mut last = Instant::now();
        loop {
            tokio::time::sleep(tick).await;
            if last.elapsed() < every || active.oldest() < every {
                continue;
            }
            match beat(&store, &process, &active.heartbeat(stuck_after)).await {
                Ok(()) => last = Instant::now(),
                Err(e) => tracing::warn!("heartbeat failed (will retry): {e:#}"),
            }
        }
    }))
}

/// How long a claim may be held before its shard counts as stuck (every
/// attempt's deadline, and a minute of slack for storing the result).
pub fn stuck_after(limits: &Limits) -> Duration {
    limits.timeout * (limits.retries + 1) + Duration::from_secs(60)
}

/// `<hostname>-<pid>`: unique enough across pods and processes.
pub fn default_process_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "worker".into());
    format!("{host}-{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::ErrorKind;
    use crate::store::Location;

    #[test]
    fn a_waiting_worker_wakes_when_stopped_not_when_its_wait_ends() {
        let stop = Arc::new(Stop::default());
        let waiter = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let started = Instant::now();
                stop.wait(Duration::from_secs(600));
                started.elapsed()
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        stop.set();
        let waited = waiter.join().unwrap();
        assert!(stop.is_set());
        assert!(waited < Duration::from_secs(300), "woke after {waited:?}");
        // Once set, a wait returns at once.
        stop.wait(Duration::from_secs(600));
    }

    fn output(part: &[u8], failed: bool, text: &str) -> ShardOutput {
        ShardOutput {
            part: bytes::Bytes::copy_from_slice(part),
            failure: failed.then(|| GuestFailure {
                kind: ErrorKind::Timeout,
                message: "slow".into(),
            }),
            log: bytes::Bytes::copy_from_slice(text.as_bytes()),
            outputs: [(
                "o".to_owned(),
                bytes::Bytes::copy_from_slice(text.as_bytes()),
            )]
            .into(),
            elapsed: Duration::ZERO,
        }
    }

    #[tokio::test]
    async fn a_losing_attempt_writes_nothing_over_the_winner() {
        let store = RunStore::new(&Location::parse("memory://").unwrap(), None, "r");
        let queue = Queue::new(
            store.clone(),
            1,
            "p",
            "p/0",
            Duration::from_secs(60),
            Arc::new(crate::work::queue::Walk::new("p")),
            Arc::new(ActiveClaims::default()),
        );
        let good = output(b"a\n1\n", false, "good");
        assert!(store_result(&store, &queue, 0, &good).await.unwrap());
        let late = output(b"a,error\n,timeout: slow\n", true, "late");
        assert!(!store_result(&store, &queue, 0, &late).await.unwrap());
        assert!(store.get("failed/00000000").await.unwrap().is_none());
        assert_eq!(
            &store.get("log/00000000.log").await.unwrap().unwrap()[..],
            b"good"
        );
        assert_eq!(
            &store.get("outputs/00000000/o").await.unwrap().unwrap()[..],
            b"good"
        );
        // The winner repeating itself (after a store error) still wins.
        assert!(store_result(&store, &queue, 0, &good).await.unwrap());
    }
}
