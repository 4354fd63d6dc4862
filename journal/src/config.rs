//! config: the journal's tunables, each with its default and limit, and what recovery may repair.
//!
//! Owns [`JournalConfig`] and its validation, and [`RecoveryMode`]. It must never hold state: a
//! configuration is checked once, when a journal opens or is verified.

use crate::error::JournalError;
use crate::{format, stream};

/// Tunables of one journal. Every quantity has a limit, checked by [`JournalConfig::validate`]
/// when the journal opens.
#[derive(Debug, Clone)]
pub struct JournalConfig {
    /// Slots in the ring; op `x` lives in slot `x % slot_count`, so at most this many ops above
    /// the snapshot watermark can be live (`Full` beyond). Each slot is 24 bytes of memory,
    /// written at open (2^24 slots: 384 MiB). Default 1,024; a power of two, at most 2^24.
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
    /// Keep zero-written space ahead of the write cursor (a new segment starts with 256 KiB, each
    /// later step is half what it holds or eight times the run that asks for it, at most an
    /// eighth of a segment or 8 MiB), so a durable
    /// write overwrites instead of extending the file, which costs an fdatasync about twice as
    /// much here (docs/performance.md). Only with `sync_on_append`: buffered appends never
    /// preallocate (it would write every byte twice). Default true.
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
    /// With `write_through`, segments also get an `O_DIRECT` descriptor, and each group's write
    /// is aligned to 4 KiB (the partial block before it is written again with its old bytes, the
    /// block after it padded with the zeroes already there), so it goes to the device without a
    /// kernel worker copying it into the page cache first (docs/performance.md). Where the file
    /// system refuses `O_DIRECT` (tmpfs), plain write-through. Measured faster than plain
    /// write-through in every durable workload of `compare` (BENCHMARKS.md, tenth pass). The
    /// cost: reads of entries just written ([`MetadataJournal::entry`], compaction's rewrites, an
    /// open after a process crash) come from the device, not the page cache; keel-raft and the
    /// engine serve recent entries from memory. Ignored without `write_through`. Default true.
    pub direct_io: bool,
    /// Bytes the open's scan reads at a time; it holds three such buffers (the window it parses
    /// and the next two being read), and the window grows to hold one entry larger than this,
    /// so recovery's memory is this or the largest entry, plus the index. Default 2 MiB (the
    /// best measured, BENCHMARKS.md); 512 B to 64 MiB.
    pub scan_window_bytes: usize,
    /// Without `sync_on_append`: once a segment holds this many bytes written since its last
    /// write-back started, the writer starts the kernel writing them to the device
    /// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`, off the core, one at a time, no wait), so the
    /// fsync a rotation or a flush owes finds little left to write instead of a whole segment of
    /// page cache (RocksDB's `wal_bytes_per_sync`). It makes nothing durable and changes no
    /// recovery rule. Default 8 MiB; 0 turns it off, else 512 B to 1 GiB. Ignored with
    /// `sync_on_append` (every group is synced anyway).
    pub write_back_bytes: u64,
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
            direct_io: true,
            scan_window_bytes: stream::WINDOW_BYTES,
            write_back_bytes: 8 << 20,
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

/// Largest segment file a scan will read into memory, whatever the configuration says.
const MAX_SEGMENT_FILE_BYTES_FLOOR: u64 = 1 << 30;

pub(crate) fn max_file_bytes(config: &JournalConfig) -> u64 {
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
        if self.write_back_bytes != 0 && !(512..=1 << 30).contains(&self.write_back_bytes) {
            return fail(format!(
                "write_back_bytes {} must be 0 (off) or within 512 B..=1 GiB",
                self.write_back_bytes
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
