//! Write benchmark functions for the engine.
//!
//! A plugin is a type implementing [`Plugin`], exported with [`export!`] and built
//! with `cargo build --target wasm32-wasip2 --release`:
//!
//! ```ignore
//! use guest_sdk::{Call, Function, Param, Plugin, Result, Row, Shard, Shards, Table};
//!
//! struct Hello;
//!
//! impl Plugin for Hello {
//!     fn describe() -> Vec<Function> {
//!         vec![Function::new("hello.greet", "Greet each name.")
//!             .param(Param::new("names", "list<string>", "Who to greet."))]
//!     }
//!     fn plan(call: &Call) -> Result<Shards> {
//!         let names: Vec<String> = call.arg("names")?;
//!         names.iter().map(|n| Shard::new().key("name", n.as_str()).payload(n)).collect()
//!     }
//!     fn run(_function: &str, shard: &Shard, out: &mut Table) -> Result<()> {
//!         let name: String = shard.get()?;
//!         out.push(Row::new().set("name", name.as_str()).set("greeting", format!("hello, {name}")))
//!     }
//! }
//!
//! guest_sdk::export!(Hello);
//! ```
//!
//! `run` sees the shard and nothing else of the call: `plan` puts everything a
//! shard needs into its payload. That is what lets the engine reuse a shard's
//! result (a cell) in any later call that plans the same shard, e.g. after a
//! model is added to a sweep. A shard that reads data names its directories
//! with [`Shard::reads`]; its sandbox then mounts only those.
//!
//! `plan` returns [`Shards`]: a list (`.collect()` of shards), or, for a plan
//! too big to hold, [`Shards::lazy`], made as the engine takes them a page at
//! a time.
//!
//! Plugin logic also builds natively, so it can be unit-tested with plain
//! `cargo test` through [`testing`].

extern crate self as guest_sdk;

use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt;

#[doc(hidden)]
pub use wit_bindgen;

#[doc(hidden)]
// The generated `run` entry point takes its lowered arguments one by one.
#[allow(clippy::too_many_arguments)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "plugin-with-helper",
        runtime_path: "::guest_sdk::wit_bindgen::rt",
        export_macro_name: "__export_plugin",
        pub_export_macro: true,
        default_bindings_module: "::guest_sdk::bindings",
        additional_derives: [PartialEq],
    });
}

use bindings::engine::plugin::{host, types as wit};
#[doc(hidden)]
pub use bindings::exports::engine::plugin::helper::Guest as HelperGuest;
use bindings::exports::engine::plugin::planner;
#[doc(hidden)]
pub use planner::Guest as PlanGuest;

pub mod testing;

/// The version of the WIT contract this SDK speaks.
pub const WIT_VERSION: &str = "0.3.0";

/// Where the run's read-only data directory is mounted inside the sandbox.
///
/// Natively (in unit tests) it is `$ENGINE_DATA_DIR`, or `data` if unset.
pub fn data_dir() -> std::path::PathBuf {
    if cfg!(target_arch = "wasm32") {
        "/data".into()
    } else {
        std::env::var_os("ENGINE_DATA_DIR").map_or_else(|| "data".into(), Into::into)
    }
}

// ---------------------------------------------------------------- errors

/// An error a plugin returns; the engine writes its message into the shard's
/// `error` column.
#[derive(Debug, Clone, PartialEq)]
pub struct Error(String);

impl Error {
    /// An error with this message.
    pub fn new(message: impl fmt::Display) -> Self {
        Error(message.to_string())
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<E: std::error::Error> From<E> for Error {
    fn from(e: E) -> Self {
        Error(e.to_string())
    }
}

/// The result type of plugin functions.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Return early with an [`Error`] built like `format!`.
#[macro_export]
macro_rules! bail {
    ($($arg:tt)*) => { return Err($crate::Error::new(format!($($arg)*))) };
}

// ---------------------------------------------------------------- cells and rows

/// One cell of a result table: null, bool, integer, float or text.
pub type Cell = wit::Cell;

impl From<bool> for Cell {
    fn from(v: bool) -> Self {
        Cell::Boolean(v)
    }
}
impl From<i64> for Cell {
    fn from(v: i64) -> Self {
        Cell::Integer(v)
    }
}
impl From<i32> for Cell {
    fn from(v: i32) -> Self {
        Cell::Integer(v.into())
    }
}
impl From<usize> for Cell {
    fn from(v: usize) -> Self {
        Cell::Integer(i64::try_from(v).unwrap_or(i64::MAX))
    }
}
impl From<f64> for Cell {
    fn from(v: f64) -> Self {
        Cell::Float(v)
    }
}
impl From<f32> for Cell {
    fn from(v: f32) -> Self {
        Cell::Float(v.into())
    }
}
impl From<&str> for Cell {
    fn from(v: &str) -> Self {
        Cell::Text(v.to_owned())
    }
}
impl From<String> for Cell {
    fn from(v: String) -> Self {
        Cell::Text(v)
    }
}
impl<T: Into<Cell>> From<Option<T>> for Cell {
    fn from(v: Option<T>) -> Self {
        v.map_or(Cell::Null, Into::into)
    }
}

/// A result row: named cells, in the order they are set.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Row {
    cells: Vec<(String, Cell)>,
}

impl Row {
    /// An empty row.
    pub fn new() -> Self {
        Row::default()
    }

    /// Set a cell; setting a column again replaces its value.
    pub fn set(mut self, column: &str, value: impl Into<Cell>) -> Self {
        let value = value.into();
        match self.cells.iter_mut().find(|(c, _)| c == column) {
            Some(slot) => slot.1 = value,
            None => self.cells.push((column.to_owned(), value)),
        }
        self
    }

    /// The value of a column, if set.
    pub fn get(&self, column: &str) -> Option<&Cell> {
        self.cells.iter().find(|(c, _)| c == column).map(|(_, v)| v)
    }

    /// The cells in order.
    pub fn cells(&self) -> &[(String, Cell)] {
        &self.cells
    }
}

/// Where a shard's rows go: the engine's table in the sandbox, a vector in tests.
pub struct Table<'a> {
    sink: Sink<'a>,
}

enum Sink<'a> {
    Host(&'a host::TableWriter),
    Memory(&'a mut Vec<Row>),
}

impl<'a> Table<'a> {
    /// A table that collects rows in memory (for native tests).
    pub fn in_memory(rows: &'a mut Vec<Row>) -> Self {
        Table {
            sink: Sink::Memory(rows),
        }
    }

    /// Push one row. Fails if the engine refuses it (too many rows or bytes).
    pub fn push(&mut self, row: Row) -> Result<()> {
        match &mut self.sink {
            Sink::Host(writer) => writer.push_row(&row.cells).map_err(Error),
            Sink::Memory(rows) => {
                rows.push(row);
                Ok(())
            }
        }
    }
}

// ---------------------------------------------------------------- describe

/// A parameter of a function, as shown by `engine functions` and checked by
/// the engine before anything runs.
#[derive(Debug, Clone)]
pub struct Param {
    name: String,
    ty: String,
    default: Option<String>,
    doc: String,
}

impl Param {
    /// A required parameter. `ty` is `bool`, `int`, `float`, `string`,
    /// `list<T>`, `map`, `any`, or alternatives such as `int | list<string>`.
    pub fn new(name: &str, ty: &str, doc: &str) -> Self {
        Param {
            name: name.into(),
            ty: ty.into(),
            default: None,
            doc: doc.into(),
        }
    }

    /// Make the parameter optional with this default.
    pub fn default(mut self, value: impl Serialize) -> Self {
        self.default = Some(serde_json::to_string(&value).unwrap_or_else(|_| "null".into()));
        self
    }
}

/// A function a plugin offers.
#[derive(Debug, Clone)]
pub struct Function {
    name: String,
    doc: String,
    params: Vec<Param>,
}

impl Function {
    /// A function named by a dotted path such as `hello.greet`.
    pub fn new(name: &str, doc: &str) -> Self {
        Function {
            name: name.into(),
            doc: doc.into(),
            params: Vec::new(),
        }
    }

    /// Add a parameter.
    pub fn param(mut self, param: Param) -> Self {
        self.params.push(param);
        self
    }

    /// The dotted name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn into_wit(self) -> wit::FunctionInfo {
        wit::FunctionInfo {
            name: self.name,
            doc: self.doc,
            params: self
                .params
                .into_iter()
                .map(|p| wit::Param {
                    name: p.name,
                    type_: p.ty,
                    default: p.default,
                    doc: p.doc,
                })
                .collect(),
        }
    }
}

// ---------------------------------------------------------------- calls and shards

/// One call of a function: its name and its arguments (defaults filled in), as
/// `plan` sees it. `run` does not: it gets only a shard.
#[derive(Debug, Clone)]
pub struct Call {
    function: String,
    args: serde_json::Map<String, serde_json::Value>,
}

impl Call {
    /// A call from a function name and a JSON object of arguments.
    pub fn new(function: &str, args_json: &str) -> Result<Self> {
        let args = serde_json::from_str(args_json)
            .map_err(|e| Error::new(format!("arguments are not a JSON object: {e}")))?;
        Ok(Call {
            function: function.into(),
            args,
        })
    }

    /// The function's dotted name.
    pub fn function(&self) -> &str {
        &self.function
    }

    /// One argument, deserialized.
    pub fn arg<T: DeserializeOwned>(&self, name: &str) -> Result<T> {
        let value = self
            .args
            .get(name)
            .cloned()
            .unwrap_or(serde_json::Value::Null);
        serde_json::from_value(value).map_err(|e| Error::new(format!("argument `{name}`: {e}")))
    }

    /// All arguments, deserialized into one struct.
    pub fn args<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_value(serde_json::Value::Object(self.args.clone()))
            .map_err(|e| Error::new(format!("arguments: {e}")))
    }
}

/// One independent piece of a call: the key cells that name it, the payload
/// that carries everything its `run` needs, and the data directories it reads.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Shard {
    key: Vec<(String, Cell)>,
    payload: String,
    reads: Vec<String>,
}

impl Shard {
    /// An empty shard.
    pub fn new() -> Self {
        Shard {
            key: Vec::new(),
            payload: "null".into(),
            reads: Vec::new(),
        }
    }

    /// Add an identifying cell (repeated in the error row if the shard fails).
    pub fn key(mut self, column: &str, value: impl Into<Cell>) -> Self {
        self.key.push((column.into(), value.into()));
        self
    }

    /// Attach everything the shard's `run` needs, serialized as JSON (`run`
    /// is not given the call's arguments).
    pub fn payload(mut self, value: impl Serialize) -> Result<Self> {
        self.payload = serde_json::to_string(&value)?;
        Ok(self)
    }

    /// Declare data directories the shard's `run` reads, relative to
    /// [`data_dir`] (`/`-separated segments of `[A-Za-z0-9._-]`, no `.` or
    /// `..`), e.g. `.reads(["BasicMotions"])`. The engine then mounts only
    /// these, each at `/data/<dir>`, and refuses the plan if one is not a
    /// directory of the run's data. A shard that declares none sees all of
    /// `/data`.
    pub fn reads<S: Into<String>>(mut self, dirs: impl IntoIterator<Item = S>) -> Self {
        self.reads.extend(dirs.into_iter().map(Into::into));
        self
    }

    /// The identifying cells.
    pub fn keys(&self) -> &[(String, Cell)] {
        &self.key
    }

    /// The data directories the shard reads (empty: all of them).
    pub fn read_dirs(&self) -> &[String] {
        &self.reads
    }

    /// Read the payload back.
    pub fn get<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_str(&self.payload).map_err(|e| Error::new(format!("shard payload: {e}")))
    }
}

/// The shards of a call, as [`Plugin::plan`] returns them, in order.
///
/// Collect a plan that fits in memory (`.collect()` of `Shard`s or of
/// `Result<Shard>`s, or `vec.into()`); make one of millions with
/// [`Shards::lazy`], which the engine drives a page at a time, so that neither
/// side holds the whole plan.
pub struct Shards(Box<dyn Iterator<Item = Result<Shard>>>);

impl Shards {
    /// Shards made one at a time as the engine asks for them. An `Err`
    /// item ends the plan with its message.
    pub fn lazy(shards: impl Iterator<Item = Result<Shard>> + 'static) -> Shards {
        Shards(Box::new(shards))
    }
}

impl From<Vec<Shard>> for Shards {
    fn from(shards: Vec<Shard>) -> Self {
        Shards(Box::new(shards.into_iter().map(Ok)))
    }
}

impl FromIterator<Shard> for Shards {
    fn from_iter<I: IntoIterator<Item = Shard>>(shards: I) -> Self {
        shards.into_iter().collect::<Vec<_>>().into()
    }
}

impl Iterator for Shards {
    type Item = Result<Shard>;
    fn next(&mut self) -> Option<Result<Shard>> {
        self.0.next()
    }
}

// ---------------------------------------------------------------- the plugin trait

/// A benchmark plugin.
pub trait Plugin {
    /// The functions this plugin offers, with their parameters.
    fn describe() -> Vec<Function>;
    /// Split a call into independent shards, each carrying in its payload
    /// everything its `run` needs.
    fn plan(call: &Call) -> Result<Shards>;
    /// Run one shard of `function`, pushing result rows into `out`. It sees
    /// the shard, not the call's arguments.
    fn run(function: &str, shard: &Shard, out: &mut Table) -> Result<()>;
    /// Answer one request of a [`Helper`] this plugin started: called in the
    /// helper's own instance, which keeps its state (statics) between requests.
    fn serve(request: &[u8]) -> Result<Vec<u8>> {
        let _ = request;
        Err(Error::new("this plugin serves no helper requests"))
    }
}

// ---------------------------------------------------------------- host services

/// Severity of a log message.
pub use host::Level;

/// Write a message to the run's log. Natively, to stderr.
pub fn log(level: Level, message: &str) {
    if cfg!(target_arch = "wasm32") {
        host::log(level, message);
    } else {
        eprintln!("[{level:?}] {message}");
    }
}

/// Log at info level, like `format!`.
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::log($crate::Level::Info, &format!($($arg)*)) };
}

/// Log at warn level, like `format!`.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::log($crate::Level::Warn, &format!($($arg)*)) };
}

/// Report progress within the current shard.
pub fn progress(done: u64, total: u64) {
    if cfg!(target_arch = "wasm32") {
        host::progress(done, total);
    }
}

/// Append bytes to a named side output (e.g. `samples/PAR/BasicMotions.csv`),
/// stored by the engine beside the result. Natively, kept for [`testing`].
pub fn emit(name: &str, data: &[u8]) -> Result<()> {
    if cfg!(target_arch = "wasm32") {
        host::emit(name, data).map_err(Error)
    } else {
        testing::record_emit(name, data);
        Ok(())
    }
}

/// Another instance of this plugin working beside the caller, on a thread of
/// its own, answering requests with [`Plugin::serve`]. It shares the shard's
/// sandbox and limits and ends with the shard. [`Helper::start`] fails where
/// the run's `limits.threads` leaves no room (and always natively): the caller
/// then does the work itself, so a plugin's results must not depend on
/// whether a helper ran.
pub struct Helper {
    #[cfg(target_arch = "wasm32")]
    inner: host::Helper,
}

impl Helper {
    /// Start a helper, or say why none can start.
    pub fn start() -> Result<Helper> {
        #[cfg(target_arch = "wasm32")]
        {
            host::start_helper()
                .map(|inner| Helper { inner })
                .map_err(Error)
        }
        #[cfg(not(target_arch = "wasm32"))]
        Err(Error::new("helpers run only inside the engine"))
    }

    /// Hand the helper a request; returns while it works on it.
    pub fn send(&self, request: &[u8]) -> Result<()> {
        #[cfg(target_arch = "wasm32")]
        return self.inner.send(request).map_err(Error);
        #[cfg(not(target_arch = "wasm32"))]
        {
            let _ = request;
            unreachable!("no helper starts natively")
        }
    }

    /// Wait for the reply to the request sent last.
    pub fn receive(&self) -> Result<Vec<u8>> {
        #[cfg(target_arch = "wasm32")]
        return self.inner.receive().map_err(Error);
        #[cfg(not(target_arch = "wasm32"))]
        unreachable!("no helper starts natively")
    }
}

// ---------------------------------------------------------------- export glue

#[doc(hidden)]
pub struct Exports<P>(std::marker::PhantomData<P>);

impl<P: Plugin> bindings::Guest for Exports<P> {
    fn describe() -> Vec<wit::FunctionInfo> {
        P::describe().into_iter().map(Function::into_wit).collect()
    }

    fn run(function: String, shard: wit::Shard, out: &host::TableWriter) -> Result<(), String> {
        let shard = Shard {
            key: shard.key,
            payload: shard.payload,
            reads: shard.reads,
        };
        P::run(
            &function,
            &shard,
            &mut Table {
                sink: Sink::Host(out),
            },
        )
        .map_err(|e| e.0)
    }
}

impl<P: Plugin> bindings::exports::engine::plugin::planner::Guest for Exports<P> {
    type Shards = PlanShards;

    fn plan(function: String, args: String) -> Result<planner::Shards, String> {
        let call = Call::new(&function, &args).map_err(|e| e.0)?;
        let shards = P::plan(&call).map_err(|e| e.0)?;
        Ok(planner::Shards::new(PlanShards(std::cell::RefCell::new(
            shards,
        ))))
    }
}

impl<P: Plugin> bindings::exports::engine::plugin::helper::Guest for Exports<P> {
    fn serve(request: Vec<u8>) -> Result<Vec<u8>, String> {
        P::serve(&request).map_err(|e| e.0)
    }
}

/// A plan in progress, as the engine sees it: [`Shards`] taken in pages.
#[doc(hidden)]
pub struct PlanShards(std::cell::RefCell<Shards>);

impl planner::GuestShards for PlanShards {
    fn next(&self, max: u32) -> Result<Vec<wit::Shard>, String> {
        let mut shards = self.0.borrow_mut();
        let mut page = Vec::new();
        for shard in shards.by_ref().take(max as usize) {
            let s = shard.map_err(|e| e.0)?;
            page.push(wit::Shard {
                key: s.key,
                payload: s.payload,
                reads: s.reads,
            });
        }
        Ok(page)
    }
}

/// Export a [`Plugin`] implementation as the component's entry points.
/// Only in the wasm build: natively (a `cdylib` built for `cargo test`) the
/// exports' names (`engine:plugin/planner@0.3.0#…`) are no linker symbols.
#[macro_export]
macro_rules! export {
    ($plugin:ty) => {
        #[cfg(target_arch = "wasm32")]
        type __EnginePluginExports = $crate::Exports<$plugin>;
        #[cfg(target_arch = "wasm32")]
        $crate::bindings::__export_plugin!(__EnginePluginExports with_types_in $crate::bindings);
        /// Natively, the entry points the wasm build exports (so that the
        /// plugin's code counts as used); not to be called.
        #[cfg(not(target_arch = "wasm32"))]
        #[doc(hidden)]
        pub fn __engine_plugin_entry_points() {
            let _ = <$crate::Exports<$plugin> as $crate::bindings::Guest>::describe;
            let _ = <$crate::Exports<$plugin> as $crate::bindings::Guest>::run;
            let _ = <$crate::Exports<$plugin> as $crate::PlanGuest>::plan;
            let _ = <$crate::Exports<$plugin> as $crate::HelperGuest>::serve;
        }
    };
}
