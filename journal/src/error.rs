//! error: the one error enum of the journal layer.
//!
//! Owns the typed errors callers match on (the engine decides between fetching from peers,
//! refusing to start and retrying from these). It must never flatten a lower layer's error into a
//! bare string where the `io::Error` itself can be kept.

/// Errors of the journal layer.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal I/O error during {stage} on {file}: {source}")]
    Io {
        stage: &'static str,
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("journal corrupt: {kind} in {file} at offset {offset_bytes} ({})", describe_op(*.op))]
    Corrupt {
        kind: &'static str,
        file: String,
        offset_bytes: u64,
        op: Option<u64>,
    },
    #[error("journal full: op {op} is {distance} ops past snapshot op {snapshot_op} (slot_count {slot_count})")]
    Full {
        op: u64,
        snapshot_op: u64,
        distance: u64,
        slot_count: u64,
    },
    #[error("op {op} is at or below the snapshot watermark {snapshot_op}")]
    BelowSnapshot { op: u64, snapshot_op: u64 },
    #[error("payload of {len_bytes} bytes exceeds the limit of {max_bytes}")]
    PayloadTooLarge { len_bytes: usize, max_bytes: usize },
    #[error("journal poisoned by an earlier I/O error: {0}")]
    Poisoned(String),
    #[error("invalid journal configuration: {0}")]
    Config(String),
    /// The journal was opened on a read-only directory; it can be read, not written.
    #[error("journal at {path} is read-only")]
    ReadOnly { path: String },
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
