//! group: the writer task, one per writable journal: group commit.
//!
//! Owns every write and fsync of the append path. Started at open (`start_writer`), it sleeps
//! until the queue has work, takes everything queued as one group (with `sync_on_append`; a
//! buffered journal waits for a batch's worth, a flush or a waiter for space), creates segments,
//! writes each run with one `write_all_at`, fsyncs every dirty segment once, then indexes the
//! group and resolves its waiters in log order. It runs in its own task, so no caller's future
//! ever holds the journal's I/O: dropping an append cannot cancel a write. It ends when the
//! journal is dropped or closed (the task is cancelled while it sleeps) or poisoned. It must never
//! resolve an entry before the writes (and, when synced, the fsync) covering it and every earlier
//! entry completed, and never hold a `RefCell` borrow across an await.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Instant;

use keel_storage::{BufResult, Directory, IoBuf, Storage};

use crate::error::JournalError;
use crate::format::SegmentHeader;
use crate::scan::Link;
use crate::segment;
use crate::slots::Location;
use crate::writer::{index_entry, Completion, Failure, Run, WritingRun};
use crate::{MetadataJournal, SegmentHandle};

/// An open segment file and its name.
type OpenSegment<D> = (Rc<<D as Directory>::File>, String);

/// One run's write in flight; resolves to the seq of its last entry (none for an empty run).
type RunWrite<'a> = Pin<Box<dyn Future<Output = Result<Option<u64>, JournalError>> + 'a>>;

/// A run's bytes, shared between the write in flight and readers of unwritten entries.
struct SharedBuf(Rc<Vec<u8>>);

impl IoBuf for SharedBuf {
    fn as_init(&self) -> &[u8] {
        &self.0
    }
}

/// Ready when the writer has work (or the journal is poisoned: the writer then ends).
struct WaitForWork<'a, D: Directory> {
    journal: &'a MetadataJournal<D>,
}

impl<D: Directory> Future for WaitForWork<'_, D> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let journal = self.journal;
        let mut st = journal.state.borrow_mut();
        let w = &st.w;
        let has_work = !w.flush_waiters.is_empty()
            || (!w.queue.is_empty()
                && (journal.config.sync_on_append
                    || !w.space_waiters.is_empty()
                    || w.queued_bytes >= journal.config.max_batch_bytes));
        if has_work || st.poisoned.is_some() {
            return Poll::Ready(());
        }
        st.w.writer_waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl<D: Directory> MetadataJournal<D> {
    /// Starts the writer task of a writable journal (the end of open).
    pub(crate) fn start_writer(&mut self) {
        assert!(!self.read_only, "a read-only journal has no writer");
        assert!(self.writer.is_none(), "one writer per journal");
        let writer = Self {
            dir: self.dir.clone(),
            config: self.config.clone(),
            read_only: false,
            state: self.state.clone(),
            writer: None,
        };
        self.writer = Some(compio::runtime::spawn(
            async move { writer.run_writer().await },
        ));
    }

    /// The writer task: one group at a time until the journal is poisoned (or the task dropped).
    async fn run_writer(&self) {
        let _abort = AbortOnPanic;
        loop {
            WaitForWork { journal: self }.await;
            if self.state.borrow().poisoned.is_some() {
                return;
            }
            self.write_next_group().await;
        }
    }

    /// Takes everything queued (and every flush request) as one group, writes it, and applies it;
    /// a failure poisons the journal.
    async fn write_next_group(&self) {
        let (mut runs, bufs, flush_waiters) = {
            let mut st = self.state.borrow_mut();
            st.w.queued_bytes = 0;
            let mut runs: Vec<Run> = st.w.queue.drain(..).collect();
            // Every run taken stays readable in `writing` until applied, from now on: buffered
            // appends are indexed when accepted, and a run waits here behind a segment's creation
            // or an earlier run's write before its own starts.
            let bufs: Vec<Rc<Vec<u8>>> = runs
                .iter_mut()
                .map(|run| {
                    assert_eq!(
                        run.buf.len() as u64,
                        run.totals.bytes,
                        "a run's buffer holds its entries"
                    );
                    if run.binding.is_recycled() && !run.buf.is_empty() {
                        terminate(&mut run.buf, run.offset_bytes, self.config.segment_bytes);
                    }
                    let buf = Rc::new(std::mem::take(&mut run.buf));
                    st.w.writing.push(WritingRun {
                        segment: run.segment,
                        binding: run.binding,
                        offset_bytes: run.offset_bytes,
                        buf: buf.clone(),
                    });
                    buf
                })
                .collect();
            (runs, bufs, std::mem::take(&mut st.w.flush_waiters))
        };
        let must_sync = self.config.sync_on_append || !flush_waiters.is_empty();
        match self.write_group(&mut runs, bufs, must_sync).await {
            Ok(()) => self.apply(runs, flush_waiters, must_sync),
            Err(error) => {
                let failure = Failure::from_error(&error);
                tracing::error!(error = %error, "journal poisoned: group commit failed");
                let in_flight: Vec<Rc<Completion>> = runs
                    .into_iter()
                    .flat_map(|r| r.entries.into_iter().filter_map(|e| e.completion))
                    .chain(flush_waiters)
                    .collect();
                self.poison(&failure, in_flight);
            }
        }
    }

    /// One group: create segments, one write per run, then (if `must_sync`) one fsync per dirty
    /// segment. A durable group writes its runs in order (with write-through, each write is a
    /// durability point); a buffered one keeps every run of a segment in flight at once, so the
    /// kernel's workers copy them into the page cache in parallel.
    async fn write_group(
        &self,
        runs: &mut [Run],
        bufs: Vec<Rc<Vec<u8>>>,
        must_sync: bool,
    ) -> Result<(), JournalError> {
        let concurrent = !self.config.sync_on_append;
        let mut in_flight: Vec<RunWrite<'_>> = Vec::new();
        for (run, buf) in runs.iter_mut().zip(bufs) {
            if let Some(header) = run.create {
                // Every older write completes before the rotation's fsync covers it.
                self.finish_writes(std::mem::take(&mut in_flight)).await?;
                self.create_segment(&header).await?;
            }
            if buf.is_empty() {
                continue;
            }
            let write = self.start_run(run, buf).await?;
            if concurrent {
                in_flight.push(write);
            } else {
                let last_seq = write.await?;
                self.mark_written(last_seq);
            }
        }
        self.finish_writes(in_flight).await?;
        if must_sync {
            self.sync_dirty().await?;
        }
        Ok(())
    }

    /// A rotation's new segment: created (header, first preallocation step, fsync, directory
    /// fsync) only after every older segment's bytes are durable.
    async fn create_segment(&self, header: &SegmentHeader) -> Result<(), JournalError> {
        // A durable segment header claims every seq before its `first_seq` exists: make the
        // older segments' bytes durable first, or a crash could leave the new header but lose the
        // old tail, which would read as a broken chain (corruption).
        self.sync_dirty().await?;
        let from_spare = self.take_spare_for(header);
        // A recycled spare is a whole segment of written space already.
        let preallocate = self.preallocates() && !header.is_recycled();
        let created = segment::create(
            &self.dir,
            header,
            preallocate.then(|| self.preallocation_target(0, 0, 0)),
            self.segment_writes(),
            from_spare,
        )
        .await;
        if from_spare {
            self.spare_taken();
        }
        let file = created?;
        let name = crate::format::segment_file_name(header.segment_no);
        let file_len_bytes = file.len();
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
                binding: header.binding(),
            },
        );
        // The older segments are synced now: let go of handles nothing live needs.
        self.release_idle_handles();
        let recycles = self.state.borrow().stats.spares_recycled > 0;
        if from_spare && !recycles {
            // The next spare is prepared from the start of this segment's life, so it is ready
            // before this one's zeroes run out (the runs extend until it is). A journal that has
            // recycled a segment expects compaction to recycle the next dead one: a zero-written
            // spare is prepared only if none came when a segment nears its end (`zeroed.rs`).
            self.want_spare(file_len_bytes);
        }
        Ok(())
    }

    /// Grows the zeroed space a run needs, then starts the write of its bytes `buf` (readable in
    /// `writing` meanwhile); the returned future completes it.
    async fn start_run(&self, run: &Run, buf: Rc<Vec<u8>>) -> Result<RunWrite<'_>, JournalError> {
        let (file, name) = self
            .segment_file(run.segment)
            .await?
            .expect("a run's segment exists before its bytes are written");
        let run_end = run.offset_bytes + buf.len() as u64;
        // Overwrite zero-written space where there is some: an extending write's fdatasync also
        // commits the new size and extents (about twice the cost here).
        let extends = self
            .ensure_zeroed(&file, &name, run.segment, run_end, buf.len() as u64)
            .await?;
        let (segment, offset_bytes) = (run.segment, run.offset_bytes);
        let last_seq = (run.totals.entry_count > 0).then_some(run.totals.last_seq);
        let direct = file.direct_alignment().is_some();
        let buf_len = buf.len();
        // The next run starts after the entries, over this run's terminator (if any).
        let next_bytes = run.totals.bytes as usize;
        // Aligned writes rewrite the block before them: only one may be in flight.
        assert!(
            !direct || self.config.sync_on_append,
            "direct writes are durable groups, written one run at a time"
        );
        Ok(Box::pin(async move {
            let started = Instant::now();
            let result = if direct {
                let mut writes = std::mem::take(&mut self.state.borrow_mut().w.direct);
                let result = writes
                    .write(&*file, segment, offset_bytes, &buf, next_bytes)
                    .await;
                self.state.borrow_mut().w.direct = writes;
                result
            } else {
                let BufResult(result, _) = file.write_all_at(offset_bytes, SharedBuf(buf)).await;
                result
            };
            result.map_err(|e| JournalError::io("write batch", self.file_path(&name), e))?;
            if file.writes_are_durable() {
                // The write carried its own fdatasync: counted as one.
                let mut st = self.state.borrow_mut();
                st.stats.fsyncs += 1;
                st.stats.fsync_nanos_total += started.elapsed().as_nanos() as u64;
            } else {
                self.state.borrow_mut().w.dirty_segments.insert(segment);
                self.start_write_back(&file, segment, offset_bytes + buf_len as u64);
            }
            if extends {
                self.fill_behind(&file, &name, segment, buf_len as u64);
            }
            Ok(last_seq)
        }))
    }

    /// With `JournalConfig::write_back_bytes`, starts the kernel writing a buffered segment's
    /// bytes below `written_end` to the device once enough accumulated since the last start (one
    /// at a time, in a task of its own: the writer never waits for it). Only a hint: the fsync
    /// that makes the bytes durable, and reports any write error, is unchanged.
    fn start_write_back(&self, file: &Rc<D::File>, segment: u64, written_end: u64) {
        let limit_bytes = self.config.write_back_bytes;
        if self.config.sync_on_append || limit_bytes == 0 {
            return;
        }
        let mut st = self.state.borrow_mut();
        let mark = &mut st.w.write_back;
        if mark.segment != segment {
            mark.segment = segment;
            mark.from_bytes = 0;
        }
        if written_end < mark.from_bytes.saturating_add(limit_bytes) || mark.in_flight.get() {
            return;
        }
        let (from_bytes, in_flight) = (mark.from_bytes, mark.in_flight.clone());
        mark.from_bytes = written_end;
        in_flight.set(true);
        let file = file.clone();
        compio::runtime::spawn(async move {
            if let Err(error) = file.start_write_back(from_bytes, written_end - from_bytes).await {
                tracing::debug!(%error, segment, "journal write-back hint failed (the fsync decides)");
            }
            in_flight.set(false);
        })
        .detach();
    }

    /// Waits for every write in `writes` (all of them, even after a failure), then records the
    /// highest seq written: every earlier one is written too, as the runs are in log order.
    async fn finish_writes(&self, writes: Vec<RunWrite<'_>>) -> Result<(), JournalError> {
        if writes.is_empty() {
            return Ok(());
        }
        let mut pending: Vec<Option<RunWrite<'_>>> = writes.into_iter().map(Some).collect();
        let mut results: Vec<Result<Option<u64>, JournalError>> = Vec::new();
        std::future::poll_fn(|cx| {
            for slot in pending.iter_mut() {
                if let Some(write) = slot {
                    if let Poll::Ready(result) = write.as_mut().poll(cx) {
                        results.push(result);
                        *slot = None;
                    }
                }
            }
            if pending.iter().all(Option::is_none) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
        let mut last_seq = None;
        for result in results {
            last_seq = last_seq.max(result?);
        }
        self.mark_written(last_seq);
        Ok(())
    }

    /// Every seq up to `last_seq` (when a write carried entries) has been handed to the OS: the
    /// runs before it were written first, in log order.
    fn mark_written(&self, last_seq: Option<u64>) {
        if let Some(last_seq) = last_seq {
            let mut st = self.state.borrow_mut();
            assert!(
                last_seq > st.w.write_done_seq,
                "runs written out of log order"
            );
            st.w.write_done_seq = last_seq;
        }
    }

    /// What segment `number`'s entry header crcs cover (plain for a segment that is gone: it
    /// holds nothing to read).
    pub(crate) fn segment_binding(&self, number: u64) -> crate::format::Binding {
        self.state
            .borrow()
            .segments
            .get(&number)
            .map_or(crate::format::Binding::Plain, |h| h.binding)
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
        let opened = self
            .dir
            .open_file_as(&name, mode, self.segment_writes())
            .await;
        let file = Rc::new(
            opened.map_err(|e| JournalError::io("reopen segment", self.file_path(&name), e))?,
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
        let active = st.w.cursor_segment;
        for (number, handle) in st.segments.iter_mut() {
            if *number == active
                || st.slots.references(*number)
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

    /// A group is on disk (and synced when `synced`): index it (durable mode) and resolve its
    /// waiters.
    fn apply(&self, runs: Vec<Run>, flush_waiters: Vec<Rc<Completion>>, synced: bool) {
        let mut guard = self.state.borrow_mut();
        let st = &mut *guard;
        st.stats.batches += 1;
        for run in runs {
            for e in run.entries {
                if self.config.sync_on_append {
                    let location = Location {
                        segment: run.segment,
                        offset_bytes: e.offset_bytes,
                        len_bytes: e.len_bytes,
                    };
                    index_entry(st, e.kind, e.op, location);
                }
                if let Some(completion) = &e.completion {
                    completion.resolve(Ok(()));
                }
            }
            let totals = run.totals;
            if totals.entry_count == 0 {
                continue;
            }
            assert_eq!(
                totals.first_seq,
                st.w.written_seq + 1,
                "groups apply in log order"
            );
            st.w.written_seq = totals.last_seq;
            st.stats.appends += totals.data_entries;
            st.stats.bytes_appended += totals.data_bytes;
            st.commit_written = st.commit_written.max(totals.commit_op);
            st.w.inflight_bytes -= totals.bytes as usize;
            if let Some(handle) = st.segments.get_mut(&run.segment) {
                handle.end_link = Link {
                    next_seq: totals.last_seq + 1,
                    chain_crc: totals.last_header_crc,
                };
                handle.entry_count += totals.entry_count;
            }
        }
        for written in std::mem::take(&mut st.w.writing) {
            st.w.recycle(written.buf, self.config.max_inflight_bytes);
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

    /// After a failed write or fsync: every later call fails; every waiter is released with the
    /// failure (`in_flight`: the completions of the group that failed).
    pub(crate) fn poison(&self, failure: &Failure, in_flight: Vec<Rc<Completion>>) {
        let mut st = self.state.borrow_mut();
        if st.poisoned.is_none() {
            st.poisoned = Some(failure.describe());
        }
        for c in in_flight {
            c.resolve(Err((failure.clone(), true)));
        }
        for run in st.w.queue.drain(..) {
            for c in run.entries.into_iter().filter_map(|e| e.completion) {
                c.resolve(Err((failure.clone(), false)));
            }
        }
        for c in std::mem::take(&mut st.w.flush_waiters) {
            c.resolve(Err((failure.clone(), false)));
        }
        st.w.writing.clear();
        st.w.queued_bytes = 0;
        st.w.inflight_bytes = 0;
        st.w.wake_all_waiters();
    }
}

/// Held by the writer task: a panic there (a broken invariant) aborts the process. The runtime
/// would catch it and drop the task, leaving every append waiting on a completion no one
/// resolves; a crash is what recovery is built for, a silent hang is not.
struct AbortOnPanic;

impl Drop for AbortOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!(
                "journal: the writer task panicked; aborting (the log recovers at the next open)"
            );
            std::process::abort();
        }
    }
}

/// Ends a recycled segment's run (at `offset_bytes`) with its terminator: a zero entry header
/// (fewer zeroes where the segment's `segment_bytes` end sooner), since what follows the run on
/// disk is the file's older life, not zeroes (format.rs, "Recycled segments"). The next run
/// starts where the terminator does and overwrites it in its own write.
fn terminate(buf: &mut Vec<u8>, offset_bytes: u64, segment_bytes: u64) {
    let end_bytes = offset_bytes + buf.len() as u64;
    let len = segment_bytes
        .saturating_sub(end_bytes)
        .min(crate::format::TERMINATOR_BYTES as u64) as usize;
    buf.resize(buf.len() + len, 0);
}
