//! [`CliError`]: every failure of a command, and the exit code it maps to.

use std::error::Error;
use std::io;

use keel_engine::EngineError;

/// Exit code: an error that is not corruption.
pub const EXIT_ERROR: u8 = 1;
/// Exit code: verify found a torn tail only.
pub const EXIT_TORN_TAIL: u8 = 3;
/// Exit code: corruption of acknowledged data (verify found it, recover/repair refused).
pub const EXIT_CORRUPT: u8 = 4;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Engine(#[from] EngineError),

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },

    /// The path holds no engine directory and no shard set; nothing was created in it.
    #[error("{path} is not a keel directory: {reason}")]
    NotKeel { path: String, reason: String },

    /// Arguments that parse but do not make sense together (clap's own errors exit before).
    #[error("{0}")]
    Usage(String),

    /// An error of one shard of a shard set, named with it.
    #[error("shard {shard}: {source}")]
    InShard {
        shard: usize,
        #[source]
        source: Box<CliError>,
    },

    /// A shard's thread or task died (a panic or a cancellation).
    #[error("shard {shard}: {reason}")]
    ShardDied { shard: usize, reason: String },

    /// A bug in the binary itself (an invariant that should hold did not).
    #[error("internal error: {0}")]
    Internal(String),

    /// The bench's recovered state differs from the state before close.
    #[error("shard {shard}: the recovered state differs from the state before close ({detail})")]
    StateMismatch { shard: usize, detail: String },
}

impl CliError {
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        CliError::Io {
            context: context.into(),
            source,
        }
    }

    /// True when the error is corruption that recovery refused (exit 4).
    pub fn is_corruption(&self) -> bool {
        match self {
            CliError::Engine(error) => error.is_corruption(),
            CliError::InShard { source, .. } => source.is_corruption(),
            _ => false,
        }
    }

    /// `error` named with its shard, unless it names one already.
    pub fn in_shard(shard: usize, error: CliError) -> CliError {
        match error {
            CliError::ShardDied { .. }
            | CliError::StateMismatch { .. }
            | CliError::InShard { .. } => error,
            error => CliError::InShard {
                shard,
                source: Box::new(error),
            },
        }
    }

    /// The `kind` of the JSON error object: a stable snake_case name.
    pub fn kind(&self) -> &'static str {
        use keel_engine::{JournalError, ManifestError, SnapshotError};
        match self {
            CliError::InShard { source, .. } => source.kind(),
            CliError::Engine(error) => match error {
                EngineError::Journal(JournalError::Corrupt { .. }) => "corrupt_journal",
                EngineError::Journal(_) => "journal",
                EngineError::Snapshot(SnapshotError::Foreign { .. }) => "foreign_snapshot",
                EngineError::Snapshot(_) => "snapshot",
                EngineError::Manifest(ManifestError::Mismatch { .. }) => "manifest_mismatch",
                EngineError::Manifest(_) => "manifest",
                EngineError::MissingOps { .. } => "missing_ops",
                EngineError::Locked { .. } => "locked",
                EngineError::Io { .. } => "io",
                EngineError::Config(_) => "config",
                _ => "engine",
            },
            CliError::Io { .. } => "io",
            CliError::NotKeel { .. } => "not_keel",
            CliError::Usage(_) => "usage",
            CliError::ShardDied { .. } => "shard_died",
            CliError::Internal(_) => "internal",
            CliError::StateMismatch { .. } => "state_mismatch",
        }
    }

    /// The path the error concerns, when it names one.
    pub fn path(&self) -> Option<String> {
        use keel_engine::{JournalError, ManifestError, SnapshotError};
        match self {
            CliError::InShard { source, .. } => source.path(),
            CliError::NotKeel { path, .. } => Some(path.clone()),
            CliError::Engine(error) => match error {
                EngineError::Journal(JournalError::Corrupt { file, .. }) => Some(file.clone()),
                EngineError::Snapshot(
                    SnapshotError::Io { file, .. }
                    | SnapshotError::Checksum { file, .. }
                    | SnapshotError::Foreign { file, .. }
                    | SnapshotError::Decode { file, .. }
                    | SnapshotError::UnknownVersion { file, .. }
                    | SnapshotError::TooLarge { file, .. },
                ) => Some(file.clone()),
                EngineError::Manifest(
                    ManifestError::Damaged { file, .. }
                    | ManifestError::NewerVersion { file, .. }
                    | ManifestError::Mismatch { file, .. },
                ) => Some(file.clone()),
                EngineError::Locked { dir, .. } => Some(dir.clone()),
                EngineError::Io { path, .. } => Some(path.clone()),
                _ => None,
            },
            _ => None,
        }
    }

    /// `{"kind", "message", "path"}`: the JSON error object.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "kind": self.kind(),
            "message": error_chain(self),
            "path": self.path(),
        })
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::InShard { source, .. } => source.exit_code(),
            CliError::Usage(_) => 2,
            _ if self.is_corruption() => EXIT_CORRUPT,
            _ => EXIT_ERROR,
        }
    }
}

/// The error and its causes, `: `-separated, skipping a cause whose text the message already holds.
pub fn error_chain(error: &dyn Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
