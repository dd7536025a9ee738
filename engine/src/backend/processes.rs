//! `engine worker` processes on this machine, coordinating through the store
//! exactly as pods do. A worker that dies is restarted (a few times), and its
//! shards are re-offered once its lease expires.

use crate::orchestrator::RunSpec;
use anyhow::{Context, Result};
use std::process::{Child, Command, Stdio};

pub struct ProcessPool {
    command: Vec<String>,
    env: Vec<(String, String)>,
    children: Vec<Option<Child>>,
    restarts_left: usize,
    exits: Vec<String>,
}

impl ProcessPool {
    pub fn start(
        n: usize,
        store: &str,
        spec: &RunSpec,
        credentials: Option<&(String, String)>,
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
        let env = credentials
            .map(|(k, s)| {
                vec![
                    ("AWS_ACCESS_KEY_ID".to_owned(), k.clone()),
                    ("AWS_SECRET_ACCESS_KEY".to_owned(), s.clone()),
                ]
            })
            .unwrap_or_default();
        let mut pool = ProcessPool {
            command,
            env,
            children: Vec::new(),
            restarts_left: 3 * n,
            exits: Vec::new(),
        };
        for i in 0..n {
            let child = pool.spawn(i)?;
            pool.children.push(Some(child));
        }
        Ok(pool)
    }

    fn spawn(&self, i: usize) -> Result<Child> {
        let mut cmd = Command::new(&self.command[0]);
        cmd.args(&self.command[1..])
            .args([
                "--id",
                &format!("{}-proc-{i}-{}", std::process::id(), self.restarts_left),
            ])
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
    pub fn all_stopped(&mut self) -> Option<String> {
        for i in 0..self.children.len() {
            let Some(child) = &mut self.children[i] else {
                continue;
            };
            let Ok(Some(status)) = child.try_wait() else {
                continue;
            };
            self.children[i] = None;
            if status.success() {
                continue;
            }
            self.exits.push(format!("worker {i} exited with {status}"));
            if self.restarts_left > 0 {
                self.restarts_left -= 1;
                tracing::warn!("worker {i} exited with {status}; restarting it");
                match self.spawn(i) {
                    Ok(c) => self.children[i] = Some(c),
                    Err(e) => self.exits.push(format!("{e:#}")),
                }
            }
        }
        if self.children.iter().any(Option::is_some) {
            return None;
        }
        Some(
            self.exits
                .last()
                .cloned()
                .unwrap_or_else(|| "every worker exited".into()),
        )
    }

    pub fn kill(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.children.clear();
    }

    /// Wait for the workers, which exit once every shard has a part.
    pub fn join(mut self) -> Result<()> {
        for child in self.children.iter_mut().flatten() {
            child.wait()?;
        }
        self.children.clear();
        Ok(())
    }
}

impl Drop for ProcessPool {
    fn drop(&mut self) {
        self.kill();
    }
}
