//! How workers come to exist: threads in this process (`local`), `engine
//! worker` processes on this machine (`processes`), pods (`kubernetes`). Every
//! backend runs the same worker loop against the same store-backed queue.

pub mod kubernetes;
pub mod local;
mod processes;

use crate::orchestrator::RunSpec;
use crate::orchestrator::worker::Finished;
use anyhow::Result;
use std::sync::Arc;

/// The running workers of one run.
pub enum Workers {
    Local(local::LocalPool),
    Processes(processes::ProcessPool),
    Kubernetes(Box<kubernetes::KubePool>),
}

impl Workers {
    /// `n` `engine worker` processes on this machine.
    pub fn processes(
        n: usize,
        store: &str,
        spec: &RunSpec,
        data_dir: Option<&std::path::Path>,
        credentials: Option<&(String, String)>,
    ) -> Result<Workers> {
        Ok(Workers::Processes(processes::ProcessPool::start(
            n,
            store,
            spec,
            data_dir,
            credentials,
        )?))
    }

    /// Worker pods (see `kubernetes`).
    pub async fn kubernetes(run: kubernetes::KubeRun<'_>) -> Result<Workers> {
        Ok(Workers::Kubernetes(Box::new(
            kubernetes::KubePool::start(run).await?,
        )))
    }

    /// `Some(reason)` once no worker is left running (and none will be restarted);
    /// an error when the run cannot go on (e.g. no worker pod can start).
    pub async fn all_stopped(&mut self) -> Result<Option<String>> {
        Ok(match self {
            Workers::Local(p) => p.all_stopped(),
            Workers::Processes(p) => p.all_stopped(),
            Workers::Kubernetes(p) => p.all_stopped().await?,
        })
    }

    /// Parts stored by workers in this process, if they all run here: then
    /// the watcher counts instead of listing the store.
    pub fn finished(&self) -> Option<Arc<Finished>> {
        match self {
            Workers::Local(p) => Some(p.finished.clone()),
            Workers::Processes(_) | Workers::Kubernetes(_) => None,
        }
    }

    /// Ask workers to stop after their current shard.
    pub fn stop(&mut self) {
        match self {
            Workers::Local(p) => p.stop(),
            Workers::Processes(_) | Workers::Kubernetes(_) => {}
        }
    }

    /// Stop workers now (a failed or interrupted run).
    pub async fn kill(&mut self) {
        match self {
            Workers::Local(p) => p.stop(),
            Workers::Processes(p) => p.kill(),
            Workers::Kubernetes(p) => p.cleanup().await,
        }
    }

    /// Wait for the workers to exit (pods: every shard has a part, so they
    /// are exiting by themselves; delete the run's objects).
    pub async fn join(self) -> Result<()> {
        match self {
            Workers::Local(p) => p.join().map(drop),
            Workers::Processes(p) => p.join(),
            Workers::Kubernetes(mut p) => {
                p.cleanup().await;
                Ok(())
            }
        }
    }
}
