//! keel against plain `std::fs` loops, in one process, interleaved.
//!
//! The disk here is shared and its fdatasync cost moves by 10× between minutes, so absolute
//! figures from separate runs cannot be compared. Every workload runs in rounds; within a round
//! each contender runs once, back to back (the order rotates every round so none always goes
//! first), and the ratio is taken per round, between neighbours in time. The table shows, per
//! contender, the median and range of its rate over the rounds, and the median and range of the
//! per-round ratio keel / contender.
//!
//! Reproduce: `CARGO_TARGET_DIR=/work/target-bench cargo bench --bench compare -- [--rounds N]
//! [--only fsync128,group64,nosync,recovery,recovery_cold,recovery_rss,checkpoint_latency,rss,shards]
//! [--quick]
//! [--rss-appends N]`
//!
//! Without `--bench` on the command line (that is, under `cargo test --benches`), it runs every
//! workload once at toy sizes: a smoke test, not a measurement.

mod common;
#[path = "compare/write.rs"]
mod write;

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use keel_engine::{Histogram, StateMachine};
use keel_journal::JournalConfig;

use common::*;

const KIB4: usize = 4096;

/// Sizes of one run; `quick` shrinks every workload for smoke tests.
#[derive(Clone, Copy)]
struct Sizes {
    rounds: usize,
    fsync_entries: u64,
    group_batches: u64,
    nosync_entries: u64,
    recovery_entries: u64,
    recovery_rss_bytes: u64,
    latency_appends: u64,
    latency_keys: u64,
    rss_appends: u64,
    shard_entries: u64,
}

impl Sizes {
    fn full(rounds: usize) -> Self {
        Self {
            rounds,
            fsync_entries: 200,
            group_batches: 10,
            nosync_entries: 1_000_000,
            recovery_entries: 100_000,
            recovery_rss_bytes: 1 << 30,
            latency_appends: 2000,
            latency_keys: 100_000,
            rss_appends: 10_000_000,
            shard_entries: 200_000,
        }
    }

    fn quick() -> Self {
        Self {
            rounds: 1,
            fsync_entries: 20,
            group_batches: 2,
            nosync_entries: 2000,
            recovery_entries: 500,
            recovery_rss_bytes: 4 << 20,
            latency_appends: 50,
            latency_keys: 500,
            rss_appends: 20_000,
            shard_entries: 2000,
        }
    }
}

/// One contender's per-round results: a rate (higher is better) per round.
struct Series {
    name: String,
    unit: &'static str,
    rates: Vec<f64>,
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

fn range(values: &[f64]) -> (f64, f64) {
    values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        })
}

fn fmt_rate(value: f64, unit: &str) -> String {
    match unit {
        "entries/s" if value >= 1e6 => format!("{:.2} M", value / 1e6),
        "entries/s" if value >= 1e3 => format!("{:.2} k", value / 1e3),
        "MB/s" if value >= 1000.0 => format!("{:.2} GB/s", value / 1000.0),
        _ => format!("{value:.1}"),
    }
}

/// Two significant digits at least, so a 0.006× ratio does not print as 0.00×.
fn fmt_ratio(ratio: f64) -> String {
    if ratio < 0.1 {
        format!("{ratio:.3}")
    } else {
        format!("{ratio:.2}")
    }
}

/// `keel`'s rate over `other`'s, round by round (neighbours in time).
fn per_round_ratios(keel: &Series, other: &Series) -> Vec<f64> {
    keel.rates
        .iter()
        .zip(&other.rates)
        .map(|(k, o)| k / o)
        .collect()
}

/// Prints one workload's table. `series[0]` is keel's main figure; ratios are per round against
/// it (keel / other, so > 1 means keel is faster).
fn print_table(title: &str, series: &[Series]) {
    let unit = series[0].unit;
    println!("\n### {title} ({unit}, {} rounds)\n", series[0].rates.len());
    println!("| contender | median | range | keel / this: median ratio | ratio range |");
    println!("|---|---|---|---|---|");
    let keel = &series[0];
    for s in series {
        let (lo, hi) = range(&s.rates);
        let ratios = per_round_ratios(keel, s);
        let (rlo, rhi) = range(&ratios);
        println!(
            "| {} | {} | {} – {} | {}× | {} – {} |",
            s.name,
            fmt_rate(median(&s.rates), s.unit),
            fmt_rate(lo, s.unit),
            fmt_rate(hi, s.unit),
            fmt_ratio(median(&ratios)),
            fmt_ratio(rlo),
            fmt_ratio(rhi)
        );
    }
}

/// Runs `contenders` for `rounds` rounds, rotating the order each round; each closure returns the
/// rate of one run.
fn interleave(
    rounds: usize,
    unit: &'static str,
    contenders: &mut [(&str, &mut dyn FnMut() -> f64)],
) -> Vec<Series> {
    let mut series: Vec<Series> = contenders
        .iter()
        .map(|(name, _)| Series {
            name: name.to_string(),
            unit,
            rates: Vec::new(),
        })
        .collect();
    let n = contenders.len();
    for round in 0..rounds {
        for k in 0..n {
            let i = (round + k) % n;
            let rate = (contenders[i].1)();
            series[i].rates.push(rate);
        }
        eprint!(".");
    }
    eprintln!();
    series
}

/// Journal counters summed over the keel runs of one workload, to say how the group commit behaved
/// (entries per batch, fsyncs per entry) next to the rate it reached.
#[derive(Default)]
struct Counters {
    appends: Cell<u64>,
    batches: Cell<u64>,
    fsyncs: Cell<u64>,
}

impl Counters {
    /// Adds the counters of a journal's run (taken just before its close).
    fn add(&self, stats: &keel_journal::JournalStats) {
        self.appends.set(self.appends.get() + stats.appends);
        self.batches.set(self.batches.get() + stats.batches);
        self.fsyncs.set(self.fsyncs.get() + stats.fsyncs);
    }

    fn print(&self) {
        let appends = self.appends.get().max(1) as f64;
        println!(
            "
keel journal counters over all rounds (priming included): {} appends, {:.2} entries per \
             batch, {:.3} fsyncs per entry",
            self.appends.get(),
            appends / self.batches.get().max(1) as f64,
            self.fsyncs.get() as f64 / appends
        );
    }
}

fn per_sec(count: f64, elapsed: Duration) -> f64 {
    count / elapsed.as_secs_f64()
}

fn mb_per_sec(bytes: f64, elapsed: Duration) -> f64 {
    bytes / 1e6 / elapsed.as_secs_f64()
}

// ----------------------------------------------------------------------------------------------

/// Keel, one buffered append at a time (`sync_on_append = false`, then `tune`): a fresh journal
/// per run (its open and first append are untimed). Returns entries/s.
fn keel_sequential(
    rt: &compio::runtime::Runtime,
    len: usize,
    count: u64,
    tune: &dyn Fn(&mut keel_journal::JournalConfig),
    counters: &Counters,
) -> f64 {
    let dir = bench_tempdir();
    let payload = payload(len);
    rt.block_on(async {
        let slot_count = (2 * count + 2).next_power_of_two().max(1024);
        let mut config = journal_config(slot_count, false);
        tune(&mut config);
        let journal = open_journal(dir.path(), config).await;
        let mut next_op = 1;
        prime_journal(&journal, &mut next_op, &payload).await;
        let elapsed =
            timed_sequential_appends(&journal, &mut next_op, count, &payload, slot_count).await;
        counters.add(&journal.stats());
        journal.close().await.expect("close");
        per_sec(count as f64, elapsed)
    })
}

/// Inputs of the recovery workloads: a keel journal and a plain framed log of the same entries.
struct RecoveryInput {
    _dir: tempfile::TempDir,
    keel_root: std::path::PathBuf,
    keel_files: Vec<std::path::PathBuf>,
    plain_files: Vec<std::path::PathBuf>,
    entries: u64,
    payload_bytes: f64,
}

fn recovery_input(rt: &compio::runtime::Runtime, entries: u64) -> RecoveryInput {
    let dir = bench_tempdir();
    let keel_root = dir.path().join("keel");
    let plain_path = dir.path().join("plain.log");
    let payload = payload(KIB4);
    rt.block_on(fill_journal(&keel_root, entries, &payload));
    plain_fill(&plain_path, &payload, entries).expect("plain fill");
    let keel_files = files_under(&keel_root.join("journal"));
    let keel_file_bytes: u64 = keel_files
        .iter()
        .map(|p| std::fs::metadata(p).expect("metadata").len())
        .sum();
    eprintln!(
        "recovery input: keel journal {} files, {} bytes on disk (preallocated tail included); plain {} bytes",
        keel_files.len(),
        keel_file_bytes,
        std::fs::metadata(&plain_path).expect("metadata").len()
    );
    RecoveryInput {
        _dir: dir,
        keel_root,
        keel_files,
        plain_files: vec![plain_path],
        entries,
        payload_bytes: (entries * KIB4 as u64) as f64,
    }
}

/// Opens the journal with its one streaming pass handing every entry over (as the engine's replay
/// and keel-raft's log load take them); returns the payload bytes seen.
/// The slot ring the recovery workloads open their journal with: room for every entry.
fn recovery_slot_count(entries: u64) -> u64 {
    (entries + 1).next_power_of_two()
}

async fn open_streaming(input: &RecoveryInput) -> (u64, u64) {
    let mut config = journal_config(recovery_slot_count(input.entries), true);
    if let Some(window) = std::env::var("KEEL_BENCH_SCAN_WINDOW")
        .ok()
        .and_then(|w| w.parse().ok())
    {
        config.scan_window_bytes = window;
    }
    let dir =
        keel_storage::FsDirectory::open_with(&input.keel_root, keel_storage::DirAccess::Create)
            .await
            .expect("open bench directory");
    let (mut entries, mut bytes) = (0u64, 0u64);
    let started = Instant::now();
    let plan = keel_journal::MetadataJournal::plan_with(
        &dir,
        config,
        keel_journal::RecoveryMode::TolerateTornTail,
        &mut |event| {
            if let keel_journal::ScanEvent::Entry {
                kind: keel_journal::EntryKind::Data,
                payload,
                ..
            } = event
            {
                std::hint::black_box(payload);
                entries += 1;
                bytes += payload.len() as u64;
            }
        },
    )
    .await
    .expect("plan");
    if std::env::var_os("KEEL_BENCH_PHASES").is_some() {
        eprintln!("plan_with {:?}", started.elapsed());
    }
    let planned = Instant::now();
    let (journal, _) = keel_journal::MetadataJournal::open_planned(&dir, plan)
        .await
        .expect("open");
    if std::env::var_os("KEEL_BENCH_PHASES").is_some() {
        eprintln!("open_planned {:?}", planned.elapsed());
    }
    journal.close().await.expect("close");
    (entries, bytes)
}

/// Reads `paths` through keel-storage (compio, io_uring) in 1 MiB reads and crc32s every byte:
/// what the scan's reads cost without the scan.
async fn uring_read_crc(paths: &[std::path::PathBuf]) -> u64 {
    use keel_storage::{Directory, OpenMode, Storage};
    let mut hasher = crc32fast::Hasher::new();
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
    let mut total = 0u64;
    for path in paths {
        let dir = keel_storage::FsDirectory::open_with(
            path.parent().expect("parent"),
            keel_storage::DirAccess::ReadOnly,
        )
        .await
        .expect("open dir");
        let name = path.file_name().and_then(|n| n.to_str()).expect("name");
        let file = dir.open_file(name, OpenMode::ReadOnly).await.expect("open");
        let mut offset = 0u64;
        while offset < file.len() {
            buf.clear();
            let keel_storage::BufResult(result, returned) = file.read_at(offset, buf).await;
            buf = returned;
            let n = result.expect("read");
            assert!(n > 0, "short file");
            hasher.update(&buf[..n]);
            offset += n as u64;
            total += n as u64;
        }
    }
    std::hint::black_box(hasher.finalize());
    total
}

/// The recovery contenders, each returning payload MB/s; `before` runs ahead of each (dropping
/// the page cache for the cold variant).
fn recovery_series(
    rt: &compio::runtime::Runtime,
    input: &RecoveryInput,
    rounds: usize,
    before: &dyn Fn(),
) -> Vec<Series> {
    let n = input.entries;
    let config = journal_config(recovery_slot_count(n), true);
    let mut keel_stream = || {
        before();
        let started = Instant::now();
        let (entries, _) = rt.block_on(open_streaming(input));
        let elapsed = started.elapsed();
        assert_eq!(entries, n);
        mb_per_sec(input.payload_bytes, elapsed)
    };
    let mut keel_reader = || {
        before();
        rt.block_on(async {
            let started = Instant::now();
            let journal = open_journal(&input.keel_root, config.clone()).await;
            let mut reader = journal.reader(1);
            let mut entries = 0;
            while let Some(entry) = reader.next().await.expect("read") {
                std::hint::black_box(&entry.payload);
                entries += 1;
            }
            let elapsed = started.elapsed();
            assert_eq!(entries, n);
            journal.close().await.expect("close");
            mb_per_sec(input.payload_bytes, elapsed)
        })
    };
    let mut plain = || {
        before();
        let started = Instant::now();
        let (entries, _) = plain_recover(&input.plain_files[0]).expect("plain recover");
        let elapsed = started.elapsed();
        assert_eq!(entries, n);
        mb_per_sec(input.payload_bytes, elapsed)
    };
    let mut raw64 = || {
        before();
        let started = Instant::now();
        raw_read_crc(&input.plain_files, READ_CHUNK_BYTES).expect("raw");
        mb_per_sec(input.payload_bytes, started.elapsed())
    };
    let mut raw64_keel = || {
        before();
        let started = Instant::now();
        raw_read_crc(&input.keel_files, READ_CHUNK_BYTES).expect("raw keel");
        mb_per_sec(input.payload_bytes, started.elapsed())
    };
    let mut uring = || {
        before();
        let started = Instant::now();
        rt.block_on(uring_read_crc(&input.keel_files));
        mb_per_sec(input.payload_bytes, started.elapsed())
    };
    interleave(
        rounds,
        "MB/s",
        &mut [
            (
                "keel open + every entry (one streaming pass)",
                &mut keel_stream,
            ),
            (
                "compio read + crc32 of keel's files, 1 MiB reads",
                &mut uring,
            ),
            (
                "keel open, then a read per entry (reader)",
                &mut keel_reader,
            ),
            ("plain parse + crc, 64 KiB reads", &mut plain),
            ("raw read + crc32, 64 KiB reads", &mut raw64),
            (
                "raw read + crc32 of keel's files, 64 KiB reads",
                &mut raw64_keel,
            ),
        ],
    )
}

fn recovery(rt: &compio::runtime::Runtime, sizes: Sizes) {
    let input = recovery_input(rt, sizes.recovery_entries);
    // Warm the page cache for both inputs (this measures recovery from page cache).
    raw_read_crc(&input.keel_files, 1 << 20).expect("warm keel");
    raw_read_crc(&input.plain_files, 1 << 20).expect("warm plain");
    let series = recovery_series(rt, &input, sizes.rounds, &|| {});
    print_table(
        &format!(
            "recovery of {} × 4 KiB from page cache (payload MB/s)",
            input.entries
        ),
        &series,
    );
}

/// Drops the page cache (needs root); false when the machine does not allow it.
fn drop_caches() -> bool {
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

fn recovery_cold(rt: &compio::runtime::Runtime, sizes: Sizes) {
    if !drop_caches() {
        eprintln!("recovery_cold: cannot drop the page cache here (not root?); skipped");
        return;
    }
    let input = recovery_input(rt, sizes.recovery_entries);
    let series = recovery_series(rt, &input, sizes.rounds, &|| {
        drop_caches();
    });
    print_table(
        &format!(
            "recovery of {} × 4 KiB from a cold cache, drop_caches before each (payload MB/s)",
            input.entries
        ),
        &series,
    );
}

/// Peak RSS while a journal of `sizes.recovery_rss_bytes` is opened with every entry handed over:
/// the growth of the process's high-water mark (reset first) against the index's own size.
fn recovery_rss(rt: &compio::runtime::Runtime, sizes: Sizes) {
    let entries = sizes.recovery_rss_bytes / KIB4 as u64;
    let input = recovery_input(rt, entries);
    // Reset the high-water mark (Linux: 5 > clear_refs) so the peak below is the open's own.
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let before = status_kib("VmHWM:");
    let (seen, bytes) = rt.block_on(open_streaming(&input));
    assert_eq!(seen, entries);
    let peak = status_kib("VmHWM:");
    // The index: one scan record per entry (about 56 B) and the slot ring, written whole at open
    // (24 B a slot, journal/src/slots.rs).
    let slot_count = recovery_slot_count(entries) as f64;
    let index_mib = (entries as f64 * 56.0 + slot_count * 24.0) / (1 << 20) as f64;
    println!(
        "\n### peak RSS opening a {:.0} MiB journal ({} entries, {:.0} MiB of payload)\n\n\
         | peak RSS growth | index estimate | growth above the index | high-water mark reset |\n\
         |---|---|---|---|\n| {:.1} MiB | {:.1} MiB | {:.1} MiB | {} |",
        (entries * KIB4 as u64) as f64 / (1 << 20) as f64,
        entries,
        bytes as f64 / (1 << 20) as f64,
        (peak - before) as f64 / 1024.0,
        index_mib,
        (peak - before) as f64 / 1024.0 - index_mib,
        if reset {
            "yes"
        } else {
            "no (figure is an upper bound)"
        },
    );
}

/// A `/proc/self/status` field in KiB.
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|line| line.starts_with(field))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Append latency (fsync per entry) through the engine, steady vs with checkpoints running back
/// to back on the same core, rounds interleaved. Prints p50/p99/p999 per mode and the p99 ratio.
fn checkpoint_latency(rt: &compio::runtime::Runtime, sizes: Sizes) {
    const VALUE_BYTES: usize = 128;
    let keys = sizes.latency_keys;
    let appends = sizes.latency_appends;
    let slot_count = (keys * 4).next_power_of_two().max(1 << 16);
    let dir = bench_tempdir();
    let (engine, next_op) = rt.block_on(async {
        let engine = open_engine(dir.path(), engine_config(slot_count, false)).await;
        let mut next_op = 1;
        engine_load(&engine, &mut next_op, keys, keys, VALUE_BYTES).await;
        let report = engine.checkpoint().await.expect("preload checkpoint");
        eprintln!("checkpoint_latency: state snapshot {report:?}");
        engine.close().await.expect("close");
        let engine = open_engine(dir.path(), engine_config(slot_count, true)).await;
        // How long the synchronous part of a checkpoint holds the core: serialising the state.
        let started = Instant::now();
        let bytes = engine.state_machine().snapshot().len();
        eprintln!(
            "checkpoint_latency: serialising {bytes} bytes of state took {:.1} ms (on the core)",
            started.elapsed().as_secs_f64() * 1e3
        );
        (Rc::new(engine), next_op)
    });
    let next_op = Rc::new(Cell::new(next_op));
    let mut histograms = [Histogram::new(), Histogram::new()];
    let mut p99s: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut checkpoints_done = 0u64;
    for round in 0..sizes.rounds * 2 {
        // Alternate steady / checkpointing, starting with a different one every other pair.
        let with_checkpoints = (round + round / 2) % 2 == 1;
        let mut round_histogram = Histogram::new();
        let done = rt.block_on(async {
            let stop = Rc::new(Cell::new(false));
            let checkpointer = with_checkpoints.then(|| {
                let engine = engine.clone();
                let stop = stop.clone();
                compio::runtime::spawn(async move {
                    let mut done = 0u64;
                    while !stop.get() {
                        if engine.checkpoint().await.expect("checkpoint").is_some() {
                            done += 1;
                        }
                        keel_storage::yield_now().await;
                    }
                    done
                })
            });
            let mut command = Vec::new();
            for _ in 0..appends {
                let op = next_op.get();
                kv_set(op % keys, VALUE_BYTES, &mut command);
                let started = Instant::now();
                engine.append(op, &command).await.expect("append");
                round_histogram.record(started.elapsed().as_micros() as u64);
                engine.commit(op).await.expect("commit");
                next_op.set(op + 1);
            }
            stop.set(true);
            match checkpointer {
                Some(task) => task.await.expect("checkpoint task"),
                None => 0,
            }
        });
        checkpoints_done += done;
        let mode = usize::from(with_checkpoints);
        p99s[mode].push(round_histogram.quantile(0.99) as f64);
        histograms[mode].merge(&round_histogram);
        eprint!(".");
    }
    eprintln!();
    let stats = engine.stats();
    let engine = Rc::try_unwrap(engine).unwrap_or_else(|_| panic!("tasks joined"));
    rt.block_on(engine.close()).expect("close");

    println!(
        "\n### append latency (fsync per entry, engine), steady vs checkpoints back to back; \
         {keys} keys of state, {appends} appends per round, {} rounds each, {checkpoints_done} checkpoints\n",
        sizes.rounds
    );
    println!("| mode | p50 µs | p99 µs | p999 µs | max µs | p99 per round: median (range) |");
    println!("|---|---|---|---|---|---|");
    for (mode, name) in ["steady", "checkpoints running"].iter().enumerate() {
        let h = &histograms[mode];
        let (lo, hi) = range(&p99s[mode]);
        println!(
            "| {name} | {} | {} | {} | {} | {:.0} ({lo:.0} – {hi:.0}) |",
            h.quantile(0.5),
            h.quantile(0.99),
            h.quantile(0.999),
            h.max(),
            median(&p99s[mode])
        );
    }
    let ratios: Vec<f64> = p99s[1].iter().zip(&p99s[0]).map(|(c, s)| c / s).collect();
    let (rlo, rhi) = range(&ratios);
    println!(
        "\np99 with checkpoints / steady p99: pooled {:.2}×, per round pair median {:.2}× ({rlo:.2} – {rhi:.2})",
        histograms[1].quantile(0.99) as f64
            / histograms[0].quantile(0.99) as f64,
        median(&ratios)
    );
    let m = median(&ratios);
    println!(
        "target: p99 with checkpoints / steady p99 ≤ 2×: per round pair median {:.2}× → {}",
        m,
        if m <= 2.0 { "met" } else { "missed" }
    );
    println!(
        "checkpoint duration (snapshot → compact): p50 {} µs, max {} µs; snapshot {} bytes",
        stats.checkpoint_duration_us.quantile(0.5),
        stats.checkpoint_duration_us.max(),
        stats.last_snapshot_bytes
    );
}

/// Resident set size from /proc/self/statm, in MiB.
fn rss_mib() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: f64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN);
    pages * 4096.0 / (1 << 20) as f64
}

/// RSS over many no-fsync appends with the default ring (1,024 slots): the watermark moves and
/// compaction run as a checkpointing engine would, every half ring. Prints RSS at intervals.
fn rss(rt: &compio::runtime::Runtime, sizes: Sizes) {
    let n = sizes.rss_appends;
    let dir = bench_tempdir();
    let payload = payload(128);
    let config = JournalConfig {
        sync_on_append: false,
        ..base_journal_config()
    };
    let slot_count = config.slot_count;
    let samples = rt.block_on(async {
        let journal = open_journal(dir.path(), config).await;
        let mut samples = vec![(0u64, rss_mib())];
        let mut next_op = 1u64;
        let step = (n / 10).max(1);
        let started = Instant::now();
        while next_op <= n {
            let count = step.min(n - next_op + 1);
            timed_sequential_appends(&journal, &mut next_op, count, &payload, slot_count).await;
            samples.push((next_op - 1, rss_mib()));
        }
        let elapsed = started.elapsed();
        journal.close().await.expect("close");
        eprintln!(
            "rss: {n} appends in {:.1} s (watermark moves + compaction included)",
            elapsed.as_secs_f64()
        );
        samples
    });
    println!(
        "\n### RSS over {n} no-fsync 128-B appends, slot_count {slot_count} (MiB after each step)\n"
    );
    println!("| appends | RSS MiB |");
    println!("|---|---|");
    for (appends, rss) in &samples {
        println!("| {appends} | {rss:.1} |");
    }
}

/// No-fsync appends on `threads` threads, each with its own runtime and journal (thread-per-core:
/// nothing shared). Returns total entries/s.
fn shards_run(threads: usize, entries: u64) -> f64 {
    let dir = bench_tempdir();
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let root = dir.path().join(format!("shard-{i}"));
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let rt = runtime();
                let payload = payload(128);
                rt.block_on(async {
                    let slot_count = (2 * entries + 2).next_power_of_two();
                    let journal = open_journal(&root, journal_config(slot_count, false)).await;
                    let mut next_op = 1;
                    prime_journal(&journal, &mut next_op, &payload).await;
                    barrier.wait();
                    let elapsed = timed_sequential_appends(
                        &journal,
                        &mut next_op,
                        entries,
                        &payload,
                        slot_count,
                    )
                    .await;
                    journal.close().await.expect("close");
                    elapsed
                })
            })
        })
        .collect();
    let slowest = handles
        .into_iter()
        .map(|h| h.join().expect("shard thread"))
        .max()
        .unwrap_or_default();
    per_sec((entries * threads as u64) as f64, slowest)
}

fn shards(_rt: &compio::runtime::Runtime, sizes: Sizes) {
    let n = sizes.shard_entries;
    let mut two = || shards_run(2, n);
    let mut one = || shards_run(1, n);
    let series = interleave(
        sizes.rounds,
        "entries/s",
        &mut [("2 shards (2 threads)", &mut two), ("1 shard", &mut one)],
    );
    print_table(
        &format!("no-fsync 128-B appends, {n} per shard, thread-per-core scaling"),
        &series,
    );
}

type Workload = fn(&compio::runtime::Runtime, Sizes);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let measuring = args.iter().any(|a| a == "--bench");
    let mut rounds = 5usize;
    let mut only: Option<Vec<String>> = None;
    let mut quick = !measuring;
    let mut rss_appends: Option<u64> = None;
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--rounds" => {
                i += 1;
                rounds = args[i].parse().expect("--rounds N");
            }
            "--only" => {
                i += 1;
                only = Some(args[i].split(',').map(str::to_string).collect());
            }
            "--quick" => quick = true,
            "--rss-appends" => {
                i += 1;
                rss_appends = Some(args[i].parse().expect("--rss-appends N"));
            }
            _ => {} // cargo passes `--bench` and possibly a filter; ignore the rest
        }
        i += 1;
    }
    let mut sizes = if quick {
        Sizes::quick()
    } else {
        Sizes::full(rounds)
    };
    if let Some(n) = rss_appends {
        sizes.rss_appends = n;
    }
    let workloads: [(&str, Workload); 9] = [
        ("fsync128", write::fsync128),
        ("group64", write::group64),
        ("nosync", write::nosync),
        ("recovery", recovery),
        ("recovery_cold", recovery_cold),
        ("recovery_rss", recovery_rss),
        ("checkpoint_latency", checkpoint_latency),
        ("rss", rss),
        ("shards", shards),
    ];
    let rt = runtime();
    println!(
        "keel compare: {} rounds, bench dir {}",
        sizes.rounds,
        std::env::var("KEEL_BENCH_DIR")
            .unwrap_or_else(|_| std::env::temp_dir().display().to_string())
    );
    for (name, run) in workloads {
        if only.as_ref().is_some_and(|o| !o.iter().any(|w| w == name)) {
            continue;
        }
        eprintln!("== {name}");
        run(&rt, sizes);
    }
}
