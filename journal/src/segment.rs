//! segment: segment files as files — listing, reading whole, creating with a header and zeroes.
//!
//! Owns how segment files are named, found and created durably (header written, preallocated,
//! file fsynced, directory fsynced before any entry goes in). It must never interpret entries or
//! decide about damage.

use keel_storage::{BufResult, Directory, OpenMode, Storage, WriteMode};

use crate::error::JournalError;
use crate::format::{parse_segment_file_name, segment_file_name, SegmentHeader};
use crate::spare::SPARE_FILE_NAME;

/// Reads of a whole segment go in chunks of this size, through one reused chunk buffer: a fresh
/// multi-MiB buffer per read costs more in page faults than the read itself (BENCHMARKS.md, F4).
const READ_CHUNK_BYTES: usize = 1 << 20;

/// A segment file found in the journal directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentFile {
    pub number: u64,
    pub name: String,
}

/// Segment files sorted by number, and leftover temp files.
pub async fn list<D: Directory>(dir: &D) -> Result<(Vec<SegmentFile>, Vec<String>), JournalError> {
    let names = dir
        .list()
        .await
        .map_err(|e| JournalError::io("list journal dir", dir.display_path(), e))?;
    let mut segments = Vec::new();
    let mut temps = Vec::new();
    for name in names {
        if let Some(number) = parse_segment_file_name(&name) {
            segments.push(SegmentFile { number, name });
        } else if name
            .strip_suffix(".tmp")
            .and_then(parse_segment_file_name)
            .is_some()
        {
            // Only compaction's own temp names (`<20 digits>.wal.tmp`): a file keel did not
            // write is never touched.
            temps.push(name);
        } else if name == SPARE_FILE_NAME {
            // The prepared next segment: zeroes (and maybe a header), never an entry.
        } else {
            tracing::debug!(file = %name, "journal: ignoring unknown file in journal dir");
        }
    }
    segments.sort_by_key(|s| s.number);
    Ok((segments, temps))
}

/// Reads a whole file (bounded by `max_file_bytes`).
pub async fn read_whole<D: Directory>(
    dir: &D,
    name: &str,
    max_file_bytes: u64,
) -> Result<Vec<u8>, JournalError> {
    let mut out = Vec::new();
    read_whole_into(dir, name, max_file_bytes, &mut out).await?;
    Ok(out)
}

/// Like [`read_whole`], into `out` (cleared first). A scan passes the same `out` for every
/// segment, so its pages are faulted in once per open rather than once per segment.
pub async fn read_whole_into<D: Directory>(
    dir: &D,
    name: &str,
    max_file_bytes: u64,
    out: &mut Vec<u8>,
) -> Result<(), JournalError> {
    let path = format!("{}/{name}", dir.display_path());
    let file = dir
        .open_file(name, OpenMode::ReadOnly)
        .await
        .map_err(|e| JournalError::io("open segment", &path, e))?;
    read_file_into(&file, &path, max_file_bytes, out).await
}

/// Refuses a segment file larger than any the journal writes (a scan never reads more).
pub fn check_file_len(len: u64, max_file_bytes: u64, path: &str) -> Result<(), JournalError> {
    if len > max_file_bytes {
        return Err(JournalError::Io {
            stage: "read segment",
            file: path.to_string(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("segment is {len} bytes, above the limit of {max_file_bytes}"),
            ),
        });
    }
    Ok(())
}

/// Reads all of an open file into `out` (cleared first), one reused chunk buffer at a time.
async fn read_file_into<F: Storage>(
    file: &F,
    path: &str,
    max_file_bytes: u64,
    out: &mut Vec<u8>,
) -> Result<(), JournalError> {
    let len = file.len();
    check_file_len(len, max_file_bytes, path)?;
    out.clear();
    out.reserve(len as usize);
    let mut chunk: Vec<u8> = Vec::with_capacity((len as usize).min(READ_CHUNK_BYTES));
    let mut offset = 0u64;
    while offset < len {
        let want = ((len - offset) as usize).min(READ_CHUNK_BYTES);
        chunk.clear();
        let BufResult(result, returned) = file.read_at(offset, chunk).await;
        chunk = returned;
        let read = result.map_err(|e| JournalError::io("read segment", path, e))?;
        if read == 0 {
            let eof = std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("segment ended at {offset} of {len} bytes while being read"),
            );
            return Err(JournalError::io("read segment", path, eof));
        }
        let take = read.min(want).min(chunk.len());
        out.extend_from_slice(&chunk[..take]);
        offset += take as u64;
    }
    Ok(())
}

/// Creates segment `header.segment_no` as a new file (an existing file of that name is an error,
/// never truncated: the open's scan accounted for every segment file), or, `from_spare`, from
/// the prepared spare (`spare`): writes its header (a spare's followed by a terminator: a recycled
/// spare holds an older life's bytes there) and, when `preallocate_to` is set, zeroes up to that
/// length (a spare already holds them); fsyncs the file; renames the spare to the segment's name;
/// fsyncs the directory. No entry goes in before all of that is durable, so a spare never holds
/// one of the log. `writes` says how it is opened.
pub async fn create<D: Directory>(
    dir: &D,
    header: &SegmentHeader,
    preallocate_to: Option<u64>,
    writes: WriteMode,
    from_spare: bool,
) -> Result<D::File, JournalError> {
    let name = segment_file_name(header.segment_no);
    let path = format!("{}/{name}", dir.display_path());
    let opened = if from_spare {
        refuse_existing(dir, &name, &path).await?;
        dir.open_file_as(SPARE_FILE_NAME, OpenMode::Existing, writes)
            .await
    } else {
        dir.open_file_as(&name, OpenMode::CreateNew, writes).await
    };
    let file = opened.map_err(|e| JournalError::io("create segment", &path, e))?;
    let mut head = header.encode().to_vec();
    if from_spare {
        head.resize(head.len() + crate::format::TERMINATOR_BYTES, 0);
    }
    let BufResult(result, _) = file.write_all_at(0, head).await;
    result.map_err(|e| JournalError::io("write segment header", &path, e))?;
    if let Some(to) = preallocate_to {
        // Zero-written (not sparse) space: an fdatasync after overwriting it measured ~2x cheaper
        // than after an extending append (BENCHMARKS.md).
        file.preallocate(to)
            .await
            .map_err(|e| JournalError::io("preallocate segment", &path, e))?;
    }
    file.sync()
        .await
        .map_err(|e| JournalError::io("fsync new segment", &path, e))?;
    if from_spare {
        dir.rename(SPARE_FILE_NAME, &name)
            .await
            .map_err(|e| JournalError::io("rename spare to segment", &path, e))?;
    }
    dir.sync()
        .await
        .map_err(|e| JournalError::io("fsync journal dir", &path, e))?;
    Ok(file)
}

/// A rename would replace an existing file of that name: refuse, as `CreateNew` does.
async fn refuse_existing<D: Directory>(
    dir: &D,
    name: &str,
    path: &str,
) -> Result<(), JournalError> {
    let exists = dir
        .exists(name)
        .await
        .map_err(|e| JournalError::io("create segment", path, e))?;
    if exists {
        let error = std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "a segment of that number already exists",
        );
        return Err(JournalError::io("create segment", path, error));
    }
    Ok(())
}
