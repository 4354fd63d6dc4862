//! Walking a journal's segment files, read-only, for `dump` and `inspect`: the journal's forensic
//! walk (`keel_journal::forensic`: every entry header that decodes, markers, superseded entries
//! and entries past a chain break included, up to the first bytes that are no header), turned
//! into what the commands print. No segment parsing here; judging what a stop means is
//! `verify`'s job (the journal's scan); this only shows what is there.

use keel_journal::forensic::{self, ForensicEntry, ForensicSegment, ForensicStop};
use keel_journal::EntryKind;
use keel_storage::{Directory, FsDirectory};
use serde::Serialize;

use super::error::CliError;

/// The journal's directory under an engine directory.
pub const JOURNAL_DIR: &str = "journal";

/// An entry kind as the JSON prints it: its name.
fn kind_name<S: serde::Serializer>(kind: &EntryKind, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(kind.name())
}

/// One entry found in a segment.
#[derive(Debug, Clone, Serialize)]
pub struct EntryInfo {
    pub op: u64,
    /// Data, truncate, commit or snapshot (printed as its name: `data`, `truncate`, ...).
    #[serde(serialize_with = "kind_name")]
    pub kind: EntryKind,
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

/// Largest segment file the walk reads whole (4 GiB: above any segment keel writes, so a bigger
/// file is refused by the journal's read rather than read into memory).
const MAX_WALK_FILE_BYTES: u64 = 4 << 30;

/// Walks every segment of the engine directory `root` in order (the journal's forensic walk),
/// handing each entry to `visit`. An engine directory without a journal has no segments.
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
    let mut ops = OpRanges::default();
    let mut on_entry = |name: &str, entry: &ForensicEntry<'_>| {
        let info = entry_info(name, entry);
        ops.add(name, &info);
        visit(&info, entry.payload);
    };
    let files = forensic::walk_journal(&journal, MAX_WALK_FILE_BYTES, &mut on_entry)
        .await
        .map_err(|error| CliError::Engine(error.into()))?;
    Ok(files
        .into_iter()
        .map(|file| summary(&file.name, file.len_bytes, &file.segment, &ops))
        .collect())
}

/// Lowest and highest data op per file, as the walk hands entries over.
#[derive(Default)]
struct OpRanges(std::collections::BTreeMap<String, (u64, u64)>);

impl OpRanges {
    fn add(&mut self, name: &str, entry: &EntryInfo) {
        if entry.kind != EntryKind::Data {
            return;
        }
        let range = self
            .0
            .entry(name.to_string())
            .or_insert((entry.op, entry.op));
        *range = (range.0.min(entry.op), range.1.max(entry.op));
    }
}

/// A walked segment as `dump` and `inspect` show it.
fn summary(name: &str, len_bytes: u64, walked: &ForensicSegment, ops: &OpRanges) -> SegmentSummary {
    let range = ops.0.get(name);
    SegmentSummary {
        file: name.to_string(),
        len_bytes,
        used_bytes: walked.end_bytes,
        entries: walked.entries,
        first_op: range.map(|r| r.0),
        last_op: range.map(|r| r.1),
        header_snapshot_op: walked.header.map(|h| h.snapshot_op),
        stop: walked.stop.map(|stop| walk_stop(name, stop)),
    }
}

/// Where and why the walk stopped, in an operator's words.
fn walk_stop(name: &str, stop: ForensicStop) -> WalkStop {
    let (offset, reason) = match stop {
        ForensicStop::SegmentHeader(fault) => (
            0,
            format!("segment header: {}", fault_text(&format!("{fault:?}"))),
        ),
        ForensicStop::EntryHeader {
            offset_bytes,
            fault,
        } => (
            offset_bytes,
            format!("entry header: {}", fault_text(&format!("{fault:?}"))),
        ),
        ForensicStop::PastEnd { offset_bytes } => (
            offset_bytes,
            "entry runs past the end of the file".to_string(),
        ),
        other => (0, format!("{other:?}")),
    };
    WalkStop {
        file: name.to_string(),
        offset,
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
    let mut ops = OpRanges::default();
    let walked = forensic::walk_segment(&bytes, &mut |entry| {
        let info = entry_info(&name, entry);
        ops.add(&name, &info);
        visit(&info, entry.payload);
    });
    Ok(summary(&name, bytes.len() as u64, &walked, &ops))
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

fn entry_info(name: &str, entry: &ForensicEntry<'_>) -> EntryInfo {
    let header = &entry.header;
    EntryInfo {
        op: header.op,
        kind: header.kind,
        len: header.payload_len,
        checksum: format!("{:#010x}", header.payload_crc),
        checksum_ok: entry.payload_ok,
        seq: header.seq,
        commit_op: header.commit_op,
        file: name.to_string(),
        offset: entry.offset_bytes,
    }
}

#[cfg(test)]
mod tests {
    use keel_journal::format::{encode_entry, Binding, NewEntry, SegmentHeader};
    use keel_journal::EntryKind;

    use super::*;

    /// `dump FILE.wal` shows every entry on disk, past a chain break, up to the bytes that are
    /// no header, and says where and why it stopped.
    #[test]
    fn a_file_walk_shows_entries_past_a_chain_break_and_names_its_stop() {
        let mut bytes = SegmentHeader::new(0, 1, 0).encode().to_vec();
        let mut prev = 0;
        // Seqs 1, 2, then 5 (a break the recovery scan would stop at), then 6.
        for (seq, op) in [(1, 10), (2, 11), (5, 12), (6, 13)] {
            let entry = NewEntry {
                kind: EntryKind::Data,
                seq,
                op,
                prev_crc: prev,
                durable_seq: 0,
                commit_op: 0,
            };
            prev = encode_entry(&mut bytes, &entry, b"payload", Binding::Plain);
        }
        let garbage_at = bytes.len() as u64;
        bytes.extend_from_slice(&[0xab; 100]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("00000000000000000000.wal");
        std::fs::write(&path, &bytes).unwrap();
        let mut ops = Vec::new();
        let summary = walk_file(&path, &mut |entry, payload| {
            assert!(entry.checksum_ok);
            assert_eq!(payload, b"payload");
            ops.push(entry.op);
        })
        .unwrap();
        assert_eq!(ops, [10, 11, 12, 13]);
        assert_eq!(
            (summary.entries, summary.first_op, summary.last_op),
            (4, Some(10), Some(13))
        );
        assert_eq!(summary.used_bytes, garbage_at);
        let stop = summary.stop.expect("a stop at the garbage");
        assert_eq!(stop.offset, garbage_at);
        assert_eq!(stop.reason, "entry header: bad magic");
    }
}
