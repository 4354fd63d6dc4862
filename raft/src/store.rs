//! Opening a keel raft store: lock, meta, journal, log index, snapshot, replay.

use std::collections::BTreeMap;
use std::rc::Rc;

use keel_engine::{KvStateMachine, LOCK_FILE};
use keel_journal::{JournalConfig, LiveEntries, MetadataJournal, RecoveryMode, ScanReport};
use keel_storage::Directory;
use openraft::alias::{LogIdOf, VoteOf};
use openraft::entry::RaftEntry;

use crate::error::RaftStoreError;
use crate::log_store::{load_entries, LogMem, LogStore};
use crate::machine::{AppStateMachine, EntryCommand};
use crate::meta;
use crate::snapshot::SnapshotFiles;
use crate::state_machine::{load_newest, SmState, StateMachineStore};
use crate::{index_of, op_of, KeelConfig, TypeConfig};

/// Largest `slot_count` accepted: the ring is allocated up front.
pub const MAX_SLOT_COUNT: u64 = 1 << 22;

/// Tunables of one raft store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The journal's configuration. `slot_count` bounds the live log: openraft must snapshot
    /// (and so purge) before the log grows `slot_count` entries past the last purge, or appends
    /// fail with [`RaftStoreError::LogFull`]. Pair it with openraft's `SnapshotPolicy` and
    /// `max_in_snapshot_log_to_keep` (see [`StoreConfig::for_snapshot_policy`]). Default: sized
    /// for openraft's `LogsSinceLast(2000)` and 500 logs kept (16,384 slots, at most
    /// [`MAX_SLOT_COUNT`]) with 4 MiB segments; other fields and every limit as
    /// [`JournalConfig`] documents them.
    pub journal: JournalConfig,
    /// What the journal's recovery may repair (`docs/durability.md`). Default
    /// [`RecoveryMode::TolerateTornTail`].
    pub recovery_mode: RecoveryMode,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self::for_snapshot_policy(DEFAULT_LOGS_SINCE_SNAPSHOT, DEFAULT_LOGS_KEPT)
    }
}

/// openraft's snapshot policy the default config is sized for (`LogsSinceLast(..)`).
pub const DEFAULT_LOGS_SINCE_SNAPSHOT: u64 = 2000;
/// openraft's `max_in_snapshot_log_to_keep` the default config is sized for.
pub const DEFAULT_LOGS_KEPT: u64 = 500;

impl StoreConfig {
    /// A config whose slot ring holds the log openraft keeps with `SnapshotPolicy::LogsSinceLast
    /// (logs_since_snapshot)` and `max_in_snapshot_log_to_keep = logs_kept`, with 4× headroom for
    /// entries in flight while a snapshot is built and a purge runs (rounded to a power of two).
    pub fn for_snapshot_policy(logs_since_snapshot: u64, logs_kept: u64) -> Self {
        let live = logs_since_snapshot.saturating_add(logs_kept).max(256);
        let slot_count = live
            .saturating_mul(4)
            .next_power_of_two()
            .min(MAX_SLOT_COUNT);
        Self {
            journal: JournalConfig {
                slot_count,
                // Small segments: a purge deletes whole segments and rewrites at most one small
                // straddling segment, instead of rewriting most of one big live segment.
                segment_bytes: 4 << 20,
                ..JournalConfig::default()
            },
            recovery_mode: RecoveryMode::TolerateTornTail,
        }
    }

    /// Refuses a config whose journal cannot hold a log entry of `max_command_bytes` (plus
    /// openraft's envelope: log id and enum tags, well under 4 KiB).
    pub fn validate_for_commands(&self, max_command_bytes: usize) -> Result<(), RaftStoreError> {
        let needed = max_command_bytes.saturating_add(4 << 10);
        if self.journal.max_payload_bytes < needed {
            return Err(RaftStoreError::Config(format!(
                "journal max_payload_bytes {} cannot hold a log entry of the largest accepted \
                 command ({needed} bytes)",
                self.journal.max_payload_bytes
            )));
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), RaftStoreError> {
        let slots = self.journal.slot_count;
        if slots == 0 || !slots.is_power_of_two() || slots > MAX_SLOT_COUNT {
            return Err(RaftStoreError::Config(format!(
                "slot_count {slots} must be a power of two in 1..={MAX_SLOT_COUNT}"
            )));
        }
        Ok(())
    }
}

/// What opening a store found and repaired.
#[derive(Debug, Clone)]
pub struct OpenReport<C: KeelConfig = TypeConfig> {
    /// The journal's scan (repairs, quarantined bytes, lost ops).
    pub journal: ScanReport,
    /// The vote recovered from the meta file.
    pub vote: Option<VoteOf<C>>,
    /// The last purged log id recovered from the meta file.
    pub last_purged: Option<LogIdOf<C>>,
    /// First log index recovered (None: empty log).
    pub first_index: Option<u64>,
    /// Last log index recovered (None: empty log).
    pub last_index: Option<u64>,
    /// Entries found past a gap and discarded (never acknowledged; see `load_entries`).
    pub discarded_after_gap: Option<u64>,
    /// The committed log id recovered from the journal's durable commit watermark.
    pub committed: Option<LogIdOf<C>>,
    /// The snapshot loaded (its last log id), if any.
    pub snapshot: Option<LogIdOf<C>>,
    /// Entries re-applied above the snapshot, up to `committed`.
    pub replayed: u64,
}

/// Opens (creating) the raft store in `root`, returning openraft's two storage halves.
///
/// `root` is locked (keel's `LOCK` file) until both halves are dropped. Recovery: the journal is
/// scanned and repaired per `config.recovery_mode`; the log index is rebuilt from the entries
/// above the last purge, cut at the first gap (the cut is journaled, so it sticks); the committed
/// log id comes from the journal's durable commit watermark, clamped to the recovered log; the
/// state machine is the newest valid snapshot plus the log replayed up to that committed id. So
/// after a restart `applied_state` is exactly what was durable, and openraft resumes from there.
#[allow(clippy::type_complexity)]
pub async fn open<C, M, D>(
    root: D,
    config: StoreConfig,
) -> Result<(LogStore<C, D>, StateMachineStore<C, M, D>, OpenReport<C>), RaftStoreError>
where
    C: KeelConfig,
    C::Entry: EntryCommand<C::D>,
    M: AppStateMachine<C>,
    D: Directory + 'static,
{
    config.validate()?;
    let lock = root.lock(LOCK_FILE).await.map_err(|e| {
        RaftStoreError::io("lock", format!("{}/{LOCK_FILE}", root.display_path()), e)
    })?;
    let lock = Rc::new(lock);
    let meta = meta::load::<C, D>(&root).await?;
    let slot_count = config.journal.slot_count;
    let (journal, scan, live) = open_journal(&root, &config).await?;
    let (entries, discarded_after_gap) =
        recover_log::<C, D>(&journal, live, meta.last_purged.as_ref(), slot_count).await?;
    let last_entry = entries.values().next_back().map(|e| e.log_id());
    let committed = recovered_committed::<C, D>(&journal, &entries, meta.last_purged.clone());

    let files = SnapshotFiles::open(&root).await?;
    let mut sm_state = load_newest::<C, M, D>(&files).await?;
    let snapshot = sm_state.last_applied.clone();
    let replayed = replay(&mut sm_state, &entries, committed.as_ref());

    let report = OpenReport::<C> {
        journal: scan,
        vote: meta.vote.clone(),
        last_purged: meta.last_purged.clone(),
        first_index: entries.keys().next().copied(),
        last_index: last_entry.map(|l| l.index),
        discarded_after_gap,
        committed: committed.clone(),
        snapshot,
        replayed,
    };
    tracing::info!(
        dir = %root.display_path(),
        vote = ?report.vote,
        last_purged = ?report.last_purged,
        last_index = ?report.last_index,
        committed = ?report.committed,
        snapshot = ?report.snapshot,
        replayed,
        "opened raft store"
    );
    let mem = LogMem::<C> {
        entries,
        vote: meta.vote,
        committed,
        last_purged: meta.last_purged,
    };
    let log = LogStore::new(root, journal, slot_count, mem, lock.clone());
    let sm = StateMachineStore::new(files, sm_state, lock);
    Ok((log, sm, report))
}

/// Opens the journal in one streaming pass: the scan hands over every live entry, so the log is
/// loaded without a read per entry.
async fn open_journal<D: Directory>(
    root: &D,
    config: &StoreConfig,
) -> Result<(MetadataJournal<D>, ScanReport, LiveEntries), RaftStoreError> {
    let mut live = LiveEntries::default();
    let plan = MetadataJournal::plan_with(
        root,
        config.journal.clone(),
        config.recovery_mode,
        &mut |event| live.consume(event),
    )
    .await?;
    let (journal, scan) = MetadataJournal::open_planned(root, plan).await?;
    if scan.repairs.is_empty() {
        tracing::debug!(dir = %root.display_path(), entries = scan.entries_read, "opened raft journal");
    } else {
        tracing::warn!(dir = %root.display_path(), repairs = ?scan.repairs, "raft journal repaired at open");
    }
    Ok((journal, scan, live))
}

/// The log above the last purge, contiguous: finishes an interrupted purge and durably cuts the
/// entries past a gap (returned: the first missing index).
#[allow(clippy::type_complexity)]
async fn recover_log<C: KeelConfig, D: Directory>(
    journal: &MetadataJournal<D>,
    live: LiveEntries,
    last_purged: Option<&LogIdOf<C>>,
    slot_count: u64,
) -> Result<(BTreeMap<u64, C::Entry>, Option<u64>), RaftStoreError> {
    // A purge writes the meta file before it moves the journal's watermark; if the crash came
    // between the two, finish the move now so the ring's capacity is right.
    if let Some(purged) = last_purged {
        if op_of(purged.index) > journal.snapshot_op().unwrap_or(0) {
            journal.set_snapshot_op(op_of(purged.index)).await?;
        }
    }
    let mut live = live.into_entries();
    // Ops the journal no longer holds: a purge finished just above, or beyond its ring.
    live.retain(|op, _| journal.holds(*op));
    let (entries, gap) = load_entries::<C>(&live, last_purged.map(|l| l.index), slot_count)?;
    if let Some(first_missing) = gap {
        // Entries above the gap were written (batches may reach the disk out of order) but never
        // acknowledged; cut them durably so they cannot reappear above a later append.
        let keep_op = op_of(first_missing)
            .saturating_sub(1)
            .max(journal.snapshot_op().unwrap_or(0));
        journal.truncate_after(keep_op).await?;
        tracing::warn!(
            first_missing,
            "raft log had a gap; discarded the unacknowledged entries above it"
        );
    }
    Ok((entries, gap))
}

/// The committed log id: the journal's durable commit watermark, clamped to the recovered log.
fn recovered_committed<C: KeelConfig, D: Directory>(
    journal: &MetadataJournal<D>,
    entries: &BTreeMap<u64, C::Entry>,
    last_purged: Option<LogIdOf<C>>,
) -> Option<LogIdOf<C>> {
    let committed = journal.durable_commit_op().and_then(|commit_op| {
        // Committedness is a prefix property: everything in the recovered log up to the durable
        // watermark is committed, and the recovered log is contiguous.
        let index = index_of(commit_op);
        match entries.range(..=index).next_back() {
            Some((_, entry)) => Some(entry.log_id()),
            None => last_purged.clone().filter(|p| p.index <= index),
        }
    });
    committed.max(last_purged)
}

/// Applies the entries above the snapshot up to `committed` to the state; returns how many.
fn replay<C, M>(
    sm_state: &mut SmState<C, M>,
    entries: &BTreeMap<u64, C::Entry>,
    committed: Option<&LogIdOf<C>>,
) -> u64
where
    C: KeelConfig,
    C::Entry: EntryCommand<C::D>,
    M: AppStateMachine<C>,
{
    let Some(committed) = committed else {
        return 0;
    };
    let from = sm_state.last_applied.as_ref().map_or(0, |s| s.index + 1);
    if from > committed.index {
        return 0;
    }
    if !entries.contains_key(&from) {
        // Replaying past a hole would apply entries out of order; leave the state at the
        // snapshot and let openraft bring it forward (from peers if need be).
        tracing::warn!(
            from,
            committed = %committed,
            "log does not reach back to the snapshot; not replaying"
        );
        return 0;
    }
    let mut replayed = 0;
    for entry in entries.range(from..=committed.index).map(|(_, e)| e) {
        sm_state.apply_entry(entry);
        replayed += 1;
    }
    replayed
}

/// A keel key-value store: [`open`] with keel's [`TypeConfig`] and `KvStateMachine`, refusing a
/// journal that could not hold the largest command [`crate::KvRequest::validate`] accepts.
#[allow(clippy::type_complexity)]
pub async fn open_kv<D: Directory + 'static>(
    root: D,
    config: StoreConfig,
) -> Result<
    (
        LogStore<TypeConfig, D>,
        StateMachineStore<TypeConfig, KvStateMachine, D>,
        OpenReport<TypeConfig>,
    ),
    RaftStoreError,
> {
    config.validate_for_commands(crate::kv::MAX_COMMAND_BYTES)?;
    open(root, config).await
}
