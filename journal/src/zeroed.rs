//! zeroed: the zero-written space a durable journal keeps ahead of its write cursor, and the one
//! zero-fill that may run in the background while groups write below it.
//!
//! Owns when a segment grows and by how much, and which group waits for which fill. It must never
//! let a group write where a fill is still writing (a zero chunk landing after the group's bytes
//! would erase them), never fill behind an `O_DIRECT` handle in the background unless the fill is
//! block-aligned, so that no block of it is one an aligned direct group write also covers (a
//! page-cache copy of such a block could later be written back stale over the group's bytes), and
//! never leave a fill running after `close` returns.

use std::rc::Rc;

use keel_storage::{Directory, Storage, DIRECT_ALIGN_BYTES};

use crate::error::JournalError;
use crate::spare::SpareStep;
use crate::MetadataJournal;

/// Zeroes are written ahead of the write cursor in steps of an eighth of a segment, at most this
/// much (a whole 64 MiB segment at once would stall the group that rotates for as long as it takes
/// to write and fsync it). A new step starts when a write comes within half a step of the end.
const PREALLOCATE_STEP_MAX_BYTES: u64 = 8 << 20;

/// A new segment's first step; each later one is half what the segment holds (or [`STEP_RUNS`]
/// runs, if more), up to the largest: a journal that writes little never pays for 8 MiB of zeroes
/// (a fresh journal's open wrote them all before its first append), and right after a step the
/// zeroed space is at most twice what was written, or that plus [`STEP_RUNS`] runs (a step
/// starts when the writes come within half a step of the end).
const PREALLOCATE_STEP_MIN_BYTES: u64 = 256 << 10;

/// A step is at least this many times the run that asks for it: with steps of half the segment's
/// size alone, a fresh segment written by 260 KiB groups (64 x 4 KiB) took a step every group or
/// two in its first megabytes, growing 1.5x at a time, groups past the zeroes waiting inline
/// (kept open 0.57-0.64x of the plain loop, fresh 0.50-0.52x; with this, 0.99-1.07x and
/// 0.63-0.64x in the same hour, BENCHMARKS.md). Small groups keep the small first step.
const STEP_RUNS: u64 = 8;

/// The zero-fill running in its own task: `segment`'s zeroes are complete below `from_bytes`,
/// and the task writes the next step from there.
pub(crate) struct BackgroundFill {
    segment: u64,
    from_bytes: u64,
    name: String,
    task: compio::runtime::JoinHandle<std::io::Result<()>>,
}

impl<D: Directory> MetadataJournal<D> {
    /// Prepares the space a run of `segment` writes up to `run_end`: waits for the background
    /// fill that covers it; past the zeroes with no fill under way, lets the run extend the file
    /// and returns true (the caller starts the next step once the run is written,
    /// [`Self::fill_behind`]); behind an `O_DIRECT` handle, fills inline unless the step is
    /// block-aligned ([`fills_beside_safely`]). A run that comes within
    /// half a step of the zeroed end arranges the next step beside the groups
    /// ([`Self::next_step_beside`]).
    pub(crate) async fn ensure_zeroed(
        &self,
        file: &Rc<D::File>,
        name: &str,
        segment: u64,
        run_end: u64,
        run_bytes: u64,
    ) -> Result<bool, JournalError> {
        if !self.preallocates() {
            return Ok(false);
        }
        let filling = self.state.borrow().w.fill.as_ref().map(|f| f.segment);
        if run_end > self.zeroed_end(segment, file) && filling == Some(segment) {
            // The fill is writing where this run goes: a zero chunk landing after the run's bytes
            // would erase them.
            self.finish_fill(Some(segment)).await?;
        }
        let ready = self.zeroed_end(segment, file);
        if run_end > ready {
            // Past the zeroes with no fill under way: the run extends the file (one extending
            // write) instead of waiting for a step written in front of it, which wrote up to
            // eight runs of zeroes while the group waited; the step follows it. (An aligned
            // direct write ends at a block boundary, so the step after it may go direct too.)
            self.state.borrow_mut().stats.runs_extending += 1;
            return Ok(true);
        }
        let filling = self.state.borrow().w.fill.as_ref().map(|f| f.segment);
        if filling == Some(segment)
            || run_end <= ready.saturating_sub(self.preallocation_step(ready, run_bytes) / 2)
        {
            return Ok(false);
        }
        if run_end <= ready && self.next_step_beside(file, name, segment, ready, run_bytes) {
            return Ok(false);
        }
        let target = self.preallocation_target(ready, run_end, run_bytes);
        self.state.borrow_mut().stats.zero_fills_inline += 1;
        file.preallocate(target)
            .await
            .map_err(|e| JournalError::io("preallocate", self.file_path(name), e))?;
        Ok(false)
    }

    /// A run that extended `segment` (see [`Self::ensure_zeroed`]) has been written: its next
    /// step starts now, beside the groups after it.
    pub(crate) fn fill_behind(&self, file: &Rc<D::File>, name: &str, segment: u64, run_bytes: u64) {
        if self.state.borrow().w.fill.is_none() {
            self.next_step_beside(file, name, segment, file.len(), run_bytes);
        }
    }

    /// Arranges `segment`'s next step (its zeroes end at `ready`) without a group waiting for
    /// it: nothing when it is zeroed to its end (a spare is wanted), a rotation into a ready
    /// spare, or a fill in the background. False when only an inline fill can do it.
    fn next_step_beside(
        &self,
        file: &Rc<D::File>,
        name: &str,
        segment: u64,
        ready: u64,
        run_bytes: u64,
    ) -> bool {
        let target = self.preallocation_target(ready, ready, run_bytes);
        if target <= ready {
            // The segment is zeroed to its end: its rotation is next.
            self.want_spare(ready);
            return true;
        }
        if self.spare_step(ready) != SpareStep::None {
            return true;
        }
        if self.state.borrow().w.fill.is_none() && fills_beside_safely(file.as_ref(), ready, target)
        {
            self.start_fill(file, name, segment, ready, target);
            return true;
        }
        false
    }

    /// Where `segment`'s complete zeroes end: the file's length, or where its fill started.
    fn zeroed_end(&self, segment: u64, file: &Rc<D::File>) -> u64 {
        match &self.state.borrow().w.fill {
            Some(fill) if fill.segment == segment => fill.from_bytes,
            _ => file.len(),
        }
    }

    fn start_fill(&self, file: &Rc<D::File>, name: &str, segment: u64, from: u64, target: u64) {
        assert!(target > from, "a fill grows the file");
        let file = file.clone();
        let task = compio::runtime::spawn(async move { file.preallocate(target).await });
        let fill = BackgroundFill {
            segment,
            from_bytes: from,
            name: name.to_string(),
            task,
        };
        let mut st = self.state.borrow_mut();
        let previous = st.w.fill.replace(fill);
        assert!(previous.is_none(), "one background fill at a time");
        st.stats.zero_fills_in_background += 1;
    }

    /// Waits for the background fill (of `segment`, or whichever runs when `None`); its zeroes
    /// are then complete. Its failure is the journal's (as an inline fill's would be).
    pub(crate) async fn finish_fill(&self, segment: Option<u64>) -> Result<(), JournalError> {
        let fill = {
            let mut st = self.state.borrow_mut();
            let matches =
                st.w.fill
                    .as_ref()
                    .is_some_and(|f| segment.is_none_or(|s| s == f.segment));
            if matches {
                st.w.fill.take()
            } else {
                None
            }
        };
        let Some(fill) = fill else { return Ok(()) };
        let result = fill
            .task
            .await
            .unwrap_or_else(|_| Err(std::io::Error::other("zero-fill task panicked")));
        result.map_err(|e| JournalError::io("preallocate", self.file_path(&fill.name), e))
    }

    /// How far to preallocate a segment whose zeroed space ends at `current_end` when a write
    /// reaches `needed_end`: one step past both, never past the segment size (unless one entry
    /// alone is larger).
    pub(crate) fn preallocation_target(
        &self,
        current_end: u64,
        needed_end: u64,
        run_bytes: u64,
    ) -> u64 {
        let step_end =
            current_end.max(needed_end) + self.preallocation_step(current_end, run_bytes);
        // Whole blocks, so that the step after this one starts aligned (see
        // `fills_beside_safely`).
        let step_end = step_end.next_multiple_of(DIRECT_ALIGN_BYTES as u64);
        step_end.min(self.config.segment_bytes.max(needed_end))
    }

    /// Zero-filled space pays only where writes are durable one group at a time (an overwrite's
    /// fdatasync is cheaper than an extending one's); buffered appends would write every byte
    /// twice for nothing, so they never preallocate.
    pub(crate) fn preallocates(&self) -> bool {
        self.config.preallocate && self.config.sync_on_append
    }

    /// The next step for a segment whose zeroed space ends at `zeroed_end`, asked for by a run of
    /// `run_bytes`: half as much again or [`STEP_RUNS`] such runs, whichever is more, from
    /// [`PREALLOCATE_STEP_MIN_BYTES`] to an eighth of a segment (at most
    /// [`PREALLOCATE_STEP_MAX_BYTES`]).
    fn preallocation_step(&self, zeroed_end: u64, run_bytes: u64) -> u64 {
        let max = (self.config.segment_bytes / 8).clamp(512, PREALLOCATE_STEP_MAX_BYTES);
        (zeroed_end / 2)
            .max(run_bytes.saturating_mul(STEP_RUNS))
            .clamp(PREALLOCATE_STEP_MIN_BYTES.min(max), max)
    }
}

/// Whether a fill of `file` from `from_bytes` to `to_bytes` may run beside the groups. Through the
/// page cache, always. Behind an `O_DIRECT` descriptor only block-aligned: groups write below
/// `from_bytes` and their aligned writes end on a block boundary at or below it, so the fill's
/// blocks and theirs are disjoint, and no page-cache copy of a block a group writes direct can be
/// written back over it later (the zero chunks then are aligned direct writes too,
/// [`Storage::preallocate`]). Otherwise the fill is inline.
fn fills_beside_safely<S: Storage>(file: &S, from_bytes: u64, to_bytes: u64) -> bool {
    file.direct_alignment().is_none_or(|align| {
        from_bytes.is_multiple_of(align as u64) && to_bytes.is_multiple_of(align as u64)
    })
}
