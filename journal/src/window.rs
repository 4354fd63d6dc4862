//! window: one segment file read front to back through a bounded window, for the open's scan
//! (`stream`): each window one read, the next pieces read ahead while it is parsed, the partial
//! entry at a window's end carried into the next.
//!
//! Owns the window's memory (one window plus the pieces in flight, never a whole segment) and the
//! read-ahead. It must never write, and never parse: what the bytes mean is `stream`'s and
//! `scan`'s.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;

use compio::buf::{IntoInner, Slice};
use keel_storage::{BufResult, Directory, IoBuf, OpenMode, Storage};

use crate::error::JournalError;
use crate::format::{Binding, ENTRY_ALIGN_BYTES, ENTRY_HEADER_BYTES};
use crate::scan::Evidence;
use crate::segment::{self, SegmentFile};

/// One piece read in flight ahead of the window, into a spare buffer after `headroom` bytes.
struct Ahead<'w> {
    offset: u64,
    /// Bytes asked for (the next piece starts after them).
    len_bytes: usize,
    headroom: usize,
    read: PieceRead<'w>,
    /// The result, when it completed at its first poll.
    done: Option<BufResult<usize, Slice<Vec<u8>>>>,
}

type PieceRead<'w> = Pin<Box<dyn Future<Output = BufResult<usize, Slice<Vec<u8>>>> + 'w>>;

/// Pieces kept in flight ahead of the window: from a cold cache two reads queued at the device
/// keep it busy while the scan parses (one left it idle between reads: 0.81× against 0.92–1.02×
/// of a std read loop in a standalone cold-cache comparison, BENCHMARKS.md).
const AHEAD_PIECES: usize = 2;

/// Reads per window from a cold cache (256 KiB with the default 2 MiB window), one read at a
/// time: the kernel's sequential readahead then keeps the disk busy ahead of the scan. Larger
/// reads, or several in flight, each wait for all of their bytes and break the readahead's
/// sequence (cold: 0.79–0.80× of a std 64-KiB read loop with 2 MiB reads, 0.91× with 1 MiB,
/// 1.00× with 256 KiB; BENCHMARKS.md). From memory the window is one read: 256 KiB reads cost
/// 0.69× there against 0.90× (the runtime's round trip per read).
const COLD_PIECES_PER_WINDOW: usize = 8;

/// Room kept before a read-ahead piece for the partial entry at the end of the window before it
/// (one entry is copied, never the piece): entries larger than this reload without read-ahead.
const AHEAD_HEADROOM_BYTES: usize = 64 << 10;

/// One segment file open for the scan, and the window its bytes are read through.
pub(crate) struct SegmentRead<'w, F: Storage + 'w> {
    pub(crate) file: Rc<F>,
    pub(crate) path: String,
    pub(crate) len_bytes: u64,
    pub(crate) window: &'w mut Vec<u8>,
    /// The file's bytes start at `window[start]`.
    pub(crate) start: usize,
    /// Bytes read at a time (`JournalConfig::scan_window_bytes`).
    pub(crate) window_bytes: usize,
    /// File offset of `window[start]`.
    pub(crate) base: u64,
    pub(crate) bytes_read: u64,
    /// The next piece after the window, read while the window is parsed (from a cold cache the
    /// disk then works while the CPU does).
    ahead: std::collections::VecDeque<Ahead<'w>>,
    /// Buffers for the next pieces (the window's old buffer comes back here).
    spares: Vec<Vec<u8>>,
    /// The file's bytes were found on the disk, not in memory: read a window in
    /// [`COLD_PIECES_PER_WINDOW`] pieces, one at a time, and let the kernel's readahead run ahead
    /// (kept for the file).
    cold: bool,
}

impl<'w, F: Storage + 'w> SegmentRead<'w, F> {
    /// The window's bytes: the file from `base`.
    pub(crate) fn data(&self) -> &[u8] {
        &self.window[self.start..]
    }

    /// One read's size: a whole window from memory, a cold piece from the disk (larger loads,
    /// for one large entry, take several).
    fn piece_bytes(&self) -> usize {
        if self.cold {
            (self.window_bytes / COLD_PIECES_PER_WINDOW).max(ENTRY_ALIGN_BYTES)
        } else {
            self.window_bytes
        }
    }

    /// Whether the read at `offset` goes to the disk: once it does, the rest of the file is read
    /// in the cold shape (a file read cold once is cold to its end, and the pages readahead
    /// brings in ahead of the scan must not switch it back).
    fn probe_cold(&mut self, offset: u64) {
        if !self.cold {
            self.cold = self.file.cached(offset) == Some(false);
        }
    }

    /// Reads from `offset` at least `min_bytes` (or to the end of the file) into the window, one
    /// window per read; the first comes from the read-ahead when it is the one needed. Then
    /// starts the next read-ahead.
    pub(crate) async fn load(&mut self, offset: u64, min_bytes: usize) -> Result<(), JournalError> {
        let taken = self.take_ahead(offset).await?;
        if !taken {
            self.probe_cold(offset);
        }
        let want =
            (self.len_bytes.saturating_sub(offset) as usize).min(min_bytes.max(self.piece_bytes()));
        if !taken {
            let mut buf = std::mem::take(self.window);
            buf.clear();
            buf.reserve(want);
            *self.window = buf;
            self.start = 0;
            self.base = offset;
        }
        while self.data().len() < want {
            let begin = self.window.len();
            let end = begin + self.piece_bytes().min(want - self.data().len());
            let at = self.base + self.data().len() as u64;
            // A read fills the slice only up to the buffer's capacity.
            self.window.reserve(end - begin);
            let buf = std::mem::take(self.window);
            let BufResult(result, slice) = self.file.read_at(at, buf.slice(begin..end)).await;
            *self.window = slice.into_inner();
            let read = self.check_read(result, at)?;
            assert_eq!(
                self.window.len(),
                begin + read,
                "a read set the window's length wrong"
            );
            self.bytes_read += read as u64;
        }
        self.start_ahead().await;
        Ok(())
    }

    fn check_read(&self, result: std::io::Result<usize>, at: u64) -> Result<usize, JournalError> {
        let read = result.map_err(|e| JournalError::io("read segment", &self.path, e))?;
        if read == 0 {
            let eof = std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "segment ended at {at} of {} bytes while being read",
                    self.len_bytes
                ),
            );
            return Err(JournalError::io("read segment", &self.path, eof));
        }
        Ok(read)
    }

    /// Uses the read-ahead piece when it starts where the window ends and the window's bytes from
    /// `offset` fit in its headroom: they are copied in front of it and it becomes the window.
    async fn take_ahead(&mut self, offset: u64) -> Result<bool, JournalError> {
        let Some(ahead) = self.ahead.pop_front() else {
            return Ok(false);
        };
        let window_end = self.base + self.data().len() as u64;
        let usable = ahead.offset == window_end
            && offset >= self.base
            && offset <= window_end
            && window_end - offset <= ahead.headroom as u64;
        if !usable {
            // Dropped, with every later piece: compio lets the reads finish and frees them.
            self.ahead.clear();
            return Ok(false);
        }
        let BufResult(result, slice) = match ahead.done {
            Some(done) => done,
            None => ahead.read.await,
        };
        let mut buf = slice.into_inner();
        let read = self.check_read(result, ahead.offset)?;
        self.bytes_read += read as u64;
        let carried = (window_end - offset) as usize;
        let start = ahead.headroom - carried;
        let from = (offset - self.base) as usize;
        buf[start..ahead.headroom].copy_from_slice(&self.data()[from..]);
        self.spares.push(std::mem::replace(self.window, buf));
        self.start = start;
        self.base = offset;
        Ok(true)
    }

    /// Starts reading the pieces after the window (up to [`AHEAD_PIECES`] in flight) into spare
    /// buffers, and lets the runtime submit them before the window is parsed.
    async fn start_ahead(&mut self) {
        let mut started = false;
        let pieces = if self.cold { 0 } else { AHEAD_PIECES };
        while self.ahead.len() < pieces {
            let end = match self.ahead.back() {
                Some(last) => last.offset + last.len_bytes as u64,
                None => self.base + self.data().len() as u64,
            };
            if end >= self.len_bytes {
                break;
            }
            let ahead = self.start_piece(end);
            self.ahead.push_back(ahead);
            started = true;
        }
        if started && self.ahead.iter().any(|a| a.done.is_none()) {
            keel_storage::yield_now().await;
        }
    }

    /// One read of the piece at `offset`, polled once so the runtime has it to submit.
    fn start_piece(&mut self, offset: u64) -> Ahead<'w> {
        let headroom = AHEAD_HEADROOM_BYTES.min(self.window_bytes / 2);
        let piece = (self.piece_bytes() as u64).min(self.len_bytes - offset) as usize;
        let mut spare = self.spares.pop().unwrap_or_default();
        spare.clear();
        spare.resize(headroom, 0);
        spare.reserve(piece);
        let file = self.file.clone();
        let mut read: PieceRead<'w> = Box::pin(async move {
            file.read_at(offset, spare.slice(headroom..headroom + piece))
                .await
        });
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let done = match read.as_mut().poll(&mut cx) {
            Poll::Ready(result) => Some(result),
            Poll::Pending => None,
        };
        Ahead {
            offset,
            len_bytes: piece,
            headroom,
            read,
            done,
        }
    }

    pub(crate) fn at_eof(&self) -> bool {
        self.base + self.data().len() as u64 >= self.len_bytes
    }

    /// Valid headers from `from` to the end of the file (and the segment header when `from` is 0).
    pub(crate) async fn evidence(
        &mut self,
        from: u64,
        binding: Binding,
    ) -> Result<Evidence, JournalError> {
        let mut evidence = Evidence::new(binding);
        let align = ENTRY_ALIGN_BYTES as u64;
        let mut pos = from.div_ceil(align) * align;
        while pos < self.len_bytes {
            self.load(pos, self.window_bytes).await?;
            evidence.add(&self.window[self.start..], self.base, pos, self.base == 0);
            if self.at_eof() {
                break;
            }
            // The next window starts at the first aligned offset a header could not fit before.
            let scanned_to = self.base + self.data().len() as u64 + 1 - ENTRY_HEADER_BYTES as u64;
            pos = scanned_to.div_ceil(align) * align;
        }
        Ok(evidence.finish())
    }

    /// The first non-zero byte at or after `from`, if any.
    pub(crate) async fn first_nonzero(&mut self, from: u64) -> Result<Option<u64>, JournalError> {
        let mut pos = from;
        while pos < self.len_bytes {
            self.load(pos, self.window_bytes).await?;
            if let Some(i) = crate::scan::first_nonzero(self.data()) {
                return Ok(Some(self.base + i as u64));
            }
            pos = self.base + self.data().len() as u64;
        }
        Ok(None)
    }
}

pub(crate) async fn open_segment<'w, D: Directory>(
    dir: &D,
    file: &SegmentFile,
    max_file_bytes: u64,
    window_bytes: usize,
    window: &'w mut Vec<u8>,
) -> Result<SegmentRead<'w, D::File>, JournalError>
where
    D::File: 'w,
{
    let path = format!("{}/{}", dir.display_path(), file.name);
    let handle = dir
        .open_file(&file.name, OpenMode::ReadOnly)
        .await
        .map_err(|e| JournalError::io("open segment", &path, e))?;
    let len_bytes = handle.len();
    segment::check_file_len(len_bytes, max_file_bytes, &path)?;
    handle.advise_sequential();
    Ok(SegmentRead {
        file: Rc::new(handle),
        path,
        len_bytes,
        window,
        start: 0,
        window_bytes,
        base: 0,
        bytes_read: 0,
        ahead: std::collections::VecDeque::new(),
        spares: Vec::new(),
        cold: false,
    })
}
