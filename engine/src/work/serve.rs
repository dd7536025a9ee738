//! `engine worker`: load a run published in the store and work on it.

use super::RunSpec;
use super::threads::Threads;
use super::worker::{LoadedRun, default_process_name};
use crate::runtime::Runtime;
use crate::store::{Location, RunStore};
use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use std::sync::Arc;

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
    /// Where this machine has the run's data already (else it is fetched
    /// from the store into the cache).
    pub data: Option<PathBuf>,
}

/// `engine worker`: load a published run from the store and work on it until
/// every shard has a part.
pub async fn serve(opts: ServeOptions) -> Result<u64> {
    let started = std::time::Instant::now();
    exit_on_signals()?;
    let base = Location::parse(&opts.store)?;
    let store = RunStore::new(&base, opts.tenant.as_deref(), &opts.run);
    let spec_bytes = store
        .get("run.json")
        .await?
        .with_context(|| format!("no run `{}` in the store `{}`", opts.run, opts.store))?;
    let spec: RunSpec =
        serde_json::from_slice(&spec_bytes).context("`run.json` is not a run spec")?;
    spec.check_id(&opts.run)?;
    // The data comes from the store by content, into this machine's cache:
    // never a host path read from the store, which a tampered store could
    // point anywhere. `--data` names where this machine already has it.
    let (data_dir, tree) = match (opts.data, &spec.data) {
        (Some(data), _) => {
            let dir = std::path::absolute(data)?;
            // Cells are cached by the content they read: only when this
            // machine's copy is the run's data.
            let tree = match (&spec.data, spec.cache) {
                (Some(id), true) => {
                    let hashed = tokio::task::spawn_blocking({
                        let dir = dir.clone();
                        move || super::data::hash_dir(&dir)
                    })
                    .await??;
                    if hashed.id != *id {
                        tracing::warn!(
                            "`--data {}` is not the run's data (its tree is {}, the run's {id}): \
                             this worker keeps no cell in the cache",
                            dir.display(),
                            hashed.id
                        );
                    }
                    (hashed.id == *id).then(|| Arc::new(hashed.tree))
                }
                _ => None,
            };
            (Some(dir), tree)
        }
        (None, None) => (None, None),
        (None, Some(id)) => {
            let cache = super::data::cache_root();
            let what = format!("run `{}`", opts.run);
            let local =
                super::data::fetch(&base, opts.tenant.as_deref(), id, &cache, &what).await?;
            (Some(local.dir), Some(Arc::new(local.tree)))
        }
    };
    let cache = (spec.cache && (spec.data.is_none() || tree.is_some())).then(|| {
        super::cache::CellCache::new(
            &base,
            opts.tenant.as_deref(),
            &spec.component_sha256,
            &spec.function,
            spec.seed,
            tree,
        )
    });
    let component = store
        .get("component.wasm")
        .await?
        .context("the run has no `component.wasm`")?;
    // The first page now: a changed one stops this worker before it starts.
    let shards = super::shards::ShardList::open(&store, &spec)?;
    shards.page(0).await?;
    let threads = opts.threads.max(1);
    let runtime = Arc::new(tokio::task::block_in_place(|| {
        Runtime::new(threads as u32)
    })?);
    let origin = format!("component.wasm of run {}", opts.run);
    if crate::runtime::sha256_hex(&component) != spec.component_sha256 {
        bail!("`{origin}` does not match the sha256 in `run.json`: the store was modified");
    }
    let (plugin, how) = super::artifact::load(
        &runtime,
        &store,
        &component,
        &spec.component_sha256,
        &origin,
    )
    .await?;
    let process = opts.id.unwrap_or_else(default_process_name);
    tracing::info!(
        run = %opts.run,
        process = %process,
        threads,
        component = ?how,
        ready_ms = started.elapsed().as_millis() as u64,
        "worker starting"
    );
    let run = LoadedRun {
        runtime,
        plugin,
        spec: Arc::new(spec),
        shards: Arc::new(shards),
        store: store.clone(),
        data_dir,
        cache,
        // Parts are seen through the claims and listings of the store.
        known_done: Arc::default(),
    };
    let pool = Threads::start(threads, &run, &process)?;
    let ran = tokio::task::spawn_blocking(move || pool.join()).await??;
    // What this process cost in store requests, for the orchestrator's total
    // (this last write itself is not in it).
    let requests = crate::store::counted::requests();
    if let Err(e) = store
        .put(
            &format!("stats/{process}.json"),
            serde_json::to_vec(&requests)?,
        )
        .await
    {
        tracing::warn!("cannot store this worker's request counts: {e:#}");
    }
    tracing::info!(ran, %requests, "worker done: every shard has a part");
    Ok(ran)
}

/// Exit at once on SIGTERM or SIGINT. As a container's first process (a
/// worker pod) there is no default action for them, so a deleted pod would
/// wait out its whole grace period. A shard being run is not lost: its claim
/// lapses with the heartbeat and it is offered again.
fn exit_on_signals() -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot watch for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch for SIGINT")?;
    tokio::spawn(async move {
        let (name, code) = tokio::select! {
            _ = term.recv() => ("SIGTERM", 143),
            _ = int.recv() => ("SIGINT", 130),
        };
        eprintln!("engine worker: {name}: stopping; the shards it was running are offered again");
        std::process::exit(code);
    });
    Ok(())
}
