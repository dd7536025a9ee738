//! Why a guest call failed, named the way an operator thinks of it: the
//! `KIND: message` of a shard's `error` cell.

use super::host::{HostStop, ShardState};
use super::{MESSAGE_MAX, timed_out};
use serde::{Deserialize, Serialize};
use wasmtime::Trap;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

/// Why a shard failed, as written at the start of its `error` cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    Timeout,
    OutOfMemory,
    Trap,
    GuestError,
    LimitExceeded,
    Denied,
    /// The worker running the shard died (killed, aborted) too often.
    Crashed,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Timeout => "timeout",
            ErrorKind::OutOfMemory => "out-of-memory",
            ErrorKind::Trap => "trap",
            ErrorKind::GuestError => "guest-error",
            ErrorKind::LimitExceeded => "limit-exceeded",
            ErrorKind::Denied => "denied",
            ErrorKind::Crashed => "crashed",
        }
    }
}

/// A classified failure of a guest call.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}: {message}", kind.as_str())]
pub struct GuestFailure {
    pub kind: ErrorKind,
    pub message: String,
}

impl GuestFailure {
    /// A failure whose message is guest text: cut to [`MESSAGE_MAX`] bytes,
    /// control characters escaped.
    pub fn new(kind: ErrorKind, guest_text: &str) -> GuestFailure {
        GuestFailure {
            kind,
            message: crate::text::escape_controls(&crate::text::truncate(guest_text, MESSAGE_MAX))
                .into_owned(),
        }
    }
}

/// A guest says why it trapped on stderr just before the trap: add that to a
/// trap's message.
pub(super) fn with_stderr_tail(mut f: GuestFailure, stderr: &MemoryOutputPipe) -> GuestFailure {
    if f.kind == ErrorKind::Trap {
        let bytes = stderr.contents();
        if let Some(tail) = stderr_tail(&String::from_utf8_lossy(&bytes)) {
            let tail = crate::text::truncate(&tail, 400).into_owned();
            let tail = crate::text::escape_controls(&tail);
            f.message = format!("{}; stderr: {tail}", f.message);
        }
    }
    f
}

/// The part of a guest's stderr that explains a trap: for a Python guest
/// (componentize-py) the last traceback's exception and innermost frame, since
/// what follows it is the Python runtime's own panic; otherwise the last two
/// lines (a Rust panic's location and message). The `RUST_BACKTRACE` hint is
/// dropped: nobody can set a guest's environment.
fn stderr_tail(text: &str) -> Option<String> {
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("note: run with `RUST_BACKTRACE"))
        .collect();
    if let Some(start) = lines
        .iter()
        .rposition(|l| *l == "Traceback (most recent call last):")
    {
        let rest = &lines[start + 1..];
        let frame = rest
            .iter()
            .rev()
            .find(|l| l.trim_start().starts_with("File "));
        if let Some(exception) = rest.iter().find(|l| !l.starts_with(' ')) {
            let hint = if exception.starts_with("ModuleNotFoundError") {
                "; componentize-py bundles only the modules imported at the top level \
                 of the app: import it there"
            } else {
                ""
            };
            return Some(match frame {
                Some(frame) => format!("{exception} ({}){hint}", frame.trim()),
                None => format!("{exception}{hint}"),
            });
        }
    }
    (!lines.is_empty()).then(|| lines[lines.len().saturating_sub(2)..].join(" / "))
}

/// Name a failure the way an operator thinks of it. Its message may quote
/// guest text (a function name, a column): cut and escaped.
pub(super) fn classify(e: &wasmtime::Error, state: &ShardState) -> GuestFailure {
    let f = classify_raw(e, state);
    GuestFailure::new(f.kind, &f.message)
}

fn classify_raw(e: &wasmtime::Error, state: &ShardState) -> GuestFailure {
    if let Some(stop) = e.downcast_ref::<HostStop>() {
        let kind = match stop {
            HostStop::LimitExceeded(_) => ErrorKind::LimitExceeded,
            HostStop::BadRow(_) => ErrorKind::GuestError,
        };
        return GuestFailure {
            kind,
            message: stop.to_string(),
        };
    }
    let message = root_message(e);
    if let Some(trap) = e.downcast_ref::<Trap>() {
        if *trap == Trap::Interrupt {
            return timed_out(state.limits().timeout);
        }
        if state.memory_denied {
            return GuestFailure {
                kind: ErrorKind::OutOfMemory,
                message: format!(
                    "the guest needed more than `limits.memory` ({} bytes) and stopped: {message}",
                    state.limits().memory
                ),
            };
        }
        return GuestFailure {
            kind: ErrorKind::Trap,
            message: guest_trap_message(e, &message),
        };
    }
    if message.contains("too much data is being copied between the host and the guest") {
        return GuestFailure {
            kind: ErrorKind::LimitExceeded,
            message: format!(
                "the guest handed the host more than {} bytes in one call \
                 (a row, a side output, a log line or a plan), past {}",
                state.hostcall_max, state.hostcall_limit
            ),
        };
    }
    if message.contains("write beyond capacity of MemoryOutputPipe") {
        return GuestFailure {
            kind: ErrorKind::LimitExceeded,
            message: "stdout/stderr exceeded `limits.log_size`".into(),
        };
    }
    if state.memory_denied {
        return GuestFailure {
            kind: ErrorKind::OutOfMemory,
            message: format!("the guest ran out of `limits.memory`: {message}"),
        };
    }
    GuestFailure {
        kind: ErrorKind::Trap,
        message,
    }
}

/// A trap's reason, plus the guest function where it happened when known.
fn guest_trap_message(e: &wasmtime::Error, message: &str) -> String {
    let frame = e.downcast_ref::<wasmtime::WasmBacktrace>().and_then(|bt| {
        bt.frames()
            .iter()
            .find_map(|f| f.func_name().map(str::to_owned))
    });
    match frame {
        Some(f) => format!("{message} (in `{f}`)"),
        None => message.to_owned(),
    }
}

pub(super) fn root_message(e: &wasmtime::Error) -> String {
    e.chain().last().map(|c| c.to_string()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::stderr_tail;

    #[test]
    fn stderr_tail_names_the_python_exception_or_the_rust_panic() {
        let python = "[info] 6 words\nTraceback (most recent call last):\n  \
            File \"/0/app.py\", line 66, in run\n  \
            File \"/python/collections/__init__.py\", line 640, in most_common\n\
            ModuleNotFoundError: No module named 'heapq'\n\n\
            thread '<unnamed>' (1) panicked at runtime/src/lib.rs:1293:29:\n\
            Python function threw an unexpected exception\n\
            note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n";
        assert_eq!(
            stderr_tail(python).unwrap(),
            "ModuleNotFoundError: No module named 'heapq' \
             (File \"/python/collections/__init__.py\", line 640, in most_common); \
             componentize-py bundles only the modules imported at the top level of the app: \
             import it there"
        );
        let rust = "\nthread '<unnamed>' panicked at src/lib.rs:36:25:\nplan asked to panic\n\
            note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n";
        assert_eq!(
            stderr_tail(rust).unwrap(),
            "thread '<unnamed>' panicked at src/lib.rs:36:25: / plan asked to panic"
        );
        assert_eq!(stderr_tail("\n\n"), None);
    }
}
