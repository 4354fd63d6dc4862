//! Damage made by hand, checked through the `keel` binary: a torn tail (verify 3, recover repairs
//! into quarantine exactly the cut bytes, idempotent), corruption of acknowledged data (verify 4,
//! recover 4, nothing touched), and the read-only tools leaving every byte as it was.

mod cli_common;

use std::fs;
use std::path::{Path, PathBuf};

use cli_common::*;
use keel::journal::format::EntryKind;
use serde_json::Value;

/// A one-shard bench directory; returns (shard set dir, engine dir, its last segment).
fn bench_dir(temp: &Path, ops: u64) -> (PathBuf, PathBuf, PathBuf) {
    let set = temp.join("set");
    bench_into(&set, ops, &["--sync", "batch", "--checkpoint-every", "0"]);
    let engine = set.join("shard-0");
    let segment = segments(&engine).pop().expect("a segment");
    (set, engine, segment)
}

/// The last data entry of a segment's bytes.
fn last_data_entry(segment: &[u8]) -> RawEntry {
    *entries(segment)
        .iter()
        .rfind(|e| e.kind == EntryKind::Data)
        .expect("a data entry")
}

fn quarantine_path(engine: &Path, name: &str) -> PathBuf {
    let path = PathBuf::from(name);
    if path.is_absolute() || path.exists() {
        path
    } else {
        engine.join("quarantine").join(name)
    }
}

#[test]
fn torn_tail_is_quarantined_exactly_and_repair_is_idempotent() {
    let temp = tempfile::tempdir().unwrap();
    let (set, engine, segment) = bench_dir(temp.path(), 300);
    let bytes = fs::read(&segment).unwrap();
    // Cut inside the last data entry's payload (random bytes), at a non-zero byte: zeroes at the
    // end of a segment read as preallocated space, so they are not what a cut leaves behind.
    let last = last_data_entry(&bytes);
    let mut cut_at = last.offset + 64 + (last.len - 64) / 2;
    while bytes[cut_at - 1] == 0 {
        cut_at += 1;
    }
    fs::write(&segment, &bytes[..cut_at]).unwrap();
    as_if_killed(&engine);
    let cut_bytes = bytes[last.offset..cut_at].to_vec();

    let verify = run_json(&["verify", path_str(&set), "--json"], 3);
    assert_eq!(verify["status"], "torn_tail", "{verify}");
    assert_eq!(
        verify["shards"][0]["problems"][0]["kind"], "torn_tail",
        "{verify}"
    );
    assert_eq!(run(&["verify", path_str(&engine)]).status.code(), Some(3));

    let recover = run_json(&["recover", path_str(&set), "--json"], 0);
    let shard = &recover["shards"][0];
    assert_eq!(shard["status"], "repaired", "{recover}");
    let repairs = shard["repairs"].as_array().expect("repairs");
    assert_eq!(repairs.len(), 1, "{recover}");
    assert_eq!(repairs[0]["kind"], "torn_tail");
    assert_eq!(repairs[0]["offset"], last.offset as u64);
    assert_eq!(repairs[0]["bytes"], cut_bytes.len() as u64);
    let quarantine = quarantine_path(&engine, repairs[0]["quarantine"].as_str().unwrap());
    assert_eq!(
        fs::read(&quarantine).unwrap(),
        cut_bytes,
        "{}",
        quarantine.display()
    );

    let verify = run_json(&["verify", path_str(&set), "--json"], 0);
    assert_eq!(verify["status"], "clean", "{verify}");
    let before = tree(&set);
    let again = run_json(&["recover", path_str(&set), "--json"], 0);
    assert_eq!(again["status"], "clean", "{again}");
    assert_eq!(again["shards"][0]["repairs"], Value::Array(vec![]));
    assert_eq!(again["shards"][0]["last_op"], shard["last_op"]);
    assert_same_tree(&before, &tree(&set));
}

#[test]
fn corruption_of_acknowledged_data_is_refused_and_nothing_changes() {
    let temp = tempfile::tempdir().unwrap();
    let (set, _engine, segment) = bench_dir(temp.path(), 300);
    let mut bytes = fs::read(&segment).unwrap();
    let data: Vec<_> = entries(&bytes)
        .into_iter()
        .filter(|e| e.kind == EntryKind::Data)
        .collect();
    assert!(data.len() >= 300, "{} data entries", data.len());
    // An entry in the middle: later entries' durable watermarks cover it.
    let victim = data[data.len() / 2];
    bytes[victim.offset + 64 + 5] ^= 0x10;
    fs::write(&segment, &bytes).unwrap();
    let before = tree(&set);

    let verify = run_json(&["verify", path_str(&set), "--json"], 4);
    assert_eq!(verify["status"], "corrupt", "{verify}");
    let problems = verify["shards"][0]["problems"].as_array().unwrap();
    assert!(
        problems.iter().any(|p| p["op"] == victim.op),
        "no problem names op {}: {verify}",
        victim.op
    );
    let recover = run(&["recover", path_str(&set), "--json"]);
    assert_eq!(
        code(&recover),
        4,
        "{} {}",
        stdout(&recover),
        stderr(&recover)
    );
    let recover: Value = serde_json::from_str(&stdout(&recover)).unwrap();
    assert_eq!(recover["status"], "refused", "{recover}");
    assert_eq!(run(&["repair", path_str(&set)]).status.code(), Some(4));
    assert_same_tree(&before, &tree(&set));
}

#[test]
fn verify_inspect_and_dump_change_nothing() {
    let temp = tempfile::tempdir().unwrap();
    let (set, engine, segment) = bench_dir(temp.path(), 200);
    // A torn tail too: a read-only tool must not repair it.
    let bytes = fs::read(&segment).unwrap();
    let last = *entries(&bytes).last().unwrap();
    fs::write(&segment, &bytes[..last.offset + 10]).unwrap();
    let before = tree(&set);
    for dir in [&set, &engine] {
        let dir = path_str(dir);
        for args in [
            vec!["verify", dir],
            vec!["verify", dir, "--json"],
            vec!["inspect", dir],
            vec!["inspect", dir, "--json"],
            vec!["dump", dir],
            vec!["dump", dir, "--json", "--from", "5", "--to", "9"],
        ] {
            let output = run(&args);
            assert!(
                matches!(code(&output), 0 | 3),
                "{args:?}: {} {}",
                stdout(&output),
                stderr(&output)
            );
        }
    }
    assert_same_tree(&before, &tree(&set));
}

#[test]
fn dump_lists_the_entries_in_range() {
    let temp = tempfile::tempdir().unwrap();
    let (set, _engine, segment) = bench_dir(temp.path(), 50);
    let lines = run_json_lines(
        &[
            "dump",
            path_str(&set),
            "--json",
            "--from",
            "10",
            "--to",
            "14",
        ],
        0,
    );
    assert!(lines.iter().all(|l| l["schema_version"] == 1), "{lines:?}");
    let entries: Vec<&Value> = lines.iter().filter(|l| l["type"] == "entry").collect();
    let data: Vec<&&Value> = entries.iter().filter(|e| e["kind"] == "data").collect();
    let ops: Vec<u64> = data.iter().map(|e| e["op"].as_u64().unwrap()).collect();
    assert_eq!(ops, vec![10, 11, 12, 13, 14], "{lines:?}");
    assert!(data
        .iter()
        .all(|e| e["len"] == 128 && e["checksum_ok"] == true && e["shard"] == 0));
    assert!(entries
        .iter()
        .all(|e| (10..=14).contains(&e["op"].as_u64().unwrap())));
    assert!(lines.iter().all(|l| l["type"] != "stop"), "{lines:?}");
    let summary = lines.last().unwrap();
    assert_eq!(summary["type"], "summary");
    assert_eq!(summary["count"], entries.len() as u64);

    // A flipped payload byte shows as a checksum mismatch on that entry.
    let mut bytes = fs::read(&segment).unwrap();
    let victim = *entries_of_kind(&bytes, EntryKind::Data).get(11).unwrap();
    bytes[victim.offset + 64 + 20] ^= 1;
    fs::write(&segment, &bytes).unwrap();
    let lines = run_json_lines(&["dump", path_str(&set), "--json"], 0);
    let bad: Vec<u64> = lines
        .iter()
        .filter(|e| e["type"] == "entry" && e["checksum_ok"] == false)
        .map(|e| e["op"].as_u64().unwrap())
        .collect();
    assert_eq!(bad, vec![victim.op], "{lines:?}");
}

fn entries_of_kind(bytes: &[u8], kind: EntryKind) -> Vec<RawEntry> {
    entries(bytes)
        .into_iter()
        .filter(|e| e.kind == kind)
        .collect()
}

#[test]
fn a_shard_set_reports_each_shard_and_its_worst_status() {
    let temp = tempfile::tempdir().unwrap();
    let set = temp.path().join("set");
    let args = [
        "--shards",
        "2",
        "--sync",
        "batch",
        "--checkpoint-every",
        "0",
    ];
    bench_into_shards(&set, 400, &args);
    let segment = segments(&set.join("shard-1")).pop().unwrap();
    let mut bytes = fs::read(&segment).unwrap();
    let data = entries_of_kind(&bytes, EntryKind::Data);
    let victim = data[data.len() / 3];
    bytes[victim.offset + 70] ^= 0x01;
    fs::write(&segment, &bytes).unwrap();

    let verify = run_json(&["verify", path_str(&set), "--json"], 4);
    assert_eq!(verify["status"], "corrupt", "{verify}");
    assert_eq!(verify["shards"][0]["shard"], 0);
    assert_eq!(verify["shards"][0]["status"], "clean", "{verify}");
    assert_eq!(verify["shards"][1]["shard"], 1);
    assert_eq!(verify["shards"][1]["status"], "corrupt", "{verify}");
    let recover = run_json(&["recover", path_str(&set), "--json"], 4);
    assert_eq!(recover["status"], "refused", "{recover}");
    assert_eq!(recover["shards"][0]["status"], "clean", "{recover}");
    assert_eq!(recover["shards"][0]["last_op"], 200, "{recover}");
    assert_eq!(recover["shards"][1]["status"], "refused", "{recover}");
    assert!(
        recover["shards"][1]["error"]["message"].is_string(),
        "{recover}"
    );
    assert_eq!(
        recover["shards"][1]["error"]["kind"], "corrupt_journal",
        "{recover}"
    );
    assert!(
        recover["shards"][1]["path"]
            .as_str()
            .unwrap()
            .ends_with("shard-1"),
        "{recover}"
    );
}

/// Like `bench_into` but with the shard count in `extra`.
fn bench_into_shards(dir: &Path, ops: u64, extra: &[&str]) {
    let ops = ops.to_string();
    let mut args = vec!["bench", "--dir", path_str(dir), "--ops", &ops];
    args.extend_from_slice(&["--segment-mib", "1", "--no-pin", "--json"]);
    args.extend_from_slice(extra);
    let report = run_json(&args, 0);
    assert_eq!(report["state_verified"], Value::Bool(true), "{report}");
}

/// Issue 10's reproducer through the binary: a `--sync none` journal killed after its final
/// flush but before the close markers, then one bit flipped early in the first segment. Every
/// later segment's header proves the first one durable, so recovery must refuse (exit 4) and
/// change nothing; before the fix it cut 39,990 acknowledged ops as a "torn tail".
#[test]
fn damage_proven_durable_by_later_segment_headers_is_refused() {
    let temp = tempfile::tempdir().unwrap();
    let set = temp.path().join("set");
    bench_into(
        &set,
        40_000,
        &[
            "--sync",
            "none",
            "--checkpoint-every",
            "0",
            "--entry-bytes",
            "200",
        ],
    );
    let engine = set.join("shard-0");
    let all = segments(&engine);
    assert!(all.len() >= 3, "{all:?}");
    // Remove the close markers (the commit entries after the last data entry).
    let last = all.last().unwrap();
    let bytes = fs::read(last).unwrap();
    let walked = entries(&bytes);
    let cut = walked
        .iter()
        .rposition(|e| e.kind == EntryKind::Data)
        .map_or(SEGMENT_HEADER_OFFSET, |i| walked[i].offset + walked[i].len);
    fs::write(last, &bytes[..cut]).unwrap();
    let mut first = fs::read(&all[0]).unwrap();
    first[2804] ^= 0x10;
    fs::write(&all[0], &first).unwrap();
    let before = tree(&set);
    let output = run(&["recover", path_str(&set), "--json"]);
    assert_eq!(code(&output), 4, "{}{}", stdout(&output), stderr(&output));
    assert_same_tree(&before, &tree(&set));
    assert_eq!(run(&["verify", path_str(&set)]).status.code(), Some(4));
}

const SEGMENT_HEADER_OFFSET: usize = keel::journal::format::SEGMENT_HEADER_BYTES;

/// Two repairs at the same segment and offset keep both quarantine copies, each exactly the
/// bytes its cut removed (before the fix the second truncated and overwrote the first).
#[test]
fn a_second_repair_at_the_same_offset_keeps_the_first_copy() {
    let temp = tempfile::tempdir().unwrap();
    let (set, engine, segment) = bench_dir(temp.path(), 300);
    let bytes = fs::read(&segment).unwrap();
    let last = last_data_entry(&bytes);
    let first_cut = last.offset + last.len - 4;
    fs::write(&segment, &bytes[..first_cut]).unwrap();
    as_if_killed(&engine);
    let first = run_json(&["recover", path_str(&set), "--json"], 0);
    let first_repair = &first["shards"][0]["repairs"][0];
    let first_copy = quarantine_path(&engine, first_repair["quarantine"].as_str().unwrap());
    assert_eq!(
        fs::read(&first_copy).unwrap(),
        bytes[last.offset..first_cut]
    );
    assert_eq!(first_repair["bytes"], (first_cut - last.offset) as u64);
    // Recovery left the segment ending at the torn entry; tear the same place again, shorter.
    let mut again = fs::read(&segment).unwrap();
    again.truncate(last.offset);
    again.extend_from_slice(&bytes[last.offset..last.offset + 10]);
    fs::write(&segment, &again).unwrap();
    let second = run_json(&["recover", path_str(&set), "--json"], 0);
    let second_repair = &second["shards"][0]["repairs"][0];
    let second_copy = quarantine_path(&engine, second_repair["quarantine"].as_str().unwrap());
    assert_ne!(first_copy, second_copy);
    assert_eq!(
        fs::read(&second_copy).unwrap(),
        bytes[last.offset..last.offset + 10]
    );
    assert_eq!(
        fs::read(&first_copy).unwrap(),
        bytes[last.offset..first_cut],
        "the first quarantine copy was overwritten"
    );
}
