//! Merge the parts, in shard order, into one CSV at the output location,
//! streaming: one part in memory at a time, the output uploaded in chunks and
//! made visible only when complete.

use crate::store::{Location, RunStore, shard_name};
use crate::table::{Cell, append_part, merged_columns, parse_header};
use crate::work::shards::ShardList;
use anyhow::{Context, Result};
use futures::{StreamExt, TryStreamExt};
use object_store::buffered::BufWriter;
use std::collections::HashSet;
use tokio::io::AsyncWriteExt;

/// How many bytes of a part are read to find its header.
const HEADER_PROBE: u64 = 64 << 10;
/// Flush merged CSV to the store in chunks of about this size.
const CHUNK: usize = 4 << 20;

/// Write the merged table; returns the number of data rows.
///
/// Most runs' parts share their columns: the merge first assumes that every
/// part's columns are among the first part's, and reads each part once. A
/// part with a column the first lacks stops that attempt (its upload is
/// aborted, nothing becomes visible); the merge then reads every part's
/// header first, and each part again.
pub async fn merge(store: &RunStore, shards: usize, output: &Location) -> Result<u64> {
    let first = match shards {
        0 => Vec::new(),
        _ => read_header(store, 0).await?,
    };
    let columns = merged_columns([first.as_slice()]);
    if let Some(rows) = write_blocking(store, shards, output, columns, true).await? {
        return Ok(rows);
    }
    // Keep each distinct header once, in first-seen order, so that memory
    // does not grow with the number of shards.
    let mut headers: Vec<Vec<String>> = Vec::new();
    let mut seen = HashSet::new();
    let mut probes = futures::stream::iter(0..shards)
        .map(|i| async move { read_header(store, i).await })
        .buffered(16);
    while let Some(header) = probes.try_next().await? {
        if seen.insert(header.clone()) {
            headers.push(header);
        }
    }
    let columns = merged_columns(headers.iter().map(Vec::as_slice));
    write_blocking(store, shards, output, columns, false)
        .await?
        .context("the merge found a new column in a part it had already read")
}

/// [`write_merged`] on a thread of its own: rows are padded to every column
/// of the table, which can make the output far larger than the parts, so it
/// is written as it is made, by a thread that waits for the store's writes.
async fn write_blocking(
    store: &RunStore,
    shards: usize,
    output: &Location,
    columns: Vec<String>,
    stop_at_new_column: bool,
) -> Result<Option<u64>> {
    let handle = tokio::runtime::Handle::current();
    let (store, output) = (store.clone(), output.clone());
    tokio::task::spawn_blocking(move || {
        write_merged(
            &handle,
            &store,
            shards,
            &output,
            &columns,
            stop_at_new_column,
        )
    })
    .await
    .context("the merge stopped")?
}

/// Write the parts under `columns`; the number of data rows, or `None` when
/// `stop_at_new_column` and a part has a column outside them (the upload is
/// then aborted).
fn write_merged(
    handle: &tokio::runtime::Handle,
    store: &RunStore,
    shards: usize,
    output: &Location,
    columns: &[String],
    stop_at_new_column: bool,
) -> Result<Option<u64>> {
    let write_err = || format!("cannot write `{}`", output.display);
    let mut sink = ChunkedSink {
        handle,
        // Uploads of 8 MiB (S3 wants at least 5 MiB a part), two in flight:
        // what the output holds in memory at once, whatever its size.
        inner: BufWriter::with_capacity(output.store.clone(), output.path.clone(), 8 << 20)
            .with_max_concurrency(2),
        chunk: Vec::with_capacity(CHUNK),
    };
    {
        let mut header = csv::Writer::from_writer(&mut sink);
        header.write_record(columns).with_context(write_err)?;
        header.flush().with_context(write_err)?;
    }
    let known: HashSet<&str> = columns.iter().map(String::as_str).collect();
    let mut rows = 0;
    let mut parts = futures::stream::iter(0..shards)
        .map(|i| async move {
            let rel = format!("parts/{}.csv", shard_name(i));
            let part = store
                .get(&rel)
                .await?
                .with_context(|| format!("part `{rel}` is missing"))?;
            anyhow::Ok((rel, part))
        })
        .buffered(4);
    while let Some(part) = handle.block_on(parts.next()) {
        let (rel, part) = part?;
        if stop_at_new_column {
            let header = parse_header(&part)
                .with_context(|| format!("part `{rel}` has no readable header"))?;
            if header
                .iter()
                .any(|c| !c.is_empty() && !known.contains(c.as_str()))
            {
                handle
                    .block_on(sink.inner.abort())
                    .with_context(write_err)?;
                return Ok(None);
            }
        }
        rows += append_part(&part, columns, &mut sink).with_context(write_err)?;
    }
    sink.finish().with_context(write_err)?;
    Ok(Some(rows))
}

/// The output as a `std::io::Write`: bytes gather in a chunk, and a full
/// chunk goes to the store before more is accepted.
struct ChunkedSink<'a> {
    handle: &'a tokio::runtime::Handle,
    inner: BufWriter,
    chunk: Vec<u8>,
}

impl ChunkedSink<'_> {
    fn send(&mut self) -> std::io::Result<()> {
        if !self.chunk.is_empty() {
            self.handle.block_on(self.inner.write_all(&self.chunk))?;
            self.chunk.clear();
        }
        Ok(())
    }

    fn finish(mut self) -> std::io::Result<()> {
        self.send()?;
        self.handle.block_on(self.inner.shutdown())
    }
}

impl std::io::Write for ChunkedSink<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.chunk.extend_from_slice(buf);
        if self.chunk.len() >= CHUNK {
            self.send()?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

async fn read_header(store: &RunStore, i: usize) -> Result<Vec<String>> {
    let rel = format!("parts/{}.csv", shard_name(i));
    let mut probe = store.get_prefix(&rel, HEADER_PROBE).await?;
    if !probe.contains(&b'\n') {
        probe = store.get(&rel).await?.unwrap_or_default();
    }
    parse_header(&probe).with_context(|| format!("part `{rel}` has no readable header"))
}

/// Copy the shards' side outputs beside the output, one folder per shard:
/// `results.csv` and shard 3 (key `model=PAR`) writing `samples/a.csv` give
/// `results.outputs/00000003-model=PAR/samples/a.csv`.
pub async fn copy_side_outputs(
    store: &RunStore,
    shards: &ShardList,
    output: &Location,
) -> Result<usize> {
    // In shard order, so that their keys are read a page at a time.
    let mut names = store.list("outputs").await?;
    names.sort_unstable();
    let stem = output
        .path
        .as_ref()
        .strip_suffix(".csv")
        .unwrap_or(output.path.as_ref())
        .to_owned();
    for rel in &names {
        // `<shard>/<name>`
        let Some((index, name)) = rel.split_once('/') else {
            continue;
        };
        let shard = match index.parse::<usize>() {
            Ok(i) if i < shards.len() => Some(shards.get(i).await?),
            _ => None,
        };
        let key = shard.as_ref().map(|s| &s.key[..]);
        let bytes = store
            .get(&format!("outputs/{rel}"))
            .await?
            .unwrap_or_default();
        let dest = object_store::path::Path::from(format!(
            "{stem}.outputs/{}/{name}",
            shard_folder(index, key.unwrap_or_default())
        ));
        output
            .store
            .put(&dest, bytes.into())
            .await
            .with_context(|| format!("cannot write side output `{dest}`"))?;
    }
    Ok(names.len())
}

/// `<index>-<key>`: the index keeps it unique, the key cells make it
/// readable (`00000003-model=PAR,dataset=Libras`), cut and made file-safe.
pub fn shard_folder(index: &str, key: &[(String, Cell)]) -> String {
    let key: String = key
        .iter()
        .map(|(k, v)| format!("{k}={}", v.to_text()))
        .collect::<Vec<_>>()
        .join(",")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._=,-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(80)
        .collect();
    if key.is_empty() {
        index.to_owned()
    } else {
        format!("{index}-{key}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn merged(parts: &[&str]) -> String {
        let dir = tempfile::tempdir().unwrap();
        let root = Location::parse(dir.path().join("store").to_str().unwrap()).unwrap();
        let store = RunStore::new(&root, None, "r");
        for (i, part) in parts.iter().enumerate() {
            let rel = format!("parts/{}.csv", shard_name(i));
            assert!(store.create(&rel, part.as_bytes().to_vec()).await.unwrap());
        }
        let out = dir.path().join("out.csv");
        let output = Location::parse(out.to_str().unwrap()).unwrap();
        let rows = merge(&store, parts.len(), &output).await.unwrap();
        let text = std::fs::read_to_string(&out).unwrap();
        assert_eq!(rows as usize, text.lines().count() - 1);
        text
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn parts_with_the_first_parts_columns_merge_in_one_pass() {
        let text = merged(&["x,y\n1,2\n", "y,x\n3,4\n", "x,error\n5,boom\n", ""]).await;
        assert_eq!(text, "x,y,error\n1,2,\n4,3,\n5,,boom\n");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_part_with_a_new_column_starts_the_merge_again_with_every_column() {
        let text = merged(&["x,y\n1,2\n", "x\n3\n", "x,z\n4,5\n", "x,error\n6,boom\n"]).await;
        assert_eq!(text, "x,y,z,error\n1,2,,\n3,,,\n4,,5,\n6,,,boom\n");
        // The first part has no rows, hence no columns.
        let text = merged(&["", "a\n1\n"]).await;
        assert_eq!(text, "a,error\n1,\n");
    }
}
