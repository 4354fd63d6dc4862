//! Compaction: deleting the dead prefix, rewriting a straddling segment, and a crash after every
//! durable step (reopen must give the same live entries).

mod common;

use common::*;
use keel_journal::{CompactionStep, JournalError};
use keel_storage::MemFs;
use std::future::Future;

/// Ops 1..=150 in order over ~4 KiB segments; then a snapshot at `snapshot`.
async fn prepared(fs: &MemFs, snapshot: u64) -> (Journal, Vec<(u64, Vec<u8>)>) {
    prepared_with(fs, snapshot, &small_config()).await
}

/// [`prepared`] under `config`.
async fn prepared_with(
    fs: &MemFs,
    snapshot: u64,
    config: &keel_journal::JournalConfig,
) -> (Journal, Vec<(u64, Vec<u8>)>) {
    let (j, _) = open(fs, config).await;
    for op in 1..=150 {
        j.append(op, &payload(op, 0)).await.unwrap();
    }
    // A few rewrites so older segments hold superseded entries too.
    for op in [snapshot + 1, snapshot + 3, 149] {
        j.append(op, &payload(op, 1)).await.unwrap();
    }
    j.set_snapshot_op(snapshot).await.unwrap();
    let live = read_all(&j).await;
    assert!(live.iter().all(|(op, _)| *op > snapshot));
    (j, live)
}

#[test]
fn compaction_deletes_the_dead_prefix_and_rewrites_the_straddler() {
    let fs = MemFs::new(1);
    let config = small_config();
    run(async {
        let (j, live) = prepared(&fs, 100).await;
        let segments_before = segment_paths(&fs).await.len();
        let report = j.compact().await.unwrap();
        assert!(report.segments_deleted >= 1, "{report:?}");
        assert_eq!(report.segments_rewritten, 1, "{report:?}");
        assert!(report.bytes_after < report.bytes_before, "{report:?}");
        assert!(segment_paths(&fs).await.len() < segments_before);
        assert_eq!(read_all(&j).await, live);
        // Appending continues after compaction; reopen sees the same.
        j.append(151, b"after").await.unwrap();
        drop(j);
        fs.crash();
        let (j, report) = open(&fs, &config).await;
        assert!(report.problems.is_empty(), "{report:?}");
        assert_eq!(j.snapshot_op(), Some(100));
        let mut expected = live.clone();
        expected.push((151, b"after".to_vec()));
        assert_eq!(read_all(&j).await, expected);
        // A second compaction after more checkpoints keeps working (rewritten segments rewrite).
        j.set_snapshot_op(140).await.unwrap();
        j.compact().await.unwrap();
        let live = read_all(&j).await;
        drop(j);
        fs.crash();
        let (j, report) = open(&fs, &config).await;
        assert!(report.problems.is_empty(), "{report:?}");
        assert_eq!(read_all(&j).await, live);
        let verify = keel_journal::MetadataJournal::verify(&fs.root(), config.clone())
            .await
            .unwrap();
        assert!(verify.problems.is_empty(), "{verify:?}");
    });
}

/// A crash after every durable step of a compaction, for a journal that does not preallocate
/// (dead segments deleted) and one that does (the first dead segment renamed to the spare:
/// recycled, then taken by a later rotation, also from the spare found at the next open).
#[test]
fn compaction_survives_a_crash_after_every_step() {
    let preallocating = keel_journal::JournalConfig {
        preallocate: true,
        ..small_config()
    };
    let mut recycled = 0;
    for config in [small_config(), preallocating] {
        recycled += crash_after_every_step(&config);
    }
    assert!(recycled > 0, "no compaction recycled a segment");
}

/// Runs [`compaction_survives_a_crash_after_every_step`] under `config`; returns how many
/// completed compactions left a recycled spare.
fn crash_after_every_step(config: &keel_journal::JournalConfig) -> usize {
    let mut recycled = 0;
    for seed in 0..8u64 {
        for snapshot in [30u64, 100, 152] {
            let mut crash_at = 0usize;
            loop {
                let fs = MemFs::new(seed * 1000 + crash_at as u64);
                let done = run(async {
                    let (j, live) = prepared_with(&fs, snapshot, config).await;
                    let mut steps = 0usize;
                    let mut seen = Vec::new();
                    let result = j
                        .compact_with_hook(&mut |step: CompactionStep| {
                            seen.push(step);
                            steps += 1;
                            if steps > crash_at {
                                Err(JournalError::Poisoned(format!(
                                    "simulated crash after {step:?}"
                                )))
                            } else {
                                Ok(())
                            }
                        })
                        .await;
                    let completed = result.is_ok();
                    let spare = segment_dir_has(&fs, "next.spare").await;
                    drop(j);
                    fs.crash();
                    let (j, report) = open(&fs, config).await;
                    assert!(
                        report.problems.is_empty(),
                        "seed {seed} snapshot {snapshot} crash after {seen:?}: {report:?}"
                    );
                    assert_eq!(j.snapshot_op().unwrap_or(0), snapshot);
                    assert_eq!(
                        read_all(&j).await,
                        live,
                        "seed {seed} snapshot {snapshot} crash after {seen:?}"
                    );
                    // The journal still works, and a later compaction finishes the job.
                    j.append(200, b"more").await.unwrap();
                    j.compact().await.unwrap();
                    let mut expected = live.clone();
                    expected.push((200, b"more".to_vec()));
                    assert_eq!(read_all(&j).await, expected);
                    drop(j);
                    let (j, _) = open(&fs, config).await;
                    assert_eq!(read_all(&j).await, expected);
                    (completed, completed && spare)
                });
                recycled += done.1 as usize;
                if done.0 {
                    break;
                }
                crash_at += 1;
                assert!(crash_at < 100, "compaction never finished");
            }
        }
    }
    recycled
}

/// Whether the journal directory holds a file of that name.
async fn segment_dir_has(fs: &MemFs, name: &str) -> bool {
    use keel_storage::Directory;
    let dir = fs.root().open_dir("journal", false).await.unwrap();
    dir.list().await.unwrap().iter().any(|n| n == name)
}

#[test]
fn compaction_seals_a_mostly_dead_active_segment() {
    let fs = MemFs::new(3);
    let config = keel_journal::JournalConfig {
        segment_bytes: 1 << 16,
        ..small_config()
    };
    run(async {
        let (j, _) = open(&fs, &config).await;
        for op in 1..=200 {
            j.append(op, &[op as u8; 200]).await.unwrap();
        }
        j.set_snapshot_op(195).await.unwrap();
        let live = read_all(&j).await;
        // The only segment is active and mostly dead: sealed, rewritten to its live entries.
        let report = j.compact().await.unwrap();
        assert_eq!(report.segments_rewritten, 1, "{report:?}");
        assert!(report.bytes_after < report.bytes_before / 4, "{report:?}");
        assert_eq!(read_all(&j).await, live);
        j.append(201, b"x").await.unwrap();
        drop(j);
        fs.crash();
        let (j, report) = open(&fs, &config).await;
        assert!(report.problems.is_empty(), "{report:?}");
        assert_eq!(read_all(&j).await.len(), live.len() + 1);
    });
}

/// Compaction recycling a dead segment while appenders make the writer rotate into the spare:
/// whichever interleaving the yields of every storage operation give, each rotation renames the
/// file it wrote its header into, every acknowledged op above the snapshot survives a power cut,
/// and the open after it finds nothing to repair.
#[test]
fn recycling_races_rotations_and_loses_nothing() {
    let config = keel_journal::JournalConfig {
        preallocate: true,
        slot_count: 1024,
        segment_bytes: 1024,
        ..small_config()
    };
    let mut recycled = 0;
    for seed in 0..200u64 {
        let fs = MemFs::new(seed);
        recycled += run(async {
            let (j, _) = open(&fs, &config).await;
            let mut op = 1u64;
            for round in 0..12u64 {
                let appends = 20 + (seed * 7 + round * 3) % 40;
                let snapshot = op.saturating_sub(1 + seed % 5);
                if snapshot > 0 {
                    j.set_snapshot_op(snapshot).await.unwrap();
                }
                let first = op;
                let j = &j;
                // Concurrent appenders: groups that cross rotations while compaction runs.
                let append = async move {
                    let mut each: Vec<_> = (first..first + appends)
                        .map(|o| {
                            Box::pin(async move { j.append(o, &payload(o, 0)).await.unwrap() })
                        })
                        .collect();
                    std::future::poll_fn(|cx| {
                        each.retain_mut(|f| f.as_mut().poll(cx).is_pending());
                        if each.is_empty() {
                            std::task::Poll::Ready(())
                        } else {
                            std::task::Poll::Pending
                        }
                    })
                    .await
                };
                let compact = async {
                    j.compact().await.unwrap();
                };
                futures_join(append, compact).await;
                op += appends;
            }
            let recycled = j.stats().spares_recycled;
            let snapshot = j.snapshot_op().unwrap_or(0);
            drop(j);
            fs.crash();
            let (j, report) = open(&fs, &config).await;
            assert!(report.problems.is_empty(), "seed {seed}: {report:?}");
            for o in snapshot + 1..op {
                let entry = j.entry(o).await.unwrap();
                let entry = entry.unwrap_or_else(|| panic!("seed {seed}: op {o} lost"));
                assert_eq!(entry.payload[..], payload(o, 0)[..], "seed {seed}: op {o}");
            }
            recycled
        });
    }
    assert!(recycled > 0, "no rotation took a recycled segment");
}

/// Polls both futures to completion on this task, interleaved at every await.
async fn futures_join(
    a: impl std::future::Future<Output = ()>,
    b: impl std::future::Future<Output = ()>,
) {
    let (mut a, mut b) = (std::pin::pin!(a), std::pin::pin!(b));
    let (mut a_done, mut b_done) = (false, false);
    std::future::poll_fn(|cx| {
        if !a_done {
            a_done = a.as_mut().poll(cx).is_ready();
        }
        if !b_done {
            b_done = b.as_mut().poll(cx).is_ready();
        }
        if a_done && b_done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await
}
