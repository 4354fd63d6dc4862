//! codec: the snapshot file's bytes (docs/format.md): its names, its header (format 2, and
//! format 1 read), and a whole file encoded and checked in one piece.
//!
//! Owns every byte layout of a snapshot file. It must never do I/O (the store in `snapshot.rs`
//! persists and loads through this codec) and never interpret the payload.

use crate::manifest::DirectoryId;

/// The snapshots' directory under the engine directory.
pub const SNAPSHOTS_DIR: &str = "snapshots";
/// The first 8 bytes of every snapshot file.
pub const SNAPSHOT_MAGIC: &[u8; 8] = b"KEELSNAP";
/// The format version this build writes (it reads 1 and 2; docs/format.md).
pub const SNAPSHOT_VERSION: u32 = 2;
/// The header's length in the current version.
pub const SNAPSHOT_HEADER_BYTES: usize = 72;
/// The header's length in version 1 (no identity).
pub const SNAPSHOT_V1_HEADER_BYTES: usize = 40;
pub(crate) const SNAPSHOT_SUFFIX: &str = ".snap";
pub(crate) const TEMP_SUFFIX: &str = ".tmp";
/// `00000000000000000042.snap`.
pub fn snapshot_file_name(op: u64) -> String {
    format!("{op:020}{SNAPSHOT_SUFFIX}")
}

/// The op of a snapshot file name, if `name` is one (exactly 20 digits + `.snap`).
pub fn parse_snapshot_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SNAPSHOT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The ops of the snapshot files among `names` (a directory listing), ascending; other names
/// are not snapshots.
pub fn snapshot_ops(names: &[String]) -> Vec<u64> {
    let mut ops: Vec<u64> = names
        .iter()
        .filter_map(|n| parse_snapshot_file_name(n))
        .collect();
    ops.sort_unstable();
    ops
}

/// The op of a snapshot temp file name as keel writes it (`<20 digits>.snap.tmp`).
pub fn parse_snapshot_temp_name(name: &str) -> Option<u64> {
    parse_snapshot_file_name(name.strip_suffix(TEMP_SUFFIX)?)
}

/// Names of snapshot temp files as keel writes them (`<20 digits>.snap.tmp`); other names in
/// `snapshots/` are not keel's and are left alone.
pub(crate) fn keel_snapshot_temps(names: &[String]) -> Vec<String> {
    names
        .iter()
        .filter(|name| parse_snapshot_temp_name(name).is_some())
        .cloned()
        .collect()
}

/// Whose snapshot a file is (all zero: unknown, as in version 1 files and stores without a
/// manifest).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SnapshotIdentity {
    /// The engine directory's id (its manifest's).
    pub directory_id: DirectoryId,
    /// The seq of the snapshot op's entry in the journal (0: unknown).
    pub journal_seq: u64,
    /// That entry's header crc (the chain checksum).
    pub chain_crc: u32,
}

pub(crate) fn header_crc(h: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&h[0..36]);
    if h.len() >= SNAPSHOT_HEADER_BYTES {
        hasher.update(&h[40..SNAPSHOT_HEADER_BYTES]);
    }
    hasher.finalize()
}

pub(crate) fn encode_header(
    op: u64,
    identity: &SnapshotIdentity,
    payload: &[u8],
) -> [u8; SNAPSHOT_HEADER_BYTES] {
    encode_header_parts(op, identity, payload.len() as u64, crc32fast::hash(payload))
}

/// The header of a payload of `len_bytes` whose crc32 is `payload_crc` (a streamed persist knows
/// both only once the payload is written).
pub(crate) fn encode_header_parts(
    op: u64,
    identity: &SnapshotIdentity,
    len_bytes: u64,
    payload_crc: u32,
) -> [u8; SNAPSHOT_HEADER_BYTES] {
    let mut h = [0u8; SNAPSHOT_HEADER_BYTES];
    h[0..8].copy_from_slice(SNAPSHOT_MAGIC);
    h[8..12].copy_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&op.to_le_bytes());
    h[24..32].copy_from_slice(&len_bytes.to_le_bytes());
    h[32..36].copy_from_slice(&payload_crc.to_le_bytes());
    h[40..48].copy_from_slice(&identity.journal_seq.to_le_bytes());
    h[48..52].copy_from_slice(&identity.chain_crc.to_le_bytes());
    h[56..72].copy_from_slice(&identity.directory_id.0);
    let crc = header_crc(&h);
    h[36..40].copy_from_slice(&crc.to_le_bytes());
    h
}

/// A validated header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotHeader {
    /// The format version it was written in.
    pub version: u32,
    /// The header's length in bytes (40 in version 1, 72 in version 2).
    pub header_bytes: usize,
    /// The snapshot's op.
    pub op: u64,
    /// The payload's length.
    pub len_bytes: u64,
    /// The payload's crc32.
    pub payload_crc: u32,
    /// Whose snapshot it is.
    pub identity: SnapshotIdentity,
}

pub(crate) fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

pub(crate) fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// Why header bytes are not a header this build reads.
#[derive(Debug)]
pub(crate) enum HeaderFault {
    /// Damage: short, bad magic, bad checksum.
    Damaged(String),
    /// A newer format: not damage, this build cannot read it.
    Version(u32),
}

/// Decodes the header at the start of `h` (the first [`SNAPSHOT_HEADER_BYTES`] of a file, or all
/// of a shorter one).
pub(crate) fn decode_header(h: &[u8]) -> Result<SnapshotHeader, HeaderFault> {
    if h.len() < SNAPSHOT_V1_HEADER_BYTES {
        return Err(HeaderFault::Damaged(format!(
            "file shorter than the {SNAPSHOT_V1_HEADER_BYTES}-byte header"
        )));
    }
    if &h[0..8] != SNAPSHOT_MAGIC {
        return Err(HeaderFault::Damaged("bad magic".into()));
    }
    // The version is read before the checksum it selects; a flipped version bit then fails that
    // checksum and reads as damage (fallen back from), while an intact newer header is refused,
    // never quarantined. Every version keeps the magic, the version and this checksum where they are.
    let version = le_u32(&h[8..12]);
    let header_bytes = match version {
        1 => SNAPSHOT_V1_HEADER_BYTES,
        _ => SNAPSHOT_HEADER_BYTES,
    };
    if h.len() < header_bytes {
        return Err(HeaderFault::Damaged(format!(
            "file shorter than the {header_bytes}-byte header"
        )));
    }
    let stored = le_u32(&h[36..40]);
    let computed = header_crc(&h[..header_bytes]);
    if stored != computed {
        return Err(HeaderFault::Damaged(format!(
            "header checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
        )));
    }
    if version > SNAPSHOT_VERSION {
        return Err(HeaderFault::Version(version));
    }
    if version == 0 {
        return Err(HeaderFault::Damaged("unsupported format version 0".into()));
    }
    let mut identity = SnapshotIdentity::default();
    if version >= 2 {
        identity.journal_seq = le_u64(&h[40..48]);
        identity.chain_crc = le_u32(&h[48..52]);
        identity.directory_id.0.copy_from_slice(&h[56..72]);
    }
    Ok(SnapshotHeader {
        version,
        header_bytes,
        op: le_u64(&h[16..24]),
        len_bytes: le_u64(&h[24..32]),
        payload_crc: le_u32(&h[32..36]),
        identity,
    })
}

/// Decodes a snapshot file's header (from its first bytes) without checking the payload: what
/// the tools show of a snapshot whose payload they do not interpret.
pub fn decode_snapshot_header(bytes: &[u8]) -> Result<SnapshotHeader, String> {
    decode_header(bytes).map_err(|fault| match fault {
        HeaderFault::Damaged(reason) => reason,
        HeaderFault::Version(version) => {
            format!("format version {version} is newer than this build reads")
        }
    })
}

/// A whole snapshot file (header + `payload`) for `op`, its identity unknown: the bytes a store
/// without a manifest persists (the openraft adapter). Public so other stores on keel write the
/// same format rather than a copy of it.
pub fn encode_snapshot_file(op: u64, payload: &[u8]) -> Vec<u8> {
    encode_snapshot_file_with(op, &SnapshotIdentity::default(), payload)
}

/// A whole snapshot file for `op` that records whose it is.
pub fn encode_snapshot_file_with(op: u64, identity: &SnapshotIdentity, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(SNAPSHOT_HEADER_BYTES + payload.len());
    out.extend_from_slice(&encode_header(op, identity, payload));
    out.extend_from_slice(payload);
    out
}

/// Checks a whole snapshot file read back for `op` (header, op, length, payload checksum) and
/// returns its payload, or why it is damaged.
pub fn decode_snapshot_file(op: u64, bytes: &[u8]) -> Result<&[u8], String> {
    let header = decode_snapshot_header(bytes)?;
    if header.op != op {
        return Err(format!("header says op {}, name says {op}", header.op));
    }
    let payload = &bytes[header.header_bytes..];
    if header.len_bytes != payload.len() as u64 {
        return Err(format!(
            "header says {} payload bytes, file holds {}",
            header.len_bytes,
            payload.len()
        ));
    }
    if crc32fast::hash(payload) != header.payload_crc {
        return Err("payload checksum mismatch".into());
    }
    Ok(payload)
}
