//! Running keel-backed raft nodes: one raft group per core. A node runs `shards` shards, each on
//! its own OS thread with its own compio runtime, its own keel store directory and its own
//! openraft group (shard `i` of every node forms group `i`); one listener per node hands each
//! connection to the shard its [`Hello`](crate::network::Hello) names. Plus clients that find each
//! group's leader and route requests to groups by key.
//!
//! Used by the cluster tests and the examples. Every loop here is bounded in time (and the retry
//! loops in count as well). Nothing here is shared between shards at run time but the listener's
//! hand-off channels: a shard's raft, store and connections live on its own thread.

use std::time::Duration;

use openraft::errors::{ClientWriteError, Fatal, InitializeError, RaftError};
use openraft::{Config, ConfigError, SnapshotPolicy};

use crate::error::RaftStoreError;
use crate::network::GroupId;
use crate::{KeelConfig, TypeConfig};

mod client;
mod load;
mod node;

pub use client::{group_of_key, Client, ShardedClient};
pub use load::{key_name, write_keys, Load, LoadReport};
pub use node::{
    bind_listeners, rebind, run_node, shard_dir, Bound, Medium, NodeConfig, NodeExit, NodeHandle,
    ShardExit,
};

/// How long a node runs at most if nobody stops it (a safety bound for tests and the examples).
pub const MAX_NODE_LIFETIME: Duration = Duration::from_secs(30 * 60);
/// Most shards (raft groups) one node runs.
pub const MAX_SHARDS: u32 = 64;
/// How often the listener and the shards look at their stop flags.
const POLL_INTERVAL: Duration = Duration::from_millis(5);

/// Errors of running a node or a client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError<C: KeelConfig = TypeConfig> {
    /// A store failed to open or sync.
    #[error("store: {0}")]
    Store(#[from] RaftStoreError),
    /// An I/O step of running a node failed.
    #[error("{what}: {source}")]
    Io {
        /// The step.
        what: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// openraft refused the configuration.
    #[error("raft config: {0}")]
    Config(#[from] ConfigError),
    /// A node configuration bound was violated.
    #[error("invalid node configuration: {0}")]
    Node(String),
    /// A group's raft stopped.
    #[error("raft stopped: {0}")]
    Fatal(#[from] Fatal<C>),
    /// Initializing the cluster failed.
    #[error("initialize: {0}")]
    Initialize(#[from] RaftError<C, InitializeError<C>>),
    /// openraft refused a client write (not a `ForwardToLeader`).
    #[error("client write refused: {0}")]
    Write(RaftError<C, ClientWriteError<C>>),
    /// The node refused a client write before raft (too large for the journal).
    #[error("client write rejected before raft: {0}")]
    Rejected(String),
    /// A client write did not succeed within its bounds.
    #[error("client write gave up after {attempts} attempts in {elapsed:?}; last error: {last}")]
    GaveUp {
        /// Attempts made.
        attempts: u32,
        /// Time spent.
        elapsed: Duration,
        /// The last attempt's error.
        last: String,
    },
    /// A shard failed on its own thread (its error, as text: a shard's typed errors carry the
    /// application's types, which need not cross threads).
    #[error("shard {group} failed: {error}")]
    Shard {
        /// The shard.
        group: GroupId,
        /// Its error.
        error: String,
    },
    /// A node or shard thread panicked.
    #[error("node thread panicked")]
    Panicked,
}

fn io_error<C: KeelConfig>(what: &'static str) -> impl FnOnce(std::io::Error) -> ClusterError<C> {
    move |source| ClusterError::Io { what, source }
}

/// openraft's timing for a loopback cluster, with snapshots every `logs_since_snapshot` entries
/// and `logs_kept` entries kept behind a snapshot (size the store with
/// [`crate::StoreConfig::for_snapshot_policy`] from the same two numbers).
pub fn raft_config(logs_since_snapshot: u64, logs_kept: u64) -> Result<Config, ConfigError> {
    Config {
        cluster_name: "keel".to_string(),
        heartbeat_interval: 100,
        election_timeout_min: 300,
        election_timeout_max: 600,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(logs_since_snapshot),
        max_in_snapshot_log_to_keep: logs_kept,
        ..Default::default()
    }
    .validate()
}
