//! Thread-per-core shards: `N` threads, each with its own compio runtime pinned to a core and its
//! own [`Engine`] on its own directory (`ROOT/shard-<i>/` on the real file system, or any
//! [`Directory`] the caller opens on the shard's thread, an in-memory one included). Nothing is
//! shared between shards but the handle.
//!
//! A [`ShardHandle`] is `Send + Clone`; it routes a request to a shard over a flume channel and
//! awaits the answer on a one-shot flume channel, so it can be awaited from any executor (another
//! compio runtime included) without blocking that executor's thread; [`block_on`] serves plain
//! threads. A caller that drives a shard op by op at full speed (a consensus loop, `keel bench`)
//! runs its loop *on* the shard's thread instead ([`ShardHandle::spawn_local`]): a channel round
//! trip per op would measure the channel, not the engine.
//!
//! On its thread a shard runs each request as its own task, so prepares from many callers are in
//! flight together and share the journal's group commits.
//!
//! Failure: a request always gets an answer or an error. A shard that failed to open reports it
//! from [`ShardSet::start`]; a shard whose thread died (a panic) drops its channels, and callers
//! get [`EngineError::ShardUnavailable`] instead of waiting forever.
//!
//! This module owns the set's configuration and lifetime; `handle.rs` the requests, `serve.rs`
//! what runs on a shard's thread. It never shares an engine between threads.

mod handle;
mod serve;

use std::future::Future;
use std::marker::PhantomData;
use std::path::Path;
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use keel_storage::{Directory, FsDirectory};

use crate::error::EngineError;
use crate::report::RecoveryReport;
use crate::state_machine::StateMachine;
use crate::stats::EngineStats;
use crate::EngineConfig;

use handle::Request;
pub use handle::{block_on, ShardHandle, ShardReopen, ShardTask};
use serve::ShardThread;

/// Most shards one set may start.
pub const MAX_SHARDS: usize = 1024;

/// `shard-<i>`: the directory of shard `i` under a shard set's root.
pub fn shard_dir_name(shard: usize) -> String {
    format!("shard-{shard}")
}

/// Tunables of a shard set.
#[derive(Debug, Clone)]
pub struct ShardConfig {
    /// Number of shards (threads, engines). Default the available parallelism (1 when unknown);
    /// 1 to [`MAX_SHARDS`].
    pub shards: usize,
    /// Pin shard `i` to CPU `i % available CPUs` (through compio's runtime builder). Default
    /// true.
    pub pin_cores: bool,
    /// Requests queued per shard before senders wait. Default 1,024; at least 1 (each queued
    /// request holds its payload, so memory bounds it from above).
    pub queue_depth: usize,
    /// Every shard's engine configuration (its `shard_index` is set per shard). Default
    /// [`EngineConfig::default`]; limits as it documents them.
    pub engine: EngineConfig,
}

impl ShardConfig {
    /// Checks every limit (and the engine's); [`ShardSet::start`] refuses a configuration that
    /// fails.
    pub fn validate(&self) -> Result<(), EngineError> {
        if self.shards == 0 || self.shards > MAX_SHARDS {
            return Err(EngineError::Config(format!(
                "shards {} not in 1..={MAX_SHARDS}",
                self.shards
            )));
        }
        if self.queue_depth == 0 {
            return Err(EngineError::Config("queue_depth must be at least 1".into()));
        }
        self.engine.validate()
    }
}

impl Default for ShardConfig {
    fn default() -> Self {
        Self {
            shards: thread::available_parallelism().map_or(1, |n| n.get()),
            pin_cores: true,
            queue_depth: 1024,
            engine: EngineConfig::default(),
        }
    }
}

/// Every shard's recovery report, in shard order, once each has opened; the first failure.
fn wait_ready(
    ready: Vec<flume::Receiver<Result<RecoveryReport, EngineError>>>,
) -> Result<Vec<RecoveryReport>, EngineError> {
    let mut reports = Vec::with_capacity(ready.len());
    for (shard, rx) in ready.into_iter().enumerate() {
        match rx.recv() {
            Ok(Ok(report)) => reports.push(report),
            Ok(Err(error)) => return Err(error),
            Err(_) => {
                return Err(EngineError::ShardUnavailable {
                    shard,
                    reason: "the shard thread died while opening",
                })
            }
        }
    }
    Ok(reports)
}

/// `N` running shards. Dropping the set shuts it down cleanly (flush and close every shard);
/// [`ShardSet::shutdown`] does the same and reports errors and final stats.
pub struct ShardSet<M: StateMachine + 'static, D: Directory = FsDirectory> {
    handle: ShardHandle<M, D>,
    threads: Vec<JoinHandle<()>>,
}

impl<M: StateMachine + 'static> ShardSet<M, FsDirectory> {
    /// Starts `config.shards` threads; shard `i` opens (recovers) `root/shard-<i>/` (created
    /// durably with its missing parents) with the state machine `make_state_machine(i)` built on
    /// its own thread. Returns once every shard has recovered, with their reports in shard order.
    /// If any shard fails to open, the others are shut down and its error is returned.
    pub fn start<F>(
        root: impl AsRef<Path>,
        config: ShardConfig,
        make_state_machine: F,
    ) -> Result<(Self, Vec<RecoveryReport>), EngineError>
    where
        F: Fn(usize) -> M + Send + Sync + 'static,
    {
        let root = root.as_ref().to_path_buf();
        let open_dir = move |shard: usize| {
            let dir = root.join(shard_dir_name(shard));
            async move {
                serve::create_dir_durably(&dir)
                    .await
                    .map_err(|e| EngineError::io("open shard dir", dir.display().to_string(), e))
            }
        };
        Self::start_with(open_dir, config, make_state_machine)
    }
}

impl<M: StateMachine + 'static, D: Directory> ShardSet<M, D> {
    /// [`ShardSet::start`] on any [`Directory`]: shard `i`'s thread opens its directory with
    /// `open_dir(i)` (so a `!Send` directory such as `MemFs`'s is made where it is used, and
    /// lives as long as the shard: across [`ShardHandle::reopen`] too).
    pub fn start_with<O, Fut, F>(
        open_dir: O,
        config: ShardConfig,
        make_state_machine: F,
    ) -> Result<(Self, Vec<RecoveryReport>), EngineError>
    where
        O: Fn(usize) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<D, EngineError>> + 'static,
        F: Fn(usize) -> M + Send + Sync + 'static,
    {
        config.validate()?;
        let open_dir = Arc::new(open_dir);
        let make_state_machine = Arc::new(make_state_machine);
        let cpus = thread::available_parallelism().map_or(1, |n| n.get());
        let mut senders = Vec::with_capacity(config.shards);
        let mut threads = Vec::with_capacity(config.shards);
        let mut ready = Vec::with_capacity(config.shards);
        for shard in 0..config.shards {
            let (tx, rx) = flume::bounded(config.queue_depth);
            let (ready_tx, ready_rx) = flume::bounded(1);
            let mut engine_config = config.engine.clone();
            engine_config.shard_index = Some(shard as u64);
            let shard_thread = ShardThread {
                shard,
                cpu: config.pin_cores.then_some(shard % cpus),
                config: engine_config,
                open_dir: open_dir.clone(),
                make_state_machine: make_state_machine.clone(),
                _made: PhantomData,
            };
            let spawned = thread::Builder::new()
                .name(format!("keel-shard-{shard}"))
                .spawn(move || shard_thread.run(rx, ready_tx));
            match spawned {
                Ok(join) => threads.push(join),
                Err(source) => {
                    drop(ShardSet::from_parts(senders, threads));
                    return Err(EngineError::io(
                        "spawn shard thread",
                        format!("shard {shard}"),
                        source,
                    ));
                }
            }
            senders.push(tx);
            ready.push(ready_rx);
        }
        let set = ShardSet::from_parts(senders, threads);
        let reports = wait_ready(ready)?; // on an error `set` drops: the others shut down
        Ok((set, reports))
    }

    fn from_parts(
        senders: Vec<flume::Sender<Request<M, D>>>,
        threads: Vec<JoinHandle<()>>,
    ) -> Self {
        ShardSet {
            handle: ShardHandle::new(senders),
            threads,
        }
    }

    /// A handle for routing requests (clone it into other threads).
    pub fn handle(&self) -> ShardHandle<M, D> {
        self.handle.clone()
    }

    /// Shards in the set.
    pub fn shard_count(&self) -> usize {
        self.handle.shard_count()
    }

    /// Waits for in-flight requests, flushes and closes every shard, joins the threads. Returns
    /// each shard's final stats, or the first error (after every shard was asked to close).
    pub fn shutdown(mut self) -> Result<Vec<EngineStats>, EngineError> {
        self.shutdown_inner()
    }

    fn shutdown_inner(&mut self) -> Result<Vec<EngineStats>, EngineError> {
        let answers = self.handle.send_close_to_all();
        let mut stats = Vec::with_capacity(answers.len());
        let mut first_error = None;
        for (shard, answer) in answers.into_iter().enumerate() {
            match answer.recv() {
                Ok(Ok(s)) => stats.push(s),
                Ok(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                Err(_) => {
                    first_error.get_or_insert(EngineError::ShardUnavailable {
                        shard,
                        reason: "the shard thread died before closing",
                    });
                }
            }
        }
        for join in self.threads.drain(..) {
            if join.join().is_err() {
                tracing::error!("a shard thread panicked");
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(stats),
        }
    }
}

impl<M: StateMachine + 'static, D: Directory> Drop for ShardSet<M, D> {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            if let Err(error) = self.shutdown_inner() {
                tracing::error!(%error, "shard set shutdown on drop failed");
            }
        }
    }
}
