//! `keel inspect D [--json]`: segments and their sizes, the op range, watermarks, slot use,
//! snapshots and quarantine files. Strictly read-only. Exit 0, or 1 on an error.

use std::path::Path;

use keel_engine::{list_snapshots, SnapshotInfo, QUARANTINE_DIR};
use keel_journal::{MetadataJournal, ScanReport};
use keel_storage::{Directory, FsDirectory, OpenMode, Storage};
use serde::Serialize;

use super::error::CliError;
use super::output::{self, Outcome};
use super::target;
use super::walk::{walk_journal, SegmentSummary};
use super::{readonly, tool_config, DirArg, Mode, SLOT_COUNT};

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    #[command(flatten)]
    pub dir: DirArg,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// A file and its size.
#[derive(Debug, Clone, Serialize)]
pub struct FileInfo {
    pub file: String,
    pub len_bytes: u64,
}

/// What `inspect` shows of one engine directory.
#[derive(Debug, Clone, Serialize)]
pub struct InspectReport {
    pub segments: Vec<SegmentSummary>,
    pub journal_bytes: u64,
    pub first_op: Option<u64>,
    pub last_op: Option<u64>,
    pub commit_op: Option<u64>,
    /// The journal's snapshot watermark.
    pub snapshot_op: Option<u64>,
    pub entries: u64,
    /// Ops between the watermark and the last op: the ring slots they occupy.
    pub slots_used: u64,
    pub slot_count: u64,
    pub problems: usize,
    pub snapshots: Vec<SnapshotInfo>,
    pub quarantine: Vec<FileInfo>,
}

pub async fn run(args: InspectArgs) -> Result<u8, CliError> {
    let target = target::resolve(&args.dir.dir).await?;
    let outcomes = output::for_each_engine(&target, "inspecting", |dir| async move {
        match inspect_one(&dir.path).await {
            Ok(report) => Outcome::from_report("ok", 0, 0, &report, report_text(&report)),
            Err(error) => Outcome::failure(&error, "error"),
        }
    })
    .await;
    Ok(output::print(&target, outcomes, args.json))
}

async fn inspect_one(path: &Path) -> Result<InspectReport, CliError> {
    let root = readonly::open(path).await?;
    let config = tool_config(Mode::Absolute);
    let scan: ScanReport = MetadataJournal::verify(&root, config.journal.clone())
        .await
        .map_err(keel_engine::EngineError::from)?;
    let segments = walk_journal(&root, |_| {}).await?;
    let snapshots = list_snapshots(&root, config.max_snapshot_bytes).await?;
    let quarantine = files_in(&root, QUARANTINE_DIR).await?;
    let watermark = scan.snapshot_op.unwrap_or(0);
    Ok(InspectReport {
        journal_bytes: segments.iter().map(|s| s.len_bytes).sum(),
        segments,
        first_op: scan.first_op,
        last_op: scan.last_op,
        commit_op: scan.commit_op,
        snapshot_op: scan.snapshot_op,
        entries: scan.entries_read,
        slots_used: scan
            .last_op
            .map_or(0, |last| last.saturating_sub(watermark)),
        slot_count: SLOT_COUNT,
        problems: scan.problems.len(),
        snapshots,
        quarantine,
    })
}

/// Files of the subdirectory `name`; empty if it does not exist.
async fn files_in(root: &FsDirectory, name: &str) -> Result<Vec<FileInfo>, CliError> {
    let io_error =
        |source| CliError::io(format!("reading {}/{name}", root.path().display()), source);
    if !root.exists(name).await.map_err(io_error)? {
        return Ok(Vec::new());
    }
    let dir = root.open_dir(name, false).await.map_err(io_error)?;
    let mut files = Vec::new();
    for file in dir.list().await.map_err(io_error)? {
        let handle = dir
            .open_file(&file, OpenMode::ReadOnly)
            .await
            .map_err(io_error)?;
        files.push(FileInfo {
            file,
            len_bytes: handle.len(),
        });
    }
    Ok(files)
}

fn op_text(op: Option<u64>) -> String {
    op.map_or_else(|| "-".to_string(), |op| op.to_string())
}

fn segment_line(segment: &SegmentSummary) -> String {
    let mut line = format!(
        "\n  segment {}  ops {}..{}  {} entries  {} of {} bytes used",
        segment.file,
        op_text(segment.first_op),
        op_text(segment.last_op),
        segment.entries,
        segment.used_bytes,
        segment.len_bytes
    );
    if let Some(stop) = &segment.stop {
        line.push_str(&format!(
            "  (walk stops at {}: {})",
            stop.offset, stop.reason
        ));
    }
    line
}

fn report_text(report: &InspectReport) -> String {
    let mut text = format!(
        "journal: {} segment(s), {} bytes, {} entries\n\
         ops {}..{}  commit op {}  snapshot watermark {}\n\
         slots: {} of {} in use ({:.1}%){}",
        report.segments.len(),
        report.journal_bytes,
        report.entries,
        op_text(report.first_op),
        op_text(report.last_op),
        op_text(report.commit_op),
        op_text(report.snapshot_op),
        report.slots_used,
        report.slot_count,
        100.0 * report.slots_used as f64 / report.slot_count as f64,
        if report.problems > 0 {
            format!("\n{} problem(s): run `keel verify`", report.problems)
        } else {
            String::new()
        },
    );
    for segment in &report.segments {
        text.push_str(&segment_line(segment));
    }
    for snapshot in &report.snapshots {
        let validity = match &snapshot.problem {
            None => "valid".to_string(),
            Some(problem) => format!("INVALID: {problem}"),
        };
        text.push_str(&format!(
            "\n  snapshot {}  op {}  {} bytes  {validity}",
            snapshot.file, snapshot.op, snapshot.len_bytes
        ));
    }
    for file in &report.quarantine {
        text.push_str(&format!(
            "\n  quarantine {}  {} bytes",
            file.file, file.len_bytes
        ));
    }
    text
}
