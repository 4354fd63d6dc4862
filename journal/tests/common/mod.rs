//! Shared helpers for the journal's integration tests (MemFs-based).
#![allow(dead_code)]

use std::future::Future;

use keel_journal::{JournalConfig, MetadataJournal, RecoveryMode, ScanReport};
use keel_storage::{MemDirectory, MemFs};

pub type Journal = MetadataJournal<MemDirectory>;

/// Runs a future to completion on a fresh compio runtime.
pub fn run<F: Future>(future: F) -> F::Output {
    compio::runtime::Runtime::new()
        .expect("compio runtime")
        .block_on(future)
}

/// Small segments so rotation, compaction and scans across files happen in small tests.
pub fn small_config() -> JournalConfig {
    JournalConfig {
        slot_count: 64,
        segment_bytes: 4096,
        max_batch_bytes: 2048,
        max_inflight_bytes: 16 << 10,
        max_payload_bytes: 1024,
        preallocate: false,
        sync_on_append: true,
    }
}

pub async fn open(fs: &MemFs, config: &JournalConfig) -> (Journal, ScanReport) {
    MetadataJournal::open(&fs.root(), config.clone(), RecoveryMode::TolerateTornTail)
        .await
        .expect("open")
}

/// Deterministic payload for op `op` (version `v` for rewrites).
pub fn payload(op: u64, v: u64) -> Vec<u8> {
    let len = ((op * 7 + v * 13) % 90) as usize;
    (0..len)
        .map(|i| (op as u8) ^ (v as u8) ^ (i as u8))
        .collect()
}

/// Segment file paths (relative to the MemFs root), ascending.
pub async fn segment_paths(fs: &MemFs) -> Vec<String> {
    use keel_storage::Directory;
    let dir = fs
        .root()
        .open_dir("journal", false)
        .await
        .expect("journal dir");
    dir.list()
        .await
        .expect("list")
        .into_iter()
        .filter(|n| n.ends_with(".wal"))
        .map(|n| format!("journal/{n}"))
        .collect()
}

/// Every file's bytes under the root, for byte-identical checks.
pub async fn snapshot_files(fs: &MemFs) -> Vec<(String, Vec<u8>)> {
    use keel_storage::Directory;
    let mut out = Vec::new();
    for sub in ["journal", "quarantine"] {
        let Ok(dir) = fs.root().open_dir(sub, false).await else {
            continue;
        };
        for name in dir.list().await.expect("list") {
            let path = format!("{sub}/{name}");
            out.push((path.clone(), fs.read_raw(&path).expect("read")));
        }
    }
    out
}

/// All live entries via the reader.
pub async fn read_all(journal: &Journal) -> Vec<(u64, Vec<u8>)> {
    let mut reader = journal.reader(0);
    let mut out = Vec::new();
    while let Some(entry) = reader.next().await.expect("reader") {
        out.push((entry.op, entry.payload.to_vec()));
    }
    out
}
