//! Running keel-backed raft nodes on 127.0.0.1: one OS thread with its own compio runtime per
//! node (thread-per-core), and a client that finds the leader.
//!
//! Used by the cluster tests and `examples/cluster.rs`. Every loop here is bounded in time (and
//! the retry loops in count as well).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use keel_journal::JournalStats;
use keel_storage::FsDirectory;
use openraft::errors::{ClientWriteError, Fatal, InitializeError, RaftError};
use openraft::raft::ClientWriteResponse;
use openraft::{BasicNode, Config, ConfigError, SnapshotPolicy};

use crate::error::RaftStoreError;
use crate::kv::KvRequest;
use crate::network::{
    serve, ClientWriteReply, Connection, NetworkFactory, NodeContext, NodeStatus,
};
use crate::store::{open_kv, OpenReport, StoreConfig};
use crate::{Raft, TypeConfig};

/// How long a node runs at most if nobody stops it (a safety bound for tests and the example).
pub const MAX_NODE_LIFETIME: Duration = Duration::from_secs(30 * 60);

/// Errors of running a node or a client.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("store: {0}")]
    Store(#[from] RaftStoreError),
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("raft config: {0}")]
    Config(#[from] ConfigError),
    #[error("raft stopped: {0}")]
    Fatal(#[from] Fatal<TypeConfig>),
    #[error("initialize: {0}")]
    Initialize(#[from] RaftError<TypeConfig, InitializeError<TypeConfig>>),
    #[error("client write refused: {0}")]
    Write(RaftError<TypeConfig, ClientWriteError<TypeConfig>>),
    #[error("client write rejected before raft: {0}")]
    Rejected(String),
    #[error("client write gave up after {attempts} attempts in {elapsed:?}; last error: {last}")]
    GaveUp {
        attempts: u32,
        elapsed: Duration,
        last: String,
    },
    #[error("node thread panicked")]
    Panicked,
}

fn io_error(what: &'static str) -> impl FnOnce(std::io::Error) -> ClusterError {
    move |source| ClusterError::Io { what, source }
}

/// openraft's timing for a loopback cluster, with snapshots every `logs_since_snapshot` entries
/// and `logs_kept` entries kept behind a snapshot (size the store with
/// [`StoreConfig::for_snapshot_policy`] from the same two numbers).
pub fn raft_config(logs_since_snapshot: u64, logs_kept: u64) -> Result<Config, ConfigError> {
    Config {
        cluster_name: "keel".to_string(),
        heartbeat_interval: 100,
        election_timeout_min: 300,
        election_timeout_max: 600,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(logs_since_snapshot),
        max_in_snapshot_log_to_keep: logs_kept,
        ..Default::default()
    }
    .validate()
}

/// Everything a node needs to start.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub id: u64,
    /// The store's directory (created if missing).
    pub dir: PathBuf,
    /// Every member's id and `127.0.0.1:port`.
    pub members: BTreeMap<u64, String>,
    /// Initialize the cluster with `members` (exactly one node, on its first start).
    pub initialize: bool,
    pub raft: Config,
    pub store: StoreConfig,
}

/// What a node reports when it stops.
#[derive(Debug, Clone)]
pub struct NodeExit {
    pub open_report: OpenReport,
    pub journal: JournalStats,
}

/// Runs a node on the current thread until `stop` is set (or [`MAX_NODE_LIFETIME`]), then shuts
/// raft down and syncs the store (a clean shutdown: the restart sees the committed state).
/// `listener` must be bound to this node's address in `members`.
pub fn run_node(
    config: NodeConfig,
    listener: std::net::TcpListener,
    stop: Arc<AtomicBool>,
) -> Result<NodeExit, ClusterError> {
    let runtime = compio::runtime::Runtime::new().map_err(io_error("create compio runtime"))?;
    runtime.block_on(async move {
        let id = config.id;
        let root = FsDirectory::open(&config.dir, true, false)
            .await
            .map_err(io_error("open store directory"))?;
        let (log, sm, open_report) = open_kv(root, config.store.clone()).await?;
        let raft = Raft::new(
            id,
            Arc::new(config.raft.clone()),
            NetworkFactory,
            log.clone(),
            sm.clone(),
        )
        .await?;
        listener
            .set_nonblocking(true)
            .map_err(io_error("set listener non-blocking"))?;
        let listener =
            compio::net::TcpListener::from_std(listener).map_err(io_error("adopt listener"))?;
        let context = NodeContext {
            id,
            raft: raft.clone(),
            sm: sm.clone(),
            log: log.clone(),
        };
        compio::runtime::spawn(serve(listener, context)).detach();
        if config.initialize {
            let members: BTreeMap<u64, BasicNode> = config
                .members
                .iter()
                .map(|(id, addr)| (*id, BasicNode { addr: addr.clone() }))
                .collect();
            match raft.initialize(members).await {
                Ok(()) => {}
                // Restarted with its log: the cluster exists already.
                Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                Err(error) => return Err(error.into()),
            }
        }
        tracing::info!(id, "node running");
        let started = Instant::now();
        while !stop.load(Ordering::Acquire) && started.elapsed() < MAX_NODE_LIFETIME {
            compio::time::sleep(Duration::from_millis(10)).await;
        }
        if let Err(error) = raft.shutdown().await {
            tracing::warn!(id, ?error, "raft shutdown reported an error");
        }
        log.sync().await?;
        tracing::info!(id, "node stopped");
        Ok(NodeExit {
            open_report,
            journal: log.journal_stats(),
        })
    })
}

/// A node running on its own thread.
pub struct NodeHandle {
    pub id: u64,
    pub addr: String,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<NodeExit, ClusterError>>>,
}

impl Drop for NodeHandle {
    /// A handle dropped without [`NodeHandle::shutdown`] (a failing test) still stops its node,
    /// so no thread outlives the test by the full [`MAX_NODE_LIFETIME`].
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

impl NodeHandle {
    /// Starts `config`'s node on a new thread, serving on `listener`.
    pub fn spawn(config: NodeConfig, listener: std::net::TcpListener) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let id = config.id;
        let addr = config.members.get(&id).cloned().unwrap_or_default();
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(format!("keel-raft-node-{id}"))
                .spawn(move || run_node(config, listener, stop))
                .expect("spawning a thread")
        };
        Self {
            id,
            addr,
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the node (clean shutdown) and waits for its thread.
    pub fn shutdown(mut self) -> Result<NodeExit, ClusterError> {
        self.stop.store(true, Ordering::Release);
        let thread = self.thread.take().ok_or(ClusterError::Panicked)?;
        thread.join().map_err(|_| ClusterError::Panicked)?
    }
}

/// Listeners by node id, and the members' addresses by node id.
pub type Bound = (BTreeMap<u64, std::net::TcpListener>, BTreeMap<u64, String>);

/// Binds one loopback listener per id on an ephemeral port; returns them and the address map.
pub fn bind_listeners(ids: impl IntoIterator<Item = u64>) -> Result<Bound, ClusterError> {
    let mut listeners = BTreeMap::new();
    let mut addrs = BTreeMap::new();
    for id in ids {
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").map_err(io_error("bind listener"))?;
        let addr = listener
            .local_addr()
            .map_err(io_error("listener address"))?
            .to_string();
        addrs.insert(id, addr);
        listeners.insert(id, listener);
    }
    Ok((listeners, addrs))
}

/// Rebinds a node's address after a restart (std sets `SO_REUSEADDR`, so `TIME_WAIT` does not
/// block it).
pub fn rebind(addr: &str) -> Result<std::net::TcpListener, ClusterError> {
    std::net::TcpListener::bind(addr).map_err(io_error("rebind listener"))
}

/// A client that sends writes to the leader, following `ForwardToLeader` and skipping nodes that
/// do not answer. Runs on a compio runtime.
pub struct Client {
    connections: BTreeMap<u64, Connection>,
    /// The node believed to lead.
    target: u64,
    /// Bound on one attempt.
    pub rpc_timeout: Duration,
    /// Bound on one write, retries included.
    pub write_deadline: Duration,
    /// Bound on attempts per write.
    pub max_attempts: u32,
}

impl Client {
    pub fn new(members: &BTreeMap<u64, String>) -> Self {
        let connections: BTreeMap<u64, Connection> = members
            .iter()
            .map(|(id, addr)| (*id, Connection::new(*id, addr.clone())))
            .collect();
        let target = connections.keys().next().copied().unwrap_or(0);
        Self {
            connections,
            target,
            rpc_timeout: Duration::from_secs(3),
            write_deadline: Duration::from_secs(20),
            max_attempts: 400,
        }
    }

    /// Sets the node tried first.
    pub fn with_target(mut self, id: u64) -> Self {
        self.target = id;
        self
    }

    /// The node the next write goes to first.
    pub fn target(&self) -> u64 {
        self.target
    }

    fn next_target(&mut self) {
        let ids: Vec<u64> = self.connections.keys().copied().collect();
        let position = ids.iter().position(|id| *id == self.target).unwrap_or(0);
        self.target = ids[(position + 1) % ids.len()];
    }

    /// Writes `request` through the leader; returns once it is applied there.
    ///
    /// A write whose attempt timed out may still have been applied, and is then applied again
    /// by the retry; the key-value commands are idempotent, so the state is the same.
    pub async fn write(
        &mut self,
        request: KvRequest,
    ) -> Result<ClientWriteResponse<TypeConfig>, ClusterError> {
        let started = Instant::now();
        let mut last = String::from("no attempt");
        for attempt in 1..=self.max_attempts {
            if started.elapsed() > self.write_deadline {
                return Err(ClusterError::GaveUp {
                    attempts: attempt - 1,
                    elapsed: started.elapsed(),
                    last,
                });
            }
            let target = self.target;
            let Some(connection) = self.connections.get_mut(&target) else {
                self.next_target();
                continue;
            };
            match connection
                .client_write(request.clone(), self.rpc_timeout)
                .await
            {
                Ok(ClientWriteReply::Rejected(reason)) => {
                    return Err(ClusterError::Rejected(reason))
                }
                Ok(ClientWriteReply::Raft(Ok(response))) => return Ok(response),
                Ok(ClientWriteReply::Raft(Err(error))) => {
                    let Some(forward) = error.forward_to_leader() else {
                        return Err(ClusterError::Write(error));
                    };
                    last = format!("node {target}: {error}");
                    match forward.leader_id {
                        Some(leader) if leader != target => self.target = leader,
                        // No leader known yet (election, or a new leader without its lease).
                        _ => compio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
                Err(error) => {
                    last = format!("node {target}: {error}");
                    self.next_target();
                    compio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        Err(ClusterError::GaveUp {
            attempts: self.max_attempts,
            elapsed: started.elapsed(),
            last,
        })
    }

    /// Node `id`'s applied state.
    pub async fn status(&mut self, id: u64) -> Result<NodeStatus, ClusterError> {
        let timeout = self.rpc_timeout;
        let connection = self.connections.get_mut(&id).ok_or(ClusterError::Io {
            what: "status of an unknown node",
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        })?;
        connection
            .status(timeout)
            .await
            .map_err(io_error("status rpc"))
    }

    /// Polls the nodes in `ids` until they all report the same applied log id and digest, at or
    /// past `min_index`; returns their statuses. Bounded by `deadline`.
    pub async fn wait_converged(
        &mut self,
        ids: &[u64],
        min_index: u64,
        deadline: Duration,
    ) -> Result<Vec<NodeStatus>, ClusterError> {
        let started = Instant::now();
        let mut last = Vec::new();
        while started.elapsed() < deadline {
            last.clear();
            for id in ids {
                match self.status(*id).await {
                    Ok(status) => last.push(status),
                    Err(error) => {
                        tracing::debug!(id, %error, "status failed while waiting to converge");
                    }
                }
            }
            let converged = last.len() == ids.len()
                && last.iter().all(|s| {
                    s.last_applied == last[0].last_applied
                        && s.digest == last[0].digest
                        && s.last_applied.is_some_and(|l| l.index >= min_index)
                });
            if converged {
                return Ok(last);
            }
            compio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(ClusterError::GaveUp {
            attempts: 0,
            elapsed: started.elapsed(),
            last: format!("nodes {ids:?} did not converge past index {min_index}: {last:?}"),
        })
    }
}

/// Latencies and throughput of a batch of client writes.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    pub writes: u64,
    pub elapsed: Duration,
    /// One sample per write, in microseconds, sorted ascending.
    pub latencies_us: Vec<u64>,
}

impl LoadReport {
    pub fn writes_per_sec(&self) -> f64 {
        self.writes as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The `p`-th percentile (0..=100) latency in microseconds (0 without samples).
    pub fn percentile_us(&self, p: f64) -> u64 {
        if self.latencies_us.is_empty() {
            return 0;
        }
        let rank = (p / 100.0 * (self.latencies_us.len() - 1) as f64).round() as usize;
        self.latencies_us[rank.min(self.latencies_us.len() - 1)]
    }
}

/// Writes `set key-<k> = value(k)` for every `k` in `keys` through the leader, with
/// `concurrency` clients in flight (each its own connections), on the current compio runtime.
pub async fn write_keys(
    members: &BTreeMap<u64, String>,
    first_target: u64,
    keys: std::ops::Range<u64>,
    concurrency: u64,
    value: fn(u64) -> String,
) -> Result<LoadReport, ClusterError> {
    let concurrency = concurrency.max(1);
    let started = Instant::now();
    let mut workers = Vec::new();
    for worker in 0..concurrency {
        let mut client = Client::new(members).with_target(first_target);
        let keys = keys.clone();
        workers.push(compio::runtime::spawn(async move {
            let mut latencies = Vec::new();
            let mut k = keys.start + worker;
            while k < keys.end {
                let t0 = Instant::now();
                client
                    .write(KvRequest::Set {
                        key: key_name(k),
                        value: value(k),
                    })
                    .await?;
                latencies.push(t0.elapsed().as_micros() as u64);
                k += concurrency;
            }
            Ok::<_, ClusterError>(latencies)
        }));
    }
    let mut report = LoadReport::default();
    for worker in workers {
        let latencies = worker.await.map_err(|_| ClusterError::Panicked)??;
        report.latencies_us.extend(latencies);
    }
    report.elapsed = started.elapsed();
    report.writes = report.latencies_us.len() as u64;
    report.latencies_us.sort_unstable();
    Ok(report)
}

/// The key [`write_keys`] writes for `k`.
pub fn key_name(k: u64) -> String {
    format!("key-{k:08}")
}
