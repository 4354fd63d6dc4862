//! `keel verify D [--json]`: read-only full check of journal and snapshots (and, in a keel-raft
//! store, its meta and snapshot files). Exit 0 clean, 3 torn tail only, 4 corruption, 1 error.

use keel_engine::{
    KvStateMachine, ProblemKind, ProblemRecord, SnapshotDamage, VerifyReport, VerifyStatus,
};
use keel_journal::MetadataJournal;
use keel_storage::{Directory, FsDirectory};
use serde_json::Value;

use super::error::{CliError, EXIT_CORRUPT, EXIT_TORN_TAIL};
use super::geometry::config_for;
use super::output::{self, Outcome};
use super::target::{self, DirKind, EngineDir};
use super::{live, raft, readonly, text, DirArg, Mode};

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub dir: DirArg,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: VerifyArgs) -> Result<u8, CliError> {
    let target = target::resolve(&args.dir.dir).await?;
    let outcomes = output::for_each_engine(&target, "verifying", |dir| async move {
        let note = live::note(&dir.path);
        let mut outcome = match verify_one(&dir).await {
            Ok(report) => outcome_of(&report),
            Err(error) => Outcome::failure(&error, "corrupt"),
        };
        outcome.add_live_writer(note);
        outcome
    })
    .await;
    Ok(output::print(&target, outcomes, args.json))
}

/// The read-only check of one directory.
pub async fn verify_one(dir: &EngineDir) -> Result<VerifyReport, CliError> {
    let root = readonly::open(&dir.path).await?;
    // The same decision recover makes, with the state machine recover would restore into.
    let (config, _) = config_for(&root, Mode::Absolute).await?;
    match dir.kind {
        DirKind::Engine => Ok(keel_engine::verify(&root, &config, KvStateMachine::new()).await?),
        DirKind::Raft => verify_raft(&root, &dir.path, &config).await,
    }
}

/// A keel-raft store: the journal's scan, the meta file's header and the snapshot files. The
/// store's own recovery (openraft's) decides the rest; nothing here assumes keel-engine's layout.
async fn verify_raft(
    root: &FsDirectory,
    path: &std::path::Path,
    config: &keel_engine::EngineConfig,
) -> Result<VerifyReport, CliError> {
    let scan = MetadataJournal::verify(root, config.journal.clone())
        .await
        .map_err(keel_engine::EngineError::from)?;
    let mut corrupt = scan.problems.iter().any(|p| p.is_corruption());
    let root_path = root.display_path();
    let mut problems: Vec<ProblemRecord> = scan
        .problems
        .iter()
        .map(|p| ProblemRecord::from_journal(&root_path, p))
        .collect();
    if let Some(meta) = raft::check_meta(path)?.filter(|m| !m.valid) {
        corrupt = true;
        problems.push(ProblemRecord {
            kind: ProblemKind::RaftMeta,
            file: meta.file,
            offset: 0,
            op: None,
            ops: None,
        });
    }
    let snapshots = raft::check_snapshots(path)?;
    for snapshot in snapshots.iter().filter(|s| !s.valid) {
        corrupt = true;
        problems.push(ProblemRecord {
            kind: ProblemKind::Snapshot(SnapshotDamage::Checksum),
            file: snapshot.file.clone(),
            offset: 0,
            op: Some(snapshot.op),
            ops: None,
        });
    }
    Ok(VerifyReport::new(&scan, corrupt, problems, snapshots))
}

fn outcome_of(report: &VerifyReport) -> Outcome {
    let (status, rank, exit) = match report.status {
        VerifyStatus::Clean => ("clean", 0, 0),
        VerifyStatus::TornTail => ("torn_tail", 10, EXIT_TORN_TAIL),
        VerifyStatus::Corrupt => ("corrupt", 200, EXIT_CORRUPT),
    };
    let mut outcome = Outcome::from_report(status, rank, exit, report, report_text(status, report));
    outcome.json.remove("status");
    outcome
        .json
        .entry("problems")
        .or_insert(Value::Array(Vec::new()));
    outcome
}

fn report_text(status: &str, report: &VerifyReport) -> String {
    let mut text = format!(
        "{status}: ops {}  commit op {}  journal snapshot watermark {}  {} snapshot(s)",
        text::op_span(report.first_op, report.last_op),
        text::op(report.commit_op),
        text::op(report.journal_snapshot_op),
        report.snapshots.len(),
    );
    for problem in &report.problems {
        text.push_str(&format!("\nproblem: {}", problem_text(problem, report)));
    }
    text
}

/// One problem as a line: where it is, and what is wrong.
fn problem_text(problem: &ProblemRecord, report: &VerifyReport) -> String {
    if let Some(ops) = problem.ops {
        return format!(
            "{} in {}: ops {ops} are committed but in no snapshot and no journal file",
            problem.kind, problem.file
        );
    }
    let why = report
        .snapshots
        .iter()
        .find(|s| s.file == problem.file)
        .and_then(|s| s.problem.clone());
    match why {
        Some(why) => format!(
            "{} in {} (op {}): {why}",
            problem.kind,
            problem.file,
            text::op(problem.op)
        ),
        None => format!(
            "{} in {} at offset {} (op {})",
            problem.kind,
            problem.file,
            problem.offset,
            text::op(problem.op)
        ),
    }
}
