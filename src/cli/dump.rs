//! `keel dump D [--from OP] [--to OP] [--json]`: one line per journal entry — op, kind, payload
//! length, checksum — walking every segment's bytes in order (`walk.rs`): markers (commit,
//! truncate, snapshot watermark) and superseded entries included, each with its seq, segment and
//! offset; a walk that stops before the end of a segment says where. Strictly read-only.
//! Exit 0, or 1 on an error.

use std::path::Path;

use serde::Serialize;

use super::error::CliError;
use super::output::{self, Outcome};
use super::target;
use super::walk::{walk_journal, EntryInfo, WalkStop};
use super::{readonly, DirArg};

#[derive(Debug, clap::Args)]
pub struct DumpArgs {
    #[command(flatten)]
    pub dir: DirArg,
    /// First op to print.
    #[arg(long, value_name = "OP", default_value_t = 0)]
    pub from: u64,
    /// Last op to print (default: no bound).
    #[arg(long, value_name = "OP")]
    pub to: Option<u64>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
struct DumpReport {
    count: usize,
    entries: Vec<EntryInfo>,
    stops: Vec<WalkStop>,
}

pub async fn run(args: DumpArgs) -> Result<u8, CliError> {
    let to = args.to.unwrap_or(u64::MAX);
    if to < args.from {
        return Err(CliError::Usage(format!(
            "--to {to} is below --from {}",
            args.from
        )));
    }
    let target = target::resolve(&args.dir.dir).await?;
    let outcomes = output::for_each_engine(&target, "dumping", |dir| async move {
        match dump_one(&dir.path, args.from, to).await {
            Ok(report) => outcome_of(report),
            Err(error) => Outcome::failure(&error, "error"),
        }
    })
    .await;
    Ok(output::print(&target, outcomes, args.json))
}

async fn dump_one(path: &Path, from: u64, to: u64) -> Result<DumpReport, CliError> {
    let root = readonly::open(path).await?;
    let mut entries = Vec::new();
    let segments = walk_journal(&root, |entry| {
        if (from..=to).contains(&entry.op) {
            entries.push(entry.clone());
        }
    })
    .await?;
    Ok(DumpReport {
        count: entries.len(),
        entries,
        stops: segments.into_iter().filter_map(|s| s.stop).collect(),
    })
}

fn line(e: &EntryInfo) -> String {
    format!(
        "op {}  kind {}  len {}  crc32 {}{}  seq {}  commit {}  at {}:{}",
        e.op,
        e.kind,
        e.len,
        e.checksum,
        if e.checksum_ok { "" } else { " (MISMATCH)" },
        e.seq,
        e.commit_op,
        e.file,
        e.offset
    )
}

fn outcome_of(report: DumpReport) -> Outcome {
    let mut lines: Vec<String> = report.entries.iter().map(line).collect();
    for stop in &report.stops {
        lines.push(format!(
            "stop: {} at {}:{} (run `keel verify`)",
            stop.reason, stop.file, stop.offset
        ));
    }
    Outcome::from_report("ok", 0, 0, &report, lines.join("\n"))
}
