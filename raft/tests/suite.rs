//! openraft's storage conformance suite (`Suite::test_all`, 45 cases) against the generic
//! keel-backed store, instantiated with two different type configurations:
//!
//! - keel's key-value [`TypeConfig`] (`KvRequest`, `BasicNode`, openraft's advanced leader id)
//!   with keel's `KvStateMachine`;
//! - [`CounterConfig`], an application's own types: a counter command enum, an `i64` response,
//!   its own node type, openraft's *standard* leader id (one leader per term, a different vote
//!   and log id encoding), with its own [`AppStateMachine`].
//!
//! Each runs on the real file system (every case a fresh temporary directory) and on keel's
//! in-memory `MemFs` (every case a fresh file system), since the store is also generic over
//! keel's `Directory` seam.

mod common;

use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::counter::{CounterConfig, Counters};
use keel_engine::KvStateMachine;
use keel_raft::openraft::testing::log::{StoreBuilder, Suite};
use keel_raft::openraft::type_config::TypeConfigExt;
use keel_raft::openraft::StorageError;
use keel_raft::{
    AppStateMachine, KeelConfig, LogStore, StateMachineStore, StoreConfig, TypeConfig,
};
use keel_storage::DirAccess;
use keel_storage::{Directory, FsDirectory, MemDirectory, MemFs};
use tempfile::TempDir;

/// Where a builder makes each case's store.
trait Place: Send + Sync + 'static {
    type Dir: Directory + 'static;
    type Guard: Send + Sync;
    async fn make(seed: u64) -> (Self::Guard, Self::Dir);
}

struct OnDisk;
impl Place for OnDisk {
    type Dir = FsDirectory;
    type Guard = TempDir;
    async fn make(_seed: u64) -> (TempDir, FsDirectory) {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = FsDirectory::open_with(dir.path(), DirAccess::Create)
            .await
            .expect("open temp dir");
        (dir, root)
    }
}

struct InMemory;
impl Place for InMemory {
    type Dir = MemDirectory;
    type Guard = ();
    async fn make(seed: u64) -> ((), MemDirectory) {
        ((), MemFs::new(seed).root())
    }
}

/// `StoreBuilder` must be `Send + Sync` even single-threaded: plain data only, the `Rc` stores are
/// made inside `build`.
struct Builder<C, M, P> {
    builds: Arc<AtomicUsize>,
    _types: PhantomData<Types<C, M, P>>,
}

/// The builder's type parameters, as a `Send + Sync` marker.
type Types<C, M, P> = fn() -> (C, M, P);

impl<C, M, P> StoreBuilder<C, LogStore<C, P::Dir>, StateMachineStore<C, M, P::Dir>, P::Guard>
    for Builder<C, M, P>
where
    C: KeelConfig,
    C::Entry: Clone + keel_raft::EntryCommand<C::D>,
    M: AppStateMachine<C>,
    P: Place,
{
    async fn build(
        &self,
    ) -> Result<
        (
            P::Guard,
            LogStore<C, P::Dir>,
            StateMachineStore<C, M, P::Dir>,
        ),
        StorageError<C>,
    > {
        let seed = self.builds.fetch_add(1, Ordering::Relaxed) as u64;
        let (guard, root) = P::make(seed).await;
        let (log, sm, _report) = keel_raft::open::<C, M, _>(root, StoreConfig::default())
            .await
            .map_err(|e| StorageError::read(C::err_from_error(&e.into_io())))?;
        Ok((guard, log, sm))
    }
}

/// Runs the whole suite with `C`, `M` on `P`; asserts every case built its store.
fn run_suite<C, M, P>()
where
    C: KeelConfig,
    C::D: fmt::Debug,
    C::R: fmt::Debug,
    C::Term: From<u64>,
    C::NodeId: From<u64>,
    C::Node: Default,
    C::Entry: Clone + keel_raft::EntryCommand<C::D>,
    M: AppStateMachine<C>,
    P: Place,
{
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let builds = Arc::new(AtomicUsize::new(0));
    let builder = Builder::<C, M, P> {
        builds: builds.clone(),
        _types: PhantomData,
    };
    C::run(async move {
        Suite::test_all(builder).await.expect("storage suite");
    });
    // 44 single-store cases + transfer_snapshot, which builds two stores.
    assert_eq!(builds.load(Ordering::Relaxed), 46, "every suite case ran");
}

#[test]
fn suite_passes_with_the_kv_config_on_disk() {
    run_suite::<TypeConfig, KvStateMachine, OnDisk>();
}

#[test]
fn suite_passes_with_the_kv_config_on_memfs() {
    run_suite::<TypeConfig, KvStateMachine, InMemory>();
}

#[test]
fn suite_passes_with_an_application_config_on_disk() {
    run_suite::<CounterConfig, Counters, OnDisk>();
}

#[test]
fn suite_passes_with_an_application_config_on_memfs() {
    run_suite::<CounterConfig, Counters, InMemory>();
}
