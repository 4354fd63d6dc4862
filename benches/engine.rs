//! criterion benches of the engine on real files: checkpoint, and append latency while
//! checkpoints run back to back (the tail a consensus loop sees when a checkpoint lands).
//!
//! Reproduce: `CARGO_TARGET_DIR=/work/target-bench cargo bench --bench engine`
//! The p99-vs-steady comparison with interleaved rounds is in `--bench compare` (section
//! `checkpoint_latency`); here criterion reports the mean, and the latency percentiles seen during
//! the whole run (warm-up included) are printed to stderr.

mod common;

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode};

use common::*;
use keel_engine::Histogram;

const SLOT_COUNT: u64 = 1 << 16;
/// Value size of the bench's key-value commands.
const VALUE_BYTES: usize = 128;

/// An engine whose state machine holds `keys` keys (so a snapshot is ~`keys` × 150 B), with a
/// durable snapshot already taken; appends fsync per entry when `sync_on_append`.
fn preloaded_engine(
    rt: &compio::runtime::Runtime,
    root: &std::path::Path,
    keys: u64,
    sync_on_append: bool,
) -> (KvEngine, u64) {
    rt.block_on(async {
        // Load without fsync, checkpoint, close: the bench then reopens with its own setting.
        let engine = open_engine(root, engine_config(ring(keys), false)).await;
        let mut next_op = 1;
        engine_load(&engine, &mut next_op, keys, keys, VALUE_BYTES).await;
        engine.checkpoint().await.expect("preload checkpoint");
        engine.close().await.expect("close");
        let engine = open_engine(root, engine_config(ring(keys), sync_on_append)).await;
        (engine, next_op)
    })
}

/// Slot ring for an engine preloaded with `keys` ops: a power of two with room to spare.
fn ring(keys: u64) -> u64 {
    SLOT_COUNT.max((keys * 2).next_power_of_two())
}

fn checkpoint(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("checkpoint");
    group.sampling_mode(SamplingMode::Flat);
    for keys in [10_000u64, 100_000] {
        let dir = bench_tempdir();
        let (engine, mut next_op) = preloaded_engine(&rt, dir.path(), keys, false);
        group.bench_function(BenchmarkId::new("kv_keys", keys), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut elapsed = Duration::ZERO;
                    for _ in 0..iters {
                        // New applied ops, so the checkpoint has something to do (untimed).
                        engine_load(&engine, &mut next_op, 256, keys, VALUE_BYTES).await;
                        let started = Instant::now();
                        let report = engine.checkpoint().await.expect("checkpoint");
                        elapsed += started.elapsed();
                        assert!(report.is_some());
                    }
                    elapsed
                })
            })
        });
        rt.block_on(engine.close()).expect("close");
    }
    group.finish();
}

/// Appends with fsync per entry (then commits each), steady vs with checkpoints running back to
/// back on the same core. 100,000 keys of state: a checkpoint serialises ~15 MB.
fn append_during_checkpoint(c: &mut Criterion) {
    const KEYS: u64 = 100_000;
    let rt = runtime();
    let mut group = c.benchmark_group("append_fsync_during_checkpoint");
    for with_checkpoints in [false, true] {
        let dir = bench_tempdir();
        let (engine, next_op) = preloaded_engine(&rt, dir.path(), KEYS, true);
        let engine = Rc::new(engine);
        let next_op = Rc::new(Cell::new(next_op));
        let mut histogram = Histogram::new();
        let name = if with_checkpoints {
            "checkpoints_running"
        } else {
            "steady"
        };
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let stop = Rc::new(Cell::new(false));
                    let checkpointer = with_checkpoints.then(|| {
                        let engine = engine.clone();
                        let stop = stop.clone();
                        compio::runtime::spawn(async move {
                            while !stop.get() {
                                engine.checkpoint().await.expect("checkpoint");
                                keel_storage::yield_now().await;
                            }
                        })
                    });
                    let mut command = Vec::new();
                    let started = Instant::now();
                    for _ in 0..iters {
                        let op = next_op.get();
                        kv_set(op % KEYS, VALUE_BYTES, &mut command);
                        let append_started = Instant::now();
                        engine.append(op, &command).await.expect("append");
                        histogram.record(append_started.elapsed().as_micros() as u64);
                        engine.commit(op).await.expect("commit");
                        next_op.set(op + 1);
                    }
                    let elapsed = started.elapsed();
                    stop.set(true);
                    if let Some(task) = checkpointer {
                        task.await.expect("checkpoint task");
                    }
                    elapsed
                })
            })
        });
        eprintln!(
            "append_fsync_during_checkpoint/{name}: n={} p50={} us p99={} us p999={} us max={} us",
            histogram.count(),
            histogram.quantile(0.5),
            histogram.quantile(0.99),
            histogram.quantile(0.999),
            histogram.max()
        );
        let engine = Rc::try_unwrap(engine).unwrap_or_else(|_| panic!("tasks joined"));
        rt.block_on(engine.close()).expect("close");
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = checkpoint, append_during_checkpoint
}
criterion_main!(benches);
