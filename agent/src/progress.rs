//! Showing a backup's or restore's progress: a bar on a terminal, status
//! lines with `--json` (shaped like restic's), nothing otherwise.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use repo_format::ops::progress::Progress;
use serde_json::json;

/// A running reporter; stops (and clears its bar) on [`Reporter::finish`].
pub struct Reporter {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// JSON status lines on stdout.
    Json,
    /// A bar on stderr when stdout is a terminal.
    Auto,
}

impl Reporter {
    /// Starts reporting `progress`; `what` names the operation for the bar.
    pub fn start(progress: Arc<Progress>, mode: Mode, what: &'static str) -> Reporter {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let interactive = std::io::stdout().is_terminal();
        let thread = match mode {
            Mode::Json => Some(std::thread::spawn(move || json_lines(&progress, &s))),
            Mode::Auto if interactive => Some(std::thread::spawn(move || bar(&progress, &s, what))),
            Mode::Auto => None,
        };
        Reporter { stop, thread }
    }

    /// Stops the reporter.
    pub fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sleeps up to `d`, waking early when stopped; returns whether stopped.
fn wait(stop: &AtomicBool, d: Duration) -> bool {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if stop.load(Ordering::Relaxed) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.load(Ordering::Relaxed)
}

fn json_lines(p: &Progress, stop: &AtomicBool) {
    let start = Instant::now();
    while !wait(stop, Duration::from_secs(1)) {
        let s = p.snapshot();
        let elapsed = start.elapsed().as_secs_f64();
        let fraction = if s.bytes_total > 0 {
            (s.bytes_done as f64 / s.bytes_total as f64).min(1.0)
        } else {
            0.0
        };
        let remaining = if s.scan_done && fraction > 0.0 {
            Some((elapsed / fraction - elapsed).max(0.0).round() as u64)
        } else {
            None
        };
        println!(
            "{}",
            json!({
                "message_type": "status",
                "seconds_elapsed": elapsed.round() as u64,
                "seconds_remaining": remaining,
                "percent_done": fraction,
                "total_files": s.files_total,
                "files_done": s.files_done,
                "total_bytes": s.bytes_total,
                "bytes_done": s.bytes_done,
                "error_count": s.errors,
            })
        );
    }
}

fn bar(p: &Progress, stop: &AtomicBool, what: &'static str) {
    let pb =
        indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}",
        )
        .expect("valid template"),
    );
    pb.set_prefix(what);
    while !wait(stop, Duration::from_millis(200)) {
        let s = p.snapshot();
        pb.set_length(s.bytes_total.max(s.bytes_done));
        pb.set_position(s.bytes_done);
        let errors = if s.errors > 0 {
            format!(", {} errors", s.errors)
        } else {
            String::new()
        };
        pb.set_message(format!("{}/{} files{errors}", s.files_done, s.files_total));
    }
    pb.finish_and_clear();
}
