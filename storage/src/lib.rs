//! keel-storage: the I/O seam every byte of keel goes through.
//!
//! This crate owns positional file I/O ([`Storage`]) and the directory operations around it
//! ([`Directory`]): create, list, rename, remove and fsync. It has two implementations of both:
//! [`FileStorage`]/[`FsDirectory`] on compio (io_uring) for production, and
//! [`MemStorage`]/[`MemDirectory`] in memory, with a seeded crash model and fault injection, for
//! deterministic simulation. On top of the two traits, [`create_durable`], [`create_unique`],
//! [`atomic_replace`] and [`open_dir_durable`] are the one copy of each durability mechanism
//! (fsync order, temp-and-rename) every upper layer uses.
//!
//! It must never know what an entry, a segment or a snapshot is: upper layers give it offsets and
//! bytes. It must never be `Send`: one engine lives on one core, and the types here rely on that
//! (see the `SAFETY` argument in `file.rs`).
//!
//! Buffers follow compio's owned-buffer convention: a buffer is moved into the call and handed back
//! in a [`BufResult`], because io_uring owns the memory while the kernel works on it. A read fills
//! the buffer from index 0 up to its capacity and sets its length to the bytes read.
//!
//! # Example
//!
//! What a power cut keeps: a file made with [`create_durable`] survives [`MemFs::crash`], while
//! a write nobody fsynced may not.
//!
//! ```
//! use keel_storage::{create_durable, BufResult, Directory, MemFs, OpenMode, Storage};
//!
//! compio::runtime::Runtime::new().unwrap().block_on(async {
//!     let fs = MemFs::new(7); // the seed decides what a crash keeps of unsynced writes
//!     let root = fs.root();
//!     create_durable(&root, "kept", b"durable".to_vec()).await.unwrap();
//!     let scratch = root.open_file("kept", OpenMode::Existing).await.unwrap();
//!     let BufResult(written, _) = scratch.write_all_at(7, b" and more".to_vec()).await;
//!     written.unwrap(); // not fsynced: the crash may drop, tear or keep it
//!
//!     let report = fs.crash();
//!     assert_eq!(report.writes_kept + report.writes_lost + report.writes_torn, 1);
//!     // Handles from before the crash are stale; the durable bytes are there.
//!     let file = fs.root().open_file("kept", OpenMode::Existing).await.unwrap();
//!     assert_eq!(file.read_exact_at(0, 7).await.unwrap(), b"durable");
//! });
//! ```

#![allow(async_fn_in_trait)]
#![deny(missing_docs)]

mod dir;
mod durable;
mod file;
mod memory;

use std::io;

pub use compio::buf::{BufResult, IoBuf, IoBufMut};
pub use dir::{DirAccess, FsDirectory, FsLock};
pub use durable::{
    atomic_replace, atomic_replace_stream, atomic_replace_with, create_durable, create_unique,
    is_temp_of, open_dir_durable, write_back_paced, DurableError, DurableStage, ReplaceError,
    ReplaceSource, ReplaceStage, TEMP_SUFFIX,
};
pub use file::{FileOptions, FileStorage};

/// The alignment of a write that bypasses the page cache ([`Directory::open_file_direct`]): the
/// device's physical sector size here (4 KiB), the largest logical block size Linux supports for
/// `O_DIRECT` on common devices, so one value works everywhere.
pub const DIRECT_ALIGN_BYTES: usize = 4096;

/// True when a write of `data` at `offset_bytes` may bypass the page cache: offset, length and
/// address are all multiples of [`DIRECT_ALIGN_BYTES`] (what `O_DIRECT` requires).
pub fn direct_aligned(offset_bytes: u64, data: &[u8]) -> bool {
    let align = DIRECT_ALIGN_BYTES;
    !data.is_empty()
        && offset_bytes.is_multiple_of(align as u64)
        && data.len().is_multiple_of(align)
        && (data.as_ptr() as usize).is_multiple_of(align)
}

/// How a handle's writes reach the device: which of the three `Directory::open_file*` methods
/// [`Directory::open_file_as`] calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// Through the page cache; durable at `sync`.
    Buffered,
    /// `O_DSYNC`: durable when each write completes.
    WriteThrough,
    /// `O_DSYNC`, and aligned writes `O_DIRECT` too.
    Direct,
}
pub use memory::{
    CrashEvent, CrashReport, FaultConfig, FaultCounts, FaultKind, FaultOp, FaultRule, FaultTrigger,
    MemDirectory, MemFs, MemLock, MemStorage, ProcessCrashReport, WriteOutcome, SECTOR_BYTES,
};

/// Lets every other runnable task on this core run once before the caller continues: `Pending`
/// exactly once, waking itself. The simulator uses it where an io_uring submission would yield;
/// the journal uses it to let a burst of appenders queue before one of them flushes.
pub async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            std::task::Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    })
    .await
}

/// Positional I/O on one file, used from one thread.
///
/// `len()` is the logical length as this handle knows it: the maximum of the opened length, every
/// completed or reserved write's end, and the last truncate. It is cached so that
/// [`Storage::reserve_append`] can hand out offsets without an await.
pub trait Storage {
    /// Reads into `buf` (from its index 0 up to its capacity) starting at `offset_bytes`.
    /// Returns the number of bytes read; `0` at or past the end of the file.
    async fn read_at<B: IoBufMut>(&self, offset_bytes: u64, buf: B) -> BufResult<usize, B>;

    /// Writes `buf` at `offset_bytes`; may write fewer bytes than given (see [`Storage::write_all_at`]).
    async fn write_at<B: IoBuf>(&self, offset_bytes: u64, buf: B) -> BufResult<usize, B>;

    /// Sets the file's length to `len_bytes` (shrinking or zero-extending).
    async fn truncate(&self, len_bytes: u64) -> io::Result<()>;

    /// Makes every completed write and truncate durable (fdatasync).
    async fn sync(&self) -> io::Result<()>;

    /// The cached logical length (see the trait docs).
    fn len(&self) -> u64;

    /// True when [`Storage::len`] is zero.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reserves `len_bytes` at the current end and returns their offset, synchronously.
    ///
    /// Two appends interleaved on one core must never receive the same offset, so the offset is
    /// taken before the first await of the write that fills it.
    fn reserve_append(&self, len_bytes: u64) -> u64;

    /// Writes all of `buf` at `offset_bytes`, looping over short writes.
    async fn write_all_at<B: IoBuf>(&self, offset_bytes: u64, buf: B) -> BufResult<(), B>;

    /// Reads exactly `len_bytes` at `offset_bytes`; `UnexpectedEof` if the file ends first.
    async fn read_exact_at(&self, offset_bytes: u64, len_bytes: usize) -> io::Result<Vec<u8>>;

    /// Ensures the file is at least `len_bytes` long, every new byte reading as zero, so that later
    /// writes inside it overwrite instead of extending. Never shrinks the file.
    ///
    /// The default zero-extends with [`Storage::truncate`]; [`FileStorage`] may allocate blocks
    /// with `fallocate(2)` or write zeroes (see [`FileOptions`]), and claims the range in its cached
    /// length before its first await, so appends reserved meanwhile land after it. Behind a direct
    /// descriptor ([`Storage::direct_alignment`]) a range that starts and ends on a block boundary
    /// is written past the page cache, as aligned direct writes are.
    async fn preallocate(&self, len_bytes: u64) -> io::Result<()> {
        if len_bytes > self.len() {
            self.truncate(len_bytes).await?;
        }
        Ok(())
    }

    /// Writes the range's dirty pages back to the device and waits for that, without making
    /// anything durable (no cache flush, no metadata: `sync_file_range`, not a sync). A pacing
    /// hint for large writes, so they never queue much writeback ahead of other durable writes;
    /// [`FileStorage`] waits on compio's blocking pool, off the core. The default does nothing.
    async fn write_back(&self, offset_bytes: u64, len_bytes: u64) -> io::Result<()> {
        let _ = (offset_bytes, len_bytes);
        Ok(())
    }

    /// Starts writing the range's dirty pages back to the device and returns without waiting for
    /// them (`sync_file_range(SYNC_FILE_RANGE_WRITE)` on the blocking pool; it returns once the
    /// writes are queued). Nothing is made durable and no write error is consumed: the next
    /// fsync reports what this started, as it would have reported the kernel's own write-back.
    /// So a later fsync finds less to write. The default does nothing.
    async fn start_write_back(&self, offset_bytes: u64, len_bytes: u64) -> io::Result<()> {
        let _ = (offset_bytes, len_bytes);
        Ok(())
    }

    /// True when every completed write through this handle is already durable (opened with
    /// [`Directory::open_file_write_through`]): the writer need not fsync what it wrote here.
    fn writes_are_durable(&self) -> bool {
        false
    }

    /// The alignment (of offset, length and buffer address) at which a write through this handle
    /// bypasses the page cache (opened with [`Directory::open_file_direct`] where the file system
    /// supports `O_DIRECT`): a writer that can align its writes gets one device write per call,
    /// without a kernel worker copying into the page cache first. `None` otherwise (the default).
    fn direct_alignment(&self) -> Option<usize> {
        None
    }

    /// Tells the storage that the file will be read from start to end, once (recovery's scan).
    /// A hint: [`FileStorage`] widens the kernel's readahead for the file
    /// (`POSIX_FADV_SEQUENTIAL`), so a cold cache is read ahead of the scan in larger steps; the
    /// default does nothing.
    fn advise_sequential(&self) {}

    /// Whether the byte at `offset_bytes` can be read without waiting for the device: `Some(true)`
    /// when it is in memory (or past the end), `Some(false)` when a read would wait for the disk,
    /// `None` when the storage cannot tell (the default). A hint for choosing a read shape: by the
    /// time the read runs the answer may have changed.
    fn cached(&self, offset_bytes: u64) -> Option<bool> {
        let _ = offset_bytes;
        None
    }

    /// Appends `buf` at an offset reserved synchronously; returns that offset.
    async fn append<B: IoBuf>(&self, buf: B) -> BufResult<u64, B> {
        let offset_bytes = self.reserve_append(buf.as_init().len() as u64);
        let BufResult(result, buf) = self.write_all_at(offset_bytes, buf).await;
        BufResult(result.map(|()| offset_bytes), buf)
    }
}

/// How a file is opened through a [`Directory`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Read-only; writes, truncates and syncs fail with `PermissionDenied`.
    ReadOnly,
    /// Read-write; the file must exist.
    Existing,
    /// Read-write; created empty if missing.
    Create,
    /// Read-write; fails with `AlreadyExists` if the file exists.
    CreateNew,
}

/// One directory, the seam for every namespace operation keel performs.
///
/// A file created or renamed here is durable only after [`Directory::sync`]; the simulator's crash
/// model reverts unsynced namespace changes, exactly the window a real power cut exposes.
pub trait Directory: Clone + Sized + 'static {
    /// The file handle this directory opens.
    type File: Storage;

    /// An exclusive lock on a file of this directory, released when dropped (or when the process
    /// dies, for the real file system: `flock`).
    type Lock;

    /// Opens (or creates, per `mode`) the file `name` in this directory.
    async fn open_file(&self, name: &str, mode: OpenMode) -> io::Result<Self::File>;

    /// Opens `name` like [`Directory::open_file`], with every write through the handle durable
    /// when it completes (`O_DSYNC`: the write and its fdatasync in one operation, one round
    /// trip instead of two). [`Storage::writes_are_durable`] is true on the handle.
    async fn open_file_write_through(&self, name: &str, mode: OpenMode) -> io::Result<Self::File>;

    /// Opens `name` like [`Directory::open_file_write_through`] (every completed write durable),
    /// where writes aligned to [`DIRECT_ALIGN_BYTES`] (offset, length and buffer address) also
    /// bypass the page cache (`O_DIRECT | O_DSYNC`); unaligned writes still go through it, with
    /// `O_DSYNC`. Reads always use the page cache. [`Storage::direct_alignment`] says whether the
    /// handle got it; where the file system refuses `O_DIRECT` (tmpfs) the handle is plain
    /// write-through. The default is [`Directory::open_file_write_through`].
    async fn open_file_direct(&self, name: &str, mode: OpenMode) -> io::Result<Self::File> {
        self.open_file_write_through(name, mode).await
    }

    /// Opens `name` with the open `writes` names ([`Directory::open_file`],
    /// [`Directory::open_file_write_through`] or [`Directory::open_file_direct`]); a read-only
    /// handle is always plain, as it writes nothing.
    async fn open_file_as(
        &self,
        name: &str,
        mode: OpenMode,
        writes: WriteMode,
    ) -> io::Result<Self::File> {
        match (writes, mode) {
            (_, OpenMode::ReadOnly) | (WriteMode::Buffered, _) => self.open_file(name, mode).await,
            (WriteMode::WriteThrough, _) => self.open_file_write_through(name, mode).await,
            (WriteMode::Direct, _) => self.open_file_direct(name, mode).await,
        }
    }

    /// Opens the subdirectory `name`, creating it when `create` is set.
    async fn open_dir(&self, name: &str, create: bool) -> io::Result<Self>;

    /// Names of the entries (files and subdirectories) in this directory, sorted.
    async fn list(&self) -> io::Result<Vec<String>>;

    /// True if `name` exists in this directory.
    async fn exists(&self, name: &str) -> io::Result<bool>;

    /// Renames `from` to `to` within this directory, replacing `to` if it exists.
    async fn rename(&self, from: &str, to: &str) -> io::Result<()>;

    /// Removes the file `name`.
    async fn remove_file(&self, name: &str) -> io::Result<()>;

    /// Makes the directory's entries durable (fsync of the directory).
    async fn sync(&self) -> io::Result<()>;

    /// Takes the exclusive lock on `name` (created if missing; a read-only directory never
    /// creates it) without waiting; `WouldBlock` with a message naming the path when another
    /// holder has it (another process or this one).
    ///
    /// The lock holds whatever happens to the file `name` meanwhile: removing or replacing it
    /// under a live holder does not let a second locker in. ([`FsDirectory`] also locks the
    /// directory itself, so there at most one lock per directory is held at a time, whatever the
    /// name.)
    async fn lock(&self, name: &str) -> io::Result<Self::Lock>;

    /// True when this directory was opened read-only: every mutation fails.
    fn is_read_only(&self) -> bool;

    /// A printable location, for error messages (`/data/shard-0/journal`, `mem:/journal`).
    fn display_path(&self) -> String;
}
