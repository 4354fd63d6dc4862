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

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::io::Cursor;
use std::marker::PhantomData;
use std::rc::Rc;
use std::time::Duration;

use compio::buf::{BufResult, IntoInner, IoBuf};
use compio::io::{AsyncReadExt, AsyncWriteExt};
use compio::net::TcpStream;
use futures::FutureExt;
use keel_storage::Directory;
use openraft::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, VoteOf};
use openraft::errors::{
    ClientWriteError, Fatal, NetworkError, RPCError, RaftError, RemoteError, ReplicationClosed,
    StreamingError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, ClientWriteResponse, SnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, OptionalSend};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::machine::{AppStateMachine, EntryCommand};
use crate::{KeelConfig, LogStore, SnapshotData, StateMachineStore};

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
    /// The application machine's [`AppStateMachine::digest`].
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

/// Writes one frame (header and body in a single buffer, so a single write).
pub async fn write_frame(stream: &mut TcpStream, body: &[u8]) -> io::Result<()> {
    if body.len() > MAX_FRAME_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("frame of {} bytes exceeds {MAX_FRAME_BYTES}", body.len()),
        ));
    }
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
    buf.extend_from_slice(body);
    let BufResult(result, _) = stream.write_all(buf).await;
    result
}

/// Reads one frame's body.
pub async fn read_frame(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let len = stream.read_u32().await? as usize;
    check_frame_len(len)?;
    // compio's read_exact fills the buffer's capacity, so pin it to exactly `len` bytes.
    let BufResult(result, slice) = stream
        .read_exact(Vec::<u8>::with_capacity(len).slice(..len))
        .await;
    result?;
    Ok(slice.into_inner())
}

fn check_frame_len(len: usize) -> io::Result<()> {
    if len > MAX_FRAME_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds {MAX_FRAME_BYTES}"),
        ));
    }
    Ok(())
}

/// Reads a new connection's [`Hello`] with blocking std I/O (the node's listener thread).
pub fn read_hello(stream: &mut std::net::TcpStream) -> io::Result<Hello> {
    use std::io::Read;
    let mut len = [0u8; 4];
    stream.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    // A hello is a few bytes; anything longer is not a keel-raft client.
    if len > 64 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("hello frame of {len} bytes"),
        ));
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body)?;
    let hello: Hello = decode(&body)?;
    if hello.magic != Hello::MAGIC {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a keel-raft connection (bad hello magic)",
        ));
    }
    Ok(hello)
}

/// The binary encoding of `value`, as an `io::Error` on failure.
pub fn encode<T: Serialize>(value: &T) -> io::Result<Vec<u8>> {
    codec::encode(value).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Decodes a frame body [`encode`] wrote.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> io::Result<T> {
    codec::decode(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// openraft's network factory for raft group `group`: one [`Connection`] per peer, addressed by
/// its node's [`NodeAddr`].
#[derive(Debug)]
pub struct NetworkFactory<C> {
    group: GroupId,
    _config: PhantomData<fn() -> C>,
}

impl<C> NetworkFactory<C> {
    /// The factory of group `group`'s connections.
    pub fn new(group: GroupId) -> Self {
        Self {
            group,
            _config: PhantomData,
        }
    }
}

impl<C> Clone for NetworkFactory<C> {
    fn clone(&self) -> Self {
        Self::new(self.group)
    }
}

impl<C: KeelConfig> RaftNetworkFactory<C> for NetworkFactory<C>
where
    C::Node: NodeAddr,
{
    type Network = Connection<C>;

    async fn new_client(&mut self, target: C::NodeId, node: &C::Node) -> Self::Network {
        Connection::new(target, node.addr().to_string(), self.group)
    }
}

/// A lazily (re)connected TCP connection to one node's group.
pub struct Connection<C: KeelConfig> {
    target: C::NodeId,
    addr: String,
    group: GroupId,
    stream: Option<TcpStream>,
}

impl<C: KeelConfig> Connection<C> {
    /// A connection (not yet connected) to group `group` of node `target` at `addr`.
    pub fn new(target: C::NodeId, addr: String, group: GroupId) -> Self {
        Self {
            target,
            addr,
            group,
            stream: None,
        }
    }

    /// The node this connection talks to.
    pub fn target(&self) -> &C::NodeId {
        &self.target
    }

    async fn connect(&mut self) -> io::Result<&mut TcpStream> {
        if self.stream.is_none() {
            let mut stream = TcpStream::connect(self.addr.as_str()).await?;
            // Small request/response frames: Nagle would add a delay to every RPC.
            stream.set_nodelay(true)?;
            write_frame(&mut stream, &encode(&Hello::new(self.group))?).await?;
            self.stream = Some(stream);
        }
        let Some(stream) = self.stream.as_mut() else {
            unreachable!("connected above");
        };
        Ok(stream)
    }

    /// Sends one request and reads one response frame, within `timeout` if given. Any error
    /// drops the connection, so the next call reconnects.
    pub async fn round_trip(
        &mut self,
        request: &RpcRequest<C>,
        timeout: Option<Duration>,
    ) -> io::Result<Vec<u8>> {
        let body = encode(request)?;
        let target = self.target.clone();
        let exchange = async {
            let stream = self.connect().await?;
            write_frame(stream, &body).await?;
            read_frame(stream).await
        };
        let result = match timeout {
            Some(timeout) => match compio::time::timeout(timeout, exchange).await {
                Ok(result) => result,
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("rpc to node {target} timed out after {timeout:?}"),
                )),
            },
            None => exchange.await,
        };
        if result.is_err() {
            self.stream = None;
        }
        result
    }

    async fn call_raw<T: DeserializeOwned, E>(
        &mut self,
        request: RpcRequest<C>,
        option: &RPCOption,
    ) -> Result<T, RPCError<C, E>>
    where
        E: std::error::Error,
    {
        let kind = request.kind();
        let bytes = self
            .round_trip(&request, Some(option.hard_ttl()))
            .await
            .map_err(|e| {
                tracing::debug!(kind, target = %self.target, group = self.group, addr = %self.addr, error = %e, "rpc failed");
                RPCError::Unreachable(Unreachable::new(&e))
            })?;
        decode(&bytes).map_err(|e| {
            tracing::warn!(kind, target = %self.target, group = self.group, error = %e, "undecodable rpc response");
            RPCError::Network(NetworkError::new(&e))
        })
    }

    async fn call<Resp, E>(
        &mut self,
        request: RpcRequest<C>,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<C, E>>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let result: Result<Resp, RaftError<C, E>> = self.call_raw(request, option).await?;
        match result {
            Ok(response) => Ok(response),
            Err(RaftError::APIError(e)) => Err(RPCError::RemoteError(RemoteError::new(
                self.target.clone(),
                e,
            ))),
            // The peer's raft stopped: as good as unreachable, and openraft backs off.
            Err(RaftError::Fatal(f)) => Err(RPCError::Unreachable(Unreachable::new(&f))),
        }
    }

    /// A request a leader answers ([`RpcRequest::ClientWrite`], [`RpcRequest::AddVoter`])
    /// through this node's group (not part of openraft's traits).
    pub async fn leader_request(
        &mut self,
        request: &RpcRequest<C>,
        timeout: Duration,
    ) -> io::Result<ClientWriteReply<C>> {
        let bytes = self.round_trip(request, Some(timeout)).await?;
        decode(&bytes)
    }

    /// The group's applied state on this node (not part of openraft's traits).
    pub async fn status(&mut self, timeout: Duration) -> io::Result<NodeStatus<C>> {
        let bytes = self.round_trip(&RpcRequest::Status, Some(timeout)).await?;
        decode(&bytes)
    }

    /// Sends `snapshot` in chunks of at most `chunk_bytes`, stopping early if `cancel` fires.
    async fn send_snapshot(
        &mut self,
        vote: VoteOf<C>,
        snapshot: SnapshotOf<C, SnapshotData>,
        cancel: impl Future<Output = ReplicationClosed>,
        option: &RPCOption,
    ) -> Result<SnapshotResponse<C>, StreamingError<C>> {
        let chunk_bytes = option
            .snapshot_chunk_size()
            .unwrap_or(MAX_SNAPSHOT_CHUNK_BYTES)
            .clamp(1, MAX_SNAPSHOT_CHUNK_BYTES);
        let data = snapshot.snapshot.into_inner();
        let total_bytes = data.len() as u64;
        let mut cancel = std::pin::pin!(cancel);
        let mut offset = 0usize;
        loop {
            if let Some(closed) = cancel.as_mut().now_or_never() {
                return Err(StreamingError::Closed(closed));
            }
            let end = offset.saturating_add(chunk_bytes).min(data.len());
            let chunk = SnapshotChunk::<C> {
                vote: vote.clone(),
                meta: snapshot.meta.clone(),
                offset_bytes: offset as u64,
                total_bytes,
                data: data[offset..end].to_vec(),
            };
            let reply: ChunkReply<C> = self
                .call_raw::<_, openraft::errors::Infallible>(
                    RpcRequest::SnapshotChunk(chunk),
                    option,
                )
                .await
                .map_err(rpc_to_streaming)?;
            match reply {
                ChunkReply::Accepted if end < data.len() => offset = end,
                ChunkReply::Installed(response) if end == data.len() => return Ok(response),
                ChunkReply::Fatal(fatal) => {
                    return Err(StreamingError::Unreachable(Unreachable::new(&fatal)))
                }
                other => {
                    let error = io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("snapshot chunk at {offset} of {total_bytes} bytes: {other:?}"),
                    );
                    return Err(StreamingError::Network(NetworkError::new(&error)));
                }
            }
        }
    }
}

fn rpc_to_streaming<C: KeelConfig>(
    error: RPCError<C, openraft::errors::Infallible>,
) -> StreamingError<C> {
    match error {
        RPCError::Unreachable(e) => StreamingError::Unreachable(e),
        RPCError::Timeout(e) => StreamingError::Timeout(e),
        other => StreamingError::Network(NetworkError::new(&other)),
    }
}

impl<C: KeelConfig> RaftNetworkV2<C> for Connection<C> {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<C>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<C>, RPCError<C>> {
        self.call(RpcRequest::Append(rpc), &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<C>,
        option: RPCOption,
    ) -> Result<VoteResponse<C>, RPCError<C>> {
        self.call(RpcRequest::Vote(rpc), &option).await
    }

    /// Forwarded to the peer: openraft's default grants every pre-vote, which would make
    /// pre-vote meaningless (a partitioned node could disrupt the leader on rejoin).
    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<C>,
        option: RPCOption,
    ) -> Result<VoteResponse<C>, RPCError<C>> {
        self.call(RpcRequest::PreVote(rpc), &option).await
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<C>,
        snapshot: SnapshotOf<C, SnapshotData>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<C>, StreamingError<C>> {
        self.send_snapshot(vote, snapshot, cancel, &option).await
    }
}

/// What one raft group's server answers from (its store in the keel directory `D`).
pub struct GroupContext<C, M, D>
where
    C: KeelConfig,
    C::Entry: Clone + EntryCommand<C::D>,
    M: AppStateMachine<C>,
    D: Directory + 'static,
{
    /// This node.
    pub id: C::NodeId,
    /// The group (shard index).
    pub group: GroupId,
    /// The group's raft.
    pub raft: openraft::Raft<C, StateMachineStore<C, M, D>>,
    /// The group's state machine store.
    pub sm: StateMachineStore<C, M, D>,
    /// The group's log store.
    pub log: LogStore<C, D>,
    /// Largest encoded client command accepted (smaller than the journal's largest entry).
    pub max_command_bytes: usize,
    /// Snapshot chunks this group received (all connections).
    pub snapshot_chunks_received: Rc<Cell<u64>>,
}

impl<C, M, D> Clone for GroupContext<C, M, D>
where
    C: KeelConfig,
    C::Entry: Clone + EntryCommand<C::D>,
    M: AppStateMachine<C>,
    D: Directory + 'static,
{
    fn clone(&self) -> Self {
        Self {
            id: self.id.clone(),
            group: self.group,
            raft: self.raft.clone(),
            sm: self.sm.clone(),
            log: self.log.clone(),
            max_command_bytes: self.max_command_bytes,
            snapshot_chunks_received: self.snapshot_chunks_received.clone(),
        }
    }
}

/// A snapshot being received on one connection.
struct Incoming<C: KeelConfig> {
    vote: VoteOf<C>,
    meta: SnapshotMetaOf<C>,
    total_bytes: u64,
    data: Vec<u8>,
}

/// What a chunk did to the transfer in progress.
enum Gathered<C: KeelConfig> {
    /// Stored; more to come.
    More,
    /// The last chunk: the whole snapshot.
    Complete(Incoming<C>),
    /// Refused (the transfer is dropped): see [`ChunkReply::OutOfOrder`].
    OutOfOrder { expected_offset_bytes: u64 },
    /// Refused (the transfer is dropped): larger than [`MAX_SNAPSHOT_BYTES`].
    TooLarge,
}

/// Adds `chunk` to the transfer in `incoming`: a chunk at offset 0 starts a new one; any other
/// must continue it exactly (same vote, meta and length, at the offset reached).
fn gather<C: KeelConfig>(
    incoming: &mut Option<Incoming<C>>,
    chunk: SnapshotChunk<C>,
) -> Gathered<C> {
    if chunk.total_bytes > MAX_SNAPSHOT_BYTES {
        *incoming = None;
        return Gathered::TooLarge;
    }
    if chunk.offset_bytes == 0 {
        *incoming = Some(Incoming {
            vote: chunk.vote.clone(),
            meta: chunk.meta.clone(),
            total_bytes: chunk.total_bytes,
            data: Vec::with_capacity(chunk.total_bytes as usize),
        });
    }
    let continues = incoming.as_ref().is_some_and(|i| {
        i.vote == chunk.vote
            && i.meta == chunk.meta
            && i.total_bytes == chunk.total_bytes
            && i.data.len() as u64 == chunk.offset_bytes
            && chunk.offset_bytes + chunk.data.len() as u64 <= chunk.total_bytes
    });
    let Some(transfer) = incoming.as_mut().filter(|_| continues) else {
        let expected_offset_bytes = incoming.as_ref().map_or(0, |i| i.data.len() as u64);
        *incoming = None;
        return Gathered::OutOfOrder {
            expected_offset_bytes,
        };
    };
    transfer.data.extend_from_slice(&chunk.data);
    if (transfer.data.len() as u64) < transfer.total_bytes {
        return Gathered::More;
    }
    match incoming.take() {
        Some(done) => Gathered::Complete(done),
        None => unreachable!("checked above"),
    }
}

/// Serves one connection (after its [`Hello`]) until it closes.
pub async fn serve_connection<C, M, D>(
    mut stream: TcpStream,
    group: GroupContext<C, M, D>,
) -> io::Result<()>
where
    C: KeelConfig,
    C::Entry: Clone + EntryCommand<C::D>,
    M: AppStateMachine<C>,
    D: Directory + 'static,
{
    let mut incoming: Option<Incoming<C>> = None;
    loop {
        let body = read_frame(&mut stream).await?;
        let request: RpcRequest<C> = decode(&body)?;
        let response = match request {
            RpcRequest::Append(rpc) => encode(&group.raft.append_entries(rpc).await)?,
            RpcRequest::Vote(rpc) => encode(&group.raft.vote(rpc).await)?,
            RpcRequest::PreVote(rpc) => encode(&group.raft.pre_vote(rpc).await)?,
            RpcRequest::SnapshotChunk(chunk) => {
                encode(&receive_chunk(&group, &mut incoming, chunk).await)?
            }
            RpcRequest::ClientWrite(request) => encode(&client_write(&group, request).await)?,
            RpcRequest::AddVoter { id, node } => {
                encode(&ClientWriteReply::Raft(add_voter(&group, id, node).await))?
            }
            RpcRequest::Status => encode(&status(&group))?,
        };
        write_frame(&mut stream, &response).await?;
    }
}

async fn client_write<C, M, D>(group: &GroupContext<C, M, D>, request: C::D) -> ClientWriteReply<C>
where
    C: KeelConfig,
    C::Entry: Clone + EntryCommand<C::D>,
    M: AppStateMachine<C>,
    D: Directory + 'static,
{
    match codec::encode(&request) {
        Ok(bytes) if bytes.len() <= group.max_command_bytes => {
            ClientWriteReply::Raft(group.raft.client_write(request).await)
        }
        Ok(bytes) => ClientWriteReply::Rejected(format!(
            "command of {} bytes exceeds the {}-byte limit",
            bytes.len(),
            group.max_command_bytes
        )),
        Err(error) => ClientWriteReply::Rejected(format!("command does not encode: {error}")),
    }
}

async fn add_voter<C, M, D>(
    group: &GroupContext<C, M, D>,
    id: C::NodeId,
    node: C::Node,
) -> ClientWriteResult<C>
where
    C: KeelConfig,
    C::Entry: Clone + EntryCommand<C::D>,
    M: AppStateMachine<C>,
    D: Directory + 'static,
{
    // Blocking: the learner has caught up before it can vote, so adding it does not stall commits.
    group.raft.add_learner(id.clone(), node, true).await?;
    let voters = std::collections::BTreeSet::from([id]);
    group
        .raft
        .change_membership(openraft::ChangeMembers::AddVoterIds(voters), false)
        .await
}

fn status<C, M, D>(group: &GroupContext<C, M, D>) -> NodeStatus<C>
where
    C: KeelConfig,
    C::Entry: Clone + EntryCommand<C::D>,
    M: AppStateMachine<C>,
    D: Directory + 'static,
{
    use openraft::async_runtime::watch::WatchReceiver;
    let metrics = group.raft.metrics().borrow_watched().clone();
    let journal = group.log.journal_stats();
    NodeStatus {
        id: group.id.clone(),
        group: group.group,
        last_applied: group.sm.last_applied(),
        digest: group.sm.read(M::digest),
        current_leader: metrics.current_leader,
        current_term: metrics.current_term,
        fsyncs: journal.fsyncs,
        journal_batches: journal.batches,
        journal_appends: journal.appends,
        journal_bytes: journal.bytes_appended,
        snapshot_chunks_received: group.snapshot_chunks_received.get(),
    }
}

/// Adds `chunk` to the snapshot in transfer; installs it when complete.
async fn receive_chunk<C, M, D>(
    group: &GroupContext<C, M, D>,
    incoming: &mut Option<Incoming<C>>,
    chunk: SnapshotChunk<C>,
) -> ChunkReply<C>
where
    C: KeelConfig,
    C::Entry: Clone + EntryCommand<C::D>,
    M: AppStateMachine<C>,
    D: Directory + 'static,
{
    let received = &group.snapshot_chunks_received;
    received.set(received.get() + 1);
    let done = match gather(incoming, chunk) {
        Gathered::More => return ChunkReply::Accepted,
        Gathered::OutOfOrder {
            expected_offset_bytes,
        } => {
            return ChunkReply::OutOfOrder {
                expected_offset_bytes,
            }
        }
        Gathered::TooLarge => return ChunkReply::TooLarge,
        Gathered::Complete(done) => done,
    };
    let snapshot = SnapshotOf::<C, SnapshotData> {
        meta: done.meta,
        snapshot: Cursor::new(done.data),
    };
    // Durable on return: the store persists the snapshot file before the state changes.
    match group.raft.install_full_snapshot(done.vote, snapshot).await {
        Ok(response) => ChunkReply::Installed(response),
        Err(fatal) => ChunkReply::Fatal(fatal),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::typ::{SnapshotMeta, Vote};
    use crate::TypeConfig;

    fn chunk(offset: u64, total: u64, data: &[u8], term: u64) -> SnapshotChunk<TypeConfig> {
        SnapshotChunk {
            vote: Vote::new(term, 1),
            meta: SnapshotMeta::default(),
            offset_bytes: offset,
            total_bytes: total,
            data: data.to_vec(),
        }
    }

    #[test]
    fn chunks_gather_in_order_only() {
        let mut incoming = None;
        assert!(matches!(
            gather(&mut incoming, chunk(0, 6, b"ab", 1)),
            Gathered::More
        ));
        assert!(matches!(
            gather(&mut incoming, chunk(2, 6, b"cd", 1)),
            Gathered::More
        ));
        match gather(&mut incoming, chunk(4, 6, b"ef", 1)) {
            Gathered::Complete(done) => assert_eq!(done.data, b"abcdef"),
            _ => panic!("the last chunk completes the snapshot"),
        }
        assert!(incoming.is_none());

        // A gap, another vote or length mid-transfer, or an overrun drop the transfer.
        for bad in [
            chunk(4, 6, b"ef", 1),
            chunk(2, 6, b"cd", 2),
            chunk(2, 7, b"cd", 1),
            chunk(2, 6, b"cdefg", 1),
        ] {
            let mut incoming = None;
            assert!(matches!(
                gather(&mut incoming, chunk(0, 6, b"ab", 1)),
                Gathered::More
            ));
            assert!(matches!(
                gather(&mut incoming, bad),
                Gathered::OutOfOrder { .. }
            ));
            assert!(incoming.is_none(), "a refused chunk drops the transfer");
        }
        // A chunk at offset 0 starts the transfer over (the sender's retry).
        let mut incoming = None;
        assert!(matches!(
            gather(&mut incoming, chunk(0, 6, b"ab", 1)),
            Gathered::More
        ));
        assert!(matches!(
            gather(&mut incoming, chunk(0, 4, b"wx", 2)),
            Gathered::More
        ));
        match gather(&mut incoming, chunk(2, 4, b"yz", 2)) {
            Gathered::Complete(done) => assert_eq!(done.data, b"wxyz"),
            _ => panic!("the restarted transfer completes"),
        }
        let mut incoming = None;
        assert!(matches!(
            gather(&mut incoming, chunk(0, 6, b"ab", 1)),
            Gathered::More
        ));
        assert!(matches!(
            gather(&mut incoming, chunk(4, 6, b"ef", 1)),
            Gathered::OutOfOrder {
                expected_offset_bytes: 2
            }
        ));
        assert!(matches!(
            gather(&mut incoming, chunk(0, MAX_SNAPSHOT_BYTES + 1, b"", 1)),
            Gathered::TooLarge
        ));
        // An empty snapshot is one empty chunk.
        assert!(matches!(
            gather(&mut incoming, chunk(0, 0, b"", 1)),
            Gathered::Complete(_)
        ));
    }
}
