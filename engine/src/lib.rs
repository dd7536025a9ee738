//! The engine: run WebAssembly benchmark functions as sharded, sandboxed runs.
//!
//! `main.rs` is a thin CLI over this library, so tests drive it in-process.

pub mod backend;
pub mod cli;
pub mod config;
pub mod orchestrator;
pub mod plugins;
pub mod report;
pub mod runtime;
pub mod scaffold;
pub mod store;
pub mod table;
pub mod text;
pub mod work;

/// The version of the WIT contract (`engine:plugin`) this engine speaks.
pub const WIT_VERSION: &str = "0.3.0";

/// An error in what the user gave us, found before anything ran (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct InputError(#[from] anyhow::Error);

impl InputError {
    pub fn msg(message: impl Into<String>) -> InputError {
        InputError(anyhow::anyhow!(message.into()))
    }
}

impl From<config::ConfigError> for InputError {
    fn from(e: config::ConfigError) -> Self {
        InputError(e.into())
    }
}
