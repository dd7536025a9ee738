//! The shard queue over the object store.
//!
//! - A shard is claimed by creating `claims/<shard>/<attempt>` if absent.
//! - A process proves it is alive by rewriting `heartbeats/<process>` every
//!   quarter lease, listing the claims it is still working on. A claim is dead
//!   when its process has not beaten for a lease, or when a beat written after
//!   the claim (both stamped by the same process's clock) no longer lists it:
//!   the worker thread gave it up, or it has run far past its deadline. The
//!   shard is then claimed again with the next attempt number.
//! - A shard whose claim was lost [`LOST_MAX`] times (its worker process
//!   killed each time, say by the OOM killer) is not run again: its part says
//!   so (`crashed: …`).
//! - A shard is finished by creating `parts/<shard>.csv` if absent, so exactly
//!   one part survives whoever runs a shard twice.
//!
//! Only create-if-absent and overwrite are used: every object store has them.
//!
//! The workers of one process share one cursor over the shards, so they do not
//! race each other for first claims. In a memory store (one process, its own
//! threads) no claims are written at all.
//!
//! (Over 600 lines: a quarter of them are the protocol's tests, kept beside it.)

use crate::store::{RunStore, shard_name};
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Near the end of a run, when at most this many shards are unfinished, a
/// waiting worker looks at those shards alone instead of listing the run.
const FEW_OPEN: usize = 256;

/// Claims of one shard that may be lost before it gets an error row instead
/// of another run.
pub const LOST_MAX: u32 = 3;

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
    /// The claims (`<shard>/<attempt>`) it still works on; absent in beats
    /// of older engines, whose claims hold as long as the process beats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claims: Option<Vec<String>>,
}

impl Heartbeat {
    pub fn new(at_ms: u64, claims: Vec<String>) -> Heartbeat {
        Heartbeat {
            at_ms,
            busy: claims.len(),
            claims: Some(claims),
        }
    }

    /// Whether this (fresh) beat backs the claim `record` of `shard/attempt`.
    fn holds(&self, shard: usize, attempt: u32, record: &ClaimRecord) -> bool {
        match &self.claims {
            None => true,
            // A beat from before the claim cannot list it yet.
            Some(_) if record.at_ms >= self.at_ms => true,
            Some(claims) => claims.contains(&claim_name(shard, attempt)),
        }
    }
}

/// `parts/<shard>.csv`: where a finished shard's rows are.
fn part_name(shard: usize) -> String {
    format!("parts/{}.csv", shard_name(shard))
}

/// `<shard>/<attempt>`, as claims are named under `claims/`.
pub fn claim_name(shard: usize, attempt: u32) -> String {
    format!("{}/{attempt}", shard_name(shard))
}

/// The claims a process's workers hold, for its heartbeat. A claim is
/// entered before its object is created and left when the shard's part is
/// stored or the claim given up.
#[derive(Debug, Default)]
pub struct ActiveClaims {
    held: std::sync::Mutex<HashMap<(usize, u32), std::time::Instant>>,
    /// Claims this process gave up (a worker thread that failed), for its
    /// other workers to take first.
    released: std::sync::Mutex<Vec<(usize, u32)>>,
}

impl ActiveClaims {
    pub fn enter(&self, shard: usize, attempt: u32) {
        if let Ok(mut held) = self.held.lock() {
            held.insert((shard, attempt), std::time::Instant::now());
        }
    }

    pub fn leave(&self, shard: usize, attempt: u32) {
        if let Ok(mut held) = self.held.lock() {
            held.remove(&(shard, attempt));
        }
    }

    /// Give a claim up so that another worker runs the shard.
    pub fn release(&self, shard: usize, attempt: u32) {
        self.leave(shard, attempt);
        if let Ok(mut released) = self.released.lock() {
            released.push((shard, attempt));
        }
    }

    /// No claim held, none given up.
    pub fn is_empty(&self) -> bool {
        self.held.lock().map_or(true, |h| h.is_empty())
            && self.released.lock().map_or(true, |r| r.is_empty())
    }

    fn take_released(&self) -> Option<(usize, u32)> {
        self.released.lock().ok()?.pop()
    }

    /// This process's beat now, listing the claims held for less than
    /// `stuck_after` (one held longer has run far past its deadline, and is
    /// left for another worker).
    ///
    /// The beat is stamped *before* the claims are listed: a claim entered
    /// after the listing then carries a stamp no older than the beat's, so
    /// no reader takes it for given up.
    pub fn heartbeat(&self, stuck_after: Duration) -> Heartbeat {
        let at_ms = now_ms();
        Heartbeat::new(at_ms, self.listed(stuck_after))
    }

    fn listed(&self, stuck_after: Duration) -> Vec<String> {
        let Ok(held) = self.held.lock() else {
            return Vec::new();
        };
        let mut v: Vec<String> = held
            .iter()
            .filter(|(_, since)| since.elapsed() < stuck_after)
            .map(|((i, a), _)| claim_name(*i, *a))
            .collect();
        v.sort();
        v
    }
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
    /// This shard's claim was lost [`LOST_MAX`] times: store an error part
    /// for it (the claim of that attempt is held).
    GiveUp(usize, u32),
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
    /// Next never-claimed shard to try (the fast path), shared by the
    /// workers of one process so that they do not race for the same shards.
    cursor: Arc<AtomicUsize>,
    /// Once the fast path is done: the shards not yet seen finished.
    open: Option<Vec<usize>>,
    active: Arc<ActiveClaims>,
}

impl Queue {
    pub fn new(
        store: RunStore,
        shards: usize,
        process: &str,
        worker: &str,
        lease: Duration,
        cursor: Arc<AtomicUsize>,
        active: Arc<ActiveClaims>,
    ) -> Queue {
        Queue {
            store,
            shards,
            process: process.into(),
            worker: worker.into(),
            lease,
            cursor,
            open: None,
            active,
        }
    }

    /// Claim `shard/attempt` if nobody has; entered in the active claims
    /// first, so that every beat stamped after the claim lists it.
    async fn claim(&self, shard: usize, attempt: u32) -> Result<bool> {
        self.active.enter(shard, attempt);
        let rel = format!("claims/{}", claim_name(shard, attempt));
        let record = self.record();
        let mut created = self.store.create(&rel, record.clone()).await;
        if matches!(created, Ok(false)) {
            // A create that committed but answered an error is retried by the
            // store client and then finds the object: it is ours if it holds
            // exactly our record (worker, process and time), else another's.
            created = self
                .store
                .get(&rel)
                .await
                .map(|found| found.is_some_and(|b| b.as_ref() == record.as_bytes()));
        }
        if !matches!(created, Ok(true)) {
            self.active.leave(shard, attempt);
        }
        created
    }

    /// What to do with a shard claimed at `attempt`.
    fn run_or_give_up(shard: usize, attempt: u32) -> Next {
        if attempt >= LOST_MAX {
            Next::GiveUp(shard, attempt)
        } else {
            Next::Run(shard, attempt)
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
        // Fast path: walk the shards once, creating first claims. A memory
        // store is seen by this process alone, whose workers share the
        // cursor: a claim there would guard against no one (and would cost
        // hundreds of bytes a shard), so none is written.
        let private = self.store.root.is_memory();
        // A claim another worker of this process gave up comes first.
        if let Some((i, attempt)) = self.active.take_released() {
            let attempt = attempt + 1;
            if private {
                self.active.enter(i, attempt);
                return Ok(Queue::run_or_give_up(i, attempt));
            }
            if self.claim(i, attempt).await? {
                return Ok(Queue::run_or_give_up(i, attempt));
            }
        }
        while self.cursor.load(Ordering::Relaxed) < self.shards {
            let i = self.cursor.fetch_add(1, Ordering::Relaxed);
            if i >= self.shards {
                break;
            }
            if private {
                self.active.enter(i, 0);
                return Ok(Next::Run(i, 0));
            }
            if self.claim(i, 0).await? {
                return Ok(Next::Run(i, 0));
            }
        }
        if private {
            // Every shard is claimed by a thread of this process; one that
            // gives its claim up puts it back for the others.
            return Ok(if self.active.is_empty() {
                Next::Done
            } else {
                Next::Wait
            });
        }
        // Slow path: find shards whose claim died with its process. Parts
        // are never removed, so once the unfinished shards are known (one
        // listing of the parts) only they need looking at again.
        let open = match self.open.take() {
            Some(open) => open,
            None => {
                let done: HashSet<usize> = QueueState::list_done(&self.store).await?;
                (0..self.shards).filter(|i| !done.contains(i)).collect()
            }
        };
        let state = match open.len() {
            0 => return Ok(Next::Done),
            n if n <= FEW_OPEN => QueueState::read_shards(&self.store, self.lease, &open).await?,
            _ => QueueState::read(&self.store, self.lease).await?,
        };
        let open: Vec<usize> = open
            .into_iter()
            .filter(|i| !state.done.contains(i))
            .collect();
        if open.is_empty() {
            return Ok(Next::Done);
        }
        let orphaned = state.orphaned(&open);
        self.open = Some(open);
        for (i, attempt) in orphaned {
            // The state read parts before heartbeats: a beat that no longer
            // lists a claim because its shard's part was stored just after
            // that read would make a finished shard look orphaned. Parts
            // stored before the beat are seen now.
            if self.store.exists(&part_name(i)).await? {
                continue;
            }
            if self.claim(i, attempt + 1).await? {
                tracing::info!(
                    shard = i,
                    attempt = attempt + 1,
                    "re-offering a shard whose worker stopped"
                );
                return Ok(Queue::run_or_give_up(i, attempt + 1));
            }
        }
        Ok(Next::Wait)
    }

    /// Store a shard's part; `false` if another worker's part was first.
    pub async fn complete(&self, i: usize, part: bytes::Bytes) -> Result<bool> {
        self.store.create(&part_name(i), part).await
    }
}

/// Write this process's heartbeat.
pub async fn beat(store: &RunStore, process: &str, hb: &Heartbeat) -> Result<()> {
    store
        .put(&format!("heartbeats/{process}"), serde_json::to_vec(hb)?)
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
    /// Processes whose heartbeat is fresh, with that beat.
    pub alive: HashMap<String, Heartbeat>,
    /// Every claim object (attempts), i.e. executions started.
    pub attempts: usize,
}

impl QueueState {
    /// The whole run: every part, failure and claim is listed.
    pub async fn read(store: &RunStore, lease: Duration) -> Result<QueueState> {
        let mut s = QueueState {
            done: QueueState::list_done(store).await?,
            ..Default::default()
        };
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
            s.add_claim(i, a);
        }
        s.read_holders(store, lease).await?;
        Ok(s)
    }

    /// The shards with a part.
    async fn list_done(store: &RunStore) -> Result<HashSet<usize>> {
        Ok(store
            .list("parts")
            .await?
            .iter()
            .filter_map(|name| name.strip_suffix(".csv")?.parse().ok())
            .collect())
    }

    /// Only the given shards: whether each has a part, and the claims of
    /// those without one, in a few requests a shard. `failed` is left empty.
    pub async fn read_shards(
        store: &RunStore,
        lease: Duration,
        shards: &[usize],
    ) -> Result<QueueState> {
        let mut s = QueueState::default();
        for &i in shards {
            let name = shard_name(i);
            if store.exists(&part_name(i)).await? {
                s.done.insert(i);
                continue;
            }
            for a in store.list(&format!("claims/{name}")).await? {
                if let Ok(a) = a.parse() {
                    s.add_claim(i, a);
                }
            }
        }
        s.read_holders(store, lease).await?;
        Ok(s)
    }

    fn add_claim(&mut self, i: usize, attempt: u32) {
        self.attempts += 1;
        let e = self.claims.entry(i).or_insert((attempt, None));
        e.0 = e.0.max(attempt);
    }

    /// Which processes are alive, and who holds the claims of unfinished shards.
    async fn read_holders(&mut self, store: &RunStore, lease: Duration) -> Result<()> {
        let now = now_ms();
        for name in store.list("heartbeats").await? {
            let Some(bytes) = store.get(&format!("heartbeats/{name}")).await? else {
                continue;
            };
            if let Ok(hb) = serde_json::from_slice::<Heartbeat>(&bytes)
                && now.saturating_sub(hb.at_ms) < lease.as_millis() as u64
            {
                self.alive.insert(name, hb);
            }
        }
        // Who holds the claims of unfinished shards.
        let open: Vec<(usize, u32)> = self
            .claims
            .iter()
            .filter(|(i, _)| !self.done.contains(i))
            .map(|(i, (a, _))| (*i, *a))
            .collect();
        for (i, a) in open {
            let rel = format!("claims/{}/{a}", shard_name(i));
            let record = store
                .get(&rel)
                .await?
                .and_then(|b| serde_json::from_slice::<ClaimRecord>(&b).ok());
            if let Some(e) = self.claims.get_mut(&i) {
                e.1 = record;
            }
        }
        Ok(())
    }

    /// Of the given shards, the unfinished ones whose claim is held by no
    /// live process, with the attempt number of that claim. Unclaimed shards
    /// count as attempt -1 in spirit: they are left to the fast path.
    pub fn orphaned(&self, shards: &[usize]) -> Vec<(usize, u32)> {
        let mut v: Vec<(usize, u32)> = shards
            .iter()
            .copied()
            .filter(|i| !self.done.contains(i))
            .filter_map(|i| {
                let (a, _) = self.claims.get(&i)?;
                (!self.held(i)).then_some((i, *a))
            })
            .collect();
        v.sort();
        v
    }

    /// Whether the newest claim of unfinished `shard` is backed by a live
    /// process that still lists it.
    fn held(&self, shard: usize) -> bool {
        let Some((attempt, Some(record))) = self.claims.get(&shard) else {
            return false;
        };
        self.alive
            .get(&record.process)
            .is_some_and(|hb| hb.holds(shard, *attempt, record))
    }

    /// Shards claimed by a live process and not finished.
    pub fn running(&self) -> usize {
        self.claims
            .keys()
            .filter(|i| !self.done.contains(i) && self.held(**i))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Location;

    /// A directory store with shards 0..6: 0 and 1 finished, 2 claimed by a
    /// live process, 3 by a dead one (attempts 0 and 1), 4 and 5 unclaimed.
    async fn queue_store(dir: &std::path::Path) -> RunStore {
        let store = RunStore::new(&Location::parse(dir.to_str().unwrap()).unwrap(), None, "r");
        let claim = |process: &str| {
            serde_json::to_vec(&ClaimRecord {
                process: process.into(),
                worker: format!("{process}/0"),
                at_ms: now_ms(),
            })
            .unwrap()
        };
        let objects = [
            ("claims/00000000/0", claim("live")),
            ("parts/00000000.csv", b"a\n1\n".to_vec()),
            ("claims/00000001/0", claim("live")),
            ("parts/00000001.csv", b"a\n1\n".to_vec()),
            ("claims/00000002/0", claim("live")),
            ("claims/00000003/0", claim("dead")),
            ("claims/00000003/1", claim("dead")),
        ];
        for (rel, bytes) in objects {
            assert!(store.create(rel, bytes).await.unwrap(), "{rel}");
        }
        beat(
            &store,
            "live",
            &Heartbeat::new(now_ms(), vec![claim_name(2, 0)]),
        )
        .await
        .unwrap();
        store
    }

    #[tokio::test]
    async fn a_read_of_the_open_shards_agrees_with_a_full_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = queue_store(dir.path()).await;
        let lease = Duration::from_secs(60);
        let all: Vec<usize> = (0..6).collect();
        let full = QueueState::read(&store, lease).await.unwrap();
        let some = QueueState::read_shards(&store, lease, &all).await.unwrap();
        for s in [&full, &some] {
            assert_eq!(s.done, HashSet::from([0, 1]));
            assert_eq!(s.orphaned(&all), vec![(3, 1)]);
            assert_eq!(s.running(), 1);
        }
        // Only a full read sees the claims of finished shards.
        assert_eq!((full.attempts, some.attempts), (5, 3));
    }

    #[tokio::test]
    async fn a_waiting_worker_takes_over_a_dead_claim_then_waits_then_ends() {
        let dir = tempfile::tempdir().unwrap();
        let store = queue_store(dir.path()).await;
        let cursor = Arc::new(AtomicUsize::new(6)); // the fast path is over
        let lease = Duration::from_secs(60);
        let active = Arc::new(ActiveClaims::default());
        let mut queue = Queue::new(store.clone(), 6, "me", "me/0", lease, cursor, active);
        beat(&store, "me", &Heartbeat::new(now_ms(), vec![]))
            .await
            .unwrap();
        assert_eq!(queue.next().await.unwrap(), Next::Run(3, 2));
        // 2 is held by a live process, 3 now by this one, 4 and 5 are left
        // to the fast path of whoever claims them.
        assert_eq!(queue.next().await.unwrap(), Next::Wait);
        for i in 2..6 {
            store
                .create(&format!("parts/{}.csv", shard_name(i)), "a\n1\n")
                .await
                .unwrap();
        }
        assert_eq!(queue.next().await.unwrap(), Next::Done);
    }

    #[tokio::test]
    async fn a_claim_its_live_process_no_longer_lists_is_dead() {
        let dir = tempfile::tempdir().unwrap();
        let store = RunStore::new(
            &Location::parse(dir.path().to_str().unwrap()).unwrap(),
            None,
            "r",
        );
        let record = |at_ms| {
            serde_json::to_vec(&ClaimRecord {
                process: "p".into(),
                worker: "p/0".into(),
                at_ms,
            })
            .unwrap()
        };
        let now = now_ms();
        // Shard 0: claimed, then given up (a later beat leaves it out).
        // Shard 1: claimed and listed. Shard 2: claimed after the last beat.
        store
            .create("claims/00000000/0", record(now - 5000))
            .await
            .unwrap();
        store
            .create("claims/00000001/0", record(now - 5000))
            .await
            .unwrap();
        beat(&store, "p", &Heartbeat::new(now, vec![claim_name(1, 0)]))
            .await
            .unwrap();
        store
            .create("claims/00000002/0", record(now + 60_000))
            .await
            .unwrap();
        let state = QueueState::read(&store, Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(state.orphaned(&[0, 1, 2]), vec![(0, 0)]);
        assert_eq!(state.running(), 2);
    }

    /// A memory store that, just before the first read of `trigger`, writes
    /// `then` (another worker acting between two of the reader's requests).
    #[derive(Debug)]
    struct Interleaved {
        inner: object_store::memory::InMemory,
        trigger: object_store::path::Path,
        then: std::sync::Mutex<Vec<(object_store::path::Path, Vec<u8>)>>,
    }

    impl std::fmt::Display for Interleaved {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Interleaved")
        }
    }

    #[async_trait::async_trait]
    impl object_store::ObjectStore for Interleaved {
        async fn put_opts(
            &self,
            p: &object_store::path::Path,
            payload: object_store::PutPayload,
            opts: object_store::PutOptions,
        ) -> object_store::Result<object_store::PutResult> {
            self.inner.put_opts(p, payload, opts).await
        }
        async fn put_multipart_opts(
            &self,
            p: &object_store::path::Path,
            opts: object_store::PutMultipartOptions,
        ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
            self.inner.put_multipart_opts(p, opts).await
        }
        async fn get_opts(
            &self,
            p: &object_store::path::Path,
            opts: object_store::GetOptions,
        ) -> object_store::Result<object_store::GetResult> {
            if *p == self.trigger {
                let then = std::mem::take(&mut *self.then.lock().unwrap());
                for (q, bytes) in then {
                    self.inner.put(&q, bytes.into()).await?;
                }
            }
            self.inner.get_opts(p, opts).await
        }
        async fn delete(&self, p: &object_store::path::Path) -> object_store::Result<()> {
            self.inner.delete(p).await
        }
        fn list(
            &self,
            prefix: Option<&object_store::path::Path>,
        ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>>
        {
            self.inner.list(prefix)
        }
        async fn list_with_delimiter(
            &self,
            prefix: Option<&object_store::path::Path>,
        ) -> object_store::Result<object_store::ListResult> {
            self.inner.list_with_delimiter(prefix).await
        }
        async fn copy(
            &self,
            from: &object_store::path::Path,
            to: &object_store::path::Path,
        ) -> object_store::Result<()> {
            self.inner.copy(from, to).await
        }
        async fn copy_if_not_exists(
            &self,
            from: &object_store::path::Path,
            to: &object_store::path::Path,
        ) -> object_store::Result<()> {
            self.inner.copy_if_not_exists(from, to).await
        }
    }

    #[tokio::test]
    async fn a_shard_finished_while_the_queue_is_read_is_not_run_again() {
        // Process p holds shard 0. Between the waiting worker's look at the
        // parts and its read of p's heartbeat, p stores the part and beats
        // without the claim: the CI run where a finished shard ran twice.
        let run = "runs/r";
        let claim = serde_json::to_vec(&ClaimRecord {
            process: "p".into(),
            worker: "p/0".into(),
            at_ms: now_ms() - 1000,
        })
        .unwrap();
        let beat_after = serde_json::to_vec(&Heartbeat::new(now_ms(), vec![])).unwrap();
        let path = |rel: &str| object_store::path::Path::from(format!("{run}/{rel}"));
        let store = Interleaved {
            inner: object_store::memory::InMemory::new(),
            trigger: path("heartbeats/p"),
            then: std::sync::Mutex::new(vec![
                (path("parts/00000000.csv"), b"a\n1\n".to_vec()),
                (path("heartbeats/p"), beat_after),
            ]),
        };
        let base = Location {
            store: Arc::new(store),
            path: object_store::path::Path::from(""),
            display: "interleaved://".into(),
        };
        let store = RunStore::new(&base, None, "r");
        store.create("claims/00000000/0", claim).await.unwrap();
        let before = Heartbeat::new(now_ms() - 500, vec![claim_name(0, 0)]);
        beat(&store, "p", &before).await.unwrap();

        let cursor = Arc::new(AtomicUsize::new(1)); // the fast path is over
        let active = Arc::new(ActiveClaims::default());
        let lease = Duration::from_secs(60);
        let mut queue = Queue::new(store.clone(), 1, "me", "me/0", lease, cursor, active);
        beat(&store, "me", &Heartbeat::new(now_ms(), vec![]))
            .await
            .unwrap();
        assert_eq!(queue.next().await.unwrap(), Next::Wait);
        assert!(!store.exists("claims/00000000/1").await.unwrap());
        assert_eq!(queue.next().await.unwrap(), Next::Done);
    }

    #[tokio::test]
    async fn a_shard_whose_claim_was_lost_too_often_is_given_up() {
        let store = RunStore::new(&Location::parse("memory://").unwrap(), None, "r");
        let active = Arc::new(ActiveClaims::default());
        let cursor = Arc::new(AtomicUsize::new(0));
        let mut queue = Queue::new(
            store,
            1,
            "me",
            "me/0",
            Duration::from_secs(60),
            cursor,
            active.clone(),
        );
        assert_eq!(queue.next().await.unwrap(), Next::Run(0, 0));
        for attempt in 0..LOST_MAX - 1 {
            active.release(0, attempt);
            assert_eq!(queue.next().await.unwrap(), Next::Run(0, attempt + 1));
        }
        active.release(0, LOST_MAX - 1);
        assert_eq!(queue.next().await.unwrap(), Next::GiveUp(0, LOST_MAX));
        active.leave(0, LOST_MAX);
        assert_eq!(queue.next().await.unwrap(), Next::Done);
    }
}
