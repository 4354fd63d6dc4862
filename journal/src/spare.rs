//! spare: the one segment file a durable journal prepares ahead of its next rotation, zero-written
//! and synced in a task of its own, so the segment a rotation opens is overwrite space from its
//! first group to its last.
//!
//! Owns the spare's name, size, preparation and readiness. Why it exists: growing the segment
//! being written (even by a background zero-fill) changes that file's size and extents, so every
//! group whose fdatasync runs meanwhile also waits for an ext4 journal commit: measured on 64 x
//! 128 B groups, the batches after each step took 1-11 ms against 0.2 ms (BENCHMARKS.md, seventh
//! pass). The spare is another file, so the groups' fdatasyncs never carry its metadata.
//!
//! It must never hold an entry: entries go into a spare only after `segment::create` has written
//! its header, synced it, renamed it to the segment's name and synced the directory, so a spare
//! found on disk (a crash or a close before a rotation took it) holds zeroes and at most a header,
//! and preparing it again (truncate, refill) destroys nothing. Its preparation writes through the
//! page cache one chunk at a time and waits for each chunk's write-back, then as long again, before
//! the next (`keel_storage::write_back_paced`), so the device never holds more than a chunk of it
//! ahead of the groups' writes and gives it at most about half of its bandwidth.

use std::cell::Cell;
use std::rc::Rc;

use keel_storage::{Directory, OpenMode, Storage};

use crate::error::JournalError;
use crate::MetadataJournal;

/// The spare's file name in the journal directory; never a segment's or a temp file's name.
pub(crate) const SPARE_FILE_NAME: &str = "next.spare";

/// The smallest spare (unless segments are smaller): the first segment grows in place from
/// 256 KiB; its first spare is four times its zeroes then, so a journal reaches full-size
/// segments in a few rotations and a short-lived one writes few zeroes it never uses.
const SPARE_MIN_BYTES: u64 = 4 << 20;

/// No spare is prepared for a segment zeroed to less than this (unless that is all of it).
const SPARE_AFTER_BYTES: u64 = 1 << 20;

/// A spare is this many times the zeroed space of the segment that asks for it.
const SPARE_GROWTH: u64 = 4;

/// Zeroes written between two waits for write-back (each followed by as long a pause): a
/// group's fdatasync queued behind one chunk's write-back waits for at most this much transfer.
const PREPARE_CHUNK_BYTES: u64 = 256 << 10;

/// What the spare does for a segment that needs its next step (`spare_step`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SpareStep {
    /// A ready spare: the next entry rotates into it.
    Rotate,
    /// A spare is being prepared: runs extend the segment until it is ready.
    Preparing,
    /// No spare can serve: grow the segment in place.
    None,
}

/// Where the spare stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Readiness {
    Preparing,
    /// Zero-written and synced.
    Ready,
    Failed,
}

/// The spare being prepared or ready (at most one per journal).
pub(crate) struct Spare {
    readiness: Rc<Cell<Readiness>>,
    /// The preparing task; dropping it (close, drop, poison) cancels the preparation.
    _task: compio::runtime::JoinHandle<()>,
}

impl<D: Directory> MetadataJournal<D> {
    /// A run of the active segment needs its next preallocation step (its zeroes end at
    /// `zeroed_end`): what the spare does about it. [`SpareStep::Rotate`]: a ready spare makes
    /// the step unnecessary, and the next entry starts a new segment (the rotation takes it).
    /// [`SpareStep::Preparing`]: one is being prepared (started now, if none was), and the runs
    /// until it is ready extend the segment rather than grow it by a fill in place, whose
    /// extents and size changes put ext4 journal commits into every group's fdatasync meanwhile
    /// (64 x 128 B groups: clusters of 2-9 ms groups after each in-place step, BENCHMARKS.md).
    /// [`SpareStep::None`]: no spare can serve (a young segment, a failed preparation, a
    /// compaction under way): the caller grows the segment in place.
    pub(crate) fn spare_step(&self, zeroed_end: u64) -> SpareStep {
        let (readiness, compacting) = {
            let st = self.state.borrow();
            (
                st.w.spare.as_ref().map(|s| s.readiness.get()),
                st.compacting,
            )
        };
        match readiness {
            // A compaction past its flush takes a sealed segment's entries as all written; a
            // rotation asked for now would seal the segment this run is still writing.
            Some(Readiness::Ready) if compacting => SpareStep::None,
            Some(Readiness::Ready) => {
                self.state.borrow_mut().w.needs_rotation = true;
                SpareStep::Rotate
            }
            Some(Readiness::Preparing) => SpareStep::Preparing,
            Some(Readiness::Failed) => SpareStep::None,
            // Only a journal that preallocates ever has a spare; `want_spare` checks that.
            None if self.want_spare(zeroed_end) => SpareStep::Preparing,
            None => SpareStep::None,
        }
    }

    /// A run came near the end of a segment whose zeroes end at `zeroed_end`: the next rotation
    /// will want a spare, so one is prepared now if none is (a no-op while the segment is young,
    /// and without preallocation: spares pay where it does, in durable groups). Returns whether
    /// the journal has a spare (being prepared or ready) afterwards.
    pub(crate) fn want_spare(&self, zeroed_end: u64) -> bool {
        if self.state.borrow().w.spare.is_some() {
            return true;
        }
        if !self.preallocates() {
            return false;
        }
        // A young segment's own steps are cheap; its spare's zeroes would compete with a
        // short-lived journal's groups for nothing (fresh 64 x 128 B runs: 0.81x -> 0.61x).
        let segment_complete = zeroed_end >= self.config.segment_bytes;
        if zeroed_end < SPARE_AFTER_BYTES && !segment_complete {
            return false;
        }
        let len_bytes = zeroed_end
            .saturating_mul(SPARE_GROWTH)
            .max(SPARE_MIN_BYTES)
            .min(self.config.segment_bytes);
        self.start_spare(len_bytes);
        true
    }

    /// Takes the ready spare for a rotation: false when there is none ready.
    pub(crate) fn take_ready_spare(&self) -> bool {
        let mut st = self.state.borrow_mut();
        let ready = st.w.spare.as_ref().map(|s| s.readiness.get()) == Some(Readiness::Ready);
        if ready {
            st.w.spare = None;
            st.stats.spares_adopted += 1;
        }
        ready
    }

    /// Cancels a preparation in flight (close): no write of this journal lands after it.
    pub(crate) fn drop_spare(&self) {
        self.state.borrow_mut().w.spare = None;
    }

    fn start_spare(&self, len_bytes: u64) {
        assert!(len_bytes > 0, "a spare holds at least one byte");
        let readiness = Rc::new(Cell::new(Readiness::Preparing));
        let dir = self.dir.clone();
        let path = self.file_path(SPARE_FILE_NAME);
        let mark = readiness.clone();
        let task = compio::runtime::spawn(async move {
            match prepare(&dir, &path, len_bytes).await {
                Ok(()) => mark.set(Readiness::Ready),
                Err(error) => {
                    // Not the journal's failure: it grows its segments in place instead.
                    tracing::warn!(%error, file = %path, "journal: preparing the spare segment failed; growing segments in place");
                    mark.set(Readiness::Failed);
                }
            }
        });
        let mut st = self.state.borrow_mut();
        assert!(st.w.spare.is_none(), "one spare at a time");
        st.w.spare = Some(Spare {
            readiness,
            _task: task,
        });
    }
}

/// Writes the spare (at `path`) afresh: `len_bytes` of zeroes, each chunk's write-back waited
/// for, synced.
async fn prepare<D: Directory>(dir: &D, path: &str, len_bytes: u64) -> Result<(), JournalError> {
    let io = |stage: &'static str| move |e| JournalError::io(stage, path, e);
    let file = dir
        .open_file(SPARE_FILE_NAME, OpenMode::Create)
        .await
        .map_err(io("open spare"))?;
    file.truncate(0).await.map_err(io("truncate spare"))?;
    let mut done_bytes = 0u64;
    while done_bytes < len_bytes {
        let next_bytes = (done_bytes + PREPARE_CHUNK_BYTES).min(len_bytes);
        file.preallocate(next_bytes)
            .await
            .map_err(io("zero-fill spare"))?;
        keel_storage::write_back_paced(&file, done_bytes, next_bytes - done_bytes)
            .await
            .map_err(io("write back spare"))?;
        done_bytes = next_bytes;
    }
    file.sync().await.map_err(io("fsync spare"))?;
    assert_eq!(
        file.len(),
        len_bytes,
        "the spare is exactly as long as asked"
    );
    Ok(())
}
