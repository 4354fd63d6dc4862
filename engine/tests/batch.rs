//! Batch prepares: checked whole, durable when they resolve, and the engine keeps the caller's
//! `Bytes` (no copy of its own).

mod common;

use bytes::Bytes;
use common::{commit_range, model_through, open, payload, small_config};
use keel_engine::EngineError;
use keel_storage::MemFs;

fn batch(ops: std::ops::RangeInclusive<u64>) -> Vec<(u64, Bytes)> {
    ops.map(|op| (op, Bytes::from(payload(op)))).collect()
}

#[compio::test]
async fn a_batch_is_durable_when_it_resolves_and_keeps_the_callers_bytes() {
    let fs = MemFs::new(31);
    let (engine, _) = open(&fs, small_config()).await;
    let entries = batch(1..=40);
    engine.append_batch(&entries).await.unwrap();
    for (op, bytes) in &entries {
        let kept = engine.prepared_payload(*op).expect("prepared");
        assert_eq!(
            kept.as_ptr(),
            bytes.as_ptr(),
            "op {op}: the engine copied the payload"
        );
    }
    fs.crash();
    let (engine, report) = open(&fs, small_config()).await;
    assert_eq!(engine.prepared_ops().len(), 40, "{report:?}");
    commit_range(&engine, 1, 40).await;
    assert_eq!(*engine.state_machine(), model_through(40));
}

#[compio::test]
async fn a_batch_with_one_refused_op_prepares_none() {
    let fs = MemFs::new(32);
    let (engine, _) = open(&fs, small_config()).await;
    engine.append_batch(&batch(1..=5)).await.unwrap();
    commit_range(&engine, 1, 5).await;
    let mut entries = batch(6..=10);
    entries.push((3, Bytes::from(payload(3))));
    let error = engine.append_batch(&entries).await.unwrap_err();
    assert!(
        matches!(error, EngineError::AlreadyCommitted { op: 3, .. }),
        "{error}"
    );
    assert!(
        engine.prepared_ops().is_empty(),
        "{:?}",
        engine.prepared_ops()
    );
    assert_eq!(engine.last_op(), 5);
}
