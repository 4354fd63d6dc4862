//! The application data carried by the raft log: key-value commands for keel's `KvStateMachine`.

use std::fmt;

use keel_engine::{KvCodecError, KvCommand};
use serde::{Deserialize, Serialize};

/// Largest client command accepted, in the binary encoding that goes into a log entry
/// ([`crate::codec`]), for any application. Checked where a command enters the cluster (the node
/// servers of [`crate::network`], and [`KvRequest::validate`]), because past that point a log
/// entry the journal refuses (larger than its `max_payload_bytes`) is a storage error, which
/// openraft treats as fatal for the node.
pub const MAX_COMMAND_BYTES: usize = 256 << 10;

/// A client command (openraft's `D`). Keys and values are UTF-8 strings (the commands of the
/// examples and tools); the state machine stores their bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvRequest {
    /// Sets `key` to `value`.
    Set {
        /// The key.
        key: String,
        /// The value.
        value: String,
    },
    /// Deletes `key`.
    Delete {
        /// The key.
        key: String,
    },
}

impl KvRequest {
    /// Refuses a command keel's codec would reject or that is larger than [`MAX_COMMAND_BYTES`].
    pub fn validate(&self) -> Result<(), String> {
        self.to_command_bytes().map_err(|e| e.to_string())?;
        let encoded_bytes = crate::codec::encode(self).map_err(|e| e.to_string())?.len();
        if encoded_bytes > MAX_COMMAND_BYTES {
            return Err(format!(
                "command of {encoded_bytes} bytes exceeds the {MAX_COMMAND_BYTES}-byte limit"
            ));
        }
        Ok(())
    }

    /// The key this request sets or deletes (what a sharded cluster routes by).
    pub fn key(&self) -> &str {
        match self {
            KvRequest::Set { key, .. } | KvRequest::Delete { key } => key,
        }
    }

    /// keel's command bytes for this request (checks keel's key and value size limits).
    pub fn to_command_bytes(&self) -> Result<Vec<u8>, KvCodecError> {
        let command = match self {
            KvRequest::Set { key, value } => KvCommand::Set {
                key: key.as_bytes().to_vec(),
                value: value.as_bytes().to_vec(),
            },
            KvRequest::Delete { key } => KvCommand::Delete {
                key: key.as_bytes().to_vec(),
            },
        };
        command.encode()
    }
}

impl fmt::Display for KvRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvRequest::Set { key, value } => write!(f, "set({key}, {} bytes)", value.len()),
            KvRequest::Delete { key } => write!(f, "delete({key})"),
        }
    }
}

/// The state machine's answer to one applied entry (openraft's `R`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvResponse {
    /// Why the command was applied as a no-op (every replica rejects it the same way), if it was.
    pub rejected: Option<String>,
}
