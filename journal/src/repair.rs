//! repair: executing what the recovery table orders: quarantine, then cut.
//!
//! Owns copying the exact bytes a repair removes to `DIR/quarantine/` and fsyncing them *before*
//! any removal or truncation, and the order of a cut (quarantine, remove later segments newest
//! first, truncate the stop's segment). It must never decide what to cut (that is
//! `recovery.rs`'s table), never cut bytes a proof vouches for outside point-in-time, and never
//! cut a segment of an unknown format version.

use keel_storage::{Directory, OpenMode, Storage};

use crate::error::JournalError;
use crate::format::{quarantine_file_name, segment_file_name};
use crate::outcome::{Case, PlannedCut};
use crate::scan::{LogScan, StopAt};
use crate::Repair;

/// Most copies of one quarantine name kept side by side (`NAME`, `NAME.1`, …).
const MAX_QUARANTINE_COPIES: u32 = 1000;

/// Copies `bytes` into `quarantine/` under a name never used before (`name`, or `name.N` when an
/// earlier repair took it): the file is created new, written, fsynced and its directory fsynced.
/// A quarantine file is never reopened for writing, so no repair can destroy an earlier one's copy.
async fn quarantine<D: Directory>(
    quarantine_dir: &D,
    name: &str,
    bytes: Vec<u8>,
) -> Result<String, JournalError> {
    keel_storage::create_unique(quarantine_dir, name, bytes, MAX_QUARANTINE_COPIES)
        .await
        .map_err(|e| JournalError::durable("quarantine", e))
}

/// `DIR/quarantine/`, created and made durable (its entry in the root, and its own entries).
async fn quarantine_dir<D: Directory>(root: &D) -> Result<D, JournalError> {
    keel_storage::open_dir_durable(root, "quarantine")
        .await
        .map_err(|e| JournalError::durable("open quarantine dir", e))
}

/// Leftover compaction temp files (a crash before their rename; never referenced by the log):
/// each is copied to quarantine, then removed, then the journal directory is fsynced.
pub async fn quarantine_temps<D: Directory>(
    root: &D,
    journal_dir: &D,
    temps: &[String],
    max_file_bytes: u64,
) -> Result<(), JournalError> {
    let qdir = quarantine_dir(root).await?;
    for temp in temps {
        let bytes = crate::segment::read_whole(journal_dir, temp, max_file_bytes).await?;
        let len_bytes = bytes.len();
        let copy = quarantine(&qdir, &format!("journal-{temp}"), bytes).await?;
        journal_dir
            .remove_file(temp)
            .await
            .map_err(|e| JournalError::io("remove temp", temp.clone(), e))?;
        tracing::info!(file = %temp, quarantine = %copy, bytes = len_bytes,
            "journal: quarantined a leftover compaction temp file");
    }
    journal_dir
        .sync()
        .await
        .map_err(|e| JournalError::io("fsync journal dir", journal_dir.display_path(), e))
}

/// Executes a cut ordered by the table: quarantine every removed byte, then remove the later
/// segments (newest first, each followed by a directory fsync, so a crash leaves a state that
/// classifies the same way), then truncate the stop's segment and fsync it.
pub async fn cut<D: Directory>(
    root: &D,
    journal_dir: &D,
    scan: &LogScan,
    kind: PlannedCut,
) -> Result<Vec<Repair>, JournalError> {
    let stop = scan
        .first_stop
        .as_ref()
        .expect("cut is only ordered at a stop");
    // Independent of the table: a cut in the default mode is only ever of bytes nothing vouches
    // for, and a log of an unknown version is never cut.
    assert!(
        !stop.proofs.any() || kind == PlannedCut::PointInTime,
        "recovery table ordered a torn-tail cut of vouched-for bytes at {} offset {}",
        stop.file,
        stop.stop.offset_bytes
    );
    assert!(
        stop.case != Case::UnknownVersion,
        "never cut a log of an unknown version"
    );
    let (repairs, removals) = quarantine_cut_bytes(root, journal_dir, scan, stop, kind).await?;
    remove_later_segments(journal_dir, &removals).await?;
    if stop.stop.offset_bytes > 0 {
        let name = segment_file_name(scan.files[stop.file_index].number);
        truncate_at(journal_dir, &name, stop.stop.offset_bytes).await?;
    }
    Ok(repairs)
}

/// A file a cut removes from (`from_bytes` on); the stop's segment is truncated instead when
/// `from_bytes > 0`.
struct Removal {
    name: String,
    from_bytes: u64,
    is_stop_segment: bool,
}

/// Step 1 of a cut: copy the stop's segment from the stop offset, and every later segment whole,
/// into quarantine (each fsynced), before anything is removed.
async fn quarantine_cut_bytes<D: Directory>(
    root: &D,
    journal_dir: &D,
    scan: &LogScan,
    stop: &StopAt,
    kind: PlannedCut,
) -> Result<(Vec<Repair>, Vec<Removal>), JournalError> {
    let quarantine_dir = quarantine_dir(root).await?;
    let mut repairs = Vec::new();
    let mut removals = Vec::new();
    for (index, file) in scan.files.iter().enumerate().skip(stop.file_index) {
        let from = if index == stop.file_index {
            stop.stop.offset_bytes
        } else {
            0
        };
        let bytes =
            crate::segment::read_whole(journal_dir, &file.name, scan.max_file_bytes).await?;
        // Exactly the bytes the cut removes, preallocated zeroes included: what was there is
        // what an operator finds, and `bytes` in the report is the cut length.
        let removed = bytes[(from as usize).min(bytes.len())..].to_vec();
        let removed_len = removed.len() as u64;
        let qname = quarantine(
            &quarantine_dir,
            &quarantine_file_name(file.number, from),
            removed,
        )
        .await?;
        tracing::warn!(
            segment = %file.name,
            offset_bytes = from,
            op = stop.stop.op,
            bytes = removed_len,
            quarantine = %qname,
            case = %kind,
            "journal repair: quarantined bytes before cutting them"
        );
        repairs.push(Repair {
            kind,
            file: file.name.clone(),
            offset_bytes: from,
            bytes: removed_len,
            quarantine_file: qname,
        });
        removals.push(Removal {
            name: file.name.clone(),
            from_bytes: from,
            is_stop_segment: index == stop.file_index,
        });
    }
    Ok((repairs, removals))
}

/// Step 2 of a cut: remove the segments cut whole, newest first, each followed by a directory
/// fsync (a crash in between leaves a log that classifies the same way).
async fn remove_later_segments<D: Directory>(
    journal_dir: &D,
    removals: &[Removal],
) -> Result<(), JournalError> {
    for removal in removals.iter().rev() {
        if removal.is_stop_segment && removal.from_bytes > 0 {
            continue;
        }
        let name = &removal.name;
        journal_dir
            .remove_file(name)
            .await
            .map_err(|e| JournalError::io("remove cut segment", name.clone(), e))?;
        journal_dir
            .sync()
            .await
            .map_err(|e| JournalError::io("journal dir fsync", name.clone(), e))?;
    }
    Ok(())
}

/// Step 3 of a cut: truncate the stop's segment at the stop and fsync it.
async fn truncate_at<D: Directory>(
    journal_dir: &D,
    name: &str,
    offset_bytes: u64,
) -> Result<(), JournalError> {
    let file = journal_dir
        .open_file(name, OpenMode::Existing)
        .await
        .map_err(|e| JournalError::io("open for truncate", name, e))?;
    file.truncate(offset_bytes)
        .await
        .map_err(|e| JournalError::io("truncate", name, e))?;
    file.sync()
        .await
        .map_err(|e| JournalError::io("fsync after truncate", name, e))
}
