//! keel-journal: the write-ahead log of one replica core.
//!
//! This crate owns the bytes under `DIR/journal/` (segments of checksummed entries), the slot ring
//! that indexes them by op, group commit, the recovery scan with its decision table, quarantine of
//! cut bytes under `DIR/quarantine/`, and compaction.
//!
//! It must never acknowledge an entry before an fsync covers it and every entry written before it,
//! never overwrite a slot whose op is above the snapshot watermark, and never truncate bytes it could
//! not prove were torn. It knows nothing of snapshots' contents or state machines.
//!
//! API CONTRACT (fixed; the engine codes against it — bodies are filled in by the journal work):
//! every method takes `&self` (interior mutability, never a `RefCell` borrow held across an await),
//! so several appends can be in flight from tasks on one core and share one group commit.

#![allow(async_fn_in_trait)]

use std::ops::RangeInclusive;

pub use bytes::Bytes;
use keel_storage::Directory;

/// Tunables of one journal. Every quantity has a limit.
#[derive(Debug, Clone)]
pub struct JournalConfig {
    /// Number of slots in the ring (power of two). Op `x` lives in slot `x % slot_count`.
    pub slot_count: u64,
    /// A segment rotates once it holds this many bytes.
    pub segment_bytes: u64,
    /// Largest batch written by one `write_at` (one group commit may issue several).
    pub max_batch_bytes: usize,
    /// Bytes accepted but not yet covered by an fsync; appends wait above this bound.
    pub max_inflight_bytes: usize,
    /// Largest payload of one entry.
    pub max_payload_bytes: usize,
    /// Preallocate segments (zero-filled) so durable writes overwrite instead of extending.
    pub preallocate: bool,
    /// When false, appends resolve once written to the OS (no fsync); `flush()` makes them durable.
    pub sync_on_append: bool,
}

impl Default for JournalConfig {
    fn default() -> Self {
        Self {
            slot_count: 1024,
            segment_bytes: 64 << 20,
            max_batch_bytes: 1 << 20,
            max_inflight_bytes: 8 << 20,
            max_payload_bytes: 1 << 20,
            preallocate: true,
            sync_on_append: true,
        }
    }
}

/// What recovery may do with damage it finds (DESIGN §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RecoveryMode {
    /// Repair a torn tail (quarantine + truncate); refuse corruption of acknowledged data.
    #[default]
    TolerateTornTail,
    /// Any invalid byte is an error; nothing is repaired (read-only checks).
    Absolute,
    /// Cut at the first invalid entry even in the durable region; quarantine all after it and
    /// report the lost op range.
    PointInTime,
}

/// One entry as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub op: u64,
    pub payload: Bytes,
}

/// One repair recovery performed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repair {
    /// `torn_tail` or `point_in_time_cut`.
    pub kind: &'static str,
    /// Segment file name.
    pub file: String,
    pub offset_bytes: u64,
    pub bytes: u64,
    /// Quarantine file name under `DIR/quarantine/`.
    pub quarantine_file: String,
}

/// One problem a scan found (reported by verify; an error for open unless repaired).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The recovery table's case name, e.g. `torn_tail`, `corrupt_entry`, `chain_break`.
    pub kind: &'static str,
    pub file: String,
    pub offset_bytes: u64,
    /// The op of the damaged entry when it can be told (the expected one otherwise).
    pub op: Option<u64>,
}

/// What opening (or verifying) a journal found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanReport {
    pub segments_read: u64,
    pub entries_read: u64,
    pub bytes_read: u64,
    pub first_op: Option<u64>,
    pub last_op: Option<u64>,
    /// Highest commit watermark found in a durable entry.
    pub commit_op: Option<u64>,
    /// The snapshot watermark persisted in the journal.
    pub snapshot_op: Option<u64>,
    pub repairs: Vec<Repair>,
    pub problems: Vec<Problem>,
    /// Ops whose entries were cut (point-in-time) and must come from peers.
    pub lost_ops: Vec<RangeInclusive<u64>>,
}

/// Counters for operators; cheap to read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JournalStats {
    pub appends: u64,
    pub bytes_appended: u64,
    pub fsyncs: u64,
    pub batches: u64,
    pub fsync_nanos_total: u64,
    pub segments_live: u64,
}

/// Summary of one compaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactionReport {
    pub segments_deleted: u64,
    pub segments_rewritten: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
}

/// The journal of one core. `D` is the engine's root directory: the journal lives in
/// `D/journal/` and quarantines into `D/quarantine/`.
pub struct MetadataJournal<D: Directory> {
    _dir: D,
}

/// Errors of the journal layer.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal I/O error during {stage} on {file}: {source}")]
    Io {
        stage: &'static str,
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("journal corrupt: {kind} in {file} at offset {offset_bytes} (op {op:?})")]
    Corrupt {
        kind: &'static str,
        file: String,
        offset_bytes: u64,
        op: Option<u64>,
    },
    #[error("journal full: op {op} is {distance} ops past snapshot op {snapshot_op} (slot_count {slot_count})")]
    Full {
        op: u64,
        snapshot_op: u64,
        distance: u64,
        slot_count: u64,
    },
    #[error("op {op} is at or below the snapshot watermark {snapshot_op}")]
    BelowSnapshot { op: u64, snapshot_op: u64 },
    #[error("payload of {len_bytes} bytes exceeds the limit of {max_bytes}")]
    PayloadTooLarge { len_bytes: usize, max_bytes: usize },
    #[error("journal poisoned by an earlier I/O error: {0}")]
    Poisoned(String),
    #[error("invalid journal configuration: {0}")]
    Config(String),
}

impl<D: Directory> MetadataJournal<D> {
    /// Opens (creating if absent) the journal under `root`, scanning every segment and applying
    /// `mode`'s repairs. Read-only directories are scanned without any repair (verify).
    pub async fn open(
        root: &D,
        config: JournalConfig,
        mode: RecoveryMode,
    ) -> Result<(Self, ScanReport), JournalError> {
        let _ = (root, config, mode);
        todo!("journal work")
    }

    /// Read-only full check: never writes; reports every problem instead of failing on the first.
    pub async fn verify(root: &D, config: JournalConfig) -> Result<ScanReport, JournalError> {
        let _ = (root, config);
        todo!("journal work")
    }

    /// Appends (or rewrites) `op`; resolves once durable (group commit). `Full` before any byte is
    /// written when `op - snapshot_op > slot_count`.
    pub async fn append(&self, op: u64, payload: &[u8]) -> Result<(), JournalError> {
        let _ = (op, payload);
        todo!("journal work")
    }

    /// Records the commit watermark; carried by every later entry's header. Durable only once an
    /// entry written after it is durable, or after [`MetadataJournal::persist_commit`].
    pub fn set_commit_op(&self, commit_op: u64) {
        let _ = commit_op;
        todo!("journal work")
    }

    /// Writes a commit marker carrying the current commit watermark and waits until durable.
    pub async fn persist_commit(&self) -> Result<(), JournalError> {
        todo!("journal work")
    }

    /// Discards every op above `op` with a journaled truncate marker; durable on return.
    pub async fn truncate_after(&self, op: u64) -> Result<(), JournalError> {
        let _ = op;
        todo!("journal work")
    }

    /// The newest entry for `op`, if live.
    pub async fn entry(&self, op: u64) -> Result<Option<Entry>, JournalError> {
        let _ = op;
        todo!("journal work")
    }

    /// Live entries with `op >= from_op`, ascending by op, in global order across segments.
    pub fn reader(&self, from_op: u64) -> JournalReader<'_, D> {
        JournalReader {
            journal: self,
            next_op: from_op,
        }
    }

    /// Moves the snapshot watermark to `op` (persisted as a marker); frees slots at or below it.
    pub async fn set_snapshot_op(&self, op: u64) -> Result<(), JournalError> {
        let _ = op;
        todo!("journal work")
    }

    /// How many more ops above the snapshot watermark fit before `Full`.
    pub fn remaining_capacity(&self) -> u64 {
        todo!("journal work")
    }

    /// Deletes segments wholly at or below the watermark; rewrites a straddling one.
    pub async fn compact(&self) -> Result<CompactionReport, JournalError> {
        todo!("journal work")
    }

    /// Makes everything written so far durable (used with `sync_on_append = false` and on close).
    pub async fn flush(&self) -> Result<(), JournalError> {
        todo!("journal work")
    }

    pub fn last_op(&self) -> Option<u64> {
        todo!("journal work")
    }

    pub fn snapshot_op(&self) -> u64 {
        todo!("journal work")
    }

    /// Highest commit watermark made durable.
    pub fn commit_op(&self) -> Option<u64> {
        todo!("journal work")
    }

    pub fn stats(&self) -> JournalStats {
        todo!("journal work")
    }

    /// Flushes and closes every segment.
    pub async fn close(self) -> Result<(), JournalError> {
        todo!("journal work")
    }
}

/// Iterates live entries in op order (see [`MetadataJournal::reader`]).
pub struct JournalReader<'j, D: Directory> {
    journal: &'j MetadataJournal<D>,
    next_op: u64,
}

impl<D: Directory> JournalReader<'_, D> {
    /// The next live entry, or `None` past the last op.
    pub async fn next(&mut self) -> Result<Option<Entry>, JournalError> {
        let _ = (self.journal, self.next_op);
        todo!("journal work")
    }
}
