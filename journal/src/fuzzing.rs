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
    let count = usize::from(selector % 3) + 1;
    let first_number = u64::from(selector / 3 % 4);
    let chunk = rest.len().div_ceil(count).max(1);
    let files: Vec<(String, Vec<u8>)> = rest
        .chunks(chunk)
        .enumerate()
        .map(|(i, bytes)| {
            (
                format!(
                    "journal/{}",
                    crate::format::segment_file_name(first_number + i as u64)
                ),
                bytes.to_vec(),
            )
        })
        .collect();
    let config = JournalConfig {
        slot_count: 64,
        segment_bytes: 4096,
        max_batch_bytes: 4096,
        max_inflight_bytes: 16 << 10,
        max_payload_bytes: 1024,
        preallocate: false,
        sync_on_append: true,
    };
    let runtime = compio::runtime::Runtime::new().expect("compio runtime");
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
            let Ok((journal, _)) = MetadataJournal::open(&fs.root(), config.clone(), mode).await
            else {
                continue;
            };
            let mut reader = journal.reader(0);
            while let Ok(Some(_)) = reader.next().await {}
            let _ = journal.append(journal.snapshot_op() + 1, b"fuzz").await;
            drop(journal);
            if let Ok((_, report)) = MetadataJournal::open(&fs.root(), config.clone(), mode).await {
                assert!(
                    report.repairs.is_empty(),
                    "a second open repaired again: {report:?}"
                );
            }
        }
    });
}
