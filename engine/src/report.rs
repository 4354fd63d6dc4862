//! report: what an engine open, `verify` and `repair --dry-run` say, as the CLI prints it (the
//! JSON keys are docs/cli.md's contract).
//!
//! Owns the report types and their conversions from the journal's reports. It must never decide
//! anything: `plan.rs` and `recover.rs` fill these in.

use keel_journal::{RecoveryMode, ScanReport, VerifyStatus};
use serde::{Deserialize, Serialize};

use crate::range::OpRange;
use crate::snapshot::SnapshotInfo;
use crate::QUARANTINE_DIR;

/// The outcome of a recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecoveryStatus {
    /// Nothing needed repair.
    Clean,
    /// Something was repaired, quarantined or reported unrecoverable.
    Repaired,
    /// Recovery refused (never in a returned report from `open`; for tools reporting an error).
    Refused,
}

/// One repair: the CLI prints these keys as they are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairRecord {
    /// `torn_tail`, `point_in_time_cut` (journal) or `snapshot_checksum`.
    pub kind: String,
    /// The file cut or set aside (a path under the engine directory).
    pub file: String,
    /// Where the cut starts in it (bytes).
    pub offset: u64,
    /// Bytes removed.
    pub bytes: u64,
    /// Where the removed bytes were kept.
    pub quarantine: String,
}

/// What `Engine::open` found and did. Serializable for `keel recover --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryReport {
    /// Whether the open found the directory clean, repaired it, or refused.
    pub status: RecoveryStatus,
    /// `tolerate-torn-tail`, `absolute` or `point-in-time`.
    pub mode: String,
    /// Op of the snapshot the state was restored from (0: none).
    pub snapshot_op: u64,
    /// The snapshot file restored from (`None`: none).
    pub snapshot_file: Option<String>,
    /// Highest op found anywhere (journal, snapshot).
    pub last_op: u64,
    /// The durable commit watermark recovery established.
    pub commit_op: u64,
    /// Highest op applied to the state machine after recovery.
    pub applied_op: u64,
    /// Ops replayed from the journal into the state machine.
    pub replayed: u64,
    /// The journal's own snapshot watermark.
    pub journal_snapshot_op: u64,
    /// Lowest op of a data entry in the journal (`None`: none).
    pub journal_first_op: Option<u64>,
    /// Journal segments the open read.
    pub segments_read: u64,
    /// Journal entries the open read.
    pub entries_read: u64,
    /// Every repair, in the order performed.
    pub repairs: Vec<RepairRecord>,
    /// Prepares above the commit watermark: durable but not applied; the consensus layer decides.
    pub prepared_uncommitted: Vec<OpRange>,
    /// Committed ops (above the snapshot restored, at or below the commit watermark) that a
    /// repair cut or that are missing: fetch them from peers. JSON `lost_committed_ops`.
    #[serde(rename = "lost_committed_ops")]
    pub unrecoverable: Vec<OpRange>,
    /// Ops of readable entries a repair cut that were never committed (a torn tail's, or a
    /// point-in-time cut's above the commit watermark): never acknowledged as committed here,
    /// but a consensus layer may have sent them to peers before the crash. A torn entry whose
    /// header is unreadable has no op to name; its repair record still gives the offset and
    /// bytes cut. JSON `cut_uncommitted_ops`.
    #[serde(rename = "cut_uncommitted_ops")]
    pub torn_ops: Vec<OpRange>,
    /// Interrupted snapshot temp files removed.
    pub temp_files_removed: u64,
    /// Wall time of the open.
    pub duration_us: u64,
}

/// JSON `status`: the verdict's name (`clean`, `torn_tail`, `corrupt`).
fn serialize_status<S: serde::Serializer>(
    status: &VerifyStatus,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(status.name())
}

/// One problem `verify` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProblemRecord {
    /// The case's name (the journal's table, or a snapshot's `snapshot_*`, `missing_ops`).
    pub kind: String,
    /// The file (a path under the engine directory).
    pub file: String,
    /// Where in it the problem starts (bytes).
    pub offset: u64,
    /// The op concerned, when one op is.
    pub op: Option<u64>,
    /// The ops concerned, when the problem is a range (`missing_ops`); null otherwise.
    pub ops: Option<OpRange>,
}

/// The path of the journal's segment `name` in the engine directory at `root_path`: every report
/// names files by path.
pub fn journal_file(root_path: &str, name: &str) -> String {
    format!("{root_path}/journal/{name}")
}

impl ProblemRecord {
    /// A journal scan's problem in the engine directory at `root_path`.
    pub fn from_journal(root_path: &str, p: &keel_journal::Problem) -> Self {
        ProblemRecord {
            kind: p.kind.to_string(),
            file: journal_file(root_path, &p.file),
            offset: p.offset_bytes,
            op: p.op,
            ops: None,
        }
    }
}

/// The read-only check of a whole engine directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// The worst of the problems (the journal's verdict type, one for every layer).
    #[serde(serialize_with = "serialize_status")]
    pub status: VerifyStatus,
    /// Lowest op of a readable journal data entry.
    pub first_op: Option<u64>,
    /// Highest op of a readable journal data entry.
    pub last_op: Option<u64>,
    /// Highest durable commit watermark found.
    pub commit_op: Option<u64>,
    /// The journal's snapshot watermark.
    pub journal_snapshot_op: Option<u64>,
    /// Every problem found.
    pub problems: Vec<ProblemRecord>,
    /// Every snapshot file, newest first, with its verdict.
    pub snapshots: Vec<SnapshotInfo>,
}

/// `tolerate-torn-tail`, `absolute`, `point-in-time` (the CLI's `--mode`).
pub fn recovery_mode_from_str(s: &str) -> Option<RecoveryMode> {
    match s {
        "tolerate-torn-tail" => Some(RecoveryMode::TolerateTornTail),
        "absolute" => Some(RecoveryMode::Absolute),
        "point-in-time" => Some(RecoveryMode::PointInTime),
        _ => None,
    }
}

/// The CLI's `--mode` name of `mode` (the inverse of [`recovery_mode_from_str`]).
pub fn recovery_mode_name(mode: RecoveryMode) -> &'static str {
    match mode {
        RecoveryMode::TolerateTornTail => "tolerate-torn-tail",
        RecoveryMode::Absolute => "absolute",
        RecoveryMode::PointInTime => "point-in-time",
    }
}

/// The journal names its quarantine file relative to `DIR/quarantine/`; the report gives full
/// paths for both journal and snapshot repairs, so an operator can open them as printed.
pub fn journal_repairs(root_path: &str, scan: &ScanReport) -> Vec<RepairRecord> {
    scan.repairs
        .iter()
        .map(|r| RepairRecord {
            kind: r.kind.to_string(),
            file: journal_file(root_path, &r.file),
            offset: r.offset_bytes,
            bytes: r.bytes,
            quarantine: format!("{root_path}/{QUARANTINE_DIR}/{}", r.quarantine_file),
        })
        .collect()
}

/// One repair a dry run says `repair` would make.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedRepair {
    /// `torn_tail`, `point_in_time_cut`, `snapshot_checksum`, `snapshot_restore`,
    /// `snapshot_foreign`, `snapshot_misplaced`, `compaction_temp`, `snapshot_temp`.
    pub kind: String,
    /// The file cut or moved (a journal cut also removes every later segment).
    pub file: String,
    /// Where a cut starts (0: the whole file).
    pub offset: u64,
    /// Bytes cut or moved (a journal cut's are the caller's to count from the files: 0 here).
    pub bytes: u64,
    /// The op of the first entry cut, or of the snapshot.
    pub op: Option<u64>,
}

/// What `repair` (or `recover`) in the configured mode would do, decided read-only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RepairPlan {
    /// The snapshot the state would come from (0: none).
    pub snapshot_op: u64,
    /// The commit watermark the open would establish.
    pub commit_op: u64,
    /// Cuts and quarantines, in the order they would happen.
    pub repairs: Vec<PlannedRepair>,
    /// Committed ops that would be gone (fetch them from peers). JSON `lost_committed_ops`.
    #[serde(rename = "lost_committed_ops")]
    pub lost_committed: Vec<OpRange>,
    /// Ops of entries that would be cut and were never committed. JSON `cut_uncommitted_ops`.
    #[serde(rename = "cut_uncommitted_ops")]
    pub cut_uncommitted: Vec<OpRange>,
}

impl VerifyReport {
    /// The verdict on a scan and the problems found: corrupt when `corrupt`, else clean when
    /// nothing was found, else a torn tail.
    pub fn new(
        scan: &ScanReport,
        corrupt: bool,
        problems: Vec<ProblemRecord>,
        snapshots: Vec<SnapshotInfo>,
    ) -> Self {
        let status = if corrupt {
            VerifyStatus::Corrupt
        } else if problems.is_empty() {
            VerifyStatus::Clean
        } else {
            VerifyStatus::TornTail
        };
        VerifyReport {
            status,
            first_op: scan.first_op,
            last_op: scan.last_op,
            commit_op: scan.commit_op,
            journal_snapshot_op: scan.snapshot_op,
            problems,
            snapshots,
        }
    }
}
