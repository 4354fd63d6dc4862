//! openraft's network over `compio::net` TCP, for any [`KeelConfig`] whose node type has an
//! address ([`NodeAddr`]), with length-prefixed binary frames and many raft groups per listener.
//!
//! Frame: `len:u32 big-endian` + a body of at most [`MAX_FRAME_BYTES`], the [`crate::codec`]
//! encoding (format byte + postcard) of one message. The first frame a client sends on a
//! connection is a [`Hello`] naming the raft group it talks to; the node's listener hands the
//! connection to that group's shard (its own thread and runtime), which serves it from then on.
//! One request and one response in flight per connection; a client reconnects lazily after any
//! I/O error, so a restarted peer is picked up by the next RPC.
//!
//! Requests are [`RpcRequest`]; the raft RPCs are answered with `Result<Resp, RaftError<E>>`,
//! where the client knows `Resp` and `E` from the request it sent. Snapshots travel in chunks of
//! at most [`MAX_SNAPSHOT_CHUNK_BYTES`] ([`SnapshotChunk`]); the receiver gathers them (at most
//! [`MAX_SNAPSHOT_BYTES`]) and installs the whole snapshot through openraft, which makes it
//! durable (keel's atomic replace) before the state machine changes. This module must never
//! install a snapshot whose chunks did not arrive in order and complete.

use std::time::Duration;

use openraft::alias::{LogIdOf, SnapshotMetaOf, VoteOf};
use openraft::errors::{ClientWriteError, Fatal, RaftError};
use openraft::raft::{AppendEntriesRequest, ClientWriteResponse, SnapshotResponse, VoteRequest};
use openraft::BasicNode;
use serde::{Deserialize, Serialize};

use crate::KeelConfig;

mod client;
mod frame;
mod server;

pub use client::{Connection, NetworkFactory};
pub use frame::{decode, encode, read_frame, read_hello, write_frame};
pub use server::{serve_connection, GroupContext};

/// Largest frame accepted either way (an append of openraft's `max_payload_entries` entries).
pub const MAX_FRAME_BYTES: usize = 256 << 20;
/// Largest snapshot chunk sent (openraft's `snapshot_max_chunk_size` is used when smaller).
pub const MAX_SNAPSHOT_CHUNK_BYTES: usize = 4 << 20;
/// Largest snapshot a receiver gathers in memory before installing it.
pub const MAX_SNAPSHOT_BYTES: u64 = 1 << 30;
/// How long the listener waits for a new connection's [`Hello`].
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(2);

/// Which raft group a connection talks to: shard `i` of every node forms group `i`.
pub type GroupId = u32;

/// A node type with a network address (`host:port`) its listener serves.
pub trait NodeAddr {
    /// The `host:port` to connect to.
    fn addr(&self) -> &str;
}

impl NodeAddr for BasicNode {
    fn addr(&self) -> &str {
        &self.addr
    }
}

/// The first frame of every connection: the raft group it is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Always [`Hello::MAGIC`]: a connection from something else is closed at once.
    pub magic: [u8; 4],
    /// The group (shard index).
    pub group: GroupId,
}

impl Hello {
    /// The magic of a keel-raft connection.
    pub const MAGIC: [u8; 4] = *b"KRPC";

    /// The hello of a connection to `group`.
    pub fn new(group: GroupId) -> Self {
        Self {
            magic: Self::MAGIC,
            group,
        }
    }
}

/// One piece of a snapshot in transfer. Chunks of one snapshot are sent in order, on one
/// connection; `offset_bytes + data.len() == total_bytes` marks the last.
#[derive(Debug, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct SnapshotChunk<C: KeelConfig> {
    /// The leader's vote.
    pub vote: VoteOf<C>,
    /// The snapshot's meta.
    pub meta: SnapshotMetaOf<C>,
    /// Where `data` starts in the snapshot.
    pub offset_bytes: u64,
    /// The snapshot's whole length.
    pub total_bytes: u64,
    /// The bytes from `offset_bytes` on.
    pub data: Vec<u8>,
}

/// What a peer or a client asks a node's group.
#[derive(Debug, Serialize, Deserialize)]
#[serde(bound = "")]
pub enum RpcRequest<C: KeelConfig> {
    /// openraft's AppendEntries.
    Append(AppendEntriesRequest<C>),
    /// openraft's RequestVote.
    Vote(VoteRequest<C>),
    /// openraft's pre-vote.
    PreVote(VoteRequest<C>),
    /// One chunk of a snapshot (answered with [`ChunkReply`]).
    SnapshotChunk(SnapshotChunk<C>),
    /// Not a raft RPC: a client write (answered by the leader, or `ForwardToLeader`).
    ClientWrite(C::D),
    /// Not a raft RPC: adds node `id` at `node` to the group as a voter (answered by the leader,
    /// or `ForwardToLeader`): a learner first, once it caught up a voter.
    AddVoter {
        /// The new member.
        id: C::NodeId,
        /// Its node (address).
        node: C::Node,
    },
    /// Not a raft RPC: the group's applied state, for tests and the examples.
    Status,
}

impl<C: KeelConfig> RpcRequest<C> {
    fn kind(&self) -> &'static str {
        match self {
            RpcRequest::Append(_) => "append",
            RpcRequest::Vote(_) => "vote",
            RpcRequest::PreVote(_) => "pre_vote",
            RpcRequest::SnapshotChunk(_) => "snapshot_chunk",
            RpcRequest::ClientWrite(_) => "client_write",
            RpcRequest::AddVoter { .. } => "add_voter",
            RpcRequest::Status => "status",
        }
    }
}

/// The answer to a [`SnapshotChunk`].
#[derive(Debug, Serialize, Deserialize)]
#[serde(bound = "")]
pub enum ChunkReply<C: KeelConfig> {
    /// Stored; send the next one.
    Accepted,
    /// The last chunk: the snapshot was installed (openraft's answer).
    Installed(SnapshotResponse<C>),
    /// The chunk does not continue the transfer in progress (offset or snapshot differs); start
    /// over from offset 0.
    OutOfOrder {
        /// The offset the receiver expected.
        expected_offset_bytes: u64,
    },
    /// The snapshot is larger than [`MAX_SNAPSHOT_BYTES`].
    TooLarge,
    /// The receiver's raft stopped.
    Fatal(Fatal<C>),
}

/// A group's applied state, as [`RpcRequest::Status`] reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct NodeStatus<C: KeelConfig> {
    /// The node.
    pub id: C::NodeId,
    /// The raft group (shard index) answering.
    pub group: GroupId,
    /// The last applied log id.
    pub last_applied: Option<LogIdOf<C>>,
    /// The application machine's [`crate::AppStateMachine::digest`].
    pub digest: u64,
    /// The leader this node knows of.
    pub current_leader: Option<C::NodeId>,
    /// This node's term.
    pub current_term: C::Term,
    /// The group's journal counters: fdatasyncs, group-commit batches, entries and bytes appended.
    pub fsyncs: u64,
    /// Group-commit batches.
    pub journal_batches: u64,
    /// Entries appended.
    pub journal_appends: u64,
    /// Bytes appended to the journal (entry headers and payloads).
    pub journal_bytes: u64,
    /// Snapshot chunks received since the group started.
    pub snapshot_chunks_received: u64,
}

/// Result of a client write as it crosses the wire.
pub type ClientWriteResult<C> = Result<ClientWriteResponse<C>, RaftError<C, ClientWriteError<C>>>;

/// The answer to [`RpcRequest::ClientWrite`].
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub enum ClientWriteReply<C: KeelConfig> {
    /// openraft's answer (applied, or `ForwardToLeader`, …).
    Raft(ClientWriteResult<C>),
    /// Refused before reaching raft: its log entry would be larger than the journal holds.
    Rejected(String),
}
