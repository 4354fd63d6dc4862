//! MemFs's process crash, misdirected and lost writes, and fault counts.

use std::collections::BTreeSet;
use std::io;

use keel_storage::{
    Directory, FaultConfig, FaultKind, FaultOp, MemFs, OpenMode, Storage, WriteOutcome,
    SECTOR_BYTES,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn pattern(seed: u64, len_bytes: usize) -> Vec<u8> {
    (0..len_bytes)
        .map(|i| ((i as u64).wrapping_mul(2654435761).wrapping_add(seed) >> 3) as u8 | 1)
        .collect()
}

/// A MemFs whose root holds each (name, bytes) durably (entries and contents).
async fn fs_with(seed: u64, files: &[(&str, &[u8])]) -> MemFs {
    let fs = MemFs::new(seed);
    let root = fs.root();
    for (name, bytes) in files {
        let file = root.open_file(name, OpenMode::Create).await.unwrap();
        file.write_all_at(0, bytes.to_vec()).await.0.unwrap();
        file.sync().await.unwrap();
    }
    root.sync().await.unwrap();
    fs
}

/// Where `needle` occurs in `haystack`, if anywhere.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[compio::test]
async fn a_process_crash_keeps_the_page_cache_and_a_power_cut_still_can_lose_it() {
    let synced = pattern(1, 1000);
    let fs = fs_with(1, &[("f", &synced)]).await;
    let root = fs.root();
    let file = root.open_file("f", OpenMode::Existing).await.unwrap();
    let unsynced = pattern(2, 600);
    file.write_all_at(1000, unsynced.clone()).await.0.unwrap();
    let other = root.open_file("new", OpenMode::Create).await.unwrap();
    other.write_all_at(0, vec![3u8; 50]).await.0.unwrap();
    let _guard = root.lock("LOCK").await.unwrap();

    let report = fs.process_crash();
    assert_eq!(report.unsynced_writes, 2);
    assert_eq!(report.unsynced_truncates, 0);
    assert_eq!(report.unsynced_entries, 2, "`new` and `LOCK` are unsynced");
    assert_eq!(report.locks_released, 1);
    // Nothing changed for a reader.
    let mut all = synced.clone();
    all.extend_from_slice(&unsynced);
    assert_eq!(fs.read_raw("f").unwrap(), all);
    assert_eq!(fs.read_raw("new").unwrap(), vec![3u8; 50]);
    // ...nor became durable.
    assert_eq!(fs.durable_bytes("f").unwrap(), synced);

    // The power cut after it decides, as if the process had never died.
    let crash = fs.crash();
    // `new` vanished with its entry before its write could be replayed.
    assert_eq!(crash.events.len(), 1);
    assert!(!fs.exists("new"), "an unsynced create survived a power cut");
    let after = fs.read_raw("f").unwrap();
    assert_eq!(after[..1000], synced[..]);
    assert_eq!(fs.fault_counts().process_crashes, 1);
    assert_eq!(fs.fault_counts().power_cuts, 1);
}

#[compio::test]
async fn a_power_cut_after_a_process_crash_can_lose_unsynced_writes() {
    let mut lost = 0;
    for seed in 0..40 {
        let fs = fs_with(seed, &[("f", &[1u8; 10])]).await;
        let file = fs.root().open_file("f", OpenMode::Existing).await.unwrap();
        file.write_all_at(0, vec![2u8; 10]).await.0.unwrap();
        fs.process_crash();
        assert_eq!(fs.read_raw("f").unwrap(), vec![2u8; 10], "seed {seed}");
        fs.crash();
        if fs.read_raw("f").unwrap() != vec![2u8; 10] {
            lost += 1;
        }
    }
    assert!(lost > 0, "no seed lost the unsynced write");
}

#[compio::test]
async fn handles_and_locks_from_before_a_process_crash_are_stale() {
    let fs = fs_with(2, &[("f", &[1u8; 10])]).await;
    let root = fs.root();
    let file = root.open_file("f", OpenMode::Existing).await.unwrap();
    let guard = root.lock("LOCK").await.unwrap();
    fs.process_crash();
    for error in [
        file.write_at(0, vec![1u8]).await.0.unwrap_err(),
        file.read_at(0, Vec::with_capacity(1)).await.0.unwrap_err(),
        file.sync().await.unwrap_err(),
        root.list().await.unwrap_err(),
        root.open_file("f", OpenMode::Existing)
            .await
            .map(|_| ())
            .unwrap_err(),
    ] {
        assert_eq!(error.kind(), io::ErrorKind::NotConnected, "{error}");
    }
    let fresh = fs.root();
    let new_guard = fresh.lock("LOCK").await.unwrap();
    // The dead process's guard must not release the new holder.
    drop(guard);
    assert_eq!(
        fresh.lock("LOCK").await.unwrap_err().kind(),
        io::ErrorKind::WouldBlock
    );
    drop(new_guard);
    let reopened = fresh.open_file("f", OpenMode::Existing).await.unwrap();
    assert_eq!(reopened.read_exact_at(0, 10).await.unwrap(), vec![1u8; 10]);
}

#[compio::test]
async fn removing_the_lock_file_does_not_release_the_lock() {
    let fs = MemFs::new(3);
    let root = fs.root();
    let guard = root.lock("LOCK").await.unwrap();
    root.remove_file("LOCK").await.unwrap();
    assert!(!fs.exists("LOCK"));
    let err = root.lock("LOCK").await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    drop(guard);
    let _again = root.lock("LOCK").await.unwrap();
    // A read-only view locks too, and never creates the file.
    let fs = MemFs::new(4);
    let ro = fs.root_read_only();
    let guard = ro.lock("LOCK").await.unwrap();
    assert!(!fs.exists("LOCK"));
    assert!(fs.root().lock("LOCK").await.is_err());
    drop(guard);
}

/// The bytes of the misdirected write of `misdirect_once`: random, so no 512-byte window of a
/// `pattern` file matches them by chance.
fn stray(seed: u64) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    (0..512).map(|_| rng.gen()).collect()
}

/// One misdirected 512-byte write aimed at offset 1024 of `a`; returns `a`, `b` and `b`'s
/// durable bytes after it.
async fn misdirect_once(seed: u64) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let old_a = pattern(seed, 4096);
    let old_b = pattern(seed + 1, 4096);
    let fs = fs_with(seed, &[("a", &old_a), ("b", &old_b)]).await;
    let file = fs.root().open_file("a", OpenMode::Existing).await.unwrap();
    fs.set_faults(
        FaultConfig::new()
            .fail_nth(FaultOp::Write, 1, FaultKind::Misdirected)
            .on_paths_containing("mem:/a"),
    );
    let written = file.write_at(1024, stray(seed)).await.0.unwrap();
    assert_eq!(written, 512, "a misdirected write reports full success");
    assert_eq!(file.len(), 4096);
    assert_eq!(fs.fault_counts().misdirected_writes, 1);
    (
        fs.read_raw("a").unwrap(),
        fs.read_raw("b").unwrap(),
        fs.durable_bytes("b").unwrap(),
    )
}

#[compio::test]
async fn a_misdirected_write_leaves_its_range_and_lands_elsewhere() {
    let mut landed_in = BTreeSet::new();
    for seed in 0..40 {
        let old_a = pattern(seed, 4096);
        let old_b = pattern(seed + 1, 4096);
        let (a, b, durable_b) = misdirect_once(seed).await;
        assert_eq!(
            a[1024..1536],
            old_a[1024..1536],
            "seed {seed}: intended range changed"
        );
        let data = stray(seed);
        // At most one sector past the sector holding the end of the 4096-byte files.
        let max_offset = 4096 + SECTOR_BYTES as usize;
        match (find(&a, &data), find(&b, &data)) {
            (Some(offset), None) => {
                assert_eq!(offset as u64 % SECTOR_BYTES, 0, "seed {seed}");
                assert!(
                    offset + 512 <= 1024 || offset >= 1536,
                    "seed {seed}: overlap"
                );
                assert!(offset <= max_offset, "seed {seed}: landed far past the end");
                // Exactly the stray write at `offset` changed `a` (zeroes in any gap it opened).
                let mut expected = old_a.clone();
                expected.resize(expected.len().max(offset + 512), 0);
                expected[offset..offset + 512].copy_from_slice(&data);
                assert_eq!(a, expected, "seed {seed}");
                assert_eq!(b, old_b);
                landed_in.insert("same file");
            }
            (None, Some(offset)) => {
                assert_eq!(offset as u64 % SECTOR_BYTES, 0, "seed {seed}");
                assert!(offset <= max_offset, "seed {seed}: landed far past the end");
                assert_eq!(a, old_a);
                // An ordinary unsynced write where it landed.
                assert_eq!(durable_b, old_b, "seed {seed}");
                landed_in.insert("other file");
            }
            other => panic!("seed {seed}: the bytes landed {other:?}"),
        }
        assert_eq!(
            misdirect_once(seed).await,
            (a, b, durable_b),
            "seed {seed} did not replay"
        );
    }
    assert_eq!(landed_in.len(), 2, "only ever {landed_in:?}");
}

#[compio::test]
async fn stray_bytes_become_durable_with_a_sync_of_the_file_they_landed_in() {
    let fs = MemFs::new(5);
    let root = fs.root();
    let file = root.open_file("only", OpenMode::Create).await.unwrap();
    root.sync().await.unwrap();
    fs.set_faults(FaultConfig::new().fail_nth(FaultOp::Write, 1, FaultKind::Misdirected));
    file.write_all_at(0, vec![9u8; 100]).await.0.unwrap();
    // The only free place for 100 bytes aimed at 0 of an empty file: the next sector.
    let mut expected = vec![0u8; 512];
    expected.extend_from_slice(&[9u8; 100]);
    assert_eq!(fs.read_raw("only").unwrap(), expected);
    file.sync().await.unwrap();
    fs.crash();
    assert_eq!(fs.read_raw("only").unwrap(), expected);
}

#[compio::test]
async fn a_lost_write_is_read_until_the_power_cut_but_never_durable() {
    let old = pattern(6, 2048);
    let fs = fs_with(6, &[("f", &old)]).await;
    let file = fs.root().open_file("f", OpenMode::Existing).await.unwrap();
    fs.set_faults(FaultConfig::new().fail_nth(FaultOp::Write, 1, FaultKind::LostWrite));
    let new = vec![0xAB; 1024];
    file.write_all_at(0, new.clone()).await.0.unwrap();
    let mut seen = new.clone();
    seen.extend_from_slice(&old[1024..]);
    assert_eq!(file.read_exact_at(0, 2048).await.unwrap(), seen);
    file.sync().await.unwrap();
    assert_eq!(fs.read_raw("f").unwrap(), seen, "the page cache keeps it");
    assert_eq!(
        fs.durable_bytes("f").unwrap(),
        old,
        "the sync made it durable"
    );
    assert_eq!(fs.fault_counts().lost_writes, 1);
    // A process crash does not drop the page cache either.
    fs.process_crash();
    assert_eq!(fs.read_raw("f").unwrap(), seen);
    let report = fs.crash();
    assert_eq!(fs.read_raw("f").unwrap(), old);
    assert_eq!(report.events.len(), 1);
    assert_eq!(report.events[0].outcome, WriteOutcome::Lost);
}

#[compio::test]
async fn a_synced_write_over_a_lost_one_is_durable_where_it_wrote() {
    let old = pattern(7, 2048);
    let fs = fs_with(7, &[("f", &old)]).await;
    let file = fs.root().open_file("f", OpenMode::Existing).await.unwrap();
    fs.set_faults(FaultConfig::new().fail_nth(FaultOp::Write, 1, FaultKind::LostWrite));
    file.write_all_at(0, vec![0xAA; 1024]).await.0.unwrap();
    file.write_all_at(512, vec![0xBB; 2048]).await.0.unwrap();
    file.sync().await.unwrap();
    // A real disk: the later write where it wrote, the old bytes under the lost write elsewhere.
    let mut disk = old.clone();
    disk.resize(2560, 0);
    disk[512..2560].copy_from_slice(&[0xBB; 2048]);
    assert_eq!(fs.durable_bytes("f").unwrap(), disk);
    let mut cache = disk.clone();
    cache[..512].copy_from_slice(&[0xAA; 512]);
    assert_eq!(fs.read_raw("f").unwrap(), cache);
    // A second sync changes nothing; the power cut brings the disk's view back.
    file.sync().await.unwrap();
    assert_eq!(fs.durable_bytes("f").unwrap(), disk);
    fs.crash();
    assert_eq!(fs.read_raw("f").unwrap(), disk);
}

#[compio::test]
async fn write_only_kinds_act_as_io_errors_elsewhere() {
    let fs = fs_with(8, &[("f", &[1u8; 10])]).await;
    let root = fs.root();
    let file = root.open_file("f", OpenMode::Existing).await.unwrap();
    let eio = io::Error::from_raw_os_error(libc::EIO).kind();
    fs.set_faults(
        FaultConfig::new()
            .fail_nth(FaultOp::Sync, 1, FaultKind::LostWrite)
            .fail_nth(FaultOp::Read, 1, FaultKind::Misdirected)
            .fail_nth(FaultOp::Rename, 1, FaultKind::LostWrite),
    );
    assert_eq!(file.sync().await.unwrap_err().kind(), eio);
    assert_eq!(
        file.read_at(0, Vec::with_capacity(4))
            .await
            .0
            .unwrap_err()
            .kind(),
        eio
    );
    assert_eq!(root.rename("f", "g").await.unwrap_err().kind(), eio);
    assert!(fs.exists("f"));
    assert_eq!(fs.fault_counts().io_errors, 3);
    assert_eq!(fs.fault_counts().lost_writes, 0);
    assert_eq!(fs.fault_counts().misdirected_writes, 0);
}

#[compio::test]
async fn fault_counts_count_each_kind() {
    let fs = fs_with(9, &[("f", &[1u8; 10])]).await;
    let file = fs.root().open_file("f", OpenMode::Existing).await.unwrap();
    fs.set_faults(
        FaultConfig::new()
            .fail_nth(FaultOp::Write, 1, FaultKind::Io)
            .fail_nth(FaultOp::Write, 2, FaultKind::NoSpace)
            .fail_nth(FaultOp::Write, 3, FaultKind::ShortWrite)
            .disk_budget_bytes(100),
    );
    assert!(file.write_at(0, vec![2u8; 8]).await.0.is_err());
    assert!(file.write_at(0, vec![2u8; 8]).await.0.is_err());
    assert_eq!(file.write_at(0, vec![2u8; 8]).await.0.unwrap(), 4);
    assert!(file.write_at(0, vec![2u8; 200]).await.0.is_err());
    fs.flip_bit("f", 0, 0).unwrap();
    fs.crash();
    fs.process_crash();
    let counts = fs.fault_counts();
    assert_eq!(counts.io_errors, 1);
    assert_eq!(counts.no_space, 1);
    assert_eq!(counts.short_writes, 1);
    assert_eq!(counts.disk_full, 1);
    assert_eq!(counts.bit_flips, 1);
    assert_eq!(counts.power_cuts, 1);
    assert_eq!(counts.process_crashes, 1);
    // Counted since creation: new faults do not reset them.
    fs.clear_faults();
    assert_eq!(fs.fault_counts(), counts);
}

/// A workload under probabilistic misdirected and lost writes, then a power cut; returns every
/// file's bytes and the fault counts.
async fn faulty_workload(seed: u64) -> (Vec<Vec<u8>>, u64, u64) {
    let fs = MemFs::new(seed);
    let root = fs.root();
    let names = ["a", "b", "c"];
    let mut files = Vec::new();
    for name in names {
        files.push(root.open_file(name, OpenMode::Create).await.unwrap());
    }
    root.sync().await.unwrap();
    fs.set_faults(
        FaultConfig::new()
            .fail_with_probability(FaultOp::Write, 0.2, FaultKind::Misdirected)
            .fail_with_probability(FaultOp::Write, 0.2, FaultKind::LostWrite),
    );
    for round in 0..30u64 {
        let file = &files[(round % 3) as usize];
        file.append(pattern(seed * 1000 + round, 300 + round as usize * 11))
            .await
            .0
            .unwrap();
        if round % 4 == 3 {
            file.sync().await.unwrap();
        }
    }
    fs.crash();
    let bytes = names.iter().map(|n| fs.read_raw(n).unwrap()).collect();
    let counts = fs.fault_counts();
    (bytes, counts.misdirected_writes, counts.lost_writes)
}

#[compio::test]
async fn misdirected_and_lost_writes_follow_the_seed() {
    let mut distinct = BTreeSet::new();
    for seed in 0..10 {
        let run = faulty_workload(seed).await;
        assert_eq!(
            run,
            faulty_workload(seed).await,
            "seed {seed} did not replay"
        );
        assert!(run.1 > 0 && run.2 > 0, "seed {seed}: {run:?}");
        distinct.insert(format!("{:?}", run.0));
    }
    assert!(distinct.len() > 1, "different seeds should differ");
}
