//! outcome: what an open established before the engine is built — the plan's summary, the
//! replay, the journal's scan and the repairs — its checks, and the [`RecoveryReport`] made of it.
//!
//! Owns the invariants an open asserts once its state is replayed, and what a cut loses. It must
//! never do I/O and never decide: `policy.rs` decides, `recover.rs` runs the steps.

use std::time::Instant;

use keel_journal::{MetadataJournal, RecoveryMode, ScanReport};
use keel_storage::Directory;

use crate::plan::PlanSummary;
use crate::range::{to_ranges, OpRange};
use crate::replay::Replay;
use crate::report::{RecoveryReport, RecoveryStatus, RepairRecord};

/// What a cut loses: the committed ops (above the snapshot, which still holds what is at or below
/// it, through the commit watermark) it removed plus the plan's gap, and the ops it removed that
/// were never committed.
pub(crate) fn lost_ops(
    snapshot_op: u64,
    commit_op: u64,
    gap: Option<OpRange>,
    scan: &ScanReport,
) -> (Vec<OpRange>, Vec<OpRange>) {
    let cut = || {
        scan.lost_ops
            .iter()
            .chain(&scan.torn_ops)
            .map(OpRange::from)
    };
    let mut committed: Vec<OpRange> = cut()
        .filter_map(|range| range.clip(snapshot_op + 1, commit_op))
        .collect();
    committed.extend(gap);
    committed.sort_by_key(|range| range.first_op);
    committed.dedup();
    let high = commit_op.max(snapshot_op);
    let uncommitted = cut()
        .filter_map(|range| range.clip(high + 1, u64::MAX))
        .collect();
    (committed, uncommitted)
}

/// What recovery established, before the engine is built.
pub(crate) struct Outcome {
    pub(crate) plan: PlanSummary,
    /// The journal's snapshot watermark as found (before an interrupted checkpoint is finished).
    pub(crate) journal_snapshot_op: u64,
    pub(crate) replay: Replay,
    pub(crate) scan: ScanReport,
    pub(crate) repairs: Vec<RepairRecord>,
    pub(crate) temp_files_removed: u64,
}

impl Outcome {
    fn unrecoverable(&self) -> Vec<OpRange> {
        let plan = &self.plan;
        lost_ops(plan.snapshot_op, plan.commit_op, plan.gap, &self.scan).0
    }

    fn cut_uncommitted(&self) -> Vec<OpRange> {
        let plan = &self.plan;
        lost_ops(plan.snapshot_op, plan.commit_op, plan.gap, &self.scan).1
    }

    /// The recovery decisions, checked: the state is exactly the snapshot plus contiguous
    /// committed ops, and nothing above the durable commit was applied.
    pub(crate) fn check(&self, mode: RecoveryMode) {
        let (applied_op, plan) = (self.replay.applied_op, &self.plan);
        assert!(
            applied_op >= plan.snapshot_op,
            "replay went below the snapshot"
        );
        assert!(
            applied_op <= plan.commit_op,
            "applied past the durable commit watermark"
        );
        assert!(
            plan.gap.is_none() || mode == RecoveryMode::PointInTime,
            "a gap was accepted outside point-in-time mode"
        );
        assert!(
            self.replay.pending.keys().all(|&op| op > applied_op),
            "a pending op at or below the applied op"
        );
    }

    pub(crate) fn report(
        &self,
        journal: &MetadataJournal<impl Directory>,
        mode: RecoveryMode,
        started: Instant,
    ) -> RecoveryReport {
        let (plan, replay) = (&self.plan, &self.replay);
        let unrecoverable = self.unrecoverable();
        let last_op = journal
            .last_op()
            .unwrap_or(0)
            .max(replay.applied_op)
            .max(plan.commit_op)
            .max(replay.pending.keys().next_back().copied().unwrap_or(0));
        let prepared_uncommitted = to_ranges(
            replay
                .pending
                .range(plan.commit_op + 1..)
                .map(|(op, _)| *op),
        );
        let status = if self.repairs.is_empty() && unrecoverable.is_empty() {
            RecoveryStatus::Clean
        } else {
            RecoveryStatus::Repaired
        };
        let report = RecoveryReport {
            status,
            mode,
            snapshot_op: plan.snapshot_op,
            snapshot_file: plan.snapshot_file.clone(),
            last_op,
            commit_op: plan.commit_op,
            applied_op: replay.applied_op,
            replayed: replay.replayed,
            journal_snapshot_op: self.journal_snapshot_op,
            journal_first_op: self.scan.first_op,
            segments_read: self.scan.segments_read,
            entries_read: self.scan.entries_read,
            repairs: self.repairs.clone(),
            prepared_uncommitted,
            unrecoverable,
            torn_ops: self.cut_uncommitted(),
            temp_files_removed: self.temp_files_removed,
            duration_us: started.elapsed().as_micros() as u64,
        };
        tracing::info!(snapshot_op = report.snapshot_op, commit_op = report.commit_op,
            applied_op = report.applied_op, replayed = report.replayed,
            prepared = replay.pending.len(), status = ?report.status, "engine recovered");
        report
    }
}
