//! Progress on stderr: a bar on a terminal, periodic log lines otherwise.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    /// A bar if stderr is a terminal, else log lines.
    Auto,
    /// Log lines only.
    Lines,
    /// Nothing but the summary.
    Quiet,
}

pub struct Progress {
    bar: Option<ProgressBar>,
    lines: bool,
    total: u64,
    started: Instant,
    last_line: Instant,
    last: (u64, u64),
}

/// Seconds between progress lines when stderr is not a terminal.
const LINE_EVERY: Duration = Duration::from_secs(5);

impl Progress {
    pub fn new(mode: ProgressMode, total: u64) -> Progress {
        let terminal = std::io::stderr().is_terminal();
        let bar = (mode == ProgressMode::Auto && terminal).then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} shards {msg} (eta {eta})",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        let lines = bar.is_none() && mode != ProgressMode::Quiet;
        let now = Instant::now();
        Progress {
            bar,
            lines,
            total,
            started: now,
            last_line: now,
            last: (0, 0),
        }
    }

    /// `done` shards finished, of which `failed` failed.
    pub fn update(&mut self, done: u64, failed: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(done);
            if failed > 0 {
                bar.set_message(format!("({failed} failed)"));
            }
        } else if self.lines
            && (done, failed) != self.last
            && self.last_line.elapsed() >= LINE_EVERY
        {
            self.last_line = Instant::now();
            let elapsed = self.started.elapsed().as_secs_f64();
            let eta = if done > 0 {
                elapsed / done as f64 * (self.total - done.min(self.total)) as f64
            } else {
                f64::NAN
            };
            eprintln!(
                "progress: {done}/{} shards, {failed} failed, {elapsed:.1}s elapsed, eta {}",
                self.total,
                if eta.is_finite() {
                    format!("{eta:.0}s")
                } else {
                    "unknown".into()
                }
            );
        }
        self.last = (done, failed);
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
