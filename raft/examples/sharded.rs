//! One raft group per core: 3 nodes × 2 shards on 127.0.0.1, a leader kill in one group while
//! the other keeps serving, both converging.
//!
//! Every node runs 2 shards, each on its own thread with its own compio runtime, keel store
//! directory and openraft group (shard `i` of every node forms group `i`); one listener per node
//! hands each connection to its group. Writes are routed to groups by key.
//!
//! ```sh
//! cargo run --release -p keel-raft --example sharded -- [--writes N] [--dir DIR]
//! ```
//!
//! 1. writes `N` keys across both groups;
//! 2. kills group 0's leader shard (that shard only: no shutdown, no sync) and at once writes
//!    `N` more keys, so group 1 serves while group 0 elects a new leader;
//! 3. restarts the killed shard on its directory; both groups converge on all three nodes.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use keel_raft::cluster::{
    bind_listeners, raft_config, Client, Load, Medium, NodeConfig, NodeHandle,
};
use keel_raft::StoreConfig;

const SHARDS: u32 = 2;
const CONVERGE: Duration = Duration::from_secs(30);

fn value_of(k: u64) -> String {
    format!("value-{k}")
}

fn main() -> ExitCode {
    common::init_tracing();
    let mut writes = 2_000u64;
    let mut dir = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        match (flag.as_str(), args.next()) {
            ("--writes", Some(n)) if n.parse::<u64>().is_ok_and(|n| n > 0) => {
                writes = n.parse().unwrap_or(writes)
            }
            ("--dir", Some(d)) => dir = Some(PathBuf::from(d)),
            _ => {
                eprintln!("usage: sharded [--writes N] [--dir DIR]");
                return ExitCode::from(2);
            }
        }
    }
    match run(writes, dir) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run(writes: u64, dir: Option<PathBuf>) -> Result<(), Box<dyn std::error::Error>> {
    let temp = tempfile::tempdir()?;
    let base = dir.unwrap_or_else(|| temp.path().to_path_buf());
    let (listeners, members) = bind_listeners(1..=3)?;
    let config = |id: u64| NodeConfig {
        id,
        dir: base.join(format!("node-{id}")),
        members: members.clone(),
        initialize: id == 1,
        shards: SHARDS,
        medium: Medium::Disk,
        raft: raft_config(1_000, 200).expect("a valid raft config"),
        store: StoreConfig::for_snapshot_policy(1_000, 200),
    };
    let mut nodes = BTreeMap::new();
    for (id, listener) in listeners {
        nodes.insert(id, NodeHandle::spawn_kv(config(id), listener)?);
    }
    println!("3 nodes x {SHARDS} shards under {}", base.display());
    let runtime = keel_raft::compio::runtime::Runtime::new()?;
    let load = |keys: std::ops::Range<u64>| Load {
        groups: SHARDS,
        keys,
        concurrency: 16,
        value: value_of,
        stop_on_error: true,
    };
    let mut clients: Vec<Client> = (0..SHARDS)
        .map(|g| Client::for_group(&members, g))
        .collect();

    let report = runtime.block_on(load(0..writes).run(&members, None))?;
    println!(
        "phase 1: {} writes over both groups, {:.0} writes/s",
        report.writes,
        report.writes_per_sec()
    );
    let leaders = find_leaders(&runtime, &mut clients)?;

    nodes[&leaders[0]].kill_shard(0)?;
    println!("killed group 0's shard on node {}", leaders[0]);
    let started = Instant::now();
    let report = runtime.block_on(load(writes..2 * writes).run(&members, None))?;
    println!(
        "phase 2: {} writes acknowledged in {:?} while group 0 failed over (p99 {} us)",
        report.writes,
        started.elapsed(),
        report.percentile_us(99.0)
    );
    find_leaders(&runtime, &mut clients)?;

    nodes[&leaders[0]].restart_shard(0)?;
    println!("restarted group 0's shard on node {}", leaders[0]);
    for (group, client) in clients.iter_mut().enumerate() {
        let statuses = runtime.block_on(client.wait_converged(&[1, 2, 3], 1, CONVERGE))?;
        println!(
            "group {group}: all 3 nodes at {:?}, digest {:016x}",
            statuses[0].last_applied, statuses[0].digest
        );
    }
    for (_, node) in nodes {
        node.shutdown()?;
    }
    Ok(())
}

/// Each group's leader (as its nodes report it), printed.
fn find_leaders(
    runtime: &keel_raft::compio::runtime::Runtime,
    clients: &mut [Client],
) -> Result<Vec<u64>, Box<dyn std::error::Error>> {
    let mut leaders = Vec::new();
    for client in clients {
        let mut leader = None;
        for id in [1, 2, 3] {
            if let Ok(status) = runtime.block_on(client.status(&id)) {
                leader = leader.or(status.current_leader);
            }
        }
        leaders.push(leader.ok_or("a group has no leader")?);
    }
    let listed: Vec<String> = leaders
        .iter()
        .enumerate()
        .map(|(group, node)| format!("group {group} on node {node}"))
        .collect();
    println!("leaders: {}", listed.join(", "));
    Ok(leaders)
}
