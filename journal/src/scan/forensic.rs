//! forensic: every entry on disk, in file order, for a tool that shows what is there (`keel
//! dump`, `keel inspect`). The recovery scan ([`scan_log`](super::scan_log)) stops at the first
//! entry that breaks the chain or fails its payload checksum; this walk keeps going past each
//! such entry, reporting it, and stops only where the bytes are no entry header at all (or an
//! entry runs past the end of its file) — there is no next entry to find without guessing.
//!
//! It uses the scan's own rules (header decode, payload checksum, `seq` + `prev_crc` chain) and
//! its file listing and reads. It never judges what a break means (that is the scan's and
//! `recovery.rs`'s) and never writes.

use keel_storage::Directory;

use super::parse::{body_matches, clean_end};
use crate::error::JournalError;
use crate::format::{
    EntryHeader, HeaderFault, SegmentHeader, SegmentHeaderFault, ENTRY_HEADER_BYTES,
    SEGMENT_HEADER_BYTES,
};
use crate::segment;

/// One entry header the walk found, with its payload.
#[derive(Debug, Clone, Copy)]
pub struct ForensicEntry<'a> {
    /// Where the entry's header starts in its file.
    pub offset_bytes: u64,
    /// The decoded header (its own checksum holds).
    pub header: EntryHeader,
    /// The header's crc (what the next entry's `prev_crc` chains to).
    pub header_crc: u32,
    /// The payload (`header.payload_len` bytes, padding excluded).
    pub payload: &'a [u8],
    /// Whether the payload (with its padding as on disk) matches `header.payload_crc`.
    pub payload_ok: bool,
    /// Whether the entry continues the chain: `seq` one past the previous entry's (or the
    /// segment header's `first_seq`) and `prev_crc` its header crc (or the header's `prev_crc`).
    pub chained: bool,
}

/// Where and why the walk of one file stopped before its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ForensicStop {
    /// The segment header does not decode: no entry of the file is walked.
    SegmentHeader(SegmentHeaderFault),
    /// Bytes at `offset_bytes` that are neither an entry header nor zeroes to the end.
    EntryHeader {
        /// Where the bytes start.
        offset_bytes: u64,
        /// Why they are no header.
        fault: HeaderFault,
    },
    /// The entry at `offset_bytes` is longer than what is left of the file.
    PastEnd {
        /// Where the entry's header starts.
        offset_bytes: u64,
    },
}

/// What the walk of one segment's bytes found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForensicSegment {
    /// The segment header, when it decodes.
    pub header: Option<SegmentHeader>,
    /// End of the last entry walked (the segment header's end when there is none; 0 when the
    /// segment header does not decode).
    pub end_bytes: u64,
    /// Entries walked.
    pub entries: u64,
    /// Offsets of the entries that do not continue the chain (each one the scan would stop at).
    pub chain_breaks: Vec<u64>,
    /// Offsets of the entries whose payload fails its checksum.
    pub bad_payloads: Vec<u64>,
    /// Why the walk stopped before the end of the file (`None`: the end, or zeroes to it).
    pub stop: Option<ForensicStop>,
}

/// One segment file of a journal directory as walked.
#[derive(Debug, Clone)]
pub struct ForensicFile {
    /// The file's name.
    pub name: String,
    /// Its size in bytes.
    pub len_bytes: u64,
    /// What the walk found in it.
    pub segment: ForensicSegment,
}

/// Walks one segment file's bytes (from offset 0), handing every entry to `on_entry`.
pub fn walk_segment(bytes: &[u8], on_entry: &mut dyn FnMut(&ForensicEntry<'_>)) -> ForensicSegment {
    let mut walked = ForensicSegment::default();
    let header = match SegmentHeader::decode(bytes) {
        Ok(header) => header,
        Err(fault) => {
            walked.stop = Some(ForensicStop::SegmentHeader(fault));
            return walked;
        }
    };
    walked.header = Some(header);
    let binding = header.binding();
    let (mut next_seq, mut chain_crc) = (header.first_seq, header.prev_crc);
    let mut offset = SEGMENT_HEADER_BYTES;
    while offset < bytes.len() {
        let rest = &bytes[offset..];
        let (header, header_crc) = match EntryHeader::decode(rest, binding) {
            Ok(decoded) => decoded,
            Err(HeaderFault::Zero | HeaderFault::Short) if clean_end(rest, binding) => break,
            Err(fault) => {
                let offset_bytes = offset as u64;
                walked.stop = Some(ForensicStop::EntryHeader {
                    offset_bytes,
                    fault,
                });
                break;
            }
        };
        let len = header.entry_len_bytes();
        if len > rest.len() {
            let offset_bytes = offset as u64;
            walked.stop = Some(ForensicStop::PastEnd { offset_bytes });
            break;
        }
        let entry = ForensicEntry {
            offset_bytes: offset as u64,
            header,
            header_crc,
            payload: &rest[ENTRY_HEADER_BYTES..ENTRY_HEADER_BYTES + header.payload_len as usize],
            payload_ok: body_matches(&header, &rest[ENTRY_HEADER_BYTES..len]),
            chained: header.seq == next_seq && header.prev_crc == chain_crc,
        };
        walked.record(&entry);
        on_entry(&entry);
        (next_seq, chain_crc) = (header.seq + 1, header_crc);
        offset += len;
    }
    walked.end_bytes = offset.min(bytes.len()) as u64;
    walked
}

impl ForensicSegment {
    fn record(&mut self, entry: &ForensicEntry<'_>) {
        self.entries += 1;
        if !entry.chained {
            self.chain_breaks.push(entry.offset_bytes);
        }
        if !entry.payload_ok {
            self.bad_payloads.push(entry.offset_bytes);
        }
    }
}

/// Walks every segment file of the journal directory `dir` in segment order (each read whole,
/// at most `max_file_bytes`), handing each entry to `on_entry` with its file's name. Read-only.
pub async fn walk_journal<D: Directory>(
    dir: &D,
    max_file_bytes: u64,
    on_entry: &mut dyn FnMut(&str, &ForensicEntry<'_>),
) -> Result<Vec<ForensicFile>, JournalError> {
    let (files, _temps) = segment::list(dir).await?;
    let mut walked = Vec::with_capacity(files.len());
    let mut bytes = Vec::new();
    for file in files {
        segment::read_whole_into(dir, &file.name, max_file_bytes, &mut bytes).await?;
        let segment = walk_segment(&bytes, &mut |entry| on_entry(&file.name, entry));
        walked.push(ForensicFile {
            len_bytes: bytes.len() as u64,
            name: file.name,
            segment,
        });
    }
    Ok(walked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{encode_entry, Binding, EntryKind, NewEntry};

    /// A segment of `n` chained entries; returns the bytes and each entry's offset.
    fn segment(n: u64) -> (Vec<u8>, Vec<usize>) {
        let mut out = SegmentHeader::new(0, 1, 0).encode().to_vec();
        let (mut prev, mut offsets) = (0, Vec::new());
        for seq in 1..=n {
            offsets.push(out.len());
            let entry = NewEntry {
                kind: EntryKind::Data,
                seq,
                op: seq,
                prev_crc: prev,
                durable_seq: 0,
                commit_op: 0,
            };
            prev = encode_entry(&mut out, &entry, &[seq as u8; 5], Binding::Plain);
        }
        (out, offsets)
    }

    fn walk(bytes: &[u8]) -> (ForensicSegment, Vec<u64>) {
        let mut ops = Vec::new();
        let walked = walk_segment(bytes, &mut |entry| ops.push(entry.header.op));
        (walked, ops)
    }

    #[test]
    fn a_clean_segment_is_walked_to_its_zero_tail() {
        let (mut bytes, _) = segment(4);
        let end = bytes.len() as u64;
        bytes.extend_from_slice(&[0; 300]);
        let (walked, ops) = walk(&bytes);
        assert_eq!(ops, [1, 2, 3, 4]);
        assert_eq!(walked.end_bytes, end);
        assert_eq!((walked.stop, walked.chain_breaks.len()), (None, 0));
    }

    #[test]
    fn the_walk_goes_past_a_chain_break_and_a_bad_payload_and_reports_both() {
        let (mut bytes, offsets) = segment(3);
        let (tail, _) = segment(2); // seqs 1, 2 again: entry 4 breaks the chain
        bytes.extend_from_slice(&tail[SEGMENT_HEADER_BYTES..]);
        bytes[offsets[1] + ENTRY_HEADER_BYTES] ^= 0xff; // entry 2's payload
        let (walked, ops) = walk(&bytes);
        assert_eq!(ops, [1, 2, 3, 1, 2], "every entry on disk");
        assert_eq!(walked.bad_payloads, [offsets[1] as u64]);
        let break_at = (offsets[2] + (offsets[2] - offsets[1])) as u64;
        assert_eq!(walked.chain_breaks, [break_at]);
        assert_eq!(walked.stop, None);
    }

    #[test]
    fn the_walk_stops_at_bytes_that_are_no_header() {
        let (mut bytes, offsets) = segment(3);
        bytes[offsets[2] + 1] ^= 1;
        let (walked, ops) = walk(&bytes);
        assert_eq!(ops, [1, 2]);
        assert!(matches!(
            walked.stop,
            Some(ForensicStop::EntryHeader { offset_bytes, .. }) if offset_bytes == offsets[2] as u64
        ));
        let (short, _) = segment(2);
        let (walked, _) = walk(&short[..short.len() - 1]);
        assert!(matches!(walked.stop, Some(ForensicStop::PastEnd { .. })));
        let (walked, ops) = walk(&[1u8; 10]);
        assert!(matches!(walked.stop, Some(ForensicStop::SegmentHeader(_))));
        assert!(ops.is_empty());
    }
}
