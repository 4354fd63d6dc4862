//! [`SnapshotDir`]: the engine's snapshot store opened for another layer's snapshots (keel-raft
//! keeps its own under `DIR/raft-snapshots/`, away from the engine's `snapshots/`). One copy of
//! the persist (temp, fsync, rename, directory fsync), the checked load, the listing and the
//! quarantine: this module only opens the store on another directory name and hands payloads
//! in and out. It never interprets a payload and never deletes a byte it could not prove is a
//! replaced snapshot (damaged files and interrupted persists go to `DIR/quarantine/`).

use keel_storage::Directory;

use crate::error::{EngineError, SnapshotError};
use crate::snapshot::{SnapshotIdentity, SnapshotStore};

/// A directory of snapshot files (`docs/format.md`: keel's 72-byte header, payload checksum)
/// under a root of the caller's choice, with the engine's persist and load.
pub struct SnapshotDir<D: Directory> {
    store: SnapshotStore<D>,
}

impl<D: Directory> SnapshotDir<D> {
    /// Opens (creating) `root/<dir_name>/` durably: its entry in `root` and its own entries
    /// fsynced. Temp files of interrupted persists are copied to `root/quarantine/` and removed.
    /// A snapshot loads only if its payload is at most `max_bytes`.
    pub async fn open(root: &D, dir_name: &str, max_bytes: u64) -> Result<Self, EngineError> {
        let store = SnapshotStore::open_in(root, dir_name, max_bytes).await?;
        let temps = store.temp_names().await?;
        let quarantined = store.quarantine_temps(&temps).await?;
        if quarantined > 0 {
            tracing::info!(
                quarantined,
                dir = dir_name,
                "quarantined interrupted snapshot temp files"
            );
        }
        Ok(Self { store })
    }

    /// Ops of the snapshot files present, ascending.
    pub async fn list(&self) -> Result<Vec<u64>, SnapshotError> {
        self.store.list().await
    }

    /// Persists `payload` as the snapshot at `op`, durable on return (its identity unknown:
    /// zero). Returns the file's size in bytes.
    pub async fn persist(&self, op: u64, payload: &[u8]) -> Result<u64, EngineError> {
        let identity = SnapshotIdentity::default();
        self.store
            .persist(op, &identity, payload, &|_| Ok(()))
            .await
    }

    /// Reads and checks the snapshot at `op` (header, name, length, payload checksum, size
    /// limit); returns its payload.
    pub async fn load(&self, op: u64) -> Result<Vec<u8>, SnapshotError> {
        self.store.load(op).await
    }

    /// Removes the snapshot files at `ops` (replaced ones) and fsyncs the directory once.
    pub async fn remove(&self, ops: &[u64]) -> Result<(), SnapshotError> {
        self.store.remove_snapshots(ops).await
    }

    /// Sets the damaged snapshot at `op` aside: copied durably into `root/quarantine/`, then
    /// removed, so the next older one is used. Returns the quarantine copy's path.
    pub async fn set_aside(&self, op: u64) -> Result<String, SnapshotError> {
        let copy = self.store.copy_to_quarantine(op).await?;
        self.store.remove_snapshots(&[op]).await?;
        Ok(copy)
    }
}

#[cfg(test)]
mod tests {
    use keel_storage::{MemFs, OpenMode, Storage};

    use super::*;
    use crate::snapshot::snapshot_file_name;

    #[compio::test]
    async fn payloads_round_trip_and_a_damaged_one_goes_to_quarantine() {
        let fs = MemFs::new(5);
        let root = fs.root();
        let dir = SnapshotDir::open(&root, "other-snapshots", 1 << 20)
            .await
            .unwrap();
        dir.persist(7, b"seven").await.unwrap();
        dir.persist(9, b"nine").await.unwrap();
        assert_eq!(dir.list().await.unwrap(), [7, 9]);
        assert_eq!(dir.load(9).await.unwrap(), b"nine");
        // Flip the last payload byte of op 9 on disk.
        let files = root.open_dir("other-snapshots", false).await.unwrap();
        let name = snapshot_file_name(9);
        let file = files.open_file(&name, OpenMode::Existing).await.unwrap();
        let len = file.len();
        let last = file.read_exact_at(len - 1, 1).await.unwrap()[0];
        file.write_all_at(len - 1, vec![last ^ 1]).await.0.unwrap();
        assert!(dir.load(9).await.is_err(), "a damaged payload loaded");
        let copy = dir.set_aside(9).await.unwrap();
        assert!(copy.contains("quarantine"), "{copy}");
        assert_eq!(dir.list().await.unwrap(), [7]);
        dir.remove(&[7]).await.unwrap();
        assert!(dir.list().await.unwrap().is_empty());
    }
}
