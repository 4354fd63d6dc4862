//! Opening an engine directory strictly read-only, for `verify`, `inspect` and `dump`: every
//! mutation through the directory seam fails, so these commands cannot change a byte.

use std::path::Path;

use keel_storage::DirAccess;
use keel_storage::FsDirectory;

use super::error::CliError;

/// `path` opened read-only (never created).
pub async fn open(path: &Path) -> Result<FsDirectory, CliError> {
    FsDirectory::open_with(path, DirAccess::ReadOnly)
        .await
        .map_err(|source| CliError::io(format!("opening {} read-only", path.display()), source))
}
