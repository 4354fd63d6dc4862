//! report: what an engine open, `verify` and `repair --dry-run` say, as the CLI prints it (the
//! JSON keys are docs/cli.md's contract).
//!
//! Owns the report types and their conversions from the journal's reports. It must never decide
//! anything: `plan.rs` and `recover.rs` fill these in.

use std::fmt;

use keel_journal::{Case, PlannedCut, RecoveryMode, ScanReport, VerifyStatus};
use serde::{Deserialize, Serialize};

use crate::choice::SnapshotDamage;
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

/// What a repair did, by case: its `kind` in every report (printed by [`RepairKind::name`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RepairKind {
    /// The journal was cut (a torn tail, or a point-in-time cut of acknowledged ops).
    JournalCut(PlannedCut),
    /// A snapshot file the recovery fell back from was moved to quarantine.
    Snapshot(SnapshotDamage),
    /// A leftover temp file of an interrupted snapshot persist was quarantined.
    SnapshotTemp,
    /// A leftover temp file of an interrupted compaction was quarantined.
    CompactionTemp,
}

impl RepairKind {
    /// Every kind (for parsing a name back and for tests).
    pub fn all() -> impl Iterator<Item = RepairKind> {
        let cuts = PlannedCut::ALL.into_iter().map(RepairKind::JournalCut);
        let snapshots = SnapshotDamage::ALL.into_iter().map(RepairKind::Snapshot);
        cuts.chain(snapshots)
            .chain([RepairKind::SnapshotTemp, RepairKind::CompactionTemp])
    }

    /// `torn_tail`, `point_in_time_cut`, `snapshot_checksum`, `snapshot_restore`,
    /// `snapshot_foreign`, `snapshot_misplaced`, `snapshot_temp`, `compaction_temp` (docs/cli.md).
    pub fn name(self) -> &'static str {
        match self {
            RepairKind::JournalCut(cut) => cut.name(),
            RepairKind::Snapshot(damage) => damage.name(),
            RepairKind::SnapshotTemp => "snapshot_temp",
            RepairKind::CompactionTemp => "compaction_temp",
        }
    }

    /// Whether it is a cut of the journal (its bytes are the stop's segment's rest and every
    /// later segment).
    pub fn is_journal_cut(self) -> bool {
        matches!(self, RepairKind::JournalCut(_))
    }
}

/// What a problem `verify` found is, by case: its `kind` (printed by [`ProblemKind::name`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProblemKind {
    /// Where the journal's scan stopped (the journal's recovery table's case).
    Journal(Case),
    /// A snapshot file that cannot be used.
    Snapshot(SnapshotDamage),
    /// Committed ops absent from the journal and every snapshot.
    MissingOps,
    /// A keel-raft store's `raft-meta` file fails its checks (the CLI checks it).
    RaftMeta,
}

impl ProblemKind {
    /// Every kind (for parsing a name back and for tests).
    pub fn all() -> impl Iterator<Item = ProblemKind> {
        let journal = Case::ALL.into_iter().map(ProblemKind::Journal);
        let snapshots = SnapshotDamage::ALL.into_iter().map(ProblemKind::Snapshot);
        journal
            .chain(snapshots)
            .chain([ProblemKind::MissingOps, ProblemKind::RaftMeta])
    }

    /// The journal's case names, `snapshot_*`, `missing_ops`, `raft_meta` (docs/cli.md).
    pub fn name(self) -> &'static str {
        match self {
            ProblemKind::Journal(case) => case.name(),
            ProblemKind::Snapshot(damage) => damage.name(),
            ProblemKind::MissingOps => "missing_ops",
            ProblemKind::RaftMeta => "raft_meta",
        }
    }
}

/// Printed and serialized as their names (the JSON values of docs/cli.md); parsed back from them.
macro_rules! by_name {
    ($kind:ty) => {
        impl fmt::Display for $kind {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }

        impl Serialize for $kind {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.name())
            }
        }

        impl<'de> Deserialize<'de> for $kind {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let name = String::deserialize(deserializer)?;
                <$kind>::all()
                    .find(|kind| kind.name() == name)
                    .ok_or_else(|| serde::de::Error::custom(format!("unknown kind {name:?}")))
            }
        }
    };
}

by_name!(RepairKind);
by_name!(ProblemKind);

/// `RecoveryReport::mode` as the CLI's `--mode` name.
mod mode_by_name {
    use keel_journal::RecoveryMode;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(mode: &RecoveryMode, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(super::recovery_mode_name(*mode))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<RecoveryMode, D::Error> {
        let name = String::deserialize(deserializer)?;
        super::recovery_mode_from_str(&name)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown recovery mode {name:?}")))
    }
}

/// One repair: the CLI prints these keys as they are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairRecord {
    /// What the repair did.
    pub kind: RepairKind,
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
    /// The mode recovered in (printed `tolerate-torn-tail`, `absolute` or `point-in-time`).
    #[serde(with = "mode_by_name")]
    pub mode: RecoveryMode,
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
    /// What the problem is.
    pub kind: ProblemKind,
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
            kind: ProblemKind::Journal(p.kind),
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
            kind: RepairKind::JournalCut(r.kind),
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
    /// What the repair would do.
    pub kind: RepairKind,
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
        // Stray bytes after a sealed segment's end need no repair: listed, not a torn tail.
        let needs_repair = problems.iter().any(|p| match p.kind {
            ProblemKind::Journal(case) => keel_journal::needs_repair(case),
            _ => true,
        });
        let status = if corrupt {
            VerifyStatus::Corrupt
        } else if needs_repair {
            VerifyStatus::TornTail
        } else {
            VerifyStatus::Clean
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// Every kind prints a distinct name, and the JSON value parses back to the same case.
    #[test]
    fn kinds_print_distinct_names_that_parse_back() {
        let repairs: Vec<RepairKind> = RepairKind::all().collect();
        let names: HashSet<_> = repairs.iter().map(|k| k.name()).collect();
        assert_eq!(names.len(), repairs.len(), "two repair kinds print alike");
        for kind in repairs {
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.name()));
            assert_eq!(serde_json::from_str::<RepairKind>(&json).unwrap(), kind);
        }
        let problems: Vec<ProblemKind> = ProblemKind::all().collect();
        let names: HashSet<_> = problems.iter().map(|k| k.name()).collect();
        assert_eq!(names.len(), problems.len(), "two problem kinds print alike");
        for kind in problems {
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(serde_json::from_str::<ProblemKind>(&json).unwrap(), kind);
        }
        assert!(serde_json::from_str::<RepairKind>("\"bogus\"").is_err());
        assert_eq!(
            RepairKind::JournalCut(PlannedCut::PointInTime).to_string(),
            "point_in_time_cut"
        );
    }
}
