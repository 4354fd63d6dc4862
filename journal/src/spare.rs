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
//! It must never hold an entry of the log: entries go into a spare only after `segment::create`
//! has written its header, synced it, renamed it to the segment's name and synced the directory.
//! A spare is either zero-written here, or **recycled**: a dead segment compaction renamed to the
//! spare's name instead of deleting it (already-written space: a group overwrites it with no
//! zero-fill and no metadata change). A recycled spare still holds its older life's entries; the
//! segment a rotation makes of it is format version 2 (`format.rs`: its header crcs cover its
//! number, its groups end with a terminator), so none of them ever reads as an entry. A spare
//! found on disk at open is recycled if it is a whole segment long (whatever it holds, it is not
//! in the log), else left for the next preparation to truncate and refill. Its preparation writes through the
//! page cache one chunk at a time and waits for each chunk's write-back, then as long again, before
//! the next (`keel_storage::write_back_paced`), so the device never holds more than a chunk of it
//! ahead of the groups' writes and gives it at most about half of its bandwidth.

use std::cell::Cell;
use std::rc::Rc;

use keel_storage::{Directory, OpenMode, Storage};

use crate::error::JournalError;
use crate::format::SegmentHeader;
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
    /// Compaction is renaming a dead segment to the spare's name: no rotation takes it and no
    /// preparation starts until the rename is durable (then `Recycled`), or until compaction
    /// stops short of that (then the spare is gone: `RecyclingSpare`'s drop).
    Recycling,
    /// A whole segment's written space, older entries in it: the next rotation takes it.
    Recycled,
    /// Recycled and promised to the segment a rotation queued (its header says recycled).
    Reserved,
    /// A rotation is making a segment of the file (header, fsync, rename): until it is renamed,
    /// nothing else may put a file under the spare's name (compaction's recycling would swap the
    /// file the rotation renames for another).
    Adopting,
}

/// The spare being prepared or ready (at most one per journal).
pub(crate) struct Spare {
    readiness: Rc<Cell<Readiness>>,
    /// The preparing task (none for a recycled spare); dropping it (close, drop, poison)
    /// cancels the preparation.
    _task: Option<compio::runtime::JoinHandle<()>>,
}

/// A spare compaction is making of a dead segment (`Readiness::Recycling`) until `done`: if
/// compaction stops first (an error, or its future dropped), the spare is forgotten, and the next
/// preparation truncates whatever file is left under its name.
pub(crate) struct RecyclingSpare<'a, D: Directory> {
    journal: &'a MetadataJournal<D>,
    readiness: Rc<Cell<Readiness>>,
}

impl<D: Directory> RecyclingSpare<'_, D> {
    /// The rename is durable: the next rotation may take the spare.
    pub(crate) fn done(self) {
        self.readiness.set(Readiness::Recycled);
    }
}

impl<D: Directory> Drop for RecyclingSpare<'_, D> {
    fn drop(&mut self) {
        if self.readiness.get() != Readiness::Recycling {
            return;
        }
        let mut st = self.journal.state.borrow_mut();
        let ours =
            st.w.spare
                .as_ref()
                .is_some_and(|s| Rc::ptr_eq(&s.readiness, &self.readiness));
        if ours {
            st.w.spare = None;
        }
    }
}

impl Spare {
    /// A rotation is queued for a new segment: whether it is made of this spare (a recycled
    /// one), which is then promised to it: its header and entries are bound as recycled from
    /// the first encode, before the writer creates it.
    pub(crate) fn reserve_if_recycled(&self) -> bool {
        let recycled = self.readiness.get() == Readiness::Recycled;
        if recycled {
            self.readiness.set(Readiness::Reserved);
        }
        recycled
    }
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
            // The next rotation takes it anyway (`Spare::reserve_if_recycled`); while
            // compaction still renames it, or a rotation takes it, the segment grows as it
            // would without one.
            Some(
                Readiness::Recycling
                | Readiness::Recycled
                | Readiness::Reserved
                | Readiness::Adopting,
            ) => SpareStep::None,
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

    /// Takes the spare for the rotation that creates `header`'s segment: the reserved recycled
    /// spare for a recycled header (there always is one), a zero-written ready one otherwise.
    /// False when the segment is to be created as a new file. A taken spare stays `Adopting`
    /// until [`Self::spare_taken`], once the rotation has renamed it (or failed).
    pub(crate) fn take_spare_for(&self, header: &SegmentHeader) -> bool {
        let mut st = self.state.borrow_mut();
        let readiness = st.w.spare.as_ref().map(|s| s.readiness.get());
        let take = if header.is_recycled() {
            assert_eq!(
                readiness,
                Some(Readiness::Reserved),
                "a recycled segment is made of the spare reserved for it"
            );
            st.stats.spares_recycled += 1;
            true
        } else {
            readiness == Some(Readiness::Ready)
        };
        if take {
            let spare = st.w.spare.as_ref().expect("a spare to take");
            spare.readiness.set(Readiness::Adopting);
            st.stats.spares_adopted += 1;
        }
        take
    }

    /// The rotation that took the spare is done with its name (renamed to the segment's, or
    /// failed and poisoned the journal).
    pub(crate) fn spare_taken(&self) {
        let mut st = self.state.borrow_mut();
        let adopting = st.w.spare.as_ref().map(|s| s.readiness.get()) == Some(Readiness::Adopting);
        assert!(adopting, "only a taken spare is released");
        st.w.spare = None;
    }

    /// Compaction is about to rename a dead segment to the spare's name: the spare it becomes
    /// (`RecyclingSpare::done` once the rename is durable), or `None` when recycling does not
    /// serve: the journal does not preallocate (its groups would not overwrite anyway), or has a
    /// recycled spare already. A zero-written spare, ready or not, is replaced: once a journal recycles,
    /// its rotations stop asking for zeroes (`group.rs`, `create_segment`), which is the point. A
    /// preparation under way is cancelled. Its task only ever writes through the
    /// descriptor it opened, so nothing it still has in flight can land in the renamed file, and
    /// it is cancelled before it could truncate one it opened after the rename.
    pub(crate) fn start_recycling(&self) -> Option<RecyclingSpare<'_, D>> {
        if !self.preallocates() {
            return None;
        }
        let mut st = self.state.borrow_mut();
        let replaceable = st.w.spare.as_ref().is_none_or(|s| {
            matches!(
                s.readiness.get(),
                Readiness::Preparing | Readiness::Ready | Readiness::Failed
            )
        });
        if !replaceable {
            return None;
        }
        let readiness = Rc::new(Cell::new(Readiness::Recycling));
        st.w.spare = Some(Spare {
            readiness: readiness.clone(),
            _task: None,
        });
        Some(RecyclingSpare {
            journal: self,
            readiness,
        })
    }

    /// At open: a spare file a whole segment long (compaction recycled it, or a preparation
    /// finished, before the last close or crash) is taken as recycled: whatever it holds, it is not
    /// in the log, and a segment made of it is bound as recycled. Any other spare file is left for
    /// the next preparation to truncate. A spare that cannot be looked at is only logged: it is
    /// not part of the log.
    pub(crate) async fn adopt_found_spare(&self) {
        if !self.preallocates() {
            return;
        }
        let opened = self
            .dir
            .open_file(SPARE_FILE_NAME, OpenMode::ReadOnly)
            .await;
        let len_bytes = match opened {
            Ok(file) => file.len(),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return,
            Err(error) => {
                tracing::warn!(%error, file = %self.file_path(SPARE_FILE_NAME), "journal: cannot open the spare segment; preparing a new one when needed");
                return;
            }
        };
        if len_bytes == self.config.segment_bytes {
            let mut st = self.state.borrow_mut();
            assert!(st.w.spare.is_none(), "an opening journal has no spare yet");
            st.w.spare = Some(Spare {
                readiness: Rc::new(Cell::new(Readiness::Recycled)),
                _task: None,
            });
        }
    }

    /// Whether the next rotation takes a spare (zero-written or recycled) rather than a new file.
    pub(crate) fn spare_ready(&self) -> bool {
        let st = self.state.borrow();
        let readiness = st.w.spare.as_ref().map(|s| s.readiness.get());
        matches!(readiness, Some(Readiness::Ready | Readiness::Recycled))
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
            _task: Some(task),
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
