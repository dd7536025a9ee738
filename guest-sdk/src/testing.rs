//! Run a plugin natively, without wasm or the engine, for unit tests.
//!
//! ```ignore
//! let rows = guest_sdk::testing::call::<Hello>("hello.greet", r#"{"names": ["ada"]}"#)?;
//! assert_eq!(rows[0].get("greeting"), Some(&"hello, ada".into()));
//! ```

use crate::{Call, Error, Plugin, Result, Row, Table};
use std::cell::RefCell;
use std::collections::BTreeMap;

thread_local! {
    static EMITTED: RefCell<BTreeMap<String, Vec<u8>>> = const { RefCell::new(BTreeMap::new()) };
}

pub(crate) fn record_emit(name: &str, data: &[u8]) {
    EMITTED.with(|e| {
        e.borrow_mut()
            .entry(name.to_owned())
            .or_default()
            .extend_from_slice(data)
    });
}

/// Side outputs emitted on this thread so far (natively), by name; clears them.
pub fn take_emitted() -> BTreeMap<String, Vec<u8>> {
    EMITTED.with(|e| std::mem::take(&mut *e.borrow_mut()))
}

/// Fill in defaults the way the engine does: every parameter missing from
/// `args_json` gets its declared default.
pub fn with_defaults<P: Plugin>(function: &str, args_json: &str) -> Result<String> {
    let mut args: serde_json::Map<String, serde_json::Value> = serde_json::from_str(args_json)?;
    let info = P::describe()
        .into_iter()
        .find(|f| f.name == function)
        .ok_or_else(|| Error::new(format!("no function `{function}`")))?;
    for p in info.params {
        if !args.contains_key(&p.name) {
            let Some(default) = p.default else {
                return Err(Error::new(format!(
                    "missing required argument `{}`",
                    p.name
                )));
            };
            args.insert(p.name, serde_json::from_str(&default)?);
        }
    }
    Ok(serde_json::Value::Object(args).to_string())
}

/// Plan and run a whole call in this process, shard after shard, returning
/// all rows. The first failing shard's error is returned. As in the engine,
/// `run` gets only the shard. Each of a shard's `reads` must be a directory
/// of [`crate::data_dir`], as the engine checks; natively `run` can still
/// read outside them (the engine's sandbox cannot).
pub fn call<P: Plugin>(function: &str, args_json: &str) -> Result<Vec<Row>> {
    let call = Call::new(function, &with_defaults::<P>(function, args_json)?)?;
    let mut rows = Vec::new();
    for shard in P::plan(&call)? {
        let shard = shard?;
        for dir in shard.read_dirs() {
            let plain = dir
                .split('/')
                .all(|s| !s.is_empty() && s != "." && s != ".." && !s.contains('\\'));
            let path = crate::data_dir().join(dir);
            if !plain || !path.is_dir() {
                return Err(Error::new(format!(
                    "a shard ({:?}) reads `{dir}`, which is not a directory of the data (`{}`)",
                    shard.keys(),
                    crate::data_dir().display()
                )));
            }
        }
        P::run(function, &shard, &mut Table::in_memory(&mut rows))?;
    }
    Ok(rows)
}
