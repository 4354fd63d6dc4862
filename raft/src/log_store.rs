//! [`LogStore`]: openraft's `RaftLogStorage` and `RaftLogReader` on keel's `MetadataJournal`.
//!
//! See the crate docs for the mapping; this module holds the write pipeline:
//!
//! - `append` decodes nothing and waits for nothing: it puts the entries in the in-memory index
//!   (readable at once, as openraft requires) and spawns one task that hands all of them to the
//!   journal as one `append_batch`, which joins the journal's group commit together with
//!   whatever else is in flight (one write-through write, or a write and an fdatasync, per
//!   group).
//! - Each such task is a link of an `IoChain`: it fires its `IOFlushed` callback only after its
//!   own entries are durable **and** the previous link has fired. Callbacks therefore fire in
//!   append order, and an acknowledged entry never has an unacknowledged one below it.
//! - `save_vote`, `truncate_after` and `purge` first wait for the whole chain (a barrier), so no
//!   write can take effect before one issued earlier (openraft's I/O ordering rule: a vote must
//!   not become durable ahead of log entries appended before it, and a truncation marker must land
//!   after the entries it discards or they would come back on restart).

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::rc::Rc;
use std::time::Duration;

use futures::channel::oneshot;
use futures::future::{FutureExt, Shared};
use keel_journal::{JournalStats, MetadataJournal};
use keel_storage::Directory;
use openraft::alias::{LogIdOf, VoteOf};
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};

use crate::codec;
use crate::error::RaftStoreError;
use crate::meta::{self, Meta};
use crate::{index_of, op_of, KeelConfig};

/// How long the log must be idle before the commit watermark is written with an explicit marker.
/// Under load every later entry carries it for free; the marker only matters once the log goes
/// idle, so that a restart re-applies everything committed without asking a peer.
const COMMIT_MARKER_DELAY: Duration = Duration::from_millis(10);

type Done = Shared<oneshot::Receiver<()>>;

/// Orders the completions of background writes (see the module docs).
#[derive(Default)]
struct IoChain {
    /// Completion of the newest link; awaiting it awaits every link before it.
    tail: RefCell<Option<Done>>,
    /// The first write error. openraft treats storage errors as fatal, and a journal that failed
    /// a write is poisoned, so every later operation reports it instead of trying again.
    failed: RefCell<Option<String>>,
    /// Links whose callback has not fired yet (for stats and tests).
    pending: Cell<u64>,
}

impl IoChain {
    /// Adds a link: returns the previous link's completion and this link's completion sender.
    fn link(&self) -> (Option<Done>, oneshot::Sender<()>) {
        let (tx, rx) = oneshot::channel();
        let prev = self.tail.replace(Some(rx.shared()));
        self.pending.set(self.pending.get() + 1);
        (prev, tx)
    }

    fn unlink(&self, done: oneshot::Sender<()>) {
        self.pending.set(self.pending.get() - 1);
        // The receiver may be gone (nobody waiting); that is fine.
        let _ = done.send(());
    }

    /// Waits until every link added so far has completed.
    async fn barrier(&self) -> Result<(), RaftStoreError> {
        let tail = self.tail.borrow().clone();
        if let Some(tail) = tail {
            // `Canceled` means the link's task was dropped (runtime shutting down): nothing more
            // will complete, and `check` reports a failure if there was one.
            let _ = tail.await;
        }
        self.check()
    }

    fn check(&self) -> Result<(), RaftStoreError> {
        match &*self.failed.borrow() {
            Some(message) => Err(RaftStoreError::Poisoned(message.clone())),
            None => Ok(()),
        }
    }

    fn fail(&self, error: &RaftStoreError) {
        let mut failed = self.failed.borrow_mut();
        if failed.is_none() {
            tracing::error!(%error, "raft log write failed; the store is poisoned");
            *failed = Some(error.to_string());
        }
    }
}

/// The log's state as kept in memory, mirroring what is durable (or in flight to the journal).
pub(crate) struct LogMem<C: KeelConfig> {
    /// Live entries by raft index. The journal's slot ring bounds them to `slot_count` past the
    /// last purge, so holding them decoded costs a bounded amount of memory and lets every read
    /// be served without a disk read or a decode.
    pub entries: BTreeMap<u64, C::Entry>,
    pub vote: Option<VoteOf<C>>,
    pub committed: Option<LogIdOf<C>>,
    pub last_purged: Option<LogIdOf<C>>,
}

pub(crate) struct LogInner<C: KeelConfig, D: Directory> {
    pub root: D,
    pub journal: MetadataJournal<D>,
    pub slot_count: u64,
    pub mem: RefCell<LogMem<C>>,
    chain: IoChain,
    /// A delayed commit-marker task is scheduled and has not run yet.
    commit_marker_scheduled: Cell<bool>,
    /// Held until both halves of the store are dropped (see `store::open`).
    pub _lock: Rc<D::Lock>,
}

/// openraft's log storage on keel's journal, for any [`KeelConfig`] (the application's type
/// configuration `C`) on any keel [`Directory`] `D`. A cheap handle: clones share one log (the
/// clone openraft asks for as its `LogReader` reads the same in-memory index).
pub struct LogStore<C: KeelConfig, D: Directory + 'static> {
    inner: Rc<LogInner<C, D>>,
}

impl<C: KeelConfig, D: Directory + 'static> Clone for LogStore<C, D> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<C: KeelConfig, D: Directory + 'static> LogStore<C, D> {
    pub(crate) fn new(
        root: D,
        journal: MetadataJournal<D>,
        slot_count: u64,
        mem: LogMem<C>,
        lock: Rc<D::Lock>,
    ) -> Self {
        Self {
            inner: Rc::new(LogInner {
                root,
                journal,
                slot_count,
                mem: RefCell::new(mem),
                chain: IoChain::default(),
                commit_marker_scheduled: Cell::new(false),
                _lock: lock,
            }),
        }
    }

    /// Waits until every append issued so far is durable and its callback fired, then writes the
    /// commit watermark durably. Call before dropping a store whose state a restart must see
    /// exactly (a clean shutdown); a crash instead loses at most the unacknowledged tail.
    pub async fn sync(&self) -> Result<(), RaftStoreError> {
        self.inner.chain.barrier().await?;
        if self.commit_not_durable() {
            self.inner.journal.persist_commit().await?;
        }
        self.inner.journal.flush().await?;
        Ok(())
    }

    /// Appends whose `IOFlushed` callback has not fired yet.
    pub fn pending_appends(&self) -> u64 {
        self.inner.chain.pending.get()
    }

    /// The journal's counters (appends, fsyncs, batches).
    pub fn journal_stats(&self) -> JournalStats {
        self.inner.journal.stats()
    }

    /// The committed log id as last saved (in memory; durable once an entry or marker carries it).
    pub fn committed(&self) -> Option<LogIdOf<C>> {
        self.inner.mem.borrow().committed.clone()
    }

    fn commit_not_durable(&self) -> bool {
        let committed = self.inner.mem.borrow().committed.as_ref().map(|c| c.index);
        match committed {
            None => false,
            Some(index) => self.inner.journal.durable_commit_op() < Some(op_of(index)),
        }
    }

    /// Makes the commit watermark durable once the log has been idle for [`COMMIT_MARKER_DELAY`]
    /// (see the constant's docs). While appends keep coming they carry the watermark, so the
    /// task only re-arms; it ends at the first idle period, or when the store is dropped.
    fn schedule_commit_marker(&self) {
        if self.inner.commit_marker_scheduled.replace(true) {
            return;
        }
        // Weak: a pending marker must not keep a dropped store (and its directory lock) alive.
        let weak = Rc::downgrade(&self.inner);
        let mut seen_appends = self.inner.journal.stats().appends;
        compio::runtime::spawn(async move {
            loop {
                compio::time::sleep(COMMIT_MARKER_DELAY).await;
                let Some(inner) = weak.upgrade() else {
                    return;
                };
                let appends = inner.journal.stats().appends;
                if appends != seen_appends {
                    seen_appends = appends;
                    continue;
                }
                let store = LogStore::<C, D> { inner };
                store.inner.commit_marker_scheduled.set(false);
                if store.inner.chain.check().is_err() || !store.commit_not_durable() {
                    return;
                }
                if let Err(error) = store.inner.journal.persist_commit().await {
                    store.inner.chain.fail(&error.into());
                }
                return;
            }
        })
        .detach();
    }

    fn log_state(&self) -> LogState<C> {
        let mem = self.inner.mem.borrow();
        let last = mem.entries.values().next_back().map(|e| e.log_id());
        LogState {
            last_purged_log_id: mem.last_purged.clone(),
            last_log_id: last.or_else(|| mem.last_purged.clone()),
        }
    }

    async fn append_entries(
        &self,
        entries: Vec<C::Entry>,
        callback: IOFlushed<C>,
    ) -> Result<(), RaftStoreError> {
        self.inner.chain.check()?;
        // Check the slot ring before touching anything, so a refused append changes nothing.
        let snapshot_op = self.inner.journal.snapshot_op().unwrap_or(0);
        let mut batch = Vec::with_capacity(entries.len());
        for entry in &entries {
            let op = op_of(entry.index());
            // The journal's own rule (one copy); an op at or below the watermark is the
            // journal's to refuse.
            let refusal = keel_journal::check_op(op, snapshot_op, self.inner.slot_count);
            if let Err(keel_journal::SlotRefusal::Full { .. }) = refusal {
                let last_purged = self
                    .inner
                    .mem
                    .borrow()
                    .last_purged
                    .as_ref()
                    .map(|l| l.index);
                return Err(RaftStoreError::LogFull {
                    index: entry.index(),
                    last_purged,
                    slot_count: self.inner.slot_count,
                });
            }
            let payload =
                codec::encode(entry).map_err(|e| RaftStoreError::encode("log entry", e))?;
            batch.push((op, payload));
        }
        {
            let mut mem = self.inner.mem.borrow_mut();
            for entry in entries {
                mem.entries.insert(entry.index(), entry);
            }
        }
        let (prev, done) = self.inner.chain.link();
        let inner = self.inner.clone();
        compio::runtime::spawn(async move {
            // One journal batch: checked whole, written contiguously, shared with whatever other
            // batch is in flight in the same group commit; resolved once durable.
            let error = inner.journal.append_batch(&batch).await.err();
            if let Some(prev) = prev {
                let _ = prev.await;
            }
            let result = match error {
                Some(error) => {
                    let error = RaftStoreError::from(error);
                    inner.chain.fail(&error);
                    Err(error)
                }
                None => inner.chain.check(),
            };
            callback.io_completed(result.map_err(RaftStoreError::into_io));
            inner.chain.unlink(done);
        })
        .detach();
        Ok(())
    }

    async fn write_meta(
        &self,
        vote: Option<VoteOf<C>>,
        last_purged: Option<LogIdOf<C>>,
    ) -> Result<(), RaftStoreError> {
        meta::store::<C, D>(&self.inner.root, &Meta { vote, last_purged }).await
    }

    async fn save_vote_inner(&self, vote: &VoteOf<C>) -> Result<(), RaftStoreError> {
        self.inner.chain.barrier().await?;
        let last_purged = self.inner.mem.borrow().last_purged.clone();
        self.write_meta(Some(vote.clone()), last_purged).await?;
        self.inner.mem.borrow_mut().vote = Some(vote.clone());
        Ok(())
    }

    async fn truncate_after_inner(&self, last: Option<LogIdOf<C>>) -> Result<(), RaftStoreError> {
        self.inner.chain.barrier().await?;
        let last = last.map(|l| l.index);
        let first_gone = last.map(|index| index + 1).unwrap_or(0);
        let any_gone = self
            .inner
            .mem
            .borrow()
            .entries
            .range(first_gone..)
            .next()
            .is_some();
        if any_gone {
            // Ops at or below the journal's snapshot watermark are gone already; the journal
            // refuses a marker below it.
            let keep_op = last
                .map(op_of)
                .unwrap_or(0)
                .max(self.inner.journal.snapshot_op().unwrap_or(0));
            self.inner.journal.truncate_after(keep_op).await?;
            self.inner.mem.borrow_mut().entries.split_off(&first_gone);
        }
        Ok(())
    }

    async fn purge_inner(&self, upto: LogIdOf<C>) -> Result<(), RaftStoreError> {
        // After the barrier no append at or below `upto` is in flight, so moving the journal's
        // watermark cannot make one of them fail as below the snapshot.
        self.inner.chain.barrier().await?;
        let (vote, previous) = {
            let mem = self.inner.mem.borrow();
            (mem.vote.clone(), mem.last_purged.as_ref().map(|p| p.index))
        };
        if previous.is_some_and(|p| p >= upto.index) {
            return Ok(());
        }
        // The meta file first: once the journal's watermark moves, the entries (and with them
        // the term of the last purged one) are gone, and `get_log_state` must still report it.
        self.write_meta(vote, Some(upto.clone())).await?;
        {
            let mut mem = self.inner.mem.borrow_mut();
            mem.last_purged = Some(upto.clone());
            mem.entries = mem.entries.split_off(&(upto.index + 1));
        }
        let op = op_of(upto.index);
        if op > self.inner.journal.snapshot_op().unwrap_or(0) {
            self.inner.journal.set_snapshot_op(op).await?;
            let report = self.inner.journal.compact().await?;
            tracing::debug!(
                upto = %upto,
                segments_deleted = report.segments_deleted,
                segments_rewritten = report.segments_rewritten,
                bytes_after = report.bytes_after,
                "purged the raft log"
            );
        }
        Ok(())
    }

    fn save_committed_inner(&self, committed: Option<LogIdOf<C>>) {
        let index = committed.as_ref().map(|c| c.index);
        self.inner.mem.borrow_mut().committed = committed;
        if let Some(index) = index {
            // The watermark rides in the header of every later journal entry (no extra write);
            // the delayed marker covers the case where no later entry comes.
            self.inner.journal.set_commit_op(op_of(index));
            self.schedule_commit_marker();
        }
    }
}

impl<C: KeelConfig, D: Directory + 'static> RaftLogReader<C> for LogStore<C, D>
where
    C::Entry: Clone,
{
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<C::Entry>, io::Error> {
        let mem = self.inner.mem.borrow();
        Ok(mem.entries.range(range).map(|(_, e)| e.clone()).collect())
    }

    async fn read_vote(&mut self) -> Result<Option<VoteOf<C>>, io::Error> {
        Ok(self.inner.mem.borrow().vote.clone())
    }
}

impl<C: KeelConfig, D: Directory + 'static> RaftLogStorage<C> for LogStore<C, D>
where
    C::Entry: Clone,
{
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<C>, io::Error> {
        self.inner.chain.check()?;
        Ok(self.log_state())
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf<C>) -> Result<(), io::Error> {
        Ok(self.save_vote_inner(vote).await?)
    }

    async fn save_committed(&mut self, committed: Option<LogIdOf<C>>) -> Result<(), io::Error> {
        self.inner.chain.check()?;
        self.save_committed_inner(committed);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogIdOf<C>>, io::Error> {
        Ok(self.inner.mem.borrow().committed.clone())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<C>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = C::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<C::Entry> = entries.into_iter().collect();
        Ok(self.append_entries(entries, callback).await?)
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogIdOf<C>>) -> Result<(), io::Error> {
        Ok(self.truncate_after_inner(last_log_id).await?)
    }

    async fn purge(&mut self, log_id: LogIdOf<C>) -> Result<(), io::Error> {
        Ok(self.purge_inner(log_id).await?)
    }
}

/// Rebuilds the in-memory log from the journal at open (see `store::open`).
///
/// Returns the contiguous entries from the first index after `last_purged`, and the first index
/// where the log stopped early (a gap), if any. Entries past a gap were never acknowledged:
/// callbacks fire in order, and the one of the missing entry never fired.
#[allow(clippy::type_complexity)]
pub(crate) fn load_entries<C: KeelConfig>(
    live: &BTreeMap<u64, keel_journal::Bytes>,
    last_purged: Option<u64>,
    slot_count: u64,
) -> Result<(BTreeMap<u64, C::Entry>, Option<u64>), RaftStoreError> {
    let first_index = last_purged.map(|index| index + 1).unwrap_or(0);
    let mut reader = live.range(op_of(first_index)..);
    let mut entries = BTreeMap::new();
    // The ring holds at most `slot_count` live ops above the watermark; more is a bug.
    for expected in (first_index..).take(slot_count as usize + 1) {
        let Some((&op, payload)) = reader.next() else {
            return Ok((entries, None));
        };
        let index = index_of(op);
        if index != expected {
            return Ok((entries, Some(expected)));
        }
        let entry: C::Entry = codec::decode_log_payload(payload)
            .map_err(|e| RaftStoreError::decode("log entry", e))?;
        if entry.index() != index {
            return Err(RaftStoreError::Misplaced {
                op,
                index: entry.index(),
                expected: index,
            });
        }
        entries.insert(index, entry);
    }
    Err(RaftStoreError::Config(format!(
        "the journal returned more than slot_count ({slot_count}) live entries"
    )))
}
