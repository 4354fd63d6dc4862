//! The write path's workloads: durable appends one at a time and in groups of 64 concurrent
//! appenders (128 B and 4 KiB), each with the contenders kept open (steady state) and fresh (a
//! new directory per run, the open, segment creation and growth inside the timed run, as a
//! user's run pays for them), and buffered appends without fsync. Every table ends with the
//! issue's target as a per-round ratio with its range.

use std::path::Path;

use keel_journal::{MetadataJournal, RecoveryMode};
use keel_storage::{DirAccess, FileOptions, FsDirectory};

use super::*;

/// One contender's run: returns its rate.
type Run<'a> = Box<dyn FnMut() -> f64 + 'a>;

/// How a keel contender writes durably and grows its segments.
#[derive(Clone, Copy)]
struct Variant {
    name: &'static str,
    write_through: bool,
    /// `JournalConfig::direct_io`: aligned group writes through an `O_DIRECT` descriptor.
    direct_io: bool,
    preallocate: Prealloc,
}

#[derive(Clone, Copy, PartialEq)]
enum Prealloc {
    /// Zero-written space ahead of the cursor (the default).
    ZeroFill,
    /// `fallocate` (unwritten extents: the first write to each still changes metadata).
    Fallocate,
    /// None: every durable write extends the file.
    Off,
}

const DIRECT: Variant = Variant {
    name: "keel (O_DSYNC + O_DIRECT aligned writes, zero-filled: the default)",
    write_through: true,
    direct_io: true,
    preallocate: Prealloc::ZeroFill,
};
const WRITE_THROUGH: Variant = Variant {
    name: "keel (O_DSYNC write-through through the page cache, zero-filled)",
    write_through: true,
    direct_io: false,
    preallocate: Prealloc::ZeroFill,
};
const FDATASYNC: Variant = Variant {
    name: "keel (write + fdatasync, zero-filled)",
    write_through: false,
    direct_io: false,
    preallocate: Prealloc::ZeroFill,
};
const FALLOCATE: Variant = Variant {
    name: "keel (direct write-through, fallocate)",
    write_through: true,
    direct_io: true,
    preallocate: Prealloc::Fallocate,
};
const NO_PREALLOC: Variant = Variant {
    name: "keel (direct write-through, no preallocation)",
    write_through: true,
    direct_io: true,
    preallocate: Prealloc::Off,
};

async fn open_variant(root: &Path, slot_count: u64, variant: Variant) -> Journal {
    let options = FileOptions {
        use_fallocate: variant.preallocate == Prealloc::Fallocate,
    };
    let dir = FsDirectory::open_with(root, DirAccess::Create)
        .await
        .expect("open bench directory")
        .with_file_options(options);
    let config = JournalConfig {
        write_through: variant.write_through,
        direct_io: variant.direct_io,
        preallocate: variant.preallocate != Prealloc::Off,
        ..journal_config(slot_count, true)
    };
    let (journal, _) = MetadataJournal::open(&dir, config, RecoveryMode::TolerateTornTail)
        .await
        .expect("open journal");
    journal
}

/// One durable workload's shape.
#[derive(Clone, Copy)]
struct Shape {
    payload_bytes: usize,
    /// 1: one append at a time; more: that many concurrent appenders per batch.
    appenders: u64,
    /// Batches (or single appends) per turn.
    batches: u64,
    fresh: bool,
    /// Kept open and compacted as a replica's log is: the snapshot watermark moves to the last
    /// op and `compact()` runs (untimed) about every half segment, so dead segments are
    /// recycled as the next segments (docs/performance.md, "Recycled segments").
    compacted: bool,
}

impl Shape {
    fn entries(self) -> u64 {
        self.batches * self.appenders
    }

    fn rate(self, elapsed: Duration) -> f64 {
        if self.appenders == 1 {
            per_sec(self.batches as f64, elapsed)
        } else {
            mb_per_sec((self.entries() * self.payload_bytes as u64) as f64, elapsed)
        }
    }

    fn unit(self) -> &'static str {
        if self.appenders == 1 {
            "entries/s"
        } else {
            "MB/s"
        }
    }
}

/// keel's turn: `batches` of `appenders` on `journal` from `*next_op`; returns the time taken.
async fn keel_turn(
    journal: &Rc<Journal>,
    next_op: &mut u64,
    shape: Shape,
    payload: &Rc<[u8]>,
) -> Duration {
    let slot_count = journal.slot_count();
    if shape.appenders == 1 {
        timed_sequential_appends(journal, next_op, shape.batches, payload, slot_count).await
    } else {
        timed_group_batches(
            journal,
            next_op,
            shape.batches,
            shape.appenders,
            payload,
            slot_count,
        )
        .await
    }
}

/// A keel contender: kept open across turns, or a fresh directory and journal per turn (the
/// open inside the timed run).
///
/// Each contender has a runtime of its own: a journal's background work (preparing its next
/// segment, zero-filling ahead) then runs only in its own turns, as a user's journal pays for it,
/// never inside another contender's timed turn (one shared runtime let every journal's zero-fill
/// run, and steal the disk, while another variant was being timed).
fn keel_contender(
    shape: Shape,
    variant: Variant,
    payload: Rc<[u8]>,
    rounds: usize,
) -> Run<'static> {
    let rt = compio::runtime::Runtime::new().expect("a runtime per contender");
    let slot_count = if shape.compacted {
        // `timed_group_batches` compacts between stretches of half the ring.
        let entry_bytes = keel_journal::format::entry_len_bytes(shape.payload_bytes) as u64;
        (base_journal_config().segment_bytes / entry_bytes).next_power_of_two()
    } else {
        (2 * shape.entries() * (rounds as u64 + 1) + 2)
            .next_power_of_two()
            .max(1024)
    };
    if shape.fresh {
        return Box::new(move || {
            let dir = bench_tempdir();
            rt.block_on(async {
                let started = Instant::now();
                let journal = Rc::new(open_variant(dir.path(), slot_count, variant).await);
                let mut next_op = 1;
                keel_turn(&journal, &mut next_op, shape, &payload).await;
                let elapsed = started.elapsed();
                let journal = Rc::try_unwrap(journal).unwrap_or_else(|_| panic!("joined"));
                journal.close().await.expect("close");
                shape.rate(elapsed)
            })
        });
    }
    let dir = bench_tempdir();
    let journal = Rc::new(rt.block_on(open_variant(dir.path(), slot_count, variant)));
    let mut next_op = 1;
    rt.block_on(prime_journal(&journal, &mut next_op, &payload));
    if shape.compacted {
        // A replica that has been running: two and a half segments written and compacted
        // (untimed), so the timed turns write into recycled segments from the start.
        let entry_bytes = keel_journal::format::entry_len_bytes(shape.payload_bytes) as u64;
        let segment_entries = base_journal_config().segment_bytes / entry_bytes;
        let warm_batches = (segment_entries * 5 / 2).div_ceil(shape.appenders);
        let mut warm = shape;
        warm.batches = warm_batches;
        rt.block_on(keel_turn(&journal, &mut next_op, warm, &payload));
    }
    // Fields drop in order: the journal before its runtime, the directory last.
    let mut kept = (journal, next_op, rt, dir);
    Box::new(move || {
        let (journal, next_op, rt, _dir) = &mut kept;
        let elapsed = rt.block_on(keel_turn(journal, next_op, shape, &payload));
        shape.rate(elapsed)
    })
}

/// A baseline contender: its file kept open across turns, or made by `create` (timed) in a fresh
/// directory for each turn; a turn runs `batch` once per batch.
fn baseline<T: 'static>(
    shape: Shape,
    create: impl Fn(&Path) -> T + 'static,
    mut batch: impl FnMut(&mut T) + 'static,
) -> Run<'static> {
    let kept_dir = bench_tempdir();
    let mut kept = (!shape.fresh).then(|| create(kept_dir.path()));
    Box::new(move || {
        let fresh_dir = shape.fresh.then(bench_tempdir);
        let started = Instant::now();
        let mut fresh = fresh_dir.as_ref().map(|dir| create(dir.path()));
        let file = kept
            .as_mut()
            .or(fresh.as_mut())
            .expect("either kept or fresh");
        for _ in 0..shape.batches {
            batch(file);
        }
        let _keep = &kept_dir;
        shape.rate(started.elapsed())
    })
}

/// The plain loop (a file that grows, framed entries, one write + fdatasync per batch).
fn plain_contender(shape: Shape, payload: Rc<[u8]>) -> Run<'static> {
    let appenders = shape.appenders as usize;
    baseline(
        shape,
        |dir| PlainLog::create(&dir.join("plain.log")).expect("plain"),
        move |log| {
            log.append_group_sync(&payload, appenders)
                .expect("plain append")
        },
    )
}

/// The disk's own loop: overwrite zero-written space + fdatasync. Kept open: 64 MiB zero-filled
/// up front. Fresh: the file is created and zero-filled (as much as one keel preallocation step,
/// 8 MiB, or the run's bytes) in the run.
fn raw_contender(shape: Shape, payload: Rc<[u8]>) -> Run<'static> {
    let len_bytes = raw_len_bytes(shape, payload.len());
    let appenders = shape.appenders as usize;
    baseline(
        shape,
        move |dir| RawOverwrite::create(&dir.join("raw.dat"), len_bytes).expect("raw"),
        move |raw| {
            raw.write_group_sync(&payload, appenders)
                .expect("raw write")
        },
    )
}

/// The disk's own loop through compio (io_uring), no journal: the raw contender's zero-filled
/// file opened `O_DSYNC`, each batch's frames (framed in the turn, as the raw loop does) in one
/// write. The floor under keel's write-through path on this runtime: what is left between it and
/// the raw loop is io_uring's, not the journal's.
fn compio_contender(rt: &compio::runtime::Runtime, shape: Shape, payload: Rc<[u8]>) -> Run<'_> {
    use compio::io::AsyncWriteAtExt;
    let len_bytes = raw_len_bytes(shape, payload.len());
    let open = move |dir: &Path| {
        let path = dir.join("compio.dat");
        drop(RawOverwrite::create(&path, len_bytes).expect("zero-fill"));
        let mut options = compio::fs::OpenOptions::new();
        options.write(true).custom_flags(libc::O_DSYNC);
        rt.block_on(options.open(&path)).expect("open O_DSYNC")
    };
    let kept_dir = bench_tempdir();
    let kept = (!shape.fresh).then(|| open(kept_dir.path()));
    let mut offset_bytes = 0u64;
    Box::new(move || {
        let fresh_dir = shape.fresh.then(bench_tempdir);
        let started = Instant::now();
        let fresh = fresh_dir.as_ref().map(|dir| open(dir.path()));
        if fresh.is_some() {
            offset_bytes = 0;
        }
        let mut file = kept.clone().or(fresh).expect("either kept or fresh");
        rt.block_on(async {
            let mut buf = Vec::new();
            for _ in 0..shape.batches {
                buf.clear();
                for _ in 0..shape.appenders {
                    plain_frame(&payload, &mut buf);
                }
                if offset_bytes + buf.len() as u64 > len_bytes {
                    offset_bytes = 0;
                }
                let compio::BufResult(result, back) = file.write_all_at(buf, offset_bytes).await;
                result.expect("compio write");
                buf = back;
                offset_bytes += buf.len() as u64;
            }
        });
        let _keep = &kept_dir;
        shape.rate(started.elapsed())
    })
}

/// The raw contender's file: 64 MiB kept open; fresh, the run's bytes (at least 8 MiB).
fn raw_len_bytes(shape: Shape, payload_bytes: usize) -> u64 {
    let run_bytes = shape.entries() * (payload_bytes as u64 + 8);
    if shape.fresh {
        run_bytes.max(8 << 20).next_multiple_of(1 << 20)
    } else {
        64 << 20
    }
}

/// Runs one durable workload and prints its table and targets.
fn durable(rt: &compio::runtime::Runtime, sizes: Sizes, shape: Shape, targets: &[(&str, f64)]) {
    let rounds = sizes.rounds * 5;
    let payload: Rc<[u8]> = payload(shape.payload_bytes).into();
    let variants = [DIRECT, WRITE_THROUGH, FDATASYNC, FALLOCATE, NO_PREALLOC];
    let mut closures: Vec<(&str, Run<'_>)> = variants
        .iter()
        .map(|v| (v.name, keel_contender(shape, *v, payload.clone(), rounds)))
        .collect();
    closures.push((
        "plain append + fdatasync (file grows)",
        plain_contender(shape, payload.clone()),
    ));
    closures.push((
        "raw overwrite + fdatasync (zero-filled)",
        raw_contender(shape, payload.clone()),
    ));
    closures.push((
        "compio O_DSYNC overwrite, no journal (zero-filled)",
        compio_contender(rt, shape, payload.clone()),
    ));
    let mut contenders: Vec<(&str, &mut dyn FnMut() -> f64)> = closures
        .iter_mut()
        .map(|(name, f)| (*name, &mut **f as &mut dyn FnMut() -> f64))
        .collect();
    let series = interleave(rounds, shape.unit(), &mut contenders);
    let what = if shape.appenders == 1 {
        format!(
            "one durable {}-B append at a time, {} per turn",
            shape.payload_bytes, shape.batches
        )
    } else {
        format!(
            "{} concurrent appenders × {} B per batch, {} batches per turn",
            shape.appenders, shape.payload_bytes, shape.batches
        )
    };
    let how = if shape.fresh {
        "fresh directory per run (open, segment creation and growth timed)"
    } else if shape.compacted {
        "contenders kept open, keel compacted behind a snapshot every half segment (untimed)"
    } else {
        "contenders kept open"
    };
    print_table(&format!("{what}, {how}"), &series);
    for (against, target) in targets {
        print_target(&series, against, *target);
    }
}

pub(super) fn fsync128(rt: &compio::runtime::Runtime, sizes: Sizes) {
    let batches = sizes.fsync_entries;
    for fresh in [false, true] {
        let shape = Shape {
            payload_bytes: 128,
            appenders: 1,
            batches: if fresh { batches * 5 } else { batches },
            fresh,
            compacted: false,
        };
        durable(rt, sizes, shape, &[("raw overwrite", 1.0)]);
    }
}

pub(super) fn group64(rt: &compio::runtime::Runtime, sizes: Sizes) {
    for (payload_bytes, target, long_factor) in [(KIB4, 1.3, 30), (128, 1.6, 100)] {
        // Kept open for a few batches a turn, kept open for turns long enough to cross segment
        // rotations (4 KiB: a 64 MiB segment a turn; 128 B: two over the run), the same
        // compacted as a replica's log is (dead segments recycled), and fresh.
        for (factor, fresh, compacted) in [
            (1, false, false),
            (long_factor, false, false),
            (long_factor, false, true),
            (4, true, false),
        ] {
            let shape = Shape {
                payload_bytes,
                appenders: 64,
                batches: sizes.group_batches * factor,
                fresh,
                compacted,
            };
            durable(rt, sizes, shape, &[("plain append", target)]);
        }
    }
}

/// Buffered appends (no fsync) against the plain framed `BufWriter` loop, a fresh directory per
/// run for both (segment creation and growth inside keel's run).
pub(super) fn nosync(rt: &compio::runtime::Runtime, sizes: Sizes) {
    for (len, count, target) in [
        (128usize, sizes.nosync_entries, 0.5),
        (KIB4, sizes.nosync_entries / 20, 0.8),
    ] {
        let payload = payload(len);
        let counters = Counters::default();
        let mut keel = || keel_sequential(rt, len, count, &|_| {}, &counters);
        let no_write_back = |c: &mut keel_journal::JournalConfig| c.write_back_bytes = 0;
        let mut keel_no_write_back = || keel_sequential(rt, len, count, &no_write_back, &counters);
        let mut plain = || {
            let dir = bench_tempdir();
            let elapsed =
                plain_nosync(&dir.path().join("plain.log"), &payload, count).expect("plain");
            per_sec(count as f64, elapsed)
        };
        let series = interleave(
            sizes.rounds,
            "entries/s",
            &mut [
                ("keel (sync_on_append = false)", &mut keel),
                (
                    "keel without early write-back (write_back_bytes = 0)",
                    &mut keel_no_write_back,
                ),
                ("plain framed, 64 KiB BufWriter", &mut plain),
            ],
        );
        print_table(
            &format!("append without fsync, {len}-B entries, {count} entries per run, fresh directory per run"),
            &series,
        );
        print_target(&series, "plain framed", target);
        if len == 128 {
            let keel_median = median(&series[0].rates);
            println!(
                "target: keel ≥ 2.5 M entries/s: median {} → {}",
                fmt_rate(keel_median, "entries/s"),
                if keel_median >= 2.5e6 {
                    "met"
                } else {
                    "missed"
                }
            );
        }
        counters.print();
    }
}

/// Prints `keel / the contender whose name starts with against ≥ target` as met or missed, with
/// the per-round median and range (`series[0]` is keel's main contender).
pub(super) fn print_target(series: &[Series], against: &str, target: f64) {
    let Some(other) = series.iter().find(|s| s.name.starts_with(against)) else {
        return;
    };
    let ratios = per_round_ratios(&series[0], other);
    let (lo, hi) = range(&ratios);
    let m = median(&ratios);
    println!(
        "target: {} / {} ≥ {target}×: median {}× ({} – {}) → {}",
        series[0].name,
        other.name,
        fmt_ratio(m),
        fmt_ratio(lo),
        fmt_ratio(hi),
        if m >= target { "met" } else { "missed" }
    );
}
