//! Helpers shared by keel-raft's integration tests.
#![allow(dead_code)]

pub mod counter;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use keel_raft::cluster::{bind_listeners, NodeConfig, NodeHandle};
use keel_raft::openraft::BasicNode;
use keel_raft::typ::{Entry, EntryPayload, LeaderId, LogId};
use keel_raft::{KvRequest, KvStateMachineStore, LogStore, OpenReport, StoreConfig, TypeConfig};
use keel_storage::DirAccess;
use keel_storage::FsDirectory;
use openraft::vote::RaftLeaderIdExt;
use openraft::Membership;

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

pub fn log_id(term: u64, node: u64, index: u64) -> LogId {
    LogId::new(LeaderId::new_committed(term, node), index)
}

pub fn set_entry(term: u64, index: u64, key: &str, value: &str) -> Entry {
    Entry {
        log_id: log_id(term, 1, index),
        payload: EntryPayload::Normal(KvRequest::Set {
            key: key.to_string(),
            value: value.to_string(),
        }),
    }
}

pub fn membership_entry(term: u64, index: u64, voters: &[u64]) -> Entry {
    let voters: BTreeSet<u64> = voters.iter().copied().collect();
    Entry {
        log_id: log_id(term, 1, index),
        payload: EntryPayload::Membership(Membership::new_with_defaults(vec![voters], [])),
    }
}

pub type Store = (
    LogStore<TypeConfig, FsDirectory>,
    KvStateMachineStore<FsDirectory>,
    OpenReport,
);

pub async fn open_store(path: &Path, config: StoreConfig) -> Store {
    let root = FsDirectory::open_with(path, DirAccess::Create)
        .await
        .expect("open store directory");
    keel_raft::open_kv(root, config).await.expect("open store")
}

/// Opens the store, waiting (bounded) for the directory lock: after `Raft::shutdown` openraft's
/// detached tasks may still hold a clone of the old store for a moment on this runtime.
pub async fn open_store_after_shutdown(path: &Path, config: StoreConfig) -> Store {
    use openraft::type_config::TypeConfigExt;
    for _ in 0..200 {
        let root = FsDirectory::open_with(path, DirAccess::Create)
            .await
            .expect("open store directory");
        match keel_raft::open_kv(root, config.clone()).await {
            Ok(store) => return store,
            Err(keel_raft::RaftStoreError::Io { stage: "lock", .. }) => {
                keel_raft::TypeConfig::sleep(std::time::Duration::from_millis(10)).await
            }
            Err(error) => panic!("open store: {error}"),
        }
    }
    panic!("the old store still holds the lock after 2 s");
}

/// A 3-node cluster's directories, members and running nodes (node 1 initializes).
pub struct TestCluster {
    pub dirs: BTreeMap<u64, tempfile::TempDir>,
    pub members: BTreeMap<u64, BasicNode>,
    pub nodes: BTreeMap<u64, NodeHandle>,
}

/// Starts nodes 1..=3 on fresh temporary directories, each with `config(id, dir, members,
/// initialize)`.
pub fn start_cluster(
    config: impl Fn(u64, &Path, &BTreeMap<u64, BasicNode>, bool) -> NodeConfig,
) -> TestCluster {
    let dirs: BTreeMap<u64, tempfile::TempDir> = (1..=3)
        .map(|id| (id, tempfile::tempdir().unwrap()))
        .collect();
    let (listeners, members) = bind_listeners(1..=3).unwrap();
    let nodes = listeners
        .into_iter()
        .map(|(id, listener)| {
            let node_config = config(id, dirs[&id].path(), &members, id == 1);
            (id, NodeHandle::spawn_kv(node_config, listener).unwrap())
        })
        .collect();
    TestCluster {
        dirs,
        members,
        nodes,
    }
}

/// A node on disk with `shards` groups, snapshotting every `policy.0` entries and keeping
/// `policy.1` behind (openraft's loopback timing, the store sized from the same policy).
pub fn disk_node(
    id: u64,
    dir: &Path,
    members: &BTreeMap<u64, BasicNode>,
    initialize: bool,
    shards: u32,
    policy: (u64, u64),
) -> NodeConfig {
    NodeConfig {
        id,
        dir: dir.to_path_buf(),
        members: members.clone(),
        initialize,
        shards,
        medium: keel_raft::cluster::Medium::Disk,
        raft: keel_raft::cluster::raft_config(policy.0, policy.1).unwrap(),
        store: StoreConfig::for_snapshot_policy(policy.0, policy.1),
    }
}
