//! The operator's side of issue 12 through the `keel` binary: `repair --dry-run` says exactly
//! what `repair` then does and changes nothing, read-only tools say when a live writer holds a
//! directory, `bench --slot-count`, an interrupted bench exits 130 and cleans up on every stop
//! signal, a `--shards` count that contradicts the set is refused, the tools people expect on
//! `dump`, `--version`, `-v`/`-q`, `NO_COLOR`, and a reopen that never grows a segment.

mod cli_common;

use std::fs;
use std::path::Path;
use std::process::Stdio;

use cli_common::*;
use keel::journal::format::EntryKind;
use serde_json::Value;

/// A one-shard bench directory with a torn tail as a crash leaves it; returns (set, engine).
fn torn_set(temp: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let set = temp.join("set");
    bench_into(&set, 300, &["--sync", "batch", "--checkpoint-every", "0"]);
    let engine = set.join("shard-0");
    let segment = segments(&engine).pop().unwrap();
    let bytes = fs::read(&segment).unwrap();
    let last = *entries(&bytes)
        .iter()
        .rfind(|e| e.kind == EntryKind::Data)
        .unwrap();
    fs::write(&segment, &bytes[..last.offset + 100]).unwrap();
    as_if_killed(&engine);
    (set, engine)
}

/// Item 7: the dry run names the cut repair then makes, byte for byte, and changes nothing.
#[test]
fn repair_dry_run_says_exactly_what_repair_does_and_changes_nothing() {
    let temp = tempfile::tempdir().unwrap();
    let (set, _engine) = torn_set(temp.path());
    let before = tree(&set);
    let plan = run_json(&["repair", path_str(&set), "--dry-run", "--json"], 0);
    assert_same_tree(&before, &tree(&set));
    let planned = &plan["shards"][0];
    assert_eq!(planned["status"], "would_repair", "{plan}");
    assert_eq!(planned["dry_run"], true, "{plan}");
    let cut = &planned["repairs"][0];
    assert_eq!(cut["kind"], "torn_tail", "{plan}");
    let text = stdout(&run_expect(&["repair", path_str(&set), "--dry-run"], 0));
    assert!(text.contains("nothing was changed"), "{text}");
    assert!(text.contains("would cut"), "{text}");
    assert_same_tree(&before, &tree(&set));

    let done = run_json(&["repair", path_str(&set), "--json"], 0);
    let repair = &done["shards"][0]["repairs"][0];
    assert_eq!(repair["kind"], cut["kind"], "{done}");
    assert_eq!(repair["offset"], cut["offset"], "{done} vs {plan}");
    assert_eq!(repair["bytes"], cut["bytes"], "{done} vs {plan}");
    let after = run_json(&["repair", path_str(&set), "--dry-run", "--json"], 0);
    assert_eq!(after["status"], "clean", "{after}");
}

/// Item 7: verify, inspect and dump on a directory a live writer holds say so and write nothing.
#[test]
fn read_only_tools_name_a_live_writer() {
    let temp = tempfile::tempdir().unwrap();
    let set = temp.path().join("set");
    bench_into(&set, 100, &[]);
    let engine = set.join("shard-0");
    let held = fs::File::open(&engine).unwrap();
    held.try_lock().expect("flock the engine directory");
    let before = tree(&set);
    let verify = run_json(&["verify", path_str(&set), "--json"], 0);
    let note = verify["shards"][0]["live_writer"]
        .as_str()
        .unwrap_or_default();
    assert!(
        note.contains(&format!("pid {}", std::process::id())),
        "{verify}"
    );
    let text = stdout(&run_expect(&["inspect", path_str(&engine)], 0));
    assert!(text.contains("a live writer (pid"), "{text}");
    let dump = run_expect(&["dump", path_str(&engine), "--limit", "1"], 0);
    assert!(stderr(&dump).contains("a live writer"), "{}", stderr(&dump));
    assert_same_tree(&before, &tree(&set));
    let recover = run_json(&["recover", path_str(&set), "--json"], 1);
    assert_eq!(recover["shards"][0]["error"]["kind"], "locked", "{recover}");
    drop(held);
    let verify = run_json(&["verify", path_str(&set), "--json"], 0);
    assert_eq!(verify["shards"][0]["live_writer"], Value::Null, "{verify}");
}

/// Item 7: `--slot-count` sets the ring, recorded in each shard's MANIFEST; a shard count that
/// contradicts an existing set is refused (exit 2) and changes nothing.
#[test]
fn bench_slot_count_and_a_contradicting_shard_count() {
    let temp = tempfile::tempdir().unwrap();
    let set = temp.path().join("set");
    bench_into(
        &set,
        50,
        &["--slot-count", "2048", "--checkpoint-every", "512"],
    );
    let inspect = run_json(&["inspect", path_str(&set), "--json"], 0);
    assert_eq!(
        inspect["shards"][0]["manifest"]["slot_count"], 2048,
        "{inspect}"
    );
    let bad = run(&["bench", "--slot-count", "3000", "--ops", "1"]);
    assert_eq!(code(&bad), 2, "{}", stderr(&bad));
    let before = tree(&set);
    let args = [
        "bench",
        "--dir",
        path_str(&set),
        "--shards",
        "2",
        "--ops",
        "10",
        "--no-pin",
    ];
    let output = run(&args);
    assert_eq!(code(&output), 2, "{}", stderr(&output));
    assert!(
        stderr(&output).contains("a shard set of 1 shard(s)"),
        "{}",
        stderr(&output)
    );
    assert_same_tree(&before, &tree(&set));
}

/// Item 7: a bench error names its shard.
#[test]
fn a_bench_error_names_its_shard() {
    let temp = tempfile::tempdir().unwrap();
    let set = temp.path().join("set");
    let args = [
        "bench",
        "--dir",
        path_str(&set),
        "--shards",
        "2",
        "--ops",
        "20",
        "--no-pin",
    ];
    run_expect(&args, 0);
    let manifest = set.join("shard-1").join("MANIFEST");
    let mut bytes = fs::read(&manifest).unwrap();
    bytes[30] ^= 0x01;
    fs::write(&manifest, bytes).unwrap();
    let output = run(&args);
    assert_eq!(code(&output), 4, "{}", stderr(&output));
    let message = stderr(&output);
    assert!(message.contains("shard 1: manifest"), "{message}");
    assert!(message.contains("shard-1/MANIFEST"), "{message}");
}

/// Item 7: SIGINT, SIGTERM and SIGHUP each stop a bench in a temporary directory cleanly: exit
/// 130, and the directory is gone.
#[test]
fn an_interrupted_bench_exits_130_and_removes_its_temporary_directory() {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        let temp = tempfile::tempdir().unwrap();
        let acks = temp.path().join("acks");
        let child = long_bench(&acks, &["--shards", "1", "--sync", "every"])
            .env("TMPDIR", temp.path())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_for_first_ack(&acks);
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(child.id() as libc::pid_t, signal) };
        let output = child.wait_with_output().unwrap();
        assert_eq!(
            output.status.code(),
            Some(130),
            "signal {signal}: {}",
            stderr(&output)
        );
        let left: Vec<_> = fs::read_dir(temp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().starts_with("keel-bench-"))
            .collect();
        assert!(left.is_empty(), "signal {signal}: left behind {left:?}");
    }
}

/// Item 8: dump's filters and views, a single segment file as input.
#[test]
fn dump_filters_views_and_single_files() {
    let temp = tempfile::tempdir().unwrap();
    let set = temp.path().join("set");
    bench_into(&set, 60, &["--checkpoint-every", "0"]);
    let dir = path_str(&set);
    let lines = run_json_lines(&["dump", dir, "--json", "--kind", "commit"], 0);
    let entries: Vec<&Value> = lines.iter().filter(|l| l["type"] == "entry").collect();
    assert!(!entries.is_empty() && entries.iter().all(|e| e["kind"] == "commit"));
    let lines = run_json_lines(
        &["dump", dir, "--json", "--limit", "3", "--hex", "--decode"],
        0,
    );
    let entries: Vec<&Value> = lines.iter().filter(|l| l["type"] == "entry").collect();
    assert_eq!(entries.len(), 3, "{lines:?}");
    for entry in &entries {
        let hex = entry["payload_hex"].as_str().unwrap();
        assert_eq!(hex.len() as u64, 2 * entry["len"].as_u64().unwrap());
        assert_eq!(entry["command"]["command"], "set", "{entry}");
    }
    let text = stdout(&run_expect(&["dump", dir, "--limit", "1", "--decode"], 0));
    assert!(text.contains("set 0x"), "{text}");
    let segment = segments(&set.join("shard-0")).pop().unwrap();
    let file = run_json_lines(&["dump", path_str(&segment), "--json", "--kind", "data"], 0);
    let ops: Vec<u64> = file
        .iter()
        .filter(|l| l["type"] == "entry")
        .map(|l| l["op"].as_u64().unwrap())
        .collect();
    assert_eq!(ops, (1..=60).collect::<Vec<_>>());
}

/// Item 8: `--version` names the formats; `-q` silences warnings, `-v` shows info, RUST_LOG
/// wins; log lines carry the shard and no Rust `Debug` values; no ANSI with NO_COLOR; sizes read
/// as people write them.
#[test]
fn version_log_levels_colour_and_sizes() {
    let version = stdout(&run_expect(&["--version"], 0));
    assert!(version.contains("journal format 2"), "{version}");
    assert!(version.contains("snapshot format 2"), "{version}");
    let temp = tempfile::tempdir().unwrap();
    let (set, _engine) = torn_set(temp.path());
    let quiet = run_expect(&["verify", path_str(&set), "-q"], 3);
    assert_eq!(stderr(&quiet), "", "-q printed logs");
    let verbose = keel()
        .args(["recover", path_str(&set), "-v"])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert_eq!(code(&verbose), 0, "{}", stderr(&verbose));
    let logs = stderr(&verbose);
    assert!(logs.contains("INFO"), "{logs}");
    assert!(logs.contains("shard=0"), "{logs}");
    assert!(!logs.contains("Some(") && !logs.contains("..="), "{logs}");
    assert!(!logs.contains('\u{1b}') && !stdout(&verbose).contains('\u{1b}'));
    let overridden = keel()
        .args(["verify", path_str(&set), "-v"])
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    assert!(
        !stderr(&overridden).contains("INFO"),
        "{}",
        stderr(&overridden)
    );
    let inspect = stdout(&run_expect(&["inspect", path_str(&set)], 0));
    assert!(
        inspect.contains(" KiB") || inspect.contains(" MiB"),
        "{inspect}"
    );
}

/// Item 9: reopening never grows a segment's preallocation: nine bench runs and nine recovers
/// later the segment is the size the first run left.
#[test]
fn reopening_does_not_grow_a_segment() {
    let temp = tempfile::tempdir().unwrap();
    let set = temp.path().join("set");
    let args = [
        "bench",
        "--dir",
        path_str(&set),
        "--shards",
        "1",
        "--ops",
        "5",
        "--no-pin",
    ];
    run_expect(&args, 0);
    let engine = set.join("shard-0");
    let size = |engine: &Path| -> Vec<u64> {
        segments(engine)
            .iter()
            .map(|s| fs::metadata(s).unwrap().len())
            .collect()
    };
    let first = size(&engine);
    for _ in 0..9 {
        run_expect(&args, 0);
        run_expect(&["recover", path_str(&set)], 0);
    }
    assert_eq!(size(&engine), first);
}

/// Runs `keel args…` on a pseudo-terminal (util-linux `script`), with `env` set; its output, or
/// `None` where `script` is not installed.
fn on_terminal(args: &[&str], env: &[(&str, &str)]) -> Option<String> {
    let keel_path = env!("CARGO_BIN_EXE_keel");
    let command_line = std::iter::once(keel_path)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    let mut script = std::process::Command::new("script");
    script.args(["-qec", &command_line, "/dev/null"]);
    script.env_remove("RUST_LOG").env_remove("NO_COLOR");
    for (key, value) in env {
        script.env(key, value);
    }
    let output = script.output().ok()?;
    Some(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Item 8 on a terminal: bold headings unless NO_COLOR is set, and the spinner never shares a
/// line with a log line (each log line is written with the spinner cleared).
#[test]
fn on_a_terminal_no_color_is_honoured_and_logs_never_share_the_progress_line() {
    let temp = tempfile::tempdir().unwrap();
    let (set, _engine) = torn_set(temp.path());
    let Some(styled) = on_terminal(&["inspect", path_str(&set)], &[]) else {
        eprintln!("util-linux `script` is not installed: no pseudo-terminal to test on");
        return;
    };
    assert!(
        styled.contains("\u{1b}[1m"),
        "no bold on a terminal: {styled:?}"
    );
    let plain = on_terminal(&["inspect", path_str(&set)], &[("NO_COLOR", "1")]).unwrap();
    assert!(
        !plain.contains("\u{1b}[1m"),
        "bold despite NO_COLOR: {plain:?}"
    );
    let logged = on_terminal(&["repair", path_str(&set), "-v"], &[]).unwrap();
    assert!(logged.contains("WARN"), "{logged:?}");
    for line in logged.split(['\n', '\r']) {
        let is_log = line.contains("INFO") || line.contains("WARN");
        assert!(
            !(is_log && line.contains("repairing ")),
            "shared line: {line:?}"
        );
    }
}
