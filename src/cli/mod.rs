//! The `keel` command line: argument types (clap derive), dispatch, logging.
//!
//! One file per command (`bench/` is a directory: driver, workload, report, progress). Around
//! them: `target.rs` decides what a path is (engine directory, keel-raft store, shard set,
//! cluster; looking only), `geometry.rs` the configuration a directory is read with (its
//! manifest), `readonly.rs` opens one read-only, `live.rs` tells whether a live writer holds it,
//! `walk.rs` walks segment bytes for `inspect` and `dump`, `raft.rs` reads a keel-raft store's
//! own files, `output.rs` runs a tool on every member and prints the outcomes (the JSON contract
//! of `docs/cli.md`), `style.rs` and `logging.rs` the text and logs, `signal.rs` turns signals
//! into a clean stop, `error.rs` maps errors to exit codes and JSON error objects.

mod bench;
mod dump;
mod error;
mod geometry;
mod inspect;
mod live;
mod logging;
mod output;
mod raft;
mod readonly;
mod recover;
mod repair;
mod signal;
mod style;
mod target;
mod text;
mod verify;
mod walk;

use std::path::PathBuf;
use std::sync::LazyLock;

use clap::error::ErrorKind;
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use keel_engine::RecoveryMode;

pub use error::{error_chain, CliError};
pub use geometry::base_config as tool_config;

/// `keel --version`: the build and every on-disk format it reads and writes.
static VERSION: LazyLock<String> = LazyLock::new(|| {
    format!(
        "{} (journal format {}, snapshot format {}, manifest format {})",
        env!("CARGO_PKG_VERSION"),
        keel_journal::FORMAT_VERSION,
        keel_engine::SNAPSHOT_VERSION,
        keel_engine::MANIFEST_VERSION
    )
});

#[derive(Debug, Parser)]
#[command(
    name = "keel",
    version = VERSION.as_str(),
    about = "keel: the persistence layer of a per-core metadata replica",
    after_help = "The commands, exit codes and JSON keys: docs/cli.md in the keel repository.",
    propagate_version = true
)]
pub struct Cli {
    /// More log lines on stderr (-v info, -vv debug, -vvv trace); RUST_LOG, when set, wins.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Only errors on stderr.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Whether the command prints JSON (errors then go to stdout as a JSON object too).
    pub fn json(&self) -> bool {
        match &self.command {
            Command::Bench(args) => args.json,
            Command::Recover(args) | Command::Repair(args) => args.json,
            Command::Verify(args) => args.json,
            Command::Inspect(args) => args.json,
            Command::Dump(args) => args.json,
        }
    }
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
    /// One line per entry: op, kind, length, checksum (read-only; a single .wal file works too).
    #[command(after_help = "Exit: 0 ok, 1 error. Never writes.")]
    Dump(dump::DumpArgs),
}

/// `--mode`: what recovery may repair (docs/durability.md).
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
    if std::env::args().any(|arg| arg == "--json") {
        let usage = CliError::Usage(rendered.lines().next().unwrap_or_default().to_string());
        println!("{}", output::error_json(&usage));
    }
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

/// Logs to stderr (see `logging.rs`).
pub fn init_logging(cli: &Cli) {
    logging::init(cli.verbose, cli.quiet);
}

/// Prints a failed command's error: on stderr, and with `--json` also as a JSON object on stdout.
pub fn print_error(error: &CliError, json: bool) {
    if json {
        println!("{}", output::error_json(error));
    }
    eprintln!("keel: {}", error_chain(error));
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
