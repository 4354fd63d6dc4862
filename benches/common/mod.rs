//! Shared by every bench binary: keel set-ups on real files, and the plain `std::fs` baselines the
//! issue compares keel against (same payloads, same framing cost, same disk, same process).
//!
//! Each bench binary uses a different subset of these helpers, hence the `dead_code` allowance.
#![allow(dead_code)]

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use keel_engine::{encode_set, Engine, EngineConfig, KvStateMachine};
use keel_journal::{JournalConfig, MetadataJournal, RecoveryMode};
use keel_storage::{DirAccess, FsDirectory};

pub type Journal = MetadataJournal<FsDirectory>;
pub type KvEngine = Engine<FsDirectory, KvStateMachine>;

/// Read size of the plain recovery baselines: the reference (64 KiB reads measured 3×
/// faster than 1 MiB reads from page cache here).
pub const READ_CHUNK_BYTES: usize = 64 << 10;

/// Plain framing: `len: u32 LE`, `crc32(payload): u32 LE`, payload.
pub const PLAIN_FRAME_HEADER_BYTES: usize = 8;

/// One compio runtime per bench binary: building one costs an io_uring setup, so it is built once
/// and every measurement runs inside `block_on` on it.
pub fn runtime() -> compio::runtime::Runtime {
    compio::runtime::Runtime::new().expect("compio runtime (io_uring available?)")
}

/// Where bench files go. `KEEL_BENCH_DIR` picks the file system to measure; the default is the
/// system temp dir (the same ext4 volume as the work tree on the bench machine).
pub fn bench_tempdir() -> tempfile::TempDir {
    match std::env::var_os("KEEL_BENCH_DIR") {
        Some(dir) => {
            std::fs::create_dir_all(&dir).expect("create KEEL_BENCH_DIR");
            tempfile::tempdir_in(dir).expect("tempdir in KEEL_BENCH_DIR")
        }
        None => tempfile::tempdir().expect("tempdir"),
    }
}

/// A deterministic, non-constant payload (so no layer can get away with special-casing zeroes).
pub fn payload(len_bytes: usize) -> Vec<u8> {
    (0..len_bytes).map(|i| (i * 31 + 7) as u8).collect()
}

/// Journal configuration for benches: a slot ring big enough that the measured loops never hit
/// `Full` between the untimed maintenance steps (see [`ensure_capacity`]).
pub fn journal_config(slot_count: u64, sync_on_append: bool) -> JournalConfig {
    JournalConfig {
        slot_count,
        sync_on_append,
        ..base_journal_config()
    }
}

/// The default configuration, except the payload limit: the benches' entries are at most 4 KiB,
/// and a 64 KiB limit keeps the configuration valid whatever batch bounds the defaults pick (the
/// limit only validates; it changes no I/O).
pub fn base_journal_config() -> JournalConfig {
    JournalConfig {
        max_payload_bytes: 64 << 10,
        ..JournalConfig::default()
    }
}

/// Opens (creating) a journal under `root` (the engine-root directory; segments go to
/// `root/journal/`).
pub async fn open_journal(root: &Path, config: JournalConfig) -> Journal {
    let dir = FsDirectory::open_with(root, DirAccess::Create)
        .await
        .expect("open bench directory");
    let (journal, _report) = MetadataJournal::open(&dir, config, RecoveryMode::TolerateTornTail)
        .await
        .expect("open journal");
    journal
}

/// Makes room for `ops` more appends without timing it: moves the snapshot watermark to the last
/// op and compacts. Called between timed stretches so that a long criterion sample never measures
/// a `Full` error or (unless it is the bench's subject) a compaction.
pub async fn ensure_capacity(journal: &Journal, ops: u64) {
    if journal.remaining_capacity() >= ops {
        return;
    }
    // Flush first: `last_op` must see every accepted append, written or still queued.
    journal.flush().await.expect("flush before watermark");
    if let Some(last) = journal.last_op() {
        journal
            .set_snapshot_op(last)
            .await
            .expect("set_snapshot_op");
        journal.compact().await.expect("compact");
    }
}

/// Appends one entry untimed and flushes it, so that the first segment exists (created,
/// preallocated, synced) before a timed run starts: a run then measures steady-state appends, and
/// the segment-creation cost (paid once per `segment_bytes`) is measured on its own.
pub async fn prime_journal(journal: &Journal, next_op: &mut u64, payload: &[u8]) {
    journal
        .append(*next_op, payload)
        .await
        .expect("priming append");
    journal.flush().await.expect("priming flush");
    *next_op += 1;
}

/// Appends `count` entries one after another starting at `*next_op`, timing only the appends
/// (the watermark moves needed for very long runs are excluded).
pub async fn timed_sequential_appends(
    journal: &Journal,
    next_op: &mut u64,
    count: u64,
    payload: &[u8],
    slot_count: u64,
) -> Duration {
    let mut elapsed = Duration::ZERO;
    let mut left = count;
    // Stretches of at most half the ring, so `ensure_capacity` always has room to make.
    let stretch_max = (slot_count / 2).max(1);
    while left > 0 {
        let stretch = left.min(stretch_max);
        ensure_capacity(journal, stretch).await;
        let started = Instant::now();
        for _ in 0..stretch {
            journal.append(*next_op, payload).await.expect("append");
            *next_op += 1;
        }
        elapsed += started.elapsed();
        left -= stretch;
    }
    elapsed
}

/// One group-commit batch: `appenders` tasks spawned on the current runtime, each appending one
/// entry, all joined. Returns when every append is durable.
pub async fn group_batch(journal: &Rc<Journal>, first_op: u64, appenders: u64, payload: &Rc<[u8]>) {
    let handles: Vec<_> = (0..appenders)
        .map(|i| {
            let journal = journal.clone();
            let payload = payload.clone();
            compio::runtime::spawn(async move { journal.append(first_op + i, &payload).await })
        })
        .collect();
    for handle in handles {
        handle
            .await
            .expect("appender task panicked")
            .expect("append");
    }
}

/// `batches` group-commit batches of `appenders` entries each; only the batches are timed.
pub async fn timed_group_batches(
    journal: &Rc<Journal>,
    next_op: &mut u64,
    batches: u64,
    appenders: u64,
    payload: &Rc<[u8]>,
    slot_count: u64,
) -> Duration {
    let mut elapsed = Duration::ZERO;
    let per_stretch = ((slot_count / 2) / appenders).max(1);
    let mut left = batches;
    while left > 0 {
        let stretch = left.min(per_stretch);
        ensure_capacity(journal, stretch * appenders).await;
        let started = Instant::now();
        for _ in 0..stretch {
            group_batch(journal, *next_op, appenders, payload).await;
            *next_op += appenders;
        }
        elapsed += started.elapsed();
        left -= stretch;
    }
    elapsed
}

/// Writes `count` entries of `payload` to a fresh journal at `root` without fsync, closes it.
/// Used to build recovery inputs (then read back from page cache).
pub async fn fill_journal(root: &Path, count: u64, payload: &[u8]) {
    let config = journal_config(count.next_power_of_two().max(1024), false);
    let journal = open_journal(root, config).await;
    for op in 1..=count {
        journal.append(op, payload).await.expect("append");
    }
    journal.close().await.expect("close");
}

/// Every file under `dir` (recursively), for the raw-read baseline and for byte counts.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

// ----------------------------------------------------------------------------------------------
// Engine helpers
// ----------------------------------------------------------------------------------------------

/// Engine configuration for benches: automatic checkpoints off (the benches trigger them), a ring
/// big enough for the loops.
pub fn engine_config(slot_count: u64, sync_on_append: bool) -> EngineConfig {
    EngineConfig {
        journal: journal_config(slot_count, sync_on_append),
        checkpoint_margin_ops: 0,
        ..EngineConfig::default()
    }
}

pub async fn open_engine(root: &Path, config: EngineConfig) -> KvEngine {
    let dir = FsDirectory::open_with(root, DirAccess::Create)
        .await
        .expect("open engine directory");
    let (engine, _report) = Engine::open(dir, config, KvStateMachine::new())
        .await
        .expect("open engine");
    engine
}

/// A `set` command for key number `key` (keys are fixed-width so the state's size is set by the
/// key count, not by the op count) with a value of `value_bytes`.
pub fn kv_set(key: u64, value_bytes: usize, out: &mut Vec<u8>) {
    out.clear();
    let key = format!("key-{key:012}");
    let value = payload(value_bytes);
    encode_set(key.as_bytes(), &value, out).expect("encode set");
}

/// Prepares and commits ops `*next_op..*next_op + count` as `set` commands cycling over
/// `keys` keys.
pub async fn engine_load(
    engine: &KvEngine,
    next_op: &mut u64,
    count: u64,
    keys: u64,
    value_bytes: usize,
) {
    let mut command = Vec::new();
    for _ in 0..count {
        let op = *next_op;
        kv_set(op % keys, value_bytes, &mut command);
        engine.append(op, &command).await.expect("engine append");
        engine.commit(op).await.expect("engine commit");
        *next_op += 1;
    }
}

// ----------------------------------------------------------------------------------------------
// Plain std::fs baselines
// ----------------------------------------------------------------------------------------------

/// Frames `payload` as the plain baselines do: length + crc32 + payload.
pub fn plain_frame(payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// The plain write-ahead log everyone writes first: a file opened for append, framed entries,
/// `fdatasync` after each write. The file grows with every write (no preallocation).
pub struct PlainLog {
    file: File,
    buf: Vec<u8>,
}

impl PlainLog {
    pub fn create(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(path)?;
        Ok(Self {
            file,
            buf: Vec::with_capacity(1 << 20),
        })
    }

    /// One entry, one `write`, one `fdatasync`.
    pub fn append_sync(&mut self, payload: &[u8]) -> io::Result<()> {
        self.append_group_sync(payload, 1)
    }

    /// `count` entries framed into one buffer, one `write`, one `fdatasync` (the plain loop's
    /// group commit).
    pub fn append_group_sync(&mut self, payload: &[u8], count: usize) -> io::Result<()> {
        self.buf.clear();
        for _ in 0..count {
            plain_frame(payload, &mut self.buf);
        }
        self.file.write_all(&self.buf)?;
        self.file.sync_data()
    }
}

/// The plain loop without fsync: framed entries through a 64 KiB `BufWriter` (one `write` per
/// 64 KiB), flushed to the OS at the end (no fsync, like keel's `sync_on_append = false`).
pub fn plain_nosync(path: &Path, payload: &[u8], count: u64) -> io::Result<Duration> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(path)?;
    let mut writer = BufWriter::with_capacity(64 << 10, file);
    let started = Instant::now();
    let len = (payload.len() as u32).to_le_bytes();
    for _ in 0..count {
        // Hashing per entry on purpose: the baseline pays the same checksum cost keel does.
        let crc = crc32fast::hash(payload).to_le_bytes();
        writer.write_all(&len)?;
        writer.write_all(&crc)?;
        writer.write_all(payload)?;
    }
    writer.flush()?;
    Ok(started.elapsed())
}

/// The disk's own rate: overwrite already-written (zero-filled) space and `fdatasync`, no
/// metadata change per write. This is the ceiling for one-entry-at-a-time durability.
pub struct RawOverwrite {
    file: File,
    len_bytes: u64,
    offset_bytes: u64,
    buf: Vec<u8>,
}

impl RawOverwrite {
    /// Creates `path` with `len_bytes` of written zeroes, synced, so later writes overwrite.
    pub fn create(path: &Path, len_bytes: u64) -> io::Result<Self> {
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(path)?;
        let zeroes = vec![0u8; 1 << 20];
        let mut written = 0u64;
        while written < len_bytes {
            let n = (len_bytes - written).min(zeroes.len() as u64) as usize;
            file.write_all(&zeroes[..n])?;
            written += n as u64;
        }
        file.sync_all()?;
        Ok(Self {
            file,
            len_bytes,
            offset_bytes: 0,
            buf: Vec::with_capacity(1 << 20),
        })
    }

    /// `count` framed entries in one `pwrite` at the next offset (wrapping), then `fdatasync`.
    pub fn write_group_sync(&mut self, payload: &[u8], count: usize) -> io::Result<()> {
        self.buf.clear();
        for _ in 0..count {
            plain_frame(payload, &mut self.buf);
        }
        let len = self.buf.len() as u64;
        if self.offset_bytes + len > self.len_bytes {
            self.offset_bytes = 0;
        }
        self.file.write_all_at(&self.buf, self.offset_bytes)?;
        self.offset_bytes += len;
        self.file.sync_data()
    }
}

/// Writes `count` framed entries to `path` (no fsync): the plain recovery input.
pub fn plain_fill(path: &Path, payload: &[u8], count: u64) -> io::Result<()> {
    plain_nosync(path, payload, count).map(|_| ())
}

/// Plain recovery: reads `path` with 64 KiB reads, parses every frame and checks every crc.
/// Returns (entries, payload bytes). Stops at the first frame that does not check (a torn tail).
pub fn plain_recover(path: &Path) -> io::Result<(u64, u64)> {
    let mut file = File::open(path)?;
    let mut buf = vec![0u8; READ_CHUNK_BYTES * 2];
    let (mut start, mut end) = (0usize, 0usize);
    let (mut entries, mut payload_bytes) = (0u64, 0u64);
    loop {
        while end - start >= PLAIN_FRAME_HEADER_BYTES {
            let header = &buf[start..start + PLAIN_FRAME_HEADER_BYTES];
            let len = u32::from_le_bytes(header[..4].try_into().unwrap()) as usize;
            let crc = u32::from_le_bytes(header[4..].try_into().unwrap());
            let frame_end = start + PLAIN_FRAME_HEADER_BYTES + len;
            if frame_end > end {
                break;
            }
            if crc32fast::hash(&buf[start + PLAIN_FRAME_HEADER_BYTES..frame_end]) != crc {
                return Ok((entries, payload_bytes));
            }
            entries += 1;
            payload_bytes += len as u64;
            start = frame_end;
        }
        buf.copy_within(start..end, 0);
        end -= start;
        start = 0;
        if buf.len() < end + READ_CHUNK_BYTES {
            buf.resize(end + READ_CHUNK_BYTES, 0);
        }
        let n = file.read(&mut buf[end..end + READ_CHUNK_BYTES])?;
        if n == 0 {
            return Ok((entries, payload_bytes));
        }
        end += n;
    }
}

/// The floor for recovery: read every byte of `paths` with `chunk_bytes` reads and crc32 it, no
/// parsing. Returns the bytes read.
pub fn raw_read_crc(paths: &[PathBuf], chunk_bytes: usize) -> io::Result<u64> {
    let mut buf = vec![0u8; chunk_bytes];
    let mut total = 0u64;
    let mut hasher = crc32fast::Hasher::new();
    for path in paths {
        let mut file = File::open(path)?;
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            total += n as u64;
        }
    }
    std::hint::black_box(hasher.finalize());
    Ok(total)
}
