//! writer: the caller's side of the write path: encoding entries into the queue, the in-flight
//! bound, and waiting for the writer task.
//!
//! Owns the order of the log (seq and chain are assigned synchronously when an entry is accepted,
//! so concurrent appends on one core can never interleave bytes) and the queue the writer task
//! (`group`) drains. An append never performs I/O itself: it encodes, wakes the writer and, with
//! `sync_on_append`, awaits its completion, so dropping an append future at any await leaves the
//! journal exactly as usable as before (the entry is written or was never accepted). It must never
//! resolve a durable append before an fsync covers it and every entry before it, and never hold a
//! `RefCell` borrow across an await.

use std::collections::{BTreeSet, VecDeque};
use std::rc::Rc;
use std::task::Waker;

use keel_storage::Directory;

use crate::error::JournalError;
use crate::format::{
    encode_entry, entry_len_bytes, Binding, EntryKind, NewEntry, SegmentHeader,
    SEGMENT_HEADER_BYTES,
};
use crate::scan::Link;
use crate::slots::{check_op, Location, SlotRefusal};
use crate::{MetadataJournal, State};

pub(crate) use crate::completion::{Completion, Failure, WakeOnce};

/// Run buffers kept for reuse once written (each up to `max_batch_bytes`, and all of them together
/// at most `max_inflight_bytes`): enough for every run the in-flight bound allows (8 with the
/// defaults), so a stream of buffered appends allocates no run buffer in steady state (with 4,
/// half the runs took a fresh 1 MiB buffer, page faults and zeroing included).
const SPARE_BUFFERS_MAX: usize = 16;

/// A run's first capacity with `sync_on_append` (groups are usually small); buffered appends
/// reserve a whole `max_batch_bytes` run at once, so encoding never reallocates.
const SYNC_RUN_CAPACITY_BYTES: usize = 64 << 10;

/// One entry waiting in a run.
pub(crate) struct PendingEntry {
    pub kind: EntryKind,
    pub op: u64,
    pub offset_bytes: u64,
    pub len_bytes: u32,
    /// Who waits for this entry: the last entry of a durable call; none for buffered appends
    /// and for the other entries of a batch (the writer resolves in log order).
    pub completion: Option<Rc<Completion>>,
}

/// Contiguous bytes for one segment, written by one `write_all_at`.
pub(crate) struct Run {
    pub segment: u64,
    /// The segment's binding: a recycled segment's run is written with its terminator (the
    /// bytes of `buf` past `totals.bytes`, once the writer took the run).
    pub binding: Binding,
    /// Create this segment (header, preallocation, fsync, dir fsync) before writing.
    pub create: Option<SegmentHeader>,
    pub offset_bytes: u64,
    pub buf: Vec<u8>,
    /// Entries applied one by one: every entry with `sync_on_append` (indexed when applied),
    /// else only those someone waits for. Buffered appends are counted in `totals` alone, so
    /// accepting one costs no per-entry record.
    pub entries: Vec<PendingEntry>,
    pub totals: RunTotals,
}

/// What applying a run needs to know of all its entries.
#[derive(Default, Clone, Copy)]
pub(crate) struct RunTotals {
    /// Seq of its first entry (0 while it holds none).
    pub first_seq: u64,
    pub last_seq: u64,
    /// Header crc of its last entry: the chain's state after it.
    pub last_header_crc: u32,
    pub entry_count: u64,
    /// Bytes of all its entries (its share of the in-flight bound).
    pub bytes: u64,
    pub data_entries: u64,
    pub data_bytes: u64,
    /// Highest commit watermark its entries carry.
    pub commit_op: u64,
}

impl RunTotals {
    /// Counts one more entry (in log order).
    fn add(&mut self, kind: EntryKind, seq: u64, header_crc: u32, len_bytes: u64, commit_op: u64) {
        if self.entry_count == 0 {
            self.first_seq = seq;
        }
        self.last_seq = seq;
        self.last_header_crc = header_crc;
        self.entry_count += 1;
        self.bytes += len_bytes;
        if kind == EntryKind::Data {
            self.data_entries += 1;
            self.data_bytes += len_bytes;
        }
        self.commit_op = self.commit_op.max(commit_op);
    }
}

impl Run {
    fn new(
        segment: u64,
        binding: Binding,
        create: Option<SegmentHeader>,
        offset_bytes: u64,
        buf: Vec<u8>,
    ) -> Self {
        Self {
            segment,
            binding,
            create,
            offset_bytes,
            buf,
            entries: Vec::new(),
            totals: RunTotals::default(),
        }
    }
}

/// A run the writer took from the queue and has not applied yet. Its bytes stay readable here
/// while the write is in flight: buffered appends are indexed when accepted, before any write.
pub(crate) struct WritingRun {
    pub segment: u64,
    pub binding: Binding,
    pub offset_bytes: u64,
    pub buf: Rc<Vec<u8>>,
}

/// Everything the write path tracks. Lives inside the journal's `RefCell<State>`.
pub(crate) struct WriterState {
    pub next_seq: u64,
    pub chain_crc: u32,
    /// Segment and offset the next entry goes to, and that segment's binding.
    pub cursor_segment: u64,
    pub cursor_offset_bytes: u64,
    pub cursor_binding: Binding,
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
    /// Bytes in `queue` (the buffered writer starts a group once a batch's worth is queued).
    pub queued_bytes: usize,
    /// Runs of the group being written (see [`WritingRun`]).
    pub writing: Vec<WritingRun>,
    pub flush_waiters: Vec<Rc<Completion>>,
    /// Accepted bytes not yet applied (queued or being written); appends wait above the bound.
    pub inflight_bytes: usize,
    pub space_waiters: Vec<Waker>,
    /// The writer task, asleep until there is work.
    pub writer_waker: Option<Waker>,
    pub dirty_segments: BTreeSet<u64>,
    /// Some entry has no later entry whose durable watermark covers it (see `close`).
    pub tail_uncovered: bool,
    /// Written run buffers, reused by the next runs.
    pub spare_buffers: Vec<Vec<u8>>,
    /// The last partial block and staging buffer of aligned writes (`JournalConfig::direct_io`);
    /// taken out while a write is in flight.
    pub direct: crate::direct::DirectWrites,
    /// Where the next early write-back starts (`JournalConfig::write_back_bytes`).
    pub write_back: WriteBackMark,
    /// The zero-fill running in the background, if any (`zeroed`).
    pub fill: Option<crate::zeroed::BackgroundFill>,
    /// The next segment, prepared in the background (`spare`), if any.
    pub spare: Option<crate::spare::Spare>,
}

/// The segment and offset up to which a buffered journal has started write-back, and whether
/// one is still being queued.
#[derive(Debug, Default)]
pub(crate) struct WriteBackMark {
    pub segment: u64,
    pub from_bytes: u64,
    pub in_flight: Rc<std::cell::Cell<bool>>,
}

impl WriterState {
    /// The state after an open: `cursor` is the active segment, the offset after its last entry
    /// and its binding.
    pub fn new(link: Link, cursor: Option<(u64, u64, Binding)>, next_segment_number: u64) -> Self {
        Self {
            next_seq: link.next_seq,
            chain_crc: link.chain_crc,
            cursor_segment: cursor.map_or(0, |c| c.0),
            cursor_offset_bytes: cursor.map_or(0, |c| c.1),
            cursor_binding: cursor.map_or(Binding::Plain, |c| c.2),
            needs_rotation: cursor.is_none(),
            next_segment_number,
            durable_seq: link.next_seq - 1,
            written_seq: link.next_seq - 1,
            write_done_seq: link.next_seq - 1,
            queue: VecDeque::new(),
            queued_bytes: 0,
            writing: Vec::new(),
            flush_waiters: Vec::new(),
            inflight_bytes: 0,
            space_waiters: Vec::new(),
            writer_waker: None,
            dirty_segments: BTreeSet::new(),
            tail_uncovered: false,
            spare_buffers: Vec::new(),
            direct: Default::default(),
            write_back: WriteBackMark::default(),
            fill: None,
            spare: None,
        }
    }

    pub fn wake_writer(&mut self) {
        if let Some(waker) = self.writer_waker.take() {
            waker.wake();
        }
    }

    pub fn wake_all_waiters(&mut self) {
        for run in &self.queue {
            for c in run.entries.iter().filter_map(|e| e.completion.as_ref()) {
                c.wake();
            }
        }
        for c in &self.flush_waiters {
            c.wake();
        }
        for w in self.space_waiters.drain(..) {
            w.wake();
        }
        self.wake_writer();
    }

    /// A buffer for a new run: a spare one when there is, else a new one of `capacity_bytes`.
    fn run_buffer(&mut self, capacity_bytes: usize) -> Vec<u8> {
        self.spare_buffers
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(capacity_bytes))
    }

    /// Takes back a written run's buffer for reuse, while the spares hold at most
    /// `spare_bytes_max` in all.
    pub fn recycle(&mut self, buf: Rc<Vec<u8>>, spare_bytes_max: usize) {
        if let Ok(mut buf) = Rc::try_unwrap(buf) {
            let spare_bytes: usize = self.spare_buffers.iter().map(Vec::capacity).sum();
            if self.spare_buffers.len() < SPARE_BUFFERS_MAX
                && spare_bytes + buf.capacity() <= spare_bytes_max
            {
                buf.clear();
                self.spare_buffers.push(buf);
            }
        }
    }

    /// The first `len_bytes` of an accepted entry not yet applied, from the queue or the group in
    /// flight, with the binding its header crc is under.
    pub fn unwritten_entry(
        &self,
        location: &Location,
        len_bytes: usize,
    ) -> Option<(Vec<u8>, Binding)> {
        assert!(
            len_bytes <= location.len_bytes as usize,
            "a read within the entry"
        );
        let len = location.len_bytes as usize;
        let within = |segment: u64, offset_bytes: u64, buf: &[u8], binding: Binding| {
            let start = location.offset_bytes.checked_sub(offset_bytes)? as usize;
            (segment == location.segment && start + len <= buf.len())
                .then(|| (buf[start..start + len_bytes].to_vec(), binding))
        };
        self.queue
            .iter()
            .find_map(|run| within(run.segment, run.offset_bytes, &run.buf, run.binding))
            .or_else(|| {
                self.writing
                    .iter()
                    .find_map(|run| within(run.segment, run.offset_bytes, &run.buf, run.binding))
            })
    }
}

/// The slot ring's view of one entry: data is indexed, markers move the ring. With
/// `sync_on_append` this runs when the entry's group is applied, else when it is accepted; both
/// in log order.
pub(crate) fn index_entry<D: Directory>(
    st: &mut State<D>,
    kind: EntryKind,
    op: u64,
    location: Location,
) {
    match kind {
        EntryKind::Data => {
            // A snapshot marker earlier in the log may have passed this op since it was
            // accepted: then it is dead, exactly as replay will see it.
            let result = st.slots.insert(op, location);
            assert!(
                !matches!(result, Err(SlotRefusal::Full { .. })),
                "Full is checked before encoding and the watermark only rises"
            );
        }
        EntryKind::Truncate => st.slots.truncate_after(op),
        EntryKind::Snapshot => st.slots.set_snapshot(op),
        EntryKind::Commit => {}
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

    /// Refuses an entry the journal cannot take, before anything is encoded.
    fn check_entry(
        &self,
        kind: EntryKind,
        op: u64,
        payload_len: usize,
    ) -> Result<(), JournalError> {
        if kind != EntryKind::Data {
            return Ok(());
        }
        if payload_len > self.config.max_payload_bytes {
            return Err(JournalError::PayloadTooLarge {
                len_bytes: payload_len,
                max_bytes: self.config.max_payload_bytes,
            });
        }
        let snapshot_op = self.state.borrow().slots.snapshot_op();
        check_op(op, snapshot_op, self.config.slot_count).map_err(|refusal| match refusal {
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
        })
    }

    /// Accepts entries (all data, or one marker) in order, contiguous in the log, and waits until
    /// the writer has written them (and synced them, with `sync_on_append`). Every entry is checked
    /// before any is encoded: a refusal accepts none.
    pub(crate) async fn submit<P: AsRef<[u8]>>(
        &self,
        kind: EntryKind,
        entries: &[(u64, P)],
    ) -> Result<(), JournalError> {
        let total_bytes: usize = entries
            .iter()
            .map(|(_, p)| entry_len_bytes(p.as_ref().len()))
            .sum();
        let completion = loop {
            self.check_usable()?;
            for (op, payload) in entries {
                self.check_entry(kind, *op, payload.as_ref().len())?;
            }
            let over = {
                let st = self.state.borrow();
                st.w.inflight_bytes > 0
                    && st.w.inflight_bytes + total_bytes > self.config.max_inflight_bytes
            };
            if !over {
                let queued_before = self.state.borrow().w.queued_bytes;
                let completion = self.encode_all(kind, entries);
                if completion.is_none() && self.batch_just_filled(queued_before) {
                    keel_storage::yield_now().await;
                }
                break completion;
            }
            let register = |waker: Waker| {
                let mut st = self.state.borrow_mut();
                st.w.space_waiters.push(waker);
                // A buffered writer waits for a batch's worth; a waiter for space is reason enough.
                st.w.wake_writer();
                true
            };
            WakeOnce {
                register: &register,
                registered: false,
            }
            .await;
        };
        match completion {
            Some(completion) => self.wait(completion).await,
            None => Ok(()),
        }
    }

    /// True when a buffered journal's queue just reached a batch's worth (it held
    /// `queued_before` before this append): the append then yields once, so the writer task
    /// starts that batch's write while the caller goes on encoding the next (on another core, the
    /// kernel copies it meanwhile). Without the yield, a caller that never waits runs until the
    /// in-flight bound stops it, and the copy starts only then, after all the encoding.
    fn batch_just_filled(&self, queued_before: usize) -> bool {
        let batch = self.config.max_batch_bytes;
        queued_before < batch && self.state.borrow().w.queued_bytes >= batch
    }

    /// Encodes every entry in one borrow and wakes the writer; returns the completion of the last
    /// one when the caller must wait for durability.
    fn encode_all<P: AsRef<[u8]>>(
        &self,
        kind: EntryKind,
        entries: &[(u64, P)],
    ) -> Option<Rc<Completion>> {
        let wait = self.config.sync_on_append;
        let mut guard = self.state.borrow_mut();
        let st = &mut *guard;
        let mut last = None;
        for (i, (op, payload)) in entries.iter().enumerate() {
            let completion = (wait && i + 1 == entries.len()).then(Rc::<Completion>::default);
            last = completion.clone();
            self.encode(st, kind, *op, payload.as_ref(), completion);
        }
        st.w.wake_writer();
        last
    }

    /// Opens a new segment in the queue when the cursor needs one for an entry of `len` bytes.
    fn rotate_if_needed(&self, st: &mut State<D>, len: usize) {
        let w = &mut st.w;
        let rotate = w.needs_rotation
            || (w.cursor_offset_bytes + len as u64 > self.config.segment_bytes
                && w.cursor_offset_bytes > SEGMENT_HEADER_BYTES as u64);
        if !rotate {
            return;
        }
        let number = w.next_segment_number;
        w.next_segment_number += 1;
        let mut header = SegmentHeader::new(number, w.next_seq, w.chain_crc);
        header.snapshot_op = st.snapshot_encoded;
        header.commit_op = st.commit_set;
        if w.spare.as_ref().is_some_and(|s| s.reserve_if_recycled()) {
            header = header.recycled();
        }
        w.cursor_binding = header.binding();
        w.queue.push_back(Run::new(
            number,
            w.cursor_binding,
            Some(header),
            SEGMENT_HEADER_BYTES as u64,
            Vec::new(),
        ));
        w.cursor_segment = number;
        w.cursor_offset_bytes = SEGMENT_HEADER_BYTES as u64;
        w.needs_rotation = false;
    }

    /// Makes the queue's last run the one the next entry of `len` bytes goes to: the cursor's
    /// segment and offset, with room under `max_batch_bytes` (one larger entry gets a run alone).
    fn ensure_run(&self, w: &mut WriterState, len: usize) {
        let fits_last = w.queue.back().is_some_and(|run| {
            run.segment == w.cursor_segment
                && run.offset_bytes + run.buf.len() as u64 == w.cursor_offset_bytes
                && (run.buf.is_empty() || run.buf.len() + len <= self.config.max_batch_bytes)
        });
        if !fits_last {
            let capacity = if self.config.sync_on_append {
                SYNC_RUN_CAPACITY_BYTES.min(self.config.max_batch_bytes)
            } else {
                self.config.max_batch_bytes
            };
            let buf = w.run_buffer(capacity.max(len));
            w.queue.push_back(Run::new(
                w.cursor_segment,
                w.cursor_binding,
                None,
                w.cursor_offset_bytes,
                buf,
            ));
        }
    }

    /// Encodes one entry into the queue, assigning seq, chain, segment and offset. Synchronous:
    /// the log order is the order of these calls.
    fn encode(
        &self,
        st: &mut State<D>,
        kind: EntryKind,
        op: u64,
        payload: &[u8],
        completion: Option<Rc<Completion>>,
    ) {
        let len = entry_len_bytes(payload.len());
        self.rotate_if_needed(st, len);
        self.ensure_run(&mut st.w, len);
        let w = &mut st.w;
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
            w.cursor_binding,
        );
        let location = Location {
            segment: run.segment,
            offset_bytes: w.cursor_offset_bytes,
            len_bytes: len as u32,
        };
        run.totals
            .add(kind, seq, header_crc, len as u64, st.commit_set);
        if self.config.sync_on_append || completion.is_some() {
            run.entries.push(PendingEntry {
                kind,
                op,
                offset_bytes: location.offset_bytes,
                len_bytes: location.len_bytes,
                completion,
            });
        }
        w.next_seq += 1;
        w.chain_crc = header_crc;
        w.cursor_offset_bytes += len as u64;
        w.inflight_bytes += len;
        w.queued_bytes += len;
        w.tail_uncovered = true;
        if kind == EntryKind::Snapshot {
            st.snapshot_encoded = st.snapshot_encoded.max(op);
        }
        if !self.config.sync_on_append {
            index_entry(st, kind, op, location);
        }
    }

    /// Asks the writer to make everything accepted so far durable, and waits.
    pub(crate) async fn request_flush(&self) -> Result<(), JournalError> {
        self.check_usable()?;
        let completion = Rc::new(Completion::default());
        {
            let mut st = self.state.borrow_mut();
            st.w.flush_waiters.push(completion.clone());
            st.w.wake_writer();
        }
        self.wait(completion).await
    }

    /// Waits for the writer to resolve `completion`. Dropping this future changes nothing: the
    /// entry is written all the same, and nobody else waits on this completion.
    async fn wait(&self, completion: Rc<Completion>) -> Result<(), JournalError> {
        completion.wait().await
    }

    pub(crate) fn file_path(&self, name: &str) -> String {
        format!("{}/{name}", self.dir.display_path())
    }
}
