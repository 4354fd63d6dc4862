//! Short names for openraft's generic types instantiated with keel's key-value
//! [`crate::TypeConfig`]. Generic code uses `openraft::alias::*Of<C>` instead.

use crate::TypeConfig;

/// The vote.
pub type Vote = <TypeConfig as openraft::RaftTypeConfig>::Vote;
/// The leader id (openraft's advanced one: several per term).
pub type LeaderId = <TypeConfig as openraft::RaftTypeConfig>::LeaderId;
/// A log id (committed leader id and index).
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
/// A log entry.
pub type Entry = <TypeConfig as openraft::RaftTypeConfig>::Entry;
/// A log entry's payload.
pub type EntryPayload = openraft::alias::EntryPayloadOf<TypeConfig>;
/// A membership with the log id that set it.
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
/// A member's node (`BasicNode`).
pub type Node = <TypeConfig as openraft::RaftTypeConfig>::Node;
/// The log's first and last ids.
pub type LogState = openraft::storage::LogState<TypeConfig>;
/// A snapshot's meta.
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
/// A snapshot's bytes.
pub type SnapshotData = crate::SnapshotData;
/// A snapshot: meta and bytes.
pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotData>;
/// The callback of an append.
pub type IOFlushed = openraft::storage::IOFlushed<TypeConfig>;
/// openraft's storage error.
pub type StorageError = openraft::StorageError<TypeConfig>;
