//! The client side: openraft's network factory and the connection to one node's group (raft
//! RPCs, snapshot chunks, and the requests a leader answers).

use std::future::Future;
use std::io;
use std::marker::PhantomData;
use std::time::Duration;

use compio::net::TcpStream;
use futures::FutureExt;
use openraft::alias::{SnapshotOf, VoteOf};
use openraft::errors::{
    NetworkError, RPCError, RaftError, RemoteError, ReplicationClosed, StreamingError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::OptionalSend;
use serde::de::DeserializeOwned;

use super::{
    decode, encode, read_frame, write_frame, ChunkReply, ClientWriteReply, GroupId, Hello,
    NodeAddr, NodeStatus, RpcRequest, SnapshotChunk, MAX_SNAPSHOT_CHUNK_BYTES,
};
use crate::{KeelConfig, SnapshotData};

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
