//! `keel verify D [--json]`: read-only full check of journal and snapshots. Exit 0 clean,
//! 3 torn tail only, 4 corruption, 1 error.

use std::path::Path;

use keel_engine::{KvStateMachine, VerifyReport, VerifyStatus};

use super::error::{CliError, EXIT_CORRUPT, EXIT_TORN_TAIL};
use super::output::{self, Outcome};
use super::target;
use super::{readonly, tool_config, DirArg, Mode};

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub dir: DirArg,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: VerifyArgs) -> Result<u8, CliError> {
    let target = target::resolve(&args.dir.dir).await?;
    let outcomes = output::for_each_engine(&target, "verifying", |dir| async move {
        match verify_one(&dir.path).await {
            Ok(report) => outcome_of(&report),
            Err(error) => Outcome::failure(&error, "corrupt"),
        }
    })
    .await;
    Ok(output::print(&target, outcomes, args.json))
}

/// The read-only check of one engine directory.
pub async fn verify_one(path: &Path) -> Result<VerifyReport, CliError> {
    let root = readonly::open(path).await?;
    // The same decision recover makes, with the state machine recover would restore into.
    let config = tool_config(Mode::Absolute);
    Ok(keel_engine::verify(&root, &config, KvStateMachine::new()).await?)
}

fn outcome_of(report: &VerifyReport) -> Outcome {
    let (status, rank, exit) = match report.status {
        VerifyStatus::Clean => ("clean", 0, 0),
        VerifyStatus::TornTail => ("torn_tail", 10, EXIT_TORN_TAIL),
        VerifyStatus::Corrupt => ("corrupt", 200, EXIT_CORRUPT),
    };
    Outcome::from_report(status, rank, exit, report, report_text(status, report))
}

fn op_text(op: Option<u64>) -> String {
    op.map_or_else(|| "-".to_string(), |op| op.to_string())
}

fn report_text(status: &str, report: &VerifyReport) -> String {
    let mut text = format!(
        "{status}: ops {}..{}  commit op {}  journal watermark {}  {} snapshot(s)",
        op_text(report.first_op),
        op_text(report.last_op),
        op_text(report.commit_op),
        op_text(report.journal_snapshot_op),
        report.snapshots.len(),
    );
    for problem in &report.problems {
        text.push_str(&format!(
            "\nproblem: {} in {} at offset {} (op {})",
            problem.kind,
            problem.file,
            problem.offset,
            op_text(problem.op)
        ));
    }
    text
}
