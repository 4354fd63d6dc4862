//! The recovery table on hand-made damage: torn tails at every byte, bit flips in every durable
//! entry, zeroed sectors, chain breaks, segment mismatches, modes, verify.

mod common;

use common::*;
use keel_journal::format::{
    encode_entry, Binding, EntryKind, NewEntry, SegmentHeader, SEGMENT_HEADER_BYTES,
};
use keel_journal::{JournalConfig, JournalError, MetadataJournal, RecoveryMode, VerifyStatus};
use keel_storage::MemFs;

fn one_segment_config() -> JournalConfig {
    JournalConfig {
        segment_bytes: 1 << 20,
        ..small_config()
    }
}

async fn expect_refusal(fs: &MemFs, config: &JournalConfig, mode: RecoveryMode) -> JournalError {
    match MetadataJournal::open(&fs.root(), config.clone(), mode).await {
        Ok((_, report)) => panic!("open accepted damage: {report:?}"),
        Err(e) => e,
    }
}

#[test]
fn torn_tail_at_every_byte_of_the_last_entry() {
    let config = one_segment_config();
    run(async {
        let base = MemFs::new(10);
        let files = build_log(&base, &config, 8).await;
        let spans = entry_spans(&base, &config).await;
        let (path, offset, len, last_op) = spans.last().unwrap().clone();
        assert_eq!(last_op, 8);
        let original = files.iter().find(|(p, _)| *p == path).unwrap().1.clone();
        for cut in offset..offset + len {
            let fs = clone_fs(cut, &files).await;
            fs.cut_raw(&path, cut).unwrap();
            let (j, report) = open(&fs, &config).await;
            assert_eq!(j.last_op(), Some(7), "cut {cut}");
            for op in 1..=7 {
                assert_eq!(
                    j.entry(op).await.unwrap().unwrap().payload.to_vec(),
                    payload(op, 0)
                );
            }
            if cut == offset {
                assert!(
                    report.repairs.is_empty(),
                    "cut at a boundary is a clean end"
                );
            } else {
                assert_eq!(report.repairs.len(), 1, "cut {cut}: {report:?}");
                let repair = &report.repairs[0];
                assert_eq!(repair.kind, keel_journal::PlannedCut::TornTail);
                assert_eq!(repair.offset_bytes, offset);
                assert_eq!(report.problems[0].kind, keel_journal::Case::TornTail);
                let quarantined = fs
                    .read_raw(&format!("quarantine/{}", repair.quarantine_file))
                    .unwrap();
                let cut_bytes = &original[offset as usize..cut as usize];
                assert_eq!(quarantined, cut_bytes, "cut {cut}");
                assert_eq!(repair.bytes, cut - offset, "cut {cut}");
            }
            drop(j);
            // A second open changes nothing.
            let before = snapshot_files(&fs).await;
            let (j, report) = open(&fs, &config).await;
            assert!(
                report.repairs.is_empty() && report.problems.is_empty(),
                "{report:?}"
            );
            assert_eq!(j.last_op(), Some(7));
            drop(j);
            assert_eq!(
                snapshot_files(&fs).await,
                before,
                "cut {cut}: second open wrote"
            );
        }
    });
}

#[test]
fn torn_tail_in_preallocated_space_at_every_byte() {
    let config = JournalConfig {
        preallocate: true,
        segment_bytes: 8192,
        ..small_config()
    };
    run(async {
        let base = MemFs::new(11);
        let files = build_log(&base, &config, 6).await;
        let spans = entry_spans(&base, &config).await;
        let (path, offset, len, _) = spans.last().unwrap().clone();
        let original = files.iter().find(|(p, _)| *p == path).unwrap().1.clone();
        for cut in offset..offset + len {
            let fs = clone_fs(cut, &files).await;
            // The crash kept a prefix of the write; the rest of the entry is still zeroes.
            let zeroes = vec![0u8; (offset + len - cut) as usize];
            fs.write_raw(&path, cut, &zeroes).unwrap();
            // Zeroing bytes that were zero already (padding) leaves the entry whole.
            let intact = original[cut as usize..(offset + len) as usize]
                .iter()
                .all(|&b| b == 0);
            let (j, report) = open(&fs, &config).await;
            assert_eq!(j.last_op(), Some(if intact { 6 } else { 5 }), "cut {cut}");
            let repaired = cut > offset && !intact;
            assert_eq!(
                report.repairs.len(),
                usize::from(repaired),
                "cut {cut}: {report:?}"
            );
            if !repaired {
                continue;
            }
            drop(j);
            let (j, report) = open(&fs, &config).await;
            assert!(report.repairs.is_empty(), "{report:?}");
            j.append(6, b"again").await.unwrap();
            drop(j);
            let (j, report) = open(&fs, &config).await;
            assert!(report.problems.is_empty());
            assert_eq!(
                j.entry(6).await.unwrap().unwrap().payload.to_vec(),
                b"again"
            );
        }
    });
}

#[test]
fn bit_flip_in_each_durable_entry_is_refused_and_touches_nothing() {
    let config = small_config(); // several segments
    run(async {
        let base = MemFs::new(12);
        let files = build_log(&base, &config, 150).await;
        let spans = entry_spans(&base, &config).await;
        assert!(
            spans
                .iter()
                .map(|s| &s.0)
                .collect::<std::collections::BTreeSet<_>>()
                .len()
                > 2
        );
        // Every entry but the last is covered by the next entry's durable watermark.
        for (i, (path, offset, len, op)) in spans[..spans.len() - 1].iter().enumerate() {
            let fs = clone_fs(i as u64, &files).await;
            let within = (i as u64 * 37) % len;
            fs.flip_bit(path, offset + within, (i % 8) as u8).unwrap();
            let before = snapshot_files(&fs).await;
            for mode in [RecoveryMode::TolerateTornTail, RecoveryMode::Absolute] {
                let err = expect_refusal(&fs, &config, mode).await;
                match &err {
                    JournalError::Corrupt {
                        kind,
                        file,
                        offset_bytes,
                        op: found,
                    } => {
                        assert_eq!(*kind, keel_journal::Case::CorruptEntry, "{err}");
                        assert_eq!(format!("journal/{file}"), *path);
                        assert_eq!(offset_bytes, offset);
                        if within >= 64 {
                            assert_eq!(*found, Some(*op), "payload damage names the op");
                        }
                    }
                    other => panic!("expected Corrupt, got {other}"),
                }
            }
            assert_eq!(
                snapshot_files(&fs).await,
                before,
                "a refusal must touch nothing"
            );
            let report = MetadataJournal::verify(&fs.root(), config.clone())
                .await
                .unwrap();
            assert_eq!(report.status(), VerifyStatus::Corrupt);
            assert_eq!(
                snapshot_files(&fs).await,
                before,
                "verify must touch nothing"
            );
        }
    });
}

#[test]
fn bit_flip_in_the_last_entry_reads_as_a_torn_tail() {
    // Documented limit: nothing after the last entry vouches for it, so damage there is
    // indistinguishable from a torn write.
    let config = one_segment_config();
    run(async {
        let base = MemFs::new(13);
        let files = build_log(&base, &config, 5).await;
        let (path, offset, _, _) = entry_spans(&base, &config).await.last().unwrap().clone();
        let fs = clone_fs(1, &files).await;
        fs.flip_bit(&path, offset + 70, 3).unwrap();
        let (j, report) = open(&fs, &config).await;
        assert_eq!(report.problems[0].kind, keel_journal::Case::TornTail);
        assert_eq!(j.last_op(), Some(4));
    });
}

#[test]
fn zeroed_sector_in_the_middle_is_corruption_and_at_the_tail_a_torn_tail() {
    let config = one_segment_config();
    run(async {
        let base = MemFs::new(14);
        let files = build_log(&base, &config, 40).await;
        let spans = entry_spans(&base, &config).await;
        let path = spans[0].0.clone();
        let end = spans.last().map(|s| s.1 + s.2).unwrap();
        assert!(end > 2048);
        // Middle: a whole 512-byte sector reads back as zeroes (etcd #6515), entries after it valid.
        let fs = clone_fs(1, &files).await;
        fs.write_raw(&path, 1024, &[0u8; 512]).unwrap();
        let before = snapshot_files(&fs).await;
        let err = expect_refusal(&fs, &config, RecoveryMode::TolerateTornTail).await;
        assert!(
            matches!(
                err,
                JournalError::Corrupt {
                    kind: keel_journal::Case::CorruptEntry,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(snapshot_files(&fs).await, before);
        // Tail: the last sector of the written data zeroed, nothing after it.
        let fs = clone_fs(2, &files).await;
        let sector = (end - 1) / 512 * 512;
        fs.write_raw(&path, sector, &vec![0u8; (end - sector) as usize])
            .unwrap();
        let (j, report) = open(&fs, &config).await;
        let expect_last = spans
            .iter()
            .filter(|s| s.1 + s.2 <= sector)
            .map(|s| s.3)
            .max();
        assert_eq!(j.last_op(), expect_last);
        if spans.iter().any(|s| s.1 == sector) {
            assert!(
                report.problems.is_empty(),
                "sector aligned to an entry: clean end"
            );
        } else {
            assert_eq!(
                report.problems[0].kind,
                keel_journal::Case::TornTail,
                "{report:?}"
            );
        }
    });
}

/// Hand-built segment: entries seq 1..=n, all claiming `durable_seq` from `durable(seq)`.
fn handmade_segment(n: u64, durable: impl Fn(u64) -> u64) -> (Vec<u8>, Vec<u64>) {
    let mut bytes = SegmentHeader::new(0, 1, 0).encode().to_vec();
    let mut offsets = Vec::new();
    let mut prev = 0;
    for seq in 1..=n {
        offsets.push(bytes.len() as u64);
        prev = encode_entry(
            &mut bytes,
            &NewEntry {
                kind: EntryKind::Data,
                seq,
                op: seq,
                prev_crc: prev,
                durable_seq: durable(seq),
                commit_op: 0,
            },
            &payload(seq, 0),
            Binding::Plain,
        );
    }
    (bytes, offsets)
}

#[test]
fn valid_entry_after_damage_is_torn_only_when_no_watermark_covers_it() {
    let config = one_segment_config();
    run(async {
        let name = "journal/00000000000000000000.wal".to_string();
        // One unsynced batch (all durable_seq 0): damage in it with later entries = torn tail.
        let (bytes, offsets) = handmade_segment(6, |_| 0);
        let fs = clone_fs(1, &[(name.clone(), bytes.clone())]).await;
        fs.flip_bit(&name, offsets[2] + 8, 0).unwrap();
        let (j, report) = open(&fs, &config).await;
        assert_eq!(report.problems[0].kind, keel_journal::Case::TornTail);
        assert_eq!(j.last_op(), Some(2));
        // Entry 3's header is damaged (op unknown); 4..=6 were readable.
        assert_eq!(report.torn_ops, vec![4..=6]);
        let cut_len = bytes.len() as u64 - offsets[2];
        let quarantined = report.repairs[0].bytes;
        assert!(
            quarantined <= cut_len && quarantined + 8 > cut_len,
            "trailing zero padding is not copied"
        );
        drop(j);
        // Damage in entry 3's payload, but entry 6 says everything up to 4 was fsynced: corruption.
        let (bytes, offsets) = handmade_segment(6, |seq| if seq == 6 { 4 } else { 0 });
        let fs = clone_fs(2, &[(name.clone(), bytes)]).await;
        fs.flip_bit(&name, offsets[2] + 66, 0).unwrap();
        let err = expect_refusal(&fs, &config, RecoveryMode::TolerateTornTail).await;
        assert!(
            matches!(err, JournalError::Corrupt { kind: keel_journal::Case::CorruptEntry, offset_bytes, .. } if offset_bytes == offsets[2]),
            "{err}"
        );
        // Point-in-time cuts there and names the lost ops.
        let (j, report) =
            MetadataJournal::open(&fs.root(), config.clone(), RecoveryMode::PointInTime)
                .await
                .unwrap();
        assert_eq!(j.last_op(), Some(2));
        assert_eq!(
            report.repairs[0].kind,
            keel_journal::PlannedCut::PointInTime
        );
        assert_eq!(report.lost_ops, vec![3..=6]);
    });
}

#[test]
fn chain_break_and_segment_mismatch_are_refused() {
    let config = one_segment_config();
    run(async {
        let name = "journal/00000000000000000000.wal".to_string();
        // A stale copy of entry 2 where entry 4 should be: checksums fine, seq wrong.
        let (bytes, offsets) = handmade_segment(5, |seq| seq - 1);
        let mut stale = bytes[..offsets[3] as usize].to_vec();
        stale.extend_from_slice(&bytes[offsets[1] as usize..offsets[2] as usize]);
        let fs = clone_fs(1, &[(name.clone(), stale)]).await;
        let err = expect_refusal(&fs, &config, RecoveryMode::TolerateTornTail).await;
        assert!(
            matches!(
                err,
                JournalError::Corrupt {
                    kind: keel_journal::Case::ChainBreak,
                    op: Some(2),
                    ..
                }
            ),
            "{err}"
        );
        // A segment whose number does not match its name.
        let fs = clone_fs(
            2,
            &[(
                "journal/00000000000000000007.wal".to_string(),
                bytes.clone(),
            )],
        )
        .await;
        let err = expect_refusal(&fs, &config, RecoveryMode::TolerateTornTail).await;
        assert!(
            matches!(
                err,
                JournalError::Corrupt {
                    kind: keel_journal::Case::SegmentMismatch,
                    ..
                }
            ),
            "{err}"
        );
        // A newer format version is refused even by point-in-time.
        let mut newer = bytes.clone();
        newer[8] = 9;
        let fs = clone_fs(3, &[(name.clone(), newer)]).await;
        let before = snapshot_files(&fs).await;
        let err = expect_refusal(&fs, &config, RecoveryMode::PointInTime).await;
        assert!(
            matches!(
                err,
                JournalError::Corrupt {
                    kind: keel_journal::Case::UnknownVersion,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(snapshot_files(&fs).await, before);
    });
}

#[test]
fn missing_middle_segment_is_refused() {
    let config = small_config();
    run(async {
        let base = MemFs::new(15);
        let files = build_log(&base, &config, 150).await;
        let segs: Vec<_> = files.iter().filter(|(p, _)| p.ends_with(".wal")).collect();
        assert!(segs.len() >= 3);
        let without: Vec<_> = files
            .iter()
            .filter(|(p, _)| *p != segs[1].0)
            .cloned()
            .collect();
        let fs = clone_fs(1, &without).await;
        let err = expect_refusal(&fs, &config, RecoveryMode::TolerateTornTail).await;
        assert!(
            matches!(
                err,
                JournalError::Corrupt {
                    kind: keel_journal::Case::SegmentMismatch,
                    ..
                }
            ),
            "{err}"
        );
    });
}

#[test]
fn torn_segment_header_is_repaired_by_removing_the_segment() {
    let config = small_config();
    run(async {
        let base = MemFs::new(16);
        let mut files = build_log(&base, &config, 20).await;
        let last_op = {
            let (j, _) = open(&base, &config).await;
            j.last_op()
        };
        // A new segment whose header write was torn by the crash.
        let next = files.iter().filter(|(p, _)| p.ends_with(".wal")).count();
        let name = format!("journal/{next:020}.wal");
        let mut header = SegmentHeader::new(next as u64, 999, 0).encode().to_vec();
        header.truncate(SEGMENT_HEADER_BYTES / 2);
        files.push((name.clone(), header));
        let fs = clone_fs(1, &files).await;
        let (j, report) = open(&fs, &config).await;
        assert_eq!(
            report.problems[0].kind,
            keel_journal::Case::TornSegmentHeader,
            "{report:?}"
        );
        assert!(!fs.exists(&name));
        assert_eq!(j.last_op(), last_op);
        j.append(21, b"after").await.unwrap();
        drop(j);
        let (_, report) = open(&fs, &config).await;
        assert!(report.problems.is_empty(), "{report:?}");
    });
}

#[test]
fn absolute_refuses_a_torn_tail_and_verify_reports_it() {
    let config = one_segment_config();
    run(async {
        let base = MemFs::new(17);
        let files = build_log(&base, &config, 5).await;
        let (path, offset, _, _) = entry_spans(&base, &config).await.last().unwrap().clone();
        let fs = clone_fs(1, &files).await;
        fs.cut_raw(&path, offset + 10).unwrap();
        let before = snapshot_files(&fs).await;
        let err = expect_refusal(&fs, &config, RecoveryMode::Absolute).await;
        assert!(
            matches!(
                err,
                JournalError::Corrupt {
                    kind: keel_journal::Case::TornTail,
                    ..
                }
            ),
            "{err}"
        );
        let report = MetadataJournal::verify(&fs.root(), config.clone())
            .await
            .unwrap();
        assert_eq!(report.status(), VerifyStatus::TornTail);
        assert_eq!(report.problems.len(), 1);
        assert_eq!(snapshot_files(&fs).await, before);
    });
}

#[test]
fn verify_reports_every_problem() {
    let config = small_config();
    run(async {
        let base = MemFs::new(18);
        let files = build_log(&base, &config, 60).await;
        let spans = entry_spans(&base, &config).await;
        let fs = clone_fs(1, &files).await;
        fs.flip_bit(&spans[3].0, spans[3].1 + 70, 1).unwrap();
        fs.flip_bit(&spans[40].0, spans[40].1 + 70, 1).unwrap();
        let report = MetadataJournal::verify(&fs.root(), config.clone())
            .await
            .unwrap();
        assert_eq!(report.problems.len(), 2, "{report:?}");
        assert_eq!(report.problems[0].op, Some(spans[3].3));
        assert_eq!(report.problems[1].op, Some(spans[40].3));
        assert_eq!(report.status(), VerifyStatus::Corrupt);
    });
}

#[test]
fn after_a_clean_close_damage_in_the_last_entry_is_corruption() {
    let config = one_segment_config();
    run(async {
        let fs = MemFs::new(19);
        let (j, _) = open(&fs, &config).await;
        for op in 1..=5 {
            j.append(op, &payload(op, 0)).await.unwrap();
        }
        j.close().await.unwrap();
        // Closing again after a reopen without writes adds nothing.
        let before = snapshot_files(&fs).await;
        let (j, _) = open(&fs, &config).await;
        j.close().await.unwrap();
        assert_eq!(
            snapshot_files(&fs).await,
            before,
            "an idle close writes nothing"
        );
        let spans = entry_spans(&fs, &config).await;
        let (path, offset, _, op) = spans.iter().rev().find(|s| s.3 == 5).unwrap().clone();
        assert_eq!(op, 5);
        fs.flip_bit(&path, offset + 70, 2).unwrap();
        let err = expect_refusal(&fs, &config, RecoveryMode::TolerateTornTail).await;
        assert!(
            matches!(
                err,
                JournalError::Corrupt {
                    kind: keel_journal::Case::CorruptEntry,
                    op: Some(5),
                    ..
                }
            ),
            "{err}"
        );
    });
}

#[test]
fn extreme_ops_and_watermarks_do_not_overflow() {
    let config = one_segment_config();
    run(async {
        let name = "journal/00000000000000000000.wal".to_string();
        let mut bytes = SegmentHeader::new(0, 1, 0).encode().to_vec();
        let mut prev = 0;
        for (seq, kind, op) in [
            (1u64, EntryKind::Snapshot, u64::MAX - 3),
            (2, EntryKind::Data, u64::MAX),
            (3, EntryKind::Data, u64::MAX - 1),
            (4, EntryKind::Commit, u64::MAX),
        ] {
            prev = encode_entry(
                &mut bytes,
                &NewEntry {
                    kind,
                    seq,
                    op,
                    prev_crc: prev,
                    durable_seq: seq - 1,
                    commit_op: u64::MAX,
                },
                b"edge",
                Binding::Plain,
            );
        }
        let fs = clone_fs(1, &[(name, bytes)]).await;
        let (j, report) = open(&fs, &config).await;
        assert!(report.problems.is_empty(), "{report:?}");
        assert_eq!(j.snapshot_op(), Some(u64::MAX - 3));
        assert_eq!(
            read_all(&j).await.iter().map(|e| e.0).collect::<Vec<_>>(),
            vec![u64::MAX - 1, u64::MAX]
        );
        assert_eq!(j.remaining_capacity(), 0);
        assert!(matches!(
            j.append(u64::MAX - 3, b"x").await,
            Err(JournalError::BelowSnapshot { .. })
        ));
        j.append(u64::MAX - 2, b"y").await.unwrap();
        j.truncate_after(u64::MAX - 2).await.unwrap();
        assert_eq!(j.last_op(), Some(u64::MAX - 2));
    });
}

/// Bytes after a sealed segment's last entry that belong to no entry (a misdirected write's copy
/// of an earlier block, here: valid, checksummed entry headers in the wrong place) are not a torn
/// tail: the next segment's header starts the log exactly at that segment's end, so every
/// acknowledged op stays, the open cuts nothing, and verify calls the log clean while listing
/// the stray bytes. (Before, the open cut the later segments as a torn tail, losing acknowledged
/// ops.)
#[test]
fn stray_bytes_after_a_sealed_segment_end_cut_nothing() {
    use keel_journal::Case;
    use keel_storage::{Directory, OpenMode, Storage};
    let config = small_config();
    run(async {
        let fs = MemFs::new(21);
        let (j, _) = open(&fs, &config).await;
        let ops = 1..=120u64;
        for op in ops.clone() {
            j.append(op, &payload(op, 1)).await.unwrap();
        }
        j.close().await.unwrap();
        let segments = MetadataJournal::inspect(&fs.root(), config.clone())
            .await
            .unwrap();
        assert!(segments.len() >= 3, "the workload spans several segments");
        let sealed = &segments[0];
        let dir = fs.root().open_dir("journal", false).await.unwrap();
        let file = dir
            .open_file(&sealed.file, OpenMode::Existing)
            .await
            .unwrap();
        // A copy of the segment's first entries, placed on the next sector after its end.
        let copy = file
            .read_exact_at(SEGMENT_HEADER_BYTES as u64, 512)
            .await
            .unwrap();
        let at = sealed.data_end_bytes.next_multiple_of(512);
        file.write_all_at(at, copy).await.0.unwrap();
        file.sync().await.unwrap();
        fs.crash();

        let report = MetadataJournal::verify(&fs.root(), config.clone())
            .await
            .unwrap();
        assert_eq!(report.status(), VerifyStatus::Clean, "{report:?}");
        assert!(
            report
                .problems
                .iter()
                .any(|p| p.kind == Case::StrayAfterEnd && p.file == sealed.file),
            "verify lists the stray bytes: {report:?}"
        );
        let (j, report) = open(&fs, &config).await;
        assert!(report.repairs.is_empty(), "nothing cut: {report:?}");
        assert!(report
            .problems
            .iter()
            .any(|p| p.kind == Case::StrayAfterEnd));
        for op in ops {
            assert_eq!(
                j.entry(op)
                    .await
                    .unwrap()
                    .expect("acknowledged op kept")
                    .payload[..],
                payload(op, 1)[..],
                "op {op}"
            );
        }
    });
}
