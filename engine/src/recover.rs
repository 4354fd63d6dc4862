//! `recover()`: lock, load the newest valid snapshot, open the journal with the mode's repairs,
//! replay committed ops, and say what happened in a [`RecoveryReport`]. Also the no-replay
//! [`repair`] the CLI uses (the read-only `verify` and `plan_repair` are in `verify.rs`).
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

use keel_journal::MetadataJournal;
use keel_storage::Directory;

use crate::choice::DirEvidence;
use crate::error::EngineError;
use crate::error::SnapshotError;
use crate::lock::lock_dir;
use crate::manifest::{adopt_manifest, write_manifest, Manifest};
use crate::outcome::Outcome;
use crate::plan::{plan_recovery, JournalPart, RecoveryPlan};
use crate::policy::Step;
use crate::replay::{replay_by_reads, Replay};
use crate::report::{journal_repairs, RecoveryReport, RepairKind, RepairRecord};
use crate::snapshot::SnapshotStore;
use crate::state_machine::{RestoreError, StateMachine};
use crate::verify::Discard;
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
    let evidence = DirEvidence::of(recorded.as_ref());
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

#[cfg(test)]
mod tests {
    use crate::range::{to_ranges, OpRange};
    use crate::report::{recovery_mode_from_str, recovery_mode_name};
    use keel_journal::RecoveryMode;

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
