//! `keel recover D [--mode M] [--json]`: opens each engine as `recover()` does (repairing per the
//! mode), replays into a key-value state machine, closes, and prints the [`RecoveryReport`]. In a
//! keel-raft store only the journal is opened (its repairs); the store's own files are left to
//! keel-raft. Exit 0 (clean or repaired), 4 (refused: corruption), 1 (any other error).

use std::path::Path;

use keel_engine::{Engine, KvStateMachine, OpRange, RecoveryReport, RecoveryStatus, LOCK_FILE};
use keel_journal::MetadataJournal;
use keel_storage::DirAccess;
use keel_storage::{Directory, FsDirectory};

use super::error::{CliError, EXIT_CORRUPT};
use super::geometry::config_for;
use super::output::{self, Outcome};
use super::target::{self, DirKind, EngineDir};
use super::{text, DirArg, Mode};

#[derive(Debug, clap::Args)]
pub struct RecoverArgs {
    #[command(flatten)]
    pub dir: DirArg,
    /// What recovery may repair.
    #[arg(long, value_enum, default_value_t)]
    pub mode: Mode,
    /// repair only: print what would be cut and quarantined, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Recover and repair take the same arguments; only what they do per engine differs.
pub async fn run(args: RecoverArgs) -> Result<u8, CliError> {
    if args.dry_run {
        return Err(CliError::Usage(
            "--dry-run is for `keel repair`; `keel verify` is recover's read-only check".into(),
        ));
    }
    run_per_engine(args, "recovering", recover_one).await
}

/// Runs `one` on every engine of the target (one engine or a shard set) and prints the outcomes.
pub async fn run_per_engine<F, Fut>(args: RecoverArgs, verb: &str, one: F) -> Result<u8, CliError>
where
    F: Fn(EngineDir, Mode) -> Fut + Copy,
    Fut: std::future::Future<Output = Result<RecoveryReport, CliError>>,
{
    let target = target::resolve(&args.dir.dir).await?;
    let outcomes = output::for_each_engine(&target, verb, |dir| async move {
        match one(dir, args.mode).await {
            Ok(report) => outcome_of(&report),
            Err(error) => Outcome::failure(&error, "refused"),
        }
    })
    .await;
    Ok(output::print(&target, outcomes, args.json))
}

/// Opens `path` for writing (never creating it).
pub async fn open_writable(path: &Path) -> Result<FsDirectory, CliError> {
    FsDirectory::open_with(path, DirAccess::Existing)
        .await
        .map_err(|source| CliError::io(format!("opening {}", path.display()), source))
}

/// Opens the engine at `dir` for writing (it repairs), replays, then closes it.
async fn recover_one(dir: EngineDir, mode: Mode) -> Result<RecoveryReport, CliError> {
    let root = open_writable(&dir.path).await?;
    let (config, _) = config_for(&root, mode).await?;
    if dir.kind == DirKind::Raft {
        return recover_raft_journal(&root, config).await;
    }
    let (engine, report) = Engine::open(root, config, KvStateMachine::new()).await?;
    engine.close().await?;
    Ok(report)
}

/// A keel-raft store: its lock, then the journal opened with the mode's repairs and closed. The
/// store's meta and snapshots are keel-raft's; nothing else is created in it.
pub async fn recover_raft_journal(
    root: &FsDirectory,
    config: keel_engine::EngineConfig,
) -> Result<RecoveryReport, CliError> {
    let path = root.path().display().to_string();
    let _lock = root.lock(LOCK_FILE).await.map_err(|source| {
        CliError::Engine(keel_engine::EngineError::Locked {
            dir: path.clone(),
            source,
        })
    })?;
    let started = std::time::Instant::now();
    let (journal, scan) = MetadataJournal::open(root, config.journal.clone(), config.recovery_mode)
        .await
        .map_err(keel_engine::EngineError::from)?;
    let report = RecoveryReport {
        status: if scan.repairs.is_empty() {
            RecoveryStatus::Clean
        } else {
            RecoveryStatus::Repaired
        },
        mode: config.recovery_mode,
        snapshot_op: 0,
        snapshot_file: None,
        last_op: journal.last_op().unwrap_or(0),
        commit_op: journal.durable_commit_op().unwrap_or(0),
        applied_op: 0,
        replayed: 0,
        journal_snapshot_op: journal.snapshot_op().unwrap_or(0),
        journal_first_op: scan.first_op,
        segments_read: scan.segments_read,
        entries_read: scan.entries_read,
        repairs: keel_engine::journal_repairs(&path, &scan),
        prepared_uncommitted: Vec::new(),
        unrecoverable: scan.lost_ops.iter().map(OpRange::from).collect(),
        torn_ops: scan.torn_ops.iter().map(OpRange::from).collect(),
        temp_files_removed: 0,
        duration_us: started.elapsed().as_micros() as u64,
    };
    journal
        .close()
        .await
        .map_err(keel_engine::EngineError::from)?;
    Ok(report)
}

/// `status` key, rank and exit code of a report.
pub fn outcome_of(report: &RecoveryReport) -> Outcome {
    let (status, rank, exit) = match report.status {
        RecoveryStatus::Clean => ("clean", 0, 0),
        RecoveryStatus::Repaired => ("repaired", 10, 0),
        RecoveryStatus::Refused => ("refused", 200, EXIT_CORRUPT),
    };
    let mut outcome = Outcome::from_report(status, rank, exit, report, report_text(status, report));
    outcome.json.remove("status");
    outcome
        .json
        .insert("problems".into(), serde_json::Value::Array(Vec::new()));
    outcome
}

/// The report as readable lines.
pub fn report_text(status: &str, report: &RecoveryReport) -> String {
    let mut text = format!(
        "{status} (mode {}) in {:.1} ms\n\
         snapshot op {}  last op {}  commit op {}  applied op {}  replayed {}\n\
         journal: {} segment(s), {} entries read, snapshot watermark {}",
        keel_engine::recovery_mode_name(report.mode),
        report.duration_us as f64 / 1000.0,
        report.snapshot_op,
        report.last_op,
        report.commit_op,
        report.applied_op,
        report.replayed,
        report.segments_read,
        report.entries_read,
        report.journal_snapshot_op,
    );
    for repair in &report.repairs {
        text.push_str(&format!(
            "\nrepair: {} in {} at offset {} ({}) -> {}",
            repair.kind,
            repair.file,
            repair.offset,
            super::style::size(repair.bytes),
            repair.quarantine
        ));
    }
    let lines = [
        (
            "prepared, not committed: ops ",
            &report.prepared_uncommitted,
        ),
        (
            "LOST COMMITTED OPS (fetch them from peers): ",
            &report.unrecoverable,
        ),
        ("cut, never committed here: ops ", &report.torn_ops),
    ];
    for (label, ranges) in lines {
        if !ranges.is_empty() {
            text.push_str(&format!("\n{label}{}", text::ranges(ranges)));
        }
    }
    text
}
