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

/// How much of an entry [`MetadataJournal::read_indexed`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Extent {
    /// The header alone.
    Header,
    /// Header, payload and padding.
    Whole,
}

/// An entry read through the index, its header decoded and checked to be the op's.
pub(crate) struct IndexedRead {
    pub header: EntryHeader,
    /// The header's crc: what the next entry chains to.
    pub chain_crc: u32,
    /// The bytes read (see [`Extent`]).
    pub bytes: Vec<u8>,
    /// Its segment's file name.
    pub name: String,
    pub location: Location,
}

impl IndexedRead {
    /// The error for an entry of `op` whose bytes failed a check.
    pub fn corrupt(&self, op: u64) -> JournalError {
        corrupt_entry(&self.name, &self.location, op)
    }
}

/// The entry of `op` at `location` in segment `name` failed a check on read.
fn corrupt_entry(name: &str, location: &Location, op: u64) -> JournalError {
    JournalError::Corrupt {
        kind: crate::Case::CorruptEntry,
        file: name.to_string(),
        offset_bytes: location.offset_bytes,
        op: Some(op),
    }
}

impl<D: Directory> MetadataJournal<D> {
    /// The newest entry for `op`, if live.
    pub async fn entry(&self, op: u64) -> Result<Option<Entry>, JournalError> {
        if let Some(reason) = &self.state.borrow().poisoned {
            return Err(JournalError::Poisoned(reason.clone()));
        }
        let Some(read) = self.read_indexed(op, Extent::Whole).await? else {
            return Ok(None);
        };
        let header = &read.header;
        if header.kind != EntryKind::Data
            || header.entry_len_bytes() != read.bytes.len()
            || crc32fast::hash(&read.bytes[ENTRY_HEADER_BYTES..]) != header.payload_crc
        {
            tracing::warn!(segment = %read.name, offset_bytes = read.location.offset_bytes, op,
                "journal: entry failed its checksum on read");
            return Err(read.corrupt(op));
        }
        let end = ENTRY_HEADER_BYTES + header.payload_len as usize;
        Ok(Some(Entry {
            op,
            payload: Bytes::from(read.bytes).slice(ENTRY_HEADER_BYTES..end),
        }))
    }

    /// Reads `op`'s newest live entry through the index (its header alone, or all of it) and
    /// decodes its header, which must be `op`'s: from the writer's queue while the entry is not
    /// written yet (buffered appends are indexed when accepted), else from its segment. `None`
    /// when `op` is not live or its segment is gone.
    pub(crate) async fn read_indexed(
        &self,
        op: u64,
        extent: Extent,
    ) -> Result<Option<IndexedRead>, JournalError> {
        let location = self.state.borrow().slots.get(op);
        let Some(location) = location else {
            return Ok(None);
        };
        let (len_bytes, stage) = match extent {
            Extent::Header => (ENTRY_HEADER_BYTES, "read entry header"),
            Extent::Whole => (location.len_bytes as usize, "read entry"),
        };
        let unwritten = self.state.borrow().w.unwritten_entry(&location, len_bytes);
        let binding = match &unwritten {
            Some((_, binding)) => *binding,
            None => self.segment_binding(location.segment),
        };
        let (bytes, name) = match unwritten {
            Some((bytes, _)) => (bytes, format::segment_file_name(location.segment)),
            None => {
                let Some((file, name)) = self.segment_file(location.segment).await? else {
                    return Ok(None);
                };
                let bytes = file
                    .read_exact_at(location.offset_bytes, len_bytes)
                    .await
                    .map_err(|e| JournalError::io(stage, self.file_path(&name), e))?;
                (bytes, name)
            }
        };
        match EntryHeader::decode(&bytes, binding) {
            Ok((header, chain_crc)) if header.op == op => Ok(Some(IndexedRead {
                header,
                chain_crc,
                bytes,
                name,
                location,
            })),
            _ => Err(corrupt_entry(&name, &location, op)),
        }
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
