//! What a directory argument names: one engine directory, or a shard set (`D/shard-<i>/`).
//!
//! Decided by looking only (read-only open, list): a path that is neither gets
//! [`CliError::NotKeel`] and nothing is created in it.

use std::path::{Path, PathBuf};

use keel_engine::{shard_dir_name, LOCK_FILE, SNAPSHOTS_DIR};
use keel_storage::{Directory, FsDirectory};

use super::walk::JOURNAL_DIR;
use super::CliError;

/// One engine directory to act on; `shard` is set for a member of a shard set.
#[derive(Debug, Clone)]
pub struct EngineDir {
    pub shard: Option<usize>,
    pub path: PathBuf,
}

/// What the argument named.
#[derive(Debug, Clone)]
pub enum Target {
    Engine(EngineDir),
    ShardSet(Vec<EngineDir>),
}

impl Target {
    /// Every engine directory, in shard order.
    pub fn engines(&self) -> Vec<EngineDir> {
        match self {
            Target::Engine(dir) => vec![dir.clone()],
            Target::ShardSet(dirs) => dirs.clone(),
        }
    }

    pub fn is_shard_set(&self) -> bool {
        matches!(self, Target::ShardSet(_))
    }
}

fn not_keel(path: &Path, reason: impl Into<String>) -> CliError {
    CliError::NotKeel {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// True when `names` (a directory listing) holds an engine's files.
fn has_engine_marker(names: &[String]) -> bool {
    names
        .iter()
        .any(|n| n == JOURNAL_DIR || n == SNAPSHOTS_DIR || n == LOCK_FILE)
}

/// The shard number of a `shard-<i>` name written the way [`shard_dir_name`] writes it.
fn parse_shard_name(name: &str) -> Option<usize> {
    let shard: usize = name.strip_prefix("shard-")?.parse().ok()?;
    (shard_dir_name(shard) == name).then_some(shard)
}

async fn list_read_only(path: &Path) -> Result<Vec<String>, CliError> {
    let dir = FsDirectory::open(path, false, true)
        .await
        .map_err(|source| not_keel(path, source.to_string()))?;
    dir.list()
        .await
        .map_err(|source| CliError::io(format!("listing {}", path.display()), source))
}

/// Resolves `path` without changing anything.
pub async fn resolve(path: &Path) -> Result<Target, CliError> {
    let names = list_read_only(path).await?;
    if has_engine_marker(&names) {
        return Ok(Target::Engine(EngineDir {
            shard: None,
            path: path.to_path_buf(),
        }));
    }
    let mut shards: Vec<(usize, PathBuf)> = names
        .iter()
        .filter_map(|name| parse_shard_name(name).map(|shard| (shard, path.join(name))))
        .collect();
    shards.sort();
    let mut engines = Vec::with_capacity(shards.len());
    for (shard, shard_path) in shards {
        if has_engine_marker(&list_read_only(&shard_path).await?) {
            engines.push(EngineDir {
                shard: Some(shard),
                path: shard_path,
            });
        }
    }
    if engines.is_empty() {
        return Err(not_keel(
            path,
            "no journal/, snapshots/ or LOCK (an engine directory) and no shard-<i>/ engine \
             directories (a shard set)",
        ));
    }
    Ok(Target::ShardSet(engines))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_names_parse_only_canonical_forms() {
        assert_eq!(parse_shard_name("shard-0"), Some(0));
        assert_eq!(parse_shard_name("shard-12"), Some(12));
        assert_eq!(parse_shard_name("shard-012"), None);
        assert_eq!(parse_shard_name("shard-"), None);
        assert_eq!(parse_shard_name("shard-x"), None);
        assert_eq!(parse_shard_name("journal"), None);
    }
}
