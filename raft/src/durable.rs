//! Small files read whole through the [`Directory`] seam (the raft meta file), and the framing
//! helper they share.
//!
//! The meta file is written with [`keel_storage::atomic_replace`] (write `NAME.tmp`, fsync it,
//! rename it over `NAME`, fsync the directory): a crash at any point leaves either the old file
//! or the new one under `NAME`, never a mix, and nothing is reported durable before the
//! directory fsync made the rename survive a power cut. Snapshot files go through the engine's
//! snapshot store (`snapshot.rs`). This module never writes.

use keel_storage::{Directory, OpenMode, Storage};

use crate::error::RaftStoreError;

/// Reads the whole file `name` from `dir`; `None` when it does not exist.
pub(crate) async fn read_all<D: Directory>(
    dir: &D,
    name: &str,
) -> Result<Option<Vec<u8>>, RaftStoreError> {
    let path = format!("{}/{name}", dir.display_path());
    let exists = dir
        .exists(name)
        .await
        .map_err(|e| RaftStoreError::io("stat", &path, e))?;
    if !exists {
        return Ok(None);
    }
    let file = dir
        .open_file(name, OpenMode::ReadOnly)
        .await
        .map_err(|e| RaftStoreError::io("open", &path, e))?;
    let len = usize::try_from(file.len()).map_err(|_| RaftStoreError::Damaged {
        file: path.clone(),
        reason: "larger than the address space".into(),
    })?;
    let bytes = file
        .read_exact_at(0, len)
        .await
        .map_err(|e| RaftStoreError::io("read", &path, e))?;
    Ok(Some(bytes))
}

/// The little-endian `u32` in the first four bytes of `bytes` (which must hold at least four).
pub(crate) fn le_u32(bytes: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&bytes[..4]);
    u32::from_le_bytes(a)
}
