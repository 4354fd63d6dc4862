//! The simulator: random workloads with group commit on MemFs, crashes at random points (also in
//! the middle of a repair), I/O faults and bit flips, checked against a model after every reopen.
//!
//! Invariants checked after each crash + reopen:
//! - every acknowledged op is present with its exact bytes (unless a pending truncate may have
//!   removed it, or a pending rewrite replaced it with bytes that were also written);
//! - nothing is present that was never written (no op, no bytes, nobody issued);
//! - the snapshot and commit watermarks are at least what was acknowledged;
//! - a bit flip is never silently accepted: open refuses, or the damaged bytes are cut and
//!   reported as a repair, or the data is still exactly right.
//!
//! `KEEL_SIM_SEEDS=n` runs n seeds (default 2000); `KEEL_SIM_SEED=s` replays one seed.

mod common;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};

use common::{read_all, segment_paths};
use keel_journal::{JournalConfig, JournalError, MetadataJournal, RecoveryMode};
use keel_storage::{FaultConfig, FaultKind, FaultOp, MemFs};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

type Journal = MetadataJournal<keel_storage::MemDirectory>;

fn tracing_on() -> bool {
    std::env::var("KEEL_SIM_TRACE").is_ok()
}

macro_rules! trace {
    ($($arg:tt)*) => {
        if tracing_on() {
            eprintln!($($arg)*);
        }
    };
}
type BoxFuture<'a> = Pin<Box<dyn Future<Output = ()> + 'a>>;

/// What the acknowledged history says the journal holds, plus what may or may not have landed.
#[derive(Default, Debug)]
struct Model {
    durable: BTreeMap<u64, Vec<u8>>,
    snapshot_op: u64,
    commit_op: u64,
    /// Issued, not acknowledged: may be present after a crash.
    pending: BTreeMap<u64, Vec<u8>>,
    pending_truncate: Option<u64>,
    pending_snapshot: Option<u64>,
    /// Writes resolved but not yet covered by a flush (sync_on_append = false); every version,
    /// oldest first (a crash may keep an older one and lose a newer one).
    written: BTreeMap<u64, Vec<Vec<u8>>>,
    poisoned: bool,
    acks: u64,
}

impl Model {
    fn ack(&mut self, op: u64, bytes: Vec<u8>) {
        self.pending.remove(&op);
        self.durable.insert(op, bytes);
        self.acks += 1;
    }

    /// A flush (or anything that syncs: truncate, snapshot, commit marker, compaction) covered
    /// every write before it: the newest written version of each op is now durable.
    fn flushed(&mut self) {
        let written = std::mem::take(&mut self.written);
        for (op, mut versions) in written {
            if let Some(newest) = versions.pop() {
                self.ack(op, newest);
            }
        }
    }

    fn was_written(&self, op: u64, bytes: &[u8]) -> bool {
        self.written
            .get(&op)
            .is_some_and(|v| v.iter().any(|w| w == bytes))
    }
}

#[derive(Default, Debug)]
struct SimStats {
    epochs: u64,
    crashes: u64,
    acks: u64,
    repairs: u64,
    flips: u64,
    flips_refused: u64,
    flips_cut_as_torn: u64,
    faults: u64,
    crashes_during_open: u64,
    crashes_mid_workload: u64,
    closes: u64,
}

/// Polls all futures until done (a tiny join, deterministic order).
async fn join_all(mut futures: Vec<BoxFuture<'_>>) {
    std::future::poll_fn(move |cx: &mut Context<'_>| {
        futures.retain_mut(|f| f.as_mut().poll(cx).is_pending());
        if futures.is_empty() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await
}

/// Polls `future` at most `budget` times; `None` when the budget ran out first (the crash point).
async fn with_budget<F: Future>(future: F, mut budget: u64) -> Option<F::Output> {
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

fn config_for(rng: &mut SmallRng) -> JournalConfig {
    let slot_count = [16u64, 64, 128][rng.gen_range(0..3)];
    JournalConfig {
        slot_count,
        segment_bytes: [1024u64, 2048, 4096][rng.gen_range(0..3)],
        max_batch_bytes: [512usize, 1024, 4096][rng.gen_range(0..3)],
        max_inflight_bytes: [1024usize, 4096, 1 << 20][rng.gen_range(0..3)],
        max_payload_bytes: 256,
        preallocate: rng.gen_bool(0.5),
        sync_on_append: rng.gen_bool(0.8),
        // Windows smaller than a segment in a third of the configurations (no RNG draw, so
        // seeds replay as before): the scan's window refills, zero checks and look-ahead.
        scan_window_bytes: if slot_count == 64 { 512 } else { 1 << 20 },
    }
}

fn random_payload(rng: &mut SmallRng) -> Vec<u8> {
    let len = rng.gen_range(0..=200usize);
    (0..len).map(|_| rng.gen()).collect()
}

/// One epoch of work: phases of concurrent appends and single control operations.
async fn workload(
    j: &Journal,
    model: &RefCell<Model>,
    rng: &RefCell<SmallRng>,
    config: &JournalConfig,
) {
    let phases = rng.borrow_mut().gen_range(1..12);
    for _ in 0..phases {
        if model.borrow().poisoned {
            return;
        }
        let choice = rng.borrow_mut().gen_range(0..100);
        let snapshot = model.borrow().snapshot_op;
        let top = model
            .borrow()
            .durable
            .keys()
            .next_back()
            .copied()
            .unwrap_or(snapshot)
            .max(snapshot);
        match choice {
            0..=69 => {
                // A burst of distinct ops (some rewrites, out of order, with gaps).
                let n = rng.borrow_mut().gen_range(1..=10);
                let mut ops = BTreeSet::new();
                for _ in 0..n {
                    ops.insert(snapshot + 1 + rng.borrow_mut().gen_range(0..config.slot_count));
                }
                let mut futures: Vec<BoxFuture<'_>> = Vec::new();
                for op in ops {
                    let bytes = random_payload(&mut rng.borrow_mut());
                    model.borrow_mut().pending.insert(op, bytes.clone());
                    futures.push(Box::pin(async move {
                        trace!("append {op} ({} bytes)", bytes.len());
                        let result = j.append(op, &bytes).await;
                        trace!("append {op} -> {result:?}");
                        match result {
                            Ok(()) if config.sync_on_append => model.borrow_mut().ack(op, bytes),
                            Ok(()) => {
                                let mut m = model.borrow_mut();
                                m.pending.remove(&op);
                                m.written.entry(op).or_default().push(bytes);
                            }
                            Err(JournalError::Io { .. } | JournalError::Poisoned(_)) => {
                                model.borrow_mut().poisoned = true;
                            }
                            Err(e) => panic!("unexpected append error: {e}"),
                        }
                    }));
                }
                join_all(futures).await;
                if !config.sync_on_append && rng.borrow_mut().gen_bool(0.5) {
                    flush(j, model).await;
                }
            }
            70..=77 => {
                let t = rng.borrow_mut().gen_range(snapshot..=top);
                model.borrow_mut().pending_truncate = Some(t);
                trace!("truncate_after {t}");
                match j.truncate_after(t).await {
                    Ok(()) => {
                        let mut m = model.borrow_mut();
                        m.pending_truncate = None;
                        m.durable.retain(|&op, _| op <= t);
                        m.written.retain(|&op, _| op <= t);
                        m.pending.retain(|&op, _| op <= t);
                        // A truncate's fsync covers every write before it.
                        m.flushed();
                    }
                    Err(_) => model.borrow_mut().poisoned = true,
                }
            }
            78..=85 => {
                if top <= snapshot {
                    continue;
                }
                let s = rng.borrow_mut().gen_range(snapshot + 1..=top);
                model.borrow_mut().pending_snapshot = Some(s);
                trace!("set_snapshot_op {s}");
                match j.set_snapshot_op(s).await {
                    Ok(()) => {
                        let mut m = model.borrow_mut();
                        m.pending_snapshot = None;
                        m.flushed();
                        m.snapshot_op = s;
                        m.durable.retain(|&op, _| op > s);
                        m.pending.retain(|&op, _| op > s);
                    }
                    Err(_) => model.borrow_mut().poisoned = true,
                }
            }
            86..=93 => {
                trace!("compact");
                let result = j.compact().await;
                trace!("compact -> {result:?}");
                match result {
                    Ok(_) => model.borrow_mut().flushed(),
                    Err(_) => model.borrow_mut().poisoned = true,
                }
            }
            _ => {
                let c = top;
                j.set_commit_op(c);
                match j.persist_commit().await {
                    Ok(()) => {
                        let mut m = model.borrow_mut();
                        m.commit_op = m.commit_op.max(c);
                        m.flushed();
                    }
                    Err(_) => model.borrow_mut().poisoned = true,
                }
            }
        }
    }
    if !config.sync_on_append {
        flush(j, model).await;
    }
}

async fn flush(j: &Journal, model: &RefCell<Model>) {
    match j.flush().await {
        Ok(()) => model.borrow_mut().flushed(),
        Err(_) => model.borrow_mut().poisoned = true,
    }
}

/// Checks the reopened journal against the model; returns a description of the first violation.
async fn check(j: &Journal, model: &RefCell<Model>) -> Result<(), String> {
    let live: BTreeMap<u64, Vec<u8>> = read_all(j).await.into_iter().collect();
    let model = model.borrow();
    let snapshot = j.snapshot_op();
    let allowed_snapshots = [Some(model.snapshot_op), model.pending_snapshot];
    if !allowed_snapshots.contains(&Some(snapshot)) {
        return Err(format!(
            "snapshot_op {snapshot}, acknowledged {} pending {:?}",
            model.snapshot_op, model.pending_snapshot
        ));
    }
    if j.commit_op().unwrap_or(0) < model.commit_op {
        return Err(format!(
            "commit_op {:?} below acknowledged {}",
            j.commit_op(),
            model.commit_op
        ));
    }
    for (op, bytes) in &live {
        if *op <= snapshot {
            return Err(format!("op {op} at or below snapshot {snapshot} is live"));
        }
        let known = model.durable.get(op) == Some(bytes)
            || model.pending.get(op) == Some(bytes)
            || model.was_written(*op, bytes);
        if !known {
            return Err(format!("op {op} has bytes nobody acknowledged or issued"));
        }
    }
    for (op, bytes) in &model.durable {
        if *op <= snapshot {
            continue;
        }
        match live.get(op) {
            Some(found) if found == bytes => {}
            Some(found) if model.pending.get(op) == Some(found) => {}
            Some(found) if model.was_written(*op, found) => {}
            None if model.pending_truncate.is_some_and(|t| t < *op) => {}
            other => {
                return Err(format!(
                    "acknowledged op {op} ({} bytes) is {}",
                    bytes.len(),
                    if other.is_some() {
                        "changed"
                    } else {
                        "missing"
                    }
                ))
            }
        }
    }
    Ok(())
}

/// After a successful check the recovered journal is the new truth.
fn settle(model: &mut Model, j: &Journal, live: BTreeMap<u64, Vec<u8>>) {
    model.durable = live;
    model.snapshot_op = j.snapshot_op();
    model.commit_op = j.commit_op().unwrap_or(0);
    model.pending.clear();
    model.written.clear();
    model.pending_truncate = None;
    model.pending_snapshot = None;
    model.poisoned = false;
}

/// After a refusal, a point-in-time open must cut, and every acknowledged op it loses must be in
/// its `lost_ops` (or be the op of the one damaged entry, when its header was unreadable).
async fn point_in_time_accounts_for_losses(
    fs: &MemFs,
    config: &JournalConfig,
    model: &RefCell<Model>,
) -> Result<(), String> {
    let (j, report) =
        match MetadataJournal::open(&fs.root(), config.clone(), RecoveryMode::PointInTime).await {
            Ok(opened) => opened,
            // A newer-version header (a flipped version field) is refused in every mode.
            Err(JournalError::Corrupt {
                kind: "unknown_version",
                ..
            }) => return Ok(()),
            Err(e) => return Err(format!("point-in-time open failed: {e}")),
        };
    let live: BTreeMap<u64, Vec<u8>> = read_all(&j).await.into_iter().collect();
    let snapshot = j.snapshot_op();
    let model = model.borrow();
    let unexplained: Vec<u64> = model
        .durable
        .keys()
        .filter(|op| **op > snapshot && !live.contains_key(op))
        .filter(|op| !report.lost_ops.iter().any(|r| r.contains(op)))
        .filter(|op| model.pending_truncate.is_none_or(|t| **op <= t))
        .copied()
        .collect();
    let header_unreadable = report.problems.first().is_some_and(|p| p.op.is_none());
    if unexplained.len() > usize::from(header_unreadable) {
        return Err(format!(
            "point-in-time lost acknowledged ops {unexplained:?} without reporting them: {report:?}"
        ));
    }
    Ok(())
}

async fn run_seed(seed: u64) -> Result<SimStats, String> {
    let fs = MemFs::new(seed);
    let rng = RefCell::new(SmallRng::seed_from_u64(seed));
    let config = config_for(&mut rng.borrow_mut());
    let model = RefCell::new(Model::default());
    let mut stats = SimStats::default();
    let epochs = rng.borrow_mut().gen_range(2..8);
    for _ in 0..epochs {
        stats.epochs += 1;
        // Open (maybe crashing in the middle of the open's own repair first).
        if rng.borrow_mut().gen_bool(0.15) {
            let budget = rng.borrow_mut().gen_range(0..40);
            let opened = with_budget(
                MetadataJournal::open(&fs.root(), config.clone(), RecoveryMode::TolerateTornTail),
                budget,
            )
            .await;
            if opened.is_none() {
                stats.crashes_during_open += 1;
                fs.crash();
            }
        }
        let (j, report) =
            MetadataJournal::open(&fs.root(), config.clone(), RecoveryMode::TolerateTornTail)
                .await
                .map_err(|e| format!("open refused an undamaged journal: {e}"))?;
        stats.repairs += report.repairs.len() as u64;
        trace!("open: {report:?}");
        check(&j, &model).await?;
        let live: BTreeMap<u64, Vec<u8>> = read_all(&j).await.into_iter().collect();
        settle(&mut model.borrow_mut(), &j, live);

        // Work, with faults sometimes, until done or the crash point.
        let faults = rng.borrow_mut().gen_bool(0.1);
        if faults {
            stats.faults += 1;
            let ops = [
                FaultOp::Write,
                FaultOp::Sync,
                FaultOp::DirSync,
                FaultOp::Rename,
                FaultOp::Remove,
                FaultOp::Open,
                FaultOp::Truncate,
                FaultOp::Read,
            ];
            let op = ops[rng.borrow_mut().gen_range(0..ops.len())];
            fs.set_faults(FaultConfig::new().fail_with_probability(op, 0.05, FaultKind::Io));
        }
        let budget = rng.borrow_mut().gen_range(1..250);
        if with_budget(workload(&j, &model, &rng, &config), budget)
            .await
            .is_none()
        {
            stats.crashes_mid_workload += 1;
        } else if !model.borrow().poisoned && rng.borrow_mut().gen_bool(0.3) {
            // A clean shutdown: close flushes and writes the marker vouching for the last batch.
            stats.closes += 1;
            let closed = j.close().await;
            trace!("close -> {closed:?}");
            match closed {
                Ok(()) => model.borrow_mut().flushed(),
                Err(_) => model.borrow_mut().poisoned = true,
            }
        } else {
            drop(j);
        }
        stats.acks += model.borrow().acks;
        model.borrow_mut().acks = 0;
        fs.clear_faults();
        let crash = fs.crash();
        trace!("crash: {crash:?}");
        stats.crashes += 1;

        // Media corruption sometimes: one bit somewhere in a segment.
        if rng.borrow_mut().gen_bool(0.08) {
            let paths = segment_paths(&fs).await;
            if !paths.is_empty() {
                let path = paths[rng.borrow_mut().gen_range(0..paths.len())].clone();
                if let Ok(Some((offset, _))) = fs.flip_random_bit(&path) {
                    stats.flips += 1;
                    match MetadataJournal::open(
                        &fs.root(),
                        config.clone(),
                        RecoveryMode::TolerateTornTail,
                    )
                    .await
                    {
                        Err(JournalError::Corrupt { .. }) => {
                            stats.flips_refused += 1;
                            point_in_time_accounts_for_losses(&fs, &config, &model).await?;
                            return Ok(stats);
                        }
                        Err(e) => return Err(format!("bit flip gave an untyped refusal: {e}")),
                        Ok((j, report)) => {
                            if let Err(violation) = check(&j, &model).await {
                                // Only acceptable when the flip sat in bytes the open cut as a torn
                                // tail and reported (the last batch: nothing after it vouches).
                                let file = path.trim_start_matches("journal/");
                                let cut = report
                                    .repairs
                                    .iter()
                                    .any(|r| r.file == file && r.offset_bytes <= offset);
                                let later_segment_cut =
                                    report.repairs.iter().any(|r| r.file.as_str() < file);
                                if !(cut || later_segment_cut) {
                                    return Err(format!(
                                        "bit flip in {path} at {offset} silently accepted: {violation}; {report:?}"
                                    ));
                                }
                                stats.flips_cut_as_torn += 1;
                            }
                            let live: BTreeMap<u64, Vec<u8>> =
                                read_all(&j).await.into_iter().collect();
                            settle(&mut model.borrow_mut(), &j, live);
                        }
                    }
                }
            }
        }
    }
    // Final reopen and check.
    let (j, _) = MetadataJournal::open(&fs.root(), config.clone(), RecoveryMode::TolerateTornTail)
        .await
        .map_err(|e| format!("final open: {e}"))?;
    check(&j, &model).await?;
    Ok(stats)
}

#[test]
fn simulator() {
    let seeds: Vec<u64> = match std::env::var("KEEL_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("KEEL_SIM_SEED must be a number")],
        Err(_) => {
            let n: u64 = std::env::var("KEEL_SIM_SEEDS")
                .ok()
                .map(|s| s.parse().expect("KEEL_SIM_SEEDS must be a number"))
                .unwrap_or(2000);
            (0..n).collect()
        }
    };
    let mut total = SimStats::default();
    let started = std::time::Instant::now();
    for &seed in &seeds {
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| common::run(run_seed(seed))));
        match result {
            Ok(Ok(stats)) => {
                total.epochs += stats.epochs;
                total.crashes += stats.crashes;
                total.acks += stats.acks;
                total.repairs += stats.repairs;
                total.flips += stats.flips;
                total.flips_refused += stats.flips_refused;
                total.flips_cut_as_torn += stats.flips_cut_as_torn;
                total.faults += stats.faults;
                total.crashes_during_open += stats.crashes_during_open;
                total.crashes_mid_workload += stats.crashes_mid_workload;
                total.closes += stats.closes;
            }
            Ok(Err(violation)) => {
                panic!("simulator seed {seed} failed: {violation}\nreplay: KEEL_SIM_SEED={seed} cargo test -p keel-journal --test sim")
            }
            Err(_) => {
                panic!("simulator seed {seed} panicked (see above)\nreplay: KEEL_SIM_SEED={seed} cargo test -p keel-journal --test sim")
            }
        }
    }
    eprintln!(
        "simulator: {} seeds in {:?}: {total:?}",
        seeds.len(),
        started.elapsed()
    );
    assert!(total.acks > 0, "the workload must acknowledge something");
}
