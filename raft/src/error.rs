//! The crate's one error enum, [`RaftStoreError`].
//!
//! openraft's storage traits return `std::io::Error`, so every trait method converts at its edge
//! with [`RaftStoreError::into_io`]. The conversion keeps the typed error as the `io::Error`'s
//! source (never a flattened string), so a caller that downcasts finds the journal's own variant.

use std::io;

use keel_engine::{EngineError, SnapshotError};
use keel_journal::JournalError;
use keel_storage::DurableError;

use crate::codec::CodecError;

/// Errors of the keel-backed raft storage.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RaftStoreError {
    /// The journal refused or failed (its own variants: `Full`, `Corrupt`, `Io`, …).
    #[error("journal: {0}")]
    Journal(#[from] JournalError),

    /// A directory or file operation failed at a named stage.
    #[error("{stage} failed on {file}: {source}")]
    Io {
        /// The operation (`open`, `fsync directory`, …).
        stage: &'static str,
        /// The file or directory it was on.
        file: String,
        /// The I/O error.
        #[source]
        source: io::Error,
    },

    /// A raft value could not be encoded or decoded (log entry, snapshot envelope, meta body).
    #[error("cannot {action} {what}: {source}")]
    Codec {
        /// `encode` or `decode`.
        action: &'static str,
        /// The value (`log entry`, `snapshot meta`, …).
        what: &'static str,
        /// The codec's error.
        #[source]
        source: CodecError,
    },

    /// A file failed its checksum or framing checks.
    #[error("{file} is damaged: {reason}")]
    Damaged {
        /// The file.
        file: String,
        /// What check failed.
        reason: String,
    },

    /// A journal entry decoded to a log entry whose index does not match its op.
    #[error("journal op {op} holds the log entry of index {index} (expected index {expected})")]
    Misplaced {
        /// The journal op.
        op: u64,
        /// The index the entry holds.
        index: u64,
        /// The index the op maps to.
        expected: u64,
    },

    /// An append would pass the journal's slot ring: the log grew `slot_count` entries past the
    /// last purge. Snapshot (and so purge) more often, or raise `slot_count`.
    #[error(
        "log index {index} does not fit: the journal holds at most {slot_count} entries past the \
         last purged index {last_purged:?}"
    )]
    LogFull {
        /// The index that did not fit.
        index: u64,
        /// The last purged index.
        last_purged: Option<u64>,
        /// The journal's ring size.
        slot_count: u64,
    },

    /// An earlier write failed; openraft treats storage errors as fatal, so does the store.
    #[error("store poisoned by an earlier write error: {0}")]
    Poisoned(String),

    /// The state machine could not restore a snapshot's bytes.
    #[error("cannot restore the state machine from snapshot {file}: {reason}")]
    Restore {
        /// The snapshot (file, or the one received).
        file: String,
        /// The machine's reason.
        reason: String,
    },

    /// A configuration bound was violated.
    #[error("invalid raft store configuration: {0}")]
    Config(String),

    /// The engine's snapshot store refused or failed (a damaged, foreign-format or too large
    /// snapshot file, or an I/O stage of its persist or load).
    #[error("raft snapshot: {0}")]
    Snapshot(#[from] SnapshotError),

    /// Another failure of the engine's snapshot store.
    #[error("raft snapshot store: {0}")]
    Engine(EngineError),
}

impl RaftStoreError {
    pub(crate) fn io(stage: &'static str, file: impl Into<String>, source: io::Error) -> Self {
        RaftStoreError::Io {
            stage,
            file: file.into(),
            source,
        }
    }

    pub(crate) fn encode(what: &'static str, source: impl Into<CodecError>) -> Self {
        RaftStoreError::Codec {
            action: "encode",
            what,
            source: source.into(),
        }
    }

    pub(crate) fn decode(what: &'static str, source: impl Into<CodecError>) -> Self {
        RaftStoreError::Codec {
            action: "decode",
            what,
            source: source.into(),
        }
    }

    /// The `io::Error` openraft's traits want, keeping `self` as its source.
    pub fn into_io(self) -> io::Error {
        let kind = match &self {
            RaftStoreError::Io { source, .. } => source.kind(),
            RaftStoreError::Codec { .. }
            | RaftStoreError::Damaged { .. }
            | RaftStoreError::Misplaced { .. }
            | RaftStoreError::Restore { .. } => io::ErrorKind::InvalidData,
            RaftStoreError::LogFull { .. } => io::ErrorKind::StorageFull,
            RaftStoreError::Config(_) => io::ErrorKind::InvalidInput,
            RaftStoreError::Snapshot(SnapshotError::Io { source, .. }) => source.kind(),
            RaftStoreError::Snapshot(_) => io::ErrorKind::InvalidData,
            RaftStoreError::Journal(_)
            | RaftStoreError::Poisoned(_)
            | RaftStoreError::Engine(_) => io::ErrorKind::Other,
        };
        io::Error::new(kind, self)
    }
}

impl From<DurableError> for RaftStoreError {
    /// A failed durable create, replace or directory open: its stage becomes the stage string and
    /// the I/O error stays the source, so `into_io` keeps its kind.
    fn from(error: DurableError) -> Self {
        RaftStoreError::Io {
            stage: error.stage.as_str(),
            file: error.path,
            source: error.source,
        }
    }
}

impl From<EngineError> for RaftStoreError {
    /// The snapshot store's errors keep their own type: a snapshot error as [`Snapshot`], an I/O
    /// stage as [`Io`](RaftStoreError::Io) with its path.
    ///
    /// [`Snapshot`]: RaftStoreError::Snapshot
    fn from(error: EngineError) -> Self {
        match error {
            EngineError::Snapshot(error) => RaftStoreError::Snapshot(error),
            EngineError::Io {
                stage,
                path,
                source,
            } => RaftStoreError::Io {
                stage,
                file: path,
                source,
            },
            other => RaftStoreError::Engine(other),
        }
    }
}

impl From<RaftStoreError> for io::Error {
    fn from(error: RaftStoreError) -> Self {
        error.into_io()
    }
}
