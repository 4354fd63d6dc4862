//! error: the one error enum of the journal layer.
//!
//! Owns the typed errors callers match on (the engine decides between fetching from peers,
//! refusing to start and retrying from these). It must never flatten a lower layer's error into a
//! bare string where the `io::Error` itself can be kept.

use crate::outcome::Case;

/// Errors of the journal layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// An I/O call failed.
    #[error("journal I/O error during {stage} on {file}: {source}")]
    Io {
        /// What the journal was doing (e.g. `read entry`, `fsync segment`).
        stage: &'static str,
        /// The file or directory, as a path under the engine directory.
        file: String,
        /// The storage layer's error.
        #[source]
        source: std::io::Error,
    },
    #[error("journal corrupt: {kind} in {file} at offset {offset_bytes} ({})", describe_op(*.op))]
    /// Acknowledged data is damaged, or the log cannot be read: the open is refused.
    Corrupt {
        /// The recovery table's case (printed by name, e.g. `corrupt_entry`, `chain_break`).
        kind: Case,
        /// The segment file.
        file: String,
        /// Where in the file the damage starts.
        offset_bytes: u64,
        /// The damaged entry's op, when the damage lets it be told.
        op: Option<u64>,
    },
    #[error("journal full: op {op} is {distance} ops past snapshot op {snapshot_op} (slot_count {slot_count})")]
    /// The slot ring has no room for `op`: a checkpoint must move the snapshot watermark first.
    Full {
        /// The op refused.
        op: u64,
        /// The snapshot watermark at the time.
        snapshot_op: u64,
        /// `op - snapshot_op`.
        distance: u64,
        /// The ring's size ([`crate::JournalConfig::slot_count`]).
        slot_count: u64,
    },
    #[error("op {op} is at or below the snapshot watermark {snapshot_op}")]
    /// An op at or below the snapshot watermark cannot be appended.
    BelowSnapshot {
        /// The op refused.
        op: u64,
        /// The snapshot watermark.
        snapshot_op: u64,
    },
    #[error("payload of {len_bytes} bytes exceeds the limit of {max_bytes}")]
    /// A payload above [`crate::JournalConfig::max_payload_bytes`].
    PayloadTooLarge {
        /// The payload's length.
        len_bytes: usize,
        /// The configured limit.
        max_bytes: usize,
    },
    /// An earlier write or fsync failed, so what is durable is unknown: every later call fails
    /// until the journal is reopened (and recovered). Holds the first error's text.
    #[error("journal poisoned by an earlier I/O error: {0}")]
    Poisoned(String),
    /// A [`crate::JournalConfig`] field is outside its limit (names the field and the limit).
    #[error("invalid journal configuration: {0}")]
    Config(String),
    /// The journal was opened on a read-only directory; it can be read, not written.
    #[error("journal at {path} is read-only")]
    ReadOnly {
        /// The engine directory.
        path: String,
    },
}

impl JournalError {
    /// An error of one of keel-storage's durable mechanisms, with the journal's stage name.
    pub(crate) fn durable(stage: &'static str, error: keel_storage::DurableError) -> Self {
        Self::Io {
            stage,
            file: error.path.clone(),
            source: error.source,
        }
    }

    pub(crate) fn io(stage: &'static str, file: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            stage,
            file: file.into(),
            source,
        }
    }
}

/// `op 105`, or `op unknown` when the damage hides which op it was.
fn describe_op(op: Option<u64>) -> String {
    match op {
        Some(op) => format!("op {op}"),
        None => "op unknown".to_string(),
    }
}
