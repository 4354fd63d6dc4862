//! Printing what a tool found on each engine: alone for an engine directory, or as a shard set
//! (`{"schema_version": 1, "status": <worst>, "path": …, "shards": [{"shard": i, "path": …, …}]}`),
//! as text or one JSON object. The JSON contract is documented in `docs/cli.md`.

use std::future::Future;
use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use serde_json::{Map, Value};

use super::error::{error_chain, CliError, EXIT_CORRUPT, EXIT_ERROR};
use super::style;
use super::target::{EngineDir, Target};

/// What a tool found on one engine directory.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The `status` key (`clean`, `torn_tail`, `repaired`, `refused`, `error`, …).
    pub status: &'static str,
    /// Higher is worse: a shard set reports its worst shard's status and exit code.
    pub rank: u8,
    pub exit: u8,
    /// The JSON keys for this engine (without `status`, added when printed).
    pub json: Map<String, Value>,
    /// Human-readable lines.
    pub text: String,
}

impl Outcome {
    /// An outcome from a serializable report (its fields become the JSON keys).
    pub fn from_report<T: Serialize>(
        status: &'static str,
        rank: u8,
        exit: u8,
        report: &T,
        text: String,
    ) -> Self {
        let json = match serde_json::to_value(report) {
            Ok(Value::Object(map)) => map,
            Ok(other) => Map::from_iter([("report".to_string(), other)]),
            Err(error) => Map::from_iter([("report_error".to_string(), error.to_string().into())]),
        };
        Outcome {
            status,
            rank,
            exit,
            json,
            text,
        }
    }

    /// A failure: `refused` (exit 4) when it is corruption, else `error` (exit 1).
    pub fn failure(error: &CliError, refused: &'static str) -> Self {
        let message = error_chain(error);
        let (status, rank, exit) = if error.is_corruption() {
            (refused, 200, EXIT_CORRUPT)
        } else {
            ("error", 100, EXIT_ERROR)
        };
        let mut json = Map::new();
        json.insert("error".into(), error.to_json());
        json.insert("problems".into(), Value::Array(Vec::new()));
        if let CliError::Engine(engine_error) = error {
            if let Some(range) = engine_error.missing_range() {
                json.insert(
                    "missing_ops".into(),
                    serde_json::json!({"first": range.start(), "last": range.end()}),
                );
            }
        }
        Outcome {
            status,
            rank,
            exit,
            json,
            text: format!("{status}: {message}"),
        }
    }

    /// Records whether a live writer holds the directory (`live_writer`: the note, or null).
    pub fn add_live_writer(&mut self, note: Option<String>) {
        if let Some(note) = &note {
            self.text = format!("note: {note}\n{}", self.text);
        }
        self.json
            .insert("live_writer".into(), note.map_or(Value::Null, Value::from));
    }

    fn into_json(self, dir: &EngineDir) -> Map<String, Value> {
        let mut map = Map::new();
        if let Some(shard) = dir.shard {
            map.insert("shard".into(), shard.into());
        }
        map.insert("path".into(), dir.path.display().to_string().into());
        map.insert("status".into(), self.status.into());
        map.extend(self.json);
        map
    }
}

/// Prints the outcomes (one per engine of `target`, in order) and returns the exit code: the
/// worst outcome's.
pub fn print(target: &Target, outcomes: Vec<(EngineDir, Outcome)>, json: bool) -> u8 {
    let worst = outcomes
        .iter()
        .map(|(_, o)| o)
        .max_by_key(|o| o.rank)
        .map(|o| (o.status, o.exit))
        .unwrap_or(("clean", 0));
    if json {
        println!("{}", to_json(target, outcomes, worst.0));
    } else {
        print_text(target, outcomes, worst.0);
    }
    worst.1
}

/// The version of the JSON contract every `--json` output carries (`docs/cli.md`).
pub const SCHEMA_VERSION: u64 = 1;

/// `map` with `schema_version` first.
pub fn versioned(map: Map<String, Value>) -> Value {
    let mut out = Map::new();
    out.insert("schema_version".into(), SCHEMA_VERSION.into());
    out.extend(map);
    Value::Object(out)
}

/// The error object a `--json` command prints on stdout when it fails before any outcome.
pub fn error_json(error: &CliError) -> Value {
    versioned(Map::from_iter([("error".to_string(), error.to_json())]))
}

fn to_json(target: &Target, outcomes: Vec<(EngineDir, Outcome)>, worst: &str) -> Value {
    if !target.is_shard_set() {
        if let Some((dir, outcome)) = outcomes.into_iter().next() {
            return versioned(outcome.into_json(&dir));
        }
        return versioned(Map::from_iter([("status".to_string(), worst.into())]));
    }
    let shards: Vec<Value> = outcomes
        .into_iter()
        .map(|(dir, outcome)| Value::Object(outcome.into_json(&dir)))
        .collect();
    let mut map = Map::new();
    map.insert("status".into(), worst.into());
    map.insert("path".into(), target.path().display().to_string().into());
    map.insert("kind".into(), target.kind_name().into());
    map.insert("shards".into(), Value::Array(shards));
    versioned(map)
}

fn print_text(target: &Target, outcomes: Vec<(EngineDir, Outcome)>, worst: &str) {
    let set = target.is_shard_set();
    for (dir, outcome) in &outcomes {
        if set {
            println!("{}:", style::bold(&dir.path.display().to_string()));
            for line in outcome.text.lines() {
                println!("  {line}");
            }
        } else {
            println!("{}", outcome.text);
        }
    }
    if set {
        println!(
            "{}: {} member(s), status {worst}",
            target.kind_name().replace('_', " "),
            outcomes.len()
        );
    }
}

/// Runs `one` on every engine of `target` in order, with a spinner on stderr when it is a
/// terminal (quiet otherwise), and collects the outcomes.
pub async fn for_each_engine<F, Fut>(
    target: &Target,
    verb: &str,
    mut one: F,
) -> Vec<(EngineDir, Outcome)>
where
    F: FnMut(EngineDir) -> Fut,
    Fut: Future<Output = Outcome>,
{
    let spinner = Spinner::new();
    let mut outcomes = Vec::new();
    for dir in target.engines() {
        spinner.show(&format!("{verb} {}", dir.path.display()));
        // Every log line of this member carries its shard (and path).
        let span =
            tracing::warn_span!("keel", shard = tracing::field::Empty, path = %dir.path.display());
        if let Some(shard) = dir.shard {
            span.record("shard", shard as u64);
        }
        let outcome = tracing::Instrument::instrument(one(dir.clone()), span).await;
        outcomes.push((dir, outcome));
    }
    spinner.finish();
    outcomes
}

/// A spinner on stderr while a tool scans, only on a terminal.
struct Spinner {
    bar: Option<ProgressBar>,
}

impl Spinner {
    fn new() -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} [{elapsed}]") {
                bar.set_style(style);
            }
            bar.enable_steady_tick(Duration::from_millis(100));
            super::logging::set_active_bar(Some(bar.clone()));
            bar
        });
        Spinner { bar }
    }

    fn show(&self, message: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(message.to_string());
        }
    }

    fn finish(self) {
        if let Some(bar) = self.bar {
            super::logging::set_active_bar(None);
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::cli::target::DirKind;

    fn outcome(status: &'static str, rank: u8, exit: u8) -> Outcome {
        Outcome {
            status,
            rank,
            exit,
            json: Map::from_iter([("last_op".to_string(), Value::from(7))]),
            text: String::new(),
        }
    }

    fn dir(shard: usize) -> EngineDir {
        EngineDir {
            shard: Some(shard),
            path: PathBuf::from(format!("set/shard-{shard}")),
            kind: DirKind::Engine,
        }
    }

    #[test]
    fn a_shard_set_reports_its_worst_shard() {
        let target = Target::ShardSet(PathBuf::from("set"), vec![dir(0), dir(1), dir(2)]);
        let outcomes = vec![
            (dir(0), outcome("clean", 0, 0)),
            (dir(1), outcome("corrupt", 200, 4)),
            (dir(2), outcome("torn_tail", 10, 3)),
        ];
        let json = to_json(&target, outcomes, "corrupt");
        assert_eq!(json["status"], "corrupt");
        assert_eq!(json["schema_version"], 1);
        assert_eq!(json["shards"][1]["shard"], 1);
        assert_eq!(json["shards"][1]["path"], "set/shard-1");
        assert_eq!(json["shards"][1]["status"], "corrupt");
        assert_eq!(json["shards"][2]["last_op"], 7);
        let outcomes = vec![
            (dir(0), outcome("clean", 0, 0)),
            (dir(1), outcome("torn_tail", 10, 3)),
        ];
        assert_eq!(print(&target, outcomes, true), 3);
    }

    #[test]
    fn an_engine_directory_prints_its_keys_at_the_top() {
        let engine = EngineDir {
            shard: None,
            path: PathBuf::from("engine"),
            kind: DirKind::Engine,
        };
        let target = Target::Engine(engine.clone());
        let json = to_json(
            &target,
            vec![(engine, outcome("repaired", 10, 0))],
            "repaired",
        );
        assert_eq!(json["status"], "repaired");
        assert_eq!(json["last_op"], 7);
        assert!(json.get("shards").is_none() && json.get("shard").is_none());
    }
}
