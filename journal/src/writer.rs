//! writer: encoding entries into batches and group commit.
//!
//! Owns the order of the log (seq and chain are assigned synchronously when an entry is accepted,
//! so concurrent appends on one core can never interleave bytes), batching (one `write_all_at` per
//! run of at most `max_batch_bytes`, one fsync per dirty segment per group), the in-flight bound,
//! and poisoning. It must never resolve an append before an fsync covers it and every entry before
//! it (with `sync_on_append`), and never hold a `RefCell` borrow across an await.

use std::cell::RefCell;
use std::collections::{BTreeSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use keel_storage::{BufResult, Directory, Storage};

use crate::error::JournalError;
use crate::format::{
    encode_entry, entry_len_bytes, EntryKind, NewEntry, SegmentHeader, SEGMENT_HEADER_BYTES,
};
use crate::scan::Link;
use crate::segment;
use crate::slots::{check_op, Location, SlotRefusal};
use crate::{MetadataJournal, SegmentHandle};

/// Zeroes are written ahead of the write cursor in steps of an eighth of a segment, at most this
/// much (a whole 64 MiB segment at once would stall the group that rotates for as long as it takes
/// to write and fsync it). A new step starts when a write comes within half a step of the end.
const PREALLOCATE_STEP_MAX_BYTES: u64 = 8 << 20;

/// An open segment file and its name.
type OpenSegment<D> = (Rc<<D as Directory>::File>, String);

/// Why a group commit failed; cloned to every entry it covered.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    pub stage: &'static str,
    pub file: String,
    pub kind: std::io::ErrorKind,
    pub message: String,
}

impl Failure {
    fn from_error(error: &JournalError) -> Self {
        match error {
            JournalError::Io {
                stage,
                file,
                source,
            } => Self {
                stage,
                file: file.clone(),
                kind: source.kind(),
                message: source.to_string(),
            },
            other => Self {
                stage: "write",
                file: String::new(),
                kind: std::io::ErrorKind::Other,
                message: other.to_string(),
            },
        }
    }

    /// The error for an entry that was in the failed batch (`in_flight`) or merely queued.
    fn to_error(&self, in_flight: bool) -> JournalError {
        if in_flight {
            JournalError::Io {
                stage: self.stage,
                file: self.file.clone(),
                source: std::io::Error::new(self.kind, self.message.clone()),
            }
        } else {
            JournalError::Poisoned(self.describe())
        }
    }

    pub fn describe(&self) -> String {
        format!("{} on {}: {}", self.stage, self.file, self.message)
    }
}

/// A one-shot completion for one entry (or one flush request), woken by the flusher.
#[derive(Default)]
pub(crate) struct Completion {
    result: RefCell<Option<Result<(), (Failure, bool)>>>,
    waker: RefCell<Option<Waker>>,
}

impl Completion {
    fn resolve(&self, result: Result<(), (Failure, bool)>) {
        let mut slot = self.result.borrow_mut();
        if slot.is_none() {
            *slot = Some(result);
        }
        drop(slot);
        self.wake();
    }

    fn wake(&self) {
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }

    fn is_done(&self) -> bool {
        self.result.borrow().is_some()
    }
}

/// One entry waiting in a run.
pub(crate) struct PendingEntry {
    pub kind: EntryKind,
    pub seq: u64,
    pub op: u64,
    pub offset_bytes: u64,
    pub len_bytes: u32,
    pub header_crc: u32,
    pub commit_op: u64,
    pub completion: Rc<Completion>,
}

/// Contiguous bytes for one segment, written by one `write_all_at`.
pub(crate) struct Run {
    pub segment: u64,
    /// Create this segment (header, preallocation, fsync, dir fsync) before writing.
    pub create: Option<SegmentHeader>,
    pub offset_bytes: u64,
    pub buf: Vec<u8>,
    pub entries: Vec<PendingEntry>,
}

/// Everything the write path tracks. Lives inside the journal's `RefCell<State>`.
pub(crate) struct WriterState {
    pub next_seq: u64,
    pub chain_crc: u32,
    /// Segment and offset the next entry goes to.
    pub cursor_segment: u64,
    pub cursor_offset_bytes: u64,
    /// The next entry must start a new segment (none yet, or the last one is sealed/rewritten).
    pub needs_rotation: bool,
    pub next_segment_number: u64,
    /// Highest seq covered by an fsync.
    pub durable_seq: u64,
    /// Highest seq written and indexed (maybe not synced).
    pub written_seq: u64,
    /// Highest seq whose bytes (and every earlier seq's) a completed write handed to the OS; an
    /// fsync started after it makes them durable, whichever path issues it.
    pub write_done_seq: u64,
    pub queue: VecDeque<Run>,
    pub flush_waiters: Vec<Rc<Completion>>,
    /// Completions of the batch a flusher is writing right now (so a cancelled flusher can fail them).
    pub in_flight: Vec<Rc<Completion>>,
    pub flushing: bool,
    pub inflight_bytes: usize,
    pub space_waiters: Vec<Waker>,
    pub dirty_segments: BTreeSet<u64>,
    /// Some entry has no later entry whose durable watermark covers it (see `close`).
    pub tail_uncovered: bool,
}

impl WriterState {
    pub fn new(link: Link, cursor: Option<(u64, u64)>, next_segment_number: u64) -> Self {
        Self {
            next_seq: link.next_seq,
            chain_crc: link.chain_crc,
            cursor_segment: cursor.map_or(0, |c| c.0),
            cursor_offset_bytes: cursor.map_or(0, |c| c.1),
            needs_rotation: cursor.is_none(),
            next_segment_number,
            durable_seq: link.next_seq - 1,
            written_seq: link.next_seq - 1,
            write_done_seq: link.next_seq - 1,
            queue: VecDeque::new(),
            flush_waiters: Vec::new(),
            in_flight: Vec::new(),
            flushing: false,
            inflight_bytes: 0,
            space_waiters: Vec::new(),
            dirty_segments: BTreeSet::new(),
            tail_uncovered: false,
        }
    }

    fn wake_all_waiters(&mut self) {
        for run in &self.queue {
            for e in &run.entries {
                e.completion.wake();
            }
        }
        for c in &self.flush_waiters {
            c.wake();
        }
        for c in &self.in_flight {
            c.wake();
        }
        for w in self.space_waiters.drain(..) {
            w.wake();
        }
    }
}

/// Pending until woken once (a registered waker fired); the caller re-checks its condition.
struct WakeOnce<'a> {
    register: &'a dyn Fn(Waker) -> bool,
    registered: bool,
}

impl Future for WakeOnce<'_> {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.registered {
            return Poll::Ready(());
        }
        // `register` returns false when the condition already holds (no need to sleep).
        if (self.register)(cx.waker().clone()) {
            self.registered = true;
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }
}

/// Disarmed on every normal exit; if a flusher's future is dropped mid-write, nobody knows what
/// reached the disk, so the journal is poisoned and every waiter released.
struct FlusherGuard<'a, D: Directory> {
    journal: &'a MetadataJournal<D>,
    armed: bool,
}

impl<D: Directory> Drop for FlusherGuard<'_, D> {
    fn drop(&mut self) {
        if self.armed {
            let failure = Failure {
                stage: "group commit",
                file: self.journal.dir.display_path(),
                kind: std::io::ErrorKind::Interrupted,
                message: "flusher cancelled mid-write".into(),
            };
            self.journal.poison(&failure, Vec::new());
        }
    }
}

impl<D: Directory> MetadataJournal<D> {
    pub(crate) fn check_usable(&self) -> Result<(), JournalError> {
        if self.read_only {
            return Err(JournalError::ReadOnly {
                path: self.dir.display_path(),
            });
        }
        if let Some(reason) = &self.state.borrow().poisoned {
            return Err(JournalError::Poisoned(reason.clone()));
        }
        Ok(())
    }

    /// Accepts one entry (data or marker) and waits until it is written (and synced, per config).
    pub(crate) async fn submit(
        &self,
        kind: EntryKind,
        op: u64,
        payload: &[u8],
    ) -> Result<(), JournalError> {
        let len = entry_len_bytes(payload.len());
        let completion = loop {
            self.check_usable()?;
            if kind == EntryKind::Data {
                if payload.len() > self.config.max_payload_bytes {
                    return Err(JournalError::PayloadTooLarge {
                        len_bytes: payload.len(),
                        max_bytes: self.config.max_payload_bytes,
                    });
                }
                let st = self.state.borrow();
                check_op(op, st.slots.snapshot_op(), self.config.slot_count).map_err(
                    |refusal| match refusal {
                        SlotRefusal::BelowSnapshot { snapshot_op } => {
                            JournalError::BelowSnapshot { op, snapshot_op }
                        }
                        SlotRefusal::Full {
                            snapshot_op,
                            distance,
                        } => JournalError::Full {
                            op,
                            snapshot_op,
                            distance,
                            slot_count: self.config.slot_count,
                        },
                    },
                )?;
            }
            let over = {
                let st = self.state.borrow();
                st.w.inflight_bytes > 0
                    && st.w.inflight_bytes + len > self.config.max_inflight_bytes
            };
            if !over {
                break self.encode(kind, op, payload);
            }
            if !self.state.borrow().w.flushing {
                // Over the bound with nobody flushing (the appenders that filled it were
                // cancelled): drain the queue ourselves rather than wait for a flusher that will
                // never come.
                self.request_flush().await?;
                continue;
            }
            let register = |waker: Waker| {
                let mut st = self.state.borrow_mut();
                st.w.space_waiters.push(waker);
                true
            };
            WakeOnce {
                register: &register,
                registered: false,
            }
            .await;
        };
        self.wait(completion).await
    }

    /// Encodes one entry into the queue, assigning seq, chain, segment and offset. Synchronous:
    /// the log order is the order of these calls.
    fn encode(&self, kind: EntryKind, op: u64, payload: &[u8]) -> Rc<Completion> {
        let len = entry_len_bytes(payload.len());
        let mut guard = self.state.borrow_mut();
        let st = &mut *guard;
        let w = &mut st.w;
        let segment_bytes = self.config.segment_bytes;
        let rotate = w.needs_rotation
            || (w.cursor_offset_bytes + len as u64 > segment_bytes
                && w.cursor_offset_bytes > SEGMENT_HEADER_BYTES as u64);
        if rotate {
            let number = w.next_segment_number;
            w.next_segment_number += 1;
            let mut header = SegmentHeader::new(number, w.next_seq, w.chain_crc);
            header.snapshot_op = st.snapshot_encoded;
            header.commit_op = st.commit_set;
            w.queue.push_back(Run {
                segment: number,
                create: Some(header),
                offset_bytes: SEGMENT_HEADER_BYTES as u64,
                buf: Vec::new(),
                entries: Vec::new(),
            });
            w.cursor_segment = number;
            w.cursor_offset_bytes = SEGMENT_HEADER_BYTES as u64;
            w.needs_rotation = false;
        }
        let fits_last = w.queue.back().is_some_and(|run| {
            run.segment == w.cursor_segment
                && run.offset_bytes + run.buf.len() as u64 == w.cursor_offset_bytes
                && (run.buf.is_empty() || run.buf.len() + len <= self.config.max_batch_bytes)
        });
        if !fits_last {
            w.queue.push_back(Run {
                segment: w.cursor_segment,
                create: None,
                offset_bytes: w.cursor_offset_bytes,
                buf: Vec::new(),
                entries: Vec::new(),
            });
        }
        let run = w.queue.back_mut().expect("a run was just ensured");
        let seq = w.next_seq;
        let header_crc = encode_entry(
            &mut run.buf,
            &NewEntry {
                kind,
                seq,
                op,
                prev_crc: w.chain_crc,
                durable_seq: w.durable_seq,
                commit_op: st.commit_set,
            },
            payload,
        );
        let completion = Rc::new(Completion::default());
        run.entries.push(PendingEntry {
            kind,
            seq,
            op,
            offset_bytes: w.cursor_offset_bytes,
            len_bytes: len as u32,
            header_crc,
            commit_op: st.commit_set,
            completion: completion.clone(),
        });
        w.next_seq += 1;
        w.chain_crc = header_crc;
        w.cursor_offset_bytes += len as u64;
        w.inflight_bytes += len;
        w.tail_uncovered = true;
        if kind == EntryKind::Snapshot {
            st.snapshot_encoded = st.snapshot_encoded.max(op);
        }
        completion
    }

    /// Asks for everything written so far to be made durable, and waits.
    pub(crate) async fn request_flush(&self) -> Result<(), JournalError> {
        self.check_usable()?;
        let completion = Rc::new(Completion::default());
        self.state
            .borrow_mut()
            .w
            .flush_waiters
            .push(completion.clone());
        self.wait(completion).await
    }

    /// Waits for `completion`, becoming the flusher whenever nobody is.
    async fn wait(&self, completion: Rc<Completion>) -> Result<(), JournalError> {
        let mut yielded_to_the_burst = false;
        loop {
            if let Some(result) = completion.result.borrow_mut().take() {
                return result.map_err(|(failure, in_flight)| failure.to_error(in_flight));
            }
            let flusher_free = {
                let st = self.state.borrow();
                if let Some(reason) = &st.poisoned {
                    return Err(JournalError::Poisoned(reason.clone()));
                }
                !st.w.flushing
            };
            if flusher_free && !yielded_to_the_burst {
                // The first appender of a burst would otherwise drain the queue before the other
                // tasks made runnable in the same tick had queued their entries: a group of 1 and
                // a group of 63, two fsyncs where one does (BENCHMARKS.md, F1). Yield once,
                // claiming nothing, so a cancellation here leaves no state behind.
                keel_storage::yield_now().await;
                yielded_to_the_burst = true;
                continue;
            }
            let become_flusher = {
                let mut st = self.state.borrow_mut();
                if st.w.flushing {
                    false
                } else {
                    st.w.flushing = true;
                    true
                }
            };
            if become_flusher {
                self.run_flusher(&completion).await;
                continue;
            }
            let register = |waker: Waker| {
                if completion.is_done() || !self.state.borrow().w.flushing {
                    return false;
                }
                *completion.waker.borrow_mut() = Some(waker);
                true
            };
            WakeOnce {
                register: &register,
                registered: false,
            }
            .await;
        }
    }

    /// Writes groups until `own` is resolved (then hands the role on), or the queue is empty.
    async fn run_flusher(&self, own: &Rc<Completion>) {
        let mut guard = FlusherGuard {
            journal: self,
            armed: true,
        };
        loop {
            let (mut runs, flush_waiters) = {
                let mut st = self.state.borrow_mut();
                let runs: Vec<Run> = st.w.queue.drain(..).collect();
                let waiters = std::mem::take(&mut st.w.flush_waiters);
                st.w.in_flight = runs
                    .iter()
                    .flat_map(|r| r.entries.iter().map(|e| e.completion.clone()))
                    .chain(waiters.iter().cloned())
                    .collect();
                (runs, waiters)
            };
            if runs.is_empty() && flush_waiters.is_empty() {
                break;
            }
            let must_sync = self.config.sync_on_append || !flush_waiters.is_empty();
            match self.write_group(&mut runs, must_sync).await {
                Ok(()) => self.apply(runs, flush_waiters, must_sync),
                Err(error) => {
                    let failure = Failure::from_error(&error);
                    tracing::error!(error = %error, "journal poisoned: group commit failed");
                    let in_flight: Vec<Rc<Completion>> = runs
                        .iter()
                        .flat_map(|r| r.entries.iter().map(|e| e.completion.clone()))
                        .chain(flush_waiters)
                        .collect();
                    self.poison(&failure, in_flight);
                    guard.armed = false;
                    return;
                }
            }
            if own.is_done() {
                break;
            }
        }
        guard.armed = false;
        let mut st = self.state.borrow_mut();
        st.w.flushing = false;
        st.w.in_flight.clear();
        // Hand the role on: whoever waits next becomes the flusher.
        st.w.wake_all_waiters();
    }

    /// One group: create segments, one write per run, then (if `must_sync`) one fsync per dirty
    /// segment.
    async fn write_group(&self, runs: &mut [Run], must_sync: bool) -> Result<(), JournalError> {
        for run in runs.iter_mut() {
            if let Some(header) = run.create {
                // A durable segment header claims every seq before its `first_seq` exists: make
                // the older segments' bytes durable first, or a crash could leave the new header
                // but lose the old tail, which would read as a broken chain (corruption).
                self.sync_dirty().await?;
                let file = segment::create(
                    &self.dir,
                    &header,
                    self.config
                        .preallocate
                        .then(|| self.preallocation_target(0, 0)),
                )
                .await?;
                let name = crate::format::segment_file_name(header.segment_no);
                self.state.borrow_mut().segments.insert(
                    header.segment_no,
                    SegmentHandle {
                        file: Some(Rc::new(file)),
                        len_bytes: 0,
                        name,
                        end_link: Link {
                            next_seq: header.first_seq,
                            chain_crc: header.prev_crc,
                        },
                        entry_count: 0,
                    },
                );
                // The older segments are synced now: let go of handles nothing live needs.
                self.release_idle_handles();
            }
            if run.buf.is_empty() {
                continue;
            }
            let (file, name) = self
                .segment_file(run.segment)
                .await?
                .expect("a run's segment exists before its bytes are written");
            let run_end = run.offset_bytes + run.buf.len() as u64;
            if self.config.preallocate
                && run_end > file.len().saturating_sub(self.preallocation_step() / 2)
            {
                // Keep zero-written space ahead of the cursor in steps, so a durable write
                // overwrites instead of extending, without one large zero-fill stalling a group
                // at rotation. The group's fsync below covers these zeroes too.
                let target = self.preallocation_target(file.len(), run_end);
                if target > file.len() {
                    file.preallocate(target)
                        .await
                        .map_err(|e| JournalError::io("preallocate", self.file_path(&name), e))?;
                }
            }
            let buf = std::mem::take(&mut run.buf);
            let BufResult(result, _) = file.write_all_at(run.offset_bytes, buf).await;
            result.map_err(|e| JournalError::io("write batch", self.file_path(&name), e))?;
            let mut st = self.state.borrow_mut();
            st.w.dirty_segments.insert(run.segment);
            if let Some(last) = run.entries.last() {
                // Runs are written in log order by the one flusher: every earlier seq is written.
                assert!(
                    last.seq > st.w.write_done_seq,
                    "runs written out of log order"
                );
                st.w.write_done_seq = last.seq;
            }
        }
        if must_sync {
            self.sync_dirty().await?;
        }
        Ok(())
    }

    /// How far to preallocate a segment whose zeroed space ends at `current_end` when a write
    /// reaches `needed_end`: one step past both, never past the segment size (unless one entry
    /// alone is larger).
    pub(crate) fn preallocation_target(&self, current_end: u64, needed_end: u64) -> u64 {
        let step_end = current_end.max(needed_end) + self.preallocation_step();
        step_end.min(self.config.segment_bytes.max(needed_end))
    }

    fn preallocation_step(&self) -> u64 {
        (self.config.segment_bytes / 8).clamp(512, PREALLOCATE_STEP_MAX_BYTES)
    }

    /// The open handle of segment `number` (opened again if it was released); `None` if the
    /// segment is gone.
    pub(crate) async fn segment_file(
        &self,
        number: u64,
    ) -> Result<Option<(Rc<D::File>, String)>, JournalError> {
        let (file, name) = {
            let st = self.state.borrow();
            let Some(handle) = st.segments.get(&number) else {
                return Ok(None);
            };
            (handle.file.clone(), handle.name.clone())
        };
        if let Some(file) = file {
            return Ok(Some((file, name)));
        }
        let mode = if self.read_only {
            keel_storage::OpenMode::ReadOnly
        } else {
            keel_storage::OpenMode::Existing
        };
        let file = Rc::new(
            self.dir
                .open_file(&name, mode)
                .await
                .map_err(|e| JournalError::io("reopen segment", self.file_path(&name), e))?,
        );
        if let Some(handle) = self.state.borrow_mut().segments.get_mut(&number) {
            handle.file.get_or_insert_with(|| file.clone());
        }
        Ok(Some((file, name)))
    }

    /// Drops the handles of sealed, synced segments that no live op points into.
    pub(crate) fn release_idle_handles(&self) {
        let mut guard = self.state.borrow_mut();
        let st = &mut *guard;
        let referenced: BTreeSet<u64> = st.slots.live().iter().map(|(_, l)| l.segment).collect();
        let active = st.w.cursor_segment;
        for (number, handle) in st.segments.iter_mut() {
            if *number == active
                || referenced.contains(number)
                || st.w.dirty_segments.contains(number)
            {
                continue;
            }
            if let Some(file) = handle.file.take() {
                handle.len_bytes = file.len();
            }
        }
    }

    /// One fsync per segment written since the last sync. Every fsync is a proof: once they
    /// all succeed, every seq written before they started is durable, and entries encoded from
    /// now on carry that watermark (a rotation's sync counts as much as a flush's).
    async fn sync_dirty(&self) -> Result<(), JournalError> {
        let (dirty, covers_seq): (Vec<OpenSegment<D>>, u64) = {
            let mut st = self.state.borrow_mut();
            let covers_seq = st.w.write_done_seq;
            let numbers = std::mem::take(&mut st.w.dirty_segments);
            let files = numbers
                .iter()
                .filter_map(|n| st.segments.get(n))
                .filter_map(|h| h.file.clone().map(|f| (f, h.name.clone())))
                .collect();
            (files, covers_seq)
        };
        for (file, name) in dirty {
            let started = Instant::now();
            file.sync()
                .await
                .map_err(|e| JournalError::io("fsync", self.file_path(&name), e))?;
            let mut st = self.state.borrow_mut();
            st.stats.fsyncs += 1;
            st.stats.fsync_nanos_total += started.elapsed().as_nanos() as u64;
        }
        let mut st = self.state.borrow_mut();
        st.w.durable_seq = st.w.durable_seq.max(covers_seq);
        Ok(())
    }

    /// A group is on disk (and synced when `synced`): index it and resolve its waiters.
    fn apply(&self, runs: Vec<Run>, flush_waiters: Vec<Rc<Completion>>, synced: bool) {
        let mut guard = self.state.borrow_mut();
        let st = &mut *guard;
        st.stats.batches += 1;
        for run in runs {
            for e in run.entries {
                match e.kind {
                    EntryKind::Data => {
                        let location = Location {
                            segment: run.segment,
                            offset_bytes: e.offset_bytes,
                            len_bytes: e.len_bytes,
                        };
                        // A snapshot marker earlier in the log may have passed this op since it
                        // was accepted: then it is dead, exactly as replay will see it.
                        let result = st.slots.insert(e.op, location);
                        assert!(
                            !matches!(result, Err(SlotRefusal::Full { .. })),
                            "Full is checked before encoding and the watermark only rises"
                        );
                        st.stats.appends += 1;
                        st.stats.bytes_appended += u64::from(e.len_bytes);
                    }
                    EntryKind::Truncate => st.slots.truncate_after(e.op),
                    EntryKind::Snapshot => st.slots.set_snapshot(e.op),
                    EntryKind::Commit => {}
                }
                st.commit_written = st.commit_written.max(e.commit_op);
                assert_eq!(e.seq, st.w.written_seq + 1, "groups apply in log order");
                st.w.written_seq = e.seq;
                if let Some(handle) = st.segments.get_mut(&run.segment) {
                    handle.end_link = Link {
                        next_seq: e.seq + 1,
                        chain_crc: e.header_crc,
                    };
                    handle.entry_count += 1;
                }
                st.w.inflight_bytes -= e.len_bytes as usize;
                e.completion.resolve(Ok(()));
            }
        }
        if synced {
            st.w.durable_seq = st.w.written_seq;
            st.commit_durable = st.commit_written;
        }
        for c in flush_waiters {
            c.resolve(Ok(()));
        }
        for waker in st.w.space_waiters.drain(..) {
            waker.wake();
        }
    }

    /// After a failed (or abandoned) write or fsync: every later call fails; every waiter is
    /// released with the failure.
    pub(crate) fn poison(&self, failure: &Failure, in_flight: Vec<Rc<Completion>>) {
        let mut st = self.state.borrow_mut();
        if st.poisoned.is_none() {
            st.poisoned = Some(failure.describe());
        }
        for c in in_flight {
            c.resolve(Err((failure.clone(), true)));
        }
        for c in std::mem::take(&mut st.w.in_flight) {
            c.resolve(Err((failure.clone(), true)));
        }
        for run in st.w.queue.drain(..) {
            for e in run.entries {
                e.completion.resolve(Err((failure.clone(), false)));
            }
        }
        for c in std::mem::take(&mut st.w.flush_waiters) {
            c.resolve(Err((failure.clone(), false)));
        }
        st.w.inflight_bytes = 0;
        st.w.flushing = false;
        st.w.wake_all_waiters();
    }

    pub(crate) fn file_path(&self, name: &str) -> String {
        format!("{}/{name}", self.dir.display_path())
    }
}
