//! The worker loop: claim a shard, run it in a fresh sandbox (retrying as
//! configured), store its part. The same loop runs in a thread, an
//! `engine worker` process or a pod.

use super::RunSpec;
use super::queue::Queue;
use crate::runtime::{Plugin, Runtime, Sandbox, Shard};
use crate::store::{RunStore, shard_name};
use anyhow::Result;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Everything a worker needs.
pub struct WorkerCtx {
    pub runtime: Arc<Runtime>,
    pub plugin: Arc<Plugin>,
    pub spec: Arc<RunSpec>,
    pub shards: Arc<Vec<Shard>>,
    pub store: RunStore,
    pub worker_id: String,
    /// Set to stop after the current shard.
    pub stop: Arc<AtomicBool>,
    pub handle: tokio::runtime::Handle,
}

/// Run shards until none is left to claim (or `stop` is set). Returns how many
/// shards this worker ran.
pub fn work(ctx: &WorkerCtx) -> Result<u64> {
    let queue = Queue::new(ctx.store.clone(), ctx.shards.len(), &ctx.worker_id);
    let args = serde_json::Value::Object(ctx.spec.args.clone()).to_string();
    let mut ran = 0;
    let mut cursor = 0;
    while !ctx.stop.load(Ordering::Relaxed) {
        let Some(i) = ctx.handle.block_on(queue.claim_next(&mut cursor))? else { break };
        let shard = &ctx.shards[i];
        let sandbox = sandbox_for(&ctx.spec, i);
        let mut attempt = 0;
        let output = loop {
            let output = ctx.runtime.run(&ctx.plugin, &ctx.spec.function, &args, shard, &sandbox);
            match &output.failure {
                Some(f) if attempt < ctx.spec.limits.retries => {
                    attempt += 1;
                    tracing::info!(shard = i, attempt, "retrying after {f}");
                }
                _ => break output,
            }
        };
        let name = shard_name(i);
        ctx.handle.block_on(async {
            if !output.log.is_empty() {
                ctx.store.put(&format!("log/{name}.log"), output.log).await?;
            }
            for (out_name, bytes) in output.outputs {
                ctx.store.put(&format!("outputs/{name}/{out_name}"), bytes).await?;
            }
            if let Some(f) = &output.failure {
                ctx.store.put(&format!("failed/{name}"), f.to_string()).await?;
            }
            queue.complete(i, output.part).await
        })?;
        ran += 1;
    }
    Ok(ran)
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
