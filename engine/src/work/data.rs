//! A run's data (`run.data`) by content: a tree of hashed files that workers
//! fetch from the store, never a host path.
//!
//! In the store, beside the runs (`data/`, or `tenants/<tenant>/data/`):
//!
//! | object                | what                                            |
//! |-----------------------|-------------------------------------------------|
//! | `blobs/<sha256>`      | one file's bytes, named by their sha256         |
//! | `trees/<id>.json`     | the tree: every file's path, sha256 and size    |
//!
//! The tree's id is the sha256 of its `trees/<id>.json`, so a run's identity
//! holds the data's content, and the same files are stored once however many
//! runs use them. A worker downloads a tree once per machine into
//! `<cache>/data/<id>/`, checking every hash, and mounts it read-only.

use crate::store::{Location, RunStore};
use anyhow::{Context, Result, bail};
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Component, Path, PathBuf};
use tokio::io::AsyncWriteExt;

/// At most this many files in one tree (a tampered tree cannot ask for more).
const MAX_FILES: usize = 1_000_000;
/// Blobs moved at once.
const CONCURRENCY: usize = 8;

/// Where fetched trees are kept: the compile cache's folder
/// (`ENGINE_CACHE_DIR`, ...), else the system's temporary folder.
pub fn cache_root() -> PathBuf {
    crate::runtime::cache_dir().unwrap_or_else(|| std::env::temp_dir().join("engine-cache"))
}

/// One file of a tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Relative, `/`-separated.
    pub path: String,
    pub sha256: String,
    pub size: u64,
}

/// The files of a data directory, by content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tree {
    pub format: u32,
    pub files: Vec<Entry>,
}

impl Tree {
    /// The tree as stored: its id is the sha256 of these bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a tree serializes")
    }

    pub fn id(&self) -> String {
        hex::encode(Sha256::digest(self.to_bytes()))
    }

    pub fn size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

/// The data of a run on this machine: where it is, and what it holds.
#[derive(Debug, Clone)]
pub struct LocalData {
    pub dir: PathBuf,
    pub tree: Tree,
    pub id: String,
}

/// `data/` of `base` (under `tenants/<tenant>/` for a tenant).
fn data_root(base: &Location, tenant: Option<&str>) -> RunStore {
    let rel = match tenant {
        Some(t) => format!("tenants/{t}/data"),
        None => "data".to_owned(),
    };
    RunStore {
        root: base.child(&rel),
    }
}

/// Hash every regular file below `dir`. A symbolic link is followed only
/// when it stays inside `dir`, as the guest's mount would: one pointing out
/// (at another tenant's files, say) is left out, with a warning.
pub fn hash_dir(dir: &Path) -> Result<LocalData> {
    let mut files = Vec::new();
    let inside =
        std::fs::canonicalize(dir).with_context(|| format!("cannot read `{}`", dir.display()))?;
    walk(
        &Walk {
            root: dir,
            inside: &inside,
        },
        dir,
        0,
        &mut files,
    )?;
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let tree = Tree { format: 1, files };
    Ok(LocalData {
        dir: dir.to_owned(),
        id: tree.id(),
        tree,
    })
}

struct Walk<'a> {
    root: &'a Path,
    /// `root`, canonical: where links may point.
    inside: &'a Path,
}

fn walk(w: &Walk, dir: &Path, depth: usize, out: &mut Vec<Entry>) -> Result<()> {
    let root = w.root;
    if depth > 64 {
        bail!(
            "the data directory `{}` nests deeper than 64 folders (a symbolic link loop?)",
            root.display()
        );
    }
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot list `{}`", dir.display()))?;
    for entry in entries {
        let path = entry?.path();
        if std::fs::symlink_metadata(&path)?.is_symlink() {
            let target = std::fs::canonicalize(&path).ok();
            if !target.is_some_and(|t| t.starts_with(w.inside)) {
                tracing::warn!(
                    "`{}` is a symbolic link out of the data directory (or a broken one): not part of the data",
                    path.display()
                );
                continue;
            }
        }
        let meta = std::fs::metadata(&path)
            .with_context(|| format!("cannot read `{}`", path.display()))?;
        if meta.is_dir() {
            walk(w, &path, depth + 1, out)?;
        } else if meta.is_file() {
            let rel = path.strip_prefix(root)?;
            let rel = rel
                .to_str()
                .with_context(|| format!("`{}`: data file names must be UTF-8", path.display()))?
                .to_owned();
            let (sha256, size) = hash_file(&path)?;
            out.push(Entry {
                path: rel,
                sha256,
                size,
            });
            if out.len() > MAX_FILES {
                bail!(
                    "the data directory `{}` holds more than {MAX_FILES} files",
                    root.display()
                );
            }
        }
    }
    Ok(())
}

fn hash_file(path: &Path) -> Result<(String, u64)> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot read `{}`", path.display()))?;
    let mut hasher = Sha256::new();
    let size = std::io::copy(&mut file, &mut hasher)
        .with_context(|| format!("cannot read `{}`", path.display()))?;
    Ok((hex::encode(hasher.finalize()), size))
}

/// Copy `local` into the store by content: the blobs not there yet, then the
/// tree. Returns how many bytes were uploaded.
pub async fn publish(base: &Location, tenant: Option<&str>, local: &LocalData) -> Result<u64> {
    let root = data_root(base, tenant);
    let tree_key = format!("trees/{}.json", local.id);
    if root.exists(&tree_key).await? {
        return Ok(0);
    }
    let mut blobs: Vec<&Entry> = local.tree.files.iter().collect();
    blobs.sort_by(|a, b| a.sha256.cmp(&b.sha256));
    blobs.dedup_by(|a, b| a.sha256 == b.sha256);
    let mut uploads = futures::stream::iter(blobs.into_iter().map(|entry| {
        let root = root.clone();
        let file = local.dir.join(&entry.path);
        async move {
            let key = format!("blobs/{}", entry.sha256);
            if root.exists(&key).await? {
                return Ok(0);
            }
            upload(&root, &key, &file).await?;
            Ok::<u64, anyhow::Error>(entry.size)
        }
    }))
    .buffer_unordered(CONCURRENCY);
    let mut sent = 0;
    while let Some(n) = uploads.next().await {
        sent += n?;
    }
    // The tree last: a tree in the store means all its blobs are there.
    root.put(&tree_key, local.tree.to_bytes()).await?;
    Ok(sent)
}

async fn upload(root: &RunStore, key: &str, file: &Path) -> Result<()> {
    let target = root.root.child(key);
    let mut reader = tokio::fs::File::open(file)
        .await
        .with_context(|| format!("cannot read `{}`", file.display()))?;
    let mut writer = object_store::buffered::BufWriter::new(target.store.clone(), target.path);
    tokio::io::copy(&mut reader, &mut writer)
        .await
        .with_context(|| format!("cannot upload `{}` to `{}`", file.display(), target.display))?;
    writer
        .shutdown()
        .await
        .with_context(|| format!("cannot upload `{}` to `{}`", file.display(), target.display))?;
    Ok(())
}

/// The tree `id` on this machine: from `<cache>/data/<id>/` if an earlier
/// fetch left it there, else downloaded from the store, every file checked
/// against its hash. `what` names the run in messages.
pub async fn fetch(
    base: &Location,
    tenant: Option<&str>,
    id: &str,
    cache: &Path,
    what: &str,
) -> Result<LocalData> {
    if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("{what}: `{id}` is not a data tree id (a sha256): the store was modified");
    }
    let root = data_root(base, tenant);
    let bytes = root
        .get(&format!("trees/{id}.json"))
        .await?
        .with_context(|| {
            format!(
                "{what} reads data tree {id}, which is not in the store `{}`",
                root.root.display
            )
        })?;
    if hex::encode(Sha256::digest(&bytes)) != id {
        bail!(
            "{what}: the stored data tree {id} does not hash to its name: the store was modified"
        );
    }
    let tree: Tree = serde_json::from_slice(&bytes)
        .with_context(|| format!("{what}: the stored data tree {id} is not a tree"))?;
    check_tree(&tree).with_context(|| format!("{what}: the stored data tree {id} is refused"))?;
    let dirs = cache.join("data");
    let dir = dirs.join(id);
    if dir.is_dir() {
        return Ok(LocalData {
            dir,
            tree,
            id: id.to_owned(),
        });
    }
    tokio::fs::create_dir_all(&dirs)
        .await
        .with_context(|| format!("cannot create `{}`", dirs.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{id}-"))
        .tempdir_in(&dirs)
        .with_context(|| format!("cannot create a folder in `{}`", dirs.display()))?;
    let mut downloads = futures::stream::iter(tree.files.iter().map(|entry| {
        let root = root.clone();
        let file = tmp.path().join(&entry.path);
        async move { download(&root, entry, &file).await }
    }))
    .buffer_unordered(CONCURRENCY);
    while let Some(done) = downloads.next().await {
        done.with_context(|| format!("{what}: cannot fetch data tree {id}"))?;
    }
    drop(downloads);
    let tmp = tmp.keep();
    match std::fs::rename(&tmp, &dir) {
        Ok(()) => {}
        // Another worker on this machine finished the same tree first.
        Err(_) if dir.is_dir() => {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e).with_context(|| format!("cannot create `{}`", dir.display()));
        }
    }
    tracing::info!(tree = %id, files = tree.files.len(), bytes = tree.size(), "data fetched");
    Ok(LocalData {
        dir,
        tree,
        id: id.to_owned(),
    })
}

/// Paths a tree may hold: relative, plain names, each at most once.
fn check_tree(tree: &Tree) -> Result<()> {
    if tree.files.len() > MAX_FILES {
        bail!("it lists {} files (at most {MAX_FILES})", tree.files.len());
    }
    let mut seen = std::collections::BTreeSet::new();
    for f in &tree.files {
        let path = Path::new(&f.path);
        let plain = !f.path.is_empty()
            && f.path.len() <= 4096
            && !f.path.contains('\0')
            && path.components().all(|c| matches!(c, Component::Normal(_)));
        if !plain {
            bail!("`{}` is not a relative path of plain names", f.path);
        }
        if f.sha256.len() != 64 || !f.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("`{}` has no sha256", f.path);
        }
        if !seen.insert(f.path.as_str()) {
            bail!("`{}` is listed twice", f.path);
        }
    }
    Ok(())
}

async fn download(root: &RunStore, entry: &Entry, file: &Path) -> Result<()> {
    let source = root.root.child(&format!("blobs/{}", entry.sha256));
    let (sha256, size) = save(&source, file, entry.size)
        .await
        .with_context(|| format!("for `{}`", entry.path))?;
    if size != entry.size || sha256 != entry.sha256 {
        bail!(
            "the stored bytes of `{}` do not match the size and sha256 its tree gives: the store was modified",
            entry.path
        );
    }
    Ok(())
}

/// Write the object at `source` to `file` (its folder made), hashing it as
/// it streams: its sha256 and size. Stops reading past `limit` bytes (a size
/// past it means a changed object).
async fn save(source: &Location, file: &Path, limit: u64) -> Result<(String, u64)> {
    if let Some(parent) = file.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .with_context(|| format!("cannot create `{}`", parent.display()))?;
    }
    let mut stream = source
        .store
        .get(&source.path)
        .await
        .with_context(|| format!("cannot read `{}`", source.display))?
        .into_stream();
    let mut out = tokio::fs::File::create(file)
        .await
        .with_context(|| format!("cannot write `{}`", file.display()))?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    while let Some(chunk) = stream
        .try_next()
        .await
        .with_context(|| format!("cannot read `{}`", source.display))?
    {
        size += chunk.len() as u64;
        if size > limit {
            break;
        }
        hasher.update(&chunk);
        out.write_all(&chunk)
            .await
            .with_context(|| format!("cannot write `{}`", file.display()))?;
    }
    out.flush().await?;
    Ok((hex::encode(hasher.finalize()), size))
}

/// Download every object below `url` into `<cache>/data/<id>/` and hash it:
/// `run.data` given as an object-store URL.
pub async fn materialize(url: &Location, cache: &Path) -> Result<LocalData> {
    let prefix = url.path.clone();
    let objects: Vec<object_store::ObjectMeta> = url
        .store
        .list(Some(&prefix))
        .try_collect()
        .await
        .with_context(|| format!("cannot list `{}`", url.display))?;
    if objects.is_empty() {
        bail!("`{}` holds no objects", url.display);
    }
    let dirs = cache.join("data");
    tokio::fs::create_dir_all(&dirs)
        .await
        .with_context(|| format!("cannot create `{}`", dirs.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(".download-")
        .tempdir_in(&dirs)
        .with_context(|| format!("cannot create a folder in `{}`", dirs.display()))?;
    let strip = format!("{prefix}/");
    let mut downloads = futures::stream::iter(objects.into_iter().map(|meta| {
        let rel = match prefix.as_ref() {
            "" => meta.location.as_ref().to_owned(),
            _ => meta
                .location
                .as_ref()
                .strip_prefix(&strip)
                .unwrap_or(meta.location.as_ref())
                .to_owned(),
        };
        let file = tmp.path().join(&rel);
        let source = Location {
            store: url.store.clone(),
            path: meta.location,
            display: format!("{}/{rel}", url.display.trim_end_matches('/')),
        };
        async move {
            if !Path::new(&rel)
                .components()
                .all(|c| matches!(c, Component::Normal(_)))
            {
                bail!("`{rel}` is not a plain relative object name");
            }
            save(&source, &file, u64::MAX).await?;
            Ok::<(), anyhow::Error>(())
        }
    }))
    .buffer_unordered(CONCURRENCY);
    while let Some(done) = downloads.next().await {
        done.with_context(|| format!("cannot download `{}`", url.display))?;
    }
    drop(downloads);
    let hashed = {
        let path = tmp.path().to_owned();
        tokio::task::spawn_blocking(move || hash_dir(&path)).await??
    };
    let dir = dirs.join(&hashed.id);
    let tmp = tmp.keep();
    if dir.is_dir() || std::fs::rename(&tmp, &dir).is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    if !dir.is_dir() {
        bail!("cannot create `{}`", dir.display());
    }
    Ok(LocalData { dir, ..hashed })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_tree_round_trips_through_the_store_and_refuses_tampering() {
        let src = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(src.path().join("a/b")).unwrap();
        std::fs::write(src.path().join("a/b/x.csv"), "1,2\n").unwrap();
        std::fs::write(src.path().join("top.json"), "{}").unwrap();
        std::fs::write(src.path().join("same.json"), "{}").unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "theirs").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), src.path().join("out")).unwrap();
        std::os::unix::fs::symlink("top.json", src.path().join("in")).unwrap();
        let local = hash_dir(src.path()).unwrap();
        let paths: Vec<&str> = local.tree.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            ["a/b/x.csv", "in", "same.json", "top.json"],
            "no link out"
        );

        let store_dir = tempfile::tempdir().unwrap();
        let base = Location::parse(store_dir.path().to_str().unwrap()).unwrap();
        // Two files, one content: two blobs.
        assert_eq!(publish(&base, None, &local).await.unwrap(), 6);
        assert_eq!(
            publish(&base, None, &local).await.unwrap(),
            0,
            "stored once"
        );

        let cache = tempfile::tempdir().unwrap();
        let got = fetch(&base, None, &local.id, cache.path(), "run r")
            .await
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(got.dir.join("a/b/x.csv")).unwrap(),
            "1,2\n"
        );
        assert_eq!(hash_dir(&got.dir).unwrap().id, local.id);

        // A URL's objects, downloaded: the same content, the same tree.
        let url = Location::parse(&format!("file://{}", src.path().join("a").display())).unwrap();
        let got = materialize(&url, cache.path()).await.unwrap();
        assert_eq!(got.id, hash_dir(&src.path().join("a")).unwrap().id);
        assert_eq!(
            std::fs::read_to_string(got.dir.join("b/x.csv")).unwrap(),
            "1,2\n"
        );

        // Another tenant does not see it.
        let err = fetch(&base, Some("t"), &local.id, cache.path(), "run r")
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains("not in the store"), "{err:#}");

        // A changed blob is refused, with nothing left in the cache.
        let (blob, _) = hash_file(&src.path().join("a/b/x.csv")).unwrap();
        std::fs::write(store_dir.path().join("data/blobs").join(&blob), "9,9\n").unwrap();
        let fresh = tempfile::tempdir().unwrap();
        let err = fetch(&base, None, &local.id, fresh.path(), "run r")
            .await
            .unwrap_err();
        assert!(
            format!("{err:#}").contains("the store was modified"),
            "{err:#}"
        );
        assert!(!fresh.path().join("data").join(&local.id).exists());

        // A tree naming a path outside its folder is refused.
        let evil = Tree {
            format: 1,
            files: vec![Entry {
                path: "../../etc/x".into(),
                sha256: blob.clone(),
                size: 4,
            }],
        };
        let id = evil.id();
        std::fs::write(
            store_dir.path().join(format!("data/trees/{id}.json")),
            evil.to_bytes(),
        )
        .unwrap();
        let err = fetch(&base, None, &id, fresh.path(), "run r")
            .await
            .unwrap_err();
        assert!(
            format!("{err:#}").contains("not a relative path"),
            "{err:#}"
        );
    }
}
