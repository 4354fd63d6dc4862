//! Every proof of durability is used, quarantine never destroys, a refused open touches nothing,
//! and the directories an open depends on are durable before anything is acknowledged.

mod common;

use std::rc::Rc;

use common::*;
use keel_journal::format::SEGMENT_HEADER_BYTES;
use keel_journal::{JournalConfig, JournalError, MetadataJournal, RecoveryMode};
use keel_storage::{Directory, FaultConfig, FaultKind, FaultOp, MemFs};

fn expect_corrupt(
    result: Result<(Journal, keel_journal::ScanReport), JournalError>,
) -> JournalError {
    match result {
        Ok((_, report)) => panic!("open accepted damage of acknowledged data: {report:?}"),
        Err(error @ JournalError::Corrupt { .. }) => error,
        Err(other) => panic!("expected a corruption refusal, got {other}"),
    }
}

/// A no-fsync journal flushed, then killed before its close marker: a bit flipped early in the
/// first segment is damage of acknowledged data, because the later segments' headers (a
/// rotation fsyncs everything before it) prove the first segment was durable. Before the fix it
/// was cut as a torn tail, losing every op after it.
#[test]
fn later_segment_headers_prove_earlier_segments_durable() {
    let config = JournalConfig {
        sync_on_append: false,
        ..small_config()
    };
    run(async {
        let fs = MemFs::new(101);
        let (j, _) = open(&fs, &config).await;
        for op in 1..=200 {
            j.append(op, &payload(op, 0)).await.unwrap();
        }
        j.flush().await.unwrap();
        drop(j); // killed: no close marker
        let segments = segment_paths(&fs).await;
        assert!(segments.len() >= 3, "{segments:?}");
        fs.flip_bit(&segments[0], SEGMENT_HEADER_BYTES as u64 + 20, 3)
            .unwrap();
        let before = snapshot_files(&fs).await;
        let error = expect_corrupt(
            MetadataJournal::open(&fs.root(), config.clone(), RecoveryMode::TolerateTornTail).await,
        );
        assert!(error.to_string().contains("corrupt_entry"), "{error}");
        assert_eq!(snapshot_files(&fs).await, before, "a refusal wrote");
    });
}

/// The fsync before a rotation advances the durable watermark later entries carry, even with
/// `sync_on_append = false` and no flush: entries written after a rotation vouch for the whole
/// previous segment. (Buffered appends carry the watermark known when they are accepted: the
/// 16 KiB in-flight bound makes the writer write several groups here, and every group after the
/// first was accepted after the first group's rotation fsyncs.)
#[test]
fn rotation_fsync_advances_the_durable_watermark() {
    let config = JournalConfig {
        sync_on_append: false,
        ..small_config()
    };
    run(async {
        let fs = MemFs::new(102);
        let (j, _) = open(&fs, &config).await;
        for i in 0..500u64 {
            // Rewrites past the 256-slot ring: the bytes, not the ops, fill the groups.
            let op = i % 256 + 1;
            j.append(op, &payload(op, i / 256)).await.unwrap();
        }
        drop(j);
        let raw = MetadataJournal::raw_entries(&fs.root(), config.clone(), 0, u64::MAX)
            .await
            .unwrap();
        let first_segment = raw[0].file.clone();
        let last_seq_of_first = raw
            .iter()
            .filter(|e| e.file == first_segment)
            .map(|e| e.seq)
            .max()
            .unwrap();
        let last = raw.last().unwrap();
        assert_ne!(last.file, first_segment);
        assert!(
            last.durable_seq >= last_seq_of_first,
            "the last entry claims durable_seq {} but the rotation fsynced through seq {}",
            last.durable_seq,
            last_seq_of_first
        );
    });
}

/// With one fsync per group, a group that spans a rotation: its entries in the new segment carry
/// the watermark from before the group, but the new segment's header proves the old segment's
/// tail durable. Damage in that tail is corruption, not a torn tail.
#[test]
fn damage_before_a_rotation_inside_the_last_group_is_refused() {
    let config = JournalConfig {
        max_batch_bytes: 64 << 10,
        max_inflight_bytes: 256 << 10,
        ..small_config()
    };
    run(async {
        let fs = MemFs::new(103);
        let (j, _) = open(&fs, &config).await;
        let j = Rc::new(j);
        j.append(1, b"first").await.unwrap();
        let handles: Vec<_> = (2..=80u64)
            .map(|op| {
                let j = j.clone();
                compio::runtime::spawn(async move { j.append(op, &payload(op, 0)).await })
            })
            .collect();
        for h in handles {
            h.await.expect("task").unwrap();
        }
        drop(j);
        let raw = MetadataJournal::raw_entries(&fs.root(), config.clone(), 0, u64::MAX)
            .await
            .unwrap();
        let first_segment = raw[0].file.clone();
        let last_of_first = raw.iter().rfind(|e| e.file == first_segment).unwrap();
        assert!(raw.iter().any(|e| e.file != first_segment), "no rotation");
        // Damage the header of the first segment's last entry (every later entry's watermark is
        // from before the group: only the header proof covers it).
        fs.flip_bit(
            &format!("journal/{first_segment}"),
            last_of_first.offset_bytes + 9,
            0,
        )
        .unwrap();
        expect_corrupt(
            MetadataJournal::open(&fs.root(), config.clone(), RecoveryMode::TolerateTornTail).await,
        );
    });
}

/// Two repairs at the same segment and offset: the second quarantine file is new, the first
/// keeps exactly the bytes its cut removed, and each report's `bytes` is its cut length.
#[test]
fn quarantine_never_overwrites_an_earlier_copy() {
    let config = JournalConfig {
        segment_bytes: 1 << 20,
        ..small_config()
    };
    run(async {
        let fs = MemFs::new(104);
        build_log(&fs, &config, 6).await;
        let spans = entry_spans(&fs, &config).await;
        let (path, offset, len, _) = spans.last().unwrap().clone();
        let original = fs.read_raw(&path).unwrap();
        fs.cut_raw(&path, offset + len - 3).unwrap();
        let (j, first) = open(&fs, &config).await;
        assert_eq!(first.repairs.len(), 1, "{first:?}");
        let first_copy = format!("quarantine/{}", first.repairs[0].quarantine_file);
        let first_bytes = original[offset as usize..(offset + len - 3) as usize].to_vec();
        assert_eq!(first.repairs[0].bytes, first_bytes.len() as u64);
        assert_eq!(fs.read_raw(&first_copy).unwrap(), first_bytes);
        // Write op 6 again at the same place, tear it again, shorter.
        j.append(6, &payload(6, 1)).await.unwrap();
        drop(j);
        let rewritten = fs.read_raw(&path).unwrap();
        let end = rewritten.len() as u64;
        fs.cut_raw(&path, end - 10).unwrap();
        let (_, second) = open(&fs, &config).await;
        assert_eq!(second.repairs.len(), 1, "{second:?}");
        assert_eq!(second.repairs[0].offset_bytes, offset);
        let second_copy = format!("quarantine/{}", second.repairs[0].quarantine_file);
        assert_ne!(
            second_copy, first_copy,
            "the second repair reused the first's name"
        );
        assert_eq!(
            fs.read_raw(&second_copy).unwrap(),
            rewritten[offset as usize..(end - 10) as usize].to_vec()
        );
        assert_eq!(second.repairs[0].bytes, end - 10 - offset);
        assert_eq!(
            fs.read_raw(&first_copy).unwrap(),
            first_bytes,
            "the first copy changed"
        );
    });
}

/// A cut quarantines exactly the bytes it removes, preallocated zeroes included.
#[test]
fn quarantine_keeps_trailing_zeroes() {
    let config = JournalConfig {
        segment_bytes: 64 << 10,
        preallocate: true,
        ..small_config()
    };
    run(async {
        let fs = MemFs::new(105);
        build_log(&fs, &config, 5).await;
        let spans = entry_spans(&fs, &config).await;
        let (path, offset, len, _) = spans.last().unwrap().clone();
        let original = fs.read_raw(&path).unwrap();
        assert!(original.len() as u64 > offset + len, "not preallocated");
        // Tear the last entry's payload in place (the zeroes after it stay).
        fs.write_raw(&path, offset + len - 4, &[0xAB; 4]).unwrap();
        let damaged = fs.read_raw(&path).unwrap();
        let (_, report) = open(&fs, &config).await;
        assert_eq!(report.repairs.len(), 1, "{report:?}");
        let copy = fs
            .read_raw(&format!("quarantine/{}", report.repairs[0].quarantine_file))
            .unwrap();
        assert_eq!(copy, damaged[offset as usize..].to_vec());
        assert_eq!(report.repairs[0].bytes, damaged.len() as u64 - offset);
    });
}

/// A leftover compaction temp file is quarantined before it is removed; a file keel did not
/// name is left alone; a refused open touches neither.
#[test]
fn compaction_temps_are_quarantined_and_foreign_files_kept() {
    let config = small_config();
    run(async {
        let fs = MemFs::new(106);
        build_log(&fs, &config, 5).await;
        let temp = "journal/00000000000000000007.wal.tmp";
        let foreign = "journal/notes.wal.tmp";
        fs.write_raw(temp, 0, b"half a rewrite").unwrap();
        fs.write_raw(foreign, 0, b"an operator's file").unwrap();
        let (j, _) = open(&fs, &config).await;
        drop(j);
        assert!(!fs.exists(temp), "the temp file stayed");
        assert_eq!(fs.read_raw(foreign).unwrap(), b"an operator's file");
        let quarantine = fs.root().open_dir("quarantine", false).await.unwrap();
        let names = quarantine.list().await.unwrap();
        let copy = names
            .iter()
            .find(|n| n.contains("00000000000000000007.wal.tmp"))
            .unwrap_or_else(|| panic!("no quarantined temp in {names:?}"));
        assert_eq!(
            fs.read_raw(&format!("quarantine/{copy}")).unwrap(),
            b"half a rewrite"
        );
    });
}

/// A refused open leaves a leftover temp where it was and creates nothing.
#[test]
fn a_refused_open_creates_and_removes_nothing() {
    let config = small_config();
    run(async {
        let fs = MemFs::new(107);
        build_log(&fs, &config, 40).await;
        let segments = segment_paths(&fs).await;
        fs.flip_bit(&segments[0], SEGMENT_HEADER_BYTES as u64 + 70, 1)
            .unwrap();
        let temp = "journal/00000000000000000009.wal.tmp";
        fs.write_raw(temp, 0, b"leftover").unwrap();
        expect_corrupt(
            MetadataJournal::open(&fs.root(), config.clone(), RecoveryMode::TolerateTornTail).await,
        );
        assert!(fs.exists(temp));
        assert!(!fs.exists("quarantine"), "a refusal created quarantine/");
    });
}

/// A new segment whose directory fsync failed, then a process crash (no power cut): the restart
/// adopts the segment from the page cache, appends into it and acknowledges; a later power cut
/// must not take the segment, and the acknowledged ops in it, away.
#[test]
fn a_restart_makes_an_adopted_segment_durable_before_acknowledging() {
    let config = small_config();
    run(async {
        let fs = MemFs::new(108);
        let (j, _) = open(&fs, &config).await;
        j.append(1, &payload(1, 0)).await.unwrap();
        // The next rotation's directory fsync fails: the new segment exists only in the cache.
        fs.set_faults(
            FaultConfig::new()
                .fail_nth(FaultOp::DirSync, 1, FaultKind::Io)
                .on_paths_containing("journal"),
        );
        let mut op = 2;
        loop {
            match j.append(op, &[7u8; 900]).await {
                Ok(()) => op += 1,
                Err(_) => break,
            }
            assert!(op < 100, "no rotation happened");
        }
        fs.clear_faults();
        drop(j);
        fs.process_crash();
        let (j, _) = open(&fs, &config).await;
        let acked_from = j.last_op().unwrap() + 1;
        for next in acked_from..acked_from + 3 {
            j.append(next, &payload(next, 0)).await.unwrap();
        }
        drop(j);
        fs.crash();
        let (j, _) = open(&fs, &config).await;
        for next in acked_from..acked_from + 3 {
            assert_eq!(
                j.entry(next).await.unwrap().map(|e| e.payload.to_vec()),
                Some(payload(next, 0)),
                "acknowledged op {next} lost after the power cut"
            );
        }
    });
}
