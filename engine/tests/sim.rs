//! The engine-level simulator: random prepares, commits, checkpoints, truncations and flushes on
//! MemFs, some of them dropped at a random await, with restarts of three kinds at random points (a
//! power cut; a process crash that leaves the page cache; a process crash, a restart, more steps
//! and then a power cut), I/O errors, no-space, short writes, misdirected and lost writes, checked
//! against a model after every recovery (the exact rule, with the journal's documented limit for
//! misdirected and lost writes, is in `sim_model`):
//! - no op the engine acknowledged as durably committed is lost (recovered applied op >= every
//!   durable commit watermark the engine claimed), and nothing above an issued commit is applied;
//! - the recovered state equals the model's state at the recovered op;
//! - every acknowledged prepare above it comes back with its bytes, and no prepare is invented;
//! - a damaged snapshot is either recovered from (fallback) or refused as corruption;
//! - a dropped future never costs another op: later calls succeed, or fail with an error an
//!   injected fault explains, or with the poisoning a dropped journal flusher causes (issue 15),
//!   after which the engine restarts and is checked.
//!
//! `KEEL_ENGINE_SIM_SEEDS=N` (or `KEEL_SIM_SEEDS`) runs seeds `0..N` (default 1000;
//! `KEEL_ENGINE_SIM_FIRST_SEED=F` or `KEEL_SIM_FIRST_SEED` shifts them to `F..F+N`);
//! `KEEL_ENGINE_SIM_SEED=S` (or `KEEL_SIM_SEED`) replays seed `S` alone
//! (`KEEL_ENGINE_SIM_TRACE=1` prints every step); a failing seed is printed.

mod common;
// Shared with the journal's simulator (poll budgets, restarts, write faults, the image diff).
#[path = "../../journal/tests/sim_faults/mod.rs"]
mod sim_faults;
mod sim_model;

use std::collections::BTreeMap;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

use common::{join2, join_all, random_payload, small_config};
use keel_engine::{
    Engine, EngineConfig, EngineError, JournalError, KvStateMachine, RecoveryStatus,
};
use keel_storage::{Directory, FaultConfig, FaultKind, FaultOp, MemDirectory, MemFs};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use sim_faults::{
    capture, damaged_entries, entries_behind_damaged_headers, error_fault_count, run_maybe_dropped,
    write_fault_count, FaultTotals, Image, Restart, WriteFaults,
};
use sim_model::{Model, Recovered};

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
    /// Journal segments made of recycled dead segments (preallocating seeds, behind each
    /// checkpoint's compaction).
    segments_recycled: u64,
    faults: FaultTotals,
}

fn sim_config(rng: &mut StdRng) -> EngineConfig {
    let mut config = small_config();
    config.journal.slot_count = *[32u64, 64, 128].choose(rng).unwrap();
    config.journal.segment_bytes = *[2048u64, 4096, 16384].choose(rng).unwrap();
    // Both durable write paths (no RNG draw, so seeds replay as before): write + fdatasync
    // with 16 KiB segments, write-through (O_DSYNC) writes otherwise.
    config.journal.write_through = config.journal.segment_bytes != 16384;
    // Aligned O_DIRECT group writes with 4 KiB segments (no RNG draw either).
    config.journal.direct_io = config.journal.segment_bytes == 4096;
    // Preallocated segments, spares and (behind each checkpoint's compaction) recycled segments
    // in a third of the seeds (no RNG draw).
    config.journal.preallocate = config.journal.slot_count == 128;
    config.journal_covers_previous_snapshot = rng.gen_bool(0.5);
    config.checkpoint_margin_ops = if rng.gen_bool(0.5) {
        0
    } else {
        rng.gen_range(4..=config.journal.slot_count / 2)
    };
    config
}

/// I/O errors, no-space or short writes on one or two kinds of operation, in 30% of the seeds.
fn error_faults(rng: &mut StdRng) -> Option<FaultConfig> {
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
        let kind = match rng.gen_range(0..10) {
            0..=2 if op == FaultOp::Write => FaultKind::ShortWrite,
            3 | 4 => FaultKind::NoSpace,
            _ => FaultKind::Io,
        };
        faults = faults.fail_with_probability(op, rng.gen_range(0.002..0.03), kind);
    }
    Some(faults)
}

fn is_back_pressure(error: &EngineError) -> bool {
    matches!(error, EngineError::Journal(JournalError::Full { .. }))
}

/// Compaction removing a segment it removed before (a dropped compaction once left it in the
/// journal's segment map: seed 65); `Sim::failed` asserts it never happens.
fn is_compaction_remove_not_found(error: &EngineError) -> bool {
    match error {
        EngineError::Journal(JournalError::Io { stage, source, .. }) => {
            *stage == "compaction remove" && source.kind() == std::io::ErrorKind::NotFound
        }
        _ => false,
    }
}

/// The operation running now, for its fault accounting when it ends.
struct Running {
    index: u64,
    write_faults: u64,
    image: Option<Image>,
}

/// One seed's simulator.
struct Sim<'a> {
    seed: u64,
    fs: &'a MemFs,
    config: &'a EngineConfig,
    rng: StdRng,
    faults: Option<FaultConfig>,
    write_faults: Option<WriteFaults>,
    model: Model,
    tally: &'a mut Tally,
    trace: bool,
    current: Option<Running>,
    /// Injected failures when the incarnation started: a call may fail only if there are more.
    errors_at_start: u64,
    /// A checkpoint (and so a compaction) future was dropped in this incarnation.
    checkpoint_dropped: bool,
    fallback_used_at: Option<u64>,
    /// Set by a process crash that a power cut must follow: the step it is due at.
    power_cut_due: Option<u32>,
    /// A power cut happened since the last recovery was checked.
    power_cut_since_check: bool,
}

/// What one step asks of the restart logic.
#[derive(Default)]
struct StepEnd {
    /// A call failed: the process "dies" here.
    failed: bool,
    /// The step was an explicit crash.
    crash: bool,
}

impl Sim<'_> {
    fn trace(&self, what: impl FnOnce() -> String) {
        if self.trace {
            eprintln!("  {}", what());
        }
    }

    fn maybe_budget(&mut self, share: f64, max: u64) -> Option<u64> {
        self.rng.gen_bool(share).then(|| self.rng.gen_range(0..max))
    }

    fn seed_has_write_faults(&self) -> bool {
        write_fault_count(self.fs) > 0
    }

    /// The faults of a working incarnation: error faults and write faults, as the seed has them.
    fn work_faults(&self) -> Option<FaultConfig> {
        match (&self.faults, &self.write_faults) {
            (None, None) => None,
            (faults, Some(write)) => Some(write.add_to(faults.clone().unwrap_or_default())),
            (Some(faults), None) => Some(faults.clone()),
        }
    }

    fn set_work_faults(&self) {
        if let Some(faults) = self.work_faults() {
            self.fs.set_faults(faults);
        }
    }

    async fn begin_operation(&mut self) {
        let image = match self.write_faults {
            Some(_) => Some(capture(self.fs).await),
            None => None,
        };
        let index = self.model.begin_operation();
        self.current = Some(Running {
            index,
            write_faults: write_fault_count(self.fs),
            image,
        });
    }

    /// Records whether a misdirected or lost write fired in the operation, and which journal
    /// entries a misdirected one overwrote.
    async fn end_operation(&mut self, snapshot_op: u64) {
        let Some(running) = self.current.take() else {
            return;
        };
        if write_fault_count(self.fs) == running.write_faults {
            return;
        }
        self.model.fault_in(running.index);
        // Entries whose bytes changed: a misdirected write landed on them, or a compaction
        // rewrote them with a write the fault hit.
        if let Some(image) = &running.image {
            let damage = damaged_entries(self.fs, image, &self.config.journal).await;
            self.trace(|| format!("write fault changed entries {:?}", damage.data));
            self.model.apply_damage(&damage, running.index, snapshot_op);
        }
    }

    fn dropped(&mut self, what: &str) {
        self.trace(|| format!("{what}: future dropped"));
        self.tally.faults.dropped_futures += 1;
    }

    /// A call failed: the process "dies" after this step. Allowed only when an injected fault
    /// explains it: a dropped future never poisons the journal (its writer task owns the I/O).
    fn failed(&mut self, what: &str, error: &EngineError) -> bool {
        self.trace(|| format!("{what} -> {error}"));
        assert!(
            !(self.checkpoint_dropped && is_compaction_remove_not_found(error)),
            "a compaction removed a segment again after a dropped one: {error}"
        );
        let injected = error_fault_count(self.fs) > self.errors_at_start;
        let corrupt_after_stray = error.is_corruption() && self.seed_has_write_faults();
        assert!(
            injected || corrupt_after_stray,
            "seed {}: {what} failed with no injected fault: {error}",
            self.seed
        );
        true
    }
}

impl Sim<'_> {
    /// Prepares a few new ops (and again any a dropped prepare left out), some dropped at a
    /// random await, sometimes with a checkpoint in flight (as on a shard).
    async fn append_step(&mut self, engine: &KvEngine) -> bool {
        let first = self.model.next_op();
        let count = self.rng.gen_range(1..=4u64);
        let mut ops: Vec<u64> = self.model.holes().into_iter().take(2).collect();
        ops.extend(first..first + count);
        ops.shuffle(&mut self.rng);
        let payloads: Vec<Vec<u8>> = ops.iter().map(|_| random_payload(&mut self.rng)).collect();
        for (op, p) in ops.iter().zip(&payloads) {
            self.model.attempt(*op, p);
        }
        let with_checkpoint = self.rng.gen_bool(0.15);
        let drops = self.rng.gen_bool(0.2);
        let budgets: Vec<Option<u64>> = ops
            .iter()
            .map(|_| {
                if drops {
                    self.maybe_budget(0.5, 12)
                } else {
                    None
                }
            })
            .collect();
        let checkpoint_budget = self.maybe_budget(0.15, 40);
        let appends = join_all(
            ops.iter()
                .zip(&payloads)
                .zip(&budgets)
                .map(|((op, p), budget)| run_maybe_dropped(engine.append(*op, p), *budget))
                .collect(),
        );
        let checkpoint = async {
            if with_checkpoint {
                Some(run_maybe_dropped(engine.checkpoint(), checkpoint_budget).await)
            } else {
                None
            }
        };
        let (results, checkpointed) = join2(appends, checkpoint).await;
        self.trace(|| format!("append {ops:?} -> {results:?} (checkpoint: {checkpointed:?})"));
        let mut failed = match checkpointed {
            Some(Some(Ok(report))) => {
                self.tally.checkpoints += u64::from(report.is_some());
                false
            }
            Some(None) => {
                self.dropped("checkpoint");
                self.checkpoint_dropped = true;
                false
            }
            Some(Some(Err(e))) => self.failed("checkpoint", &e),
            None => false,
        };
        for ((op, p), result) in ops.iter().zip(payloads).zip(results) {
            match result {
                Some(Ok(())) => {
                    self.tally.appends += 1;
                    self.model.prepared_ok(*op, p);
                }
                Some(Err(e)) if is_back_pressure(&e) => {
                    self.tally.back_pressure += 1;
                    self.model.refused(*op);
                }
                Some(Err(e)) => failed |= self.failed("append", &e),
                None => self.dropped("append"),
            }
        }
        failed
    }

    async fn commit_step(&mut self, engine: &KvEngine) -> bool {
        let max = self.model.max_committable();
        if max <= self.model.commit_op() {
            return false;
        }
        let target = self.rng.gen_range(self.model.commit_op() + 1..=max);
        let budget = self.maybe_budget(0.15, 30);
        self.trace(|| format!("commit {target} (budget {budget:?})"));
        let checkpoint_failures = engine.stats().checkpoint_failures;
        match run_maybe_dropped(engine.commit(target), budget).await {
            Some(Ok(())) => self.tally.commits += 1,
            Some(Err(e)) => panic!("seed {}: commit {target}: {e}", self.seed),
            // Applied in its first poll; the automatic checkpoint after it was dropped.
            None => {
                self.dropped("commit");
                self.checkpoint_dropped = true;
            }
        }
        assert!(
            engine.applied_op() >= target,
            "seed {}: commit {target} did not apply",
            self.seed
        );
        self.model.committed_through(target);
        // The commit applied, but its automatic checkpoint failed (logged, counted): the
        // journal may be poisoned, so the process "dies" here.
        engine.stats().checkpoint_failures > checkpoint_failures
    }

    async fn checkpoint_step(&mut self, engine: &KvEngine) -> bool {
        let budget = self.maybe_budget(0.15, 40);
        let result = run_maybe_dropped(engine.checkpoint(), budget).await;
        self.trace(|| format!("checkpoint (budget {budget:?}) -> {result:?}"));
        match result {
            Some(Ok(report)) => {
                self.tally.checkpoints += u64::from(report.is_some());
                false
            }
            Some(Err(e)) => self.failed("checkpoint", &e),
            None => {
                self.dropped("checkpoint");
                self.checkpoint_dropped = true;
                false
            }
        }
    }

    async fn truncate_step(&mut self, engine: &KvEngine) -> bool {
        let last = self.model.next_op() - 1;
        if last <= self.model.commit_op() {
            return false;
        }
        let keep = self.rng.gen_range(self.model.commit_op()..last);
        let budget = self.maybe_budget(0.15, 20);
        self.trace(|| format!("truncate_after {keep} (budget {budget:?})"));
        match run_maybe_dropped(engine.truncate_after(keep), budget).await {
            Some(Ok(())) => {
                self.tally.truncations += 1;
                self.model.truncated(keep);
                false
            }
            // Unknown whether the marker is durable: the prepares above `keep` may come back or
            // not (they stay attempted, so either is accepted).
            None => {
                self.dropped("truncate_after");
                self.model.truncate_unknown(keep);
                false
            }
            Some(Err(e)) => {
                self.model.truncate_unknown(keep);
                self.failed("truncate_after", &e)
            }
        }
    }

    /// `persist_commit` or `flush`, maybe dropped.
    async fn sync_step(&mut self, engine: &KvEngine, persist: bool) -> bool {
        let budget = self.maybe_budget(0.15, 20);
        let result = if persist {
            run_maybe_dropped(engine.persist_commit(), budget).await
        } else {
            run_maybe_dropped(engine.flush(), budget).await
        };
        let what = if persist { "persist_commit" } else { "flush" };
        self.trace(|| format!("{what} (budget {budget:?}) -> {result:?}"));
        match result {
            Some(Ok(())) => false,
            Some(Err(e)) => self.failed(what, &e),
            None => {
                self.dropped(what);
                false
            }
        }
    }

    /// One random step; reports whether the process dies after it.
    async fn step(&mut self, engine: &KvEngine, step: u32) -> StepEnd {
        let roll = self.rng.gen_range(0..100);
        self.trace(|| {
            format!(
                "step {step} roll {roll}: commit {} durable {} prepared {:?}",
                self.model.commit_op(),
                self.model.durable_commit,
                self.model.prepared.keys().collect::<Vec<_>>()
            )
        });
        self.begin_operation().await;
        let acked_before = self.tally.appends + self.tally.checkpoints + self.tally.truncations;
        let mut end = StepEnd::default();
        match roll {
            0..=39 => end.failed = self.append_step(engine).await,
            40..=64 => end.failed = self.commit_step(engine).await,
            65..=71 => end.failed = self.sync_step(engine, true).await,
            72..=81 => end.failed = self.checkpoint_step(engine).await,
            82..=85 => end.failed = self.truncate_step(engine).await,
            86..=89 => end.crash = true,
            90..=93 => end.failed = self.sync_step(engine, false).await,
            _ => {}
        }
        let acked = self.tally.appends + self.tally.checkpoints + self.tally.truncations;
        let durable = engine.durable_commit_op();
        if acked > acked_before || durable > self.model.durable_commit {
            self.model.acknowledging();
        }
        self.model.durable_is(durable);
        self.end_operation(engine.snapshot_op().unwrap_or(0)).await;
        if self
            .fallback_used_at
            .is_some_and(|op| engine.snapshot_op().unwrap_or(0) > op)
        {
            self.fallback_used_at = None; // a new snapshot: the journal covers a fallback again
        }
        end
    }
}

impl Sim<'_> {
    /// Recovers and checks the model; returns the engine, or `None` when recovery (correctly)
    /// refused as corruption and the seed cannot go on.
    async fn reopen(&mut self, snapshot_damaged: bool) -> Option<KvEngine> {
        let opened = Engine::open(self.fs.root(), self.config.clone(), KvStateMachine::new()).await;
        let (engine, report) = match opened {
            Ok(opened) => opened,
            // Refusing is right only when the journal was allowed to forget the fallback's gap,
            // or the fallback was already used up by an earlier damaged snapshot with no
            // checkpoint since; or after misdirected or lost writes.
            Err(error)
                if snapshot_damaged
                    && (!self.config.journal_covers_previous_snapshot
                        || self.fallback_used_at.is_some())
                    && error.is_corruption() =>
            {
                self.tally.damaged_refused += 1;
                self.tally.faults.refused_as_corruption += 1;
                return None;
            }
            Err(error) if self.seed_has_write_faults() && error.is_corruption() => {
                self.trace(|| format!("recovery refused after write faults: {error}"));
                self.tally.faults.refused_as_corruption += 1;
                return None;
            }
            Err(error) => panic!("seed {}: recovery failed: {error}", self.seed),
        };
        let applied = report.applied_op;
        assert_eq!(applied, engine.applied_op());
        let recovered = Recovered {
            snapshot_op: report.snapshot_op,
            applied,
            digest: engine.state_machine().digest(),
            prepared: engine
                .prepared_ops()
                .into_iter()
                .map(|op| (op, engine.prepared_payload(op).unwrap().to_vec()))
                .collect::<BTreeMap<_, _>>(),
        };
        let verdict = self
            .model
            .check(&recovered)
            .unwrap_or_else(|violation| panic!("seed {}: {violation} ({report:?})", self.seed));
        self.tally.faults.lost_under_limit += verdict.lost_under_limit;
        self.model
            .settle(&recovered, std::mem::take(&mut self.power_cut_since_check));
        self.tally.recovered_prepares += self.model.prepared.len() as u64;
        self.errors_at_start = error_fault_count(self.fs);
        self.checkpoint_dropped = false;
        Some(engine)
    }

    /// The process dies (`restart` says how). In seeds with misdirected or lost writes, the
    /// prepares behind a segment header a fault destroyed are noted first.
    async fn die(&mut self, restart: Restart) {
        if self.write_faults.is_some() {
            let behind = entries_behind_damaged_headers(self.fs).await;
            self.model.behind_damaged_header(&behind);
        }
        match restart {
            Restart::PowerCut => {
                self.fs.crash();
                self.power_cut_since_check = true;
            }
            Restart::ProcessCrash | Restart::ProcessCrashThenPowerCut => {
                self.fs.process_crash();
            }
        }
    }

    /// Ends the incarnation at `step` and recovers; `None` when the seed ends (a refusal).
    async fn restart(&mut self, engine: KvEngine, end: &StepEnd, step: u32) -> Option<KvEngine> {
        let restart = match self.power_cut_due.take() {
            // A process crash came before: whatever ended this incarnation, it is the power cut.
            Some(_) => {
                self.tally.faults.process_crash_then_power_cut += 1;
                Restart::PowerCut
            }
            None => Restart::choose(&mut self.rng),
        };
        if restart == Restart::ProcessCrashThenPowerCut {
            self.power_cut_due = Some(step + self.rng.gen_range(1..=20));
        }
        self.trace(|| format!("{restart:?} (failed: {})", end.failed));
        self.tally.crashes += 1;
        self.tally.fault_errors += u64::from(end.failed);
        self.tally.segments_recycled += engine.stats().segments_recycled;
        // Nothing of the dead process runs after the crash: its handles are stale by then.
        self.die(restart).await;
        drop(engine);
        self.fs.clear_faults();
        let mut damaged = false;
        if end.crash && restart == Restart::PowerCut && self.rng.gen_bool(0.15) {
            damaged = damage_newest_snapshot(self.fs, &mut self.rng).await;
            self.trace(|| format!("damaged newest snapshot: {damaged}"));
            self.tally.snapshots_damaged += u64::from(damaged);
        }
        if self.faults.is_some() && self.rng.gen_bool(0.3) {
            self.faulty_recovery(damaged, restart).await;
        }
        let engine = self.reopen(damaged).await?;
        self.tally.damaged_recovered += u64::from(damaged);
        if damaged {
            self.fallback_used_at = Some(engine.snapshot_op().unwrap_or(0));
        }
        self.set_work_faults();
        Some(engine)
    }

    /// A recovery that itself hits I/O errors must fail cleanly (an error, never corruption it
    /// invented) or succeed; either way the next one finds everything. It dies the same way.
    async fn faulty_recovery(&mut self, damaged: bool, restart: Restart) {
        self.fs
            .set_faults(self.faults.clone().expect("error faults"));
        match Engine::open(self.fs.root(), self.config.clone(), KvStateMachine::new()).await {
            Ok((faulty, _)) => drop(faulty),
            Err(error) => {
                self.tally.faulty_recoveries += 1;
                assert!(
                    damaged || self.seed_has_write_faults() || !error.is_corruption(),
                    "seed {}: an I/O fault in recovery reported as corruption: {error}",
                    self.seed
                );
            }
        }
        self.die(restart).await;
        self.fs.clear_faults();
    }
}

impl Sim<'_> {
    /// A clean close and reopen: everything committed survives and nothing needs repair (in
    /// seeds with misdirected or lost writes: recovery refuses, or passes the model check).
    async fn close_and_reopen(&mut self, engine: KvEngine) {
        let seed = self.seed;
        self.fs.clear_faults();
        if engine.persist_commit().await.is_ok() {
            self.model.durable_is(engine.durable_commit_op());
            assert_eq!(
                engine.durable_commit_op(),
                self.model.commit_op(),
                "seed {seed}"
            );
        }
        if let Err(error) = engine.close().await {
            // Poisoned by a fault in the last steps: the process dies instead of closing cleanly.
            self.trace(|| format!("close failed ({error}): crash"));
            self.die(Restart::PowerCut).await;
            let Some(engine) = self.reopen(false).await else {
                return;
            };
            self.fs.clear_faults();
            engine.close().await.expect("close after recovery");
        }
        if self.seed_has_write_faults() {
            if let Some(engine) = self.reopen(false).await {
                drop(engine);
            }
            return;
        }
        let commit = self.model.commit_op();
        let (engine, report) =
            Engine::open(self.fs.root(), self.config.clone(), KvStateMachine::new())
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
            self.model.state_through(commit).digest(),
            "seed {seed}"
        );
    }
}

async fn run_seed(seed: u64, tally: &mut Tally) {
    let mut rng = StdRng::seed_from_u64(seed);
    let fs = MemFs::new(seed);
    let config = sim_config(&mut rng);
    let faults = error_faults(&mut rng);
    let write_faults = WriteFaults::choose(&mut rng);
    let mut sim = Sim {
        seed,
        fs: &fs,
        config: &config,
        rng,
        faults,
        write_faults,
        model: Model::default(),
        tally,
        trace: std::env::var_os("KEEL_ENGINE_SIM_TRACE").is_some(),
        current: None,
        errors_at_start: 0,
        checkpoint_dropped: false,
        fallback_used_at: None,
        power_cut_due: None,
        power_cut_since_check: false,
    };
    let mut engine = sim.reopen(false).await.expect("an empty directory opens");
    sim.set_work_faults();
    for step in 0..STEPS_PER_SEED {
        let mut end = sim.step(&engine, step).await;
        end.crash |= sim.power_cut_due == Some(step);
        if end.failed || end.crash {
            engine = match sim.restart(engine, &end, step).await {
                Some(engine) => engine,
                None => {
                    sim.tally.faults.seeds += 1;
                    sim.tally.faults.add_fs(&fs);
                    return;
                }
            };
        }
    }
    sim.close_and_reopen(engine).await;
    sim.tally.faults.seeds += 1;
    sim.tally.faults.add_fs(&fs);
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
    let seeds = sim_faults::seeds_from_env(Some("KEEL_ENGINE_SIM"), DEFAULT_SEEDS);
    let runtime = compio::runtime::Runtime::new().unwrap();
    let started = std::time::Instant::now();
    let mut tally = Tally::default();
    for &seed in &seeds {
        sim_faults::running_seed(seed, "KEEL_ENGINE_SIM_SEED");
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
        "engine simulator: {} in {:.1}s; appends {}, commits {}, checkpoints {}, truncations {}, \
         restarts {} ({} after a failed call), back-pressure {}, snapshots damaged {} (refused {}, \
         recovered {}), faulty recoveries {}, recovered prepares {}, segments recycled {}",
        tally.faults,
        started.elapsed().as_secs_f64(),
        tally.appends,
        tally.commits,
        tally.checkpoints,
        tally.truncations,
        tally.crashes,
        tally.fault_errors,
        tally.back_pressure,
        tally.snapshots_damaged,
        tally.damaged_refused,
        tally.damaged_recovered,
        tally.faulty_recoveries,
        tally.recovered_prepares,
        tally.segments_recycled
    );
    // The run must have exercised what it claims to check.
    if seeds.len() >= 100 {
        assert!(tally.crashes > seeds.len() as u64, "{tally:?}");
        assert!(tally.checkpoints > 0 && tally.fault_errors > 0 && tally.truncations > 0);
        assert!(tally.snapshots_damaged > 0 && tally.recovered_prepares > 0);
        assert!(tally.damaged_recovered > 0 && tally.damaged_refused > 0);
        assert!(tally.faulty_recoveries > 0);
        assert!(
            tally.segments_recycled > 0,
            "no journal segment was recycled"
        );
        let f = &tally.faults;
        assert!(
            f.process_crash_then_power_cut > 0 && f.dropped_futures > 0 && f.direct_writes > 0,
            "{f}"
        );
    }
}
