//! `keel dump D [--from OP] [--to OP] [--json]`: one line per journal entry — op, kind, payload
//! length, checksum — walking every segment's bytes in order, markers (commit, truncate,
//! snapshot watermark) and superseded entries included, each with its segment, offset and seq.
//! A walk stops at the first header that does not decode (what follows is for `verify` to judge)
//! and says so. Strictly read-only. Exit 0, or 1 on an error.

use std::path::Path;

use keel_journal::format::{
    parse_segment_file_name, payload_crc, EntryHeader, HeaderFault, SegmentHeader,
    ENTRY_HEADER_BYTES, SEGMENT_HEADER_BYTES,
};
use keel_storage::{Directory, FsDirectory, OpenMode, Storage};
use serde::Serialize;

use super::error::CliError;
use super::output::{self, Outcome};
use super::target::{self, EngineDir};
use super::{readonly, DirArg};

#[derive(Debug, clap::Args)]
pub struct DumpArgs {
    #[command(flatten)]
    pub dir: DirArg,
    /// First op to print.
    #[arg(long, value_name = "OP", default_value_t = 0)]
    pub from: u64,
    /// Last op to print (default: no bound).
    #[arg(long, value_name = "OP")]
    pub to: Option<u64>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// One entry as dumped.
#[derive(Debug, Clone, Serialize)]
pub struct DumpEntry {
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
pub struct DumpStop {
    pub file: String,
    pub offset: u64,
    pub reason: String,
}

#[derive(Debug, Clone, Default, Serialize)]
struct DumpReport {
    count: usize,
    entries: Vec<DumpEntry>,
    stops: Vec<DumpStop>,
}

/// The op window of `--from`/`--to`.
#[derive(Debug, Clone, Copy)]
struct Window {
    from: u64,
    to: u64,
}

pub async fn run(args: DumpArgs) -> Result<u8, CliError> {
    let to = args.to.unwrap_or(u64::MAX);
    if to < args.from {
        return Err(CliError::Usage(format!(
            "--to {to} is below --from {}",
            args.from
        )));
    }
    let window = Window {
        from: args.from,
        to,
    };
    let target = target::resolve(&args.dir.dir).await?;
    let mut outcomes: Vec<(EngineDir, Outcome)> = Vec::new();
    for dir in target.engines() {
        let outcome = match dump_one(&dir.path, window).await {
            Ok(report) => outcome_of(report),
            Err(error) => Outcome::failure(&error, "error"),
        };
        outcomes.push((dir, outcome));
    }
    Ok(output::print(&target, outcomes, args.json))
}

async fn dump_one(path: &Path, window: Window) -> Result<DumpReport, CliError> {
    let root = readonly::open(path).await?;
    let mut report = DumpReport::default();
    let io_error = |source| CliError::io(format!("reading {}/journal", path.display()), source);
    if !root.exists("journal").await.map_err(io_error)? {
        return Ok(report);
    }
    let journal: FsDirectory = root.open_dir("journal", false).await.map_err(io_error)?;
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
        walk_segment(&name, &bytes, window, &mut report);
    }
    report.count = report.entries.len();
    Ok(report)
}

/// Appends the entries of one segment's bytes in the window to `report`.
fn walk_segment(name: &str, bytes: &[u8], window: Window, report: &mut DumpReport) {
    let stop = |offset: usize, reason: String| DumpStop {
        file: name.to_string(),
        offset: offset as u64,
        reason,
    };
    if let Err(fault) = SegmentHeader::decode(bytes) {
        report
            .stops
            .push(stop(0, format!("segment header: {fault:?}")));
        return;
    }
    let mut offset = SEGMENT_HEADER_BYTES;
    while offset < bytes.len() {
        let header = match EntryHeader::decode(&bytes[offset..]) {
            Ok((header, _)) => header,
            Err(HeaderFault::Zero | HeaderFault::Short) if all_zero(&bytes[offset..]) => return,
            Err(fault) => {
                report
                    .stops
                    .push(stop(offset, format!("entry header: {fault:?}")));
                return;
            }
        };
        let end = offset + header.entry_len_bytes();
        if end > bytes.len() {
            report
                .stops
                .push(stop(offset, "entry runs past the end of the file".into()));
            return;
        }
        if (window.from..=window.to).contains(&header.op) {
            report
                .entries
                .push(entry_of(name, offset, &header, &bytes[offset..end]));
        }
        offset = end;
    }
}

fn all_zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == 0)
}

fn entry_of(name: &str, offset: usize, header: &EntryHeader, entry: &[u8]) -> DumpEntry {
    let payload = &entry[ENTRY_HEADER_BYTES..ENTRY_HEADER_BYTES + header.payload_len as usize];
    DumpEntry {
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

fn outcome_of(report: DumpReport) -> Outcome {
    let mut lines: Vec<String> = report
        .entries
        .iter()
        .map(|e| {
            format!(
                "op {}  kind {}  len {}  crc32 {}{}  seq {}  commit {}  at {}:{}",
                e.op,
                e.kind,
                e.len,
                e.checksum,
                if e.checksum_ok { "" } else { " (MISMATCH)" },
                e.seq,
                e.commit_op,
                e.file,
                e.offset
            )
        })
        .collect();
    for stop in &report.stops {
        lines.push(format!(
            "stop: {} at {}:{} (run `keel verify`)",
            stop.reason, stop.file, stop.offset
        ));
    }
    Outcome::from_report("ok", 0, 0, &report, lines.join("\n"))
}
