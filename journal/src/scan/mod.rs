//! scan: reading the log back — parsing segments into entry metadata and finding where (and why)
//! valid entries stop.
//!
//! Owns the rules a valid log obeys (segment header matches its name and links to its
//! predecessor; each entry's header and payload checksums hold; `seq` rises by exactly 1 and
//! `prev_crc` chains) and the look-ahead past a stop for later valid headers whose durable
//! watermark covers it. It must never write: what to do about a stop is `recovery.rs`'s call.

use keel_storage::Directory;

use crate::error::JournalError;
use crate::format::{
    Binding, EntryHeader, EntryKind, SegmentHeader, SegmentHeaderFault, ENTRY_ALIGN_BYTES,
    ENTRY_HEADER_BYTES, SEGMENT_HEADER_BYTES,
};
use crate::recovery::{Case, Proofs, StopFact};
use crate::segment::{self, SegmentFile};

mod evidence;
pub mod forensic;
mod parse;

use evidence::classify_stop;
pub use evidence::{classify_with, Evidence};
pub use parse::{parse_entries, parse_whole, Parsed};

/// One valid entry as found on disk (no payload: it is read on demand).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryMeta {
    pub kind: EntryKind,
    pub seq: u64,
    pub op: u64,
    pub offset_bytes: u64,
    pub len_bytes: u32,
    pub payload_len: u32,
    pub payload_crc: u32,
    pub header_crc: u32,
    pub durable_seq: u64,
    pub commit_op: u64,
}

/// What the next entry must carry to continue the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    pub next_seq: u64,
    pub chain_crc: u32,
}

/// Where valid entries stop inside one segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stop {
    pub offset_bytes: u64,
    pub fact: StopFact,
    /// The seq the entry at the stop should have had (`u64::MAX` when unknowable).
    pub expected_seq: u64,
    /// Op (and kind) of the entry at the stop, when its header is readable.
    pub op: Option<u64>,
    pub kind: Option<EntryKind>,
}

/// A segment whose header is valid, with its valid entries (up to a stop, if any).
#[derive(Debug, Clone)]
pub struct ScannedSegment {
    pub number: u64,
    pub name: String,
    pub header: SegmentHeader,
    pub entries: Vec<EntryMeta>,
    pub file_len_bytes: u64,
    /// End of the last valid entry.
    pub data_end_bytes: u64,
    /// Chain state after this segment.
    pub end_link: Link,
}

/// A classified stop.
#[derive(Debug, Clone)]
pub struct StopAt {
    /// Index into [`LogScan::files`].
    pub file_index: usize,
    pub file: String,
    pub stop: Stop,
    /// Which proofs of durability vouch for the bytes at the stop.
    pub proofs: Proofs,
    pub case: Case,
    /// Ops of valid data headers found after the stop (what a cut would lose).
    pub later_data_ops: Vec<u64>,
}

/// Everything a scan of the journal directory found.
#[derive(Debug, Clone, Default)]
pub struct LogScan {
    pub files: Vec<SegmentFile>,
    pub temps: Vec<String>,
    /// Segments before the first stop (the stop's own segment included when its header is valid).
    pub segments: Vec<ScannedSegment>,
    pub first_stop: Option<StopAt>,
    /// Every stop that is not a clean end (verify keeps going after the first one).
    pub problems: Vec<StopAt>,
    pub bytes_read: u64,
    pub max_file_bytes: u64,
    /// Entries found after resynchronising past a stop (verify only).
    pub entries_after_stops: Vec<EntryMeta>,
}

impl LogScan {
    /// A scan not started yet: `dir`'s segment files and leftover temps, listed once.
    pub async fn listed<D: Directory>(dir: &D, max_file_bytes: u64) -> Result<Self, JournalError> {
        let (files, temps) = segment::list(dir).await?;
        Ok(LogScan {
            files,
            temps,
            max_file_bytes,
            ..LogScan::default()
        })
    }

    /// Records stray bytes after a sealed segment's end ([`Case::StrayAfterEnd`]): a problem
    /// to report, not a stop (the log goes on in the next segment).
    pub(crate) fn record_stray(&mut self, at: StopAt) {
        assert_eq!(
            at.case,
            Case::StrayAfterEnd,
            "only stray bytes are not stops"
        );
        self.problems.push(at);
    }

    /// Records a stop as a problem; returns true if it is the first (the one recovery acts on).
    pub(crate) fn record_stop(&mut self, at: StopAt) -> bool {
        self.problems.push(at.clone());
        let first = self.first_stop.is_none();
        if first {
            self.first_stop = Some(at);
        }
        first
    }
}

pub(crate) fn all_zero(bytes: &[u8]) -> bool {
    first_nonzero(bytes).is_none()
}

/// Index of the first non-zero byte. Preallocated tails are megabytes of zeroes, so this
/// compares 16 bytes at a time.
pub fn first_nonzero(bytes: &[u8]) -> Option<usize> {
    let mut chunks = bytes.chunks_exact(16);
    let mut offset = 0;
    for chunk in &mut chunks {
        let word = u128::from_ne_bytes(chunk.try_into().expect("16-byte chunk"));
        if word != 0 {
            return chunk.iter().position(|&b| b != 0).map(|i| offset + i);
        }
        offset += 16;
    }
    chunks
        .remainder()
        .iter()
        .position(|&b| b != 0)
        .map(|i| offset + i)
}

/// Valid entry headers (under `binding`) at 8-aligned offsets at or after `from_offset`.
pub fn valid_headers(bytes: &[u8], from_offset: u64, binding: Binding) -> Vec<(u64, EntryHeader)> {
    let mut out = Vec::new();
    let align = ENTRY_ALIGN_BYTES as u64;
    let mut offset = from_offset.div_ceil(align) * align;
    while offset as usize + ENTRY_HEADER_BYTES <= bytes.len() {
        let at = &bytes[offset as usize..];
        // Magic first: cheap, and it makes the crc check rare.
        if at[0..4] == crate::format::ENTRY_MAGIC {
            if let Ok((header, _)) = EntryHeader::decode(at, binding) {
                out.push((offset, header));
            }
        }
        offset += align;
    }
    out
}

/// The segment header of file `number` (whose bytes begin `bytes`), validated against the
/// previous segment's chain state; a segment-number gap before it (`gap`) is a mismatch whatever
/// its header says.
pub fn segment_header(
    bytes: &[u8],
    number: u64,
    link: Option<Link>,
    gap: bool,
) -> Result<SegmentHeader, Stop> {
    if gap {
        return Err(Stop {
            offset_bytes: 0,
            fact: StopFact::SegmentMismatch,
            expected_seq: link.map_or(u64::MAX, |l| l.next_seq),
            op: None,
            kind: None,
        });
    }
    parse_header(bytes, number, link)
}

/// Validates a segment header against its file name and the previous segment's chain state.
pub fn parse_header(bytes: &[u8], number: u64, link: Option<Link>) -> Result<SegmentHeader, Stop> {
    let expected_seq = link.map_or(u64::MAX, |l| l.next_seq);
    let stop = |fact| Stop {
        offset_bytes: 0,
        fact,
        expected_seq,
        op: None,
        kind: None,
    };
    let header = match SegmentHeader::decode(bytes) {
        Ok(h) => h,
        Err(SegmentHeaderFault::UnknownVersion(_)) => return Err(stop(StopFact::UnknownVersion)),
        Err(_) => return Err(stop(StopFact::BadSegmentHeader)),
    };
    if header.segment_no != number {
        return Err(stop(StopFact::SegmentMismatch));
    }
    if let Some(link) = link {
        if header.first_seq != link.next_seq || header.prev_crc != link.chain_crc {
            return Err(stop(StopFact::SegmentMismatch));
        }
    }
    Ok(header)
}

/// Chain state after a segment: a rewritten segment hands on its recorded `link_crc`.
pub fn end_link(header: &SegmentHeader, link_after_entries: Link) -> Link {
    if header.is_rewritten() {
        Link {
            next_seq: link_after_entries.next_seq,
            chain_crc: header.link_crc,
        }
    } else {
        link_after_entries
    }
}

/// Scans the whole journal directory. With `keep_going` (verify), resynchronises after each
/// stop at the next valid header and records every problem; otherwise stops at the first.
pub async fn scan_log<D: Directory>(
    dir: &D,
    max_file_bytes: u64,
    keep_going: bool,
) -> Result<LogScan, JournalError> {
    let scan = LogScan::listed(dir, max_file_bytes).await?;
    let files = scan.files.clone();
    let mut scanner = Scanner {
        dir,
        files: &files,
        max_file_bytes,
        keep_going,
        later_cache: Vec::new(),
        scan,
    };
    let mut link: Option<Link> = None;
    let mut prev_number: Option<u64> = None;
    // One buffer for every segment: see `segment::read_whole_into`.
    let mut bytes = Vec::new();
    for (index, file) in files.iter().enumerate() {
        segment::read_whole_into(dir, &file.name, max_file_bytes, &mut bytes).await?;
        scanner.scan.bytes_read += bytes.len() as u64;
        let gap = prev_number.is_some_and(|p| p.checked_add(1) != Some(file.number));
        prev_number = Some(file.number);
        match scanner.scan_file(index, &bytes, link, gap).await? {
            FileEnd::Next(next) => link = next,
            FileEnd::Done => break,
        }
    }
    Ok(scanner.scan)
}

/// What recording a stop means for the scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recorded {
    /// The scan ends (the first stop, without `keep_going`).
    Ends,
    /// Resynchronise past it (verify).
    GoesOn,
    /// Stray bytes after a sealed end: the next segment goes on from the stop.
    Sealed,
}

/// How one file's scan ends for the rest of the log.
enum FileEnd {
    /// Go on with the next file, whose header must link to this chain state (`None`: unknown,
    /// after damage the scan could not resynchronise past).
    Next(Option<Link>),
    /// A stop ended the scan (not `keep_going`).
    Done,
}

/// Where a file's entries are parsed from: after its valid header, or after a resync past a
/// damaged one (no header).
struct EntryStart {
    link: Link,
    from: u64,
    rewritten: bool,
    header: Option<SegmentHeader>,
    binding: Binding,
}

/// The state of one [`scan_log`] across files.
struct Scanner<'a, D: Directory> {
    dir: &'a D,
    files: &'a [SegmentFile],
    max_file_bytes: u64,
    keep_going: bool,
    later_cache: Vec<Option<Evidence>>,
    scan: LogScan,
}

impl<D: Directory> Scanner<'_, D> {
    /// One file: its header, then its entries up to the end or the scan's end.
    async fn scan_file(
        &mut self,
        index: usize,
        bytes: &[u8],
        link: Option<Link>,
        gap: bool,
    ) -> Result<FileEnd, JournalError> {
        match self.start_entries(index, bytes, link, gap).await? {
            Ok(start) => self.scan_entries(index, bytes, start).await,
            Err(end) => Ok(end),
        }
    }

    /// Checks the file's header; where its entries start, or how the file ends right here.
    async fn start_entries(
        &mut self,
        index: usize,
        bytes: &[u8],
        link: Option<Link>,
        gap: bool,
    ) -> Result<Result<EntryStart, FileEnd>, JournalError> {
        let mut stop = match segment_header(bytes, self.files[index].number, link, gap) {
            Ok(h) => {
                return Ok(Ok(EntryStart {
                    link: Link {
                        next_seq: h.first_seq,
                        chain_crc: h.prev_crc,
                    },
                    from: SEGMENT_HEADER_BYTES as u64,
                    rewritten: h.is_rewritten(),
                    header: Some(h),
                    binding: h.binding(),
                }))
            }
            Err(stop) => stop,
        };
        // Damaged: its entries are its recycled life's if any is valid as one (`Evidence::finish`).
        let binding = Evidence::of_file(bytes, self.files[index].number).binding;
        if stop.expected_seq == u64::MAX {
            // First segment: its own entries tell which seqs it held.
            stop.expected_seq = valid_headers(bytes, 0, binding)
                .iter()
                .map(|(_, h)| h.seq)
                .min()
                .unwrap_or(u64::MAX);
        }
        if self
            .record(index, bytes, stop, false, None, binding)
            .await?
            == Recorded::Ends
        {
            return Ok(Err(FileEnd::Done));
        }
        if stop.fact == StopFact::UnknownVersion {
            return Ok(Err(FileEnd::Next(None)));
        }
        Ok(match resync(bytes, 0, binding) {
            Some((from, link)) => Ok(EntryStart {
                link,
                from,
                rewritten: false,
                header: None,
                binding,
            }),
            None => Err(FileEnd::Next(None)),
        })
    }

    /// Parses entries from `start`, resynchronising after each stop, to the file's end.
    async fn scan_entries(
        &mut self,
        index: usize,
        bytes: &[u8],
        start: EntryStart,
    ) -> Result<FileEnd, JournalError> {
        let EntryStart {
            link: mut entry_link,
            mut from,
            rewritten,
            header,
            binding,
        } = start;
        loop {
            let mut entries = Vec::new();
            let (end, after) = parse_whole(bytes, from, entry_link, binding, &mut entries);
            let stopped = self.scan.first_stop.is_some();
            let data_end_bytes = match &end {
                Ok(end_offset) => *end_offset,
                Err(stop) => stop.offset_bytes,
            };
            // Entries of a segment read before any stop belong to the log; after a stop they are
            // only evidence (is the damage covered?) and go to `entries_after_stops`.
            if let (false, Some(h)) = (stopped, header) {
                let file = &self.files[index];
                self.scan.segments.push(ScannedSegment {
                    number: file.number,
                    name: file.name.clone(),
                    header: h,
                    entries,
                    file_len_bytes: bytes.len() as u64,
                    data_end_bytes,
                    end_link: end_link(&h, after),
                });
            } else {
                self.scan.entries_after_stops.extend(entries);
            }
            let stop = match end {
                Ok(_) => {
                    return Ok(FileEnd::Next(Some(match header {
                        Some(h) if !stopped => end_link(&h, after),
                        _ => after,
                    })))
                }
                Err(stop) => stop,
            };
            let link_at_stop = match header {
                Some(h) if !stopped => Some(end_link(&h, after)),
                _ => None,
            };
            match self
                .record(index, bytes, stop, rewritten, link_at_stop, binding)
                .await?
            {
                Recorded::Ends => return Ok(FileEnd::Done),
                // The next segment starts the log here: nothing after the stop is an entry.
                Recorded::Sealed => return Ok(FileEnd::Next(link_at_stop)),
                Recorded::GoesOn => {}
            }
            match resync(bytes, stop.offset_bytes + ENTRY_ALIGN_BYTES as u64, binding) {
                Some((offset, link)) => {
                    from = offset;
                    entry_link = link;
                }
                None => return Ok(FileEnd::Next(None)),
            }
        }
    }

    /// Classifies a stop and records it: whether the scan ends here (the first stop, unless
    /// `keep_going`), goes on past it, or goes on in the next segment, which starts the log
    /// exactly at the stop.
    async fn record(
        &mut self,
        index: usize,
        bytes: &[u8],
        stop: Stop,
        rewritten: bool,
        link_at_stop: Option<Link>,
        binding: Binding,
    ) -> Result<Recorded, JournalError> {
        let at = classify_stop(
            self.dir,
            self.files,
            index,
            bytes,
            stop,
            rewritten,
            link_at_stop,
            binding,
            self.max_file_bytes,
            &mut self.later_cache,
        )
        .await?;
        if at.case == Case::StrayAfterEnd {
            self.scan.record_stray(at);
            return Ok(Recorded::Sealed);
        }
        Ok(if self.scan.record_stop(at) && !self.keep_going {
            Recorded::Ends
        } else {
            Recorded::GoesOn
        })
    }
}

/// The next valid header at or after `from` (at least past the segment header), as a place to
/// continue scanning from with the chain it claims.
fn resync(bytes: &[u8], from: u64, binding: Binding) -> Option<(u64, Link)> {
    valid_headers(bytes, from.max(SEGMENT_HEADER_BYTES as u64), binding)
        .first()
        .map(|(offset, h)| {
            (
                *offset,
                Link {
                    next_seq: h.seq,
                    chain_crc: h.prev_crc,
                },
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{encode_entry, NewEntry};

    fn segment_bytes(n: usize) -> Vec<u8> {
        bound_segment_bytes(SegmentHeader::new(0, 1, 0), n)
    }

    /// `n` entries (seqs from 1) after `header`, bound as its segment's.
    fn bound_segment_bytes(header: SegmentHeader, n: usize) -> Vec<u8> {
        let binding = header.binding();
        let mut out = header.encode().to_vec();
        let mut prev = 0;
        for i in 0..n {
            let seq = i as u64 + 1;
            prev = encode_entry(
                &mut out,
                &NewEntry {
                    kind: EntryKind::Data,
                    seq,
                    op: seq * 10,
                    prev_crc: prev,
                    durable_seq: seq.saturating_sub(2),
                    commit_op: 0,
                },
                &vec![i as u8; i * 3],
                binding,
            );
        }
        out
    }

    #[test]
    fn parses_a_clean_segment_with_zero_tail() {
        let mut bytes = segment_bytes(5);
        let end = bytes.len() as u64;
        bytes.extend_from_slice(&[0u8; 1000]);
        let header = parse_header(&bytes, 0, None).unwrap();
        let mut out = Vec::new();
        let (end_result, link) = parse_whole(
            &bytes,
            64,
            Link {
                next_seq: header.first_seq,
                chain_crc: header.prev_crc,
            },
            Binding::Plain,
            &mut out,
        );
        assert_eq!(end_result, Ok(end));
        assert_eq!(out.len(), 5);
        assert_eq!(link.next_seq, 6);
    }

    #[test]
    fn zeroes_then_garbage_is_a_bad_header() {
        let mut bytes = segment_bytes(2);
        let end = bytes.len();
        bytes.extend_from_slice(&[0u8; 200]);
        bytes[end + 150] = 1;
        let mut out = Vec::new();
        let (end_result, _) = parse_whole(
            &bytes,
            64,
            Link {
                next_seq: 1,
                chain_crc: 0,
            },
            Binding::Plain,
            &mut out,
        );
        assert_eq!(end_result.unwrap_err().fact, StopFact::BadEntryHeader);
    }
}

#[cfg(test)]
mod recycled_tests {
    use super::*;
    use crate::format::{encode_entry, NewEntry, TERMINATOR_BYTES};

    /// Data entries of seqs 1..=n (op = seq) with `payload`, chained from 0, under `binding`.
    fn chained_entries(out: &mut Vec<u8>, n: u64, payload: &[u8], binding: Binding) {
        let mut prev = 0;
        for seq in 1..=n {
            let entry = NewEntry {
                kind: EntryKind::Data,
                seq,
                op: seq,
                prev_crc: prev,
                durable_seq: seq - 1,
                commit_op: 0,
            };
            prev = encode_entry(out, &entry, payload, binding);
        }
    }

    /// A recycled segment 5: entries 1..=n, the terminator, then `older` (the file's older life).
    fn recycled(n: u64, older: &[u8]) -> (Vec<u8>, u64) {
        let mut bytes = SegmentHeader::new(5, 1, 0).recycled().encode().to_vec();
        chained_entries(&mut bytes, n, &[7u8; 40], Binding::Segment(5));
        let end = bytes.len() as u64;
        bytes.extend_from_slice(&[0u8; TERMINATOR_BYTES]);
        bytes.extend_from_slice(older);
        (bytes, end)
    }

    /// Entries of an older life: the same seqs, under `binding`.
    fn older_life(binding: Binding) -> Vec<u8> {
        let mut out = Vec::new();
        chained_entries(&mut out, 20, &[9u8; 100], binding);
        out
    }

    fn parse(bytes: &[u8]) -> (Result<u64, Stop>, usize) {
        let mut out = Vec::new();
        let link = Link {
            next_seq: 1,
            chain_crc: 0,
        };
        let binding = Binding::Segment(5);
        let (end, _) = parse_whole(bytes, SEGMENT_HEADER_BYTES as u64, link, binding, &mut out);
        (end, out.len())
    }

    /// The older life after a terminator (a version 1 life, another recycled life, garbage) is
    /// the clean end of this one.
    #[test]
    fn a_terminator_then_an_older_life_is_a_clean_end() {
        for older in [
            older_life(Binding::Plain),
            older_life(Binding::Segment(4)),
            vec![0xA5; 3000],
        ] {
            let (bytes, end) = recycled(3, &older);
            assert_eq!(parse(&bytes), (Ok(end), 3));
        }
    }

    /// An entry of this life after the zero header (a torn write whose first block never
    /// landed) is no clean end: the bytes there are a bad header.
    #[test]
    fn an_entry_of_this_life_after_the_zeroes_is_a_bad_header() {
        let (mut bytes, end) = recycled(3, &[0xA5; 512]);
        let (later, _) = recycled(6, &[]);
        let fourth = later.len() - TERMINATOR_BYTES - 3 * crate::format::entry_len_bytes(40);
        bytes.extend_from_slice(&later[fourth..]);
        let (stopped, kept) = parse(&bytes);
        let stop = stopped.expect_err("not a clean end");
        assert_eq!(
            (stop.offset_bytes, stop.fact, kept),
            (end, StopFact::BadEntryHeader, 3)
        );
    }

    /// Without the recycled binding the same bytes are what they always were: zeroes followed
    /// by non-zero bytes, a bad header.
    #[test]
    fn a_plain_segment_keeps_the_zeroes_to_the_end_rule() {
        let mut bytes = segment_bytes_plain();
        let end = bytes.len() as u64;
        bytes.extend_from_slice(&[0u8; TERMINATOR_BYTES]);
        bytes.extend_from_slice(&older_life(Binding::Segment(4)));
        let mut out = Vec::new();
        let link = Link {
            next_seq: 1,
            chain_crc: 0,
        };
        let (stopped, _) = parse_whole(&bytes, 64, link, Binding::Plain, &mut out);
        assert_eq!(
            stopped.map_err(|s| (s.offset_bytes, s.fact)),
            Err((end, StopFact::BadEntryHeader))
        );
    }

    /// A recycled file whose segment header is damaged: its entries are evidence, its older
    /// life (version 1 entries with higher ops, after the terminator) is not; a version 1 file
    /// with a damaged header keeps its own entries as evidence.
    #[test]
    fn a_damaged_header_never_makes_the_older_life_evidence() {
        let mut older = Vec::new();
        let mut prev = 0;
        for seq in 1..=10u64 {
            let entry = NewEntry {
                kind: EntryKind::Data,
                seq,
                op: 1000 + seq,
                prev_crc: prev,
                durable_seq: seq - 1,
                commit_op: 0,
            };
            prev = encode_entry(&mut older, &entry, &[3u8; 50], Binding::Plain);
        }
        let (mut bytes, _) = recycled(3, &older);
        bytes[20] ^= 0xff;
        let evidence = Evidence::of_file(&bytes, 5);
        assert!(evidence.header.is_none());
        assert_eq!(evidence.data_ops, vec![1, 2, 3]);
        assert_eq!(evidence.min_seq, Some(1));
        let mut plain = SegmentHeader::new(5, 1, 0).encode().to_vec();
        plain.extend_from_slice(&older);
        plain[20] ^= 0xff;
        let evidence = Evidence::of_file(&plain, 5);
        assert_eq!(evidence.data_ops, (1001..=1010).collect::<Vec<_>>());
        assert_eq!(Evidence::of_file(&bytes, 5).binding, Binding::Segment(5));
        assert_eq!(evidence.binding, Binding::Plain);
    }

    fn segment_bytes_plain() -> Vec<u8> {
        let mut bytes = SegmentHeader::new(0, 1, 0).encode().to_vec();
        chained_entries(&mut bytes, 1, b"one", Binding::Plain);
        bytes
    }
}
