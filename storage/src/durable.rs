//! Durable file and directory creation, and atomic replacement, over any [`Directory`].
//!
//! This module owns the one copy of each durability mechanism keel uses, so that every crate gets
//! the same order of writes, fsyncs and renames, and the same guarantees:
//!
//! - [`create_durable`] / [`create_unique`]: a new file, written and fsynced, its entry fsynced;
//!   never reopening, truncating or replacing an existing file (quarantine copies must never
//!   destroy an earlier copy).
//! - [`atomic_replace`] / [`atomic_replace_with`] / [`atomic_replace_stream`]: `NAME.tmp`
//!   written (whole, or piece by piece with paced write-back) and fsynced, renamed over
//!   `NAME`, the directory fsynced. A crash at any point leaves either the old file or the new one
//!   under `NAME`, never a mix; success is reported only after the directory fsync.
//! - [`open_dir_durable`]: a subdirectory whose entry in its parent and whose own entries are
//!   durable before it is used.
//!
//! It must never know what the bytes mean, never report success before the last fsync that the
//! guarantee depends on has returned, and never overwrite a file it was asked to create.

use std::convert::Infallible;
use std::fmt;
use std::io;

use compio::buf::BufResult;

use crate::{Directory, OpenMode, Storage};

/// Suffix of the temp file [`atomic_replace`] writes before renaming it over its target.
pub const TEMP_SUFFIX: &str = ".tmp";

/// The target name when `name` is an [`atomic_replace`] temp file (`NAME.tmp` → `NAME`), so a
/// cleanup can remove temps an interrupted replace left behind; `None` otherwise.
pub fn is_temp_of(name: &str) -> Option<&str> {
    name.strip_suffix(TEMP_SUFFIX)
        .filter(|target| !target.is_empty())
}

/// The step of a durable operation that failed, named in [`DurableError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DurableStage {
    /// [`atomic_replace`]: opening (creating) `NAME.tmp` or truncating it to empty.
    CreateTemp,
    /// [`atomic_replace`]: writing the bytes to `NAME.tmp`.
    WriteTemp,
    /// [`atomic_replace`]: fsyncing `NAME.tmp`.
    SyncTemp,
    /// [`atomic_replace`]: renaming `NAME.tmp` over `NAME`.
    Rename,
    /// [`create_durable`], [`create_unique`]: creating the new file (`CreateNew`), including
    /// finding every candidate name of [`create_unique`] taken.
    CreateNew,
    /// [`create_durable`], [`create_unique`]: writing the bytes to the new file.
    WriteNew,
    /// [`create_durable`], [`create_unique`]: fsyncing the new file.
    SyncNew,
    /// [`open_dir_durable`]: opening (or creating) the subdirectory.
    OpenDir,
    /// Every operation: fsyncing a directory, which makes a rename or a new entry durable.
    SyncDir,
}

impl DurableStage {
    /// A short description (`"fsync temp file"`), for messages and for error types that carry a
    /// static stage string.
    pub fn as_str(self) -> &'static str {
        match self {
            DurableStage::CreateTemp => "create temp file",
            DurableStage::WriteTemp => "write temp file",
            DurableStage::SyncTemp => "fsync temp file",
            DurableStage::Rename => "rename temp file",
            DurableStage::CreateNew => "create new file",
            DurableStage::WriteNew => "write new file",
            DurableStage::SyncNew => "fsync new file",
            DurableStage::OpenDir => "open directory",
            DurableStage::SyncDir => "fsync directory",
        }
    }
}

impl fmt::Display for DurableStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The points of an [`atomic_replace_with`] at which its hook runs, each right after the step
/// it names completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplaceStage {
    /// `NAME.tmp` holds all the bytes, not yet fsynced.
    TempWritten,
    /// `NAME.tmp` is fsynced (and closed); `NAME` is still the old file.
    TempSynced,
    /// `NAME` is the new file in the live namespace; the directory is not fsynced yet.
    Renamed,
}

/// A durable operation failed at `stage` on `path`.
#[derive(Debug, thiserror::Error)]
#[error("{stage} failed on {path}: {source}")]
pub struct DurableError {
    /// The step that failed.
    pub stage: DurableStage,
    /// The file or directory it failed on (`/data/raft-meta.tmp`, `mem:/journal`).
    pub path: String,
    /// The error the [`Directory`] or [`Storage`] call returned.
    #[source]
    pub source: io::Error,
}

impl DurableError {
    fn new(stage: DurableStage, path: &str, source: io::Error) -> Self {
        Self {
            stage,
            path: path.to_string(),
            source,
        }
    }

    /// The kind of the underlying I/O error.
    pub fn kind(&self) -> io::ErrorKind {
        self.source.kind()
    }

    /// Whether simply calling the same function again with the same arguments is safe: it
    /// destroys nothing an earlier attempt (or anyone) made durable, and a success it reports
    /// means exactly what a first-time success means. True for every error of this module:
    ///
    /// - [`atomic_replace`] starts over from an empty temp file (never re-fsyncing the pages a
    ///   failed fsync may have dropped), its rename replaces whatever an earlier attempt renamed,
    ///   and only the final directory fsync reports success.
    /// - [`create_durable`] and [`create_unique`] remove the file they created when a later step
    ///   fails (best effort: if that removal fails too, a retry of [`create_durable`] fails with
    ///   `AlreadyExists` instead of overwriting, and [`create_unique`] takes the next name).
    /// - [`open_dir_durable`] is idempotent.
    ///
    /// Safe is not the same as useful: a device that keeps failing fails the retry too.
    pub fn retry_safe(&self) -> bool {
        true
    }

    /// True when the namespace change may already be visible but it is unknown whether it
    /// survives a power cut: a failed directory fsync ([`DurableStage::SyncDir`]). After a failed
    /// [`atomic_replace`] at this stage, readers may see the new file under `NAME` now and the old
    /// one after a power cut (never a mix: the new file's bytes were fsynced before the rename).
    /// After a failed create, the removed new file may reappear after a power cut, complete. A
    /// successful retry settles it.
    pub fn outcome_uncertain(&self) -> bool {
        self.stage == DurableStage::SyncDir
    }
}

impl From<DurableError> for io::Error {
    /// Keeps the kind of the underlying error and the [`DurableError`] as the source.
    fn from(error: DurableError) -> Self {
        io::Error::new(error.kind(), error)
    }
}

/// Why an [`atomic_replace_with`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReplaceError<H> {
    /// A step failed.
    #[error(transparent)]
    Io(#[from] DurableError),
    /// The hook returned an error at one of the [`ReplaceStage`]s; nothing after it ran.
    #[error("atomic replace halted by its hook: {0}")]
    Halted(H),
}

fn entry_path<D: Directory>(dir: &D, name: &str) -> String {
    format!("{}/{name}", dir.display_path())
}

/// Creates `name` in `dir` holding `bytes`, durably: `OpenMode::CreateNew` (an existing file is
/// never reopened or truncated: `AlreadyExists` fails at [`DurableStage::CreateNew`]), write
/// everything, fsync the file, fsync the directory. If a step after the create fails, the new
/// file is removed again (best effort) before the error is returned.
pub async fn create_durable<D: Directory>(
    dir: &D,
    name: &str,
    bytes: Vec<u8>,
) -> Result<(), DurableError> {
    let path = entry_path(dir, name);
    let file = dir
        .open_file(name, OpenMode::CreateNew)
        .await
        .map_err(|e| DurableError::new(DurableStage::CreateNew, &path, e))?;
    finish_create(dir, file, name, bytes).await
}

/// Like [`create_durable`] under `base_name`, or else the first free of `base_name.1` …
/// `base_name.{max_suffix}`; returns the name used. Each candidate is tried with `CreateNew`, so
/// a file that appears meanwhile is skipped, never overwritten. When all `max_suffix + 1` names
/// are taken it fails at [`DurableStage::CreateNew`] with `AlreadyExists`, naming the base.
pub async fn create_unique<D: Directory>(
    dir: &D,
    base_name: &str,
    bytes: Vec<u8>,
    max_suffix: u32,
) -> Result<String, DurableError> {
    for suffix in 0..=max_suffix {
        let name = match suffix {
            0 => base_name.to_string(),
            n => format!("{base_name}.{n}"),
        };
        match dir.open_file(&name, OpenMode::CreateNew).await {
            Ok(file) => {
                finish_create(dir, file, &name, bytes).await?;
                return Ok(name);
            }
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(error) => {
                let path = entry_path(dir, &name);
                return Err(DurableError::new(DurableStage::CreateNew, &path, error));
            }
        }
    }
    let source = io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!("{base_name} and {base_name}.1 to {base_name}.{max_suffix} all exist"),
    );
    Err(DurableError::new(
        DurableStage::CreateNew,
        &entry_path(dir, base_name),
        source,
    ))
}

/// Writes and fsyncs a file just created as `name`, then fsyncs `dir`; removes the file again if
/// any of that fails.
async fn finish_create<D: Directory>(
    dir: &D,
    file: D::File,
    name: &str,
    bytes: Vec<u8>,
) -> Result<(), DurableError> {
    let path = entry_path(dir, name);
    let result = write_and_sync(dir, file, &path, bytes).await;
    if let Err(error) = &result {
        // The file is ours (CreateNew made it), and a caller told "failed" must be able to retry
        // under the same name. A removal that fails leaves the file for the caller to find.
        if let Err(remove_error) = dir.remove_file(name).await {
            tracing::warn!(%path, %error, %remove_error, "cannot remove a file whose durable create failed");
        }
    }
    result
}

async fn write_and_sync<D: Directory>(
    dir: &D,
    file: D::File,
    path: &str,
    bytes: Vec<u8>,
) -> Result<(), DurableError> {
    let BufResult(written, _) = file.write_all_at(0, bytes).await;
    written.map_err(|e| DurableError::new(DurableStage::WriteNew, path, e))?;
    file.sync()
        .await
        .map_err(|e| DurableError::new(DurableStage::SyncNew, path, e))?;
    drop(file);
    dir.sync()
        .await
        .map_err(|e| DurableError::new(DurableStage::SyncDir, &dir.display_path(), e))
}

/// Replaces `name` in `dir` with `bytes` atomically and durably (see [`atomic_replace_with`]).
pub async fn atomic_replace<D: Directory>(
    dir: &D,
    name: &str,
    bytes: Vec<u8>,
) -> Result<(), DurableError> {
    match atomic_replace_with(dir, name, bytes, |_| Ok::<(), Infallible>(())).await {
        Ok(()) => Ok(()),
        Err(ReplaceError::Io(error)) => Err(error),
        Err(ReplaceError::Halted(never)) => match never {},
    }
}

/// Replaces `name` in `dir` with `bytes` atomically and durably, calling `hook` at each
/// [`ReplaceStage`]: open `name.tmp` with `OpenMode::Create` and truncate it to empty (a temp file
/// an interrupted replace left starts over), write everything, hook(`TempWritten`), fsync it,
/// hook(`TempSynced`), rename it over `name`, hook(`Renamed`), fsync the directory.
///
/// A hook error stops the replace right there and comes back as [`ReplaceError::Halted`]
/// (crash tests use it to stop at a chosen point). A crash at any point leaves the old file or
/// the new one under `name`, never a mix; nothing is reported durable before the directory fsync.
pub async fn atomic_replace_with<D: Directory, H>(
    dir: &D,
    name: &str,
    bytes: Vec<u8>,
    hook: impl FnMut(ReplaceStage) -> Result<(), H>,
) -> Result<(), ReplaceError<H>> {
    atomic_replace_stream(dir, name, &mut WholeBytes(Some(bytes)), hook).await
}

/// Where the bytes of [`atomic_replace_stream`] come from: a body produced piece by piece
/// (each piece is written, and its write-back waited for off the core, before the next is
/// asked for), then a head written at offset 0 into the room the body left for it (a header
/// that needs the whole body's length and checksum).
pub trait ReplaceSource {
    /// Bytes reserved at the start of the file for [`ReplaceSource::head`]; the body starts there.
    fn head_bytes(&self) -> usize;
    /// The next piece of the body, written right after the previous one; `None` when done. An
    /// error stops the replace (as a [`DurableStage::WriteTemp`] failure; `NAME` is untouched).
    fn next_piece(&mut self) -> io::Result<Option<Vec<u8>>>;
    /// The head (exactly `head_bytes` long), asked for once the body is written.
    fn head(&mut self) -> Vec<u8>;
}

/// One buffer as a [`ReplaceSource`]: no head, one piece.
struct WholeBytes(Option<Vec<u8>>);

impl ReplaceSource for WholeBytes {
    fn head_bytes(&self) -> usize {
        0
    }
    fn next_piece(&mut self) -> io::Result<Option<Vec<u8>>> {
        Ok(self.0.take())
    }
    fn head(&mut self) -> Vec<u8> {
        Vec::new()
    }
}

/// Writes back `len_bytes` of `file` from `offset_bytes` and waits for it ([`Storage::write_back`],
/// off the core), then leaves the device idle for as long as that took (at most 20 ms): a large
/// background write paced this way (a snapshot, a journal's spare segment) never queues more than
/// one piece of writeback ahead of the application's durable writes and takes at most about half
/// of the device's bandwidth.
pub async fn write_back_paced<F: Storage>(
    file: &F,
    offset_bytes: u64,
    len_bytes: u64,
) -> std::io::Result<()> {
    let started = std::time::Instant::now();
    file.write_back(offset_bytes, len_bytes).await?;
    let idle = (started.elapsed() * PACING_IDLE_PER_BUSY).min(PACING_PAUSE_MAX);
    if !idle.is_zero() {
        compio::time::sleep(idle).await;
    }
    Ok(())
}

/// Device time left idle per unit of a piece's write-back time in [`write_back_paced`]:
/// 1 leaves the file at most half of the device's bandwidth (3 measured no better for the
/// journal's p99 and made checkpoints twice as long; BENCHMARKS.md).
const PACING_IDLE_PER_BUSY: u32 = 1;

/// Longest pause after one piece in [`write_back_paced`].
const PACING_PAUSE_MAX: std::time::Duration = std::time::Duration::from_millis(20);

/// [`atomic_replace_with`] for bytes produced piece by piece: the same steps, guarantees and
/// hooks, with the temp file written one piece at a time. After each piece but the last, the
/// piece's pages are written back to the device and waited for ([`Storage::write_back`], off the
/// core), so a large file never queues more than one piece of writeback ahead of the
/// application's own durable writes, and the final fsync finds little left to flush; then the
/// device is left idle for as long as that write-back took (at most 20 ms), so the file takes at
/// most about half of the device's bandwidth.
pub async fn atomic_replace_stream<D: Directory, H>(
    dir: &D,
    name: &str,
    source: &mut dyn ReplaceSource,
    mut hook: impl FnMut(ReplaceStage) -> Result<(), H>,
) -> Result<(), ReplaceError<H>> {
    let temp = format!("{name}{TEMP_SUFFIX}");
    let temp_path = entry_path(dir, &temp);
    let at = |stage| {
        let temp_path = &temp_path;
        move |e| ReplaceError::Io(DurableError::new(stage, temp_path, e))
    };
    let file = dir
        .open_file(&temp, OpenMode::Create)
        .await
        .map_err(at(DurableStage::CreateTemp))?;
    file.truncate(0)
        .await
        .map_err(at(DurableStage::CreateTemp))?;
    let head_bytes = source.head_bytes();
    let mut offset_bytes = head_bytes as u64;
    let mut piece = source.next_piece().map_err(at(DurableStage::WriteTemp))?;
    while let Some(bytes) = piece {
        let len_bytes = bytes.len() as u64;
        let BufResult(written, _) = file.write_all_at(offset_bytes, bytes).await;
        written.map_err(at(DurableStage::WriteTemp))?;
        piece = source.next_piece().map_err(at(DurableStage::WriteTemp))?;
        if piece.is_some() {
            write_back_paced(&file, offset_bytes, len_bytes)
                .await
                .map_err(at(DurableStage::WriteTemp))?;
        }
        offset_bytes += len_bytes;
    }
    if head_bytes > 0 {
        let head = source.head();
        assert_eq!(
            head.len(),
            head_bytes,
            "a replace source's head has its announced size"
        );
        let BufResult(written, _) = file.write_all_at(0, head).await;
        written.map_err(at(DurableStage::WriteTemp))?;
    }
    hook(ReplaceStage::TempWritten).map_err(ReplaceError::Halted)?;
    file.sync().await.map_err(at(DurableStage::SyncTemp))?;
    drop(file);
    hook(ReplaceStage::TempSynced).map_err(ReplaceError::Halted)?;
    dir.rename(&temp, name)
        .await
        .map_err(at(DurableStage::Rename))?;
    hook(ReplaceStage::Renamed).map_err(ReplaceError::Halted)?;
    dir.sync().await.map_err(|e| {
        ReplaceError::Io(DurableError::new(
            DurableStage::SyncDir,
            &dir.display_path(),
            e,
        ))
    })
}

/// Opens the subdirectory `name` of `parent`, durably.
///
/// When `parent` is writable it creates `name` if missing and then, always (the directory may
/// have been created by a process that crashed before syncing: its entry and its own entries may
/// still be only in the page cache), fsyncs the child and then `parent` before returning. When
/// `parent` is read-only it only opens: a missing `name` stays a `NotFound` error, nothing syncs.
pub async fn open_dir_durable<D: Directory>(parent: &D, name: &str) -> Result<D, DurableError> {
    let path = entry_path(parent, name);
    if parent.is_read_only() {
        return parent
            .open_dir(name, false)
            .await
            .map_err(|e| DurableError::new(DurableStage::OpenDir, &path, e));
    }
    let child = parent
        .open_dir(name, true)
        .await
        .map_err(|e| DurableError::new(DurableStage::OpenDir, &path, e))?;
    child
        .sync()
        .await
        .map_err(|e| DurableError::new(DurableStage::SyncDir, &child.display_path(), e))?;
    parent
        .sync()
        .await
        .map_err(|e| DurableError::new(DurableStage::SyncDir, &parent.display_path(), e))?;
    Ok(child)
}
