//! format: the bytes on disk — segment header and entry header codecs, alignment and checksums.
//!
//! Owns every byte layout of the journal. It must never do I/O and never decide what a damaged
//! byte *means* (that is `scan.rs` and `recovery.rs`): it only says "valid" or names the fault.
//!
//! # Segment file `NNNNNNNNNNNNNNNNNNNN.wal` (20 decimal digits = segment number)
//!
//! A 64-byte header, then entries back to back from offset 64, then (when preallocated) zeroes to
//! the end of the file. All integers little-endian.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `KEELWAL\0` |
//! | 8 | 2 | format version: 1, or 2 for a recycled segment. Checked *before* the checksum so a newer log is refused, never cut |
//! | 10 | 2 | header length in bytes (64) |
//! | 12 | 4 | flags: bit 0 = rewritten by compaction (every byte in it was fsynced before it got its name); bit 1 = recycled (version 2 only) |
//! | 16 | 8 | segment number (must equal the number in the file name) |
//! | 24 | 8 | `first_seq`: seq of the first entry in this segment |
//! | 32 | 4 | `prev_crc`: header crc of the entry before `first_seq` (0 for the very first) |
//! | 36 | 4 | `link_crc`: rewritten segments only — the crc the next segment's `prev_crc` chains to |
//! | 40 | 8 | snapshot watermark known when the segment was created |
//! | 48 | 8 | commit watermark known when the segment was created |
//! | 56 | 4 | reserved, zero |
//! | 60 | 4 | crc32 of bytes 0..60 |
//!
//! # Entry (64-byte header + payload + zero padding to a multiple of 8)
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `KJE1` |
//! | 4 | 1 | kind: 1 data, 2 truncate marker, 3 commit marker, 4 snapshot-watermark marker |
//! | 5 | 3 | reserved, zero |
//! | 8 | 8 | `seq`: per-journal entry sequence number, +1 per entry, starting at 1 |
//! | 16 | 8 | `op` (data: the op; truncate: ops above it are discarded; commit: the commit op; snapshot: the watermark) |
//! | 24 | 4 | payload length in bytes |
//! | 28 | 4 | crc32 of payload *and* its zero padding (so every byte of an entry is checked) |
//! | 32 | 4 | `prev_crc`: header crc of the previous entry (the chain) |
//! | 36 | 4 | reserved, zero |
//! | 40 | 8 | `durable_seq`: highest seq known fsynced when this entry was written (< `seq`) |
//! | 48 | 8 | commit watermark known when written (0 = none) |
//! | 56 | 4 | reserved, zero |
//! | 60 | 4 | crc32 of bytes 0..60; in a recycled segment, of bytes 0..60 then the segment number (8 bytes LE) |
//!
//! # Recycled segments (format version 2)
//!
//! A recycled segment is an older segment's file given a new number (compaction keeps a dead
//! segment as the next spare instead of deleting it), so past its last entry it holds the older
//! life's bytes, not zeroes. Two rules keep that older life from ever reading as entries of this
//! one: every entry header's crc also covers the segment's number ([`Binding::Segment`]), so an
//! older life's header (another number) fails its checksum and is never evidence; and every
//! group's write ends with a zero header (64 zero bytes, fewer at the very end of the file), the
//! terminator, so this life's end is a zero header at an entry boundary with no header of this
//! life after it (`scan::parse::clean_end`). Older builds refuse version 2 before its checksum.
//!
//! Entries are 8-byte aligned so a scan can look past a damaged entry for a later valid header.
//! Op 0 is never appended (the snapshot watermark starts at 0 and `op <= snapshot_op` is refused),
//! so 0 doubles as "none" in watermark fields.

/// Current on-disk format version. Readers accept every version up to this one.
pub const FORMAT_VERSION: u16 = 2;
/// The version of every segment that is not recycled: a journal that never recycled a segment
/// stays readable by builds that know only version 1.
pub const FORMAT_VERSION_PLAIN: u16 = 1;
/// The version a recycled segment's header carries ([`FLAG_RECYCLED`]).
pub const FORMAT_VERSION_RECYCLED: u16 = 2;
/// The first 8 bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"KEELWAL\0";
/// Size of a segment header (entries start right after it).
pub const SEGMENT_HEADER_BYTES: usize = 64;
/// The first 4 bytes of every entry header.
pub const ENTRY_MAGIC: [u8; 4] = *b"KJE1";
/// Size of an entry header (its payload follows).
pub const ENTRY_HEADER_BYTES: usize = 64;
/// Every entry starts at a multiple of this (payloads are zero-padded up to it).
pub const ENTRY_ALIGN_BYTES: usize = 8;
/// Hard cap on a payload length field, whatever the configuration: a header claiming more is
/// invalid (it bounds how much a scan will ever try to read for one entry).
pub const MAX_PAYLOAD_BYTES_LIMIT: u32 = 64 << 20;
/// Seqs and segment numbers stay below this (centuries of appends away); a header claiming more is
/// invalid, so arithmetic on them can never overflow.
pub const MAX_SEQ: u64 = 1 << 62;
/// Segment flag: written by compaction via temp file + fsync + rename.
pub const FLAG_REWRITTEN: u32 = 1;
/// Segment flag: an older segment's file given a new number; its entries' header crcs cover
/// the segment number and each group ends with a zero terminator (format version 2).
pub const FLAG_RECYCLED: u32 = 2;
/// The zero terminator a group's write in a recycled segment ends with: one entry header of
/// zeroes (fewer bytes where the file ends sooner).
pub const TERMINATOR_BYTES: usize = ENTRY_HEADER_BYTES;

/// What an entry header's crc covers besides the header: which life of a segment file it
/// belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Binding {
    /// Version 1 segments: the header bytes alone.
    Plain,
    /// A recycled segment: the header bytes, then this segment number. An older life of the file
    /// had another number, so none of its headers validates in this one (numbers below 2^32
    /// differ in a 32-bit burst, which a crc32 always detects).
    Segment(u64),
    /// A file whose segment header is damaged: either of the above for this file number (its
    /// entries are evidence either way).
    Either(u64),
}

impl Binding {
    /// Whether entries of this segment end at a zero terminator rather than at zeroes to the end.
    pub fn is_recycled(self) -> bool {
        matches!(self, Binding::Segment(_))
    }
}

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum EntryKind {
    /// An op's payload (a prepare).
    Data = 1,
    /// A marker: every op above this entry's op is discarded.
    Truncate = 2,
    /// A marker carrying the commit watermark in its op field (also the close marker).
    Commit = 3,
    /// A marker: the snapshot watermark moved to this entry's op.
    Snapshot = 4,
}

impl EntryKind {
    /// The kind a header's kind byte names, `None` for an unknown byte.
    pub fn from_u8(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(Self::Data),
            2 => Some(Self::Truncate),
            3 => Some(Self::Commit),
            4 => Some(Self::Snapshot),
            _ => None,
        }
    }

    /// Name used by `dump`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Data => "data",
            Self::Truncate => "truncate",
            Self::Commit => "commit",
            Self::Snapshot => "snapshot",
        }
    }
}

/// The decoded fields of an entry header (the header crc is computed, not stored here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryHeader {
    /// What the entry is.
    pub kind: EntryKind,
    /// Position in the log: +1 per entry, across segments.
    pub seq: u64,
    /// The op (data) or the watermark (markers).
    pub op: u64,
    /// Payload bytes after the header (padding not counted).
    pub payload_len: u32,
    /// crc32 of the payload.
    pub payload_crc: u32,
    /// Header crc of the entry before this one (the segment's link crc for the first).
    pub prev_crc: u32,
    /// Highest seq an fsync had covered when this entry was written.
    pub durable_seq: u64,
    /// Commit watermark known when written (0 = none).
    pub commit_op: u64,
}

/// Why header bytes are not a valid header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderFault {
    /// Fewer bytes than a header.
    Short,
    /// All 64 bytes are zero (preallocated space, or a zeroed sector).
    Zero,
    /// The first 4 bytes are not [`ENTRY_MAGIC`].
    BadMagic,
    /// The header's crc does not match its bytes.
    BadChecksum,
    /// Checksum fine but a field is impossible (unknown kind, reserved bits, lengths).
    BadField(&'static str),
}

fn get_u16(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}
fn get_u32(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(b)
}
fn get_u64(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}

/// Padding after a payload of `payload_len` bytes so the next entry starts 8-aligned.
pub fn padding_bytes(payload_len: usize) -> usize {
    (ENTRY_ALIGN_BYTES - payload_len % ENTRY_ALIGN_BYTES) % ENTRY_ALIGN_BYTES
}

/// Bytes one entry occupies on disk.
pub fn entry_len_bytes(payload_len: usize) -> usize {
    ENTRY_HEADER_BYTES + payload_len + padding_bytes(payload_len)
}

/// crc32 over the payload followed by its zero padding.
pub fn payload_crc(payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(payload);
    hasher.update(&[0u8; ENTRY_ALIGN_BYTES][..padding_bytes(payload.len())]);
    hasher.finalize()
}

/// The crc of an entry header's first 60 bytes under `binding` (never [`Binding::Either`]).
fn header_crc(bytes: &[u8], binding: Binding) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&bytes[0..60]);
    match binding {
        Binding::Plain => {}
        Binding::Segment(number) => hasher.update(&number.to_le_bytes()),
        Binding::Either(_) => unreachable!("a header is checked against one binding at a time"),
    }
    hasher.finalize()
}

impl EntryHeader {
    /// Encodes the header with its crc under `binding`; returns the bytes and the header crc
    /// (the next entry's `prev_crc`).
    pub fn encode(&self, binding: Binding) -> ([u8; ENTRY_HEADER_BYTES], u32) {
        let mut b = [0u8; ENTRY_HEADER_BYTES];
        b[0..4].copy_from_slice(&ENTRY_MAGIC);
        b[4] = self.kind as u8;
        b[8..16].copy_from_slice(&self.seq.to_le_bytes());
        b[16..24].copy_from_slice(&self.op.to_le_bytes());
        b[24..28].copy_from_slice(&self.payload_len.to_le_bytes());
        b[28..32].copy_from_slice(&self.payload_crc.to_le_bytes());
        b[32..36].copy_from_slice(&self.prev_crc.to_le_bytes());
        b[40..48].copy_from_slice(&self.durable_seq.to_le_bytes());
        b[48..56].copy_from_slice(&self.commit_op.to_le_bytes());
        let crc = header_crc(&b, binding);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        (b, crc)
    }

    /// Decodes and validates a header whose crc is under `binding` (either candidate, for
    /// [`Binding::Either`]); returns it with its crc.
    pub fn decode(bytes: &[u8], binding: Binding) -> Result<(Self, u32), HeaderFault> {
        if bytes.len() < ENTRY_HEADER_BYTES {
            return Err(HeaderFault::Short);
        }
        let b = &bytes[..ENTRY_HEADER_BYTES];
        if b.iter().all(|&x| x == 0) {
            return Err(HeaderFault::Zero);
        }
        if b[0..4] != ENTRY_MAGIC {
            return Err(HeaderFault::BadMagic);
        }
        let stored = get_u32(b, 60);
        let crc = match binding {
            Binding::Either(number) => [Binding::Segment(number), Binding::Plain]
                .into_iter()
                .map(|candidate| header_crc(b, candidate))
                .find(|crc| *crc == stored),
            _ => Some(header_crc(b, binding)).filter(|crc| *crc == stored),
        };
        let Some(crc) = crc else {
            return Err(HeaderFault::BadChecksum);
        };
        let kind = EntryKind::from_u8(b[4]).ok_or(HeaderFault::BadField("kind"))?;
        if b[5..8] != [0, 0, 0] || b[36..40] != [0; 4] || b[56..60] != [0; 4] {
            return Err(HeaderFault::BadField("reserved"));
        }
        let header = Self {
            kind,
            seq: get_u64(b, 8),
            op: get_u64(b, 16),
            payload_len: get_u32(b, 24),
            payload_crc: get_u32(b, 28),
            prev_crc: get_u32(b, 32),
            durable_seq: get_u64(b, 40),
            commit_op: get_u64(b, 48),
        };
        if header.seq == 0 || header.seq >= MAX_SEQ {
            return Err(HeaderFault::BadField("seq"));
        }
        // A writer only ever claims entries *before* the one it writes as durable.
        if header.durable_seq >= header.seq {
            return Err(HeaderFault::BadField("durable_seq"));
        }
        if header.payload_len > MAX_PAYLOAD_BYTES_LIMIT {
            return Err(HeaderFault::BadField("payload_len"));
        }
        Ok((header, crc))
    }

    /// The whole entry's length on disk: header, payload and padding.
    pub fn entry_len_bytes(&self) -> usize {
        entry_len_bytes(self.payload_len as usize)
    }
}

/// The fields of an entry a writer chooses (lengths and checksums are computed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewEntry {
    /// What the entry is.
    pub kind: EntryKind,
    /// Its seq (the previous entry's + 1).
    pub seq: u64,
    /// The op (data) or the watermark (markers).
    pub op: u64,
    /// Header crc of the previous entry.
    pub prev_crc: u32,
    /// Highest seq an fsync covers so far; below `seq`.
    pub durable_seq: u64,
    /// Commit watermark to carry (0 = none).
    pub commit_op: u64,
}

/// Appends one complete entry (header, payload, padding) to `out` for a segment of `binding`;
/// returns the header crc.
pub fn encode_entry(out: &mut Vec<u8>, entry: &NewEntry, payload: &[u8], binding: Binding) -> u32 {
    assert!(payload.len() <= MAX_PAYLOAD_BYTES_LIMIT as usize);
    assert!(entry.durable_seq < entry.seq);
    let header = EntryHeader {
        kind: entry.kind,
        seq: entry.seq,
        op: entry.op,
        payload_len: payload.len() as u32,
        payload_crc: payload_crc(payload),
        prev_crc: entry.prev_crc,
        durable_seq: entry.durable_seq,
        commit_op: entry.commit_op,
    };
    let (bytes, crc) = header.encode(binding);
    out.extend_from_slice(&bytes);
    out.extend_from_slice(payload);
    out.extend_from_slice(&[0u8; ENTRY_ALIGN_BYTES][..padding_bytes(payload.len())]);
    crc
}

/// The decoded segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Format version that wrote it (at most [`FORMAT_VERSION`] to be read).
    pub version: u16,
    /// [`FLAG_REWRITTEN`], [`FLAG_RECYCLED`] (version 2 exactly) or 0.
    pub flags: u32,
    /// The segment's number (its file name).
    pub segment_no: u64,
    /// Seq of its first entry.
    pub first_seq: u64,
    /// Header crc of the previous segment's last entry (0 for the first segment).
    pub prev_crc: u32,
    /// The crc the first entry's `prev_crc` must carry (a rewrite keeps the original chain).
    pub link_crc: u32,
    /// Snapshot watermark when written (0 = none).
    pub snapshot_op: u64,
    /// Commit watermark when written (0 = none).
    pub commit_op: u64,
}

/// Why segment header bytes are not a valid header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentHeaderFault {
    /// Fewer bytes than a header.
    Short,
    /// The first 8 bytes are not [`SEGMENT_MAGIC`].
    BadMagic,
    /// Written by a newer keel: never cut, always refuse.
    UnknownVersion(u16),
    /// The header's crc does not match its bytes.
    BadChecksum,
    /// Checksum fine but a field is impossible (names the field).
    BadField(&'static str),
}

impl SegmentHeader {
    /// The header of a new segment (format version 1: not recycled), linking to `prev_crc`.
    pub fn new(segment_no: u64, first_seq: u64, prev_crc: u32) -> Self {
        Self {
            version: FORMAT_VERSION_PLAIN,
            flags: 0,
            segment_no,
            first_seq,
            prev_crc,
            link_crc: 0,
            snapshot_op: 0,
            commit_op: 0,
        }
    }

    /// Whether compaction wrote this segment (temp file + rename).
    pub fn is_rewritten(&self) -> bool {
        self.flags & FLAG_REWRITTEN != 0
    }

    /// This header for a recycled file: format version 2, [`FLAG_RECYCLED`].
    pub fn recycled(mut self) -> Self {
        assert!(!self.is_rewritten(), "a rewrite is always a fresh file");
        self.version = FORMAT_VERSION_RECYCLED;
        self.flags |= FLAG_RECYCLED;
        self
    }

    /// Whether this segment lives in a recycled file (see the module docs).
    pub fn is_recycled(&self) -> bool {
        self.flags & FLAG_RECYCLED != 0
    }

    /// What the header crcs of this segment's entries cover.
    pub fn binding(&self) -> Binding {
        if self.is_recycled() {
            Binding::Segment(self.segment_no)
        } else {
            Binding::Plain
        }
    }

    /// The header's 64 bytes, crc included.
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_BYTES] {
        let mut b = [0u8; SEGMENT_HEADER_BYTES];
        b[0..8].copy_from_slice(&SEGMENT_MAGIC);
        b[8..10].copy_from_slice(&self.version.to_le_bytes());
        b[10..12].copy_from_slice(&(SEGMENT_HEADER_BYTES as u16).to_le_bytes());
        b[12..16].copy_from_slice(&self.flags.to_le_bytes());
        b[16..24].copy_from_slice(&self.segment_no.to_le_bytes());
        b[24..32].copy_from_slice(&self.first_seq.to_le_bytes());
        b[32..36].copy_from_slice(&self.prev_crc.to_le_bytes());
        b[36..40].copy_from_slice(&self.link_crc.to_le_bytes());
        b[40..48].copy_from_slice(&self.snapshot_op.to_le_bytes());
        b[48..56].copy_from_slice(&self.commit_op.to_le_bytes());
        let crc = crc32fast::hash(&b[0..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Parses and checks a header from the first 64 bytes of `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Self, SegmentHeaderFault> {
        if bytes.len() < SEGMENT_HEADER_BYTES {
            return Err(SegmentHeaderFault::Short);
        }
        let b = &bytes[..SEGMENT_HEADER_BYTES];
        if b[0..8] != SEGMENT_MAGIC {
            return Err(SegmentHeaderFault::BadMagic);
        }
        // Version before checksum: a later format may checksum differently, and a log we cannot
        // read must be refused, never classified as damage and cut.
        let version = get_u16(b, 8);
        if version > FORMAT_VERSION {
            return Err(SegmentHeaderFault::UnknownVersion(version));
        }
        if crc32fast::hash(&b[0..60]) != get_u32(b, 60) {
            return Err(SegmentHeaderFault::BadChecksum);
        }
        if version == 0 {
            return Err(SegmentHeaderFault::BadField("version"));
        }
        if get_u16(b, 10) as usize != SEGMENT_HEADER_BYTES {
            return Err(SegmentHeaderFault::BadField("header_len"));
        }
        let flags = get_u32(b, 12);
        if flags & !(FLAG_REWRITTEN | FLAG_RECYCLED) != 0
            || (flags & FLAG_RECYCLED != 0) != (version == FORMAT_VERSION_RECYCLED)
            || flags == FLAG_REWRITTEN | FLAG_RECYCLED
        {
            return Err(SegmentHeaderFault::BadField("flags"));
        }
        if b[56..60] != [0; 4] {
            return Err(SegmentHeaderFault::BadField("reserved"));
        }
        let header = Self {
            version,
            flags,
            segment_no: get_u64(b, 16),
            first_seq: get_u64(b, 24),
            prev_crc: get_u32(b, 32),
            link_crc: get_u32(b, 36),
            snapshot_op: get_u64(b, 40),
            commit_op: get_u64(b, 48),
        };
        if header.first_seq == 0 || header.first_seq >= MAX_SEQ {
            return Err(SegmentHeaderFault::BadField("first_seq"));
        }
        if header.segment_no >= MAX_SEQ {
            return Err(SegmentHeaderFault::BadField("segment_no"));
        }
        Ok(header)
    }
}

/// File name of segment `number`.
pub fn segment_file_name(number: u64) -> String {
    format!("{number:020}.wal")
}

/// The segment number in a file name, if it is one.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".wal")?;
    if digits.len() != 20 || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|n| *n < MAX_SEQ)
}

/// File name of a quarantined byte range.
pub fn quarantine_file_name(segment_no: u64, offset_bytes: u64) -> String {
    format!("{segment_no:020}-{offset_bytes:020}.bin")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn kind_strategy() -> impl Strategy<Value = EntryKind> {
        prop_oneof![
            Just(EntryKind::Data),
            Just(EntryKind::Truncate),
            Just(EntryKind::Commit),
            Just(EntryKind::Snapshot)
        ]
    }

    proptest! {
        #[test]
        fn entry_round_trip(
            kind in kind_strategy(),
            seq in 1u64..MAX_SEQ,
            op in any::<u64>(),
            payload in proptest::collection::vec(any::<u8>(), 0..300),
            prev_crc in any::<u32>(),
            durable_frac in 0u64..1000,
            commit_op in any::<u64>(),
            recycled_no in 0u64..4,
        ) {
            let durable_seq = (seq - 1) / 1000 * durable_frac;
            let mut out = Vec::new();
            let binding = if recycled_no == 0 { Binding::Plain } else { Binding::Segment(recycled_no) };
            let crc = encode_entry(&mut out, &NewEntry { kind, seq, op, prev_crc, durable_seq, commit_op }, &payload, binding);
            prop_assert_eq!(out.len(), entry_len_bytes(payload.len()));
            prop_assert_eq!(out.len() % ENTRY_ALIGN_BYTES, 0);
            let (h, crc2) = EntryHeader::decode(&out, binding).unwrap();
            prop_assert_eq!(crc, crc2);
            prop_assert_eq!(EntryHeader::decode(&out, Binding::Either(recycled_no.max(1))).unwrap().1, crc);
            prop_assert_eq!(h.kind, kind);
            prop_assert_eq!(h.seq, seq);
            prop_assert_eq!(h.op, op);
            prop_assert_eq!(h.prev_crc, prev_crc);
            prop_assert_eq!(h.durable_seq, durable_seq);
            prop_assert_eq!(h.commit_op, commit_op);
            prop_assert_eq!(h.payload_len as usize, payload.len());
            let body = &out[ENTRY_HEADER_BYTES..];
            prop_assert_eq!(&body[..payload.len()], &payload[..]);
            let mut hasher = crc32fast::Hasher::new();
            hasher.update(body);
            prop_assert_eq!(hasher.finalize(), h.payload_crc);
        }

        #[test]
        fn any_single_bit_flip_in_entry_header_is_detected(
            op in any::<u64>(), bit in 0usize..(ENTRY_HEADER_BYTES * 8)
        ) {
            let mut out = Vec::new();
            encode_entry(&mut out, &NewEntry { kind: EntryKind::Data, seq: 7, op, prev_crc: 1, durable_seq: 3, commit_op: 2 }, b"abc", Binding::Plain);
            out[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(EntryHeader::decode(&out, Binding::Plain).is_err());
        }

        /// An older life of a recycled file never validates in a newer one: another number, or
        /// a version 1 life, fails the checksum whatever the header holds.
        #[test]
        fn an_older_life_never_validates(
            old_no in 0u64..(1 << 32), delta in 1u64..(1 << 20), op in any::<u64>(), seq in 1u64..MAX_SEQ,
        ) {
            let new_no = old_no + delta;
            let entry = NewEntry { kind: EntryKind::Data, seq, op, prev_crc: 0, durable_seq: seq - 1, commit_op: 0 };
            for old in [Binding::Segment(old_no), Binding::Plain] {
                let mut out = Vec::new();
                encode_entry(&mut out, &entry, b"older life", old);
                prop_assert_eq!(EntryHeader::decode(&out, Binding::Segment(new_no)), Err(HeaderFault::BadChecksum));
            }
        }

        #[test]
        fn segment_header_round_trip(
            no in 0u64..MAX_SEQ, first in 1u64..MAX_SEQ, prev in any::<u32>(), link in any::<u32>(),
            snap in any::<u64>(), commit in any::<u64>(), kind in 0u8..3
        ) {
            let mut h = SegmentHeader::new(no, first, prev);
            h.link_crc = link;
            h.snapshot_op = snap;
            h.commit_op = commit;
            match kind {
                1 => h.flags = FLAG_REWRITTEN,
                2 => h = h.recycled(),
                _ => {}
            }
            let b = h.encode();
            prop_assert_eq!(SegmentHeader::decode(&b).unwrap(), h);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = EntryHeader::decode(&bytes, Binding::Either(3));
            let _ = SegmentHeader::decode(&bytes);
        }
    }

    #[test]
    fn newer_version_is_refused_not_damaged() {
        let mut b = SegmentHeader::new(3, 1, 0).encode();
        b[8..10].copy_from_slice(&3u16.to_le_bytes());
        assert_eq!(
            SegmentHeader::decode(&b),
            Err(SegmentHeaderFault::UnknownVersion(3))
        );
    }

    /// Version 2 and the recycled flag come together or not at all.
    #[test]
    fn the_recycled_flag_needs_version_2() {
        let recycled = SegmentHeader::new(3, 1, 0).recycled();
        assert_eq!(recycled.binding(), Binding::Segment(3));
        assert_eq!(SegmentHeader::decode(&recycled.encode()), Ok(recycled));
        let mut v1_flagged = SegmentHeader::new(3, 1, 0);
        v1_flagged.flags = FLAG_RECYCLED;
        let mut v2_plain = SegmentHeader::new(3, 1, 0);
        v2_plain.version = FORMAT_VERSION_RECYCLED;
        for bad in [v1_flagged, v2_plain] {
            assert_eq!(
                SegmentHeader::decode(&bad.encode()),
                Err(SegmentHeaderFault::BadField("flags"))
            );
        }
    }

    #[test]
    fn file_names() {
        assert_eq!(segment_file_name(42), "00000000000000000042.wal");
        assert_eq!(
            parse_segment_file_name("00000000000000000042.wal"),
            Some(42)
        );
        assert_eq!(parse_segment_file_name("0000000000000000042.wal"), None);
        assert_eq!(parse_segment_file_name("0000000000000000004x.wal"), None);
        assert_eq!(parse_segment_file_name("00000000000000000042.tmp"), None);
    }
}
