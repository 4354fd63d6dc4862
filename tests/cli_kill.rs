//! Real crashes: `keel bench --sync every --ack-file F` is SIGKILLed at a random moment (seeded),
//! then `keel recover --json` must report, for every shard, a `last_op` at or above every op that
//! shard acknowledged in F, and `keel verify` must exit 0 afterwards.
//!
//! Rounds: `KEEL_KILL_ROUNDS` (default 20). Seed: `KEEL_KILL_SEED` (default fixed; printed, so a
//! failing round replays).

mod cli_common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::Duration;

use cli_common::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Highest acknowledged op per shard; a last line cut by the kill (no newline) is ignored.
fn acked(ack_file: &Path) -> BTreeMap<u64, u64> {
    let text = fs::read_to_string(ack_file).unwrap_or_default();
    let mut max = BTreeMap::new();
    for line in text.split_inclusive('\n').filter(|l| l.ends_with('\n')) {
        let mut parts = line.split_whitespace();
        let (Some(shard), Some(op)) = (parts.next(), parts.next()) else {
            panic!("malformed ack line {line:?}");
        };
        let (shard, op): (u64, u64) = (shard.parse().unwrap(), op.parse().unwrap());
        let entry = max.entry(shard).or_insert(0);
        *entry = (*entry).max(op);
    }
    max
}

/// One round: bench, kill after `delay`, recover, compare, verify.
fn round(temp: &Path, round: u64, shards: u64, sync: &str, delay: Duration) {
    let dir = temp.join(format!("round-{round}"));
    let acks = temp.join(format!("acks-{round}"));
    let shards_arg = shards.to_string();
    let every = [
        "--checkpoint-every",
        "300",
        "--sync",
        sync,
        "--shards",
        &shards_arg,
    ];
    let mut child = long_bench(&acks, &every)
        .args(["--dir", path_str(&dir)])
        .spawn()
        .expect("spawn keel bench");
    wait_for_first_ack(&acks);
    std::thread::sleep(delay);
    child.kill().expect("SIGKILL");
    child.wait().unwrap();
    let acked = acked(&acks);
    let recover = run_json(&["recover", path_str(&dir), "--json"], 0);
    let reports = recover["shards"].as_array().expect("a shard set");
    for (shard, max_acked) in &acked {
        let report = reports
            .iter()
            .find(|r| r["shard"] == *shard)
            .unwrap_or_else(|| panic!("round {round}: no report for shard {shard}: {recover}"));
        let last_op = report["last_op"].as_u64().unwrap();
        assert!(
            last_op >= *max_acked,
            "round {round}: shard {shard} acknowledged op {max_acked} but recovered last_op {last_op}: {report}"
        );
    }
    let verify = run(&["verify", path_str(&dir)]);
    assert_eq!(
        code(&verify),
        0,
        "round {round}: verify after recover: {}",
        stdout(&verify)
    );
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn kill_9_never_loses_an_acknowledged_op() {
    let rounds = env_u64("KEEL_KILL_ROUNDS", 20);
    let seed = env_u64("KEEL_KILL_SEED", 0x6b65_656c);
    println!("kill -9: {rounds} rounds, KEEL_KILL_SEED={seed}");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let temp = tempfile::tempdir().unwrap();
    for r in 0..rounds {
        let shards = rng.gen_range(1..=2);
        // Mostly `--sync every` (the contract); every fourth round pipelined, for group commit.
        let sync = if r % 4 == 3 { "batch" } else { "every" };
        let delay = Duration::from_millis(rng.gen_range(0..800));
        println!("round {r}: {shards} shard(s), sync {sync}, kill after first ack + {delay:?}");
        round(temp.path(), r, shards, sync, delay);
    }
}
