//! `keel inspect D [--json]`: what a directory says about itself (its manifest), segments and
//! their sizes, the op range, watermarks, slot use, snapshots and quarantine files (and a
//! keel-raft store's meta file). Strictly read-only. Exit 0, or 1 on an error.

use std::path::Path;

use keel_engine::{list_snapshots, ProblemRecord, SnapshotInfo, QUARANTINE_DIR};
use keel_journal::{MetadataJournal, ScanReport};
use keel_storage::{Directory, FsDirectory, OpenMode, Storage};
use serde::Serialize;

use super::error::CliError;
use super::geometry::config_for;
use super::output::{self, Outcome};
use super::raft::{self, MetaInfo};
use super::target::{self, DirKind, EngineDir};
use super::walk::{walk_journal, SegmentSummary};
use super::{live, readonly, style, text, DirArg, Mode};

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

/// The manifest as `inspect` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ManifestInfo {
    pub format_version: u32,
    pub directory_id: String,
    pub slot_count: u64,
    pub segment_bytes: u64,
    pub shard_index: Option<u64>,
    pub keel_version: String,
    pub closed_commit_op: u64,
}

/// What `inspect` shows of one directory.
#[derive(Debug, Clone, Serialize)]
pub struct InspectReport {
    /// An engine directory or a keel-raft store (printed `engine` or `raft_store`).
    pub kind: DirKind,
    /// `DIR/MANIFEST`, or null when there is none (the ring is then sized from the journal).
    pub manifest: Option<ManifestInfo>,
    pub segments: Vec<SegmentSummary>,
    pub journal_bytes: u64,
    pub first_op: Option<u64>,
    pub last_op: Option<u64>,
    pub commit_op: Option<u64>,
    /// The journal's snapshot watermark (the same key in every command).
    pub journal_snapshot_op: Option<u64>,
    pub entries: u64,
    /// Ops between the watermark and the last op: the ring slots they occupy.
    pub slots_used: u64,
    pub slot_count: u64,
    /// What the journal's scan found (run `keel verify` for the verdict).
    pub problems: Vec<ProblemRecord>,
    pub snapshots: Vec<SnapshotInfo>,
    /// A keel-raft store's `raft-meta` (null elsewhere).
    pub raft_meta: Option<MetaInfo>,
    pub quarantine: Vec<FileInfo>,
}

pub async fn run(args: InspectArgs) -> Result<u8, CliError> {
    let target = target::resolve(&args.dir.dir).await?;
    let outcomes = output::for_each_engine(&target, "inspecting", |dir| async move {
        let note = live::note(&dir.path);
        let mut outcome = match inspect_one(&dir).await {
            Ok(report) => Outcome::from_report("ok", 0, 0, &report, report_text(&report)),
            Err(error) => Outcome::failure(&error, "error"),
        };
        outcome.add_live_writer(note);
        outcome
    })
    .await;
    Ok(output::print(&target, outcomes, args.json))
}

async fn inspect_one(dir: &EngineDir) -> Result<InspectReport, CliError> {
    let root = readonly::open(&dir.path).await?;
    let (config, geometry) = config_for(&root, Mode::Absolute).await?;
    let scan: ScanReport = MetadataJournal::verify(&root, config.journal.clone())
        .await
        .map_err(keel_engine::EngineError::from)?;
    let segments = walk_journal(&root, |_, _| {}).await?;
    let (snapshots, raft_meta) = match dir.kind {
        DirKind::Engine => (
            list_snapshots(&root, config.max_snapshot_bytes).await?,
            None,
        ),
        DirKind::Raft => (
            raft::check_snapshots(&dir.path)?,
            raft::check_meta(&dir.path)?,
        ),
    };
    let quarantine = files_in(&root, QUARANTINE_DIR).await?;
    let watermark = scan.snapshot_op.unwrap_or(0);
    let root_path = root.display_path();
    Ok(InspectReport {
        kind: dir.kind,
        manifest: geometry.manifest().map(manifest_info),
        journal_bytes: segments.iter().map(|s| s.len_bytes).sum(),
        segments,
        first_op: scan.first_op,
        last_op: scan.last_op,
        commit_op: scan.commit_op,
        journal_snapshot_op: scan.snapshot_op,
        entries: scan.entries_read,
        slots_used: scan
            .last_op
            .map_or(0, |last| last.saturating_sub(watermark)),
        slot_count: config.journal.slot_count,
        problems: scan
            .problems
            .iter()
            .map(|p| ProblemRecord::from_journal(&root_path, p))
            .collect(),
        snapshots,
        raft_meta,
        quarantine,
    })
}

fn manifest_info(manifest: &keel_engine::Manifest) -> ManifestInfo {
    ManifestInfo {
        format_version: manifest.format_version,
        directory_id: manifest.directory_id.to_string(),
        slot_count: manifest.slot_count,
        segment_bytes: manifest.segment_bytes,
        shard_index: manifest.shard_index,
        keel_version: manifest.keel_version.clone(),
        closed_commit_op: manifest.closed_commit_op,
    }
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

fn segment_line(segment: &SegmentSummary) -> String {
    let mut line = format!(
        "\n  segment {}  ops {}  {} entries  {} of {} used",
        segment.file,
        text::op_span(segment.first_op, segment.last_op),
        segment.entries,
        style::size(segment.used_bytes),
        style::size(segment.len_bytes)
    );
    if let Some(stop) = &segment.stop {
        line.push_str(&format!(
            "  (walk stops at offset {}: {})",
            stop.offset, stop.reason
        ));
    }
    line
}

fn header_lines(report: &InspectReport) -> String {
    let geometry = match &report.manifest {
        Some(m) => format!(
            "{} directory {}  shard {}  written by keel {}  slot count {}  segments of {}",
            report.kind.name().replace('_', " "),
            m.directory_id,
            m.shard_index
                .map_or_else(|| "-".to_string(), |s| s.to_string()),
            m.keel_version,
            m.slot_count,
            style::size(m.segment_bytes)
        ),
        None => format!(
            "{} (no MANIFEST: slot count {} sized from the journal)",
            report.kind.name().replace('_', " "),
            report.slot_count
        ),
    };
    format!(
        "{geometry}\njournal: {} segment(s), {}, {} entries\n\
         ops {}  commit op {}  journal snapshot watermark {}\n\
         slots: {} of {} in use ({:.1}%)",
        report.segments.len(),
        style::size(report.journal_bytes),
        report.entries,
        text::op_span(report.first_op, report.last_op),
        text::op(report.commit_op),
        text::op(report.journal_snapshot_op),
        report.slots_used,
        report.slot_count,
        100.0 * report.slots_used as f64 / report.slot_count.max(1) as f64,
    )
}

fn report_text(report: &InspectReport) -> String {
    let mut text = header_lines(report);
    if !report.problems.is_empty() {
        text.push_str(&format!(
            "\n{} problem(s): run `keel verify` for the verdict",
            report.problems.len()
        ));
    }
    for segment in &report.segments {
        text.push_str(&segment_line(segment));
    }
    for snapshot in &report.snapshots {
        let validity = match &snapshot.problem {
            None => "valid".to_string(),
            Some(problem) => format!("INVALID: {problem}"),
        };
        text.push_str(&format!(
            "\n  snapshot {}  op {}  {}  {validity}",
            Path::new(&snapshot.file).file_name().map_or_else(
                || snapshot.file.clone(),
                |n| n.to_string_lossy().into_owned()
            ),
            snapshot.op,
            style::size(snapshot.len_bytes)
        ));
    }
    if let Some(meta) = &report.raft_meta {
        let validity = meta
            .problem
            .as_deref()
            .map_or("valid".to_string(), |p| format!("INVALID: {p}"));
        text.push_str(&format!(
            "\n  raft-meta  {}  {validity}",
            style::size(meta.len_bytes)
        ));
    }
    for file in &report.quarantine {
        text.push_str(&format!(
            "\n  quarantine {}  {}",
            file.file,
            style::size(file.len_bytes)
        ));
    }
    text
}
