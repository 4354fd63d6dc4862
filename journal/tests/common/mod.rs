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
        slot_count: 256,
        segment_bytes: 4096,
        max_batch_bytes: 2048,
        max_inflight_bytes: 16 << 10,
        max_payload_bytes: 1024,
        preallocate: false,
        sync_on_append: true,
        write_through: true,
        direct_io: false,
        scan_window_bytes: keel_journal::SCAN_WINDOW_BYTES,
        write_back_bytes: 64 << 10,
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

/// A fresh MemFs holding exactly `files` (durably).
pub async fn clone_fs(seed: u64, files: &[(String, Vec<u8>)]) -> MemFs {
    use keel_storage::Directory;
    let fs = MemFs::new(seed);
    for sub in ["journal", "quarantine"] {
        if files.iter().any(|(p, _)| p.starts_with(&format!("{sub}/"))) {
            fs.root().open_dir(sub, true).await.expect("mkdir");
        }
    }
    fs.root().sync().await.expect("sync root");
    for (path, bytes) in files {
        fs.write_raw(path, 0, bytes).expect("write_raw");
    }
    fs
}

/// Writes ops `1..=n`, each acknowledged before the next (so entry k's durable watermark covers
/// every entry before it). Returns the journal's files.
pub async fn build_log(fs: &MemFs, config: &JournalConfig, n: u64) -> Vec<(String, Vec<u8>)> {
    let (j, _) = open(fs, config).await;
    for op in 1..=n {
        j.append(op, &payload(op, 0)).await.expect("append");
    }
    drop(j);
    snapshot_files(fs).await
}

/// Raw entries (file, offset, len, op) of the log, from the dump helper.
pub async fn entry_spans(fs: &MemFs, config: &JournalConfig) -> Vec<(String, u64, u64, u64)> {
    let raw = MetadataJournal::raw_entries(&fs.root(), config.clone(), 0, u64::MAX)
        .await
        .expect("raw entries");
    raw.iter()
        .map(|e| {
            let len = keel_journal::format::entry_len_bytes(e.payload_len_bytes as usize) as u64;
            (format!("journal/{}", e.file), e.offset_bytes, len, e.op)
        })
        .collect()
}
