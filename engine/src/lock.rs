//! The directory lock: one engine per directory, across threads and processes.
//!
//! The lock is `Directory::lock(LOCK_FILE)` — `flock` on the real file system, so it dies with the
//! process and a `kill -9` never leaves a stale lock behind.

use keel_storage::Directory;

use crate::error::EngineError;

/// The lock file's name under an engine directory.
pub const LOCK_FILE: &str = "LOCK";

/// Holds the lock until dropped.
pub(crate) struct DirLock<D: Directory> {
    _lock: D::Lock,
}

/// Takes the lock without waiting; the error names the directory.
pub(crate) async fn lock_dir<D: Directory>(root: &D) -> Result<DirLock<D>, EngineError> {
    match root.lock(LOCK_FILE).await {
        Ok(lock) => Ok(DirLock { _lock: lock }),
        Err(source) if source.kind() != std::io::ErrorKind::WouldBlock => Err(EngineError::io(
            "lock",
            format!("{}/{LOCK_FILE}", root.display_path()),
            source,
        )),
        Err(source) => {
            let dir = root.display_path();
            tracing::warn!(%dir, %source, "engine directory lock refused");
            Err(EngineError::Locked { dir, source })
        }
    }
}
