//! The checkpoint coordinator: snapshot the state machine at applied op `S` → persist the snapshot
//! → move the journal's watermark to `S` → compact the journal → drop snapshots older than the
//! two newest.
//!
//! Why this order survives a crash between any two steps: each step only removes what an earlier
//! *durable* step made redundant. Until the snapshot's directory fsync, the journal still holds
//! every op above the previous snapshot; until the journal's watermark is durable, recovery
//! replays from the snapshot it finds (ops the journal still holds at or below `S` are skipped);
//! compaction only deletes entries at or below a durable watermark; older snapshots are deleted
//! last, and recovery ignores them when a newer valid one exists.

use std::time::Instant;

use keel_storage::Directory;
use serde::Serialize;

use crate::error::EngineError;
use crate::state_machine::StateMachine;
use crate::step::{CheckpointStep, StepAction, StepHook};
use crate::Engine;

/// Snapshots kept after a checkpoint: the newest, and one to fall back to if it is damaged.
pub(crate) const SNAPSHOTS_KEPT: usize = 2;

/// What one checkpoint did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckpointReport {
    /// The op the snapshot covers (the commit watermark it was taken at).
    pub snapshot_op: u64,
    /// The snapshot file's length.
    pub snapshot_bytes: u64,
    /// Wall time of the whole checkpoint.
    pub duration_us: u64,
    /// Journal segments compaction deleted.
    pub segments_deleted: u64,
    /// Journal segments compaction rewrote.
    pub segments_rewritten: u64,
    /// Journal bytes on disk before compaction.
    pub journal_bytes_before: u64,
    /// Journal bytes on disk after compaction.
    pub journal_bytes_after: u64,
    /// Older snapshot files removed.
    pub snapshots_removed: u64,
}

/// Clears the in-progress flag however the coordinator exits.
struct InProgress<'a>(&'a std::cell::Cell<bool>);

impl Drop for InProgress<'_> {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

pub(crate) async fn run<D: Directory, M: StateMachine>(
    engine: &Engine<D, M>,
) -> Result<Option<CheckpointReport>, EngineError> {
    if engine.checkpointing.replace(true) {
        return Err(EngineError::CheckpointInProgress);
    }
    let _in_progress = InProgress(&engine.checkpointing);
    let started = Instant::now();
    let result = run_steps(engine, started).await;
    let mut inner = engine.inner.borrow_mut();
    match &result {
        Ok(Some(report)) => {
            inner.stats.checkpoints += 1;
            inner
                .stats
                .checkpoint_duration_us
                .record(report.duration_us);
            inner.stats.last_snapshot_bytes = report.snapshot_bytes;
        }
        Ok(None) => {}
        Err(error) => {
            inner.stats.checkpoint_failures += 1;
            tracing::warn!(%error, "checkpoint failed");
        }
    }
    result
}

async fn run_steps<D: Directory, M: StateMachine>(
    engine: &Engine<D, M>,
    started: Instant,
) -> Result<Option<CheckpointReport>, EngineError> {
    #[cfg(any(test, feature = "testing"))]
    let step = step_reporter(engine.config.step_hook.clone());
    #[cfg(not(any(test, feature = "testing")))]
    let step = step_reporter(None);

    // 1. Snapshot at the applied op. Only committed ops are ever applied, so S <= commit.
    //    The state machine hands a frozen copy (O(1) for a persistent map), serialized piece by
    //    piece during the persist while commits keep applying to the live state.
    let (snapshot_op, previous_snapshot_op, mut state) = {
        let inner = engine.inner.borrow();
        if inner.applied_op <= inner.snapshot_op {
            return Ok(None);
        }
        (
            inner.applied_op,
            inner.snapshot_op,
            inner.state_machine.snapshot_source(),
        )
    };
    step(CheckpointStep::SnapshotTaken)?;

    // 2. Persist (temp written piece by piece with paced write-back, fsync, rename, directory
    //    fsync), recording whose snapshot it is.
    let position = engine.journal.entry_position(snapshot_op).await?;
    let identity = engine.snapshots.identity(position);
    let snapshot_bytes = engine
        .snapshots
        .persist_source(snapshot_op, &identity, &mut *state, &step)
        .await?;
    drop(state);
    engine.inner.borrow_mut().snapshot_op = snapshot_op;
    step(CheckpointStep::Persisted)?;

    // 3. The journal may now forget ops at or below S (or, keeping a fallback, at or below the
    //    previous snapshot).
    let watermark = if engine.config.journal_covers_previous_snapshot {
        previous_snapshot_op
    } else {
        snapshot_op
    };
    if engine.journal.snapshot_op().unwrap_or(0) < watermark {
        engine.journal.set_snapshot_op(watermark).await?;
    }
    step(CheckpointStep::WatermarkSet)?;
    finish_steps(engine, &step, started, snapshot_op, snapshot_bytes).await
}

/// Steps 4 and 5 (compact the journal, drop older snapshots) and the report.
async fn finish_steps<D: Directory, M: StateMachine>(
    engine: &Engine<D, M>,
    step: &dyn Fn(CheckpointStep) -> Result<(), EngineError>,
    started: Instant,
    snapshot_op: u64,
    snapshot_bytes: u64,
) -> Result<Option<CheckpointReport>, EngineError> {
    // 4. Compact.
    let compaction = engine.journal.compact().await?;
    step(CheckpointStep::Compacted)?;

    // 5. Drop older snapshots.
    let snapshots_removed = engine.snapshots.remove_older(SNAPSHOTS_KEPT).await?;
    step(CheckpointStep::OldSnapshotsDropped)?;

    let report = CheckpointReport {
        snapshot_op,
        snapshot_bytes,
        duration_us: started.elapsed().as_micros() as u64,
        segments_deleted: compaction.segments_deleted,
        segments_rewritten: compaction.segments_rewritten,
        journal_bytes_before: compaction.bytes_before,
        journal_bytes_after: compaction.bytes_after,
        snapshots_removed,
    };
    tracing::info!(
        snapshot_op,
        snapshot_bytes,
        duration_us = report.duration_us,
        "checkpoint complete"
    );
    Ok(Some(report))
}

/// What the coordinator calls after each step: the step hook's verdict, as `Halted` when it says
/// stop (no hook: always go on).
fn step_reporter(hook: Option<StepHook>) -> impl Fn(CheckpointStep) -> Result<(), EngineError> {
    move |s: CheckpointStep| match hook.as_ref().map(|h| h(s)) {
        Some(StepAction::Halt) => {
            tracing::debug!(step = ?s, "checkpoint halted by the step hook");
            Err(EngineError::Halted { step: s })
        }
        _ => Ok(()),
    }
}
