//! The configuration a tool opens a directory with: what its manifest records (slot count,
//! segment size), or, for a directory without one (a keel-raft store, a directory older than
//! manifests), a ring sized from what its journal holds. Nothing is assumed: a ring smaller than
//! the log's would read as ops missing.

use keel_engine::{adopt_manifest, EngineConfig, Manifest};
use keel_storage::FsDirectory;

use super::walk::{ring_need, walk_journal};
use super::{CliError, Mode};

/// The smallest ring the tools infer (the journal's default).
const MIN_INFERRED_SLOTS: u64 = 1024;
/// The largest ring the journal accepts.
const MAX_SLOTS: u64 = 1 << 24;

/// Where the geometry came from.
#[derive(Debug, Clone)]
pub enum Geometry {
    /// `DIR/MANIFEST`.
    Manifest(Manifest),
    /// No manifest: the smallest power-of-two ring that holds the journal's live ops.
    Inferred,
}

impl Geometry {
    pub fn manifest(&self) -> Option<&Manifest> {
        match self {
            Geometry::Manifest(manifest) => Some(manifest),
            Geometry::Inferred => None,
        }
    }
}

/// The engine configuration of a tool in `mode`, before the directory is read.
pub fn base_config(mode: Mode) -> EngineConfig {
    let mut config = EngineConfig::default();
    // The tools append nothing: opening a directory must not grow its active segment.
    config.journal.preallocate = false;
    config.recovery_mode = mode.into();
    config
}

/// The configuration for the directory `root` (read-only: nothing is written).
pub async fn config_for(
    root: &FsDirectory,
    mode: Mode,
) -> Result<(EngineConfig, Geometry), CliError> {
    let mut config = base_config(mode);
    if let Some(manifest) = adopt_manifest(root, &mut config).await? {
        return Ok((config, Geometry::Manifest(manifest)));
    }
    let slot_count = inferred_slots(root).await?;
    config.journal.slot_count = slot_count;
    config.checkpoint_margin_ops = slot_count / 4;
    tracing::info!(dir = %root.path().display(), slot_count,
        "no MANIFEST: the ring is sized from the journal");
    Ok((config, Geometry::Inferred))
}

/// The smallest power-of-two ring (at least the journal's default) holding every op between the
/// journal's watermark and its last op.
async fn inferred_slots(root: &FsDirectory) -> Result<u64, CliError> {
    let mut max_marker_op = 0;
    let segments = walk_journal(root, |entry, _| {
        if entry.kind == keel_journal::EntryKind::Snapshot {
            max_marker_op = max_marker_op.max(entry.op);
        }
    })
    .await?;
    let need = ring_need(&segments, max_marker_op);
    Ok(need
        .max(MIN_INFERRED_SLOTS)
        .checked_next_power_of_two()
        .unwrap_or(MAX_SLOTS)
        .min(MAX_SLOTS))
}
