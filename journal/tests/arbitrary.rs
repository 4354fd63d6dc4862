//! Arbitrary bytes as segments: open (every mode) and verify never panic; they recover or return
//! a typed error. (The `fuzz/` target runs the same for long.)

mod common;

use common::*;
use keel_journal::{MetadataJournal, RecoveryMode};
use proptest::prelude::*;

fn open_all_modes(files: Vec<(String, Vec<u8>)>) {
    run(async {
        for mode in [
            RecoveryMode::Absolute,
            RecoveryMode::PointInTime,
            RecoveryMode::TolerateTornTail,
        ] {
            let fs = clone_fs(1, &files).await;
            let _ = MetadataJournal::verify(&fs.root(), small_config()).await;
            if let Ok((j, _)) = MetadataJournal::open(&fs.root(), small_config(), mode).await {
                // Whatever it accepted must read back, and must accept a new op.
                let _ = read_all_checked(&j).await;
                let _ = j.append(j.snapshot_op().unwrap_or(0) + 1, b"new").await;
                drop(j);
                // A repair is idempotent: the next open repairs nothing.
                if let Ok((_, report)) =
                    MetadataJournal::open(&fs.root(), small_config(), mode).await
                {
                    assert!(
                        report.repairs.is_empty(),
                        "second open repaired again: {report:?}"
                    );
                }
            }
        }
    });
}

async fn read_all_checked(j: &Journal) -> Vec<u64> {
    let mut reader = j.reader(0);
    let mut ops = Vec::new();
    while let Ok(Some(e)) = reader.next().await {
        ops.push(e.op);
    }
    ops
}

/// A valid two-segment log to mutate.
fn valid_log() -> Vec<(String, Vec<u8>)> {
    run(async {
        let fs = keel_storage::MemFs::new(5);
        build_log(&fs, &small_config(), 60).await
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    #[test]
    fn random_bytes_as_a_segment(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        open_all_modes(vec![("journal/00000000000000000000.wal".into(), bytes)]);
    }

    #[test]
    fn arbitrary_bytes_through_the_fuzz_entry_point(data in proptest::collection::vec(any::<u8>(), 0..1500)) {
        keel_journal::fuzzing::open_arbitrary_segments(&data);
    }

    #[test]
    fn mutated_valid_log(edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6), cut in any::<prop::sample::Index>(), do_cut in any::<bool>()) {
        let mut files = valid_log();
        let last = files.iter().rposition(|(p, _)| p.ends_with(".wal")).unwrap();
        for (at, byte) in edits {
            let which = at.index(files.len());
            let data = &mut files[which].1;
            if !data.is_empty() {
                let i = at.index(data.len());
                data[i] = byte;
            }
        }
        if do_cut {
            let data = &mut files[last].1;
            let keep = cut.index(data.len() + 1);
            data.truncate(keep);
        }
        open_all_modes(files);
    }
}

/// The fuzz seeds are valid logs: opening them repairs nothing. (Also writes them to
/// `fuzz/corpus/open_segment/` when `KEEL_WRITE_FUZZ_SEEDS` is set.)
#[test]
fn fuzz_seeds_are_valid_logs() {
    let seeds = keel_journal::fuzzing::seed_inputs();
    assert!(seeds.len() >= 3);
    for (i, seed) in seeds.iter().enumerate() {
        keel_journal::fuzzing::open_arbitrary_segments(seed);
        if std::env::var("KEEL_WRITE_FUZZ_SEEDS").is_ok() {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../fuzz/corpus/open_segment");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(format!("seed-{i}")), seed).unwrap();
        }
    }
}
