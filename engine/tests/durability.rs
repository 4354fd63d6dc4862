//! The engine's side of durability under every fault sequence: snapshot directories made durable
//! on open, a refused recovery that changes nothing, verify agreeing with recover, snapshots that
//! do not restore or come from a newer keel, and truncations that race with prepares.

mod common;

use common::{commit_range, model_through, open, payload, small_config, snap, two_snapshots};
use keel_engine::{
    encode_snapshot_file, CheckpointStep, Engine, EngineConfig, EngineError, KvStateMachine,
    RecoveryStatus, SnapshotError, VerifyStatus,
};
use keel_storage::{Directory, FaultConfig, FaultKind, FaultOp, MemFs};

async fn refused(fs: &MemFs, config: EngineConfig) -> EngineError {
    match Engine::open(fs.root(), config, KvStateMachine::new()).await {
        Ok((_, report)) => panic!("recovery accepted: {report:?}"),
        Err(error) => error,
    }
}

/// Every file under the root with its bytes, and every directory, for "changed nothing" checks.
async fn tree(fs: &MemFs) -> Vec<(String, Option<Vec<u8>>)> {
    let mut out = Vec::new();
    let mut stack = vec![(fs.root(), String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        for name in dir.list().await.unwrap() {
            let path = format!("{prefix}{name}");
            match fs.read_raw(&path) {
                Ok(bytes) => out.push((path, Some(bytes))),
                Err(_) => {
                    out.push((path.clone(), None));
                    stack.push((
                        dir.open_dir(&name, false).await.unwrap(),
                        format!("{path}/"),
                    ));
                }
            }
        }
    }
    out.sort();
    out
}

/// A snapshot renamed but not dir-fsynced, a process crash, a restart that adopts it and moves the
/// journal's watermark past it, a power cut: the snapshot must still be there (before the fix:
/// "ops 1..=10 needed but missing").
#[compio::test]
async fn a_restart_makes_an_adopted_snapshot_durable_before_relying_on_it() {
    let fs = MemFs::new(201);
    let (engine, _) = open(&fs, small_config()).await;
    commit_range(&engine, 1, 10).await;
    fs.set_faults(
        FaultConfig::new()
            .fail_nth(FaultOp::DirSync, 1, FaultKind::Io)
            .on_paths_containing("snapshots"),
    );
    assert!(
        engine.checkpoint().await.is_err(),
        "the dir fsync fault did not fire"
    );
    fs.clear_faults();
    drop(engine);
    fs.process_crash();
    let (engine, report) = open(&fs, small_config()).await;
    assert_eq!(report.snapshot_op, 10, "{report:?}");
    drop(engine);
    fs.crash();
    let (engine, report) = open(&fs, small_config()).await;
    assert_eq!(report.applied_op, 10, "{report:?}");
    assert_eq!(*engine.state_machine(), model_through(10));
}

/// A recovery that refuses creates, removes and copies nothing, however often it is tried.
#[compio::test]
async fn a_refused_recovery_changes_nothing() {
    let fs = MemFs::new(202);
    two_snapshots(&fs, 10, 25, Some(CheckpointStep::Compacted)).await;
    fs.flip_bit(&snap(25), 45, 0).unwrap();
    fs.write_raw(
        "snapshots/00000000000000000030.snap.tmp",
        0,
        b"half a snapshot",
    )
    .unwrap();
    fs.write_raw("snapshots/notes.tmp", 0, b"not keel's")
        .unwrap();
    let before = tree(&fs).await;
    for _ in 0..3 {
        let error = refused(&fs, small_config()).await;
        assert_eq!(error.missing_range(), Some(11..=25), "{error}");
        assert_eq!(
            tree(&fs).await,
            before,
            "a refused recovery changed the directory"
        );
    }
    // Absolute mode refuses the damaged snapshot and changes nothing either.
    let absolute = EngineConfig {
        recovery_mode: keel_engine::RecoveryMode::Absolute,
        ..small_config()
    };
    refused(&fs, absolute).await;
    assert_eq!(tree(&fs).await, before);
}

/// A successful recovery quarantines keel's own snapshot temp files and leaves anything else.
#[compio::test]
async fn recovery_quarantines_keel_temps_and_keeps_foreign_files() {
    let fs = MemFs::new(203);
    let (engine, _) = open(&fs, small_config()).await;
    commit_range(&engine, 1, 5).await;
    engine.close().await.unwrap();
    fs.write_raw(
        "snapshots/00000000000000000030.snap.tmp",
        0,
        b"half a snapshot",
    )
    .unwrap();
    fs.write_raw("snapshots/notes.tmp", 0, b"not keel's")
        .unwrap();
    let (_engine, report) = open(&fs, small_config()).await;
    assert_eq!(report.temp_files_removed, 1);
    assert!(!fs.exists("snapshots/00000000000000000030.snap.tmp"));
    assert_eq!(fs.read_raw("snapshots/notes.tmp").unwrap(), b"not keel's");
    let quarantine = fs.root().open_dir("quarantine", false).await.unwrap();
    let names = quarantine.list().await.unwrap();
    let copy = names
        .iter()
        .find(|n| n.contains("00000000000000000030.snap.tmp"))
        .unwrap();
    assert_eq!(
        fs.read_raw(&format!("quarantine/{copy}")).unwrap(),
        b"half a snapshot"
    );
}

/// The first segment deleted: verify and recover agree that committed ops are missing.
#[compio::test]
async fn verify_and_recover_agree_on_missing_ops() {
    let fs = MemFs::new(204);
    let (engine, _) = open(&fs, small_config()).await;
    commit_range(&engine, 1, 60).await;
    engine.close().await.unwrap();
    let journal = fs.root().open_dir("journal", false).await.unwrap();
    let first = journal.list().await.unwrap().into_iter().next().unwrap();
    journal.remove_file(&first).await.unwrap();
    journal.sync().await.unwrap();
    let verify = keel_engine::verify(&fs.root_read_only(), &small_config(), KvStateMachine::new())
        .await
        .unwrap();
    assert_eq!(verify.status, VerifyStatus::Corrupt, "{verify:?}");
    assert!(
        verify
            .problems
            .iter()
            .any(|p| p.kind.name() == "missing_ops"),
        "{verify:?}"
    );
    let error = refused(&fs, small_config()).await;
    let range = error.missing_range().expect("missing ops");
    assert_eq!(*range.start(), 1, "{error}");
}

/// A snapshot whose checksums hold but whose state does not restore is damage: verify says so,
/// and recovery falls back to the older snapshot the journal still covers.
#[compio::test]
async fn a_snapshot_that_does_not_restore_is_fallen_back_from() {
    let fs = MemFs::new(205);
    two_snapshots(&fs, 10, 25, Some(CheckpointStep::Persisted)).await;
    let garbage = encode_snapshot_file(25, b"\xff\xff\xff not a key-value state");
    fs.cut_raw(&snap(25), 0).unwrap();
    fs.write_raw(&snap(25), 0, &garbage).unwrap();
    let verify = keel_engine::verify(&fs.root_read_only(), &small_config(), KvStateMachine::new())
        .await
        .unwrap();
    assert_eq!(verify.status, VerifyStatus::Corrupt, "{verify:?}");
    assert!(verify
        .problems
        .iter()
        .any(|p| p.kind.name() == "snapshot_restore" && p.op == Some(25)));
    let (engine, report) = open(&fs, small_config()).await;
    assert_eq!(report.status, RecoveryStatus::Repaired);
    assert_eq!(report.snapshot_op, 10);
    assert_eq!(report.repairs[0].kind.name(), "snapshot_restore");
    assert_eq!(*engine.state_machine(), model_through(25));
}

/// A snapshot of a newer format version is refused, not quarantined as damage.
#[compio::test]
async fn a_newer_snapshot_version_is_refused_not_quarantined() {
    let fs = MemFs::new(206);
    two_snapshots(&fs, 10, 25, Some(CheckpointStep::Persisted)).await;
    let mut bytes = fs.read_raw(&snap(25)).unwrap();
    bytes[8..12].copy_from_slice(&3u32.to_le_bytes());
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&bytes[0..36]);
    hasher.update(&bytes[40..72]);
    bytes[36..40].copy_from_slice(&hasher.finalize().to_le_bytes());
    fs.write_raw(&snap(25), 0, &bytes).unwrap();
    let before = tree(&fs).await;
    let error = refused(&fs, small_config()).await;
    assert!(
        matches!(
            error,
            EngineError::Snapshot(SnapshotError::UnknownVersion { version: 3, .. })
        ),
        "{error}"
    );
    assert_eq!(tree(&fs).await, before);
}

/// An I/O error while verify reads a snapshot is an error, not a verdict of damage.
#[compio::test]
async fn an_io_error_in_verify_is_not_damage() {
    let fs = MemFs::new(207);
    let (engine, _) = open(&fs, small_config()).await;
    commit_range(&engine, 1, 12).await;
    engine.checkpoint().await.unwrap().unwrap();
    engine.close().await.unwrap();
    fs.set_faults(
        FaultConfig::new()
            .fail_from(FaultOp::Read, 1, FaultKind::Io)
            .on_paths_containing("snapshots"),
    );
    let result =
        keel_engine::verify(&fs.root_read_only(), &small_config(), KvStateMachine::new()).await;
    match result {
        Ok(report) => panic!("an unreadable snapshot was given a verdict: {report:?}"),
        Err(error) => assert!(!error.is_corruption(), "{error}"),
    }
}

/// A prepare issued while `truncate_after` writes its marker is refused, so memory and disk agree
/// (before the fix: memory [1], disk after reopen [1, 2]).
#[compio::test]
async fn a_prepare_racing_a_truncation_is_refused() {
    let fs = MemFs::new(208);
    let mut config = small_config();
    config.journal.sync_on_append = false;
    let (engine, _) = open(&fs, config.clone()).await;
    engine.append(1, &payload(1)).await.unwrap();
    let results = common::join_all(vec![
        Box::pin(engine.truncate_after(1))
            as std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), EngineError>>>>,
        Box::pin(engine.append(2, &payload(2))),
    ])
    .await;
    assert!(results[0].is_ok(), "{:?}", results[0]);
    assert!(
        matches!(
            results[1],
            Err(EngineError::TruncateInProgress {
                op: 2,
                truncate_op: 1
            })
        ),
        "{:?}",
        results[1]
    );
    engine.flush().await.unwrap();
    drop(engine);
    let (_engine, report) = open(&fs, config).await;
    assert_eq!(report.last_op, 1, "{report:?}");
    assert_eq!(report.prepared_uncommitted.len(), 1, "{report:?}");
}

/// A torn-tail repair names the ops it cut, when their headers are readable.
#[compio::test]
async fn a_torn_tail_repair_names_the_ops_it_cut() {
    let fs = MemFs::new(209);
    let (engine, _) = open(&fs, small_config()).await;
    for op in 1..=6 {
        engine.append(op, &payload(op)).await.unwrap();
    }
    drop(engine);
    let raw = keel_journal::MetadataJournal::raw_entries(&fs.root(), small_config().journal, 6, 6)
        .await
        .unwrap();
    let last = raw.last().expect("op 6 on disk");
    // Cut inside op 6's payload: its header stays readable.
    fs.cut_raw(&format!("journal/{}", last.file), last.offset_bytes + 66)
        .unwrap();
    let (_engine, report) = open(&fs, small_config()).await;
    assert_eq!(report.repairs.len(), 1, "{report:?}");
    assert_eq!(
        report.torn_ops,
        vec![keel_engine::OpRange {
            first_op: 6,
            last_op: 6
        }],
        "{report:?}"
    );
}
