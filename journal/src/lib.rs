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
//! - [`format`]: the bytes on disk, byte by byte (segment header, entry header, alignment).
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
mod error;
pub mod format;
#[doc(hidden)]
pub mod fuzzing;
mod group;
mod live;
mod open;
mod position;
mod recovery;
mod scan;
mod segment;
mod slots;
mod stream;
mod writer;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::rc::Rc;

pub use bytes::Bytes;
use keel_storage::{Directory, Storage};

pub use compaction::CompactionStep;
pub use error::JournalError;
pub use format::{EntryKind, FORMAT_VERSION};
pub use live::LiveMap;
pub use open::{OpenPlan, PlannedCut};
pub use position::EntryPosition;
pub use recovery::{
    Action, Case, CaseInfo, Pattern, Proofs, StopFact, Want, PATTERNS as RECOVERY_PATTERNS,
    TABLE as RECOVERY_TABLE,
};
pub use slots::Location;
pub use stream::{LiveEntries, ScanEvent, WINDOW_BYTES as SCAN_WINDOW_BYTES};

use format::{EntryHeader, ENTRY_HEADER_BYTES};
use recovery::info;
use scan::{scan_log, LogScan};
use slots::SlotRing;
use writer::WriterState;

/// Tunables of one journal. Every quantity has a limit, checked by [`JournalConfig::validate`]
/// when the journal opens.
#[derive(Debug, Clone)]
pub struct JournalConfig {
    /// Slots in the ring; op `x` lives in slot `x % slot_count`, so at most this many ops above
    /// the snapshot watermark can be live (`Full` beyond). Default 1,024; a power of two,
    /// at most 2^24.
    pub slot_count: u64,
    /// A segment rotates once it holds this many bytes (one entry larger than this gets a
    /// segment of its own). Default 64 MiB; at least 128 B, at most 4 GiB.
    pub segment_bytes: u64,
    /// Largest run one `write_at` writes (a group may issue several), and with
    /// `sync_on_append = false` the bytes buffered before the writer writes them. Default
    /// 1 MiB; 512 B to 64 MiB.
    pub max_batch_bytes: usize,
    /// Bytes accepted but not yet written (and synced, with `sync_on_append`): appends wait
    /// above this bound (one entry larger than it is taken alone). Default 8 MiB; 512 B to
    /// 1 GiB.
    pub max_inflight_bytes: usize,
    /// Largest payload of one entry. Default 1 MiB; at most the format's limit
    /// ([`format::MAX_PAYLOAD_BYTES_LIMIT`]).
    pub max_payload_bytes: usize,
    /// Keep zero-written space ahead of the write cursor (steps of an eighth of a segment, at
    /// most 8 MiB), so a durable write overwrites instead of extending the file, which costs an
    /// fdatasync about twice as much here (docs/performance.md). Default true.
    pub preallocate: bool,
    /// True: an append resolves once an fsync (or a write-through write) covers it and every
    /// entry before it. False: an append resolves once accepted into the writer's buffer
    /// (readable at once); the writer writes a `max_batch_bytes` run at a time, and
    /// [`MetadataJournal::flush`] / [`MetadataJournal::close`] make everything durable. A crash
    /// may lose what no flush covered. Default true.
    pub sync_on_append: bool,
    /// With `sync_on_append`, open segments write-through (`O_DSYNC`): each group is one write
    /// that is durable when it completes, instead of a write and then an fdatasync (one I/O
    /// round trip instead of two; docs/performance.md). False keeps write + fdatasync. Ignored
    /// without `sync_on_append`. Default true.
    pub write_through: bool,
    /// Bytes the open's scan reads at a time; it holds two such buffers (the window it parses
    /// and the next one being read), and the window grows to hold one entry larger than this,
    /// so recovery's memory is this or the largest entry, plus the index. Default 2 MiB (the
    /// best measured, BENCHMARKS.md); 512 B to 64 MiB.
    pub scan_window_bytes: usize,
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
            write_through: true,
            scan_window_bytes: stream::WINDOW_BYTES,
        }
    }
}

/// What recovery may do with damage it finds (docs/durability.md, the recovery table).
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
    /// The op.
    pub op: u64,
    /// Its payload as appended.
    pub payload: Bytes,
}

/// One repair recovery performed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repair {
    /// `torn_tail` or `point_in_time_cut`.
    pub kind: &'static str,
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
    /// The recovery table's case name, e.g. `torn_tail`, `corrupt_entry`, `chain_break`.
    pub kind: &'static str,
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
    /// torn tail (`torn_tail`, `torn_segment_header`) that a normal open repairs. Unknown kinds
    /// count as corruption.
    pub fn is_corruption(&self) -> bool {
        recovery::TABLE
            .iter()
            .find(|row| row.name == self.kind)
            .is_none_or(|row| row.corruption)
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
            status = VerifyStatus::TornTail;
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

/// Largest segment file a scan will read into memory, whatever the configuration says.
const MAX_SEGMENT_FILE_BYTES_FLOOR: u64 = 1 << 30;

fn max_file_bytes(config: &JournalConfig) -> u64 {
    config
        .segment_bytes
        .saturating_mul(4)
        .max(MAX_SEGMENT_FILE_BYTES_FLOOR)
}

impl JournalConfig {
    /// Checks every limit; `open` refuses a configuration that fails.
    pub fn validate(&self) -> Result<(), JournalError> {
        let fail = |m: String| Err(JournalError::Config(m));
        if !self.slot_count.is_power_of_two() || self.slot_count > 1 << 24 {
            return fail(format!(
                "slot_count {} must be a power of two <= 2^24",
                self.slot_count
            ));
        }
        if self.max_payload_bytes > format::MAX_PAYLOAD_BYTES_LIMIT as usize {
            return fail(format!(
                "max_payload_bytes {} exceeds the format limit {}",
                self.max_payload_bytes,
                format::MAX_PAYLOAD_BYTES_LIMIT
            ));
        }
        // An entry larger than a segment gets a segment of its own, and one larger than
        // max_batch_bytes / max_inflight_bytes is written alone: no bound here can deadlock.
        if self.segment_bytes < 2 * format::SEGMENT_HEADER_BYTES as u64 {
            return fail(format!("segment_bytes {} too small", self.segment_bytes));
        }
        if !(512..=64 << 20).contains(&self.scan_window_bytes) {
            return fail(format!(
                "scan_window_bytes {} must be within 512 B..=64 MiB",
                self.scan_window_bytes
            ));
        }
        if self.segment_bytes > 1 << 32 {
            return fail(format!("segment_bytes {} above 4 GiB", self.segment_bytes));
        }
        if !(512..=64 << 20).contains(&self.max_batch_bytes) {
            return fail(format!(
                "max_batch_bytes {} must be within 512 B..=64 MiB",
                self.max_batch_bytes
            ));
        }
        if !(512..=1 << 30).contains(&self.max_inflight_bytes) {
            return fail(format!(
                "max_inflight_bytes {} must be within 512 B..=1 GiB",
                self.max_inflight_bytes
            ));
        }
        Ok(())
    }
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

fn refuse(stop: &scan::StopAt) -> JournalError {
    JournalError::Corrupt {
        kind: info(stop.case).name,
        file: stop.file.clone(),
        offset_bytes: stop.stop.offset_bytes,
        op: stop.stop.op,
    }
}

fn problem(stop: &scan::StopAt) -> Problem {
    Problem {
        kind: info(stop.case).name,
        file: stop.file.clone(),
        offset_bytes: stop.stop.offset_bytes,
        op: stop.stop.op,
    }
}

/// Fills the report's op and watermark fields from the kept segments.
fn summarize(scan: &LogScan, report: &mut ScanReport) {
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

    /// The newest entry for `op`, if live.
    pub async fn entry(&self, op: u64) -> Result<Option<Entry>, JournalError> {
        let location = {
            let st = self.state.borrow();
            if let Some(reason) = &st.poisoned {
                return Err(JournalError::Poisoned(reason.clone()));
            }
            st.slots.get(op)
        };
        let Some(location) = location else {
            return Ok(None);
        };
        let unwritten = self.state.borrow().w.unwritten_entry(&location);
        let (bytes, name) = match unwritten {
            Some(bytes) => (bytes, format::segment_file_name(location.segment)),
            None => {
                let Some((file, name)) = self.segment_file(location.segment).await? else {
                    return Ok(None);
                };
                let bytes = file
                    .read_exact_at(location.offset_bytes, location.len_bytes as usize)
                    .await
                    .map_err(|e| JournalError::io("read entry", self.file_path(&name), e))?;
                (bytes, name)
            }
        };
        let corrupt = || JournalError::Corrupt {
            kind: "corrupt_entry",
            file: name.clone(),
            offset_bytes: location.offset_bytes,
            op: Some(op),
        };
        let (header, _) = EntryHeader::decode(&bytes).map_err(|_| corrupt())?;
        if header.op != op
            || header.kind != EntryKind::Data
            || header.entry_len_bytes() != bytes.len()
            || crc32fast::hash(&bytes[ENTRY_HEADER_BYTES..]) != header.payload_crc
        {
            tracing::warn!(segment = %name, offset_bytes = location.offset_bytes, op,
                "journal: entry failed its checksum on read");
            return Err(corrupt());
        }
        let end = ENTRY_HEADER_BYTES + header.payload_len as usize;
        Ok(Some(Entry {
            op,
            payload: Bytes::from(bytes).slice(ENTRY_HEADER_BYTES..end),
        }))
    }

    /// True when the journal's index holds a live entry for `op` (no read).
    pub fn holds(&self, op: u64) -> bool {
        self.state.borrow().slots.get(op).is_some()
    }

    /// Live entries with `op >= from_op`, ascending by op, in global order across segments.
    pub fn reader(&self, from_op: u64) -> JournalReader<'_, D> {
        JournalReader {
            journal: self,
            next_op: from_op,
            done: false,
        }
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

    /// Whether segments this journal writes are opened write-through (see
    /// [`JournalConfig::write_through`]).
    pub(crate) fn writes_through(&self) -> bool {
        self.config.sync_on_append && self.config.write_through
    }

    /// Highest live op above the snapshot watermark (`None` when nothing above it is live).
    pub fn last_op(&self) -> Option<u64> {
        self.state.borrow().slots.last_op()
    }

    /// The snapshot watermark (0 before the first checkpoint).
    pub fn snapshot_op(&self) -> u64 {
        self.state.borrow().slots.snapshot_op()
    }

    /// Highest commit watermark made durable.
    pub fn commit_op(&self) -> Option<u64> {
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
        Ok(())
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
    #[doc(hidden)]
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

/// Iterates live entries in op order (see [`MetadataJournal::reader`]).
pub struct JournalReader<'j, D: Directory> {
    journal: &'j MetadataJournal<D>,
    next_op: u64,
    /// Op `u64::MAX` was returned: nothing can follow.
    done: bool,
}

impl<D: Directory> JournalReader<'_, D> {
    /// The next live entry, or `None` past the last op.
    pub async fn next(&mut self) -> Result<Option<Entry>, JournalError> {
        loop {
            let (last, snapshot) = {
                let st = self.journal.state.borrow();
                (st.slots.last_op(), st.slots.snapshot_op())
            };
            let Some(last) = last else { return Ok(None) };
            self.next_op = self.next_op.max(snapshot.saturating_add(1));
            if self.next_op > last || self.done {
                return Ok(None);
            }
            let op = self.next_op;
            match op.checked_add(1) {
                Some(next) => self.next_op = next,
                None => self.done = true,
            }
            if let Some(entry) = self.journal.entry(op).await? {
                return Ok(Some(entry));
            }
        }
    }
}
