//! Issue 12 through the `keel` binary: a self-describing directory (its MANIFEST), snapshots that
//! know whose they are, the fallback when the journal still holds the gap, loss named exactly,
//! and keel-raft stores and clusters read as keel directories.

mod cli_common;

use std::fs;
use std::path::{Path, PathBuf};

use cli_common::*;
use keel::engine::{encode_set, Engine, EngineConfig, KvStateMachine};
use keel::storage::DirAccess;
use keel::storage::FsDirectory;
use serde_json::Value;

/// Writes `ops` committed ops with the library into `dir`, with a ring of `slot_count` and no
/// checkpoint (every op stays live), then closes cleanly.
fn write_with_library(dir: &Path, slot_count: u64, ops: u64) {
    let runtime = compio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let root = FsDirectory::open_with(dir, DirAccess::Create)
            .await
            .unwrap();
        let mut config = EngineConfig::default();
        config.journal.slot_count = slot_count;
        config.journal.segment_bytes = 1 << 20;
        config.journal.sync_on_append = false;
        config.checkpoint_margin_ops = 0;
        let (engine, _) = Engine::open(root, config, KvStateMachine::new())
            .await
            .unwrap();
        let mut payload = Vec::new();
        for op in 1..=ops {
            payload.clear();
            encode_set(&op.to_le_bytes(), b"value", &mut payload).unwrap();
            engine.append(op, &payload).await.unwrap();
        }
        engine.commit(ops).await.unwrap();
        engine.close().await.unwrap();
    });
}

/// Opens `dir` with the library and `config`; the applied op, or the error's text.
fn library_open(dir: &Path, config: EngineConfig) -> Result<u64, String> {
    let runtime = compio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let root = FsDirectory::open_with(dir, DirAccess::Existing)
            .await
            .unwrap();
        match Engine::open(root, config, KvStateMachine::new()).await {
            Ok((engine, report)) => {
                engine.close().await.unwrap();
                Ok(report.applied_op)
            }
            Err(error) => Err(error.to_string()),
        }
    })
}

/// A bench in `dir` with the default (64 MiB) segments: one active segment, which compaction
/// never touches, so the ops between two snapshots stay in the journal's files.
fn bench_one_segment(dir: &Path, shards: u64, ops: u64, checkpoint_every: u64) {
    let (shards, ops, every) = (
        shards.to_string(),
        ops.to_string(),
        checkpoint_every.to_string(),
    );
    let args = [
        "bench",
        "--dir",
        path_str(dir),
        "--shards",
        &shards,
        "--ops",
        &ops,
        "--checkpoint-every",
        &every,
        "--no-pin",
        "--json",
    ];
    let report = run_json(&args, 0);
    assert_eq!(report["state_verified"], true, "{report}");
}

fn snapshot_files(engine: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(engine.join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "snap"))
        .collect();
    files.sort();
    files
}

fn op_of(snapshot: &Path) -> u64 {
    snapshot
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

fn flip(path: &Path, offset: usize) {
    let mut bytes = fs::read(path).unwrap();
    bytes[offset] ^= 0x08;
    fs::write(path, bytes).unwrap();
}

/// Item 1: a directory written by the library with a larger ring than any default is read with
/// its own ring by every tool and by a library user who asks for the default.
#[test]
fn the_directory_records_its_ring_and_everyone_uses_it() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("engine");
    write_with_library(&dir, 8192, 5000);

    let inspect = run_json(&["inspect", path_str(&dir), "--json"], 0);
    assert_eq!(inspect["manifest"]["slot_count"], 8192, "{inspect}");
    assert_eq!(inspect["slot_count"], 8192, "{inspect}");
    assert_eq!(inspect["slots_used"], 5000, "{inspect}");
    let text = stdout(&run_expect(&["inspect", path_str(&dir)], 0));
    assert!(text.contains("5000 of 8192 in use (61.0%)"), "{text}");
    let verify = run_json(&["verify", path_str(&dir), "--json"], 0);
    assert_eq!(verify["status"], "clean", "{verify}");
    let recover = run_json(&["recover", path_str(&dir), "--json"], 0);
    assert_eq!(recover["status"], "clean", "{recover}");
    assert_eq!(recover["applied_op"], 5000, "{recover}");
    // The library's default ring is 1,024 slots: the open adopts the directory's.
    assert_eq!(library_open(&dir, EngineConfig::default()), Ok(5000));
}

/// Item 1: a shard index other than the recorded one is refused with both values, and a damaged
/// manifest is corruption; neither changes a byte.
#[test]
fn a_contradicting_or_damaged_manifest_is_refused_and_nothing_changes() {
    let temp = tempfile::tempdir().unwrap();
    let set = temp.path().join("set");
    bench_into(&set, 200, &[]);
    let engine = set.join("shard-0");
    let before = tree(&set);
    let config = EngineConfig {
        shard_index: Some(1),
        ..EngineConfig::default()
    };
    let error = library_open(&engine, config).unwrap_err();
    assert!(
        error.contains("records shard_index 0") && error.contains("asks for 1"),
        "{error}"
    );
    assert_same_tree(&before, &tree(&set));

    flip(&engine.join("MANIFEST"), 40);
    let before = tree(&set);
    let verify = run_json(&["verify", path_str(&set), "--json"], 4);
    assert_eq!(verify["shards"][0]["error"]["kind"], "manifest", "{verify}");
    let recover = run_json(&["recover", path_str(&set), "--json"], 4);
    assert_eq!(recover["shards"][0]["status"], "refused", "{recover}");
    assert_same_tree(&before, &tree(&set));
}

/// Item 2: another shard's snapshot swapped in is fallen back from (the older snapshot of this
/// shard is used), quarantined, and never applied.
#[test]
fn a_snapshot_from_another_shard_is_never_applied() {
    let temp = tempfile::tempdir().unwrap();
    let set = temp.path().join("set");
    bench_one_segment(&set, 2, 3000, 500);
    let ours = snapshot_files(&set.join("shard-0"));
    let theirs = snapshot_files(&set.join("shard-1"));
    let (newest, older) = (ours.last().unwrap(), &ours[ours.len() - 2]);
    assert_eq!(op_of(newest), op_of(theirs.last().unwrap()));
    fs::copy(theirs.last().unwrap(), newest).unwrap();

    let verify = run_json(&["verify", path_str(&set), "--json"], 4);
    let problems = verify["shards"][0]["problems"].as_array().unwrap();
    assert!(
        problems.iter().any(|p| p["kind"] == "snapshot_foreign"),
        "{verify}"
    );
    assert_eq!(verify["shards"][1]["status"], "clean", "{verify}");
    let recover = run_json(&["recover", path_str(&set), "--json"], 0);
    let shard = &recover["shards"][0];
    assert_eq!(shard["status"], "repaired", "{recover}");
    assert_eq!(shard["repairs"][0]["kind"], "snapshot_foreign", "{recover}");
    assert_eq!(shard["snapshot_op"], op_of(older), "{recover}");
    assert_eq!(shard["applied_op"], 1500, "{recover}");
    assert!(Path::new(shard["repairs"][0]["quarantine"].as_str().unwrap()).exists());
    let again = run_json(&["verify", path_str(&set), "--json"], 0);
    assert_eq!(again["status"], "clean", "{again}");
}

/// Item 2: a snapshot of this directory whose op sits at another place in the journal's chain
/// (another history, here the older state under the newer op) is fallen back from, never applied.
#[test]
fn a_snapshot_of_another_history_is_never_applied() {
    let temp = tempfile::tempdir().unwrap();
    let set = temp.path().join("set");
    bench_one_segment(&set, 1, 3000, 1000);
    let engine = set.join("shard-0");
    let manifest = fs::read(engine.join(keel::engine::MANIFEST_FILE)).unwrap();
    let manifest = keel::engine::Manifest::decode("MANIFEST", &manifest).unwrap();
    let snapshots = snapshot_files(&engine);
    let older = fs::read(&snapshots[0]).unwrap();
    let state = keel::engine::decode_snapshot_file(op_of(&snapshots[0]), &older).unwrap();
    let identity = keel::engine::SnapshotIdentity {
        directory_id: manifest.directory_id,
        journal_seq: 7,
        chain_crc: 0xdead_beef,
    };
    let newest = snapshots.last().unwrap();
    let forged = keel::engine::encode_snapshot_file_with(op_of(newest), &identity, state);
    fs::write(newest, forged).unwrap();

    let verify = run_json(&["verify", path_str(&set), "--json"], 4);
    let problems = verify["shards"][0]["problems"].as_array().unwrap();
    assert!(
        problems.iter().any(|p| p["kind"] == "snapshot_misplaced"),
        "{verify}"
    );
    let recover = run_json(&["recover", path_str(&set), "--json"], 0);
    let shard = &recover["shards"][0];
    assert_eq!(
        shard["repairs"][0]["kind"], "snapshot_misplaced",
        "{recover}"
    );
    assert_eq!(shard["snapshot_op"], op_of(&snapshots[0]), "{recover}");
    assert_eq!(shard["applied_op"], 3000, "{recover}");
}

/// Item 3: a damaged newest snapshot falls back to the previous one when the journal's files
/// still hold the ops between (before: "ops … are needed but missing").
#[test]
fn a_damaged_newest_snapshot_falls_back_when_the_journal_holds_the_gap() {
    let temp = tempfile::tempdir().unwrap();
    let set = temp.path().join("set");
    bench_one_segment(&set, 1, 3000, 1000);
    let engine = set.join("shard-0");
    let snapshots = snapshot_files(&engine);
    let newest = snapshots.last().unwrap();
    assert_eq!(op_of(newest), 3000);
    flip(newest, 100);
    let recover = run_json(&["recover", path_str(&set), "--json"], 0);
    let shard = &recover["shards"][0];
    assert_eq!(shard["status"], "repaired", "{recover}");
    assert_eq!(shard["snapshot_op"], 2000, "{recover}");
    assert_eq!(shard["applied_op"], 3000, "{recover}");
    assert_eq!(
        shard["repairs"][0]["kind"], "snapshot_checksum",
        "{recover}"
    );
}

/// Item 3: when compaction did remove the ops between, the refusal names exactly the ones gone.
#[test]
fn a_fallback_the_journal_cannot_cover_names_exactly_the_ops_gone() {
    let temp = tempfile::tempdir().unwrap();
    let set = temp.path().join("set");
    bench_into(
        &set,
        1300,
        &["--checkpoint-every", "400", "--entry-bytes", "4000"],
    );
    let engine = set.join("shard-0");
    let newest = snapshot_files(&engine).pop().unwrap();
    let previous = op_of(&snapshot_files(&engine)[0]);
    flip(&newest, 100);
    let before = tree(&set);
    let recover = run_json(&["recover", path_str(&set), "--json"], 4);
    let shard = &recover["shards"][0];
    assert_eq!(shard["error"]["kind"], "missing_ops", "{recover}");
    let first = shard["missing_ops"]["first"].as_u64().unwrap();
    let last = shard["missing_ops"]["last"].as_u64().unwrap();
    assert_eq!(first, previous + 1, "{recover}");
    // The first data op still in the files follows the range named.
    let dump = run_json_lines(
        &[
            "dump",
            path_str(&engine),
            "--json",
            "--kind",
            "data",
            "--from",
            &first.to_string(),
        ],
        0,
    );
    let held = dump
        .iter()
        .find(|l| l["type"] == "entry")
        .map(|l| l["op"].as_u64().unwrap());
    assert_eq!(held, Some(last + 1), "{recover}");
    let message = shard["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("ops {first}-{last}")),
        "{message}"
    );
    assert!(!message.contains("..="), "{message}");
    assert_same_tree(&before, &tree(&set));
}

/// `keel recover SET --mode point-in-time --json`, expected to succeed.
fn point_in_time(set: &Path) -> Value {
    let args = [
        "recover",
        path_str(set),
        "--mode",
        "point-in-time",
        "--json",
    ];
    run_json(&args, 0)
}

/// Item 5: a segment truncated to 100 bytes after a clean close is not a torn tail: the
/// committed ops are named as lost (refused by default, reported by point-in-time).
#[test]
fn committed_ops_cut_by_a_truncation_are_named_as_lost() {
    let temp = tempfile::tempdir().unwrap();
    let set = temp.path().join("set");
    bench_into(&set, 2000, &["--checkpoint-every", "0"]);
    let engine = set.join("shard-0");
    let segment = segments(&engine).pop().unwrap();
    let bytes = fs::read(&segment).unwrap();
    fs::write(&segment, &bytes[..100]).unwrap();

    let verify = run_json(&["verify", path_str(&set), "--json"], 4);
    let problems = verify["shards"][0]["problems"].as_array().unwrap();
    let missing = problems.iter().find(|p| p["kind"] == "missing_ops");
    assert_eq!(
        missing.map(|p| p["ops"].clone()),
        Some(serde_json::json!({"first": 1, "last": 2000})),
        "{verify}"
    );
    let recover = run_json(&["recover", path_str(&set), "--json"], 4);
    let range = &recover["shards"][0]["missing_ops"];
    assert_eq!(
        *range,
        serde_json::json!({"first": 1, "last": 2000}),
        "{recover}"
    );
    let text = stdout(&run_expect(&["recover", path_str(&set)], 4));
    assert!(text.contains("ops 1-2000 are needed but missing"), "{text}");

    let pit = point_in_time(&set);
    let shard = &pit["shards"][0];
    assert_eq!(shard["status"], "repaired", "{pit}");
    assert_eq!(
        shard["lost_committed_ops"],
        serde_json::json!([{"first": 1, "last": 2000}]),
        "{pit}"
    );
    // The directory now says where it resumed: the next open is clean.
    let again = run_json(&["recover", path_str(&set), "--json"], 0);
    assert_eq!(again["status"], "clean", "{again}");
}

/// Item 5: point-in-time reports only the committed ops the snapshot does not hold.
#[test]
fn point_in_time_does_not_report_what_the_snapshot_covers() {
    let temp = tempfile::tempdir().unwrap();
    let set = temp.path().join("set");
    bench_into(&set, 2000, &["--checkpoint-every", "600"]);
    let engine = set.join("shard-0");
    let snapshot = op_of(snapshot_files(&engine).last().unwrap());
    assert_eq!(snapshot, 1800);
    let segment = segments(&engine).pop().unwrap();
    let bytes = fs::read(&segment).unwrap();
    let victim = entries(&bytes)
        .into_iter()
        .find(|e| e.op == 100 && e.kind == keel::journal::format::EntryKind::Data)
        .unwrap();
    flip(&segment, victim.offset + 64 + 9);
    let pit = point_in_time(&set);
    let shard = &pit["shards"][0];
    assert_eq!(
        shard["lost_committed_ops"],
        serde_json::json!([{"first": 1801, "last": 2000}]),
        "{pit}"
    );
    let text = stdout(&run_expect(
        &["recover", path_str(&set), "--mode", "point-in-time"],
        0,
    ));
    assert!(!text.contains("..="), "{text}");
}

/// A keel-raft store as keel-raft lays it out (raft/src/lib.rs): a journal, `raft-meta` (its
/// 24-byte header and a JSON body) and `raft-snapshots/<op>.snap` in keel's snapshot format.
fn raft_store(dir: &Path, ops: u64, purged: u64) {
    let runtime = compio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let root = FsDirectory::open_with(dir, DirAccess::Create)
            .await
            .unwrap();
        let config = keel::journal::JournalConfig::default();
        let (journal, _) = keel::journal::MetadataJournal::open(
            &root,
            config,
            keel::journal::RecoveryMode::TolerateTornTail,
        )
        .await
        .unwrap();
        for op in 1..=ops {
            journal.append(op, br#"{"entry":"raft"}"#).await.unwrap();
        }
        journal.set_commit_op(ops);
        journal.set_snapshot_op(purged).await.unwrap();
        journal.close().await.unwrap();
    });
    let body = br#"{"vote":null,"last_purged":null}"#;
    let mut meta = b"KRAFTMTA".to_vec();
    meta.extend_from_slice(&1u32.to_le_bytes());
    meta.extend_from_slice(&(body.len() as u32).to_le_bytes());
    meta.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    let crc = crc32fast::hash(&meta[0..20]);
    meta.extend_from_slice(&crc.to_le_bytes());
    meta.extend_from_slice(body);
    fs::write(dir.join("raft-meta"), meta).unwrap();
    fs::create_dir(dir.join("raft-snapshots")).unwrap();
    let snapshot = keel::engine::encode_snapshot_file(purged, b"openraft's bytes");
    fs::write(
        dir.join("raft-snapshots")
            .join(format!("{purged:020}.snap")),
        snapshot,
    )
    .unwrap();
}

/// Item 4: a healthy keel-raft store and a cluster of them verify clean, and no tool creates
/// anything in them; a damaged meta file is corruption.
#[test]
fn keel_raft_stores_and_clusters_are_keel_directories() {
    let temp = tempfile::tempdir().unwrap();
    let cluster = temp.path().join("cluster");
    for node in 0..2 {
        raft_store(&cluster.join(format!("node-{node}")), 300, 200);
    }
    let node = cluster.join("node-0");
    let before = tree(&cluster);
    let verify = run_json(&["verify", path_str(&node), "--json"], 0);
    assert_eq!(verify["status"], "clean", "{verify}");
    let verify = run_json(&["verify", path_str(&cluster), "--json"], 0);
    assert_eq!(verify["kind"], "cluster", "{verify}");
    assert_eq!(verify["shards"][1]["status"], "clean", "{verify}");
    let inspect = run_json(&["inspect", path_str(&node), "--json"], 0);
    assert_eq!(inspect["kind"], "raft_store", "{inspect}");
    assert_eq!(inspect["raft_meta"]["valid"], true, "{inspect}");
    assert_eq!(inspect["snapshots"][0]["op"], 200, "{inspect}");
    assert_eq!(inspect["journal_snapshot_op"], 200, "{inspect}");
    run_json_lines(&["dump", path_str(&cluster), "--json", "--limit", "2"], 0);
    run_json(&["repair", path_str(&cluster), "--dry-run", "--json"], 0);
    assert_same_tree(&before, &tree(&cluster));
    let recover = run_json(&["recover", path_str(&node), "--json"], 0);
    assert_eq!(recover["status"], "clean", "{recover}");
    for made in ["snapshots", "MANIFEST"] {
        assert!(!node.join(made).exists(), "recover created {made}");
    }

    flip(&cluster.join("node-1").join("raft-meta"), 30);
    let verify = run_json(&["verify", path_str(&cluster), "--json"], 4);
    let problems = verify["shards"][1]["problems"].as_array().unwrap();
    assert!(
        problems.iter().any(|p| p["kind"] == "raft_meta"),
        "{verify}"
    );
}

/// Item 6: one JSON contract: every output carries schema_version 1, `problems` is a list and
/// each member its path; an error with --json is a JSON object on stdout.
#[test]
fn every_json_output_follows_one_contract() {
    let temp = tempfile::tempdir().unwrap();
    let set = temp.path().join("set");
    bench_into(&set, 300, &[]);
    let dir = path_str(&set);
    for args in [
        vec!["verify", dir, "--json"],
        vec!["inspect", dir, "--json"],
        vec!["recover", dir, "--json"],
        vec!["repair", dir, "--json"],
        vec!["repair", dir, "--dry-run", "--json"],
    ] {
        let out = run_json(&args, 0);
        assert_eq!(out["schema_version"], 1, "{args:?}: {out}");
        assert_eq!(out["path"], dir, "{args:?}: {out}");
        let shard = &out["shards"][0];
        assert!(shard["problems"].is_array(), "{args:?}: {out}");
        assert!(
            shard["path"].as_str().unwrap().ends_with("shard-0"),
            "{args:?}"
        );
        if args[0] != "repair" {
            assert!(
                shard["journal_snapshot_op"].is_u64() || shard["journal_snapshot_op"].is_null()
            );
        }
    }
    for line in run_json_lines(&["dump", dir, "--json", "--limit", "5"], 0) {
        assert_eq!(line["schema_version"], 1, "{line}");
        assert!(line["path"].is_string(), "{line}");
    }
    let bench = run_json(
        &[
            "bench",
            "--shards",
            "1",
            "--ops",
            "20",
            "--no-pin",
            "--segment-mib",
            "1",
            "--json",
        ],
        0,
    );
    assert_eq!(bench["schema_version"], 1, "{bench}");
    let missing = temp.path().join("nothing-here");
    let error = run_json(&["verify", path_str(&missing), "--json"], 1);
    assert_eq!(error["schema_version"], 1, "{error}");
    assert_eq!(error["error"]["kind"], "not_keel", "{error}");
    assert_eq!(error["error"]["path"], path_str(&missing), "{error}");
    assert!(error["error"]["message"].is_string(), "{error}");
    assert!(!missing.exists(), "a tool created the directory it refused");
}
