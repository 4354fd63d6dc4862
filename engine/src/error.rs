//! The engine's one error enum, [`EngineError`], and the snapshot layer's [`SnapshotError`].
//!
//! Lower layers' errors are wrapped, never flattened into strings: a caller (the CLI's exit codes,
//! a consensus loop deciding whether to fetch from peers) matches on the journal's own variants.

use std::io;
use std::ops::RangeInclusive;
use std::sync::Arc;

use keel_journal::JournalError;

use crate::step::CheckpointStep;

/// The stage of persisting or loading a snapshot that failed.
///
/// The stage decides what a retry may do: a failed write or fsync of the temp file must start over
/// (the temp file's bytes are unknown), a failed rename or directory fsync can be retried as is
/// (the temp file is complete and durable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SnapshotStage {
    /// Creating or writing the temp file.
    Write,
    /// fsync of the temp file.
    Sync,
    /// Renaming the temp file over its final name.
    Rename,
    /// fsync of the snapshots directory after the rename.
    DirectorySync,
    /// Reading a snapshot file back.
    Read,
    /// The header or payload checksum did not match (or the header is malformed).
    Checksum,
    /// The state machine could not decode checksummed bytes.
    Decode,
    /// Moving a damaged snapshot into quarantine.
    Quarantine,
    /// Removing an older snapshot or a leftover temp file.
    Remove,
    /// Listing the snapshots directory.
    List,
}

impl SnapshotStage {
    /// Whether the same persist can be retried from this stage without rewriting the temp file.
    pub fn retry_safe(self) -> bool {
        matches!(self, SnapshotStage::Rename | SnapshotStage::DirectorySync)
    }

    /// The stage's name in errors and JSON (`write`, `directory_sync`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotStage::Write => "write",
            SnapshotStage::Sync => "sync",
            SnapshotStage::Rename => "rename",
            SnapshotStage::DirectorySync => "directory_sync",
            SnapshotStage::Read => "read",
            SnapshotStage::Checksum => "checksum",
            SnapshotStage::Decode => "decode",
            SnapshotStage::Quarantine => "quarantine",
            SnapshotStage::Remove => "remove",
            SnapshotStage::List => "list",
        }
    }
}

impl std::fmt::Display for SnapshotStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A snapshot could not be persisted or loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// An I/O error at a named stage.
    #[error("snapshot {stage} failed for {file} (op {op}; retry safe: {}): {source}", stage.retry_safe())]
    Io {
        /// The stage that failed.
        stage: SnapshotStage,
        /// The snapshot file (a path under the engine directory).
        file: String,
        /// The snapshot's op.
        op: u64,
        /// The storage layer's error.
        #[source]
        source: io::Error,
    },
    /// The file's header or payload does not match its checksums, or the header is malformed.
    #[error("snapshot {file} is damaged: {reason}")]
    Checksum {
        /// The snapshot file (a path under the engine directory).
        file: String,
        /// Which check failed.
        reason: String,
    },
    /// The checksummed bytes could not be restored by the state machine.
    #[error("snapshot {file} (op {op}) could not be decoded: {reason}")]
    Decode {
        /// The snapshot file (a path under the engine directory).
        file: String,
        /// The snapshot's op.
        op: u64,
        /// The state machine's error.
        reason: String,
    },
    /// Whole, but not this directory's (another directory's id, or another history's place in
    /// the journal's chain): never applied.
    #[error("snapshot {file} is not this directory's: {reason}")]
    Foreign {
        /// The snapshot file (a path under the engine directory).
        file: String,
        /// What does not match.
        reason: String,
    },
    /// The snapshot was written by a newer keel: not damage, this build cannot read it. Refused,
    /// never quarantined or fallen back from.
    #[error("snapshot {file} has format version {version}, newer than this build reads")]
    UnknownVersion {
        /// The snapshot file (a path under the engine directory).
        file: String,
        /// The version its header claims.
        version: u32,
    },
    /// The snapshot is larger than the configured limit.
    #[error("snapshot of {len_bytes} bytes exceeds the limit of {max_bytes} ({file})")]
    TooLarge {
        /// The snapshot file (a path under the engine directory).
        file: String,
        /// Its length.
        len_bytes: u64,
        /// [`crate::EngineConfig::max_snapshot_bytes`].
        max_bytes: u64,
    },
}

impl SnapshotError {
    /// The stage that failed.
    pub fn stage(&self) -> SnapshotStage {
        match self {
            SnapshotError::Io { stage, .. } => *stage,
            SnapshotError::Checksum { .. }
            | SnapshotError::Foreign { .. }
            | SnapshotError::UnknownVersion { .. } => SnapshotStage::Checksum,
            SnapshotError::Decode { .. } => SnapshotStage::Decode,
            SnapshotError::TooLarge { .. } => SnapshotStage::Write,
        }
    }

    /// Whether retrying the same persist without rewriting the temp file is safe.
    pub fn retry_safe(&self) -> bool {
        self.stage().retry_safe()
    }
}

/// Why a manifest cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// The file fails its checksum or does not parse.
    #[error("manifest {file} is damaged: {reason}")]
    Damaged {
        /// The manifest's path.
        file: String,
        /// What failed.
        reason: String,
    },
    /// Written by a newer keel: refused, never rewritten.
    #[error(
        "manifest {file} has format version {version}, newer than this build reads ({supported})"
    )]
    NewerVersion {
        /// The manifest's path.
        file: String,
        /// The version it records.
        version: u32,
        /// The newest version this build reads (`MANIFEST_VERSION`).
        supported: u32,
    },
    /// The directory records one value and the caller asked for another that cannot work.
    #[error("{file} records {field} {recorded}, but the configuration asks for {configured}")]
    Mismatch {
        /// The manifest's path.
        file: String,
        /// The field (e.g. `slot_count`, `shard_index`).
        field: &'static str,
        /// The value the manifest records.
        recorded: String,
        /// The value the configuration asks for.
        configured: String,
    },
}

/// Every error the engine returns.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The journal's error, as it returned it.
    #[error(transparent)]
    Journal(#[from] JournalError),

    /// A snapshot could not be persisted or loaded.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),

    /// The directory's manifest cannot be used (damaged, newer, or contradicting the caller).
    #[error(transparent)]
    Manifest(#[from] ManifestError),

    /// Another holder (this process or another) has the engine directory.
    #[error("engine directory {dir} is locked by another holder: {source}")]
    Locked {
        /// The engine directory.
        dir: String,
        /// The lock call's error.
        #[source]
        source: io::Error,
    },

    /// An I/O error outside the journal and the snapshot persist (opening directories, quarantine).
    #[error("engine I/O error during {stage} on {path}: {source}")]
    Io {
        /// What the engine was doing.
        stage: &'static str,
        /// The file or directory.
        path: String,
        /// The storage layer's error.
        #[source]
        source: io::Error,
    },

    /// Committed ops that neither a snapshot nor the journal holds: the consensus layer must fetch
    /// them from peers (or the directory is damaged beyond this replica's repair).
    #[error("ops {first_op}-{last_op} are needed but missing: {reason}")]
    MissingOps {
        /// First op missing.
        first_op: u64,
        /// Last op missing.
        last_op: u64,
        /// Why they are missing (compacted, cut, never written).
        reason: String,
    },

    /// `commit(op)` named an op that (or an op before which) was never durably prepared here.
    #[error("cannot commit op {op}: op {missing_op} was not prepared on this replica")]
    NotPrepared {
        /// The op to commit.
        op: u64,
        /// The first op at or below it not prepared.
        missing_op: u64,
    },

    /// A commit or truncation would cover a prepare whose journal append has not returned.
    #[error(
        "op {op} has a prepare in flight; wait for it before committing or truncating over it"
    )]
    PrepareInFlight {
        /// The op whose prepare is in flight.
        op: u64,
    },

    /// A prepare above an op whose `truncate_after` is still running, or a second truncation
    /// while one runs: retry once it has returned.
    #[error("op {op} conflicts with truncate_after({truncate_op}), still in progress")]
    TruncateInProgress {
        /// The op refused.
        op: u64,
        /// The running truncation's op.
        truncate_op: u64,
    },

    /// An op at or below the commit watermark cannot be prepared again or truncated.
    #[error("op {op} is at or below the commit watermark {commit_op}")]
    AlreadyCommitted {
        /// The op refused.
        op: u64,
        /// The commit watermark.
        commit_op: u64,
    },

    /// Op 0 is reserved for "nothing" (the empty snapshot).
    #[error("op 0 is reserved; ops start at 1")]
    ZeroOp,

    /// A checkpoint was requested while another one is running.
    #[error("a checkpoint is already in progress")]
    CheckpointInProgress,

    /// A test hook stopped the checkpoint coordinator at a step, as a crash would.
    #[error("halted by the step hook at {step:?}")]
    Halted {
        /// The step after which the hook halted.
        step: CheckpointStep,
    },

    /// A configuration value is out of its bounds.
    #[error("invalid engine configuration: {0}")]
    Config(String),

    /// The engine was closed (or a shard has shut down) and takes no more requests.
    #[error("engine is closed")]
    Closed,

    /// A shard failed earlier; every later request to it gets this error with the cause.
    #[error("shard {shard} failed: {source}")]
    ShardFailed {
        /// The shard's index.
        shard: usize,
        /// The error that failed it.
        #[source]
        source: Arc<EngineError>,
    },

    /// The shard's thread is gone (it panicked or was never started) before answering.
    #[error("shard {shard} is unavailable: {reason}")]
    ShardUnavailable {
        /// The shard's index.
        shard: usize,
        /// What happened to its thread.
        reason: &'static str,
    },

    /// The shard index is past the shard count.
    #[error("no shard {shard} (shard count {shard_count})")]
    NoSuchShard {
        /// The index asked for.
        shard: usize,
        /// The set's shard count.
        shard_count: usize,
    },
}

impl EngineError {
    /// An error of one of keel-storage's durable mechanisms.
    pub(crate) fn durable(stage: &'static str, error: keel_storage::DurableError) -> Self {
        EngineError::Io {
            stage,
            path: error.path.clone(),
            source: error.source,
        }
    }

    pub(crate) fn io(stage: &'static str, path: impl Into<String>, source: io::Error) -> Self {
        EngineError::Io {
            stage,
            path: path.into(),
            source,
        }
    }

    /// The missing op range of a [`EngineError::MissingOps`] error.
    pub fn missing_range(&self) -> Option<RangeInclusive<u64>> {
        match self {
            EngineError::MissingOps {
                first_op, last_op, ..
            } => Some(*first_op..=*last_op),
            _ => None,
        }
    }

    /// True when the error is corruption that recovery refused to repair (the CLI's exit code 4).
    pub fn is_corruption(&self) -> bool {
        match self {
            EngineError::Journal(JournalError::Corrupt { .. }) => true,
            EngineError::Snapshot(SnapshotError::Checksum { .. }) => true,
            EngineError::Snapshot(SnapshotError::Foreign { .. }) => true,
            EngineError::Manifest(ManifestError::Damaged { .. }) => true,
            EngineError::Snapshot(SnapshotError::Decode { .. }) => true,
            EngineError::Snapshot(SnapshotError::UnknownVersion { .. }) => true,
            EngineError::MissingOps { .. } => true,
            EngineError::ShardFailed { source, .. } => source.is_corruption(),
            _ => false,
        }
    }
}
