//! What the journal and engine simulators share: the poll budget that drops a future at a random
//! await, the three kinds of restart, the seeded choice of misdirected and lost writes, the
//! detector that tells which entries a misdirected write overwrote, and the fault totals each
//! simulator prints at the end of its run.
//!
//! The engine's simulator includes this file by path (`engine/tests/sim.rs`), so it must only use
//! what both test crates have: keel-storage, keel-journal and rand.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::task::{Context, Poll};

use keel_journal::{EntryKind, JournalConfig, MetadataJournal};
use keel_storage::{Directory, FaultConfig, FaultKind, FaultOp, MemFs};
use rand::Rng;

/// Polls `future` at most `budget + 1` times; `None` when it was still pending then (and it is
/// dropped right there, at whatever await it had reached).
pub async fn with_budget<F: Future>(future: F, mut budget: u64) -> Option<F::Output> {
    let mut future = Box::pin(future);
    std::future::poll_fn(move |cx: &mut Context<'_>| match future.as_mut().poll(cx) {
        Poll::Ready(v) => Poll::Ready(Some(v)),
        Poll::Pending if budget == 0 => Poll::Ready(None),
        Poll::Pending => {
            budget -= 1;
            Poll::Pending
        }
    })
    .await
}

/// Runs `future` to the end, or under a poll budget when one is given.
pub async fn run_maybe_dropped<F: Future>(future: F, budget: Option<u64>) -> Option<F::Output> {
    match budget {
        None => Some(future.await),
        Some(budget) => with_budget(future, budget).await,
    }
}

/// How an incarnation ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// Power cut: unsynced writes and directory entries are kept, lost or torn.
    PowerCut,
    /// The process dies, the page cache survives: everything acknowledged must be there.
    ProcessCrash,
    /// A process crash now, and a power cut at the end of the next incarnation: what that
    /// incarnation recovered (and acknowledged) must survive it. This is what catches a restart
    /// that builds on data or directory entries the dead process never made durable.
    ProcessCrashThenPowerCut,
}

impl Restart {
    /// Half power cuts (as the simulators always did), a quarter each of the other two.
    pub fn choose(rng: &mut impl Rng) -> Self {
        match rng.gen_range(0..4) {
            0 | 1 => Restart::PowerCut,
            2 => Restart::ProcessCrash,
            _ => Restart::ProcessCrashThenPowerCut,
        }
    }
}

/// Misdirected and lost writes for one seed: on in one seed in four, so the other three still
/// check the strict rule (every acknowledged op survives).
#[derive(Debug, Clone, Copy)]
pub struct WriteFaults {
    pub probability: f64,
    pub misdirected: bool,
    pub lost: bool,
}

impl WriteFaults {
    pub fn choose(rng: &mut impl Rng) -> Option<Self> {
        if !rng.gen_bool(0.25) {
            return None;
        }
        let (misdirected, lost) = match rng.gen_range(0..3) {
            0 => (true, false),
            1 => (false, true),
            _ => (true, true),
        };
        Some(WriteFaults {
            probability: rng.gen_range(0.002..0.02),
            misdirected,
            lost,
        })
    }

    /// `config` with these faults added on every write.
    pub fn add_to(&self, mut config: FaultConfig) -> FaultConfig {
        if self.misdirected {
            config = config.fail_with_probability(
                FaultOp::Write,
                self.probability,
                FaultKind::Misdirected,
            );
        }
        if self.lost {
            config = config.fail_with_probability(
                FaultOp::Write,
                self.probability,
                FaultKind::LostWrite,
            );
        }
        config
    }
}

/// Misdirected plus lost writes injected so far.
pub fn write_fault_count(fs: &MemFs) -> u64 {
    let counts = fs.fault_counts();
    counts.misdirected_writes + counts.lost_writes
}

/// Misdirected writes injected so far.
pub fn misdirected_count(fs: &MemFs) -> u64 {
    fs.fault_counts().misdirected_writes
}

/// Injected failures a call may report (EIO, ENOSPC, a full disk, short writes retried into one).
pub fn error_fault_count(fs: &MemFs) -> u64 {
    let counts = fs.fault_counts();
    counts.io_errors + counts.no_space + counts.disk_full + counts.short_writes
}

/// The journal's segment files as reads see them, taken before an operation so that what a
/// misdirected or lost write changed during it can be found afterwards.
#[derive(Debug, Default, Clone)]
pub struct Image {
    files: BTreeMap<String, Vec<u8>>,
}

/// Takes the image without yielding, so a simulator's poll budgets count the same polls with or
/// without it.
pub async fn capture(fs: &MemFs) -> Image {
    fs.set_yield_on_io(false);
    let mut image = Image::default();
    if let Ok(dir) = fs.root().open_dir("journal", false).await {
        for name in dir.list().await.unwrap_or_default() {
            let path = format!("journal/{name}");
            if name.ends_with(".wal") {
                if let Ok(bytes) = fs.read_raw(&path) {
                    image.files.insert(path, bytes);
                }
            }
        }
    }
    fs.set_yield_on_io(true);
    image
}

/// What a misdirected or lost write did to the entries an [`Image`] held.
#[derive(Debug, Default)]
pub struct Damage {
    /// Data entries whose bytes changed: (op, payload crc).
    pub data: BTreeSet<(u64, u32)>,
    /// Marker entries whose bytes changed: (kind as its format byte, op).
    pub markers: BTreeSet<(u8, u64)>,
    /// Every data entry the image's scan found, damaged or not: (op, payload crc). An
    /// acknowledged version missing here sat after earlier damage, where nothing can be located.
    pub located: BTreeSet<(u64, u32)>,
    /// Every marker entry the image's scan found: (kind as its format byte, op).
    pub located_markers: BTreeSet<(u8, u64)>,
}

/// The entries of `before` whose bytes, or whose segment's header, reads now see changed (a
/// misdirected write landed there, or a compaction rewrote the segment with a write a fault hit):
/// without its header a segment's entries are cut with it.
pub async fn damaged_entries(fs: &MemFs, before: &Image, config: &JournalConfig) -> Damage {
    let scratch = scratch_copy(before).await;
    let entries = MetadataJournal::raw_entries(&scratch.root(), config.clone(), 0, u64::MAX)
        .await
        .unwrap_or_default();
    let header = keel_journal::format::SEGMENT_HEADER_BYTES;
    let mut damage = Damage::default();
    for entry in entries {
        let path = format!("journal/{}", entry.file);
        let len = keel_journal::format::entry_len_bytes(entry.payload_len_bytes as usize);
        let start = entry.offset_bytes as usize;
        let old = &before.files[&path];
        let now = fs.read_raw(&path).unwrap_or_default();
        let changed = now.get(start..start + len) != old.get(start..start + len)
            || now.get(..header) != old.get(..header);
        if entry.kind == EntryKind::Data {
            damage.located.insert((entry.op, entry.payload_crc));
            if changed {
                damage.data.insert((entry.op, entry.payload_crc));
            }
        } else {
            damage.located_markers.insert((entry.kind as u8, entry.op));
            if changed {
                damage.markers.insert((entry.kind as u8, entry.op));
            }
        }
    }
    damage
}

/// Entries in segments whose header a fault destroyed: it does not decode in what reads see (a
/// misdirected write took its bytes elsewhere), or its durable bytes differ from what reads see
/// (the device dropped the write; entries go into a segment only after its header was fsynced,
/// so this is no unsynced header: most often a dead process left it in the page cache and the
/// next open fsynced it in vain). Without its header a segment's first group is cut with it, and
/// nothing after it vouches. Found by looking for valid entry headers at every 8-byte boundary,
/// as the journal's own look-ahead does. Taken before each crash, in seeds with such faults.
pub async fn entries_behind_damaged_headers(fs: &MemFs) -> Damage {
    let live = capture(fs).await;
    let header = keel_journal::format::SEGMENT_HEADER_BYTES;
    let mut damage = Damage::default();
    for (path, bytes) in &live.files {
        let durable = fs.durable_bytes(path).unwrap_or_default();
        let destroyed = keel_journal::format::SegmentHeader::decode(bytes).is_err()
            || durable.get(..header) != bytes.get(..header);
        if !destroyed {
            continue;
        }
        let align = keel_journal::format::ENTRY_ALIGN_BYTES;
        let name = path.rsplit('/').next().unwrap_or_default();
        let Some(number) = keel_journal::format::parse_segment_file_name(name) else {
            continue;
        };
        let binding = keel_journal::format::Binding::Either(number);
        for offset in (header..bytes.len()).step_by(align) {
            if let Ok((entry, _)) =
                keel_journal::format::EntryHeader::decode(&bytes[offset..], binding)
            {
                if entry.kind == EntryKind::Data {
                    damage.data.insert((entry.op, entry.payload_crc));
                } else {
                    damage.markers.insert((entry.kind as u8, entry.op));
                }
            }
        }
    }
    damage
}

/// A fresh MemFs holding `image`'s files durably, that never yields.
async fn scratch_copy(image: &Image) -> MemFs {
    let scratch = MemFs::new(0);
    scratch.set_yield_on_io(false);
    let _ = scratch.root().open_dir("journal", true).await;
    for (path, bytes) in &image.files {
        scratch.write_raw(path, 0, bytes).expect("scratch image");
    }
    scratch
}

/// The checksum the journal stores for a payload (it covers the zero padding too).
pub fn payload_crc(bytes: &[u8]) -> u32 {
    keel_journal::format::payload_crc(bytes)
}

/// Totals over every seed of a run, printed as the one-line closing summary.
#[derive(Debug, Default, Clone, Copy)]
pub struct FaultTotals {
    pub seeds: u64,
    pub power_cuts: u64,
    pub process_crashes: u64,
    /// Process crash, restart, more work, then a power cut.
    pub process_crash_then_power_cut: u64,
    pub dropped_futures: u64,
    pub misdirected_writes: u64,
    pub lost_writes: u64,
    pub io_errors: u64,
    pub no_space: u64,
    pub short_writes: u64,
    /// Aligned writes through direct handles (`direct_io`): not a fault, the proof the aligned
    /// path ran.
    pub direct_writes: u64,
    /// Early write-back hints of buffered journals (`write_back_bytes`): not a fault, the proof
    /// the hint ran among the faults.
    pub write_back_hints: u64,
    pub bit_flips: u64,
    pub refused_as_corruption: u64,
    /// Acknowledged ops a recovery lost under the documented limit (their write was faulted).
    pub lost_under_limit: u64,
}

impl FaultTotals {
    /// Adds what `fs` injected over its life.
    pub fn add_fs(&mut self, fs: &MemFs) {
        let counts = fs.fault_counts();
        self.power_cuts += counts.power_cuts;
        self.process_crashes += counts.process_crashes;
        self.misdirected_writes += counts.misdirected_writes;
        self.lost_writes += counts.lost_writes;
        self.io_errors += counts.io_errors;
        self.no_space += counts.no_space + counts.disk_full;
        self.short_writes += counts.short_writes;
        self.direct_writes += counts.direct_writes;
        self.write_back_hints += counts.write_back_hints;
        self.bit_flips += counts.bit_flips;
    }

    pub fn add(&mut self, other: &FaultTotals) {
        self.seeds += other.seeds;
        self.power_cuts += other.power_cuts;
        self.process_crashes += other.process_crashes;
        self.process_crash_then_power_cut += other.process_crash_then_power_cut;
        self.dropped_futures += other.dropped_futures;
        self.misdirected_writes += other.misdirected_writes;
        self.lost_writes += other.lost_writes;
        self.io_errors += other.io_errors;
        self.no_space += other.no_space;
        self.short_writes += other.short_writes;
        self.direct_writes += other.direct_writes;
        self.write_back_hints += other.write_back_hints;
        self.bit_flips += other.bit_flips;
        self.refused_as_corruption += other.refused_as_corruption;
        self.lost_under_limit += other.lost_under_limit;
    }
}

impl fmt::Display for FaultTotals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} seeds: power cuts {}, process crashes {}, process crash then power cut {}, \
             dropped futures {} (none may poison: the writer task owns the I/O), misdirected \
             writes {}, \
             lost writes {}, I/O errors {}, no-space {}, short writes {}, bit flips {}, \
             refused as corruption {}, ops lost under the documented limit {}, aligned direct \
             writes {}, write-back hints {}",
            self.seeds,
            self.power_cuts,
            self.process_crashes,
            self.process_crash_then_power_cut,
            self.dropped_futures,
            self.misdirected_writes,
            self.lost_writes,
            self.io_errors,
            self.no_space,
            self.short_writes,
            self.bit_flips,
            self.refused_as_corruption,
            self.lost_under_limit,
            self.direct_writes,
            self.write_back_hints
        )
    }
}

thread_local! {
    static CURRENT_SEED: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
}

/// Names `seed` in the panic message of anything that panics while it runs: a panic in a
/// journal's writer task aborts the process (no `catch_unwind` gets to print the seed), so the
/// hook says which seed to replay with `replay_var`.
pub fn running_seed(seed: u64, replay_var: &'static str) {
    use std::io::Write;
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if let Some(seed) = CURRENT_SEED.with(|s| s.get()) {
                // Straight to stderr: the test harness's capture is lost when the process aborts.
                let _ = writeln!(
                    std::io::stderr(),
                    "simulator seed {seed}: {info}\nreplay with {replay_var}={seed}"
                );
            }
            default_hook(info);
        }));
    });
    CURRENT_SEED.with(|s| s.set(Some(seed)));
}

/// Seeds to run: `KEEL_SIM_SEED=s` replays one; `KEEL_SIM_SEEDS=n` runs `0..n`; else `0..default`.
/// `own_prefix` names a simulator's own variables (`KEEL_ENGINE_SIM`), read first.
pub fn seeds_from_env(own_prefix: Option<&str>, default: u64) -> Vec<u64> {
    let read = |suffix: &str| {
        let own = own_prefix.and_then(|p| std::env::var(format!("{p}_{suffix}")).ok());
        own.or_else(|| std::env::var(format!("KEEL_SIM_{suffix}")).ok())
            .map(|v| {
                v.parse::<u64>()
                    .unwrap_or_else(|_| panic!("{suffix} must be a number, got {v:?}"))
            })
    };
    if let Some(seed) = read("SEED") {
        return vec![seed];
    }
    let first = read("FIRST_SEED").unwrap_or(0);
    let count = read("SEEDS").unwrap_or(default);
    (first..first + count).collect()
}

/// What may excuse a loss at one check: the operations (groups) a misdirected or lost write
/// touched, and the newest operation anything recovered from the journal was issued in.
pub struct Excuses {
    pub touched: BTreeSet<u64>,
    pub newest: Option<u64>,
}

impl Excuses {
    /// An operation's acknowledgements may be cut only if a fault touched it and nothing
    /// recovered vouches for it (the documented limit: nothing written after it survived).
    pub fn excusable(&self, group: u64) -> bool {
        self.touched.contains(&group) && self.newest.is_none_or(|n| n <= group)
    }
}

impl fmt::Display for Excuses {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "touched {:?}, newest recovered issued in {:?}",
            self.touched, self.newest
        )
    }
}
