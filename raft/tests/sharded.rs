//! One raft group per core: 3 nodes × 2 shards on 127.0.0.1 (each shard its own thread, compio
//! runtime, store directory and openraft group; one listener per node). Writes are routed to
//! groups by key. The leader of group 0 is killed (its shard only: no shutdown, no sync) while
//! the cluster takes writes; group 1 keeps its leader and term and keeps serving, group 0 elects
//! a new leader. Then, from the stores on disk: every acknowledged write is present on a majority
//! of its group. Finally every node restarts on its directories and both groups converge to the
//! state computed independently.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::{disk_node, init_tracing, start_cluster, TestCluster};
use keel_engine::{KvCommand, KvStateMachine};
use keel_raft::cluster::{
    group_of_key, key_name, rebind, Client, Load, LoadReport, NodeConfig, NodeHandle,
};
use keel_raft::openraft::{BasicNode, EntryPayload, RaftLogReader};
use keel_raft::{KvRequest, StoreConfig, TypeConfig};
use keel_storage::DirAccess;
use keel_storage::FsDirectory;
use openraft::type_config::TypeConfigExt;

const SHARDS: u32 = 2;
const LOGS_SINCE_SNAPSHOT: u64 = 200;
const LOGS_KEPT: u64 = 50;
const CONVERGE: Duration = Duration::from_secs(30);

fn value_of(k: u64) -> String {
    format!("v-{k}-{}", "x".repeat((k % 5) as usize))
}

fn node_config(
    id: u64,
    dir: &Path,
    members: &BTreeMap<u64, BasicNode>,
    initialize: bool,
) -> NodeConfig {
    let policy = (LOGS_SINCE_SNAPSHOT, LOGS_KEPT);
    disk_node(id, dir, members, initialize, SHARDS, policy)
}

fn load(keys: std::ops::Range<u64>) -> Load {
    Load {
        groups: SHARDS,
        keys,
        concurrency: 8,
        value: value_of,
        stop_on_error: true,
    }
}

/// How many of the 3 nodes' stores of `group` hold `set key-k = value(k)`, for every `k`:
/// applied in the state machine, or durable in the log above it.
fn holders(dirs: &BTreeMap<u64, tempfile::TempDir>, group: u32, ks: &[u64]) -> Vec<usize> {
    let mut counts = vec![0; ks.len()];
    for dir in dirs.values() {
        let path = keel_raft::cluster::shard_dir(dir.path(), SHARDS, group);
        TypeConfig::run(async {
            let root = FsDirectory::open_with(&path, DirAccess::Existing)
                .await
                .unwrap();
            let config = StoreConfig::for_snapshot_policy(LOGS_SINCE_SNAPSHOT, LOGS_KEPT);
            let (mut log, sm, _) = keel_raft::open_kv(root, config).await.unwrap();
            let logged: BTreeMap<String, String> = log
                .try_get_log_entries(..)
                .await
                .unwrap()
                .into_iter()
                .filter_map(|e| match e.payload {
                    EntryPayload::Normal(KvRequest::Set { key, value }) => Some((key, value)),
                    _ => None,
                })
                .collect();
            for (count, k) in counts.iter_mut().zip(ks) {
                let (key, value) = (key_name(*k), value_of(*k));
                if sm.get(&key).as_ref() == Some(&value) || logged.get(&key) == Some(&value) {
                    *count += 1;
                }
            }
        });
    }
    counts
}

fn expected_digests(keys: std::ops::Range<u64>) -> Vec<u64> {
    let mut machines: Vec<KvStateMachine> = (0..SHARDS).map(|_| KvStateMachine::new()).collect();
    for k in keys {
        let key = key_name(k);
        machines[group_of_key(key.as_bytes(), SHARDS) as usize].apply_command(&KvCommand::Set {
            key: key.into_bytes(),
            value: value_of(k).into_bytes(),
        });
    }
    machines.iter().map(KvStateMachine::digest).collect()
}

/// Asserts that every `k` acknowledged is held by at least 2 of the 3 stores of its group.
fn assert_on_majorities(dirs: &BTreeMap<u64, tempfile::TempDir>, acknowledged: &[u64]) {
    for group in 0..SHARDS {
        let ks: Vec<u64> = acknowledged
            .iter()
            .copied()
            .filter(|k| group_of_key(key_name(*k).as_bytes(), SHARDS) == group)
            .collect();
        assert!(!ks.is_empty());
        let counts = holders(dirs, group, &ks);
        for (k, count) in ks.iter().zip(&counts) {
            assert!(*count >= 2, "group {group}: key {k} on {count} of 3 nodes");
        }
    }
}

#[test]
fn a_leader_kill_in_one_group_loses_no_acknowledged_write() {
    init_tracing();
    let TestCluster {
        dirs,
        members,
        nodes,
    } = start_cluster(node_config);
    let runtime = compio::runtime::Runtime::new().unwrap();
    let mut clients = group_clients(&members);

    // Phase 1: both groups elect and take 600 writes, routed by key.
    let first: LoadReport = runtime.block_on(load(0..600).run(&members, None)).unwrap();
    assert_eq!(first.writes, 600);
    let mut before = Vec::new();
    for client in &mut clients {
        let statuses = runtime
            .block_on(client.wait_converged(&[1, 2, 3], 1, CONVERGE))
            .unwrap();
        before.push(statuses[0].clone());
    }
    let leader_0 = before[0].current_leader.expect("group 0 has a leader");
    let leader_1 = before[1].current_leader.expect("group 1 has a leader");

    // Phase 2: kill group 0's leader (that shard only), keep writing to both groups.
    nodes[&leader_0].kill_shard(0).unwrap();
    let second = runtime
        .block_on(load(600..1_200).run(&members, None))
        .unwrap();
    assert_eq!(second.writes, 600);
    let survivors: Vec<u64> = (1..=3).filter(|id| *id != leader_0).collect();
    let after_0 = runtime
        .block_on(clients[0].wait_converged(&survivors, 1, CONVERGE))
        .unwrap();
    let new_leader_0 = after_0[0]
        .current_leader
        .expect("group 0 elected a new leader");
    assert_ne!(new_leader_0, leader_0, "group 0 moved to a new leader");
    let after_1 = runtime
        .block_on(clients[1].wait_converged(&[1, 2, 3], 1, CONVERGE))
        .unwrap();
    assert_eq!(
        (after_1[0].current_leader, after_1[0].current_term),
        (Some(leader_1), before[1].current_term),
        "group 1 kept its leader and term through group 0's failure"
    );

    // Every acknowledged write is on a majority of its group, read back from the stores.
    for (_, node) in nodes {
        node.shutdown().unwrap();
    }
    let acknowledged: Vec<u64> = first
        .acknowledged
        .iter()
        .chain(&second.acknowledged)
        .copied()
        .collect();
    assert_eq!(acknowledged.len(), 1_200);
    assert_on_majorities(&dirs, &acknowledged);

    // Every node restarts on its directories; both groups converge to the expected state.
    restart_and_converge(&dirs, &members, &mut clients, &expected_digests(0..1_200));
}

/// Restarts nodes 1..=3 on `dirs`; asserts every group converges to its `expected` digest.
fn restart_and_converge(
    dirs: &BTreeMap<u64, tempfile::TempDir>,
    members: &BTreeMap<u64, BasicNode>,
    clients: &mut [Client],
    expected: &[u64],
) {
    let mut nodes = Vec::new();
    for id in 1..=3 {
        let listener = rebind(&members[&id]).unwrap();
        let config = node_config(id, dirs[&id].path(), members, false);
        nodes.push(NodeHandle::spawn_kv(config, listener).unwrap());
    }
    let runtime = compio::runtime::Runtime::new().unwrap();
    assert_converged(&runtime, clients, expected);
    for node in nodes {
        assert_eq!(node.shutdown().unwrap().shards.len(), SHARDS as usize);
    }
}

/// Waits until all 3 nodes agree in every group; asserts each group's `expected` digest.
fn assert_converged(runtime: &compio::runtime::Runtime, clients: &mut [Client], expected: &[u64]) {
    for (group, client) in clients.iter_mut().enumerate() {
        let statuses = runtime
            .block_on(client.wait_converged(&[1, 2, 3], 1, CONVERGE))
            .unwrap();
        assert!(
            statuses.iter().all(|s| s.digest == expected[group]),
            "group {group} converged to the expected state: {statuses:?}"
        );
    }
}

/// A client of each group.
fn group_clients(members: &BTreeMap<u64, BasicNode>) -> Vec<Client> {
    (0..SHARDS).map(|g| Client::for_group(members, g)).collect()
}

/// One shard of a node is killed and restarted on its directory while the node's other shard
/// keeps serving; the restarted group catches up on all three nodes.
#[test]
fn a_killed_shard_restarts_on_its_directory_and_catches_up() {
    init_tracing();
    let TestCluster {
        dirs: _dirs,
        members,
        nodes,
    } = start_cluster(node_config);
    let runtime = compio::runtime::Runtime::new().unwrap();
    let mut clients = group_clients(&members);
    runtime.block_on(load(0..300).run(&members, None)).unwrap();
    nodes[&2].kill_shard(1).unwrap();
    let before = runtime.block_on(clients[0].status(&2)).unwrap();
    runtime
        .block_on(load(300..600).run(&members, None))
        .unwrap();
    // Node 2's group 0 kept serving while its group 1 was down.
    let during = runtime.block_on(clients[0].status(&2)).unwrap();
    assert!(during.last_applied > before.last_applied, "{during:?}");
    assert!(runtime.block_on(clients[1].status(&2)).is_err());
    assert!(matches!(
        nodes[&2].restart_shard(0),
        Err(keel_raft::cluster::ClusterError::Node(_))
    ));

    nodes[&2].restart_shard(1).unwrap();
    assert_converged(&runtime, &mut clients, &expected_digests(0..600));
    for (_, node) in nodes {
        assert_eq!(node.shutdown().unwrap().shards.len(), SHARDS as usize);
    }
}

/// A shard on the in-memory medium is not restarted: its store and vote are gone.
#[test]
fn a_memory_shard_is_not_restarted() {
    let (mut listeners, members) = keel_raft::cluster::bind_listeners([1]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = NodeConfig {
        medium: keel_raft::cluster::Medium::Memory,
        ..node_config(1, dir.path(), &members, true)
    };
    let node = NodeHandle::spawn_kv(config, listeners.remove(&1).unwrap()).unwrap();
    node.kill_shard(0).unwrap();
    assert!(matches!(
        node.restart_shard(0),
        Err(keel_raft::cluster::ClusterError::Node(_))
    ));
    node.shutdown().unwrap();
}
