//! parse: one segment's entries read in order while they are valid and chained — the rule
//! "header and payload checksums hold, `seq` rises by exactly 1, `prev_crc` chains", applied to
//! a whole file or to a stream of pieces. It never reads files and never decides what a stop
//! means (`evidence.rs` and `recovery.rs` do).

use super::{all_zero, valid_headers, EntryMeta, Link, Stop};
use crate::format::{Binding, EntryHeader, EntryKind, HeaderFault, ENTRY_HEADER_BYTES};
use crate::recovery::StopFact;

/// Where a parse of (part of) a segment ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// A clean end at this offset: end of file, or zeroes from it to the end of the file.
    End(u64),
    /// The bytes given end inside the entry at `offset`; at least `len_bytes` from there are
    /// needed (streaming only: never returned when the bytes reach the end of the file).
    NeedMore { offset: u64, len_bytes: usize },
    /// An all-zero header at this offset whose bytes continue past those given: a clean end
    /// if the rest of the file is one ([`clean_end`]), else a bad header here (streaming only).
    Zeroes(u64),
    /// Valid entries stop here.
    Stop(Stop),
}

/// Parses entries from file offset `from` while they are valid and chained, in `bytes` (the file's
/// bytes from offset `base`; `at_eof` when they reach the end of the file). Every valid entry is
/// pushed to `out` and handed with its payload to `on_entry`. Returns where parsing ended and the
/// chain state after the last valid entry. `binding` is the segment's ([`Binding`]).
#[allow(clippy::too_many_arguments)]
pub fn parse_entries(
    bytes: &[u8],
    base: u64,
    from: u64,
    mut link: Link,
    binding: Binding,
    at_eof: bool,
    out: &mut Vec<EntryMeta>,
    on_entry: &mut dyn FnMut(&EntryMeta, &[u8]),
) -> (Parsed, Link) {
    assert!(from >= base, "parse starts before the bytes given");
    let mut offset = from;
    loop {
        let rest = &bytes[((offset - base) as usize).min(bytes.len())..];
        let (h, crc) = match next_header(rest, offset, link, binding, at_eof) {
            Ok(decoded) => decoded,
            Err(parsed) => return (parsed, link),
        };
        let len = h.entry_len_bytes();
        let body = &rest[ENTRY_HEADER_BYTES..len];
        if !body_matches(&h, body) {
            let stop = Stop {
                offset_bytes: offset,
                fact: StopFact::BadPayload,
                expected_seq: link.next_seq,
                op: Some(h.op),
                kind: Some(h.kind),
            };
            return (Parsed::Stop(stop), link);
        }
        let meta = EntryMeta {
            kind: h.kind,
            seq: h.seq,
            op: h.op,
            offset_bytes: offset,
            len_bytes: len as u32,
            payload_len: h.payload_len,
            payload_crc: h.payload_crc,
            header_crc: crc,
            durable_seq: h.durable_seq,
            commit_op: h.commit_op,
        };
        on_entry(&meta, &body[..h.payload_len as usize]);
        out.push(meta);
        link = Link {
            next_seq: h.seq + 1,
            chain_crc: crc,
        };
        offset += len as u64;
    }
}

/// Whether an entry's body as on disk (payload and padding, `entry_len - header` bytes) matches
/// its header's payload checksum: the one payload rule of the scan and the forensic walk.
pub(crate) fn body_matches(header: &EntryHeader, body: &[u8]) -> bool {
    crc32fast::hash(body) == header.payload_crc
}

/// Whether the bytes of a segment from an entry boundary to the end of the file (`rest`, which
/// begins with a zero header or is shorter than one) are a clean end of its entries: zeroes to the
/// end; or, in a recycled segment, the terminator its last group wrote, with no header of this
/// life after it (what follows is the file's older life, whose headers fail this binding).
pub(crate) fn clean_end(rest: &[u8], binding: Binding) -> bool {
    all_zero(rest) || (binding.is_recycled() && valid_headers(rest, 0, binding).is_empty())
}

/// The header of the entry at `offset` (whose bytes from there are `rest`) when it is valid,
/// chained to `link` and whole within `rest`; otherwise where parsing ends.
fn next_header(
    rest: &[u8],
    offset: u64,
    link: Link,
    binding: Binding,
    at_eof: bool,
) -> Result<(EntryHeader, u32), Parsed> {
    let stop = |fact, op: Option<u64>, kind: Option<EntryKind>| {
        Parsed::Stop(Stop {
            offset_bytes: offset,
            fact,
            expected_seq: link.next_seq,
            op,
            kind,
        })
    };
    let need_more = |len_bytes| Parsed::NeedMore { offset, len_bytes };
    if rest.is_empty() {
        return Err(if at_eof {
            Parsed::End(offset)
        } else {
            need_more(ENTRY_HEADER_BYTES)
        });
    }
    let (h, crc) = match EntryHeader::decode(rest, binding) {
        Ok(decoded) => decoded,
        Err(HeaderFault::Zero | HeaderFault::Short) if all_zero(rest) => {
            return Err(if at_eof {
                Parsed::End(offset)
            } else {
                Parsed::Zeroes(offset)
            });
        }
        // A recycled segment's terminator, followed by the file's older life.
        Err(HeaderFault::Zero) if binding.is_recycled() => {
            return Err(match at_eof {
                false => Parsed::Zeroes(offset),
                true if clean_end(rest, binding) => Parsed::End(offset),
                true => stop(StopFact::BadEntryHeader, None, None),
            });
        }
        Err(HeaderFault::Short) if !at_eof => return Err(need_more(ENTRY_HEADER_BYTES)),
        Err(_) => return Err(stop(StopFact::BadEntryHeader, None, None)),
    };
    if h.seq != link.next_seq || h.prev_crc != link.chain_crc {
        return Err(stop(StopFact::ChainBreak, Some(h.op), Some(h.kind)));
    }
    let len = h.entry_len_bytes();
    if rest.len() < len {
        return Err(if at_eof {
            stop(StopFact::BadPayload, Some(h.op), Some(h.kind))
        } else {
            need_more(len)
        });
    }
    Ok((h, crc))
}

/// `parse_entries` over a whole file (`bytes` from offset 0 to the end), for callers that need
/// no payloads: the result is never `NeedMore` or `Zeroes`.
pub fn parse_whole(
    bytes: &[u8],
    from: u64,
    link: Link,
    binding: Binding,
    out: &mut Vec<EntryMeta>,
) -> (Result<u64, Stop>, Link) {
    let (parsed, link) = parse_entries(bytes, 0, from, link, binding, true, out, &mut |_, _| {});
    let result = match parsed {
        Parsed::End(end) => Ok(end),
        Parsed::Stop(stop) => Err(stop),
        other => unreachable!("a whole-file parse ended with {other:?}"),
    };
    (result, link)
}
