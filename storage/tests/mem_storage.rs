//! MemStorage / MemDirectory: the crash model, determinism, and fault injection.

use std::collections::BTreeMap;
use std::io;
use std::rc::Rc;

use keel_storage::{
    Directory, FaultConfig, FaultKind, FaultOp, MemFs, OpenMode, Storage, WriteOutcome,
    SECTOR_BYTES,
};

/// Seeds per crash loop; CI may raise or lower it with `KEEL_TEST_ROUNDS`.
fn rounds(default: u64) -> u64 {
    std::env::var("KEEL_TEST_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn pattern(seed: u64, len_bytes: usize) -> Vec<u8> {
    (0..len_bytes)
        .map(|i| ((i as u64).wrapping_mul(2654435761).wrapping_add(seed) >> 3) as u8 | 1)
        .collect()
}

#[compio::test]
async fn synced_data_survives_every_crash() {
    for seed in 0..rounds(200) {
        let fs = MemFs::new(seed);
        let root = fs.root();
        let dir = root.open_dir("journal", true).await.unwrap();
        root.sync().await.unwrap();
        let file = dir.open_file("seg", OpenMode::Create).await.unwrap();
        dir.sync().await.unwrap();
        let synced = pattern(seed, 3000);
        file.write_all_at(0, synced.clone()).await.0.unwrap();
        file.sync().await.unwrap();
        // Unsynced writes after the synced region, and an unsynced file elsewhere.
        file.append(pattern(seed + 1, 1500)).await.0.unwrap();
        file.append(pattern(seed + 2, 700)).await.0.unwrap();
        let other = dir.open_file("other", OpenMode::Create).await.unwrap();
        other.write_all_at(0, vec![5u8; 100]).await.0.unwrap();

        fs.crash();
        let bytes = fs.read_raw("journal/seg").unwrap();
        assert!(bytes.len() >= synced.len(), "seed {seed}: synced bytes cut");
        assert_eq!(bytes[..synced.len()], synced[..], "seed {seed}");
        assert!(
            !fs.exists("journal/other"),
            "seed {seed}: unsynced create survived"
        );
        // A second crash with nothing pending changes nothing.
        let before = fs.read_raw("journal/seg").unwrap();
        let report = fs.crash();
        assert!(report.events.is_empty());
        assert_eq!(fs.read_raw("journal/seg").unwrap(), before);
    }
}

/// A write-through handle (`O_DSYNC`) makes each write durable when it completes, with no
/// `sync`; a plain handle's writes to another file stay at the crash's mercy.
#[compio::test]
async fn write_through_writes_survive_every_crash_without_a_sync() {
    let mut plain_cut = 0;
    for seed in 0..rounds(200) {
        let fs = MemFs::new(seed);
        let root = fs.root();
        let dir = root.open_dir("journal", true).await.unwrap();
        root.sync().await.unwrap();
        let file = dir
            .open_file_write_through("seg", OpenMode::Create)
            .await
            .unwrap();
        assert!(file.writes_are_durable());
        dir.sync().await.unwrap();
        let first = pattern(seed, 3000);
        let second = pattern(seed + 1, 1500);
        file.write_all_at(0, first.clone()).await.0.unwrap();
        file.write_all_at(3000, second.clone()).await.0.unwrap();
        let plain = dir.open_file("plain", OpenMode::Create).await.unwrap();
        assert!(!plain.writes_are_durable());
        dir.sync().await.unwrap();
        plain
            .write_all_at(0, pattern(seed + 2, 4096))
            .await
            .0
            .unwrap();
        let report = fs.crash();
        let bytes = fs.read_raw("journal/seg").unwrap();
        assert_eq!(bytes.len(), 4500, "seed {seed}: {report:?}");
        assert_eq!(bytes[..3000], first[..], "seed {seed}");
        assert_eq!(bytes[3000..], second[..], "seed {seed}");
        if fs.read_raw("journal/plain").unwrap().len() < 4096 {
            plain_cut += 1;
        }
    }
    // The same crashes cut the plain handle's unsynced write in some seeds: the model is live.
    assert!(
        plain_cut > 0,
        "no seed cut the plain handle's unsynced write"
    );
}

/// Classifies the bytes a crash left for one unsynced write of `data` at offset 0 on an empty
/// (synced) file, checking that they are the write, nothing, a prefix, or a sector subset.
fn classify(data: &[u8], after: &[u8]) -> &'static str {
    if after == data {
        return "kept";
    }
    if after.is_empty() {
        return "lost";
    }
    if data.starts_with(after) {
        return "torn";
    }
    // Sector subset: every 512-byte sector is either the write's bytes or zeroes (or cut off).
    assert!(after.len() <= data.len(), "crash grew the file");
    for (i, chunk) in after.chunks(SECTOR_BYTES as usize).enumerate() {
        let start = i * SECTOR_BYTES as usize;
        let expected = &data[start..start + chunk.len()];
        assert!(
            chunk == expected || chunk.iter().all(|&b| b == 0),
            "sector {i} is neither kept nor lost"
        );
    }
    "torn"
}

#[compio::test]
async fn unsynced_writes_are_kept_lost_or_torn_as_the_seed_says() {
    let mut seen: BTreeMap<&str, u64> = BTreeMap::new();
    let mut torn_kinds: BTreeMap<&str, u64> = BTreeMap::new();
    for seed in 0..rounds(200) {
        let fs = MemFs::new(seed);
        let root = fs.root();
        let file = root.open_file("f", OpenMode::Create).await.unwrap();
        root.sync().await.unwrap();
        file.sync().await.unwrap();
        let data = pattern(seed, 4 * SECTOR_BYTES as usize + 100);
        file.write_all_at(0, data.clone()).await.0.unwrap();
        let report = fs.crash();
        let after = fs.read_raw("f").unwrap();
        let class = classify(&data, &after);
        *seen.entry(class).or_default() += 1;
        assert_eq!(report.events.len(), 1);
        // The report and the bytes agree.
        match &report.events[0].outcome {
            WriteOutcome::Kept => assert_eq!(class, "kept", "seed {seed}"),
            WriteOutcome::Lost => assert_eq!(class, "lost", "seed {seed}"),
            WriteOutcome::TornPrefix { kept_bytes } => {
                assert_eq!(after, data[..*kept_bytes as usize], "seed {seed}");
                *torn_kinds.entry("prefix").or_default() += 1;
            }
            WriteOutcome::TornSectors { kept_offsets_bytes } => {
                for &offset in kept_offsets_bytes {
                    let o = offset as usize;
                    let end = (o + SECTOR_BYTES as usize).min(data.len());
                    assert_eq!(after[o..end], data[o..end], "seed {seed}");
                }
                *torn_kinds.entry("sectors").or_default() += 1;
            }
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    for class in ["kept", "lost", "torn"] {
        assert!(
            seen.get(class).copied().unwrap_or(0) > 0,
            "never {class}: {seen:?}"
        );
    }
    for kind in ["prefix", "sectors"] {
        assert!(
            torn_kinds.get(kind).copied().unwrap_or(0) > 0,
            "never torn by {kind}"
        );
    }
}

/// A small workload with every kind of change, then a crash; returns every file's bytes.
async fn workload_then_crash(seed: u64) -> BTreeMap<String, Vec<u8>> {
    let fs = MemFs::new(seed);
    let root = fs.root();
    let dir = root.open_dir("d", true).await.unwrap();
    root.sync().await.unwrap();
    let mut names = Vec::new();
    for i in 0..4u64 {
        let name = format!("f{i}");
        let file = dir.open_file(&name, OpenMode::Create).await.unwrap();
        for j in 0..6u64 {
            file.append(pattern(seed * 100 + i * 10 + j, 300 + 97 * j as usize))
                .await
                .0
                .unwrap();
            if j == 2 {
                file.sync().await.unwrap();
            }
        }
        if i == 1 {
            file.truncate(700).await.unwrap();
        }
        if i % 2 == 0 {
            dir.sync().await.unwrap();
        }
        names.push(name);
    }
    fs.crash();
    let mut out = BTreeMap::new();
    for name in names {
        let path = format!("d/{name}");
        if fs.exists(&path) {
            out.insert(path.clone(), fs.read_raw(&path).unwrap());
        }
    }
    out
}

#[compio::test]
async fn same_seed_gives_identical_bytes_after_crash() {
    let mut distinct = std::collections::BTreeSet::new();
    for seed in 0..rounds(20) {
        let a = workload_then_crash(seed).await;
        let b = workload_then_crash(seed).await;
        assert_eq!(a, b, "seed {seed} did not replay");
        distinct.insert(format!("{a:?}"));
    }
    assert!(distinct.len() > 1, "different seeds should differ");
}

#[compio::test]
async fn injected_errors_surface_as_io_errors() {
    let fs = MemFs::new(1);
    let root = fs.root();
    let file = root.open_file("f", OpenMode::Create).await.unwrap();
    fs.set_faults(
        FaultConfig::new()
            .fail_nth(FaultOp::Write, 2, FaultKind::Io)
            .fail_nth(FaultOp::Sync, 1, FaultKind::Io)
            .fail_nth(FaultOp::Read, 1, FaultKind::Io)
            .fail_nth(FaultOp::DirSync, 1, FaultKind::Io)
            .fail_nth(FaultOp::Rename, 1, FaultKind::NoSpace),
    );
    file.write_all_at(0, vec![1u8; 10]).await.0.unwrap();
    let err = file.write_at(10, vec![2u8; 10]).await.0.unwrap_err();
    assert_eq!(err.raw_os_error(), None); // wrapped with the path...
    assert!(err.to_string().contains("mem:/f"), "{err}");
    assert_eq!(
        err.kind(),
        io::Error::from_raw_os_error(libc::EIO).kind(),
        "...but keeps EIO's kind"
    );
    // The failed write changed nothing; the next one works.
    assert_eq!(fs.read_raw("f").unwrap(), vec![1u8; 10]);
    file.write_all_at(10, vec![3u8; 10]).await.0.unwrap();
    assert!(file.sync().await.is_err());
    file.sync().await.unwrap();
    assert!(file.read_exact_at(0, 20).await.is_err());
    assert_eq!(file.read_exact_at(0, 20).await.unwrap().len(), 20);
    assert!(root.sync().await.is_err());
    root.sync().await.unwrap();
    let err = root.rename("f", "g").await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::StorageFull);
    assert_eq!(fs.op_count(FaultOp::Write), 3);
    assert_eq!(fs.sync_count(), 1);
    assert_eq!(fs.dir_sync_count(), 1);
}

#[compio::test]
async fn probabilistic_faults_follow_the_seed() {
    async fn run(seed: u64) -> Vec<bool> {
        let fs = MemFs::new(seed);
        let file = fs.root().open_file("f", OpenMode::Create).await.unwrap();
        fs.set_faults(FaultConfig::new().fail_with_probability(FaultOp::Write, 0.3, FaultKind::Io));
        let mut failed = Vec::new();
        for i in 0..100u64 {
            failed.push(file.write_at(i, vec![1u8]).await.0.is_err());
        }
        failed
    }
    let a = run(42).await;
    assert_eq!(a, run(42).await);
    let failures = a.iter().filter(|&&f| f).count();
    assert!((10..=50).contains(&failures), "{failures} of 100 failed");
}

#[compio::test]
async fn short_writes_are_completed_by_write_all_at() {
    let fs = MemFs::new(3);
    let file = fs.root().open_file("f", OpenMode::Create).await.unwrap();
    fs.set_faults(FaultConfig::new().fail_nth(FaultOp::Write, 1, FaultKind::ShortWrite));
    let data = pattern(3, 1000);
    file.write_all_at(0, data.clone()).await.0.unwrap();
    assert_eq!(fs.op_count(FaultOp::Write), 2);
    assert_eq!(fs.read_raw("f").unwrap(), data);
}

#[compio::test]
async fn a_full_disk_refuses_growth() {
    let fs = MemFs::new(4);
    let root = fs.root();
    let a = root.open_file("a", OpenMode::Create).await.unwrap();
    let b = root.open_file("b", OpenMode::Create).await.unwrap();
    fs.set_faults(FaultConfig::new().disk_budget_bytes(1000));
    a.write_all_at(0, vec![1u8; 600]).await.0.unwrap();
    let err = b.write_all_at(0, vec![2u8; 500]).await.0.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::StorageFull);
    // Overwriting in place needs no space; growing up to the budget is fine.
    a.write_all_at(0, vec![3u8; 600]).await.0.unwrap();
    b.write_all_at(0, vec![2u8; 400]).await.0.unwrap();
    assert_eq!(
        b.truncate(401).await.unwrap_err().kind(),
        io::ErrorKind::StorageFull
    );
    a.truncate(100).await.unwrap();
    b.write_all_at(400, vec![2u8; 400]).await.0.unwrap();
}

#[compio::test]
async fn a_bit_flip_changes_exactly_one_bit() {
    let fs = MemFs::new(5);
    let file = fs.root().open_file("f", OpenMode::Create).await.unwrap();
    let data = pattern(5, 4096);
    file.write_all_at(0, data.clone()).await.0.unwrap();
    file.sync().await.unwrap();
    fs.flip_bit("f", 1234, 6).unwrap();
    let flipped = file.read_exact_at(0, data.len()).await.unwrap();
    let changed_bits: u32 = data
        .iter()
        .zip(&flipped)
        .map(|(a, b)| (a ^ b).count_ones())
        .sum();
    assert_eq!(changed_bits, 1);
    assert_eq!(flipped[1234] ^ data[1234], 1 << 6);
    assert_eq!(fs.durable_bytes("f").unwrap(), flipped);

    let (offset, bit) = fs.flip_random_bit("f").unwrap().unwrap();
    let again = fs.read_raw("f").unwrap();
    let changed: u32 = flipped
        .iter()
        .zip(&again)
        .map(|(a, b)| (a ^ b).count_ones())
        .sum();
    assert_eq!(changed, 1);
    assert_eq!(again[offset as usize] ^ flipped[offset as usize], 1 << bit);
    assert!(fs.flip_bit("f", 1 << 20, 0).is_err());
}

#[compio::test]
async fn rename_is_lost_on_crash_unless_the_directory_was_synced() {
    for sync_dir in [false, true] {
        let fs = MemFs::new(6);
        let root = fs.root();
        let file = root.open_file("snap.tmp", OpenMode::Create).await.unwrap();
        file.write_all_at(0, vec![7u8; 64]).await.0.unwrap();
        file.sync().await.unwrap();
        root.sync().await.unwrap();
        root.rename("snap.tmp", "snap").await.unwrap();
        assert_eq!(root.list().await.unwrap(), ["snap"]);
        if sync_dir {
            root.sync().await.unwrap();
        }
        let report = fs.crash();
        let root = fs.root();
        if sync_dir {
            assert_eq!(root.list().await.unwrap(), ["snap"]);
            assert_eq!(report.entries_reverted, 0);
        } else {
            assert_eq!(root.list().await.unwrap(), ["snap.tmp"]);
            assert_eq!(report.entries_reverted, 2);
        }
        let name = if sync_dir { "snap" } else { "snap.tmp" };
        assert_eq!(fs.read_raw(name).unwrap(), vec![7u8; 64]);
    }
}

#[compio::test]
async fn file_creation_and_removal_need_a_directory_sync() {
    let fs = MemFs::new(8);
    let root = fs.root();
    let sub = root.open_dir("sub", true).await.unwrap();
    let file = sub.open_file("new", OpenMode::Create).await.unwrap();
    file.write_all_at(0, vec![1u8; 10]).await.0.unwrap();
    file.sync().await.unwrap();
    // The file's directory is synced, but `sub` itself was never made durable in the root.
    sub.sync().await.unwrap();
    fs.crash();
    assert!(!fs.exists("sub"));

    let root = fs.root();
    let sub = root.open_dir("sub", true).await.unwrap();
    root.sync().await.unwrap();
    let file = sub.open_file("new", OpenMode::Create).await.unwrap();
    file.write_all_at(0, vec![1u8; 10]).await.0.unwrap();
    file.sync().await.unwrap();
    fs.crash();
    assert!(fs.exists("sub"));
    assert!(!fs.exists("sub/new"), "created without a directory sync");

    let sub = fs.root().open_dir("sub", false).await.unwrap();
    let file = sub.open_file("new", OpenMode::Create).await.unwrap();
    file.sync().await.unwrap();
    sub.sync().await.unwrap();
    sub.remove_file("new").await.unwrap();
    assert!(!sub.exists("new").await.unwrap());
    fs.crash();
    assert!(
        fs.exists("sub/new"),
        "removal without a directory sync is undone"
    );
}

#[compio::test]
async fn handles_from_before_a_crash_are_stale() {
    let fs = MemFs::new(9);
    let root = fs.root();
    let file = root.open_file("f", OpenMode::Create).await.unwrap();
    root.sync().await.unwrap();
    fs.crash();
    assert!(file.write_at(0, vec![1u8]).await.0.is_err());
    assert!(file.read_at(0, Vec::with_capacity(1)).await.0.is_err());
    assert!(file.sync().await.is_err());
    assert!(root.list().await.is_err());
    let fresh = fs.root().open_file("f", OpenMode::Existing).await.unwrap();
    fresh.write_all_at(0, vec![1u8]).await.0.unwrap();
}

#[compio::test]
async fn locks_exclude_until_dropped_or_crashed() {
    let fs = MemFs::new(10);
    let root = fs.root();
    let guard = root.lock("LOCK").await.unwrap();
    let err = root.lock("LOCK").await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    assert!(err.to_string().contains("mem:/LOCK"), "{err}");
    drop(guard);
    let guard = root.lock("LOCK").await.unwrap();
    root.sync().await.unwrap();
    fs.crash();
    let root = fs.root();
    let new_guard = root.lock("LOCK").await.unwrap();
    // The stale guard's drop must not release the new holder.
    drop(guard);
    assert!(root.lock("LOCK").await.is_err());
    drop(new_guard);
}

#[compio::test]
async fn read_only_views_refuse_mutation() {
    let fs = MemFs::new(11);
    let root = fs.root();
    root.open_file("f", OpenMode::Create)
        .await
        .unwrap()
        .write_all_at(0, vec![1u8; 4])
        .await
        .0
        .unwrap();
    let ro = fs.root_read_only();
    assert!(ro.is_read_only());
    let file = ro.open_file("f", OpenMode::ReadOnly).await.unwrap();
    assert_eq!(file.read_exact_at(0, 4).await.unwrap(), vec![1u8; 4]);
    let denied = io::ErrorKind::PermissionDenied;
    assert_eq!(
        file.write_at(0, vec![0u8]).await.0.unwrap_err().kind(),
        denied
    );
    assert_eq!(file.truncate(0).await.unwrap_err().kind(), denied);
    assert_eq!(file.sync().await.unwrap_err().kind(), denied);
    assert_eq!(
        ro.open_file("f", OpenMode::Existing)
            .await
            .unwrap_err()
            .kind(),
        denied
    );
    assert_eq!(ro.rename("f", "g").await.unwrap_err().kind(), denied);
    assert_eq!(ro.remove_file("f").await.unwrap_err().kind(), denied);
    assert_eq!(ro.sync().await.unwrap_err().kind(), denied);
    assert!(ro.open_dir("new", true).await.is_err());
}

#[compio::test]
async fn raw_access_makes_hand_made_damage() {
    let fs = MemFs::new(12);
    fs.write_raw("made/by/hand", 0, b"hello").unwrap_err(); // parent missing
    fs.write_raw("seg", 0, b"hello world").unwrap();
    fs.cut_raw("seg", 5).unwrap();
    fs.write_raw("seg", 1, b"E").unwrap();
    fs.crash(); // raw edits are durable
    let file = fs
        .root()
        .open_file("seg", OpenMode::ReadOnly)
        .await
        .unwrap();
    assert_eq!(file.read_exact_at(0, 5).await.unwrap(), b"hEllo");
    assert_eq!(fs.root().display_path(), "mem:");
    let dir = fs.root().open_dir("j", true).await.unwrap();
    assert_eq!(dir.display_path(), "mem:/j");
}

#[compio::test]
async fn concurrent_appends_on_mem_storage_do_not_overlap() {
    let fs = MemFs::new(13);
    let file = Rc::new(fs.root().open_file("log", OpenMode::Create).await.unwrap());
    let mut handles = Vec::new();
    for task in 0..32u8 {
        let file = file.clone();
        handles.push(compio::runtime::spawn(async move {
            let offset = file
                .append(vec![task; 100 + task as usize])
                .await
                .0
                .unwrap();
            (task, offset)
        }));
    }
    for handle in handles {
        let (task, offset) = handle.await.unwrap();
        let got = file
            .read_exact_at(offset, 100 + task as usize)
            .await
            .unwrap();
        assert!(got.iter().all(|&b| b == task));
    }
}

mod model {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Write {
            offset_bytes: u64,
            len_bytes: usize,
            fill: u8,
        },
        Truncate {
            len_bytes: u64,
        },
        Sync,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..5000u64, 1..1500usize, any::<u8>())
                .prop_map(|(offset_bytes, len_bytes, fill)| Op::Write { offset_bytes, len_bytes, fill }),
            1 => (0..6000u64).prop_map(|len_bytes| Op::Truncate { len_bytes }),
            1 => Just(Op::Sync),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(rounds(64) as u32))]

        /// Reads always match a plain byte-vector model, and after a final sync a crash keeps
        /// exactly that model, whatever the seed.
        #[test]
        fn reads_match_the_model_and_synced_state_survives(
            seed in any::<u64>(),
            ops in proptest::collection::vec(op(), 1..40),
        ) {
            let runtime = compio::runtime::Runtime::new().unwrap();
            runtime.block_on(async {
                let fs = MemFs::new(seed);
                let root = fs.root();
                let file = root.open_file("m", OpenMode::Create).await.unwrap();
                root.sync().await.unwrap();
                let mut model: Vec<u8> = Vec::new();
                for op in ops {
                    match op {
                        Op::Write { offset_bytes, len_bytes, fill } => {
                            let data = vec![fill; len_bytes];
                            file.write_all_at(offset_bytes, data.clone()).await.0.unwrap();
                            let end = offset_bytes as usize + len_bytes;
                            if model.len() < end {
                                model.resize(end, 0);
                            }
                            model[offset_bytes as usize..end].copy_from_slice(&data);
                        }
                        Op::Truncate { len_bytes } => {
                            file.truncate(len_bytes).await.unwrap();
                            model.resize(len_bytes as usize, 0);
                        }
                        Op::Sync => file.sync().await.unwrap(),
                    }
                    assert_eq!(fs.read_raw("m").unwrap(), model);
                }
                file.sync().await.unwrap();
                fs.crash();
                assert_eq!(fs.read_raw("m").unwrap(), model);
            });
        }
    }
}
