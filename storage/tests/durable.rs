//! create_durable, create_unique, atomic_replace(_with) and open_dir_durable: on MemFs with its
//! crash model and faults, and once each on the real file system.

use std::io;

use keel_storage::DirAccess;
use keel_storage::{
    atomic_replace, atomic_replace_with, create_durable, create_unique, is_temp_of,
    open_dir_durable, Directory, DurableStage, FaultConfig, FaultKind, FaultOp, FsDirectory, MemFs,
    OpenMode, ReplaceError, ReplaceStage, Storage,
};

fn pattern(seed: u64, len_bytes: usize) -> Vec<u8> {
    (0..len_bytes)
        .map(|i| ((i as u64).wrapping_mul(2654435761).wrapping_add(seed) >> 3) as u8 | 1)
        .collect()
}

/// A MemFs whose root holds `name` = `bytes`, durably.
async fn fs_with_file(seed: u64, name: &str, bytes: &[u8]) -> MemFs {
    let fs = MemFs::new(seed);
    create_durable(&fs.root(), name, bytes.to_vec())
        .await
        .unwrap();
    fs
}

#[test]
fn is_temp_of_names_the_target() {
    assert_eq!(is_temp_of("raft-meta.tmp"), Some("raft-meta"));
    assert_eq!(is_temp_of("1.snap.tmp"), Some("1.snap"));
    assert_eq!(is_temp_of(".tmp"), None);
    assert_eq!(is_temp_of("raft-meta"), None);
    assert_eq!(is_temp_of("tmp"), None);
}

#[compio::test]
async fn create_durable_survives_a_power_cut() {
    for seed in 0..20 {
        let data = pattern(seed, 3000);
        let fs = fs_with_file(seed, "f", &data).await;
        fs.crash();
        assert_eq!(fs.read_raw("f").unwrap(), data, "seed {seed}");
    }
}

#[compio::test]
async fn create_durable_never_touches_an_existing_file() {
    let old = pattern(1, 100);
    let fs = fs_with_file(1, "f", &old).await;
    let err = create_durable(&fs.root(), "f", vec![9u8; 10])
        .await
        .unwrap_err();
    assert_eq!(err.stage, DurableStage::CreateNew);
    assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
    assert_eq!(err.path, "mem:/f");
    let message = err.to_string();
    assert!(
        message.contains("create new file") && message.contains("mem:/f"),
        "{message}"
    );
    assert_eq!(fs.read_raw("f").unwrap(), old);
    assert_eq!(fs.durable_bytes("f").unwrap(), old);
}

#[compio::test]
async fn a_failed_create_removes_its_file_so_a_retry_works() {
    for (op, stage) in [
        (FaultOp::Write, DurableStage::WriteNew),
        (FaultOp::Sync, DurableStage::SyncNew),
        (FaultOp::DirSync, DurableStage::SyncDir),
    ] {
        let fs = MemFs::new(2);
        let root = fs.root();
        fs.set_faults(FaultConfig::new().fail_nth(op, 1, FaultKind::Io));
        let err = create_durable(&root, "q", vec![1u8; 700])
            .await
            .unwrap_err();
        assert_eq!(err.stage, stage, "{op:?}");
        assert!(err.retry_safe());
        assert_eq!(err.outcome_uncertain(), stage == DurableStage::SyncDir);
        assert!(!fs.exists("q"), "{op:?}: the failed create left its file");
        create_durable(&root, "q", vec![2u8; 700]).await.unwrap();
        fs.crash();
        assert_eq!(fs.read_raw("q").unwrap(), vec![2u8; 700], "{op:?}");
    }
}

#[compio::test]
async fn create_unique_takes_the_first_free_name_and_never_overwrites() {
    let fs = MemFs::new(3);
    let root = fs.root();
    let first = create_unique(&root, "bad", vec![1u8; 10], 3).await.unwrap();
    assert_eq!(first, "bad");
    // A copy made by someone else under `bad.1` must survive too.
    fs.write_raw("bad.1", 0, &[7u8; 5]).unwrap();
    let second = create_unique(&root, "bad", vec![2u8; 10], 3).await.unwrap();
    assert_eq!(second, "bad.2");
    let third = create_unique(&root, "bad", vec![3u8; 10], 3).await.unwrap();
    assert_eq!(third, "bad.3");
    let err = create_unique(&root, "bad", vec![4u8; 10], 3)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
    assert_eq!(err.stage, DurableStage::CreateNew);
    assert_eq!(err.path, "mem:/bad");
    assert!(err.to_string().contains("bad.3"), "{err}");
    fs.crash();
    assert_eq!(fs.read_raw("bad").unwrap(), vec![1u8; 10]);
    assert_eq!(fs.read_raw("bad.1").unwrap(), vec![7u8; 5]);
    assert_eq!(fs.read_raw("bad.2").unwrap(), vec![2u8; 10]);
    assert_eq!(fs.read_raw("bad.3").unwrap(), vec![3u8; 10]);
    assert!(!fs.exists("bad.4"));
    // With no suffixes allowed, only the base is tried.
    let err = create_unique(&fs.root(), "bad", vec![5u8], 0)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
}

#[compio::test]
async fn atomic_replace_is_durable_and_leaves_no_temp() {
    for seed in 0..20 {
        let fs = fs_with_file(seed, "meta", &pattern(seed, 900)).await;
        let root = fs.root();
        let new = pattern(seed + 1000, 300);
        atomic_replace(&root, "meta", new.clone()).await.unwrap();
        assert_eq!(root.list().await.unwrap(), ["meta"]);
        fs.crash();
        assert_eq!(fs.read_raw("meta").unwrap(), new, "seed {seed}");
        assert_eq!(fs.root().list().await.unwrap(), ["meta"]);
    }
}

#[compio::test]
async fn atomic_replace_starts_a_leftover_temp_from_empty() {
    let fs = MemFs::new(4);
    let root = fs.root();
    // A longer temp file an interrupted replace left behind.
    fs.write_raw("meta.tmp", 0, &[0xEE; 5000]).unwrap();
    atomic_replace(&root, "meta", vec![1u8; 10]).await.unwrap();
    fs.crash();
    assert_eq!(fs.read_raw("meta").unwrap(), vec![1u8; 10]);
    assert!(!fs.exists("meta.tmp"));
}

#[compio::test]
async fn a_crash_at_any_stage_leaves_the_old_file_or_the_new_one() {
    for halt_at in [
        ReplaceStage::TempWritten,
        ReplaceStage::TempSynced,
        ReplaceStage::Renamed,
    ] {
        for seed in 0..30 {
            let old = pattern(seed, 1500);
            let new = pattern(seed + 77, 2100);
            let fs = fs_with_file(seed, "meta", &old).await;
            let mut seen = Vec::new();
            let result = atomic_replace_with(&fs.root(), "meta", new.clone(), |stage| {
                seen.push(stage);
                if stage == halt_at {
                    Err("halt")
                } else {
                    Ok(())
                }
            })
            .await;
            assert!(matches!(result, Err(ReplaceError::Halted("halt"))));
            assert_eq!(seen.last(), Some(&halt_at));
            fs.crash();
            let after = fs.read_raw("meta").unwrap();
            assert!(
                after == old || after == new,
                "{halt_at:?} seed {seed}: a mix"
            );
            // MemFs reverts an unsynced rename, so before the directory fsync it is the old one.
            assert_eq!(after, old, "{halt_at:?} seed {seed}");
        }
    }
}

#[compio::test]
async fn a_failed_step_names_its_stage_and_a_retry_succeeds() {
    for (op, stage) in [
        (FaultOp::Open, DurableStage::CreateTemp),
        (FaultOp::Truncate, DurableStage::CreateTemp),
        (FaultOp::Write, DurableStage::WriteTemp),
        (FaultOp::Sync, DurableStage::SyncTemp),
        (FaultOp::Rename, DurableStage::Rename),
        (FaultOp::DirSync, DurableStage::SyncDir),
    ] {
        let old = vec![1u8; 64];
        let fs = fs_with_file(5, "meta", &old).await;
        let root = fs.root();
        fs.set_faults(FaultConfig::new().fail_nth(op, 1, FaultKind::Io));
        let err = atomic_replace(&root, "meta", vec![2u8; 64])
            .await
            .unwrap_err();
        assert_eq!(err.stage, stage, "{op:?}");
        let expected_path = if stage == DurableStage::SyncDir {
            "mem:"
        } else {
            "mem:/meta.tmp"
        };
        assert_eq!(err.path, expected_path, "{op:?}");
        assert!(err.to_string().contains(stage.as_str()), "{err}");
        assert!(err.retry_safe());
        assert_eq!(err.outcome_uncertain(), stage == DurableStage::SyncDir);
        let io_error: io::Error = err.into();
        assert_eq!(
            io_error.kind(),
            io::Error::from_raw_os_error(libc::EIO).kind()
        );
        atomic_replace(&root, "meta", vec![3u8; 64]).await.unwrap();
        fs.crash();
        assert_eq!(fs.read_raw("meta").unwrap(), vec![3u8; 64], "{op:?}");
    }
}

#[compio::test]
async fn open_dir_durable_makes_the_directory_and_its_entries_survive() {
    let fs = MemFs::new(6);
    let root = fs.root();
    // An earlier process created `sub` and a file in it, synced neither directory, and died.
    let sub = root.open_dir("sub", true).await.unwrap();
    let file = sub.open_file("f", OpenMode::Create).await.unwrap();
    file.write_all_at(0, vec![5u8; 10]).await.0.unwrap();
    file.sync().await.unwrap();
    fs.process_crash();

    let syncs_before = fs.dir_sync_count();
    let sub = open_dir_durable(&fs.root(), "sub").await.unwrap();
    assert_eq!(fs.dir_sync_count(), syncs_before + 2);
    assert_eq!(sub.display_path(), "mem:/sub");
    fs.crash();
    assert!(fs.exists("sub"), "the directory's entry was not synced");
    assert_eq!(fs.read_raw("sub/f").unwrap(), vec![5u8; 10]);

    // A new one is created and durable too.
    open_dir_durable(&fs.root(), "new").await.unwrap();
    fs.crash();
    assert!(fs.exists("new"));
}

#[compio::test]
async fn open_dir_durable_read_only_neither_creates_nor_syncs() {
    let fs = MemFs::new(7);
    open_dir_durable(&fs.root(), "sub").await.unwrap();
    let syncs_before = fs.dir_sync_count();
    let ro = fs.root_read_only();
    let sub = open_dir_durable(&ro, "sub").await.unwrap();
    assert!(sub.is_read_only());
    let err = open_dir_durable(&ro, "missing").await.unwrap_err();
    assert_eq!(err.stage, DurableStage::OpenDir);
    assert_eq!(err.kind(), io::ErrorKind::NotFound);
    assert_eq!(err.path, "mem:/missing");
    assert!(!fs.exists("missing"));
    assert_eq!(fs.dir_sync_count(), syncs_before);
}

#[compio::test]
async fn open_dir_durable_reports_a_failed_sync() {
    let fs = MemFs::new(8);
    fs.set_faults(FaultConfig::new().fail_nth(FaultOp::DirSync, 2, FaultKind::Io));
    let err = open_dir_durable(&fs.root(), "sub").await.unwrap_err();
    assert_eq!(err.stage, DurableStage::SyncDir);
    // The child syncs first; the second directory sync is the parent's.
    assert_eq!(err.path, "mem:");
}

#[compio::test]
async fn the_mechanisms_work_on_the_real_file_system() {
    let tmp = tempfile::tempdir().unwrap();
    let root = FsDirectory::open_with(tmp.path(), DirAccess::Existing)
        .await
        .unwrap();
    let sub = open_dir_durable(&root, "quarantine").await.unwrap();
    assert!(tmp.path().join("quarantine").is_dir());
    assert_eq!(
        create_unique(&sub, "seg", vec![1u8; 4], 2).await.unwrap(),
        "seg"
    );
    assert_eq!(
        create_unique(&sub, "seg", vec![2u8; 4], 2).await.unwrap(),
        "seg.1"
    );
    let err = create_durable(&sub, "seg", vec![3u8; 4]).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
    assert_eq!(
        std::fs::read(tmp.path().join("quarantine/seg")).unwrap(),
        [1u8; 4]
    );
    atomic_replace(&root, "meta", vec![7u8; 100]).await.unwrap();
    atomic_replace(&root, "meta", vec![8u8; 10]).await.unwrap();
    assert_eq!(std::fs::read(tmp.path().join("meta")).unwrap(), [8u8; 10]);
    assert!(!tmp.path().join("meta.tmp").exists());
    let ro = FsDirectory::open_with(tmp.path(), DirAccess::ReadOnly)
        .await
        .unwrap();
    assert_eq!(
        open_dir_durable(&ro, "nope").await.unwrap_err().kind(),
        io::ErrorKind::NotFound
    );
    assert!(!tmp.path().join("nope").exists());
}
