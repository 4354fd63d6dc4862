//! The engine-level simulator: random prepares, commits, checkpoints, truncations, crashes and
//! I/O faults on MemFs, checked against a model after every recovery:
//! - no op the engine acknowledged as durably committed is lost (recovered applied op >= every
//!   durable commit watermark the engine claimed), and nothing above an issued commit is applied;
//! - the recovered state equals the model's state at the recovered op;
//! - every acknowledged prepare above it comes back with its bytes, and no prepare is invented;
//! - a damaged snapshot is either recovered from (fallback) or refused as corruption.
//!
//! `KEEL_ENGINE_SIM_SEEDS=N` runs seeds `0..N` (default 1000; `KEEL_ENGINE_SIM_FIRST_SEED=F`
//! shifts them to `F..F+N`); `KEEL_ENGINE_SIM_SEED=S` replays seed `S` alone
//! (`KEEL_ENGINE_SIM_TRACE=1` prints every step); a failing seed is printed.

mod common;

use std::collections::BTreeMap;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

use common::{join2, join_all, random_payload, small_config};
use keel_engine::{
    Engine, EngineConfig, EngineError, JournalError, KvStateMachine, RecoveryStatus, StateMachine,
};
use keel_storage::{Directory, FaultConfig, FaultKind, FaultOp, MemDirectory, MemFs};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

const DEFAULT_SEEDS: u64 = 1000;
const STEPS_PER_SEED: u32 = 250;

type KvEngine = Engine<MemDirectory, KvStateMachine>;

/// What happened across seeds, printed at the end so a reader can see the simulator bites.
#[derive(Default, Debug)]
struct Tally {
    appends: u64,
    commits: u64,
    checkpoints: u64,
    truncations: u64,
    crashes: u64,
    fault_errors: u64,
    back_pressure: u64,
    snapshots_damaged: u64,
    damaged_refused: u64,
    damaged_recovered: u64,
    faulty_recoveries: u64,
    recovered_prepares: u64,
}

/// What the engine acknowledged.
#[derive(Default)]
struct Model {
    /// Payloads of committed ops 1..=commit (index op - 1).
    committed: Vec<Vec<u8>>,
    /// Highest durable commit the engine claimed: recovery must reach at least this op.
    durable_commit: u64,
    /// Acknowledged prepares above `committed`.
    prepared: BTreeMap<u64, Vec<u8>>,
    /// Every payload attempted for an op above the commit since its last truncation (a failed
    /// prepare may or may not be on disk).
    attempted: BTreeMap<u64, Vec<Vec<u8>>>,
}

impl Model {
    fn commit_op(&self) -> u64 {
        self.committed.len() as u64
    }

    fn state_through(&self, op: u64) -> KvStateMachine {
        let mut kv = KvStateMachine::new();
        for (i, p) in self.committed[..op as usize].iter().enumerate() {
            let _ = kv.apply(i as u64 + 1, p);
        }
        kv
    }

    /// The highest op that `commit` may name now (contiguous acknowledged prepares).
    fn max_committable(&self) -> u64 {
        let mut op = self.commit_op();
        while self.prepared.contains_key(&(op + 1)) {
            op += 1;
        }
        op
    }

    fn next_op(&self) -> u64 {
        self.prepared
            .keys()
            .next_back()
            .copied()
            .unwrap_or(0)
            .max(self.commit_op())
            + 1
    }
}

fn sim_config(rng: &mut StdRng) -> EngineConfig {
    let mut config = small_config();
    config.journal.slot_count = *[32u64, 64, 128].choose(rng).unwrap();
    config.journal.segment_bytes = *[2048u64, 4096, 16384].choose(rng).unwrap();
    config.journal_covers_previous_snapshot = rng.gen_bool(0.5);
    config.checkpoint_margin_ops = if rng.gen_bool(0.5) {
        0
    } else {
        rng.gen_range(4..=config.journal.slot_count / 2)
    };
    config
}

fn fault_config(rng: &mut StdRng) -> Option<FaultConfig> {
    if !rng.gen_bool(0.3) {
        return None;
    }
    let mut faults = FaultConfig::new();
    let ops = [
        FaultOp::Write,
        FaultOp::Sync,
        FaultOp::DirSync,
        FaultOp::Rename,
        FaultOp::Truncate,
    ];
    for _ in 0..rng.gen_range(1..=2) {
        let op = *ops.choose(rng).unwrap();
        let kind = if op == FaultOp::Write && rng.gen_bool(0.3) {
            FaultKind::ShortWrite
        } else {
            FaultKind::Io
        };
        faults = faults.fail_with_probability(op, rng.gen_range(0.002..0.03), kind);
    }
    Some(faults)
}

fn is_back_pressure(error: &EngineError) -> bool {
    matches!(error, EngineError::Journal(JournalError::Full { .. }))
}

/// Recovers and checks the model; returns the engine, or `None` when a damaged snapshot was
/// (correctly) refused and the seed cannot go on.
async fn reopen(
    fs: &MemFs,
    config: &EngineConfig,
    model: &mut Model,
    seed: u64,
    snapshot_damaged: bool,
    fallback_spent: bool,
) -> Option<KvEngine> {
    let (engine, report) =
        match Engine::open(fs.root(), config.clone(), KvStateMachine::new()).await {
            Ok(opened) => opened,
            // Refusing is right only when the journal was allowed to forget the fallback's gap,
            // or the fallback was already used up by an earlier damaged snapshot with no
            // checkpoint since.
            Err(error)
                if snapshot_damaged
                    && (!config.journal_covers_previous_snapshot || fallback_spent)
                    && error.is_corruption() =>
            {
                return None
            }
            Err(error) => panic!("seed {seed}: recovery failed: {error}"),
        };
    let applied = report.applied_op;
    assert_eq!(applied, engine.applied_op());
    assert!(
        applied >= model.durable_commit,
        "seed {seed}: acknowledged commit lost: recovered {applied}, durable {} ({report:?})",
        model.durable_commit
    );
    assert!(
        applied <= model.commit_op(),
        "seed {seed}: applied {applied} beyond the issued commit {}",
        model.commit_op()
    );
    assert_eq!(
        engine.state_machine().digest(),
        model.state_through(applied).digest(),
        "seed {seed}: state differs at op {applied}"
    );
    // Committed ops above the recovered watermark and acknowledged prepares come back prepared.
    let mut expected_prepared: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    for op in applied + 1..=model.commit_op() {
        expected_prepared.insert(op, model.committed[op as usize - 1].clone());
    }
    expected_prepared.extend(model.prepared.iter().map(|(k, v)| (*k, v.clone())));
    for (op, payload) in &expected_prepared {
        let got = engine.prepared_payload(*op);
        assert_eq!(
            got.as_deref(),
            Some(payload.as_slice()),
            "seed {seed}: acknowledged prepare {op} lost or changed"
        );
    }
    let mut recovered_prepared = BTreeMap::new();
    for op in engine.prepared_ops() {
        let payload = engine.prepared_payload(op).unwrap().to_vec();
        let known = expected_prepared.get(&op) == Some(&payload)
            || model
                .attempted
                .get(&op)
                .is_some_and(|versions| versions.contains(&payload));
        assert!(
            known,
            "seed {seed}: recovered prepare {op} was never written"
        );
        recovered_prepared.insert(op, payload);
    }
    // Adopt what recovery established.
    model.committed.truncate(applied as usize);
    model.durable_commit = applied;
    model.attempted.retain(|op, _| *op > applied);
    for (op, payload) in &recovered_prepared {
        let versions = model.attempted.entry(*op).or_default();
        if !versions.contains(payload) {
            versions.push(payload.clone());
        }
    }
    model.prepared = recovered_prepared;
    Some(engine)
}

async fn run_seed(seed: u64, tally: &mut Tally) {
    let mut rng = StdRng::seed_from_u64(seed);
    let fs = MemFs::new(seed);
    let config = sim_config(&mut rng);
    let faults = fault_config(&mut rng);
    let mut model = Model::default();
    let mut engine = reopen(&fs, &config, &mut model, seed, false, false)
        .await
        .unwrap();
    let mut fallback_used_at: Option<u64> = None;
    if let Some(f) = &faults {
        fs.set_faults(f.clone());
    }
    let trace = std::env::var_os("KEEL_ENGINE_SIM_TRACE").is_some();
    for step in 0..STEPS_PER_SEED {
        let roll = rng.gen_range(0..100);
        if trace {
            eprintln!(
                "step {step} roll {roll}: commit {} durable {} prepared {:?}",
                model.commit_op(),
                model.durable_commit,
                model.prepared.keys().collect::<Vec<_>>()
            );
        }
        // Any error other than back-pressure is treated as the process dying at that point.
        let mut failed = false;
        let mut crash = false;
        if roll < 40 {
            let count = rng.gen_range(1..=4u64);
            let first = model.next_op();
            let mut ops: Vec<u64> = (first..first + count).collect();
            ops.shuffle(&mut rng);
            let payloads: Vec<Vec<u8>> = ops.iter().map(|_| random_payload(&mut rng)).collect();
            for (op, p) in ops.iter().zip(&payloads) {
                model.attempted.entry(*op).or_default().push(p.clone());
            }
            // Sometimes a checkpoint runs while the prepares are in flight (as on a shard).
            let with_checkpoint = rng.gen_bool(0.15);
            let appends = join_all(
                ops.iter()
                    .zip(&payloads)
                    .map(|(op, p)| engine.append(*op, p))
                    .collect(),
            );
            let checkpoint = async {
                if with_checkpoint {
                    Some(engine.checkpoint().await)
                } else {
                    None
                }
            };
            let (results, checkpointed) = join2(appends, checkpoint).await;
            if trace {
                eprintln!("  append {ops:?} -> {results:?} (checkpoint: {checkpointed:?})");
            }
            match checkpointed {
                Some(Ok(Some(_))) => tally.checkpoints += 1,
                Some(Ok(None)) | None => {}
                Some(Err(_)) => failed = true,
            }
            for ((op, p), result) in ops.iter().zip(payloads).zip(results) {
                match result {
                    Ok(()) => {
                        tally.appends += 1;
                        model.prepared.insert(*op, p);
                    }
                    Err(e) if is_back_pressure(&e) => {
                        tally.back_pressure += 1;
                        model.attempted.get_mut(op).unwrap().pop();
                    }
                    Err(_) => failed = true,
                }
            }
        } else if roll < 65 {
            let max = model.max_committable();
            if max > model.commit_op() {
                let target = rng.gen_range(model.commit_op() + 1..=max);
                if trace {
                    eprintln!("  commit {target}");
                }
                let checkpoint_failures = engine.stats().checkpoint_failures;
                match engine.commit(target).await {
                    Ok(()) => tally.commits += 1,
                    Err(e) => panic!("seed {seed}: commit {target}: {e}"),
                }
                // The commit applied, but its automatic checkpoint failed (logged, counted): the
                // journal may be poisoned, so the process "dies" here.
                failed = engine.stats().checkpoint_failures > checkpoint_failures;
                if engine.applied_op() >= target {
                    for op in model.commit_op() + 1..=target {
                        let p = model.prepared.remove(&op).unwrap();
                        model.attempted.remove(&op);
                        model.committed.push(p);
                    }
                } else {
                    panic!("seed {seed}: commit {target} did not apply");
                }
            }
        } else if roll < 72 {
            if engine.persist_commit().await.is_err() {
                failed = true;
            }
        } else if roll < 82 {
            let result = engine.checkpoint().await;
            if trace {
                eprintln!("  checkpoint -> {result:?}");
            }
            match result {
                Ok(Some(_)) => tally.checkpoints += 1,
                Ok(None) => {}
                Err(_) => failed = true,
            }
        } else if roll < 86 {
            let last = model.next_op() - 1;
            if last > model.commit_op() {
                let keep = rng.gen_range(model.commit_op()..last);
                if trace {
                    eprintln!("  truncate_after {keep}");
                }
                if engine.truncate_after(keep).await.is_err() {
                    // Unknown whether the marker is durable: the prepares above `keep` may come
                    // back or not (they stay in `attempted`, so either is accepted).
                    model.prepared.split_off(&(keep + 1));
                    failed = true;
                } else {
                    tally.truncations += 1;
                    model.prepared.split_off(&(keep + 1));
                    model.attempted.split_off(&(keep + 1));
                }
            }
        } else if roll < 90 {
            crash = true;
        }
        model.durable_commit = model.durable_commit.max(engine.durable_commit_op());
        if fallback_used_at.is_some_and(|op| engine.snapshot_op() > op) {
            fallback_used_at = None; // a new snapshot: the journal covers a fallback again
        }
        if failed || crash {
            if trace {
                eprintln!("  crash (failed: {failed})");
            }
            tally.crashes += 1;
            tally.fault_errors += u64::from(failed);
            drop(engine);
            fs.crash();
            fs.clear_faults();
            let mut damaged = false;
            if crash && rng.gen_bool(0.15) {
                damaged = damage_newest_snapshot(&fs, &mut rng).await;
                if trace {
                    eprintln!("  damaged newest snapshot: {damaged}");
                }
                tally.snapshots_damaged += u64::from(damaged);
            }
            if let Some(f) = faults.as_ref().filter(|_| rng.gen_bool(0.3)) {
                // A recovery that itself hits I/O errors must fail cleanly (an error, never
                // corruption it invented) or succeed; either way the next one finds everything.
                fs.set_faults(f.clone());
                match Engine::open(fs.root(), config.clone(), KvStateMachine::new()).await {
                    Ok((faulty, _)) => drop(faulty),
                    Err(error) => {
                        tally.faulty_recoveries += 1;
                        assert!(
                            damaged || !error.is_corruption(),
                            "seed {seed}: an I/O fault in recovery reported as corruption: {error}"
                        );
                    }
                }
                fs.crash();
                fs.clear_faults();
            }
            let spent = fallback_used_at.is_some();
            engine = match reopen(&fs, &config, &mut model, seed, damaged, spent).await {
                Some(engine) => engine,
                None => {
                    tally.damaged_refused += 1;
                    return;
                }
            };
            tally.recovered_prepares += model.prepared.len() as u64;
            tally.damaged_recovered += u64::from(damaged);
            if damaged {
                fallback_used_at = Some(engine.snapshot_op());
            }
            if let Some(f) = &faults {
                fs.set_faults(f.clone());
            }
        }
    }
    // A clean close and reopen: everything committed survives and nothing needs repair.
    fs.clear_faults();
    if engine.persist_commit().await.is_ok() {
        model.durable_commit = model.durable_commit.max(engine.durable_commit_op());
        assert_eq!(engine.durable_commit_op(), model.commit_op(), "seed {seed}");
    }
    if let Err(error) = engine.close().await {
        // Poisoned by a fault in the last steps: the process dies instead of closing cleanly.
        if trace {
            eprintln!("  close failed ({error}): crash");
        }
        fs.crash();
        let engine = reopen(&fs, &config, &mut model, seed, false, true)
            .await
            .expect("no damage injected");
        engine.close().await.expect("close after recovery");
    }
    let commit = model.commit_op();
    let (engine, report) = Engine::open(fs.root(), config, KvStateMachine::new())
        .await
        .unwrap_or_else(|e| panic!("seed {seed}: reopen after close: {e}"));
    assert_eq!(
        report.status,
        RecoveryStatus::Clean,
        "seed {seed}: {report:?}"
    );
    assert_eq!(report.applied_op, commit, "seed {seed}");
    assert_eq!(
        engine.state_machine().digest(),
        model.state_through(commit).digest(),
        "seed {seed}"
    );
}

/// Flips a random bit of the newest snapshot file, if there is one.
async fn damage_newest_snapshot(fs: &MemFs, rng: &mut StdRng) -> bool {
    let Ok(dir) = fs.root().open_dir("snapshots", false).await else {
        return false;
    };
    let names = dir.list().await.unwrap_or_default();
    let Some(newest) = names.iter().filter(|n| n.ends_with(".snap")).max() else {
        return false;
    };
    let path = format!("snapshots/{newest}");
    let len = fs.durable_bytes(&path).map(|b| b.len()).unwrap_or(0);
    if len == 0 {
        return false;
    }
    let offset = rng.gen_range(0..len) as u64;
    fs.flip_bit(&path, offset, rng.gen_range(0..8)).is_ok()
}

#[test]
fn engine_simulator() {
    let seeds: Vec<u64> = match std::env::var("KEEL_ENGINE_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("KEEL_ENGINE_SIM_SEED must be a number")],
        Err(_) => {
            let n = std::env::var("KEEL_ENGINE_SIM_SEEDS")
                .ok()
                .map(|s| s.parse().expect("KEEL_ENGINE_SIM_SEEDS must be a number"))
                .unwrap_or(DEFAULT_SEEDS);
            let first = std::env::var("KEEL_ENGINE_SIM_FIRST_SEED")
                .ok()
                .map(|s| {
                    s.parse()
                        .expect("KEEL_ENGINE_SIM_FIRST_SEED must be a number")
                })
                .unwrap_or(0u64);
            (first..first + n).collect()
        }
    };
    let runtime = compio::runtime::Runtime::new().unwrap();
    let started = std::time::Instant::now();
    let mut tally = Tally::default();
    for &seed in &seeds {
        let result = catch_unwind(AssertUnwindSafe(|| {
            runtime.block_on(run_seed(seed, &mut tally))
        }));
        if let Err(panic) = result {
            eprintln!(
                "engine simulator failed at seed {seed}; replay with KEEL_ENGINE_SIM_SEED={seed}"
            );
            resume_unwind(panic);
        }
    }
    eprintln!(
        "engine simulator: {} seeds in {:.1}s: {tally:?}",
        seeds.len(),
        started.elapsed().as_secs_f64()
    );
    // The run must have exercised what it claims to check.
    if seeds.len() >= 100 {
        assert!(tally.crashes > seeds.len() as u64, "{tally:?}");
        assert!(tally.checkpoints > 0 && tally.fault_errors > 0 && tally.truncations > 0);
        assert!(tally.snapshots_damaged > 0 && tally.recovered_prepares > 0);
        assert!(tally.damaged_recovered > 0 && tally.damaged_refused > 0);
        assert!(tally.faulty_recoveries > 0);
    }
}
