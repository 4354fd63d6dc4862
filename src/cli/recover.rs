//! `keel recover D [--mode M] [--json]`: opens each engine as `recover()` does (repairing per the
//! mode), replays into a key-value state machine, closes, and prints the [`RecoveryReport`].
//! Exit 0 (clean or repaired), 4 (refused: corruption), 1 (any other error).

use std::path::PathBuf;

use keel_engine::{Engine, KvStateMachine, RecoveryReport, RecoveryStatus, QUARANTINE_DIR};
use keel_storage::FsDirectory;

use super::error::{CliError, EXIT_CORRUPT};
use super::output::{self, Outcome};
use super::target;
use super::{tool_config, DirArg, Mode};

#[derive(Debug, clap::Args)]
pub struct RecoverArgs {
    #[command(flatten)]
    pub dir: DirArg,
    /// What recovery may repair.
    #[arg(long, value_enum, default_value_t)]
    pub mode: Mode,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Recover and repair take the same arguments; only what they do per engine differs.
pub async fn run(args: RecoverArgs) -> Result<u8, CliError> {
    run_per_engine(args, "recovering", recover_one).await
}

/// Runs `one` on every engine of the target (one engine or a shard set) and prints the outcomes.
pub async fn run_per_engine<F, Fut>(args: RecoverArgs, verb: &str, one: F) -> Result<u8, CliError>
where
    F: Fn(PathBuf, Mode) -> Fut + Copy,
    Fut: std::future::Future<Output = Result<RecoveryReport, CliError>>,
{
    let target = target::resolve(&args.dir.dir).await?;
    let outcomes = output::for_each_engine(&target, verb, |dir| async move {
        match one(dir.path.clone(), args.mode).await {
            Ok(report) => outcome_of(&report),
            Err(error) => Outcome::failure(&error, "refused"),
        }
    })
    .await;
    Ok(output::print(&target, outcomes, args.json))
}

/// Opens the engine at `path` for writing (it repairs), replays, then closes it.
async fn recover_one(path: PathBuf, mode: Mode) -> Result<RecoveryReport, CliError> {
    let root = FsDirectory::open(&path, false, false)
        .await
        .map_err(|source| CliError::io(format!("opening {}", path.display()), source))?;
    let (engine, report) = Engine::open(root, tool_config(mode), KvStateMachine::new()).await?;
    engine.close().await?;
    Ok(report)
}

/// `status` key, rank and exit code of a report.
pub fn outcome_of(report: &RecoveryReport) -> Outcome {
    let (status, rank, exit) = match report.status {
        RecoveryStatus::Clean => ("clean", 0, 0),
        RecoveryStatus::Repaired => ("repaired", 10, 0),
        RecoveryStatus::Refused => ("refused", 200, EXIT_CORRUPT),
    };
    Outcome::from_report(status, rank, exit, report, report_text(status, report))
}

/// The journal names a quarantine file by its name under `DIR/quarantine/`, the snapshot store by
/// its path; show both as paths.
fn quarantine_display(quarantine: &str) -> String {
    if quarantine.contains('/') {
        quarantine.to_string()
    } else {
        format!("{QUARANTINE_DIR}/{quarantine}")
    }
}

/// The report as readable lines.
pub fn report_text(status: &str, report: &RecoveryReport) -> String {
    let mut text = format!(
        "{status} (mode {}) in {:.1} ms\n\
         snapshot op {}  last op {}  commit op {}  applied op {}  replayed {}\n\
         journal: {} segment(s), {} entries read, watermark {}",
        report.mode,
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
            "\nrepair: {} in {} at offset {} ({} bytes) -> {}",
            repair.kind,
            repair.file,
            repair.offset,
            repair.bytes,
            quarantine_display(&repair.quarantine)
        ));
    }
    for range in &report.prepared_uncommitted {
        text.push_str(&format!(
            "\nprepared, not committed: ops {}..={}",
            range.first_op, range.last_op
        ));
    }
    for range in &report.unrecoverable {
        text.push_str(&format!(
            "\nunrecoverable (fetch from peers): ops {}..={}",
            range.first_op, range.last_op
        ));
    }
    for range in &report.torn_ops {
        text.push_str(&format!(
            "\ncut as a torn tail (never acknowledged here): ops {}..={}",
            range.first_op, range.last_op
        ));
    }
    text
}
