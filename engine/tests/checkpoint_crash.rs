//! A crash at every step boundary of the checkpoint coordinator (and inside the snapshot persist)
//! recovers to the acknowledged state.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::{model_through, payload, small_config};
use keel_engine::{CheckpointStep, Engine, EngineError, KvStateMachine, StepAction};
use keel_storage::MemFs;

const SEEDS_PER_STEP: u64 = 12;

async fn crash_at(step: CheckpointStep, seed: u64) {
    let fs = MemFs::new(seed);
    let armed = Arc::new(AtomicBool::new(false));
    let mut config = small_config();
    let hook_armed = armed.clone();
    config.step_hook = Some(Arc::new(move |s| {
        if s == step && hook_armed.load(Ordering::SeqCst) {
            StepAction::Halt
        } else {
            StepAction::Continue
        }
    }));
    let (engine, _) = Engine::open(fs.root(), config.clone(), KvStateMachine::new())
        .await
        .unwrap();
    // A first complete checkpoint, so the halted one has an older snapshot and a compacted
    // journal behind it; enough ops to span several 4 KiB segments.
    let first = 20 + seed % 7;
    let acknowledged = first + 30 + seed % 11;
    for op in 1..=acknowledged {
        engine.append(op, &payload(op)).await.unwrap();
        engine.commit(op).await.unwrap();
        if op == first {
            engine.checkpoint().await.unwrap().unwrap();
        }
    }
    engine.persist_commit().await.unwrap();
    // Prepares above the commit: must survive as prepared, never applied.
    for op in acknowledged + 1..=acknowledged + 3 {
        engine.append(op, &payload(op)).await.unwrap();
    }
    armed.store(true, Ordering::SeqCst);
    let err = engine.checkpoint().await.unwrap_err();
    assert!(
        matches!(err, EngineError::Halted { step: s } if s == step),
        "{step:?}: {err}"
    );
    drop(engine);
    fs.crash();

    armed.store(false, Ordering::SeqCst);
    let (engine, report) = Engine::open(fs.root(), config.clone(), KvStateMachine::new())
        .await
        .unwrap_or_else(|e| panic!("{step:?} seed {seed}: reopen failed: {e}"));
    assert_eq!(
        report.applied_op, acknowledged,
        "{step:?} seed {seed}: {report:?}"
    );
    assert_eq!(
        *engine.state_machine(),
        model_through(acknowledged),
        "{step:?} seed {seed}"
    );
    assert_eq!(
        engine.prepared_ops(),
        (acknowledged + 1..=acknowledged + 3).collect::<Vec<_>>(),
        "{step:?} seed {seed}"
    );
    assert!(
        report.snapshot_op == first || report.snapshot_op == acknowledged,
        "{step:?} seed {seed}: snapshot {}",
        report.snapshot_op
    );
    // The engine goes on: the interrupted checkpoint can be redone, and survives a crash.
    engine.commit(acknowledged + 3).await.unwrap();
    engine.checkpoint().await.unwrap().unwrap();
    drop(engine);
    fs.crash();
    let (engine, report) = Engine::open(fs.root(), config, KvStateMachine::new())
        .await
        .unwrap();
    assert_eq!(report.snapshot_op, acknowledged + 3, "{step:?} seed {seed}");
    assert_eq!(*engine.state_machine(), model_through(acknowledged + 3));
}

#[compio::test]
async fn crash_at_every_checkpoint_step() {
    for step in CheckpointStep::ALL {
        for seed in 0..SEEDS_PER_STEP {
            crash_at(step, seed).await;
        }
    }
}

/// An I/O failure at a step (instead of a crash) leaves the engine usable: the checkpoint is
/// reported failed, a retry succeeds, and the state survives a crash.
#[compio::test]
async fn failed_checkpoint_is_retried() {
    use keel_storage::{FaultConfig, FaultKind, FaultOp};
    for fault in [
        FaultOp::Write,
        FaultOp::Sync,
        FaultOp::Rename,
        FaultOp::DirSync,
    ] {
        let fs = MemFs::new(99);
        let (engine, _) = Engine::open(fs.root(), small_config(), KvStateMachine::new())
            .await
            .unwrap();
        for op in 1..=30 {
            engine.append(op, &payload(op)).await.unwrap();
            engine.commit(op).await.unwrap();
        }
        engine.persist_commit().await.unwrap();
        fs.set_faults(
            FaultConfig::new()
                .fail_nth(fault, 1, FaultKind::Io)
                .on_paths_containing("snapshots"),
        );
        let err = engine.checkpoint().await.unwrap_err();
        assert!(matches!(err, EngineError::Snapshot(_)), "{fault:?}: {err}");
        fs.clear_faults();
        let report = engine.checkpoint().await.unwrap().unwrap();
        assert_eq!(report.snapshot_op, 30);
        assert_eq!(engine.stats().checkpoint_failures, 1);
        drop(engine);
        fs.crash();
        let (engine, report) = Engine::open(fs.root(), small_config(), KvStateMachine::new())
            .await
            .unwrap();
        assert_eq!(report.snapshot_op, 30, "{fault:?}");
        assert_eq!(*engine.state_machine(), model_through(30));
    }
}
