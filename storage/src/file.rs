//! FileStorage: one real file, driven through compio (io_uring) by the single core that owns it.
//!
//! This module owns the positional I/O on a `compio::fs::File`, the cached logical length that
//! lets appends reserve offsets without an await, and preallocation. It must never be shared
//! across threads (the type is `!Send`/`!Sync`), never hold a reference into its `UnsafeCell`
//! across an await, and never write through a read-only handle.
//!
//! Reads past the end: `read_at` at or past the end of the file returns `Ok(0)`; a read that
//! straddles the end returns the bytes up to the end (a short read). `read_exact_at` turns either
//! into `UnexpectedEof`.

use std::cell::{Cell, UnsafeCell};
use std::io;
use std::marker::PhantomData;
use std::os::fd::AsRawFd;

use compio::buf::{BufResult, IntoInner, IoBuf, IoBufMut};
use compio::fs::File;
use compio::io::{AsyncReadAt, AsyncWriteAt};

use crate::Storage;

/// Zero-fill preallocation writes at most this many bytes per write, so the device never holds a
/// long zero write in front of a journal group's (whole 8 MiB steps in one write measured the
/// same for groups, BENCHMARKS.md).
const ZERO_FILL_CHUNK_BYTES: usize = 1 << 20;

/// What every zero-fill writes from: a static in `.bss`, so no fill allocates, and reading it
/// costs only the kernel's shared zero page. Aligned for `O_DIRECT`, so that a block-aligned fill
/// behind a direct descriptor goes to the device directly, never through the page cache (where a
/// written-back zero page could land after a group's direct write to the same block).
static ZEROES: ZeroChunk = ZeroChunk([0; ZERO_FILL_CHUNK_BYTES]);

/// [`ZEROES`]' type: a chunk of zeroes at a [`crate::DIRECT_ALIGN_BYTES`] boundary.
#[repr(C, align(4096))]
struct ZeroChunk([u8; ZERO_FILL_CHUNK_BYTES]);

const _: () = assert!(std::mem::align_of::<ZeroChunk>() == crate::DIRECT_ALIGN_BYTES);
const _: () = assert!(ZERO_FILL_CHUNK_BYTES.is_multiple_of(crate::DIRECT_ALIGN_BYTES));

/// How a [`FileStorage`] behaves beyond plain positional I/O.
#[derive(Debug, Clone, Default)]
pub struct FileOptions {
    /// When set, [`Storage::preallocate`] reserves blocks with `fallocate(2)` (falling back to
    /// zero-fill where the file system does not support it). When clear, it always zero-fills.
    /// Default false. (Not `JournalConfig::preallocate`, which decides whether the journal
    /// preallocates at all; this decides how.)
    pub use_fallocate: bool,
}

/// A file used by one core: positional reads and writes, fdatasync, a cached length.
///
/// `!Send` and `!Sync`: the `UnsafeCell` below is sound only because exactly one thread ever
/// touches it (see the SAFETY comments).
pub struct FileStorage {
    /// The compio file. Interior mutability so that [`FileStorage::close`] can take the file out
    /// while every other operation works through `&self`.
    file: UnsafeCell<Option<File>>,
    /// Logical length: max of the opened length, every reserved or completed write's end, and the
    /// last truncate.
    len_bytes: Cell<u64>,
    read_only: bool,
    /// Opened with `O_DSYNC`: every completed write is durable.
    write_through: bool,
    /// A second descriptor, `O_DIRECT | O_DSYNC`, that aligned writes go through (see
    /// [`crate::Directory::open_file_direct`]); closed when the handle is dropped.
    direct: Option<File>,
    /// The file system refused a direct write (`EINVAL`: it accepted `O_DIRECT` at open but not
    /// the write, as some FUSE and network file systems do): every later write, and
    /// [`Storage::direct_alignment`], goes through the page cache instead.
    direct_refused: Cell<bool>,
    /// Tests: the file system refuses every direct write.
    #[cfg(test)]
    refuse_direct_writes: Cell<bool>,
    options: FileOptions,
    /// For error messages.
    path: String,
    /// Makes the type `!Send` and `!Sync`: the cell above relies on a single thread.
    _single_thread: PhantomData<*const ()>,
}

impl std::fmt::Debug for FileStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileStorage")
            .field("path", &self.path)
            .field("len_bytes", &self.len_bytes.get())
            .field("read_only", &self.read_only)
            .finish()
    }
}

impl FileStorage {
    /// Wraps an open compio file. `len_bytes` is its current length on disk.
    pub fn from_file(
        file: File,
        len_bytes: u64,
        read_only: bool,
        options: FileOptions,
        path: String,
    ) -> Self {
        Self {
            file: UnsafeCell::new(Some(file)),
            len_bytes: Cell::new(len_bytes),
            read_only,
            write_through: false,
            direct: None,
            direct_refused: Cell::new(false),
            #[cfg(test)]
            refuse_direct_writes: Cell::new(false),
            options,
            path,
            _single_thread: PhantomData,
        }
    }

    /// Marks the handle as opened with `O_DSYNC` (see [`Storage::writes_are_durable`]), with its
    /// `O_DIRECT` descriptor for aligned writes when it has one.
    pub(crate) fn with_write_through(mut self, write_through: bool, direct: Option<File>) -> Self {
        assert!(
            write_through || direct.is_none(),
            "a direct descriptor is write-through too"
        );
        self.write_through = write_through;
        self.direct = direct;
        self
    }

    /// The path this file was opened at (for messages).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// True when this handle refuses writes, truncates and syncs.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// A handle to the file that the caller may hold across an await.
    ///
    /// compio's `File` is a reference-counted fd, so cloning is cheap and the clone keeps the fd
    /// open for as long as an operation is in flight, even if [`FileStorage::close`] runs meanwhile.
    fn file(&self) -> io::Result<File> {
        // SAFETY: `FileStorage` is `!Send`/`!Sync`, so only this thread can reach the cell. The
        // shared reference lives only inside this synchronous expression (we clone out of it before
        // returning), and the only `&mut` to the cell is taken in `close`, which is also synchronous
        // with respect to this function: the two can never overlap.
        let file = unsafe { &*self.file.get() };
        file.clone().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotConnected,
                format!("{}: file handle already closed", self.path),
            )
        })
    }

    fn check_writable(&self, what: &str) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{}: {what} on a read-only handle", self.path),
            ));
        }
        Ok(())
    }

    /// Closes the file, reporting any error the close itself returns. Operations still in flight
    /// hold their own reference to the fd, so the close completes once they have finished (compio
    /// closes an fd when its last reference goes); later operations on this handle fail with
    /// `NotConnected`.
    pub async fn close(&self) -> io::Result<()> {
        // SAFETY: single thread (`!Send`/`!Sync`); the `&mut` exists only for the `take()` and ends
        // before the await below; no other reference into the cell is alive at that point, because
        // every other accessor clones out of the cell within a synchronous section.
        let file = unsafe { (*self.file.get()).take() };
        match file {
            Some(file) => file.close().await,
            None => Ok(()),
        }
    }

    /// Ensures the file is at least `len_bytes` long with every new byte reading as zero, and
    /// (when possible) with its blocks allocated, so later writes overwrite instead of extending.
    ///
    /// With [`FileOptions::use_fallocate`] set this uses `fallocate(2)` on compio's blocking pool;
    /// otherwise (or if the file system refuses) it writes zeroes, at most 1 MiB a write. The range is
    /// claimed in the cached length before the first await; if preallocation then fails, the cached
    /// length keeps the claim (reopen the file to read its real length).
    pub async fn preallocate_file(&self, len_bytes: u64) -> io::Result<()> {
        self.check_writable("preallocate")?;
        let start_bytes = self.len_bytes.get();
        if len_bytes <= start_bytes {
            return Ok(());
        }
        // Claim the whole range synchronously, like `reserve_append`: an append reserved while
        // the zero-fill below is in flight must land after it, not inside it where a later zero
        // chunk would overwrite it.
        self.len_bytes.set(len_bytes);
        if self.options.use_fallocate {
            let file = self.file()?;
            let fd = file.as_raw_fd();
            let grow_bytes = len_bytes - start_bytes;
            // `file` stays alive (and the fd open) until the blocking call has returned, because
            // we await the join handle before dropping it.
            let result = compio::runtime::spawn_blocking(move || {
                // SAFETY: `fd` is a valid open descriptor for the duration of the call (see above);
                // fallocate has no memory-safety preconditions beyond that.
                let rc = unsafe {
                    libc::fallocate(fd, 0, start_bytes as libc::off_t, grow_bytes as libc::off_t)
                };
                if rc == 0 {
                    Ok(())
                } else {
                    Err(io::Error::last_os_error())
                }
            })
            .await
            .map_err(|_| io::Error::other("fallocate task panicked"))?;
            drop(file);
            match result {
                Ok(()) => return Ok(()),
                Err(error) if error.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                    tracing::debug!(path = %self.path, "fallocate unsupported; zero-filling");
                }
                Err(error) => return Err(error),
            }
        }
        let mut offset_bytes = start_bytes;
        while offset_bytes < len_bytes {
            let chunk_bytes = (len_bytes - offset_bytes).min(ZERO_FILL_CHUNK_BYTES as u64) as usize;
            let BufResult(result, _) = self
                .write_all_at(offset_bytes, &ZEROES.0[..chunk_bytes])
                .await;
            result?;
            offset_bytes += chunk_bytes as u64;
        }
        Ok(())
    }
}

impl FileStorage {
    /// The `O_DIRECT` descriptor, unless there is none or the file system refused a direct write.
    fn direct_file(&self) -> Option<&File> {
        self.direct.as_ref().filter(|_| !self.direct_refused.get())
    }

    /// One write through the `O_DIRECT` descriptor (in this crate's tests, refused with `EINVAL`
    /// when [`FileStorage::refuse_direct_writes`] asked for it, as some file systems do).
    async fn write_direct<B: IoBuf>(
        &self,
        mut direct: &File,
        buf: B,
        offset_bytes: u64,
    ) -> BufResult<usize, B> {
        #[cfg(test)]
        if self.refuse_direct_writes.get() {
            return BufResult(Err(io::Error::from_raw_os_error(libc::EINVAL)), buf);
        }
        direct.write_at(buf, offset_bytes).await
    }

    /// `sync_file_range(flags)` over the range, on compio's blocking pool (it can wait for the
    /// device), through a duplicate of the descriptor the pool thread owns for the call.
    async fn sync_range(&self, offset_bytes: u64, len_bytes: u64, flags: u32) -> io::Result<()> {
        use std::os::fd::{FromRawFd, OwnedFd};
        let file = self.file()?;
        // SAFETY: dup only reads the fd, which `file` keeps open for the call; on success the
        // new descriptor is owned by nobody else, so OwnedFd may take it (and close it).
        let fd = unsafe { libc::dup(file.as_raw_fd()) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: see above: `fd` is a fresh descriptor this function alone owns.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let result = compio::runtime::spawn_blocking(move || {
            // SAFETY: sync_file_range only reads its integer arguments; `owned` keeps the
            // descriptor open until the call returns.
            let rc = unsafe {
                libc::sync_file_range(
                    owned.as_raw_fd(),
                    offset_bytes as libc::off64_t,
                    len_bytes as libc::off64_t,
                    flags,
                )
            };
            if rc == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        })
        .await;
        match result {
            Ok(result) => result,
            Err(_) => Err(io::Error::other("write-back task panicked")),
        }
    }
}

impl Storage for FileStorage {
    async fn write_back(&self, offset_bytes: u64, len_bytes: u64) -> io::Result<()> {
        let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
            | libc::SYNC_FILE_RANGE_WRITE
            | libc::SYNC_FILE_RANGE_WAIT_AFTER;
        self.sync_range(offset_bytes, len_bytes, flags).await
    }

    async fn start_write_back(&self, offset_bytes: u64, len_bytes: u64) -> io::Result<()> {
        // WRITE alone neither waits for write-back nor checks (and so consumes) the file's
        // write-back error: that stays for the fsync that makes these bytes durable.
        self.sync_range(offset_bytes, len_bytes, libc::SYNC_FILE_RANGE_WRITE)
            .await
    }

    fn writes_are_durable(&self) -> bool {
        self.write_through
    }

    fn direct_alignment(&self) -> Option<usize> {
        self.direct_file().map(|_| crate::DIRECT_ALIGN_BYTES)
    }

    fn advise_sequential(&self) {
        let Ok(file) = self.file() else { return };
        // SAFETY: posix_fadvise only reads its integer arguments; `file` keeps the fd open for
        // the call. A failure only means the kernel keeps its default readahead: ignored.
        let _ = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_SEQUENTIAL) };
    }

    fn cached(&self, offset_bytes: u64) -> Option<bool> {
        let file = self.file().ok()?;
        let offset = libc::off_t::try_from(offset_bytes).ok()?;
        let mut byte = 0u8;
        let iov = libc::iovec {
            iov_base: std::ptr::addr_of_mut!(byte).cast(),
            iov_len: 1,
        };
        // SAFETY: `iov` names one writable byte on this stack frame, alive for the call; `file`
        // keeps the fd open. RWF_NOWAIT makes the read fail with EAGAIN instead of waiting for
        // the device, so the call never blocks the core's thread on I/O.
        let read = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, offset, libc::RWF_NOWAIT) };
        if read >= 0 {
            return Some(true);
        }
        match io::Error::last_os_error().raw_os_error() {
            Some(libc::EAGAIN) => Some(false),
            // EOPNOTSUPP (a file system without RWF_NOWAIT) and anything else: cannot tell.
            _ => None,
        }
    }

    async fn read_at<B: IoBufMut>(&self, offset_bytes: u64, buf: B) -> BufResult<usize, B> {
        let file = match self.file() {
            Ok(file) => file,
            Err(error) => return BufResult(Err(error), buf),
        };
        // The kernel returns 0 at/after EOF and a short count across it: the documented behaviour.
        file.read_at(buf, offset_bytes).await
    }

    async fn write_at<B: IoBuf>(&self, offset_bytes: u64, buf: B) -> BufResult<usize, B> {
        if let Err(error) = self.check_writable("write") {
            return BufResult(Err(error), buf);
        }
        let file = match self.file() {
            Ok(file) => file,
            Err(error) => return BufResult(Err(error), buf),
        };
        let direct = self
            .direct_file()
            .filter(|_| crate::direct_aligned(offset_bytes, buf.as_init()));
        // Both descriptors write through (O_DSYNC): whichever takes the write, it is durable
        // when it completes. The kernel keeps the page cache coherent with the direct write.
        let BufResult(result, buf) = match direct {
            Some(direct) => match self.write_direct(direct, buf, offset_bytes).await {
                BufResult(Err(error), buf) if error.raw_os_error() == Some(libc::EINVAL) => {
                    // Nothing was written; the same positional write through the page cache is
                    // the plain write-through path, so retrying it changes no outcome.
                    tracing::warn!(path = %self.path, %error, "direct write refused; writing through the page cache from now on");
                    self.direct_refused.set(true);
                    (&file).write_at(buf, offset_bytes).await
                }
                other => other,
            },
            None => (&file).write_at(buf, offset_bytes).await,
        };
        if let Ok(written_bytes) = result {
            let end_bytes = offset_bytes + written_bytes as u64;
            self.len_bytes.set(self.len_bytes.get().max(end_bytes));
        }
        BufResult(result, buf)
    }

    async fn truncate(&self, len_bytes: u64) -> io::Result<()> {
        self.check_writable("truncate")?;
        let file = self.file()?;
        file.set_len(len_bytes).await?;
        self.len_bytes.set(len_bytes);
        Ok(())
    }

    async fn sync(&self) -> io::Result<()> {
        self.check_writable("sync")?;
        let file = self.file()?;
        file.sync_data().await
    }

    fn len(&self) -> u64 {
        self.len_bytes.get()
    }

    fn reserve_append(&self, len_bytes: u64) -> u64 {
        // Synchronous: no await between reading and bumping the length, so on one thread no two
        // reservations can overlap.
        let offset_bytes = self.len_bytes.get();
        self.len_bytes.set(offset_bytes + len_bytes);
        offset_bytes
    }

    async fn write_all_at<B: IoBuf>(&self, offset_bytes: u64, buf: B) -> BufResult<(), B> {
        write_all_at_impl(self, offset_bytes, buf).await
    }

    async fn read_exact_at(&self, offset_bytes: u64, len_bytes: usize) -> io::Result<Vec<u8>> {
        read_exact_at_impl(self, offset_bytes, len_bytes).await
    }

    async fn preallocate(&self, len_bytes: u64) -> io::Result<()> {
        self.preallocate_file(len_bytes).await
    }
}

/// `write_all_at` over any `write_at`: loops over short writes, hands the caller's buffer back.
pub(crate) async fn write_all_at_impl<S: Storage, B: IoBuf>(
    storage: &S,
    offset_bytes: u64,
    buf: B,
) -> BufResult<(), B> {
    let total_bytes = buf.as_init().len();
    let mut written_bytes = 0usize;
    let mut buf = buf;
    while written_bytes < total_bytes {
        let slice = buf.slice(written_bytes..);
        let BufResult(result, slice) = storage
            .write_at(offset_bytes + written_bytes as u64, slice)
            .await;
        buf = slice.into_inner();
        match result {
            Ok(0) => {
                return BufResult(
                    Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "write returned 0 bytes before the buffer was written",
                    )),
                    buf,
                )
            }
            Ok(n) => written_bytes += n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return BufResult(Err(error), buf),
        }
    }
    BufResult(Ok(()), buf)
}

/// `read_exact_at` over any `read_at`: loops over short reads; `UnexpectedEof` at the end.
pub(crate) async fn read_exact_at_impl<S: Storage>(
    storage: &S,
    offset_bytes: u64,
    len_bytes: usize,
) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(len_bytes);
    while out.len() < len_bytes {
        let want_bytes = len_bytes - out.len();
        let chunk = Vec::with_capacity(want_bytes);
        let BufResult(result, chunk) = storage
            .read_at(offset_bytes + out.len() as u64, chunk)
            .await;
        match result {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "wanted {len_bytes} bytes at offset {offset_bytes}, the file ends after {}",
                        out.len()
                    ),
                ))
            }
            Ok(n) => out.extend_from_slice(&chunk[..n.min(want_bytes)]),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(out)
}

/// Compile-time proof that `FileStorage` is neither `Send` nor `Sync`: if it were, the
/// `AmbiguousIfImpl<_>` lookups below would find two impls and fail to compile.
const _: () = {
    trait AmbiguousIfImpl<A> {
        fn check() {}
    }
    impl<T: ?Sized> AmbiguousIfImpl<()> for T {}
    struct IsSend;
    impl<T: ?Sized + Send> AmbiguousIfImpl<IsSend> for T {}
    struct IsSync;
    impl<T: ?Sized + Sync> AmbiguousIfImpl<IsSync> for T {}
    let _ = <FileStorage as AmbiguousIfImpl<_>>::check;
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DirAccess, Directory, FsDirectory, OpenMode, DIRECT_ALIGN_BYTES};

    /// A file system that takes `O_DIRECT` at open but refuses the write (`EINVAL`): the aligned
    /// write goes through the page cache instead, succeeds, reads back, and the handle stops
    /// offering direct writes (so the journal stops aligning for it).
    #[compio::test]
    async fn a_refused_direct_write_falls_back_to_the_page_cache() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = FsDirectory::open_with(tmp.path(), DirAccess::Existing)
            .await
            .unwrap();
        let file = dir.open_file_direct("seg", OpenMode::Create).await.unwrap();
        if file.direct_alignment().is_none() {
            // This file system (a tmpfs /tmp, say) refused O_DIRECT at open: nothing to fall
            // back from.
            return;
        }
        file.refuse_direct_writes.set(true);
        let mut buf: Vec<u8> = Vec::with_capacity(2 * DIRECT_ALIGN_BYTES);
        let start = buf.as_ptr().align_offset(DIRECT_ALIGN_BYTES);
        buf.resize(start, 0);
        buf.extend((0..DIRECT_ALIGN_BYTES).map(|i| i as u8));
        let data = buf[start..].to_vec();
        assert!(
            crate::direct_aligned(0, &buf[start..]),
            "the write takes the direct path"
        );
        let BufResult(result, _) = file
            .write_all_at(0, buf.slice(start..start + DIRECT_ALIGN_BYTES))
            .await;
        result.unwrap();
        assert_eq!(
            file.direct_alignment(),
            None,
            "no longer offers direct writes"
        );
        assert_eq!(
            file.read_exact_at(0, DIRECT_ALIGN_BYTES).await.unwrap(),
            data
        );
    }
}
