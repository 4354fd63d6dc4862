//! The journal's everyday contract on MemFs: append, read back, reopen, group commit, bounds,
//! truncation, snapshot watermark, rotation.

mod common;

use std::rc::Rc;

use common::*;
use keel_journal::{JournalConfig, JournalError, MetadataJournal, RecoveryMode};
use keel_storage::MemFs;

#[test]
fn append_read_reopen() {
    let fs = MemFs::new(1);
    let config = small_config();
    run(async {
        let (j, report) = open(&fs, &config).await;
        assert_eq!(report.entries_read, 0);
        assert_eq!(j.last_op(), None);
        for op in 1..=40 {
            j.append(op, &payload(op, 0)).await.unwrap();
        }
        assert_eq!(j.last_op(), Some(40));
        assert_eq!(
            j.entry(17).await.unwrap().unwrap().payload.to_vec(),
            payload(17, 0)
        );
        assert_eq!(j.entry(41).await.unwrap(), None);
        let all = read_all(&j).await;
        assert_eq!(all.len(), 40);
        assert!(j.stats().segments_live > 1, "4 KiB segments must rotate");
        j.close().await.unwrap();

        fs.crash();
        let (j, report) = open(&fs, &config).await;
        assert!(report.problems.is_empty(), "{report:?}");
        assert_eq!(report.first_op, Some(1));
        assert_eq!(report.last_op, Some(40));
        assert_eq!(read_all(&j).await, all);
        // Continue appending after reopen, across the chain.
        j.append(41, &payload(41, 0)).await.unwrap();
        drop(j);
        fs.crash();
        let (j, report) = open(&fs, &config).await;
        assert!(report.problems.is_empty(), "{report:?}");
        assert_eq!(j.last_op(), Some(41));
    });
}

#[test]
fn out_of_order_rewrites_and_gaps() {
    let fs = MemFs::new(2);
    let config = small_config();
    run(async {
        let (j, _) = open(&fs, &config).await;
        for op in [5, 3, 9, 3, 7, 5] {
            j.append(op, &payload(op, op * 100 + j.stats().appends))
                .await
                .unwrap();
        }
        let ops: Vec<u64> = read_all(&j).await.iter().map(|e| e.0).collect();
        assert_eq!(ops, vec![3, 5, 7, 9]);
        let before = read_all(&j).await;
        drop(j);
        fs.crash();
        let (j, _) = open(&fs, &config).await;
        assert_eq!(
            read_all(&j).await,
            before,
            "rewrites supersede across reopen"
        );
    });
}

#[test]
fn full_and_below_snapshot_write_nothing() {
    let fs = MemFs::new(3);
    let config = JournalConfig {
        slot_count: 64,
        ..small_config()
    };
    run(async {
        let (j, _) = open(&fs, &config).await;
        j.append(64, b"x").await.unwrap();
        let syncs = fs.sync_count();
        let err = j.append(65, b"y").await.unwrap_err();
        assert!(
            matches!(
                err,
                JournalError::Full {
                    op: 65,
                    snapshot_op: 0,
                    distance: 65,
                    slot_count: 64
                }
            ),
            "{err}"
        );
        assert_eq!(fs.sync_count(), syncs, "Full must not write");
        assert_eq!(j.remaining_capacity(), 0);
        assert_eq!(
            j.snapshot_op(),
            None,
            "no watermark before the first checkpoint"
        );
        j.set_snapshot_op(10).await.unwrap();
        assert_eq!(j.snapshot_op(), Some(10));
        assert_eq!(j.remaining_capacity(), 10);
        j.append(74, b"z").await.unwrap();
        let err = j.append(10, b"w").await.unwrap_err();
        assert!(
            matches!(
                err,
                JournalError::BelowSnapshot {
                    op: 10,
                    snapshot_op: 10
                }
            ),
            "{err}"
        );
        let err = j.append(11, &vec![0u8; 2000]).await.unwrap_err();
        assert!(matches!(err, JournalError::PayloadTooLarge { .. }), "{err}");
        drop(j);
        fs.crash();
        let (j, report) = open(&fs, &config).await;
        assert_eq!(j.snapshot_op(), Some(10));
        assert_eq!(report.snapshot_op, Some(10));
        assert_eq!(j.live_ops(), 2);
        assert_eq!(j.slot_count(), 64);
        assert_eq!(
            read_all(&j).await.iter().map(|e| e.0).collect::<Vec<_>>(),
            vec![64, 74]
        );
    });
}

#[test]
fn truncate_after_is_journaled() {
    let fs = MemFs::new(4);
    let config = small_config();
    run(async {
        let (j, _) = open(&fs, &config).await;
        for op in 1..=20 {
            j.append(op, &payload(op, 0)).await.unwrap();
        }
        j.truncate_after(12).await.unwrap();
        assert_eq!(j.last_op(), Some(12));
        j.append(13, &payload(13, 1)).await.unwrap();
        drop(j);
        fs.crash();
        let (j, _) = open(&fs, &config).await;
        assert_eq!(j.last_op(), Some(13));
        assert_eq!(
            j.entry(13).await.unwrap().unwrap().payload.to_vec(),
            payload(13, 1)
        );
        assert_eq!(j.entry(14).await.unwrap(), None);
    });
}

#[test]
fn commit_watermark_persists() {
    let fs = MemFs::new(5);
    let config = small_config();
    run(async {
        let (j, _) = open(&fs, &config).await;
        j.append(1, b"a").await.unwrap();
        j.set_commit_op(1);
        assert_eq!(j.durable_commit_op(), None, "not durable until written");
        j.persist_commit().await.unwrap();
        assert_eq!(j.durable_commit_op(), Some(1));
        j.append(2, b"b").await.unwrap();
        j.set_commit_op(2);
        j.append(3, b"c").await.unwrap();
        assert_eq!(j.durable_commit_op(), Some(2), "carried by the next entry");
        drop(j);
        fs.crash();
        let (j, report) = open(&fs, &config).await;
        assert_eq!(report.commit_op, Some(2));
        assert_eq!(j.durable_commit_op(), Some(2));
    });
}

#[test]
fn group_commit_batches_concurrent_appends() {
    let fs = MemFs::new(6);
    let config = JournalConfig {
        slot_count: 1024,
        ..small_config()
    };
    run(async {
        let (j, _) = open(&fs, &config).await;
        let j = Rc::new(j);
        let mut handles = Vec::new();
        for op in 1..=200u64 {
            let j = j.clone();
            handles.push(compio::runtime::spawn(async move {
                j.append(op, &payload(op, 0)).await
            }));
        }
        for h in handles {
            h.await.expect("task").unwrap();
        }
        let stats = j.stats();
        assert_eq!(stats.appends, 200);
        assert!(stats.batches < 100, "appends must share batches: {stats:?}");
        assert!(stats.fsyncs < 150, "appends must share fsyncs: {stats:?}");
        assert_eq!(read_all(&j).await.len(), 200);
    });
}

#[test]
fn a_burst_spawned_in_one_tick_shares_one_group_commit() {
    let fs = MemFs::new(16);
    let config = JournalConfig {
        slot_count: 1024,
        segment_bytes: 1 << 20,
        max_batch_bytes: 64 << 10,
        max_inflight_bytes: 256 << 10,
        ..small_config()
    };
    run(async {
        let (j, _) = open(&fs, &config).await;
        let j = Rc::new(j);
        j.append(1, b"first").await.unwrap(); // the segment exists before the burst
        let before = j.stats();
        let handles: Vec<_> = (2..=65u64)
            .map(|op| {
                let j = j.clone();
                compio::runtime::spawn(async move { j.append(op, &payload(op, 0)).await })
            })
            .collect();
        for h in handles {
            h.await.expect("task").unwrap();
        }
        let after = j.stats();
        assert_eq!(after.appends - before.appends, 64);
        // The first appender must not write its entry alone before the other 63 have queued.
        assert_eq!(after.batches - before.batches, 1, "{before:?} -> {after:?}");
        assert_eq!(after.fsyncs - before.fsyncs, 1, "{before:?} -> {after:?}");
    });
}

#[test]
fn sync_none_mode_flushes_on_demand() {
    let fs = MemFs::new(7);
    let config = JournalConfig {
        sync_on_append: false,
        ..small_config()
    };
    run(async {
        let (j, _) = open(&fs, &config).await;
        j.append(1, b"first").await.unwrap(); // creates (and fsyncs) the first segment
        let syncs = fs.sync_count();
        for op in 2..=10 {
            j.append(op, &payload(op, 0)).await.unwrap();
        }
        assert_eq!(fs.sync_count(), syncs, "no fsync before flush");
        j.flush().await.unwrap();
        assert!(fs.sync_count() > syncs);
        drop(j);
        fs.crash();
        let (j, _) = open(&fs, &config).await;
        assert_eq!(j.last_op(), Some(10));
    });
}

#[test]
fn preallocated_segments_reopen_clean() {
    let fs = MemFs::new(8);
    let config = JournalConfig {
        preallocate: true,
        ..small_config()
    };
    run(async {
        let (j, _) = open(&fs, &config).await;
        for op in 1..=30 {
            j.append(op, &payload(op, 0)).await.unwrap();
        }
        let all = read_all(&j).await;
        drop(j);
        for path in segment_paths(&fs).await {
            let bytes = fs.read_raw(&path).unwrap();
            // Preallocated in steps of segment_bytes / 8, zeroes after the data.
            assert!(
                bytes.len() >= 512 && bytes.len() <= 4096,
                "{path}: {}",
                bytes.len()
            );
            assert!(
                bytes.ends_with(&[0u8; 8]),
                "{path} ends in preallocated zeroes"
            );
        }
        fs.crash();
        let (j, report) = open(&fs, &config).await;
        assert!(report.problems.is_empty(), "{report:?}");
        assert_eq!(read_all(&j).await, all);
    });
}

#[test]
fn verify_on_clean_journal_and_read_only_open() {
    let fs = MemFs::new(9);
    let config = small_config();
    run(async {
        let (j, _) = open(&fs, &config).await;
        for op in 1..=60 {
            j.append(op, &payload(op, 0)).await.unwrap();
        }
        drop(j);
        let report = MetadataJournal::verify(&fs.root(), config.clone())
            .await
            .unwrap();
        assert!(report.problems.is_empty(), "{report:?}");
        assert_eq!(report.last_op, Some(60));
        let (j, _) =
            MetadataJournal::open(&fs.root_read_only(), config.clone(), RecoveryMode::Absolute)
                .await
                .unwrap();
        assert_eq!(read_all(&j).await.len(), 60);
        assert!(matches!(
            j.append(61, b"x").await,
            Err(JournalError::ReadOnly { .. })
        ));
        let segs = MetadataJournal::inspect(&fs.root(), config.clone())
            .await
            .unwrap();
        assert!(segs.len() > 1);
        assert_eq!(segs[0].first_op, Some(1));
        let raw = MetadataJournal::raw_entries(&fs.root(), config.clone(), 5, 6)
            .await
            .unwrap();
        assert_eq!(raw.iter().map(|e| e.op).collect::<Vec<_>>(), vec![5, 6]);
    });
}

#[test]
fn an_fsync_error_poisons_the_journal() {
    use keel_storage::{FaultConfig, FaultKind, FaultOp};
    let fs = MemFs::new(10);
    // Write + fdatasync: a write-through journal has no fsync to fail (its writes fail instead).
    let config = JournalConfig {
        write_through: false,
        direct_io: false,
        ..small_config()
    };
    run(async {
        let (j, _) = open(&fs, &config).await;
        j.append(1, b"ok").await.unwrap();
        fs.set_faults(FaultConfig::new().fail_nth(FaultOp::Sync, 1, FaultKind::Io));
        let err = j.append(2, b"lost").await.unwrap_err();
        assert!(
            matches!(err, JournalError::Io { stage: "fsync", .. }),
            "{err}"
        );
        fs.clear_faults();
        // Every later call fails, even though the disk works again.
        assert!(matches!(
            j.append(3, b"x").await,
            Err(JournalError::Poisoned(_))
        ));
        assert!(matches!(j.flush().await, Err(JournalError::Poisoned(_))));
        assert!(matches!(j.entry(1).await, Err(JournalError::Poisoned(_))));
        assert!(matches!(j.compact().await, Err(JournalError::Poisoned(_))));
        drop(j);
        fs.crash();
        let (j, _) = open(&fs, &config).await;
        assert_eq!(j.entry(1).await.unwrap().unwrap().payload.to_vec(), b"ok");
        assert_eq!(j.entry(3).await.unwrap(), None);
    });
}

#[test]
fn a_write_error_fails_the_whole_group_and_poisons() {
    use keel_storage::{FaultConfig, FaultKind, FaultOp};
    let fs = MemFs::new(11);
    let config = JournalConfig {
        slot_count: 1024,
        ..small_config()
    };
    run(async {
        let (j, _) = open(&fs, &config).await;
        j.append(1, b"first").await.unwrap();
        fs.set_faults(FaultConfig::new().fail_from(FaultOp::Write, 1, FaultKind::ShortWrite));
        let j = Rc::new(j);
        let mut handles = Vec::new();
        for op in 2..=20u64 {
            let j = j.clone();
            handles.push(compio::runtime::spawn(async move {
                j.append(op, b"doomed").await
            }));
        }
        for h in handles {
            let result = h.await.expect("task");
            assert!(
                matches!(
                    result,
                    Err(JournalError::Io { .. } | JournalError::Poisoned(_))
                ),
                "{result:?}"
            );
        }
    });
}

#[test]
fn in_flight_bound_makes_appends_wait_not_fail() {
    let fs = MemFs::new(12);
    let config = JournalConfig {
        slot_count: 1024,
        max_inflight_bytes: 600, // a handful of entries
        ..small_config()
    };
    run(async {
        let (j, _) = open(&fs, &config).await;
        let j = Rc::new(j);
        let mut handles = Vec::new();
        for op in 1..=100u64 {
            let j = j.clone();
            handles.push(compio::runtime::spawn(async move {
                j.append(op, &payload(op, 0)).await
            }));
        }
        for h in handles {
            h.await.expect("task").unwrap();
        }
        assert_eq!(read_all(&j).await.len(), 100);
        assert!(
            j.stats().batches > 10,
            "a 600-byte bound splits 100 appends into many groups"
        );
    });
}

#[test]
fn idle_segment_handles_are_released_and_reopened_on_demand() {
    let fs = MemFs::new(13);
    let config = small_config(); // 4 KiB segments, slot_count 256
    run(async {
        let (j, _) = open(&fs, &config).await;
        for op in 1..=200 {
            j.append(op, &payload(op, 0)).await.unwrap();
        }
        let segments = j.stats().segments_live;
        assert!(segments >= 5, "{segments}");
        // Every segment still holds live ops: all handles open.
        assert_eq!(j.open_segment_handles() as u64, segments);
        j.set_snapshot_op(190).await.unwrap();
        for op in 201..=260 {
            j.append(op, &payload(op, 0)).await.unwrap();
        }
        assert!(
            j.open_segment_handles() <= 4,
            "dead sealed segments keep no handle: {} of {}",
            j.open_segment_handles(),
            j.stats().segments_live
        );
        assert_eq!(read_all(&j).await.len(), 70);
        // Compaction (which needs no handle to delete) still works, and so does reading.
        j.compact().await.unwrap();
        assert_eq!(read_all(&j).await.len(), 70);
        drop(j);
        fs.crash();
        let (j, report) = open(&fs, &config).await;
        assert!(report.problems.is_empty(), "{report:?}");
        assert_eq!(read_all(&j).await.len(), 70);
    });
}
