//! fuzzing: the one entry point the `fuzz/` target and the arbitrary-bytes tests share.
//!
//! Owns turning arbitrary bytes into a journal directory on an in-memory file system and opening
//! it every way there is. It must never be used by production code; it exists so that "arbitrary
//! bytes never panic" is tested by proptest in CI and by libFuzzer for long runs alike.

use keel_storage::{Directory, MemFs};

use crate::{JournalConfig, MetadataJournal, RecoveryMode};

/// Splits `data` into up to three segment files (the first byte chooses how many and which
/// numbers), then verifies and opens them in every mode, reads everything back, appends, and
/// reopens. Panics only if the journal does (or if a repair is not idempotent).
pub fn open_arbitrary_segments(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let files = segment_files(selector, rest);
    let config = fuzz_config();
    RUNTIME.with(|runtime| {
        runtime.block_on(async {
            for mode in [
                RecoveryMode::Absolute,
                RecoveryMode::PointInTime,
                RecoveryMode::TolerateTornTail,
            ] {
                let fs = MemFs::new(u64::from(selector));
                if fs.root().open_dir("journal", true).await.is_err() {
                    return;
                }
                let _ = fs.root().sync().await;
                for (path, bytes) in &files {
                    let _ = fs.write_raw(path, 0, bytes);
                }
                let _ = MetadataJournal::verify(&fs.root(), config.clone()).await;
                let _ = MetadataJournal::inspect(&fs.root(), config.clone()).await;
                let _ = MetadataJournal::raw_entries(&fs.root(), config.clone(), 0, u64::MAX).await;
                let Ok((journal, _)) =
                    MetadataJournal::open(&fs.root(), config.clone(), mode).await
                else {
                    continue;
                };
                let mut reader = journal.reader(0);
                while let Ok(Some(_)) = reader.next().await {}
                let _ = journal
                    .append(
                        journal.snapshot_op().unwrap_or(0).saturating_add(1),
                        b"fuzz",
                    )
                    .await;
                drop(journal);
                if let Ok((_, report)) =
                    MetadataJournal::open(&fs.root(), config.clone(), mode).await
                {
                    assert!(
                        report.repairs.is_empty(),
                        "a second open repaired again: {report:?}"
                    );
                }
            }
        })
    });
}

/// The segment files `rest` encodes. Layout: the selector byte (segment count = selector % 3 + 1,
/// first segment number = selector / 3 % 4), then each segment but the last as a u16 LE length +
/// bytes, then the last segment's bytes.
fn segment_files(selector: u8, mut rest: &[u8]) -> Vec<(String, Vec<u8>)> {
    let count = usize::from(selector % 3) + 1;
    let first_number = u64::from(selector / 3 % 4);
    let mut files = Vec::new();
    for i in 0..count {
        let take = if i + 1 == count {
            rest.len()
        } else {
            let Some((len, tail)) = rest.split_first_chunk::<2>() else {
                break;
            };
            rest = tail;
            usize::from(u16::from_le_bytes(*len)).min(rest.len())
        };
        let (bytes, tail) = rest.split_at(take);
        rest = tail;
        files.push((
            format!(
                "journal/{}",
                crate::format::segment_file_name(first_number + i as u64)
            ),
            bytes.to_vec(),
        ));
    }
    files
}

thread_local! {
    /// One runtime per thread: setting up an io_uring per input would dominate the fuzzer's time.
    static RUNTIME: compio::runtime::Runtime = compio::runtime::Runtime::new().expect("compio runtime");
}

/// The small configuration both the fuzzed open and its seed logs use, so seeds are laid out the
/// way the fuzzed open reads them (4 KiB segments, 64 slots).
fn fuzz_config() -> JournalConfig {
    JournalConfig {
        slot_count: 64,
        segment_bytes: 4096,
        max_batch_bytes: 4096,
        max_inflight_bytes: 16 << 10,
        max_payload_bytes: 1024,
        preallocate: false,
        sync_on_append: true,
        write_through: true,
        direct_io: false,
        scan_window_bytes: crate::stream::WINDOW_BYTES,
        write_back_bytes: 64 << 10,
    }
}

/// Fuzzer seed inputs: valid logs of 1–3 segments in the layout [`open_arbitrary_segments`] reads.
pub fn seed_inputs() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for ops in [3u64, 20, 45, 64] {
        let config = fuzz_config();
        let segments = RUNTIME.with(|runtime| {
            runtime.block_on(async {
                let fs = MemFs::new(1);
                let (journal, _) =
                    MetadataJournal::open(&fs.root(), config, RecoveryMode::TolerateTornTail)
                        .await
                        .expect("open");
                for op in 1..=ops {
                    journal
                        .append(op, &vec![op as u8; (op as usize * 13) % 100])
                        .await
                        .expect("append");
                }
                drop(journal);
                let dir = fs.root().open_dir("journal", false).await.expect("dir");
                let mut segments = Vec::new();
                for name in dir.list().await.expect("list") {
                    segments.push(fs.read_raw(&format!("journal/{name}")).expect("read"));
                }
                segments
            })
        });
        if segments.is_empty() || segments.len() > 3 {
            continue;
        }
        let mut input = vec![(segments.len() - 1) as u8];
        for (i, segment) in segments.iter().enumerate() {
            if i + 1 < segments.len() {
                input.extend_from_slice(&(segment.len() as u16).to_le_bytes());
            }
            input.extend_from_slice(segment);
        }
        out.push(input);
    }
    out
}
