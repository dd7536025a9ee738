//! Merge the parts, in shard order, into one CSV at the output location,
//! streaming: one part in memory at a time, the output uploaded in chunks and
//! made visible only when complete.

use crate::store::{Location, RunStore, shard_name};
use crate::table::{append_part, merged_columns, parse_header};
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
pub async fn merge(store: &RunStore, shards: usize, output: &Location) -> Result<u64> {
    // Most parts share a header: keep each distinct one once, in first-seen
    // order, so memory does not grow with the number of shards.
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

    let mut sink = BufWriter::new(output.store.clone(), output.path.clone());
    let write_err = || format!("cannot write `{}`", output.display);
    let mut header = csv::Writer::from_writer(Vec::new());
    header.write_record(&columns)?;
    let mut chunk = header.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut rows = 0;
    let mut parts = futures::stream::iter(0..shards)
        .map(|i| async move {
            let rel = format!("parts/{}.csv", shard_name(i));
            store
                .get(&rel)
                .await?
                .with_context(|| format!("part `{rel}` is missing"))
        })
        .buffered(4);
    while let Some(part) = parts.next().await {
        rows += append_part(&part?, &columns, &mut chunk)?;
        if chunk.len() >= CHUNK {
            sink.write_all(&chunk).await.with_context(write_err)?;
            chunk.clear();
        }
    }
    sink.write_all(&chunk).await.with_context(write_err)?;
    sink.shutdown().await.with_context(write_err)?;
    Ok(rows)
}

async fn read_header(store: &RunStore, i: usize) -> Result<Vec<String>> {
    let rel = format!("parts/{}.csv", shard_name(i));
    let mut probe = store.get_prefix(&rel, HEADER_PROBE).await?;
    if !probe.contains(&b'\n') {
        probe = store.get(&rel).await?.unwrap_or_default();
    }
    parse_header(&probe).with_context(|| format!("part `{rel}` has no readable header"))
}

/// Copy the shards' side outputs beside the output: `results.csv` and a side
/// output `samples/a.csv` give `results.samples/a.csv`.
pub async fn copy_side_outputs(store: &RunStore, output: &Location) -> Result<usize> {
    let names = store.list("outputs").await?;
    let stem = output
        .path
        .as_ref()
        .strip_suffix(".csv")
        .unwrap_or(output.path.as_ref())
        .to_owned();
    for rel in &names {
        // `<shard>/<name>`
        let Some((_, name)) = rel.split_once('/') else {
            continue;
        };
        let bytes = store
            .get(&format!("outputs/{rel}"))
            .await?
            .unwrap_or_default();
        let dest = object_store::path::Path::from(format!("{stem}.{name}"));
        output
            .store
            .put(&dest, bytes.into())
            .await
            .with_context(|| format!("cannot write side output `{dest}`"))?;
    }
    Ok(names.len())
}
