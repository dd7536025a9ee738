//! The compiled component, shared through the store so that a worker on
//! another machine (a fresh pod) does not compile it again.
//!
//! The orchestrator has compiled the component to plan the run; it stores the
//! machine code as `artifacts/<tag>.cwasm` in the run's folder (`<tag>`: the
//! engine's compatibility hash, see [`Runtime::artifact_tag`]) beside
//! `artifacts/<tag>.mac`, an HMAC-SHA256 of it under a key made for this
//! orchestrator and handed to its workers only through their environment
//! (`ENGINE_ARTIFACT_KEY`, from the run's Kubernetes Secret). Machine code
//! runs when loaded, so a worker loads it only when the keyed hash matches;
//! otherwise (no key, another engine build, a tampered store) it compiles.

use crate::runtime::{Plugin, Runtime};
use crate::store::RunStore;
use anyhow::{Context, Result};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::sync::Arc;

/// The environment variable holding the key, in hex.
pub const KEY_ENV: &str = "ENGINE_ARTIFACT_KEY";

/// The key in `ENGINE_ARTIFACT_KEY` (64 hex digits), if set: an operator's
/// fixed key, else a worker's from its orchestrator.
pub fn key_from_env() -> Option<String> {
    std::env::var(KEY_ENV)
        .ok()
        .map(|k| k.trim().to_owned())
        .filter(|k| k.len() == 64 && hex::decode(k).is_ok())
}

/// A fresh random key, in hex.
pub fn new_key() -> Result<String> {
    let mut key = [0u8; 32];
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut key))
        .context("cannot read random bytes for the artifact key")?;
    Ok(hex::encode(key))
}

fn mac(key: &[u8], component_sha256: &str, tag: &str, artifact: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(component_sha256.as_bytes());
    mac.update(b"\0");
    mac.update(tag.as_bytes());
    mac.update(b"\0");
    mac.update(artifact);
    hex::encode(mac.finalize().into_bytes())
}

/// Store `plugin`'s machine code in the run's folder, keyed by `key` (hex).
pub async fn share(runtime: &Runtime, plugin: &Plugin, store: &RunStore, key: &str) -> Result<()> {
    let key = hex::decode(key).context("the artifact key is not hex")?;
    let tag = runtime.artifact_tag();
    let artifact = tokio::task::block_in_place(|| runtime.precompiled(plugin))?;
    let mac = mac(&key, &plugin.sha256, &tag, &artifact);
    store
        .put(&format!("artifacts/{tag}.cwasm"), artifact)
        .await?;
    store.put(&format!("artifacts/{tag}.mac"), mac).await?;
    Ok(())
}

/// How a worker got its plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loaded {
    /// From the machine code in the store.
    Precompiled,
    /// Compiled here (or from this machine's compile cache).
    Compiled,
}

/// The run's component `bytes` (sha256 `sha256`), from the shared machine
/// code when the key in `ENGINE_ARTIFACT_KEY` proves it, else compiled.
pub async fn load(
    runtime: &Runtime,
    store: &RunStore,
    bytes: &[u8],
    sha256: &str,
    origin: &str,
) -> Result<(Arc<Plugin>, Loaded)> {
    if let Some(key) = std::env::var(KEY_ENV)
        .ok()
        .and_then(|k| hex::decode(k.trim()).ok())
    {
        let tag = runtime.artifact_tag();
        let artifact = store.get(&format!("artifacts/{tag}.cwasm")).await?;
        let stored_mac = store.get(&format!("artifacts/{tag}.mac")).await?;
        match (artifact, stored_mac) {
            (Some(artifact), Some(stored_mac)) => {
                if mac(&key, sha256, &tag, &artifact).as_bytes() == stored_mac.as_ref() {
                    // SAFETY: the artifact's keyed hash matches under the key
                    // the orchestrator gave this worker: it is the machine code
                    // that orchestrator's engine made of this very component.
                    match unsafe { runtime.load_precompiled(bytes, &artifact, origin) } {
                        Ok(plugin) => return Ok((plugin, Loaded::Precompiled)),
                        Err(e) => tracing::warn!("{e:#}: compiling it"),
                    }
                } else {
                    tracing::warn!(
                        "the precompiled `{origin}` in the store fails its integrity check: compiling it"
                    );
                }
            }
            _ => tracing::debug!(tag = %tag, "no precompiled artifact for this engine: compiling"),
        }
    }
    let plugin = tokio::task::block_in_place(|| runtime.load_bytes(bytes, origin))?;
    Ok((plugin, Loaded::Compiled))
}
