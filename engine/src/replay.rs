//! replay: rebuilding the state machine from the journal's one streaming scan.
//!
//! Owns applying committed ops while the journal is scanned (each entry is read once, by the
//! scan): an op is applied as soon as the scan has seen both its entry and a commit watermark
//! written after it, in op order; prepares not yet covered are kept (their payloads copied once)
//! until a watermark covers them, a rewrite replaces them or a truncate marker drops them.
//!
//! Recovery's rule is "apply the newest live entry of each committed op". Applying early agrees
//! with it unless an op already applied is superseded later in the log — only possible after a
//! point-in-time recovery resumed below the log's commit watermark and ops were prepared again.
//! The replayer notices exactly that (`invalidated`), and recovery then replays the old way, one
//! read per entry from the final index ([`replay_by_reads`]). It must never apply an op above the
//! durable commit watermark, never apply out of order, and never leave a superseded version applied.

use std::collections::BTreeMap;

use bytes::Bytes;
use keel_journal::{EntryKind, EntryPosition, LiveMap, MetadataJournal, ScanEvent};
use keel_storage::Directory;

use crate::error::EngineError;
use crate::state_machine::StateMachine;
use crate::stats::EngineStats;
use crate::{apply_one, Prepared};

/// The replay state while the scan runs.
pub(crate) struct Replayer<'m, M: StateMachine> {
    state_machine: &'m mut M,
    /// The highest commit watermark the scan has seen (or that recovery knew before it).
    commit_known: u64,
    pub(crate) applied_op: u64,
    pub(crate) replayed: u64,
    /// Prepares above `applied_op`, newest entry per op, under the journal's liveness rule.
    pending: LiveMap<Bytes>,
    pub(crate) stats: EngineStats,
    snapshot_op: u64,
    /// An applied op was superseded (rewritten or truncated) later in the log.
    pub(crate) invalidated: bool,
    /// The chain position of the newest data entry of each watched op (the snapshots' ops).
    /// `None` for an entry in a segment compaction rewrote.
    pub(crate) positions: BTreeMap<u64, Option<EntryPosition>>,
    watched: Vec<u64>,
    in_rewritten: bool,
}

/// What a replay did.
pub(crate) struct Replay {
    pub(crate) applied_op: u64,
    pub(crate) replayed: u64,
    pub(crate) pending: BTreeMap<u64, Prepared>,
    pub(crate) stats: EngineStats,
}

impl<'m, M: StateMachine> Replayer<'m, M> {
    /// A replay on top of the snapshot at `snapshot_op` (ops at or below it are never applied).
    /// What recovery knows is committed from elsewhere (damaged snapshots' ops) is final-state
    /// knowledge, not a position in the log, so it is applied only by [`Replayer::finish`].
    ///
    /// Entries above `snapshot_op` are kept even when the journal's watermark is above it: a
    /// checkpoint moves the watermark before compaction removes them, so after a damaged newest
    /// snapshot the entries still in the files carry the state from the previous one (ops above
    /// a watermark can only have been written before it, and every op at or below it was
    /// committed). `watched` are the ops whose chain positions are recorded.
    pub(crate) fn new(state_machine: &'m mut M, snapshot_op: u64, watched: Vec<u64>) -> Self {
        Self {
            state_machine,
            commit_known: 0,
            applied_op: snapshot_op,
            replayed: 0,
            pending: LiveMap::default(),
            stats: EngineStats::default(),
            snapshot_op,
            invalidated: false,
            positions: BTreeMap::new(),
            watched,
            in_rewritten: false,
        }
    }

    /// Takes one scan event.
    pub(crate) fn consume(&mut self, event: ScanEvent<'_>) {
        match event {
            ScanEvent::Segment {
                snapshot_op,
                commit_op,
                rewritten,
                ..
            } => {
                self.in_rewritten = rewritten;
                self.pending.set_snapshot(snapshot_op.min(self.snapshot_op));
                self.commit_known = self.commit_known.max(commit_op);
            }
            ScanEvent::Entry {
                kind,
                seq,
                op,
                commit_op,
                chain_crc,
                payload,
            } => {
                self.commit_known = self.commit_known.max(commit_op);
                match kind {
                    EntryKind::Data => {
                        if self.watched.contains(&op) {
                            // A compaction rewrite gives its entries fresh seqs and a chain of
                            // their own: no position to compare with there.
                            let position =
                                (!self.in_rewritten).then_some(EntryPosition { seq, chain_crc });
                            self.positions.insert(op, position);
                        }
                        if op > self.snapshot_op && op <= self.applied_op {
                            self.invalidated = true;
                        }
                        if op > self.applied_op {
                            self.pending.insert(op, Bytes::copy_from_slice(payload));
                        }
                    }
                    EntryKind::Truncate => {
                        self.invalidated |= op < self.applied_op;
                        self.pending.truncate_after(op);
                    }
                    EntryKind::Snapshot => self.pending.set_snapshot(op.min(self.snapshot_op)),
                    EntryKind::Commit => self.commit_known = self.commit_known.max(op),
                }
            }
        }
        self.apply_through(self.commit_known);
    }

    /// The lowest op pending (seen, not yet applied), if any.
    pub(crate) fn first_pending(&self) -> Option<u64> {
        self.pending.ops().next()
    }

    /// Applies pending ops `applied_op+1..` in order while they are present and at most `through`.
    pub(crate) fn apply_through(&mut self, through: u64) {
        while self.applied_op < through {
            let next = self.applied_op + 1;
            let Some(payload) = self.pending.remove(next) else {
                return;
            };
            apply_one(self.state_machine, &mut self.stats, next, &payload);
            self.applied_op = next;
            self.replayed += 1;
        }
    }

    /// Applies what is still pending through `through` (the plan's final commit, or the op before
    /// its gap) and hands over the rest as prepares, limited to those `keep` says the journal's
    /// index holds.
    pub(crate) fn finish(mut self, through: u64, keep: impl Fn(u64) -> bool) -> Replay {
        self.apply_through(through);
        let pending = self
            .pending
            .into_entries()
            .into_iter()
            .filter(|(op, _)| keep(*op))
            .map(|(op, payload)| {
                let prepared = Prepared {
                    append_seq: 0,
                    payload,
                };
                (op, prepared)
            })
            .collect();
        Replay {
            applied_op: self.applied_op,
            replayed: self.replayed,
            pending,
            stats: self.stats,
        }
    }
}

/// The replay by one read per entry, from the opened journal's index (newest live entry per op):
/// applies ops `snapshot_op+1..=through` in order, stopping at the first missing one; keeps
/// prepares above it pending.
pub(crate) async fn replay_by_reads<D: Directory, M: StateMachine>(
    journal: &MetadataJournal<D>,
    state_machine: &mut M,
    snapshot_op: u64,
    through: u64,
    max_pending: u64,
) -> Result<Replay, EngineError> {
    let mut out = Replay {
        applied_op: snapshot_op,
        replayed: 0,
        pending: BTreeMap::new(),
        stats: EngineStats::default(),
    };
    let mut reader = journal.reader(snapshot_op + 1);
    while let Some(entry) = reader.next().await? {
        if entry.op <= snapshot_op {
            continue; // the reader starts above S; a defensive skip, never replayed twice
        }
        if entry.op <= through && entry.op == out.applied_op + 1 {
            apply_one(state_machine, &mut out.stats, entry.op, &entry.payload);
            out.applied_op = entry.op;
            out.replayed += 1;
            continue;
        }
        // The journal never holds more live ops than its ring; more is a journal bug.
        assert!(
            (out.pending.len() as u64) < max_pending,
            "journal returned more than {max_pending} live ops above op {snapshot_op}"
        );
        let prepared = Prepared {
            append_seq: 0,
            payload: entry.payload,
        };
        out.pending.insert(entry.op, prepared);
    }
    Ok(out)
}
