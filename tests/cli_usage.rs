//! The `keel` command's contract at its edges: usage errors exit 2 with usage, a path that is not
//! a keel directory exits 1 with a message and is left untouched, a locked directory is refused,
//! `bench --json` carries the keys docs/cli.md lists, and Ctrl-C leaves a directory that verifies clean.

mod cli_common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Child;

use cli_common::*;

#[test]
fn bad_flags_exit_2_with_usage() {
    for args in [
        vec!["bench", "--sync", "sometimes"],
        vec!["bench", "--ops", "many"],
        vec!["bench", "--entry-bytes", "3"],
        vec!["bench", "--frobnicate"],
        vec!["recover", "/tmp", "--mode", "optimistic"],
        vec!["verify"],
        vec!["frobnicate"],
    ] {
        let output = run(&args);
        assert_eq!(code(&output), 2, "{args:?}: {}", stderr(&output));
        assert!(
            stderr(&output).contains("Usage"),
            "{args:?}: {}",
            stderr(&output)
        );
    }
}

#[test]
fn not_a_keel_directory_exits_1_and_creates_nothing() {
    let temp = tempfile::tempdir().unwrap();
    let empty = temp.path().join("empty");
    fs::create_dir(&empty).unwrap();
    fs::write(empty.join("notes.txt"), b"mine").unwrap();
    let missing = temp.path().join("missing");
    for dir in [&empty, &missing] {
        for command in ["recover", "verify", "repair", "inspect", "dump"] {
            let output = run(&[command, path_str(dir)]);
            assert_eq!(code(&output), 1, "{command} {}", dir.display());
            let message = stderr(&output);
            assert!(
                message.contains(path_str(dir)),
                "{command}: the message names the path: {message}"
            );
        }
    }
    let names: Vec<_> = fs::read_dir(&empty)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec!["notes.txt"], "something was created");
    assert!(!missing.exists(), "the missing directory was created");
    let output = run(&["bench", "--dir", path_str(&empty), "--ops", "10"]);
    assert_eq!(
        code(&output),
        1,
        "bench into a foreign directory: {}",
        stderr(&output)
    );
}

/// Starts a long `--sync every` bench on one shard of `dir` and waits for its first ack.
fn start_long_bench(dir: &Path, acks: &Path) -> Child {
    let child = long_bench(
        acks,
        &["--dir", path_str(dir), "--shards", "1", "--sync", "every"],
    )
    .spawn()
    .expect("spawn keel bench");
    wait_for_first_ack(acks);
    child
}

#[test]
fn a_locked_directory_is_refused_with_a_message() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("set");
    let acks = temp.path().join("acks");
    let mut child = start_long_bench(&dir, &acks);
    for command in ["recover", "repair"] {
        let output = run(&[command, path_str(&dir)]);
        let text = format!("{}{}", stdout(&output), stderr(&output));
        assert_eq!(code(&output), 1, "{command}: {text}");
        assert!(text.contains("locked"), "{command}: {text}");
    }
    let output = run(&[
        "bench",
        "--dir",
        path_str(&dir),
        "--ops",
        "10",
        "--shards",
        "1",
    ]);
    assert_eq!(code(&output), 1, "a second bench: {}", stderr(&output));
    assert!(stderr(&output).contains("locked"), "{}", stderr(&output));
    // The lock is the directory's, not the LOCK path's: removing the file admits nobody.
    fs::remove_file(dir.join("shard-0").join("LOCK")).unwrap();
    let output = run(&["recover", path_str(&dir)]);
    let text = format!("{}{}", stdout(&output), stderr(&output));
    assert_eq!(code(&output), 1, "recover after rm LOCK: {text}");
    assert!(text.contains("locked"), "recover after rm LOCK: {text}");
    child.kill().unwrap();
    child.wait().unwrap();
    let recover = run_json(&["recover", path_str(&dir), "--json"], 0);
    assert_ne!(recover["status"], "refused");
}

#[test]
fn bench_json_has_the_contract_keys_and_removes_its_temp_dir() {
    let temp = tempfile::tempdir().unwrap();
    let output = keel()
        .args([
            "bench",
            "--shards",
            "2",
            "--ops",
            "400",
            "--sync",
            "batch",
            "--inflight",
            "8",
        ])
        .args([
            "--checkpoint-every",
            "50",
            "--segment-mib",
            "1",
            "--no-pin",
            "--json",
        ])
        .env("TMPDIR", temp.path())
        .output()
        .unwrap();
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let report: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    for key in [
        "ops",
        "ops_per_sec",
        "mb_per_sec",
        "fsyncs",
        "checkpoints",
        "recovery_ms",
    ] {
        assert!(report[key].is_number(), "{key}: {report}");
    }
    for key in ["p50", "p99", "p999"] {
        assert!(
            report["latency_us"][key].is_number(),
            "latency_us.{key}: {report}"
        );
    }
    assert_eq!(report["ops"], 400);
    assert_eq!(report["state_verified"], true);
    assert!(report["checkpoints"].as_u64().unwrap() >= 6, "{report}");
    assert!(report["fsyncs"].as_u64().unwrap() > 0, "{report}");
    let left: Vec<_> = fs::read_dir(temp.path()).unwrap().collect();
    assert!(left.is_empty(), "temporary directory left behind: {left:?}");
}

#[test]
fn bench_table_names_its_figures() {
    let output = run(&[
        "bench",
        "--shards",
        "1",
        "--ops",
        "50",
        "--segment-mib",
        "1",
        "--no-pin",
    ]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let table = stdout(&output);
    for word in [
        "ops/s",
        "MB/s",
        "p50",
        "p99",
        "p999",
        "fsyncs",
        "batch",
        "checkpoints",
        "recovery",
        "state verified",
    ] {
        assert!(table.contains(word), "{word} missing from:\n{table}");
    }
}

#[test]
fn ctrl_c_stops_cleanly_and_the_directory_verifies() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("set");
    let acks = temp.path().join("acks");
    let child = start_long_bench(&dir, &acks);
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let output = child.wait_with_output().unwrap();
    // An interrupted run exits 130, after its clean stop (report printed, directory closed).
    assert_eq!(output.status.code(), Some(130), "{}", stderr(&output));
    let verify = run_json(&["verify", path_str(&dir), "--json"], 0);
    assert_eq!(verify["status"], "clean", "{verify}");
    let acked = BufReader::new(fs::File::open(&acks).unwrap())
        .lines()
        .count() as u64;
    let recover = run_json(&["recover", path_str(&dir), "--json"], 0);
    assert!(
        recover["shards"][0]["last_op"].as_u64().unwrap() >= acked,
        "{recover}"
    );
}
