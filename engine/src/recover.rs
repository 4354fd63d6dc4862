//! `recover()`: lock, load the newest valid snapshot, open the journal with the mode's repairs,
//! replay committed ops, and say what happened in a [`RecoveryReport`]. Also the read-only
//! [`verify`] and the no-replay [`repair`] the CLI uses.
//!
//! The decisions, in order (`plan.rs` computes the facts read-only, the tables of `policy.rs`
//! decide, and `open` runs the steps the open's row names; docs/durability.md):
//! 0. `DIR/MANIFEST` gives the ring, the segment size and the directory id (a directory without
//!    one gets one once its open is decided).
//! 1. Snapshots newest first: the first whose checksums hold, that is this directory's and of this
//!    history, and that restores is used; the others above it are moved to quarantine (refused in
//!    `Absolute` mode), and a damaged one of this directory still proves that every op up to it was
//!    committed. An I/O error reading a snapshot is returned, never taken for damage.
//! 2. The journal holds live ops above its own watermark `J`. If the chosen snapshot `S` is below
//!    `J`, ops `S+1..=J` must still be in the journal's files (replayed from there); else refuse
//!    with [`EngineError::MissingOps`] naming exactly the ones gone.
//! 3. The durable commit watermark is `C = max(S, journal's durable commit, damaged snapshots'
//!    ops, the last clean close's)`. Ops `S+1..=C` are applied in order; they must all be present.
//!    Ops above `C` are prepared-but-uncommitted: kept pending and reported.
//! 4. A committed op missing from the journal is refused, except in `PointInTime` mode, where the
//!    state stops before the gap and the gap is reported as lost committed ops.
//!
//! It must never decide: a step runs only when the open's row names it.

use std::collections::BTreeMap;
use std::time::Instant;

use keel_journal::{MetadataJournal, RecoveryMode, ScanReport};
use keel_storage::Directory;

use crate::error::EngineError;
use crate::error::SnapshotError;
use crate::lock::lock_dir;
use crate::manifest::{adopt_manifest, write_manifest, Manifest};
use crate::plan::{
    plan_recovery, DirEvidence, JournalPart, PlanSummary, RecoveryPlan, SnapshotDamage,
};
use crate::policy::Step;
use crate::range::{to_ranges, OpRange};
use crate::replay::{replay_by_reads, Replay};
use crate::report::{
    journal_file, journal_repairs, PlannedRepair, ProblemKind, ProblemRecord, RecoveryReport,
    RecoveryStatus, RepairKind, RepairPlan, RepairRecord, VerifyReport,
};
use crate::snapshot::{list_snapshots, SnapshotInfo, SnapshotStore, SNAPSHOTS_DIR};
use crate::state_machine::{ApplyError, RestoreError, StateMachine};
use crate::{checkpoint::SNAPSHOTS_KEPT, Engine, EngineConfig, Inner};

/// Opens `root`: decides read-only (`plan_recovery`, the tables of `policy.rs`), then runs the
/// steps the open's table names for what the plan found, in order, and nothing else.
pub(crate) async fn open<D: Directory, M: StateMachine>(
    root: D,
    mut config: EngineConfig,
    mut state_machine: M,
) -> Result<(Engine<D, M>, RecoveryReport), EngineError> {
    let started = Instant::now();
    config.validate()?;
    if root.is_read_only() {
        return Err(EngineError::Config(format!(
            "{} is opened read-only; an engine needs to write (use verify for read-only checks)",
            root.display_path()
        )));
    }
    let lock = lock_dir(&root).await?;
    // Decide first (read-only: a refusal changes nothing), touch after.
    let recorded = adopt_manifest(&root, &mut config).await?;
    let evidence = evidence_of(recorded.as_ref());
    let mode = config.recovery_mode;
    let mut plan = plan_recovery(&root, &config, mode, evidence, &mut state_machine).await?;
    let manifest = match recorded {
        Some(manifest) => manifest,
        None => create_manifest(&root, &config).await?,
    };
    let snapshots = SnapshotStore::open(&root, config.max_snapshot_bytes)
        .await?
        .with_directory_id(manifest.directory_id);
    let steps = plan.steps;
    let opening = Opening {
        root: &root,
        config: &config,
        snapshots: &snapshots,
    };
    let (journal, outcome) = opening
        .establish(&mut plan, steps, &mut state_machine)
        .await?;
    outcome.check(mode);
    let manifest = opening.settle(&journal, &outcome, manifest, steps).await?;
    let report = outcome.report(&journal, mode, started);
    let parts = EngineParts {
        root,
        config,
        journal,
        snapshots,
        manifest,
        lock,
    };
    Ok((
        build_engine(parts, state_machine, outcome.replay, &report),
        report,
    ))
}

/// What the open's steps work on.
struct Opening<'a, D: Directory> {
    root: &'a D,
    config: &'a EngineConfig,
    snapshots: &'a SnapshotStore<D>,
}

impl<D: Directory> Opening<'_, D> {
    /// The steps up to the replay: quarantine what the plan sets aside, carry out the journal's
    /// plan, settle the state. What they establish is checked before anything is settled.
    async fn establish<M: StateMachine>(
        &self,
        plan: &mut RecoveryPlan<D>,
        steps: &[Step],
        state_machine: &mut M,
    ) -> Result<(MetadataJournal<D>, Outcome), EngineError> {
        let mut repairs = Vec::new();
        let mut temp_files_removed = 0;
        let mut part = Some(plan.journal_part());
        let mut opened = None;
        let mut replay = None;
        if !steps.contains(&Step::QuarantineSnapshots) {
            assert!(
                plan.damaged.is_empty(),
                "snapshots set aside but not quarantined"
            );
        }
        for step in steps
            .iter()
            .take_while(|&&step| step != Step::PersistCommit)
        {
            match step {
                Step::QuarantineSnapshots => {
                    repairs.extend(quarantine_snapshots(self.snapshots, plan).await?);
                }
                Step::QuarantineSnapshotTemps => {
                    temp_files_removed = self
                        .snapshots
                        .quarantine_temps(&plan.snapshot_temps)
                        .await?;
                }
                Step::OpenJournal => {
                    let journal_plan = part.as_mut().and_then(|p| p.journal.take());
                    let journal_plan = journal_plan.expect("the journal is opened once");
                    let (journal, scan) =
                        MetadataJournal::open_planned(self.root, journal_plan).await?;
                    repairs.extend(journal_repairs(&self.root.display_path(), &scan));
                    opened = Some((journal, scan));
                }
                Step::KeepStreamedReplay => {
                    let streamed = part.as_mut().and_then(|p| p.replay.take());
                    replay = Some(streamed.expect("the scan's replay was kept"));
                }
                Step::ReplayByReads => {
                    let part = part.take().expect("the journal's part is there");
                    let (journal, _) = opened.as_ref().expect("the journal is opened first");
                    replay = Some(self.replay_by_reads(journal, part, state_machine).await?);
                }
                other => panic!("{other:?} before the commit is persisted"),
            }
        }
        let (journal, scan) = opened.expect("every open row opens the journal");
        let outcome = Outcome {
            plan: plan.summary(),
            journal_snapshot_op: journal.snapshot_op().unwrap_or(0),
            replay: replay.expect("every open row replays"),
            scan,
            repairs,
            temp_files_removed,
        };
        Ok((journal, outcome))
    }

    /// The state restored again and replayed by reads (a later entry superseded an op the
    /// scan's replay had applied).
    async fn replay_by_reads<M: StateMachine>(
        &self,
        journal: &MetadataJournal<D>,
        part: JournalPart<D>,
        state_machine: &mut M,
    ) -> Result<Replay, EngineError> {
        assert!(
            part.replay.is_none(),
            "a replay by reads when the scan's replay stands"
        );
        let bytes = match part.initial_state {
            Some(bytes) => bytes,
            None => self.snapshots.load(part.snapshot_op).await?,
        };
        state_machine
            .restore(&bytes)
            .map_err(|RestoreError { reason }| SnapshotError::Decode {
                file: self
                    .snapshots
                    .path_of(&crate::snapshot::snapshot_file_name(part.snapshot_op)),
                op: part.snapshot_op,
                reason,
            })?;
        let max_pending = self.config.journal.slot_count.saturating_mul(2);
        replay_by_reads(
            journal,
            state_machine,
            part.snapshot_op,
            part.through,
            max_pending,
        )
        .await
    }

    /// The steps from the commit's persist on: make durable what recovery established, then
    /// tidy. Returns the manifest as it now is.
    async fn settle(
        &self,
        journal: &MetadataJournal<D>,
        outcome: &Outcome,
        mut manifest: Manifest,
        steps: &[Step],
    ) -> Result<Manifest, EngineError> {
        let (applied_op, plan) = (outcome.replay.applied_op, &outcome.plan);
        let settling = steps
            .iter()
            .skip_while(|&&step| step != Step::PersistCommit);
        for step in settling {
            match step {
                Step::PersistCommit => persist_commit(journal, applied_op).await?,
                Step::FinishCheckpoint => {
                    finish_checkpoint(
                        journal,
                        self.config,
                        plan.snapshot_op,
                        plan.previous_snapshot_op,
                    )
                    .await?;
                }
                Step::RemoveSnapshots => {
                    self.snapshots.remove_snapshots(&plan.damaged_ops).await?;
                    self.snapshots.remove_older(SNAPSHOTS_KEPT).await?;
                }
                Step::RecordResumePoint => {
                    manifest = settle_manifest(self.root, manifest, applied_op).await?;
                }
                other => panic!("{other:?} after the commit is persisted"),
            }
        }
        assert!(
            manifest.closed_commit_op <= applied_op,
            "the manifest's clean close is above the state recovered"
        );
        Ok(manifest)
    }
}

/// What an opened engine is made of, besides its state.
struct EngineParts<D: Directory> {
    root: D,
    config: EngineConfig,
    journal: MetadataJournal<D>,
    snapshots: SnapshotStore<D>,
    manifest: Manifest,
    lock: crate::lock::DirLock<D>,
}

/// The engine recovery established: the replayed state, its prepares, its counters.
fn build_engine<D: Directory, M: StateMachine>(
    parts: EngineParts<D>,
    state_machine: M,
    replay: Replay,
    report: &RecoveryReport,
) -> Engine<D, M> {
    let Replay {
        applied_op,
        pending,
        mut stats,
        ..
    } = replay;
    stats.replayed_ops = report.replayed;
    stats.repairs = report.repairs.len() as u64;
    stats.recovery_duration_us = report.duration_us;
    stats.snapshot_op = report.snapshot_op;
    Engine {
        root: parts.root,
        config: parts.config,
        journal: parts.journal,
        snapshots: parts.snapshots,
        inner: std::cell::RefCell::new(Inner {
            state_machine,
            applied_op,
            commit_op: applied_op,
            pending,
            in_flight: BTreeMap::new(),
            next_append_seq: 0,
            snapshot_op: report.snapshot_op,
            stats,
            journal_appends_seen: 0,
            journal_batches_seen: 0,
        }),
        checkpointing: std::cell::Cell::new(false),
        truncating: std::cell::Cell::new(None),
        manifest: parts.manifest,
        _lock: parts.lock,
    }
}

/// What the manifest lets the plan judge.
fn evidence_of(manifest: Option<&Manifest>) -> DirEvidence {
    manifest.map_or_else(DirEvidence::default, |m| DirEvidence {
        directory_id: m.directory_id,
        closed_commit_op: m.closed_commit_op,
    })
}

/// A directory without a manifest gets one once its open is decided (never on a refusal).
async fn create_manifest<D: Directory>(
    root: &D,
    config: &EngineConfig,
) -> Result<Manifest, EngineError> {
    let manifest = Manifest::new(
        config.journal.slot_count,
        config.journal.segment_bytes,
        config.shard_index,
    )?;
    write_manifest(root, &manifest).await?;
    tracing::info!(dir = %root.display_path(), directory_id = %manifest.directory_id,
        "wrote the directory's manifest");
    Ok(manifest)
}

/// After a point-in-time recovery resumed below the last clean close's watermark, that watermark
/// is no longer this directory's state: the manifest records where it resumed, or the next open
/// would refuse for ops the consensus layer has not sent again yet.
async fn settle_manifest<D: Directory>(
    root: &D,
    mut manifest: Manifest,
    applied_op: u64,
) -> Result<Manifest, EngineError> {
    if manifest.closed_commit_op > applied_op {
        manifest.closed_commit_op = applied_op;
        write_manifest(root, &manifest).await?;
    }
    Ok(manifest)
}

/// Copies the damaged snapshots the plan falls back from into quarantine (the originals go only
/// once the commit watermark they prove is durable: `Step::RemoveSnapshots`).
async fn quarantine_snapshots<D: Directory>(
    snapshots: &SnapshotStore<D>,
    plan: &RecoveryPlan<D>,
) -> Result<Vec<RepairRecord>, EngineError> {
    let mut repairs = Vec::new();
    for damaged in &plan.damaged {
        let quarantine = snapshots.copy_to_quarantine(damaged.op).await?;
        repairs.push(RepairRecord {
            kind: RepairKind::Snapshot(damaged.damage),
            file: damaged.file.clone(),
            offset: 0,
            bytes: damaged.len_bytes,
            quarantine,
        });
    }
    Ok(repairs)
}

/// What a cut loses: the committed ops (above the snapshot, which still holds what is at or below
/// it, through the commit watermark) it removed plus the plan's gap, and the ops it removed that
/// were never committed.
fn lost_ops(
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

/// `keel repair --dry-run`: the plan `repair` would carry out, without the lock and without
/// creating, writing or removing anything. A refusal is returned as the error `repair` would give.
pub async fn plan_repair<D: Directory>(
    root: &D,
    config: &EngineConfig,
) -> Result<RepairPlan, EngineError> {
    let mut config = config.clone();
    let manifest = adopt_manifest(root, &mut config).await?;
    let evidence = evidence_of(manifest.as_ref());
    let mode = config.recovery_mode;
    let plan = plan_recovery(root, &config, mode, evidence, &mut Discard).await?;
    let journal = plan
        .journal
        .as_ref()
        .expect("an accepted plan holds the journal's");
    let root_path = root.display_path();
    let mut repairs: Vec<PlannedRepair> = plan
        .damaged
        .iter()
        .map(|d| PlannedRepair {
            kind: RepairKind::Snapshot(d.damage),
            file: d.file.clone(),
            offset: 0,
            bytes: d.len_bytes,
            op: Some(d.op),
        })
        .collect();
    if let (Some(cut), Some(stop)) = (journal.cut(), journal.report().problems.first()) {
        repairs.push(PlannedRepair {
            kind: RepairKind::JournalCut(cut),
            file: journal_file(&root_path, &stop.file),
            offset: stop.offset_bytes,
            bytes: 0,
            op: stop.op,
        });
    }
    let temps = |kind: RepairKind, dir: &str, names: &[String]| -> Vec<PlannedRepair> {
        names
            .iter()
            .map(|name| PlannedRepair {
                kind,
                file: format!("{root_path}/{dir}/{name}"),
                offset: 0,
                bytes: 0,
                op: None,
            })
            .collect()
    };
    if mode != RecoveryMode::Absolute {
        repairs.extend(temps(
            RepairKind::SnapshotTemp,
            SNAPSHOTS_DIR,
            &plan.snapshot_temps,
        ));
    }
    repairs.extend(temps(
        RepairKind::CompactionTemp,
        "journal",
        journal.temp_files(),
    ));
    let (lost_committed, cut_uncommitted) =
        lost_ops(plan.snapshot_op, plan.commit_op, plan.gap, journal.report());
    Ok(RepairPlan {
        snapshot_op: plan.snapshot_op,
        commit_op: plan.commit_op,
        repairs,
        lost_committed,
        cut_uncommitted,
    })
}

/// What recovery established, before the engine is built.
struct Outcome {
    plan: PlanSummary,
    /// The journal's snapshot watermark as found (before an interrupted checkpoint is finished).
    journal_snapshot_op: u64,
    replay: Replay,
    scan: ScanReport,
    repairs: Vec<RepairRecord>,
    temp_files_removed: u64,
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
    fn check(&self, mode: RecoveryMode) {
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

    fn report(
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

/// Makes the commit watermark recovery established durable: a snapshot proves its op committed
/// only while it exists, and a quarantined one no longer does — a second crash must not forget
/// it. After a point-in-time gap the engine resumes at what it applied; the consensus layer
/// prepares the missing ops again.
async fn persist_commit<D: Directory>(
    journal: &MetadataJournal<D>,
    applied_op: u64,
) -> Result<(), EngineError> {
    if applied_op > journal.durable_commit_op().unwrap_or(0) {
        journal.set_commit_op(applied_op);
        journal.persist_commit().await?;
    }
    Ok(())
}

/// A crash between a snapshot's directory fsync and the journal's watermark: finish that
/// checkpoint now, or the journal's capacity stays tied to the older watermark until the next
/// checkpoint — which may never come if nothing new is committed.
async fn finish_checkpoint<D: Directory>(
    journal: &MetadataJournal<D>,
    config: &EngineConfig,
    snapshot_op: u64,
    previous_snapshot_op: u64,
) -> Result<(), EngineError> {
    let watermark = if config.journal_covers_previous_snapshot {
        previous_snapshot_op
    } else {
        snapshot_op
    };
    let journal_snapshot_op = journal.snapshot_op().unwrap_or(0);
    if watermark > journal_snapshot_op {
        tracing::info!(
            watermark,
            journal_snapshot_op,
            "completing an interrupted checkpoint"
        );
        journal.set_snapshot_op(watermark).await?;
        journal.compact().await?;
    }
    Ok(())
}

/// A state machine that keeps nothing: [`repair`] recovers through it without keeping state.
struct Discard;

impl StateMachine for Discard {
    fn apply(&mut self, _op: u64, _command: &[u8]) -> Result<(), ApplyError> {
        Ok(())
    }

    fn snapshot(&self) -> Vec<u8> {
        Vec::new()
    }

    fn restore(&mut self, _bytes: &[u8]) -> Result<(), RestoreError> {
        Ok(())
    }
}

/// What `open` repairs (journal torn tails and cuts, damaged snapshots, temp files), without
/// building a state: `keel repair`. Takes the lock like `open`.
pub async fn repair<D: Directory>(
    root: D,
    config: EngineConfig,
) -> Result<RecoveryReport, EngineError> {
    let (engine, mut report) = open(root, config, Discard).await?;
    engine.close().await?;
    // Nothing was built: what open would replay is reported as such, not as work done.
    report.replayed = 0;
    Ok(report)
}

/// What the recovery plan says beyond the journal scan's own problems: snapshots whose state does
/// not restore, committed ops missing, any other refusal that is corruption. True when corrupt;
/// an error that is not corruption (an I/O error) is returned as such, never given a verdict.
fn plan_problems<D: Directory>(
    plan: Result<RecoveryPlan<D>, EngineError>,
    root: &D,
    snapshots: &mut [SnapshotInfo],
    problems: &mut Vec<ProblemRecord>,
    judged: &mut Vec<(u64, SnapshotDamage)>,
) -> Result<bool, EngineError> {
    match plan {
        Ok(plan) => {
            // Whole files the plan falls back from: their checksums hold, the plan's judgement
            // (does not restore, not this directory's) is what makes them unusable.
            let beyond_checksums = plan
                .damaged
                .iter()
                .filter(|d| d.damage != SnapshotDamage::Checksum);
            for damaged in beyond_checksums {
                if let Some(info) = snapshots.iter_mut().find(|s| s.op == damaged.op) {
                    info.valid = false;
                    info.problem = Some(format!("{}: {}", damaged.damage.name(), damaged.reason));
                    judged.push((damaged.op, damaged.damage));
                }
            }
            Ok(false)
        }
        // The journal's own refusals are in `problems` already (its scan kept going).
        Err(EngineError::Journal(keel_journal::JournalError::Corrupt { .. })) => Ok(true),
        Err(error @ EngineError::MissingOps { .. }) => {
            let range = error.missing_range().expect("MissingOps has a range");
            problems.push(ProblemRecord {
                kind: ProblemKind::MissingOps,
                file: root.display_path(),
                offset: 0,
                op: Some(*range.start()),
                ops: Some(OpRange::from(&range)),
            });
            Ok(true)
        }
        Err(error) if error.is_corruption() => Ok(true),
        Err(error) => Err(error),
    }
}

/// Read-only full check of the journal and the snapshots: never writes (works on a read-only
/// directory), takes no lock, reports every problem it sees. Its verdict is the one recovery
/// would reach: it runs the same plan (`plan_recovery`, default mode) with `state_machine`
/// restoring the snapshots, so a snapshot that does not restore, or committed ops missing from
/// the journal, are reported here exactly as `recover` would refuse or repair them.
pub async fn verify<D: Directory, M: StateMachine>(
    root: &D,
    config: &EngineConfig,
    mut state_machine: M,
) -> Result<VerifyReport, EngineError> {
    let mut config = config.clone();
    let manifest = adopt_manifest(root, &mut config).await?;
    let config = &config;
    let scan = MetadataJournal::verify(root, config.journal.clone()).await?;
    let mut snapshots = list_snapshots(root, config.max_snapshot_bytes).await?;
    let root_path = root.display_path();
    let problems = scan.problems.iter();
    let mut problems: Vec<ProblemRecord> = problems
        .map(|p| ProblemRecord::from_journal(&root_path, p))
        .collect();
    // The journal's table decides what is corruption: a torn segment header is a torn tail too.
    let mut corrupt = scan.problems.iter().any(|p| p.is_corruption());
    let plan = plan_recovery(
        root,
        config,
        RecoveryMode::TolerateTornTail,
        evidence_of(manifest.as_ref()),
        &mut state_machine,
    )
    .await;
    let mut judged = Vec::new();
    corrupt |= plan_problems(plan, root, &mut snapshots, &mut problems, &mut judged)?;
    for s in snapshots.iter().filter(|s| !s.valid) {
        corrupt = true;
        let damage = judged
            .iter()
            .find(|(op, _)| *op == s.op)
            .map_or(SnapshotDamage::Checksum, |(_, damage)| *damage);
        problems.push(ProblemRecord {
            kind: ProblemKind::Snapshot(damage),
            file: s.file.clone(),
            offset: 0,
            op: Some(s.op),
            ops: None,
        });
    }
    Ok(VerifyReport::new(&scan, corrupt, problems, snapshots))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{recovery_mode_from_str, recovery_mode_name};

    #[test]
    fn ranges_compress_runs() {
        assert_eq!(to_ranges([]), vec![]);
        assert_eq!(
            to_ranges([1, 2, 3, 5, 7, 8]),
            vec![
                OpRange {
                    first_op: 1,
                    last_op: 3
                },
                OpRange {
                    first_op: 5,
                    last_op: 5
                },
                OpRange {
                    first_op: 7,
                    last_op: 8
                },
            ]
        );
        assert_eq!(
            to_ranges([u64::MAX - 1, u64::MAX]),
            vec![OpRange {
                first_op: u64::MAX - 1,
                last_op: u64::MAX
            }]
        );
    }

    #[test]
    fn mode_names_round_trip() {
        for mode in [
            RecoveryMode::TolerateTornTail,
            RecoveryMode::Absolute,
            RecoveryMode::PointInTime,
        ] {
            assert_eq!(recovery_mode_from_str(recovery_mode_name(mode)), Some(mode));
        }
        assert_eq!(recovery_mode_from_str("bogus"), None);
    }
}
