//! `keel dump D [--from OP] [--to OP] [--json]`: one line per live journal entry — op, kind,
//! payload length, payload crc32 — in op order. Strictly read-only. Exit 0, or 1 on an error.

use std::path::Path;

use keel_engine::EngineError;
use keel_journal::{MetadataJournal, RecoveryMode};
use serde::Serialize;

use super::error::CliError;
use super::output::{self, Outcome};
use super::target::{self, EngineDir};
use super::{readonly, tool_config, DirArg, Mode};

#[derive(Debug, clap::Args)]
pub struct DumpArgs {
    #[command(flatten)]
    pub dir: DirArg,
    /// First op to print.
    #[arg(long, value_name = "OP", default_value_t = 1)]
    pub from: u64,
    /// Last op to print (default: the last live op).
    #[arg(long, value_name = "OP")]
    pub to: Option<u64>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// One entry as dumped.
#[derive(Debug, Clone, Serialize)]
pub struct DumpEntry {
    pub op: u64,
    /// The reader yields live data entries (markers are folded into the journal's state).
    pub kind: &'static str,
    pub len: usize,
    /// crc32 of the payload.
    pub checksum: String,
}

#[derive(Debug, Clone, Serialize)]
struct DumpReport {
    count: usize,
    entries: Vec<DumpEntry>,
}

pub async fn run(args: DumpArgs) -> Result<u8, CliError> {
    if args.to.is_some_and(|to| to < args.from) {
        return Err(CliError::Usage(format!(
            "--to {} is below --from {}",
            args.to.unwrap_or_default(),
            args.from
        )));
    }
    let target = target::resolve(&args.dir.dir).await?;
    let mut outcomes: Vec<(EngineDir, Outcome)> = Vec::new();
    for dir in target.engines() {
        let outcome = match dump_one(&dir.path, args.from, args.to).await {
            Ok(entries) => outcome_of(entries),
            Err(error) => Outcome::failure(&error, "error"),
        };
        outcomes.push((dir, outcome));
    }
    Ok(output::print(&target, outcomes, args.json))
}

async fn dump_one(path: &Path, from: u64, to: Option<u64>) -> Result<Vec<DumpEntry>, CliError> {
    let root = readonly::open(path).await?;
    let config = tool_config(Mode::TolerateTornTail).journal;
    let (journal, _scan) = MetadataJournal::open(&root, config, RecoveryMode::TolerateTornTail)
        .await
        .map_err(EngineError::from)?;
    let mut entries = Vec::new();
    let mut reader = journal.reader(from);
    while let Some(entry) = reader.next().await.map_err(EngineError::from)? {
        if to.is_some_and(|to| entry.op > to) {
            break;
        }
        entries.push(DumpEntry {
            op: entry.op,
            kind: "data",
            len: entry.payload.len(),
            checksum: format!("{:#010x}", crc32fast::hash(&entry.payload)),
        });
    }
    // Dropped, not closed: closing flushes, and this journal is read-only.
    drop(journal);
    Ok(entries)
}

fn outcome_of(entries: Vec<DumpEntry>) -> Outcome {
    let text = entries
        .iter()
        .map(|e| {
            format!(
                "op {}  kind {}  len {}  crc32 {}",
                e.op, e.kind, e.len, e.checksum
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    let report = DumpReport {
        count: entries.len(),
        entries,
    };
    Outcome::from_report("ok", 0, 0, &report, text)
}
