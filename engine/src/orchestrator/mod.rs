//! A run from config to output: validate, plan, publish the run to the store,
//! let workers drain the queue, watch progress, merge. Knows nothing of
//! threads versus processes versus pods: that is `backend`.

mod merge;
pub mod progress;
mod provenance;

use crate::InputError;
use crate::backend::{self, WorkerAccess, WorkerPool};
use crate::config::{self, Backend, Config, Source};
use crate::plugins::{self, SearchPath};
use crate::runtime::{Plugin, Runtime, Shard};
use crate::store::counted::{self, Requests};
use crate::store::{Location, RunStore};
use crate::work::artifact;
use crate::work::data::{self, LocalData};
use crate::work::queue::PartCount;
use crate::work::shards::{self, ShardList};
use crate::work::{RunSpec, cache, worker};
use anyhow::{Context, Result, bail};
use progress::{Progress, ProgressMode};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// What `engine run` was asked to do.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub config: PathBuf,
    /// Overrides `output.path`.
    pub output: Option<String>,
    /// Overrides `run.data`.
    pub data: Option<PathBuf>,
    /// Overrides `cluster.workers`.
    pub workers: Option<usize>,
    /// Extra plugin directories, searched first.
    pub plugins: Vec<PathBuf>,
    pub progress: ProgressMode,
    /// Neither reuse cells from the cell cache nor keep them there.
    pub no_cache: bool,
    /// Run again the cells of this run whose part is an error.
    pub rerun_failed: bool,
}

impl RunOptions {
    /// Options that only validate a config (no overrides), as `validate` and `submit` use.
    pub fn validate_only(config: PathBuf, plugins: Vec<PathBuf>) -> RunOptions {
        RunOptions {
            config,
            output: None,
            data: None,
            workers: None,
            plugins,
            progress: ProgressMode::Quiet,
            no_cache: false,
            rerun_failed: false,
        }
    }
}

/// A validated run, ready to plan.
pub struct Prepared {
    pub config: Config,
    pub plugin: Arc<Plugin>,
    pub component_path: PathBuf,
    pub args: Map<String, Value>,
    /// `run.data` (or `--data`) as given, checked.
    pub data_source: Option<DataSource>,
    /// The data on this machine, by content: set by [`load_data`].
    pub data: Option<LocalData>,
    pub output: String,
    /// Where the run's state lives (`cluster.store`, resolved).
    pub store: String,
    pub workers: crate::config::Workers,
}

/// Where a run's data is, as given.
#[derive(Debug, Clone)]
pub enum DataSource {
    /// A directory on this machine.
    Dir(PathBuf),
    /// Objects below a store URL.
    Url(String),
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct Summary {
    pub run_id: String,
    pub shards: usize,
    pub failed: usize,
    pub rows: u64,
    pub elapsed: Duration,
    pub output: String,
    /// Shards finished by an earlier, interrupted run of the same config.
    pub resumed: usize,
    /// Cells taken from the cell cache by this run (`None`: `--no-cache`).
    pub reused: Option<usize>,
    /// Failed cells of an earlier run cleared to run again (`--rerun-failed`).
    pub reran: usize,
    /// What the run cost in store requests; `None` for a memory store.
    pub requests: Option<RunRequests>,
}

/// The store requests of a run, as counted by its processes.
#[derive(Debug, Clone)]
pub struct RunRequests {
    /// This process's (in-process workers' included).
    pub orchestrator: Requests,
    /// This process's while it waited for the workers, and how long that was.
    pub waiting: (Requests, Duration),
    /// Those the worker processes reported when they ended (`stats/`), and
    /// how many reported.
    pub workers: (Requests, usize),
}

/// Parse and validate everything before anything runs.
pub fn prepare(runtime: &Runtime, opts: &RunOptions) -> Result<Prepared, InputError> {
    prepare_loaded(runtime, opts, config::load(&opts.config)?)
}

/// [`prepare`] of a config already read.
fn prepare_loaded(
    runtime: &Runtime,
    opts: &RunOptions,
    (source, mut config): (Source, Config),
) -> Result<Prepared, InputError> {
    let base = opts
        .config
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    if let Some(n) = opts.workers {
        if n == 0 {
            return Err(InputError::msg("`--workers` must be at least 1"));
        }
        config.cluster.workers = config::Workers {
            minimum: n,
            maximum: n,
        };
    }
    let search = SearchPath::new(&opts.plugins);
    let resolved = plugins::resolve(runtime, &search, &config.run.function).map_err(|e| {
        let at = source.key_offset(&["run", "function"]);
        InputError::from(source.error_at(at, e.message))
    })?;
    let args = config::check_args(&source, &config, &resolved.function)?;
    let data_source = match (&opts.data, &config.run.data) {
        (Some(cli), _) => Some(DataSource::Dir(check_data_dir(cli, None)?)),
        (None, Some(url)) if url.contains("://") => {
            Location::parse_with(url, config.output.credentials().as_ref()).map_err(|e| {
                InputError::from(source.error_at(
                    source.key_offset(&["run", "data"]),
                    format!("`run.data`: {e:#}"),
                ))
            })?;
            Some(DataSource::Url(url.clone()))
        }
        (None, Some(rel)) => Some(DataSource::Dir(check_data_dir(
            &base.join(rel),
            Some((&source, Path::new(rel))),
        )?)),
        // A plugin's own data: `X.data/` beside `X.wasm` on the plugin path.
        (None, None) => bundled_data(&resolved.path).map(DataSource::Dir),
    };
    let written = config.output.location();
    let output = match &opts.output {
        Some(o) => o.clone(),
        None if written.contains("://") => written,
        None => base.join(&written).display().to_string(),
    };
    if config.output.key.is_some() != config.output.secret_key.is_some() {
        return Err(source
            .error_at(
                source.key_offset(&["output"]),
                "`output.key` and `output.secret_key` go together",
            )
            .into());
    }
    if config.output.credentials().is_some() {
        tracing::warn!(
            "{}: credentials are written in the config; prefer AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in the \
             environment (or a Kubernetes Secret). They are passed to workers only through the environment or a \
             Secret, never to guests.",
            opts.config.display()
        );
    }
    Location::parse_with(&output, config.output.credentials().as_ref()).map_err(|e| {
        InputError::from(source.error_at(
            source.key_offset(&["output", "path"]),
            format!("`output.path`: {e:#}"),
        ))
    })?;
    if let (Some(s), Backend::Kubernetes) = (&config.cluster.store, config.cluster.backend)
        && (!s.contains("://") || s.starts_with("file://"))
    {
        return Err(source
            .error_at(
                source.key_offset(&["cluster", "store"]),
                format!(
                    "`cluster.store = \"{s}\"` is a path on this machine, which worker pods cannot see; with \
                     `backend = \"kubernetes\"` give an object store every pod can reach, such as \
                     `s3://bucket/prefix`"
                ),
            )
            .into());
    }
    let store = match (&config.cluster.store, config.cluster.backend) {
        (Some(s), _) if s.contains("://") => s.clone(),
        (Some(s), _) => std::path::absolute(base.join(s))
            .map_err(|e| InputError::msg(format!("bad store path: {e}")))?
            .display()
            .to_string(),
        (None, Backend::Local) => "memory://".into(),
        (None, Backend::Processes) => std::path::absolute(base.join(".engine"))
            .map_err(|e| InputError::msg(format!("bad store path: {e}")))?
            .display()
            .to_string(),
        (None, Backend::Kubernetes) => {
            return Err(source
                .error_at(
                    source.key_offset(&["cluster"]),
                    "`cluster.store` is required with `backend = \"kubernetes\"`: an `s3://bucket/prefix` the pods can reach",
                )
                .into());
        }
    };
    if store.starts_with("memory://") && config.cluster.backend != Backend::Local {
        return Err(source
            .error_at(
                source.key_offset(&["cluster", "store"]),
                "`cluster.store`: a `memory://` store lives inside one process; only `backend = \"local\"` can use it. \
                 Give a directory or an `s3://bucket/prefix` that every worker can reach",
            )
            .into());
    }
    let workers = config.cluster.workers;
    let max = crate::runtime::MAX_SLOTS as usize;
    if config.cluster.backend == Backend::Local && workers.maximum > max {
        let what = if opts.workers.is_some() {
            InputError::msg(format!(
                "`--workers {}`: at most {max} worker threads run in one process",
                workers.maximum
            ))
        } else {
            source
                .error_at(
                    source.key_offset(&["cluster", "workers"]),
                    format!(
                        "`cluster.workers`: at most {max} worker threads run in one process (asked for {}); \
                         use `backend = \"processes\"` or `\"kubernetes\"` for more",
                        workers.maximum
                    ),
                )
                .into()
        };
        return Err(what);
    }
    Ok(Prepared {
        config,
        plugin: resolved.plugin,
        component_path: resolved.path,
        args,
        data_source,
        data: None,
        output,
        store,
        workers,
    })
}

/// The data a plugin ships: the folder `X.data` beside its component
/// `X.wasm`, the run's data when the config names none. (Files, not bytes in
/// the component: they are hashed, published for remote workers, mounted
/// per shard and part of each cell's cache key like any `run.data`.)
fn bundled_data(component: &Path) -> Option<PathBuf> {
    let dir = component.with_extension("data");
    let dir = std::path::absolute(dir).ok()?;
    dir.is_dir().then(|| {
        tracing::info!(data = %dir.display(), "no `run.data`: using the data the plugin ships");
        dir
    })
}

fn check_data_dir(
    path: &Path,
    from_config: Option<(&Source, &Path)>,
) -> Result<PathBuf, InputError> {
    if path.is_dir() {
        return std::path::absolute(path)
            .map_err(|e| InputError::msg(format!("bad data path: {e}")));
    }
    let why = if path.exists() {
        "is not a directory"
    } else {
        "does not exist"
    };
    Err(match from_config {
        Some((source, rel)) => InputError::from(source.error_at(
            source.key_offset(&["run", "data"]),
            format!("`run.data`: the data directory `{}` {why} (resolved against the config's folder to `{}`)", rel.display(), path.display()),
        )),
        None => InputError::msg(format!("`--data`: the data directory `{}` {why}", path.display())),
    })
}

/// Read the run's data: hash a directory, or download a URL's objects into
/// this machine's cache and hash them.
pub async fn load_data(p: &mut Prepared) -> Result<()> {
    let local = match &p.data_source {
        None => return Ok(()),
        Some(DataSource::Dir(dir)) => {
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || data::hash_dir(&dir))
                .await?
                .context("`run.data`")?
        }
        Some(DataSource::Url(url)) => {
            let location = Location::parse_with(url, p.config.output.credentials().as_ref())?;
            data::materialize(&location, &data::cache_root())
                .await
                .with_context(|| format!("`run.data`: cannot read `{url}`"))?
        }
    };
    p.data = Some(local);
    Ok(())
}

/// [`prepare`] and [`load_data`]: a run ready to plan.
pub async fn prepare_with_data(runtime: &Runtime, opts: &RunOptions) -> Result<Prepared> {
    let loaded = config::load(&opts.config).map_err(InputError::from)?;
    let mut prepared = tokio::task::block_in_place(|| prepare_loaded(runtime, opts, loaded))?;
    load_data(&mut prepared).await?;
    Ok(prepared)
}

/// The run's data directory on this machine.
fn data_dir(p: &Prepared) -> Option<&Path> {
    p.data.as_ref().map(|d| d.dir.as_path())
}

/// The run's identity: the same function, arguments, component, data (by
/// content), seed, tenant and limits give the same id, so a rerun finds its
/// earlier work.
pub fn run_id(p: &Prepared) -> String {
    assert!(
        p.data_source.is_none() || p.data.is_some(),
        "run_id before load_data"
    );
    crate::work::identity(
        &p.config.run.function,
        &p.args,
        &p.plugin.sha256,
        p.data.as_ref().map(|d| d.id.as_str()),
        p.config.run.seed,
        p.config.run.tenant.as_deref(),
    )
}

/// Plan the call in a sandbox with the run's limits, handing its shards to
/// `each` a page at a time ([`shards::PAGE`]), each page checked (its
/// shards' `reads`, `limits.max_shards`), so that no plan is ever held
/// whole; how many shards were planned.
pub fn plan(
    runtime: &Runtime,
    p: &Prepared,
    mut each: impl FnMut(Vec<Shard>) -> Result<()>,
) -> Result<usize> {
    let sandbox = worker::sandbox(&p.config.limits, data_dir(p), p.config.run.seed);
    let args = Value::Object(p.args.clone()).to_string();
    let function = &p.config.run.function;
    let failed = |f: crate::runtime::GuestFailure| -> anyhow::Error {
        // A guest that looked for data the run does not have.
        let hint = match (data_dir(p), f.message.contains("/data")) {
            (None, true) => {
                "; the run has no data: set `run.data` in the config to a folder (or an \
                 s3://… prefix) to mount read-only as the guest's /data"
            }
            _ => "",
        };
        let e = anyhow::anyhow!("planning `{function}` failed: {f}{hint}");
        // The plugin refusing its arguments is the user's to fix: exit 2.
        if f.kind == crate::runtime::ErrorKind::GuestError {
            InputError::from(e).into()
        } else {
            e
        }
    };
    let mut planning = runtime
        .plan(&p.plugin, function, &args, &sandbox)
        .map_err(failed)?;
    let max = p.config.limits.max_shards;
    let reads = crate::runtime::ReadsCheck::new(
        function,
        data_dir(p),
        p.data
            .iter()
            .flat_map(|d| &d.tree.files)
            .map(|f| f.path.as_str()),
    );
    let mut n = 0;
    while let Some(page) = planning.next(shards::PAGE as u32).map_err(failed)? {
        if n + page.len() > max {
            bail!(
                "`{function}` planned more than {max} shards, the run's `limits.max_shards`; \
                 raise the limit if that is intended"
            );
        }
        reads.page(n, &page)?;
        n += page.len();
        each(page)?;
    }
    if n == 0 {
        bail!("`{function}` planned no shards for these arguments: nothing to run");
    }
    Ok(n)
}

/// `engine run`: the whole run, start to finish. A rerun of the same config
/// against a persistent store resumes: finished shards are not run again.
pub async fn run(opts: RunOptions) -> Result<Summary> {
    let started = Instant::now();
    let started_at = chrono::Utc::now();
    let loaded = config::load(&opts.config).map_err(InputError::from)?;
    let runtime = Arc::new(tokio::task::block_in_place(|| {
        Runtime::new(threads_needed(&opts, &loaded.1))
    })?);
    let mut prepared = tokio::task::block_in_place(|| prepare_loaded(&runtime, &opts, loaded))?;
    load_data(&mut prepared).await?;
    let run_id = run_id(&prepared);
    let credentials = prepared.config.output.credentials();
    let base = Location::parse_with(&prepared.store, credentials.as_ref())?;
    let store = RunStore::new(&base, prepared.config.run.tenant.as_deref(), &run_id);

    let spec = publish_or_resume(&runtime, &prepared, &store, &run_id, !opts.no_cache).await?;
    let shards = ShardList::open(&store, &spec)?;
    if let Some(local) = &prepared.data
        && prepared.config.cluster.backend != Backend::Local
    {
        // Workers elsewhere read the data from the store, by content.
        let sent = data::publish(&base, prepared.config.run.tenant.as_deref(), local)
            .await
            .context("cannot publish `run.data` into the store")?;
        tracing::info!(tree = %local.id, files = local.tree.files.len(), uploaded = sent, "data published");
    }
    let n = shards.len();
    let reran = match opts.rerun_failed {
        true => clear_failed(&store).await?,
        false => 0,
    };
    let earlier = crate::work::queue::QueueState::list_done(&store).await?;
    let resumed = earlier.len();
    if resumed > 0 {
        eprintln!("resuming run {run_id}: {resumed} of {n} shards already finished");
    }
    let cache = (!opts.no_cache).then(|| cell_cache(&opts, &prepared, &base));
    let reused = match &cache {
        Some(cache) => Some(cache::reuse(cache, &store, &shards, &earlier).await?),
        None => None,
    };
    if let Some(hits) = &reused
        && !hits.is_empty()
    {
        eprintln!(
            "{} of {} cells reused from the cache",
            hits.len(),
            n - resumed.min(n)
        );
    }
    let resumed_or_reused = resumed + reused.as_ref().map_or(0, Vec::len);
    let failed_before = match resumed_or_reused {
        0 => 0,
        _ => store.count("failed").await?,
    };
    tracing::info!(run = %run_id, shards = n, function = %spec.function, store = %prepared.store, "starting");

    let workers = prepared
        .workers
        .maximum
        .min(n - resumed_or_reused.min(n))
        .max(1);
    let run = worker::LoadedRun {
        runtime: runtime.clone(),
        plugin: prepared.plugin.clone(),
        spec: Arc::new(spec),
        shards: Arc::new(shards),
        store: store.clone(),
        data_dir: data_dir(&prepared).map(Path::to_path_buf),
        cache,
        known_done: Arc::new(
            earlier
                .iter()
                .copied()
                .chain(reused.iter().flatten().copied())
                .collect(),
        ),
    };
    let (failed, waiting) = if resumed_or_reused >= n {
        // Every shard has a part already: no worker is started.
        tracing::info!(run = %run_id, "nothing left to run");
        (failed_before, (Requests::default(), Duration::ZERO))
    } else {
        let artifact_key = share_artifact(&runtime, &prepared, &store).await;
        let access = WorkerAccess {
            credentials: credentials.as_ref(),
            artifact_key: artifact_key.as_deref(),
        };
        let mut pool = start_workers(&prepared, &run, workers, access).await?;

        let mut progress = Progress::new(opts.progress, n as u64);
        let before = (resumed_or_reused, failed_before);
        let (before_wait, wait_started) = (counted::requests(), Instant::now());
        let watched = watch(&store, n, before, &mut pool, &mut progress).await;
        let waiting = (
            counted::requests().since(&before_wait),
            wait_started.elapsed(),
        );
        progress.finish();
        if watched.is_ok() && !store.root.is_memory() {
            // Waiting workers look for it, rather than at every shard.
            if let Err(e) = store.put(crate::work::queue::FINISHED, Vec::new()).await {
                tracing::warn!(
                    "cannot mark the run finished (workers find out by themselves): {e:#}"
                );
            }
        }
        pool.stop();
        let failed = match watched {
            Ok(failed) => failed,
            Err(e) => {
                pool.kill().await;
                return Err(e.context(format!(
                    "run {run_id} stopped; finished shards are kept in `{}` and a rerun of the same command resumes",
                    prepared.store
                )));
            }
        };
        pool.join().await?;
        (failed, waiting)
    };

    let output = Location::parse_with(&prepared.output, credentials.as_ref())?;
    let rows = write_output(&prepared, &run, &output).await?;
    let facts = provenance::Facts {
        run_id: &run_id,
        shards: &run.shards,
        rows,
        failed,
        earlier: &earlier,
        reused: reused.as_deref(),
        started: started_at,
    };
    let meta = provenance::write(&prepared, &store, &output, &facts)
        .await
        .context("the table is written, but not its provenance record")?;
    tracing::info!(%meta, "provenance written");
    let requests = match store.root.is_memory() {
        true => None,
        false => Some(RunRequests {
            orchestrator: counted::requests(),
            waiting,
            workers: reported_requests(&store).await,
        }),
    };
    Ok(Summary {
        run_id,
        shards: n,
        failed,
        rows,
        elapsed: started.elapsed(),
        output: prepared.output,
        resumed,
        reused: reused.map(|r| r.len()),
        reran,
        requests,
    })
}

/// The sum of what worker processes wrote into `stats/` as they ended.
async fn reported_requests(store: &RunStore) -> (Requests, usize) {
    let mut sum = (Requests::default(), 0);
    for name in store.list("stats").await.unwrap_or_default() {
        if let Ok(Some(bytes)) = store.get(&format!("stats/{name}")).await
            && let Ok(r) = serde_json::from_slice::<Requests>(&bytes)
        {
            sum = (sum.0.add(&r), sum.1 + 1);
        }
    }
    sum
}

/// The run as an earlier, interrupted run published it (a resume), else
/// planned and published now.
async fn publish_or_resume(
    runtime: &Runtime,
    prepared: &Prepared,
    store: &RunStore,
    run_id: &str,
    cache: bool,
) -> Result<RunSpec> {
    if let Some(spec) = load_published(store, run_id).await? {
        // Its first page now: a resumed run whose pages were changed stops
        // here; the others are checked as they are read.
        ShardList::open(store, &spec)?.page(0).await?;
        return update_settings(store, spec, prepared, cache).await;
    }
    let bytes = tokio::fs::read(&prepared.component_path)
        .await
        .with_context(|| format!("cannot read `{}`", prepared.component_path.display()))?;
    store.put("component.wasm", bytes).await?;
    // Each page is stored as the plan hands it out.
    let handle = tokio::runtime::Handle::current();
    let mut writer = shards::Writer::new(store);
    tokio::task::block_in_place(|| {
        plan(runtime, prepared, |page| handle.block_on(writer.push(page)))
    })?;
    let (n, shard_pages) = writer.finish().await?;
    let spec = RunSpec {
        format: crate::work::FORMAT,
        run_id: run_id.to_owned(),
        function: prepared.config.run.function.clone(),
        args: prepared.args.clone(),
        component_sha256: prepared.plugin.sha256.clone(),
        data: prepared.data.as_ref().map(|d| d.id.clone()),
        seed: prepared.config.run.seed,
        tenant: prepared.config.run.tenant.clone(),
        limits: prepared.config.limits.clone(),
        shards: n,
        lease_ms: prepared.config.cluster.lease.as_millis() as u64,
        shard_pages,
        cache,
    };
    // `run.json` last, so a worker that sees it finds everything else.
    store
        .put("run.json", serde_json::to_vec_pretty(&spec)?)
        .await?;
    Ok(spec)
}

/// A resumed run with this config's settings, which are not part of its id:
/// the limits, the lease and whether cells are cached. Its unfinished
/// shards run with them.
async fn update_settings(
    store: &RunStore,
    mut spec: RunSpec,
    prepared: &Prepared,
    cache: bool,
) -> Result<RunSpec> {
    let lease_ms = prepared.config.cluster.lease.as_millis() as u64;
    if spec.limits == prepared.config.limits && spec.lease_ms == lease_ms && spec.cache == cache {
        return Ok(spec);
    }
    if spec.limits != prepared.config.limits {
        eprintln!(
            "run {}: `[limits]` changed since it was first run; its unfinished shards run with the new ones",
            spec.run_id
        );
    }
    spec.limits = prepared.config.limits.clone();
    spec.lease_ms = lease_ms;
    spec.cache = cache;
    store
        .put("run.json", serde_json::to_vec_pretty(&spec)?)
        .await?;
    Ok(spec)
}

/// `--rerun-failed`: forget the cells of this run whose part is an error
/// (their part, log, side outputs and claims), so that they run again; how
/// many. The failure marker goes last, so an interrupted clearing is
/// finished by the next one.
async fn clear_failed(store: &RunStore) -> Result<usize> {
    let failed = store.list("failed").await?;
    for name in &failed {
        store.delete(&format!("parts/{name}.csv")).await?;
        store.delete(&format!("log/{name}.log")).await?;
        store.delete_below(&format!("outputs/{name}")).await?;
        store.delete_below(&format!("claims/{name}")).await?;
        store.delete(&format!("failed/{name}")).await?;
    }
    store.delete(crate::work::queue::FINISHED).await?;
    if !failed.is_empty() {
        eprintln!("rerunning the {} failed cells of this run", failed.len());
    }
    Ok(failed.len())
}

/// The cell cache of the run's tenant: beside the runs in the store, or for
/// a store in memory, in `.engine/` beside the config.
fn cell_cache(opts: &RunOptions, p: &Prepared, base: &Location) -> cache::CellCache {
    let root = match base.is_memory() {
        false => base.clone(),
        true => {
            let dir = opts
                .config
                .parent()
                .unwrap_or(Path::new("."))
                .join(".engine");
            Location::parse(&dir.display().to_string()).unwrap_or_else(|_| base.clone())
        }
    };
    cache::CellCache::new(
        &root,
        p.config.run.tenant.as_deref(),
        &p.plugin.sha256,
        &p.config.run.function,
        p.config.run.seed,
        p.data.as_ref().map(|d| Arc::new(d.tree.clone())),
    )
}

/// For workers in other processes: the compiled component in the store, and
/// the key (hex) that proves it to them. `None` (they compile) when it
/// cannot be stored, or for a local run.
async fn share_artifact(
    runtime: &Runtime,
    prepared: &Prepared,
    store: &RunStore,
) -> Option<String> {
    if prepared.config.cluster.backend == Backend::Local {
        return None;
    }
    let shared = async {
        let key = artifact::key_from_env().map_or_else(artifact::new_key, Ok)?;
        artifact::share(runtime, &prepared.plugin, store, &key).await?;
        anyhow::Ok(key)
    };
    match shared.await {
        Ok(key) => Some(key),
        Err(e) => {
            tracing::warn!(
                "workers will compile the component themselves: cannot store it compiled: {e:#}"
            );
            None
        }
    }
}

/// `workers` workers of the configured backend on `run`.
async fn start_workers(
    prepared: &Prepared,
    run: &worker::LoadedRun,
    workers: usize,
    access: WorkerAccess<'_>,
) -> Result<Box<dyn WorkerPool>> {
    Ok(match prepared.config.cluster.backend {
        Backend::Local => {
            let process = format!("{}-orchestrator", worker::default_process_name());
            backend::local::start(workers, run, &process)?
        }
        Backend::Processes => {
            backend::processes::start(workers, &prepared.store, &run.spec, access)?
        }
        Backend::Kubernetes => {
            backend::kubernetes::start(backend::kubernetes::KubeRun {
                cluster: &prepared.config.cluster,
                store_url: &prepared.store,
                spec: &run.spec,
                store: &run.store,
                access,
            })
            .await?
        }
    })
}

/// Merge the parts into the output, then copy the side outputs beside it;
/// the number of rows.
async fn write_output(
    prepared: &Prepared,
    run: &worker::LoadedRun,
    output: &Location,
) -> Result<u64> {
    let merging = Instant::now();
    let n = run.shards.len();
    let rows = merge::merge(&run.store, n, output).await.with_context(|| {
        let kept = if run.store.root.is_memory() {
            "the results were in this process's memory only and are lost with it: fix the output and \
             rerun (give `cluster.store` to keep results across runs)"
                .to_owned()
        } else {
            format!(
                "the results are kept in `{}`: fix the output and rerun the same command to write it \
                 without recomputing",
                prepared.store
            )
        };
        format!(
            "every shard finished but the output could not be written to `{}`; {kept}",
            output.display
        )
    })?;
    tracing::info!(
        rows,
        parts = n,
        seconds = merging.elapsed().as_secs_f64(),
        "merged"
    );
    merge::copy_side_outputs(&run.store, &run.shards, output).await?;
    Ok(rows)
}

/// Sandboxes this process needs at once: the worker threads of a local run
/// (`--workers`, else the config's maximum), else one for `plan`.
fn threads_needed(opts: &RunOptions, config: &Config) -> u32 {
    let from_config =
        (config.cluster.backend == Backend::Local).then_some(config.cluster.workers.maximum);
    let n = opts.workers.or(from_config).unwrap_or(1);
    // Past the cap `prepare` refuses the config with a located message.
    u32::try_from(n)
        .unwrap_or(u32::MAX)
        .min(crate::runtime::MAX_SLOTS)
}

/// The run as published earlier (a resume), if it is in the store.
async fn load_published(store: &RunStore, run_id: &str) -> Result<Option<RunSpec>> {
    let Some(spec) = store.get("run.json").await? else {
        return Ok(None);
    };
    let spec: RunSpec =
        serde_json::from_slice(&spec).context("the stored `run.json` is not a run spec")?;
    spec.check_id(run_id)?;
    Ok(Some(spec))
}

/// Wait until every shard has a part; returns how many failed. Workers in
/// this process are counted as they finish, on top of the parts and failures
/// `before` they started; others are seen by listing the store. A store that
/// fails is waited out (as the workers do) for up to
/// [`STORE_PATIENCE`](worker::STORE_PATIENCE).
async fn watch(
    store: &RunStore,
    n: usize,
    before: (usize, usize),
    pool: &mut Box<dyn WorkerPool>,
    progress: &mut Progress,
) -> Result<usize> {
    let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
    // SIGTERM (`kill`, a pod being deleted) stops the run as Ctrl-C does, so
    // the workers are stopped and the backend's objects deleted.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot watch for SIGTERM")?;
    let finished = pool.finished();
    // The store failing to count, or to let the backend look (a backend
    // that reads the queue to scale: kubernetes), each waited out.
    let (mut counting, mut polling) = (worker::Outage::default(), worker::Outage::default());
    // As last counted, for the message of an interrupted run.
    let mut done = before.0;
    // Why every worker stopped, once none is left.
    let mut stopped: Option<String> = None;
    let mut parts = PartCount::new(n);
    loop {
        // Listing an in-memory store is cheap; a directory or a bucket less
        // so: a count there lists a page (1,000 shards) for each stretch not
        // yet complete, so it is done at most every 400 ms and at most 10
        // listing requests a second; at least every 30 s.
        let pages = parts.pages_left() as u64;
        let every = match (&finished, store.root.is_memory()) {
            (Some(_), _) => 250,
            (None, true) => 50,
            (None, false) => (pages * 100).clamp(400, 30_000),
        };
        let tried = Instant::now();
        // Once every worker stopped, only the store knows.
        let here = finished.as_deref().filter(|_| stopped.is_none());
        // A store that does not answer does not keep Ctrl-C waiting.
        let counted = tokio::select! {
            counted = count_finished(store, &mut parts, n, before, here) => counted,
            _ = &mut ctrl_c => bail!("interrupted with {done} of {n} shards finished"),
            _ = term.recv() => bail!("terminated (SIGTERM) with {done} of {n} shards finished"),
        };
        let mut wait = Duration::from_millis(every);
        match counted {
            Ok((counted, failed)) => {
                counting.over(COUNTING);
                done = counted;
                progress.update(done as u64, failed as u64);
                if done >= n {
                    return Ok(failed);
                }
                // Counted after every worker stopped: what is left stays so.
                if let Some(why) = &stopped {
                    bail!(
                        "every worker stopped with {} of {n} shards unfinished: {why}",
                        n - done
                    );
                }
            }
            Err(e) => wait = counting.failed(COUNTING, e, tried)?,
        }
        if stopped.is_none() {
            let tried = Instant::now();
            match pool.poll(done).await {
                // Count once more: they may have finished the run as they went.
                Ok(Some(why)) => {
                    stopped = Some(why);
                    continue;
                }
                Ok(None) => polling.over(POLLING),
                Err(e) if crate::store::is_store_error(&e) => {
                    wait = wait.max(polling.failed(POLLING, e, tried)?);
                }
                Err(e) => return Err(e),
            }
        }
        let woken = async {
            match &finished {
                Some(f) => f.notify.notified().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = woken, if !counting.is_on() && !polling.is_on() => {}
            _ = &mut ctrl_c => bail!("interrupted with {done} of {n} shards finished"),
            _ = term.recv() => bail!("terminated (SIGTERM) with {done} of {n} shards finished"),
        }
    }
}

/// What [`watch`] asks the store, for its messages.
const COUNTING: &str = "counting the finished shards in the store";
const POLLING: &str = "looking after the workers";

/// Shards finished and failed: as counted by the workers in this process
/// (`finished`), on top of those `before` they started; else listed in the
/// store. Once every shard has a part, the failures of a resumed run are
/// counted in the store, exactly.
async fn count_finished(
    store: &RunStore,
    parts: &mut PartCount,
    n: usize,
    (before_done, before_failed): (usize, usize),
    finished: Option<&worker::Finished>,
) -> Result<(usize, usize)> {
    let (done, failed) = match finished {
        Some(f) => (
            before_done + f.done.load(Ordering::Relaxed),
            before_failed + f.failed.load(Ordering::Relaxed),
        ),
        None => (parts.count(store).await?, store.count("failed").await?),
    };
    if done >= n && before_done > 0 && finished.is_some() {
        return Ok((done, store.count("failed").await?));
    }
    Ok((done, failed))
}
