//! One shard's driver: a task on the shard's own thread and compio runtime (a [`ShardSet`]
//! shard, [`ShardHandle::spawn_local`]), a loop that behaves like a consensus replica's —
//! pipelined prepares (appends) with up to `depth` in flight as tasks on the shard's runtime (so
//! they share group commits), commit and apply in op order as the durable prefix grows, a
//! checkpoint every `checkpoint_every` ops running beside the appends. Then it persists the
//! commit watermark; the shard is reopened (the set times the recovery) and the recovered state
//! machine is compared with the one before.
//!
//! The driver runs on the shard's thread rather than sending each op through a `ShardHandle`
//! request: a consensus loop in a thread-per-core design lives on its core, and a channel round
//! trip per op (two cross-thread wake-ups) would measure the channel, not the engine.
//! Measured once on the 2-core VM (one shard, 20,000 ops of 128 B, same pipeline both ways):
//! `--sync none` 240–320k ops/s driven locally against 8–12k through `ShardHandle`; `--sync batch`
//! 28–92k against 7–19k; `--sync every` is bound by the disk either way.
//!
//! Generic over the [`Directory`], so the same workload runs on `MemFs` in the tests.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use compio::runtime::JoinHandle;
use keel_engine::{
    block_on, CheckpointReport, Engine, EngineError, EngineStats, Histogram, KvStateMachine,
    RecoveryReport, ShardHandle, ShardSet, ShardTask,
};
use keel_storage::Directory;

use super::workload::{AckWriter, Workload};
use crate::cli::{signal, CliError};

type BenchEngine<D> = Engine<D, KvStateMachine>;
type AppendTask = JoinHandle<Result<u64, EngineError>>;
type CheckpointTask = JoinHandle<Result<Option<CheckpointReport>, EngineError>>;

/// What one shard runs.
pub struct ShardPlan {
    pub shard: usize,
    pub ops: u64,
    /// Appends in flight (1 for `--sync every`).
    pub depth: usize,
    /// `--sync none`: appends resolve before any fsync, so acks wait for the flush at the end.
    pub defer_acks: bool,
    /// 0: only the engine's automatic checkpoints.
    pub checkpoint_every: u64,
    pub workload: Workload,
    pub ack_file: Option<PathBuf>,
    /// Ops committed, summed over shards (the progress bar reads it).
    pub progress: Arc<AtomicU64>,
    /// Set by a shard that failed, so the others stop early.
    pub abort: Arc<AtomicBool>,
}

impl ShardPlan {
    fn stopping(&self) -> bool {
        signal::stop_requested() || self.abort.load(Ordering::Relaxed)
    }
}

/// What one shard measured.
pub struct ShardResult {
    pub shard: usize,
    pub ops: u64,
    pub started: Instant,
    pub finished: Instant,
    pub latency_us: Histogram,
    pub stats: EngineStats,
    pub recovery: Duration,
    pub report: RecoveryReport,
    pub digest: u64,
    pub verified: bool,
}

/// What a shard's run left before the reopen.
struct ShardRun {
    ops: u64,
    started: Instant,
    finished: Instant,
    latency_us: Histogram,
    stats: EngineStats,
    digest: u64,
    applied_op: u64,
}

/// Runs every plan on its shard of `set` at once (calling `tick` every 50 ms while they run),
/// then reopens each shard, timing its recovery, and compares the recovered state machine with
/// the one before.
pub fn run_on_set<D: Directory>(
    set: &ShardSet<KvStateMachine, D>,
    plans: Vec<ShardPlan>,
    abort: &AtomicBool,
    tick: &mut dyn FnMut(),
) -> Result<Vec<ShardResult>, CliError> {
    let handle = set.handle();
    let mut tasks = Vec::with_capacity(plans.len());
    for plan in plans {
        let shard = plan.shard;
        match block_on(handle.spawn_local(shard, move |engine| drive(plan, engine))) {
            Ok(task) => tasks.push((shard, task)),
            Err(error) => {
                abort.store(true, Ordering::Relaxed);
                return Err(shard_error(error));
            }
        }
    }
    while !tasks.iter().all(|(_, task)| task.is_finished()) {
        tick();
        std::thread::sleep(Duration::from_millis(50));
    }
    let runs = join_all(tasks)?;
    runs.into_iter()
        .map(|(shard, run)| recover_and_check(&handle, shard, run))
        .collect()
}

/// Every task's run, in shard order, or the first failure.
fn join_all(
    tasks: Vec<(usize, ShardTask<Result<ShardRun, CliError>>)>,
) -> Result<Vec<(usize, ShardRun)>, CliError> {
    let mut runs = Vec::with_capacity(tasks.len());
    let mut first_error = None;
    for (shard, task) in tasks {
        match task.wait() {
            Ok(Ok(run)) => runs.push((shard, run)),
            Ok(Err(error)) => {
                first_error.get_or_insert(CliError::in_shard(shard, error));
            }
            Err(error) => {
                first_error.get_or_insert(shard_error(error));
            }
        }
    }
    match first_error {
        Some(error) => Err(error),
        None => Ok(runs),
    }
}

/// A shard set's error as the bench reports it: the failing shard's own error inside
/// `shard N: …` (so its kind, path and exit code stay the cause's), a lost thread as
/// `ShardDied`.
pub fn shard_error(error: EngineError) -> CliError {
    match error {
        EngineError::ShardFailed { shard, source } => match Arc::try_unwrap(source) {
            Ok(cause) => CliError::in_shard(shard, cause.into()),
            Err(source) => {
                CliError::in_shard(shard, EngineError::ShardFailed { shard, source }.into())
            }
        },
        EngineError::ShardUnavailable { shard, reason } => CliError::ShardDied {
            shard,
            reason: reason.into(),
        },
        error => error.into(),
    }
}

/// Reopens `shard` (timed on its thread) and compares what it recovered with `run`'s state.
fn recover_and_check<D: Directory>(
    handle: &ShardHandle<KvStateMachine, D>,
    shard: usize,
    run: ShardRun,
) -> Result<ShardResult, CliError> {
    let reopened = block_on(handle.reopen(shard)).map_err(shard_error)?;
    let recovered = block_on(handle.run_local(shard, |engine| async move {
        (engine.state_machine().digest(), engine.applied_op())
    }))
    .map_err(shard_error)?;
    Ok(ShardResult {
        shard,
        ops: run.ops,
        started: run.started,
        finished: run.finished,
        latency_us: run.latency_us,
        stats: run.stats,
        recovery: reopened.open_duration,
        report: reopened.report,
        digest: run.digest,
        verified: recovered == (run.digest, run.applied_op),
    })
}

/// The shard's task: the pipeline, then the commit watermark and every write made durable.
async fn drive<D: Directory>(
    plan: ShardPlan,
    engine: Rc<BenchEngine<D>>,
) -> Result<ShardRun, CliError> {
    let result = drive_inner(&plan, &engine).await;
    if result.is_err() {
        plan.abort.store(true, Ordering::Relaxed);
    }
    result
}

async fn drive_inner<D: Directory>(
    plan: &ShardPlan,
    engine: &Rc<BenchEngine<D>>,
) -> Result<ShardRun, CliError> {
    // Ops above the commit watermark left by an earlier run are prepared again (a rewrite
    // supersedes them), as a new leader would.
    let first_op = engine.commit_op() + 1;
    let started = Instant::now();
    let mut run = Pipeline::new(plan)?.run(engine, first_op).await?;
    let finished = Instant::now();
    engine.persist_commit().await?;
    engine.flush().await?;
    if plan.defer_acks && run.ops > 0 {
        let ops: Vec<u64> = (first_op..first_op + run.ops).collect();
        run.acks.record(plan.shard, &ops)?;
    }
    let digest = engine.state_machine().digest();
    Ok(ShardRun {
        ops: run.ops,
        started,
        finished,
        latency_us: run.latency_us,
        stats: engine.stats(),
        digest,
        applied_op: engine.applied_op(),
    })
}

/// What the pipeline did.
struct RunResult {
    ops: u64,
    latency_us: Histogram,
    acks: AckWriter,
}

/// The consensus-like loop's state.
struct Pipeline<'p> {
    plan: &'p ShardPlan,
    window: VecDeque<(u64, AppendTask)>,
    checkpoint: Option<CheckpointTask>,
    latency_us: Histogram,
    acks: AckWriter,
    durable: Vec<u64>,
}

impl<'p> Pipeline<'p> {
    fn new(plan: &'p ShardPlan) -> Result<Self, CliError> {
        let latency_us = Histogram::new();
        Ok(Self {
            plan,
            window: VecDeque::with_capacity(plan.depth),
            checkpoint: None,
            latency_us,
            acks: AckWriter::open(plan.ack_file.as_deref())?,
            durable: Vec::with_capacity(plan.depth),
        })
    }

    async fn run<D: Directory>(
        mut self,
        engine: &Rc<BenchEngine<D>>,
        first_op: u64,
    ) -> Result<RunResult, CliError> {
        let end_op = first_op + self.plan.ops;
        let mut next_op = first_op;
        let mut ops = 0;
        loop {
            while self.window.len() < self.plan.depth && next_op < end_op && !self.plan.stopping() {
                let payload = self.plan.workload.payload(self.plan.shard, next_op)?;
                self.window
                    .push_back((next_op, spawn_append(engine, next_op, payload)));
                next_op += 1;
            }
            if self.window.is_empty() {
                break;
            }
            self.collect_durable().await?;
            if !self.plan.defer_acks {
                self.acks.record(self.plan.shard, &self.durable)?;
            }
            let (low, high) = (self.durable[0], self.durable[self.durable.len() - 1]);
            engine.commit(high).await?;
            ops += self.durable.len() as u64;
            self.plan
                .progress
                .fetch_add(self.durable.len() as u64, Ordering::Relaxed);
            if crosses_multiple(low, high, self.plan.checkpoint_every) {
                self.start_checkpoint(engine).await?;
            }
        }
        self.finish_checkpoint().await?;
        Ok(RunResult {
            ops,
            latency_us: self.latency_us,
            acks: self.acks,
        })
    }

    /// Waits for the oldest append, then takes every following one already durable: the durable
    /// prefix, in op order, into `self.durable`.
    async fn collect_durable(&mut self) -> Result<(), CliError> {
        self.durable.clear();
        while let Some((op, task)) = self.window.pop_front() {
            let latency_us = task.await.map_err(|error| CliError::ShardDied {
                shard: self.plan.shard,
                reason: format!("append task of op {op}: {error}"),
            })??;
            self.latency_us.record(latency_us.max(1));
            self.durable.push(op);
            if !self
                .window
                .front()
                .is_some_and(|(_, task)| task.is_finished())
            {
                break;
            }
        }
        Ok(())
    }

    /// Starts a checkpoint beside the appends; waits for the previous one first (at most one).
    async fn start_checkpoint<D: Directory>(
        &mut self,
        engine: &Rc<BenchEngine<D>>,
    ) -> Result<(), CliError> {
        self.finish_checkpoint().await?;
        let engine = engine.clone();
        self.checkpoint = Some(compio::runtime::spawn(
            async move { engine.checkpoint().await },
        ));
        Ok(())
    }

    async fn finish_checkpoint(&mut self) -> Result<(), CliError> {
        let Some(task) = self.checkpoint.take() else {
            return Ok(());
        };
        let result = task.await.map_err(|error| CliError::ShardDied {
            shard: self.plan.shard,
            reason: format!("checkpoint task: {error}"),
        })?;
        match result {
            // The engine's automatic checkpoint (from `commit`) was running: same effect.
            Ok(_) | Err(EngineError::CheckpointInProgress) => Ok(()),
            Err(error) => Err(error.into()),
        }
    }
}

/// Appends `op` as a task on this runtime; resolves to its latency in µs once durable.
fn spawn_append<D: Directory>(
    engine: &Rc<BenchEngine<D>>,
    op: u64,
    payload: Vec<u8>,
) -> AppendTask {
    let engine = engine.clone();
    compio::runtime::spawn(async move {
        let started = Instant::now();
        engine.append(op, &payload).await?;
        Ok(started.elapsed().as_micros() as u64)
    })
}

/// True when ops `low..=high` (`low >= 1`) include a multiple of `every` (never for `every == 0`).
fn crosses_multiple(low: u64, high: u64, every: u64) -> bool {
    every > 0 && high / every > (low - 1) / every
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use keel_engine::{ShardConfig, StateMachine};
    use keel_storage::MemFs;

    use super::*;
    use crate::cli::{tool_config, Mode};

    #[test]
    fn checkpoints_are_due_when_a_batch_crosses_a_multiple() {
        assert!(crosses_multiple(1, 4, 4));
        assert!(crosses_multiple(4, 4, 4));
        assert!(!crosses_multiple(5, 7, 4));
        assert!(crosses_multiple(5, 8, 4));
        assert!(crosses_multiple(3, 13, 4));
        assert!(!crosses_multiple(1, 100, 0));
    }

    /// The bench's own workload and driver on a `MemFs` shard set: every op counted is acked
    /// once, and what each shard recovers after its reopen is exactly what was written (a model
    /// state machine fed the same commands).
    #[test]
    fn the_bench_on_memfs_shards_recovers_every_acked_op() {
        let acks = tempfile::tempdir().unwrap();
        let ack_file = acks.path().join("acks");
        let mut engine = tool_config(Mode::TolerateTornTail);
        engine.journal.slot_count = 1024;
        engine.checkpoint_margin_ops = 256;
        engine.journal.segment_bytes = 1 << 20;
        let config = ShardConfig {
            shards: 2,
            pin_cores: false,
            queue_depth: 4,
            engine,
        };
        let open_dir = |shard: usize| async move { Ok(MemFs::new(70 + shard as u64).root()) };
        let (set, _) = ShardSet::start_with(open_dir, config, |_| KvStateMachine::new()).unwrap();
        let workload = Workload {
            entry_bytes: 64,
            keys: 13,
        };
        let progress = Arc::new(AtomicU64::new(0));
        let abort = Arc::new(AtomicBool::new(false));
        let ops = [300, 301];
        let plans = (0..2)
            .map(|shard| ShardPlan {
                shard,
                ops: ops[shard],
                depth: 8,
                defer_acks: false,
                checkpoint_every: 64,
                workload,
                ack_file: Some(ack_file.clone()),
                progress: progress.clone(),
                abort: abort.clone(),
            })
            .collect();
        let results = run_on_set(&set, plans, &abort, &mut || {}).unwrap();
        set.shutdown().unwrap();
        assert_eq!(progress.load(Ordering::Relaxed), 601);
        let acked = std::fs::read_to_string(&ack_file).unwrap();
        for result in &results {
            let shard = result.shard;
            assert_eq!(result.ops, ops[shard]);
            assert_eq!(
                result.stats.appends, ops[shard],
                "shard {shard}: acks counted"
            );
            assert_eq!(result.latency_us.count(), ops[shard]);
            assert!(
                result.stats.checkpoints >= 4,
                "shard {shard}: {:?}",
                result.stats
            );
            assert!(result.verified, "shard {shard}: recovered state differs");
            let mut model = KvStateMachine::new();
            for op in 1..=ops[shard] {
                model
                    .apply(op, &workload.payload(shard, op).unwrap())
                    .unwrap();
            }
            assert_eq!(
                result.digest,
                model.digest(),
                "shard {shard}: state written"
            );
            let lines: Vec<&str> = acked
                .lines()
                .filter(|line| line.starts_with(&format!("{shard} ")))
                .collect();
            let ops_acked: BTreeSet<u64> = lines
                .iter()
                .map(|line| line[2..].parse().unwrap())
                .collect();
            assert_eq!(
                lines.len() as u64,
                ops[shard],
                "shard {shard}: each op acked once"
            );
            assert_eq!(ops_acked, (1..=ops[shard]).collect(), "shard {shard}");
        }
    }
}
