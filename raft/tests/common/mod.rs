//! Helpers shared by keel-raft's integration tests.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::Path;

use keel_raft::typ::{Entry, EntryPayload, LeaderId, LogId};
use keel_raft::{KvRequest, KvStateMachineStore, LogStore, OpenReport, StoreConfig, TypeConfig};
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
    let root = FsDirectory::open(path, true, false)
        .await
        .expect("open store directory");
    keel_raft::open_kv(root, config).await.expect("open store")
}

/// Opens the store, waiting (bounded) for the directory lock: after `Raft::shutdown` openraft's
/// detached tasks may still hold a clone of the old store for a moment on this runtime.
pub async fn open_store_after_shutdown(path: &Path, config: StoreConfig) -> Store {
    use openraft::type_config::TypeConfigExt;
    for _ in 0..200 {
        let root = FsDirectory::open(path, true, false)
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
