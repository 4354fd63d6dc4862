//! A 3-node key-value cluster on 127.0.0.1 (one thread + compio runtime per node, TCP frames):
//! elect, write 1,000 keys, shut the leader down, write more, every remaining node converges to
//! the same state, and so does the old leader once restarted on its directory.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{disk_node, init_tracing, start_cluster, TestCluster};
use keel_engine::{KvCommand, KvStateMachine};
use keel_raft::cluster::ClusterError;
use keel_raft::cluster::{key_name, rebind, write_keys, Client, NodeConfig, NodeHandle};
use keel_raft::kv::MAX_COMMAND_BYTES;
use keel_raft::openraft::{self, BasicNode};
use keel_raft::{KvRequest, StoreConfig};

/// Snapshot every 300 entries and keep 50 behind: the run snapshots and purges several times,
/// so the restarted node may need a snapshot sent over the network.
const LOGS_SINCE_SNAPSHOT: u64 = 300;
const LOGS_KEPT: u64 = 50;
const CONVERGE: Duration = Duration::from_secs(30);
const SNAPSHOT_CHUNK_BYTES: u64 = 2048;

fn value_a(k: u64) -> String {
    format!("a-{k}")
}

fn value_b(k: u64) -> String {
    format!("b-{k}-{}", "x".repeat((k % 7) as usize))
}

fn node_config(
    id: u64,
    dir: &std::path::Path,
    members: &BTreeMap<u64, BasicNode>,
    initialize: bool,
) -> NodeConfig {
    let policy = (LOGS_SINCE_SNAPSHOT, LOGS_KEPT);
    let config = disk_node(id, dir, members, initialize, 1, policy);
    NodeConfig {
        raft: openraft::Config {
            // Small chunks: a snapshot sent to the restarted node takes several.
            snapshot_max_chunk_size: SNAPSHOT_CHUNK_BYTES,
            ..config.raft
        },
        ..config
    }
}

#[test]
fn three_nodes_elect_replicate_fail_over_and_converge() {
    init_tracing();
    let TestCluster {
        dirs,
        members,
        mut nodes,
    } = start_cluster(node_config);

    // The expected states, computed independently with keel's own state machine.
    let mut expected = KvStateMachine::new();
    for k in 0..1_000 {
        expected.apply_command(&KvCommand::Set {
            key: key_name(k).into_bytes(),
            value: value_a(k).into_bytes(),
        });
    }
    let after_phase_1 = expected.digest();
    for k in 800..1_400 {
        expected.apply_command(&KvCommand::Set {
            key: key_name(k).into_bytes(),
            value: value_b(k).into_bytes(),
        });
    }

    let runtime = compio::runtime::Runtime::new().unwrap();
    let mut client: Client = Client::new(&members);

    // Phase 1: elect (the client retries until a leader takes writes) and write 1,000 keys.
    let first = runtime
        .block_on(write_keys(&members, 1, 0..1_000, 16, value_a))
        .unwrap();
    assert_eq!(first.writes, 1_000);
    eprintln!(
        "phase 1: {} writes in {:?} ({:.0}/s, p50 {} us, p99 {} us)",
        first.writes,
        first.elapsed,
        first.writes_per_sec(),
        first.percentile_us(50.0),
        first.percentile_us(99.0)
    );
    let statuses = runtime
        .block_on(client.wait_converged(&[1, 2, 3], 1_000, CONVERGE))
        .unwrap();
    let leader = statuses[0].current_leader.expect("a leader");
    assert!(statuses.iter().all(|s| s.digest == after_phase_1));

    // A command the journal could not hold is refused at the door, not fatal to the leader.
    let oversized = KvRequest::Set {
        key: "too-big".into(),
        value: "x".repeat(MAX_COMMAND_BYTES + 1),
    };
    let refused = runtime.block_on(client.write(oversized));
    assert!(
        matches!(refused, Err(ClusterError::Rejected(_))),
        "{refused:?}"
    );

    // Phase 2: shut the leader down, write 600 more (200 overwrite), the others converge.
    let exit = nodes.remove(&leader).unwrap().shutdown().unwrap();
    eprintln!(
        "leader {leader} stopped; journal {:?}",
        exit.shards[0].journal
    );
    let survivors: Vec<u64> = members.keys().copied().filter(|id| *id != leader).collect();
    let second = runtime
        .block_on(write_keys(&members, survivors[0], 800..1_400, 8, value_b))
        .unwrap();
    assert_eq!(second.writes, 600);
    let statuses = runtime
        .block_on(client.wait_converged(&survivors, 1_600, CONVERGE))
        .unwrap();
    assert!(
        statuses.iter().all(|s| s.digest == expected.digest()),
        "survivors hold the expected state: {statuses:?}"
    );
    let new_leader = statuses[0].current_leader.expect("a new leader");
    assert_ne!(new_leader, leader);

    // Phase 3: the old leader restarts on its directory and catches up.
    let listener = rebind(&members[&leader]).unwrap();
    let config = node_config(leader, dirs[&leader].path(), &members, false);
    nodes.insert(leader, NodeHandle::spawn_kv(config, listener).unwrap());
    let statuses = runtime
        .block_on(client.wait_converged(&[1, 2, 3], 1_600, CONVERGE))
        .unwrap();
    assert!(
        statuses.iter().all(|s| s.digest == expected.digest()),
        "all three hold the expected state: {statuses:?}"
    );
    let restarted = statuses.iter().find(|s| s.id == leader).unwrap();
    // It was down for 600 entries, with snapshots every 300 and 50 kept: its log was purged
    // away on the leader, so it caught up from a snapshot (keys of ~15 bytes: well over 2 KiB).
    assert!(
        restarted.snapshot_chunks_received > 1,
        "the restarted node received its snapshot in chunks: {restarted:?}"
    );

    for (_, node) in nodes {
        let exit = node.shutdown().unwrap();
        assert!(exit.shards[0].journal.fsyncs > 0);
    }

    // The snapshot the old leader installed is durable: its store, reopened, holds the whole
    // state, though its own log never held the entries the snapshot covers.
    runtime.block_on(async {
        let policy = StoreConfig::for_snapshot_policy(LOGS_SINCE_SNAPSHOT, LOGS_KEPT);
        let (_log, sm, report) = common::open_store(dirs[&leader].path(), policy).await;
        assert!(report.snapshot.is_some(), "{report:?}");
        assert_eq!(sm.digest(), expected.digest());
    });
}
