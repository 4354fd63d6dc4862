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

#![deny(missing_docs)]

pub use keel_engine as engine;
pub use keel_journal as journal;
pub use keel_storage as storage;

pub use keel_engine::{
    Engine, EngineConfig, EngineError, KvStateMachine, RecoveryMode, RecoveryReport, ShardSet,
    StateMachine, VerifyReport,
};
