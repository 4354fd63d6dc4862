//! The server side of one raft group: answers every request a connection carries, gathers
//! snapshot chunks and hands a complete snapshot to openraft to install.

use std::cell::Cell;
use std::io;
use std::io::Cursor;
use std::rc::Rc;

use compio::net::TcpStream;
use keel_storage::Directory;
use openraft::alias::{SnapshotMetaOf, SnapshotOf, VoteOf};

use super::{
    decode, encode, read_frame, write_frame, ChunkReply, ClientWriteReply, ClientWriteResult,
    GroupId, NodeStatus, RpcRequest, SnapshotChunk, MAX_SNAPSHOT_BYTES,
};
use crate::codec;
use crate::machine::{AppStateMachine, EntryCommand};
use crate::{KeelConfig, LogStore, SnapshotData, StateMachineStore};

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

/// Serves one connection (after its [`Hello`](super::Hello)) until it closes.
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
