//! What the bench writes: key-value `set` commands of a fixed size, and the ack file.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

use keel_engine::encode_set;

use crate::cli::CliError;

/// Bytes of a `set` command around its value: tag, key length, 8-byte key, value length.
pub const SET_OVERHEAD_BYTES: usize = 1 + 4 + 8 + 4;

/// The commands of one run: `set key value` with `key = op % keys` and a value derived from the
/// op, so every command is `entry_bytes` long and the state holds at most `keys` keys.
#[derive(Debug, Clone, Copy)]
pub struct Workload {
    pub entry_bytes: usize,
    pub keys: u64,
}

impl Workload {
    /// The command op `op` of `shard` carries.
    pub fn payload(&self, shard: usize, op: u64) -> Result<Vec<u8>, CliError> {
        let key = (op % self.keys).to_be_bytes();
        let mut value = vec![0u8; self.entry_bytes - SET_OVERHEAD_BYTES];
        fill(
            &mut value,
            op ^ ((shard as u64) << 48) ^ 0x9e37_79b9_7f4a_7c15,
        );
        let mut out = Vec::with_capacity(self.entry_bytes);
        encode_set(&key, &value, &mut out).map_err(|error| {
            CliError::Usage(format!("--entry-bytes {}: {error}", self.entry_bytes))
        })?;
        Ok(out)
    }
}

/// Fills `bytes` with a cheap xorshift stream seeded by `seed` (not compressible, not zeroes).
fn fill(bytes: &mut [u8], seed: u64) {
    let mut state = seed | 1;
    for chunk in bytes.chunks_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let word = state.to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
}

/// `--ack-file`: a line `<shard> <op>` per op, written (one `write` per batch, `O_APPEND`, so
/// shards' lines never interleave within a line) after the fsync that made the ops durable.
///
/// Plain `std::fs` on the shard's thread: a few microseconds per batch, and the file is an
/// observation for crash tests, not keel's data.
pub struct AckWriter {
    file: Option<File>,
    buffer: String,
}

impl AckWriter {
    pub fn open(path: Option<&Path>) -> Result<Self, CliError> {
        let file = match path {
            None => None,
            Some(path) => Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| {
                        CliError::io(format!("opening ack file {}", path.display()), source)
                    })?,
            ),
        };
        Ok(Self {
            file,
            buffer: String::new(),
        })
    }

    /// Records `ops` of `shard` as durable.
    pub fn record(&mut self, shard: usize, ops: &[u64]) -> Result<(), CliError> {
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        self.buffer.clear();
        for op in ops {
            self.buffer.push_str(&format!("{shard} {op}\n"));
        }
        file.write_all(self.buffer.as_bytes())
            .map_err(|source| CliError::io("writing the ack file", source))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_engine::KvCommand;

    #[test]
    fn payloads_have_the_requested_size_and_decode() {
        let workload = Workload {
            entry_bytes: 128,
            keys: 10,
        };
        let payload = workload.payload(0, 42).unwrap();
        assert_eq!(payload.len(), 128);
        match KvCommand::decode(&payload).unwrap() {
            KvCommand::Set { key, value } => {
                assert_eq!(key, 2u64.to_be_bytes());
                assert_eq!(value.len(), 128 - SET_OVERHEAD_BYTES);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_ne!(workload.payload(0, 43).unwrap(), payload);
        assert_ne!(workload.payload(1, 42).unwrap(), payload);
    }
}
