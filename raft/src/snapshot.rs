//! Raft snapshot files: `DIR/raft-snapshots/NNNNNNNNNNNNNNNNNNNN.snap`.
//!
//! Each file uses keel's snapshot header (`docs/format.md`: magic `KEELSNAP`, format 2, op, length,
//! payload crc, header crc, the identity left zero; 72 bytes) and keel's persist (temp, fsync, rename, directory fsync). The
//! op in the name and header is the raft index of the snapshot's last log id plus one, the same
//! op numbering as the journal ([`crate::op_of`]); 0 for a snapshot of nothing.
//!
//! They live in their own directory, not in keel's `snapshots/`, because their payload is not a
//! bare state machine image: it is an *envelope* that also carries openraft's snapshot meta (last
//! log id with its term, last membership), which openraft needs back on restart and sends to
//! followers. The engine's tools would try to restore the envelope as a `KvStateMachine` and
//! quarantine it as damaged; a separate directory keeps them away.
//!
//! Envelope (little-endian): `meta_len:u32  meta (JSON SnapshotMeta)  state (the application
//! machine's [`crate::AppStateMachine::snapshot`] bytes)`. The meta stays JSON: it is written once
//! per snapshot, and the `keel` tool reads it without knowing the application's types.
//!
//! The two newest files are kept, so a snapshot damaged on disk falls back to the previous one
//! (the journal still covers the gap as long as purges keep enough log behind the newest).

use keel_engine::{decode_snapshot_file, encode_snapshot_file, snapshot_file_name, snapshot_ops};
use keel_storage::{atomic_replace, open_dir_durable, Directory};

use crate::durable::{le_u32, read_all, remove_temps};
use crate::error::RaftStoreError;
use openraft::alias::SnapshotMetaOf;
use openraft::RaftTypeConfig;

/// Directory of the raft snapshots under the store's root.
pub const RAFT_SNAPSHOTS_DIR: &str = "raft-snapshots";

/// Snapshot files kept: the current one and its predecessor.
const KEEP_SNAPSHOTS: usize = 2;

/// Suffix a damaged snapshot is renamed to (set aside, never deleted, like keel's quarantine).
const DAMAGED_SUFFIX: &str = ".damaged";

/// Packs `meta` and the state machine's bytes into one snapshot payload.
pub fn encode_envelope<C: RaftTypeConfig>(
    meta: &SnapshotMetaOf<C>,
    state: &[u8],
) -> Result<Vec<u8>, RaftStoreError> {
    let meta_bytes =
        serde_json::to_vec(meta).map_err(|e| RaftStoreError::encode("snapshot meta", e))?;
    let mut out = Vec::with_capacity(4 + meta_bytes.len() + state.len());
    out.extend_from_slice(&(meta_bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(&meta_bytes);
    out.extend_from_slice(state);
    Ok(out)
}

/// Splits a snapshot payload into its meta and the state machine's bytes.
pub fn decode_envelope<'a, C: RaftTypeConfig>(
    what: &str,
    bytes: &'a [u8],
) -> Result<(SnapshotMetaOf<C>, &'a [u8]), RaftStoreError> {
    let damaged = |reason: String| RaftStoreError::Damaged {
        file: what.to_string(),
        reason,
    };
    if bytes.len() < 4 {
        return Err(damaged(
            "snapshot envelope shorter than its 4-byte length".into(),
        ));
    }
    let meta_len = le_u32(&bytes[0..4]) as usize;
    let meta_end = 4usize
        .checked_add(meta_len)
        .filter(|end| *end <= bytes.len())
        .ok_or_else(|| damaged(format!("snapshot meta length {meta_len} past the end")))?;
    let meta = serde_json::from_slice(&bytes[4..meta_end])
        .map_err(|e| RaftStoreError::decode("snapshot meta", e))?;
    Ok((meta, &bytes[meta_end..]))
}

fn encode_file(op: u64, payload: &[u8]) -> Vec<u8> {
    encode_snapshot_file(op, payload)
}

fn decode_file(file: &str, op: u64, bytes: Vec<u8>) -> Result<Vec<u8>, RaftStoreError> {
    decode_snapshot_file(op, &bytes)
        .map(<[u8]>::to_vec)
        .map_err(|reason| RaftStoreError::Damaged {
            file: file.to_string(),
            reason,
        })
}

/// The raft snapshot directory of one store.
pub(crate) struct SnapshotFiles<D: Directory> {
    dir: D,
}

impl<D: Directory> SnapshotFiles<D> {
    /// Opens (creating) `root/raft-snapshots/` durably (its entry in `root` and its own entries
    /// fsynced, even when an earlier process created it and crashed before syncing) and removes
    /// temp files an interrupted persist left.
    pub(crate) async fn open(root: &D) -> Result<Self, RaftStoreError> {
        let dir = open_dir_durable(root, RAFT_SNAPSHOTS_DIR).await?;
        let removed = remove_temps(&dir).await?;
        if removed > 0 {
            tracing::info!(removed, dir = %dir.display_path(), "removed interrupted snapshot temp files");
        }
        Ok(Self { dir })
    }

    fn path_of(&self, op: u64) -> String {
        format!("{}/{}", self.dir.display_path(), snapshot_file_name(op))
    }

    /// Ops of the snapshot files present, ascending.
    pub(crate) async fn list(&self) -> Result<Vec<u64>, RaftStoreError> {
        let names = self
            .dir
            .list()
            .await
            .map_err(|e| RaftStoreError::io("list", self.dir.display_path(), e))?;
        Ok(snapshot_ops(&names))
    }

    /// Persists `payload` as the snapshot at `op` (durable on return), then drops older files.
    pub(crate) async fn persist(&self, op: u64, payload: &[u8]) -> Result<(), RaftStoreError> {
        atomic_replace(&self.dir, &snapshot_file_name(op), encode_file(op, payload)).await?;
        self.remove_others(op).await
    }

    /// Keeps `current` and the newest file below it; removes the rest (including files above
    /// `current`: the snapshot just persisted is the authoritative one).
    async fn remove_others(&self, current: u64) -> Result<(), RaftStoreError> {
        let ops = self.list().await?;
        let keep_below: Vec<u64> = ops
            .iter()
            .copied()
            .filter(|op| *op < current)
            .rev()
            .take(KEEP_SNAPSHOTS - 1)
            .collect();
        for op in ops {
            if op == current || keep_below.contains(&op) {
                continue;
            }
            self.dir
                .remove_file(&snapshot_file_name(op))
                .await
                .map_err(|e| RaftStoreError::io("remove old snapshot", self.path_of(op), e))?;
        }
        Ok(())
    }

    /// Reads and checks the snapshot at `op`; returns its payload (the envelope).
    pub(crate) async fn load(&self, op: u64) -> Result<Vec<u8>, RaftStoreError> {
        let path = self.path_of(op);
        let bytes = read_all(&self.dir, &snapshot_file_name(op))
            .await?
            .ok_or_else(|| RaftStoreError::Damaged {
                file: path.clone(),
                reason: "missing".into(),
            })?;
        decode_file(&path, op, bytes)
    }

    /// Sets a damaged snapshot aside (renamed, never deleted) so the previous one is used.
    pub(crate) async fn set_aside(&self, op: u64) -> Result<(), RaftStoreError> {
        let name = snapshot_file_name(op);
        self.dir
            .rename(&name, &format!("{name}{DAMAGED_SUFFIX}"))
            .await
            .map_err(|e| RaftStoreError::io("set aside damaged snapshot", self.path_of(op), e))?;
        self.dir
            .sync()
            .await
            .map_err(|e| RaftStoreError::io("fsync directory", self.dir.display_path(), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::typ::SnapshotMeta;
    use crate::TypeConfig;

    #[test]
    fn file_round_trip_and_damage() {
        let bytes = encode_file(7, b"hello");
        assert_eq!(decode_file("f", 7, bytes.clone()).unwrap(), b"hello");
        assert!(
            decode_file("f", 8, bytes.clone()).is_err(),
            "op mismatch accepted"
        );
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 1;
            // Byte 12..16 is reserved and not checked by the payload crc, but the header crc
            // covers it.
            assert!(
                decode_file("f", 7, bad).is_err(),
                "flip at byte {i} accepted"
            );
        }
    }

    #[test]
    fn envelope_round_trip() {
        let meta = SnapshotMeta::default();
        let env = encode_envelope::<TypeConfig>(&meta, b"state").unwrap();
        let (back, state) = decode_envelope::<TypeConfig>("e", &env).unwrap();
        assert_eq!(back, meta);
        assert_eq!(state, b"state");
        assert!(decode_envelope::<TypeConfig>("e", &env[..3]).is_err());
    }
}
