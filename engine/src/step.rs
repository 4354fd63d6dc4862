//! step: the checkpoint coordinator's durable steps, named, and the test seam that can stop a
//! checkpoint after any one of them as a crash would.
//!
//! Owns [`CheckpointStep`] (reported by the coordinator and the snapshot persist, carried by
//! [`crate::EngineError::Halted`]) and the hook's types. It must never depend on the coordinator
//! or the error enum: both depend on it.

use std::sync::Arc;

use serde::Serialize;

/// A boundary inside the checkpoint coordinator, reported to the step hook after the step named
/// has completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum CheckpointStep {
    /// The state machine's bytes were taken at `S` (nothing written yet).
    SnapshotTaken,
    /// The temp file was written, not yet fsynced.
    TempWritten,
    /// The temp file was fsynced, not yet renamed.
    TempSynced,
    /// The temp file was renamed to its final name; the directory is not fsynced yet.
    Renamed,
    /// The snapshot is durable (directory fsynced); the journal's watermark is unchanged.
    Persisted,
    /// The journal's watermark is `S`; not compacted yet.
    WatermarkSet,
    /// The journal was compacted; the older snapshots still exist.
    Compacted,
    /// Older snapshots were removed: the checkpoint is complete.
    OldSnapshotsDropped,
}

impl CheckpointStep {
    /// Every step, in order (the crash tests iterate over it).
    pub const ALL: [CheckpointStep; 8] = [
        CheckpointStep::SnapshotTaken,
        CheckpointStep::TempWritten,
        CheckpointStep::TempSynced,
        CheckpointStep::Renamed,
        CheckpointStep::Persisted,
        CheckpointStep::WatermarkSet,
        CheckpointStep::Compacted,
        CheckpointStep::OldSnapshotsDropped,
    ];
}

/// What the step hook tells the coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepAction {
    /// Go on to the next step.
    Continue,
    /// Stop here and return [`crate::EngineError::Halted`], leaving the disk as a crash at this point
    /// would (the caller then crashes its `MemFs` and reopens).
    Halt,
}

/// Called at every [`CheckpointStep`]; a test seam (`None` in production).
pub type StepHook = Arc<dyn Fn(CheckpointStep) -> StepAction + Send + Sync>;
