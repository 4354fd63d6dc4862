//! keel-raft: keel as [openraft](https://docs.rs/openraft)'s log and state-machine storage, on
//! compio (io_uring), thread-per-core, for any openraft application; plus a TCP transport that
//! runs one raft group per core.
//!
//! This crate owns the mapping of a raft replica's durable state onto keel, and the transport
//! and node runner of a cluster of such replicas. It must never report a log entry flushed before
//! an fsync covered it, never return from `save_vote` before the vote is durable, and never let a
//! write take effect ahead of one issued before it.
//!
//! # Depend on keel-raft alone
//!
//! openraft's 0.10 alphas change their API between releases and a binary must hold exactly one
//! copy of compio (two copies panic at run time), so keel-raft re-exports both, at the versions
//! and features it is built with: [`openraft`] (`single-threaded`, `serde`, `type-alias`),
//! [`compio`] and [`CompioRuntime`]. An application declares its types through the re-export:
//!
//! ```
//! use keel_raft::openraft;
//! use keel_raft::openraft::alias::LogIdOf;
//!
//! #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
//! pub enum Command { Add(u64) }
//! impl std::fmt::Display for Command {
//!     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { write!(f, "{self:?}") }
//! }
//!
//! openraft::declare_raft_types!(
//!     pub Config:
//!         D = Command,
//!         R = u64,
//!         AsyncRuntime = keel_raft::CompioRuntime,
//! );
//!
//! /// The application's state machine: apply a committed entry, snapshot, restore.
//! #[derive(Default)]
//! pub struct Sum(u64);
//!
//! impl keel_raft::AppStateMachine<Config> for Sum {
//!     fn apply(&mut self, _log_id: &LogIdOf<Config>, command: Option<&Command>) -> u64 {
//!         if let Some(Command::Add(n)) = command { self.0 += n; }
//!         self.0
//!     }
//!     fn snapshot(&self) -> Vec<u8> { self.0.to_le_bytes().to_vec() }
//!     fn restore(&mut self, bytes: &[u8]) -> Result<(), keel_raft::machine::RestoreError> {
//!         let bytes: [u8; 8] = bytes.try_into().map_err(|_| keel_raft::machine::RestoreError {
//!             reason: format!("{} bytes, expected 8", bytes.len()),
//!         })?;
//!         self.0 = u64::from_le_bytes(bytes);
//!         Ok(())
//!     }
//! }
//!
//! // openraft's two storage halves on keel, for this application's types (here on keel's
//! // in-memory file system; `storage::FsDirectory` for a real directory).
//! let runtime = keel_raft::compio::runtime::Runtime::new().unwrap();
//! runtime.block_on(async {
//!     let fs = keel_raft::storage::MemFs::new(1);
//!     let config = keel_raft::StoreConfig::default();
//!     let (log, sm, report) = keel_raft::open::<Config, Sum, _>(fs.root(), config)
//!         .await
//!         .unwrap();
//!     assert_eq!(report.last_index, None);
//!     assert_eq!(sm.read(|sum| sum.0), 0);
//!     # drop((log, sm));
//! });
//! ```
//!
//! # Quick start: from one node to three
//!
//! [`cluster`] runs nodes (each shard on its own thread and compio runtime) and clients that
//! find the leader; [`network`] is the transport (binary frames over TCP). With keel's key-value
//! machine ([`TypeConfig`], [`KvRequest`]); an application passes its own machine to
//! [`cluster::NodeHandle::spawn`] instead (see `examples/registry.rs`):
//!
//! ```
//! use std::collections::BTreeMap;
//! use std::time::Duration;
//!
//! use keel_raft::cluster::{raft_config, Client, Medium, NodeConfig, NodeHandle};
//! use keel_raft::openraft::BasicNode;
//! use keel_raft::{KvRequest, StoreConfig};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let mut listeners = BTreeMap::new();
//! let mut nodes = BTreeMap::new();
//! for id in 1..=3u64 {
//!     let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
//!     nodes.insert(id, BasicNode::new(listener.local_addr().unwrap()));
//!     listeners.insert(id, listener);
//! }
//! let config = |id: u64| NodeConfig {
//!     id,
//!     dir: dir.path().join(format!("node-{id}")),
//!     // Each node starts knowing itself; node 1 initializes a group of one.
//!     members: BTreeMap::from([(id, nodes[&id].clone())]),
//!     initialize: id == 1,
//!     shards: 1,
//!     medium: Medium::Disk,
//!     raft: raft_config(1_000, 100).unwrap(),
//!     store: StoreConfig::for_snapshot_policy(1_000, 100),
//! };
//! let mut handles = Vec::new();
//! let one = listeners.remove(&1).unwrap();
//! handles.push(NodeHandle::spawn_kv(config(1), one).unwrap());
//!
//! let runtime = keel_raft::compio::runtime::Runtime::new().unwrap();
//! let mut client: Client = Client::new(&nodes);
//! let set = |k: &str| KvRequest::Set { key: k.into(), value: "v".into() };
//! runtime.block_on(client.write(set("a"))).unwrap(); // committed by node 1 alone
//!
//! for id in [2, 3] {
//!     let listener = listeners.remove(&id).unwrap();
//!     handles.push(NodeHandle::spawn_kv(config(id), listener).unwrap());
//!     // A learner until it caught up, then a voter.
//!     runtime.block_on(client.add_voter(id, nodes[&id].clone())).unwrap();
//! }
//! runtime.block_on(client.write(set("b"))).unwrap(); // on a majority of three
//! let statuses = runtime
//!     .block_on(client.wait_converged(&[1, 2, 3], 1, Duration::from_secs(30)))
//!     .unwrap();
//! assert!(statuses.iter().all(|s| s.digest == statuses[0].digest));
//! for handle in handles {
//!     handle.shutdown().unwrap();
//! }
//! ```
//!
//! # One raft group per core
//!
//! keel is the storage of a per-core replica, so a node runs [`cluster::NodeConfig::shards`]
//! shards: each on its own OS thread with its own compio runtime, its own store directory
//! (`DIR/shard-i`, or `DIR` itself with one shard) and its own openraft group (shard `i` of every
//! node forms group `i`). Nothing is shared between shards at run time: one listener per node
//! reads each new connection's first frame (a [`network::Hello`] naming the group) and hands the
//! connection to that shard's thread, which serves it from then on. Clients route requests to
//! groups by key ([`cluster::group_of_key`], [`cluster::ShardedClient`]).
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
//! - **Generic over the application.** [`LogStore`] and [`StateMachineStore`] implement
//!   openraft's storage traits for any [`KeelConfig`] (a `RaftTypeConfig` on [`CompioRuntime`]):
//!   the application's request and response types, node id and node. The state machine store
//!   drives the application's [`AppStateMachine`] (apply a committed entry, snapshot, restore);
//!   keel's `KvStateMachine` is one implementation ([`KvStateMachineStore`], [`open_kv`]). Every
//!   rule below holds for every configuration: it is one code path.
//! - **Log entry → journal entry.** Raft index `i` is journal op `i + 1` ([`op_of`]): openraft's
//!   log starts at index 0 (the initial membership), while keel's op 0 is "nothing" (the initial
//!   snapshot watermark; op 0 is at or below it and refused). The payload is the binary encoding
//!   ([`codec`]: a format byte, then postcard) of the whole openraft entry, so the term travels
//!   with it and a reopened log is the one written; entries an older build wrote as JSON still
//!   decode. The journal's checksums, chain and recovery table protect it
//!   (`docs/durability.md`).
//! - **`append` → one `journal.append_batch`** whose `IOFlushed` callback fires only once keel's
//!   group commit made it durable, in append order (see [`log_store`]'s `IoChain`). Batches
//!   openraft issues back to back share group commits.
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
//! - **State machine → the application's [`AppStateMachine`]**, in memory; snapshots are
//!   keel-format files persisted atomically ([`snapshot`]). Nothing is written on apply: at open the state is the
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
//! Everything of a group is `!Send` and lives on one compio runtime (openraft's
//! `single-threaded` feature): one shard = one thread = one core. [`cluster`] runs shards on
//! their own threads and talks TCP with length-prefixed binary frames ([`network`]).
//!
//! # Limits (known, and why they are acceptable here)
//!
//! - The live log is bounded by the journal's slot ring. openraft purges only behind its own
//!   snapshots (and postpones a purge while a replication RPC still reads the range), so an
//!   append that would pass the ring fails with [`RaftStoreError::LogFull`], which openraft treats
//!   as fatal. Waiting instead would deadlock: the purge that frees slots runs on the same core
//!   loop that is waiting for the append. Size the ring from the snapshot policy.
//! - A snapshot travels in chunks of at most [`network::MAX_SNAPSHOT_CHUNK_BYTES`]; the receiver
//!   gathers them in memory (at most [`network::MAX_SNAPSHOT_BYTES`]) before openraft installs
//!   the whole snapshot, which is then persisted (atomic replace) before the state changes. A
//!   transfer cut mid-way starts over from its first chunk.
//! - A node's listener reads each new connection's hello on its own thread, one at a time, for
//!   at most [`network::HELLO_TIMEOUT`]: a peer that connects and sends nothing delays other new
//!   connections (never established ones) by up to that long.
//! - The meta file's body and the snapshot envelope's meta stay JSON: written once per election,
//!   purge or snapshot (never per entry), and readable by the `keel` tool without the
//!   application's types.
//! - `purge` runs inline (barrier, meta file, watermark, compaction): a few fsyncs once per
//!   snapshot. The tail latency measured with and without snapshots did not differ beyond the
//!   noise of a 2-core machine, so it was not moved to the background.

#![allow(async_fn_in_trait)]
#![deny(missing_docs)]

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

/// keel's directory seam a store opens on: the real file system, or the in-memory one with its
/// crash model (tests, benchmarks' upper bound).
pub mod storage {
    pub use keel_storage::{DirAccess, Directory, FsDirectory, MemDirectory, MemFs};
}

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
