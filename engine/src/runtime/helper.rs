//! Helpers (`host.helper`): more instances of a shard's plugin, each on a
//! thread of its own, answering the shard's requests with the plugin's
//! `helper.serve` export while the shard's own instance goes on.
//!
//! A helper lives in the shard's sandbox: a store made like the shard's (the
//! same data mounts, `limits.memory` counted for all the shard's instances
//! together, the shard's deadline) from a sandbox slot of the engine's pool.
//! It ends when the shard drops it or ends: a stop flag, checked at every
//! epoch tick, interrupts it, and the shard's thread joins it before the
//! shard's result is returned, so no helper outlives its shard.

use super::failure::{classify, with_stderr_tail};
use super::host::ShardState;
use super::{Sandbox, TICK, new_store};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::Instant;
use wasmtime::component::{InstancePre, TypedFunc};
use wasmtime::{Engine, UpdateDeadline};

/// The export a helper serves requests with: `engine:plugin/helper@<WIT_VERSION>`.
fn helper_interface() -> String {
    format!("engine:plugin/helper@{}", crate::WIT_VERSION)
}

/// What a shard needs to start helpers; in the shard's [`ShardState`] only
/// (a helper starts none of its own, nor do `describe` and `plan`).
pub(crate) struct Spawner {
    pub engine: Engine,
    pub pre: InstancePre<ShardState>,
    pub sandbox: Sandbox,
    pub deadline: Instant,
    /// Helpers this shard may still start (`limits.threads` − 1 − started).
    pub left: u32,
    /// Linear memory of all the shard's instances, shared with its helpers.
    pub memory: Arc<AtomicU64>,
    pub started: u32,
}

/// The shard's handle on one helper.
pub struct HelperHandle {
    requests: Option<mpsc::Sender<Vec<u8>>>,
    replies: mpsc::Receiver<Result<Vec<u8>, String>>,
    pending: bool,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    deadline: Instant,
}

type Serve = TypedFunc<(Vec<u8>,), (Result<Vec<u8>, String>,)>;

impl Spawner {
    /// Start a helper and wait until it is instantiated, or say why it cannot.
    pub fn start(&mut self) -> Result<HelperHandle, String> {
        if self.left == 0 {
            return Err(format!(
                "`limits.threads` is {}: no thread is left for another helper",
                self.sandbox.threads
            ));
        }
        let (req_tx, req_rx) = mpsc::channel::<Vec<u8>>();
        let (rep_tx, rep_rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let mut sandbox = self.sandbox.clone();
        self.started += 1;
        sandbox.seed = sandbox.seed.wrapping_add(u64::from(self.started));
        let (engine, pre, memory) = (self.engine.clone(), self.pre.clone(), self.memory.clone());
        let (deadline, flag) = (self.deadline, stop.clone());
        let thread = std::thread::Builder::new()
            .name("engine-helper".into())
            .spawn(move || {
                helper_main(
                    Start {
                        engine,
                        pre,
                        sandbox,
                        memory,
                        stop: flag,
                        deadline,
                    },
                    ready_tx,
                    req_rx,
                    rep_tx,
                )
            })
            .map_err(|e| format!("cannot start a thread for a helper: {e}"))?;
        let mut handle = HelperHandle {
            requests: Some(req_tx),
            replies: rep_rx,
            pending: false,
            stop,
            thread: Some(thread),
            deadline: self.deadline,
        };
        match ready_rx.recv() {
            Ok(Ok(())) => {
                self.left -= 1;
                Ok(handle)
            }
            Ok(Err(why)) => Err(why),
            Err(_) => {
                handle.finish();
                Err("the helper's thread ended before it started".into())
            }
        }
    }
}

impl HelperHandle {
    pub fn send(&mut self, request: Vec<u8>) -> Result<(), String> {
        if self.pending {
            return Err(
                "the helper is still working on a request: `receive` its reply first".into(),
            );
        }
        let sent = self.requests.as_ref().map(|tx| tx.send(request));
        match sent {
            Some(Ok(())) => {
                self.pending = true;
                Ok(())
            }
            _ => Err("the helper has stopped: it failed on an earlier request".into()),
        }
    }

    /// The reply, waiting at most until the shard's deadline (and a little
    /// more, for the helper's own deadline to fire first).
    pub fn receive(&mut self) -> Result<Vec<u8>, String> {
        if !self.pending {
            return Err("`receive` without a request sent: `send` one first".into());
        }
        self.pending = false;
        let left = self.deadline.saturating_duration_since(Instant::now()) + TICK * 10;
        match self.replies.recv_timeout(left) {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(why)) => Err(format!("the helper failed: {why}")),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                Err("the helper did not answer before `limits.timeout`".into())
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => Err("the helper has stopped".into()),
        }
    }

    /// Stop the helper and wait for its thread (within an epoch tick or two).
    fn finish(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.requests = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for HelperHandle {
    fn drop(&mut self) {
        self.finish();
    }
}

struct Start {
    engine: Engine,
    pre: InstancePre<ShardState>,
    sandbox: Sandbox,
    memory: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    deadline: Instant,
}

/// A helper's thread: its own store and async driver, then requests until
/// the shard hangs up or a request traps (the instance is then unusable).
fn helper_main(
    start: Start,
    ready: mpsc::Sender<Result<(), String>>,
    requests: mpsc::Receiver<Vec<u8>>,
    replies: mpsc::Sender<Result<Vec<u8>, String>>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(format!("cannot start a helper's async runtime: {e}")));
            return;
        }
    };
    rt.block_on(async move {
        let Start {
            engine,
            pre,
            sandbox,
            memory,
            stop,
            deadline,
        } = start;
        // What it hands the host in one reply: as much as the shard may.
        let hostcall = usize::try_from(sandbox.output_size.max(1 << 20)).unwrap_or(usize::MAX);
        let (mut store, pipes) =
            match new_store(&engine, &sandbox, (hostcall, "`limits.output_size`")) {
                Ok(x) => x,
                Err(f) => {
                    let _ = ready.send(Err(f.to_string()));
                    return;
                }
            };
        store.data_mut().share_memory(memory);
        // Every tick: stop when the shard ends or its deadline passes.
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            if stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
                Ok(UpdateDeadline::Interrupt)
            } else {
                Ok(UpdateDeadline::Continue(1))
            }
        });
        let serve: Serve = match instantiate(&pre, &mut store).await {
            Ok(f) => f,
            Err(why) => {
                let _ = ready.send(Err(why));
                return;
            }
        };
        let _ = ready.send(Ok(()));
        while let Ok(request) = requests.recv() {
            let reply = match serve.call_async(&mut store, (request,)).await {
                Ok((reply,)) => reply,
                Err(e) => {
                    let f = with_stderr_tail(classify(&e, store.data()), &pipes[1]);
                    let _ = replies.send(Err(f.to_string()));
                    break;
                }
            };
            if replies.send(reply).is_err() {
                break;
            }
        }
        store.data_mut().release_memory();
    });
}

/// Instantiate the plugin in a helper's store and find its `serve`.
async fn instantiate(
    pre: &InstancePre<ShardState>,
    store: &mut wasmtime::Store<ShardState>,
) -> Result<Serve, String> {
    let instance = pre.instantiate_async(&mut *store).await.map_err(|e| {
        if store.data().memory_denied {
            "the helper needs more than what `limits.memory` leaves just to start".to_owned()
        } else {
            format!("no sandbox for a helper: {}", super::root_message(&e))
        }
    })?;
    let name = helper_interface();
    let missing = || {
        format!(
            "the plugin does not export `{name}`: build it with this engine's \
             guest SDK (world `plugin-with-helper`)"
        )
    };
    let iface = instance
        .get_export_index(&mut *store, None, &name)
        .ok_or_else(missing)?;
    let func = instance
        .get_export_index(&mut *store, Some(&iface), "serve")
        .ok_or_else(missing)?;
    instance
        .get_typed_func(&mut *store, func)
        .map_err(|e| format!("the plugin's `{name}#serve` has another type: {e}"))
}
