//! A 3-node keel-backed key-value cluster on 127.0.0.1, measuring client write throughput and
//! latency, with 1 or more raft groups per node, on disk and on the in-memory file system.
//!
//! Each shard of a node is one thread with its own compio runtime, store directory and openraft
//! group; every log append is made durable by keel's group commit (one fdatasync per batch)
//! before openraft counts it, on the leader and on the followers. A write is acknowledged once a
//! majority of its group has it durable and the leader applied it. Keys are routed to groups by
//! hash. `--medium memory` runs the same cluster with every store on keel's `MemFs` (no disk, no
//! fsync): the upper bound the disk figures are divided by.
//!
//! ```sh
//! cargo run --release -p keel-raft --example cluster -- [--writes N] [--concurrency 1,16,64]
//!     [--shards 1,2] [--medium disk,memory] [--value-bytes B] [--dir DIR] [--snapshot-every N]
//! ```
//!
//! Without `--dir` the stores go to a temporary directory that is removed afterwards.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use keel_raft::cluster::{
    bind_listeners, raft_config, Client, Load, LoadReport, Medium, NodeConfig, NodeHandle,
};
use keel_raft::store::{DEFAULT_LOGS_KEPT, DEFAULT_LOGS_SINCE_SNAPSHOT};
use keel_raft::StoreConfig;

struct Args {
    writes: u64,
    concurrency: Vec<u64>,
    shards: Vec<u32>,
    media: Vec<Medium>,
    value_bytes: usize,
    dir: Option<PathBuf>,
    snapshot_every: u64,
}

fn usage() -> ! {
    eprintln!(
        "usage: cluster [--writes N] [--concurrency C1,C2,..] [--shards S1,S2,..] \
         [--medium disk,memory] [--value-bytes B] [--dir DIR] [--snapshot-every N]"
    );
    std::process::exit(2)
}

fn list<T: std::str::FromStr>(value: &str) -> Vec<T> {
    value
        .split(',')
        .map(|c| c.parse().unwrap_or_else(|_| usage()))
        .collect()
}

fn parse_args() -> Args {
    let mut args = Args {
        writes: 5_000,
        concurrency: vec![1, 16, 64],
        shards: vec![1],
        media: vec![Medium::Disk],
        value_bytes: 100,
        dir: None,
        snapshot_every: DEFAULT_LOGS_SINCE_SNAPSHOT,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--writes" => args.writes = value.parse().unwrap_or_else(|_| usage()),
            "--concurrency" => args.concurrency = list(&value),
            "--shards" => args.shards = list(&value),
            "--medium" => {
                args.media = value
                    .split(',')
                    .map(|m| match m {
                        "disk" => Medium::Disk,
                        "memory" => Medium::Memory,
                        _ => usage(),
                    })
                    .collect()
            }
            "--value-bytes" => args.value_bytes = value.parse().unwrap_or_else(|_| usage()),
            "--dir" => args.dir = Some(PathBuf::from(value)),
            "--snapshot-every" => args.snapshot_every = value.parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    let bad_concurrency = args.concurrency.iter().any(|c| *c == 0 || *c > 4096);
    let bad_shards = args.shards.iter().any(|s| *s == 0 || *s > 16);
    if args.snapshot_every == 0 || args.writes == 0 || bad_concurrency || bad_shards {
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
    common::init_tracing();
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

/// One measured level.
struct Row {
    shards: u32,
    medium: Medium,
    concurrency: u64,
    report: LoadReport,
    fsyncs: u64,
    journal_bytes: u64,
    appends: u64,
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
    let mut rows = Vec::new();
    for &shards in &args.shards {
        for &medium in &args.media {
            let dir = base.join(format!("{shards}-shards-{medium:?}"));
            rows.extend(run_cluster(args, &dir, shards, medium)?);
        }
    }
    print_table(&rows);
    print_entry_bytes(args.value_bytes);
    Ok(())
}

/// The log payload of one benchmark write, in the binary encoding this build writes and in the
/// JSON earlier builds wrote (the journal adds its own entry header to either).
fn print_entry_bytes(value_bytes: usize) {
    use keel_raft::openraft::vote::RaftLeaderIdExt;
    use keel_raft::typ::{Entry, EntryPayload, LeaderId, LogId};
    let entry = Entry {
        log_id: LogId::new(LeaderId::new_committed(3, 1), 1_000_123),
        payload: EntryPayload::Normal(keel_raft::KvRequest::Set {
            key: keel_raft::cluster::key_name(1_000_123),
            value: value_of(1_000_123),
        }),
    };
    let binary = keel_raft::codec::encode(&entry).map(|b| b.len());
    let json = serde_json::to_vec(&entry).map(|b| b.len());
    if let (Ok(binary), Ok(json)) = (binary, json) {
        println!(
            "log payload of one write ({value_bytes}-byte value): binary {binary} bytes, \
             json {json} bytes"
        );
    }
}

fn run_cluster(
    args: &Args,
    base: &Path,
    shards: u32,
    medium: Medium,
) -> Result<Vec<Row>, Box<dyn std::error::Error>> {
    let (listeners, members) = bind_listeners(1..=3)?;
    let mut nodes = Vec::new();
    for (id, listener) in listeners {
        let config = NodeConfig {
            id,
            dir: base.join(format!("node-{id}")),
            members: members.clone(),
            initialize: id == 1,
            shards,
            medium,
            raft: raft_config(args.snapshot_every, DEFAULT_LOGS_KEPT)?,
            store: StoreConfig::for_snapshot_policy(args.snapshot_every, DEFAULT_LOGS_KEPT),
        };
        nodes.push(NodeHandle::spawn_kv(config, listener)?);
    }
    println!(
        "3 nodes x {shards} shards, {medium:?}, stores under {}",
        base.display()
    );
    let runtime = keel_raft::compio::runtime::Runtime::new()?;
    let load = |keys: std::ops::Range<u64>, concurrency| Load {
        groups: shards,
        keys,
        concurrency,
        value: value_of,
        stop_on_error: true,
    };
    // Elections, and each new leader's first blank entry, before anything is measured.
    runtime.block_on(load(0..100, 4).run(&members, None))?;
    let mut rows = Vec::new();
    let mut next_key = 1_000_000;
    for &concurrency in &args.concurrency {
        let before = totals(&runtime, &members, shards)?;
        let keys = next_key..next_key + args.writes;
        next_key += args.writes;
        let report = runtime.block_on(load(keys, concurrency).run(&members, None))?;
        let after = totals(&runtime, &members, shards)?;
        rows.push(Row {
            shards,
            medium,
            concurrency,
            report,
            fsyncs: after.0 - before.0,
            journal_bytes: after.1 - before.1,
            appends: after.2 - before.2,
        });
    }
    for node in nodes {
        node.shutdown()?;
    }
    Ok(rows)
}

/// Fsyncs, journal bytes and appends summed over every node and group.
fn totals(
    runtime: &keel_raft::compio::runtime::Runtime,
    members: &BTreeMap<u64, keel_raft::openraft::BasicNode>,
    shards: u32,
) -> Result<(u64, u64, u64), Box<dyn std::error::Error>> {
    let mut sum = (0, 0, 0);
    for group in 0..shards {
        let mut client: Client = Client::for_group(members, group);
        client.rpc_timeout = Duration::from_secs(5);
        for id in members.keys() {
            let status = runtime.block_on(client.status(id))?;
            sum.0 += status.fsyncs;
            sum.1 += status.journal_bytes;
            sum.2 += status.journal_appends;
        }
    }
    Ok(sum)
}

fn print_table(rows: &[Row]) {
    println!(
        "{:>6} {:>7} {:>5} {:>8} {:>10} {:>8} {:>8} {:>11} {:>9} {:>9}",
        "shards",
        "medium",
        "conc",
        "writes",
        "writes/s",
        "p50 us",
        "p99 us",
        "vs memory",
        "bytes/ent",
        "ent/fsync"
    );
    for row in rows {
        let memory = rows.iter().find(|r| {
            r.medium == Medium::Memory && r.shards == row.shards && r.concurrency == row.concurrency
        });
        let ratio = memory
            .map(|m| {
                format!(
                    "{:.2}",
                    row.report.writes_per_sec() / m.report.writes_per_sec()
                )
            })
            .unwrap_or_else(|| "-".into());
        println!(
            "{:>6} {:>7} {:>5} {:>8} {:>10.0} {:>8} {:>8} {:>11} {:>9.1} {:>9.1}",
            row.shards,
            format!("{:?}", row.medium).to_lowercase(),
            row.concurrency,
            row.report.writes,
            row.report.writes_per_sec(),
            row.report.percentile_us(50.0),
            row.report.percentile_us(99.0),
            ratio,
            row.journal_bytes as f64 / row.appends.max(1) as f64,
            row.appends as f64 / row.fsyncs.max(1) as f64,
        );
    }
}
