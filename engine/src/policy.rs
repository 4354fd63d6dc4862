//! policy: the engine's recovery decisions as two tables of pattern rows (docs/durability.md,
//! "The engine's recovery tables"), in the journal's style (journal/src/recovery.rs): each row
//! lists the fact values it matches (a list of values, or `Any`), the decision, and one line on
//! which physical failure produces those facts. The classifier finds the row at run time and
//! asserts exactly one matches; the tests enumerate every combination of the facts' values.
//!
//! Owns what each combination of facts means. It must never do I/O, never compute a fact (the
//! plan does, in `plan.rs`) and never carry a decision out (`recover.rs` runs the steps an
//! [`OpenRow`] names, and nothing else).

use keel_journal::{matching_row, one_of, RecoveryMode, Want};

/// What a snapshot file the plan reads turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileFact {
    /// Its checksums hold, it is this directory's and this history's, and (when restored) its
    /// state restores.
    Whole,
    /// Its header or payload fails a checksum, or the header is malformed.
    Checksum,
    /// Its header names a format version newer than this build reads.
    UnknownVersion,
    /// Its checksums hold but the state machine cannot restore the bytes.
    NoRestore,
    /// Another directory's (its directory id is not this directory's).
    Foreign,
    /// This directory's, but its op sits at another place in the journal's chain.
    Misplaced,
}

impl FileFact {
    /// Every value, for the tests that enumerate the table's inputs.
    pub const ALL: [FileFact; 6] = [
        FileFact::Whole,
        FileFact::Checksum,
        FileFact::UnknownVersion,
        FileFact::NoRestore,
        FileFact::Foreign,
        FileFact::Misplaced,
    ];
}

/// Where the file sits among the snapshots, read newest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Place {
    /// No newer file was chosen: this one would be restored if usable.
    Candidate,
    /// Older than the file chosen: judged by its header alone (whose it is).
    Older,
}

/// What the plan does with a snapshot file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileAction {
    /// Restore the state from it.
    Use,
    /// Fall back from it: quarantined by the open, reported as a repair.
    SetAside,
    /// Leave it as it is (an older file whose damage shows only if it is ever needed).
    Keep,
    /// Refuse the recovery: a typed error naming the file; nothing is touched.
    Refuse,
}

/// One row of the snapshot-file table.
pub struct FileRow {
    /// The file facts it matches.
    pub facts: &'static [FileFact],
    /// The places it matches.
    pub places: &'static [Place],
    /// The modes it matches.
    pub modes: &'static [RecoveryMode],
    /// What the plan does.
    pub action: FileAction,
    /// Which physical failure produces these facts.
    pub why: &'static str,
}

const ALL_MODES: &[RecoveryMode] = &[
    RecoveryMode::TolerateTornTail,
    RecoveryMode::Absolute,
    RecoveryMode::PointInTime,
];
const REPAIRING: &[RecoveryMode] = &[RecoveryMode::TolerateTornTail, RecoveryMode::PointInTime];
const ABSOLUTE: &[RecoveryMode] = &[RecoveryMode::Absolute];
const CANDIDATE: &[Place] = &[Place::Candidate];
const OLDER: &[Place] = &[Place::Older];

/// The snapshot-file table; exactly one row matches every input (asserted, and tested over
/// every combination).
pub const FILE_ROWS: [FileRow; 10] = [
    FileRow {
        facts: &[FileFact::Whole],
        places: CANDIDATE,
        modes: ALL_MODES,
        action: FileAction::Use,
        why: "the newest file a checkpoint persisted whole (temp, fsync, rename, directory fsync)",
    },
    FileRow {
        facts: &[FileFact::Checksum],
        places: CANDIDATE,
        modes: REPAIRING,
        action: FileAction::SetAside,
        why: "bit rot, a misdirected or lost write in a snapshot after its persist; it still proves its op committed",
    },
    FileRow {
        facts: &[FileFact::NoRestore],
        places: CANDIDATE,
        modes: REPAIRING,
        action: FileAction::SetAside,
        why: "a state machine that cannot read what an older build (or a bug) wrote; it still proves its op committed",
    },
    FileRow {
        facts: &[FileFact::Foreign],
        places: CANDIDATE,
        modes: REPAIRING,
        action: FileAction::SetAside,
        why: "a snapshot copied in from another directory: it proves nothing here",
    },
    FileRow {
        facts: &[FileFact::Misplaced],
        places: CANDIDATE,
        modes: REPAIRING,
        action: FileAction::SetAside,
        why: "a snapshot of another history of this directory (a journal restored from a backup, a copied file)",
    },
    FileRow {
        facts: &[
            FileFact::Checksum,
            FileFact::NoRestore,
            FileFact::Foreign,
            FileFact::Misplaced,
        ],
        places: CANDIDATE,
        modes: ABSOLUTE,
        action: FileAction::Refuse,
        why: "any of the damage above, in the mode that repairs nothing",
    },
    FileRow {
        facts: &[FileFact::UnknownVersion],
        places: CANDIDATE,
        modes: ALL_MODES,
        action: FileAction::Refuse,
        why: "a snapshot written by a newer keel: not damage, this build cannot read it",
    },
    FileRow {
        facts: &[
            FileFact::Whole,
            FileFact::Checksum,
            FileFact::UnknownVersion,
            FileFact::NoRestore,
            FileFact::Misplaced,
        ],
        places: OLDER,
        modes: ALL_MODES,
        action: FileAction::Keep,
        why: "an older file is read only for whose it is; damage in it shows if it is ever needed",
    },
    FileRow {
        facts: &[FileFact::Foreign],
        places: OLDER,
        modes: REPAIRING,
        action: FileAction::SetAside,
        why: "an older file copied in from another directory is never a fallback",
    },
    FileRow {
        facts: &[FileFact::Foreign],
        places: OLDER,
        modes: ABSOLUTE,
        action: FileAction::Refuse,
        why: "the same, in the mode that repairs nothing",
    },
];

impl FileRow {
    fn matches(&self, fact: FileFact, place: Place, mode: RecoveryMode) -> bool {
        one_of(self.facts, &fact) && one_of(self.places, &place) && one_of(self.modes, &mode)
    }
}

/// What the plan does with a snapshot file (see [`FILE_ROWS`]).
pub fn file_action(fact: FileFact, place: Place, mode: RecoveryMode) -> FileAction {
    let inputs = (fact, place, mode);
    matching_row(&FILE_ROWS, &inputs, |row| row.matches(fact, place, mode)).action
}

/// Whether the snapshot restored reaches the journal's watermark `J`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Coverage {
    /// Its op is at or above `J` (or there is neither).
    Reaches,
    /// Its op is below `J`, and the journal's files still hold every op between.
    HeldBelow,
    /// Its op is below `J`, and some ops between are gone from the journal's files.
    CompactedBelow,
}

impl Coverage {
    /// Every value.
    pub const ALL: [Coverage; 3] = [
        Coverage::Reaches,
        Coverage::HeldBelow,
        Coverage::CompactedBelow,
    ];
}

/// The facts the open's plan decides on, once the snapshot is chosen and the journal planned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFacts {
    /// The mode asked for.
    pub mode: RecoveryMode,
    /// Whether the snapshot restored reaches the journal's watermark.
    pub coverage: Coverage,
    /// A committed op above the snapshot and the journal's watermark is absent from the journal.
    pub committed_gap: bool,
    /// The snapshot's checkpoint stopped before it moved the journal's watermark (the watermark
    /// it would set is above the journal's).
    pub checkpoint_interrupted: bool,
    /// A later entry superseded an op the scan's replay had applied.
    pub superseded: bool,
}

impl OpenFacts {
    /// Every combination of the facts' values (for the tests that enumerate the table's inputs).
    pub fn all_combinations() -> impl Iterator<Item = OpenFacts> {
        ALL_MODES.iter().flat_map(|&mode| {
            Coverage::ALL.into_iter().flat_map(move |coverage| {
                (0..8u8).map(move |bits| OpenFacts {
                    mode,
                    coverage,
                    committed_gap: bits & 1 != 0,
                    checkpoint_interrupted: bits & 2 != 0,
                    superseded: bits & 4 != 0,
                })
            })
        })
    }
}

/// Why the open is refused (each names exactly the ops concerned in its error).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// Ops between the snapshot and the journal's watermark are gone.
    OpsCompacted,
    /// Committed ops are absent from the journal and every snapshot.
    CommittedMissing,
}

/// One step of an open, run in the order its row lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    /// Copy each snapshot file set aside into quarantine (its original goes in `RemoveSnapshots`).
    QuarantineSnapshots,
    /// Quarantine the temp files of interrupted snapshot persists.
    QuarantineSnapshotTemps,
    /// Carry out the journal's plan (the cuts its own table ordered).
    OpenJournal,
    /// Keep the state the journal's one scan replayed.
    KeepStreamedReplay,
    /// Restore the state again and replay by reads from the opened journal's index.
    ReplayByReads,
    /// Make the recovered commit watermark durable in the journal.
    PersistCommit,
    /// Move the journal's watermark to the one the snapshot's checkpoint would have set, and
    /// compact.
    FinishCheckpoint,
    /// Remove the set-aside snapshots' originals and the snapshots older than the kept ones.
    RemoveSnapshots,
    /// Record in the manifest where a point-in-time recovery resumed (below the last clean
    /// close's watermark).
    RecordResumePoint,
}

/// What the open does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenDecision {
    /// Refuse: nothing is touched.
    Refuse(Refusal),
    /// Run these steps, in order.
    Open(&'static [Step]),
}

/// One row of the open's table.
pub struct OpenRow {
    /// The modes it matches.
    pub modes: &'static [RecoveryMode],
    /// The coverages it matches.
    pub coverage: &'static [Coverage],
    /// A committed gap.
    pub committed_gap: Want,
    /// An interrupted checkpoint.
    pub checkpoint_interrupted: Want,
    /// A superseded applied op.
    pub superseded: Want,
    /// What the open does.
    pub decision: OpenDecision,
    /// Which physical failure produces these facts.
    pub why: &'static str,
}

impl OpenRow {
    fn matches(&self, f: OpenFacts) -> bool {
        one_of(self.modes, &f.mode)
            && one_of(self.coverage, &f.coverage)
            && self.committed_gap.matches(f.committed_gap)
            && self
                .checkpoint_interrupted
                .matches(f.checkpoint_interrupted)
            && self.superseded.matches(f.superseded)
    }
}

use Step::*;

const HELD: &[Coverage] = &[Coverage::Reaches, Coverage::HeldBelow];
const NOT_ABSOLUTE_GAP: &[RecoveryMode] = &[RecoveryMode::TolerateTornTail, RecoveryMode::Absolute];
const POINT_IN_TIME: &[RecoveryMode] = &[RecoveryMode::PointInTime];

const fn open_row(
    modes: &'static [RecoveryMode],
    committed_gap: Want,
    checkpoint_interrupted: Want,
    superseded: Want,
    steps: &'static [Step],
    why: &'static str,
) -> OpenRow {
    OpenRow {
        modes,
        coverage: HELD,
        committed_gap,
        checkpoint_interrupted,
        superseded,
        decision: OpenDecision::Open(steps),
        why,
    }
}

/// The open's table; exactly one row matches every input (asserted, and tested over every
/// combination).
pub const OPEN_ROWS: [OpenRow; 12] = [
    OpenRow {
        modes: ALL_MODES,
        coverage: &[Coverage::CompactedBelow],
        committed_gap: Want::Any,
        checkpoint_interrupted: Want::Any,
        superseded: Want::Any,
        decision: OpenDecision::Refuse(Refusal::OpsCompacted),
        why: "the newest snapshot is damaged and compaction already removed the ops above the older one (or a replay by reads cannot reach below the watermark)",
    },
    OpenRow {
        modes: NOT_ABSOLUTE_GAP,
        coverage: HELD,
        committed_gap: Want::Yes,
        checkpoint_interrupted: Want::Any,
        superseded: Want::Any,
        decision: OpenDecision::Refuse(Refusal::CommittedMissing),
        why: "a journal cut, lost or removed below a watermark that proves its ops committed (a clean close's, a damaged snapshot's, a later entry's)",
    },
    open_row(ABSOLUTE, Want::No, Want::Any, Want::No,
        &[OpenJournal, KeepStreamedReplay, PersistCommit],
        "any crash, opened in the mode that repairs nothing: an interrupted checkpoint is left for the next open that repairs"),
    open_row(ABSOLUTE, Want::No, Want::Any, Want::Yes,
        &[OpenJournal, ReplayByReads, PersistCommit],
        "the same, after a consensus layer truncated and re-prepared an op the scan had applied"),
    open_row(REPAIRING, Want::No, Want::No, Want::No,
        &[QuarantineSnapshots, QuarantineSnapshotTemps, OpenJournal, KeepStreamedReplay, PersistCommit, RemoveSnapshots],
        "a shutdown, or a crash anywhere but between a snapshot's persist and the journal's watermark"),
    open_row(REPAIRING, Want::No, Want::Yes, Want::No,
        &[QuarantineSnapshots, QuarantineSnapshotTemps, OpenJournal, KeepStreamedReplay, PersistCommit, FinishCheckpoint, RemoveSnapshots],
        "a crash after a snapshot's directory fsync and before the journal's watermark moved"),
    open_row(REPAIRING, Want::No, Want::No, Want::Yes,
        &[QuarantineSnapshots, QuarantineSnapshotTemps, OpenJournal, ReplayByReads, PersistCommit, RemoveSnapshots],
        "a crash after a consensus layer truncated and re-prepared an op the scan had applied"),
    open_row(REPAIRING, Want::No, Want::Yes, Want::Yes,
        &[QuarantineSnapshots, QuarantineSnapshotTemps, OpenJournal, ReplayByReads, PersistCommit, FinishCheckpoint, RemoveSnapshots],
        "both of the above in one crash"),
    open_row(POINT_IN_TIME, Want::Yes, Want::No, Want::No,
        &[QuarantineSnapshots, QuarantineSnapshotTemps, OpenJournal, KeepStreamedReplay, PersistCommit, RemoveSnapshots, RecordResumePoint],
        "committed ops lost (bit rot, a lost write, a removed segment), opened at the point before them: the gap is reported"),
    open_row(POINT_IN_TIME, Want::Yes, Want::Yes, Want::No,
        &[QuarantineSnapshots, QuarantineSnapshotTemps, OpenJournal, KeepStreamedReplay, PersistCommit, FinishCheckpoint, RemoveSnapshots, RecordResumePoint],
        "the same, and the crash interrupted a checkpoint"),
    open_row(POINT_IN_TIME, Want::Yes, Want::No, Want::Yes,
        &[QuarantineSnapshots, QuarantineSnapshotTemps, OpenJournal, ReplayByReads, PersistCommit, RemoveSnapshots, RecordResumePoint],
        "committed ops lost after a consensus layer re-prepared an applied op"),
    open_row(POINT_IN_TIME, Want::Yes, Want::Yes, Want::Yes,
        &[QuarantineSnapshots, QuarantineSnapshotTemps, OpenJournal, ReplayByReads, PersistCommit, FinishCheckpoint, RemoveSnapshots, RecordResumePoint],
        "all three in one crash"),
];

/// The row of the open's table that matches `facts` (see [`OPEN_ROWS`]).
pub fn open_row_for(facts: OpenFacts) -> &'static OpenRow {
    matching_row(&OPEN_ROWS, &facts, |row| row.matches(facts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// Every combination of a snapshot file's facts matches exactly one row, and every row is
    /// reached.
    #[test]
    fn file_table_is_total_and_unambiguous() {
        let mut used = HashSet::new();
        for fact in FileFact::ALL {
            for place in [Place::Candidate, Place::Older] {
                for &mode in ALL_MODES {
                    let rows: Vec<usize> = (0..FILE_ROWS.len())
                        .filter(|&i| FILE_ROWS[i].matches(fact, place, mode))
                        .collect();
                    assert_eq!(rows.len(), 1, "{fact:?}/{place:?}/{mode:?}: rows {rows:?}");
                    used.insert(rows[0]);
                    let action = file_action(fact, place, mode);
                    // Independent of the table: absolute never sets a file aside, only a whole
                    // candidate is used, an unknown version is never set aside.
                    if mode == RecoveryMode::Absolute {
                        assert_ne!(action, FileAction::SetAside);
                    }
                    assert_eq!(
                        action == FileAction::Use,
                        fact == FileFact::Whole && place == Place::Candidate
                    );
                    if fact == FileFact::UnknownVersion {
                        assert_ne!(action, FileAction::SetAside);
                    }
                }
            }
        }
        assert_eq!(used.len(), FILE_ROWS.len(), "a row no input reaches");
    }

    /// Every combination of the open's facts matches exactly one row, every row is reached, and
    /// the steps keep the safety rules stated independently of the table.
    #[test]
    fn open_table_is_total_and_unambiguous() {
        let mut used = HashSet::new();
        let mut combinations = 0;
        for facts in OpenFacts::all_combinations() {
            combinations += 1;
            let rows: Vec<usize> = (0..OPEN_ROWS.len())
                .filter(|&i| OPEN_ROWS[i].matches(facts))
                .collect();
            assert_eq!(rows.len(), 1, "{facts:?}: rows {rows:?}");
            used.insert(rows[0]);
            let decision = open_row_for(facts).decision;
            let refused_for_gap = facts.committed_gap && facts.mode != RecoveryMode::PointInTime;
            let expect_refusal = facts.coverage == Coverage::CompactedBelow || refused_for_gap;
            let OpenDecision::Open(steps) = decision else {
                assert!(expect_refusal, "{facts:?} refused");
                continue;
            };
            assert!(!expect_refusal, "{facts:?} opened");
            let has = |step| steps.contains(&step);
            let absolute = facts.mode == RecoveryMode::Absolute;
            // Absolute repairs nothing: no quarantine, no removal, no compaction.
            for repair in [
                QuarantineSnapshots,
                QuarantineSnapshotTemps,
                FinishCheckpoint,
                RemoveSnapshots,
            ] {
                assert_eq!(
                    has(repair),
                    !absolute && (repair != FinishCheckpoint || facts.checkpoint_interrupted),
                    "{facts:?} {repair:?}"
                );
            }
            assert_eq!(has(ReplayByReads), facts.superseded, "{facts:?}");
            assert_eq!(has(KeepStreamedReplay), !facts.superseded, "{facts:?}");
            assert_eq!(has(RecordResumePoint), facts.committed_gap, "{facts:?}");
            assert!(has(OpenJournal) && has(PersistCommit));
            // The order the open depends on: copies before the journal's cut, the replay after
            // it, the watermark durable before anything is removed.
            let at = |step| steps.iter().position(|s| *s == step);
            assert!(at(OpenJournal) < at(PersistCommit));
            if let Some(remove) = at(RemoveSnapshots) {
                assert!(at(QuarantineSnapshots) < at(OpenJournal));
                assert!(at(PersistCommit) < Some(remove));
            }
            let unique: HashSet<_> = steps.iter().collect();
            assert_eq!(unique.len(), steps.len(), "{facts:?}: a step twice");
        }
        assert_eq!(combinations, 3 * 3 * 2 * 2 * 2);
        assert_eq!(used.len(), OPEN_ROWS.len(), "a row no input reaches");
    }
}
