//! Snapshot files: `DIR/snapshots/NNNNNNNNNNNNNNNNNNNN.snap`, the 20-digit op in the name.
//!
//! Format (little-endian), a 72-byte header then the state machine's bytes:
//!
//! ```text
//! offset  size  field
//!      0     8  magic "KEELSNAP"
//!      8     4  format version (2; version 1 files, a 40-byte header without bytes 40..72, are read)
//!     12     4  reserved, zero
//!     16     8  op: every op up to it is in the state
//!     24     8  payload length in bytes
//!     32     4  crc32 of the payload
//!     36     4  crc32 of bytes 0..36 and 40..72 (version 1: of bytes 0..36)
//!     40     8  journal seq of the op's entry when the snapshot was taken (0: unknown)
//!     48     4  that entry's header crc, the chain checksum (0: unknown)
//!     52     4  reserved, zero
//!     56    16  the directory id of the engine directory it belongs to (zero: unknown)
//! ```
//!
//! The identity (bytes 40..72) makes a snapshot know whose it is: recovery falls back from one
//! whose directory id is not its directory's, or whose op sits at another place in the journal's
//! chain than the journal says (a snapshot of another history), and never applies it.
//!
//! The bytes are `snapshot/codec.rs`'s (names, header, whole-file encode and check); this module is
//! the store: persist, load, list, quarantine. Persisting goes through the [`Directory`] seam only: write `NAME.tmp`, fsync it, rename it to
//! `NAME`, fsync the directory. Until the directory fsync a crash may lose the rename, so nothing
//! that depends on the snapshot (the journal's watermark) moves before it.

use keel_storage::{
    Directory, DurableStage, OpenMode, ReplaceError, ReplaceSource, ReplaceStage, Storage,
};
use serde::Serialize;

use crate::error::{EngineError, SnapshotError, SnapshotStage};
use crate::manifest::DirectoryId;
use crate::state_machine::SnapshotSource;
use crate::step::CheckpointStep;
use crate::QUARANTINE_DIR;

mod codec;

pub use codec::*;

/// Bound on the `.N` suffixes tried when a quarantine name is taken.
const MAX_QUARANTINE_SUFFIX: u32 = 1000;

/// What a check of one snapshot file found (for `keel verify` / `inspect`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotInfo {
    /// The op in its name.
    pub op: u64,
    /// Its path under the engine directory.
    pub file: String,
    /// The file's length.
    pub len_bytes: u64,
    /// Whether its header and payload pass every check.
    pub valid: bool,
    /// Why it is not valid.
    pub problem: Option<String>,
}

/// Bytes of state serialized per piece of a streamed persist. Each piece's write-back is waited
/// for before the next, so this bounds both how long serializing one holds the core and how much
/// snapshot data a journal write can queue behind at the device. Measured with `compare`'s
/// `checkpoint_latency` (checkpoints back to back, BENCHMARKS.md): append p99 against steady
/// state 3.4–5.3× at 256 KiB, 3.7× at 128 KiB, 1.8–2.4× at 64 KiB, 2.6× at 32 KiB (the
/// per-piece write and write-back round trips start to dominate).
const PERSIST_PIECE_BYTES: usize = 64 << 10;

/// A state already in one slice, as a [`SnapshotSource`] (the store's tests, `SnapshotDir`).
struct SliceSource<'a>(Option<&'a [u8]>);

impl SnapshotSource for SliceSource<'_> {
    fn write_piece(&mut self, _max_bytes: usize, out: &mut Vec<u8>) -> bool {
        if let Some(bytes) = self.0.take() {
            out.extend_from_slice(bytes);
        }
        false
    }
}

/// A snapshot file's body from a [`SnapshotSource`], its header computed as it goes.
struct SnapshotPieces<'a> {
    op: u64,
    identity: SnapshotIdentity,
    source: &'a mut dyn SnapshotSource,
    hasher: crc32fast::Hasher,
    len_bytes: u64,
    max_bytes: u64,
    done: bool,
    /// The payload passed `max_bytes`: the replace was stopped.
    too_large: bool,
}

impl ReplaceSource for SnapshotPieces<'_> {
    fn head_bytes(&self) -> usize {
        SNAPSHOT_HEADER_BYTES
    }

    fn next_piece(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        if self.done {
            return Ok(None);
        }
        let mut piece = Vec::with_capacity(PERSIST_PIECE_BYTES);
        while piece.is_empty() && !self.done {
            self.done = !self.source.write_piece(PERSIST_PIECE_BYTES, &mut piece);
        }
        self.hasher.update(&piece);
        self.len_bytes += piece.len() as u64;
        if self.len_bytes > self.max_bytes {
            self.too_large = true;
            return Err(std::io::Error::other("snapshot larger than its limit"));
        }
        Ok((!piece.is_empty()).then_some(piece))
    }

    fn head(&mut self) -> Vec<u8> {
        let crc = std::mem::take(&mut self.hasher).finalize();
        encode_header_parts(self.op, &self.identity, self.len_bytes, crc).to_vec()
    }
}

/// The snapshots directory of one engine.
pub(crate) struct SnapshotStore<D: Directory> {
    root: D,
    dir: D,
    max_bytes: u64,
    /// The directory's id, written into every snapshot persisted (zero: unknown).
    directory_id: DirectoryId,
}

fn io_err(stage: SnapshotStage, file: &str, op: u64, source: std::io::Error) -> SnapshotError {
    SnapshotError::Io {
        stage,
        file: file.to_string(),
        op,
        source,
    }
}

impl<D: Directory> SnapshotStore<D> {
    /// Opens `root/snapshots/`, creating it if missing, and makes it durable: its entry in the
    /// root and its own entries are fsynced (a process that crashed earlier may have left a
    /// renamed snapshot in the page cache only) before anything relies on them.
    pub(crate) async fn open(root: &D, max_bytes: u64) -> Result<Self, EngineError> {
        Self::open_in(root, SNAPSHOTS_DIR, max_bytes).await
    }

    /// [`SnapshotStore::open`] on `root/<dir_name>/` (another layer's snapshots: keel-raft's).
    pub(crate) async fn open_in(
        root: &D,
        dir_name: &str,
        max_bytes: u64,
    ) -> Result<Self, EngineError> {
        let dir = keel_storage::open_dir_durable(root, dir_name)
            .await
            .map_err(|e| EngineError::durable("open snapshots dir", e))?;
        Ok(Self {
            root: root.clone(),
            dir,
            max_bytes,
            directory_id: DirectoryId::default(),
        })
    }

    /// Opens `root/snapshots/` without creating or changing anything; `None` if absent.
    pub(crate) async fn open_read_only(
        root: &D,
        max_bytes: u64,
    ) -> Result<Option<Self>, EngineError> {
        let exists = root
            .exists(SNAPSHOTS_DIR)
            .await
            .map_err(|e| EngineError::io("snapshots exists", root.display_path(), e))?;
        if !exists {
            return Ok(None);
        }
        let dir = root
            .open_dir(SNAPSHOTS_DIR, false)
            .await
            .map_err(|e| EngineError::io("open snapshots dir", root.display_path(), e))?;
        Ok(Some(Self {
            root: root.clone(),
            dir,
            max_bytes,
            directory_id: DirectoryId::default(),
        }))
    }

    /// The store of a directory whose id is `directory_id`.
    pub(crate) fn with_directory_id(mut self, directory_id: DirectoryId) -> Self {
        self.directory_id = directory_id;
        self
    }

    /// The identity of a snapshot of this directory whose op's entry is at `position`.
    pub(crate) fn identity(
        &self,
        position: Option<keel_journal::EntryPosition>,
    ) -> SnapshotIdentity {
        let position = position.unwrap_or_default();
        SnapshotIdentity {
            directory_id: self.directory_id,
            journal_seq: position.seq,
            chain_crc: position.chain_crc,
        }
    }

    pub(crate) fn path_of(&self, name: &str) -> String {
        format!("{}/{name}", self.dir.display_path())
    }

    /// Ops of the snapshot files present, ascending; other names are ignored.
    pub(crate) async fn list(&self) -> Result<Vec<u64>, SnapshotError> {
        let names = self
            .dir
            .list()
            .await
            .map_err(|e| io_err(SnapshotStage::List, &self.dir.display_path(), 0, e))?;
        Ok(snapshot_ops(&names))
    }

    /// Names of leftover temp files of interrupted persists, as keel names them (any other
    /// `*.tmp` is not keel's and is left alone).
    pub(crate) async fn temp_names(&self) -> Result<Vec<String>, SnapshotError> {
        let names = self
            .dir
            .list()
            .await
            .map_err(|e| io_err(SnapshotStage::List, &self.dir.display_path(), 0, e))?;
        Ok(keel_snapshot_temps(&names))
    }

    /// Copies each of `temps` (keel's own interrupted persists) to quarantine, then removes it;
    /// fsyncs the directory once. Returns how many.
    pub(crate) async fn quarantine_temps(&self, temps: &[String]) -> Result<u64, SnapshotError> {
        for name in temps {
            let path = self.path_of(name);
            let bytes = self.read_bounded(name).await?;
            let copy = self
                .quarantine_copy(&format!("snapshot-{name}"), bytes, &path)
                .await?;
            tracing::info!(file = %path, quarantine = %copy, "quarantined an interrupted snapshot temp file");
            self.dir
                .remove_file(name)
                .await
                .map_err(|e| io_err(SnapshotStage::Remove, &path, 0, e))?;
        }
        if !temps.is_empty() {
            self.dir.sync().await.map_err(|e| {
                io_err(SnapshotStage::DirectorySync, &self.dir.display_path(), 0, e)
            })?;
        }
        Ok(temps.len() as u64)
    }

    /// The first `max_bytes + header` bytes of `name` (a copy is bounded like a load).
    async fn read_bounded(&self, name: &str) -> Result<Vec<u8>, SnapshotError> {
        let path = self.path_of(name);
        let q = |e| io_err(SnapshotStage::Quarantine, &path, 0, e);
        let file = self
            .dir
            .open_file(name, OpenMode::ReadOnly)
            .await
            .map_err(q)?;
        let copy_len = file
            .len()
            .min(self.max_bytes + SNAPSHOT_HEADER_BYTES as u64) as usize;
        file.read_exact_at(0, copy_len).await.map_err(q)
    }

    /// Writes `bytes` into `DIR/quarantine/` under a new name (`base`, `base.1`, …): created new,
    /// fsynced, directory fsynced; an earlier copy is never overwritten. Returns the full path.
    async fn quarantine_copy(
        &self,
        base: &str,
        bytes: Vec<u8>,
        source_path: &str,
    ) -> Result<String, SnapshotError> {
        let q = |e| io_err(SnapshotStage::Quarantine, source_path, 0, e);
        let qdir = keel_storage::open_dir_durable(&self.root, QUARANTINE_DIR)
            .await
            .map_err(|e| q(e.source))?;
        let name = keel_storage::create_unique(&qdir, base, bytes, MAX_QUARANTINE_SUFFIX)
            .await
            .map_err(|e| q(e.source))?;
        Ok(format!("{}/{name}", qdir.display_path()))
    }

    /// Persists `state` as the snapshot at `op`: temp file, fsync, rename, directory fsync.
    /// `step` is called at the boundaries inside the persist (the crash tests stop there).
    /// Returns the file's size in bytes.
    pub(crate) async fn persist(
        &self,
        op: u64,
        identity: &SnapshotIdentity,
        state: &[u8],
        step: &dyn Fn(CheckpointStep) -> Result<(), EngineError>,
    ) -> Result<u64, EngineError> {
        self.persist_source(op, identity, &mut SliceSource(Some(state)), step)
            .await
    }

    /// Persists the snapshot at `op` from a state machine's frozen state, serialized one piece
    /// at a time between the writes (keel-storage's `atomic_replace_stream`: each piece's
    /// write-back is waited for off the core), so a large state neither holds the core nor
    /// floods the device ahead of the journal's durable writes. The header goes in last, at
    /// offset 0, once the payload's length and checksum are known. Returns the file's size.
    pub(crate) async fn persist_source(
        &self,
        op: u64,
        identity: &SnapshotIdentity,
        source: &mut dyn SnapshotSource,
        step: &dyn Fn(CheckpointStep) -> Result<(), EngineError>,
    ) -> Result<u64, EngineError> {
        let name = snapshot_file_name(op);
        let mut pieces = SnapshotPieces {
            op,
            identity: *identity,
            source,
            hasher: crc32fast::Hasher::new(),
            len_bytes: 0,
            max_bytes: self.max_bytes,
            done: false,
            too_large: false,
        };
        let hook = |stage: ReplaceStage| {
            step(match stage {
                ReplaceStage::TempWritten => CheckpointStep::TempWritten,
                ReplaceStage::TempSynced => CheckpointStep::TempSynced,
                ReplaceStage::Renamed => CheckpointStep::Renamed,
            })
        };
        let result = keel_storage::atomic_replace_stream(&self.dir, &name, &mut pieces, hook).await;
        match result {
            Ok(()) => Ok(SNAPSHOT_HEADER_BYTES as u64 + pieces.len_bytes),
            Err(ReplaceError::Halted(error)) => Err(error),
            Err(ReplaceError::Io(_)) if pieces.too_large => Err(SnapshotError::TooLarge {
                file: self.path_of(&name),
                len_bytes: pieces.len_bytes,
                max_bytes: self.max_bytes,
            }
            .into()),
            Err(ReplaceError::Io(error)) => {
                let stage = match error.stage {
                    DurableStage::SyncTemp => SnapshotStage::Sync,
                    DurableStage::Rename => SnapshotStage::Rename,
                    DurableStage::SyncDir => SnapshotStage::DirectorySync,
                    _ => SnapshotStage::Write,
                };
                Err(io_err(stage, &error.path, op, error.source).into())
            }
        }
    }

    /// Reads and checks the snapshot at `op`; returns the state machine's bytes.
    pub(crate) async fn load(&self, op: u64) -> Result<Vec<u8>, SnapshotError> {
        Ok(self.load_with_identity(op).await?.1)
    }

    /// Reads and checks the snapshot at `op`; returns whose it says it is and the state machine's
    /// bytes.
    pub(crate) async fn load_with_identity(
        &self,
        op: u64,
    ) -> Result<(SnapshotIdentity, Vec<u8>), SnapshotError> {
        let name = snapshot_file_name(op);
        let path = self.path_of(&name);
        let read_err = |e| io_err(SnapshotStage::Read, &path, op, e);
        let file = self
            .dir
            .open_file(&name, OpenMode::ReadOnly)
            .await
            .map_err(read_err)?;
        let file_len = file.len();
        let damaged = |reason: String| SnapshotError::Checksum {
            file: path.clone(),
            reason,
        };
        let header = self.read_header(&file, &path).await?;
        if header.op != op {
            return Err(damaged(format!(
                "header says op {}, name says {op}",
                header.op
            )));
        }
        if header.len_bytes > self.max_bytes {
            return Err(SnapshotError::TooLarge {
                file: path.clone(),
                len_bytes: header.len_bytes,
                max_bytes: self.max_bytes,
            });
        }
        let expected_len = header.header_bytes as u64 + header.len_bytes;
        if file_len != expected_len {
            return Err(damaged(format!(
                "file is {file_len} bytes, header says {expected_len}"
            )));
        }
        let payload = file
            .read_exact_at(header.header_bytes as u64, header.len_bytes as usize)
            .await
            .map_err(read_err)?;
        let computed = crc32fast::hash(&payload);
        if computed != header.payload_crc {
            return Err(damaged(format!(
                "payload checksum mismatch (stored {:#010x}, computed {computed:#010x})",
                header.payload_crc
            )));
        }
        Ok((header.identity, payload))
    }

    /// Reads and checks only the header of the snapshot at `op` (whose it is, without reading
    /// its state).
    pub(crate) async fn header(&self, op: u64) -> Result<SnapshotHeader, SnapshotError> {
        let name = snapshot_file_name(op);
        let path = self.path_of(&name);
        let file = self
            .dir
            .open_file(&name, OpenMode::ReadOnly)
            .await
            .map_err(|e| io_err(SnapshotStage::Read, &path, op, e))?;
        self.read_header(&file, &path).await
    }

    async fn read_header(
        &self,
        file: &D::File,
        path: &str,
    ) -> Result<SnapshotHeader, SnapshotError> {
        let head_len = file.len().min(SNAPSHOT_HEADER_BYTES as u64) as usize;
        let header_bytes = file
            .read_exact_at(0, head_len)
            .await
            .map_err(|e| io_err(SnapshotStage::Read, path, 0, e))?;
        decode_header(&header_bytes).map_err(|fault| match fault {
            HeaderFault::Damaged(reason) => SnapshotError::Checksum {
                file: path.to_string(),
                reason,
            },
            HeaderFault::Version(version) => SnapshotError::UnknownVersion {
                file: path.to_string(),
                version,
            },
        })
    }

    /// Moves the snapshot at `op` into `DIR/quarantine/` (copy, fsync, directory fsyncs, then
    /// remove the original); returns the quarantine file's path.
    #[cfg(test)]
    pub(crate) async fn quarantine(&self, op: u64) -> Result<String, SnapshotError> {
        let quarantine_path = self.copy_to_quarantine(op).await?;
        self.remove_snapshots(&[op]).await?;
        Ok(quarantine_path)
    }

    /// Copies the snapshot at `op` into `DIR/quarantine/` durably (file and directory fsynced);
    /// the original stays until [`SnapshotStore::remove_snapshots`]. Recovery removes it only
    /// once the commit watermark the damaged file proves is durable elsewhere.
    pub(crate) async fn copy_to_quarantine(&self, op: u64) -> Result<String, SnapshotError> {
        let name = snapshot_file_name(op);
        let path = self.path_of(&name);
        let bytes = self.read_bounded(&name).await?;
        let quarantine_path = self
            .quarantine_copy(&format!("snapshot-{name}"), bytes, &path)
            .await?;
        tracing::warn!(file = %path, quarantine = %quarantine_path, op, "damaged snapshot copied to quarantine");
        Ok(quarantine_path)
    }

    /// Removes the snapshot files at `ops` and fsyncs the directory once.
    pub(crate) async fn remove_snapshots(&self, ops: &[u64]) -> Result<(), SnapshotError> {
        for &op in ops {
            let name = snapshot_file_name(op);
            self.dir
                .remove_file(&name)
                .await
                .map_err(|e| io_err(SnapshotStage::Remove, &self.path_of(&name), op, e))?;
        }
        if !ops.is_empty() {
            self.dir.sync().await.map_err(|e| {
                io_err(SnapshotStage::DirectorySync, &self.dir.display_path(), 0, e)
            })?;
        }
        Ok(())
    }

    /// Removes the snapshots older than the `keep` newest; fsyncs the directory once.
    pub(crate) async fn remove_older(&self, keep: usize) -> Result<u64, SnapshotError> {
        let ops = self.list().await?;
        let drop_count = ops.len().saturating_sub(keep);
        for &op in &ops[..drop_count] {
            let name = snapshot_file_name(op);
            self.dir
                .remove_file(&name)
                .await
                .map_err(|e| io_err(SnapshotStage::Remove, &self.path_of(&name), op, e))?;
        }
        if drop_count > 0 {
            self.dir.sync().await.map_err(|e| {
                io_err(SnapshotStage::DirectorySync, &self.dir.display_path(), 0, e)
            })?;
        }
        Ok(drop_count as u64)
    }

    /// The size of the snapshot file at `op`.
    pub(crate) async fn file_len(&self, op: u64) -> std::io::Result<u64> {
        let file = self
            .dir
            .open_file(&snapshot_file_name(op), OpenMode::ReadOnly)
            .await?;
        Ok(file.len())
    }

    /// Checks every snapshot file without changing anything.
    pub(crate) async fn check_all(&self) -> Result<Vec<SnapshotInfo>, SnapshotError> {
        let mut out = Vec::new();
        for op in self.list().await? {
            let name = snapshot_file_name(op);
            let len_bytes = match self.dir.open_file(&name, OpenMode::ReadOnly).await {
                Ok(f) => f.len(),
                Err(_) => 0,
            };
            let (valid, problem) = match self.load(op).await {
                Ok(_) => (true, None),
                // Removed since the listing (a live engine's checkpoint dropped it): gone, not
                // damaged.
                Err(SnapshotError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    continue
                }
                // The file is named beside it: the reason alone.
                Err(SnapshotError::Checksum { reason, .. }) => (false, Some(reason)),
                Err(e @ SnapshotError::UnknownVersion { .. }) => (false, Some(e.to_string())),
                Err(e) => return Err(e),
            };
            out.push(SnapshotInfo {
                op,
                file: self.path_of(&name),
                len_bytes,
                valid,
                problem,
            });
        }
        Ok(out)
    }
}

/// Lists and checks the snapshots of an engine directory without changing anything (read-only
/// directories work). Empty when there is no snapshots directory.
pub async fn list_snapshots<D: Directory>(
    root: &D,
    max_snapshot_bytes: u64,
) -> Result<Vec<SnapshotInfo>, EngineError> {
    match SnapshotStore::open_read_only(root, max_snapshot_bytes).await? {
        Some(store) => Ok(store.check_all().await?),
        None => Ok(Vec::new()),
    }
}

#[cfg(test)]
mod tests;
