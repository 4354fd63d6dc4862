//! Logs to stderr through `tracing`: `-v`/`-q` set the level (`RUST_LOG`, when set, wins), ANSI
//! only on a terminal without `NO_COLOR`, and a line never lands inside a progress line: while a
//! bar or spinner is drawn, each log line is written with the bar suspended.

use std::io::Write;
use std::sync::Mutex;

use indicatif::ProgressBar;
use tracing_subscriber::EnvFilter;

use super::style;

/// The progress bar drawn now, if any (one at a time: the spinner or the bench's bar).
static ACTIVE_BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Makes `bar` the one log lines suspend (`None`: no bar drawn).
pub fn set_active_bar(bar: Option<ProgressBar>) {
    if let Ok(mut active) = ACTIVE_BAR.lock() {
        *active = bar;
    }
}

/// Writes each log line to stderr with the active bar (if any) cleared around it.
struct LineWriter;

impl Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let bar = ACTIVE_BAR.lock().ok().and_then(|active| active.clone());
        match bar {
            Some(bar) => bar.suspend(|| std::io::stderr().write_all(buf))?,
            None => std::io::stderr().write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// The level `-v` (repeatable) and `-q` ask for: default `warn` (repairs and refusals), `-q`
/// errors only, `-v` info, `-vv` debug, `-vvv` trace.
pub fn level(verbose: u8, quiet: bool) -> &'static str {
    if quiet {
        return "error";
    }
    match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    }
}

/// Installs the subscriber.
pub fn init(verbose: u8, quiet: bool) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level(verbose, quiet)));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| LineWriter)
        .with_ansi(style::color_stderr())
        .with_target(false)
        .init();
}
