//! The write path as callers see it: the writer task owns the I/O (dropping an append changes
//! nothing for anyone else), batches are all-or-nothing at acceptance, and buffered appends are
//! readable before they are written and durable after `flush`.

mod common;

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Waker};

use common::{open, payload, run, small_config, Journal};
use keel_journal::{JournalConfig, JournalError};
use keel_storage::MemFs;

/// Polls `future` once and drops it: what a `select!` that lost to a timeout does.
fn poll_once_then_drop<F: Future>(future: F) -> bool {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    future.as_mut().poll(&mut cx).is_ready()
}

/// The `select!` case: an append whose future is dropped after it was accepted (waiting for
/// its group's fsync) poisons nothing; the next append succeeds, and the dropped entry is
/// written all the same (the writer, not the dropped future, held the write).
#[test]
fn a_dropped_append_never_poisons_the_journal() {
    run(async {
        let fs = MemFs::new(7);
        let config = small_config();
        let (j, _) = open(&fs, &config).await;
        j.append(1, b"before").await.unwrap();
        let ready = poll_once_then_drop(j.append(2, b"dropped while waiting"));
        assert!(!ready, "a durable append cannot resolve without its fsync");
        j.append(3, b"after")
            .await
            .expect("the journal is not poisoned");
        assert_eq!(
            &j.entry(2).await.unwrap().unwrap().payload[..],
            b"dropped while waiting"
        );
        j.close().await.unwrap();
        fs.crash();
        let (j, _) = open(&fs, &config).await;
        for (op, bytes) in [
            (1, &b"before"[..]),
            (2, b"dropped while waiting"),
            (3, b"after"),
        ] {
            assert_eq!(&j.entry(op).await.unwrap().unwrap().payload[..], bytes);
        }
    });
}

/// Dropping an append before it was accepted (waiting for space under the in-flight bound)
/// accepts nothing and poisons nothing.
#[test]
fn an_append_dropped_while_waiting_for_space_is_never_written() {
    let config = JournalConfig {
        max_inflight_bytes: 4096,
        ..small_config()
    };
    run(async {
        let fs = MemFs::new(8);
        let (j, _) = open(&fs, &config).await;
        // The first append fills the bound and waits for its fsync; the second cannot be accepted.
        let mut first = Box::pin(j.append(1, &[1u8; 1000]));
        let mut cx = Context::from_waker(Waker::noop());
        assert!(first.as_mut().poll(&mut cx).is_pending());
        let big = vec![2u8; 1000];
        for _ in 0..3 {
            assert!(!poll_once_then_drop(j.append(2, &[9u8; 1000])));
        }
        let ready = poll_once_then_drop(j.append(4, &big));
        assert!(!ready);
        first.await.unwrap();
        j.append(3, b"after").await.unwrap();
        assert!(j.entry(1).await.unwrap().is_some());
        assert!(j.entry(3).await.unwrap().is_some());
        assert!(
            j.entry(4).await.unwrap().is_none(),
            "an append dropped before it was accepted must not be written"
        );
    });
}

/// A batch is checked whole before any entry is accepted: one op past the ring refuses all.
#[test]
fn a_refused_batch_accepts_no_entry() {
    run(async {
        let fs = MemFs::new(9);
        let config = small_config();
        let (j, _) = open(&fs, &config).await;
        let too_far = config.slot_count + 1;
        let batch = [
            (1, payload(1, 0)),
            (2, payload(2, 0)),
            (too_far, payload(too_far, 0)),
        ];
        let error = j.append_batch(&batch).await.unwrap_err();
        assert!(matches!(error, JournalError::Full { op, .. } if op == too_far));
        assert_eq!(j.last_op(), None, "nothing of a refused batch is accepted");
        j.append_batch(&batch[..2]).await.unwrap();
        assert_eq!(j.last_op(), Some(2));
        fs.crash();
        let (j, _) = open(&fs, &config).await;
        for (op, bytes) in &batch[..2] {
            assert_eq!(
                &j.entry(*op).await.unwrap().unwrap().payload[..],
                &bytes[..]
            );
        }
    });
}

/// A durable batch resolves once every entry is durable: all survive a power cut right after.
#[test]
fn a_batch_is_durable_when_it_resolves() {
    run(async {
        let fs = MemFs::new(10);
        let config = small_config();
        let (j, _) = open(&fs, &config).await;
        let batch: Vec<(u64, Vec<u8>)> = (1..=100).map(|op| (op, payload(op, 1))).collect();
        j.append_batch(&batch).await.unwrap();
        let fsyncs = j.stats().fsyncs;
        fs.crash();
        let (j, _) = open(&fs, &config).await;
        for (op, bytes) in &batch {
            assert_eq!(
                &j.entry(*op).await.unwrap().unwrap().payload[..],
                &bytes[..]
            );
        }
        // 100 small entries over 4 KiB segments: one fsync per rotation plus the group's own,
        // never one per entry.
        assert!(fsyncs < 50, "{fsyncs} fsyncs for one batch of 100");
    });
}

/// Buffered appends resolve once accepted, are readable at once, are written in runs of a
/// batch's worth (not one write per append), and are durable after `flush`.
#[test]
fn buffered_appends_are_readable_at_once_and_durable_after_flush() {
    let config = JournalConfig {
        sync_on_append: false,
        segment_bytes: 1 << 20,
        max_batch_bytes: 16 << 10,
        max_inflight_bytes: 64 << 10,
        ..small_config()
    };
    run(async {
        let fs = MemFs::new(11);
        let (j, _) = open(&fs, &config).await;
        for op in 1..=200 {
            j.append(op, &payload(op, 2)).await.unwrap();
            let entry = j
                .entry(op)
                .await
                .unwrap()
                .expect("readable before it is written");
            assert_eq!(&entry.payload[..], &payload(op, 2)[..]);
        }
        let before_flush = j.stats();
        assert_eq!(before_flush.fsyncs, 0, "buffered appends never fsync");
        j.flush().await.unwrap();
        let stats = j.stats();
        assert_eq!(stats.appends, 200);
        assert!(
            stats.batches <= 3,
            "{} groups for 200 appends of under 16 KiB in all",
            stats.batches
        );
        fs.crash();
        let (j, _) = open(&fs, &config).await;
        for op in 1..=200 {
            assert_eq!(
                &j.entry(op).await.unwrap().unwrap().payload[..],
                &payload(op, 2)[..]
            );
        }
    });
}

/// Without a flush, buffered appends are as volatile as a process's buffer: a process crash may
/// lose them, but never what a flush covered, and the journal reopens cleanly.
#[test]
fn unflushed_buffered_appends_may_be_lost_but_flushed_ones_never() {
    let config = JournalConfig {
        sync_on_append: false,
        ..small_config()
    };
    run(async {
        let fs = MemFs::new(12);
        let (j, _) = open(&fs, &config).await;
        for op in 1..=20 {
            j.append(op, &payload(op, 3)).await.unwrap();
        }
        j.flush().await.unwrap();
        for op in 21..=30 {
            j.append(op, &payload(op, 3)).await.unwrap();
        }
        drop(j);
        fs.process_crash();
        let (j, report) = open(&fs, &config).await;
        assert!(report.repairs.is_empty(), "{report:?}");
        for op in 1..=20 {
            assert_eq!(
                &j.entry(op).await.unwrap().unwrap().payload[..],
                &payload(op, 3)[..]
            );
        }
    });
}

/// An unwritten buffered entry has its chain position already (a checkpoint records it in the
/// snapshot it takes before any flush), and it is the position the entry has on disk after.
#[test]
fn a_buffered_entry_has_its_position_before_it_is_written() {
    let config = JournalConfig {
        sync_on_append: false,
        ..small_config()
    };
    run(async {
        let fs = MemFs::new(13);
        let (j, _) = open(&fs, &config).await;
        for op in 1..=5 {
            j.append(op, &payload(op, 4)).await.unwrap();
        }
        let before = j.entry_position(5).await.unwrap().expect("live");
        assert_eq!(j.stats().fsyncs, 0, "nothing was written yet");
        j.close().await.unwrap();
        let (j, _) = open(&fs, &config).await;
        assert_eq!(j.entry_position(5).await.unwrap(), Some(before));
    });
}

/// A fresh journal zero-fills its first segment in small steps that double as it fills (not 8 MiB
/// before the first append): the zeroed space stays within about twice what was written. The
/// later steps run in the background, and every entry reads back after a reopen.
#[test]
fn preallocation_grows_with_what_is_written() {
    use keel_storage::{Directory, OpenMode, Storage};
    let config = JournalConfig {
        segment_bytes: 64 << 20,
        slot_count: 4096,
        preallocate: true,
        ..small_config()
    };
    run(async {
        let fs = MemFs::new(5);
        let (j, _) = open(&fs, &config).await;
        j.append(1, &payload(1, 100)).await.unwrap();
        let segment_len = || async {
            let dir = fs.root().open_dir("journal", false).await.unwrap();
            let names = dir.list().await.unwrap();
            let name = names.iter().find(|n| n.ends_with(".wal")).unwrap().clone();
            dir.open_file(&name, OpenMode::ReadOnly)
                .await
                .unwrap()
                .len()
        };
        let first = segment_len().await;
        assert!(first <= 512 << 10, "the first step is small: {first} bytes");
        let mut written = 0u64;
        for op in 2..=3000 {
            let p = vec![op as u8; 1000];
            written += p.len() as u64;
            j.append(op, &p).await.unwrap();
        }
        let len = segment_len().await;
        assert!(
            len >= written,
            "the writes lie in zeroed space: {len} < {written}"
        );
        assert!(
            len <= 2 * written + (512 << 10),
            "zeroed {len} bytes for {written} written"
        );
        // The steps after the first were written beside the groups, never over them.
        assert!(j.stats().zero_fills_in_background > 0, "{:?}", j.stats());
        j.close().await.unwrap();
        let (j, _) = open(&fs, &config).await;
        for op in 2..=3000 {
            assert_eq!(
                &j.entry(op).await.unwrap().unwrap().payload[..],
                &vec![op as u8; 1000][..]
            );
        }
    });
}

/// Steps grow with the groups that ask for them, not only with what the segment holds: a fresh
/// segment written 64 x 4 KiB at a time (one run of about 260 KiB a group) waits for a zero-fill
/// only every few groups, where steps of half the segment alone had nearly every early group
/// wait; the zeroed space stays within a few steps of what was written, and it all reads back.
#[test]
fn preallocation_steps_grow_with_the_groups() {
    use keel_storage::{Directory, OpenMode, Storage};
    let config = group_config(64 << 20, 4096);
    let groups = 40u64;
    let group_ops = 64u64;
    let body = |op: u64| vec![op as u8; 4096];
    run(async {
        let fs = MemFs::new(11);
        let (j, _) = open(&fs, &config).await;
        write_groups(&j, groups, group_ops, body).await;
        let stats = j.stats();
        assert_eq!(stats.batches, groups, "one group per batch: {stats:?}");
        // Past the first step, each is at least 8 runs: 40 groups need at most 40 / 8 of them,
        // plus the first and the one that starts at the end. Steps of half the segment alone
        // grew 1.5x a step from 256 KiB: 10 steps here (7 in the background, 3 inline).
        let steps = stats.zero_fills_in_background + stats.zero_fills_inline;
        assert!(
            steps <= groups / 8 + 2,
            "{steps} zero-fill steps for {groups} groups: {stats:?}"
        );
        let written = stats.bytes_appended;
        let dir = fs.root().open_dir("journal", false).await.unwrap();
        let name = dir
            .list()
            .await
            .unwrap()
            .into_iter()
            .find(|n| n.ends_with(".wal"))
            .unwrap();
        let len = dir
            .open_file(&name, OpenMode::ReadOnly)
            .await
            .unwrap()
            .len();
        let run_bytes = written / groups;
        assert!(
            len >= written,
            "the writes lie in zeroed space: {len} < {written}"
        );
        assert!(
            len <= written + 2 * 8 * run_bytes + (512 << 10),
            "zeroed {len} bytes for {written} written in runs of {run_bytes}"
        );
        j.close().await.unwrap();
        let (j, _) = open(&fs, &config).await;
        assert_reads_back(&j, 1..=groups * group_ops, body).await;
    });
}

/// A group that reaches past the zeroed space with no fill under way extends the file instead
/// of waiting for an inline fill (a fresh segment's first step is 256 KiB; one 64 x 4 KiB group
/// is about 266 KiB), the next step follows it in the background, and every acknowledged entry
/// survives a power cut right after the last group.
#[test]
fn a_group_past_the_zeroes_extends_and_the_step_follows() {
    assert_extends_then_fills_beside(group_config(64 << 20, 4096), 13);
}

/// Behind `O_DIRECT` descriptors too: the group's aligned write ends on a block boundary, so the
/// block-aligned step after it runs beside the groups as well.
#[test]
fn a_direct_group_past_the_zeroes_extends_and_the_step_follows() {
    let config = JournalConfig {
        direct_io: true,
        ..group_config(64 << 20, 4096)
    };
    assert_extends_then_fills_beside(config, 17);
}

/// Twelve 64 x 4 KiB groups into a fresh journal on `MemFs::new(seed)`: no group waits for an
/// inline fill, one extends, a step follows in the background, the writes were aligned direct
/// writes when `config.direct_io`, and every entry survives a power cut after the last group.
fn assert_extends_then_fills_beside(config: JournalConfig, seed: u64) {
    let (groups, group_ops) = (12u64, 64u64);
    let body = |op: u64| vec![op as u8; 4096];
    run(async {
        let fs = MemFs::new(seed);
        let (j, _) = open(&fs, &config).await;
        write_groups(&j, groups, group_ops, body).await;
        let stats = j.stats();
        assert_eq!(
            stats.zero_fills_inline, 0,
            "no group waited for zeroes: {stats:?}"
        );
        assert!(
            stats.runs_extending >= 1,
            "the first group extends: {stats:?}"
        );
        assert!(
            stats.zero_fills_in_background >= 1,
            "a step followed the extending group: {stats:?}"
        );
        assert_eq!(
            fs.fault_counts().direct_writes > 0,
            config.direct_io,
            "aligned direct writes exactly when configured"
        );
        fs.crash();
        drop(j);
        let (j, _) = open(&fs, &config).await;
        assert_reads_back(&j, 1..=groups * group_ops, body).await;
    });
}

/// A buffered journal starts the kernel's write-back of each `write_back_bytes` it writes (a
/// hint, off the writer), and not at all when it is 0; what a flush made durable survives a
/// power cut either way.
#[test]
fn buffered_segments_start_write_back_every_write_back_bytes() {
    let hints_for = |write_back_bytes: u64| {
        let config = JournalConfig {
            sync_on_append: false,
            segment_bytes: 4 << 20,
            max_batch_bytes: 16 << 10,
            max_inflight_bytes: 64 << 10,
            max_payload_bytes: 4096,
            slot_count: 1024,
            write_back_bytes,
            ..small_config()
        };
        run(async {
            let fs = MemFs::new(14);
            let (j, _) = open(&fs, &config).await;
            // 400 × 2 KiB (plus headers): about 825 KiB, in one segment.
            let big = |op: u64| vec![op as u8; 2048];
            for op in 1..=400 {
                j.append(op, &big(op)).await.unwrap();
            }
            j.flush().await.unwrap();
            let hints = fs.fault_counts().write_back_hints;
            fs.crash();
            let (j, _) = open(&fs, &config).await;
            for op in 1..=400 {
                assert_eq!(
                    &j.entry(op).await.unwrap().unwrap().payload[..],
                    &big(op)[..]
                );
            }
            hints
        })
    };
    assert_eq!(hints_for(0), 0, "write_back_bytes = 0 starts none");
    let hints = hints_for(64 << 10);
    // At most one per 64 KiB written, fewer while one is still being queued.
    assert!(
        (2..=13).contains(&hints),
        "{hints} write-backs for ~825 KiB"
    );
}

/// Rotations take the prepared spare (`next.spare`): a durable journal writing several segments'
/// worth adopts spares, so its later segments are zeroed to their end before their first group;
/// the spare never holds an entry, and after a power cut every acknowledged op reads back.
#[test]
fn rotations_adopt_the_prepared_spare() {
    use keel_storage::{Directory, OpenMode, Storage};
    let config = group_config(4 << 20, 8192);
    // Runs of about 32 KiB: small enough to be written into zeroes.
    let groups = 480u64;
    let group_ops = 8u64;
    let body = |op: u64| vec![op as u8; 4000];
    run(async {
        let fs = MemFs::new(17);
        let (j, _) = open(&fs, &config).await;
        for g in 0..groups {
            write_groups_from(&j, g * group_ops + 1, 1, group_ops, body).await;
            // A pause between groups, as a device gives one: the spare's preparation (MemFs
            // yields every 64 bytes of zeroes) then keeps up with groups written back to back.
            compio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        let stats = j.stats();
        assert!(stats.spares_adopted >= 2, "{stats:?}");
        // Once the first segment holds 1 MiB of zeroes a spare is prepared, and no segment grows
        // in place after that: the runs extend until the spare is ready.
        assert_eq!(stats.zero_fills_inline, 0, "{stats:?}");
        assert!(stats.zero_fills_in_background <= 4, "{stats:?}");
        let dir = fs.root().open_dir("journal", false).await.unwrap();
        let names = dir.list().await.unwrap();
        let segments: Vec<&String> = names.iter().filter(|n| n.ends_with(".wal")).collect();
        assert!(segments.len() >= 3, "{names:?}");
        // An adopted segment was zeroed to its full length before its first entry.
        let mut lens = Vec::new();
        for name in &segments {
            lens.push(dir.open_file(name, OpenMode::ReadOnly).await.unwrap().len());
        }
        // Each adopted spare was zeroed to the segment's full length before its first entry.
        let full = lens[1..]
            .iter()
            .filter(|&&len| len == config.segment_bytes)
            .count();
        assert!(full as u64 >= stats.spares_adopted, "{lens:?} {stats:?}");
        assert!(lens.iter().all(|&len| len <= config.segment_bytes));
        if names.iter().any(|n| n == "next.spare") {
            let spare = dir
                .open_file("next.spare", OpenMode::ReadOnly)
                .await
                .unwrap();
            let buf = spare.read_exact_at(0, spare.len() as usize).await.unwrap();
            assert!(buf.iter().all(|&b| b == 0), "the spare holds only zeroes");
        }
        drop(j);
        fs.crash();
        let (j, _) = open(&fs, &config).await;
        assert_reads_back(&j, 1..=groups * group_ops, body).await;
    });
}

/// Compaction recycles dead segments as the next ones (format version 2): later segments are
/// made of older files, their groups overwrite the older life's bytes with a terminator after
/// each, and after a power cut the open repairs nothing and every op above the snapshot reads
/// back; the older life behind each terminator is neither an entry nor damage.
#[test]
fn compaction_recycles_dead_segments_as_the_next_ones() {
    use keel_journal::format::{SegmentHeader, FORMAT_VERSION_RECYCLED, TERMINATOR_BYTES};
    use keel_storage::{Directory, OpenMode, Storage};
    let config = group_config(1 << 20, 8192);
    let (groups, group_ops) = (400u64, 8u64);
    let body = |op: u64| vec![op as u8; 4000];
    run(async {
        let fs = MemFs::new(23);
        let (j, _) = open(&fs, &config).await;
        let mut snapshot_op = 0;
        for g in 0..groups {
            write_groups_from(&j, g * group_ops + 1, 1, group_ops, body).await;
            compio::time::sleep(std::time::Duration::from_millis(1)).await;
            if g % 16 == 15 {
                // A replica's checkpoint: everything but the last group is in a snapshot.
                snapshot_op = (g + 1) * group_ops - group_ops;
                j.set_snapshot_op(snapshot_op).await.unwrap();
                j.compact().await.unwrap();
            }
        }
        let stats = j.stats();
        assert!(stats.spares_recycled >= 3, "{stats:?}");
        let dir = fs.root().open_dir("journal", false).await.unwrap();
        let mut older_lives = 0;
        for name in dir.list().await.unwrap() {
            if !name.ends_with(".wal") {
                continue;
            }
            let file = dir.open_file(&name, OpenMode::ReadOnly).await.unwrap();
            let bytes = file.read_exact_at(0, file.len() as usize).await.unwrap();
            let header = SegmentHeader::decode(&bytes).unwrap();
            if header.version != FORMAT_VERSION_RECYCLED {
                continue;
            }
            // The last group's terminator, then the older life (not zeroes).
            let end = last_entry_end(&bytes, header.binding());
            let after = &bytes[end..(end + TERMINATOR_BYTES).min(bytes.len())];
            assert!(
                after.iter().all(|&b| b == 0),
                "{name}: no terminator at {end}"
            );
            if bytes[end + TERMINATOR_BYTES.min(bytes.len() - end)..]
                .iter()
                .any(|&b| b != 0)
            {
                older_lives += 1;
            }
        }
        assert!(older_lives >= 1, "no recycled segment holds an older life");
        drop(j);
        fs.crash();
        let (j, report) = open(&fs, &config).await;
        assert!(report.problems.is_empty(), "{report:?}");
        assert!(report.repairs.is_empty(), "{report:?}");
        assert_reads_back(&j, snapshot_op + 1..=groups * group_ops, body).await;
        drop(j);
        // The tools agree: verify's whole-file scan finds nothing, and the forensic walk (dump,
        // inspect) stops at each recycled segment's terminator, as at a clean end.
        let verified = keel_journal::MetadataJournal::verify(&fs.root(), config.clone())
            .await
            .unwrap();
        assert!(verified.problems.is_empty(), "{verified:?}");
        let dir = fs.root().open_dir("journal", false).await.unwrap();
        let walked =
            keel_journal::forensic::walk_journal(&dir, config.segment_bytes, &mut |_, _| {})
                .await
                .unwrap();
        assert!(
            walked.iter().all(|f| f.segment.stop.is_none()),
            "{walked:?}"
        );
        let walked_ops: u64 = walked.iter().map(|f| f.segment.entries).sum();
        assert!(walked_ops >= groups * group_ops - snapshot_op, "{walked:?}");
    });
}

/// The end of the last entry of a segment's bytes (walked under `binding` from its header).
fn last_entry_end(bytes: &[u8], binding: keel_journal::format::Binding) -> usize {
    use keel_journal::format::{EntryHeader, SEGMENT_HEADER_BYTES};
    let mut offset = SEGMENT_HEADER_BYTES;
    while let Ok((header, _)) = EntryHeader::decode(&bytes[offset..], binding) {
        offset += header.entry_len_bytes();
    }
    offset
}

/// A preallocating journal sized for groups of 64 x 4 KiB.
fn group_config(segment_bytes: u64, slot_count: u64) -> JournalConfig {
    JournalConfig {
        segment_bytes,
        slot_count,
        max_batch_bytes: 1 << 20,
        max_inflight_bytes: 4 << 20,
        max_payload_bytes: 4096,
        preallocate: true,
        ..small_config()
    }
}

/// Every op in `ops` reads back as `body(op)`.
async fn assert_reads_back(
    j: &Journal,
    ops: std::ops::RangeInclusive<u64>,
    body: impl Fn(u64) -> Vec<u8>,
) {
    for op in ops {
        let entry = j.entry(op).await.unwrap();
        assert_eq!(
            entry
                .unwrap_or_else(|| panic!("acknowledged op {op} lost"))
                .payload[..],
            body(op)[..],
            "acknowledged op {op} lost"
        );
    }
}

/// `groups` batches of `group_ops` entries each, ops from 1, bodies from `body`.
async fn write_groups(j: &Journal, groups: u64, group_ops: u64, body: impl Fn(u64) -> Vec<u8>) {
    write_groups_from(j, 1, groups, group_ops, body).await;
}

/// Like [`write_groups`], ops from `first_op`.
async fn write_groups_from(
    j: &Journal,
    first_op: u64,
    groups: u64,
    group_ops: u64,
    body: impl Fn(u64) -> Vec<u8>,
) {
    for g in 0..groups {
        let batch: Vec<(u64, Vec<u8>)> = (0..group_ops)
            .map(|i| first_op + g * group_ops + i)
            .map(|op| (op, body(op)))
            .collect();
        j.append_batch(&batch).await.unwrap();
    }
}
