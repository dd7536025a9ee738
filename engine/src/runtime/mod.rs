//! wasmtime: one engine per process, components compiled once and cached on
//! disk, every call in a fresh sandboxed store.

mod cache;
mod failure;
mod helper;
mod host;
mod reads;

use crate::table::{Cell, error_part};
use anyhow::{Context, Result, bail};
use bytes::Bytes;
use host::{Bindings, BindingsPre, HostLimits, ShardState};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wasmtime::component::Component;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{FsPerms, WasiCtx};

pub use cache::{cache_dir, sha256_hex};
pub use failure::{ErrorKind, GuestFailure};
use failure::{classify, root_message, with_stderr_tail};
pub use reads::{READS_MAX, ReadsCheck, check_read};

/// How often the epoch ticks; deadlines are counted in ticks.
const TICK: Duration = Duration::from_millis(10);

/// The deepest a guest's wasm stack may grow, and the stack a guest call
/// runs on (wasmtime's async fibers): the difference is for host frames.
const MAX_WASM_STACK: usize = 2 << 20;
const GUEST_STACK: usize = 6 << 20;

/// Most bytes `describe` and `plan` may hand to the host (wasmtime's
/// per-call "hostcall fuel"): a plan of a million small shards fits.
const DESCRIBE_MAX: usize = 16 << 20;
const PLAN_MAX: usize = 128 << 20;

/// Longest guest-written message (an error, one log line) the host keeps;
/// the rest is cut with a marker.
pub const MESSAGE_MAX: usize = 4 << 10;

/// Where the data directory appears inside the guest.
pub const GUEST_DATA_DIR: &str = "/data";

/// A parameter of a plugin function.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParamInfo {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: String,
    /// JSON text; `None` means required.
    pub default: Option<String>,
    pub doc: String,
}

/// A function a plugin offers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionInfo {
    pub name: String,
    pub doc: String,
    pub params: Vec<ParamInfo>,
}

/// One independent piece of a call, as planned by the guest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Shard {
    pub key: Vec<(String, Cell)>,
    pub payload: String,
    /// The data directories its `run` reads (relative to the data
    /// directory); empty: all of it. Left out of `shards.json` when empty,
    /// so such a shard serializes (and is seeded) as before WIT 0.2.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reads: Vec<String>,
}

/// The sandbox of one call.
#[derive(Debug, Clone)]
pub struct Sandbox {
    pub memory: u64,
    pub timeout: Duration,
    pub output_size: u64,
    pub log_size: u64,
    /// Most side outputs (files) one call may write.
    pub outputs: u64,
    /// Most columns one call's rows may use.
    pub columns: u64,
    /// Threads a shard may use, its own and its helpers'.
    pub threads: u32,
    /// Mounted read-only at [`GUEST_DATA_DIR`], all of it, or only `reads`.
    pub data_dir: Option<PathBuf>,
    /// The directories of `data_dir` to mount, each at `/data/<dir>`
    /// (a shard's `reads`); empty: all of `data_dir`.
    pub reads: Vec<String>,
    /// Seeds `wasi:random` so a shard's randomness is reproducible.
    pub seed: u64,
}

impl Sandbox {
    /// Small limits for `describe`.
    fn for_describe() -> Sandbox {
        Sandbox {
            memory: 256 << 20,
            timeout: Duration::from_secs(30),
            output_size: 1 << 20,
            log_size: 1 << 20,
            outputs: 0,
            columns: 0,
            threads: 1,
            data_dir: None,
            reads: Vec::new(),
            seed: 0,
        }
    }
}

/// What running one shard produced. Bytes, so that storing it (and again
/// after a store error) shares the buffers instead of copying them.
#[derive(Debug)]
pub struct ShardOutput {
    /// The part: rows on success, the key and `error` on failure.
    pub part: Bytes,
    pub failure: Option<GuestFailure>,
    pub log: Bytes,
    pub outputs: BTreeMap<String, Bytes>,
    pub elapsed: Duration,
}

impl ShardOutput {
    /// The output of a shard that failed: its key cells and the error.
    pub fn failed(
        shard: &Shard,
        failure: GuestFailure,
        log: Vec<u8>,
        elapsed: Duration,
    ) -> ShardOutput {
        ShardOutput {
            part: error_part(&shard.key, &failure.to_string()).into(),
            failure: Some(failure),
            log: log.into(),
            outputs: BTreeMap::new(),
            elapsed,
        }
    }
}

/// A compiled component, ready to instantiate.
pub struct Plugin {
    pub sha256: String,
    /// Where it came from, for messages.
    pub origin: String,
    pre: BindingsPre<ShardState>,
}

/// Where guest calls are driven: the caller's tokio runtime, or one of our
/// own when there is none (a benchmark, a test).
enum Driver {
    Shared(tokio::runtime::Handle),
    Own(tokio::runtime::Runtime),
}

/// The process's wasmtime engine, linker and component cache.
pub struct Runtime {
    engine: Engine,
    linker: wasmtime::component::Linker<ShardState>,
    cache_dir: Option<PathBuf>,
    loaded: Mutex<HashMap<String, Arc<Plugin>>>,
    driver: Driver,
    slots: u32,
}

/// Most sandboxes one process runs at once (`cluster.workers` of a local
/// run, `engine worker --threads`): each reserves address space up front.
pub const MAX_SLOTS: u32 = 256;

impl Runtime {
    /// An engine able to run `slots` sandboxes at once, plus two for
    /// `describe` and `plan` beside them.
    pub fn new(slots: u32) -> Result<Runtime> {
        if slots > MAX_SLOTS {
            bail!("at most {MAX_SLOTS} sandboxes run in one process, not {slots}");
        }
        let slots = slots.max(1) + 2;
        // Room for one helper (`limits.threads` = 2) per sandbox: a helper that
        // finds no free slot is refused, and its shard does the work itself.
        let instances = slots * 2;
        let mut pool = PoolingAllocationConfig::default();
        // Per slot: up to 16 core instances and 4 memories. A Rust guest uses a
        // few; a Python guest built by componentize-py 0.25 (18 MB) 14 core
        // instances (libc, libpython, its runtime, adapters) and one memory.
        pool.total_component_instances(instances)
            .total_core_instances(instances * 16)
            .total_memories(instances * 4)
            .total_tables(instances * 16)
            .total_stacks(instances)
            .max_core_instances_per_component(64)
            .max_memories_per_component(16)
            .max_tables_per_component(64)
            .max_memories_per_module(1)
            .max_tables_per_module(4)
            .table_elements(200_000)
            .max_core_instance_size(16 << 20)
            .max_component_instance_size(16 << 20)
            .max_memory_size(4 << 30)
            // When a slot is reused, reset up to 1 MiB of the pages a shard
            // dirtied with memset (found with Linux's PAGEMAP_SCAN where the
            // kernel has it, 6.7+) instead of madvise and a page fault per page
            // touched again: most of a small shard's cost otherwise.
            .linear_memory_keep_resident(1 << 20)
            .table_keep_resident(64 << 10)
            .pagemap_scan(wasmtime::Enabled::Auto);
        let mut config = Config::new();
        // Guest calls run on wasmtime's fibers (the async path), so that a
        // host-side timer can end a call blocked in WASI (a sleep, a poll)
        // where the epoch deadline never fires, and so that the wasm stack
        // lives on a stack of its own, sized here, whatever thread calls.
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
            .max_wasm_stack(MAX_WASM_STACK)
            .async_stack_size(GUEST_STACK);
        let engine = Engine::new(&config)
            .map_err(anyhow::Error::from)
            .context("cannot start the WebAssembly engine")?;
        spawn_ticker(&engine);
        let linker = host::linker(&engine)?;
        let driver = match tokio::runtime::Handle::try_current() {
            Ok(handle) => Driver::Shared(handle),
            Err(_) => Driver::Own(
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .enable_all()
                    .build()
                    .context("cannot start an async runtime for guest calls")?,
            ),
        };
        Ok(Runtime {
            engine,
            linker,
            cache_dir: cache_dir(),
            loaded: Mutex::new(HashMap::new()),
            driver,
            slots,
        })
    }

    /// How many sandboxes can run at once (including the two spare).
    pub fn slots(&self) -> u32 {
        self.slots
    }

    /// Drive a guest call to its end on this thread. Callers are plain
    /// threads or inside `block_in_place`, never async tasks.
    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        match &self.driver {
            Driver::Shared(h) => h.block_on(f),
            Driver::Own(rt) => rt.block_on(f),
        }
    }

    /// Load a component file (compiling it, or reusing the on-disk cache).
    pub fn load_file(&self, path: &Path) -> Result<Arc<Plugin>> {
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read component `{}`", path.display()))?;
        self.load_bytes(&bytes, &path.display().to_string())
    }

    /// Load a component from bytes; `origin` names it in messages.
    pub fn load_bytes(&self, bytes: &[u8], origin: &str) -> Result<Arc<Plugin>> {
        let sha256 = cache::sha256_hex(bytes);
        if let Some(p) = self
            .loaded
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .get(&sha256)
        {
            return Ok(p.clone());
        }
        check_is_component(bytes, origin)?;
        let component = cache::compile(&self.engine, self.cache_dir.as_deref(), &sha256, bytes)
            .with_context(|| format!("cannot compile `{origin}`"))?;
        self.link(sha256, component, origin)
    }

    /// Which precompiled artifacts this engine can load: the same tag means
    /// the same wasmtime, configuration and target.
    pub fn artifact_tag(&self) -> String {
        format!("{:016x}", cache::engine_hash(&self.engine))
    }

    /// The machine code of a loaded plugin, for [`Runtime::load_precompiled`]
    /// in another process.
    pub fn precompiled(&self, plugin: &Plugin) -> Result<Vec<u8>> {
        Ok(plugin.pre.instance_pre().component().serialize()?)
    }

    /// Load `bytes` from the machine code [`Runtime::precompiled`] made of it,
    /// skipping compilation; a component this engine cannot load is an error.
    ///
    /// # Safety
    ///
    /// Loading machine code runs it: `artifact` must come from
    /// [`Runtime::precompiled`] through a channel that proves it (a keyed
    /// hash checked by the caller), never from an unauthenticated source.
    pub unsafe fn load_precompiled(
        &self,
        bytes: &[u8],
        artifact: &[u8],
        origin: &str,
    ) -> Result<Arc<Plugin>> {
        let sha256 = cache::sha256_hex(bytes);
        check_is_component(bytes, origin)?;
        // SAFETY: the caller vouches for the artifact (see above).
        let component = unsafe { Component::deserialize(&self.engine, artifact) }
            .map_err(anyhow::Error::from)
            .with_context(|| format!("cannot load the precompiled `{origin}`"))?;
        self.link(sha256, component, origin)
    }

    /// A compiled component, linked against the host: a plugin.
    fn link(&self, sha256: String, component: Component, origin: &str) -> Result<Arc<Plugin>> {
        let pre = self.linker.instantiate_pre(&component).map_err(|e| {
            let why = root_message(&e);
            let wit = component
                .component_type()
                .imports(&self.engine)
                .map(|(name, _)| name.to_owned())
                .find(|name| {
                    name.starts_with("engine:plugin/")
                        && !name.ends_with(&format!("@{}", crate::WIT_VERSION))
                });
            match wit {
                Some(name) => {
                    let theirs = name.rsplit_once('@').map_or("?", |(_, v)| v);
                    anyhow::anyhow!(
                        "`{origin}` was built against `engine:plugin@{theirs}`, but this engine \
                         speaks `engine:plugin@{}`{}",
                        crate::WIT_VERSION,
                        wit_upgrade(theirs)
                    )
                }
                None => anyhow::anyhow!(
                    "`{origin}` cannot run in the sandbox: {why}; a plugin may import only \
                     `engine:plugin/host` and WASI (filesystem, clocks, random, cli)"
                ),
            }
        })?;
        let pre = BindingsPre::new(pre).map_err(|e| {
            anyhow::anyhow!(
                "`{origin}` is not an engine plugin (world `engine:plugin/plugin@{}`): {}",
                crate::WIT_VERSION,
                root_message(&e)
            )
        })?;
        let plugin = Arc::new(Plugin {
            sha256: sha256.clone(),
            origin: origin.to_owned(),
            pre,
        });
        self.loaded
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .insert(sha256, plugin.clone());
        Ok(plugin)
    }

    /// The functions a plugin offers.
    pub fn describe(&self, plugin: &Plugin) -> Result<Vec<FunctionInfo>> {
        let sandbox = Sandbox::for_describe();
        let failed =
            |f: GuestFailure| anyhow::anyhow!("`describe` of `{}` failed: {f}", plugin.origin);
        let (mut store, _pipes) = new_store(
            &self.engine,
            &sandbox,
            (DESCRIBE_MAX, "the cap on what `describe` returns"),
        )
        .map_err(failed)?;
        let called = self.block_on(guarded(sandbox.timeout, async {
            let bindings = instantiate(plugin, &mut store, &sandbox).await?;
            bindings
                .call_describe(&mut store)
                .await
                .map_err(|e| classify(&e, store.data()))
        }));
        let infos = called.map_err(failed)?;
        Ok(infos
            .into_iter()
            .map(|f| FunctionInfo {
                name: f.name,
                doc: f.doc,
                params: f
                    .params
                    .into_iter()
                    .map(|p| ParamInfo {
                        name: p.name,
                        ty: p.type_,
                        default: p.default,
                        doc: p.doc,
                    })
                    .collect(),
            })
            .collect())
    }

    /// Start splitting a call into shards, which [`Planning::next`] then
    /// takes a page at a time. The sandbox (and its `limits.timeout`) lasts
    /// the whole plan.
    pub fn plan<'r>(
        &'r self,
        plugin: &Plugin,
        function: &str,
        args: &str,
        sandbox: &Sandbox,
    ) -> Result<Planning<'r>, GuestFailure> {
        let (mut store, pipes) = new_store(
            &self.engine,
            sandbox,
            (PLAN_MAX, "the cap on what `plan` returns"),
        )?;
        let deadline = Instant::now() + sandbox.timeout;
        let called = self.block_on(guarded(sandbox.timeout, async {
            let bindings = instantiate(plugin, &mut store, sandbox).await?;
            match bindings
                .engine_plugin_planner()
                .call_plan(&mut store, function, args)
                .await
            {
                Ok(Ok(shards)) => Ok((bindings, shards)),
                Ok(Err(message)) => Err(GuestFailure::new(ErrorKind::GuestError, &message)),
                Err(e) => Err(classify(&e, store.data())),
            }
        }));
        let (bindings, shards) = called.map_err(|f| with_stderr_tail(f, &pipes[1]))?;
        Ok(Planning {
            runtime: self,
            store,
            pipes,
            bindings,
            shards,
            deadline,
            timeout: sandbox.timeout,
        })
    }

    /// Run one shard in a fresh sandbox (mounting the data directories of
    /// `sandbox.reads`). It sees the shard, never the call's arguments.
    /// Never fails: a failure is data.
    pub fn run(
        &self,
        plugin: &Plugin,
        function: &str,
        shard: &Shard,
        sandbox: &Sandbox,
    ) -> ShardOutput {
        let started = Instant::now();
        // Nothing one call hands the host is bigger than what the shard may
        // keep of it.
        let hostcall_max = sandbox
            .output_size
            .max(sandbox.log_size)
            .saturating_add(64 << 10);
        let hostcall_max = usize::try_from(hostcall_max)
            .unwrap_or(usize::MAX)
            .min(PLAN_MAX);
        let (mut store, pipes) = match new_store(
            &self.engine,
            sandbox,
            (hostcall_max, "`limits.output_size` or `limits.log_size`"),
        ) {
            Ok(x) => x,
            Err(failure) => {
                return ShardOutput::failed(shard, failure, Vec::new(), started.elapsed());
            }
        };
        let memory = store.data().memory_counter();
        store.data_mut().spawner = Some(helper::Spawner {
            engine: self.engine.clone(),
            pre: plugin.pre.instance_pre().clone(),
            sandbox: sandbox.clone(),
            deadline: started + sandbox.timeout,
            left: sandbox.threads.saturating_sub(1),
            memory,
            started: 0,
        });
        let wit_shard = host::wit::Shard {
            key: shard
                .key
                .iter()
                .map(|(k, v)| (k.clone(), host::to_wit(v)))
                .collect(),
            payload: shard.payload.clone(),
            reads: shard.reads.clone(),
        };
        let called = self.block_on(guarded(sandbox.timeout, async {
            let bindings = instantiate(plugin, &mut store, sandbox).await?;
            let writer = store
                .data_mut()
                .new_writer()
                .map_err(|e| GuestFailure::new(ErrorKind::Denied, &format!("{e:#}")))?;
            match bindings
                .call_run(&mut store, function, &wit_shard, writer)
                .await
            {
                Ok(Ok(())) => Ok(()),
                Ok(Err(message)) => Err(GuestFailure::new(ErrorKind::GuestError, &message)),
                Err(e) => Err(classify(&e, store.data())),
            }
        }));
        let failure = called.err().map(|f| with_stderr_tail(f, &pipes[1]));
        let mut log = std::mem::take(&mut store.data_mut().log);
        for (name, pipe) in ["stdout", "stderr"].iter().zip(&pipes) {
            let text = pipe.contents();
            if !text.is_empty() {
                log.extend_from_slice(format!("--- {name} ---\n").as_bytes());
                log.extend_from_slice(&text);
            }
        }
        let state = store.into_data();
        match failure {
            Some(f) => ShardOutput::failed(shard, f, log, started.elapsed()),
            None => ShardOutput {
                part: state.part.finish().into(),
                failure: None,
                log: log.into(),
                outputs: state
                    .outputs
                    .into_files()
                    .into_iter()
                    .map(|(name, data)| (name, data.into()))
                    .collect(),
                elapsed: started.elapsed(),
            },
        }
    }
}

/// A fresh store for one call: WASI with the data directory read-only,
/// captured stdout/stderr, the memory limiter, the epoch deadline and the
/// cap on bytes the guest may hand the host in one call.
fn new_store(
    engine: &Engine,
    sandbox: &Sandbox,
    (hostcall_max, hostcall_limit): (usize, &'static str),
) -> Result<(Store<ShardState>, [MemoryOutputPipe; 2]), GuestFailure> {
    let pipes = [
        MemoryOutputPipe::new(sandbox.log_size as usize),
        MemoryOutputPipe::new(sandbox.log_size as usize),
    ];
    let mut wasi = WasiCtx::builder();
    wasi.stdout(pipes[0].clone()).stderr(pipes[1].clone());
    let denied = |message: String| GuestFailure {
        kind: ErrorKind::Denied,
        message,
    };
    match (&sandbox.data_dir, sandbox.reads.first()) {
        (Some(dir), _) => {
            for (host, guest) in reads::mounts(dir, &sandbox.reads).map_err(denied)? {
                wasi.preopened_dir(&host, &guest, FsPerms::ReadOnly)
                    .map_err(|e| {
                        denied(format!(
                            "cannot open the data directory `{}`: {e}",
                            host.display()
                        ))
                    })?;
            }
        }
        (None, Some(read)) => {
            return Err(denied(format!(
                "the shard reads `{}`, but the run has no data",
                crate::text::escape_controls(&crate::text::truncate(read, 200))
            )));
        }
        (None, None) => {}
    }
    use rand::SeedableRng;
    wasi.secure_random(rand::rngs::StdRng::seed_from_u64(sandbox.seed))
        .insecure_random(rand::rngs::StdRng::seed_from_u64(sandbox.seed ^ 0x5eed))
        .insecure_random_seed(u128::from(sandbox.seed))
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);
    let limits = HostLimits {
        memory: sandbox.memory,
        output_size: sandbox.output_size,
        log_size: sandbox.log_size,
        outputs: sandbox.outputs,
        columns: sandbox.columns,
        timeout: sandbox.timeout,
    };
    let mut store = Store::new(engine, ShardState::new(wasi.build(), limits));
    store.limiter(|s| s);
    store.set_hostcall_fuel(hostcall_max);
    store.data_mut().hostcall_max = hostcall_max;
    store.data_mut().hostcall_limit = hostcall_limit;
    let ticks = (sandbox.timeout.as_millis() / TICK.as_millis()).max(1) as u64 + 1;
    store.set_epoch_deadline(ticks);
    store.epoch_deadline_trap();
    Ok((store, pipes))
}

/// A plan in progress: its guest instance, asked for shards a page at a
/// time, so that neither it nor the host holds all of a big plan.
pub struct Planning<'r> {
    runtime: &'r Runtime,
    store: Store<ShardState>,
    pipes: [MemoryOutputPipe; 2],
    bindings: Bindings,
    shards: wasmtime::component::ResourceAny,
    deadline: Instant,
    timeout: Duration,
}

impl Planning<'_> {
    /// Up to `max` more shards; `None` once the plan has given them all.
    pub fn next(&mut self, max: u32) -> Result<Option<Vec<Shard>>, GuestFailure> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out(self.timeout));
        }
        let (store, bindings, shards) = (&mut self.store, &self.bindings, self.shards);
        store.set_hostcall_fuel(PLAN_MAX);
        let called = self.runtime.block_on(guarded(left, async {
            match bindings
                .engine_plugin_planner()
                .shards()
                .call_next(&mut *store, shards, max)
                .await
            {
                Ok(Ok(page)) => Ok(page),
                Ok(Err(message)) => Err(GuestFailure::new(ErrorKind::GuestError, &message)),
                Err(e) => Err(classify(&e, store.data())),
            }
        }));
        let page = called
            .map_err(|f| with_stderr_tail(f, &self.pipes[1]))
            .map_err(|f| match f.kind {
                // `guarded` names the whole plan's timeout, not what was left.
                ErrorKind::Timeout => timed_out(self.timeout),
                _ => f,
            })?;
        if page.len() > max as usize {
            return Err(GuestFailure::new(
                ErrorKind::GuestError,
                &format!(
                    "`next` returned {} shards where at most {max} were asked for",
                    page.len()
                ),
            ));
        }
        if page.is_empty() {
            return Ok(None);
        }
        Ok(Some(
            page.into_iter()
                .map(|s| Shard {
                    key: s
                        .key
                        .into_iter()
                        .map(|(k, v)| (k, host::from_wit(v)))
                        .collect(),
                    payload: s.payload,
                    reads: s.reads,
                })
                .collect(),
        ))
    }
}

/// Instantiate a plugin in a store made by `new_store`.
async fn instantiate(
    plugin: &Plugin,
    store: &mut Store<ShardState>,
    sandbox: &Sandbox,
) -> Result<Bindings, GuestFailure> {
    match plugin.pre.instantiate_async(&mut *store).await {
        Ok(b) => Ok(b),
        // A big guest (an interpreter) may need more memory than allowed just to start.
        Err(e) if store.data().memory_denied => Err(GuestFailure {
            kind: ErrorKind::OutOfMemory,
            message: format!(
                "the component needs more than `limits.memory` ({} bytes) just to start \
                 ({}); raise `limits.memory`",
                sandbox.memory,
                root_message(&e)
            ),
        }),
        Err(e) if e.downcast_ref::<Trap>() == Some(&Trap::Interrupt) => {
            Err(timed_out(sandbox.timeout))
        }
        Err(e) => Err(GuestFailure::new(ErrorKind::Denied, &format!("{e:#}"))),
    }
}

/// A guest call under a host-side deadline: the epoch deadline stops wasm
/// code, this stops a call waiting in the host (a WASI sleep or poll). Both
/// end at `limits.timeout`; the epoch's tick makes the first one a little later.
async fn guarded<T>(
    timeout: Duration,
    call: impl std::future::Future<Output = Result<T, GuestFailure>>,
) -> Result<T, GuestFailure> {
    match tokio::time::timeout(timeout + TICK * 2, call).await {
        Ok(r) => r,
        Err(_) => Err(timed_out(timeout)),
    }
}

fn timed_out(timeout: Duration) -> GuestFailure {
    GuestFailure {
        kind: ErrorKind::Timeout,
        message: format!(
            "the call ran past `limits.timeout` ({})",
            humantime::format_duration(timeout)
        ),
    }
}

/// What to do about a component built against another version of the WIT
/// (`0.1.0`, `0.2.0`): what changed since, and how to rebuild it.
fn wit_upgrade(theirs: &str) -> &'static str {
    let version = |v: &str| -> Option<(u64, u64, u64)> {
        let mut parts = v.split('.').map(|p| p.parse().ok());
        let v = (parts.next()??, parts.next()??, parts.next()??);
        parts.next().is_none().then_some(v)
    };
    let (theirs, ours) = (version(theirs), version(crate::WIT_VERSION));
    match (theirs, ours) {
        (Some(theirs), Some(ours)) if theirs > ours => {
            "; it needs a newer engine (or rebuild it against this engine's guest SDK)"
        }
        (Some((0, 1, _)), _) => {
            "; since 0.2.0, `run` no longer receives the call's arguments; a shard's payload \
             carries what it needs; since 0.3.0, `plan` hands its shards out a page at a time \
             (the guest SDK's `plan` returns `Shards`); rebuild against this engine's guest SDK"
        }
        (Some((0, 2, _)), _) => {
            "; since 0.3.0, `plan` hands its shards out a page at a time (the `planner` \
             interface; the guest SDK's `plan` returns `Shards`); rebuild against this \
             engine's guest SDK"
        }
        _ => "; rebuild it against this engine's guest SDK",
    }
}

/// Refuse what is not a component before wasmtime says something obscure.
fn check_is_component(bytes: &[u8], origin: &str) -> Result<()> {
    if bytes.len() < 8 || &bytes[0..4] != b"\0asm" {
        bail!("`{origin}` is not a WebAssembly file");
    }
    // Layer 1 = component, 0 = core module.
    if bytes[6..8] == [0, 0] {
        bail!(
            "`{origin}` is a core WebAssembly module, not a component; build it with \
             `cargo build --target wasm32-wasip2` (or `wasm-tools component new`)"
        );
    }
    Ok(())
}

fn spawn_ticker(engine: &Engine) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("epoch-ticker".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(TICK);
            }
        })
        .ok();
}
