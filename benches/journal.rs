//! criterion benches of the journal on real files (FsDirectory in a temp dir, compio/io_uring).
//!
//! Each bench builds one compio runtime and runs its measured loop inside `block_on` from
//! `iter_custom`, so criterion times exactly the appends (set-up, watermark moves and closes are
//! outside the timed stretch). Sample sizes and times are small because the disk is shared and
//! slow to fsync; pass `--measurement-time`/`--sample-size` for longer passes.
//!
//! Reproduce: `CARGO_TARGET_DIR=/work/target-bench cargo bench --bench journal`

mod common;

use std::rc::Rc;
use std::time::{Duration, Instant};

use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use keel_journal::JournalConfig;

use common::*;

/// Ring size for the append loops: large enough that a sample rarely needs a watermark move.
const SLOT_COUNT: u64 = 1 << 20;
/// Entries in the recovery input (the 100,000 × 4 KiB).
const RECOVERY_ENTRIES: u64 = 100_000;
const KIB4: usize = 4096;

fn append_fsync(c: &mut Criterion) {
    sequential_appends(c, "append_fsync", &[128, KIB4], true);
}

/// One append at a time, each awaited before the next (durable first when `sync_on_append`).
fn sequential_appends(c: &mut Criterion, name: &str, lens: &[usize], sync_on_append: bool) {
    let rt = runtime();
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Elements(1));
    for &len in lens {
        let dir = bench_tempdir();
        let config = journal_config(SLOT_COUNT, sync_on_append);
        let journal = rt.block_on(open_journal(dir.path(), config));
        let payload = payload(len);
        let mut next_op = 1u64;
        group.bench_function(BenchmarkId::from_parameter(len), |b| {
            b.iter_custom(|iters| {
                rt.block_on(timed_sequential_appends(
                    &journal,
                    &mut next_op,
                    iters,
                    &payload,
                    SLOT_COUNT,
                ))
            })
        });
        rt.block_on(journal.close()).expect("close");
    }
    group.finish();
}

fn group_commit(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("group_commit_4k");
    for appenders in [1u64, 16, 64] {
        // One iteration is one batch: `appenders` entries of 4 KiB, all durable.
        group.throughput(Throughput::Bytes(appenders * KIB4 as u64));
        let dir = bench_tempdir();
        let journal =
            Rc::new(rt.block_on(open_journal(dir.path(), journal_config(SLOT_COUNT, true))));
        let payload: Rc<[u8]> = payload(KIB4).into();
        let mut next_op = 1u64;
        group.bench_function(BenchmarkId::from_parameter(appenders), |b| {
            b.iter_custom(|iters| {
                rt.block_on(timed_group_batches(
                    &journal,
                    &mut next_op,
                    iters,
                    appenders,
                    &payload,
                    SLOT_COUNT,
                ))
            })
        });
        let journal = Rc::try_unwrap(journal).unwrap_or_else(|_| panic!("appenders joined"));
        rt.block_on(journal.close()).expect("close");
    }
    group.finish();
}

fn append_nosync(c: &mut Criterion) {
    sequential_appends(c, "append_nosync", &[128], false);
}

/// Open (the recovery scan, every checksum verified) of 100,000 × 4 KiB from page cache, next to
/// the plain baselines reading the same payloads.
fn recovery(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("recovery_100k_4k");
    // Flat: an iteration takes ~0.1 s, and linear sampling would run 55 of them at least.
    group.sampling_mode(SamplingMode::Flat);
    group.throughput(Throughput::Bytes(RECOVERY_ENTRIES * KIB4 as u64));
    let dir = bench_tempdir();
    let keel_root = dir.path().join("keel");
    let plain_path = dir.path().join("plain.log");
    let payload = payload(KIB4);
    rt.block_on(fill_journal(&keel_root, RECOVERY_ENTRIES, &payload));
    plain_fill(&plain_path, &payload, RECOVERY_ENTRIES).expect("plain fill");
    let config = journal_config(RECOVERY_ENTRIES.next_power_of_two(), true);

    group.bench_function("keel_open", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut elapsed = Duration::ZERO;
                for _ in 0..iters {
                    let started = Instant::now();
                    let journal = open_journal(&keel_root, config.clone()).await;
                    elapsed += started.elapsed();
                    assert_eq!(journal.last_op(), Some(RECOVERY_ENTRIES));
                    journal.close().await.expect("close");
                }
                elapsed
            })
        })
    });
    group.bench_function("keel_open_read_all", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut elapsed = Duration::ZERO;
                for _ in 0..iters {
                    let started = Instant::now();
                    let journal = open_journal(&keel_root, config.clone()).await;
                    let mut reader = journal.reader(1);
                    let mut entries = 0u64;
                    while let Some(entry) = reader.next().await.expect("read") {
                        std::hint::black_box(&entry.payload);
                        entries += 1;
                    }
                    elapsed += started.elapsed();
                    assert_eq!(entries, RECOVERY_ENTRIES);
                    journal.close().await.expect("close");
                }
                elapsed
            })
        })
    });
    group.bench_function("plain_parse_crc_64k_reads", |b| {
        b.iter(|| plain_recover(&plain_path).expect("plain recover"))
    });
    let plain_files = vec![plain_path.clone()];
    group.bench_function("raw_read_crc_64k_reads", |b| {
        b.iter(|| raw_read_crc(&plain_files, READ_CHUNK_BYTES).expect("raw read"))
    });
    group.finish();
}

/// Compaction after a checkpoint: 4,096 × 4 KiB over 1 MiB segments, watermark at 3/4; deletes
/// the segments below it and rewrites the straddling one. A fresh journal per iteration (untimed).
fn compaction(c: &mut Criterion) {
    const ENTRIES: u64 = 4096;
    let rt = runtime();
    let mut group = c.benchmark_group("compaction");
    // Flat: every iteration carries an untimed set-up several times longer than the timed part.
    group.sampling_mode(SamplingMode::Flat);
    let payload = payload(KIB4);
    let config = JournalConfig {
        segment_bytes: 1 << 20,
        ..journal_config(ENTRIES * 2, false)
    };
    group.bench_function("4096x4k_1MiB_segments", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut elapsed = Duration::ZERO;
                for _ in 0..iters {
                    let dir = bench_tempdir();
                    let journal = open_journal(dir.path(), config.clone()).await;
                    for op in 1..=ENTRIES {
                        journal.append(op, &payload).await.expect("append");
                    }
                    journal.flush().await.expect("flush");
                    journal
                        .set_snapshot_op(ENTRIES * 3 / 4)
                        .await
                        .expect("watermark");
                    let started = Instant::now();
                    let report = journal.compact().await.expect("compact");
                    elapsed += started.elapsed();
                    std::hint::black_box(report);
                    journal.close().await.expect("close");
                }
                elapsed
            })
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    // Short by default: the disk is shared and every fsync bench costs real seconds.
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = append_fsync, group_commit, append_nosync, recovery, compaction
}
criterion_main!(benches);
