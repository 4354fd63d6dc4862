//! The application data carried by the raft log: key-value commands for keel's `KvStateMachine`.

use std::fmt;

use keel_engine::{KvCodecError, KvCommand};
use serde::{Deserialize, Serialize};

/// A client command (openraft's `D`). Keys and values are UTF-8 here because the log and the
/// network frames are JSON; the state machine stores their bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvRequest {
    Set { key: String, value: String },
    Delete { key: String },
}

impl KvRequest {
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
