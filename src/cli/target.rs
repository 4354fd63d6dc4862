//! What a directory argument names: an engine directory, a keel-raft store, a shard set
//! (`D/shard-<i>/` engine directories) or a cluster (`D/node-<i>/` stores), or a single segment
//! file (`dump` only).
//!
//! Decided by looking only (read-only open, list): a path that is none of these gets
//! [`CliError::NotKeel`] and nothing is created in it.

use std::path::{Path, PathBuf};

use keel_engine::{shard_dir_name, LOCK_FILE, MANIFEST_FILE, SNAPSHOTS_DIR};
use keel_storage::DirAccess;
use keel_storage::{Directory, FsDirectory};

use super::walk::JOURNAL_DIR;
use super::CliError;

/// A keel-raft store's meta file (its header is documented in raft/src/meta.rs).
pub const RAFT_META_FILE: &str = "raft-meta";
/// A keel-raft store's snapshots (keel's snapshot header; the payload is openraft's).
pub const RAFT_SNAPSHOTS_DIR: &str = "raft-snapshots";

/// Which layer wrote a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirKind {
    /// keel-engine: `MANIFEST`, `journal/`, `snapshots/`.
    Engine,
    /// keel-raft: `journal/`, `raft-meta`, `raft-snapshots/`.
    Raft,
}

/// Printed as its name in `inspect --json` (`kind`).
impl serde::Serialize for DirKind {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl DirKind {
    /// `engine` or `raft_store` (docs/cli.md).
    pub fn name(self) -> &'static str {
        match self {
            DirKind::Engine => "engine",
            DirKind::Raft => "raft_store",
        }
    }
}

/// One directory to act on; `shard` is set for a member of a shard set or cluster.
#[derive(Debug, Clone)]
pub struct EngineDir {
    pub shard: Option<usize>,
    pub path: PathBuf,
    pub kind: DirKind,
}

/// What the argument named.
#[derive(Debug, Clone)]
pub enum Target {
    Engine(EngineDir),
    /// `D/shard-<i>/` or `D/node-<i>/` members.
    ShardSet(PathBuf, Vec<EngineDir>),
}

impl Target {
    /// Every member directory, in index order.
    pub fn engines(&self) -> Vec<EngineDir> {
        match self {
            Target::Engine(dir) => vec![dir.clone()],
            Target::ShardSet(_, dirs) => dirs.clone(),
        }
    }

    pub fn is_shard_set(&self) -> bool {
        matches!(self, Target::ShardSet(..))
    }

    /// The path given.
    pub fn path(&self) -> &Path {
        match self {
            Target::Engine(dir) => &dir.path,
            Target::ShardSet(path, _) => path,
        }
    }

    /// `engine`, `raft_store`, `shard_set` or `cluster`.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Target::Engine(dir) => dir.kind.name(),
            Target::ShardSet(_, dirs) if dirs.iter().any(|d| d.kind == DirKind::Raft) => "cluster",
            Target::ShardSet(..) => "shard_set",
        }
    }
}

fn not_keel(path: &Path, reason: impl Into<String>) -> CliError {
    CliError::NotKeel {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// The kind of directory `names` (a listing) is, if it holds a keel store's files.
fn kind_of(names: &[String]) -> Option<DirKind> {
    let has = |name: &str| names.iter().any(|n| n == name);
    if has(RAFT_META_FILE) || has(RAFT_SNAPSHOTS_DIR) {
        return Some(DirKind::Raft);
    }
    (has(MANIFEST_FILE) || has(JOURNAL_DIR) || has(SNAPSHOTS_DIR) || has(LOCK_FILE))
        .then_some(DirKind::Engine)
}

/// The index of a `<prefix><i>` name written the canonical way (no leading zeros).
fn parse_member_name(name: &str, prefix: &str) -> Option<usize> {
    let index: usize = name.strip_prefix(prefix)?.parse().ok()?;
    (format!("{prefix}{index}") == name).then_some(index)
}

/// The shard number of a `shard-<i>` name written the way [`shard_dir_name`] writes it.
fn parse_shard_name(name: &str) -> Option<usize> {
    parse_member_name(name, "shard-").filter(|&shard| shard_dir_name(shard) == name)
}

async fn list_read_only(path: &Path) -> Result<Vec<String>, CliError> {
    let dir = FsDirectory::open_with(path, DirAccess::ReadOnly)
        .await
        .map_err(|source| not_keel(path, source.to_string()))?;
    dir.list()
        .await
        .map_err(|source| CliError::io(format!("listing {}", path.display()), source))
}

/// Resolves `path` without changing anything.
pub async fn resolve(path: &Path) -> Result<Target, CliError> {
    let names = list_read_only(path).await?;
    if let Some(kind) = kind_of(&names) {
        return Ok(Target::Engine(EngineDir {
            shard: None,
            path: path.to_path_buf(),
            kind,
        }));
    }
    let mut members: Vec<(usize, PathBuf)> = names
        .iter()
        .filter_map(|name| {
            let index = parse_shard_name(name).or_else(|| parse_member_name(name, "node-"))?;
            Some((index, path.join(name)))
        })
        .collect();
    members.sort();
    let mut engines = Vec::with_capacity(members.len());
    for (index, member) in members {
        if let Some(kind) = kind_of(&list_read_only(&member).await?) {
            engines.push(EngineDir {
                shard: Some(index),
                path: member,
                kind,
            });
        }
    }
    if engines.is_empty() {
        return Err(not_keel(
            path,
            "no MANIFEST, journal/ or snapshots/ (an engine directory), no raft-meta or \
             raft-snapshots/ (a keel-raft store), and no shard-<i>/ or node-<i>/ members (a shard \
             set or a cluster)",
        ));
    }
    Ok(Target::ShardSet(path.to_path_buf(), engines))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_names_parse_only_canonical_forms() {
        assert_eq!(parse_shard_name("shard-0"), Some(0));
        assert_eq!(parse_shard_name("shard-12"), Some(12));
        assert_eq!(parse_shard_name("shard-012"), None);
        assert_eq!(parse_shard_name("shard-"), None);
        assert_eq!(parse_shard_name("shard-x"), None);
        assert_eq!(parse_shard_name("journal"), None);
        assert_eq!(parse_member_name("node-3", "node-"), Some(3));
        assert_eq!(parse_member_name("node-03", "node-"), None);
    }

    #[test]
    fn kinds_are_told_by_their_files() {
        let names = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            kind_of(&names(&["journal", "raft-meta"])),
            Some(DirKind::Raft)
        );
        assert_eq!(
            kind_of(&names(&["journal", "MANIFEST"])),
            Some(DirKind::Engine)
        );
        assert_eq!(kind_of(&names(&["journal"])), Some(DirKind::Engine));
        assert_eq!(kind_of(&names(&["notes.txt"])), None);
    }
}
