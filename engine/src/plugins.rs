//! Finding the component that offers a dotted function path.
//!
//! The search path, in order: `--plugins DIR` (repeatable), the directories in
//! `ENGINE_PLUGIN_PATH` (`:`-separated), then the project's built plugins
//! (`plugins/` beside the `engine` binary's folder, i.e. `target/plugins`).

use crate::runtime::{FunctionInfo, Plugin, Runtime};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where components are looked for.
#[derive(Debug, Clone)]
pub struct SearchPath {
    pub dirs: Vec<PathBuf>,
}

impl SearchPath {
    /// The search path with `extra` directories first.
    pub fn new(extra: &[PathBuf]) -> SearchPath {
        let mut dirs: Vec<PathBuf> = extra.to_vec();
        if let Some(env) = std::env::var_os("ENGINE_PLUGIN_PATH") {
            dirs.extend(std::env::split_paths(&env).filter(|p| !p.as_os_str().is_empty()));
        }
        if let Some(exe_dir) = std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(Path::to_path_buf))
        {
            // target/{debug,release}/engine -> target/plugins; an install's bin/engine -> bin/../plugins.
            if let Some(up) = exe_dir.parent() {
                dirs.push(up.join("plugins"));
            }
        }
        dirs.dedup();
        SearchPath { dirs }
    }

    /// Every `*.wasm` file on the path, directory order, then by name.
    pub fn components(&self) -> Vec<PathBuf> {
        let mut found = Vec::new();
        for dir in &self.dirs {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            let mut files: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "wasm") && p.is_file())
                .collect();
            files.sort();
            found.extend(files);
        }
        found
    }
}

/// A function found on the search path.
pub struct Resolved {
    pub plugin: Arc<Plugin>,
    pub function: FunctionInfo,
    pub path: PathBuf,
}

/// Why a function could not be found.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ResolveError {
    pub message: String,
}

/// What each component offers; components that fail to load are reported.
pub fn catalog(
    runtime: &Runtime,
    search: &SearchPath,
) -> Vec<(PathBuf, anyhow::Result<Vec<FunctionInfo>>)> {
    search
        .components()
        .into_iter()
        .map(|path| {
            let functions = runtime.load_file(&path).and_then(|p| runtime.describe(&p));
            (path, functions)
        })
        .collect()
}

/// Find `function`. Components whose file name matches its first segment
/// (`deepecho.wasm` for `deepecho.benchmark.run_benchmark`) are tried first.
pub fn resolve(
    runtime: &Runtime,
    search: &SearchPath,
    function: &str,
) -> Result<Resolved, ResolveError> {
    let first = function
        .split('.')
        .next()
        .unwrap_or_default()
        .replace('-', "_");
    let mut paths = search.components();
    paths.sort_by_key(|p| {
        let stem = p
            .file_stem()
            .map(|s| s.to_string_lossy().replace('-', "_"))
            .unwrap_or_default();
        stem != first
    });
    let mut known: Vec<String> = Vec::new();
    let mut broken: Vec<String> = Vec::new();
    for path in &paths {
        let loaded = runtime
            .load_file(path)
            .and_then(|p| runtime.describe(&p).map(|f| (p, f)));
        match loaded {
            Ok((plugin, functions)) => {
                if let Some(f) = functions.iter().find(|f| f.name == function) {
                    return Ok(Resolved {
                        plugin,
                        function: f.clone(),
                        path: path.clone(),
                    });
                }
                known.extend(functions.into_iter().map(|f| f.name));
            }
            Err(e) => broken.push(format!("{}: {e:#}", path.display())),
        }
    }
    let mut message = format!("unknown function `{function}`");
    if let Some(best) = crate::config::did_you_mean(function, known.iter().map(String::as_str)) {
        message.push_str(&format!("; did you mean `{best}`?"));
    }
    let dirs: Vec<String> = search
        .dirs
        .iter()
        .map(|d| format!("  {}", d.display()))
        .collect();
    message.push_str(&format!(
        "\nsearched (`--plugins`, `ENGINE_PLUGIN_PATH`, built plugins):\n{}",
        dirs.join("\n")
    ));
    if known.is_empty() {
        message.push_str("\nno functions found there; build the plugins with `scripts/demo` or pass `--plugins DIR`");
    } else {
        known.sort();
        known.dedup();
        message.push_str(&format!(
            "\nfunctions found: {}",
            known
                .iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    for b in broken {
        message.push_str(&format!("\nskipped a component that failed to load: {b}"));
    }
    Err(ResolveError { message })
}
