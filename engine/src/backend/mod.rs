//! How workers come to exist: threads in this process (`local`), `engine
//! worker` processes on this machine (`processes`). Every backend runs the
//! same worker loop against the same store-backed queue.

pub mod local;
mod processes;

use crate::orchestrator::RunSpec;
use anyhow::Result;

/// The running workers of one run.
pub enum Workers {
    Local(local::LocalPool),
    Processes(processes::ProcessPool),
}

impl Workers {
    /// `n` `engine worker` processes on this machine.
    pub fn processes(n: usize, store: &str, spec: &RunSpec, credentials: Option<&(String, String)>) -> Result<Workers> {
        Ok(Workers::Processes(processes::ProcessPool::start(n, store, spec, credentials)?))
    }

    /// `Some(reason)` once no worker is left running (and none will be restarted).
    pub fn all_stopped(&mut self) -> Option<String> {
        match self {
            Workers::Local(p) => p.all_stopped(),
            Workers::Processes(p) => p.all_stopped(),
        }
    }

    /// Ask workers to stop after their current shard.
    pub fn stop(&mut self) {
        match self {
            Workers::Local(p) => p.stop(),
            Workers::Processes(_) => {}
        }
    }

    /// Stop workers now (a failed or interrupted run).
    pub fn kill(&mut self) {
        match self {
            Workers::Local(p) => p.stop(),
            Workers::Processes(p) => p.kill(),
        }
    }

    /// Wait for the workers to exit.
    pub fn join(self) -> Result<()> {
        match self {
            Workers::Local(p) => p.join().map(drop),
            Workers::Processes(p) => p.join(),
        }
    }
}
