//! `keel repair D [--mode M]`: what recover repairs (torn tails, point-in-time cuts, damaged
//! snapshots, interrupted temp files), without replaying into a state machine.
//! Exit 0, 4 (refused: corruption), 1.

use std::path::Path;

use keel_engine::RecoveryReport;
use keel_storage::FsDirectory;

use super::error::CliError;
use super::output::{self, Outcome};
use super::recover::outcome_of;
use super::target;
use super::{tool_config, DirArg, Mode};

#[derive(Debug, clap::Args)]
pub struct RepairArgs {
    #[command(flatten)]
    pub dir: DirArg,
    /// What recovery may repair.
    #[arg(long, value_enum, default_value_t)]
    pub mode: Mode,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: RepairArgs) -> Result<u8, CliError> {
    let target = target::resolve(&args.dir.dir).await?;
    let outcomes = output::for_each_engine(&target, "repairing", |dir| async move {
        match repair_one(&dir.path, args.mode).await {
            Ok(report) => outcome_of(&report),
            Err(error) => Outcome::failure(&error, "refused"),
        }
    })
    .await;
    Ok(output::print(&target, outcomes, args.json))
}

async fn repair_one(path: &Path, mode: Mode) -> Result<RecoveryReport, CliError> {
    let root = FsDirectory::open(path, false, false)
        .await
        .map_err(|source| CliError::io(format!("opening {}", path.display()), source))?;
    Ok(keel_engine::repair(root, tool_config(mode)).await?)
}
