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
//! API CONTRACT (fixed; the engine codes against it): every method takes `&self` (interior
//! mutability, never a `RefCell` borrow held across an await), so several appends can be in flight
//! from tasks on one core and share one group commit.
//!
//! # Example
//!
//! Appends are durable when they return: a power cut right after keeps them, and the next open
//! finds the commit watermark that was persisted.
//!
//! ```
//! use keel_journal::{JournalConfig, MetadataJournal, RecoveryMode};
//! use keel_storage::MemFs;
//!
//! compio::runtime::Runtime::new().unwrap().block_on(async {
//!     let fs = MemFs::new(1);
//!     let config = JournalConfig { segment_bytes: 1 << 20, ..JournalConfig::default() };
//!     let mode = RecoveryMode::TolerateTornTail;
//!     let (journal, _report) = MetadataJournal::open(&fs.root(), config.clone(), mode)
//!         .await
//!         .unwrap();
//!     journal.append(1, b"first").await.unwrap();
//!     journal.append(2, b"second").await.unwrap();
//!     journal.set_commit_op(2);
//!     journal.persist_commit().await.unwrap();
//!     drop(journal); // no clean close: the power cut comes first
//!     fs.crash();
//!
//!     let (journal, report) = MetadataJournal::open(&fs.root(), config, mode).await.unwrap();
//!     assert_eq!(report.commit_op, Some(2));
//!     assert_eq!(report.last_op, Some(2));
//!     let entry = journal.entry(1).await.unwrap().expect("op 1 is live");
//!     assert_eq!(&entry.payload[..], b"first");
//!     journal.close().await.unwrap();
//! });
//! ```
//!
//! # Modules
//! - `config`: [`JournalConfig`] (every field's default and limit) and [`RecoveryMode`].
//! - [`format`]: the bytes on disk, byte by byte (segment header, entry header, alignment;
//!   docs/format.md).
//! - `open`: the open's plan (decided read-only) and its execution.
//! - `read`: live entries read back by op ([`MetadataJournal::entry`], [`JournalReader`]).
//! - `report`: what an open, `verify`, `inspect` or `raw_entries` found ([`ScanReport`], …).
//! - `slots`: the ring index op → newest entry; `Full` back-pressure.
//! - `segment`: segment files as files (list, read, create + preallocate + fsync + dir fsync).
//! - `writer`: seq/chain assignment, the queue, batches of entries, the in-flight bound.
//! - `group`: the writer task: group commit, segment creation, preallocation, poisoning.
//! - `scan`: parsing segments back, where valid entries stop, the look-ahead past a stop.
//! - `recovery`: the decision table (data: [`RECOVERY_TABLE`]) and quarantine + cut.
//! - `compaction`: dead-prefix deletion and rewrite of the first sealed segment.
//!
//! # How damage is told from a torn write
//! Every entry carries `seq` (+1 per entry, so ops may arrive out of order and be rewritten
//! without any "op went backwards" rule), the header crc of its predecessor, and `durable_seq`:
//! the highest seq an fsync had covered when it was written. When the scan meets an invalid entry
//! whose expected seq is `s`, it looks further (8-aligned, this file and every later one) for
//! valid headers: if one claims `durable_seq >= s`, the damaged entry had been fsynced and
//! acknowledged → corruption, refuse. Otherwise it is a torn tail: the crash cut writes nobody
//! was told were durable → quarantine the bytes, then truncate. A checksum-valid entry in the wrong
//! place (chain break) or a segment that does not link to its predecessor is always corruption:
//! torn writes leave zeroes or partial sectors, never a well-formed stale entry.
//!
//! **Known limit**: nothing after the *last* batch vouches for it, so media damage inside the
//! final acknowledged batch is indistinguishable from a torn write and is cut (and reported as a
//! `torn_tail` repair, with the quarantined bytes kept). Only a second write after every fsync could
//! close this window, at twice the fsync cost; the consensus layer re-fetches such ops from peers.
//! A clean [`MetadataJournal::close`] closes it: it appends a marker whose watermark covers the
//! final batch.
//! Likewise zeroes that start exactly at an entry boundary of the final batch read as a clean end
//! (the etcd #6515 shape at the tail); a zeroed sector anywhere a later batch vouches for is
//! refused.
//!
//! # Crash ordering rules the code keeps
//! - A new segment's header is written only after every older segment's bytes are fsynced (a
//!   durable header claims every seq before its `first_seq`), and the directory is fsynced before
//!   any entry goes in.
//! - A repair quarantines first (file + directory fsync), removes later segments newest first
//!   (directory fsync each), then truncates and fsyncs: a crash at any point re-classifies the same.
//! - Compaction deletes only a prefix (oldest first, directory fsync each) and never the newest
//!   segment; a rewrite goes temp file → fsync → rename → directory fsync.
//! - On open the journal fsyncs what it read (a process crash leaves it in the page cache only)
//!   before later entries claim it durable.

#![allow(async_fn_in_trait)]
#![deny(missing_docs)]

mod compaction;
mod completion;
mod config;
mod direct;
mod error;
pub mod format;
#[cfg(any(test, feature = "testing"))]
pub mod fuzzing;
mod group;
mod live;
mod open;
mod outcome;
mod position;
mod read;
mod recovery;
mod repair;
mod report;
mod scan;
mod segment;
mod slots;
mod spare;
mod stream;
mod window;
mod writer;
mod zeroed;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

pub use bytes::Bytes;
use keel_storage::Directory;

pub use compaction::CompactionStep;
pub use config::{JournalConfig, RecoveryMode};
pub use error::JournalError;
pub use format::{EntryKind, FORMAT_VERSION};
pub use live::LiveMap;
pub use open::OpenPlan;
pub use outcome::{Case, PlannedCut};
pub use position::EntryPosition;
pub use read::{Entry, JournalReader};
pub use recovery::{
    matching_row, needs_repair, one_of, Action, CaseInfo, Pattern, Proofs, StopFact, Want,
    PATTERNS as RECOVERY_PATTERNS, TABLE as RECOVERY_TABLE,
};
pub use report::{
    CompactionReport, JournalStats, Problem, RawEntry, Repair, ScanReport, SegmentSummary,
    VerifyStatus,
};
/// The forensic walk of segment files (every entry on disk, past chain breaks), for tools.
pub use scan::forensic;
pub use slots::{check_op, Location, SlotRefusal};
pub use stream::{LiveEntries, ScanEvent, WINDOW_BYTES as SCAN_WINDOW_BYTES};

pub(crate) use config::max_file_bytes;
pub(crate) use report::{problem, refuse, summarize};
use slots::SlotRing;
use writer::WriterState;

/// An open segment.
pub(crate) struct SegmentHandle<D: Directory> {
    /// Open handle; released (None) for sealed segments no live op points into, so a journal that
    /// never compacts does not hold one descriptor per segment forever. Reopened on demand.
    pub file: Option<Rc<D::File>>,
    /// Length when the handle was released.
    pub len_bytes: u64,
    pub name: String,
    /// Chain state after its last entry.
    pub end_link: scan::Link,
    pub entry_count: u64,
    /// What its entries' header crcs cover (recycled segments: their number).
    pub binding: format::Binding,
}

impl<D: Directory> SegmentHandle<D> {
    /// The file's length: from the open handle, or as it was when the handle was released.
    pub(crate) fn file_len_bytes(&self) -> u64 {
        self.file
            .as_ref()
            .map_or(self.len_bytes, |f| keel_storage::Storage::len(&**f))
    }
}

/// Mutable state of a journal; borrowed only between awaits.
pub(crate) struct State<D: Directory> {
    pub slots: SlotRing,
    pub segments: BTreeMap<u64, SegmentHandle<D>>,
    pub w: WriterState,
    pub poisoned: Option<String>,
    /// Commit watermark as last set (carried by every entry written after).
    pub commit_set: u64,
    /// Highest commit watermark in a written entry / in a synced one.
    pub commit_written: u64,
    pub commit_durable: u64,
    /// Highest snapshot watermark accepted into the log (maybe not yet written).
    pub snapshot_encoded: u64,
    pub compacting: bool,
    pub stats: JournalStats,
}

/// The journal of one core. `D` is the engine's root directory: the journal lives in
/// `D/journal/` and quarantines into `D/quarantine/`.
pub struct MetadataJournal<D: Directory> {
    pub(crate) dir: D,
    pub(crate) config: JournalConfig,
    pub(crate) read_only: bool,
    /// Shared with the writer task (`group`), which holds the other reference.
    pub(crate) state: Rc<RefCell<State<D>>>,
    /// The writer task (writable journals); dropping the journal cancels it.
    pub(crate) writer: Option<compio::runtime::JoinHandle<()>>,
}

impl<D: Directory> MetadataJournal<D> {
    /// Appends (or rewrites) `op`; resolves once durable (group commit). `Full` before any byte is
    /// written when `op - snapshot_op > slot_count`.
    pub async fn append(&self, op: u64, payload: &[u8]) -> Result<(), JournalError> {
        self.submit(EntryKind::Data, &[(op, payload)]).await
    }

    /// Appends (or rewrites) every `(op, payload)` in order, contiguous in the log, and resolves
    /// once all are durable (with `sync_on_append`; else once accepted, like [`Self::append`]).
    /// Every entry is checked first (size, `Full`, below the snapshot): a refusal accepts none.
    /// The payloads are copied once, into the batch buffer.
    pub async fn append_batch<P: AsRef<[u8]>>(
        &self,
        entries: &[(u64, P)],
    ) -> Result<(), JournalError> {
        if entries.is_empty() {
            return Ok(());
        }
        self.submit(EntryKind::Data, entries).await
    }

    /// Records the commit watermark; carried by every later entry's header. Durable only once an
    /// entry written after it is durable, or after [`MetadataJournal::persist_commit`].
    /// The watermark never moves down.
    pub fn set_commit_op(&self, commit_op: u64) {
        let mut st = self.state.borrow_mut();
        st.commit_set = st.commit_set.max(commit_op);
    }

    /// Writes a commit marker carrying the current commit watermark and waits until durable.
    pub async fn persist_commit(&self) -> Result<(), JournalError> {
        let commit = self.state.borrow().commit_set;
        self.submit(EntryKind::Commit, &[(commit, [])]).await?;
        if !self.config.sync_on_append {
            self.request_flush().await?;
        }
        Ok(())
    }

    /// Discards every op above `op` with a journaled truncate marker; durable on return.
    pub async fn truncate_after(&self, op: u64) -> Result<(), JournalError> {
        self.submit(EntryKind::Truncate, &[(op, [])]).await?;
        if !self.config.sync_on_append {
            self.request_flush().await?;
        }
        Ok(())
    }
    /// Moves the snapshot watermark to `op` (persisted as a marker); frees slots at or below it.
    /// A watermark at or below the current one is a no-op.
    pub async fn set_snapshot_op(&self, op: u64) -> Result<(), JournalError> {
        self.check_usable()?;
        if op <= self.state.borrow().snapshot_encoded {
            return Ok(());
        }
        self.submit(EntryKind::Snapshot, &[(op, [])]).await?;
        if !self.config.sync_on_append {
            self.request_flush().await?;
        }
        Ok(())
    }

    /// How many more ops above the snapshot watermark fit before `Full`.
    pub fn remaining_capacity(&self) -> u64 {
        self.state.borrow().slots.remaining_capacity()
    }

    /// Deletes segments wholly at or below the watermark; rewrites a straddling one.
    pub async fn compact(&self) -> Result<CompactionReport, JournalError> {
        self.compact_inner(&mut |_| Ok(())).await
    }

    /// Makes everything written so far durable (used with `sync_on_append = false` and on close).
    pub async fn flush(&self) -> Result<(), JournalError> {
        self.request_flush().await
    }

    /// How segments this journal writes are opened (see [`JournalConfig::write_through`] and
    /// [`JournalConfig::direct_io`]).
    pub(crate) fn segment_writes(&self) -> keel_storage::WriteMode {
        use keel_storage::WriteMode;
        match (
            self.config.sync_on_append && self.config.write_through,
            self.config.direct_io,
        ) {
            (false, _) => WriteMode::Buffered,
            (true, false) => WriteMode::WriteThrough,
            (true, true) => WriteMode::Direct,
        }
    }

    /// Highest live op above the snapshot watermark (`None` when nothing above it is live).
    pub fn last_op(&self) -> Option<u64> {
        self.state.borrow().slots.last_op()
    }

    /// The snapshot watermark (`None` before the first checkpoint). Ops start at 1 (an append at or below the watermark is refused, and the watermark starts at
    /// 0), so op 0 is never a snapshot's op: `None` is the only way to say "none".
    pub fn snapshot_op(&self) -> Option<u64> {
        let op = self.state.borrow().slots.snapshot_op();
        (op > 0).then_some(op)
    }

    /// Highest commit watermark made durable (`None`: none yet). Named like
    /// `Engine::durable_commit_op`: the watermark *set* is not durable until an entry carries it.
    pub fn durable_commit_op(&self) -> Option<u64> {
        let commit = self.state.borrow().commit_durable;
        (commit > 0).then_some(commit)
    }

    /// The counters so far.
    pub fn stats(&self) -> JournalStats {
        let st = self.state.borrow();
        JournalStats {
            segments_live: st.segments.len() as u64,
            ..st.stats.clone()
        }
    }

    /// Flushes and closes every segment.
    ///
    /// When anything was written since the last close, it also writes a *close marker* (a commit
    /// marker after an fsync of everything before it): its durable watermark vouches for the
    /// final batch, so damage there after a clean shutdown is refused as corruption instead of
    /// being cut as a torn tail (see the crate docs' known limit).
    pub async fn close(self) -> Result<(), JournalError> {
        if self.read_only {
            return Ok(());
        }
        self.flush().await?;
        if self.state.borrow().w.tail_uncovered {
            let commit = self.state.borrow().commit_set;
            self.submit(EntryKind::Commit, &[(commit, [])]).await?;
            self.request_flush().await?;
            self.state.borrow_mut().w.tail_uncovered = false;
        }
        // No write of this journal may land after it is closed (a reopen writes there next).
        self.drop_spare();
        self.finish_fill(None).await
    }

    /// How many ops are live in the slot ring (for `keel inspect`'s slot use).
    pub fn live_ops(&self) -> u64 {
        self.state.borrow().slots.live().len() as u64
    }

    /// The slot ring's size.
    pub fn slot_count(&self) -> u64 {
        self.config.slot_count
    }

    /// Segment files with an open handle (tests: sealed segments nothing live points into are
    /// released).
    #[cfg(any(test, feature = "testing"))]
    pub fn open_segment_handles(&self) -> usize {
        self.state
            .borrow()
            .segments
            .values()
            .filter(|h| h.file.is_some())
            .count()
    }

    /// Segments currently open, ascending (for `inspect` on an open journal and for tests).
    pub fn segment_names(&self) -> Vec<String> {
        self.state
            .borrow()
            .segments
            .values()
            .map(|h| h.name.clone())
            .collect()
    }
}
