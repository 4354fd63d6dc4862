//! The journal on the real file system (FsDirectory in a temp dir): append, reopen, a torn tail
//! made with std::fs, group commit.

mod common;

use std::rc::Rc;

use common::{payload, run};
use keel_journal::{JournalConfig, MetadataJournal, RecoveryMode};
use keel_storage::DirAccess;
use keel_storage::FsDirectory;

fn config() -> JournalConfig {
    JournalConfig {
        segment_bytes: 16 << 10,
        preallocate: true,
        ..JournalConfig::default()
    }
}

#[test]
fn fs_append_reopen_and_torn_tail() {
    let temp = tempfile::tempdir().unwrap();
    let path = temp.path().to_path_buf();
    run(async {
        let root = FsDirectory::open_with(&path, DirAccess::Create)
            .await
            .unwrap();
        let (j, _) = MetadataJournal::open(&root, config(), RecoveryMode::TolerateTornTail)
            .await
            .unwrap();
        for op in 1..=300 {
            j.append(op, &payload(op, 0)).await.unwrap();
        }
        // Dropped, not closed: a crash right after the last acknowledgement (a close would add a
        // marker vouching for op 300, and damage to it would then be refused, not repaired).
        drop(j);
    });
    // Tear the last entry by hand: overwrite its last bytes with zeroes... find the data end by
    // scanning for the journal's own view.
    let segs: Vec<_> = std::fs::read_dir(path.join("journal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    assert!(segs.len() >= 2, "16 KiB segments must rotate: {segs:?}");
    let (last_path, last_end) = run(async {
        let root = FsDirectory::open_with(&path, DirAccess::ReadOnly)
            .await
            .unwrap();
        let raw = MetadataJournal::raw_entries(&root, config(), 0, u64::MAX)
            .await
            .unwrap();
        let last = raw.last().unwrap().clone();
        assert_eq!(last.op, 300);
        (last.file, last.offset_bytes + 10)
    });
    {
        use std::os::unix::fs::FileExt;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(path.join("journal").join(&last_path))
            .unwrap();
        file.write_all_at(&[0u8; 40], last_end).unwrap();
        file.sync_all().unwrap();
    }
    run(async {
        let root = FsDirectory::open_with(&path, DirAccess::Existing)
            .await
            .unwrap();
        let (j, report) = MetadataJournal::open(&root, config(), RecoveryMode::TolerateTornTail)
            .await
            .unwrap();
        assert_eq!(report.repairs.len(), 1, "{report:?}");
        assert!(path
            .join("quarantine")
            .join(&report.repairs[0].quarantine_file)
            .exists());
        assert_eq!(j.last_op(), Some(299));
        for op in [1, 150, 299] {
            assert_eq!(
                j.entry(op).await.unwrap().unwrap().payload.to_vec(),
                payload(op, 0)
            );
        }
        j.close().await.unwrap();
        let (_, report) = MetadataJournal::open(&root, config(), RecoveryMode::TolerateTornTail)
            .await
            .unwrap();
        assert!(
            report.repairs.is_empty() && report.problems.is_empty(),
            "{report:?}"
        );
    });
}

#[test]
fn fs_group_commit() {
    let temp = tempfile::tempdir().unwrap();
    run(async {
        let root = FsDirectory::open_with(temp.path(), DirAccess::Create)
            .await
            .unwrap();
        let (j, _) = MetadataJournal::open(&root, config(), RecoveryMode::TolerateTornTail)
            .await
            .unwrap();
        let j = Rc::new(j);
        let mut tasks = Vec::new();
        for op in 1..=256u64 {
            let j = j.clone();
            tasks.push(compio::runtime::spawn(async move {
                j.append(op, &payload(op, 0)).await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let stats = j.stats();
        assert_eq!(stats.appends, 256);
        assert!(
            stats.fsyncs < 128,
            "concurrent appends must share fsyncs: {stats:?}"
        );
    });
}

/// A `direct_io` journal on the real file system writes its zero-fill steps beside the groups
/// (block-aligned steps, so their zero chunks and the groups' aligned direct writes never share a
/// block), and every entry reads back after a reopen, from the device's view the kernel keeps.
#[test]
fn fs_direct_journal_fills_beside_its_groups() {
    // Under the target directory, not /tmp, which may be a tmpfs that refuses O_DIRECT.
    let temp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let config = JournalConfig {
        segment_bytes: 8 << 20,
        slot_count: 4096,
        max_payload_bytes: 4096,
        direct_io: true,
        ..config()
    };
    let body = |op: u64| vec![(op % 251) as u8; 4096];
    let (groups, group_ops) = (40u64, 64u64);
    run(async {
        let root = FsDirectory::open_with(temp.path(), DirAccess::Create)
            .await
            .unwrap();
        let (j, _) = MetadataJournal::open(&root, config.clone(), RecoveryMode::TolerateTornTail)
            .await
            .unwrap();
        for g in 0..groups {
            let batch: Vec<(u64, Vec<u8>)> = (1..=group_ops)
                .map(|i| g * group_ops + i)
                .map(|op| (op, body(op)))
                .collect();
            j.append_batch(&batch).await.unwrap();
        }
        let stats = j.stats();
        assert!(stats.zero_fills_in_background > 0, "{stats:?}");
        j.close().await.unwrap();
        let (j, report) = MetadataJournal::open(&root, config, RecoveryMode::TolerateTornTail)
            .await
            .unwrap();
        assert!(report.repairs.is_empty(), "{report:?}");
        for op in 1..=groups * group_ops {
            let entry = j.entry(op).await.unwrap();
            assert_eq!(
                entry.unwrap_or_else(|| panic!("op {op} lost")).payload[..],
                body(op)[..],
                "op {op}"
            );
        }
    });
}

/// A throughput smoke check, not a benchmark (the criterion benches and `keel bench` are those):
/// `cargo test -p keel-journal --release --test fs -- --ignored --nocapture`.
#[test]
#[ignore]
fn fs_throughput_smoke() {
    let dir = std::env::var("KEEL_SMOKE_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir());
    let temp = tempfile::tempdir_in(dir).unwrap();
    {
        // Baseline in the same run: std pwrite + fdatasync on zero-written space.
        use std::os::unix::fs::FileExt;
        let file = std::fs::File::create(temp.path().join("baseline")).unwrap();
        file.write_all_at(&vec![0u8; 8 << 20], 0).unwrap();
        file.sync_all().unwrap();
        let started = std::time::Instant::now();
        for i in 0..2000u64 {
            file.write_all_at(&[7u8; 192], i * 192).unwrap();
            file.sync_data().unwrap();
        }
        let elapsed = started.elapsed();
        eprintln!(
            "baseline std pwrite+fdatasync: 2000 in {elapsed:?} = {:.0} ops/s",
            2000.0 / elapsed.as_secs_f64()
        );
    }
    run(async {
        let root = FsDirectory::open_with(temp.path(), DirAccess::Create)
            .await
            .unwrap();
        let (j, _) = MetadataJournal::open(
            &root,
            JournalConfig {
                slot_count: 1 << 16,
                ..config()
            },
            RecoveryMode::TolerateTornTail,
        )
        .await
        .unwrap();
        let j = Rc::new(j);
        j.append(1, b"warm up: creates the first segment")
            .await
            .unwrap();
        let mut base = 1;
        for (label, inflight, total) in [
            ("one at a time", 1u64, 2_000u64),
            ("64 in flight", 64, 20_000),
        ] {
            let started = std::time::Instant::now();
            let before = j.stats();
            let mut next = base + 1;
            let end = base + total;
            let mut tasks = Vec::new();
            while next <= end {
                while tasks.len() < inflight as usize && next <= end {
                    let j = j.clone();
                    let op = next;
                    tasks.push(compio::runtime::spawn(async move {
                        j.append(op, &[7u8; 128]).await
                    }));
                    next += 1;
                }
                tasks.remove(0).await.unwrap().unwrap();
            }
            for t in tasks {
                t.await.unwrap().unwrap();
            }
            let elapsed = started.elapsed();
            let after = j.stats();
            eprintln!(
                "{label}: {total} x 128 B in {elapsed:?} = {:.0} ops/s, {} fsyncs, {:.1} entries/batch",
                total as f64 / elapsed.as_secs_f64(),
                after.fsyncs - before.fsyncs,
                total as f64 / (after.batches - before.batches) as f64
            );
            j.set_snapshot_op(end).await.unwrap();
            base = end;
        }
    });
}
