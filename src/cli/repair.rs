//! `keel repair D [--mode M]`: what recover repairs (torn tails, point-in-time cuts, damaged
//! snapshots, interrupted temp files), without replaying into a state machine.
//! Exit 0, 4 (refused: corruption), 1.

use std::path::PathBuf;

use keel_engine::RecoveryReport;
use keel_storage::FsDirectory;

use super::error::CliError;
use super::recover::run_per_engine;
use super::{tool_config, Mode};

pub use super::recover::RecoverArgs as RepairArgs;

pub async fn run(args: RepairArgs) -> Result<u8, CliError> {
    run_per_engine(args, "repairing", repair_one).await
}

async fn repair_one(path: PathBuf, mode: Mode) -> Result<RecoveryReport, CliError> {
    let root = FsDirectory::open(&path, false, false)
        .await
        .map_err(|source| CliError::io(format!("opening {}", path.display()), source))?;
    Ok(keel_engine::repair(root, tool_config(mode)).await?)
}
