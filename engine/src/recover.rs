//! `recover()`: lock, load the newest valid snapshot, open the journal with the mode's repairs,
//! replay committed ops, and say what happened in a [`RecoveryReport`]. Also the read-only
//! [`verify`] and the no-replay [`repair`] the CLI uses.
//!
//! The decisions, in order:
//! 1. Snapshots newest first: the first whose checksums hold is used; a damaged one is moved to
//!    quarantine (refused in `Absolute` mode), and its op still proves that every op up to it was
//!    committed. An I/O error reading a snapshot is returned, never taken for damage.
//! 2. The journal holds live ops above its own watermark `J`. If the chosen snapshot `S` is below
//!    `J`, ops `S+1..=J` exist nowhere: refuse with [`EngineError::MissingOps`] naming them.
//! 3. The durable commit watermark is `C = max(S, journal's durable commit, quarantined snapshot
//!    ops)`. Ops `S+1..=C` are applied in order; they must all be present. Ops above `C` are
//!    prepared-but-uncommitted: kept pending (a later `commit` applies them) and reported.
//! 4. A committed op missing from the journal is refused, except in `PointInTime` mode, where the
//!    state stops before the gap and the gap is reported as unrecoverable.

use std::collections::BTreeMap;
use std::time::Instant;

use keel_journal::{MetadataJournal, RecoveryMode, ScanReport};
use keel_storage::Directory;
use serde::{Deserialize, Serialize};

use crate::error::{EngineError, SnapshotError};
use crate::lock::lock_dir;
use crate::snapshot::{list_snapshots, snapshot_file_name, SnapshotInfo, SnapshotStore};
use crate::state_machine::{ApplyError, RestoreError, StateMachine};
use crate::stats::EngineStats;
use crate::QUARANTINE_DIR;
use crate::{apply_one, checkpoint::SNAPSHOTS_KEPT, Engine, EngineConfig, Inner, Prepared};

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

/// An inclusive range of ops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpRange {
    pub first_op: u64,
    pub last_op: u64,
}

/// One repair: the CLI prints these keys as they are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairRecord {
    /// `torn_tail`, `point_in_time_cut` (journal) or `snapshot_checksum`.
    pub kind: String,
    pub file: String,
    pub offset: u64,
    pub bytes: u64,
    /// Where the removed bytes were kept.
    pub quarantine: String,
}

/// What `Engine::open` found and did. Serializable for `keel recover --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryReport {
    pub status: RecoveryStatus,
    /// `tolerate-torn-tail`, `absolute` or `point-in-time`.
    pub mode: String,
    /// Op of the snapshot the state was restored from (0: none).
    pub snapshot_op: u64,
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
    pub journal_first_op: Option<u64>,
    pub segments_read: u64,
    pub entries_read: u64,
    pub repairs: Vec<RepairRecord>,
    /// Prepares above the commit watermark: durable but not applied; the consensus layer decides.
    pub prepared_uncommitted: Vec<OpRange>,
    /// Ops that were committed (or cut by a repair) and are not here: fetch them from peers.
    pub unrecoverable: Vec<OpRange>,
    /// Interrupted snapshot temp files removed.
    pub temp_files_removed: u64,
    pub duration_us: u64,
}

/// `keel verify`'s verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VerifyStatus {
    Clean,
    TornTail,
    Corrupt,
}

/// One problem `verify` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProblemRecord {
    pub kind: String,
    pub file: String,
    pub offset: u64,
    pub op: Option<u64>,
}

/// The read-only check of a whole engine directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    pub status: VerifyStatus,
    pub first_op: Option<u64>,
    pub last_op: Option<u64>,
    pub commit_op: Option<u64>,
    pub journal_snapshot_op: Option<u64>,
    pub problems: Vec<ProblemRecord>,
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

pub fn recovery_mode_name(mode: RecoveryMode) -> &'static str {
    match mode {
        RecoveryMode::TolerateTornTail => "tolerate-torn-tail",
        RecoveryMode::Absolute => "absolute",
        RecoveryMode::PointInTime => "point-in-time",
    }
}

/// Ascending ops → inclusive ranges.
pub(crate) fn to_ranges(ops: impl IntoIterator<Item = u64>) -> Vec<OpRange> {
    let mut out: Vec<OpRange> = Vec::new();
    for op in ops {
        match out.last_mut() {
            Some(r) if r.last_op.checked_add(1) == Some(op) => r.last_op = op,
            _ => out.push(OpRange {
                first_op: op,
                last_op: op,
            }),
        }
    }
    out
}

/// The journal names its quarantine file relative to `DIR/quarantine/`; the report gives full
/// paths for both journal and snapshot repairs, so an operator can open them as printed.
fn journal_repairs(root_path: &str, scan: &ScanReport) -> Vec<RepairRecord> {
    scan.repairs
        .iter()
        .map(|r| RepairRecord {
            kind: r.kind.to_string(),
            file: r.file.clone(),
            offset: r.offset_bytes,
            bytes: r.bytes,
            quarantine: format!("{root_path}/{QUARANTINE_DIR}/{}", r.quarantine_file),
        })
        .collect()
}

pub(crate) async fn open<D: Directory, M: StateMachine>(
    root: D,
    config: EngineConfig,
    mut state_machine: M,
) -> Result<(Engine<D, M>, RecoveryReport), EngineError> {
    let started = Instant::now();
    config.validate()?;
    if root.is_read_only() {
        return Err(EngineError::Config(format!(
            "{} is opened read-only; an engine needs to write (use verify for read-only checks)",
            root.display_path()
        )));
    }
    let mode = config.recovery_mode;
    let lock = lock_dir(&root).await?;
    let snapshots = SnapshotStore::open(&root, config.max_snapshot_bytes).await?;
    let temp_files_removed = snapshots.remove_temps().await?;
    let mut repairs = Vec::new();

    // 1. The newest valid snapshot.
    let mut chosen: Option<(u64, Vec<u8>)> = None;
    let mut quarantined_max_op = 0u64;
    // Damaged snapshots copied to quarantine; their originals are removed only after the
    // commit watermark they prove is durable in the journal (below), so a crash or an I/O error
    // in between leaves the proof in place for the next recovery.
    let mut damaged_ops: Vec<u64> = Vec::new();
    let snapshot_ops = snapshots.list().await?;
    for &op in snapshot_ops.iter().rev() {
        match snapshots.load(op).await {
            Ok(bytes) => {
                chosen = Some((op, bytes));
                break;
            }
            Err(error @ SnapshotError::Checksum { .. }) => {
                if mode == RecoveryMode::Absolute {
                    return Err(error.into());
                }
                tracing::warn!(%error, op, "damaged snapshot; falling back to an older one");
                let bytes = snapshot_file_len(&snapshots, op).await;
                let quarantine = snapshots.copy_to_quarantine(op).await?;
                damaged_ops.push(op);
                repairs.push(RepairRecord {
                    kind: "snapshot_checksum".into(),
                    file: snapshots.path_of(&snapshot_file_name(op)),
                    offset: 0,
                    bytes,
                    quarantine,
                });
                quarantined_max_op = quarantined_max_op.max(op);
            }
            Err(error) => return Err(error.into()),
        }
    }
    let (snapshot_op, snapshot_file) = match &chosen {
        Some((op, bytes)) => {
            let file = snapshots.path_of(&snapshot_file_name(*op));
            state_machine
                .restore(bytes)
                .map_err(|RestoreError { reason }| SnapshotError::Decode {
                    file: file.clone(),
                    op: *op,
                    reason,
                })?;
            (*op, Some(file))
        }
        None => (0, None),
    };
    drop(chosen);
    // The snapshot the journal must still cover from, with `journal_covers_previous_snapshot`.
    let previous_snapshot_op = snapshot_ops
        .iter()
        .rev()
        .find(|&&op| op < snapshot_op)
        .copied()
        .unwrap_or(0);

    // 2. The journal, repaired per the mode.
    let (journal, scan) = MetadataJournal::open(&root, config.journal.clone(), mode).await?;
    repairs.extend(journal_repairs(&root.display_path(), &scan));
    let journal_snapshot_op = journal.snapshot_op();
    if snapshot_op < journal_snapshot_op {
        let reason = if quarantined_max_op > 0 {
            format!(
                "the snapshot at op {quarantined_max_op} was damaged (quarantined) and the journal \
                 was compacted through op {journal_snapshot_op}"
            )
        } else {
            format!(
                "no valid snapshot at or above op {journal_snapshot_op}, the journal's watermark"
            )
        };
        tracing::error!(
            first_op = snapshot_op + 1,
            last_op = journal_snapshot_op,
            %reason,
            "recovery refused: ops missing"
        );
        return Err(EngineError::MissingOps {
            first_op: snapshot_op + 1,
            last_op: journal_snapshot_op,
            reason,
        });
    }

    // 3. Replay committed ops; keep prepares above the watermark pending.
    let commit_op = snapshot_op
        .max(journal.commit_op().unwrap_or(0))
        .max(quarantined_max_op);
    let mut stats = EngineStats::default();
    let mut applied_op = snapshot_op;
    let mut pending: BTreeMap<u64, Prepared> = BTreeMap::new();
    let mut missing: Vec<OpRange> = Vec::new();
    let mut replayed = 0u64;
    {
        let mut reader = journal.reader(snapshot_op + 1);
        while let Some(entry) = reader.next().await? {
            if entry.op <= snapshot_op {
                continue; // the reader starts above S; a defensive skip, never replayed twice
            }
            if entry.op <= commit_op && missing.is_empty() && entry.op == applied_op + 1 {
                apply_one(&mut state_machine, &mut stats, entry.op, &entry.payload);
                applied_op = entry.op;
                replayed += 1;
                continue;
            }
            if entry.op <= commit_op && missing.is_empty() {
                missing.push(OpRange {
                    first_op: applied_op + 1,
                    last_op: entry.op - 1,
                });
            }
            if pending.len() as u64 >= config.journal.slot_count.saturating_mul(2) {
                // The journal never holds more live ops than its ring; more is a journal bug.
                return Err(EngineError::Config(format!(
                    "journal returned more than {} live ops above op {snapshot_op}",
                    config.journal.slot_count.saturating_mul(2)
                )));
            }
            pending.insert(
                entry.op,
                Prepared {
                    append_seq: 0,
                    payload: entry.payload,
                },
            );
        }
    }
    if missing.is_empty() && applied_op < commit_op {
        missing.push(OpRange {
            first_op: applied_op + 1,
            last_op: commit_op,
        });
    }
    let mut unrecoverable: Vec<OpRange> = scan
        .lost_ops
        .iter()
        .map(|r| OpRange {
            first_op: *r.start(),
            last_op: *r.end(),
        })
        .collect();
    if let Some(gap) = missing.first() {
        if mode != RecoveryMode::PointInTime {
            tracing::error!(
                first_op = gap.first_op,
                last_op = gap.last_op,
                commit_op,
                "recovery refused: committed ops missing from the journal"
            );
            return Err(EngineError::MissingOps {
                first_op: gap.first_op,
                last_op: gap.last_op,
                reason: format!(
                    "committed through op {commit_op} but absent from the journal and every snapshot"
                ),
            });
        }
        tracing::warn!(
            first_op = gap.first_op,
            last_op = gap.last_op,
            "point-in-time recovery: state stops before missing committed ops"
        );
        unrecoverable.push(*gap);
    }
    // The recovery decisions, checked: the state is exactly the snapshot plus contiguous
    // committed ops, and nothing above the durable commit was applied.
    assert!(applied_op >= snapshot_op, "replay went below the snapshot");
    assert!(
        applied_op <= commit_op,
        "applied past the durable commit watermark"
    );
    assert!(
        missing.is_empty() || mode == RecoveryMode::PointInTime,
        "a gap was accepted outside point-in-time mode"
    );
    assert!(
        pending.keys().all(|&op| op > applied_op),
        "a pending op at or below the applied op"
    );

    // The watermark the engine resumes with is what it applied (after a point-in-time gap, the
    // consensus layer re-prepares the missing ops and commits them again). It is made durable
    // in the journal now when it came from elsewhere: a snapshot proves its op committed only
    // while it exists, and a quarantined one no longer does — a second crash must not forget
    // what this recovery established.
    if applied_op > journal.commit_op().unwrap_or(0) {
        journal.set_commit_op(applied_op);
        journal.persist_commit().await?;
    }

    if mode != RecoveryMode::Absolute {
        // A crash between a snapshot's directory fsync and the journal's watermark: finish that
        // checkpoint now, or the journal's capacity stays tied to the older watermark until the
        // next checkpoint — which may never come if nothing new is committed.
        let watermark = if config.journal_covers_previous_snapshot {
            previous_snapshot_op
        } else {
            snapshot_op
        };
        if watermark > journal_snapshot_op {
            tracing::info!(
                watermark,
                journal_snapshot_op,
                "completing an interrupted checkpoint"
            );
            journal.set_snapshot_op(watermark).await?;
            journal.compact().await?;
        }
        // The damaged originals (their copies are in quarantine), then older snapshots a crash
        // left behind (before the coordinator's last step).
        snapshots.remove_snapshots(&damaged_ops).await?;
        snapshots.remove_older(SNAPSHOTS_KEPT).await?;
    }

    let last_op = journal
        .last_op()
        .unwrap_or(0)
        .max(applied_op)
        .max(commit_op)
        .max(pending.keys().next_back().copied().unwrap_or(0));
    let prepared_uncommitted = to_ranges(pending.range(commit_op + 1..).map(|(op, _)| *op));
    let status = if repairs.is_empty() && unrecoverable.is_empty() {
        RecoveryStatus::Clean
    } else {
        RecoveryStatus::Repaired
    };
    let duration_us = started.elapsed().as_micros() as u64;
    stats.replayed_ops = replayed;
    stats.repairs = repairs.len() as u64;
    stats.recovery_duration_us = duration_us;
    stats.snapshot_op = snapshot_op;
    let report = RecoveryReport {
        status,
        mode: recovery_mode_name(mode).to_string(),
        snapshot_op,
        snapshot_file,
        last_op,
        commit_op,
        applied_op,
        replayed,
        journal_snapshot_op,
        journal_first_op: scan.first_op,
        segments_read: scan.segments_read,
        entries_read: scan.entries_read,
        repairs,
        prepared_uncommitted,
        unrecoverable,
        temp_files_removed,
        duration_us,
    };
    tracing::info!(
        snapshot_op,
        commit_op,
        applied_op,
        replayed,
        prepared = pending.len(),
        status = ?report.status,
        "engine recovered"
    );
    let engine = Engine {
        root,
        config,
        journal,
        snapshots,
        inner: std::cell::RefCell::new(Inner {
            state_machine,
            applied_op,
            commit_op: applied_op,
            pending,
            in_flight: BTreeMap::new(),
            next_append_seq: 0,
            snapshot_op,
            stats,
            journal_appends_seen: 0,
            journal_batches_seen: 0,
        }),
        checkpointing: std::cell::Cell::new(false),
        _lock: lock,
    };
    Ok((engine, report))
}

async fn snapshot_file_len<D: Directory>(store: &SnapshotStore<D>, op: u64) -> u64 {
    store.file_len(op).await.unwrap_or(0)
}

/// A state machine that keeps nothing: [`repair`] recovers through it without keeping state.
struct Discard;

impl StateMachine for Discard {
    fn apply(&mut self, _op: u64, _command: &[u8]) -> Result<(), ApplyError> {
        Ok(())
    }

    fn snapshot(&self) -> Vec<u8> {
        Vec::new()
    }

    fn restore(&mut self, _bytes: &[u8]) -> Result<(), RestoreError> {
        Ok(())
    }
}

/// What `open` repairs (journal torn tails and cuts, damaged snapshots, temp files), without
/// building a state: `keel repair`. Takes the lock like `open`.
pub async fn repair<D: Directory>(
    root: D,
    config: EngineConfig,
) -> Result<RecoveryReport, EngineError> {
    let (engine, mut report) = open(root, config, Discard).await?;
    engine.close().await?;
    // Nothing was built: what open would replay is reported as such, not as work done.
    report.replayed = 0;
    Ok(report)
}

/// Read-only full check of the journal and the snapshots: never writes (works on a read-only
/// directory), takes no lock, reports every problem it sees.
pub async fn verify<D: Directory>(
    root: &D,
    config: &EngineConfig,
) -> Result<VerifyReport, EngineError> {
    let scan = MetadataJournal::verify(root, config.journal.clone()).await?;
    let snapshots = list_snapshots(root, config.max_snapshot_bytes).await?;
    let mut problems: Vec<ProblemRecord> = scan
        .problems
        .iter()
        .map(|p| ProblemRecord {
            kind: p.kind.to_string(),
            file: p.file.clone(),
            offset: p.offset_bytes,
            op: p.op,
        })
        .collect();
    // The journal's table decides what is corruption: a torn segment header is a torn tail too.
    let mut corrupt = scan.problems.iter().any(|p| p.is_corruption());
    for s in snapshots.iter().filter(|s| !s.valid) {
        corrupt = true;
        problems.push(ProblemRecord {
            kind: "snapshot_checksum".into(),
            file: s.file.clone(),
            offset: 0,
            op: Some(s.op),
        });
    }
    let newest_valid = snapshots
        .iter()
        .filter(|s| s.valid)
        .map(|s| s.op)
        .max()
        .unwrap_or(0);
    if let Some(journal_snapshot_op) = scan.snapshot_op {
        if newest_valid < journal_snapshot_op {
            corrupt = true;
            problems.push(ProblemRecord {
                kind: "missing_ops".into(),
                file: format!("{}/snapshots", root.display_path()),
                offset: 0,
                op: Some(newest_valid + 1),
            });
        }
    }
    let status = if corrupt {
        VerifyStatus::Corrupt
    } else if problems.is_empty() {
        VerifyStatus::Clean
    } else {
        VerifyStatus::TornTail
    };
    Ok(VerifyReport {
        status,
        first_op: scan.first_op,
        last_op: scan.last_op,
        commit_op: scan.commit_op,
        journal_snapshot_op: scan.snapshot_op,
        problems,
        snapshots,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_compress_runs() {
        assert_eq!(to_ranges([]), vec![]);
        assert_eq!(
            to_ranges([1, 2, 3, 5, 7, 8]),
            vec![
                OpRange {
                    first_op: 1,
                    last_op: 3
                },
                OpRange {
                    first_op: 5,
                    last_op: 5
                },
                OpRange {
                    first_op: 7,
                    last_op: 8
                },
            ]
        );
        assert_eq!(
            to_ranges([u64::MAX - 1, u64::MAX]),
            vec![OpRange {
                first_op: u64::MAX - 1,
                last_op: u64::MAX
            }]
        );
    }

    #[test]
    fn mode_names_round_trip() {
        for mode in [
            RecoveryMode::TolerateTornTail,
            RecoveryMode::Absolute,
            RecoveryMode::PointInTime,
        ] {
            assert_eq!(recovery_mode_from_str(recovery_mode_name(mode)), Some(mode));
        }
        assert_eq!(recovery_mode_from_str("bogus"), None);
    }
}
