//! FileStorage and FsDirectory on a real temporary directory.

use std::io;
use std::rc::Rc;

use keel_storage::DirAccess;
use keel_storage::{Directory, FileOptions, FsDirectory, OpenMode, Storage};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

async fn temp_dir() -> (tempfile::TempDir, FsDirectory) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = FsDirectory::open_with(tmp.path(), DirAccess::Existing)
        .await
        .expect("open temp dir");
    (tmp, dir)
}

#[compio::test]
async fn random_offset_round_trips() {
    let (_tmp, dir) = temp_dir().await;
    let file = dir.open_file("data", OpenMode::Create).await.unwrap();
    let mut model: Vec<u8> = Vec::new();
    let mut rng = StdRng::seed_from_u64(7);
    for _ in 0..200 {
        let offset_bytes = rng.gen_range(0..64 * 1024u64);
        let len_bytes = rng.gen_range(1..4096usize);
        let data: Vec<u8> = (0..len_bytes).map(|_| rng.gen()).collect();
        let end = offset_bytes as usize + len_bytes;
        if model.len() < end {
            model.resize(end, 0);
        }
        model[offset_bytes as usize..end].copy_from_slice(&data);
        file.write_all_at(offset_bytes, data).await.0.unwrap();
        assert_eq!(file.len(), model.len() as u64);

        // Read back a random range inside what has been written.
        let read_offset = rng.gen_range(0..model.len());
        let read_len = rng.gen_range(0..=(model.len() - read_offset).min(8192));
        let got = file
            .read_exact_at(read_offset as u64, read_len)
            .await
            .unwrap();
        assert_eq!(got, model[read_offset..read_offset + read_len]);
    }
    let all = file.read_exact_at(0, model.len()).await.unwrap();
    assert_eq!(all, model);
}

#[compio::test]
async fn concurrent_appends_land_at_distinct_reserved_offsets() {
    let (_tmp, dir) = temp_dir().await;
    let file = Rc::new(dir.open_file("log", OpenMode::Create).await.unwrap());
    let mut handles = Vec::new();
    for task in 0..32u8 {
        let file = file.clone();
        handles.push(compio::runtime::spawn(async move {
            // Distinct sizes and contents per task, so an overlap would corrupt someone's bytes.
            let data = vec![task; 1000 + task as usize * 37];
            let offset = file.append(data).await.0.unwrap();
            (task, offset)
        }));
    }
    let mut placed = Vec::new();
    for handle in handles {
        placed.push(handle.await.unwrap());
    }
    let total_bytes: u64 = (0..32u64).map(|t| 1000 + t * 37).sum();
    assert_eq!(file.len(), total_bytes);
    let mut ranges: Vec<(u64, u64)> = placed
        .iter()
        .map(|&(t, off)| (off, off + 1000 + t as u64 * 37))
        .collect();
    ranges.sort();
    for pair in ranges.windows(2) {
        assert!(pair[0].1 <= pair[1].0, "overlapping appends: {pair:?}");
    }
    for (task, offset) in placed {
        let len_bytes = 1000 + task as usize * 37;
        let got = file.read_exact_at(offset, len_bytes).await.unwrap();
        assert!(got.iter().all(|&b| b == task), "task {task} bytes damaged");
    }
}

#[compio::test]
async fn truncate_then_read() {
    let (_tmp, dir) = temp_dir().await;
    let file = dir.open_file("t", OpenMode::Create).await.unwrap();
    file.write_all_at(0, vec![0xAB; 1000]).await.0.unwrap();
    file.truncate(100).await.unwrap();
    assert_eq!(file.len(), 100);
    let buf = Vec::with_capacity(1000);
    let (n, buf) = {
        let r = file.read_at(0, buf).await;
        (r.0.unwrap(), r.1)
    };
    assert_eq!(n, 100);
    assert_eq!(&buf[..n], &[0xAB; 100][..]);
    // Growing zero-extends.
    file.truncate(300).await.unwrap();
    let got = file.read_exact_at(0, 300).await.unwrap();
    assert_eq!(&got[..100], &[0xAB; 100][..]);
    assert!(got[100..].iter().all(|&b| b == 0));
}

#[compio::test]
async fn sync_and_reopen_sees_the_same_bytes() {
    let (tmp, dir) = temp_dir().await;
    let data: Vec<u8> = (0..10_000u32).map(|i| (i * 31 % 251) as u8).collect();
    {
        let file = dir.open_file("seg", OpenMode::CreateNew).await.unwrap();
        file.write_all_at(0, data.clone()).await.0.unwrap();
        file.sync().await.unwrap();
        dir.sync().await.unwrap();
        file.close().await.unwrap();
        // A closed handle refuses further work instead of touching a recycled fd.
        assert!(file.sync().await.is_err());
    }
    let reopened = FsDirectory::open_with(tmp.path(), DirAccess::ReadOnly)
        .await
        .unwrap();
    let file = reopened.open_file("seg", OpenMode::ReadOnly).await.unwrap();
    assert_eq!(file.len(), data.len() as u64);
    assert_eq!(file.read_exact_at(0, data.len()).await.unwrap(), data);
}

#[compio::test]
async fn reads_past_the_end_are_zero_or_short() {
    let (_tmp, dir) = temp_dir().await;
    let file = dir.open_file("short", OpenMode::Create).await.unwrap();
    file.write_all_at(0, vec![1u8; 100]).await.0.unwrap();
    // At and past the end: 0.
    let r = file.read_at(100, Vec::with_capacity(10)).await;
    assert_eq!(r.0.unwrap(), 0);
    let r = file.read_at(5000, Vec::with_capacity(10)).await;
    assert_eq!(r.0.unwrap(), 0);
    // Straddling the end: short.
    let r = file.read_at(90, Vec::with_capacity(50)).await;
    assert_eq!(r.0.unwrap(), 10);
    assert_eq!(r.1, vec![1u8; 10]);
    // read_exact_at turns it into UnexpectedEof.
    let err = file.read_exact_at(90, 50).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
}

#[compio::test]
async fn lock_twice_is_refused_until_dropped() {
    let (tmp, dir) = temp_dir().await;
    let guard = dir.lock("LOCK").await.unwrap();
    let err = dir.lock("LOCK").await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    assert!(
        err.to_string().contains("LOCK"),
        "message names the path: {err}"
    );
    // Another FsDirectory on the same path (like another process) is refused too.
    let other = FsDirectory::open_with(tmp.path(), DirAccess::Existing)
        .await
        .unwrap();
    assert!(other.lock("LOCK").await.is_err());
    drop(guard);
    let _again = other.lock("LOCK").await.unwrap();
}

#[compio::test]
async fn the_lock_holds_after_its_file_is_removed() {
    let (tmp, dir) = temp_dir().await;
    let guard = dir.lock("LOCK").await.unwrap();
    std::fs::remove_file(tmp.path().join("LOCK")).unwrap();
    // A second opener would create a fresh LOCK file and flock that: the directory's flock must
    // still refuse it.
    let other = FsDirectory::open_with(tmp.path(), DirAccess::Existing)
        .await
        .unwrap();
    let err = other.lock("LOCK").await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    assert!(err.to_string().contains("LOCK"), "{err}");
    // Replacing the file does not help either.
    std::fs::write(tmp.path().join("LOCK"), b"").unwrap();
    assert_eq!(
        other.lock("LOCK").await.unwrap_err().kind(),
        io::ErrorKind::WouldBlock
    );
    drop(guard);
    let again = other.lock("LOCK").await.unwrap();
    assert_eq!(again.path(), tmp.path().join("LOCK"));
}

#[compio::test]
async fn a_read_only_lock_without_a_file_locks_the_directory() {
    let (tmp, _dir) = temp_dir().await;
    let ro = FsDirectory::open_with(tmp.path(), DirAccess::ReadOnly)
        .await
        .unwrap();
    let guard = ro.lock("LOCK").await.unwrap();
    assert!(
        !tmp.path().join("LOCK").exists(),
        "a read-only lock created its file"
    );
    let writer = FsDirectory::open_with(tmp.path(), DirAccess::Existing)
        .await
        .unwrap();
    assert_eq!(
        writer.lock("LOCK").await.unwrap_err().kind(),
        io::ErrorKind::WouldBlock
    );
    drop(guard);
    let held = writer.lock("LOCK").await.unwrap();
    // With the file present, a read-only lock is refused while the writer holds it.
    assert_eq!(
        ro.lock("LOCK").await.unwrap_err().kind(),
        io::ErrorKind::WouldBlock
    );
    drop(held);
    let _ro_guard = ro.lock("LOCK").await.unwrap();
}

#[compio::test]
async fn open_with_create_makes_nested_missing_directories() {
    let tmp = tempfile::tempdir().unwrap();
    let nested = tmp.path().join("a/b/c");
    let dir = FsDirectory::open_with(&nested, DirAccess::Create)
        .await
        .unwrap();
    assert!(nested.is_dir());
    dir.open_file("f", OpenMode::Create).await.unwrap();
    // Again, now that everything exists (it still syncs, and must still work).
    let again = FsDirectory::open_with(&nested, DirAccess::Create)
        .await
        .unwrap();
    assert_eq!(again.list().await.unwrap(), ["f"]);
    // A file in the way is an error, not a directory.
    std::fs::write(tmp.path().join("file"), b"x").unwrap();
    assert!(
        FsDirectory::open_with(tmp.path().join("file/sub"), DirAccess::Create)
            .await
            .is_err()
    );
    assert_eq!(
        FsDirectory::open_with(tmp.path().join("file"), DirAccess::Create)
            .await
            .unwrap_err()
            .kind(),
        io::ErrorKind::NotADirectory
    );
    // Read-only never creates.
    assert!(
        FsDirectory::open_with(tmp.path().join("x/y"), DirAccess::ReadOnly)
            .await
            .is_err()
    );
    assert!(!tmp.path().join("x").exists());
}

#[compio::test]
async fn read_only_handles_and_directories_refuse_mutation() {
    let (tmp, dir) = temp_dir().await;
    dir.open_file("f", OpenMode::Create).await.unwrap();
    let file = dir.open_file("f", OpenMode::ReadOnly).await.unwrap();
    let err = file.write_at(0, vec![1u8]).await.0.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
    assert_eq!(
        file.truncate(0).await.unwrap_err().kind(),
        io::ErrorKind::PermissionDenied
    );
    assert_eq!(
        file.sync().await.unwrap_err().kind(),
        io::ErrorKind::PermissionDenied
    );

    let ro = FsDirectory::open_with(tmp.path(), DirAccess::ReadOnly)
        .await
        .unwrap();
    assert!(ro.is_read_only());
    for result in [
        ro.open_file("f", OpenMode::Existing).await.map(|_| ()),
        ro.open_file("g", OpenMode::Create).await.map(|_| ()),
        ro.rename("f", "g").await,
        ro.remove_file("f").await,
        ro.sync().await,
    ] {
        assert_eq!(result.unwrap_err().kind(), io::ErrorKind::PermissionDenied);
    }
    assert!(!ro.exists("g").await.unwrap());
}

#[compio::test]
async fn directory_namespace_operations() {
    let (tmp, dir) = temp_dir().await;
    for name in ["c", "a", "b"] {
        dir.open_file(name, OpenMode::Create).await.unwrap();
    }
    let sub = dir.open_dir("sub", true).await.unwrap();
    sub.open_file("inner", OpenMode::Create).await.unwrap();
    assert_eq!(dir.list().await.unwrap(), ["a", "b", "c", "sub"]);
    assert_eq!(sub.list().await.unwrap(), ["inner"]);
    assert_eq!(
        dir.open_file("a", OpenMode::CreateNew)
            .await
            .unwrap_err()
            .kind(),
        io::ErrorKind::AlreadyExists
    );
    assert_eq!(
        dir.open_file("zz", OpenMode::Existing)
            .await
            .unwrap_err()
            .kind(),
        io::ErrorKind::NotFound
    );
    dir.rename("a", "b").await.unwrap();
    assert!(!dir.exists("a").await.unwrap());
    assert!(dir.exists("b").await.unwrap());
    dir.remove_file("c").await.unwrap();
    assert_eq!(dir.list().await.unwrap(), ["b", "sub"]);
    dir.sync().await.unwrap();
    sub.sync().await.unwrap();
    assert!(dir.open_dir("missing", false).await.is_err());
    assert_eq!(
        dir.open_file("../escape", OpenMode::Create)
            .await
            .unwrap_err()
            .kind(),
        io::ErrorKind::InvalidInput
    );
    assert_eq!(dir.display_path(), tmp.path().display().to_string());
    // Creating a nested directory from scratch.
    let nested = FsDirectory::open_with(tmp.path().join("x/y"), DirAccess::Create)
        .await
        .unwrap();
    assert!(nested.list().await.unwrap().is_empty());
}

#[compio::test]
async fn preallocate_extends_with_zeroes() {
    let (_tmp, dir) = temp_dir().await;
    for fallocate in [false, true] {
        let dir = dir.clone().with_file_options(FileOptions {
            use_fallocate: fallocate,
        });
        let name = format!("pre-{fallocate}");
        let file = dir.open_file(&name, OpenMode::Create).await.unwrap();
        file.write_all_at(0, vec![9u8; 10]).await.0.unwrap();
        let target_bytes = (3 << 20) + 123;
        file.preallocate(target_bytes).await.unwrap();
        assert_eq!(file.len(), target_bytes);
        let got = file.read_exact_at(0, target_bytes as usize).await.unwrap();
        assert_eq!(&got[..10], &[9u8; 10]);
        assert!(got[10..].iter().all(|&b| b == 0));
        // Never shrinks.
        file.preallocate(5).await.unwrap();
        assert_eq!(file.len(), target_bytes);
        // Reopen: the length is on disk.
        let reopened = dir.open_file(&name, OpenMode::ReadOnly).await.unwrap();
        assert_eq!(reopened.len(), target_bytes);
    }
}

#[compio::test]
async fn appends_during_a_zero_fill_land_after_it() {
    let (_tmp, dir) = temp_dir().await;
    let file = Rc::new(dir.open_file("seg", OpenMode::Create).await.unwrap());
    let target_bytes: u64 = 3 << 20;
    let filler = {
        let file = file.clone();
        compio::runtime::spawn(async move { file.preallocate(target_bytes).await })
    };
    // Let the zero-fill start and claim its range before the appends reserve theirs.
    keel_storage::yield_now().await;
    let mut appends = Vec::new();
    for task in 1..=4u8 {
        let file = file.clone();
        appends.push(compio::runtime::spawn(async move {
            (task, file.append(vec![task; 4096]).await.0.unwrap())
        }));
    }
    filler.await.unwrap().unwrap();
    for handle in appends {
        let (task, offset) = handle.await.unwrap();
        assert!(
            offset >= target_bytes,
            "append at {offset} inside the zero-filled range"
        );
        let got = file.read_exact_at(offset, 4096).await.unwrap();
        assert!(got.iter().all(|&b| b == task), "task {task} overwritten");
    }
}

/// A direct handle (`open_file_direct`) on a disk-backed directory: aligned writes (through the
/// `O_DIRECT` descriptor, where the file system allows it) and unaligned ones (through the page
/// cache) interleave, and reads through the page cache always see the latest bytes of both.
#[compio::test]
async fn direct_and_page_cache_writes_read_back_coherently() {
    use keel_storage::{IoBuf, DIRECT_ALIGN_BYTES};
    // Under the target directory, not /tmp, which may be a tmpfs that refuses O_DIRECT.
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let dir = FsDirectory::open_with(tmp.path(), DirAccess::Existing)
        .await
        .unwrap();
    let file = dir.open_file_direct("seg", OpenMode::Create).await.unwrap();
    assert!(file.writes_are_durable());
    let mut model = vec![0u8; 64 << 10];
    let mut rng = StdRng::seed_from_u64(11);
    let mut aligned = 0;
    for round in 0..64 {
        let blocks = rng.gen_range(1..4usize);
        let len = if round % 2 == 0 {
            blocks * DIRECT_ALIGN_BYTES
        } else {
            rng.gen_range(1..3000)
        };
        let offset = if round % 2 == 0 {
            rng.gen_range(0..12u64) * DIRECT_ALIGN_BYTES as u64
        } else {
            rng.gen_range(0..50_000u64)
        };
        let mut buf: Vec<u8> = Vec::with_capacity(len + DIRECT_ALIGN_BYTES);
        let start = buf.as_ptr().align_offset(DIRECT_ALIGN_BYTES);
        buf.resize(start, 0);
        buf.extend((0..len).map(|_| rng.gen::<u8>()));
        let data = buf[start..].to_vec();
        aligned += usize::from(keel_storage::direct_aligned(offset, &buf[start..]));
        file.write_all_at(offset, buf.slice(start..start + len))
            .await
            .0
            .unwrap();
        model[offset as usize..offset as usize + len].copy_from_slice(&data);
        let end = model.len().min(file.len() as usize);
        let got = file.read_exact_at(0, end).await.unwrap();
        assert_eq!(got, model[..end], "round {round}");
    }
    assert_eq!(aligned, 32, "every even round's write was aligned");
}

/// `cached` tells bytes in memory from bytes on the disk: just written they are in the page
/// cache; written back and dropped from it (`POSIX_FADV_DONTNEED`), a read would wait for the
/// device, unless the file system keeps its files in memory (tmpfs), where they stay readable.
#[compio::test]
async fn cached_tells_the_page_cache_from_the_disk() {
    use std::os::fd::AsRawFd;
    let (tmp, dir) = temp_dir().await;
    let file = dir.open_file("data", OpenMode::Create).await.unwrap();
    file.write_all_at(0, vec![7u8; 1 << 20]).await.0.unwrap();
    file.sync().await.unwrap();
    assert_eq!(file.cached(0), Some(true), "just written");
    assert_eq!(
        file.cached(1 << 30),
        Some(true),
        "past the end nothing waits"
    );
    let std_file = std::fs::File::open(tmp.path().join("data")).unwrap();
    // SAFETY: plain integer arguments on an fd `std_file` keeps open for the calls; `statfs` is
    // a zeroed plain-data struct the call fills.
    let (dropped, in_memory_fs) = unsafe {
        let dropped = libc::posix_fadvise(std_file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
        let mut statfs: libc::statfs = std::mem::zeroed();
        let tmpfs = libc::fstatfs(std_file.as_raw_fd(), &mut statfs) == 0
            && statfs.f_type == libc::TMPFS_MAGIC;
        (dropped == 0, tmpfs)
    };
    assert!(dropped, "posix_fadvise(DONTNEED) failed");
    let expected = if in_memory_fs {
        Some(true)
    } else {
        Some(false)
    };
    assert_eq!(
        file.cached(512 << 10),
        expected,
        "dropped from the page cache"
    );
}
