//! [`StateMachineStore`]: openraft's `RaftStateMachine` and `RaftSnapshotBuilder` over an
//! application's [`AppStateMachine`], with snapshots in keel-format files ([`crate::snapshot`]).
//!
//! The state machine itself is not written on apply: it is rebuilt at open from the newest
//! snapshot plus the journal's entries up to the durable commit watermark (see `store::open`).
//! That is keel's own recovery rule (snapshot + replay of committed ops), and it keeps the write
//! path at one journal fsync per batch.

use std::cell::RefCell;
use std::io;
use std::io::Cursor;
use std::rc::Rc;

use futures::lock::Mutex;
use futures::{Stream, TryStreamExt};
use keel_engine::KvStateMachine;
use keel_storage::Directory;
use openraft::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::entry::RaftEntry;
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{OptionalSend, RaftSnapshotBuilder, StoredMembership};

use crate::error::RaftStoreError;
use crate::machine::{AppStateMachine, EntryCommand};
use crate::snapshot::{decode_envelope, encode_envelope, SnapshotFiles};
use crate::{snapshot_op_of, KeelConfig, TypeConfig};

/// The bytes of a snapshot as openraft hands them around: the envelope ([`crate::snapshot`]).
pub type SnapshotData = Cursor<Vec<u8>>;

/// The applied state, in memory.
pub(crate) struct SmState<C: KeelConfig, M> {
    pub machine: M,
    pub last_applied: Option<LogIdOf<C>>,
    pub last_membership: StoredMembershipOf<C>,
    /// The snapshot `get_current_snapshot` returns: its file's op and its meta.
    pub current: Option<(u64, SnapshotMetaOf<C>)>,
}

impl<C: KeelConfig, M: AppStateMachine<C>> Default for SmState<C, M> {
    fn default() -> Self {
        Self {
            machine: M::default(),
            last_applied: None,
            last_membership: StoredMembership::default(),
            current: None,
        }
    }
}

impl<C: KeelConfig, M: AppStateMachine<C>> SmState<C, M>
where
    C::Entry: EntryCommand<C::D>,
{
    /// Applies one entry; the response goes to the client that proposed it (if on this node).
    pub(crate) fn apply_entry(&mut self, entry: &C::Entry) -> C::R {
        let log_id = entry.log_id();
        if let Some(membership) = entry.get_membership() {
            self.last_membership = StoredMembership::new(Some(log_id.clone()), membership);
        }
        let response = self.machine.apply(&log_id, entry.command());
        self.last_applied = Some(log_id);
        response
    }
}

pub(crate) struct SmInner<C: KeelConfig, M, D: Directory> {
    files: SnapshotFiles<D>,
    state: RefCell<SmState<C, M>>,
    /// Serializes snapshot persists (a build running while a snapshot is installed would
    /// otherwise race on files and on which one is current).
    persist_lock: Mutex<()>,
    _lock: Rc<D::Lock>,
}

/// openraft's state machine over the application's machine `M`, for the type configuration `C`,
/// with snapshot files in the keel [`Directory`] `D`. A cheap handle: clones share one state (the
/// clone openraft asks for as its snapshot builder snapshots the same state).
pub struct StateMachineStore<C: KeelConfig, M, D: Directory + 'static> {
    inner: Rc<SmInner<C, M, D>>,
}

/// The state machine store of keel's key-value replica.
pub type KvStateMachineStore<D> = StateMachineStore<TypeConfig, KvStateMachine, D>;

impl<C: KeelConfig, M, D: Directory + 'static> Clone for StateMachineStore<C, M, D> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<D: Directory + 'static> StateMachineStore<TypeConfig, KvStateMachine, D> {
    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<String> {
        self.read(|kv| {
            kv.get(key.as_bytes())
                .map(|v| String::from_utf8_lossy(v).into_owned())
        })
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.read(KvStateMachine::len)
    }

    /// True when no key is set.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// keel's digest of the whole key-value state (equal states, equal digests).
    pub fn digest(&self) -> u64 {
        self.read(KvStateMachine::digest)
    }
}

impl<C: KeelConfig, M: AppStateMachine<C>, D: Directory + 'static> StateMachineStore<C, M, D> {
    pub(crate) fn new(files: SnapshotFiles<D>, state: SmState<C, M>, lock: Rc<D::Lock>) -> Self {
        Self {
            inner: Rc::new(SmInner {
                files,
                state: RefCell::new(state),
                persist_lock: Mutex::new(()),
                _lock: lock,
            }),
        }
    }

    /// Reads the application's machine (queries, digests). `f` must not call back into the store.
    pub fn read<R>(&self, f: impl FnOnce(&M) -> R) -> R {
        f(&self.inner.state.borrow().machine)
    }

    /// The last applied log id.
    pub fn last_applied(&self) -> Option<LogIdOf<C>> {
        self.inner.state.borrow().last_applied.clone()
    }

    /// The last membership applied (with its log id).
    pub fn last_membership(&self) -> StoredMembershipOf<C> {
        self.inner.state.borrow().last_membership.clone()
    }

    /// The op (file name) and meta of the current snapshot, if any.
    pub fn current_snapshot_meta(&self) -> Option<(u64, SnapshotMetaOf<C>)> {
        self.inner.state.borrow().current.clone()
    }

    /// Persists `payload` as the snapshot described by `meta` and makes it current, unless a newer
    /// snapshot became current meanwhile (then the older one is not worth a file).
    async fn persist(
        &self,
        meta: &SnapshotMetaOf<C>,
        payload: &[u8],
    ) -> Result<bool, RaftStoreError> {
        let _guard = self.inner.persist_lock.lock().await;
        let op = snapshot_op_of(meta.last_log_id.as_ref());
        let newer_current = self
            .inner
            .state
            .borrow()
            .current
            .as_ref()
            .is_some_and(|(current_op, _)| *current_op > op);
        if newer_current {
            return Ok(false);
        }
        self.inner.files.persist(op, payload).await?;
        self.inner.state.borrow_mut().current = Some((op, meta.clone()));
        Ok(true)
    }

    async fn build(&self) -> Result<SnapshotOf<C, SnapshotData>, RaftStoreError> {
        // Copy the state before the first await: the snapshot is of exactly one applied point.
        let (meta, payload) = {
            let state = self.inner.state.borrow();
            let meta = SnapshotMetaOf::<C> {
                last_log_id: state.last_applied.clone(),
                last_membership: state.last_membership.clone(),
            };
            let payload = encode_envelope::<C>(&meta, &state.machine.snapshot())?;
            (meta, payload)
        };
        self.persist(&meta, &payload).await?;
        tracing::debug!(last_log_id = ?meta.last_log_id, bytes = payload.len(), "built raft snapshot");
        Ok(SnapshotOf::<C, SnapshotData> {
            meta,
            snapshot: Cursor::new(payload),
        })
    }

    async fn install(
        &self,
        meta: &SnapshotMetaOf<C>,
        data: SnapshotData,
    ) -> Result<(), RaftStoreError> {
        let bytes = data.into_inner();
        let what = format!("snapshot {:?} received", meta.last_log_id);
        let (embedded, state_bytes) = decode_envelope::<C>(&what, &bytes)?;
        let mut machine = M::default();
        machine
            .restore(state_bytes)
            .map_err(|e| RaftStoreError::Restore {
                file: what.clone(),
                reason: e.reason,
            })?;
        // The meta openraft passes is authoritative; re-wrap only if the sender's differs.
        let payload = if embedded == *meta {
            bytes
        } else {
            encode_envelope::<C>(meta, state_bytes)?
        };
        // Durable before the state changes: a crash right after still finds this snapshot.
        self.persist(meta, &payload).await?;
        let mut state = self.inner.state.borrow_mut();
        state.machine = machine;
        state.last_applied = meta.last_log_id.clone();
        state.last_membership = meta.last_membership.clone();
        tracing::info!(last_log_id = ?meta.last_log_id, "installed raft snapshot");
        Ok(())
    }

    async fn current(&self) -> Result<Option<SnapshotOf<C, SnapshotData>>, RaftStoreError> {
        let current = self.inner.state.borrow().current.clone();
        let Some((op, meta)) = current else {
            return Ok(None);
        };
        let payload = self.inner.files.load(op).await?;
        Ok(Some(SnapshotOf::<C, SnapshotData> {
            meta,
            snapshot: Cursor::new(payload),
        }))
    }
}

impl<C, M, D> RaftSnapshotBuilder<C> for StateMachineStore<C, M, D>
where
    C: KeelConfig,
    M: AppStateMachine<C>,
    D: Directory + 'static,
{
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<C, SnapshotData>, io::Error> {
        Ok(self.build().await?)
    }
}

impl<C, M, D> RaftStateMachine<C> for StateMachineStore<C, M, D>
where
    C: KeelConfig,
    C::Entry: EntryCommand<C::D>,
    M: AppStateMachine<C>,
    D: Directory + 'static,
{
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogIdOf<C>>, StoredMembershipOf<C>), io::Error> {
        let state = self.inner.state.borrow();
        Ok((state.last_applied.clone(), state.last_membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<C>, io::Error>> + Unpin + OptionalSend,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
            // The borrow ends before the next await (the stream may yield to other tasks).
            let response = self.inner.state.borrow_mut().apply_entry(&entry);
            if let Some(responder) = responder {
                responder.send(response);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<C>,
        snapshot: SnapshotData,
    ) -> Result<(), io::Error> {
        Ok(self.install(meta, snapshot).await?)
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<SnapshotOf<C, SnapshotData>>, io::Error> {
        Ok(self.current().await?)
    }
}

/// Loads the newest valid snapshot into a fresh state; damaged ones are set aside and the next
/// older one is tried.
pub(crate) async fn load_newest<C: KeelConfig, M: AppStateMachine<C>, D: Directory>(
    files: &SnapshotFiles<D>,
) -> Result<SmState<C, M>, RaftStoreError> {
    let mut state = SmState::<C, M>::default();
    let ops = files.list().await?;
    for op in ops.into_iter().rev() {
        let loaded = files.load(op).await.and_then(|payload| {
            let what = format!("raft snapshot op {op}");
            let (meta, state_bytes) = decode_envelope::<C>(&what, &payload)?;
            let mut machine = M::default();
            machine
                .restore(state_bytes)
                .map_err(|e| RaftStoreError::Restore {
                    file: what,
                    reason: e.reason,
                })?;
            Ok((meta, machine))
        });
        match loaded {
            Ok((meta, machine)) => {
                state.machine = machine;
                state.last_applied = meta.last_log_id.clone();
                state.last_membership = meta.last_membership.clone();
                state.current = Some((op, meta));
                return Ok(state);
            }
            Err(error) => {
                tracing::error!(op, %error, "raft snapshot damaged; setting it aside and trying the previous one");
                files.set_aside(op).await?;
            }
        }
    }
    Ok(state)
}
