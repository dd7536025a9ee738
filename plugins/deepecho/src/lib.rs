//! DeepEcho's `run_benchmark` as an engine plugin: `deepecho.benchmark.run_benchmark`.
//!
//! One shard per (model × dataset); each shard loads the dataset, fits the model, samples
//! one synthetic sequence per real entity's context and computes the metrics. See README.md.

// Unit tests build the numeric code with `F = f64`, where `f64::from(F)` is a no-op.
#![cfg_attr(test, allow(clippy::useless_conversion))]

use guest_sdk::{
    Call, Cell, Error, Function, Param, Plugin, Result, Row, Shard, Shards, Table, bail,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::Instant;

pub mod data;
pub mod metrics;
pub mod models;
pub mod rng;

use models::{MODEL_NAMES, ModelParams};
use rng::{Rng, derive};

pub const FUNCTION: &str = "deepecho.benchmark.run_benchmark";

pub struct DeepEcho;

/// What one shard runs (the shard payload, JSON).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Job {
    pub model: String,
    pub params: ModelParams,
    pub dataset: String,
    pub metrics: Vec<String>,
    pub seed: u64,
    pub max_entities: Option<usize>,
    pub save_samples: bool,
}

fn levenshtein(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.to_lowercase().chars().collect();
    let b: Vec<char> = b.to_lowercase().chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut cur = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let sub = prev[j - 1] + usize::from(a[i - 1] != b[j - 1]);
            cur[j] = sub.min(prev[j] + 1).min(cur[j - 1] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

fn unknown(what: &str, name: &str, valid: &[String]) -> Error {
    let best = valid.iter().min_by_key(|v| levenshtein(name, v));
    let hint = match best {
        Some(b) if levenshtein(name, b) <= (b.len() / 2).max(2) => {
            format!(" (did you mean `{b}`?)")
        }
        _ => String::new(),
    };
    Error::new(format!(
        "unknown {what} `{name}`{hint}; valid {what}s: {}",
        valid.join(", ")
    ))
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

fn parse_models(v: &Value, epochs: Option<usize>) -> Result<Vec<(String, ModelParams)>> {
    let valid = strings(MODEL_NAMES);
    let check = |name: &str| -> Result<()> {
        if MODEL_NAMES.contains(&name) {
            Ok(())
        } else {
            Err(unknown("model", name, &valid))
        }
    };
    let mut out: Vec<(String, ModelParams)> = match v {
        Value::Null => MODEL_NAMES
            .iter()
            .map(|m| ((*m).to_owned(), ModelParams::default()))
            .collect(),
        Value::Array(items) => {
            let mut out = Vec::new();
            for it in items {
                let Some(name) = it.as_str() else {
                    bail!("argument `models`: expected model names, got {it}")
                };
                check(name)?;
                out.push((name.to_owned(), ModelParams::default()));
            }
            out
        }
        Value::Object(map) => {
            let mut out = Vec::new();
            for (name, params) in map {
                check(name)?;
                let params = match params {
                    Value::Null => serde_json::Map::new(),
                    Value::Object(p) => p.clone(),
                    other => bail!(
                        "argument `models`: parameters of `{name}` must be a table, got {other}"
                    ),
                };
                let accepted = models::accepted_params(name);
                for k in params.keys() {
                    if !accepted.contains(&k.as_str()) {
                        let list = if accepted.is_empty() {
                            "none".to_owned()
                        } else {
                            accepted.join(", ")
                        };
                        bail!("model `{name}` has no parameter `{k}`; its parameters: {list}");
                    }
                }
                let p: ModelParams = serde_json::from_value(Value::Object(params))
                    .map_err(|e| Error::new(format!("parameters of model `{name}`: {e}")))?;
                if p.sample_size == Some(0) {
                    bail!("model `{name}`: sample_size must be at least 1");
                }
                out.push((name.clone(), p));
            }
            // JSON tables carry no order: run models in the canonical order.
            out.sort_by_key(|(n, _)| MODEL_NAMES.iter().position(|m| m == n));
            out
        }
        other => bail!(
            "argument `models`: expected a list of names or a table of name → parameters, got {other}"
        ),
    };
    if let Some(e) = epochs {
        for (name, p) in &mut out {
            if models::accepted_params(name).contains(&"epochs") {
                p.epochs = Some(e);
            }
        }
    }
    Ok(out)
}

fn parse_datasets(v: &Value) -> Result<Vec<String>> {
    let dir = guest_sdk::data_dir();
    let list = data::list_datasets(&dir)?;
    let names: Vec<String> = list.iter().map(|d| d.name.clone()).collect();
    match v {
        Value::Null => Ok(names),
        Value::Number(n) => {
            let Some(n) = n.as_u64() else {
                bail!("argument `datasets`: expected a non-negative count, got {n}")
            };
            let n = usize::try_from(n).unwrap_or(usize::MAX);
            if n > names.len() {
                guest_sdk::warn!(
                    "datasets = {n}, but only {} datasets exist; using all of them",
                    names.len()
                );
            }
            Ok(names.into_iter().take(n).collect())
        }
        Value::Array(items) => {
            let mut out = Vec::new();
            for it in items {
                let Some(name) = it.as_str() else {
                    bail!("argument `datasets`: expected dataset names, got {it}")
                };
                let on_disk = !name.contains(['/', '\\'])
                    && !name.starts_with('.')
                    && dir.join(name).join(format!("{name}.csv")).is_file();
                if !names.iter().any(|n| n == name) && !on_disk {
                    return Err(unknown("dataset", name, &names));
                }
                out.push(name.to_owned());
            }
            Ok(out)
        }
        other => bail!("argument `datasets`: expected a count or a list of names, got {other}"),
    }
}

fn parse_metrics(v: &Value) -> Result<Vec<String>> {
    let valid = strings(metrics::METRIC_NAMES);
    let mut out = match v {
        Value::Null => valid.clone(),
        Value::Array(items) => {
            let mut out = Vec::new();
            for it in items {
                let Some(name) = it.as_str() else {
                    bail!("argument `metrics`: expected metric names, got {it}")
                };
                if !valid.iter().any(|m| m == name) {
                    return Err(unknown("metric", name, &valid));
                }
                if !out.iter().any(|m: &String| m == name) {
                    out.push(name.to_owned());
                }
            }
            out
        }
        other => bail!("argument `metrics`: expected a list of names, got {other}"),
    };
    out.sort();
    Ok(out)
}

fn opt_usize(call: &Call, name: &str) -> Result<Option<usize>> {
    let v: Option<i64> = call.arg(name)?;
    match v {
        Some(x) if x < 0 => bail!("argument `{name}` must be non-negative, got {x}"),
        Some(x) => Ok(Some(usize::try_from(x).unwrap_or(usize::MAX))),
        None => Ok(None),
    }
}

/// Resolve a call's arguments into one job per (model × dataset), models outermost.
pub fn jobs(call: &Call) -> Result<Vec<Job>> {
    let epochs = opt_usize(call, "epochs")?;
    let models = parse_models(&call.arg::<Value>("models")?, epochs)?;
    let datasets = parse_datasets(&call.arg::<Value>("datasets")?)?;
    let metrics = parse_metrics(&call.arg::<Value>("metrics")?)?;
    let seed: Option<i64> = call.arg("seed")?;
    let max_entities = opt_usize(call, "max_entities")?;
    if max_entities == Some(0) {
        bail!("argument `max_entities` must be at least 1");
    }
    let save_samples: Option<bool> = call.arg("save_samples")?;
    let mut out = Vec::new();
    for (model, params) in &models {
        for dataset in &datasets {
            out.push(Job {
                model: model.clone(),
                params: params.clone(),
                dataset: dataset.clone(),
                metrics: metrics.clone(),
                seed: seed.unwrap_or(0) as u64,
                max_entities,
                save_samples: save_samples.unwrap_or(false),
            });
        }
    }
    Ok(out)
}

/// Run one job and return its row.
pub fn run_job(job: &Job) -> Result<Row> {
    let dir = guest_sdk::data_dir();
    let mut ds = data::load_dataset(&dir, &job.dataset)?;
    if let Some(m) = job.max_entities
        && ds.seqs.len() > m
    {
        // The same entities for every model (the seed depends on the dataset only).
        let mut rng = Rng::new(derive(job.seed, &format!("entities/{}", job.dataset)));
        let mut idx: Vec<usize> = (0..ds.seqs.len()).collect();
        rng.shuffle(&mut idx);
        idx.truncate(m);
        idx.sort_unstable();
        ds.seqs = idx.into_iter().map(|i| ds.seqs[i].clone()).collect();
    }
    let total = 2 + job.metrics.len() as u64;
    guest_sdk::progress(0, total);
    let mut model = models::build(&job.model, &job.params)?;
    let mut rng = Rng::new(derive(
        job.seed,
        &format!("model/{}/{}", job.model, job.dataset),
    ));
    let t = Instant::now();
    model
        .fit(&ds, &mut rng)
        .map_err(|e| Error::new(format!("{} fit on {}: {e}", job.model, job.dataset)))?;
    let fit_time = t.elapsed().as_secs_f64();
    guest_sdk::progress(1, total);
    let t = Instant::now();
    let synth = model
        .sample(&ds, &ds.seqs, &mut rng)
        .map_err(|e| Error::new(format!("{} sample on {}: {e}", job.model, job.dataset)))?;
    let sample_time = t.elapsed().as_secs_f64();
    guest_sdk::progress(2, total);
    guest_sdk::info!(
        "{} on {}: fit {fit_time:.2} s, sample {sample_time:.2} s",
        job.model,
        job.dataset
    );
    if job.save_samples {
        guest_sdk::emit(
            &format!("samples/{}/{}.csv", job.model, job.dataset),
            data::to_csv(&ds, &synth).as_bytes(),
        )?;
    }
    let mut cells: Vec<(String, Cell)> = Vec::new();
    let mut errors = Vec::new();
    for (k, metric) in job.metrics.iter().enumerate() {
        let mut rng = Rng::new(derive(
            job.seed,
            &format!("metric/{metric}/{}", job.dataset),
        ));
        let t = Instant::now();
        let score = metrics::compute(metric, &ds, &ds.seqs, &synth, &mut rng);
        let elapsed = t.elapsed().as_secs_f64();
        match score {
            Ok(s) if s.is_finite() => cells.push((metric.clone(), Cell::Float(s))),
            Ok(s) => {
                errors.push(format!("{metric}: not finite ({s})"));
                cells.push((metric.clone(), Cell::Null));
            }
            Err(e) => {
                errors.push(format!("{metric}: {e}"));
                cells.push((metric.clone(), Cell::Null));
            }
        }
        cells.push((format!("{metric}_time"), Cell::Float(elapsed)));
        guest_sdk::progress(3 + k as u64, total);
    }
    // `job.metrics` is sorted: each metric, then its time, in metric-name order.
    let mut row = Row::new()
        .set("model", job.model.as_str())
        .set("dataset", job.dataset.as_str())
        .set("fit_time", fit_time)
        .set("sample_time", sample_time);
    for (c, v) in cells {
        row = row.set(&c, v);
    }
    // Not `error`: that column is the engine's, and says the whole shard failed.
    Ok(row.set("metric_errors", errors.join("; ")))
}

impl Plugin for DeepEcho {
    fn describe() -> Vec<Function> {
        vec![
            Function::new(
                FUNCTION,
                "DeepEcho's run_benchmark: fit each model on each dataset, sample one synthetic \
                 sequence per entity, score it. One shard per (model × dataset).",
            )
            .param(
                Param::new(
                    "models",
                    "list<string> | map<map> | null",
                    "Model names, or a table name → parameters (e.g. { PARModel = { epochs = 256 } }). \
                     Models: RealDataBaseline, UniformBaseline, PARModel (epochs, sample_size), \
                     BasicGANModel (epochs, latent_size, hidden_size, gen_lr, dis_lr). null: all.",
                )
                .default(Value::Null),
            )
            .param(
                Param::new(
                    "datasets",
                    "int | list<string> | null",
                    "The N smallest datasets of datasets.csv, or a list of names. null: all.",
                )
                .default(Value::Null),
            )
            .param(
                Param::new(
                    "metrics",
                    "list<string> | null",
                    "Metric names (classification_score, classification_score_real, \
                     lstm_detection_score, rf_detection_score, sdmetrics_score). null: all.",
                )
                .default(Value::Null),
            )
            .param(
                Param::new("max_entities", "int | null", "Use a random sample of at most this many entities.")
                    .default(Value::Null),
            )
            .param(Param::new("epochs", "int | null", "Override every model's `epochs`.").default(Value::Null))
            .param(Param::new("seed", "int", "Seed all randomness derives from.").default(0))
            .param(
                Param::new(
                    "save_samples",
                    "bool",
                    "Emit each shard's synthetic sequences as samples/<model>/<dataset>.csv.",
                )
                .default(false),
            ),
        ]
    }

    fn plan(call: &Call) -> Result<Shards> {
        if call.function() != FUNCTION {
            bail!("unknown function `{}`", call.function());
        }
        jobs(call)?
            .into_iter()
            .map(|j| {
                // `run_job` reads `<data>/<dataset>/` and nothing else: the
                // shard's sandbox mounts only that folder.
                Ok(Shard::new()
                    .key("model", j.model.as_str())
                    .key("dataset", j.dataset.as_str())
                    .payload(&j)?
                    .reads([j.dataset.as_str()]))
            })
            .collect()
    }

    fn run(_function: &str, shard: &Shard, out: &mut Table) -> Result<()> {
        let job: Job = shard.get()?;
        out.push(run_job(&job)?)
    }

    /// PARModel's helper: the second part of its training batch (`models::par::serve`).
    fn serve(request: &[u8]) -> Result<Vec<u8>> {
        models::par::serve(request)
    }
}

#[cfg(feature = "plugin")]
guest_sdk::export!(DeepEcho);
