//! verify: the read-only checks the CLI runs — [`verify`] (the whole directory's verdict) and
//! [`plan_repair`] (`keel repair --dry-run`) — through the same plan an open makes.
//!
//! Owns turning a plan (or its refusal) into problems and planned repairs. It must never create,
//! write or remove anything and never take the lock: it works on a read-only directory, beside a
//! live writer.

use keel_journal::{MetadataJournal, RecoveryMode};
use keel_storage::Directory;

use crate::choice::{DirEvidence, SnapshotDamage};
use crate::error::EngineError;
use crate::manifest::adopt_manifest;
use crate::outcome::lost_ops;
use crate::plan::{plan_recovery, RecoveryPlan};
use crate::range::OpRange;
use crate::report::{
    journal_file, PlannedRepair, ProblemKind, ProblemRecord, RepairKind, RepairPlan, VerifyReport,
};
use crate::snapshot::{list_snapshots, SnapshotInfo, SNAPSHOTS_DIR};
use crate::state_machine::{ApplyError, RestoreError, StateMachine};
use crate::EngineConfig;

/// `keel repair --dry-run`: the plan `repair` would carry out, without the lock and without
/// creating, writing or removing anything. A refusal is returned as the error `repair` would give.
pub async fn plan_repair<D: Directory>(
    root: &D,
    config: &EngineConfig,
) -> Result<RepairPlan, EngineError> {
    let mut config = config.clone();
    let manifest = adopt_manifest(root, &mut config).await?;
    let evidence = DirEvidence::of(manifest.as_ref());
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

/// A state machine that keeps nothing: [`repair`] recovers through it without keeping state.
pub(crate) struct Discard;

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
        DirEvidence::of(manifest.as_ref()),
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
