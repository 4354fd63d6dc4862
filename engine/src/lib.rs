//! keel-engine: what a consensus loop on one core holds.
//!
//! The engine appends prepares to the journal (durable on return), applies committed ops to a
//! [`StateMachine`] in op order, checkpoints (snapshot → persist → journal watermark → compact →
//! drop older snapshots), and after a crash comes back to exactly the state it acknowledged
//! ([`Engine::open`] is `recover()`, returning a [`RecoveryReport`]).
//!
//! Layout of an engine directory `DIR`:
//!
//! ```text
//! DIR/LOCK                               flock held while an engine has DIR open
//! DIR/MANIFEST                           what the directory is: id, ring, segment size, shard
//! DIR/journal/NNNNNNNNNNNNNNNNNNNN.wal   the journal's segments (keel-journal)
//! DIR/snapshots/NNNNNNNNNNNNNNNNNNNN.snap  snapshots, 20-digit op in the name (the two newest)
//! DIR/quarantine/                        bytes recovery cut or set aside, never deleted by keel
//! ```
//!
//! A shard set ([`ShardSet`]) is `N` engines on `DIR/shard-<i>/`, one per thread and core.
//!
//! This crate is the only layer that knows both the journal and the state machine. It must never
//! apply an op above the durable commit watermark at recovery, never acknowledge a checkpoint
//! before its snapshot and directory are fsynced, and never move the journal's watermark past a
//! snapshot that is not durable.
//!
//! Concurrency: every method takes `&self`, so a core can have many prepares in flight (they share
//! the journal's group commits). No `RefCell` borrow is ever held across an await.
//!
//! # Example
//!
//! Prepare, commit and checkpoint on a key-value state machine, then a power cut: the reopened
//! engine is back at exactly the state it acknowledged.
//!
//! ```
//! use keel_engine::{encode_set, Engine, EngineConfig, KvStateMachine};
//! use keel_storage::MemFs;
//!
//! compio::runtime::Runtime::new().unwrap().block_on(async {
//!     let fs = MemFs::new(3);
//!     let mut config = EngineConfig::default();
//!     config.journal.segment_bytes = 1 << 20;
//!     let (engine, _report) = Engine::open(fs.root(), config.clone(), KvStateMachine::new())
//!         .await
//!         .unwrap();
//!     for (op, value) in [(1, "a"), (2, "b"), (3, "c")] {
//!         let mut command = Vec::new();
//!         encode_set(b"key", value.as_bytes(), &mut command).unwrap();
//!         engine.append(op, &command).await.unwrap(); // durable prepare
//!     }
//!     engine.commit(2).await.unwrap(); // applies ops 1 and 2
//!     engine.checkpoint().await.unwrap(); // a snapshot at op 2
//!     engine.commit(3).await.unwrap();
//!     engine.persist_commit().await.unwrap();
//!     drop(engine);
//!     fs.crash();
//!
//!     let (engine, report) = Engine::open(fs.root(), config, KvStateMachine::new())
//!         .await
//!         .unwrap();
//!     assert_eq!(report.snapshot_op, 2);
//!     assert_eq!(report.commit_op, 3);
//!     assert_eq!(engine.state_machine().get(b"key"), Some(&b"c"[..]));
//!     engine.close().await.unwrap();
//! });
//! ```

#![allow(async_fn_in_trait)]
#![deny(missing_docs)]

mod checkpoint;
mod choice;
mod config;
mod error;
mod kv;
mod lock;
mod manifest;
mod outcome;
mod plan;
pub mod policy;
mod range;
mod recover;
mod replay;
mod report;
mod shard;
mod snapshot;
mod snapshot_dir;
mod state_machine;
mod stats;
mod step;
mod verify;

use std::cell::{Cell, Ref, RefCell};
use std::collections::BTreeMap;
use std::time::Instant;

pub use bytes::Bytes;
use keel_journal::MetadataJournal;
use keel_storage::Directory;

pub use checkpoint::CheckpointReport;
pub use choice::SnapshotDamage;
pub use config::{EngineConfig, MAX_SNAPSHOT_BYTES_LIMIT};
pub use error::{EngineError, ManifestError, SnapshotError, SnapshotStage};
pub use keel_journal::{JournalConfig, JournalError, RecoveryMode, VerifyStatus};
pub use kv::{
    encode_delete, encode_set, KvCodecError, KvCommand, KvStateMachine, MAX_KEY_BYTES,
    MAX_VALUE_BYTES,
};
pub use lock::LOCK_FILE;
pub use manifest::{
    adopt_manifest, read_manifest, DirectoryId, Manifest, MANIFEST_FILE, MANIFEST_VERSION,
};
pub use range::OpRange;
pub use recover::repair;
pub use report::{
    journal_file, journal_repairs, recovery_mode_from_str, recovery_mode_name, PlannedRepair,
    ProblemKind, ProblemRecord, RecoveryReport, RecoveryStatus, RepairKind, RepairPlan,
    RepairRecord, VerifyReport,
};
pub use shard::{
    block_on, shard_dir_name, ShardConfig, ShardHandle, ShardReopen, ShardSet, ShardTask,
    MAX_SHARDS,
};
pub use snapshot::{
    decode_snapshot_file, decode_snapshot_header, encode_snapshot_file, encode_snapshot_file_with,
    list_snapshots, parse_snapshot_file_name, snapshot_file_name, snapshot_ops, SnapshotHeader,
    SnapshotIdentity, SnapshotInfo, SNAPSHOTS_DIR, SNAPSHOT_HEADER_BYTES, SNAPSHOT_MAGIC,
    SNAPSHOT_V1_HEADER_BYTES, SNAPSHOT_VERSION,
};
pub use snapshot_dir::SnapshotDir;
pub use state_machine::{ApplyError, RestoreError, SnapshotSource, StateMachine};
pub use stats::{EngineStats, Histogram, HISTOGRAM_MAX_VALUE};
pub use step::{CheckpointStep, StepAction, StepHook};
pub use verify::{plan_repair, verify};

use snapshot::SnapshotStore;

/// Name of the quarantine directory under an engine directory (shared with the journal).
pub const QUARANTINE_DIR: &str = "quarantine";

/// A durable prepare waiting for its commit.
pub(crate) struct Prepared {
    /// 0 for prepares found by recovery; otherwise the `append` call's order number.
    pub(crate) append_seq: u64,
    pub(crate) payload: Bytes,
}

/// Decrements its ops' in-flight counts however the append ends (returned or dropped midway).
struct InFlight<'a, M> {
    inner: &'a RefCell<Inner<M>>,
    ops: Vec<u64>,
}

impl<M> Drop for InFlight<'_, M> {
    fn drop(&mut self) {
        let mut inner = self.inner.borrow_mut();
        for op in &self.ops {
            if let Some(count) = inner.in_flight.get_mut(op) {
                *count -= 1;
                if *count == 0 {
                    inner.in_flight.remove(op);
                }
            }
        }
    }
}

/// Mutable state of one engine; borrowed only between awaits.
struct Inner<M> {
    state_machine: M,
    /// Highest op applied to the state machine (every op up to it, in order).
    applied_op: u64,
    /// Highest op known committed (the watermark handed to the journal). Equals `applied_op`
    /// except while a commit is being applied.
    commit_op: u64,
    /// Durable prepares above `applied_op`, waiting for their commit. Bounded by the journal's
    /// slot count (it refuses prepares further than that past the snapshot watermark).
    pending: BTreeMap<u64, Prepared>,
    /// Prepares whose journal append has not returned yet, by op (count of concurrent ones).
    /// A commit or truncation that covers one is refused: its bytes on disk are not settled.
    in_flight: BTreeMap<u64, u32>,
    /// Order of `append` calls, which is the journal's write order (each call reaches the
    /// journal in the same poll that numbers it), so of two racing rewrites of one op the one
    /// the journal wrote last is the one kept.
    next_append_seq: u64,
    /// Op of the newest durable snapshot (0: none).
    snapshot_op: u64,
    stats: EngineStats,
    /// Journal counters at the previous `stats()` call, for the batch-size samples.
    journal_appends_seen: u64,
    journal_batches_seen: u64,
}

/// The engine of one core: journal + snapshots + state machine. `!Send` (its storage is).
pub struct Engine<D: Directory, M: StateMachine> {
    root: D,
    config: EngineConfig,
    journal: MetadataJournal<D>,
    snapshots: SnapshotStore<D>,
    inner: RefCell<Inner<M>>,
    /// Set while the checkpoint coordinator runs: at most one checkpoint at a time.
    checkpointing: Cell<bool>,
    /// Set to `op` while `truncate_after(op)` runs: prepares above `op` are refused meanwhile, or
    /// one issued during the marker's write would land after it on disk yet be dropped from
    /// memory when the truncation finishes.
    truncating: Cell<Option<u64>>,
    /// What `DIR/MANIFEST` records; a clean close records its commit watermark there.
    manifest: manifest::Manifest,
    _lock: lock::DirLock<D>,
}

/// Clears [`Engine::truncating`] however `truncate_after` ends (a dropped future included).
struct Truncating<'a>(&'a Cell<Option<u64>>);

impl Drop for Truncating<'_> {
    fn drop(&mut self) {
        self.0.set(None);
    }
}

impl<D: Directory, M: StateMachine> Engine<D, M> {
    /// `recover()`: locks `root`, loads the newest valid snapshot (quarantining damaged ones),
    /// opens the journal with the configured mode's repairs, replays committed ops above the
    /// snapshot into `state_machine`, and keeps prepared-but-uncommitted ops pending.
    ///
    /// `state_machine` must be in its initial state; a snapshot, if any, replaces it.
    pub async fn open(
        root: D,
        config: EngineConfig,
        state_machine: M,
    ) -> Result<(Self, RecoveryReport), EngineError> {
        recover::open(root, config, state_machine).await
    }

    /// Prepares `op`: journals `payload` and returns once it is durable (group commit). Ops may
    /// arrive out of order and with gaps; a prepare of an op already prepared (not committed)
    /// replaces it. Fails with the journal's `Full` when `op` is too far past the snapshot.
    ///
    /// Dropping the future before it resolves leaves unknown whether the bytes reached the
    /// disk: prepare the op again before committing it.
    ///
    /// Copies `payload` once; [`Engine::append_bytes`] keeps a caller's `Bytes` instead.
    pub async fn append(&self, op: u64, payload: &[u8]) -> Result<(), EngineError> {
        self.append_bytes(op, Bytes::copy_from_slice(payload)).await
    }

    /// [`Engine::append`] for a payload the caller already holds as `Bytes`: the engine keeps
    /// that same buffer for the op until it is applied, and the journal copies it once, into its
    /// batch buffer.
    pub async fn append_bytes(&self, op: u64, payload: Bytes) -> Result<(), EngineError> {
        self.append_batch(&[(op, payload)]).await
    }

    /// Prepares several ops with one journal call: every op is checked first (a refusal
    /// prepares none), the journal writes them contiguously and resolves once all are durable
    /// (one group commit), and the engine keeps each `Bytes` as given. Same rules per op as
    /// [`Engine::append`]; a later op in the batch replaces an earlier one of the same number.
    pub async fn append_batch(&self, entries: &[(u64, Bytes)]) -> Result<(), EngineError> {
        let started = Instant::now();
        let len_bytes: u64 = entries.iter().map(|(_, p)| p.len() as u64).sum();
        let result = self.append_inner(entries).await;
        let mut inner = self.inner.borrow_mut();
        match &result {
            Ok(()) => {
                inner.stats.appends += entries.len() as u64;
                inner.stats.append_bytes += len_bytes;
                inner
                    .stats
                    .append_latency_us
                    .record(started.elapsed().as_micros() as u64);
            }
            Err(_) => inner.stats.append_errors += 1,
        }
        result
    }

    /// Refuses an op no prepare may take now.
    fn check_prepare(&self, op: u64, commit_op: u64) -> Result<(), EngineError> {
        if op == 0 {
            return Err(EngineError::ZeroOp);
        }
        if let Some(truncating_op) = self.truncating.get().filter(|&t| op > t) {
            return Err(EngineError::TruncateInProgress {
                op,
                truncate_op: truncating_op,
            });
        }
        if op <= commit_op {
            return Err(EngineError::AlreadyCommitted { op, commit_op });
        }
        Ok(())
    }

    async fn append_inner(&self, entries: &[(u64, Bytes)]) -> Result<(), EngineError> {
        let first_seq = {
            let mut inner = self.inner.borrow_mut();
            for (op, _) in entries {
                self.check_prepare(*op, inner.commit_op)?;
            }
            for (op, _) in entries {
                *inner.in_flight.entry(*op).or_insert(0) += 1;
            }
            let first_seq = inner.next_append_seq + 1;
            inner.next_append_seq += entries.len() as u64;
            first_seq
        };
        let guard = InFlight {
            inner: &self.inner,
            ops: entries.iter().map(|(op, _)| *op).collect(),
        };
        let result = self.journal.append_batch(entries).await;
        drop(guard);
        result?;
        let mut inner = self.inner.borrow_mut();
        for (i, (op, payload)) in entries.iter().enumerate() {
            let append_seq = first_seq + i as u64;
            // Commits and truncations covering `op` were refused while it was in flight, so
            // the op is still above the watermark.
            assert!(
                *op > inner.commit_op,
                "a commit covered an in-flight prepare"
            );
            let newer_on_disk = inner
                .pending
                .get(op)
                .is_some_and(|p| p.append_seq > append_seq);
            if !newer_on_disk {
                inner.pending.insert(
                    *op,
                    Prepared {
                        append_seq,
                        payload: payload.clone(),
                    },
                );
            }
        }
        Ok(())
    }

    /// Advances the commit watermark to `op` and applies every op up to it to the state machine,
    /// in order. Every op from the applied one up to `op` must have been prepared here (else
    /// `NotPrepared`, and nothing changes). Committing at or below the watermark is a no-op.
    ///
    /// The watermark reaches the disk with the next durable entry (or [`Engine::persist_commit`]);
    /// a crash before that recovers the ops as prepared-but-uncommitted, which the consensus
    /// layer re-commits. Refused with `PrepareInFlight` while a prepare of a covered op has not
    /// returned. May run an automatic checkpoint before returning (see
    /// [`EngineConfig::checkpoint_margin_ops`]); if that fails, the commit still succeeded: the
    /// failure is logged and counted in `checkpoint_failures`, and the next commit retries.
    pub async fn commit(&self, op: u64) -> Result<(), EngineError> {
        self.apply_through(op)?;
        // The commit itself succeeded; a failed automatic checkpoint is counted and logged (in
        // `checkpoint::run`) and retried at the next commit, not reported as a failed commit.
        if let Err(error) = self.maybe_checkpoint().await {
            tracing::warn!(%error, op, "automatic checkpoint after commit failed");
        }
        Ok(())
    }

    /// The synchronous part of `commit`: check, apply, hand the watermark to the journal.
    fn apply_through(&self, op: u64) -> Result<(), EngineError> {
        let mut inner = self.inner.borrow_mut();
        if op <= inner.commit_op {
            return Ok(());
        }
        if let Some((&in_flight_op, _)) = inner.in_flight.range(..=op).next() {
            return Err(EngineError::PrepareInFlight { op: in_flight_op });
        }
        // Check first so that a refused commit changes nothing.
        let mut expected = inner.applied_op + 1;
        for (&pending_op, _) in inner.pending.range(expected..=op) {
            if pending_op != expected {
                break;
            }
            expected += 1;
        }
        if expected <= op {
            return Err(EngineError::NotPrepared {
                op,
                missing_op: expected,
            });
        }
        let state = &mut *inner;
        while state.applied_op < op {
            let next = state.applied_op + 1;
            let Some(prepared) = state.pending.remove(&next) else {
                unreachable!("ops {next}..={op} were checked present above");
            };
            apply_one(
                &mut state.state_machine,
                &mut state.stats,
                next,
                &prepared.payload,
            );
            state.applied_op = next;
        }
        state.commit_op = op;
        state.stats.commits += 1;
        drop(inner);
        self.journal.set_commit_op(op);
        Ok(())
    }

    /// Writes the commit watermark durably now (a commit marker + fsync) instead of waiting for
    /// the next prepare to carry it.
    pub async fn persist_commit(&self) -> Result<(), EngineError> {
        self.journal.persist_commit().await?;
        Ok(())
    }

    /// Discards every prepared op above `op` (a view change); durable on return. `op` must be at
    /// or above the commit watermark; refused while a prepare above `op` is in flight.
    pub async fn truncate_after(&self, op: u64) -> Result<(), EngineError> {
        {
            let inner = self.inner.borrow();
            if op < inner.commit_op {
                return Err(EngineError::AlreadyCommitted {
                    op,
                    commit_op: inner.commit_op,
                });
            }
            if let Some((&in_flight_op, _)) = inner.in_flight.range(op + 1..).next() {
                return Err(EngineError::PrepareInFlight { op: in_flight_op });
            }
            if let Some(truncate_op) = self.truncating.get() {
                return Err(EngineError::TruncateInProgress { op, truncate_op });
            }
        }
        self.truncating.set(Some(op));
        let _truncating = Truncating(&self.truncating);
        self.journal.truncate_after(op).await?;
        let mut inner = self.inner.borrow_mut();
        // No prepare above `op` could start meanwhile, so memory drops exactly what the marker
        // drops on disk.
        assert!(
            inner.in_flight.range(op + 1..).next().is_none(),
            "a prepare above a truncation started while it ran"
        );
        inner.pending.split_off(&(op + 1));
        Ok(())
    }

    /// Makes everything written so far durable (for `sync_on_append = false`).
    pub async fn flush(&self) -> Result<(), EngineError> {
        self.journal.flush().await?;
        Ok(())
    }

    /// Runs the checkpoint coordinator at the current applied op: snapshot → persist → journal
    /// watermark → compact → drop older snapshots. `Ok(None)` when nothing was applied since the
    /// last snapshot; `CheckpointInProgress` if one is running.
    pub async fn checkpoint(&self) -> Result<Option<CheckpointReport>, EngineError> {
        checkpoint::run(self).await
    }

    /// Checkpoints if the journal's remaining capacity is under the margin and no checkpoint is
    /// running; `Ok(None)` otherwise.
    pub async fn maybe_checkpoint(&self) -> Result<Option<CheckpointReport>, EngineError> {
        if self.config.checkpoint_margin_ops == 0 || self.checkpointing.get() {
            return Ok(None);
        }
        if self.journal.remaining_capacity() >= self.config.checkpoint_margin_ops {
            return Ok(None);
        }
        {
            let inner = self.inner.borrow();
            if inner.applied_op <= inner.snapshot_op {
                return Ok(None);
            }
        }
        checkpoint::run(self).await
    }

    /// The state machine. Do not hold the borrow across an await (a concurrent commit would
    /// panic on the `RefCell`).
    pub fn state_machine(&self) -> Ref<'_, M> {
        Ref::map(self.inner.borrow(), |inner| &inner.state_machine)
    }

    /// Highest op applied to the state machine.
    pub fn applied_op(&self) -> u64 {
        self.inner.borrow().applied_op
    }

    /// Highest op committed (handed to the journal; durable once an entry carries it).
    pub fn commit_op(&self) -> u64 {
        self.inner.borrow().commit_op
    }

    /// Highest commit watermark known durable (journal or snapshot).
    pub fn durable_commit_op(&self) -> u64 {
        let snapshot_op = self.inner.borrow().snapshot_op;
        self.journal
            .durable_commit_op()
            .unwrap_or(0)
            .max(snapshot_op)
    }

    /// Op of the newest durable snapshot (`None`: none yet). A checkpoint snapshots only an
    /// applied op above the last snapshot's, and ops start at 1 ([`EngineError::ZeroOp`]), so
    /// op 0 is never a snapshot's op.
    pub fn snapshot_op(&self) -> Option<u64> {
        let op = self.inner.borrow().snapshot_op;
        (op > 0).then_some(op)
    }

    /// Highest op prepared or applied.
    pub fn last_op(&self) -> u64 {
        let inner = self.inner.borrow();
        let pending = inner.pending.keys().next_back().copied().unwrap_or(0);
        pending
            .max(inner.applied_op)
            .max(self.journal.last_op().unwrap_or(0))
    }

    /// Prepared ops above the commit watermark, ascending.
    pub fn prepared_ops(&self) -> Vec<u64> {
        self.inner.borrow().pending.keys().copied().collect()
    }

    /// The payload of a prepared (durable, not yet committed) op, e.g. to send to a peer.
    pub fn prepared_payload(&self, op: u64) -> Option<Bytes> {
        self.inner
            .borrow()
            .pending
            .get(&op)
            .map(|p| p.payload.clone())
    }

    /// How many more ops fit in the journal before `Full`.
    pub fn remaining_capacity(&self) -> u64 {
        self.journal.remaining_capacity()
    }

    /// The engine's directory.
    pub fn root(&self) -> &D {
        &self.root
    }

    /// The configuration it was opened with.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// A copy of the counters (journal counters folded in).
    pub fn stats(&self) -> EngineStats {
        let journal = self.journal.stats();
        let mut inner = self.inner.borrow_mut();
        let new_batches = journal.batches.saturating_sub(inner.journal_batches_seen);
        let new_appends = journal.appends.saturating_sub(inner.journal_appends_seen);
        if let Some(mean_ops) = new_appends.checked_div(new_batches) {
            inner.stats.batch_ops.record(mean_ops);
        }
        inner.journal_batches_seen = journal.batches;
        inner.journal_appends_seen = journal.appends;
        let mut stats = inner.stats.clone();
        stats.fsyncs = journal.fsyncs;
        stats.fsync_nanos_total = journal.fsync_nanos_total;
        stats.journal_batches = journal.batches;
        stats.segments_live = journal.segments_live;
        stats.segments_recycled = journal.spares_recycled;
        stats.snapshot_op = inner.snapshot_op;
        stats
    }

    /// Flushes and closes the journal, releases the lock, and hands back the state machine.
    pub async fn close(self) -> Result<M, EngineError> {
        // A clean close leaves nothing to re-decide: the commit watermark goes to disk too.
        let commit_op = self.inner.borrow().commit_op;
        if commit_op > self.journal.durable_commit_op().unwrap_or(0) {
            self.journal.persist_commit().await?;
        }
        let journal_commit = self.journal.durable_commit_op().unwrap_or(0);
        let Engine {
            root,
            journal,
            inner,
            mut manifest,
            _lock,
            ..
        } = self;
        journal.close().await?;
        // After the journal's own close: the manifest's watermark is evidence only once the
        // journal holds it durably too.
        let closed_commit_op = journal_commit.max(commit_op);
        if closed_commit_op != manifest.closed_commit_op {
            manifest.closed_commit_op = closed_commit_op;
            manifest::write_manifest(&root, &manifest).await?;
        }
        drop(_lock);
        Ok(inner.into_inner().state_machine)
    }
}

/// Applies one committed op; a rejected command is counted and logged, and still consumes the op
/// (see [`ApplyError`]).
fn apply_one<M: StateMachine>(sm: &mut M, stats: &mut EngineStats, op: u64, payload: &[u8]) {
    stats.applied_ops += 1;
    if let Err(error) = sm.apply(op, payload) {
        stats.apply_rejections += 1;
        tracing::warn!(op, %error, "state machine rejected a committed command; applied as a no-op");
    }
}
