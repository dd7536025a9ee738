//! Compiled components on disk, keyed by the component's sha256 and the
//! engine's compatibility hash, so a second run skips compilation.
//!
//! Loading a compiled artifact runs its machine code, so the cache is
//! trusted only as far as it is ours: a directory owned by this user with
//! mode 0700, and each artifact beside a keyed hash (HMAC-SHA256, with a key
//! kept in that directory) written when it was compiled. An artifact whose
//! hash does not match is compiled again, never executed.

use anyhow::{Context, Result, bail};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use wasmtime::Engine;
use wasmtime::component::Component;

/// `$ENGINE_CACHE_DIR`, else `$XDG_CACHE_HOME/engine`, else `~/.cache/engine`.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("ENGINE_CACHE_DIR") {
        return Some(dir.into());
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(dir).join("engine"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("engine"))
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

pub(super) fn engine_hash(engine: &Engine) -> u64 {
    // SipHash with fixed keys: stable across processes of the same build.
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    h.finish()
}

/// Compile `bytes`, or load the artifact a previous run cached.
pub fn compile(
    engine: &Engine,
    dir: Option<&Path>,
    sha256: &str,
    bytes: &[u8],
) -> Result<Component> {
    let Some(dir) = dir else {
        return Ok(Component::new(engine, bytes)?);
    };
    let key = match private_dir(dir).and_then(|()| cache_key(dir)) {
        Ok(key) => key,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), "not using the compile cache: {e:#}");
            return Ok(Component::new(engine, bytes)?);
        }
    };
    let path = dir.join(format!("{sha256}-{:016x}.cwasm", engine_hash(engine)));
    let mac_path = path.with_extension("cwasm.mac");
    if let (Ok(artifact), Ok(mac)) = (std::fs::read(&path), std::fs::read_to_string(&mac_path)) {
        if keyed_hash(&key, &artifact) == mac.trim() {
            // SAFETY: the artifact was written by `serialize` below into a
            // directory only this user can write, and its keyed hash matches
            // what was computed when it was written.
            match unsafe { Component::deserialize(engine, &artifact) } {
                Ok(c) => {
                    tracing::debug!(path = %path.display(), "component cache hit");
                    return Ok(c);
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), "ignoring unreadable cached component: {e}")
                }
            }
        } else {
            tracing::warn!(path = %path.display(), "cached component failed its integrity check: compiling it again");
        }
    }
    let component = Component::new(engine, bytes)?;
    let artifact = component.serialize()?;
    let stored = store(&path, &artifact)
        .and_then(|()| store(&mac_path, keyed_hash(&key, &artifact).as_bytes()));
    if let Err(e) = stored {
        tracing::warn!(path = %path.display(), "cannot cache the compiled component: {e}");
    }
    Ok(component)
}

/// Make `dir` (mode 0700) if needed and check that it is ours alone.
fn private_dir(dir: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create `{}`", dir.display()))?;
    let meta = std::fs::symlink_metadata(dir)?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if !meta.is_dir() || meta.uid() != me {
        bail!("`{}` is not a directory owned by this user", dir.display());
    }
    if meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).with_context(
            || {
                format!(
                    "`{}` is open to other users and cannot be made private",
                    dir.display()
                )
            },
        )?;
    }
    Ok(())
}

/// The cache's key: 32 random bytes in `dir/key` (mode 0600), made once.
fn cache_key(dir: &Path) -> Result<Vec<u8>> {
    let path = dir.join("key");
    if let Ok(key) = std::fs::read(&path)
        && key.len() == 32
    {
        return Ok(key);
    }
    let mut key = vec![0u8; 32];
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut key))
        .context("cannot read random bytes for the cache key")?;
    let tmp = dir.join(format!("key.tmp{}", std::process::id()));
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&key)?;
    }
    // Two processes may race: the first rename wins and both read it back.
    if std::fs::hard_link(&tmp, &path).is_err() {
        let _ = std::fs::remove_file(&tmp);
        let key = std::fs::read(&path)?;
        if key.len() != 32 {
            bail!("`{}` is not a cache key", path.display());
        }
        return Ok(key);
    }
    let _ = std::fs::remove_file(&tmp);
    Ok(key)
}

fn keyed_hash(key: &[u8], bytes: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(bytes);
    hex::encode(mac.finalize().into_bytes())
}

fn store(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tampered_artifact_is_compiled_again_not_run() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let engine = Engine::default();
        // The empty component, in binary: enough to exercise the cache.
        let bytes = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];
        let sha = sha256_hex(&bytes);
        compile(&engine, Some(&cache), &sha, &bytes).unwrap();
        let mode = std::fs::metadata(&cache).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let artifact = std::fs::read_dir(&cache)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "cwasm"))
            .unwrap();
        let good = std::fs::read(&artifact).unwrap();
        let mut bad = good.clone();
        let n = bad.len();
        bad[n / 2] ^= 0xff;
        std::fs::write(&artifact, &bad).unwrap();
        compile(&engine, Some(&cache), &sha, &bytes).unwrap();
        // Recompiled and rewritten: the artifact is whole again.
        assert_eq!(std::fs::read(&artifact).unwrap(), good);
        // A cache open to others is made private before use.
        std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777)).unwrap();
        compile(&engine, Some(&cache), &sha, &bytes).unwrap();
        assert_eq!(std::fs::metadata(&cache).unwrap().mode() & 0o777, 0o700);
    }
}
