//! Object stores (local paths, `file://`, `s3://`, memory) and the run layout.
//!
//! A run lives under `runs/<run-id>/` (or `tenants/<tenant>/runs/<run-id>/`):
//!
//! | object                 | written by   | how                       |
//! |------------------------|--------------|---------------------------|
//! | `run.json`             | orchestrator | overwrite                 |
//! | `component.wasm`       | orchestrator | overwrite                 |
//! | `shards.json`          | orchestrator | create-if-absent          |
//! | `claims/<shard>/<attempt>` | workers  | create-if-absent (none in `memory://`) |
//! | `heartbeats/<process>` | workers      | overwrite                 |
//! | `parts/<shard>.csv`    | workers      | create-if-absent (1 only) |
//! | `failed/<shard>`       | workers      | overwrite                 |
//! | `log/<shard>.log`      | workers      | overwrite                 |
//! | `outputs/<shard>/<name>` | workers    | overwrite                 |
//! | `artifacts/<tag>.cwasm`, `.mac` | orchestrator | overwrite (`work::artifact`) |
//!
//! `<shard>` is the shard's index, zero-padded to eight digits. Beside the
//! runs, `data/` (or `tenants/<tenant>/data/`) holds run data by content
//! (`work::data`): `blobs/<sha256>` and `trees/<id>.json`, shared by every run
//! that reads the same files.

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload};
use std::sync::Arc;

pub mod counted;
pub mod memory;

use counted::Counted;

/// A store and a path inside it: where a file or a directory lives.
#[derive(Clone)]
pub struct Location {
    pub store: Arc<dyn ObjectStore>,
    pub path: ObjPath,
    /// As the user wrote it, for messages.
    pub display: String,
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display)
    }
}

impl Location {
    /// Whether the store is on this machine (a directory or memory), so its
    /// operations need no async runtime.
    pub fn is_local(&self) -> bool {
        !self.display.contains("://") || self.display.starts_with("file://") || self.is_memory()
    }

    /// Whether the store lives in this process's memory, so that no other
    /// process can see it.
    pub fn is_memory(&self) -> bool {
        self.display.starts_with("memory://")
    }

    /// Parse a local path, `file://…`, `s3://bucket/key` or `memory://`.
    /// S3 credentials, region and endpoint come from the standard `AWS_*`
    /// environment variables.
    pub fn parse(text: &str) -> Result<Location> {
        Location::parse_with(text, None)
    }

    /// Like [`Location::parse`], with explicit S3 credentials (access key id, secret).
    pub fn parse_with(text: &str, credentials: Option<&(String, String)>) -> Result<Location> {
        let display = text.to_owned();
        if let Some(rest) = text.strip_prefix("memory://") {
            return Ok(Location {
                store: Arc::new(Counted(memory::Memory::new())),
                path: ObjPath::from(rest),
                display,
            });
        }
        if text.contains("://") {
            let url =
                url::Url::parse(text).with_context(|| format!("`{text}` is not a valid URL"))?;
            if url.scheme() == "file" {
                let path = url
                    .to_file_path()
                    .map_err(|_| anyhow::anyhow!("`{text}` is not a local file URL"))?;
                return local(&path, display);
            }
            if url.scheme() == "s3" {
                let bucket = url.host_str().unwrap_or_default();
                if bucket.is_empty() {
                    bail!("`{text}` names no bucket; write `s3://BUCKET/KEY`");
                }
                let mut builder =
                    object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
                if let Some((key, secret)) = credentials {
                    builder = builder
                        .with_access_key_id(key)
                        .with_secret_access_key(secret);
                }
                let endpoint =
                    std::env::var("AWS_ENDPOINT_URL").or_else(|_| std::env::var("AWS_ENDPOINT"));
                if endpoint.is_ok_and(|e| e.starts_with("http://")) {
                    // A plain-http endpoint (a local S3 server) was asked for explicitly.
                    builder = builder.with_allow_http(true);
                }
                if std::env::var_os("AWS_REGION").is_none()
                    && std::env::var_os("AWS_DEFAULT_REGION").is_none()
                {
                    builder = builder.with_region("us-east-1");
                }
                let store = builder
                    .build()
                    .with_context(|| format!("cannot configure S3 for `{text}`"))?;
                let path = ObjPath::from(url.path().trim_start_matches('/'));
                return Ok(Location {
                    store: Arc::new(Counted(store)),
                    path,
                    display,
                });
            }
            let (store, path) = object_store::parse_url(&url).with_context(|| {
                format!("`{text}`: unsupported store; use a local path, `file://` or `s3://`")
            })?;
            return Ok(Location {
                store: Arc::new(Counted(store)),
                path,
                display,
            });
        }
        local(std::path::Path::new(text), display)
    }

    /// A location below this one.
    pub fn child(&self, rel: &str) -> Location {
        let mut path = self.path.clone();
        for part in rel.split('/').filter(|p| !p.is_empty()) {
            path = path.child(part);
        }
        Location {
            store: self.store.clone(),
            path,
            display: match self.display.strip_suffix("://") {
                // `memory://` + `runs/x` is `memory://runs/x`.
                Some(_) => format!("{}{rel}", self.display),
                None => format!("{}/{rel}", self.display.trim_end_matches('/')),
            },
        }
    }
}

fn local(path: &std::path::Path, display: String) -> Result<Location> {
    let absolute =
        std::path::absolute(path).with_context(|| format!("bad path `{}`", path.display()))?;
    let path = ObjPath::from_absolute_path(&absolute)
        .with_context(|| format!("bad path `{}`", absolute.display()))?;
    Ok(Location {
        store: Arc::new(Counted(LocalFileSystem::new())),
        path,
        display,
    })
}

/// The run's folder in the store, with the few operations the protocol uses.
#[derive(Clone, Debug)]
pub struct RunStore {
    pub root: Location,
}

/// The first `limit` names of a listing of `prefix`, relative to it.
async fn names(
    listing: futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>>,
    prefix: &ObjPath,
    limit: usize,
) -> Result<Vec<String>> {
    let strip = format!("{prefix}/");
    listing
        .take(limit)
        .try_filter_map(|m| {
            let name = m.location.as_ref().strip_prefix(&strip).map(str::to_owned);
            std::future::ready(Ok(name))
        })
        .try_collect()
        .await
        .with_context(|| format!("cannot list `{prefix}`"))
}

/// Whether `e` is the store's (an outage to wait out), not a wrong answer.
pub fn is_store_error(e: &anyhow::Error) -> bool {
    e.chain()
        .any(|c| c.downcast_ref::<object_store::Error>().is_some())
}

/// The store key of a shard index.
pub fn shard_name(i: usize) -> String {
    format!("{i:08}")
}

impl RunStore {
    /// `runs/<run_id>` (under `tenants/<tenant>/` for a tenant) in `base`.
    pub fn new(base: &Location, tenant: Option<&str>, run_id: &str) -> RunStore {
        let rel = match tenant {
            Some(t) => format!("tenants/{t}/runs/{run_id}"),
            None => format!("runs/{run_id}"),
        };
        RunStore {
            root: base.child(&rel),
        }
    }

    /// `<rel>` of `base` (under `tenants/<tenant>/` for a tenant): a folder
    /// beside the runs, such as the cell cache (`cache`).
    pub fn beside_runs(base: &Location, tenant: Option<&str>, rel: &str) -> RunStore {
        let rel = match tenant {
            Some(t) => format!("tenants/{t}/{rel}"),
            None => rel.to_owned(),
        };
        RunStore {
            root: base.child(&rel),
        }
    }

    fn path(&self, rel: &str) -> ObjPath {
        self.root.child(rel).path
    }

    /// Delete an object; deleting one that is absent is no error.
    pub async fn delete(&self, rel: &str) -> Result<()> {
        let path = self.path(rel);
        match self.root.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("cannot delete `{path}`")),
        }
    }

    /// Delete everything below `rel/`; how many objects that was.
    pub async fn delete_below(&self, rel: &str) -> Result<usize> {
        let names = self.list(rel).await?;
        for name in &names {
            self.delete(&format!("{rel}/{name}")).await?;
        }
        Ok(names.len())
    }

    /// Every object below `rel/`: its name (relative to it), size and when
    /// it was last written.
    pub async fn list_meta(
        &self,
        rel: &str,
    ) -> Result<Vec<(String, u64, chrono::DateTime<chrono::Utc>)>> {
        let prefix = self.path(rel);
        let strip = format!("{prefix}/");
        self.root
            .store
            .list(Some(&prefix))
            .try_filter_map(|m| {
                let name = m.location.as_ref().strip_prefix(&strip).map(str::to_owned);
                std::future::ready(Ok(name.map(|n| (n, m.size, m.last_modified))))
            })
            .try_collect()
            .await
            .with_context(|| format!("cannot list `{prefix}`"))
    }

    /// The folders directly below `rel/` (one listing with a delimiter).
    pub async fn folders(&self, rel: &str) -> Result<Vec<String>> {
        let prefix = self.path(rel);
        let listing = self
            .root
            .store
            .list_with_delimiter(Some(&prefix))
            .await
            .with_context(|| format!("cannot list `{prefix}`"))?;
        Ok(listing
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_owned))
            .collect())
    }

    /// Write, replacing what is there.
    pub async fn put(&self, rel: &str, bytes: impl Into<Bytes>) -> Result<()> {
        let path = self.path(rel);
        self.root
            .store
            .put(&path, PutPayload::from_bytes(bytes.into()))
            .await
            .with_context(|| format!("cannot write `{path}`"))?;
        Ok(())
    }

    /// Write only if absent; `false` when another writer was first.
    pub async fn create(&self, rel: &str, bytes: impl Into<Bytes>) -> Result<bool> {
        let path = self.path(rel);
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .root
            .store
            .put_opts(&path, PutPayload::from_bytes(bytes.into()), opts)
            .await
        {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(e).with_context(|| format!("cannot create `{path}`")),
        }
    }

    /// Read a whole object, `None` if absent.
    pub async fn get(&self, rel: &str) -> Result<Option<Bytes>> {
        let path = self.path(rel);
        match self.root.store.get(&path).await {
            Ok(r) => Ok(Some(
                r.bytes()
                    .await
                    .with_context(|| format!("cannot read `{path}`"))?,
            )),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read `{path}`")),
        }
    }

    /// The first bytes of an object (for headers): one ranged GET, the
    /// whole object if it is shorter.
    pub async fn get_prefix(&self, rel: &str, len: u64) -> Result<Bytes> {
        let path = self.path(rel);
        let opts = object_store::GetOptions {
            range: Some((0..len.max(1)).into()),
            ..Default::default()
        };
        match self.root.store.get_opts(&path, opts).await {
            Ok(r) => r
                .bytes()
                .await
                .with_context(|| format!("cannot read `{path}`")),
            // An empty object has no first byte to range over.
            Err(object_store::Error::NotFound { .. }) => {
                Err(anyhow::anyhow!("cannot read `{path}`: not found"))
            }
            Err(_) => Ok(self.get(rel).await?.unwrap_or_default()),
        }
    }

    /// Whether an object exists.
    pub async fn exists(&self, rel: &str) -> Result<bool> {
        let path = self.path(rel);
        match self.root.store.head(&path).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e).with_context(|| format!("cannot read `{path}`")),
        }
    }

    /// The names directly or indirectly below `rel/`, relative to it.
    pub async fn list(&self, rel: &str) -> Result<Vec<String>> {
        let prefix = self.path(rel);
        let listing = self.root.store.list(Some(&prefix));
        names(listing, &prefix, usize::MAX).await
    }

    /// Up to `limit` names below `rel/` that sort after `rel/<after>`, in
    /// order: one request of a listing that S3 serves `start-after`. A
    /// directory does not list in key order: there the whole folder is read
    /// and sorted (no request is billed; a stretch of it is never mistaken
    /// for the first names after `after`).
    pub async fn list_from(&self, rel: &str, after: &str, limit: usize) -> Result<Vec<String>> {
        let prefix = self.path(rel);
        let offset = self.path(&format!("{rel}/{after}"));
        let listing = self.root.store.list_with_offset(Some(&prefix), &offset);
        if !self.root.is_local() || self.root.is_memory() {
            return names(listing, &prefix, limit).await;
        }
        let mut all = names(listing, &prefix, usize::MAX).await?;
        all.sort_unstable();
        all.truncate(limit);
        Ok(all)
    }

    /// Each name below `rel/` (relative to it) to `each`, as listed,
    /// without keeping them.
    pub async fn for_each_name(&self, rel: &str, mut each: impl FnMut(&str)) -> Result<()> {
        let prefix = self.path(rel);
        let strip = format!("{prefix}/");
        let mut listing = self.root.store.list(Some(&prefix));
        while let Some(meta) = listing
            .try_next()
            .await
            .with_context(|| format!("cannot list `{prefix}`"))?
        {
            if let Some(name) = meta.location.as_ref().strip_prefix(&strip) {
                each(name);
            }
        }
        Ok(())
    }

    /// How many objects are below `rel/`, without keeping their names.
    pub async fn count(&self, rel: &str) -> Result<usize> {
        let mut n = 0;
        self.for_each_name(rel, |_| n += 1).await?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_folder_keeps_the_kind_of_its_store() {
        let memory = RunStore::new(&Location::parse("memory://").unwrap(), None, "r1");
        assert_eq!(memory.root.display, "memory://runs/r1");
        assert!(memory.root.is_memory() && memory.root.is_local());
        let tenant = RunStore::new(&Location::parse("/tmp/store/").unwrap(), Some("t"), "r1");
        assert_eq!(tenant.root.display, "/tmp/store/tenants/t/runs/r1");
        assert!(!tenant.root.is_memory() && tenant.root.is_local());
    }

    #[tokio::test]
    async fn count_and_exists_see_what_list_sees() {
        let store = RunStore::new(&Location::parse("memory://").unwrap(), None, "r1");
        for i in 0..3 {
            store
                .put(&format!("parts/{}.csv", shard_name(i)), "a\n1\n")
                .await
                .unwrap();
        }
        store.put("partsx/other", "x").await.unwrap();
        assert_eq!(store.list("parts").await.unwrap().len(), 3);
        assert_eq!(store.count("parts").await.unwrap(), 3);
        assert!(store.exists("parts/00000002.csv").await.unwrap());
        assert!(!store.exists("parts/00000003.csv").await.unwrap());
    }

    /// A directory lists in no particular order: `list_from` still returns
    /// the first names after its point, in order.
    #[tokio::test]
    async fn list_from_a_directory_is_in_key_order() {
        let dir = tempfile::tempdir().unwrap();
        let base = Location::parse(dir.path().to_str().unwrap()).unwrap();
        let store = RunStore::new(&base, None, "r1");
        for i in (0..40).rev() {
            store
                .put(&format!("parts/{}.csv", shard_name(i)), "a\n1\n")
                .await
                .unwrap();
        }
        let names = store.list_from("parts", &shard_name(10), 5).await.unwrap();
        let want: Vec<String> = (10..15).map(|i| format!("{}.csv", shard_name(i))).collect();
        assert_eq!(names, want);
    }
}
