//! position: where an op's newest live entry sits in the log's chain — its `seq` and its header
//! crc (the checksum the next entry chains to). A snapshot records the position of its op, so a
//! recovery can tell a snapshot of this log from one of another history.
//!
//! Owns only the read of one entry header through the index; it must never write.

use keel_storage::Directory;

use crate::error::JournalError;
use crate::format::{EntryHeader, ENTRY_HEADER_BYTES};
use crate::MetadataJournal;

/// An entry's place in the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EntryPosition {
    /// The entry's seq.
    pub seq: u64,
    /// Its header crc: what the next entry's `prev_crc` holds.
    pub chain_crc: u32,
}

impl<D: Directory> MetadataJournal<D> {
    /// The chain position of `op`'s newest live entry (one header read), `None` if not live.
    pub async fn entry_position(&self, op: u64) -> Result<Option<EntryPosition>, JournalError> {
        let location = self.state.borrow().slots.get(op);
        let Some(location) = location else {
            return Ok(None);
        };
        let Some((bytes, name)) = self
            .entry_bytes(&location, ENTRY_HEADER_BYTES, "read entry header")
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
        let (header, chain_crc) = EntryHeader::decode(&bytes).map_err(|_| corrupt())?;
        if header.op != op {
            return Err(corrupt());
        }
        Ok(Some(EntryPosition {
            seq: header.seq,
            chain_crc,
        }))
    }
}
