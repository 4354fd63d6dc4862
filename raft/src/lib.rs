//! keel-raft: keel as [openraft](https://docs.rs/openraft)'s log and state-machine storage, on
//! compio (io_uring), thread-per-core.
//!
//! This crate owns the mapping of a raft replica's durable state onto keel, and a loopback TCP
//! transport to run a cluster of such replicas. It must never report a log entry flushed before
//! an fsync covered it, never return from `save_vote` before the vote is durable, and never let a
//! write take effect ahead of one issued before it.
//!
//! # Layout of a store directory `DIR`
//!
//! ```text
//! DIR/LOCK                                     keel's flock: one process per store
//! DIR/journal/NNNNNNNNNNNNNNNNNNNN.wal         the raft log (keel-journal segments)
//! DIR/raft-meta                                vote + last purged log id (replaced atomically)
//! DIR/raft-snapshots/NNNNNNNNNNNNNNNNNNNN.snap state machine snapshots (keel's snapshot header)
//! DIR/quarantine/                              bytes the journal's recovery cut (keel's rule)
//! ```
//!
//! # The mapping, and why
//!
//! - **Log entry → journal entry.** Raft index `i` is journal op `i + 1` ([`op_of`]): openraft's
//!   log starts at index 0 (the initial membership), while keel's op 0 is "nothing" (the initial
//!   snapshot watermark; op 0 is at or below it and refused). The payload is the JSON of the whole
//!   openraft `Entry`, so the term travels with it and a reopened log is byte-for-byte the one
//!   written. The journal's checksums, chain and recovery table (DESIGN §4) protect it.
//! - **`append` → concurrent `journal.append`s** whose `IOFlushed` callback fires only once keel's
//!   group commit made them durable, in append order (see [`log_store`]'s `IoChain`). Batches
//!   openraft issues back to back share fsyncs.
//! - **Vote and last purged id → `DIR/raft-meta`**, replaced with temp + fsync + rename + directory
//!   fsync ([`meta`]). A vote is not a log entry (it must survive truncating the whole log) and
//!   changes rarely; the last purged id needs a term the journal's watermark cannot hold.
//! - **Committed log id → the journal's commit watermark** (`set_commit_op`), carried in the
//!   header of every later entry at no extra cost; a commit marker is written if the log goes idle
//!   for 10 ms, and on [`LogStore::sync`]. At open it is clamped to the recovered log.
//! - **`truncate_after` → `journal.truncate_after`** (a journaled marker, durable on return).
//! - **`purge` → meta file, then `journal.set_snapshot_op` + `compact`**: the meta file first,
//!   so the last purged id survives the entries. The journal's slot ring is the back-pressure
//!   bound: openraft must snapshot (and so purge) before the log grows `slot_count` entries past
//!   the last purge ([`StoreConfig::for_snapshot_policy`] sizes it).
//! - **State machine → keel's `KvStateMachine`**, in memory; snapshots are keel-format files
//!   persisted atomically ([`snapshot`]). Nothing is written on apply: at open the state is the
//!   newest snapshot plus the journal replayed up to the durable commit watermark (keel's own
//!   recovery rule), so `applied_state` after a restart is exactly what was durable.
//!
//! keel's `Engine` is not used as a whole: it applies its journal's payloads to the state machine
//! itself (openraft must drive apply, with responders and membership entries), refuses ops at or
//! below its commit watermark, and its snapshots carry no raft meta. This crate composes the same
//! parts (`MetadataJournal`, `KvStateMachine`, the snapshot format and persist, the `LOCK` file).
//!
//! # Threads
//!
//! Everything is `!Send` and lives on one compio runtime (openraft's `single-threaded` feature):
//! one node = one thread = one core. [`cluster`] runs nodes on their own threads and talks over
//! 127.0.0.1 with length-prefixed frames ([`network`]).
//!
//! # Limits (known, and why they are acceptable here)
//!
//! - The live log is bounded by the journal's slot ring. openraft purges only behind its own
//!   snapshots (and postpones a purge while a replication RPC still reads the range), so an
//!   append that would pass the ring fails with [`RaftStoreError::LogFull`], which openraft treats
//!   as fatal. Waiting instead would deadlock: the purge that frees slots runs on the same core
//!   loop that is waiting for the append. Size the ring from the snapshot policy.
//! - Log entries and RPC frames are JSON: simple and debuggable; at these entry sizes the
//!   fdatasyncs, not the encoding, bound the throughput.
//! - A snapshot travels as one frame (at most [`network::MAX_FRAME_BYTES`]); openraft's
//!   cancellation of a snapshot transfer is not observed mid-frame.
//! - `purge` runs inline (barrier, meta file, watermark, compaction): a few fsyncs once per
//!   snapshot. The tail latency measured with and without snapshots did not differ beyond the
//!   noise of a 2-core machine, so it was not moved to the background.

#![allow(async_fn_in_trait)]

pub mod cluster;
pub mod codec;
mod durable;
pub mod error;
pub mod kv;
pub mod log_store;
pub mod machine;
pub mod meta;
pub mod network;
pub mod snapshot;
pub mod state_machine;
pub mod store;
pub mod typ;

/// The compio runtime keel-raft runs on (the same copy openraft's compio runtime uses).
pub use compio;
/// openraft, at the exact version and features keel-raft is built with. Use it from here (never a
/// direct dependency of your own): a second copy of openraft or compio in one binary does not
/// interoperate, and two compio runtimes panic at run time.
pub use openraft;
/// openraft's compio runtime: the `AsyncRuntime` of every [`KeelConfig`].
pub use openraft_rt_compio::CompioRuntime;

pub use error::RaftStoreError;
pub use kv::{KvRequest, KvResponse};
pub use log_store::LogStore;
pub use machine::{AppStateMachine, EntryCommand};
pub use state_machine::{KvStateMachineStore, SnapshotData, StateMachineStore};
pub use store::{open, open_kv, OpenReport, StoreConfig};

/// An openraft type configuration keel-raft can store: any `RaftTypeConfig` on the compio
/// runtime. Implemented for every such configuration; nothing to implement by hand.
pub trait KeelConfig: openraft::RaftTypeConfig<AsyncRuntime = CompioRuntime> {}

impl<C: openraft::RaftTypeConfig<AsyncRuntime = CompioRuntime>> KeelConfig for C {}

openraft::declare_raft_types!(
    /// openraft's type configuration for a keel-backed key-value replica.
    pub TypeConfig:
        D = KvRequest,
        R = KvResponse,
        NodeId = u64,
        Node = openraft::BasicNode,
        AsyncRuntime = openraft_rt_compio::CompioRuntime,
);

/// A key-value raft node on the real file system.
pub type Raft = openraft::Raft<TypeConfig, KvStateMachineStore<keel_storage::FsDirectory>>;

/// The journal op that holds raft log index `index` (see the crate docs).
pub fn op_of(index: u64) -> u64 {
    index + 1
}

/// The raft log index held by journal op `op` (`op >= 1`).
pub fn index_of(op: u64) -> u64 {
    op - 1
}

/// The op (file name) of a snapshot whose last log id is `last`: [`op_of`] its index, 0 for none.
pub fn snapshot_op_of<CLID>(last: Option<&openraft::LogId<CLID>>) -> u64
where
    CLID: openraft::vote::RaftCommittedLeaderId,
{
    last.map(|l| op_of(l.index)).unwrap_or(0)
}
