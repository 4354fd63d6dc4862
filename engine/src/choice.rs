//! choice: which snapshot the state comes from — each file's facts judged by the snapshot-file
//! table (`policy.rs`): newest first, the first whole one of this directory and history whose
//! state restores is used; the damaged, foreign and misplaced ones are set aside (or refused in
//! `Absolute` mode); older files are judged only by whose they are.
//!
//! Owns reading and judging snapshot files for the plan, and the types that say why one is not
//! used. It must never create, write or remove a file (the open quarantines what it sets aside)
//! and never take an I/O error for damage.

use keel_journal::RecoveryMode;
use keel_storage::Directory;

use crate::error::{EngineError, SnapshotError};
use crate::manifest::{DirectoryId, Manifest};
use crate::policy::{file_action, FileAction, FileFact, Place};
use crate::snapshot::{snapshot_file_name, SnapshotIdentity, SnapshotStore};
use crate::state_machine::{RestoreError, StateMachine};
use crate::EngineConfig;

/// Why a snapshot file is fallen back from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SnapshotDamage {
    /// Its header or payload fails a checksum, or the header is malformed.
    Checksum,
    /// Its checksums hold but the state machine cannot restore the bytes.
    Restore,
    /// Whole, but another directory's (its directory id is not this directory's).
    Foreign,
    /// Whole and this directory's, but its op sits at another place in the journal's chain
    /// than the journal's entry for that op: a snapshot of another history.
    Misplaced,
}

impl std::fmt::Display for SnapshotDamage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl SnapshotDamage {
    /// Every damage.
    pub const ALL: [SnapshotDamage; 4] = [
        SnapshotDamage::Checksum,
        SnapshotDamage::Restore,
        SnapshotDamage::Foreign,
        SnapshotDamage::Misplaced,
    ];

    /// The printed name of the repair and problem it makes (docs/cli.md).
    pub fn name(self) -> &'static str {
        match self {
            SnapshotDamage::Checksum => "snapshot_checksum",
            SnapshotDamage::Restore => "snapshot_restore",
            SnapshotDamage::Foreign => "snapshot_foreign",
            SnapshotDamage::Misplaced => "snapshot_misplaced",
        }
    }

    /// Whether the file still proves its op committed here: damage to this directory's own
    /// snapshot does, another directory's or another history's snapshot does not.
    pub fn proves_commit(self) -> bool {
        matches!(self, SnapshotDamage::Checksum | SnapshotDamage::Restore)
    }
}

/// What the directory knows about itself beyond its journal and snapshots (its manifest).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct DirEvidence {
    /// The directory's id (zero: unknown, no snapshot is judged foreign).
    pub directory_id: DirectoryId,
    /// Every op up to it was committed (the last clean close recorded it).
    pub closed_commit_op: u64,
}

impl DirEvidence {
    /// What the manifest lets the plan judge (nothing, without one).
    pub(crate) fn of(manifest: Option<&Manifest>) -> Self {
        manifest.map_or_else(DirEvidence::default, |m| DirEvidence {
            directory_id: m.directory_id,
            closed_commit_op: m.closed_commit_op,
        })
    }
}

/// A snapshot the plan falls back from.
#[derive(Debug, Clone)]
pub struct DamagedSnapshot {
    /// Its op.
    pub op: u64,
    /// Its full path.
    pub file: String,
    /// Its size.
    pub len_bytes: u64,
    /// What is wrong with it.
    pub damage: SnapshotDamage,
    /// The checksum or restore error, as text.
    pub reason: String,
}

/// What one planning pass works from.
pub(crate) struct PlanInputs<'a, D> {
    pub(crate) root: &'a D,
    pub(crate) config: &'a EngineConfig,
    pub(crate) mode: RecoveryMode,
    pub(crate) evidence: DirEvidence,
    /// Snapshots an earlier pass found misplaced.
    pub(crate) excluded: &'a [DamagedSnapshot],
}

// By hand: a derive would ask `D: Copy`, and only references to it are held.
impl<D> Clone for PlanInputs<'_, D> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<D> Copy for PlanInputs<'_, D> {}

/// What the snapshots directory holds and which snapshot the state was restored from.
pub(crate) struct SnapshotChoice {
    pub(crate) chosen_op: u64,
    pub(crate) chosen_file: Option<String>,
    pub(crate) chosen_len_bytes: u64,
    /// Whose the chosen snapshot says it is.
    pub(crate) identity: Option<SnapshotIdentity>,
    pub(crate) ops: Vec<u64>,
    pub(crate) damaged: Vec<DamagedSnapshot>,
    pub(crate) temps: Vec<String>,
}

impl SnapshotChoice {
    /// The highest op a file fallen back from still proves committed (this directory's damaged
    /// snapshots do; another directory's or history's do not).
    pub(crate) fn proven_commit(&self) -> u64 {
        let proving = self.damaged.iter().filter(|d| d.damage.proves_commit());
        proving.map(|d| d.op).max().unwrap_or(0)
    }
}

/// Lists the snapshots (without creating the directory) and restores the newest one that is
/// whole, this directory's, not excluded, and restores; records the ones it falls back from.
pub(crate) async fn plan_snapshots<D: Directory, M: StateMachine>(
    inputs: PlanInputs<'_, D>,
    state_machine: &mut M,
) -> Result<SnapshotChoice, EngineError> {
    let mut choice = SnapshotChoice {
        chosen_op: 0,
        chosen_file: None,
        chosen_len_bytes: 0,
        identity: None,
        ops: Vec::new(),
        damaged: inputs.excluded.to_vec(),
        temps: Vec::new(),
    };
    let max_bytes = inputs.config.max_snapshot_bytes;
    let Some(store) = SnapshotStore::open_read_only(inputs.root, max_bytes).await? else {
        return Ok(choice);
    };
    choice.ops = store.list().await?;
    choice.temps = store.temp_names().await?;
    choose_snapshot(&store, inputs, state_machine, &mut choice).await?;
    Ok(choice)
}

/// Newest first: each file's facts go to the snapshot-file table (`policy.rs`), which says to
/// use it (the first whole one: this directory's, of this history, whose state restores), set it
/// aside (recorded, quarantined by the open), keep it, or refuse. An I/O error reading a file is
/// returned as it is, never taken for a fact.
async fn choose_snapshot<D: Directory, M: StateMachine>(
    store: &SnapshotStore<D>,
    inputs: PlanInputs<'_, D>,
    state_machine: &mut M,
    choice: &mut SnapshotChoice,
) -> Result<(), EngineError> {
    for &op in choice.ops.clone().iter().rev() {
        if inputs.excluded.iter().any(|d| d.op == op) {
            continue;
        }
        let file = store.path_of(&snapshot_file_name(op));
        let place = if choice.identity.is_some() {
            Place::Older
        } else {
            Place::Candidate
        };
        let evidence = inputs.evidence;
        let judged = read_and_judge(store, &file, op, place, evidence, state_machine).await?;
        match (file_action(judged.fact(), place, inputs.mode), judged) {
            (FileAction::Use, Judged::Whole(identity)) => {
                choice.chosen_op = op;
                choice.chosen_file = Some(file);
                choice.chosen_len_bytes = store.file_len(op).await.unwrap_or(0);
                choice.identity = Some(identity);
            }
            (FileAction::Keep, _) => {}
            (FileAction::Refuse, Judged::Damaged((_, _, error)) | Judged::Unreadable(error)) => {
                return Err(error.into())
            }
            (FileAction::SetAside, Judged::Damaged((damage, reason, _))) => {
                tracing::warn!(%file, op, %reason, kind = damage.name(), "snapshot not used; falling back to an older one");
                let len_bytes = store.file_len(op).await.unwrap_or(0);
                choice.damaged.push(DamagedSnapshot {
                    op,
                    file,
                    len_bytes,
                    damage,
                    reason,
                });
            }
            (action, judged) => panic!("the snapshot-file table orders {action:?} for {judged:?}"),
        }
    }
    Ok(())
}

/// What reading a snapshot file found.
#[derive(Debug)]
enum Judged {
    /// Usable: whose it is.
    Whole(SnapshotIdentity),
    /// Whole bytes or not, damage the plan can fall back from.
    Damaged(Fault),
    /// A newer format version: not damage.
    Unreadable(SnapshotError),
}

impl Judged {
    fn fact(&self) -> FileFact {
        match self {
            Judged::Whole(_) => FileFact::Whole,
            Judged::Damaged((SnapshotDamage::Checksum, ..)) => FileFact::Checksum,
            Judged::Damaged((SnapshotDamage::Restore, ..)) => FileFact::NoRestore,
            Judged::Damaged((SnapshotDamage::Foreign, ..)) => FileFact::Foreign,
            Judged::Damaged((SnapshotDamage::Misplaced, ..)) => FileFact::Misplaced,
            Judged::Unreadable(_) => FileFact::UnknownVersion,
        }
    }
}

/// Reads a snapshot file (an older one's header alone: it is judged only by whose it is) and
/// judges it; the candidate's state is restored into `state_machine`.
async fn read_and_judge<D: Directory, M: StateMachine>(
    store: &SnapshotStore<D>,
    file: &str,
    op: u64,
    place: Place,
    evidence: DirEvidence,
    state_machine: &mut M,
) -> Result<Judged, EngineError> {
    let read = match place {
        Place::Older => store.header(op).await.map(|h| (h.identity, Vec::new())),
        Place::Candidate => store.load_with_identity(op).await,
    };
    let (identity, bytes) = match read {
        Ok(loaded) => loaded,
        Err(SnapshotError::Checksum { file, reason }) => {
            let error = SnapshotError::Checksum {
                file,
                reason: reason.clone(),
            };
            return Ok(Judged::Damaged((SnapshotDamage::Checksum, reason, error)));
        }
        Err(error @ SnapshotError::UnknownVersion { .. }) => return Ok(Judged::Unreadable(error)),
        Err(other) => return Err(other.into()),
    };
    let restore = (place == Place::Candidate).then_some(state_machine);
    Ok(match judge(file, op, identity, evidence, &bytes, restore) {
        Ok(()) => Judged::Whole(identity),
        Err(fault) => Judged::Damaged(fault),
    })
}

type Fault = (SnapshotDamage, String, SnapshotError);

/// Whether a whole snapshot file may be used: this directory's, and (when `restore` is given,
/// for the one chosen) its state restores into that state machine.
fn judge<M: StateMachine>(
    file: &str,
    op: u64,
    identity: SnapshotIdentity,
    evidence: DirEvidence,
    bytes: &[u8],
    restore: Option<&mut M>,
) -> Result<(), Fault> {
    let theirs = identity.directory_id;
    let ours = evidence.directory_id;
    if !theirs.is_none() && !ours.is_none() && theirs != ours {
        let reason = format!("it belongs to directory {theirs}, this directory is {ours}");
        let error = SnapshotError::Foreign {
            file: file.to_string(),
            reason: reason.clone(),
        };
        return Err((SnapshotDamage::Foreign, reason, error));
    }
    let Some(state_machine) = restore else {
        return Ok(());
    };
    state_machine
        .restore(bytes)
        .map_err(|RestoreError { reason }| {
            let error = SnapshotError::Decode {
                file: file.to_string(),
                op,
                reason: reason.clone(),
            };
            (SnapshotDamage::Restore, reason, error)
        })
}
