//! Tests of the snapshot store (the parent module's `SnapshotStore`, `list_snapshots`).
use super::*;
use keel_storage::{FaultConfig, FaultKind, FaultOp, MemFs};

const MAX: u64 = 1 << 20;
const ID: SnapshotIdentity = SnapshotIdentity {
    directory_id: DirectoryId([9; 16]),
    journal_seq: 17,
    chain_crc: 0xabcd,
};

fn no_halt(_: CheckpointStep) -> Result<(), EngineError> {
    Ok(())
}

fn snap_path(op: u64) -> String {
    format!("{SNAPSHOTS_DIR}/{}", snapshot_file_name(op))
}

#[test]
fn names_round_trip_and_reject_others() {
    assert_eq!(snapshot_file_name(42), "00000000000000000042.snap");
    assert_eq!(
        parse_snapshot_file_name("00000000000000000042.snap"),
        Some(42)
    );
    assert_eq!(
        parse_snapshot_file_name(&snapshot_file_name(u64::MAX)),
        Some(u64::MAX)
    );
    for bad in [
        "42.snap",
        "00000000000000000042.snap.tmp",
        "0000000000000000004x.snap",
        "99999999999999999999.snap", // overflows u64
        "LOCK",
    ] {
        assert_eq!(parse_snapshot_file_name(bad), None, "{bad}");
    }
}

#[test]
fn header_round_trips_and_detects_flips() {
    let payload = b"state bytes";
    let h = encode_header(7, &ID, payload);
    let d = decode_header(&h).unwrap();
    assert_eq!((d.op, d.len_bytes), (7, payload.len() as u64));
    assert_eq!(d.payload_crc, crc32fast::hash(payload));
    assert_eq!(d.identity, ID);
    for bit in 0..SNAPSHOT_HEADER_BYTES * 8 {
        let mut bad = h;
        bad[bit / 8] ^= 1 << (bit % 8);
        assert!(decode_header(&bad).is_err(), "bit {bit}");
    }
    assert!(decode_header(&h[..10]).is_err());
}

/// A version 1 file (40-byte header, no identity) still reads, its identity unknown.
#[test]
fn version_1_files_still_read() {
    let payload = b"old state";
    let mut v1 = Vec::new();
    v1.extend_from_slice(SNAPSHOT_MAGIC);
    v1.extend_from_slice(&1u32.to_le_bytes());
    v1.extend_from_slice(&[0u8; 4]);
    v1.extend_from_slice(&12u64.to_le_bytes());
    v1.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    v1.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    let crc = crc32fast::hash(&v1[0..36]);
    v1.extend_from_slice(&crc.to_le_bytes());
    v1.extend_from_slice(payload);
    assert_eq!(decode_snapshot_file(12, &v1).unwrap(), payload);
    let header = decode_snapshot_header(&v1).unwrap();
    assert_eq!(
        (header.version, header.header_bytes),
        (1, SNAPSHOT_V1_HEADER_BYTES)
    );
    assert_eq!(header.identity, SnapshotIdentity::default());
    let mut bad = v1.clone();
    bad[20] ^= 1;
    assert!(decode_snapshot_file(12, &bad).is_err());
}

#[compio::test]
async fn persist_load_round_trip_survives_crash() {
    let fs = MemFs::new(1);
    let store = SnapshotStore::open(&fs.root(), MAX).await.unwrap();
    let len = store.persist(9, &ID, b"hello", &no_halt).await.unwrap();
    assert_eq!(len, SNAPSHOT_HEADER_BYTES as u64 + 5);
    assert_eq!(store.load_with_identity(9).await.unwrap().0, ID);
    fs.crash();
    let store = SnapshotStore::open(&fs.root(), MAX).await.unwrap();
    assert_eq!(store.list().await.unwrap(), vec![9]);
    assert_eq!(store.load(9).await.unwrap(), b"hello");
}

/// A crash inside the persist never leaves a snapshot under its final name that is not
/// complete: before the directory fsync, the final name is either absent or whole.
#[compio::test]
async fn crash_inside_persist_never_exposes_a_partial_snapshot() {
    for halt_at in [
        CheckpointStep::TempWritten,
        CheckpointStep::TempSynced,
        CheckpointStep::Renamed,
    ] {
        for seed in 0..40 {
            let fs = MemFs::new(seed);
            let store = SnapshotStore::open(&fs.root(), MAX).await.unwrap();
            store.persist(3, &ID, b"older", &no_halt).await.unwrap();
            let halt = |s: CheckpointStep| {
                if s == halt_at {
                    Err(EngineError::Halted { step: s })
                } else {
                    Ok(())
                }
            };
            let big = vec![7u8; 5000];
            let err = store.persist(8, &ID, &big, &halt).await.unwrap_err();
            assert!(matches!(err, EngineError::Halted { step } if step == halt_at));
            drop(store);
            fs.crash();
            let store = SnapshotStore::open(&fs.root(), MAX).await.unwrap();
            let ops = store.list().await.unwrap();
            assert!(
                ops == vec![3] || ops == vec![3, 8],
                "{halt_at:?} seed {seed}: {ops:?}"
            );
            if ops.contains(&8) {
                // Only possible once the temp file was fsynced (rename kept by chance).
                assert_ne!(halt_at, CheckpointStep::TempWritten);
                assert_eq!(store.load(8).await.unwrap(), big);
            }
            assert_eq!(store.load(3).await.unwrap(), b"older");
            let temps = store.temp_names().await.unwrap();
            store.quarantine_temps(&temps).await.unwrap();
            let names = fs
                .root()
                .open_dir(SNAPSHOTS_DIR, false)
                .await
                .unwrap()
                .list()
                .await
                .unwrap();
            assert!(names.iter().all(|n| !n.ends_with(TEMP_SUFFIX)), "{names:?}");
        }
    }
}

#[compio::test]
async fn damaged_snapshot_is_detected_and_quarantined() {
    let fs = MemFs::new(2);
    let store = SnapshotStore::open(&fs.root(), MAX).await.unwrap();
    store.persist(5, &ID, b"payload!", &no_halt).await.unwrap();
    let original = fs.read_raw(&snap_path(5)).unwrap();
    for offset in [0u64, 20, 39, 40, 47] {
        fs.flip_bit(&snap_path(5), offset, 3).unwrap();
        assert!(
            matches!(store.load(5).await, Err(SnapshotError::Checksum { .. })),
            "offset {offset}"
        );
        fs.flip_bit(&snap_path(5), offset, 3).unwrap();
    }
    fs.cut_raw(&snap_path(5), 30).unwrap();
    assert!(matches!(
        store.load(5).await,
        Err(SnapshotError::Checksum { .. })
    ));
    fs.write_raw(&snap_path(5), 0, &original).unwrap();
    fs.flip_bit(&snap_path(5), 44, 0).unwrap();
    let damaged = fs.read_raw(&snap_path(5)).unwrap();
    let q = store.quarantine(5).await.unwrap();
    assert_eq!(q, "mem:/quarantine/snapshot-00000000000000000005.snap");
    fs.crash();
    assert!(!fs.exists(&snap_path(5)));
    assert_eq!(
        fs.read_raw("quarantine/snapshot-00000000000000000005.snap")
            .unwrap(),
        damaged
    );
    // A second quarantine of the same op gets its own name.
    let store = SnapshotStore::open(&fs.root(), MAX).await.unwrap();
    store.persist(5, &ID, b"again", &no_halt).await.unwrap();
    let q = store.quarantine(5).await.unwrap();
    assert!(q.ends_with(".snap.1"), "{q}");
}

#[compio::test]
async fn header_op_must_match_the_name() {
    let fs = MemFs::new(3);
    let store = SnapshotStore::open(&fs.root(), MAX).await.unwrap();
    store.persist(5, &ID, b"x", &no_halt).await.unwrap();
    let bytes = fs.read_raw(&snap_path(5)).unwrap();
    fs.write_raw(&snap_path(6), 0, &bytes).unwrap();
    let err = store.load(6).await.unwrap_err();
    assert!(matches!(err, SnapshotError::Checksum { .. }), "{err}");
}

#[compio::test]
async fn keeps_the_newest_two() {
    let fs = MemFs::new(4);
    let store = SnapshotStore::open(&fs.root(), MAX).await.unwrap();
    for op in [1, 2, 3, 4] {
        store.persist(op, &ID, &[op as u8], &no_halt).await.unwrap();
    }
    assert_eq!(store.remove_older(2).await.unwrap(), 2);
    fs.crash();
    let store = SnapshotStore::open(&fs.root(), MAX).await.unwrap();
    assert_eq!(store.list().await.unwrap(), vec![3, 4]);
}

#[compio::test]
async fn stage_names_say_whether_a_retry_is_safe() {
    let cases = [
        (FaultOp::Write, SnapshotStage::Write, false),
        (FaultOp::Sync, SnapshotStage::Sync, false),
        (FaultOp::Rename, SnapshotStage::Rename, true),
        (FaultOp::DirSync, SnapshotStage::DirectorySync, true),
    ];
    for (op, stage, retry_safe) in cases {
        let fs = MemFs::new(5);
        let store = SnapshotStore::open(&fs.root(), MAX).await.unwrap();
        fs.set_faults(FaultConfig::new().fail_nth(op, 1, FaultKind::Io));
        let err = store.persist(7, &ID, b"state", &no_halt).await.unwrap_err();
        let EngineError::Snapshot(err) = err else {
            panic!("{op:?}: {err}")
        };
        assert_eq!(err.stage(), stage, "{op:?}: {err}");
        assert_eq!(err.retry_safe(), retry_safe);
        fs.clear_faults();
        // After any failure, persisting again succeeds and the snapshot is whole.
        store.persist(7, &ID, b"state", &no_halt).await.unwrap();
        assert_eq!(store.load(7).await.unwrap(), b"state");
    }
}

#[compio::test]
async fn too_large_is_refused_both_ways() {
    let fs = MemFs::new(6);
    let store = SnapshotStore::open(&fs.root(), 4).await.unwrap();
    assert!(matches!(
        store.persist(1, &ID, b"12345", &no_halt).await,
        Err(EngineError::Snapshot(SnapshotError::TooLarge { .. }))
    ));
    let big = SnapshotStore::open(&fs.root(), MAX).await.unwrap();
    big.persist(1, &ID, b"12345", &no_halt).await.unwrap();
    assert!(matches!(
        store.load(1).await,
        Err(SnapshotError::TooLarge { .. })
    ));
}

#[compio::test]
async fn list_snapshots_is_read_only() {
    let fs = MemFs::new(7);
    assert!(list_snapshots(&fs.root_read_only(), MAX)
        .await
        .unwrap()
        .is_empty());
    let store = SnapshotStore::open(&fs.root(), MAX).await.unwrap();
    store.persist(1, &ID, b"a", &no_halt).await.unwrap();
    store.persist(2, &ID, b"b", &no_halt).await.unwrap();
    fs.flip_bit(&snap_path(2), 40, 1).unwrap();
    let infos = list_snapshots(&fs.root_read_only(), MAX).await.unwrap();
    assert_eq!(infos.len(), 2);
    assert!(infos[0].valid);
    assert!(!infos[1].valid && infos[1].problem.is_some());
    assert!(fs.exists(&snap_path(2)));
}
