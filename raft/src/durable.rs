//! Small files replaced atomically through the [`Directory`] seam, and their framing.
//!
//! Both the raft meta file and the snapshot files are written the way keel persists its own
//! snapshots (DESIGN §5): write `NAME.tmp`, fsync it, rename it over `NAME`, fsync the directory.
//! A crash at any point leaves either the old file or the new one under `NAME`, never a mix, and
//! nothing is reported durable before the directory fsync made the rename survive a power cut.

use keel_storage::{Directory, OpenMode, Storage};

use crate::error::RaftStoreError;

pub(crate) const TEMP_SUFFIX: &str = ".tmp";

/// Writes `bytes` as `name` in `dir` atomically and durably (see the module docs).
pub(crate) async fn write_atomic<D: Directory>(
    dir: &D,
    name: &str,
    bytes: Vec<u8>,
) -> Result<(), RaftStoreError> {
    let temp = format!("{name}{TEMP_SUFFIX}");
    let temp_path = format!("{}/{temp}", dir.display_path());
    let file = dir
        .open_file(&temp, OpenMode::Create)
        .await
        .map_err(|e| RaftStoreError::io("create temp file", &temp_path, e))?;
    // A temp file left by an interrupted write: start from empty so no stale tail survives.
    file.truncate(0)
        .await
        .map_err(|e| RaftStoreError::io("truncate temp file", &temp_path, e))?;
    let compio::BufResult(written, _) = file.write_all_at(0, bytes).await;
    written.map_err(|e| RaftStoreError::io("write temp file", &temp_path, e))?;
    file.sync()
        .await
        .map_err(|e| RaftStoreError::io("fsync temp file", &temp_path, e))?;
    drop(file);
    dir.rename(&temp, name)
        .await
        .map_err(|e| RaftStoreError::io("rename temp file", &temp_path, e))?;
    dir.sync()
        .await
        .map_err(|e| RaftStoreError::io("fsync directory", dir.display_path(), e))?;
    Ok(())
}

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

/// Removes `*.tmp` files an interrupted [`write_atomic`] left behind; returns how many.
pub(crate) async fn remove_temps<D: Directory>(dir: &D) -> Result<u64, RaftStoreError> {
    let names = dir
        .list()
        .await
        .map_err(|e| RaftStoreError::io("list", dir.display_path(), e))?;
    let mut removed = 0;
    for name in names.iter().filter(|n| n.ends_with(TEMP_SUFFIX)) {
        dir.remove_file(name).await.map_err(|e| {
            RaftStoreError::io(
                "remove temp file",
                format!("{}/{name}", dir.display_path()),
                e,
            )
        })?;
        removed += 1;
    }
    Ok(removed)
}

pub(crate) fn le_u32(bytes: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&bytes[..4]);
    u32::from_le_bytes(a)
}
