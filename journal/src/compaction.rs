//! compaction: giving back the disk below the snapshot watermark.
//!
//! Owns deleting the prefix of sealed segments that hold no live entry, and rewriting the first
//! remaining sealed segment with only its live entries (temp file, fsync, rename, directory
//! fsync). It must never touch the active segment, never delete a segment that is not a prefix of
//! the log (the chain would break), and never leave a state where a reopen sees different live
//! entries: each step is durable before the next.
//!
//! Why the result still passes the scan: a rewritten segment gets fresh seqs ending exactly at
//! the old last seq (so the next segment's `first_seq` still follows), a chain restarting at 0
//! (it is the first segment, nothing precedes it), and records in its header the crc the next
//! segment's `prev_crc` chains to (`link_crc`), the snapshot watermark and the commit watermark
//! (the markers it drops). Its flag says every byte was fsynced before it got its name, so any
//! damage in it is corruption, never a torn tail.

use std::rc::Rc;

use keel_storage::{Directory, OpenMode, ReplaceError, ReplaceStage, Storage};

use crate::error::JournalError;
use crate::format::{
    encode_entry, segment_file_name, Binding, EntryHeader, EntryKind, NewEntry, SegmentHeader,
    ENTRY_HEADER_BYTES, FLAG_REWRITTEN, SEGMENT_HEADER_BYTES,
};
use crate::scan::Link;
use crate::slots::Location;
use crate::spare::SPARE_FILE_NAME;
use crate::{CompactionReport, MetadataJournal, SegmentHandle, State};

/// The durable steps of a compaction, for crash tests: the hook runs *after* each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompactionStep {
    /// One fully dead segment was removed and the directory fsynced.
    Deleted {
        /// The segment's number.
        segment: u64,
    },
    /// The temp file holding a rewrite is written and fsynced (not yet renamed).
    TempWritten {
        /// The segment's number.
        segment: u64,
    },
    /// The temp file was renamed over the segment (directory not yet fsynced).
    Renamed {
        /// The segment's number.
        segment: u64,
    },
    /// The directory was fsynced after the rename.
    DirSynced {
        /// The segment's number.
        segment: u64,
    },
}

/// Clears the `compacting` flag however compaction ends.
struct CompactingGuard<'a, D: Directory> {
    journal: &'a MetadataJournal<D>,
}

impl<D: Directory> Drop for CompactingGuard<'_, D> {
    fn drop(&mut self) {
        self.journal.state.borrow_mut().compacting = false;
    }
}

impl<D: Directory> MetadataJournal<D> {
    /// Compaction with a hook called after each durable step; an error from the hook stops it
    /// there (the crash tests crash the simulated disk at that point). A test seam: only with the
    /// `testing` feature.
    #[cfg(any(test, feature = "testing"))]
    pub async fn compact_with_hook(
        &self,
        hook: &mut dyn FnMut(CompactionStep) -> Result<(), JournalError>,
    ) -> Result<CompactionReport, JournalError> {
        self.compact_inner(hook).await
    }

    pub(crate) async fn compact_inner(
        &self,
        hook: &mut dyn FnMut(CompactionStep) -> Result<(), JournalError>,
    ) -> Result<CompactionReport, JournalError> {
        self.check_usable()?;
        {
            let mut st = self.state.borrow_mut();
            if st.compacting {
                return Ok(CompactionReport::default());
            }
            st.compacting = true;
        }
        let _guard = CompactingGuard { journal: self };
        let mut report = CompactionReport {
            bytes_before: self.total_bytes(),
            ..CompactionReport::default()
        };
        self.maybe_seal_active();
        // Everything accepted so far is written and synced: sealed segments will not change.
        self.request_flush().await?;
        report.segments_deleted = self.delete_dead_prefix(hook).await?;
        if let Some(candidate) = self.rewrite_candidate() {
            // Zero live entries happens only for the newest segment (kept above): the rewrite is
            // then a header carrying the watermarks and the chain.
            if (candidate.live.len() as u64) < candidate.entry_count {
                let Candidate {
                    number,
                    end_link,
                    live,
                    ..
                } = candidate;
                self.rewrite(number, end_link, live, hook).await?;
                report.segments_rewritten += 1;
            }
        }
        report.bytes_after = self.total_bytes();
        Ok(report)
    }

    /// Step 1: deletes the dead prefix, oldest first, one directory fsync each, so a crash always
    /// leaves a prefix deleted (never a gap in the chain). Returns how many it deleted.
    async fn delete_dead_prefix(
        &self,
        hook: &mut dyn FnMut(CompactionStep) -> Result<(), JournalError>,
    ) -> Result<u64, JournalError> {
        let mut deleted = 0;
        while let Some((number, name)) = self.oldest_dead_segment() {
            // Out of the map before the first await: a compaction dropped at either await below
            // must not leave a segment the next one would remove again (NotFound, poisoned).
            let handle = self.state.borrow_mut().segments.remove(&number);
            // At least half a segment of written space (a segment sealed early, or grown in
            // place, is shorter): the segment made of it overwrites that much, then grows.
            let worth_recycling =
                handle.is_some_and(|h| h.file_len_bytes() >= self.config.segment_bytes / 2);
            let recycling = worth_recycling.then(|| self.start_recycling()).flatten();
            let recycle = recycling.is_some();
            let removed = if recycle {
                // Leaving the log by the spare's name: the next rotation overwrites its written
                // space (spare.rs). Replaces a spare file no preparation owns any more.
                self.dir.rename(&name, SPARE_FILE_NAME).await
            } else {
                self.dir.remove_file(&name).await
            };
            removed.map_err(|e| self.poison_io("compaction remove", &name, e))?;
            self.dir
                .sync()
                .await
                .map_err(|e| self.poison_io("compaction dir fsync", &name, e))?;
            deleted += 1;
            if let Some(recycling) = recycling {
                // Only once the rename is durable: a power cut before it leaves the segment.
                recycling.done();
            }
            tracing::info!(segment = %name, recycled = recycle, "journal compaction: deleted dead segment");
            hook(CompactionStep::Deleted { segment: number })?;
        }
        Ok(deleted)
    }

    /// The oldest segment when it is sealed, not the newest, and no live op points into it.
    fn oldest_dead_segment(&self) -> Option<(u64, String)> {
        let st = self.state.borrow();
        let sealed_below = sealed_below(&st);
        // The newest segment always stays: it carries the watermarks (its header or its
        // markers) and the chain state the next segment links to.
        st.segments
            .iter()
            .next()
            .filter(|_| st.segments.len() > 1)
            .filter(|(number, _)| **number < sealed_below)
            .filter(|(number, _)| !st.slots.references(**number))
            .map(|(number, handle)| (*number, handle.name.clone()))
    }

    /// Step 2's candidate: the first remaining segment when it is sealed, with its entry count,
    /// end link and live entries in file order.
    fn rewrite_candidate(&self) -> Option<Candidate> {
        let st = self.state.borrow();
        let sealed_below = sealed_below(&st);
        st.segments
            .iter()
            .next()
            .filter(|(number, _)| **number < sealed_below)
            .map(|(number, handle)| {
                let mut live: Vec<(u64, Location)> = st
                    .slots
                    .live()
                    .into_iter()
                    .filter(|(_, l)| l.segment == *number)
                    .collect();
                live.sort_by_key(|(_, l)| l.offset_bytes);
                Candidate {
                    number: *number,
                    entry_count: handle.entry_count,
                    end_link: handle.end_link,
                    live,
                }
            })
    }

    /// Seals the active segment when at least half a segment of it is dead, so the next
    /// compaction can rewrite it (the next append starts a new segment). A journal that
    /// preallocates seals early only when a spare is ready to be the next segment: a new file
    /// would be grown and zeroed again (and would never be whole, so never recycled), where
    /// letting the segment fill keeps every group overwriting written space; the dead space it
    /// keeps meanwhile is at most one segment, recycled once it is sealed.
    fn maybe_seal_active(&self) {
        if self.preallocates() && !self.spare_ready() {
            return;
        }
        let mut st = self.state.borrow_mut();
        if st.w.needs_rotation || !st.segments.contains_key(&st.w.cursor_segment) {
            return;
        }
        let live_bytes = st.slots.live_bytes_in(st.w.cursor_segment);
        let used = st.w.cursor_offset_bytes - SEGMENT_HEADER_BYTES as u64;
        if used.saturating_sub(live_bytes) >= self.config.segment_bytes / 2 {
            st.w.needs_rotation = true;
        }
    }

    /// Rewrites segment `number` with only its `live` entries: encoded with fresh seqs ending
    /// at the old last seq, atomically replaced, then installed in the index.
    async fn rewrite(
        &self,
        number: u64,
        end_link: Link,
        live: Vec<(u64, Location)>,
        hook: &mut dyn FnMut(CompactionStep) -> Result<(), JournalError>,
    ) -> Result<(), JournalError> {
        let Some((old_file, name)) = self.segment_file(number).await? else {
            return Ok(());
        };
        let (buf, moves) = self
            .encode_rewrite(&old_file, &name, number, end_link, &live)
            .await?;
        let bytes_len = buf.len() as u64;
        let target = segment_file_name(number);
        self.replace_segment(number, &target, buf, hook).await?;
        let new_file = self
            .dir
            .open_file(&target, OpenMode::Existing)
            .await
            .map_err(|e| self.poison_io("compaction reopen", &target, e))?;
        {
            let mut st = self.state.borrow_mut();
            for (op, from, to) in moves {
                st.slots.relocate(op, from, to);
            }
            st.segments.insert(
                number,
                SegmentHandle {
                    file: Some(Rc::new(new_file)),
                    len_bytes: bytes_len,
                    name: target.clone(),
                    end_link,
                    entry_count: live.len() as u64,
                    binding: Binding::Plain,
                },
            );
        }
        tracing::info!(segment = %target, bytes = bytes_len, live = live.len(),
            "journal compaction: rewrote straddling segment");
        hook(CompactionStep::DirSynced { segment: number })?;
        Ok(())
    }

    /// The rewritten segment's bytes (header carrying the durable watermarks and the chain, then
    /// every live entry re-read and checked), and each entry's move in the index.
    async fn encode_rewrite(
        &self,
        old_file: &D::File,
        name: &str,
        number: u64,
        end_link: Link,
        live: &[(u64, Location)],
    ) -> Result<(Vec<u8>, Vec<(u64, Location, Location)>), JournalError> {
        let (snapshot_op, commit_op) = {
            let st = self.state.borrow();
            (st.slots.snapshot_op(), st.commit_durable)
        };
        // Fresh seqs ending at the old last seq, so the successor's first_seq still follows.
        let first_seq = end_link.next_seq - live.len() as u64;
        let mut header = SegmentHeader::new(number, first_seq, 0);
        header.flags = FLAG_REWRITTEN;
        header.link_crc = end_link.chain_crc;
        header.snapshot_op = snapshot_op;
        header.commit_op = commit_op;
        let mut buf = header.encode().to_vec();
        let mut prev_crc = 0u32;
        let mut moves = Vec::with_capacity(live.len());
        // The old file's entries are read under its binding; the rewrite is a fresh file (plain).
        let old_binding = self.segment_binding(number);
        for (i, (op, location)) in live.iter().enumerate() {
            let bytes = old_file
                .read_exact_at(location.offset_bytes, location.len_bytes as usize)
                .await
                .map_err(|e| JournalError::io("compaction read", self.file_path(name), e))?;
            let (h, payload) = checked_data_entry(&bytes, name, *op, location, old_binding)?;
            let offset = buf.len() as u64;
            prev_crc = encode_entry(
                &mut buf,
                &NewEntry {
                    kind: EntryKind::Data,
                    seq: first_seq + i as u64,
                    op: *op,
                    prev_crc,
                    durable_seq: first_seq - 1,
                    commit_op: h.commit_op,
                },
                payload,
                Binding::Plain,
            );
            let new_location = Location {
                segment: number,
                offset_bytes: offset,
                len_bytes: location.len_bytes,
            };
            moves.push((*op, *location, new_location));
        }
        Ok((buf, moves))
    }

    /// keel-storage's one atomic replace: `<target>.tmp`, fsync, rename, directory fsync, with
    /// the compaction hook after the temp's fsync and after the rename.
    async fn replace_segment(
        &self,
        number: u64,
        target: &str,
        buf: Vec<u8>,
        hook: &mut dyn FnMut(CompactionStep) -> Result<(), JournalError>,
    ) -> Result<(), JournalError> {
        let replace_hook = |stage: ReplaceStage| match stage {
            ReplaceStage::TempWritten => Ok(()),
            ReplaceStage::TempSynced => hook(CompactionStep::TempWritten { segment: number }),
            ReplaceStage::Renamed => hook(CompactionStep::Renamed { segment: number }),
        };
        match keel_storage::atomic_replace_with(&self.dir, target, buf, replace_hook).await {
            Ok(()) => Ok(()),
            Err(ReplaceError::Halted(error)) => Err(error),
            Err(ReplaceError::Io(error)) => {
                let name = error.path.rsplit('/').next().unwrap_or(target).to_string();
                Err(self.poison_io(error.stage.as_str(), &name, error.source))
            }
        }
    }

    fn total_bytes(&self) -> u64 {
        self.state
            .borrow()
            .segments
            .values()
            .map(SegmentHandle::file_len_bytes)
            .sum()
    }

    /// A failed rename/remove/fsync in compaction poisons like a failed append: the namespace
    /// state is unknown until a reopen scans it.
    fn poison_io(&self, stage: &'static str, name: &str, error: std::io::Error) -> JournalError {
        let error = JournalError::io(stage, self.file_path(name), error);
        let failure = crate::writer::Failure {
            stage,
            file: self.file_path(name),
            kind: match &error {
                JournalError::Io { source, .. } => source.kind(),
                _ => std::io::ErrorKind::Other,
            },
            message: error.to_string(),
        };
        self.poison(&failure, Vec::new());
        error
    }
}

/// The first remaining segment, as compaction's rewrite step sees it.
struct Candidate {
    number: u64,
    /// Entries it holds, live or dead.
    entry_count: u64,
    /// Chain state after its last entry.
    end_link: Link,
    /// Its live entries `(op, location)`, in file order.
    live: Vec<(u64, Location)>,
}

/// Where new entries go: segments below this number are sealed (nothing more is appended there).
fn sealed_below<D: Directory>(st: &State<D>) -> u64 {
    if st.w.needs_rotation {
        st.w.cursor_segment + 1
    } else {
        st.w.cursor_segment
    }
}

/// A data entry for `op` read back from `name` at `location`, checked (header, op, kind, payload
/// checksum): its header and payload, or the corruption it shows.
fn checked_data_entry<'b>(
    bytes: &'b [u8],
    name: &str,
    op: u64,
    location: &Location,
    binding: Binding,
) -> Result<(EntryHeader, &'b [u8]), JournalError> {
    let corrupt = || JournalError::Corrupt {
        kind: crate::Case::CorruptEntry,
        file: name.to_string(),
        offset_bytes: location.offset_bytes,
        op: Some(op),
    };
    let (h, _) = EntryHeader::decode(bytes, binding).map_err(|_| corrupt())?;
    if h.op != op
        || h.kind != EntryKind::Data
        || crc32fast::hash(&bytes[ENTRY_HEADER_BYTES..]) != h.payload_crc
    {
        return Err(corrupt());
    }
    Ok((
        h,
        &bytes[ENTRY_HEADER_BYTES..ENTRY_HEADER_BYTES + h.payload_len as usize],
    ))
}
