//! The `memory://` store: object_store's `InMemory`, except for the parts
//! (`…/parts/<8 digits>.csv`), which a run of a million shards writes a
//! million of. `InMemory` keeps each object as a map entry with its path, a
//! buffer, attributes and an e-tag (about 300 bytes beside the bytes
//! themselves); here a part is 16 bytes of index beside its bytes, which are
//! appended to shared 1 MiB chunks. Every other object goes to `InMemory`.
//!
//! Parts keep no attributes, and are not uploaded in parts (multipart) nor
//! updated conditionally: those return `NotImplemented`, as no part is
//! written so.

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    Attributes, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock};

/// Bytes of one chunk of small parts.
const CHUNK: usize = 1 << 20;
/// A part bigger than this gets a chunk of its own.
const OWN_CHUNK: usize = CHUNK / 4;
/// Part names a listing hands out per lock of the table.
const LIST_BATCH: usize = 1000;

/// An in-process object store that keeps shard parts compactly.
#[derive(Debug)]
pub struct Memory {
    inner: InMemory,
    parts: Arc<RwLock<Tables>>,
}

#[derive(Debug)]
struct Tables {
    /// By the folder the parts are in (`runs/<id>/parts`).
    by_folder: HashMap<Path, Table>,
    created: DateTime<Utc>,
}

#[derive(Debug, Default)]
struct Table {
    slots: BTreeMap<u32, Slot>,
    chunks: Vec<Vec<u8>>,
    /// The chunk small parts are appended to.
    open: Option<usize>,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    chunk: u32,
    offset: u32,
    len: u32,
    /// Seconds after the store was created.
    written: u32,
}

impl Table {
    fn bytes(&self, s: Slot) -> &[u8] {
        let start = s.offset as usize;
        &self.chunks[s.chunk as usize][start..start + s.len as usize]
    }

    fn append(&mut self, payload: &PutPayload, written: u32) -> Slot {
        let len = payload.content_length();
        let chunk = match self.open {
            Some(c) if len <= OWN_CHUNK && self.chunks[c].len() + len <= CHUNK => c,
            _ => {
                let own = len > OWN_CHUNK;
                self.chunks
                    .push(Vec::with_capacity(if own { len } else { CHUNK }));
                let c = self.chunks.len() - 1;
                if !own {
                    self.open = Some(c);
                }
                c
            }
        };
        let buf = &mut self.chunks[chunk];
        let offset = buf.len();
        for b in payload.iter() {
            buf.extend_from_slice(b);
        }
        Slot {
            chunk: chunk as u32,
            offset: offset as u32,
            len: len as u32,
            written,
        }
    }
}

/// `…/parts/<8 digits>.csv` as its folder and index. Eight digits sort as
/// their numbers, so the table lists in the order `InMemory` would.
fn part_of(p: &Path) -> Option<(Path, u32)> {
    let (folder, name) = p.as_ref().rsplit_once('/')?;
    if !(folder == "parts" || folder.ends_with("/parts")) {
        return None;
    }
    let digits = name.strip_suffix(".csv")?;
    if digits.len() != 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((Path::from(folder), digits.parse().ok()?))
}

fn not_found(p: &Path) -> object_store::Error {
    object_store::Error::NotFound {
        path: p.to_string(),
        source: "no such part in memory".into(),
    }
}

fn unsupported(what: &str) -> object_store::Error {
    object_store::Error::NotSupported {
        source: format!("{what} of a part is not supported by the memory store").into(),
    }
}

impl Memory {
    pub fn new() -> Memory {
        Memory {
            inner: InMemory::new(),
            parts: Arc::new(RwLock::new(Tables {
                by_folder: HashMap::new(),
                created: Utc::now(),
            })),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Tables> {
        self.parts.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Tables> {
        self.parts.write().unwrap_or_else(|e| e.into_inner())
    }

    /// A part's bytes, or `NotFound`.
    fn part_bytes(&self, p: &Path, (folder, i): &(Path, u32)) -> Result<(Bytes, ObjectMeta)> {
        let tables = self.read();
        let (table, slot) = tables
            .by_folder
            .get(folder)
            .and_then(|t| Some((t, *t.slots.get(i)?)))
            .ok_or_else(|| not_found(p))?;
        let meta = tables.meta(p.clone(), slot);
        Ok((Bytes::copy_from_slice(table.bytes(slot)), meta))
    }
}

impl Default for Memory {
    fn default() -> Memory {
        Memory::new()
    }
}

impl Tables {
    fn meta(&self, location: Path, s: Slot) -> ObjectMeta {
        ObjectMeta {
            location,
            last_modified: self.created + chrono::Duration::seconds(i64::from(s.written)),
            size: u64::from(s.len),
            e_tag: Some(format!("part-{}-{}", s.chunk, s.offset)),
            version: None,
        }
    }

    fn since_created(&self) -> u32 {
        (Utc::now() - self.created)
            .num_seconds()
            .clamp(0, i64::from(u32::MAX)) as u32
    }
}

impl std::fmt::Display for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Memory")
    }
}

/// Whether `folder` is at or below `prefix`, in whole segments.
fn under(folder: &Path, prefix: Option<&Path>) -> bool {
    prefix.is_none_or(|p| folder.prefix_matches(p))
}

/// The parts of the tables below `prefix`, streamed a batch at a time.
fn list_parts(
    parts: Arc<RwLock<Tables>>,
    prefix: Option<&Path>,
) -> BoxStream<'static, Result<ObjectMeta>> {
    let folders: Vec<Path> = {
        let tables = parts.read().unwrap_or_else(|e| e.into_inner());
        let mut f: Vec<Path> = (tables.by_folder.keys())
            .filter(|f| under(f, prefix))
            .cloned()
            .collect();
        f.sort();
        f
    };
    futures::stream::iter(folders)
        .flat_map(move |folder| {
            let parts = parts.clone();
            futures::stream::unfold(Some(0u32), move |from| {
                let (parts, folder) = (parts.clone(), folder.clone());
                async move {
                    let from = from?;
                    let tables = parts.read().unwrap_or_else(|e| e.into_inner());
                    let table = tables.by_folder.get(&folder)?;
                    let batch: Vec<Result<ObjectMeta>> = table
                        .slots
                        .range(from..)
                        .take(LIST_BATCH)
                        .map(|(i, s)| Ok(tables.meta(folder.child(format!("{i:08}.csv")), *s)))
                        .collect();
                    let last = table.slots.range(from..).nth(LIST_BATCH.max(1) - 1);
                    let next = match (batch.len(), last) {
                        (0, _) => return None,
                        (_, Some((i, _))) => i.checked_add(1),
                        (_, None) => None,
                    };
                    Some((futures::stream::iter(batch), next))
                }
            })
            .flatten()
        })
        .boxed()
}

#[async_trait]
impl ObjectStore for Memory {
    async fn put_opts(&self, p: &Path, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
        let Some((folder, i)) = part_of(p) else {
            return self.inner.put_opts(p, payload, opts).await;
        };
        if matches!(opts.mode, PutMode::Update(_)) {
            return Err(unsupported("a conditional update"));
        }
        if !opts.attributes.is_empty() {
            return Err(unsupported("attributes"));
        }
        if u32::try_from(payload.content_length()).is_err() {
            return Err(unsupported("4 GiB or more"));
        }
        let mut tables = self.write();
        let written = tables.since_created();
        let table = tables.by_folder.entry(folder).or_default();
        if matches!(opts.mode, PutMode::Create) && table.slots.contains_key(&i) {
            return Err(object_store::Error::AlreadyExists {
                path: p.to_string(),
                source: "the part exists".into(),
            });
        }
        let slot = table.append(&payload, written);
        table.slots.insert(i, slot);
        Ok(PutResult {
            e_tag: Some(format!("part-{}-{}", slot.chunk, slot.offset)),
            version: None,
        })
    }

    async fn put_multipart_opts(
        &self,
        p: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        if part_of(p).is_some() {
            return Err(unsupported("a multipart upload"));
        }
        self.inner.put_multipart_opts(p, opts).await
    }

    async fn get_opts(&self, p: &Path, options: GetOptions) -> Result<GetResult> {
        let Some(part) = part_of(p) else {
            return self.inner.get_opts(p, options).await;
        };
        let (data, meta) = self.part_bytes(p, &part)?;
        options.check_preconditions(&meta)?;
        let (range, data) = match &options.range {
            Some(range) => {
                let r = range.as_range(data.len() as u64).map_err(|source| {
                    object_store::Error::Generic {
                        store: "Memory",
                        source: Box::new(source),
                    }
                })?;
                (r.clone(), data.slice(r.start as usize..r.end as usize))
            }
            None => (0..data.len() as u64, data),
        };
        let stream = futures::stream::once(futures::future::ready(Ok(data)));
        Ok(GetResult {
            payload: GetResultPayload::Stream(stream.boxed()),
            meta,
            range,
            attributes: Attributes::default(),
        })
    }

    async fn head(&self, p: &Path) -> Result<ObjectMeta> {
        let Some((folder, i)) = part_of(p) else {
            return self.inner.head(p).await;
        };
        let tables = self.read();
        let slot = (tables.by_folder.get(&folder))
            .and_then(|t| t.slots.get(&i).copied())
            .ok_or_else(|| not_found(p))?;
        Ok(tables.meta(p.clone(), slot))
    }

    async fn delete(&self, p: &Path) -> Result<()> {
        let Some((folder, i)) = part_of(p) else {
            return self.inner.delete(p).await;
        };
        // The bytes stay in their chunk: parts are rarely deleted.
        if let Some(t) = self.write().by_folder.get_mut(&folder) {
            t.slots.remove(&i);
        }
        Ok(())
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner
            .list(prefix)
            .chain(list_parts(self.parts.clone(), prefix))
            .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let mut result = self.inner.list_with_delimiter(prefix).await?;
        let root = Path::default();
        let base = prefix.unwrap_or(&root);
        let mut common: BTreeSet<Path> = result.common_prefixes.drain(..).collect();
        let tables = self.read();
        for (folder, table) in &tables.by_folder {
            if folder == base {
                for (i, s) in &table.slots {
                    let location = folder.child(format!("{i:08}.csv"));
                    result.objects.push(tables.meta(location, *s));
                }
            } else if let Some(mut rest) = folder.prefix_match(base)
                && let Some(next) = rest.next()
                && !table.slots.is_empty()
            {
                common.insert(base.child(next));
            }
        }
        result.common_prefixes = common.into_iter().collect();
        result.objects.sort_by(|a, b| a.location.cmp(&b.location));
        Ok(result)
    }

    async fn copy(&self, from: &Path, to: &Path) -> Result<()> {
        if part_of(from).is_none() && part_of(to).is_none() {
            return self.inner.copy(from, to).await;
        }
        let bytes = self.get(from).await?.bytes().await?;
        self.put(to, bytes.into()).await.map(|_| ())
    }

    async fn copy_if_not_exists(&self, from: &Path, to: &Path) -> Result<()> {
        if part_of(from).is_none() && part_of(to).is_none() {
            return self.inner.copy_if_not_exists(from, to).await;
        }
        let bytes = self.get(from).await?.bytes().await?;
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        self.put_opts(to, bytes.into(), opts).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;

    #[test]
    fn only_eight_digit_parts_are_kept_apart() {
        assert_eq!(
            part_of(&Path::from("runs/r/parts/00000012.csv")),
            Some((Path::from("runs/r/parts"), 12))
        );
        assert_eq!(part_of(&Path::from("parts/00000000.csv")).unwrap().1, 0);
        for other in [
            "runs/r/parts/100000000.csv",
            "runs/r/parts/0000001.csv",
            "runs/r/xparts/00000001.csv",
            "runs/r/parts/0000000a.csv",
            "runs/r/parts/00000001.txt",
            "runs/r/shards.json",
        ] {
            assert_eq!(part_of(&Path::from(other)), None, "{other}");
        }
    }

    #[tokio::test]
    async fn parts_behave_as_in_memory_objects() {
        let m = Memory::new();
        let create = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        let big = vec![b'x'; OWN_CHUNK + 1];
        for i in (0..3000u32).rev() {
            let p = Path::from(format!("runs/r/parts/{i:08}.csv"));
            let body: Bytes = match i {
                7 => big.clone().into(),
                _ => format!("a\n{i}\n").into(),
            };
            m.put_opts(&p, body.into(), create.clone()).await.unwrap();
        }
        let p = Path::from("runs/r/parts/00000002.csv");
        let again = m.put_opts(&p, "z".into(), create.clone()).await;
        assert!(matches!(
            again,
            Err(object_store::Error::AlreadyExists { .. })
        ));
        m.put(&Path::from("runs/r/parts/100000000.csv"), "n".into())
            .await
            .unwrap();
        m.put(&Path::from("runs/r/run.json"), "{}".into())
            .await
            .unwrap();
        m.put(&Path::from("runs/s/parts/00000001.csv"), "b\n".into())
            .await
            .unwrap();

        let got = m.get(&p).await.unwrap().bytes().await.unwrap();
        assert_eq!(&got[..], b"a\n2\n");
        let big_got = m
            .get(&Path::from("runs/r/parts/00000007.csv"))
            .await
            .unwrap();
        assert_eq!(big_got.bytes().await.unwrap().len(), big.len());
        let range = m.get_range(&p, 2..3).await.unwrap();
        assert_eq!(&range[..], b"2");
        assert_eq!(m.head(&p).await.unwrap().size, 4);
        let missing = m.head(&Path::from("runs/r/parts/00003000.csv")).await;
        assert!(matches!(missing, Err(object_store::Error::NotFound { .. })));

        let listed: Vec<String> = m
            .list(Some(&Path::from("runs/r/parts")))
            .map_ok(|o| o.location.to_string())
            .try_collect()
            .await
            .unwrap();
        assert_eq!(listed.len(), 3001);
        let mut parts: Vec<&String> = listed.iter().filter(|l| l.len() == 25).collect();
        assert_eq!(parts.len(), 3000);
        assert!(parts.windows(2).all(|w| w[0] < w[1]));
        parts.dedup();
        assert_eq!(parts.len(), 3000);
        assert_eq!(m.list(Some(&Path::from("runs"))).count().await, 3003);
        assert_eq!(m.list(None).count().await, 3003);
        assert_eq!(m.list(Some(&Path::from("runs/r/par"))).count().await, 0);
        let after = m
            .list_with_offset(
                Some(&Path::from("runs/r/parts")),
                &Path::from("runs/r/parts/00002997"),
            )
            .count()
            .await;
        assert_eq!(after, 4);

        let top = m
            .list_with_delimiter(Some(&Path::from("runs/r")))
            .await
            .unwrap();
        assert_eq!(top.common_prefixes, vec![Path::from("runs/r/parts")]);
        assert_eq!(top.objects.len(), 1);
        let inside = m
            .list_with_delimiter(Some(&Path::from("runs/s/parts")))
            .await
            .unwrap();
        assert_eq!(inside.objects.len(), 1);

        m.delete(&p).await.unwrap();
        assert!(m.head(&p).await.is_err());
        m.copy(&Path::from("runs/r/parts/00000003.csv"), &p)
            .await
            .unwrap();
        assert_eq!(
            &m.get(&p).await.unwrap().bytes().await.unwrap()[..],
            b"a\n3\n"
        );
    }
}
