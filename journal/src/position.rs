//! position: where an op's newest live entry sits in the log's chain — its `seq` and its header
//! crc (the checksum the next entry chains to). A snapshot records the position of its op, so a
//! recovery can tell a snapshot of this log from one of another history.
//!
//! Owns only what a header read through the index (`read::read_indexed`) says of the chain; it
//! must never write.

use keel_storage::Directory;

use crate::error::JournalError;
use crate::read::Extent;
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
        let Some(read) = self.read_indexed(op, Extent::Header).await? else {
            return Ok(None);
        };
        Ok(Some(EntryPosition {
            seq: read.header.seq,
            chain_crc: read.chain_crc,
        }))
    }
}
