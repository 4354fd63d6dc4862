//! recovery: the decision table (DESIGN §4) as data, and the repairs it orders.
//!
//! Owns the mapping "where the scan stopped" → named case → action per mode, and quarantine:
//! copying the exact bytes a repair removes to `DIR/quarantine/` and fsyncing them *before* any
//! truncation. It must never truncate or delete a byte that the table did not order cut, never
//! touch a file when the action is a refusal, and never cut a segment of an unknown format version.

use std::ops::RangeInclusive;

use keel_storage::{Directory, OpenMode, Storage};

use crate::error::JournalError;
use crate::format::{quarantine_file_name, segment_file_name};
use crate::scan::LogScan;
use crate::{RecoveryMode, Repair};

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

/// The named cases of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Case {
    CleanEnd,
    TornTail,
    TornSegmentHeader,
    CorruptEntry,
    CorruptSegmentHeader,
    ChainBreak,
    SegmentMismatch,
    UnknownVersion,
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
    pub case: Case,
    /// Name used in `Problem::kind` and in errors.
    pub name: &'static str,
    /// Which physical failure produces it.
    pub cause: &'static str,
    /// Whether it means acknowledged data is damaged (verify's exit 4) rather than a torn tail (3).
    pub corruption: bool,
    pub tolerate_torn_tail: Action,
    pub absolute: Action,
    pub point_in_time: Action,
}

/// The decision table. Every case appears exactly once (tested).
pub const TABLE: [CaseInfo; 8] = [
    CaseInfo {
        case: Case::CleanEnd,
        name: "clean_end",
        cause: "the log ends at an entry boundary: end of file or preallocated zeroes; a normal shutdown or crash between batches",
        corruption: false,
        tolerate_torn_tail: Action::Nothing,
        absolute: Action::Nothing,
        point_in_time: Action::Nothing,
    },
    CaseInfo {
        case: Case::TornTail,
        name: "torn_tail",
        cause: "a crash during a batch write left a partial or reordered-sector entry that no later durable watermark vouches for: never acknowledged",
        corruption: false,
        tolerate_torn_tail: Action::QuarantineAndCut,
        absolute: Action::Refuse,
        point_in_time: Action::QuarantineAndCut,
    },
    CaseInfo {
        case: Case::TornSegmentHeader,
        name: "torn_segment_header",
        cause: "a crash while creating a segment (rotation) left its header partial or missing; nothing in it was acknowledged",
        corruption: false,
        tolerate_torn_tail: Action::QuarantineAndCut,
        absolute: Action::Refuse,
        point_in_time: Action::QuarantineAndCut,
    },
    CaseInfo {
        case: Case::CorruptEntry,
        name: "corrupt_entry",
        cause: "an entry a later durable watermark vouches for (or one in a compacted segment) is damaged: bit rot, a misdirected or lost write, a zeroed sector",
        corruption: true,
        tolerate_torn_tail: Action::Refuse,
        absolute: Action::Refuse,
        point_in_time: Action::CutPointInTime,
    },
    CaseInfo {
        case: Case::CorruptSegmentHeader,
        name: "corrupt_segment_header",
        cause: "a segment header is damaged although later entries prove the segment was durable: bit rot or a misdirected write",
        corruption: true,
        tolerate_torn_tail: Action::Refuse,
        absolute: Action::Refuse,
        point_in_time: Action::CutPointInTime,
    },
    CaseInfo {
        case: Case::ChainBreak,
        name: "chain_break",
        cause: "a checksum-valid entry that does not follow its predecessor: a stale or misplaced block, a lost write under a later one",
        corruption: true,
        tolerate_torn_tail: Action::Refuse,
        absolute: Action::Refuse,
        point_in_time: Action::CutPointInTime,
    },
    CaseInfo {
        case: Case::SegmentMismatch,
        name: "segment_mismatch",
        cause: "a valid segment that is not the next one: a renamed or copied file, a missing segment, a segment whose predecessor lost its tail",
        corruption: true,
        tolerate_torn_tail: Action::Refuse,
        absolute: Action::Refuse,
        point_in_time: Action::CutPointInTime,
    },
    CaseInfo {
        case: Case::UnknownVersion,
        name: "unknown_version",
        cause: "a segment written by a newer keel: it is not damaged, this build cannot read it",
        corruption: true,
        tolerate_torn_tail: Action::Refuse,
        absolute: Action::Refuse,
        point_in_time: Action::Refuse,
    },
];

/// The classifier: scan-stop facts → case. `covered` means a later valid entry's durable
/// watermark reaches the stop's expected seq, or the stop lies in a compacted (rewritten, fully
/// fsynced) segment.
pub fn classify(fact: StopFact, covered: bool) -> Case {
    match (fact, covered) {
        // Nothing follows a clean end, so nothing can cover it.
        (StopFact::CleanEnd, _) => Case::CleanEnd,
        (StopFact::BadEntryHeader | StopFact::BadPayload, false) => Case::TornTail,
        (StopFact::BadEntryHeader | StopFact::BadPayload, true) => Case::CorruptEntry,
        (StopFact::BadSegmentHeader, false) => Case::TornSegmentHeader,
        (StopFact::BadSegmentHeader, true) => Case::CorruptSegmentHeader,
        // Torn writes leave zeroes or partial sectors, never a checksum-valid entry in the wrong
        // place: a chain break is corruption whatever follows.
        (StopFact::ChainBreak, _) => Case::ChainBreak,
        (StopFact::SegmentMismatch, _) => Case::SegmentMismatch,
        (StopFact::UnknownVersion, _) => Case::UnknownVersion,
    }
}

pub fn info(case: Case) -> &'static CaseInfo {
    TABLE
        .iter()
        .find(|row| row.case == case)
        .expect("every case has a row (tested)")
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

/// Copies `bytes` to `quarantine/<name>`, fsyncs it and the quarantine directory. Idempotent:
/// a second run after a crash rewrites the same bytes under the same name.
async fn quarantine<D: Directory>(
    quarantine_dir: &D,
    name: &str,
    bytes: Vec<u8>,
) -> Result<(), JournalError> {
    let path = format!("{}/{name}", quarantine_dir.display_path());
    let file = quarantine_dir
        .open_file(name, OpenMode::Create)
        .await
        .map_err(|e| JournalError::io("quarantine create", &path, e))?;
    file.truncate(0)
        .await
        .map_err(|e| JournalError::io("quarantine truncate", &path, e))?;
    if !bytes.is_empty() {
        let keel_storage::BufResult(result, _) = file.write_all_at(0, bytes).await;
        result.map_err(|e| JournalError::io("quarantine write", &path, e))?;
    }
    file.sync()
        .await
        .map_err(|e| JournalError::io("quarantine fsync", &path, e))?;
    quarantine_dir
        .sync()
        .await
        .map_err(|e| JournalError::io("quarantine dir fsync", &path, e))?;
    Ok(())
}

/// Executes a cut ordered by the table: quarantine every removed byte, then remove the later
/// segments (newest first, each followed by a directory fsync, so a crash leaves a state that
/// classifies the same way), then truncate the stop's segment and fsync it.
pub async fn cut<D: Directory>(
    root: &D,
    journal_dir: &D,
    scan: &LogScan,
    kind: &'static str,
) -> Result<Vec<Repair>, JournalError> {
    let stop = scan
        .first_stop
        .as_ref()
        .expect("cut is only ordered at a stop");
    // Independent of the table: a cut in the default mode is only ever of bytes nothing vouches
    // for, and a log of an unknown version is never cut.
    assert!(
        !stop.covered || kind == "point_in_time_cut",
        "recovery table ordered a torn-tail cut of vouched-for bytes at {} offset {}",
        stop.file,
        stop.stop.offset_bytes
    );
    assert!(
        stop.case != Case::UnknownVersion,
        "never cut a log of an unknown version"
    );
    let existed = root
        .exists("quarantine")
        .await
        .map_err(|e| JournalError::io("open quarantine dir", "quarantine", e))?;
    let quarantine_dir = root
        .open_dir("quarantine", true)
        .await
        .map_err(|e| JournalError::io("open quarantine dir", "quarantine", e))?;
    if !existed {
        // The new directory's own entry must be durable, or its files vanish with it.
        root.sync()
            .await
            .map_err(|e| JournalError::io("fsync root dir", root.display_path(), e))?;
    }
    let mut repairs = Vec::new();
    // 1. Quarantine (the stop's segment from the stop offset, every later segment whole).
    let mut removals = Vec::new();
    for (index, file) in scan.files.iter().enumerate().skip(stop.file_index) {
        let from = if index == stop.file_index {
            stop.stop.offset_bytes
        } else {
            0
        };
        let bytes =
            crate::segment::read_whole(journal_dir, &file.name, scan.max_file_bytes).await?;
        // Trailing zeroes (preallocated space) carry no information and are not copied.
        let end = crate::scan::nonzero_end(&bytes).max(from as usize);
        let removed = bytes[from as usize..end].to_vec();
        let qname = quarantine_file_name(file.number, from);
        let removed_len = removed.len() as u64;
        quarantine(&quarantine_dir, &qname, removed).await?;
        tracing::warn!(
            segment = %file.name,
            offset_bytes = from,
            op = ?stop.stop.op,
            bytes = removed_len,
            quarantine = %qname,
            case = kind,
            "journal repair: quarantined bytes before cutting them"
        );
        repairs.push(Repair {
            kind,
            file: file.name.clone(),
            offset_bytes: from,
            bytes: removed_len,
            quarantine_file: qname,
        });
        removals.push((file.name.clone(), from, index == stop.file_index));
    }
    // 2. Remove later segments, newest first.
    for (name, from, is_stop_segment) in removals.iter().rev() {
        if *is_stop_segment && *from > 0 {
            continue;
        }
        journal_dir
            .remove_file(name)
            .await
            .map_err(|e| JournalError::io("remove cut segment", name.clone(), e))?;
        journal_dir
            .sync()
            .await
            .map_err(|e| JournalError::io("journal dir fsync", name.clone(), e))?;
    }
    // 3. Truncate the stop's segment at the stop.
    if stop.stop.offset_bytes > 0 {
        let name = segment_file_name(scan.files[stop.file_index].number);
        let file = journal_dir
            .open_file(&name, OpenMode::Existing)
            .await
            .map_err(|e| JournalError::io("open for truncate", name.clone(), e))?;
        file.truncate(stop.stop.offset_bytes)
            .await
            .map_err(|e| JournalError::io("truncate", name.clone(), e))?;
        file.sync()
            .await
            .map_err(|e| JournalError::io("fsync after truncate", name.clone(), e))?;
    }
    Ok(repairs)
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
        for fact in StopFact::ALL {
            for covered in [false, true] {
                let case = classify(fact, covered);
                let rows = TABLE.iter().filter(|r| r.case == case).count();
                assert_eq!(rows, 1, "{fact:?}/{covered} -> {case:?} has {rows} rows");
                reached.insert(case);
                for mode in [
                    RecoveryMode::TolerateTornTail,
                    RecoveryMode::Absolute,
                    RecoveryMode::PointInTime,
                ] {
                    let _ = action(case, mode);
                }
            }
        }
        assert_eq!(reached.len(), TABLE.len(), "a case no input reaches");
        let names: HashSet<_> = TABLE.iter().map(|r| r.name).collect();
        assert_eq!(names.len(), TABLE.len(), "duplicate case names");
    }

    /// The safety properties of the table, stated independently of it.
    #[test]
    fn table_safety_properties() {
        for row in &TABLE {
            // Default mode never cuts data a durable watermark vouches for.
            if row.corruption {
                assert_eq!(row.tolerate_torn_tail, Action::Refuse, "{}", row.name);
            }
            // Absolute never writes.
            assert!(
                matches!(row.absolute, Action::Nothing | Action::Refuse),
                "{}",
                row.name
            );
        }
        assert_eq!(
            action(Case::UnknownVersion, RecoveryMode::PointInTime),
            Action::Refuse
        );
        assert_eq!(classify(StopFact::BadPayload, false), Case::TornTail);
        assert_eq!(classify(StopFact::BadPayload, true), Case::CorruptEntry);
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
