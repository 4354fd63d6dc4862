//! recovery: the decision table (docs/durability.md) as data: what the scan found where it
//! stopped → a named case → an action per mode.
//!
//! Owns the classifier's patterns and the table of cases. It must never do I/O and never depend
//! on the scan's types (the scan depends on it): `repair.rs` carries out the cuts it orders, and
//! it must never order a cut the table does not hold (a refusal touches nothing; a segment of an
//! unknown format version is never cut).

use std::ops::RangeInclusive;

pub use crate::outcome::Case;
use crate::RecoveryMode;

/// What the scan found where it stopped reading valid entries (the classifier's first input).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StopFact {
    /// End of file, or zeroes from an entry boundary to the end of the last segment.
    CleanEnd,
    /// Bytes at an entry boundary that are not a valid header (bad magic or checksum, impossible
    /// field, a partial header at end of file, or zeroes followed by non-zero bytes).
    BadEntryHeader,
    /// A valid header whose payload fails its checksum or is cut short by end of file.
    BadPayload,
    /// A valid header whose `seq` does not follow, or whose `prev_crc` does not chain.
    ChainBreak,
    /// A segment file whose header is short, has a bad magic or checksum.
    BadSegmentHeader,
    /// A valid segment header that does not match its file name, or does not link to the previous
    /// segment (number gap, `first_seq` or `prev_crc` off).
    SegmentMismatch,
    /// A segment header with a format version newer than this build reads.
    UnknownVersion,
}

impl StopFact {
    /// Every value, for tests that enumerate the table's inputs.
    pub const ALL: [StopFact; 7] = [
        StopFact::CleanEnd,
        StopFact::BadEntryHeader,
        StopFact::BadPayload,
        StopFact::ChainBreak,
        StopFact::BadSegmentHeader,
        StopFact::SegmentMismatch,
        StopFact::UnknownVersion,
    ];
}

/// What recovery does about a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Nothing to repair.
    Nothing,
    /// Quarantine everything from the stop to the end of the log, fsync it, then cut (truncate the
    /// stop's segment, remove later ones). Only for bytes never acknowledged.
    QuarantineAndCut,
    /// Refuse to open: a typed error naming segment, offset and op. Touch nothing.
    Refuse,
    /// Point-in-time: quarantine and cut even though acknowledged data is lost; report the lost ops.
    CutPointInTime,
}

/// One row of the table.
pub struct CaseInfo {
    /// The case this row describes.
    pub case: Case,
    /// Which physical failure produces it.
    pub cause: &'static str,
    /// Whether it means acknowledged data is damaged (verify's exit 4) rather than a torn tail (3).
    pub corruption: bool,
    /// The action under [`RecoveryMode::TolerateTornTail`].
    pub tolerate_torn_tail: Action,
    /// The action under [`RecoveryMode::Absolute`].
    pub absolute: Action,
    /// The action under [`RecoveryMode::PointInTime`].
    pub point_in_time: Action,
}

/// The decision table. Every case appears exactly once (tested).
pub const TABLE: [CaseInfo; 9] = [
    CaseInfo {
        case: Case::CleanEnd,
        cause: "the log ends at an entry boundary: end of file or preallocated zeroes; a normal shutdown or crash between batches",
        corruption: false,
        tolerate_torn_tail: Action::Nothing,
        absolute: Action::Nothing,
        point_in_time: Action::Nothing,
    },
    CaseInfo {
        case: Case::TornTail,
        cause: "a crash during a batch write left a partial or reordered-sector entry that no later durable watermark vouches for: never acknowledged",
        corruption: false,
        tolerate_torn_tail: Action::QuarantineAndCut,
        absolute: Action::Refuse,
        point_in_time: Action::QuarantineAndCut,
    },
    CaseInfo {
        case: Case::TornSegmentHeader,
        cause: "a crash while creating a segment (rotation) left its header partial or missing; nothing in it was acknowledged",
        corruption: false,
        tolerate_torn_tail: Action::QuarantineAndCut,
        absolute: Action::Refuse,
        point_in_time: Action::QuarantineAndCut,
    },
    CaseInfo {
        case: Case::CorruptEntry,
        cause: "an entry a later durable watermark vouches for (or one in a compacted segment) is damaged: bit rot, a misdirected or lost write, a zeroed sector",
        corruption: true,
        tolerate_torn_tail: Action::Refuse,
        absolute: Action::Refuse,
        point_in_time: Action::CutPointInTime,
    },
    CaseInfo {
        case: Case::CorruptSegmentHeader,
        cause: "a segment header is damaged although later entries prove the segment was durable: bit rot or a misdirected write",
        corruption: true,
        tolerate_torn_tail: Action::Refuse,
        absolute: Action::Refuse,
        point_in_time: Action::CutPointInTime,
    },
    CaseInfo {
        case: Case::ChainBreak,
        cause: "a checksum-valid entry that does not follow its predecessor: a stale or misplaced block, a lost write under a later one",
        corruption: true,
        tolerate_torn_tail: Action::Refuse,
        absolute: Action::Refuse,
        point_in_time: Action::CutPointInTime,
    },
    CaseInfo {
        case: Case::SegmentMismatch,
        cause: "a valid segment that is not the next one: a renamed or copied file, a missing segment, a segment whose predecessor lost its tail",
        corruption: true,
        tolerate_torn_tail: Action::Refuse,
        absolute: Action::Refuse,
        point_in_time: Action::CutPointInTime,
    },
    CaseInfo {
        case: Case::UnknownVersion,
        cause: "a segment written by a newer keel: it is not damaged, this build cannot read it",
        corruption: true,
        tolerate_torn_tail: Action::Refuse,
        absolute: Action::Refuse,
        point_in_time: Action::Refuse,
    },
    CaseInfo {
        case: Case::StrayAfterEnd,
        cause: "bytes after a sealed segment's last entry that no entry claims (a misdirected write or a stale block): the next segment's header starts the log exactly there, so nothing is missing; they are left in place and go when compaction deletes the segment",
        corruption: false,
        tolerate_torn_tail: Action::Nothing,
        absolute: Action::Nothing,
        point_in_time: Action::Nothing,
    },
];

/// The proofs of durability the look-ahead found for the bytes at a stop (the classifier's other
/// inputs). Any one of them means the bytes had been fsynced, so damage there is corruption.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Proofs {
    /// A later valid entry's `durable_seq` reaches the stop's expected seq.
    pub watermark: bool,
    /// A later valid segment header's `first_seq` is past the stop's expected seq: a header is
    /// written only after every older segment was fsynced. For a damaged segment header: any
    /// later valid segment header, or a valid entry in its own file (entries go in only after
    /// the header is fsynced).
    pub segment_header: bool,
    /// The stop lies in a segment compaction rewrote (every byte fsynced before it got its name).
    pub rewritten: bool,
    /// The next file is the next segment and its header links to the chain state after the
    /// stop's last valid entry: a rotation writes a header only after fsyncing every older byte,
    /// so the log provably went on there and the bytes at the stop belong to no entry.
    pub sealed: bool,
}

impl Proofs {
    /// True when any proof vouches for the bytes (`sealed` does not: it proves they belong to no
    /// entry).
    pub fn any(self) -> bool {
        self.watermark || self.segment_header || self.rewritten
    }

    /// Every combination of the four proofs (for tests that enumerate the table's inputs).
    pub fn all_combinations() -> impl Iterator<Item = Proofs> {
        (0..16u8).map(|bits| Proofs {
            watermark: bits & 1 != 0,
            segment_header: bits & 2 != 0,
            rewritten: bits & 4 != 0,
            sealed: bits & 8 != 0,
        })
    }
}

/// One input value in a pattern row: a proof that must be present, absent, or either.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Want {
    /// Matches either value.
    Any,
    /// Matches `true` only.
    Yes,
    /// Matches `false` only.
    No,
}

impl Want {
    /// Whether `value` is one this input accepts.
    pub fn matches(self, value: bool) -> bool {
        match self {
            Want::Any => true,
            Want::Yes => value,
            Want::No => !value,
        }
    }
}

/// One row of the classifier: the input values it matches and the case they mean.
pub struct Pattern {
    /// The stop facts this row matches.
    pub facts: &'static [StopFact],
    /// A later entry's durable watermark covers the stop.
    pub watermark: Want,
    /// A later segment header covers the stop.
    pub segment_header: Want,
    /// The stop lies in a rewritten segment.
    pub rewritten: Want,
    /// The next segment's header links to the chain state at the stop.
    pub sealed: Want,
    /// The case these inputs mean.
    pub case: Case,
    /// Which physical failure produces this input pattern.
    pub why: &'static str,
}

impl Pattern {
    fn matches(&self, fact: StopFact, proofs: Proofs) -> bool {
        one_of(self.facts, &fact)
            && self.watermark.matches(proofs.watermark)
            && self.segment_header.matches(proofs.segment_header)
            && self.rewritten.matches(proofs.rewritten)
            && self.sealed.matches(proofs.sealed)
    }
}

const ENTRY_DAMAGE: &[StopFact] = &[StopFact::BadEntryHeader, StopFact::BadPayload];
const SEGMENT_DAMAGE: &[StopFact] = &[StopFact::BadSegmentHeader];

/// The classifier as rows of input patterns; exactly one row matches every input (asserted at
/// run time, and tested over every combination).
pub const PATTERNS: [Pattern; 12] = [
    Pattern {
        facts: &[StopFact::CleanEnd],
        watermark: Want::Any,
        segment_header: Want::Any,
        rewritten: Want::Any,
        sealed: Want::Any,
        case: Case::CleanEnd,
        why: "the log ends at an entry boundary: a shutdown or a crash between batches (nothing follows, so no proof can exist)",
    },
    Pattern {
        facts: ENTRY_DAMAGE,
        watermark: Want::No,
        segment_header: Want::No,
        rewritten: Want::No,
        sealed: Want::No,
        case: Case::TornTail,
        why: "a power cut during the last batch's write: nothing written after it claims it was fsynced",
    },
    Pattern {
        facts: ENTRY_DAMAGE,
        watermark: Want::Yes,
        segment_header: Want::Any,
        rewritten: Want::Any,
        sealed: Want::No,
        case: Case::CorruptEntry,
        why: "bit rot, a misdirected or lost write in bytes a later entry says were fsynced",
    },
    Pattern {
        facts: ENTRY_DAMAGE,
        watermark: Want::No,
        segment_header: Want::Yes,
        rewritten: Want::Any,
        sealed: Want::No,
        case: Case::CorruptEntry,
        why: "damage in a segment a later segment's header proves fsynced (rotation syncs first): bit rot or a lost write",
    },
    Pattern {
        facts: ENTRY_DAMAGE,
        watermark: Want::No,
        segment_header: Want::No,
        rewritten: Want::Yes,
        sealed: Want::No,
        case: Case::CorruptEntry,
        why: "damage in a compacted segment, every byte of which was fsynced before it got its name",
    },
    Pattern {
        facts: SEGMENT_DAMAGE,
        watermark: Want::No,
        segment_header: Want::No,
        rewritten: Want::Any,
        sealed: Want::Any,
        case: Case::TornSegmentHeader,
        why: "a power cut while a rotation wrote the newest segment's header: nothing in it was acknowledged",
    },
    Pattern {
        facts: SEGMENT_DAMAGE,
        watermark: Want::Yes,
        segment_header: Want::Any,
        rewritten: Want::Any,
        sealed: Want::Any,
        case: Case::CorruptSegmentHeader,
        why: "a segment header damaged after later entries were written under a watermark that covers it",
    },
    Pattern {
        facts: SEGMENT_DAMAGE,
        watermark: Want::No,
        segment_header: Want::Yes,
        rewritten: Want::Any,
        sealed: Want::Any,
        case: Case::CorruptSegmentHeader,
        why: "a segment header damaged although a later segment or its own entries exist, so it had been fsynced",
    },
    Pattern {
        facts: &[StopFact::ChainBreak],
        watermark: Want::Any,
        segment_header: Want::Any,
        rewritten: Want::Any,
        sealed: Want::Any,
        case: Case::ChainBreak,
        why: "torn writes leave zeroes or partial sectors, never a checksum-valid entry in the wrong place: a stale block or a lost write under a later one",
    },
    Pattern {
        facts: &[StopFact::SegmentMismatch],
        watermark: Want::Any,
        segment_header: Want::Any,
        rewritten: Want::Any,
        sealed: Want::Any,
        case: Case::SegmentMismatch,
        why: "a valid segment that is not the next one: renamed, copied or missing files",
    },
    Pattern {
        facts: &[StopFact::UnknownVersion],
        watermark: Want::Any,
        segment_header: Want::Any,
        rewritten: Want::Any,
        sealed: Want::Any,
        case: Case::UnknownVersion,
        why: "a segment written by a newer keel: not damage, this build cannot read it",
    },
    Pattern {
        facts: ENTRY_DAMAGE,
        watermark: Want::Any,
        segment_header: Want::Any,
        rewritten: Want::Any,
        sealed: Want::Yes,
        case: Case::StrayAfterEnd,
        why: "a misdirected write or a stale block after a sealed segment's last entry: the next segment starts the log exactly there",
    },
];

/// The one mechanism of every pattern table (this one, the engine's): the row of `rows` that
/// `matches`, for the inputs `inputs` names. Panics (a table bug, in release too) unless exactly
/// one row matches.
pub fn matching_row<'rows, R>(
    rows: &'rows [R],
    inputs: &dyn std::fmt::Debug,
    matches: impl Fn(&R) -> bool,
) -> &'rows R {
    let mut matching = rows.iter().filter(|row| matches(row));
    let row = matching
        .next()
        .unwrap_or_else(|| panic!("no recovery pattern matches {inputs:?}"));
    assert!(
        matching.next().is_none(),
        "two recovery patterns match {inputs:?}"
    );
    row
}

/// Whether `value` is one of `allowed` (an enum-valued input of a pattern row).
pub fn one_of<T: PartialEq>(allowed: &[T], value: &T) -> bool {
    allowed.contains(value)
}

/// The classifier: scan-stop facts and proofs → the row that matches them. Panics (a table bug,
/// in release too) unless exactly one row matches.
pub fn classify_row(fact: StopFact, proofs: Proofs) -> &'static Pattern {
    matching_row(&PATTERNS, &(fact, proofs), |row| row.matches(fact, proofs))
}

/// The case of a stop (see [`classify_row`]).
pub fn classify(fact: StopFact, proofs: Proofs) -> Case {
    classify_row(fact, proofs).case
}

pub fn info(case: Case) -> &'static CaseInfo {
    TABLE
        .iter()
        .find(|row| row.case == case)
        .expect("every case has a row (tested)")
}

/// Whether a problem of `case` makes a log anything but clean (verify's verdict): it is
/// corruption, or the default mode would repair it. A clean end and stray bytes after a sealed
/// end need nothing (the table's `Nothing`).
pub fn needs_repair(case: Case) -> bool {
    let row = info(case);
    row.corruption || row.tolerate_torn_tail != Action::Nothing
}

pub fn action(case: Case, mode: RecoveryMode) -> Action {
    let row = info(case);
    match mode {
        RecoveryMode::TolerateTornTail => row.tolerate_torn_tail,
        RecoveryMode::Absolute => row.absolute,
        RecoveryMode::PointInTime => row.point_in_time,
    }
}

/// Compresses ops into sorted inclusive ranges.
pub fn op_ranges(mut ops: Vec<u64>) -> Vec<RangeInclusive<u64>> {
    ops.sort_unstable();
    ops.dedup();
    let mut out: Vec<RangeInclusive<u64>> = Vec::new();
    for op in ops {
        match out.last_mut() {
            Some(range) if range.end().checked_add(1) == Some(op) => *range = *range.start()..=op,
            _ => out.push(op..=op),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// Every combination of the classifier's inputs maps to exactly one case, every case is
    /// reachable, and every (case, mode) has exactly one action.
    #[test]
    fn table_is_total_and_unambiguous() {
        let mut reached = HashSet::new();
        let mut rows_used = HashSet::new();
        for fact in StopFact::ALL {
            for proofs in Proofs::all_combinations() {
                let rows: Vec<usize> = PATTERNS
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| r.matches(fact, proofs))
                    .map(|(i, _)| i)
                    .collect();
                assert_eq!(rows.len(), 1, "{fact:?}/{proofs:?} matches rows {rows:?}");
                rows_used.insert(rows[0]);
                let case = classify(fact, proofs);
                assert_eq!(TABLE.iter().filter(|r| r.case == case).count(), 1);
                reached.insert(case);
                // Any proof makes damage corruption; none makes entry damage a torn tail.
                let corrupt = info(case).corruption;
                match fact {
                    StopFact::CleanEnd => assert!(!corrupt),
                    // The next segment starts the log at the stop: nothing is cut or refused.
                    StopFact::BadEntryHeader | StopFact::BadPayload if proofs.sealed => {
                        assert_eq!(case, Case::StrayAfterEnd);
                        for mode in [
                            RecoveryMode::TolerateTornTail,
                            RecoveryMode::Absolute,
                            RecoveryMode::PointInTime,
                        ] {
                            assert_eq!(action(case, mode), Action::Nothing);
                        }
                    }
                    StopFact::BadEntryHeader
                    | StopFact::BadPayload
                    | StopFact::BadSegmentHeader => {
                        let proven = proofs.watermark
                            || proofs.segment_header
                            || (proofs.rewritten && fact != StopFact::BadSegmentHeader);
                        assert_eq!(corrupt, proven, "{fact:?}/{proofs:?}");
                    }
                    _ => assert!(corrupt, "{fact:?}"),
                }
            }
        }
        assert_eq!(reached.len(), TABLE.len(), "a case no input reaches");
        assert_eq!(
            rows_used.len(),
            PATTERNS.len(),
            "a pattern row no input reaches"
        );
        let names: HashSet<_> = Case::ALL.iter().map(|c| c.name()).collect();
        assert_eq!(names.len(), Case::ALL.len(), "duplicate case names");
        assert_eq!(
            TABLE.map(|row| row.case),
            Case::ALL,
            "the table lists every case once"
        );
    }

    /// The safety properties of the table, stated independently of it.
    #[test]
    fn table_safety_properties() {
        for row in &TABLE {
            // Default mode never cuts data a durable watermark vouches for.
            if row.corruption {
                assert_eq!(row.tolerate_torn_tail, Action::Refuse, "{}", row.case);
            }
            // Absolute never writes.
            assert!(
                matches!(row.absolute, Action::Nothing | Action::Refuse),
                "{}",
                row.case
            );
        }
        assert_eq!(
            action(Case::UnknownVersion, RecoveryMode::PointInTime),
            Action::Refuse
        );
        let none = Proofs::default();
        assert_eq!(classify(StopFact::BadPayload, none), Case::TornTail);
        let header_only = Proofs {
            segment_header: true,
            ..none
        };
        assert_eq!(
            classify(StopFact::BadPayload, header_only),
            Case::CorruptEntry
        );
        assert_eq!(
            classify(StopFact::BadSegmentHeader, header_only),
            Case::CorruptSegmentHeader
        );
    }

    #[test]
    fn ranges() {
        assert_eq!(
            op_ranges(vec![5, 3, 4, 9, 10, 12, 3]),
            vec![3..=5, 9..=10, 12..=12]
        );
        assert!(op_ranges(vec![]).is_empty());
    }
}
