//! The shard queue over the object store.
//!
//! - A shard is claimed by creating `claims/<shard>/<attempt>` if absent.
//! - A process proves it is alive by rewriting `heartbeats/<process>` every
//!   quarter lease while it holds a claim older than a quarter lease, listing
//!   the claims it is still working on. A reader judges on its own monotonic
//!   clock: a claim is dead once the reader has watched it for a lease without
//!   seeing its process's beat change, or when a beat written after the claim
//!   (both stamped by the same process's clock) no longer lists it: the worker
//!   thread gave it up, or it has run far past its deadline. The shard is then
//!   claimed again with the next attempt number. A shard that ends within a
//!   quarter lease costs no beat.
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
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Unfinished shards a waiting worker looks at a poll, taking turns through
/// them: what a poll costs does not grow with the shards or the workers.
const WATCH: usize = 8;

/// `finished`: written once every shard has a part (by the orchestrator,
/// which counts them), so that waiting workers learn it in one request.
pub const FINISHED: &str = "finished";

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

/// The shard of a name listed under `parts/` (`<shard>.csv`).
fn part_shard(name: &str) -> Option<usize> {
    name.strip_suffix(".csv")?.parse().ok()
}

/// The number of shards with a part, counted by stretches of 1,000 shards
/// over a remote store: each count lists one page for each stretch not yet
/// seen complete (parts are never removed while a run runs, so a complete
/// stretch stays so), not the whole of `parts/`. A directory is listed at
/// once (it lists out of key order, and no request of it is billed).
pub struct PartCount {
    shards: usize,
    /// Parts seen in each stretch, when last listed.
    seen: Vec<usize>,
}

impl PartCount {
    pub fn new(shards: usize) -> PartCount {
        PartCount {
            shards,
            seen: vec![0; shards.div_ceil(LIST_PAGE)],
        }
    }

    /// Listing requests the next count makes over a remote store.
    pub fn pages_left(&self) -> usize {
        (0..self.seen.len())
            .filter(|&j| self.seen[j] < self.stretch(j).len())
            .count()
    }

    fn stretch(&self, j: usize) -> std::ops::Range<usize> {
        j * LIST_PAGE..((j + 1) * LIST_PAGE).min(self.shards)
    }

    pub async fn count(&mut self, store: &RunStore) -> Result<usize> {
        if store.root.is_local() {
            return store.count("parts").await;
        }
        for j in 0..self.seen.len() {
            let range = self.stretch(j);
            if self.seen[j] == range.len() {
                continue;
            }
            let names = store
                .list_from("parts", &shard_name(range.start), range.len())
                .await?;
            self.seen[j] = names
                .iter()
                .filter_map(|name| part_shard(name))
                .filter(|i| range.contains(i))
                .count();
        }
        Ok(self.seen.iter().sum())
    }
}

/// The first claim of a shard whose part was stored by something other than
/// a worker (the cell cache), so that the workers' walks skip it. Held by no
/// process; the shard has a part, so it is never taken over.
pub async fn claim_filled(store: &RunStore, shard: usize) -> Result<()> {
    let record = ClaimRecord {
        process: "cell-cache".into(),
        worker: "cell-cache".into(),
        at_ms: now_ms(),
    };
    let rel = format!("claims/{}", claim_name(shard, 0));
    store.create(&rel, serde_json::to_vec(&record)?).await?;
    Ok(())
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

    /// How long the oldest claim held now has been held (zero for none).
    pub fn oldest(&self) -> Duration {
        self.held.lock().map_or(Duration::ZERO, |held| {
            held.values()
                .map(Instant::elapsed)
                .max()
                .unwrap_or(Duration::ZERO)
        })
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

/// The order in which one process's workers try first claims (the fast
/// path), shared by them so that they do not race each other.
///
/// Each process starts at its own point of the shard space (a hash of its
/// name) and walks forward, wrapping around. A refused claim means another
/// process got there first: rather than follow it shard by shard (a refused
/// conditional PUT each, about P × N of them in all), the walk jumps to the
/// middle of an unvisited stretch elsewhere. Over a remote store it lists
/// before walking into shards it has not seen listed, so it skips what others
/// claimed there, and a worker joining late, or a resumed run, skips finished
/// stretches 1,000 claims a request.
#[derive(Debug)]
pub struct Walk {
    state: std::sync::Mutex<Option<WalkState>>,
    seed: u64,
    /// Shards known to be finished before the walk starts: never tried.
    known_done: Vec<usize>,
}

#[derive(Debug)]
struct WalkState {
    /// Shards tried, or seen claimed in a listing.
    visited: Vec<u64>,
    unvisited: usize,
    /// Next shard to look at.
    pos: usize,
    /// The last listing covered the shards up to here: those in
    /// `pos..listed_to` it saw claimed are visited, the others were free.
    listed_to: usize,
    rng: u64,
}

/// What the walk offers a worker.
enum Step {
    /// Try to claim this shard.
    Try(usize),
    /// List the claims from this shard on first.
    List(usize),
    /// Every shard was tried or seen claimed.
    Over,
}

/// Claims read in one listing request (an S3 page).
const LIST_PAGE: usize = 1000;

impl Walk {
    /// The walk of process `process`.
    pub fn new(process: &str) -> Walk {
        Walk::skipping(process, Vec::new())
    }

    /// The walk of `process`, which never tries the shards `known_done`
    /// (those an earlier run, or the cell cache, finished).
    pub fn skipping(process: &str, known_done: Vec<usize>) -> Walk {
        let seed = name_seed(process);
        Walk {
            state: std::sync::Mutex::new(None),
            seed,
            known_done,
        }
    }

    /// A walk that is over (the fast path done), for tests.
    #[cfg(test)]
    fn over() -> Walk {
        let w = Walk::new("over");
        *w.state.lock().unwrap() = Some(WalkState {
            visited: Vec::new(),
            unvisited: 0,
            pos: 0,
            listed_to: 0,
            rng: 1,
        });
        w
    }

    /// The next thing to do; `spread`: start at this process's own point
    /// (else at shard 0, for a store no other process sees).
    fn step(&self, n: usize, spread: bool, list_first: bool) -> Step {
        let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let st = guard.get_or_insert_with(|| {
            let mut st = WalkState {
                visited: vec![0; n.div_ceil(64)],
                unvisited: n,
                pos: match spread {
                    true => (self.seed % n.max(1) as u64) as usize,
                    false => 0,
                },
                listed_to: 0,
                rng: self.seed | 1,
            };
            st.skip(self.known_done.iter().copied().filter(|&i| i < n));
            st
        });
        if st.unvisited == 0 {
            return Step::Over;
        }
        let i = st.next_unvisited(n);
        if list_first && !(i < st.listed_to && st.pos <= i) {
            st.pos = i;
            return Step::List(i);
        }
        st.visit(i);
        st.pos = i + 1;
        Step::Try(i)
    }

    /// A listing from shard `from` saw these shards claimed, up to `to`
    /// (exclusive; `n` when the listing reached the end).
    fn listed(&self, from: usize, to: usize, claimed: &HashSet<usize>) {
        let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(st) = guard.as_mut() {
            st.skip(claimed.iter().copied());
            st.pos = from;
            st.listed_to = to;
        }
    }

    /// Claiming a shard was refused: another process walks here. Go to a
    /// random place, then to the middle of the unvisited stretch found
    /// there: other walkers are at the starts of stretches, walking on, so
    /// the middle is the farthest from them (and splits the stretch, as work
    /// stealing splits a range).
    fn refused(&self, n: usize) {
        let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(st) = guard.as_mut() {
            st.listed_to = 0;
            if st.unvisited == 0 {
                return;
            }
            // xorshift64
            st.rng ^= st.rng << 13;
            st.rng ^= st.rng >> 7;
            st.rng ^= st.rng << 17;
            st.pos = (st.rng % n.max(1) as u64) as usize;
            let start = st.next_unvisited(n);
            let end = st.next_visited(start, n);
            st.pos = start + (end - start) / 2;
        }
    }
}

impl WalkState {
    /// Mark shards seen claimed as visited: they are not tried.
    fn skip(&mut self, claimed: impl IntoIterator<Item = usize>) {
        for i in claimed {
            if self.visited[i / 64] & (1 << (i % 64)) == 0 {
                self.visit(i);
            }
        }
    }

    fn visit(&mut self, i: usize) {
        self.visited[i / 64] |= 1 << (i % 64);
        self.unvisited -= 1;
    }

    /// The first visited shard from `i` on, or `n`.
    fn next_visited(&self, mut i: usize, n: usize) -> usize {
        while i < n {
            let word = self.visited[i / 64] & !((1u64 << (i % 64)) - 1);
            if word != 0 {
                return ((i / 64) * 64 + word.trailing_zeros() as usize).min(n);
            }
            i = (i / 64 + 1) * 64;
        }
        n
    }

    /// The first unvisited shard from `pos` on, wrapping around (some exists).
    fn next_unvisited(&self, n: usize) -> usize {
        let mut i = self.pos % n;
        loop {
            let word = self.visited[i / 64] | ((1u64 << (i % 64)) - 1);
            if word != u64::MAX {
                let j = (i / 64) * 64 + word.trailing_ones() as usize;
                if j < n {
                    return j;
                }
            }
            i = ((i / 64) + 1) * 64;
            if i >= n {
                i = 0;
            }
        }
    }
}

/// A number from a process name, to spread start points.
fn name_seed(name: &str) -> u64 {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(name.as_bytes());
    u64::from_le_bytes(d[..8].try_into().unwrap_or_default())
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

/// This machine's wall clock, in ms. Only ever compared with stamps of the
/// same process (a claim with that process's heartbeat), never with another
/// machine's. `ENGINE_CLOCK_SKEW_MS` (signed) shifts it, so that the tests
/// can run a worker whose clock is wrong.
pub fn now_ms() -> u64 {
    static SKEW: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    let skew = *SKEW.get_or_init(|| {
        std::env::var("ENGINE_CLOCK_SKEW_MS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    });
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    now.saturating_add_signed(skew)
}

/// Which claims are held, judged by watching heartbeats change on this
/// process's own monotonic clock, never by comparing two machines' clocks: a
/// process's beat is fresh until it has been seen unchanged for a lease, and
/// a claim watched for less than a lease is held whatever its process's beat
/// (its process beats once it has held it for a quarter lease). A beat or a
/// claim seen for the first time counts as alive, so a reader that just
/// started needs a lease of watching before it takes a claim over.
#[derive(Debug, Default)]
pub struct Liveness {
    seen: HashMap<String, (u64, Instant)>,
    claims: HashMap<(usize, u32), Instant>,
    /// Claim objects read: created once, never changed, so read once.
    records: HashMap<(usize, u32), ClaimRecord>,
    /// The newest attempt seen of each shard, so that a shard whose claim
    /// holds is not listed again; forgotten when a claim of it is refused.
    newest: HashMap<usize, u32>,
}

impl Liveness {
    fn alive(&mut self, name: &str, hb: &Heartbeat, lease: Duration) -> bool {
        let now = Instant::now();
        let (at, since) = self.seen.entry(name.to_owned()).or_insert((hb.at_ms, now));
        if *at != hb.at_ms {
            (*at, *since) = (hb.at_ms, now);
        }
        since.elapsed() < lease
    }

    /// A claim of `shard` was refused: its newest attempt is no longer known.
    fn forget(&mut self, shard: usize) {
        self.newest.remove(&shard);
    }

    /// Whether claim `shard/attempt` was first seen less than a lease ago.
    fn young(&mut self, shard: usize, attempt: u32, lease: Duration) -> bool {
        let first = *self
            .claims
            .entry((shard, attempt))
            .or_insert_with(Instant::now);
        first.elapsed() < lease
    }
}

/// One worker's view of the queue.
pub struct Queue {
    store: RunStore,
    shards: usize,
    process: String,
    worker: String,
    lease: Duration,
    /// Where first claims are tried (the fast path), shared by the workers
    /// of one process so that they do not race for the same shards.
    walk: Arc<Walk>,
    /// Once the fast path is done: the shards of the parts listings read so
    /// far that were not yet seen finished.
    open: Vec<usize>,
    /// The stretches of 1,000 shards whose parts are still to be listed, in
    /// the order they will be (from this worker's own point on).
    unscanned: Option<std::collections::VecDeque<usize>>,
    /// Where in `open` the next look's turn starts.
    turn: usize,
    /// When open shards were last looked at.
    watched_at: Option<Instant>,
    /// The other processes' heartbeats, as this worker has watched them.
    liveness: Liveness,
    active: Arc<ActiveClaims>,
}

impl Queue {
    pub fn new(
        store: RunStore,
        shards: usize,
        process: &str,
        worker: &str,
        lease: Duration,
        walk: Arc<Walk>,
        active: Arc<ActiveClaims>,
    ) -> Queue {
        Queue {
            store,
            shards,
            process: process.into(),
            worker: worker.into(),
            lease,
            walk,
            open: Vec::new(),
            unscanned: None,
            turn: name_seed(worker) as usize,
            watched_at: None,
            liveness: Liveness::default(),
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
        if matches!(created, Ok(false)) && !self.store.root.is_local() {
            // A create that committed but answered an error is retried by the
            // store client and then finds the object: it is ours if it holds
            // exactly our record (worker, process and time), else another's.
            // (A local file is created or not: no answer is ambiguous.)
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

    /// The claimed shards from `from` on, as one listing request shows
    /// them, and where that listing stopped (`shards` when it reached the end).
    async fn claimed_from(&self, from: usize) -> Result<(HashSet<usize>, usize)> {
        let names = self
            .store
            .list_from("claims", &shard_name(from), LIST_PAGE)
            .await?;
        let claimed: HashSet<usize> = names
            .iter()
            .filter_map(|n| n.split_once('/')?.0.parse().ok())
            .collect();
        let to = match names.len() < LIST_PAGE {
            true => self.shards,
            // The last shard listed may have more attempts past the page.
            false => claimed.iter().max().copied().unwrap_or(from).max(from),
        };
        Ok((claimed, to))
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
        // A listing of a directory walks all of it: there, refused creates
        // are cheaper than listings.
        let listing = !self.store.root.is_local();
        loop {
            match self.walk.step(self.shards, !private, listing) {
                Step::Over => break,
                Step::List(from) => {
                    let (claimed, to) = self.claimed_from(from).await?;
                    self.walk.listed(from, to, &claimed);
                }
                Step::Try(i) if private => {
                    self.active.enter(i, 0);
                    return Ok(Next::Run(i, 0));
                }
                Step::Try(i) => {
                    if self.claim(i, 0).await? {
                        return Ok(Next::Run(i, 0));
                    }
                    // Over a remote store, the walk lists where it lands.
                    self.walk.refused(self.shards);
                }
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
        // are never removed, so once the unfinished shards are known only
        // they need looking at again: a few every half lease (a dead claim
        // is taken over after a lease anyway), in turns. In between, a poll
        // reads `finished` alone.
        if self
            .watched_at
            .is_some_and(|t| t.elapsed() < self.lease / 2)
        {
            let finished = self.store.exists(FINISHED).await?;
            return Ok(if finished { Next::Done } else { Next::Wait });
        }
        self.watched_at = Some(Instant::now());
        self.scan_parts().await?;
        let scanned = self.unscanned.as_ref().is_some_and(|u| u.is_empty());
        if self.open.is_empty() {
            return match scanned || self.store.exists(FINISHED).await? {
                true => Ok(Next::Done),
                false => Ok(Next::Wait),
            };
        }
        let open = &mut self.open;
        let watched: Vec<usize> = (0..open.len().min(WATCH))
            .map(|k| open[(self.turn + k) % open.len()])
            .collect();
        self.turn = (self.turn + WATCH) % open.len();
        let state =
            QueueState::read_shards(&self.store, self.lease, &mut self.liveness, &watched).await?;
        self.open.retain(|i| !state.done.contains(i));
        if self.open.is_empty() && scanned {
            return Ok(Next::Done);
        }
        for (i, attempt) in state.orphaned(&watched) {
            // The state read parts before heartbeats: a beat that no longer
            // lists a claim because its shard's part was stored just after
            // that read would make a finished shard look orphaned. Parts
            // stored before the beat are seen now.
            if self.store.exists(&part_name(i)).await? {
                continue;
            }
            if self.claim(i, attempt).await? {
                // Busy now: once done, it looks at the open shards again.
                self.watched_at = None;
                if attempt > 0 {
                    tracing::info!(
                        shard = i,
                        attempt,
                        "re-offering a shard whose worker stopped"
                    );
                }
                return Ok(Queue::run_or_give_up(i, attempt));
            }
            self.liveness.forget(i);
        }
        Ok(Next::Wait)
    }

    /// Learn which shards are unfinished from the listing of their parts:
    /// over a remote store one page (1,000 shards) a look (every half
    /// lease), starting at this worker's own point, so that workers ending
    /// their walks together do not all list the whole run at once (P × N/1,000
    /// requests at the same moment: the suite's S3 server, at 0.6 s a page
    /// for 10,000 shards, then timed out for minutes); between looks the
    /// `finished` marker says when to stop. A directory is read at once (its
    /// listing is not in key order, so it is not read by pages).
    async fn scan_parts(&mut self) -> Result<()> {
        if self.store.root.is_local() {
            if self.unscanned.is_none() {
                let done = QueueState::list_done(&self.store).await?;
                self.open = (0..self.shards).filter(|i| !done.contains(i)).collect();
                self.unscanned = Some(Default::default());
            }
            return Ok(());
        }
        let stretches = self.shards.div_ceil(LIST_PAGE);
        let first = self.turn % stretches.max(1);
        let unscanned = self
            .unscanned
            .get_or_insert_with(|| (0..stretches).map(|j| (first + j) % stretches).collect());
        let Some(&stretch) = unscanned.front() else {
            return Ok(());
        };
        let from = stretch * LIST_PAGE;
        let to = (from + LIST_PAGE).min(self.shards);
        let done: HashSet<usize> = self
            .store
            .list_from("parts", &shard_name(from), to - from)
            .await?
            .iter()
            .filter_map(|name| part_shard(name))
            .collect();
        self.open.extend((from..to).filter(|i| !done.contains(i)));
        unscanned.pop_front();
        Ok(())
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
    /// The holders' beats that are no longer fresh.
    stale: HashMap<String, Heartbeat>,
    /// Unfinished shards whose newest claim was first seen less than a lease ago.
    young: HashSet<usize>,
    /// Every claim object (attempts), i.e. executions started.
    pub attempts: usize,
}

impl QueueState {
    /// The whole run: every part, failure and claim is listed.
    pub async fn read(
        store: &RunStore,
        lease: Duration,
        liveness: &mut Liveness,
    ) -> Result<QueueState> {
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
        s.read_holders(store, lease, liveness, true).await?;
        Ok(s)
    }

    /// The shards with a part.
    pub async fn list_done(store: &RunStore) -> Result<HashSet<usize>> {
        Ok(store
            .list("parts")
            .await?
            .iter()
            .filter_map(|name| part_shard(name))
            .collect())
    }

    /// Only the given shards: whether each has a part, and the claims of
    /// those without one, in a few requests a shard. `failed` is left empty.
    pub async fn read_shards(
        store: &RunStore,
        lease: Duration,
        liveness: &mut Liveness,
        shards: &[usize],
    ) -> Result<QueueState> {
        let mut s = QueueState::default();
        for &i in shards {
            if store.exists(&part_name(i)).await? {
                s.done.insert(i);
                continue;
            }
            if let Some(&a) = liveness.newest.get(&i) {
                s.add_claim(i, a);
                continue;
            }
            for a in store.list(&format!("claims/{}", shard_name(i))).await? {
                if let Ok(a) = a.parse() {
                    s.add_claim(i, a);
                }
            }
        }
        s.read_holders(store, lease, liveness, false).await?;
        Ok(s)
    }

    fn add_claim(&mut self, i: usize, attempt: u32) {
        self.attempts += 1;
        let e = self.claims.entry(i).or_insert((attempt, None));
        e.0 = e.0.max(attempt);
    }

    /// Who holds the claims of unfinished shards, and which processes are
    /// alive: every process with a heartbeat (`all_beats`, for `engine
    /// status` and the scaler), or only those holding such claims (a waiting
    /// worker: a GET a holder, not one for every process of the run).
    async fn read_holders(
        &mut self,
        store: &RunStore,
        lease: Duration,
        liveness: &mut Liveness,
        all_beats: bool,
    ) -> Result<()> {
        let open: Vec<(usize, u32)> = self
            .claims
            .iter()
            .filter(|(i, _)| !self.done.contains(i))
            .map(|(i, (a, _))| (*i, *a))
            .collect();
        let mut holders = HashSet::new();
        for (i, a) in open {
            if liveness.young(i, a, lease) {
                self.young.insert(i);
            }
            let record = match liveness.records.get(&(i, a)) {
                Some(r) => Some(r.clone()),
                None => {
                    let rel = format!("claims/{}/{a}", shard_name(i));
                    let record = store
                        .get(&rel)
                        .await?
                        .and_then(|b| serde_json::from_slice::<ClaimRecord>(&b).ok());
                    if let Some(r) = &record {
                        liveness.records.insert((i, a), r.clone());
                        liveness.newest.insert(i, a);
                    }
                    record
                }
            };
            if let Some(r) = &record {
                holders.insert(r.process.clone());
            }
            if let Some(e) = self.claims.get_mut(&i) {
                e.1 = record;
            }
        }
        let names: Vec<String> = match all_beats {
            true => store.list("heartbeats").await?,
            false => holders.into_iter().collect(),
        };
        for name in names {
            let Some(bytes) = store.get(&format!("heartbeats/{name}")).await? else {
                continue;
            };
            let Ok(hb) = serde_json::from_slice::<Heartbeat>(&bytes) else {
                continue;
            };
            match liveness.alive(&name, &hb, lease) {
                true => self.alive.insert(name, hb),
                false => self.stale.insert(name, hb),
            };
        }
        Ok(())
    }

    /// Of the given shards, the unfinished ones no live process holds, with
    /// the attempt to claim next: the one after their newest claim, or 0 for
    /// a shard never claimed (a first claim whose create failed, say: once
    /// a process's fast path is over, nobody else would take it).
    pub fn orphaned(&self, shards: &[usize]) -> Vec<(usize, u32)> {
        let mut v: Vec<(usize, u32)> = shards
            .iter()
            .copied()
            .filter(|i| !self.done.contains(i))
            .filter_map(|i| match self.claims.get(&i) {
                None => Some((i, 0)),
                Some((a, _)) => (!self.held(i)).then_some((i, a + 1)),
            })
            .collect();
        v.sort();
        v
    }

    /// Whether the newest claim of unfinished `shard` is held: its process
    /// has beaten (it does before its first claim), its beat is fresh or the
    /// claim young, and no beat written after the claim leaves it out.
    fn held(&self, shard: usize) -> bool {
        let Some((attempt, Some(record))) = self.claims.get(&shard) else {
            return false;
        };
        let holds = |hb: &Heartbeat| hb.holds(shard, *attempt, record);
        match self.alive.get(&record.process) {
            Some(hb) => holds(hb),
            None if self.young.contains(&shard) => {
                self.stale.get(&record.process).is_some_and(holds)
            }
            None => false,
        }
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
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Run `r` of a directory store in `dir`.
    fn dir_store(dir: &std::path::Path) -> RunStore {
        RunStore::new(&Location::parse(dir.to_str().unwrap()).unwrap(), None, "r")
    }

    /// A directory store with shards 0..6: 0 and 1 finished, 2 claimed by a
    /// live process, 3 by a dead one (attempts 0 and 1), 4 and 5 unclaimed.
    async fn queue_store(dir: &std::path::Path) -> RunStore {
        let store = dir_store(dir);
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
        let full = QueueState::read(&store, lease, &mut Liveness::default())
            .await
            .unwrap();
        let some = QueueState::read_shards(&store, lease, &mut Liveness::default(), &all)
            .await
            .unwrap();
        for s in [&full, &some] {
            assert_eq!(s.done, HashSet::from([0, 1]));
            assert_eq!(s.orphaned(&all), vec![(3, 2), (4, 0), (5, 0)]);
            assert_eq!(s.running(), 1);
        }
        // Only a full read sees the claims of finished shards.
        assert_eq!((full.attempts, some.attempts), (5, 3));
    }

    #[tokio::test]
    async fn a_waiting_worker_takes_over_a_dead_claim_then_waits_then_ends() {
        let dir = tempfile::tempdir().unwrap();
        let store = queue_store(dir.path()).await;
        let cursor = Arc::new(Walk::over()); // the fast path is over
        let lease = Duration::from_secs(60);
        let active = Arc::new(ActiveClaims::default());
        let mut queue = Queue::new(store.clone(), 6, "me", "me/0", lease, cursor, active);
        beat(&store, "me", &Heartbeat::new(now_ms(), vec![]))
            .await
            .unwrap();
        assert_eq!(queue.next().await.unwrap(), Next::Run(3, 2));
        // 4 and 5 were never claimed: with the fast path over, this worker
        // takes them (a first claim whose create failed is not lost).
        assert_eq!(queue.next().await.unwrap(), Next::Run(4, 0));
        assert_eq!(queue.next().await.unwrap(), Next::Run(5, 0));
        // 2 is held by a live process, 3 to 5 by this one.
        assert_eq!(queue.next().await.unwrap(), Next::Wait);
        for i in 2..6 {
            store
                .create(&format!("parts/{}.csv", shard_name(i)), "a\n1\n")
                .await
                .unwrap();
        }
        // Within half a lease of its last look, it waits for the marker.
        assert_eq!(queue.next().await.unwrap(), Next::Wait);
        store.put(FINISHED, Vec::new()).await.unwrap();
        assert_eq!(queue.next().await.unwrap(), Next::Done);
    }

    #[tokio::test]
    async fn a_claim_its_live_process_no_longer_lists_is_dead() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir_store(dir.path());
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
        let state = QueueState::read(&store, Duration::from_secs(60), &mut Liveness::default())
            .await
            .unwrap();
        assert_eq!(state.orphaned(&[0, 1, 2]), vec![(0, 1)]);
        assert_eq!(state.running(), 2);
    }

    #[tokio::test]
    async fn a_new_claim_of_a_quiet_process_holds_for_a_lease_of_watching() {
        // Process p beats once, then stays quiet (its shards are short, so it
        // need not beat). A reader that has watched p's unchanged beat for
        // over a lease sees p claim shard 0: that claim holds until the
        // reader has watched *it* for a lease.
        let dir = tempfile::tempdir().unwrap();
        let store = dir_store(dir.path());
        beat(&store, "p", &Heartbeat::new(now_ms(), vec![]))
            .await
            .unwrap();
        let lease = Duration::from_millis(300);
        let mut liveness = Liveness::default();
        let later = lease + Duration::from_millis(50);
        QueueState::read(&store, lease, &mut liveness)
            .await
            .unwrap();
        tokio::time::sleep(later).await;
        let record = ClaimRecord {
            process: "p".into(),
            worker: "p/0".into(),
            at_ms: now_ms(),
        };
        let record = serde_json::to_vec(&record).unwrap();
        store.create("claims/00000000/0", record).await.unwrap();
        let s = QueueState::read(&store, lease, &mut liveness)
            .await
            .unwrap();
        assert_eq!(s.orphaned(&[0]), vec![], "a claim just seen is held");
        tokio::time::sleep(later).await;
        let s = QueueState::read(&store, lease, &mut liveness)
            .await
            .unwrap();
        assert_eq!(
            s.orphaned(&[0]),
            vec![(0, 1)],
            "watched for a lease, no beat"
        );
    }

    /// A memory store that, just before the first read of `trigger`, writes
    /// `then` (another worker acting between two of the reader's requests).
    #[derive(Debug)]
    struct Interleaved {
        inner: object_store::memory::InMemory,
        trigger: object_store::path::Path,
        then: std::sync::Mutex<Vec<(object_store::path::Path, Vec<u8>)>>,
        /// Creates refused, listings started.
        refused: AtomicUsize,
        listings: AtomicUsize,
    }

    impl Interleaved {
        fn new(trigger: &str, then: Vec<(object_store::path::Path, Vec<u8>)>) -> Interleaved {
            Interleaved {
                inner: object_store::memory::InMemory::new(),
                trigger: object_store::path::Path::from(trigger),
                then: std::sync::Mutex::new(then),
                refused: AtomicUsize::new(0),
                listings: AtomicUsize::new(0),
            }
        }
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
            let r = self.inner.put_opts(p, payload, opts).await;
            if matches!(r, Err(object_store::Error::AlreadyExists { .. })) {
                self.refused.fetch_add(1, Ordering::Relaxed);
            }
            r
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
            self.listings.fetch_add(1, Ordering::Relaxed);
            self.inner.list(prefix)
        }
        fn list_with_offset(
            &self,
            prefix: Option<&object_store::path::Path>,
            offset: &object_store::path::Path,
        ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>>
        {
            self.listings.fetch_add(1, Ordering::Relaxed);
            self.inner.list_with_offset(prefix, offset)
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

    /// `store` as a remote store is seen (listings are used).
    fn remote(store: Arc<Interleaved>) -> Location {
        Location {
            store,
            path: object_store::path::Path::from(""),
            display: "interleaved://".into(),
        }
    }

    /// `processes` queues, asked for work in turn, until every shard ran:
    /// how often each shard ran.
    async fn drain(store: &RunStore, shards: usize, processes: usize) -> Vec<usize> {
        let lease = Duration::from_secs(60);
        let mut queues: Vec<Queue> = (0..processes)
            .map(|p| {
                let name = format!("p{p}");
                let walk = Arc::new(Walk::new(&name));
                let active = Arc::new(ActiveClaims::default());
                Queue::new(
                    store.clone(),
                    shards,
                    &name,
                    &format!("{name}/0"),
                    lease,
                    walk,
                    active,
                )
            })
            .collect();
        let mut ran = vec![0; shards];
        let mut done = vec![false; processes];
        while done.iter().any(|d| !d) {
            if ran.iter().all(|&r| r > 0) {
                // As the orchestrator does once it counts every part.
                store.put(FINISHED, Vec::new()).await.unwrap();
            }
            for (p, q) in queues.iter_mut().enumerate() {
                if done[p] {
                    continue;
                }
                match q.next().await.unwrap() {
                    Next::Run(i, 0) => {
                        ran[i] += 1;
                        q.complete(i, "a\n1\n".into()).await.unwrap();
                        q.active.leave(i, 0);
                    }
                    Next::Done => done[p] = true,
                    // Its parts listings read a page a call.
                    Next::Wait => {}
                    other => panic!("{other:?}"),
                }
            }
        }
        ran
    }

    #[tokio::test]
    async fn a_waiting_worker_lists_the_parts_a_page_a_look_or_stops_at_finished() {
        // 3,000 finished shards; a worker whose walk is over. Before, its
        // first wait listed every part at once (as every worker did at the
        // same moment: the S3 server of the suite then timed out for minutes).
        let raw = Arc::new(Interleaved::new("-", vec![]));
        let store = RunStore::new(&remote(raw.clone()), None, "r");
        for i in 0..3000 {
            store.create(&part_name(i), "a\n1\n").await.unwrap();
        }
        let lease = Duration::from_millis(200);
        let queue = |name: &str| {
            let active = Arc::new(ActiveClaims::default());
            let walk = Arc::new(Walk::over());
            Queue::new(store.clone(), 3000, name, name, lease, walk, active)
        };
        let mut q = queue("me");
        let mut listings = Vec::new();
        loop {
            let before = raw.listings.load(Ordering::Relaxed);
            let next = q.next().await.unwrap();
            if next == Next::Done {
                listings.push(raw.listings.load(Ordering::Relaxed) - before);
                break;
            }
            assert_eq!(next, Next::Wait);
            // Asked again at once, it only reads `finished`.
            assert_eq!(q.next().await.unwrap(), Next::Wait);
            listings.push(raw.listings.load(Ordering::Relaxed) - before);
            tokio::time::sleep(lease / 2).await;
        }
        assert_eq!(
            listings,
            [1, 1, 1],
            "a page a look, a look every half lease"
        );
        // With the orchestrator's marker, one poll does.
        store.put(FINISHED, Vec::new()).await.unwrap();
        assert_eq!(queue("other").next().await.unwrap(), Next::Done);
    }

    #[tokio::test]
    async fn the_orchestrators_count_lists_only_the_stretches_not_yet_complete() {
        // Before: every count listed all of `parts/`, N/1,000 pages, however
        // much of it was complete (at 10,000 shards on the suite's S3 server
        // that, with the workers' listings, saturated it for minutes).
        let raw = Arc::new(Interleaved::new("-", vec![]));
        let store = RunStore::new(&remote(raw.clone()), None, "r");
        let missing = |i: &usize| (1000..1010).contains(i) || *i == 2499;
        for i in (0..2500).filter(|i| !missing(i)) {
            store.create(&part_name(i), "a\n1\n").await.unwrap();
        }
        let mut count = PartCount::new(2500);
        let counted = async |count: &mut PartCount| {
            let before = raw.listings.load(Ordering::Relaxed);
            let n = count.count(&store).await.unwrap();
            (n, raw.listings.load(Ordering::Relaxed) - before)
        };
        assert_eq!(counted(&mut count).await, (2489, 3));
        assert_eq!(count.pages_left(), 2, "the first stretch is complete");
        for i in 1000..1010 {
            store.create(&part_name(i), "a\n1\n").await.unwrap();
        }
        assert_eq!(counted(&mut count).await, (2499, 2));
        store.create(&part_name(2499), "a\n1\n").await.unwrap();
        assert_eq!(counted(&mut count).await, (2500, 1));
        assert_eq!(
            (count.pages_left(), counted(&mut count).await),
            (0, (2500, 0))
        );
    }

    #[tokio::test]
    async fn the_orchestrators_count_of_a_directory_sees_every_part() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir_store(dir.path());
        for i in (0..2500).rev().filter(|i| i % 7 != 3) {
            store.create(&part_name(i), "a\n1\n").await.unwrap();
        }
        let want = (0..2500).filter(|i| i % 7 != 3).count();
        assert_eq!(PartCount::new(2500).count(&store).await.unwrap(), want);
    }

    #[tokio::test]
    async fn processes_starting_together_rarely_collide() {
        // Before: each process tried every shard, (P - 1) x N = 6,000
        // refused creates here.
        let raw = Arc::new(Interleaved::new("-", vec![]));
        let store = RunStore::new(&remote(raw.clone()), None, "r");
        let ran = drain(&store, 2000, 4).await;
        assert!(ran.iter().all(|&r| r == 1), "every shard once");
        let (refused, listings) = (
            raw.refused.load(Ordering::Relaxed),
            raw.listings.load(Ordering::Relaxed),
        );
        eprintln!("{refused} refused creates, {listings} listings");
        // 51 and 72 when written (100 and 214 with random jumps).
        assert!(refused <= 100, "{refused} refused creates");
        assert!(listings <= 150, "{listings} listings");
        // A process joining after the end skips the claims by listing them
        // (about 1 listing a 1,000 claims, a refused create now and then).
        let (r0, l0) = (refused, listings);
        let ran = drain(&store, 2000, 1).await;
        assert!(ran.iter().all(|&r| r == 0));
        let refused = raw.refused.load(Ordering::Relaxed) - r0;
        let listings = raw.listings.load(Ordering::Relaxed) - l0;
        assert!(
            refused <= 3 && listings <= 10,
            "{refused} refused, {listings} listings"
        );
    }

    #[tokio::test]
    async fn over_a_directory_every_shard_is_claimed_once() {
        let dir = tempfile::tempdir().unwrap();
        let base = Location::parse(dir.path().to_str().unwrap()).unwrap();
        let store = RunStore::new(&base, None, "r");
        let ran = drain(&store, 300, 3).await;
        assert!(ran.iter().all(|&r| r == 1), "{ran:?}");
        assert_eq!(store.count("claims").await.unwrap(), 300);
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
        let store = Interleaved::new(
            "runs/r/heartbeats/p",
            vec![
                (path("parts/00000000.csv"), b"a\n1\n".to_vec()),
                (path("heartbeats/p"), beat_after),
            ],
        );
        let store = RunStore::new(&remote(Arc::new(store)), None, "r");
        store.create("claims/00000000/0", claim).await.unwrap();
        let before = Heartbeat::new(now_ms() - 500, vec![claim_name(0, 0)]);
        beat(&store, "p", &before).await.unwrap();

        let cursor = Arc::new(Walk::over()); // the fast path is over
        let active = Arc::new(ActiveClaims::default());
        let lease = Duration::from_millis(500);
        let mut queue = Queue::new(store.clone(), 1, "me", "me/0", lease, cursor, active);
        beat(&store, "me", &Heartbeat::new(now_ms(), vec![]))
            .await
            .unwrap();
        assert_eq!(queue.next().await.unwrap(), Next::Wait);
        assert!(!store.exists("claims/00000000/1").await.unwrap());
        // Half a lease later it looks again, and sees the part.
        tokio::time::sleep(lease / 2).await;
        assert_eq!(queue.next().await.unwrap(), Next::Done);
    }

    #[tokio::test]
    async fn a_shard_whose_claim_was_lost_too_often_is_given_up() {
        let store = RunStore::new(&Location::parse("memory://").unwrap(), None, "r");
        let active = Arc::new(ActiveClaims::default());
        let mut queue = Queue::new(
            store,
            1,
            "me",
            "me/0",
            Duration::from_secs(60),
            Arc::new(Walk::new("me")),
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
