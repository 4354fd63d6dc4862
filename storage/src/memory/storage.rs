//! [`MemStorage`]: the [`Storage`] seam over one file of a [`MemFs`].
//!
//! This module owns positional reads, writes, truncates and syncs on the simulator's files, and
//! applies the write faults there (short, misdirected, lost writes). It must never make bytes
//! durable outside `Storage::sync`, never act through a handle from before a crash, never write
//! through a read-only handle, and never hold the state's borrow across an await.

use std::cell::Cell;
use std::io;

use compio::buf::{BufResult, IoBuf, IoBufMut};

use super::crash::{apply_truncate, apply_write, PendingOp};
use super::{maybe_yield, stale_error, FileId, FsState, MemFs};
use crate::file::{read_exact_at_impl, write_all_at_impl};
use crate::{FaultKind, FaultOp, Storage};

/// One file of a [`MemFs`], as opened by one handle.
pub struct MemStorage {
    pub(super) fs: MemFs,
    pub(super) file: FileId,
    pub(super) generation: u64,
    pub(super) read_only: bool,
    /// Opened write-through (`O_DSYNC`): each write is followed by the file's sync, as one op.
    pub(super) write_through: bool,
    /// Opened with `open_file_direct`: aligned writes would bypass the page cache. The model's
    /// durability is write-through's either way; it counts the aligned writes
    /// ([`FaultCounts::direct_writes`](super::FaultCounts)) so tests can see a writer align.
    pub(super) direct: bool,
    pub(super) len_bytes: Cell<u64>,
    pub(super) path: String,
}

impl std::fmt::Debug for MemStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemStorage")
            .field("path", &self.path)
            .field("len_bytes", &self.len_bytes.get())
            .field("read_only", &self.read_only)
            .finish()
    }
}

fn read_only_error(path: &str, what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!("{path}: {what} on a read-only handle"),
    )
}

/// Records `data` at `offset_bytes` of `file` as a pending write (live now, durable at a sync
/// unless `lost`).
fn push_write(state: &mut FsState, file: FileId, offset_bytes: u64, data: &[u8], lost: bool) {
    let node = state.file_mut(file);
    apply_write(&mut node.live, offset_bytes, data);
    node.pending.push(PendingOp::Write {
        offset_bytes,
        data: data.to_vec(),
        lost,
    });
}

/// Bytes of zeroes [`MemStorage::preallocate`] writes at a time.
const ZERO_CHUNK_BYTES: u64 = 64;

impl MemStorage {
    /// The path this handle was opened at.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Checks the handle is fresh and allowed `op`; counts the op and decides its fault.
    fn begin(&self, state: &mut FsState, op: FaultOp) -> io::Result<Option<FaultKind>> {
        if state.generation != self.generation {
            return Err(stale_error(&self.path));
        }
        if self.read_only && matches!(op, FaultOp::Write | FaultOp::Truncate | FaultOp::Sync) {
            return Err(read_only_error(&self.path, &format!("{op:?}")));
        }
        Ok(state.fault(op, &self.path))
    }

    /// [`Self::begin`] for operations on which any fault is a plain failure.
    fn begin_plain(&self, state: &mut FsState, op: FaultOp, what: &str) -> io::Result<()> {
        match self.begin(state, op)? {
            Some(kind) => Err(state.injected_failure(kind, what, &self.path)),
            None => Ok(()),
        }
    }

    fn read_now<B: IoBufMut>(&self, offset_bytes: u64, buf: &mut B) -> io::Result<usize> {
        let mut state = self.fs.state.borrow_mut();
        self.begin_plain(&mut state, FaultOp::Read, "read")?;
        let live = &state.files[&self.file].live;
        let start = (offset_bytes as usize).min(live.len());
        let dst = buf.as_uninit();
        let n = dst.len().min(live.len() - start);
        for (d, s) in dst[..n].iter_mut().zip(&live[start..start + n]) {
            d.write(*s);
        }
        // SAFETY: the first `n` bytes of the buffer were initialized just above, and `n` is at
        // most its capacity. `advance_to` mirrors compio's read (length = max(length, n)).
        unsafe { buf.advance_to(n) };
        Ok(n)
    }

    fn write_now(&self, offset_bytes: u64, data: &[u8]) -> io::Result<usize> {
        let mut state = self.fs.state.borrow_mut();
        let fault = self.begin(&mut state, FaultOp::Write)?;
        let data = match fault {
            None => data,
            Some(FaultKind::LostWrite) if !data.is_empty() => data,
            Some(FaultKind::ShortWrite) if data.len() > 1 => &data[..data.len() / 2],
            Some(FaultKind::Misdirected) if !data.is_empty() => {
                let result = self.misdirect_now(&mut state, offset_bytes, data);
                if self.write_through {
                    state.file_mut(self.file).sync();
                }
                return result;
            }
            Some(kind) => return Err(state.injected_failure(kind, "write", &self.path)),
        };
        let end_bytes = offset_bytes + data.len() as u64;
        state.check_budget(self.file, end_bytes, &self.path)?;
        // Counted only once the fault took effect (a full disk refuses the write first).
        let lost = fault == Some(FaultKind::LostWrite);
        match fault {
            Some(FaultKind::ShortWrite) => state.counts.short_writes += 1,
            Some(FaultKind::LostWrite) => state.counts.lost_writes += 1,
            _ => {}
        }
        push_write(&mut state, self.file, offset_bytes, data, lost);
        if self.direct && crate::direct_aligned(offset_bytes, data) {
            state.counts.direct_writes += 1;
        }
        if self.write_through {
            // O_DSYNC: the write returns once it (and what the file held pending before it,
            // which fdatasync would flush too) is durable; a lost write stays lost.
            state.file_mut(self.file).sync();
        }
        self.len_bytes.set(self.len_bytes.get().max(end_bytes));
        Ok(data.len())
    }

    /// A misdirected write (see [`FaultKind::Misdirected`]): reports full success, leaves the
    /// intended range's bytes alone (growing the file to the intended end with zeroes, as the
    /// size change did reach the file system), and lands the bytes where the fault RNG says.
    fn misdirect_now(
        &self,
        state: &mut FsState,
        offset_bytes: u64,
        data: &[u8],
    ) -> io::Result<usize> {
        let end_bytes = offset_bytes + data.len() as u64;
        // The file system allocated for the intended range, so a full disk still refuses it.
        state.check_budget(self.file, end_bytes, &self.path)?;
        let stray = state.misdirect_target(self.file, offset_bytes, data.len() as u64);
        let live_len_bytes = state.files[&self.file].live.len() as u64;
        if end_bytes > live_len_bytes {
            let zeroes = vec![0u8; (end_bytes - live_len_bytes) as usize];
            push_write(state, self.file, live_len_bytes, &zeroes, false);
        }
        push_write(state, stray.file, stray.offset_bytes, data, false);
        state.counts.misdirected_writes += 1;
        tracing::debug!(
            path = %self.path,
            offset_bytes,
            len_bytes = data.len(),
            landed_in = %state.files[&stray.file].last_path,
            landed_at_bytes = stray.offset_bytes,
            "misdirected write"
        );
        self.len_bytes.set(self.len_bytes.get().max(end_bytes));
        Ok(data.len())
    }

    fn truncate_now(&self, len_bytes: u64) -> io::Result<()> {
        let mut state = self.fs.state.borrow_mut();
        self.begin_plain(&mut state, FaultOp::Truncate, "truncate")?;
        state.check_budget(self.file, len_bytes, &self.path)?;
        let file = state.file_mut(self.file);
        apply_truncate(&mut file.live, len_bytes);
        file.pending.push(PendingOp::Truncate { len_bytes });
        self.len_bytes.set(len_bytes);
        Ok(())
    }

    fn sync_now(&self) -> io::Result<()> {
        let mut state = self.fs.state.borrow_mut();
        self.begin_plain(&mut state, FaultOp::Sync, "sync")?;
        state.file_mut(self.file).sync();
        state.file_sync_count += 1;
        Ok(())
    }
}

impl Storage for MemStorage {
    fn writes_are_durable(&self) -> bool {
        self.write_through
    }

    fn direct_alignment(&self) -> Option<usize> {
        self.direct.then_some(crate::DIRECT_ALIGN_BYTES)
    }

    async fn read_at<B: IoBufMut>(&self, offset_bytes: u64, mut buf: B) -> BufResult<usize, B> {
        let result = self.read_now(offset_bytes, &mut buf);
        maybe_yield(&self.fs).await;
        BufResult(result, buf)
    }

    async fn write_at<B: IoBuf>(&self, offset_bytes: u64, buf: B) -> BufResult<usize, B> {
        let result = self.write_now(offset_bytes, buf.as_init());
        maybe_yield(&self.fs).await;
        BufResult(result, buf)
    }

    async fn truncate(&self, len_bytes: u64) -> io::Result<()> {
        let result = self.truncate_now(len_bytes);
        maybe_yield(&self.fs).await;
        result
    }

    async fn sync(&self) -> io::Result<()> {
        let result = self.sync_now();
        maybe_yield(&self.fs).await;
        result
    }

    /// Like [`crate::FileStorage`]'s zero-fill: the range is claimed in the length at once, then
    /// written as zero chunks with a chance to yield between them, so a writer that let a write
    /// land inside a fill still running would see it erased by a later chunk. A fault on a chunk
    /// is a plain failure (the fill writes no data of its own to misplace or lose).
    async fn preallocate(&self, len_bytes: u64) -> io::Result<()> {
        let start_bytes = self.len_bytes.get();
        if len_bytes <= start_bytes {
            return Ok(());
        }
        self.len_bytes.set(len_bytes);
        let mut offset_bytes = start_bytes;
        while offset_bytes < len_bytes {
            let chunk_bytes = (len_bytes - offset_bytes).min(ZERO_CHUNK_BYTES);
            {
                let mut state = self.fs.state.borrow_mut();
                self.begin_plain(&mut state, FaultOp::Write, "preallocate")?;
                state.check_budget(self.file, offset_bytes + chunk_bytes, &self.path)?;
                push_write(
                    &mut state,
                    self.file,
                    offset_bytes,
                    &vec![0u8; chunk_bytes as usize],
                    false,
                );
                if self.write_through {
                    state.file_mut(self.file).sync();
                }
            }
            offset_bytes += chunk_bytes;
            maybe_yield(&self.fs).await;
        }
        Ok(())
    }

    async fn start_write_back(&self, offset_bytes: u64, len_bytes: u64) -> io::Result<()> {
        let _ = (offset_bytes, len_bytes);
        self.fs.state.borrow_mut().counts.write_back_hints += 1;
        maybe_yield(&self.fs).await;
        Ok(())
    }

    fn len(&self) -> u64 {
        self.len_bytes.get()
    }

    fn cached(&self, offset_bytes: u64) -> Option<bool> {
        let _ = offset_bytes;
        Some(!self.fs.state.borrow().cold_reads)
    }

    fn reserve_append(&self, len_bytes: u64) -> u64 {
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
}
