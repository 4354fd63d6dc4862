//! read: reading live entries of an open journal back, by op, one at a time or in op order.
//!
//! Owns the checks on the bytes read (header, op, kind, payload checksum). It must never return a
//! payload that failed them, and never hold a `RefCell` borrow across a read.

use keel_storage::{Directory, Storage};

use crate::error::JournalError;
use crate::format::{self, EntryHeader, EntryKind, ENTRY_HEADER_BYTES};
use crate::slots::Location;
use crate::{Bytes, MetadataJournal};

/// One entry as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The op.
    pub op: u64,
    /// Its payload as appended.
    pub payload: Bytes,
}

impl<D: Directory> MetadataJournal<D> {
    /// The newest entry for `op`, if live.
    pub async fn entry(&self, op: u64) -> Result<Option<Entry>, JournalError> {
        let location = {
            let st = self.state.borrow();
            if let Some(reason) = &st.poisoned {
                return Err(JournalError::Poisoned(reason.clone()));
            }
            st.slots.get(op)
        };
        let Some(location) = location else {
            return Ok(None);
        };
        let Some((bytes, name)) = self
            .entry_bytes(&location, location.len_bytes as usize, "read entry")
            .await?
        else {
            return Ok(None);
        };
        let corrupt = || JournalError::Corrupt {
            kind: "corrupt_entry",
            file: name.clone(),
            offset_bytes: location.offset_bytes,
            op: Some(op),
        };
        let (header, _) = EntryHeader::decode(&bytes).map_err(|_| corrupt())?;
        if header.op != op
            || header.kind != EntryKind::Data
            || header.entry_len_bytes() != bytes.len()
            || crc32fast::hash(&bytes[ENTRY_HEADER_BYTES..]) != header.payload_crc
        {
            tracing::warn!(segment = %name, offset_bytes = location.offset_bytes, op,
                "journal: entry failed its checksum on read");
            return Err(corrupt());
        }
        let end = ENTRY_HEADER_BYTES + header.payload_len as usize;
        Ok(Some(Entry {
            op,
            payload: Bytes::from(bytes).slice(ENTRY_HEADER_BYTES..end),
        }))
    }

    /// The first `len_bytes` of the entry at `location`, with its segment's name: from the
    /// writer's queue while the entry is not written yet (buffered appends are indexed when
    /// accepted), else from its segment. `None` when the segment is gone.
    pub(crate) async fn entry_bytes(
        &self,
        location: &Location,
        len_bytes: usize,
        stage: &'static str,
    ) -> Result<Option<(Vec<u8>, String)>, JournalError> {
        assert!(
            len_bytes <= location.len_bytes as usize,
            "a read within the entry"
        );
        if let Some(mut bytes) = self.state.borrow().w.unwritten_entry(location) {
            bytes.truncate(len_bytes);
            return Ok(Some((bytes, format::segment_file_name(location.segment))));
        }
        let Some((file, name)) = self.segment_file(location.segment).await? else {
            return Ok(None);
        };
        let bytes = file
            .read_exact_at(location.offset_bytes, len_bytes)
            .await
            .map_err(|e| JournalError::io(stage, self.file_path(&name), e))?;
        Ok(Some((bytes, name)))
    }

    /// True when the journal's index holds a live entry for `op` (no read).
    pub fn holds(&self, op: u64) -> bool {
        self.state.borrow().slots.get(op).is_some()
    }

    /// Live entries with `op >= from_op`, ascending by op, in global order across segments.
    pub fn reader(&self, from_op: u64) -> JournalReader<'_, D> {
        JournalReader {
            journal: self,
            next_op: from_op,
            done: false,
        }
    }
}

/// Iterates live entries in op order (see [`MetadataJournal::reader`]).
pub struct JournalReader<'j, D: Directory> {
    journal: &'j MetadataJournal<D>,
    next_op: u64,
    /// Op `u64::MAX` was returned: nothing can follow.
    done: bool,
}

impl<D: Directory> JournalReader<'_, D> {
    /// The next live entry, or `None` past the last op.
    pub async fn next(&mut self) -> Result<Option<Entry>, JournalError> {
        loop {
            let (last, snapshot) = {
                let st = self.journal.state.borrow();
                (st.slots.last_op(), st.slots.snapshot_op())
            };
            let Some(last) = last else { return Ok(None) };
            self.next_op = self.next_op.max(snapshot.saturating_add(1));
            if self.next_op > last || self.done {
                return Ok(None);
            }
            let op = self.next_op;
            match op.checked_add(1) {
                Some(next) => self.next_op = next,
                None => self.done = true,
            }
            if let Some(entry) = self.journal.entry(op).await? {
                return Ok(Some(entry));
            }
        }
    }
}
