//! report: what opening, verifying or inspecting a journal found, and the read-only checks that
//! produce it (`verify`, `inspect`, `raw_entries`).
//!
//! Owns the report types the engine and the CLI print, and the verdict over their problems. It must
//! never write: every function here reads segments through the scan and changes nothing.

use std::ops::RangeInclusive;

use keel_storage::Directory;

use crate::config::max_file_bytes;
use crate::error::JournalError;
use crate::format::EntryKind;
use crate::outcome::{Case, PlannedCut};
use crate::recovery::{info, needs_repair};
use crate::scan::{self, scan_log, LogScan};
use crate::{JournalConfig, MetadataJournal};

/// One repair recovery performed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repair {
    /// The cut this repair carried out (printed `torn_tail` or `point_in_time_cut`).
    pub kind: PlannedCut,
    /// Segment file name.
    pub file: String,
    /// Where the cut starts in that file.
    pub offset_bytes: u64,
    /// Bytes cut (this file's rest and every later segment's).
    pub bytes: u64,
    /// Quarantine file name under `DIR/quarantine/`.
    pub quarantine_file: String,
}

/// One problem a scan found (reported by verify; an error for open unless repaired).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The recovery table's case (printed by name, e.g. `torn_tail`, `corrupt_entry`).
    pub kind: Case,
    /// The segment file.
    pub file: String,
    /// Where in the file the damage starts.
    pub offset_bytes: u64,
    /// The op of the damaged entry when it can be told (the expected one otherwise).
    pub op: Option<u64>,
}

/// What opening (or verifying) a journal found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanReport {
    /// Segment files read.
    pub segments_read: u64,
    /// Entries (data and markers) read.
    pub entries_read: u64,
    /// Bytes read from segment files.
    pub bytes_read: u64,
    /// Lowest op of a readable data entry (`None`: no data entry).
    pub first_op: Option<u64>,
    /// Highest op of a readable data entry (`None`: no data entry).
    pub last_op: Option<u64>,
    /// Highest commit watermark found in a durable entry.
    pub commit_op: Option<u64>,
    /// The snapshot watermark persisted in the journal.
    pub snapshot_op: Option<u64>,
    /// Repairs the open performed (none for verify).
    pub repairs: Vec<Repair>,
    /// Problems found (verify lists all; an open lists the ones it repaired).
    pub problems: Vec<Problem>,
    /// Ops whose entries were cut (point-in-time) and must come from peers.
    pub lost_ops: Vec<RangeInclusive<u64>>,
    /// Ops of readable entries a torn-tail repair cut: never acknowledged here, but a consensus
    /// layer may have sent them to peers before the crash.
    pub torn_ops: Vec<RangeInclusive<u64>>,
}

/// Counters for operators; cheap to read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JournalStats {
    /// Data entries written.
    pub appends: u64,
    /// Their bytes on disk (headers and padding included).
    pub bytes_appended: u64,
    /// Durability points: fdatasync calls, plus write-through writes (each carries one).
    pub fsyncs: u64,
    /// Groups the writer wrote.
    pub batches: u64,
    /// Time spent in those fdatasyncs and write-through writes.
    pub fsync_nanos_total: u64,
    /// Segment files open in the journal.
    pub segments_live: u64,
    /// Preallocation steps zero-filled in the background while groups wrote below them.
    pub zero_fills_in_background: u64,
    /// Preallocation steps zero-filled inline, the group that needed them waiting: a group that
    /// reached past the zeroed space, or any step of a segment with an `O_DIRECT` handle.
    pub zero_fills_inline: u64,
    /// Durable runs that reached past the zeroed space with no fill under way and extended the
    /// file instead of waiting for an inline fill (the next step then starts behind them).
    pub runs_extending: u64,
    /// Rotations that took the prepared spare segment (`next.spare`) instead of creating and
    /// zero-filling a file: docs/performance.md, "Preallocation".
    pub spares_adopted: u64,
    /// Of those, rotations into a recycled spare (a dead segment's file: no zero-fill at all).
    pub spares_recycled: u64,
}

/// Summary of one compaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactionReport {
    /// Wholly dead segments deleted.
    pub segments_deleted: u64,
    /// Straddling segments rewritten without their dead entries.
    pub segments_rewritten: u64,
    /// Segment bytes on disk before.
    pub bytes_before: u64,
    /// Segment bytes on disk after.
    pub bytes_after: u64,
}

/// Verify's verdict over a report's problems (docs/cli.md: exit 0 / 3 / 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyStatus {
    /// No problem.
    Clean,
    /// Only torn tails: unacknowledged writes a crash cut; a normal open repairs them.
    TornTail,
    /// Acknowledged data is damaged, or the log cannot be read.
    Corrupt,
}

impl VerifyStatus {
    /// `clean`, `torn_tail`, `corrupt` (the JSON `status` key).
    pub fn name(self) -> &'static str {
        match self {
            Self::Clean => "clean",
            Self::TornTail => "torn_tail",
            Self::Corrupt => "corrupt",
        }
    }
}

impl Problem {
    /// Whether this problem means acknowledged data is damaged (or unreadable), as opposed to a
    /// torn tail (`torn_tail`, `torn_segment_header`) that a normal open repairs.
    pub fn is_corruption(&self) -> bool {
        info(self.kind).corruption
    }
}

impl ScanReport {
    /// The worst of the problems found.
    pub fn status(&self) -> VerifyStatus {
        let mut status = VerifyStatus::Clean;
        for problem in &self.problems {
            if problem.is_corruption() {
                return VerifyStatus::Corrupt;
            }
            // Stray bytes after a sealed end need no repair: reported, not a torn tail.
            if needs_repair(problem.kind) {
                status = VerifyStatus::TornTail;
            }
        }
        status
    }
}

/// One segment as `keel inspect` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentSummary {
    /// The segment's file name.
    pub file: String,
    /// Its number.
    pub number: u64,
    /// The file's length (preallocated space included).
    pub len_bytes: u64,
    /// End of the last valid entry (the rest is preallocated zeroes or damage).
    pub data_end_bytes: u64,
    /// Whether compaction rewrote it.
    pub rewritten: bool,
    /// Seq of its first entry.
    pub first_seq: u64,
    /// Valid entries (data and markers) in it.
    pub entries: u64,
    /// Lowest op among its data entries.
    pub first_op: Option<u64>,
    /// Highest op among its data entries.
    pub last_op: Option<u64>,
}

/// One entry as `keel dump` shows it (header fields, no payload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEntry {
    /// The segment file.
    pub file: String,
    /// Where the entry's header starts.
    pub offset_bytes: u64,
    /// Its seq.
    pub seq: u64,
    /// Its op (data) or watermark (markers).
    pub op: u64,
    /// What the entry is.
    pub kind: EntryKind,
    /// Payload length (padding not counted).
    pub payload_len_bytes: u32,
    /// crc32 of the payload.
    pub payload_crc: u32,
    /// Highest seq an fsync had covered when it was written.
    pub durable_seq: u64,
    /// Commit watermark it carries (0 = none).
    pub commit_op: u64,
}

/// Scans a journal that a live writer may be changing (verify takes no lock): a listed segment
/// that vanished or shrank while being read (compaction, a repair) is an I/O race, not damage,
/// so the scan starts over, a bounded number of times, before the error is returned as is.
async fn scan_live<D: Directory>(dir: &D, max_file: u64) -> Result<LogScan, JournalError> {
    const ATTEMPTS: u32 = 3;
    let mut attempt = 1;
    loop {
        match scan_log(dir, max_file, true).await {
            Err(JournalError::Io {
                source,
                stage,
                file,
            }) if attempt < ATTEMPTS
                && matches!(
                    source.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::UnexpectedEof
                ) =>
            {
                tracing::info!(%file, stage, %source, attempt, "journal changed while verified; scanning again");
                attempt += 1;
            }
            other => return other,
        }
    }
}

pub(crate) fn refuse(stop: &scan::StopAt) -> JournalError {
    JournalError::Corrupt {
        kind: stop.case,
        file: stop.file.clone(),
        offset_bytes: stop.stop.offset_bytes,
        op: stop.stop.op,
    }
}

pub(crate) fn problem(stop: &scan::StopAt) -> Problem {
    Problem {
        kind: stop.case,
        file: stop.file.clone(),
        offset_bytes: stop.stop.offset_bytes,
        op: stop.stop.op,
    }
}

/// Fills the report's op and watermark fields from the kept segments.
pub(crate) fn summarize(scan: &LogScan, report: &mut ScanReport) {
    report.segments_read = scan.files.len() as u64;
    report.bytes_read = scan.bytes_read;
    let mut commit = 0u64;
    let mut snapshot = 0u64;
    for seg in &scan.segments {
        commit = commit.max(seg.header.commit_op);
        snapshot = snapshot.max(seg.header.snapshot_op);
        for e in &seg.entries {
            report.entries_read += 1;
            commit = commit.max(e.commit_op);
            match e.kind {
                EntryKind::Data => {
                    report.first_op = Some(report.first_op.map_or(e.op, |f| f.min(e.op)));
                    report.last_op = Some(report.last_op.map_or(e.op, |l| l.max(e.op)));
                }
                EntryKind::Snapshot => snapshot = snapshot.max(e.op),
                EntryKind::Commit => commit = commit.max(e.op),
                EntryKind::Truncate => {}
            }
        }
    }
    report.commit_op = (commit > 0).then_some(commit);
    report.snapshot_op = (snapshot > 0).then_some(snapshot);
}

impl<D: Directory> MetadataJournal<D> {
    /// Read-only full check: never writes; reports every problem instead of failing on the first.
    pub async fn verify(root: &D, config: JournalConfig) -> Result<ScanReport, JournalError> {
        config.validate()?;
        let mut report = ScanReport::default();
        let dir = match root.open_dir("journal", false).await {
            Ok(dir) => dir,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(report),
            Err(e) => return Err(JournalError::io("open journal dir", root.display_path(), e)),
        };
        let scan = scan_live(&dir, max_file_bytes(&config)).await?;
        summarize(&scan, &mut report);
        for e in &scan.entries_after_stops {
            report.entries_read += 1;
            if e.kind == EntryKind::Data {
                report.first_op = Some(report.first_op.map_or(e.op, |f| f.min(e.op)));
                report.last_op = Some(report.last_op.map_or(e.op, |l| l.max(e.op)));
            }
        }
        for stop in &scan.problems {
            report.problems.push(problem(stop));
        }
        Ok(report)
    }

    /// Segments with their op ranges and sizes (read-only; for `keel inspect`).
    pub async fn inspect(
        root: &D,
        config: JournalConfig,
    ) -> Result<Vec<SegmentSummary>, JournalError> {
        let dir = match root.open_dir("journal", false).await {
            Ok(dir) => dir,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(JournalError::io("open journal dir", root.display_path(), e)),
        };
        let scan = scan_log(&dir, max_file_bytes(&config), true).await?;
        Ok(scan
            .segments
            .iter()
            .map(|seg| {
                let data_ops = seg.entries.iter().filter(|e| e.kind == EntryKind::Data);
                SegmentSummary {
                    file: seg.name.clone(),
                    number: seg.number,
                    len_bytes: seg.file_len_bytes,
                    data_end_bytes: seg.data_end_bytes,
                    rewritten: seg.header.is_rewritten(),
                    first_seq: seg.header.first_seq,
                    entries: seg.entries.len() as u64,
                    first_op: data_ops.clone().map(|e| e.op).min(),
                    last_op: data_ops.map(|e| e.op).max(),
                }
            })
            .collect())
    }

    /// Every valid entry header in log order up to the first problem, filtered to data and marker
    /// entries whose op lies in `[from_op, to_op]` (read-only; for `keel dump`).
    pub async fn raw_entries(
        root: &D,
        config: JournalConfig,
        from_op: u64,
        to_op: u64,
    ) -> Result<Vec<RawEntry>, JournalError> {
        let dir = match root.open_dir("journal", false).await {
            Ok(dir) => dir,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(JournalError::io("open journal dir", root.display_path(), e)),
        };
        let scan = scan_log(&dir, max_file_bytes(&config), false).await?;
        let mut out = Vec::new();
        for seg in &scan.segments {
            for e in &seg.entries {
                if e.op < from_op || e.op > to_op {
                    continue;
                }
                out.push(RawEntry {
                    file: seg.name.clone(),
                    offset_bytes: e.offset_bytes,
                    seq: e.seq,
                    op: e.op,
                    kind: e.kind,
                    payload_len_bytes: e.payload_len,
                    payload_crc: e.payload_crc,
                    durable_seq: e.durable_seq,
                    commit_op: e.commit_op,
                });
            }
        }
        Ok(out)
    }
}
