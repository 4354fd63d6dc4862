//! `keel dump D [--from OP] [--to OP] [--kind K] [--limit N] [--hex] [--decode] [--json]`: one
//! line per journal entry — op, kind, payload length, checksum — walking every segment's bytes in
//! order (`walk.rs`): markers (commit, truncate, snapshot watermark) and superseded entries
//! included, each with its seq, segment and offset; a walk that stops before the end of a segment
//! says where. `D` may be a directory (engine, keel-raft store, shard set, cluster) or one `.wal`
//! segment file. `--json` prints one JSON object per line. Strictly read-only. Exit 0, or 1.

use clap::ValueEnum;
use keel_engine::KvCommand;
use serde_json::{Map, Value};

use super::error::CliError;
use super::output::versioned;
use super::target::{self, EngineDir};
use super::walk::{walk_file, walk_journal, EntryInfo, SegmentSummary, WalkStop};
use super::{live, readonly, style, DirArg};

/// Most payload bytes `--hex` prints per entry.
const MAX_HEX_BYTES: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EntryKindArg {
    Data,
    Commit,
    Truncate,
    Snapshot,
}

impl EntryKindArg {
    fn name(self) -> &'static str {
        match self {
            EntryKindArg::Data => "data",
            EntryKindArg::Commit => "commit",
            EntryKindArg::Truncate => "truncate",
            EntryKindArg::Snapshot => "snapshot",
        }
    }
}

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
    /// Only entries of these kinds (repeatable, or comma-separated).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub kind: Vec<EntryKindArg>,
    /// At most N entries per directory.
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
    /// Also print each payload's bytes in hex (at most 4 KiB of each).
    #[arg(long)]
    pub hex: bool,
    /// Also decode each data payload as a key-value command (`set`/`delete`).
    #[arg(long)]
    pub decode: bool,
    /// Print one JSON object per line instead of text.
    #[arg(long)]
    pub json: bool,
}

/// What to print of each entry.
struct Filter<'a> {
    args: &'a DumpArgs,
    to: u64,
}

impl Filter<'_> {
    fn wants(&self, entry: &EntryInfo) -> bool {
        (self.args.from..=self.to).contains(&entry.op)
            && (self.args.kind.is_empty()
                || self.args.kind.iter().any(|k| k.name() == entry.kind.name()))
    }
}

pub async fn run(args: DumpArgs) -> Result<u8, CliError> {
    let to = args.to.unwrap_or(u64::MAX);
    if to < args.from {
        return Err(CliError::Usage(format!(
            "--to {to} is below --from {}",
            args.from
        )));
    }
    let filter = Filter { args: &args, to };
    let path = &args.dir.dir;
    if path.is_file() {
        let mut printer = Printer::new(&filter, None);
        let summary = walk_file(path, &mut |entry, payload| printer.entry(entry, payload))?;
        printer.finish(&[summary]);
        return Ok(0);
    }
    let target = target::resolve(path).await?;
    let mut exit = 0;
    for dir in target.engines() {
        if !args.json && target.is_shard_set() {
            println!("{}:", style::bold(&dir.path.display().to_string()));
        }
        if let Err(error) = dump_one(&dir, &filter).await {
            exit = error.exit_code();
            let mut line = Map::new();
            line.insert("type".into(), "error".into());
            member_keys(&mut line, &dir);
            line.insert("error".into(), error.to_json());
            if args.json {
                println!("{}", versioned(line));
            }
            eprintln!(
                "keel: {}: {}",
                dir.path.display(),
                super::error_chain(&error)
            );
        }
    }
    Ok(exit)
}

fn member_keys(line: &mut Map<String, Value>, dir: &EngineDir) {
    if let Some(shard) = dir.shard {
        line.insert("shard".into(), shard.into());
    }
    line.insert("path".into(), dir.path.display().to_string().into());
}

async fn dump_one(dir: &EngineDir, filter: &Filter<'_>) -> Result<(), CliError> {
    let root = readonly::open(&dir.path).await?;
    if let Some(note) = live::note(&dir.path) {
        eprintln!("keel: note: {note}");
    }
    let mut printer = Printer::new(filter, Some(dir));
    let segments = walk_journal(&root, |entry, payload| printer.entry(entry, payload)).await?;
    printer.finish(&segments);
    Ok(())
}

/// Prints entries as they are walked, within the filter and the limit.
struct Printer<'a> {
    filter: &'a Filter<'a>,
    dir: Option<&'a EngineDir>,
    count: u64,
}

impl<'a> Printer<'a> {
    fn new(filter: &'a Filter<'a>, dir: Option<&'a EngineDir>) -> Self {
        Printer {
            filter,
            dir,
            count: 0,
        }
    }

    fn entry(&mut self, entry: &EntryInfo, payload: &[u8]) {
        let args = self.filter.args;
        if !self.filter.wants(entry) || args.limit.is_some_and(|limit| self.count >= limit) {
            return;
        }
        self.count += 1;
        let hex = args
            .hex
            .then(|| hex(&payload[..payload.len().min(MAX_HEX_BYTES)]));
        let command =
            (args.decode && entry.kind == keel_journal::EntryKind::Data).then(|| decoded(payload));
        if args.json {
            let mut line = self.base("entry");
            if let Ok(Value::Object(fields)) = serde_json::to_value(entry) {
                line.extend(fields);
            }
            if let Some(hex) = hex {
                line.insert("payload_hex".into(), hex.into());
            }
            if let Some(command) = command {
                line.insert("command".into(), command);
            }
            println!("{}", versioned(line));
            return;
        }
        let mut text = line(entry);
        if let Some(command) = command {
            text.push_str(&format!("  {}", command_text(&command)));
        }
        if let Some(hex) = hex {
            text.push_str(&format!("\n    {hex}"));
        }
        println!("{text}");
    }

    fn base(&self, kind: &str) -> Map<String, Value> {
        let mut line = Map::new();
        line.insert("type".into(), kind.into());
        if let Some(dir) = self.dir {
            member_keys(&mut line, dir);
        }
        line
    }

    fn finish(self, segments: &[SegmentSummary]) {
        let stops: Vec<&WalkStop> = segments.iter().filter_map(|s| s.stop.as_ref()).collect();
        if self.filter.args.json {
            for stop in &stops {
                let mut line = self.base("stop");
                if let Ok(Value::Object(fields)) = serde_json::to_value(stop) {
                    line.extend(fields);
                }
                println!("{}", versioned(line));
            }
            let mut line = self.base("summary");
            line.insert("count".into(), self.count.into());
            line.insert("stops".into(), stops.len().into());
            println!("{}", versioned(line));
            return;
        }
        for stop in stops {
            println!(
                "stop: {} at {}:{} (run `keel verify`)",
                stop.reason, stop.file, stop.offset
            );
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes as text when they are printable UTF-8, else as hex.
fn readable(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) if text.chars().all(|c| !c.is_control()) => text.to_string(),
        _ => format!("0x{}", hex(bytes)),
    }
}

fn decoded(payload: &[u8]) -> Value {
    match KvCommand::decode(payload) {
        Ok(KvCommand::Set { key, value }) => serde_json::json!({
            "command": "set", "key": readable(&key), "value_bytes": value.len(),
        }),
        Ok(KvCommand::Delete { key }) => serde_json::json!({
            "command": "delete", "key": readable(&key),
        }),
        Err(error) => serde_json::json!({ "command": null, "error": error.to_string() }),
    }
}

fn command_text(command: &Value) -> String {
    match command["command"].as_str() {
        Some("set") => format!(
            "set {} ({} value bytes)",
            command["key"].as_str().unwrap_or_default(),
            command["value_bytes"]
        ),
        Some("delete") => format!("delete {}", command["key"].as_str().unwrap_or_default()),
        _ => format!(
            "not a key-value command: {}",
            command["error"].as_str().unwrap_or_default()
        ),
    }
}

fn line(e: &EntryInfo) -> String {
    format!(
        "op {}  kind {}  len {}  crc32 {}{}  seq {}  commit {}  at {}:{}",
        e.op,
        e.kind.name(),
        e.len,
        e.checksum,
        if e.checksum_ok { "" } else { " (MISMATCH)" },
        e.seq,
        e.commit_op,
        e.file,
        e.offset
    )
}
