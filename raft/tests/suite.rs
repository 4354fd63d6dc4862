//! openraft's storage conformance suite (`Suite::test_all`, 45 cases) against the keel-backed
//! store: on the real file system (every case gets a fresh temporary directory), and on keel's
//! in-memory `MemFs` (every case gets a fresh file system), since the store is generic over
//! keel's `Directory` seam.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use keel_raft::{LogStore, StateMachineStore, StoreConfig, TypeConfig};
use keel_storage::{FsDirectory, MemDirectory, MemFs};
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::type_config::TypeConfigExt;
use openraft::StorageError;
use tempfile::TempDir;

/// `StoreBuilder` must be `Send + Sync` even single-threaded: plain data only, the `Rc` stores are
/// made inside `build`.
struct Builder {
    builds: Arc<AtomicUsize>,
}

impl StoreBuilder<TypeConfig, LogStore<FsDirectory>, StateMachineStore<FsDirectory>, TempDir>
    for Builder
{
    async fn build(
        &self,
    ) -> Result<
        (
            TempDir,
            LogStore<FsDirectory>,
            StateMachineStore<FsDirectory>,
        ),
        StorageError<TypeConfig>,
    > {
        self.builds.fetch_add(1, Ordering::Relaxed);
        let dir = tempfile::tempdir().expect("temp dir");
        let root = FsDirectory::open(dir.path(), true, false)
            .await
            .expect("open temp dir");
        let (log, sm, _report) = keel_raft::open(root, StoreConfig::default())
            .await
            .map_err(|e| StorageError::read(TypeConfig::err_from_error(&e.into_io())))?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite_passes_on_keel() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let builds = Arc::new(AtomicUsize::new(0));
    let builder = Builder {
        builds: builds.clone(),
    };
    TypeConfig::run(async move {
        Suite::test_all(builder).await.expect("storage suite");
    });
    let builds = builds.load(Ordering::Relaxed);
    // 44 single-store cases + transfer_snapshot, which builds two stores.
    assert_eq!(builds, 46, "every suite case ran");
}

/// Builds stores on a fresh `MemFs` each (the file system lives on inside the store's handles).
struct MemBuilder {
    builds: Arc<AtomicUsize>,
}

impl StoreBuilder<TypeConfig, LogStore<MemDirectory>, StateMachineStore<MemDirectory>, ()>
    for MemBuilder
{
    async fn build(
        &self,
    ) -> Result<
        ((), LogStore<MemDirectory>, StateMachineStore<MemDirectory>),
        StorageError<TypeConfig>,
    > {
        let seed = self.builds.fetch_add(1, Ordering::Relaxed) as u64;
        let fs = MemFs::new(seed);
        let (log, sm, _report) = keel_raft::open(fs.root(), StoreConfig::default())
            .await
            .map_err(|e| StorageError::read(TypeConfig::err_from_error(&e.into_io())))?;
        Ok(((), log, sm))
    }
}

#[test]
fn openraft_storage_suite_passes_on_keel_memfs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let builds = Arc::new(AtomicUsize::new(0));
    let builder = MemBuilder {
        builds: builds.clone(),
    };
    TypeConfig::run(async move {
        Suite::test_all(builder)
            .await
            .expect("storage suite on MemFs");
    });
    assert_eq!(builds.load(Ordering::Relaxed), 46, "every suite case ran");
}
