//! plan: the one recovery decision, made before anything is touched, that both `open` and
//! `verify` use.
//!
//! Owns the planning passes: the snapshot choice (`choice.rs`), the journal's plan, and the facts
//! between them that go to the open's table (`policy.rs`): whether the snapshot reaches the
//! journal's watermark or the journal's files still hold the ops between, and whether every
//! committed op above the snapshot is in the journal (committed meaning any watermark: the
//! journal's, a damaged snapshot's, the manifest's last clean close). It must never create, write or remove a
//! file: a refused recovery changes nothing, and `verify` says exactly what `recover` would do.

use keel_journal::{MetadataJournal, OpenPlan, RecoveryMode};
use keel_storage::Directory;

use crate::choice::{
    plan_snapshots, DamagedSnapshot, DirEvidence, PlanInputs, SnapshotChoice, SnapshotDamage,
};
use crate::error::{EngineError, SnapshotError};
use crate::policy::{
    file_action, open_row_for, Coverage, FileAction, FileFact, OpenDecision, OpenFacts, Place,
    Refusal, Step,
};
use crate::range::OpRange;
use crate::replay::{Replay, Replayer};
use crate::state_machine::{RestoreError, StateMachine};
use crate::EngineConfig;

/// Everything recovery will do, decided read-only.
pub(crate) struct RecoveryPlan<D: Directory> {
    /// The snapshot restored into the state machine (0: none) and its path.
    pub snapshot_op: u64,
    pub snapshot_file: Option<String>,
    /// Snapshot ops present, ascending.
    pub snapshot_ops: Vec<u64>,
    /// Newer snapshots that are damaged (quarantined by the open).
    pub damaged: Vec<DamagedSnapshot>,
    /// Leftover temp files of interrupted snapshot persists (names keel writes only).
    pub snapshot_temps: Vec<String>,
    /// The journal's plan (taken by the open: `journal_part`).
    pub journal: Option<OpenPlan<D>>,
    /// The durable commit watermark: max(snapshot, journal's commit, damaged snapshots' ops).
    pub commit_op: u64,
    /// Committed ops the journal does not hold (point-in-time mode only; refused otherwise).
    pub gap: Option<OpRange>,
    /// What the replay during the scan did, or `None` when a later entry superseded an op it had
    /// applied (see `replay.rs`): then the state must be restored again and replayed by reads.
    pub replay: Option<Replay>,
    /// The state machine's bytes before the replay, when there was no snapshot to restore it from.
    pub initial_state: Option<Vec<u8>>,
    /// The steps the open's table names for this plan's facts (`policy.rs`), in order.
    pub steps: &'static [Step],
}

/// The plan's journal part, handed to the open (the rest stays for the report).
pub(crate) struct JournalPart<D: Directory> {
    /// Taken by `Step::OpenJournal`.
    pub journal: Option<OpenPlan<D>>,
    pub replay: Option<Replay>,
    pub initial_state: Option<Vec<u8>>,
    pub snapshot_op: u64,
    /// The op the replay applies through: the commit watermark, or the op before a gap.
    pub through: u64,
}

/// What the report and the settling steps need of the plan.
pub(crate) struct PlanSummary {
    pub snapshot_op: u64,
    pub snapshot_file: Option<String>,
    /// The newest snapshot older than the chosen one (0: none).
    pub previous_snapshot_op: u64,
    pub damaged_ops: Vec<u64>,
    pub commit_op: u64,
    pub gap: Option<OpRange>,
}

impl<D: Directory> RecoveryPlan<D> {
    /// Takes the journal's plan and the replay out (the open consumes them).
    pub(crate) fn journal_part(&mut self) -> JournalPart<D> {
        JournalPart {
            journal: Some(self.journal.take().expect("the journal part is taken once")),
            replay: self.replay.take(),
            initial_state: self.initial_state.take(),
            snapshot_op: self.snapshot_op,
            through: self.gap.map_or(self.commit_op, |g| g.first_op - 1),
        }
    }

    /// What the report and the settling steps need.
    pub(crate) fn summary(&self) -> PlanSummary {
        PlanSummary {
            snapshot_op: self.snapshot_op,
            snapshot_file: self.snapshot_file.clone(),
            previous_snapshot_op: previous_snapshot_op(&self.snapshot_ops, self.snapshot_op),
            damaged_ops: self.damaged.iter().map(|d| d.op).collect(),
            commit_op: self.commit_op,
            gap: self.gap,
        }
    }
}

/// Decides recovery of `root` in `mode`, restoring the chosen snapshot into `state_machine`.
/// Creates, writes and removes nothing; every refusal is returned from here.
///
/// A snapshot found to belong to another history only once the journal was scanned (its op's
/// chain position differs) is excluded and the plan made again from the initial state: one more
/// scan, in a case that only a misplaced file causes, so the fallback replays exactly as the
/// fallback from a damaged file does.
pub(crate) async fn plan_recovery<D: Directory, M: StateMachine>(
    root: &D,
    config: &EngineConfig,
    mode: RecoveryMode,
    evidence: DirEvidence,
    state_machine: &mut M,
) -> Result<RecoveryPlan<D>, EngineError> {
    // The state machine is in its initial state: keep it for the case above.
    let initial_state = state_machine.snapshot();
    let mut excluded: Vec<DamagedSnapshot> = Vec::new();
    loop {
        let inputs = PlanInputs {
            root,
            config,
            mode,
            evidence,
            excluded: &excluded,
        };
        match plan_once(inputs, state_machine, &initial_state).await? {
            Ok(plan) => return Ok(plan),
            Err(misplaced) => {
                assert!(
                    !excluded.iter().any(|d| d.op == misplaced.op),
                    "a snapshot excluded twice"
                );
                excluded.push(misplaced);
                state_machine
                    .restore(&initial_state)
                    .map_err(|RestoreError { reason }| {
                        EngineError::Config(format!("the initial state does not restore: {reason}"))
                    })?;
            }
        }
    }
}

/// One planning pass: the plan, or the chosen snapshot found misplaced (`Err` inside `Ok`).
async fn plan_once<D: Directory, M: StateMachine>(
    inputs: PlanInputs<'_, D>,
    state_machine: &mut M,
    initial_state: &[u8],
) -> Result<Result<RecoveryPlan<D>, DamagedSnapshot>, EngineError> {
    let PlanInputs {
        root, config, mode, ..
    } = inputs;
    let snapshots = plan_snapshots(inputs, state_machine).await?;
    // The journal's one streaming pass also replays: each entry is read once.
    let watched = snapshots
        .identity
        .map(|_| snapshots.chosen_op)
        .into_iter()
        .collect();
    let mut replayer = Replayer::new(state_machine, snapshots.chosen_op, watched);
    let journal = MetadataJournal::plan_with(root, config.journal.clone(), mode, &mut |event| {
        replayer.consume(event)
    })
    .await?;
    if let Some(misplaced) = misplaced(&snapshots, &replayer, mode)? {
        return Ok(Err(misplaced));
    }
    let snapshot_op = snapshots.chosen_op;
    let Decided {
        commit_op,
        gap,
        steps,
    } = decide(&snapshots, &replayer, &journal, inputs)?;
    let through = gap.map_or(commit_op, |g| g.first_op - 1);
    let replay = finish_replay(replayer, &journal, through, config)?;
    Ok(Ok(RecoveryPlan {
        snapshot_op,
        snapshot_file: snapshots.chosen_file,
        snapshot_ops: snapshots.ops,
        damaged: snapshots.damaged,
        snapshot_temps: snapshots.temps,
        journal: Some(journal),
        commit_op,
        gap,
        replay,
        initial_state: (snapshot_op == 0).then(|| initial_state.to_vec()),
        steps,
    }))
}

/// What the open's table decided for a pass, when it opens.
struct Decided {
    commit_op: u64,
    gap: Option<OpRange>,
    steps: &'static [Step],
}

/// The open's facts, computed from the snapshot chosen and the journal's plan, and the row of
/// the open's table they match: its steps, or its refusal as the typed error naming the ops.
fn decide<D: Directory, M: StateMachine>(
    snapshots: &SnapshotChoice,
    replayer: &Replayer<'_, M>,
    journal: &OpenPlan<D>,
    inputs: PlanInputs<'_, D>,
) -> Result<Decided, EngineError> {
    let PlanInputs {
        config,
        mode,
        evidence,
        ..
    } = inputs;
    let snapshot_op = snapshots.chosen_op;
    let journal_snapshot_op = journal.snapshot_op().unwrap_or(0);
    let below = (snapshot_op < journal_snapshot_op)
        .then(|| held_below_watermark(snapshots, replayer, journal_snapshot_op));
    let commit_op = snapshot_op
        .max(journal.commit_op())
        .max(snapshots.proven_commit())
        .max(evidence.closed_commit_op);
    let gap = first_gap(
        snapshot_op.max(journal_snapshot_op),
        commit_op,
        journal.live_ops(),
    );
    let facts = OpenFacts {
        mode,
        coverage: match &below {
            None => Coverage::Reaches,
            Some(Ok(())) => Coverage::HeldBelow,
            Some(Err(_)) => Coverage::CompactedBelow,
        },
        committed_gap: gap.is_some(),
        checkpoint_interrupted: checkpoint_watermark(snapshots, config) > journal_snapshot_op,
        superseded: replayer.invalidated,
    };
    let steps = match open_row_for(facts).decision {
        OpenDecision::Open(steps) => steps,
        OpenDecision::Refuse(Refusal::OpsCompacted) => {
            return Err(below
                .and_then(Result::err)
                .expect("compacted below the watermark"));
        }
        OpenDecision::Refuse(Refusal::CommittedMissing) => {
            let gap = gap.expect("a committed gap");
            let journal_commit_op = journal.commit_op();
            return Err(committed_but_missing(
                gap,
                commit_op,
                journal_commit_op,
                evidence,
            ));
        }
    };
    Ok(Decided {
        commit_op,
        gap,
        steps,
    })
}

/// The journal watermark the chosen snapshot's checkpoint sets (its op, or the previous
/// snapshot's when the journal keeps a fallback): above the journal's, that checkpoint was
/// interrupted.
fn checkpoint_watermark(snapshots: &SnapshotChoice, config: &EngineConfig) -> u64 {
    let snapshot_op = snapshots.chosen_op;
    if config.journal_covers_previous_snapshot {
        previous_snapshot_op(&snapshots.ops, snapshot_op)
    } else {
        snapshot_op
    }
}

/// The newest snapshot op in `ops` (ascending) below `snapshot_op` (0: none).
fn previous_snapshot_op(ops: &[u64], snapshot_op: u64) -> u64 {
    ops.iter()
        .rev()
        .find(|&&op| op < snapshot_op)
        .copied()
        .unwrap_or(0)
}

/// The refusal for committed ops absent from the journal and every snapshot.
fn committed_but_missing(
    gap: OpRange,
    commit_op: u64,
    journal_commit_op: u64,
    evidence: DirEvidence,
) -> EngineError {
    let source = if evidence.closed_commit_op == commit_op && commit_op > journal_commit_op {
        "the last clean close recorded it in MANIFEST"
    } else {
        "the journal's or a snapshot's watermark"
    };
    let reason = format!(
        "committed through op {commit_op} ({source}) but absent from the journal and every \
         snapshot"
    );
    missing(gap.first_op, gap.last_op, reason)
}

/// The chosen snapshot's recorded chain position must be where the journal's entry for its op
/// is (when the journal still holds that entry outside a rewritten segment): else it is another
/// history's, returned to be excluded (refused in `Absolute` mode).
fn misplaced<M: StateMachine>(
    snapshots: &SnapshotChoice,
    replayer: &Replayer<'_, M>,
    mode: RecoveryMode,
) -> Result<Option<DamagedSnapshot>, EngineError> {
    let op = snapshots.chosen_op;
    let (Some(identity), Some(Some(found))) = (snapshots.identity, replayer.positions.get(&op))
    else {
        return Ok(None);
    };
    if identity.journal_seq == 0
        || (identity.journal_seq == found.seq && identity.chain_crc == found.chain_crc)
    {
        return Ok(None);
    }
    let file = snapshots.chosen_file.clone().unwrap_or_default();
    let reason = format!(
        "it records op {op} at journal seq {} (chain crc {:#010x}), the journal holds it at \
         seq {} (chain crc {:#010x})",
        identity.journal_seq, identity.chain_crc, found.seq, found.chain_crc
    );
    let action = file_action(FileFact::Misplaced, Place::Candidate, mode);
    if action == FileAction::Refuse {
        return Err(SnapshotError::Foreign { file, reason }.into());
    }
    assert_eq!(
        action,
        FileAction::SetAside,
        "the file table on a misplaced snapshot"
    );
    tracing::warn!(%file, op, %reason, "snapshot of another history; falling back");
    Ok(Some(DamagedSnapshot {
        op,
        file,
        len_bytes: snapshots.chosen_len_bytes,
        damage: SnapshotDamage::Misplaced,
        reason,
    }))
}

/// A snapshot below the journal's watermark: the ops between them must still be in the journal's
/// files (a checkpoint moves the watermark before compaction removes them), else exactly the ops
/// gone are named as missing, with why.
fn held_below_watermark<M: StateMachine>(
    snapshots: &SnapshotChoice,
    replayer: &Replayer<'_, M>,
    journal_snapshot_op: u64,
) -> Result<(), EngineError> {
    let snapshot_op = snapshots.chosen_op;
    // A replay by reads (after a superseded applied op) reaches only the index, above the
    // watermark.
    let held_through = if replayer.invalidated {
        snapshot_op
    } else {
        replayer.applied_op
    };
    if held_through >= journal_snapshot_op {
        tracing::warn!(
            snapshot_op,
            journal_snapshot_op,
            "falling back below the journal's watermark: its files still hold the ops between"
        );
        return Ok(());
    }
    let newer: Vec<String> = snapshots
        .damaged
        .iter()
        .map(|d| format!("the snapshot at op {} ({})", d.op, d.damage))
        .collect();
    let why = if newer.is_empty() {
        "no snapshot reaches the journal's watermark".to_string()
    } else {
        format!("{} cannot be used", newer.join(", "))
    };
    let (last_missing, how) = if replayer.invalidated {
        let how = "an applied op is superseded later in the log, and a replay by reads reaches \
                   only ops above the watermark";
        (journal_snapshot_op, how)
    } else {
        // Exactly the ops gone: up to the first one the files still hold.
        let last = replayer
            .first_pending()
            .map_or(journal_snapshot_op, |op| (op - 1).min(journal_snapshot_op));
        (last, "compacted")
    };
    let reason = format!(
        "{why}; the journal's watermark is op {journal_snapshot_op} and its files no longer \
         hold ops {}-{last_missing} ({how})",
        held_through + 1
    );
    Err(missing(held_through + 1, last_missing, reason))
}

/// The streaming replay's result, or `None` when a later entry superseded an op it applied
/// (then the open replays by reads from the final index).
fn finish_replay<D: Directory, M: StateMachine>(
    replayer: Replayer<'_, M>,
    journal: &OpenPlan<D>,
    through: u64,
    config: &EngineConfig,
) -> Result<Option<Replay>, EngineError> {
    if replayer.invalidated {
        tracing::info!(
            through,
            "an applied op is superseded later in the log; replaying by reads"
        );
        return Ok(None);
    }
    let replay = replayer.finish(through, |op| journal.holds(op));
    check_replay(&replay, through, config, journal.snapshot_op().unwrap_or(0))?;
    Ok(Some(replay))
}

/// The streaming replay must end exactly where the plan says the state ends.
fn check_replay(
    replay: &Replay,
    applied_through: u64,
    config: &EngineConfig,
    journal_snapshot_op: u64,
) -> Result<(), EngineError> {
    if replay.applied_op > applied_through {
        // The log holds committed ops its index cannot (it was written with a larger ring).
        return Err(EngineError::Config(format!(
            "the journal holds committed ops through {} but a ring of {} slots above op \
             {journal_snapshot_op} indexes only through {applied_through}; open it with the \
             slot count it was written with",
            replay.applied_op, config.journal.slot_count
        )));
    }
    assert_eq!(
        replay.applied_op, applied_through,
        "the replay and the journal's index disagree on the committed ops"
    );
    Ok(())
}

fn missing(first_op: u64, last_op: u64, reason: String) -> EngineError {
    tracing::error!(first_op, last_op, %reason, "recovery refused: ops missing");
    EngineError::MissingOps {
        first_op,
        last_op,
        reason,
    }
}

/// The first committed op range above the snapshot that the journal does not hold.
fn first_gap(
    snapshot_op: u64,
    commit_op: u64,
    live_ops: impl Iterator<Item = u64>,
) -> Option<OpRange> {
    let mut expected = snapshot_op + 1;
    for op in live_ops {
        if op < expected {
            continue;
        }
        if op > commit_op || expected > commit_op {
            break;
        }
        if op != expected {
            return Some(OpRange {
                first_op: expected,
                last_op: op - 1,
            });
        }
        expected = op + 1;
    }
    (expected <= commit_op).then_some(OpRange {
        first_op: expected,
        last_op: commit_op,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(first_op: u64, last_op: u64) -> Option<OpRange> {
        Some(OpRange { first_op, last_op })
    }

    #[test]
    fn gaps_are_found_between_snapshot_and_commit() {
        assert_eq!(first_gap(0, 0, [].into_iter()), None);
        assert_eq!(first_gap(0, 3, [1, 2, 3].into_iter()), None);
        assert_eq!(first_gap(0, 3, [2, 3].into_iter()), range(1, 1));
        assert_eq!(first_gap(0, 5, [1, 2, 4, 5].into_iter()), range(3, 3));
        assert_eq!(first_gap(0, 5, [1, 2].into_iter()), range(3, 5));
        // Ops at or below the snapshot and above the commit watermark do not matter.
        assert_eq!(first_gap(10, 12, [5, 11, 12, 20].into_iter()), None);
        assert_eq!(first_gap(10, 12, [11, 20].into_iter()), range(12, 12));
        assert_eq!(first_gap(10, 10, [].into_iter()), None);
    }
}
