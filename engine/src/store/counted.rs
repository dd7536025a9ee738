//! Every store request this process makes, counted by kind: what a run costs
//! in billed requests (`engine run` prints it, `bench/coordination.sh`
//! tabulates it).
//!
//! A listing is counted as the pages S3 would serve it in: one request per
//! 1,000 keys, at least one.

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMode,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};

/// Keys in one page of an S3 listing (ListObjectsV2's maximum).
const PAGE: u64 = 1000;

/// Requests by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requests {
    /// Plain writes (overwrite), multipart uploads counted once.
    pub put: u64,
    /// Conditional writes (create if absent), refused or not.
    pub create: u64,
    /// Conditional writes refused because the object was there (HTTP 412).
    pub conflict: u64,
    pub get: u64,
    pub head: u64,
    /// Listing pages.
    pub list: u64,
    /// Deletes and copies.
    pub other: u64,
}

impl Requests {
    pub fn total(&self) -> u64 {
        self.put + self.create + self.get + self.head + self.list + self.other
    }

    pub fn add(&self, o: &Requests) -> Requests {
        Requests {
            put: self.put + o.put,
            create: self.create + o.create,
            conflict: self.conflict + o.conflict,
            get: self.get + o.get,
            head: self.head + o.head,
            list: self.list + o.list,
            other: self.other + o.other,
        }
    }

    pub fn since(&self, before: &Requests) -> Requests {
        Requests {
            put: self.put - before.put,
            create: self.create - before.create,
            conflict: self.conflict - before.conflict,
            get: self.get - before.get,
            head: self.head - before.head,
            list: self.list - before.list,
            other: self.other - before.other,
        }
    }
}

impl std::fmt::Display for Requests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} PUT, {} conditional PUT ({} refused), {} GET, {} HEAD, {} LIST, {} other",
            self.put, self.create, self.conflict, self.get, self.head, self.list, self.other
        )
    }
}

#[derive(Default)]
struct Counters {
    put: AtomicU64,
    create: AtomicU64,
    conflict: AtomicU64,
    get: AtomicU64,
    head: AtomicU64,
    list: AtomicU64,
    other: AtomicU64,
}

static COUNTERS: Counters = Counters {
    put: AtomicU64::new(0),
    create: AtomicU64::new(0),
    conflict: AtomicU64::new(0),
    get: AtomicU64::new(0),
    head: AtomicU64::new(0),
    list: AtomicU64::new(0),
    other: AtomicU64::new(0),
};

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// The requests this process made so far, through every counted store.
pub fn requests() -> Requests {
    let c = &COUNTERS;
    let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
    Requests {
        put: r(&c.put),
        create: r(&c.create),
        conflict: r(&c.conflict),
        get: r(&c.get),
        head: r(&c.head),
        list: r(&c.list),
        other: r(&c.other),
    }
}

/// A store whose requests are counted.
#[derive(Debug)]
pub struct Counted<T>(pub T);

impl<T: std::fmt::Display> std::fmt::Display for Counted<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Count a listing's pages as its keys stream by.
fn pages(s: BoxStream<'static, Result<ObjectMeta>>) -> BoxStream<'static, Result<ObjectMeta>> {
    bump(&COUNTERS.list);
    let mut seen = 0u64;
    s.map(move |m| {
        seen += 1;
        if seen > PAGE && seen % PAGE == 1 {
            bump(&COUNTERS.list);
        }
        m
    })
    .boxed()
}

#[async_trait]
impl<T: ObjectStore> ObjectStore for Counted<T> {
    async fn put_opts(&self, p: &Path, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
        let conditional = !matches!(opts.mode, PutMode::Overwrite);
        bump(if conditional {
            &COUNTERS.create
        } else {
            &COUNTERS.put
        });
        let r = self.0.put_opts(p, payload, opts).await;
        if conditional && matches!(r, Err(object_store::Error::AlreadyExists { .. })) {
            bump(&COUNTERS.conflict);
        }
        r
    }

    async fn put_multipart_opts(
        &self,
        p: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        bump(&COUNTERS.put);
        self.0.put_multipart_opts(p, opts).await
    }

    async fn get_opts(&self, p: &Path, options: GetOptions) -> Result<GetResult> {
        bump(if options.head {
            &COUNTERS.head
        } else {
            &COUNTERS.get
        });
        self.0.get_opts(p, options).await
    }

    async fn get_ranges(
        &self,
        p: &Path,
        ranges: &[std::ops::Range<u64>],
    ) -> Result<Vec<bytes::Bytes>> {
        // One request a range (coalesced ranges would be fewer: an upper bound).
        for _ in ranges {
            bump(&COUNTERS.get);
        }
        self.0.get_ranges(p, ranges).await
    }

    async fn head(&self, p: &Path) -> Result<ObjectMeta> {
        bump(&COUNTERS.head);
        self.0.head(p).await
    }

    async fn delete(&self, p: &Path) -> Result<()> {
        bump(&COUNTERS.other);
        self.0.delete(p).await
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        pages(self.0.list(prefix))
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        pages(self.0.list_with_offset(prefix, offset))
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        bump(&COUNTERS.list);
        self.0.list_with_delimiter(prefix).await
    }

    async fn copy(&self, from: &Path, to: &Path) -> Result<()> {
        bump(&COUNTERS.other);
        self.0.copy(from, to).await
    }

    async fn copy_if_not_exists(&self, from: &Path, to: &Path) -> Result<()> {
        bump(&COUNTERS.other);
        self.0.copy_if_not_exists(from, to).await
    }

    async fn rename(&self, from: &Path, to: &Path) -> Result<()> {
        bump(&COUNTERS.other);
        self.0.rename(from, to).await
    }

    async fn rename_if_not_exists(&self, from: &Path, to: &Path) -> Result<()> {
        bump(&COUNTERS.other);
        self.0.rename_if_not_exists(from, to).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    #[tokio::test]
    async fn requests_are_counted_by_kind_and_listings_by_page() {
        let store = Counted(InMemory::new());
        let before = requests();
        let create = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        for i in 0..1001 {
            store
                .put(&Path::from(format!("k/{i:04}")), "x".into())
                .await
                .unwrap();
        }
        assert!(
            store
                .put_opts(&Path::from("k/0000"), "y".into(), create.clone())
                .await
                .is_err()
        );
        store
            .put_opts(&Path::from("c"), "y".into(), create)
            .await
            .unwrap();
        store.get(&Path::from("c")).await.unwrap();
        store.head(&Path::from("c")).await.unwrap();
        let listed: Vec<_> = store.list(Some(&Path::from("k"))).collect().await;
        assert_eq!(listed.len(), 1001);
        let r = requests().since(&before);
        // Other tests count in the same process: at least what was done here.
        assert!(r.put >= 1001 && r.create >= 2 && r.conflict >= 1, "{r}");
        assert!(r.get >= 1 && r.head >= 1 && r.list >= 2, "{r}");
    }
}
