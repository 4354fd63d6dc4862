//! openraft's network over `compio::net` TCP on 127.0.0.1, with length-prefixed frames.
//!
//! Frame: `len:u32 big-endian` + a JSON body of at most [`MAX_FRAME_BYTES`]. One request and one
//! response in flight per connection; a client reconnects lazily after any I/O error (so a
//! restarted peer is picked up by the next RPC). The server runs one compio task per accepted
//! connection on the node's own runtime (its core).
//!
//! Request: [`RpcRequest`]. Response: JSON of `Result<Resp, RaftError<E>>` for the raft RPCs,
//! where the client knows `Resp` and `E` from the request it sent.

use std::future::Future;
use std::io;
use std::io::Cursor;

use compio::buf::{BufResult, IntoInner, IoBuf};
use compio::io::{AsyncReadExt, AsyncWriteExt};
use compio::net::{TcpListener, TcpStream};
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

use crate::kv::KvRequest;
use crate::typ::{LogId, Snapshot, SnapshotData, SnapshotMeta, Vote};
use crate::{KvStateMachineStore, LogStore, Raft, TypeConfig};
use keel_storage::FsDirectory;

/// Largest frame accepted either way (a snapshot travels as one frame).
pub const MAX_FRAME_BYTES: usize = 256 << 20;

/// What a peer or a client asks a node.
#[derive(Debug, Serialize, Deserialize)]
pub enum RpcRequest {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<TypeConfig>),
    PreVote(VoteRequest<TypeConfig>),
    Snapshot {
        vote: Vote,
        meta: SnapshotMeta,
        data: Vec<u8>,
    },
    /// Not a raft RPC: a client write (answered by the leader, or `ForwardToLeader`).
    ClientWrite(KvRequest),
    /// Not a raft RPC: the node's applied state, for tests and the example.
    Status,
}

impl RpcRequest {
    fn kind(&self) -> &'static str {
        match self {
            RpcRequest::Append(_) => "append",
            RpcRequest::Vote(_) => "vote",
            RpcRequest::PreVote(_) => "pre_vote",
            RpcRequest::Snapshot { .. } => "snapshot",
            RpcRequest::ClientWrite(_) => "client_write",
            RpcRequest::Status => "status",
        }
    }
}

/// A node's applied state, as [`RpcRequest::Status`] reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub id: u64,
    pub last_applied: Option<LogId>,
    pub keys: u64,
    /// keel's digest of the key-value state.
    pub digest: u64,
    pub current_leader: Option<u64>,
    pub current_term: u64,
    /// The node's journal counters: fdatasyncs, group-commit batches, entries appended.
    pub fsyncs: u64,
    pub journal_batches: u64,
    pub journal_appends: u64,
}

/// Result of a client write as it crosses the wire.
pub type ClientWriteResult =
    Result<ClientWriteResponse<TypeConfig>, RaftError<TypeConfig, ClientWriteError<TypeConfig>>>;

/// The answer to [`RpcRequest::ClientWrite`].
#[derive(Debug, Serialize, Deserialize)]
pub enum ClientWriteReply {
    /// openraft's answer (applied, or `ForwardToLeader`, …).
    Raft(ClientWriteResult),
    /// Refused before reaching raft (see [`crate::kv::KvRequest::validate`]).
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
    if len > MAX_FRAME_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds {MAX_FRAME_BYTES}"),
        ));
    }
    // compio's read_exact fills the buffer's capacity, so pin it to exactly `len` bytes.
    let BufResult(result, slice) = stream
        .read_exact(Vec::<u8>::with_capacity(len).slice(..len))
        .await;
    result?;
    Ok(slice.into_inner())
}

fn to_json<T: Serialize>(value: &T) -> io::Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// openraft's network factory: one [`Connection`] per peer, addressed by its `BasicNode.addr`.
#[derive(Debug, Clone, Default)]
pub struct NetworkFactory;

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = Connection;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Self::Network {
        Connection::new(target, node.addr.clone())
    }
}

/// A lazily (re)connected TCP connection to one node.
pub struct Connection {
    target: u64,
    addr: String,
    stream: Option<TcpStream>,
}

impl Connection {
    pub fn new(target: u64, addr: String) -> Self {
        Self {
            target,
            addr,
            stream: None,
        }
    }

    pub fn target(&self) -> u64 {
        self.target
    }

    /// Sends one request and reads one response frame, within `timeout` if given. Any error
    /// drops the connection, so the next call reconnects.
    pub async fn round_trip(
        &mut self,
        request: &RpcRequest,
        timeout: Option<std::time::Duration>,
    ) -> io::Result<Vec<u8>> {
        let body = to_json(request)?;
        let exchange = async {
            if self.stream.is_none() {
                let stream = TcpStream::connect(self.addr.as_str()).await?;
                // Small request/response frames: Nagle would add a delay to every RPC.
                stream.set_nodelay(true)?;
                self.stream = Some(stream);
            }
            let Some(stream) = self.stream.as_mut() else {
                unreachable!("connected above");
            };
            write_frame(stream, &body).await?;
            read_frame(stream).await
        };
        let result = match timeout {
            Some(timeout) => match compio::time::timeout(timeout, exchange).await {
                Ok(result) => result,
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("rpc to node {} timed out after {timeout:?}", self.target),
                )),
            },
            None => exchange.await,
        };
        if result.is_err() {
            self.stream = None;
        }
        result
    }

    async fn call<Resp, E>(
        &mut self,
        request: RpcRequest,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<TypeConfig, E>>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let kind = request.kind();
        let bytes = self
            .round_trip(&request, Some(option.hard_ttl()))
            .await
            .map_err(|e| {
                tracing::debug!(kind, target = self.target, addr = %self.addr, error = %e, "rpc failed");
                RPCError::Unreachable(Unreachable::new(&e))
            })?;
        let result: Result<Resp, RaftError<TypeConfig, E>> = serde_json::from_slice(&bytes)
            .map_err(|e| {
                tracing::warn!(kind, target = self.target, error = %e, "undecodable rpc response");
                RPCError::Network(NetworkError::new(&e))
            })?;
        match result {
            Ok(response) => Ok(response),
            Err(RaftError::APIError(e)) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            // The peer's raft stopped: as good as unreachable, and openraft backs off.
            Err(RaftError::Fatal(f)) => Err(RPCError::Unreachable(Unreachable::new(&f))),
        }
    }

    /// A client write through this node (not part of openraft's traits).
    pub async fn client_write(
        &mut self,
        request: KvRequest,
        timeout: std::time::Duration,
    ) -> io::Result<ClientWriteReply> {
        let bytes = self
            .round_trip(&RpcRequest::ClientWrite(request), Some(timeout))
            .await?;
        serde_json::from_slice(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// The node's applied state (not part of openraft's traits).
    pub async fn status(&mut self, timeout: std::time::Duration) -> io::Result<NodeStatus> {
        let bytes = self.round_trip(&RpcRequest::Status, Some(timeout)).await?;
        serde_json::from_slice(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
}

impl RaftNetworkV2<TypeConfig> for Connection {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(RpcRequest::Append(rpc), &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(RpcRequest::Vote(rpc), &option).await
    }

    /// Forwarded to the peer: openraft's default grants every pre-vote, which would make
    /// pre-vote meaningless (a partitioned node could disrupt the leader on rejoin).
    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(RpcRequest::PreVote(rpc), &option).await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        _cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let request = RpcRequest::Snapshot {
            vote,
            meta: snapshot.meta,
            data: snapshot.snapshot.into_inner(),
        };
        let response: Result<SnapshotResponse<TypeConfig>, RPCError<TypeConfig>> =
            self.call(request, &option).await;
        Ok(response?)
    }
}

/// What a node's server answers from.
#[derive(Clone)]
pub struct NodeContext {
    pub id: u64,
    pub raft: Raft,
    pub sm: KvStateMachineStore<FsDirectory>,
    pub log: LogStore<TypeConfig, FsDirectory>,
}

/// Accepts connections until the runtime stops; one task per connection.
pub async fn serve(listener: TcpListener, node: NodeContext) {
    let id = node.id;
    // Bounded by the runtime: the node's thread drops this task when it shuts down.
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(id, %error, "accept failed");
                compio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(id, %error, "set_nodelay failed");
        }
        let node = node.clone();
        compio::runtime::spawn(async move {
            if let Err(error) = serve_connection(stream, node).await {
                tracing::debug!(id, %peer, %error, "connection closed");
            }
        })
        .detach();
    }
}

async fn serve_connection(mut stream: TcpStream, node: NodeContext) -> io::Result<()> {
    let NodeContext { id, raft, sm, log } = node;
    loop {
        let body = read_frame(&mut stream).await?;
        let request: RpcRequest = serde_json::from_slice(&body)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let response = match request {
            RpcRequest::Append(rpc) => to_json(&raft.append_entries(rpc).await)?,
            RpcRequest::Vote(rpc) => to_json(&raft.vote(rpc).await)?,
            RpcRequest::PreVote(rpc) => to_json(&raft.pre_vote(rpc).await)?,
            RpcRequest::Snapshot { vote, meta, data } => {
                let snapshot = Snapshot {
                    meta,
                    snapshot: Cursor::new(data),
                };
                let result: Result<SnapshotResponse<TypeConfig>, Fatal<TypeConfig>> =
                    raft.install_full_snapshot(vote, snapshot).await;
                let result: Result<_, RaftError<TypeConfig>> = result.map_err(RaftError::Fatal);
                to_json(&result)?
            }
            RpcRequest::ClientWrite(request) => {
                let reply = match request.validate() {
                    Ok(()) => ClientWriteReply::Raft(raft.client_write(request).await),
                    Err(reason) => ClientWriteReply::Rejected(reason),
                };
                to_json(&reply)?
            }
            RpcRequest::Status => {
                use openraft::async_runtime::watch::WatchReceiver;
                let metrics = raft.metrics().borrow_watched().clone();
                let journal = log.journal_stats();
                to_json(&NodeStatus {
                    fsyncs: journal.fsyncs,
                    journal_batches: journal.batches,
                    journal_appends: journal.appends,
                    id,
                    last_applied: sm.last_applied(),
                    keys: sm.len() as u64,
                    digest: sm.digest(),
                    current_leader: metrics.current_leader,
                    current_term: metrics.current_term,
                })?
            }
        };
        write_frame(&mut stream, &response).await?;
    }
}
