//! `keel repair D [--mode M] [--dry-run] [--json]`: what recover repairs (torn tails,
//! point-in-time cuts, snapshots fallen back from, interrupted temp files), without replaying
//! into a kept state. `--dry-run` prints what would be cut and quarantined and changes nothing.
//! Exit 0, 4 (refused: corruption), 1.

use std::path::Path;

use keel_engine::{RecoveryReport, RepairPlan};
use keel_journal::MetadataJournal;

use super::error::CliError;
use super::geometry::config_for;
use super::output::{self, Outcome};
use super::recover::{open_writable, recover_raft_journal, run_per_engine};
use super::target::{self, DirKind, EngineDir};
use super::{readonly, style, text, Mode};

pub use super::recover::RecoverArgs as RepairArgs;

pub async fn run(args: RepairArgs) -> Result<u8, CliError> {
    if args.dry_run {
        return dry_run(args).await;
    }
    run_per_engine(args, "repairing", repair_one).await
}

async fn repair_one(dir: EngineDir, mode: Mode) -> Result<RecoveryReport, CliError> {
    let root = open_writable(&dir.path).await?;
    let (config, _) = config_for(&root, mode).await?;
    if dir.kind == DirKind::Raft {
        return recover_raft_journal(&root, config).await;
    }
    Ok(keel_engine::repair(root, config).await?)
}

async fn dry_run(args: RepairArgs) -> Result<u8, CliError> {
    let target = target::resolve(&args.dir.dir).await?;
    let mode = args.mode;
    let outcomes = output::for_each_engine(&target, "planning", |dir| async move {
        match plan_one(&dir, mode).await {
            Ok(plan) => outcome_of(&plan),
            Err(error) => Outcome::failure(&error, "refused"),
        }
    })
    .await;
    Ok(output::print(&target, outcomes, args.json))
}

/// The plan for one directory, read-only; each cut's byte count from the files as they are.
async fn plan_one(dir: &EngineDir, mode: Mode) -> Result<RepairPlan, CliError> {
    let root = readonly::open(&dir.path).await?;
    let (config, _) = config_for(&root, mode).await?;
    if dir.kind == DirKind::Raft {
        let plan = MetadataJournal::plan(&root, config.journal.clone(), config.recovery_mode)
            .await
            .map_err(keel_engine::EngineError::from)?;
        let mut repairs = Vec::new();
        if let (Some(cut), Some(stop)) = (plan.cut(), plan.report().problems.first()) {
            repairs.push(keel_engine::PlannedRepair {
                kind: keel_engine::RepairKind::JournalCut(cut),
                file: keel_engine::journal_file(&root.path().display().to_string(), &stop.file),
                offset: stop.offset_bytes,
                bytes: 0,
                op: stop.op,
            });
        }
        let report = plan.report();
        return Ok(count_cuts(
            &dir.path,
            RepairPlan {
                snapshot_op: 0,
                commit_op: plan.commit_op(),
                repairs,
                lost_committed: report.lost_ops.iter().map(Into::into).collect(),
                cut_uncommitted: report.torn_ops.iter().map(Into::into).collect(),
            },
        ));
    }
    Ok(count_cuts(
        &dir.path,
        keel_engine::plan_repair(&root, &config).await?,
    ))
}

/// Fills in a journal cut's bytes: the rest of its segment and every later segment.
fn count_cuts(path: &Path, mut plan: RepairPlan) -> RepairPlan {
    let journal = path.join(super::walk::JOURNAL_DIR);
    let len = |name: &str| std::fs::metadata(journal.join(name)).map_or(0, |m| m.len());
    let mut segments: Vec<String> = std::fs::read_dir(&journal)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| keel_journal::format::parse_segment_file_name(n).is_some())
                .collect()
        })
        .unwrap_or_default();
    segments.sort();
    for repair in plan.repairs.iter_mut() {
        let name = Path::new(&repair.file)
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        if repair.kind.is_journal_cut() {
            let later: u64 = segments
                .iter()
                .filter(|n| n.as_str() > name.as_str())
                .map(|n| len(n))
                .sum();
            repair.bytes = len(&name).saturating_sub(repair.offset) + later;
        } else if repair.bytes == 0 && repair.kind == keel_engine::RepairKind::CompactionTemp {
            repair.bytes = len(&name);
        }
    }
    plan
}

fn outcome_of(plan: &RepairPlan) -> Outcome {
    let status = if plan.repairs.is_empty() {
        "clean"
    } else {
        "would_repair"
    };
    let mut outcome = Outcome::from_report(
        status,
        10 * u8::from(status != "clean"),
        0,
        plan,
        plan_text(status, plan),
    );
    outcome.json.insert("dry_run".into(), true.into());
    outcome
        .json
        .insert("problems".into(), serde_json::Value::Array(Vec::new()));
    outcome
}

fn plan_text(status: &str, plan: &RepairPlan) -> String {
    let mut text = format!(
        "{status} (dry run: nothing was changed)\nsnapshot op {}  commit op {}",
        plan.snapshot_op, plan.commit_op
    );
    for repair in &plan.repairs {
        let size = style::size(repair.bytes);
        let what = if repair.kind.is_journal_cut() {
            format!("would cut {size} from offset {} (this segment's rest and every later one), copied to quarantine/ first", repair.offset)
        } else {
            format!("would move {size} to quarantine/")
        };
        text.push_str(&format!(
            "\n{}: {} {what}{}",
            repair.kind,
            repair.file,
            repair
                .op
                .map_or_else(String::new, |op| format!(" (op {op})"))
        ));
    }
    if !plan.lost_committed.is_empty() {
        text.push_str(&format!(
            "\nwould LOSE COMMITTED OPS (fetch them from peers): {}",
            text::ranges(&plan.lost_committed)
        ));
    }
    if !plan.cut_uncommitted.is_empty() {
        text.push_str(&format!(
            "\nwould cut, never committed here: ops {}",
            text::ranges(&plan.cut_uncommitted)
        ));
    }
    text
}
