//! Clients: one group's leader-following client, and the client that routes by key.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use openraft::raft::ClientWriteResponse;

use super::{io_error, ClusterError};
use crate::kv::KvRequest;
use crate::network::{ClientWriteReply, Connection, GroupId, NodeAddr, NodeStatus, RpcRequest};
use crate::{KeelConfig, TypeConfig};
/// A client of one raft group that sends writes to its leader, following `ForwardToLeader` and
/// skipping nodes that do not answer. Runs on a compio runtime.
pub struct Client<C: KeelConfig = TypeConfig> {
    connections: BTreeMap<C::NodeId, Connection<C>>,
    /// The node believed to lead (`None` only without members: every write then gives up).
    target: Option<C::NodeId>,
    /// Bound on one attempt.
    pub rpc_timeout: Duration,
    /// Bound on one write, retries included.
    pub write_deadline: Duration,
    /// Bound on attempts per write.
    pub max_attempts: u32,
}

impl<C: KeelConfig> Client<C>
where
    C::Node: NodeAddr,
{
    /// A client of group 0 (the only group of a one-shard cluster).
    pub fn new(members: &BTreeMap<C::NodeId, C::Node>) -> Self {
        Self::for_group(members, 0)
    }

    /// A client of group `group`.
    pub fn for_group(members: &BTreeMap<C::NodeId, C::Node>, group: GroupId) -> Self {
        let connections: BTreeMap<C::NodeId, Connection<C>> = members
            .iter()
            .map(|(id, node)| {
                let connection = Connection::new(id.clone(), node.addr().to_string(), group);
                (id.clone(), connection)
            })
            .collect();
        let target = members.keys().next().cloned();
        Self {
            connections,
            target,
            rpc_timeout: Duration::from_secs(3),
            write_deadline: Duration::from_secs(20),
            max_attempts: 400,
        }
    }

    /// Sets the node tried first.
    pub fn with_target(mut self, id: C::NodeId) -> Self {
        self.target = Some(id);
        self
    }

    /// The node the next write goes to first.
    pub fn target(&self) -> Option<&C::NodeId> {
        self.target.as_ref()
    }

    fn next_target(&mut self) {
        let after = self
            .target
            .clone()
            .map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
        let next = self
            .connections
            .range((after, std::ops::Bound::Unbounded))
            .next()
            .or_else(|| self.connections.iter().next())
            .map(|(id, _)| id.clone());
        self.target = next;
    }

    /// Writes `request` through the leader; returns once it is applied there.
    ///
    /// A write whose attempt timed out may still have been applied, and is then applied again
    /// by the retry: commands should be idempotent (keel's key-value commands are).
    pub async fn write(&mut self, request: C::D) -> Result<ClientWriteResponse<C>, ClusterError<C>>
    where
        C::D: Clone,
    {
        self.call_leader(|| RpcRequest::ClientWrite(request.clone()))
            .await
    }

    /// Adds node `id` at `node` to this client's group as a voter (a learner first, until it
    /// caught up); returns once the membership change is committed.
    pub async fn add_voter(
        &mut self,
        id: C::NodeId,
        node: C::Node,
    ) -> Result<ClientWriteResponse<C>, ClusterError<C>> {
        self.call_leader(|| RpcRequest::AddVoter {
            id: id.clone(),
            node: node.clone(),
        })
        .await
    }

    /// Sends `request()` to the leader, following `ForwardToLeader` and skipping nodes that do
    /// not answer, within the client's bounds.
    async fn call_leader(
        &mut self,
        request: impl Fn() -> RpcRequest<C>,
    ) -> Result<ClientWriteResponse<C>, ClusterError<C>> {
        let started = Instant::now();
        let mut last = String::from("no attempt");
        for attempt in 1..=self.max_attempts {
            if started.elapsed() > self.write_deadline {
                return Err(ClusterError::GaveUp {
                    attempts: attempt - 1,
                    elapsed: started.elapsed(),
                    last,
                });
            }
            let Some(target) = self.target.clone() else {
                return Err(ClusterError::GaveUp {
                    attempts: attempt - 1,
                    elapsed: started.elapsed(),
                    last: "the client has no members".into(),
                });
            };
            let Some(connection) = self.connections.get_mut(&target) else {
                self.next_target();
                continue;
            };
            match connection
                .leader_request(&request(), self.rpc_timeout)
                .await
            {
                Ok(ClientWriteReply::Rejected(reason)) => {
                    return Err(ClusterError::Rejected(reason))
                }
                Ok(ClientWriteReply::Raft(Ok(response))) => return Ok(response),
                Ok(ClientWriteReply::Raft(Err(error))) => {
                    let Some(forward) = error.forward_to_leader() else {
                        return Err(ClusterError::Write(error));
                    };
                    last = format!("node {target}: {error}");
                    match forward.leader_id.clone() {
                        Some(leader) if leader != target => self.target = Some(leader),
                        // No leader known yet (election, or a new leader without its lease).
                        _ => compio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
                Err(error) => {
                    last = format!("node {target}: {error}");
                    self.next_target();
                    compio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        Err(ClusterError::GaveUp {
            attempts: self.max_attempts,
            elapsed: started.elapsed(),
            last,
        })
    }

    /// Node `id`'s applied state in this client's group.
    pub async fn status(&mut self, id: &C::NodeId) -> Result<NodeStatus<C>, ClusterError<C>> {
        let timeout = self.rpc_timeout;
        let connection = self.connections.get_mut(id).ok_or(ClusterError::Io {
            what: "status of an unknown node",
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        })?;
        connection
            .status(timeout)
            .await
            .map_err(io_error("status rpc"))
    }

    /// Polls the nodes in `ids` until they all report the same applied log id and digest, at or
    /// past `min_index`; returns their statuses. Bounded by `deadline`.
    pub async fn wait_converged(
        &mut self,
        ids: &[C::NodeId],
        min_index: u64,
        deadline: Duration,
    ) -> Result<Vec<NodeStatus<C>>, ClusterError<C>> {
        let started = Instant::now();
        let mut last = Vec::new();
        while started.elapsed() < deadline {
            last.clear();
            for id in ids {
                match self.status(id).await {
                    Ok(status) => last.push(status),
                    Err(error) => {
                        tracing::debug!(%id, %error, "status failed while waiting to converge");
                    }
                }
            }
            let converged = last.len() == ids.len()
                && last.iter().all(|s| {
                    s.last_applied == last[0].last_applied
                        && s.digest == last[0].digest
                        && s.last_applied
                            .as_ref()
                            .is_some_and(|l| l.index >= min_index)
                });
            if converged {
                return Ok(last);
            }
            compio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(ClusterError::GaveUp {
            attempts: 0,
            elapsed: started.elapsed(),
            last: format!("nodes {ids:?} did not converge past index {min_index}: {last:?}"),
        })
    }
}

/// The group of `key` among `groups` groups: a stable hash (crc32), so every client and node
/// routes a key alike.
pub fn group_of_key(key: &[u8], groups: u32) -> GroupId {
    // No groups routes like one: everything to group 0.
    crc32fast::hash(key) % groups.max(1)
}

/// A client of every group of a sharded cluster: each request goes to the group of its key.
pub struct ShardedClient<C: KeelConfig = TypeConfig> {
    groups: Vec<Client<C>>,
}

impl<C: KeelConfig> ShardedClient<C>
where
    C::Node: NodeAddr,
{
    /// A client of groups `0..groups` of `members`.
    pub fn new(members: &BTreeMap<C::NodeId, C::Node>, groups: u32) -> Self {
        Self {
            groups: (0..groups.max(1))
                .map(|g| Client::for_group(members, g))
                .collect(),
        }
    }

    /// Sets the node tried first in every group.
    pub fn with_target(mut self, id: C::NodeId) -> Self {
        for client in &mut self.groups {
            client.target = Some(id.clone());
        }
        self
    }

    /// The number of groups.
    pub fn groups(&self) -> u32 {
        self.groups.len() as u32
    }

    /// The client of group `group`, if there is such a group.
    pub fn group(&mut self, group: GroupId) -> Option<&mut Client<C>> {
        self.groups.get_mut(group as usize)
    }

    /// Writes `request` to the group of `key` ([`group_of_key`]).
    pub async fn write_to(
        &mut self,
        key: &[u8],
        request: C::D,
    ) -> Result<ClientWriteResponse<C>, ClusterError<C>>
    where
        C::D: Clone,
    {
        let group = group_of_key(key, self.groups()) as usize;
        // `group_of_key` is below the group count, which `new` made at least 1.
        self.groups[group].write(request).await
    }
}

impl ShardedClient<TypeConfig> {
    /// Writes a key-value request to the group of its key.
    pub async fn write_kv(
        &mut self,
        request: KvRequest,
    ) -> Result<ClientWriteResponse<TypeConfig>, ClusterError<TypeConfig>> {
        let key = request.key().as_bytes().to_vec();
        self.write_to(&key, request).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_without_members_gives_up_instead_of_panicking() {
        let mut client: Client = Client::new(&BTreeMap::new());
        assert!(client.target().is_none());
        let request = KvRequest::Delete { key: "k".into() };
        let runtime = compio::runtime::Runtime::new().unwrap();
        let result = runtime.block_on(client.write(request));
        assert!(
            matches!(&result, Err(ClusterError::GaveUp { attempts: 0, last, .. }) if last.contains("no members")),
            "{result:?}"
        );
    }

    #[test]
    fn keys_route_to_a_group_below_the_count() {
        assert_eq!(group_of_key(b"anything", 0), 0);
        assert_eq!(group_of_key(b"anything", 1), 0);
        let groups: std::collections::BTreeSet<GroupId> = (0..64)
            .map(|k| group_of_key(format!("key-{k}").as_bytes(), 4))
            .collect();
        assert_eq!(
            groups,
            (0..4).collect(),
            "64 keys reach every one of 4 groups"
        );
        assert_eq!(group_of_key(b"k", 4), group_of_key(b"k", 4), "stable");
    }
}
