//! Helpers for the tests that drive the built `keel` binary.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use keel::journal::format::{Binding, EntryHeader, EntryKind, SegmentHeader, SEGMENT_HEADER_BYTES};
use serde_json::Value;

/// The `keel` binary, with logs at their default level.
pub fn keel() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_keel"));
    command.env_remove("RUST_LOG").stdin(Stdio::null());
    command
}

/// Runs `keel args…` to completion.
pub fn run(args: &[&str]) -> Output {
    keel().args(args).output().expect("run keel")
}

pub fn code(output: &Output) -> i32 {
    output.status.code().expect("keel exited by a signal")
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs `keel args…` and expects exit `expected`.
pub fn run_expect(args: &[&str], expected: i32) -> Output {
    let output = run(args);
    assert_eq!(
        code(&output),
        expected,
        "keel {args:?}: stdout {} stderr {}",
        stdout(&output),
        stderr(&output)
    );
    output
}

/// Runs `keel args…`, expects exit `expected`, returns stdout parsed as JSON.
pub fn run_json(args: &[&str], expected: i32) -> Value {
    let output = run_expect(args, expected);
    serde_json::from_str(&stdout(&output))
        .unwrap_or_else(|e| panic!("keel {args:?}: not JSON ({e}): {}", stdout(&output)))
}

pub fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

/// A small one-shard bench in `dir`: small segments, no pinning, no explicit checkpoints.
pub fn bench_into(dir: &Path, ops: u64, extra: &[&str]) {
    let ops = ops.to_string();
    let mut args = vec![
        "bench",
        "--dir",
        path_str(dir),
        "--shards",
        "1",
        "--ops",
        &ops,
        "--segment-mib",
        "1",
        "--no-pin",
        "--json",
    ];
    args.extend_from_slice(extra);
    let report = run_json(&args, 0);
    assert_eq!(report["state_verified"], Value::Bool(true), "{report}");
}

/// Every file under `dir` with its bytes (directories are implied by the paths).
pub fn tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    collect(dir, dir, &mut files);
    files
}

fn collect(root: &Path, dir: &Path, files: &mut BTreeMap<PathBuf, Vec<u8>>) {
    for entry in fs::read_dir(dir).expect("read_dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            files.insert(path.strip_prefix(root).unwrap().join(""), Vec::new());
            collect(root, &path, files);
        } else {
            let bytes = fs::read(&path).expect("read file");
            files.insert(path.strip_prefix(root).unwrap().to_path_buf(), bytes);
        }
    }
}

/// Asserts two trees are identical, naming the first difference.
pub fn assert_same_tree(before: &BTreeMap<PathBuf, Vec<u8>>, after: &BTreeMap<PathBuf, Vec<u8>>) {
    let names_before: Vec<_> = before.keys().collect();
    let names_after: Vec<_> = after.keys().collect();
    assert_eq!(names_before, names_after, "the set of files changed");
    for (path, bytes) in before {
        assert!(after[path] == *bytes, "{} changed", path.display());
    }
}

/// The segment files of an engine directory, in order.
pub fn segments(engine_dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(engine_dir.join("journal"))
        .expect("journal dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    files.sort();
    files
}

/// One entry found by walking a segment's bytes.
#[derive(Debug, Clone, Copy)]
pub struct RawEntry {
    pub offset: usize,
    pub len: usize,
    pub op: u64,
    pub kind: EntryKind,
}

/// Walks the valid entries of a segment from its header to the first invalid header (or zeroes).
pub fn entries(segment: &[u8]) -> Vec<RawEntry> {
    let mut out = Vec::new();
    let mut offset = SEGMENT_HEADER_BYTES;
    let binding = SegmentHeader::decode(segment).map_or(Binding::Plain, |h| h.binding());
    while offset < segment.len() {
        let Ok((header, _)) = EntryHeader::decode(&segment[offset..], binding) else {
            break;
        };
        let len = header.entry_len_bytes();
        if offset + len > segment.len() {
            break;
        }
        out.push(RawEntry {
            offset,
            len,
            op: header.op,
            kind: header.kind,
        });
        offset += len;
    }
    out
}

/// Makes `engine_dir` look as it would after a crash instead of its clean close: its MANIFEST no
/// longer records the close's commit watermark (a torn tail can only follow a crash; after a
/// clean close, damage to the tail is damage to acknowledged data).
pub fn as_if_killed(engine_dir: &Path) {
    let path = engine_dir.join(keel::engine::MANIFEST_FILE);
    let bytes = fs::read(&path).expect("a MANIFEST");
    let mut manifest =
        keel::engine::Manifest::decode("MANIFEST", &bytes).expect("a valid MANIFEST");
    manifest.closed_commit_op = 0;
    fs::write(&path, manifest.encode()).expect("rewrite MANIFEST");
}

/// Runs `keel args…`, expects exit `expected`, returns each stdout line parsed as JSON.
pub fn run_json_lines(args: &[&str], expected: i32) -> Vec<Value> {
    let output = run_expect(args, expected);
    stdout(&output)
        .lines()
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("keel {args:?}: not JSON ({e}): {line}"))
        })
        .collect()
}

/// A `keel bench` that runs until stopped (10^8 ops, 1 MiB segments, no pinning), appending each
/// durable op to `acks`; `extra` adds flags (`--dir`, `--shards`, `--sync`, …).
pub fn long_bench(acks: &Path, extra: &[&str]) -> Command {
    let mut command = keel();
    command
        .args([
            "bench",
            "--ops",
            "100000000",
            "--segment-mib",
            "1",
            "--no-pin",
        ])
        .args(["--ack-file", path_str(acks)])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    command
}

/// Waits (up to 60 s) until `ack_file` holds its first line.
pub fn wait_for_first_ack(ack_file: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while fs::metadata(ack_file).map_or(0, |m| m.len()) == 0 {
        assert!(Instant::now() < deadline, "no ack within 60 s");
        std::thread::sleep(Duration::from_millis(5));
    }
}
