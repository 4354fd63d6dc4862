//! The progress bar: on stderr, only when both stdout and stderr are terminals, and only once a
//! run has lasted a second (short runs print just their table).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

const SHOW_AFTER: Duration = Duration::from_secs(1);

pub struct Progress {
    bar: ProgressBar,
    enabled: bool,
    shown: bool,
    started: Instant,
}

impl Progress {
    pub fn new(total_ops: u64) -> Self {
        let bar = ProgressBar::with_draw_target(Some(total_ops), ProgressDrawTarget::hidden());
        if let Ok(style) = ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} ops ({msg}, eta {eta})",
        ) {
            bar.set_style(style);
        }
        Self {
            bar,
            enabled: std::io::stdout().is_terminal() && std::io::stderr().is_terminal(),
            shown: false,
            started: Instant::now(),
        }
    }

    pub fn update(&mut self, done_ops: u64) {
        if self.enabled && !self.shown && self.started.elapsed() >= SHOW_AFTER {
            self.bar.set_draw_target(ProgressDrawTarget::stderr());
            crate::cli::logging::set_active_bar(Some(self.bar.clone()));
            self.shown = true;
        }
        self.bar.set_position(done_ops);
        if self.shown {
            let rate = done_ops as f64 / self.started.elapsed().as_secs_f64().max(1e-3);
            self.bar.set_message(format!("{rate:.0} ops/s"));
        }
    }

    pub fn finish(self) {
        crate::cli::logging::set_active_bar(None);
        self.bar.finish_and_clear();
    }
}
