//! Checkpoints that do not stall commits: the state is frozen when the checkpoint starts and
//! serialized piece by piece while commits go on; what is persisted is exactly the frozen state.

mod common;

use common::{join2, small_config, KvEngine};
use keel_engine::{encode_set, Engine, KvStateMachine, StateMachine};
use keel_storage::MemFs;

/// A command setting key `op % keys` to a 300-byte value derived from `op`.
fn big_set(op: u64, keys: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let value: Vec<u8> = (0..300).map(|i| (op as u8).wrapping_add(i as u8)).collect();
    encode_set(format!("key-{:05}", op % keys).as_bytes(), &value, &mut out).unwrap();
    out
}

async fn commit(engine: &KvEngine, op: u64, keys: u64) {
    engine.append(op, &big_set(op, keys)).await.unwrap();
    engine.commit(op).await.unwrap();
}

/// 4,000 keys of 300 B (a 1.2 MB snapshot: several pieces): commits keep applying while the
/// checkpoint runs, the snapshot holds the state at its op, and recovery from it plus the
/// journal gives every committed op.
#[compio::test]
async fn commits_run_during_a_checkpoint_and_the_snapshot_is_the_frozen_state() {
    const KEYS: u64 = 4000;
    let fs = MemFs::new(41);
    let mut config = small_config();
    config.journal.slot_count = 1 << 14;
    config.journal.segment_bytes = 1 << 20;
    config.journal.max_payload_bytes = 4096;
    let (engine, _) = Engine::open(fs.root(), config.clone(), KvStateMachine::new())
        .await
        .unwrap();
    for op in 1..=KEYS {
        commit(&engine, op, KEYS).await;
    }
    let frozen = engine.state_machine().snapshot();
    let checkpoint_done = std::cell::Cell::new(false);
    let committed_meanwhile = std::cell::Cell::new(0u64);
    let checkpoint = async {
        let report = engine.checkpoint().await;
        checkpoint_done.set(true);
        report
    };
    let during = async {
        let mut op = KEYS;
        for _ in 0..200 {
            op += 1;
            commit(&engine, op, KEYS).await;
            if !checkpoint_done.get() {
                committed_meanwhile.set(committed_meanwhile.get() + 1);
            }
        }
        op
    };
    let (report, last_op) = join2(checkpoint, during).await;
    assert!(
        committed_meanwhile.get() > 0,
        "no commit completed while the checkpoint ran"
    );
    let report = report.unwrap().expect("a checkpoint ran");
    assert_eq!(
        report.snapshot_op, KEYS,
        "the snapshot is at the op applied when it began"
    );
    assert!(report.snapshot_bytes > 1 << 20, "{report:?}");
    engine.persist_commit().await.unwrap();
    drop(engine);
    fs.crash();
    let (engine, recovered) = Engine::open(fs.root(), config, KvStateMachine::new())
        .await
        .unwrap();
    assert_eq!(recovered.snapshot_op, KEYS, "{recovered:?}");
    let mut expected = KvStateMachine::new();
    expected.restore(&frozen).unwrap();
    for op in KEYS + 1..=last_op {
        expected.apply(op, &big_set(op, KEYS)).unwrap();
    }
    assert_eq!(engine.state_machine().digest(), expected.digest());
}

/// With buffered appends the ops a checkpoint covers may not be written yet: the checkpoint
/// still records their journal position, and the snapshot recovers after a flush and a crash.
#[compio::test]
async fn a_checkpoint_of_buffered_ops_records_their_position() {
    let fs = MemFs::new(42);
    let mut config = small_config();
    config.journal.sync_on_append = false;
    config.journal.max_batch_bytes = 1 << 20;
    let (engine, _) = Engine::open(fs.root(), config.clone(), KvStateMachine::new())
        .await
        .unwrap();
    for op in 1..=40 {
        commit(&engine, op, 16).await;
    }
    let report = engine
        .checkpoint()
        .await
        .unwrap()
        .expect("a checkpoint ran");
    assert_eq!(report.snapshot_op, 40);
    engine.flush().await.unwrap();
    drop(engine);
    fs.crash();
    let (engine, recovered) = Engine::open(fs.root(), config, KvStateMachine::new())
        .await
        .unwrap();
    assert_eq!(recovered.snapshot_op, 40, "{recovered:?}");
    let mut expected = KvStateMachine::new();
    for op in 1..=40 {
        expected.apply(op, &big_set(op, 16)).unwrap();
    }
    assert_eq!(engine.state_machine().digest(), expected.digest());
}
