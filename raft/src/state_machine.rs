//! [`StateMachineStore`]: openraft's `RaftStateMachine` and `RaftSnapshotBuilder` on keel's
//! `KvStateMachine`, with snapshots in keel-format files ([`crate::snapshot`]).
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
use keel_engine::{KvStateMachine, StateMachine};
use keel_storage::Directory;
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{OptionalSend, RaftSnapshotBuilder};

use crate::error::RaftStoreError;
use crate::kv::{KvRequest, KvResponse};
use crate::snapshot::{decode_envelope, encode_envelope, SnapshotFiles};
use crate::typ::{
    Entry, EntryPayload, LogId, Snapshot, SnapshotData, SnapshotMeta, StoredMembership,
};
use crate::{snapshot_op_of, TypeConfig};

/// The applied state, in memory.
#[derive(Debug, Default)]
pub(crate) struct SmState {
    pub kv: KvStateMachine,
    pub last_applied: Option<LogId>,
    pub last_membership: StoredMembership,
    /// The snapshot `get_current_snapshot` returns: its file's op and its meta.
    pub current: Option<(u64, SnapshotMeta)>,
}

impl SmState {
    /// Applies one entry; the response goes to the client that proposed it (if on this node).
    pub(crate) fn apply_entry(&mut self, entry: &Entry) -> KvResponse {
        self.last_applied = Some(entry.log_id);
        match &entry.payload {
            EntryPayload::Blank => KvResponse::default(),
            EntryPayload::Normal(request) => {
                apply_request(&mut self.kv, entry.log_id.index, request)
            }
            EntryPayload::Membership(membership) => {
                self.last_membership =
                    StoredMembership::new(Some(entry.log_id), membership.clone());
                KvResponse::default()
            }
        }
    }
}

/// Applies a command through keel's codec; a command keel refuses (oversized key or value) is
/// applied as a no-op on every replica alike, as keel's engine does.
fn apply_request(kv: &mut KvStateMachine, index: u64, request: &KvRequest) -> KvResponse {
    let result = request
        .to_command_bytes()
        .map_err(|e| e.to_string())
        .and_then(|bytes| {
            kv.apply(crate::op_of(index), &bytes)
                .map_err(|e| e.to_string())
        });
    match result {
        Ok(()) => KvResponse::default(),
        Err(reason) => {
            tracing::warn!(index, %reason, "state machine rejected a committed command; applied as a no-op");
            KvResponse {
                rejected: Some(reason),
            }
        }
    }
}

pub(crate) struct SmInner<D: Directory> {
    files: SnapshotFiles<D>,
    state: RefCell<SmState>,
    /// Serializes snapshot persists (a build running while a snapshot is installed would
    /// otherwise race on files and on which one is current).
    persist_lock: Mutex<()>,
    _lock: Rc<D::Lock>,
}

/// openraft's state machine on keel's `KvStateMachine`. A cheap handle: clones share one state
/// (the clone openraft asks for as its snapshot builder snapshots the same state).
pub struct StateMachineStore<D: Directory + 'static> {
    inner: Rc<SmInner<D>>,
}

impl<D: Directory + 'static> Clone for StateMachineStore<D> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<D: Directory + 'static> StateMachineStore<D> {
    pub(crate) fn new(files: SnapshotFiles<D>, state: SmState, lock: Rc<D::Lock>) -> Self {
        Self {
            inner: Rc::new(SmInner {
                files,
                state: RefCell::new(state),
                persist_lock: Mutex::new(()),
                _lock: lock,
            }),
        }
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<String> {
        let state = self.inner.state.borrow();
        state
            .kv
            .get(key.as_bytes())
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.inner.state.borrow().kv.len()
    }

    /// True when no key is set.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// keel's digest of the whole key-value state (equal states, equal digests).
    pub fn digest(&self) -> u64 {
        self.inner.state.borrow().kv.digest()
    }

    /// The last applied log id.
    pub fn last_applied(&self) -> Option<LogId> {
        self.inner.state.borrow().last_applied
    }

    /// The last membership applied (with its log id).
    pub fn last_membership(&self) -> StoredMembership {
        self.inner.state.borrow().last_membership.clone()
    }

    /// The op (file name) and meta of the current snapshot, if any.
    pub fn current_snapshot_meta(&self) -> Option<(u64, SnapshotMeta)> {
        self.inner.state.borrow().current.clone()
    }

    /// Persists `payload` as the snapshot described by `meta` and makes it current, unless a newer
    /// snapshot became current meanwhile (then the older one is not worth a file).
    async fn persist(&self, meta: &SnapshotMeta, payload: &[u8]) -> Result<bool, RaftStoreError> {
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

    async fn build(&self) -> Result<Snapshot, RaftStoreError> {
        // Copy the state before the first await: the snapshot is of exactly one applied point.
        let (meta, payload) = {
            let state = self.inner.state.borrow();
            let meta = SnapshotMeta {
                last_log_id: state.last_applied,
                last_membership: state.last_membership.clone(),
            };
            let payload = encode_envelope(&meta, &state.kv.snapshot())?;
            (meta, payload)
        };
        self.persist(&meta, &payload).await?;
        tracing::debug!(last_log_id = ?meta.last_log_id, bytes = payload.len(), "built raft snapshot");
        Ok(Snapshot {
            meta,
            snapshot: Cursor::new(payload),
        })
    }

    async fn install(&self, meta: &SnapshotMeta, data: SnapshotData) -> Result<(), RaftStoreError> {
        let bytes = data.into_inner();
        let what = format!("snapshot {:?} received", meta.last_log_id);
        let (embedded, state_bytes) = decode_envelope(&what, &bytes)?;
        let mut kv = KvStateMachine::new();
        kv.restore(state_bytes)
            .map_err(|e| RaftStoreError::Restore {
                file: what.clone(),
                reason: e.reason,
            })?;
        // The meta openraft passes is authoritative; re-wrap only if the sender's differs.
        let payload = if embedded == *meta {
            bytes
        } else {
            encode_envelope(meta, state_bytes)?
        };
        // Durable before the state changes: a crash right after still finds this snapshot.
        self.persist(meta, &payload).await?;
        let mut state = self.inner.state.borrow_mut();
        state.kv = kv;
        state.last_applied = meta.last_log_id;
        state.last_membership = meta.last_membership.clone();
        tracing::info!(last_log_id = ?meta.last_log_id, "installed raft snapshot");
        Ok(())
    }

    async fn current(&self) -> Result<Option<Snapshot>, RaftStoreError> {
        let current = self.inner.state.borrow().current.clone();
        let Some((op, meta)) = current else {
            return Ok(None);
        };
        let payload = self.inner.files.load(op).await?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Cursor::new(payload),
        }))
    }
}

impl<D: Directory + 'static> RaftSnapshotBuilder<TypeConfig> for StateMachineStore<D> {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        Ok(self.build().await?)
    }
}

impl<D: Directory + 'static> RaftStateMachine<TypeConfig> for StateMachineStore<D> {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let state = self.inner.state.borrow();
        Ok((state.last_applied, state.last_membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
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
        meta: &SnapshotMeta,
        snapshot: SnapshotData,
    ) -> Result<(), io::Error> {
        Ok(self.install(meta, snapshot).await?)
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        Ok(self.current().await?)
    }
}

/// Loads the newest valid snapshot into a fresh state; damaged ones are set aside and the next
/// older one is tried.
pub(crate) async fn load_newest<D: Directory>(
    files: &SnapshotFiles<D>,
) -> Result<SmState, RaftStoreError> {
    let mut state = SmState::default();
    let ops = files.list().await?;
    for op in ops.into_iter().rev() {
        let loaded = files.load(op).await.and_then(|payload| {
            let what = format!("raft snapshot op {op}");
            let (meta, state_bytes) = decode_envelope(&what, &payload)?;
            let mut kv = KvStateMachine::new();
            kv.restore(state_bytes)
                .map_err(|e| RaftStoreError::Restore {
                    file: what,
                    reason: e.reason,
                })?;
            Ok((meta, kv))
        });
        match loaded {
            Ok((meta, kv)) => {
                state.kv = kv;
                state.last_applied = meta.last_log_id;
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
