//! Helpers shared by the engine's integration tests.
#![allow(dead_code)]

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use keel_engine::{
    encode_delete, encode_set, CheckpointStep, Engine, EngineConfig, EngineError, JournalConfig,
    KvStateMachine, StateMachine, StepAction,
};
use keel_storage::MemFs;
use rand::Rng;
use std::sync::Arc;

/// A small journal so tests cross segment boundaries, compaction and back-pressure quickly.
pub fn small_config() -> EngineConfig {
    let journal = JournalConfig {
        slot_count: 64,
        segment_bytes: 4096,
        max_batch_bytes: 16 << 10,
        max_inflight_bytes: 64 << 10,
        max_payload_bytes: 1024,
        preallocate: false,
        sync_on_append: true,
        write_through: true,
        direct_io: false,
        scan_window_bytes: keel_journal::SCAN_WINDOW_BYTES,
        write_back_bytes: 64 << 10,
    };
    EngineConfig {
        journal,
        checkpoint_margin_ops: 0,
        ..EngineConfig::default()
    }
}

/// The command op `op` carries in the deterministic tests: a set of key `op % 7`, or every
/// fifth op a delete, so states differ op by op.
pub fn payload(op: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let key = format!("k{}", op % 7);
    if op.is_multiple_of(5) {
        encode_delete(key.as_bytes(), &mut out).unwrap();
    } else {
        encode_set(key.as_bytes(), format!("v{op}").as_bytes(), &mut out).unwrap();
    }
    out
}

/// A random key-value command over a small key space.
pub fn random_payload(rng: &mut impl Rng) -> Vec<u8> {
    let mut out = Vec::new();
    let key = [b'k', rng.gen_range(b'a'..=b'h')];
    if rng.gen_bool(0.2) {
        encode_delete(&key, &mut out).unwrap();
    } else {
        let len = rng.gen_range(0..48);
        let value: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        encode_set(&key, &value, &mut out).unwrap();
    }
    out
}

/// The state after applying `payload(1..=through)`.
pub fn model_through(through: u64) -> KvStateMachine {
    let mut kv = KvStateMachine::new();
    for op in 1..=through {
        kv.apply(op, &payload(op)).unwrap();
    }
    kv
}

/// Polls every future until all are done; outputs in input order. (No executor-specific join:
/// the futures run interleaved on the current compio task, as concurrent requests would.)
pub async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    struct JoinAll<F: Future> {
        futures: Vec<Pin<Box<F>>>,
        outputs: Vec<Option<F::Output>>,
    }
    // The futures are boxed and the outputs are never pinned, so moving the struct is fine.
    impl<F: Future> Unpin for JoinAll<F> {}
    impl<F: Future> Future for JoinAll<F> {
        type Output = Vec<F::Output>;
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            let this = self.get_mut();
            let mut done = true;
            for (f, out) in this.futures.iter_mut().zip(this.outputs.iter_mut()) {
                if out.is_none() {
                    match f.as_mut().poll(cx) {
                        Poll::Ready(v) => *out = Some(v),
                        Poll::Pending => done = false,
                    }
                }
            }
            if done {
                Poll::Ready(this.outputs.iter_mut().map(|o| o.take().unwrap()).collect())
            } else {
                Poll::Pending
            }
        }
    }
    let n = futures.len();
    JoinAll {
        futures: futures.into_iter().map(Box::pin).collect(),
        outputs: (0..n).map(|_| None).collect(),
    }
    .await
}

/// Polls both futures until both are done (first one first at each wake-up).
pub async fn join2<A: Future, B: Future>(a: A, b: B) -> (A::Output, B::Output) {
    let mut a = Box::pin(a);
    let mut b = Box::pin(b);
    let mut out_a = None;
    let mut out_b = None;
    std::future::poll_fn(|cx| {
        if out_a.is_none() {
            if let Poll::Ready(v) = a.as_mut().poll(cx) {
                out_a = Some(v);
            }
        }
        if out_b.is_none() {
            if let Poll::Ready(v) = b.as_mut().poll(cx) {
                out_b = Some(v);
            }
        }
        if out_a.is_some() && out_b.is_some() {
            Poll::Ready((out_a.take().unwrap(), out_b.take().unwrap()))
        } else {
            Poll::Pending
        }
    })
    .await
}

/// The engine the integration tests open: key-value state on MemFs.
pub type KvEngine = keel_engine::Engine<keel_storage::MemDirectory, KvStateMachine>;
pub async fn open(fs: &MemFs, config: EngineConfig) -> (KvEngine, keel_engine::RecoveryReport) {
    Engine::open(fs.root(), config, KvStateMachine::new())
        .await
        .expect("open")
}

/// Prepares and commits `from..=to`, then makes the watermark durable.
pub async fn commit_range(engine: &KvEngine, from: u64, to: u64) {
    for op in from..=to {
        engine.append(op, &payload(op)).await.unwrap();
        engine.commit(op).await.unwrap();
    }
    engine.persist_commit().await.unwrap();
}

pub fn snap(op: u64) -> String {
    format!("snapshots/{op:020}.snap")
}

/// Checkpoint at `first`, commit to `second`, then a checkpoint at `second` that stops after
/// `stop` — and crash.
pub async fn two_snapshots(fs: &MemFs, first: u64, second: u64, stop: Option<CheckpointStep>) {
    let mut config = small_config();
    if let Some(stop) = stop {
        let armed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let hook_armed = armed.clone();
        config.step_hook = Some(Arc::new(move |step| {
            if step == stop && hook_armed.load(std::sync::atomic::Ordering::SeqCst) {
                StepAction::Halt
            } else {
                StepAction::Continue
            }
        }));
        let (engine, _) = open(fs, config).await;
        commit_range(&engine, 1, first).await;
        engine.checkpoint().await.unwrap().unwrap();
        commit_range(&engine, first + 1, second).await;
        armed.store(true, std::sync::atomic::Ordering::SeqCst);
        let err = engine.checkpoint().await.unwrap_err();
        assert!(matches!(err, EngineError::Halted { .. }), "{err}");
        drop(engine);
    } else {
        let (engine, _) = open(fs, config).await;
        commit_range(&engine, 1, first).await;
        engine.checkpoint().await.unwrap().unwrap();
        commit_range(&engine, first + 1, second).await;
        engine.checkpoint().await.unwrap().unwrap();
        drop(engine);
    }
    fs.crash();
}
