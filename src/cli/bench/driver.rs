//! One shard's driver: on its own thread and compio runtime, a loop that behaves like a consensus
//! replica's — pipelined prepares (appends) with up to `depth` in flight as tasks on the shard's
//! runtime (so they share group commits), commit and apply in op order as the durable prefix
//! grows, a checkpoint every `checkpoint_every` ops running beside the appends. Then it persists
//! the commit watermark, closes, reopens (timing the recovery) and compares the recovered state
//! machine with the one before close.
//!
//! The driver runs on the shard's own thread rather than sending each op through a
//! `ShardHandle`: a consensus loop in a thread-per-core design lives on its core, and a channel
//! round trip per op (two cross-thread wake-ups) would measure the channel, not the engine.
//! Measured once on the 2-core VM (one shard, 20,000 ops of 128 B, same pipeline both ways):
//! `--sync none` 240–320k ops/s driven locally against 8–12k through `ShardHandle`; `--sync batch`
//! 28–92k against 7–19k; `--sync every` is bound by the disk either way.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use compio::runtime::JoinHandle;
use hdrhistogram::Histogram;
use keel_engine::{
    CheckpointReport, Engine, EngineConfig, EngineError, EngineStats, KvStateMachine,
    RecoveryReport,
};
use keel_storage::DirAccess;
use keel_storage::FsDirectory;

use super::workload::{AckWriter, Workload};
use crate::cli::{signal, CliError};

type BenchEngine = Engine<FsDirectory, KvStateMachine>;
type AppendTask = JoinHandle<Result<u64, EngineError>>;
type CheckpointTask = JoinHandle<Result<Option<CheckpointReport>, EngineError>>;

/// Largest latency the histograms track (60 s, in µs); longer ones are recorded as this.
const MAX_LATENCY_US: u64 = 60_000_000;

/// A latency histogram in µs with fixed bounds, so `saturating_record` never clamps a real value
/// (an auto-resizing histogram clamps to its current, tiny, bound instead of growing).
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
        .unwrap_or_else(|_| unreachable!("bounds 1..=60 s at 3 figures are valid"))
}

/// What one shard runs.
pub struct ShardPlan {
    pub shard: usize,
    pub dir: PathBuf,
    pub ops: u64,
    /// Appends in flight (1 for `--sync every`).
    pub depth: usize,
    /// `--sync none`: appends resolve before any fsync, so acks wait for the flush at the end.
    pub defer_acks: bool,
    /// 0: only the engine's automatic checkpoints.
    pub checkpoint_every: u64,
    pub workload: Workload,
    pub config: EngineConfig,
    pub cpu: Option<usize>,
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
    pub latency_us: Histogram<u64>,
    pub stats: EngineStats,
    pub recovery: Duration,
    pub report: RecoveryReport,
    pub digest: u64,
    pub verified: bool,
}

/// Runs the plan on this thread (a new compio runtime, pinned when `plan.cpu` is set).
pub fn run_shard(plan: ShardPlan) -> Result<ShardResult, CliError> {
    // Every log line of this thread (its runtime runs here) carries the shard.
    let _span = tracing::warn_span!("keel", shard = plan.shard as u64).entered();
    let mut builder = compio::runtime::RuntimeBuilder::new();
    if let Some(cpu) = plan.cpu {
        builder.thread_affinity(std::collections::HashSet::from([cpu]));
    }
    let runtime = builder
        .build()
        .map_err(|source| CliError::io(format!("shard {}: compio runtime", plan.shard), source))?;
    let result = runtime.block_on(drive(&plan));
    if result.is_err() {
        plan.abort.store(true, Ordering::Relaxed);
    }
    result
}

async fn drive(plan: &ShardPlan) -> Result<ShardResult, CliError> {
    let root = FsDirectory::open_with(&plan.dir, DirAccess::Create)
        .await
        .map_err(|source| CliError::io(format!("creating {}", plan.dir.display()), source))?;
    let (engine, _) =
        Engine::open(root.clone(), plan.config.clone(), KvStateMachine::new()).await?;
    let engine = Rc::new(engine);
    // Ops above the commit watermark left by an earlier run are prepared again (a rewrite
    // supersedes them), as a new leader would.
    let first_op = engine.commit_op() + 1;
    let started = Instant::now();
    let mut run = Pipeline::new(plan)?.run(&engine, first_op).await?;
    let finished = Instant::now();
    engine.persist_commit().await?;
    engine.flush().await?;
    if plan.defer_acks && run.ops > 0 {
        let ops: Vec<u64> = (first_op..first_op + run.ops).collect();
        run.acks.record(plan.shard, &ops)?;
    }
    let stats = engine.stats();
    let engine = Rc::try_unwrap(engine).map_err(|_| {
        CliError::Internal(format!(
            "shard {}: a task still holds the engine after the run",
            plan.shard
        ))
    })?;
    let check = close_and_recover(plan, root, engine).await?;
    Ok(ShardResult {
        shard: plan.shard,
        ops: run.ops,
        started,
        finished,
        latency_us: run.latency_us,
        stats,
        recovery: check.recovery,
        report: check.report,
        digest: check.digest,
        verified: check.verified,
    })
}

/// What closing and reopening found.
struct RecoveryCheck {
    recovery: Duration,
    report: RecoveryReport,
    digest: u64,
    verified: bool,
}

/// Closes the engine, reopens it (timed) and compares the recovered state with the closed one.
async fn close_and_recover(
    plan: &ShardPlan,
    root: FsDirectory,
    engine: BenchEngine,
) -> Result<RecoveryCheck, CliError> {
    let applied_op = engine.applied_op();
    let before = engine.close().await?;
    let started = Instant::now();
    let (engine, report) = Engine::open(root, plan.config.clone(), KvStateMachine::new()).await?;
    let recovery = started.elapsed();
    let digest = before.digest();
    let verified = engine.state_machine().digest() == digest && engine.applied_op() == applied_op;
    engine.close().await?;
    Ok(RecoveryCheck {
        recovery,
        report,
        digest,
        verified,
    })
}

/// What the pipeline did.
struct RunResult {
    ops: u64,
    latency_us: Histogram<u64>,
    acks: AckWriter,
}

/// The consensus-like loop's state.
struct Pipeline<'p> {
    plan: &'p ShardPlan,
    window: VecDeque<(u64, AppendTask)>,
    checkpoint: Option<CheckpointTask>,
    latency_us: Histogram<u64>,
    acks: AckWriter,
    durable: Vec<u64>,
}

impl<'p> Pipeline<'p> {
    fn new(plan: &'p ShardPlan) -> Result<Self, CliError> {
        let latency_us = latency_histogram();
        Ok(Self {
            plan,
            window: VecDeque::with_capacity(plan.depth),
            checkpoint: None,
            latency_us,
            acks: AckWriter::open(plan.ack_file.as_deref())?,
            durable: Vec::with_capacity(plan.depth),
        })
    }

    async fn run(mut self, engine: &Rc<BenchEngine>, first_op: u64) -> Result<RunResult, CliError> {
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
            self.latency_us.saturating_record(latency_us.max(1));
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
    async fn start_checkpoint(&mut self, engine: &Rc<BenchEngine>) -> Result<(), CliError> {
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
fn spawn_append(engine: &Rc<BenchEngine>, op: u64, payload: Vec<u8>) -> AppendTask {
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
    use super::crosses_multiple;

    #[test]
    fn checkpoints_are_due_when_a_batch_crosses_a_multiple() {
        assert!(crosses_multiple(1, 4, 4));
        assert!(crosses_multiple(4, 4, 4));
        assert!(!crosses_multiple(5, 7, 4));
        assert!(crosses_multiple(5, 8, 4));
        assert!(crosses_multiple(3, 13, 4));
        assert!(!crosses_multiple(1, 100, 0));
    }
}
