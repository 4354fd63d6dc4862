//! Short names for openraft's generic types instantiated with keel's key-value
//! [`crate::TypeConfig`]. Generic code uses `openraft::alias::*Of<C>` instead.

use crate::TypeConfig;

pub type Vote = <TypeConfig as openraft::RaftTypeConfig>::Vote;
pub type LeaderId = <TypeConfig as openraft::RaftTypeConfig>::LeaderId;
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub type Entry = <TypeConfig as openraft::RaftTypeConfig>::Entry;
pub type EntryPayload = openraft::alias::EntryPayloadOf<TypeConfig>;
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
pub type Node = <TypeConfig as openraft::RaftTypeConfig>::Node;
pub type LogState = openraft::storage::LogState<TypeConfig>;
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
pub type SnapshotData = crate::SnapshotData;
pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotData>;
pub type IOFlushed = openraft::storage::IOFlushed<TypeConfig>;
pub type StorageError = openraft::StorageError<TypeConfig>;
