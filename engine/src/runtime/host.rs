//! What a guest sees of the host: the `engine:plugin/host` imports, backed by
//! one shard's state, plus WASI.

use crate::table::{Cell, PartBuilder, RowError};
use std::collections::BTreeMap;
use wasmtime::component::{HasSelf, Linker, Resource, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

mod generated {
    wasmtime::component::bindgen!({
        path: "../guest-sdk/wit",
        world: "plugin",
        imports: { default: trappable },
        with: {
            "engine:plugin/host.table-writer": super::TableWriter,
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
    pub memory: u64,
    pub output_size: u64,
    pub log_size: u64,
}

/// Everything one guest instance can touch.
pub(crate) struct ShardState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: HostLimits,
    pub part: PartBuilder,
    pub log: Vec<u8>,
    pub outputs: BTreeMap<String, Vec<u8>>,
    outputs_bytes: u64,
    pub progress: (u64, u64),
    /// Set when the memory limiter refused a growth.
    pub memory_denied: bool,
}

impl ShardState {
    pub fn new(wasi: WasiCtx, limits: HostLimits) -> Self {
        ShardState {
            wasi,
            table: ResourceTable::new(),
            limits,
            part: PartBuilder::new(limits.output_size),
            log: Vec::new(),
            outputs: BTreeMap::new(),
            outputs_bytes: 0,
            progress: (0, 0),
            memory_denied: false,
        }
    }

    pub fn limits(&self) -> HostLimits {
        self.limits
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
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired as u64 > self.limits.memory {
            self.memory_denied = true;
            return Ok(false);
        }
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
        self.append_log(&format!("[{level}] {message}\n"))
    }

    fn progress(&mut self, done: u64, total: u64) -> wasmtime::Result<()> {
        self.progress = (done, total);
        Ok(())
    }

    fn emit(&mut self, name: String, data: Vec<u8>) -> wasmtime::Result<Result<(), String>> {
        if let Err(why) = check_output_name(&name) {
            return Ok(Err(why));
        }
        self.outputs_bytes += data.len() as u64;
        if self.outputs_bytes > self.limits.output_size {
            let msg = format!(
                "the shard's side outputs exceed `limits.output_size` ({} bytes)",
                self.limits.output_size
            );
            return Err(HostStop::LimitExceeded(msg).into());
        }
        self.outputs
            .entry(name)
            .or_default()
            .extend_from_slice(&data);
        Ok(Ok(()))
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
            Err(e @ RowError::TooLarge { .. }) => {
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

/// A side-output name: a relative path of plain segments, nothing that could
/// climb out of the directory it is stored in.
pub(crate) fn check_output_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 512
        && name.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid output name `{name}`: use `/`-separated segments of letters, digits, `.`, `_` and `-`"
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

/// A linker with WASI p2 and our host interface.
pub(crate) fn linker(engine: &wasmtime::Engine) -> wasmtime::Result<Linker<ShardState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    Bindings::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
    Ok(linker)
}
