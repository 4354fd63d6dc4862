//! The application's side of the state machine: [`AppStateMachine`], the small trait an
//! application implements so keel-raft can apply its committed entries, snapshot it and restore
//! it; [`EntryCommand`], how the store finds the application's command in a log entry; and keel's
//! key-value machine as one implementation.
//!
//! The trait owns no I/O: the store ([`crate::StateMachineStore`]) persists the snapshot bytes in
//! keel's snapshot files and replays the journal after a restart. An implementation must be
//! deterministic (every replica applies the same entries to the same state) and must never fail
//! an apply: a command it refuses is answered as refused and leaves the state unchanged.

pub use keel_engine::RestoreError;
use keel_engine::{KvStateMachine, StateMachine};
use openraft::alias::LogIdOf;
use openraft::{EntryPayload, RaftTypeConfig};

use crate::kv::{KvRequest, KvResponse};
use crate::TypeConfig;

/// A deterministic application state machine driven by keel-raft.
///
/// `Default` is the empty state (before the first entry, and before a snapshot is restored).
pub trait AppStateMachine<C: RaftTypeConfig>: Default + 'static {
    /// Applies the committed entry `log_id`. `command` is the application's request, or `None`
    /// for a blank or membership entry (openraft still hands its response to whoever proposed
    /// it, e.g. a membership change). Called once per entry, in log order, per incarnation: after
    /// a restart the entries above the newest snapshot are applied again to the restored state.
    fn apply(&mut self, log_id: &LogIdOf<C>, command: Option<&C::D>) -> C::R;

    /// The whole state as bytes, at the last applied entry. Equal states should give equal bytes.
    fn snapshot(&self) -> Vec<u8>;

    /// Replaces the whole state with the one `bytes` encodes ([`AppStateMachine::snapshot`]'s
    /// output). On `Err` the state must be unchanged.
    fn restore(&mut self, bytes: &[u8]) -> Result<(), RestoreError>;

    /// A digest of the state: equal states give equal digests (replicas compare them to check
    /// they converged). The default hashes [`AppStateMachine::snapshot`]'s bytes.
    fn digest(&self) -> u64 {
        u64::from(crc32fast::hash(&self.snapshot()))
    }
}

/// How the store finds the application's command in a log entry. Implemented for openraft's own
/// `Entry` with `EntryPayload` (what `declare_raft_types!` uses unless told otherwise); an
/// application with its own entry type implements it for that type.
pub trait EntryCommand<D> {
    /// The application command this entry carries, if it is a normal entry.
    fn command(&self) -> Option<&D>;
}

impl<CLID, D, NID, N> EntryCommand<D> for openraft::Entry<CLID, EntryPayload<D, NID, N>>
where
    CLID: openraft::vote::RaftCommittedLeaderId,
    D: openraft::AppData,
    NID: openraft::NodeId,
    N: openraft::Node,
{
    fn command(&self) -> Option<&D> {
        match &self.payload {
            EntryPayload::Normal(command) => Some(command),
            EntryPayload::Blank | EntryPayload::Membership(_) => None,
        }
    }
}

/// keel's key-value machine. A command keel's codec refuses (oversized key or value) is applied
/// as a no-op on every replica alike, as keel's engine does, and answered as rejected.
impl AppStateMachine<TypeConfig> for KvStateMachine {
    fn apply(&mut self, log_id: &LogIdOf<TypeConfig>, command: Option<&KvRequest>) -> KvResponse {
        let Some(request) = command else {
            return KvResponse::default();
        };
        let index = log_id.index;
        let result = request
            .to_command_bytes()
            .map_err(|e| e.to_string())
            .and_then(|bytes| {
                StateMachine::apply(self, crate::op_of(index), &bytes).map_err(|e| e.to_string())
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

    fn snapshot(&self) -> Vec<u8> {
        StateMachine::snapshot(self)
    }

    fn restore(&mut self, bytes: &[u8]) -> Result<(), RestoreError> {
        StateMachine::restore(self, bytes)
    }

    fn digest(&self) -> u64 {
        KvStateMachine::digest(self)
    }
}
