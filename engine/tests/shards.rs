//! Shards: each on its own thread and runtime, each recovering its own directory; a handle shared
//! by several threads; clean shutdown; failures answered, never left hanging.

mod common;

use std::thread;

use common::{join_all, payload};
use keel_engine::{
    block_on, shard_dir_name, EngineError, KvStateMachine, RecoveryStatus, ShardConfig, ShardSet,
    StateMachine,
};

const OPS_PER_SHARD: u64 = 60;

/// Shard `shard`'s command for `op`: differs between shards so a mixed-up directory shows.
fn shard_payload(shard: usize, op: u64) -> Vec<u8> {
    payload(op * 3 + shard as u64)
}

fn shard_model(shard: usize, through: u64) -> KvStateMachine {
    let mut kv = KvStateMachine::new();
    for op in 1..=through {
        kv.apply(op, &shard_payload(shard, op)).unwrap();
    }
    kv
}

fn config() -> ShardConfig {
    ShardConfig {
        shards: 2,
        pin_cores: true,
        queue_depth: 16,
        engine: common::small_config(),
    }
}

#[test]
fn two_shards_recover_their_own_directories() {
    let tmp = tempfile::tempdir().unwrap();
    let (set, reports) = ShardSet::start(tmp.path(), config(), |_| KvStateMachine::new()).unwrap();
    assert_eq!(reports.len(), 2);
    assert!(reports.iter().all(|r| r.status == RecoveryStatus::Clean));
    let handle = set.handle();

    // Four threads: two per shard, odd and even ops, each its own caller of the shared handle.
    let mut threads = Vec::new();
    for t in 0..4usize {
        let handle = handle.clone();
        threads.push(thread::spawn(move || {
            let shard = t % 2;
            let parity = (t / 2) as u64;
            for op in (1..=OPS_PER_SHARD).filter(|op| op % 2 == parity) {
                block_on(handle.append(shard, op, shard_payload(shard, op))).unwrap();
            }
        }));
    }
    // A fifth caller from inside a compio runtime, many requests in flight at once.
    let from_runtime = {
        let handle = handle.clone();
        thread::spawn(move || {
            compio::runtime::Runtime::new()
                .unwrap()
                .block_on(async move {
                    let stats = join_all((0..2).map(|s| handle.stats(s)).collect()).await;
                    stats.into_iter().all(|s| s.is_ok())
                })
        })
    };
    for t in threads {
        t.join().unwrap();
    }
    assert!(from_runtime.join().unwrap());
    for shard in 0..2 {
        block_on(handle.commit(shard, OPS_PER_SHARD / 2)).unwrap();
        block_on(handle.checkpoint(shard)).unwrap().unwrap();
        block_on(handle.commit(shard, OPS_PER_SHARD)).unwrap();
        let digest = block_on(handle.query(shard, |kv: &KvStateMachine| kv.digest())).unwrap();
        assert_eq!(digest, shard_model(shard, OPS_PER_SHARD).digest());
    }
    let total = block_on(handle.aggregate_stats()).unwrap();
    assert_eq!(total.appends, 2 * OPS_PER_SHARD);
    assert_eq!(total.checkpoints, 2);
    let stats = set.shutdown().unwrap();
    assert_eq!(stats.len(), 2);
    // After shutdown the handle answers, it does not hang.
    assert!(matches!(
        block_on(handle.append(0, OPS_PER_SHARD + 1, vec![1])),
        Err(EngineError::Closed)
    ));

    for shard in 0..2 {
        assert!(tmp.path().join(shard_dir_name(shard)).join("LOCK").exists());
    }
    let (set, reports) = ShardSet::start(tmp.path(), config(), |_| KvStateMachine::new()).unwrap();
    let handle = set.handle();
    for (shard, report) in reports.iter().enumerate() {
        assert_eq!(report.snapshot_op, OPS_PER_SHARD / 2, "shard {shard}");
        assert_eq!(report.applied_op, OPS_PER_SHARD, "shard {shard}");
        let digest = block_on(handle.query(shard, |kv: &KvStateMachine| kv.digest())).unwrap();
        assert_eq!(
            digest,
            shard_model(shard, OPS_PER_SHARD).digest(),
            "shard {shard}"
        );
    }
    assert!(matches!(
        block_on(handle.stats(2)),
        Err(EngineError::NoSuchShard { shard: 2, .. })
    ));
    drop(set); // a clean shutdown on drop
}

#[test]
fn a_shard_that_cannot_open_fails_start_without_hanging() {
    let tmp = tempfile::tempdir().unwrap();
    // shard-1 is a file, not a directory.
    std::fs::write(tmp.path().join(shard_dir_name(1)), b"not a directory").unwrap();
    let err = ShardSet::start(tmp.path(), config(), |_| KvStateMachine::new())
        .err()
        .expect("start fails");
    assert!(
        matches!(err, EngineError::ShardFailed { shard: 1, .. }),
        "{err}"
    );
}

#[test]
fn errors_come_back_through_the_handle() {
    let tmp = tempfile::tempdir().unwrap();
    let (set, _) = ShardSet::start(tmp.path(), config(), |_| KvStateMachine::new()).unwrap();
    let handle = set.handle();
    assert!(matches!(
        block_on(handle.commit(0, 5)),
        Err(EngineError::NotPrepared {
            op: 5,
            missing_op: 1
        })
    ));
    assert!(matches!(
        block_on(handle.append(1, 0, vec![])),
        Err(EngineError::ZeroOp)
    ));
    set.shutdown().unwrap();
}

#[test]
fn a_request_that_panics_on_its_shard_is_answered_not_left_hanging() {
    let tmp = tempfile::tempdir().unwrap();
    let (set, _) = ShardSet::start(tmp.path(), config(), |_| KvStateMachine::new()).unwrap();
    let handle = set.handle();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let caller = {
        let handle = handle.clone();
        thread::spawn(move || {
            let panicked = block_on(handle.query(0, |_kv: &KvStateMachine| -> u64 {
                panic!("a query that panics on the shard")
            }));
            let after = block_on(handle.stats(0)).map(|_| ());
            done_tx.send((panicked.is_err(), after.is_ok())).unwrap();
        })
    };
    let (panicked_is_err, _after) = done_rx
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("the callers were answered");
    assert!(panicked_is_err);
    caller.join().unwrap();
    // Shard 1 is untouched.
    block_on(handle.append(1, 1, payload(1))).unwrap();
    drop(set);
}

#[test]
fn the_handle_is_send_sync_and_clone() {
    fn assert_send_sync_clone<T: Send + Sync + Clone>() {}
    assert_send_sync_clone::<keel_engine::ShardHandle<KvStateMachine>>();
}

/// A shard set on `MemFs` (each shard's file system made on its own thread): a driver task on
/// each shard's thread writes and commits, `reopen` recovers exactly that state in place (the
/// `MemFs` lives as long as the shard), and a task on a shard that does not exist is refused.
#[test]
fn memfs_shards_run_local_tasks_and_recover_in_place_on_reopen() {
    let open_dir =
        |shard: usize| async move { Ok(keel_storage::MemFs::new(90 + shard as u64).root()) };
    let mut config = config();
    config.pin_cores = false;
    let (set, reports) = ShardSet::start_with(open_dir, config, |_| KvStateMachine::new()).unwrap();
    assert_eq!(reports.len(), 2);
    let handle = set.handle();
    let tasks: Vec<_> = (0..2)
        .map(|shard| {
            block_on(handle.spawn_local(shard, move |engine| async move {
                for op in 1..=OPS_PER_SHARD {
                    engine.append(op, &shard_payload(shard, op)).await?;
                    engine.commit(op).await?;
                }
                Ok::<_, EngineError>(engine.state_machine().digest())
            }))
            .unwrap()
        })
        .collect();
    let digests: Vec<u64> = tasks
        .into_iter()
        .map(|t| t.wait().unwrap().unwrap())
        .collect();
    for (shard, digest) in digests.iter().enumerate() {
        assert_eq!(
            *digest,
            shard_model(shard, OPS_PER_SHARD).digest(),
            "shard {shard}"
        );
        let reopened = block_on(handle.reopen(shard)).unwrap();
        // Every op is in the snapshot or replayed (an automatic checkpoint may have run).
        assert!(
            reopened.report.replayed <= OPS_PER_SHARD,
            "shard {shard}: {reopened:?}"
        );
        let recovered = block_on(handle.query(shard, |kv| kv.digest())).unwrap();
        assert_eq!(recovered, *digest, "shard {shard}: recovered state");
    }
    // The reopened engine serves requests like the first one.
    block_on(handle.append(0, OPS_PER_SHARD + 1, shard_payload(0, OPS_PER_SHARD + 1))).unwrap();
    let missing = block_on(handle.run_local(7, |_| async {}));
    assert!(
        matches!(missing, Err(EngineError::NoSuchShard { shard: 7, .. })),
        "{missing:?}"
    );
    set.shutdown().unwrap();
}
