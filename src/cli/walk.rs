//! Walking a journal's segment files byte by byte, read-only, for `dump` and `inspect`: every
//! entry header that decodes (markers and superseded entries included) with its place, up to the
//! first header that does not decode. Judging what a stop means is `verify`'s job (the journal's
//! scan); this only shows what is there.

use keel_journal::format::{
    parse_segment_file_name, payload_crc, EntryHeader, HeaderFault, SegmentHeader,
    ENTRY_HEADER_BYTES, SEGMENT_HEADER_BYTES,
};
use keel_storage::{Directory, FsDirectory, OpenMode, Storage};
use serde::Serialize;

use super::error::CliError;

/// The journal's directory under an engine directory.
pub const JOURNAL_DIR: &str = "journal";

/// One entry found in a segment.
#[derive(Debug, Clone, Serialize)]
pub struct EntryInfo {
    pub op: u64,
    /// `data`, `truncate`, `commit` or `snapshot`.
    pub kind: &'static str,
    /// Payload length in bytes.
    pub len: u32,
    /// The stored payload crc32.
    pub checksum: String,
    /// Whether the payload matches it.
    pub checksum_ok: bool,
    pub seq: u64,
    pub commit_op: u64,
    pub file: String,
    pub offset: u64,
}

/// Where a segment's walk stopped short of its end (non-zero bytes that do not decode).
#[derive(Debug, Clone, Serialize)]
pub struct WalkStop {
    pub file: String,
    pub offset: u64,
    pub reason: String,
}

/// One segment file as walked.
#[derive(Debug, Clone, Serialize)]
pub struct SegmentSummary {
    pub file: String,
    pub len_bytes: u64,
    /// End of the last entry that decoded (the rest is preallocated zeroes or a stop).
    pub used_bytes: u64,
    pub entries: u64,
    /// Lowest and highest op of its data entries.
    pub first_op: Option<u64>,
    pub last_op: Option<u64>,
    /// The snapshot watermark its header records (`None`: the header does not decode).
    pub header_snapshot_op: Option<u64>,
    pub stop: Option<WalkStop>,
}

/// Walks every segment of the engine directory `root` in order, handing each entry to `visit`.
/// An engine directory without a journal has no segments.
pub async fn walk_journal(
    root: &FsDirectory,
    mut visit: impl FnMut(&EntryInfo, &[u8]),
) -> Result<Vec<SegmentSummary>, CliError> {
    let io_error = |source| {
        CliError::io(
            format!("reading {}/{JOURNAL_DIR}", root.path().display()),
            source,
        )
    };
    if !root.exists(JOURNAL_DIR).await.map_err(io_error)? {
        return Ok(Vec::new());
    }
    let journal = root.open_dir(JOURNAL_DIR, false).await.map_err(io_error)?;
    let mut summaries = Vec::new();
    for name in journal.list().await.map_err(io_error)? {
        if parse_segment_file_name(&name).is_none() {
            continue;
        }
        let file = journal
            .open_file(&name, OpenMode::ReadOnly)
            .await
            .map_err(io_error)?;
        let bytes = file
            .read_exact_at(0, file.len() as usize)
            .await
            .map_err(io_error)?;
        summaries.push(walk_segment(&name, &bytes, &mut visit));
    }
    Ok(summaries)
}

/// Walks one segment's bytes.
fn walk_segment(
    name: &str,
    bytes: &[u8],
    visit: &mut impl FnMut(&EntryInfo, &[u8]),
) -> SegmentSummary {
    let mut summary = SegmentSummary {
        file: name.to_string(),
        len_bytes: bytes.len() as u64,
        used_bytes: 0,
        entries: 0,
        first_op: None,
        last_op: None,
        header_snapshot_op: None,
        stop: None,
    };
    match SegmentHeader::decode(bytes) {
        Ok(header) => summary.header_snapshot_op = Some(header.snapshot_op),
        Err(fault) => {
            let reason = format!("segment header: {}", fault_text(&format!("{fault:?}")));
            summary.stop = Some(stop(name, 0, reason));
            return summary;
        }
    }
    let mut offset = SEGMENT_HEADER_BYTES;
    while offset < bytes.len() {
        let header = match EntryHeader::decode(&bytes[offset..]) {
            Ok((header, _)) => header,
            Err(HeaderFault::Zero | HeaderFault::Short) if all_zero(&bytes[offset..]) => break,
            Err(fault) => {
                let reason = format!("entry header: {}", fault_text(&format!("{fault:?}")));
                summary.stop = Some(stop(name, offset, reason));
                break;
            }
        };
        let end = offset + header.entry_len_bytes();
        if end > bytes.len() {
            let reason = "entry runs past the end of the file".to_string();
            summary.stop = Some(stop(name, offset, reason));
            break;
        }
        let entry = entry_info(name, offset, &header, &bytes[offset..end]);
        let payload_end = offset + ENTRY_HEADER_BYTES + header.payload_len as usize;
        let payload = &bytes[offset + ENTRY_HEADER_BYTES..payload_end];
        summary.entries += 1;
        if entry.kind == "data" {
            summary.first_op = Some(summary.first_op.map_or(entry.op, |op| op.min(entry.op)));
            summary.last_op = Some(summary.last_op.map_or(entry.op, |op| op.max(entry.op)));
        }
        visit(&entry, payload);
        offset = end;
    }
    summary.used_bytes = offset.min(bytes.len()) as u64;
    summary
}

fn stop(name: &str, offset: usize, reason: String) -> WalkStop {
    WalkStop {
        file: name.to_string(),
        offset: offset as u64,
        reason,
    }
}

/// A fault's name as words (`BadChecksum` -> `bad checksum`, `BadField("kind")` -> `bad field
/// kind`): no Rust `Debug` syntax in what an operator reads.
fn fault_text(debug: &str) -> String {
    let mut out = String::new();
    for c in debug.chars() {
        match c {
            '(' | ')' | '"' => {
                if c == '(' {
                    out.push(' ');
                }
            }
            c if c.is_ascii_uppercase() => {
                if !out.is_empty() && !out.ends_with(' ') {
                    out.push(' ');
                }
                out.push(c.to_ascii_lowercase());
            }
            c => out.push(c),
        }
    }
    out
}

/// Walks one segment file given by path (`dump FILE.wal`), read-only.
pub fn walk_file(
    path: &std::path::Path,
    visit: &mut impl FnMut(&EntryInfo, &[u8]),
) -> Result<SegmentSummary, CliError> {
    let bytes = std::fs::read(path)
        .map_err(|source| CliError::io(format!("reading {}", path.display()), source))?;
    let name = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    Ok(walk_segment(&name, &bytes, visit))
}

/// What the walk tells about the ring a directory needs: its highest data op and the highest
/// snapshot watermark (segment headers and markers).
pub fn ring_need(segments: &[SegmentSummary], max_marker_op: u64) -> u64 {
    let watermark = segments
        .iter()
        .filter_map(|s| s.header_snapshot_op)
        .max()
        .unwrap_or(0)
        .max(max_marker_op);
    let last = segments.iter().filter_map(|s| s.last_op).max().unwrap_or(0);
    last.saturating_sub(watermark)
}

fn all_zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == 0)
}

fn entry_info(name: &str, offset: usize, header: &EntryHeader, entry: &[u8]) -> EntryInfo {
    let payload = &entry[ENTRY_HEADER_BYTES..ENTRY_HEADER_BYTES + header.payload_len as usize];
    EntryInfo {
        op: header.op,
        kind: header.kind.name(),
        len: header.payload_len,
        checksum: format!("{:#010x}", header.payload_crc),
        checksum_ok: payload_crc(payload) == header.payload_crc,
        seq: header.seq,
        commit_op: header.commit_op,
        file: name.to_string(),
        offset: offset as u64,
    }
}
