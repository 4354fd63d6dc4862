//! Raft snapshot files: `DIR/raft-snapshots/NNNNNNNNNNNNNNNNNNNN.snap`.
//!
//! Each file is written and read by the engine's own snapshot store ([`SnapshotDir`]): keel's
//! snapshot header (`docs/format.md`: magic `KEELSNAP`, format 2, op, length, payload crc, header
//! crc, the identity left zero; 72 bytes), keel's persist (temp, fsync, rename, directory fsync)
//! and its quarantine. The
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
//! (the journal still covers the gap as long as purges keep enough log behind the newest); the
//! damaged one goes to `DIR/quarantine/`.

use keel_engine::{SnapshotDir, MAX_SNAPSHOT_BYTES_LIMIT};
use keel_storage::Directory;

use crate::durable::le_u32;
use crate::error::RaftStoreError;
use openraft::alias::SnapshotMetaOf;
use openraft::RaftTypeConfig;

/// Directory of the raft snapshots under the store's root.
pub const RAFT_SNAPSHOTS_DIR: &str = "raft-snapshots";

/// Snapshot files kept: the current one and its predecessor.
const KEEP_SNAPSHOTS: usize = 2;

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

/// The raft snapshot directory of one store: the engine's snapshot store ([`SnapshotDir`]) on
/// `root/raft-snapshots/`; the policy (which files to keep) is this crate's.
pub(crate) struct SnapshotFiles<D: Directory> {
    dir: SnapshotDir<D>,
}

impl<D: Directory> SnapshotFiles<D> {
    /// Opens (creating) `root/raft-snapshots/` durably (its entry in `root` and its own entries
    /// fsynced, even when an earlier process created it and crashed before syncing); temp files
    /// an interrupted persist left go to `root/quarantine/`.
    pub(crate) async fn open(root: &D) -> Result<Self, RaftStoreError> {
        let dir = SnapshotDir::open(root, RAFT_SNAPSHOTS_DIR, MAX_SNAPSHOT_BYTES_LIMIT).await?;
        Ok(Self { dir })
    }

    /// Ops of the snapshot files present, ascending.
    pub(crate) async fn list(&self) -> Result<Vec<u64>, RaftStoreError> {
        Ok(self.dir.list().await?)
    }

    /// Persists `payload` as the snapshot at `op` (durable on return), then drops older files.
    pub(crate) async fn persist(&self, op: u64, payload: &[u8]) -> Result<(), RaftStoreError> {
        self.dir.persist(op, payload).await?;
        let ops = self.list().await?;
        Ok(self.dir.remove(&replaced(&ops, op)).await?)
    }

    /// Reads and checks the snapshot at `op`; returns its payload (the envelope).
    pub(crate) async fn load(&self, op: u64) -> Result<Vec<u8>, RaftStoreError> {
        Ok(self.dir.load(op).await?)
    }

    /// Sets a damaged snapshot aside (into quarantine, never deleted) so the previous one is used.
    pub(crate) async fn set_aside(&self, op: u64) -> Result<(), RaftStoreError> {
        let copy = self.dir.set_aside(op).await?;
        tracing::warn!(op, quarantine = %copy, "damaged raft snapshot set aside");
        Ok(())
    }
}

/// Of the snapshot files at `ops`, those a persist of `current` replaces: all but `current` and
/// the newest below it (files above `current` too: the snapshot just persisted is the
/// authoritative one).
fn replaced(ops: &[u64], current: u64) -> Vec<u64> {
    let keep_below: Vec<u64> = ops
        .iter()
        .copied()
        .filter(|op| *op < current)
        .rev()
        .take(KEEP_SNAPSHOTS - 1)
        .collect();
    ops.iter()
        .copied()
        .filter(|op| *op != current && !keep_below.contains(op))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::typ::SnapshotMeta;
    use crate::TypeConfig;

    #[test]
    fn a_persist_replaces_all_but_itself_and_its_predecessor() {
        assert_eq!(replaced(&[1, 3, 5, 9], 5), [1, 9]);
        assert_eq!(replaced(&[5], 5), Vec::<u64>::new());
        assert_eq!(replaced(&[2, 5], 5), Vec::<u64>::new());
        assert_eq!(replaced(&[7, 8], 5), [7, 8]);
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
