//! `engine new NAME`: scaffold a plugin crate that builds for wasm32-wasip2 as it is.

use crate::InputError;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// What `engine new` was asked for.
#[derive(Debug, Clone)]
pub struct NewOptions {
    /// The crate name (lowercase letters, digits, `-`, `_`).
    pub name: String,
    /// Where to create it (default `./NAME`).
    pub path: Option<PathBuf>,
    /// This repository's `guest-sdk` (default: found beside the engine, else `$ENGINE_GUEST_SDK`).
    pub sdk: Option<PathBuf>,
}

/// What was created.
#[derive(Debug, Clone)]
pub struct Scaffolded {
    pub dir: PathBuf,
    pub function: String,
    pub sdk: PathBuf,
}

/// Check a crate name: starts with a lowercase letter, then lowercase letters,
/// digits, `-` or `_`.
pub fn validate_name(name: &str) -> Result<(), InputError> {
    let ok = name.len() <= 64
        && name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !ok {
        return Err(InputError::msg(format!(
            "invalid plugin name `{name}`: use lowercase letters, digits, `-` and `_`, starting with a letter (e.g. `my-bench`)"
        )));
    }
    const RESERVED: &[&str] = &[
        "test",
        "std",
        "core",
        "alloc",
        "proc_macro",
        "self",
        "crate",
    ];
    if RESERVED.contains(&name) {
        return Err(InputError::msg(format!(
            "invalid plugin name `{name}`: it is reserved by Rust/Cargo; pick another"
        )));
    }
    Ok(())
}

/// Is `dir` a `guest-sdk` crate?
fn is_sdk(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("Cargo.toml"))
        .is_ok_and(|t| t.contains("name = \"guest-sdk\""))
}

/// Find the guest SDK: `--sdk`, else `guest-sdk` in an ancestor of the running
/// executable's folder (`target/debug/engine` -> the repository root), else
/// `$ENGINE_GUEST_SDK`.
pub fn find_sdk(explicit: Option<&Path>) -> Result<PathBuf, InputError> {
    let canonical = |p: &Path| -> Result<PathBuf, InputError> {
        let c = std::fs::canonicalize(p).map_err(|e| {
            InputError::msg(format!("cannot use the guest SDK `{}`: {e}", p.display()))
        })?;
        if !is_sdk(&c) {
            return Err(InputError::msg(format!(
                "`{}` is not the guest SDK (no `Cargo.toml` with `name = \"guest-sdk\"`)",
                p.display()
            )));
        }
        Ok(c)
    };
    if let Some(p) = explicit {
        return canonical(p);
    }
    if let Ok(exe) = std::env::current_exe() {
        // target/debug/engine -> ../../guest-sdk; a custom target dir nests deeper.
        for dir in exe.ancestors().skip(1).take(5) {
            let candidate = dir.join("guest-sdk");
            if is_sdk(&candidate) {
                return canonical(&candidate);
            }
        }
    }
    if let Some(env) = std::env::var_os("ENGINE_GUEST_SDK").filter(|e| !e.is_empty()) {
        return canonical(Path::new(&env));
    }
    Err(InputError::msg(
        "cannot find the guest SDK (`guest-sdk`) beside this engine executable and \
         `ENGINE_GUEST_SDK` is not set; pass `--sdk PATH` (the `guest-sdk` folder of the engine's repository)",
    ))
}

/// Create the crate; refuses an existing non-empty directory.
pub fn scaffold(opts: &NewOptions) -> Result<Scaffolded> {
    validate_name(&opts.name)?;
    let dir = opts
        .path
        .clone()
        .unwrap_or_else(|| PathBuf::from(&opts.name));
    if dir.exists() {
        let empty = std::fs::read_dir(&dir)
            .with_context(|| format!("cannot read `{}`", dir.display()))?
            .next()
            .is_none();
        if !empty || !dir.is_dir() {
            return Err(InputError::msg(format!(
                "`{}` already exists and is not empty; choose another `--path` or remove it",
                dir.display()
            ))
            .into());
        }
    }
    let sdk = find_sdk(opts.sdk.as_deref())?;
    let ident = opts.name.replace('-', "_");
    let function = format!("{ident}.run");
    let files = [
        ("Cargo.toml", cargo_toml(&opts.name, &sdk)),
        ("src/lib.rs", lib_rs(&ident)),
        ("config.toml", config_toml(&ident)),
        (".gitignore", "/target\n/results\n".to_owned()),
    ];
    for (rel, text) in files {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create `{}`", parent.display()))?;
        }
        std::fs::write(&path, text)
            .with_context(|| format!("cannot write `{}`", path.display()))?;
    }
    // Pin the dependency versions the SDK is built and tested with (cargo
    // drops the entries the new crate does not use on its first build).
    if let Some(lock) = sdk
        .parent()
        .map(|p| p.join("Cargo.lock"))
        .filter(|l| l.is_file())
    {
        let _ = std::fs::copy(&lock, dir.join("Cargo.lock"));
    }
    Ok(Scaffolded { dir, function, sdk })
}

/// A TOML basic string.
fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn cargo_toml(name: &str, sdk: &Path) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

# A WebAssembly component for the engine (cdylib) that also builds natively for
# `cargo test` (rlib).
[lib]
crate-type = ["cdylib", "rlib"]

[dependencies]
guest-sdk = {{ path = {sdk} }}
serde = {{ version = "1", features = ["derive"] }}

# Its own workspace, so it builds standalone even inside another one.
[workspace]

[profile.release]
opt-level = 3
"#,
        sdk = toml_str(&sdk.to_string_lossy())
    )
}

fn lib_rs(ident: &str) -> String {
    LIB_RS
        .replace("__IDENT__", ident)
        .replace("__TYPE__", &type_name(ident))
}

/// `my_bench` -> `MyBench`.
fn type_name(ident: &str) -> String {
    let t: String = ident
        .split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect();
    if t.is_empty() { "Bench".into() } else { t }
}

const LIB_RS: &str = r##"//! A benchmark plugin for the engine.
//!
//! Build:  cargo build --target wasm32-wasip2 --release
//! Run:    engine run config.toml --plugins target/wasm32-wasip2/release
//! Test:   cargo test   (natively, no wasm needed)

use guest_sdk::{Call, Function, Param, Plugin, Result, Row, Shard, Shards, Table};
use serde::{Deserialize, Serialize};

struct __TYPE__;

/// What one shard works on (any serde value; it travels as JSON). `run`
/// sees only its shard, not the call's arguments: everything it needs is here.
#[derive(Serialize, Deserialize)]
struct Work {
    size: i64,
    repeats: i64,
}

impl Plugin for __TYPE__ {
    /// The functions this plugin offers, with typed, documented parameters;
    /// the engine checks a config's arguments against them and fills in defaults.
    fn describe() -> Vec<Function> {
        vec![
            Function::new(
                "__IDENT__.run",
                "Sort `size` pseudo-random integers `repeats` times, one shard per size; \
                 report the best time and a checksum.",
            )
            .param(Param::new("sizes", "list<int>", "How many integers to sort, one shard each."))
            .param(Param::new("repeats", "int", "Timed repetitions per size.").default(3)),
        ]
    }

    /// Split a call into shards: one per size. The key cells name a shard in
    /// the result table (and in the row written if it fails); the payload
    /// carries all the shard's `run` needs. A shard that reads data would
    /// also name its folders with `.reads(["folder"])`.
    fn plan(call: &Call) -> Result<Shards> {
        let sizes: Vec<i64> = call.arg("sizes")?;
        let repeats: i64 = call.arg("repeats")?;
        if repeats < 1 {
            guest_sdk::bail!("repeats must be >= 1, got {repeats}");
        }
        sizes
            .iter()
            .map(|&size| {
                if size < 0 {
                    guest_sdk::bail!("sizes must be >= 0, got {size}");
                }
                Shard::new().key("size", size).payload(Work { size, repeats })
            })
            .collect()
    }

    /// Do one shard's work and push its row(s).
    fn run(_function: &str, shard: &Shard, out: &mut Table) -> Result<()> {
        let work: Work = shard.get()?;
        let repeats = work.repeats;
        let mut best = f64::INFINITY;
        let mut checksum = 0u64;
        for round in 0..repeats {
            let mut values = random_values(work.size as usize, 42);
            let start = std::time::Instant::now();
            values.sort_unstable();
            best = best.min(start.elapsed().as_secs_f64());
            if values.windows(2).any(|w| w[0] > w[1]) {
                guest_sdk::bail!("not sorted");
            }
            // Sum of every 7th element, wrapping: the same for every round.
            checksum = values.iter().step_by(7).fold(0u64, |a, v| a.wrapping_add(*v));
            guest_sdk::progress(round as u64 + 1, repeats as u64);
        }
        guest_sdk::info!("size {} sorted in {best:.6}s", work.size);
        out.push(
            Row::new()
                .set("size", work.size)
                .set("repeats", repeats)
                .set("best_time", best)
                .set("checksum", (checksum % (1 << 53)) as i64),
        )
    }
}

/// `n` pseudo-random integers (xorshift64*), the same for the same seed.
fn random_values(n: usize, seed: u64) -> Vec<u64> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_F491_4F6C_DD1D) % 1_000_000
        })
        .collect()
}

guest_sdk::export!(__TYPE__);

#[cfg(test)]
mod tests {
    use super::__TYPE__;
    use guest_sdk::testing;

    #[test]
    fn one_row_per_size() {
        let rows = testing::call::<__TYPE__>("__IDENT__.run", r#"{"sizes": [10, 1000]}"#).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1].get("size"), Some(&1000i64.into()));
        assert_eq!(rows[0].get("repeats"), Some(&3i64.into()));
    }

    #[test]
    fn negative_sizes_are_refused() {
        let err = testing::call::<__TYPE__>("__IDENT__.run", r#"{"sizes": [-1]}"#).unwrap_err();
        assert!(err.message().contains("sizes must be >= 0"), "{err}");
    }
}
"##;

fn config_toml(ident: &str) -> String {
    format!(
        r#"# Build the plugin, then run it:
#   cargo build --target wasm32-wasip2 --release
#   engine run config.toml --plugins target/wasm32-wasip2/release
[run]
function = "{ident}.run"
seed = 0

[run.args]
sizes = [1000, 10000, 100000]
repeats = 3

[cluster]
backend = "local"
workers = 2

[limits]
memory = "256M"
timeout = "1m"
retries = 0

[output]
path = "results/{ident}.csv"
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "my-bench", "bench_2", "x1-y_z"] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "1abc", "My", "a b", "a.b", "-a", "é", "test"] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn type_names() {
        assert_eq!(type_name("my_bench"), "MyBench");
        assert_eq!(type_name("x"), "X");
        assert_eq!(type_name("a__b"), "AB");
    }

    #[test]
    fn refuses_a_non_empty_directory() {
        let dir = std::env::temp_dir().join(format!("engine-scaffold-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("keep.txt"), "x").unwrap();
        let opts = NewOptions {
            name: "demo".into(),
            path: Some(dir.clone()),
            sdk: None,
        };
        let err = scaffold(&opts).unwrap_err();
        assert!(err.downcast_ref::<InputError>().is_some());
        assert!(err.to_string().contains("not empty"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn manifest_quotes_the_sdk_path() {
        let t = cargo_toml("demo", Path::new("/x/\"y\\z"));
        assert!(t.contains(r#"guest-sdk = { path = "/x/\"y\\z" }"#), "{t}");
    }
}
