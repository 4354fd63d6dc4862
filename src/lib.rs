//! keel: the persistence layer of a per-core metadata replica.
//!
//! This facade re-exports the layers, top to bottom:
//!
//! - [`engine`] (`keel-engine`): snapshots, the checkpoint coordinator, `recover()`, shards;
//! - [`journal`] (`keel-journal`): the write-ahead journal, group commit, the recovery scan;
//! - [`storage`] (`keel-storage`): the I/O seam (compio files, an in-memory crash model).
//!
//! The `keel` binary (`src/main.rs`, one file per command under `src/cli/`) drives them: the
//! `bench` workload and the `recover`, `verify`, `repair`, `inspect` and `dump` tools.
//! docs/architecture.md describes the layers, docs/format.md the bytes on disk.
//!
//! # Example
//!
//! An engine on a real directory: a committed op is there after a reopen.
//!
//! ```
//! use keel::storage::{DirAccess, FsDirectory};
//! use keel::{Engine, EngineConfig, KvStateMachine};
//!
//! let dir = tempfile::tempdir().unwrap();
//! compio::runtime::Runtime::new().unwrap().block_on(async {
//!     let mut config = EngineConfig::default();
//!     config.journal.segment_bytes = 1 << 20;
//!     let root = FsDirectory::open_with(dir.path(), DirAccess::Create).await.unwrap();
//!     let (engine, _) = Engine::open(root, config.clone(), KvStateMachine::new()).await.unwrap();
//!     let mut command = Vec::new();
//!     keel::engine::encode_set(b"greeting", b"hello", &mut command).unwrap();
//!     engine.append(1, &command).await.unwrap();
//!     engine.commit(1).await.unwrap();
//!     engine.close().await.unwrap();
//!
//!     let root = FsDirectory::open_with(dir.path(), DirAccess::Existing).await.unwrap();
//!     let (engine, report) = Engine::open(root, config, KvStateMachine::new()).await.unwrap();
//!     assert_eq!(report.commit_op, 1);
//!     assert_eq!(engine.state_machine().get(b"greeting"), Some(&b"hello"[..]));
//!     engine.close().await.unwrap();
//! });
//! ```

#![deny(missing_docs)]

pub use keel_engine as engine;
pub use keel_journal as journal;
pub use keel_storage as storage;

pub use keel_engine::{
    Engine, EngineConfig, EngineError, KvStateMachine, RecoveryMode, RecoveryReport, ShardSet,
    StateMachine, VerifyReport,
};
