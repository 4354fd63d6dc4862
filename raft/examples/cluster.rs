//! A 3-node keel-backed raft cluster on 127.0.0.1, measuring client write throughput and latency.
//!
//! Each node is one thread with its own compio runtime and its own store directory; every log
//! append is made durable by keel's group commit (one fdatasync per batch) before openraft counts
//! it, on the leader and on the followers. A write is acknowledged once a majority has it durable
//! and the leader applied it.
//!
//! ```sh
//! cargo run --release -p keel-raft --example cluster -- [--writes N] [--concurrency 1,16,64]
//!     [--value-bytes B] [--dir DIR] [--snapshot-every N]
//! ```
//!
//! Without `--dir` the stores go to a temporary directory that is removed afterwards.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use keel_raft::cluster::{bind_listeners, raft_config, write_keys, Client, NodeConfig, NodeHandle};
use keel_raft::store::{DEFAULT_LOGS_KEPT, DEFAULT_LOGS_SINCE_SNAPSHOT};
use keel_raft::StoreConfig;

struct Args {
    writes: u64,
    concurrency: Vec<u64>,
    value_bytes: usize,
    dir: Option<PathBuf>,
    snapshot_every: u64,
}

fn usage() -> ! {
    eprintln!("usage: cluster [--writes N] [--concurrency C1,C2,..] [--value-bytes B] [--dir DIR]");
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut args = Args {
        writes: 5_000,
        concurrency: vec![1, 16, 64],
        value_bytes: 100,
        dir: None,
        snapshot_every: DEFAULT_LOGS_SINCE_SNAPSHOT,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--writes" => args.writes = value.parse().unwrap_or_else(|_| usage()),
            "--concurrency" => {
                args.concurrency = value
                    .split(',')
                    .map(|c| c.parse().unwrap_or_else(|_| usage()))
                    .collect()
            }
            "--value-bytes" => args.value_bytes = value.parse().unwrap_or_else(|_| usage()),
            "--dir" => args.dir = Some(PathBuf::from(value)),
            "--snapshot-every" => args.snapshot_every = value.parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    if args.snapshot_every == 0
        || args.writes == 0
        || args.concurrency.iter().any(|c| *c == 0 || *c > 4096)
    {
        usage();
    }
    args
}

static VALUE_BYTES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(100);

fn value_of(k: u64) -> String {
    let len = VALUE_BYTES.load(std::sync::atomic::Ordering::Relaxed);
    let mut value = format!("{k}-");
    value.extend(std::iter::repeat_n('v', len.saturating_sub(value.len())));
    value
}

fn main() -> ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // openraft logs every failed heartbeat as nodes stop one by one at the end.
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,openraft=off")),
        )
        .try_init();
    let args = parse_args();
    VALUE_BYTES.store(args.value_bytes, std::sync::atomic::Ordering::Relaxed);
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let temp;
    let base = match &args.dir {
        Some(dir) => dir.clone(),
        None => {
            temp = tempfile::tempdir()?;
            temp.path().to_path_buf()
        }
    };
    let (listeners, members) = bind_listeners(1..=3)?;
    let mut nodes = Vec::new();
    for (id, listener) in listeners {
        let config = NodeConfig {
            id,
            dir: base.join(format!("node-{id}")),
            members: members.clone(),
            initialize: id == 1,
            raft: raft_config(args.snapshot_every, DEFAULT_LOGS_KEPT)?,
            store: StoreConfig::for_snapshot_policy(args.snapshot_every, DEFAULT_LOGS_KEPT),
        };
        nodes.push(NodeHandle::spawn(config, listener));
    }
    println!(
        "3 nodes on {:?}, stores under {}",
        members.values().collect::<Vec<_>>(),
        base.display()
    );

    let runtime = compio::runtime::Runtime::new()?;
    let mut client = Client::new(&members);
    // Election, and the new leader's first blank entry, before anything is measured.
    runtime.block_on(write_keys(&members, 1, 0..100, 4, value_of))?;
    let mut leader = runtime
        .block_on(client.status(1))?
        .current_leader
        .unwrap_or(1);
    println!("leader: node {leader}");
    println!(
        "{:>11} {:>8} {:>10} {:>9} {:>9} {:>9} {:>12} {:>15}",
        "concurrency",
        "writes",
        "writes/s",
        "p50 us",
        "p99 us",
        "p999 us",
        "leader fsync",
        "entries/fsync"
    );
    let mut next_key = 1_000_000;
    for &concurrency in &args.concurrency {
        // An overloaded machine can miss heartbeats and elect another leader between levels.
        leader = runtime
            .block_on(client.status(leader))?
            .current_leader
            .unwrap_or(leader);
        let before = runtime.block_on(client.status(leader))?;
        let keys = next_key..next_key + args.writes;
        next_key += args.writes;
        let report = runtime.block_on(write_keys(&members, leader, keys, concurrency, value_of))?;
        let after = runtime.block_on(client.status(leader))?;
        if after.current_leader != Some(leader) {
            println!("(leadership moved during this level; fsync counts are node {leader}'s)");
        }
        let fsyncs = after.fsyncs - before.fsyncs;
        let appends = after.journal_appends - before.journal_appends;
        println!(
            "{:>11} {:>8} {:>10.0} {:>9} {:>9} {:>9} {:>12} {:>15.1}",
            concurrency,
            report.writes,
            report.writes_per_sec(),
            report.percentile_us(50.0),
            report.percentile_us(99.0),
            report.percentile_us(99.9),
            fsyncs,
            appends as f64 / fsyncs.max(1) as f64
        );
    }
    let statuses =
        runtime.block_on(client.wait_converged(&[1, 2, 3], 0, Duration::from_secs(30)))?;
    println!(
        "converged: applied {:?}, {} keys, digest {:016x}",
        statuses[0].last_applied, statuses[0].keys, statuses[0].digest
    );
    let mut exits = BTreeMap::new();
    for node in nodes {
        let id = node.id;
        exits.insert(id, node.shutdown()?);
    }
    for (id, exit) in exits {
        let j = exit.journal;
        println!(
            "node {id}: {} appends, {} fsyncs, {:.0} us mean fdatasync",
            j.appends,
            j.fsyncs,
            j.fsync_nanos_total as f64 / j.fsyncs.max(1) as f64 / 1e3
        );
    }
    Ok(())
}
