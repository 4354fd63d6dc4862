//! Thread-per-core shards: `N` threads, each with its own compio runtime pinned to a core and its
//! own [`Engine`] on `ROOT/shard-<i>/`. Nothing is shared between shards but the handle.
//!
//! A [`ShardHandle`] is `Send + Clone`; it routes a request to a shard over a flume channel and
//! awaits the answer on a one-shot flume channel, so it can be awaited from any executor (another
//! compio runtime included) without blocking that executor's thread; [`block_on`] serves plain
//! threads.
//!
//! On its thread a shard runs each request as its own task, so prepares from many callers are in
//! flight together and share the journal's group commits.
//!
//! Failure: a request always gets an answer or an error. A shard that failed to open reports it
//! from [`ShardSet::start`]; a shard whose thread died (a panic) drops its channels, and callers
//! get [`EngineError::ShardUnavailable`] instead of waiting forever.

use std::collections::HashSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, JoinHandle, Thread};

use bytes::Bytes;

use keel_storage::{DirAccess, Directory, FsDirectory};

use crate::checkpoint::CheckpointReport;
use crate::error::EngineError;
use crate::report::RecoveryReport;
use crate::state_machine::StateMachine;
use crate::stats::EngineStats;
use crate::{Engine, EngineConfig};

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

type Reply<T> = flume::Sender<Result<T, EngineError>>;
/// Runs with the state machine, or with the error that keeps the shard from serving it.
type Query<M> = Box<dyn FnOnce(Result<&M, EngineError>) + Send>;

enum Request<M> {
    Append {
        op: u64,
        payload: Bytes,
        reply: Reply<()>,
    },
    Commit {
        op: u64,
        reply: Reply<()>,
    },
    PersistCommit {
        reply: Reply<()>,
    },
    TruncateAfter {
        op: u64,
        reply: Reply<()>,
    },
    Flush {
        reply: Reply<()>,
    },
    Checkpoint {
        reply: Reply<Option<CheckpointReport>>,
    },
    Stats {
        reply: Reply<EngineStats>,
    },
    /// Runs on the shard with the state machine borrowed (between awaits).
    Query(Query<M>),
    Close {
        reply: Reply<EngineStats>,
    },
}

/// Routes requests to the shards of one set. `Send + Clone`; cheap to clone.
pub struct ShardHandle<M> {
    senders: Arc<[flume::Sender<Request<M>>]>,
}

impl<M> Clone for ShardHandle<M> {
    fn clone(&self) -> Self {
        Self {
            senders: self.senders.clone(),
        }
    }
}

impl<M: StateMachine + 'static> ShardHandle<M> {
    /// Shards in the set.
    pub fn shard_count(&self) -> usize {
        self.senders.len()
    }

    async fn call<T>(
        &self,
        shard: usize,
        make: impl FnOnce(Reply<T>) -> Request<M>,
    ) -> Result<T, EngineError> {
        let sender = self.senders.get(shard).ok_or(EngineError::NoSuchShard {
            shard,
            shard_count: self.senders.len(),
        })?;
        let (reply, answer) = flume::bounded(1);
        sender
            .send_async(make(reply))
            .await
            .map_err(|_| EngineError::Closed)?;
        answer
            .recv_async()
            .await
            .map_err(|_| EngineError::ShardUnavailable {
                shard,
                reason: "the shard dropped the request without answering (its thread died)",
            })?
    }

    /// `Engine::append` on `shard`.
    pub async fn append(
        &self,
        shard: usize,
        op: u64,
        payload: impl Into<Bytes>,
    ) -> Result<(), EngineError> {
        let payload = payload.into();
        self.call(shard, |reply| Request::Append { op, payload, reply })
            .await
    }

    /// `Engine::commit` on `shard`.
    pub async fn commit(&self, shard: usize, op: u64) -> Result<(), EngineError> {
        self.call(shard, |reply| Request::Commit { op, reply })
            .await
    }

    /// `Engine::persist_commit` on `shard`.
    pub async fn persist_commit(&self, shard: usize) -> Result<(), EngineError> {
        self.call(shard, |reply| Request::PersistCommit { reply })
            .await
    }

    /// `Engine::truncate_after` on `shard`.
    pub async fn truncate_after(&self, shard: usize, op: u64) -> Result<(), EngineError> {
        self.call(shard, |reply| Request::TruncateAfter { op, reply })
            .await
    }

    /// `Engine::flush` on `shard`.
    pub async fn flush(&self, shard: usize) -> Result<(), EngineError> {
        self.call(shard, |reply| Request::Flush { reply }).await
    }

    /// `Engine::checkpoint` on `shard`.
    pub async fn checkpoint(&self, shard: usize) -> Result<Option<CheckpointReport>, EngineError> {
        self.call(shard, |reply| Request::Checkpoint { reply })
            .await
    }

    /// `Engine::stats` of `shard`.
    pub async fn stats(&self, shard: usize) -> Result<EngineStats, EngineError> {
        self.call(shard, |reply| Request::Stats { reply }).await
    }

    /// Every shard's stats merged.
    pub async fn aggregate_stats(&self) -> Result<EngineStats, EngineError> {
        let mut total = EngineStats::default();
        for shard in 0..self.shard_count() {
            total.merge(&self.stats(shard).await?);
        }
        Ok(total)
    }

    /// Runs `f` on `shard`'s state machine and returns its result.
    pub async fn query<R: Send + 'static>(
        &self,
        shard: usize,
        f: impl FnOnce(&M) -> R + Send + 'static,
    ) -> Result<R, EngineError> {
        self.call(shard, |reply| {
            Request::Query(Box::new(move |m: Result<&M, EngineError>| {
                let _ = reply.send(m.map(f));
            }))
        })
        .await
    }
}

/// `N` running shards. Dropping the set shuts it down cleanly (flush and close every shard);
/// [`ShardSet::shutdown`] does the same and reports errors and final stats.
pub struct ShardSet<M: StateMachine + 'static> {
    handle: ShardHandle<M>,
    threads: Vec<JoinHandle<()>>,
}

impl<M: StateMachine + 'static> ShardSet<M> {
    /// Starts `config.shards` threads; shard `i` opens (recovers) `root/shard-<i>/` with the state
    /// machine `make_state_machine(i)` built on its own thread. Returns once every shard has
    /// recovered, with their reports in shard order. If any shard fails to open, the others are
    /// shut down and its error is returned.
    pub fn start<F>(
        root: impl AsRef<Path>,
        config: ShardConfig,
        make_state_machine: F,
    ) -> Result<(Self, Vec<RecoveryReport>), EngineError>
    where
        F: Fn(usize) -> M + Send + Sync + 'static,
    {
        config.validate()?;
        let root = root.as_ref().to_path_buf();
        let make_state_machine = Arc::new(make_state_machine);
        let cpus = thread::available_parallelism().map_or(1, |n| n.get());
        let mut senders = Vec::with_capacity(config.shards);
        let mut threads = Vec::with_capacity(config.shards);
        let mut ready = Vec::with_capacity(config.shards);
        for shard in 0..config.shards {
            let (tx, rx) = flume::bounded(config.queue_depth);
            let (ready_tx, ready_rx) = flume::bounded(1);
            let dir = root.join(shard_dir_name(shard));
            let mut engine_config = config.engine.clone();
            engine_config.shard_index = Some(shard as u64);
            let make = make_state_machine.clone();
            let cpu = config.pin_cores.then_some(shard % cpus);
            let spawned = thread::Builder::new()
                .name(format!("keel-shard-{shard}"))
                .spawn(move || run_shard(shard, cpu, dir, engine_config, make, rx, ready_tx));
            match spawned {
                Ok(join) => threads.push(join),
                Err(source) => {
                    let set = ShardSet {
                        handle: ShardHandle {
                            senders: senders.into(),
                        },
                        threads,
                    };
                    drop(set);
                    return Err(EngineError::io(
                        "spawn shard thread",
                        root.display().to_string(),
                        source,
                    ));
                }
            }
            senders.push(tx);
            ready.push(ready_rx);
        }
        let set = ShardSet {
            handle: ShardHandle {
                senders: senders.into(),
            },
            threads,
        };
        let reports = wait_ready(ready)?; // on an error `set` drops: the others shut down
        Ok((set, reports))
    }

    /// A handle for routing requests (clone it into other threads).
    pub fn handle(&self) -> ShardHandle<M> {
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
        let mut answers = Vec::with_capacity(self.handle.senders.len());
        for sender in self.handle.senders.iter() {
            let (reply, answer) = flume::bounded(1);
            // A shard whose thread is gone cannot take the request; its answer is the error.
            let _ = sender.send(Request::Close { reply });
            answers.push(answer);
        }
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

impl<M: StateMachine + 'static> Drop for ShardSet<M> {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            if let Err(error) = self.shutdown_inner() {
                tracing::error!(%error, "shard set shutdown on drop failed");
            }
        }
    }
}

fn run_shard<M, F>(
    shard: usize,
    cpu: Option<usize>,
    dir: PathBuf,
    config: EngineConfig,
    make_state_machine: Arc<F>,
    requests: flume::Receiver<Request<M>>,
    ready: flume::Sender<Result<RecoveryReport, EngineError>>,
) where
    M: StateMachine + 'static,
    F: Fn(usize) -> M + Send + Sync + 'static,
{
    // Every log line of this shard's thread (its runtime runs here) carries the shard.
    let _span = tracing::warn_span!("keel", shard = shard as u64).entered();
    let mut builder = compio::runtime::RuntimeBuilder::new();
    if let Some(cpu) = cpu {
        builder.thread_affinity(HashSet::from([cpu]));
    }
    let runtime = match builder.build() {
        Ok(runtime) => runtime,
        Err(source) => {
            let _ = ready.send(Err(EngineError::io(
                "build shard runtime",
                dir.display().to_string(),
                source,
            )));
            return;
        }
    };
    runtime.block_on(async move {
        let opened = async {
            let root = create_dir_durably(&dir)
                .await
                .map_err(|e| EngineError::io("open shard dir", dir.display().to_string(), e))?;
            Engine::open(root, config, make_state_machine(shard)).await
        }
        .await;
        match opened {
            Ok((engine, report)) => {
                tracing::info!(shard, cpu = cpu.map(|c| c as u64), dir = %dir.display(), "shard started");
                let _ = ready.send(Ok(report));
                let engine = Rc::new(engine);
                let close_reply = serve_until_close(&engine, &requests).await;
                close_shard(shard, engine, close_reply, &requests).await;
            }
            Err(error) => {
                tracing::error!(shard, %error, "shard failed to open");
                let error = Arc::new(error);
                let _ = ready.send(Err(EngineError::ShardFailed {
                    shard,
                    source: error.clone(),
                }));
                refuse_until_close(shard, &error, &requests).await;
            }
        }
    });
}

/// A shard whose engine failed to open answers whatever arrives with that failure until every
/// sender is gone: never leave a caller hanging. A close ends the thread (handles may outlive
/// the set); later sends then fail with `Closed`.
async fn refuse_until_close<M: StateMachine + 'static>(
    shard: usize,
    error: &Arc<EngineError>,
    requests: &flume::Receiver<Request<M>>,
) {
    while let Ok(request) = requests.recv_async().await {
        let closing = matches!(request, Request::Close { .. });
        fail(request, || EngineError::ShardFailed {
            shard,
            source: error.clone(),
        });
        if closing {
            break;
        }
    }
}

/// Serves requests, each as its own task, until a close arrives (its reply is returned) or every
/// handle is dropped (`None`); returns once every task has finished.
async fn serve_until_close<M: StateMachine + 'static>(
    engine: &Rc<Engine<FsDirectory, M>>,
    requests: &flume::Receiver<Request<M>>,
) -> Option<Reply<EngineStats>> {
    // Every task holds a clone of `in_flight`, so the receiver below sees "disconnected"
    // exactly when the last one has finished.
    let (in_flight, all_done) = flume::unbounded::<()>();
    let close_reply = loop {
        match requests.recv_async().await {
            Ok(Request::Close { reply }) => break Some(reply),
            Ok(request) => {
                let engine = engine.clone();
                let guard = in_flight.clone();
                compio::runtime::spawn(async move {
                    serve(&engine, request).await;
                    drop(guard);
                })
                .detach();
            }
            Err(_) => break None, // every handle dropped: close anyway
        }
    };
    drop(in_flight);
    let _ = all_done.recv_async().await;
    close_reply
}

/// Closes the engine once no task holds it, answers the close, then every request queued
/// behind it.
async fn close_shard<M: StateMachine + 'static>(
    shard: usize,
    engine: Rc<Engine<FsDirectory, M>>,
    close_reply: Option<Reply<EngineStats>>,
    requests: &flume::Receiver<Request<M>>,
) {
    let engine = match Rc::try_unwrap(engine) {
        Ok(engine) => engine,
        Err(_) => unreachable!("every task holding the engine has finished"),
    };
    let stats = engine.stats();
    let result = engine.close().await.map(|_| stats);
    if let Err(error) = &result {
        tracing::error!(shard, %error, "shard close failed");
    } else {
        tracing::info!(shard, "shard closed");
    }
    if let Some(reply) = close_reply {
        let _ = reply.send(result);
    }
    // Requests queued behind the close get an answer too.
    while let Ok(request) = requests.try_recv() {
        fail(request, || EngineError::Closed);
    }
}

/// Opens `dir`, creating it and any missing parents; each directory created gets its entry
/// fsynced in its parent, so a crash cannot take a shard's whole directory (and every op
/// acknowledged inside it) away with an unsynced `mkdir`.
async fn create_dir_durably(dir: &Path) -> std::io::Result<FsDirectory> {
    let mut missing = Vec::new();
    let mut cursor = Some(dir);
    while let Some(path) = cursor {
        if compio::fs::metadata(path).await.is_ok() {
            break;
        }
        missing.push(path);
        cursor = path.parent();
    }
    let opened = FsDirectory::open_with(dir, DirAccess::Create).await?;
    // Parents first: each new entry is durable before anything below it counts on it.
    for created in missing.iter().rev() {
        if let Some(parent) = created.parent().filter(|p| !p.as_os_str().is_empty()) {
            FsDirectory::open_with(parent, DirAccess::Existing)
                .await?
                .sync()
                .await?;
        }
    }
    Ok(opened)
}

async fn serve<D: Directory, M: StateMachine>(engine: &Engine<D, M>, request: Request<M>) {
    match request {
        Request::Append { op, payload, reply } => {
            let _ = reply.send(engine.append_bytes(op, payload).await);
        }
        Request::Commit { op, reply } => {
            let _ = reply.send(engine.commit(op).await);
        }
        Request::PersistCommit { reply } => {
            let _ = reply.send(engine.persist_commit().await);
        }
        Request::TruncateAfter { op, reply } => {
            let _ = reply.send(engine.truncate_after(op).await);
        }
        Request::Flush { reply } => {
            let _ = reply.send(engine.flush().await);
        }
        Request::Checkpoint { reply } => {
            let _ = reply.send(engine.checkpoint().await);
        }
        Request::Stats { reply } => {
            let _ = reply.send(Ok(engine.stats()));
        }
        Request::Query(f) => f(Ok(&engine.state_machine())),
        Request::Close { reply } => {
            // Handled by the shard loop; a second close after the first gets `Closed`.
            let _ = reply.send(Err(EngineError::Closed));
        }
    }
}

/// Answers `request` with an error.
fn fail<M>(request: Request<M>, error: impl Fn() -> EngineError) {
    match request {
        Request::Append { reply, .. }
        | Request::Commit { reply, .. }
        | Request::PersistCommit { reply }
        | Request::TruncateAfter { reply, .. }
        | Request::Flush { reply } => {
            let _ = reply.send(Err(error()));
        }
        Request::Checkpoint { reply } => {
            let _ = reply.send(Err(error()));
        }
        Request::Stats { reply } | Request::Close { reply } => {
            let _ = reply.send(Err(error()));
        }
        Request::Query(f) => f(Err(error())),
    }
}

/// Runs a future to completion on the calling thread (parking between wake-ups): for plain
/// threads that use a [`ShardHandle`] without an executor of their own. Do not call it on a shard
/// thread or inside a compio runtime: it blocks the thread.
pub fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(output) => return output,
            Poll::Pending => thread::park(),
        }
    }
}
