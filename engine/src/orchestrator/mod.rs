//! A run from config to output: validate, plan, publish the run to the store,
//! let workers drain the queue, watch progress, merge. Knows nothing of
//! threads versus processes versus pods: that is `backend`.

mod merge;
pub mod progress;
pub mod queue;
pub mod worker;

use crate::InputError;
use crate::backend::Workers;
use crate::config::{self, Config, Limits, Source};
use crate::plugins::{self, SearchPath};
use crate::runtime::{Plugin, Runtime, Sandbox, Shard};
use crate::store::{Location, RunStore};
use anyhow::{Context, Result, bail};
use progress::{Progress, ProgressMode};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;
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
}

/// The run as published in the store (`run.json`): everything a worker needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunSpec {
    /// Version of this layout.
    pub format: u32,
    pub run_id: String,
    pub function: String,
    /// Checked against the function's parameters, defaults filled in.
    pub args: Map<String, Value>,
    pub component_sha256: String,
    pub data_dir: Option<PathBuf>,
    pub seed: u64,
    pub tenant: Option<String>,
    pub limits: Limits,
    pub shards: usize,
}

/// A validated run, ready to plan.
pub struct Prepared {
    pub config: Config,
    pub plugin: Arc<Plugin>,
    pub component_path: PathBuf,
    pub args: Map<String, Value>,
    pub data_dir: Option<PathBuf>,
    pub output: String,
    pub workers: crate::config::Workers,
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
}

/// Parse and validate everything before anything runs.
pub fn prepare(runtime: &Runtime, opts: &RunOptions) -> Result<Prepared, InputError> {
    let (source, mut config) = config::load(&opts.config)?;
    let base = opts.config.parent().map(Path::to_path_buf).unwrap_or_default();
    if let Some(n) = opts.workers {
        if n == 0 {
            return Err(InputError::msg("`--workers` must be at least 1"));
        }
        config.cluster.workers = config::Workers { minimum: n, maximum: n };
    }
    let search = SearchPath::new(&opts.plugins);
    let resolved = plugins::resolve(runtime, &search, &config.run.function).map_err(|e| {
        let at = source.key_offset(&["run", "function"]);
        InputError::from(source.error_at(at, e.message))
    })?;
    let args = config::check_args(&source, &config, &resolved.function)?;
    let data_dir = match (&opts.data, &config.run.data) {
        (Some(cli), _) => Some(check_data_dir(cli, None)?),
        (None, Some(rel)) => Some(check_data_dir(&base.join(rel), Some((&source, rel)))?),
        (None, None) => None,
    };
    let output = match &opts.output {
        Some(o) => o.clone(),
        None if config.output.path.contains("://") => config.output.path.clone(),
        None => base.join(&config.output.path).display().to_string(),
    };
    Location::parse(&output).map_err(|e| {
        InputError::from(source.error_at(source.key_offset(&["output", "path"]), format!("`output.path`: {e:#}")))
    })?;
    let workers = config.cluster.workers;
    Ok(Prepared { config, plugin: resolved.plugin, component_path: resolved.path, args, data_dir, output, workers })
}

fn check_data_dir(path: &Path, from_config: Option<(&Source, &PathBuf)>) -> Result<PathBuf, InputError> {
    if path.is_dir() {
        return std::path::absolute(path).map_err(|e| InputError::msg(format!("bad data path: {e}")));
    }
    let why = if path.exists() { "is not a directory" } else { "does not exist" };
    Err(match from_config {
        Some((source, rel)) => InputError::from(source.error_at(
            source.key_offset(&["run", "data"]),
            format!("`run.data`: the data directory `{}` {why} (resolved against the config's folder to `{}`)", rel.display(), path.display()),
        )),
        None => InputError::msg(format!("`--data`: the data directory `{}` {why}", path.display())),
    })
}

/// The run's identity: the same function, arguments, component, data, seed,
/// tenant and limits give the same id, so a rerun finds its earlier work.
pub fn run_id(p: &Prepared) -> String {
    let identity = serde_json::json!({
        "function": p.config.run.function,
        "args": p.args,
        "component": p.plugin.sha256,
        "data": p.data_dir,
        "seed": p.config.run.seed,
        "tenant": p.config.run.tenant,
        "limits": p.config.limits,
    });
    hex::encode(&Sha256::digest(identity.to_string().as_bytes())[..8])
}

/// Plan the call in a sandbox with the run's limits.
pub fn plan(runtime: &Runtime, p: &Prepared) -> Result<Vec<Shard>> {
    let sandbox = Sandbox {
        memory: p.config.limits.memory,
        timeout: p.config.limits.timeout,
        output_size: p.config.limits.output_size,
        log_size: p.config.limits.log_size,
        data_dir: p.data_dir.clone(),
        seed: p.config.run.seed,
    };
    let args = Value::Object(p.args.clone()).to_string();
    let shards = runtime.plan(&p.plugin, &p.config.run.function, &args, &sandbox).map_err(|f| {
        let e = anyhow::anyhow!("planning `{}` failed: {f}", p.config.run.function);
        // The plugin refusing its arguments is the user's to fix: exit 2.
        if f.kind == crate::runtime::ErrorKind::GuestError { InputError::from(e).into() } else { e }
    })?;
    if shards.is_empty() {
        bail!("`{}` planned no shards for these arguments: nothing to run", p.config.run.function);
    }
    Ok(shards)
}

/// `engine run`: the whole run, start to finish.
pub async fn run(opts: RunOptions) -> Result<Summary> {
    let started = Instant::now();
    let slots = opts.workers.unwrap_or(8).min(64) as u32;
    let runtime = Arc::new(tokio::task::block_in_place(|| Runtime::new(slots))?);
    let prepared = tokio::task::block_in_place(|| prepare(&runtime, &opts))?;
    let shards = tokio::task::block_in_place(|| plan(&runtime, &prepared))?;
    let run_id = run_id(&prepared);
    let spec = RunSpec {
        format: 1,
        run_id: run_id.clone(),
        function: prepared.config.run.function.clone(),
        args: prepared.args.clone(),
        component_sha256: prepared.plugin.sha256.clone(),
        data_dir: prepared.data_dir.clone(),
        seed: prepared.config.run.seed,
        tenant: prepared.config.run.tenant.clone(),
        limits: prepared.config.limits.clone(),
        shards: shards.len(),
    };
    tracing::info!(run = %run_id, shards = shards.len(), function = %spec.function, "planned");

    let base = Location::parse("memory://")?;
    let store = RunStore::new(&base, spec.tenant.as_deref(), &run_id);
    store.put("run.json", serde_json::to_vec_pretty(&spec)?).await?;
    store.create("shards.json", serde_json::to_vec(&shards)?).await?;

    let n = shards.len();
    let workers = prepared.workers.maximum.min(n).max(1);
    let spec = Arc::new(spec);
    let shards = Arc::new(shards);
    let mut pool = Workers::start_local(workers, &runtime, &prepared.plugin, &spec, &shards, &store)?;

    let mut progress = Progress::new(opts.progress, n as u64);
    let watched = watch(&store, n, &mut pool, &mut progress).await;
    progress.finish();
    pool.stop();
    let failed = watched?;
    pool.join()?;

    let output = Location::parse(&prepared.output)?;
    let rows = merge::merge(&store, n, &output).await.with_context(|| {
        format!("the run finished but its output could not be written to `{}`", output.display)
    })?;
    merge::copy_side_outputs(&store, &output).await?;
    Ok(Summary { run_id, shards: n, failed, rows, elapsed: started.elapsed(), output: prepared.output })
}

/// Poll the store until every shard has a part; returns how many failed.
async fn watch(store: &RunStore, n: usize, pool: &mut Workers, progress: &mut Progress) -> Result<usize> {
    let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
    loop {
        let done = store.list("parts").await?.len();
        let failed = store.list("failed").await?.len();
        progress.update(done as u64, failed as u64);
        if done >= n {
            return Ok(failed);
        }
        if let Some(e) = pool.all_stopped() {
            let done = store.list("parts").await?.len();
            if done >= n {
                continue;
            }
            bail!("every worker stopped with {} of {n} shards unfinished: {e}", n - done);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            _ = &mut ctrl_c => bail!("interrupted with {done} of {n} shards finished"),
        }
    }
}
