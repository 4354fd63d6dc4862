//! The `keel` command line: argument types (clap derive), dispatch, logging.
//!
//! One file per command (`bench/` is a directory: driver, workload, report, progress). Around
//! them: `target.rs` decides whether a path is an engine directory or a shard set (looking only),
//! `readonly.rs` opens one read-only, `walk.rs` walks segment bytes for `inspect` and `dump`,
//! `output.rs` runs a tool on every engine and prints the outcomes alone or as a shard set,
//! `signal.rs` turns Ctrl-C into a clean stop, `error.rs` maps errors to exit codes.

mod bench;
mod dump;
mod error;
mod inspect;
mod output;
mod readonly;
mod recover;
mod repair;
mod signal;
mod target;
mod verify;
mod walk;

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::error::ErrorKind;
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use keel_engine::{EngineConfig, RecoveryMode};
use tracing_subscriber::EnvFilter;

pub use error::{error_chain, CliError};

/// Slots in every journal the CLI opens. The bench's journals and the tools' must agree (a ring
/// smaller than the live ops in a directory could not hold them), so there is one figure.
pub const SLOT_COUNT: u64 = 1 << 16;

#[derive(Debug, Parser)]
#[command(
    name = "keel",
    version,
    about = "keel: the persistence layer of a per-core metadata replica",
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The main job: a replica workload per shard (pipelined appends, group commit, commit and
    /// apply, checkpoints), then close, recover and check the state.
    #[command(
        after_help = "Exit: 0 ok, 1 error (a state that did not survive the reopen included)."
    )]
    Bench(bench::BenchArgs),
    /// Open a directory as the engine would (repairing per mode) and report what was found.
    #[command(after_help = "Exit: 0 clean or repaired, 4 refused (corruption), 1 other error.")]
    Recover(recover::RecoverArgs),
    /// Read-only full check of journal and snapshots (exit 0 clean, 3 torn tail, 4 corrupt).
    #[command(
        after_help = "Exit: 0 clean, 3 torn tail only, 4 corruption, 1 error. Never writes."
    )]
    Verify(verify::VerifyArgs),
    /// What recover repairs, without replaying into a state machine.
    #[command(after_help = "Exit: 0 clean or repaired, 4 refused (corruption), 1 other error.")]
    Repair(repair::RepairArgs),
    /// Segments, op ranges, sizes, snapshots, watermarks and slot use (read-only).
    #[command(after_help = "Exit: 0 ok, 1 error. Never writes.")]
    Inspect(inspect::InspectArgs),
    /// One line per live entry: op, kind, length, checksum (read-only).
    #[command(after_help = "Exit: 0 ok, 1 error. Never writes.")]
    Dump(dump::DumpArgs),
}

/// `--mode`: what recovery may repair (DESIGN §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Mode {
    /// Repair a torn tail (quarantine + truncate); refuse corruption of acknowledged data.
    #[default]
    TolerateTornTail,
    /// Any invalid byte is an error; nothing is repaired.
    Absolute,
    /// Cut at the first invalid entry, even in the durable region, and report the lost ops.
    PointInTime,
}

impl From<Mode> for RecoveryMode {
    fn from(mode: Mode) -> Self {
        match mode {
            Mode::TolerateTornTail => RecoveryMode::TolerateTornTail,
            Mode::Absolute => RecoveryMode::Absolute,
            Mode::PointInTime => RecoveryMode::PointInTime,
        }
    }
}

/// A directory argument shared by the tools.
#[derive(Debug, Clone, clap::Args)]
pub struct DirArg {
    /// An engine directory, or a shard set (a directory of `shard-<i>/` engine directories).
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
}

/// The engine configuration every tool opens a directory with.
pub fn tool_config(mode: Mode) -> EngineConfig {
    let mut config = EngineConfig::default();
    config.journal.slot_count = SLOT_COUNT;
    // The tools append nothing: opening a directory must not grow its active segment.
    config.journal.preallocate = false;
    config.checkpoint_margin_ops = SLOT_COUNT / 4;
    config.recovery_mode = mode.into();
    config
}

/// Prints a usage error with the usage of the command it concerns and exits 2 (help and version
/// requests print and exit as clap does).
pub fn usage_error(error: clap::Error) -> ! {
    if matches!(
        error.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
    ) {
        error.exit();
    }
    let rendered = error.render().to_string();
    eprint!("{rendered}");
    if !rendered.contains("Usage:") {
        let mut command = Cli::command();
        command.build();
        let name = std::env::args().nth(1).unwrap_or_default();
        let usage = match command.find_subcommand_mut(&name) {
            Some(sub) => sub.render_usage(),
            None => command.render_usage(),
        };
        eprintln!("\n{usage}");
    }
    std::process::exit(2)
}

/// Logs to stderr; `RUST_LOG` filters (default `warn`: repairs and refusals show, nothing else).
pub fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}

/// Runs one command; returns the process exit code.
pub fn run(cli: Cli) -> Result<u8, CliError> {
    match cli.command {
        Command::Bench(args) => bench::run(args),
        Command::Recover(args) => block_on(recover::run(args)),
        Command::Verify(args) => block_on(verify::run(args)),
        Command::Repair(args) => block_on(repair::run(args)),
        Command::Inspect(args) => block_on(inspect::run(args)),
        Command::Dump(args) => block_on(dump::run(args)),
    }
}

/// Runs a tool on a compio runtime on this thread.
fn block_on<F: std::future::Future<Output = Result<u8, CliError>>>(
    future: F,
) -> Result<u8, CliError> {
    let runtime = compio::runtime::Runtime::new()
        .map_err(|source| CliError::io("starting the compio runtime", source))?;
    runtime.block_on(future)
}
