//! The requests a [`ShardHandle`] sends to a shard's thread and the answers it awaits. It never
//! touches an engine itself: everything runs on the shard's thread (`serve.rs`).

use std::future::Future;
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::Duration;

use bytes::Bytes;
use keel_storage::{Directory, FsDirectory};

use crate::checkpoint::CheckpointReport;
use crate::error::EngineError;
use crate::report::RecoveryReport;
use crate::state_machine::StateMachine;
use crate::stats::EngineStats;
use crate::Engine;

pub(super) type Reply<T> = flume::Sender<Result<T, EngineError>>;
/// Runs with the state machine, or with the error that keeps the shard from serving it.
pub(super) type Query<M> = Box<dyn FnOnce(Result<&M, EngineError>) + Send>;
/// Runs on the shard's thread with its engine (or the error that keeps the shard from serving
/// it); the future it returns runs as a task there.
pub(super) type LocalRun<M, D> = Box<
    dyn FnOnce(Result<Rc<Engine<D, M>>, EngineError>) -> Pin<Box<dyn Future<Output = ()>>> + Send,
>;

pub(super) enum Request<M: StateMachine, D: Directory> {
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
    /// Runs a caller's task on the shard with the engine.
    Run(LocalRun<M, D>),
    /// Closes the engine once every task has finished and opens (recovers) it again.
    Reopen {
        reply: Reply<ShardReopen>,
    },
    Close {
        reply: Reply<EngineStats>,
    },
}

/// What [`ShardHandle::reopen`] found: the shard's engine closed and recovered again.
#[derive(Debug)]
pub struct ShardReopen {
    /// The recovery report of the new open.
    pub report: RecoveryReport,
    /// How long `Engine::open` took on the shard's thread (the close not included).
    pub open_duration: Duration,
}

/// A task running on one shard's thread ([`ShardHandle::spawn_local`]); its result once done.
pub struct ShardTask<R> {
    shard: usize,
    answer: flume::Receiver<Result<R, EngineError>>,
}

impl<R> ShardTask<R> {
    /// True once the task has finished (or can no longer finish: its shard's thread died).
    pub fn is_finished(&self) -> bool {
        !self.answer.is_empty() || self.answer.is_disconnected()
    }

    /// Waits for the task's result (async; any executor).
    pub async fn join(self) -> Result<R, EngineError> {
        let shard = self.shard;
        self.answer
            .recv_async()
            .await
            .map_err(|_| task_lost(shard))?
    }

    /// Waits for the task's result, blocking this thread (never call it on a shard's thread).
    pub fn wait(self) -> Result<R, EngineError> {
        let shard = self.shard;
        self.answer.recv().map_err(|_| task_lost(shard))?
    }
}

fn task_lost(shard: usize) -> EngineError {
    EngineError::ShardUnavailable {
        shard,
        reason: "the task ended without an answer (it panicked or its thread died)",
    }
}

/// Routes requests to the shards of one set. `Send + Clone`; cheap to clone.
pub struct ShardHandle<M: StateMachine, D: Directory = FsDirectory> {
    senders: Arc<[flume::Sender<Request<M, D>>]>,
}

impl<M: StateMachine, D: Directory> Clone for ShardHandle<M, D> {
    fn clone(&self) -> Self {
        Self {
            senders: self.senders.clone(),
        }
    }
}

impl<M: StateMachine + 'static, D: Directory> ShardHandle<M, D> {
    pub(super) fn new(senders: Vec<flume::Sender<Request<M, D>>>) -> Self {
        Self {
            senders: senders.into(),
        }
    }

    /// Shards in the set.
    pub fn shard_count(&self) -> usize {
        self.senders.len()
    }

    /// Asks every shard to close; the answers in shard order (a shard whose thread is gone
    /// cannot take the request: its answer is the disconnection).
    pub(super) fn send_close_to_all(
        &self,
    ) -> Vec<flume::Receiver<Result<EngineStats, EngineError>>> {
        let mut answers = Vec::with_capacity(self.senders.len());
        for sender in self.senders.iter() {
            let (reply, answer) = flume::bounded(1);
            let _ = sender.send(Request::Close { reply });
            answers.push(answer);
        }
        answers
    }

    async fn send(&self, shard: usize, request: Request<M, D>) -> Result<(), EngineError> {
        let sender = self.senders.get(shard).ok_or(EngineError::NoSuchShard {
            shard,
            shard_count: self.senders.len(),
        })?;
        sender
            .send_async(request)
            .await
            .map_err(|_| EngineError::Closed)
    }

    async fn call<T>(
        &self,
        shard: usize,
        make: impl FnOnce(Reply<T>) -> Request<M, D>,
    ) -> Result<T, EngineError> {
        let (reply, answer) = flume::bounded(1);
        self.send(shard, make(reply)).await?;
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

    /// Starts `f(engine)` as a task on `shard`'s thread, beside the requests it serves, and
    /// returns at once: for a loop that drives the engine op by op on its own core (a
    /// consensus replica, `keel bench`) without a channel round trip per op. The engine stays
    /// the shard's: a reopen or close waits for the task to finish.
    pub async fn spawn_local<R, F, Fut>(
        &self,
        shard: usize,
        f: F,
    ) -> Result<ShardTask<R>, EngineError>
    where
        R: Send + 'static,
        F: FnOnce(Rc<Engine<D, M>>) -> Fut + Send + 'static,
        Fut: Future<Output = R> + 'static,
    {
        let (reply, answer) = flume::bounded(1);
        let run: LocalRun<M, D> = Box::new(move |engine| match engine {
            Ok(engine) => Box::pin(async move {
                let _ = reply.send(Ok(f(engine).await));
            }),
            Err(error) => {
                let _ = reply.send(Err(error));
                Box::pin(async {})
            }
        });
        self.send(shard, Request::Run(run)).await?;
        Ok(ShardTask { shard, answer })
    }

    /// [`ShardHandle::spawn_local`] and wait for its result.
    pub async fn run_local<R, F, Fut>(&self, shard: usize, f: F) -> Result<R, EngineError>
    where
        R: Send + 'static,
        F: FnOnce(Rc<Engine<D, M>>) -> Fut + Send + 'static,
        Fut: Future<Output = R> + 'static,
    {
        self.spawn_local(shard, f).await?.join().await
    }

    /// Closes `shard`'s engine once every task on it has finished, then opens (recovers) it
    /// again on the same directory with a new state machine from the set's factory; requests
    /// that arrive meanwhile wait. A shard whose reopen fails answers every later request with
    /// that failure.
    pub async fn reopen(&self, shard: usize) -> Result<ShardReopen, EngineError> {
        self.call(shard, |reply| Request::Reopen { reply }).await
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
