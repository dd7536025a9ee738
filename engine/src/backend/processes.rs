//! `engine worker` processes on this machine, coordinating through the store
//! exactly as pods do. A worker that dies is restarted, and its shards are
//! re-offered once its lease expires; one that keeps dying soon after it
//! starts (it cannot start at all) is given up after a few tries.

use super::WorkerAccess;
use crate::work::RunSpec;
use anyhow::{Context, Result};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Quick deaths in a row after which a worker slot is not restarted.
const QUICK_DEATHS_MAX: u32 = 3;
/// A worker that lived this long did work: its slot's count starts over.
const QUICK: Duration = Duration::from_secs(10);

struct Slot {
    child: Option<Child>,
    started: Instant,
    quick_deaths: u32,
    /// Starts so far, for unique process names.
    starts: u32,
}

struct ProcessPool {
    command: Vec<String>,
    env: Vec<(String, String)>,
    slots: Vec<Slot>,
    exits: Vec<String>,
}

impl ProcessPool {
    fn start(
        n: usize,
        store: &str,
        spec: &RunSpec,
        access: WorkerAccess<'_>,
    ) -> Result<ProcessPool> {
        let exe = match std::env::var_os("ENGINE_WORKER_EXE") {
            Some(exe) => exe.into(),
            None => std::env::current_exe()
                .context("cannot find the engine executable to start workers")?,
        };
        let mut command = vec![
            exe.display().to_string(),
            "worker".into(),
            "--store".into(),
            store.into(),
            "--run".into(),
            spec.run_id.clone(),
        ];
        if let Some(t) = &spec.tenant {
            command.extend(["--tenant".into(), t.clone()]);
        }
        let mut env = Vec::new();
        if let Some((k, s)) = access.credentials {
            env.push(("AWS_ACCESS_KEY_ID".to_owned(), k.clone()));
            env.push(("AWS_SECRET_ACCESS_KEY".to_owned(), s.clone()));
        }
        if let Some(key) = access.artifact_key {
            env.push((crate::work::artifact::KEY_ENV.to_owned(), key.to_owned()));
        }
        let mut pool = ProcessPool {
            command,
            env,
            slots: Vec::new(),
            exits: Vec::new(),
        };
        for i in 0..n {
            let child = pool.spawn(i, 0)?;
            pool.slots.push(Slot {
                child: Some(child),
                started: Instant::now(),
                quick_deaths: 0,
                starts: 1,
            });
        }
        Ok(pool)
    }

    fn spawn(&self, i: usize, start: u32) -> Result<Child> {
        let mut cmd = Command::new(&self.command[0]);
        cmd.args(&self.command[1..])
            .args(["--id", &format!("{}-proc-{i}-{start}", std::process::id())])
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "warn");
        }
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::process::CommandExt;
            // SAFETY: prctl is async-signal-safe; it makes the worker die with us,
            // so an orchestrator killed with SIGKILL leaves no stray workers.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
        }
        cmd.spawn()
            .with_context(|| format!("cannot start worker `{}`", self.command.join(" ")))
    }

    /// Restart workers that died while work remains; `Some` when none is left.
    fn all_stopped(&mut self) -> Option<String> {
        for i in 0..self.slots.len() {
            let Some(child) = &mut self.slots[i].child else {
                continue;
            };
            let Ok(Some(status)) = child.try_wait() else {
                continue;
            };
            let slot = &mut self.slots[i];
            slot.child = None;
            if status.success() {
                continue;
            }
            self.exits.push(format!("worker {i} exited with {status}"));
            if slot.started.elapsed() >= QUICK {
                slot.quick_deaths = 0;
            }
            slot.quick_deaths += 1;
            if slot.quick_deaths <= QUICK_DEATHS_MAX {
                tracing::warn!("worker {i} exited with {status}; restarting it");
                let start = slot.starts;
                match self.spawn(i, start) {
                    Ok(c) => {
                        let slot = &mut self.slots[i];
                        slot.child = Some(c);
                        slot.started = Instant::now();
                        slot.starts += 1;
                    }
                    Err(e) => self.exits.push(format!("{e:#}")),
                }
            }
        }
        if self.slots.iter().any(|s| s.child.is_some()) {
            return None;
        }
        Some(
            self.exits
                .last()
                .cloned()
                .unwrap_or_else(|| "every worker exited".into()),
        )
    }

    fn kill(&mut self) {
        for child in self.slots.iter_mut().filter_map(|s| s.child.as_mut()) {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.slots.clear();
    }

    /// Wait for the workers, which exit once every shard has a part.
    fn join(mut self) -> Result<()> {
        for child in self.slots.iter_mut().filter_map(|s| s.child.as_mut()) {
            child.wait()?;
        }
        self.slots.clear();
        Ok(())
    }
}

/// `n` `engine worker` processes on this machine, on the run published in `store`.
pub fn start(
    n: usize,
    store: &str,
    spec: &RunSpec,
    access: WorkerAccess<'_>,
) -> Result<Box<dyn super::WorkerPool>> {
    Ok(Box::new(ProcessPool::start(n, store, spec, access)?))
}

#[async_trait::async_trait]
impl super::WorkerPool for ProcessPool {
    async fn poll(&mut self, _finished: usize) -> Result<Option<String>> {
        Ok(self.all_stopped())
    }

    async fn kill(&mut self) {
        ProcessPool::kill(self);
    }

    async fn join(self: Box<Self>) -> Result<()> {
        tokio::task::spawn_blocking(move || ProcessPool::join(*self)).await?
    }
}

impl Drop for ProcessPool {
    fn drop(&mut self) {
        self.kill();
    }
}
