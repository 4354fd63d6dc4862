//! Real crashes: a child process (this test binary re-invoked with `KEEL_RAFT_CHILD_*` set)
//! writes under load and is killed with SIGKILL mid-write.
//!
//! - `store_survives_sigkill_mid_append`: the child appends batches to a store and records each
//!   batch after its `IOFlushed` callback fired (and each vote after `save_vote` returned); after
//!   every kill the parent reopens the store and finds every recorded entry, byte for byte, and
//!   a vote at least as new as the last recorded one. Three kills on one directory.
//! - `killed_node_restarts_rejoins_and_converges`: node 3 of a 3-node cluster of 2 raft groups
//!   (2 shards per node) is a child process; it is killed while both groups take writes (every
//!   group of the node dies at once), restarted on its directories, and each group converges to
//!   the state computed independently for it.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{init_tracing, open_store};
use keel_engine::{KvCommand, KvStateMachine};
use keel_raft::cluster::{
    bind_listeners, group_of_key, key_name, raft_config, run_node, Client, Load, Medium,
    NodeConfig, NodeHandle,
};
use keel_raft::typ::{Entry, EntryPayload, LogId, Vote};
use keel_raft::{KvRequest, StoreConfig, TypeConfig};
use openraft::storage::RaftLogStorage;
use openraft::type_config::TypeConfigExt;
use openraft::vote::RaftLeaderIdExt;
use openraft::{BasicNode, RaftLogReader};

const CHILD_MODE: &str = "KEEL_RAFT_CHILD_MODE";
/// Raft groups per node in the cluster test: the SIGKILL takes down every group of the node.
const NODE_SHARDS: u32 = 2;
const CHILD_DIR: &str = "KEEL_RAFT_CHILD_DIR";
const CHILD_ACKS: &str = "KEEL_RAFT_CHILD_ACKS";
const CHILD_MEMBERS: &str = "KEEL_RAFT_CHILD_MEMBERS";
const CHILD_ID: &str = "KEEL_RAFT_CHILD_ID";

/// Batches in flight at once in the store child (they share group commits).
const INFLIGHT_BATCHES: usize = 16;
const ENTRIES_PER_BATCH: u64 = 4;
/// A new vote (higher term) every this many batches.
const BATCHES_PER_TERM: u64 = 100;
/// Upper bound on what one child writes if nobody kills it.
const MAX_CHILD_BATCHES: u64 = 200_000;

const LOGS_SINCE_SNAPSHOT: u64 = 300;
const LOGS_KEPT: u64 = 50;

/// The payload of log index `index`: deterministic, so the parent can check it byte for byte.
fn value_of(index: u64) -> String {
    format!("value-{index}-{}", "p".repeat((index % 13) as usize))
}

/// A child process, killed with SIGKILL when dropped (a failing parent leaves no orphan).
struct ChildGuard(Option<Child>);

impl ChildGuard {
    fn spawn(envs: &[(&str, String)]) -> Self {
        let exe = std::env::current_exe().unwrap();
        let mut command = Command::new(exe);
        command
            .args([
                "--exact",
                "child_process_entry",
                "--nocapture",
                "--test-threads=1",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (key, value) in envs {
            command.env(key, value);
        }
        Self(Some(command.spawn().expect("spawn child")))
    }

    /// SIGKILL (std's `Child::kill` on Unix), then reap.
    fn kill9(&mut self) {
        if let Some(mut child) = self.0.take() {
            child.kill().expect("SIGKILL child");
            let status = child.wait().expect("reap child");
            assert!(
                !status.success(),
                "the child was killed, not finished: {status:?}"
            );
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Not a test of its own: the body of the child processes. Does nothing unless spawned by a
/// test below (the variable is set).
#[test]
fn child_process_entry() {
    let Ok(mode) = std::env::var(CHILD_MODE) else {
        return;
    };
    init_tracing();
    let stop = watch_parent();
    let dir = PathBuf::from(std::env::var(CHILD_DIR).unwrap());
    match mode.as_str() {
        "store" => store_child(&dir, Path::new(&std::env::var(CHILD_ACKS).unwrap()), stop),
        "node" => {
            let members: BTreeMap<u64, BasicNode> =
                serde_json::from_str(&std::env::var(CHILD_MEMBERS).unwrap()).unwrap();
            let id: u64 = std::env::var(CHILD_ID).unwrap().parse().unwrap();
            let listener = std::net::TcpListener::bind(&members[&id].addr).unwrap();
            let config = NodeConfig {
                id,
                dir,
                members,
                initialize: false,
                shards: NODE_SHARDS,
                medium: Medium::Disk,
                raft: raft_config(LOGS_SINCE_SNAPSHOT, LOGS_KEPT).unwrap(),
                store: StoreConfig::for_snapshot_policy(LOGS_SINCE_SNAPSHOT, LOGS_KEPT),
            };
            run_node(config, listener, stop).unwrap();
        }
        other => panic!("unknown child mode {other}"),
    }
}

/// Sets the returned flag when the parent process goes away, so a child never outlives a
/// crashed test run for long.
fn watch_parent() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    // SAFETY: getppid has no preconditions.
    let parent = unsafe { libc::getppid() };
    let flag = stop.clone();
    std::thread::spawn(move || {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(600) {
            // SAFETY: as above.
            if unsafe { libc::getppid() } != parent {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        flag.store(true, Ordering::Release);
    });
    stop
}

fn store_child(dir: &Path, acks: &Path, stop: Arc<AtomicBool>) {
    let mut ack_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(acks)
        .unwrap();
    // One unbuffered write per line: a SIGKILL loses no line already written (the page cache
    // belongs to the kernel), and a line is written only after its fsync'd callback.
    let mut record = move |line: String| ack_file.write_all(line.as_bytes()).unwrap();
    TypeConfig::run(async move {
        let config = StoreConfig::for_snapshot_policy(LOGS_SINCE_SNAPSHOT, LOGS_KEPT);
        let (mut log, _sm, report) = open_store(dir, config.clone()).await;
        let mut next = report.last_index.map(|i| i + 1).unwrap_or(0);
        let mut term = report.vote.map(|v| v.leader_id.term).unwrap_or(0);
        let mut pending = std::collections::VecDeque::new();
        for batch in 0..MAX_CHILD_BATCHES {
            if stop.load(Ordering::Acquire) {
                break;
            }
            if batch % BATCHES_PER_TERM == 0 {
                term += 1;
                log.save_vote(&Vote::new(term, 1)).await.unwrap();
                record(format!("v {term}\n"));
            }
            let entries: Vec<Entry> = (next..next + ENTRIES_PER_BATCH)
                .map(|index| Entry {
                    log_id: LogId::new(keel_raft::typ::LeaderId::new_committed(term, 1), index),
                    payload: EntryPayload::Normal(KvRequest::Set {
                        key: format!("k{index}"),
                        value: value_of(index),
                    }),
                })
                .collect();
            let (tx, rx) = TypeConfig::oneshot();
            log.append(entries, openraft::storage::IOFlushed::signal(tx))
                .await
                .unwrap();
            pending.push_back((next, term, rx));
            next += ENTRIES_PER_BATCH;
            // Keep the ring from filling: purge behind, as openraft does after a snapshot.
            let state = log.get_log_state().await.unwrap();
            let first = state.last_purged_log_id.map(|l| l.index + 1).unwrap_or(0);
            if next - first > 1_500 {
                let upto = next - 500;
                let upto = log.try_get_log_entries(upto..=upto).await.unwrap()[0].log_id;
                log.purge(upto).await.unwrap();
            }
            while pending.len() >= INFLIGHT_BATCHES {
                let (first, term, rx) = pending.pop_front().unwrap();
                rx.await.unwrap().unwrap();
                for index in first..first + ENTRIES_PER_BATCH {
                    record(format!("a {index} {term}\n"));
                }
            }
        }
    });
}

/// What the child recorded: acknowledged `(index, term)` pairs and the newest acknowledged vote.
fn read_acks(path: &Path) -> (Vec<(u64, u64)>, Option<u64>) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut acked = Vec::new();
    let mut vote = None;
    // A line cut by the kill has no newline: it was never fully recorded.
    for line in text.split_inclusive('\n').filter(|l| l.ends_with('\n')) {
        let fields: Vec<u64> = line[2..]
            .split_whitespace()
            .map(|f| f.parse().unwrap())
            .collect();
        match &line[..1] {
            "a" => acked.push((fields[0], fields[1])),
            "v" => vote = Some(fields[0]),
            other => panic!("bad ack line kind {other}"),
        }
    }
    (acked, vote)
}

fn wait_for(what: &str, deadline: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn store_survives_sigkill_mid_append() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let acks = dir.path().join("acks");
    let store_dir = dir.path().join("store");
    let mut acked_before = 0;
    for round in 0..3u64 {
        let mut child = ChildGuard::spawn(&[
            (CHILD_MODE, "store".into()),
            (CHILD_DIR, store_dir.display().to_string()),
            (CHILD_ACKS, acks.display().to_string()),
        ]);
        wait_for("acknowledged appends", Duration::from_secs(60), || {
            read_acks(&acks).0.len() >= acked_before + 600
        });
        // Vary the moment of the kill a little between rounds.
        std::thread::sleep(Duration::from_millis(3 + 7 * round));
        child.kill9();

        let (acked, vote) = read_acks(&acks);
        assert!(acked.len() > acked_before);
        acked_before = acked.len();
        TypeConfig::run(async {
            let config = StoreConfig::for_snapshot_policy(LOGS_SINCE_SNAPSHOT, LOGS_KEPT);
            let (mut log, _sm, report) = open_store(&store_dir, config).await;
            let state = log.get_log_state().await.unwrap();
            let purged = state.last_purged_log_id.map(|l| l.index);
            let entries: BTreeMap<u64, Entry> = log
                .try_get_log_entries(..)
                .await
                .unwrap()
                .into_iter()
                .map(|e| (e.log_id.index, e))
                .collect();
            let mut checked = 0;
            for (index, term) in &acked {
                if purged.is_some_and(|p| *index <= p) {
                    continue;
                }
                let entry = entries
                    .get(index)
                    .unwrap_or_else(|| panic!("round {round}: acknowledged index {index} lost"));
                assert_eq!(entry.log_id.leader_id.term, *term, "index {index}");
                let expected = EntryPayload::Normal(KvRequest::Set {
                    key: format!("k{index}"),
                    value: value_of(*index),
                });
                assert_eq!(entry.payload, expected, "index {index}");
                checked += 1;
            }
            assert!(checked > 0);
            let last_acked = acked.iter().map(|(i, _)| *i).max().unwrap();
            assert!(state.last_log_id.unwrap().index >= last_acked);
            let durable_vote = log.read_vote().await.unwrap().expect("a vote");
            assert!(
                durable_vote >= Vote::new(vote.unwrap(), 1),
                "vote went back"
            );
            eprintln!(
                "round {round}: {} acknowledged, {checked} checked present, log {:?}..={:?}, \
                 repairs {:?}, gap {:?}",
                acked.len(),
                report.first_index,
                report.last_index,
                report.journal.repairs.len(),
                report.discarded_after_gap
            );
        });
    }
}

#[test]
fn killed_node_restarts_rejoins_and_converges() {
    init_tracing();
    let dirs: BTreeMap<u64, tempfile::TempDir> = (1..=3)
        .map(|id| (id, tempfile::tempdir().unwrap()))
        .collect();
    let (mut listeners, members) = bind_listeners(1..=3).unwrap();
    // Node 3 binds its own port in the child (std sets SO_REUSEADDR).
    drop(listeners.remove(&3));
    let child_envs = vec![
        (CHILD_MODE, "node".to_string()),
        (CHILD_DIR, dirs[&3].path().display().to_string()),
        (CHILD_MEMBERS, serde_json::to_string(&members).unwrap()),
        (CHILD_ID, "3".to_string()),
    ];
    let mut child = ChildGuard::spawn(&child_envs);
    let nodes: Vec<NodeHandle> = listeners
        .into_iter()
        .map(|(id, listener)| {
            let config = NodeConfig {
                id,
                dir: dirs[&id].path().to_path_buf(),
                members: members.clone(),
                initialize: id == 1,
                shards: NODE_SHARDS,
                medium: Medium::Disk,
                raft: raft_config(LOGS_SINCE_SNAPSHOT, LOGS_KEPT).unwrap(),
                store: StoreConfig::for_snapshot_policy(LOGS_SINCE_SNAPSHOT, LOGS_KEPT),
            };
            NodeHandle::spawn_kv(config, listener).unwrap()
        })
        .collect();

    const KEYS: u64 = 1_500;
    // The expected state of each group, computed independently with keel's own state machine.
    let mut expected: Vec<KvStateMachine> =
        (0..NODE_SHARDS).map(|_| KvStateMachine::new()).collect();
    for k in 0..KEYS {
        let key = key_name(k);
        let group = group_of_key(key.as_bytes(), NODE_SHARDS) as usize;
        expected[group].apply_command(&KvCommand::Set {
            key: key.into_bytes(),
            value: value_of(k).into_bytes(),
        });
    }

    // The load runs on its own thread and runtime while this thread kills node 3 under it.
    let load = {
        let members = members.clone();
        std::thread::spawn(move || {
            let load = Load {
                groups: NODE_SHARDS,
                keys: 0..KEYS,
                concurrency: 8,
                value: value_of,
                stop_on_error: true,
            };
            compio::runtime::Runtime::new()
                .unwrap()
                .block_on(load.run(&members, Some(1)))
        })
    };
    let runtime = compio::runtime::Runtime::new().unwrap();
    let mut clients: Vec<Client> = (0..NODE_SHARDS)
        .map(|g| Client::for_group(&members, g))
        .collect();
    let started = Instant::now();
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "node 3 never applied 150 entries in every group"
        );
        let applied = clients.iter_mut().all(|client| {
            runtime
                .block_on(client.status(&3))
                .ok()
                .and_then(|s| s.last_applied)
                .is_some_and(|l| l.index >= 150)
        });
        if applied {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // SIGKILL: every group of node 3 dies at once, mid-write.
    child.kill9();
    let report = load.join().unwrap().unwrap();
    assert_eq!(report.writes, KEYS);

    let mut child = ChildGuard::spawn(&child_envs);
    for (group, client) in clients.iter_mut().enumerate() {
        let statuses = runtime
            .block_on(client.wait_converged(&[1, 2, 3], 1, Duration::from_secs(60)))
            .unwrap();
        assert!(
            statuses
                .iter()
                .all(|s| s.digest == expected[group].digest()),
            "every node holds group {group}'s expected state: {statuses:?}"
        );
    }
    child.kill9();
    for node in nodes {
        node.shutdown().unwrap();
    }
}
