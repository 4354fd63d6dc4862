//! What runs on a shard's thread: its compio runtime, the open (recover) of its engine, the loop
//! that serves requests each as its own task, reopen and close. Nothing here is shared with
//! another thread but the channels; it never leaves a request unanswered.

use std::collections::HashSet;
use std::future::Future;
use std::marker::PhantomData;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use keel_storage::{DirAccess, Directory, FsDirectory};

use super::handle::{Reply, Request, ShardReopen};
use crate::error::EngineError;
use crate::report::RecoveryReport;
use crate::state_machine::StateMachine;
use crate::stats::EngineStats;
use crate::{Engine, EngineConfig};

/// Everything one shard's thread needs to open and reopen its engine.
pub(super) struct ShardThread<D, M, O, F> {
    pub(super) shard: usize,
    pub(super) cpu: Option<usize>,
    pub(super) config: EngineConfig,
    pub(super) open_dir: Arc<O>,
    pub(super) make_state_machine: Arc<F>,
    pub(super) _made: PhantomData<fn() -> (D, M)>,
}

/// Why the serving loop stopped.
enum Stop {
    Close(Reply<EngineStats>),
    Reopen(Reply<ShardReopen>),
    /// Every handle was dropped: close anyway.
    Disconnected,
}

impl<D, M, O, F, Fut> ShardThread<D, M, O, F>
where
    D: Directory,
    M: StateMachine + 'static,
    O: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<D, EngineError>> + 'static,
    F: Fn(usize) -> M + Send + Sync + 'static,
{
    /// The thread's body: a runtime (pinned when `cpu` is set), then [`ShardThread::serve`].
    pub(super) fn run(
        self,
        requests: flume::Receiver<Request<M, D>>,
        ready: flume::Sender<Result<RecoveryReport, EngineError>>,
    ) {
        // Every log line of this shard's thread (its runtime runs here) carries the shard.
        let _span = tracing::warn_span!("keel", shard = self.shard as u64).entered();
        let mut builder = compio::runtime::RuntimeBuilder::new();
        if let Some(cpu) = self.cpu {
            builder.thread_affinity(HashSet::from([cpu]));
        }
        match builder.build() {
            Ok(runtime) => runtime.block_on(self.serve(requests, ready)),
            Err(source) => {
                let place = format!("shard {}", self.shard);
                let _ = ready.send(Err(EngineError::io("build shard runtime", place, source)));
            }
        }
    }

    async fn open(&self, root: D) -> Result<(Engine<D, M>, RecoveryReport), EngineError> {
        let state_machine = (self.make_state_machine)(self.shard);
        Engine::open(root, self.config.clone(), state_machine).await
    }

    /// Opens the engine, reports it ready, serves until a close (reopening on request).
    async fn serve(
        self,
        requests: flume::Receiver<Request<M, D>>,
        ready: flume::Sender<Result<RecoveryReport, EngineError>>,
    ) {
        let shard = self.shard;
        let opened = async {
            let root = (self.open_dir)(shard).await?;
            let (engine, report) = self.open(root.clone()).await?;
            Ok::<_, EngineError>((root, engine, report))
        }
        .await;
        let (root, mut engine) = match opened {
            Ok((root, engine, report)) => {
                tracing::info!(shard, cpu = self.cpu.map(|c| c as u64), "shard started");
                let _ = ready.send(Ok(report));
                (root, engine)
            }
            Err(error) => return fail_for_good(shard, "open", error, &ready, &requests).await,
        };
        loop {
            let served = Rc::new(engine);
            let stop = serve_until_stop(&served, &requests).await;
            let Ok(closing) = Rc::try_unwrap(served) else {
                unreachable!("every task holding the engine has finished")
            };
            let Stop::Reopen(reply) = stop else {
                let close_reply = match stop {
                    Stop::Close(reply) => Some(reply),
                    _ => None,
                };
                return close_shard(shard, closing, close_reply, &requests).await;
            };
            match self.reopen(&root, closing).await {
                Ok((next, reopened)) => {
                    let _ = reply.send(Ok(reopened));
                    engine = next;
                }
                Err(error) => {
                    return fail_for_good(shard, "reopen", error, &reply, &requests).await;
                }
            }
        }
    }

    /// Closes `engine` and opens `root` again (timed), as a restart of the shard would.
    async fn reopen(
        &self,
        root: &D,
        engine: Engine<D, M>,
    ) -> Result<(Engine<D, M>, ShardReopen), EngineError> {
        engine.close().await?;
        let started = Instant::now();
        let (engine, report) = self.open(root.clone()).await?;
        let open_duration = started.elapsed();
        tracing::info!(
            shard = self.shard,
            open_us = open_duration.as_micros() as u64,
            "shard reopened"
        );
        Ok((
            engine,
            ShardReopen {
                report,
                open_duration,
            },
        ))
    }
}

/// The shard's engine failed to `what` (open, reopen): answers `reply` with that failure, then
/// every later request until a close.
async fn fail_for_good<T, M: StateMachine + 'static, D: Directory>(
    shard: usize,
    what: &str,
    error: EngineError,
    reply: &flume::Sender<Result<T, EngineError>>,
    requests: &flume::Receiver<Request<M, D>>,
) {
    tracing::error!(shard, %error, "shard failed to {what}");
    let error = Arc::new(error);
    let _ = reply.send(Err(EngineError::ShardFailed {
        shard,
        source: error.clone(),
    }));
    refuse_until_close(shard, &error, requests).await;
}

/// A shard whose engine failed to open answers whatever arrives with that failure until every
/// sender is gone: never leave a caller hanging. A close ends the thread (handles may outlive
/// the set); later sends then fail with `Closed`.
async fn refuse_until_close<M: StateMachine + 'static, D: Directory>(
    shard: usize,
    error: &Arc<EngineError>,
    requests: &flume::Receiver<Request<M, D>>,
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

/// Serves requests, each as its own task, until a close or reopen arrives or every handle is
/// dropped; returns once every task has finished.
async fn serve_until_stop<M: StateMachine + 'static, D: Directory>(
    engine: &Rc<Engine<D, M>>,
    requests: &flume::Receiver<Request<M, D>>,
) -> Stop {
    // Every task holds a clone of `in_flight`, so the receiver below sees "disconnected"
    // exactly when the last one has finished.
    let (in_flight, all_done) = flume::unbounded::<()>();
    let stop = loop {
        match requests.recv_async().await {
            Ok(Request::Close { reply }) => break Stop::Close(reply),
            Ok(Request::Reopen { reply }) => break Stop::Reopen(reply),
            Ok(request) => {
                let engine = engine.clone();
                let guard = in_flight.clone();
                compio::runtime::spawn(async move {
                    serve(engine, request).await;
                    drop(guard);
                })
                .detach();
            }
            Err(_) => break Stop::Disconnected,
        }
    };
    drop(in_flight);
    let _ = all_done.recv_async().await;
    stop
}

/// Closes the engine, answers the close, then every request queued behind it.
async fn close_shard<M: StateMachine + 'static, D: Directory>(
    shard: usize,
    engine: Engine<D, M>,
    close_reply: Option<Reply<EngineStats>>,
    requests: &flume::Receiver<Request<M, D>>,
) {
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
pub(super) async fn create_dir_durably(dir: &Path) -> std::io::Result<FsDirectory> {
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

async fn serve<D: Directory, M: StateMachine>(engine: Rc<Engine<D, M>>, request: Request<M, D>) {
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
        Request::Run(run) => run(Ok(engine)).await,
        Request::Reopen { reply } => {
            // Handled by the shard loop; never reaches a task.
            let _ = reply.send(Err(EngineError::Closed));
        }
        Request::Close { reply } => {
            // Handled by the shard loop; a second close after the first gets `Closed`.
            let _ = reply.send(Err(EngineError::Closed));
        }
    }
}

/// Answers `request` with an error.
fn fail<M: StateMachine, D: Directory>(request: Request<M, D>, error: impl Fn() -> EngineError) {
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
        Request::Reopen { reply } => {
            let _ = reply.send(Err(error()));
        }
        Request::Query(f) => f(Err(error())),
        Request::Run(run) => drop(run(Err(error()))),
    }
}
