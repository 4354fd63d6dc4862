//! `keel bench`: the main job. It starts a [`ShardSet`] (one engine per thread and core); each
//! shard runs a consensus-like driver as a task on its own thread (see `driver.rs`), then is
//! reopened (recovered) and its state checked; the figures are
//! aggregated into a table or one JSON object (`report.rs`). Exit 0, or 1 on an error (a state
//! that did not survive the reopen included).

mod baseline;
mod driver;
mod progress;
mod report;
mod workload;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;

use clap::ValueEnum;
use keel_engine::{EngineConfig, KvStateMachine, ShardConfig, ShardSet};

use super::error::EXIT_ERROR;
use super::{signal, tool_config, CliError, Mode};
use driver::{ShardPlan, ShardResult};
use progress::Progress;
use report::BenchReport;
use workload::{Workload, SET_OVERHEAD_BYTES};

// `--entry-bytes` help names the range in figures.
const _: () = assert!(SET_OVERHEAD_BYTES == 17 && MAX_INFLIGHT == 4096);

/// Most shards a bench runs.
const MAX_SHARDS: usize = 256;
/// Most appends in flight per shard.
const MAX_INFLIGHT: usize = 4096;
/// The ring's default size (`--slot-count`).
const DEFAULT_SLOT_COUNT: u64 = 1 << 16;
/// Exit code of a run a signal stopped (128 + SIGINT, as shells report it).
pub const EXIT_INTERRUPTED: u8 = 130;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SyncMode {
    /// One op at a time, each durable (fdatasync) before the next is issued.
    Every,
    /// `--inflight` ops in flight, sharing group commits.
    Batch,
    /// No fsync until close (appends resolve once written to the OS).
    None,
}

impl SyncMode {
    pub fn name(self) -> &'static str {
        match self {
            SyncMode::Every => "every",
            SyncMode::Batch => "batch",
            SyncMode::None => "none",
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Shard-set directory (`DIR/shard-<i>/`); default: a temporary directory, removed after.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Shards (threads, engines); default: one per available core.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=MAX_SHARDS as u64))]
    pub shards: Option<u64>,
    /// Total ops over all shards (at least 1).
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub ops: u64,
    /// Bytes of each op's command (a key-value `set`): 17 to 1,048,576.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u64).range(SET_OVERHEAD_BYTES as u64..=(1 << 20)))]
    pub entry_bytes: u64,
    /// Durability per op: every (one at a time), batch (pipelined, group commit), none.
    #[arg(long, value_enum, default_value_t = SyncMode::Every)]
    pub sync: SyncMode,
    /// Appends in flight per shard with `--sync batch` or `none` (1 to 4,096).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=MAX_INFLIGHT as u64))]
    pub inflight: u64,
    /// Checkpoint every N ops per shard (0: only the engine's automatic ones); at most half the
    /// slot count.
    #[arg(long, default_value_t = 4096)]
    pub checkpoint_every: u64,
    /// Journal ring slots per shard (a power of two, 1024..=16777216): how many ops may be live
    /// past the last checkpoint. Recorded in each shard's MANIFEST.
    #[arg(long, default_value_t = DEFAULT_SLOT_COUNT, value_parser = parse_slot_count)]
    pub slot_count: u64,
    /// Append `<shard> <op>` for each op once durable (after its fsync).
    #[arg(long, value_name = "FILE")]
    pub ack_file: Option<PathBuf>,
    /// Distinct keys per shard (the state machine's size; at least 1).
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..))]
    pub keys: u64,
    /// Journal segment size in MiB (1 to 4,096).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub segment_mib: u64,
    /// Also run a plain std::fs write + fdatasync loop with the same ops, for comparison.
    #[arg(long)]
    pub baseline: bool,
    /// Do not pin shard threads to cores.
    #[arg(long)]
    pub no_pin: bool,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// Validated settings of a run.
pub struct Settings {
    pub shards: usize,
    pub ops: u64,
    pub entry_bytes: usize,
    pub sync: SyncMode,
    pub depth: usize,
    pub checkpoint_every: u64,
    pub keep_dir: Option<String>,
}

impl Settings {
    fn from_args(args: &BenchArgs) -> Self {
        let cores = thread::available_parallelism().map_or(1, |n| n.get());
        Settings {
            shards: args.shards.map_or(cores.min(MAX_SHARDS), |n| n as usize),
            ops: args.ops,
            entry_bytes: args.entry_bytes as usize,
            sync: args.sync,
            depth: match args.sync {
                SyncMode::Every => 1,
                SyncMode::Batch | SyncMode::None => args.inflight as usize,
            },
            checkpoint_every: args.checkpoint_every,
            keep_dir: args.dir.as_ref().map(|d| d.display().to_string()),
        }
    }
}

/// `--slot-count`: a power of two the journal accepts.
fn parse_slot_count(text: &str) -> Result<u64, String> {
    let count: u64 = text
        .parse()
        .map_err(|_| format!("{text} is not a number"))?;
    if !count.is_power_of_two() || !(1024..=1 << 24).contains(&count) {
        return Err(format!("{count} is not a power of two in 1024..=16777216"));
    }
    Ok(count)
}

fn engine_config(args: &BenchArgs) -> EngineConfig {
    let mut config = tool_config(Mode::TolerateTornTail);
    config.journal.slot_count = args.slot_count;
    config.checkpoint_margin_ops = args.slot_count / 4;
    config.journal.segment_bytes = args.segment_mib << 20;
    config.journal.preallocate = true;
    config.journal.sync_on_append = args.sync != SyncMode::None;
    config
}

/// The run's directory: the one given, or a temporary one removed on drop.
enum WorkDir {
    Given(PathBuf),
    Temp(tempfile::TempDir),
}

impl WorkDir {
    fn prepare(dir: Option<&Path>, shards: usize) -> Result<Self, CliError> {
        let Some(dir) = dir else {
            let temp = tempfile::Builder::new()
                .prefix("keel-bench-")
                .tempdir()
                .map_err(|source| CliError::io("creating a temporary directory", source))?;
            return Ok(WorkDir::Temp(temp));
        };
        check_bench_dir(dir, shards)?;
        Ok(WorkDir::Given(dir.to_path_buf()))
    }

    fn path(&self) -> &Path {
        match self {
            WorkDir::Given(path) => path,
            WorkDir::Temp(temp) => temp.path(),
        }
    }
}

/// A bench writes into a missing or empty directory, or into an earlier bench's shard set of the
/// same shard count; never among someone else's files.
fn check_bench_dir(dir: &Path, shards: usize) -> Result<(), CliError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(CliError::io(format!("reading {}", dir.display()), source)),
    };
    let mut existing = 0;
    for entry in entries {
        let entry =
            entry.map_err(|source| CliError::io(format!("reading {}", dir.display()), source))?;
        let name = entry.file_name();
        existing += 1;
        if !name.to_str().is_some_and(|n| n.starts_with("shard-")) {
            return Err(CliError::NotKeel {
                path: dir.display().to_string(),
                reason: format!(
                    "it holds {name:?}; bench writes only into an empty directory or a shard set"
                ),
            });
        }
    }
    if existing > 0 && existing != shards {
        return Err(CliError::Usage(format!(
            "{} is a shard set of {existing} shard(s); --shards {shards} would leave it \
             inconsistent (use the same count, or another directory)",
            dir.display()
        )));
    }
    Ok(())
}

fn check_args(args: &BenchArgs) -> Result<(), CliError> {
    if args.checkpoint_every > args.slot_count / 2 {
        return Err(CliError::Usage(format!(
            "--checkpoint-every {} exceeds half of --slot-count {}",
            args.checkpoint_every, args.slot_count
        )));
    }
    Ok(())
}

pub fn run(args: BenchArgs) -> Result<u8, CliError> {
    check_args(&args)?;
    let settings = Settings::from_args(&args);
    signal::install();
    let workdir = WorkDir::prepare(args.dir.as_deref(), settings.shards)?;
    let results = run_shards(&args, &settings, workdir.path())?;
    let mut report = BenchReport::new(&settings, &results, signal::stop_requested());
    if args.baseline && !report.interrupted {
        let workload = workload_of(&args, &settings);
        let (shards, ops, depth) = (settings.shards, report.ops, settings.depth);
        let plain = baseline::run(workdir.path(), shards, ops, depth, settings.sync, workload)?;
        report.baseline = Some(plain);
    }
    print_report(&report, args.json);
    drop(workdir);
    if signal::stop_requested() {
        return Ok(EXIT_INTERRUPTED);
    }
    match results.iter().find(|r| !r.verified) {
        None => Ok(0),
        Some(unverified) => {
            let error = CliError::StateMismatch {
                shard: unverified.shard,
                detail: "digest or applied op".into(),
            };
            eprintln!("keel: {error}");
            Ok(EXIT_ERROR)
        }
    }
}

fn print_report(report: &BenchReport, json: bool) {
    if !json {
        print!("{}", report.table());
        return;
    }
    match serde_json::to_value(report) {
        Ok(serde_json::Value::Object(map)) => println!("{}", super::output::versioned(map)),
        Ok(other) => println!("{other}"),
        Err(error) => {
            let error = CliError::Internal(error.to_string());
            println!("{}", super::output::error_json(&error));
        }
    }
}

/// Starts the shard set the bench runs on (threads spawned with signals blocked, so only the
/// main thread sees Ctrl-C), one engine per shard under `root`.
fn start_shards(
    args: &BenchArgs,
    settings: &Settings,
    root: &Path,
) -> Result<ShardSet<KvStateMachine>, CliError> {
    let config = ShardConfig {
        shards: settings.shards,
        pin_cores: !args.no_pin,
        // The driver runs on the shard's thread; only the reopen and the check are requests.
        queue_depth: 16,
        engine: engine_config(args),
    };
    let started =
        signal::with_signals_blocked(|| ShardSet::start(root, config, |_| KvStateMachine::new()));
    let (set, _reports) = started.map_err(driver::shard_error)?;
    Ok(set)
}

/// Every shard's plan: its share of the ops and the run's settings.
fn plans(
    args: &BenchArgs,
    settings: &Settings,
    progress: &Arc<AtomicU64>,
    abort: &Arc<AtomicBool>,
) -> Vec<ShardPlan> {
    let workload = workload_of(args, settings);
    (0..settings.shards)
        .map(|shard| ShardPlan {
            shard,
            ops: share_of(settings.ops, settings.shards, shard),
            depth: settings.depth,
            defer_acks: settings.sync == SyncMode::None,
            checkpoint_every: settings.checkpoint_every,
            workload,
            ack_file: args.ack_file.clone(),
            progress: progress.clone(),
            abort: abort.clone(),
        })
        .collect()
}

/// Runs the plans on the shard set with a progress bar, then closes every shard.
fn run_shards(
    args: &BenchArgs,
    settings: &Settings,
    root: &Path,
) -> Result<Vec<ShardResult>, CliError> {
    let set = start_shards(args, settings, root)?;
    let progress = Arc::new(AtomicU64::new(0));
    let abort = Arc::new(AtomicBool::new(false));
    let plans = plans(args, settings, &progress, &abort);
    let mut bar = Progress::new(settings.ops);
    let results = driver::run_on_set(&set, plans, &abort, &mut || {
        bar.update(progress.load(Ordering::Relaxed))
    });
    bar.finish();
    let results = results?;
    set.shutdown().map_err(driver::shard_error)?;
    Ok(results)
}

fn workload_of(args: &BenchArgs, settings: &Settings) -> Workload {
    Workload {
        entry_bytes: settings.entry_bytes,
        keys: args.keys,
    }
}

/// Shard `shard`'s part of `total` ops (the remainder goes to the first shards).
fn share_of(total: u64, shards: usize, shard: usize) -> u64 {
    let shards = shards as u64;
    total / shards + u64::from((shard as u64) < total % shards)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up() {
        for (total, shards) in [(10, 3), (1, 4), (20_000, 2), (7, 7)] {
            let sum: u64 = (0..shards).map(|s| share_of(total, shards, s)).sum();
            assert_eq!(sum, total);
        }
    }
}
