//! What a guest sees of the host: the `engine:plugin/host` imports, backed by
//! one shard's state, plus WASI.

pub use super::helper::HelperHandle;
use super::helper::Spawner;
use crate::table::{Cell, PartBuilder, RowError};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use wasmtime::component::{HasSelf, Linker, Resource, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

mod generated {
    wasmtime::component::bindgen!({
        path: "../guest-sdk/wit",
        world: "plugin",
        imports: { default: trappable },
        exports: { default: async },
        with: {
            "engine:plugin/host.table-writer": super::TableWriter,
            "engine:plugin/host.helper": super::HelperHandle,
        },
    });
}

use generated::engine::plugin::host::{self as wit_host, Level};
pub(crate) use generated::engine::plugin::types as wit;
pub(crate) use generated::{Plugin as Bindings, PluginPre as BindingsPre};

/// The host side of a `table-writer`: rows go to the shard's [`PartBuilder`].
pub struct TableWriter;

/// Why the host stopped a guest (carried in the trap, read by the classifier).
#[derive(Debug, thiserror::Error)]
pub(crate) enum HostStop {
    #[error("{0}")]
    LimitExceeded(String),
    #[error("{0}")]
    BadRow(String),
}

/// Per-shard limits the host enforces itself.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HostLimits {
    /// Bytes summed over all the call's linear memories.
    pub memory: u64,
    pub output_size: u64,
    pub log_size: u64,
    /// Side-output files.
    pub outputs: u64,
    /// Distinct columns of the rows.
    pub columns: u64,
    pub timeout: std::time::Duration,
}

/// What each `emit` costs besides its bytes (and, for a new file, its
/// name): empty ones are not free.
const OUTPUT_OVERHEAD: u64 = 256;

/// Everything one guest instance can touch.
pub(crate) struct ShardState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: HostLimits,
    pub part: PartBuilder,
    pub log: Vec<u8>,
    pub outputs: SideOutputs,
    pub progress: (u64, u64),
    /// Linear memory of every instance of the call (its helpers' too), summed.
    memory_used: Arc<AtomicU64>,
    /// This store's share of it.
    memory_own: u64,
    /// Set for a shard's `run`: what it needs to start helpers.
    pub(crate) spawner: Option<Spawner>,
    /// Set when the memory limiter refused a growth.
    pub memory_denied: bool,
    /// Bytes the guest may hand the host in one call (wasmtime's hostcall
    /// fuel), and the limit that sets it, for messages.
    pub hostcall_max: usize,
    pub hostcall_limit: &'static str,
}

/// One call's side outputs: files named by `/`-separated paths, so no name
/// may be a file and a folder at once.
#[derive(Debug, Default)]
pub struct SideOutputs {
    files: BTreeMap<String, Vec<u8>>,
    /// Bytes and per-file overhead, names included.
    cost: u64,
}

impl SideOutputs {
    /// The files, by name.
    pub fn into_files(self) -> BTreeMap<String, Vec<u8>> {
        self.files
    }

    /// Why `name` cannot be a file beside the ones written so far.
    fn conflict(&self, name: &str) -> Option<String> {
        // A folder of `name`'s path that is already a file.
        let mut at = 0;
        while let Some(i) = name[at..].find('/') {
            let folder = &name[..at + i];
            if self.files.contains_key(folder) {
                return Some(format!(
                    "side output `{name}` would be inside `{folder}`, which is a file"
                ));
            }
            at += i + 1;
        }
        // A file already below `name/`.
        let below = format!("{name}/");
        if let Some((other, _)) = self.files.range(below.clone()..).next()
            && other.starts_with(&below)
        {
            return Some(format!(
                "side output `{name}` would be a file and the folder of `{other}`"
            ));
        }
        None
    }
}

impl ShardState {
    pub fn new(wasi: WasiCtx, limits: HostLimits) -> Self {
        ShardState {
            wasi,
            table: ResourceTable::new(),
            limits,
            part: PartBuilder::new(limits.output_size, limits.columns),
            log: Vec::new(),
            outputs: SideOutputs::default(),
            progress: (0, 0),
            memory_used: Arc::new(AtomicU64::new(0)),
            memory_own: 0,
            spawner: None,
            memory_denied: false,
            hostcall_max: 0,
            hostcall_limit: "",
        }
    }

    pub fn limits(&self) -> HostLimits {
        self.limits
    }

    /// The counter of the shard's memory, to share with a helper's store.
    pub(crate) fn memory_counter(&self) -> Arc<AtomicU64> {
        self.memory_used.clone()
    }

    /// Count this (helper's) store's memory in the shard's `counter`.
    pub(crate) fn share_memory(&mut self, counter: Arc<AtomicU64>) {
        counter.fetch_add(self.memory_own, Ordering::Relaxed);
        self.memory_used = counter;
    }

    /// Give this store's memory back to the shard's count (a helper ending).
    pub(crate) fn release_memory(&mut self) {
        self.memory_used
            .fetch_sub(self.memory_own, Ordering::Relaxed);
        self.memory_own = 0;
    }

    /// A `table-writer` handle to lend to the guest.
    pub fn new_writer(&mut self) -> wasmtime::Result<Resource<TableWriter>> {
        Ok(self.table.push(TableWriter)?)
    }

    /// Append to the log, refusing once the cap is reached.
    pub fn append_log(&mut self, text: &str) -> wasmtime::Result<()> {
        if self.log.len() as u64 + text.len() as u64 > self.limits.log_size {
            let msg = format!(
                "the shard's log exceeds `limits.log_size` ({} bytes)",
                self.limits.log_size
            );
            return Err(HostStop::LimitExceeded(msg).into());
        }
        self.log.extend_from_slice(text.as_bytes());
        Ok(())
    }
}

impl WasiView for ShardState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl wasmtime::ResourceLimiter for ShardState {
    /// Called for every memory of every instance (a component may have
    /// several): the limit holds for their sum.
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let grow = (desired as u64).saturating_sub(current as u64);
        let before = self.memory_used.fetch_add(grow, Ordering::Relaxed);
        if before.saturating_add(grow) > self.limits.memory {
            self.memory_used.fetch_sub(grow, Ordering::Relaxed);
            self.memory_denied = true;
            return Ok(false);
        }
        self.memory_own += grow;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

impl wit::Host for ShardState {}

impl wit_host::Host for ShardState {
    fn log(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        let level = match level {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        };
        let message = crate::text::truncate(&message, super::MESSAGE_MAX * 4);
        self.append_log(&format!("[{level}] {message}\n"))
    }

    fn start_helper(&mut self) -> wasmtime::Result<Result<Resource<HelperHandle>, String>> {
        let Some(spawner) = &mut self.spawner else {
            return Ok(Err(
                "helpers start only from a shard's `run`, not from a helper, `describe` or `plan`"
                    .into(),
            ));
        };
        match spawner.start() {
            Ok(handle) => Ok(Ok(self.table.push(handle)?)),
            Err(why) => Ok(Err(why)),
        }
    }

    fn progress(&mut self, done: u64, total: u64) -> wasmtime::Result<()> {
        self.progress = (done, total);
        Ok(())
    }

    fn emit(&mut self, name: String, data: Vec<u8>) -> wasmtime::Result<Result<(), String>> {
        if let Err(why) = check_output_name(&name) {
            return Ok(Err(why));
        }
        let outputs = &mut self.outputs;
        let new = !outputs.files.contains_key(&name);
        if new {
            if let Some(why) = outputs.conflict(&name) {
                return Ok(Err(why));
            }
            if outputs.files.len() as u64 >= self.limits.outputs {
                let msg = format!(
                    "the shard wrote more than `limits.outputs` ({}) side outputs",
                    self.limits.outputs
                );
                return Err(HostStop::LimitExceeded(msg).into());
            }
            outputs.cost += name.len() as u64;
        }
        outputs.cost += OUTPUT_OVERHEAD + data.len() as u64;
        if outputs.cost > self.limits.output_size {
            let msg = format!(
                "the shard's side outputs exceed `limits.output_size` ({} bytes, \
                 counting {OUTPUT_OVERHEAD} bytes for each `emit` and the name of each file)",
                self.limits.output_size
            );
            return Err(HostStop::LimitExceeded(msg).into());
        }
        outputs
            .files
            .entry(name)
            .or_default()
            .extend_from_slice(&data);
        Ok(Ok(()))
    }
}

impl wit_host::HostHelper for ShardState {
    fn send(
        &mut self,
        helper: Resource<HelperHandle>,
        request: Vec<u8>,
    ) -> wasmtime::Result<Result<(), String>> {
        Ok(self.table.get_mut(&helper)?.send(request))
    }

    fn receive(
        &mut self,
        helper: Resource<HelperHandle>,
    ) -> wasmtime::Result<Result<Vec<u8>, String>> {
        Ok(self.table.get_mut(&helper)?.receive())
    }

    fn drop(&mut self, helper: Resource<HelperHandle>) -> wasmtime::Result<()> {
        // Dropping the handle stops the helper and joins its thread.
        self.table.delete(helper)?;
        Ok(())
    }
}

impl wit_host::HostTableWriter for ShardState {
    fn push_row(
        &mut self,
        _writer: Resource<TableWriter>,
        row: Vec<(String, wit::Cell)>,
    ) -> wasmtime::Result<Result<(), String>> {
        let cells: Vec<(String, Cell)> = row.into_iter().map(|(k, v)| (k, from_wit(v))).collect();
        match self.part.push(cells.iter().map(|(k, v)| (k.as_str(), v))) {
            Ok(()) => Ok(Ok(())),
            Err(e @ (RowError::TooLarge { .. } | RowError::TooManyColumns { .. })) => {
                Err(HostStop::LimitExceeded(e.to_string()).into())
            }
            Err(e @ RowError::Malformed { .. }) => Err(HostStop::BadRow(e.to_string()).into()),
        }
    }

    fn drop(&mut self, writer: Resource<TableWriter>) -> wasmtime::Result<()> {
        self.table.delete(writer)?;
        Ok(())
    }
}

/// Whether `path` is relative, at most 512 bytes, of `/`-separated
/// segments of `[A-Za-z0-9._-]`, none `.` or `..`: nothing that could climb
/// out of the directory it names something in.
pub(crate) fn is_plain_path(path: &str) -> bool {
    !path.is_empty()
        && path.len() <= 512
        && path.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        })
}

/// A side-output name: a plain path of at most 16 segments.
pub(crate) fn check_output_name(name: &str) -> Result<(), String> {
    let ok = is_plain_path(name) && name.split('/').count() <= 16;
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid output name `{}`: use at most 16 `/`-separated segments of letters, digits, \
             `.`, `_` and `-` (512 bytes in all)",
            crate::text::escape_controls(&crate::text::truncate(name, 200))
        ))
    }
}

pub(crate) fn from_wit(c: wit::Cell) -> Cell {
    match c {
        wit::Cell::Null => Cell::Null,
        wit::Cell::Boolean(b) => Cell::Bool(b),
        wit::Cell::Integer(i) => Cell::Int(i),
        wit::Cell::Float(f) => Cell::Float(f),
        wit::Cell::Text(s) => Cell::Text(s),
    }
}

pub(crate) fn to_wit(c: &Cell) -> wit::Cell {
    match c {
        Cell::Null => wit::Cell::Null,
        Cell::Bool(b) => wit::Cell::Boolean(*b),
        Cell::Int(i) => wit::Cell::Integer(*i),
        Cell::Float(f) => wit::Cell::Float(*f),
        Cell::Text(s) => wit::Cell::Text(s.clone()),
    }
}

/// A linker with WASI p2 (async: a blocking call is a future the host's
/// deadline can drop) and our host interface.
pub(crate) fn linker(engine: &wasmtime::Engine) -> wasmtime::Result<Linker<ShardState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    Bindings::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
    Ok(linker)
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::ResourceLimiter;

    fn state(memory: u64) -> ShardState {
        let limits = HostLimits {
            memory,
            output_size: 1 << 20,
            log_size: 1 << 20,
            outputs: 3,
            columns: 10,
            timeout: std::time::Duration::from_secs(1),
        };
        ShardState::new(WasiCtx::builder().build(), limits)
    }

    #[test]
    fn the_memory_limit_holds_for_all_memories_together() {
        let mut s = state(64 << 20);
        assert!(s.memory_growing(0, 40 << 20, None).unwrap());
        // A second memory of the same call: 40 + 40 > 64.
        assert!(!s.memory_growing(0, 40 << 20, None).unwrap());
        assert!(s.memory_denied);
        assert!(s.memory_growing(0, 20 << 20, None).unwrap());
        assert!(s.memory_growing(40 << 20, 44 << 20, None).unwrap());
        assert!(!s.memory_growing(44 << 20, 45 << 20, None).unwrap());
    }

    #[test]
    fn side_outputs_are_counted_and_cannot_be_file_and_folder() {
        use wit_host::Host;
        let mut s = state(1 << 20);
        assert_eq!(s.emit("a/b".into(), b"x".to_vec()).unwrap(), Ok(()));
        let e = s.emit("a".into(), vec![]).unwrap().unwrap_err();
        assert!(e.contains("folder of `a/b`"), "{e}");
        let e = s.emit("a/b/c".into(), vec![]).unwrap().unwrap_err();
        assert!(e.contains("inside `a/b`"), "{e}");
        assert_eq!(s.emit("a/b".into(), b"y".to_vec()).unwrap(), Ok(()));
        assert_eq!(s.emit("ab".into(), vec![]).unwrap(), Ok(()));
        assert_eq!(s.emit("a.c".into(), vec![]).unwrap(), Ok(()));
        let stop = s.emit("d".into(), vec![]).unwrap_err();
        assert!(stop.to_string().contains("limits.outputs"), "{stop}");
        let files = s.outputs.into_files();
        assert_eq!(files["a/b"], b"xy");
    }
}
