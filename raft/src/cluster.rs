//! Running keel-backed raft nodes: one raft group per core. A node runs `shards` shards, each on
//! its own OS thread with its own compio runtime, its own keel store directory and its own
//! openraft group (shard `i` of every node forms group `i`); one listener per node hands each
//! connection to the shard its [`Hello`](crate::network::Hello) names. Plus clients that find each
//! group's leader and route requests to groups by key.
//!
//! Used by the cluster tests and the examples. Every loop here is bounded in time (and the retry
//! loops in count as well). Nothing here is shared between shards at run time but the listener's
//! hand-off channels: a shard's raft, store and connections live on its own thread.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use keel_engine::KvStateMachine;
use keel_journal::JournalStats;
use keel_storage::{Directory, FsDirectory, MemFs};
use openraft::errors::{ClientWriteError, Fatal, InitializeError, RaftError};
use openraft::raft::ClientWriteResponse;
use openraft::{BasicNode, Config, ConfigError, SnapshotPolicy};

use crate::error::RaftStoreError;
use crate::kv::KvRequest;
use crate::machine::{AppStateMachine, EntryCommand};
use crate::network::{
    read_hello, serve_connection, ClientWriteReply, Connection, GroupContext, GroupId,
    NetworkFactory, NodeAddr, NodeStatus, RpcRequest, HELLO_TIMEOUT,
};
use crate::store::{open, StoreConfig};
use crate::{KeelConfig, TypeConfig};

/// How long a node runs at most if nobody stops it (a safety bound for tests and the examples).
pub const MAX_NODE_LIFETIME: Duration = Duration::from_secs(30 * 60);
/// Most shards (raft groups) one node runs.
pub const MAX_SHARDS: u32 = 64;
/// How often the listener and the shards look at their stop flags.
const POLL_INTERVAL: Duration = Duration::from_millis(5);

/// Errors of running a node or a client.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError<C: KeelConfig = TypeConfig> {
    /// A store failed to open or sync.
    #[error("store: {0}")]
    Store(#[from] RaftStoreError),
    /// An I/O step of running a node failed.
    #[error("{what}: {source}")]
    Io {
        /// The step.
        what: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// openraft refused the configuration.
    #[error("raft config: {0}")]
    Config(#[from] ConfigError),
    /// A node configuration bound was violated.
    #[error("invalid node configuration: {0}")]
    Node(String),
    /// A group's raft stopped.
    #[error("raft stopped: {0}")]
    Fatal(#[from] Fatal<C>),
    /// Initializing the cluster failed.
    #[error("initialize: {0}")]
    Initialize(#[from] RaftError<C, InitializeError<C>>),
    /// openraft refused a client write (not a `ForwardToLeader`).
    #[error("client write refused: {0}")]
    Write(RaftError<C, ClientWriteError<C>>),
    /// The node refused a client write before raft (too large for the journal).
    #[error("client write rejected before raft: {0}")]
    Rejected(String),
    /// A client write did not succeed within its bounds.
    #[error("client write gave up after {attempts} attempts in {elapsed:?}; last error: {last}")]
    GaveUp {
        /// Attempts made.
        attempts: u32,
        /// Time spent.
        elapsed: Duration,
        /// The last attempt's error.
        last: String,
    },
    /// A shard failed on its own thread (its error, as text: a shard's typed errors carry the
    /// application's types, which need not cross threads).
    #[error("shard {group} failed: {error}")]
    Shard {
        /// The shard.
        group: GroupId,
        /// Its error.
        error: String,
    },
    /// A node or shard thread panicked.
    #[error("node thread panicked")]
    Panicked,
}

fn io_error<C: KeelConfig>(what: &'static str) -> impl FnOnce(std::io::Error) -> ClusterError<C> {
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
pub struct NodeConfig<C: KeelConfig = TypeConfig> {
    /// This node's id in every group.
    pub id: C::NodeId,
    /// The node's directory (created if missing): the store itself with one shard, shard `i`'s
    /// store in `DIR/shard-i` with more ([`shard_dir`]).
    pub dir: PathBuf,
    /// The members every group is initialized with (when `initialize`), this node among them;
    /// a node's [`NodeAddr`] is its listener's address. A node that joins later (through
    /// [`Client::add_voter`]) lists itself.
    pub members: BTreeMap<C::NodeId, C::Node>,
    /// Initialize every group with `members` (exactly one node, on its first start).
    pub initialize: bool,
    /// Shards (raft groups) on this node, each on its own thread: `1..=MAX_SHARDS`. Every member
    /// must run the same number.
    pub shards: u32,
    /// openraft's configuration, for every group.
    pub raft: Config,
    /// The store's configuration, for every shard.
    pub store: StoreConfig,
    /// Where the stores live (default: on disk in `dir`).
    pub medium: Medium,
}

/// Where a node's stores live.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Medium {
    /// In keel's store directories under the node's `dir` (durable: fdatasync per batch).
    #[default]
    Disk,
    /// On keel's in-memory file system (`MemFs`), one per shard: the same code with no disk and
    /// no fsync, the upper bound a benchmark compares the disk against. A restarted shard starts
    /// empty.
    Memory,
}

/// The store directory of shard `shard` of a node whose directory is `dir`.
pub fn shard_dir(dir: &Path, shards: u32, shard: GroupId) -> PathBuf {
    if shards == 1 {
        dir.to_path_buf()
    } else {
        dir.join(format!("shard-{shard}"))
    }
}

/// What one shard reports when it stops.
#[derive(Debug, Clone)]
pub struct ShardExit {
    /// The shard (group).
    pub group: GroupId,
    /// Entries re-applied at its store's open (see [`crate::OpenReport::replayed`]).
    pub replayed_at_open: u64,
    /// Its journal's counters.
    pub journal: JournalStats,
}

/// What a node reports when it stops: its shards that stopped cleanly, by group.
#[derive(Debug, Clone)]
pub struct NodeExit {
    /// One per shard that was running at the stop.
    pub shards: Vec<ShardExit>,
}

type Handoff = flume::Sender<std::net::TcpStream>;
type ShardResult = Result<Option<ShardExit>, ClusterError<TypeConfig>>;
type ShardThread = JoinHandle<ShardResult>;

/// One shard's thread and its controls.
struct ShardSlot {
    /// Where the listener hands this shard its connections.
    handoff: Handoff,
    /// Ends the shard abruptly: no raft shutdown, no sync (a crash of this group only).
    kill: Arc<AtomicBool>,
    thread: Option<ShardThread>,
}

/// The shards of a running node, shared by its listener and its handle.
struct Shards {
    slots: Mutex<Vec<ShardSlot>>,
}

impl Shards {
    fn handoff(&self, group: GroupId) -> Option<Handoff> {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.get(group as usize).map(|s| s.handoff.clone())
    }
}

fn start_shard<C, M>(
    config: &NodeConfig<C>,
    group: GroupId,
    stop: &Arc<AtomicBool>,
    initialize: bool,
) -> Result<ShardSlot, ClusterError<C>>
where
    C: KeelConfig,
    C::Entry: Clone + EntryCommand<C::D>,
    C::NodeId: Send,
    C::Node: NodeAddr + Send,
    M: AppStateMachine<C>,
{
    let (handoff, connections) = flume::unbounded();
    let kill = Arc::new(AtomicBool::new(false));
    let shard = ShardRun {
        config: config.clone(),
        group,
        initialize,
        stop: stop.clone(),
        kill: kill.clone(),
    };
    let thread = std::thread::Builder::new()
        .name(format!("keel-raft-{}-shard-{group}", config.id))
        .spawn(move || {
            shard
                .run::<M>(connections)
                .map_err(|error| ClusterError::Shard {
                    group,
                    error: error.to_string(),
                })
        })
        .map_err(io_error("spawn shard thread"))?;
    Ok(ShardSlot {
        handoff,
        kill,
        thread: Some(thread),
    })
}

/// One shard's run: its thread's body.
struct ShardRun<C: KeelConfig> {
    config: NodeConfig<C>,
    group: GroupId,
    initialize: bool,
    stop: Arc<AtomicBool>,
    kill: Arc<AtomicBool>,
}

impl<C: KeelConfig> ShardRun<C>
where
    C::Entry: Clone + EntryCommand<C::D>,
    C::Node: NodeAddr,
{
    /// Runs the shard until the node stops (clean: raft shutdown and store sync; returns its
    /// exit) or the shard is killed (returns `None`: everything dropped mid-flight).
    fn run<M: AppStateMachine<C>>(
        self,
        connections: flume::Receiver<std::net::TcpStream>,
    ) -> Result<Option<ShardExit>, ClusterError<C>> {
        let runtime = compio::runtime::Runtime::new().map_err(io_error("create compio runtime"))?;
        runtime.block_on(self.serve::<M>(connections))
    }

    async fn serve<M: AppStateMachine<C>>(
        self,
        connections: flume::Receiver<std::net::TcpStream>,
    ) -> Result<Option<ShardExit>, ClusterError<C>> {
        match self.config.medium {
            Medium::Disk => {
                let dir = shard_dir(&self.config.dir, self.config.shards, self.group);
                let root = FsDirectory::open(&dir, true, false)
                    .await
                    .map_err(io_error("open store directory"))?;
                self.serve_on::<M, _>(root, connections).await
            }
            Medium::Memory => {
                let fs = MemFs::new(u64::from(self.group));
                self.serve_on::<M, _>(fs.root(), connections).await
            }
        }
    }

    async fn serve_on<M: AppStateMachine<C>, D: Directory + 'static>(
        self,
        root: D,
        connections: flume::Receiver<std::net::TcpStream>,
    ) -> Result<Option<ShardExit>, ClusterError<C>> {
        let (id, group) = (self.config.id.clone(), self.group);
        let store = self.config.store.clone();
        // The journal must hold the entry (command plus openraft's envelope); past that, an
        // entry it refuses would be a storage error, fatal for the node.
        let max_command_bytes = store
            .journal
            .max_payload_bytes
            .saturating_sub(4 << 10)
            .min(crate::kv::MAX_COMMAND_BYTES);
        let (log, sm, open_report) = open::<C, M, _>(root, store).await?;
        let raft = openraft::Raft::new(
            id.clone(),
            Arc::new(self.config.raft.clone()),
            NetworkFactory::<C>::new(group),
            log.clone(),
            sm.clone(),
        )
        .await?;
        let context = GroupContext {
            id: id.clone(),
            group,
            raft: raft.clone(),
            sm,
            log: log.clone(),
            max_command_bytes,
            snapshot_chunks_received: Default::default(),
        };
        compio::runtime::spawn(accept_handoffs(connections, context)).detach();
        if self.initialize {
            match raft.initialize(self.config.members.clone()).await {
                Ok(()) => {}
                // Restarted with its log: the group exists already.
                Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                Err(error) => return Err(error.into()),
            }
        }
        tracing::info!(%id, shard = group, "shard running");
        let started = Instant::now();
        while !self.stop.load(Ordering::Acquire) && started.elapsed() < MAX_NODE_LIFETIME {
            if self.kill.load(Ordering::Acquire) {
                tracing::warn!(%id, shard = group, "shard killed (no shutdown, no sync)");
                return Ok(None);
            }
            compio::time::sleep(POLL_INTERVAL).await;
        }
        if let Err(error) = raft.shutdown().await {
            tracing::warn!(%id, shard = group, ?error, "raft shutdown reported an error");
        }
        log.sync().await?;
        tracing::info!(%id, shard = group, "shard stopped");
        Ok(Some(ShardExit {
            group,
            replayed_at_open: open_report.replayed,
            journal: log.journal_stats(),
        }))
    }
}

/// Serves every connection the listener hands this shard, one task each.
async fn accept_handoffs<C, M, D>(
    connections: flume::Receiver<std::net::TcpStream>,
    context: GroupContext<C, M, D>,
) where
    C: KeelConfig,
    C::Entry: Clone + EntryCommand<C::D>,
    M: AppStateMachine<C>,
    D: Directory + 'static,
{
    // Ends when the listener drops the sender (node stopping) or the runtime drops this task.
    while let Ok(stream) = connections.recv_async().await {
        let stream = match compio::net::TcpStream::from_std(stream) {
            Ok(stream) => stream,
            Err(error) => {
                tracing::warn!(shard = context.group, %error, "cannot adopt a connection");
                continue;
            }
        };
        let context = context.clone();
        compio::runtime::spawn(async move {
            let group = context.group;
            if let Err(error) = serve_connection(stream, context).await {
                tracing::debug!(shard = group, %error, "connection closed");
            }
        })
        .detach();
    }
}

/// Accepts connections on `listener` until `stop`, handing each to the shard its hello names.
fn run_listener(
    listener: std::net::TcpListener,
    shards: &Shards,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let started = Instant::now();
    while !stop.load(Ordering::Acquire) && started.elapsed() < MAX_NODE_LIFETIME {
        let (stream, peer) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(POLL_INTERVAL);
                continue;
            }
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                std::thread::sleep(POLL_INTERVAL);
                continue;
            }
        };
        if let Err(error) = hand_off(stream, shards) {
            tracing::debug!(%peer, %error, "connection refused at hello");
        }
    }
    Ok(())
}

fn hand_off(mut stream: std::net::TcpStream, shards: &Shards) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(HELLO_TIMEOUT))?;
    let hello = read_hello(&mut stream)?;
    // The shard's runtime reads with io_uring; a socket timeout must not linger.
    stream.set_read_timeout(None)?;
    let handoff = shards.handoff(hello.group).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no shard {} on this node", hello.group),
        )
    })?;
    // A killed shard's receiver is gone: the connection is dropped and the client reconnects.
    handoff
        .send(stream)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::NotConnected, "shard not running"))
}

fn check_config<C: KeelConfig>(config: &NodeConfig<C>) -> Result<(), ClusterError<C>> {
    if config.shards == 0 || config.shards > MAX_SHARDS {
        return Err(ClusterError::Node(format!(
            "shards {} must be in 1..={MAX_SHARDS}",
            config.shards
        )));
    }
    if !config.members.contains_key(&config.id) {
        return Err(ClusterError::Node(format!(
            "node {} is not among the members",
            config.id
        )));
    }
    Ok(())
}

/// A node running on its own threads (a listener thread and one thread per shard).
pub struct NodeHandle<C: KeelConfig = TypeConfig> {
    /// The node's id.
    pub id: C::NodeId,
    config: NodeConfig<C>,
    stop: Arc<AtomicBool>,
    shards: Arc<Shards>,
    listener: Option<JoinHandle<std::io::Result<()>>>,
    start_shard: StartShard<C>,
}

type StartShard<C> =
    fn(&NodeConfig<C>, GroupId, &Arc<AtomicBool>, bool) -> Result<ShardSlot, ClusterError<C>>;

impl<C: KeelConfig> Drop for NodeHandle<C> {
    /// A handle dropped without [`NodeHandle::shutdown`] (a failing test) still stops its node,
    /// so no thread outlives the test by the full [`MAX_NODE_LIFETIME`].
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

impl NodeHandle<TypeConfig> {
    /// Starts a key-value node (keel's `KvStateMachine` in every shard).
    pub fn spawn_kv(
        config: NodeConfig<TypeConfig>,
        listener: std::net::TcpListener,
    ) -> Result<Self, ClusterError<TypeConfig>> {
        Self::spawn::<KvStateMachine>(config, listener)
    }
}

impl<C: KeelConfig> NodeHandle<C>
where
    C::Entry: Clone + EntryCommand<C::D>,
    C::NodeId: Send,
    C::Node: NodeAddr + Send,
{
    /// Starts `config`'s node with the application machine `M` in every shard, serving on
    /// `listener` (bound to this node's address in `members`).
    pub fn spawn<M: AppStateMachine<C>>(
        config: NodeConfig<C>,
        listener: std::net::TcpListener,
    ) -> Result<Self, ClusterError<C>> {
        check_config(&config)?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut slots = Vec::new();
        for group in 0..config.shards {
            slots.push(start_shard::<C, M>(
                &config,
                group,
                &stop,
                config.initialize,
            )?);
        }
        let shards = Arc::new(Shards {
            slots: Mutex::new(slots),
        });
        let listener = {
            let (shards, stop) = (shards.clone(), stop.clone());
            std::thread::Builder::new()
                .name(format!("keel-raft-{}-listener", config.id))
                .spawn(move || run_listener(listener, &shards, &stop))
                .map_err(io_error("spawn listener thread"))?
        };
        Ok(Self {
            id: config.id.clone(),
            config,
            stop,
            shards,
            listener: Some(listener),
            start_shard: start_shard::<C, M>,
        })
    }

    /// Kills shard `group` only: its thread ends without raft shutdown or store sync, dropping
    /// everything in flight (a crash of one group; the node's other shards keep serving).
    pub fn kill_shard(&self, group: GroupId) -> Result<(), ClusterError<C>> {
        let thread = {
            let mut slots = self.shards.slots.lock().unwrap_or_else(|e| e.into_inner());
            let slot = slots
                .get_mut(group as usize)
                .ok_or_else(|| ClusterError::Node(format!("no shard {group}")))?;
            slot.kill.store(true, Ordering::Release);
            slot.thread.take()
        };
        if let Some(thread) = thread {
            thread
                .join()
                .map_err(|_| ClusterError::Panicked)?
                .map_err(shard_error)?;
        }
        Ok(())
    }

    /// Restarts shard `group` on its directory (after [`NodeHandle::kill_shard`]). Refused on
    /// [`Medium::Memory`]: the killed shard's store (and its vote) is gone, and a member that
    /// forgot its vote could vote twice in one term.
    pub fn restart_shard(&self, group: GroupId) -> Result<(), ClusterError<C>> {
        if self.config.medium == Medium::Memory {
            return Err(ClusterError::Node(format!(
                "shard {group} ran on memory: its store is gone, it cannot rejoin as the same member"
            )));
        }
        let slot = (self.start_shard)(&self.config, group, &self.stop, false)?;
        let mut slots = self.shards.slots.lock().unwrap_or_else(|e| e.into_inner());
        let old = slots
            .get_mut(group as usize)
            .ok_or_else(|| ClusterError::Node(format!("no shard {group}")))?;
        if old.thread.is_some() {
            return Err(ClusterError::Node(format!("shard {group} is running")));
        }
        *old = slot;
        Ok(())
    }

    /// Stops the node (clean shutdown of every running shard) and waits for its threads.
    pub fn shutdown(mut self) -> Result<NodeExit, ClusterError<C>> {
        self.stop.store(true, Ordering::Release);
        if let Some(listener) = self.listener.take() {
            listener
                .join()
                .map_err(|_| ClusterError::Panicked)?
                .map_err(io_error("listener"))?;
        }
        let threads: Vec<ShardThread> = {
            let mut slots = self.shards.slots.lock().unwrap_or_else(|e| e.into_inner());
            slots.iter_mut().filter_map(|s| s.thread.take()).collect()
        };
        let mut exit = NodeExit { shards: Vec::new() };
        for thread in threads {
            let shard = thread
                .join()
                .map_err(|_| ClusterError::Panicked)?
                .map_err(shard_error)?;
            exit.shards.extend(shard);
        }
        Ok(exit)
    }
}

/// A shard thread's error (always [`ClusterError::Shard`]) in the node's error type.
fn shard_error<C: KeelConfig>(error: ClusterError<TypeConfig>) -> ClusterError<C> {
    match error {
        ClusterError::Shard { group, error } => ClusterError::Shard { group, error },
        other => ClusterError::Shard {
            group: 0,
            error: other.to_string(),
        },
    }
}

/// Runs a key-value node on the current thread (its listener; the shards on their own threads)
/// until `stop` is set, then shuts it down cleanly. For a child process that is killed.
pub fn run_node(
    config: NodeConfig<TypeConfig>,
    listener: std::net::TcpListener,
    stop: Arc<AtomicBool>,
) -> Result<NodeExit, ClusterError<TypeConfig>> {
    let node = NodeHandle::spawn_kv(config, listener)?;
    let started = Instant::now();
    while !stop.load(Ordering::Acquire) && started.elapsed() < MAX_NODE_LIFETIME {
        std::thread::sleep(Duration::from_millis(10));
    }
    node.shutdown()
}

/// Listeners by node id, and the members (id → `BasicNode` with its `127.0.0.1:port`).
pub type Bound = (
    BTreeMap<u64, std::net::TcpListener>,
    BTreeMap<u64, BasicNode>,
);

/// Binds one loopback listener per id on an ephemeral port; returns them and the members.
pub fn bind_listeners(ids: impl IntoIterator<Item = u64>) -> Result<Bound, std::io::Error> {
    let mut listeners = BTreeMap::new();
    let mut members = BTreeMap::new();
    for id in ids {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?.to_string();
        members.insert(id, BasicNode { addr });
        listeners.insert(id, listener);
    }
    Ok((listeners, members))
}

/// Rebinds a node's address after a restart (std sets `SO_REUSEADDR`, so `TIME_WAIT` does not
/// block it).
pub fn rebind(node: &impl NodeAddr) -> Result<std::net::TcpListener, std::io::Error> {
    std::net::TcpListener::bind(node.addr())
}

/// A client of one raft group that sends writes to its leader, following `ForwardToLeader` and
/// skipping nodes that do not answer. Runs on a compio runtime.
pub struct Client<C: KeelConfig = TypeConfig> {
    connections: BTreeMap<C::NodeId, Connection<C>>,
    /// The node believed to lead.
    target: C::NodeId,
    /// Bound on one attempt.
    pub rpc_timeout: Duration,
    /// Bound on one write, retries included.
    pub write_deadline: Duration,
    /// Bound on attempts per write.
    pub max_attempts: u32,
}

impl<C: KeelConfig> Client<C>
where
    C::Node: NodeAddr,
{
    /// A client of group 0 (the only group of a one-shard cluster).
    pub fn new(members: &BTreeMap<C::NodeId, C::Node>) -> Self {
        Self::for_group(members, 0)
    }

    /// A client of group `group`.
    pub fn for_group(members: &BTreeMap<C::NodeId, C::Node>, group: GroupId) -> Self {
        let connections: BTreeMap<C::NodeId, Connection<C>> = members
            .iter()
            .map(|(id, node)| {
                let connection = Connection::new(id.clone(), node.addr().to_string(), group);
                (id.clone(), connection)
            })
            .collect();
        let target = members.keys().next().cloned().expect("at least one member");
        Self {
            connections,
            target,
            rpc_timeout: Duration::from_secs(3),
            write_deadline: Duration::from_secs(20),
            max_attempts: 400,
        }
    }

    /// Sets the node tried first.
    pub fn with_target(mut self, id: C::NodeId) -> Self {
        self.target = id;
        self
    }

    /// The node the next write goes to first.
    pub fn target(&self) -> &C::NodeId {
        &self.target
    }

    fn next_target(&mut self) {
        let next = self
            .connections
            .range((
                std::ops::Bound::Excluded(self.target.clone()),
                std::ops::Bound::Unbounded,
            ))
            .next()
            .or_else(|| self.connections.iter().next())
            .map(|(id, _)| id.clone());
        if let Some(next) = next {
            self.target = next;
        }
    }

    /// Writes `request` through the leader; returns once it is applied there.
    ///
    /// A write whose attempt timed out may still have been applied, and is then applied again
    /// by the retry: commands should be idempotent (keel's key-value commands are).
    pub async fn write(&mut self, request: C::D) -> Result<ClientWriteResponse<C>, ClusterError<C>>
    where
        C::D: Clone,
    {
        self.call_leader(|| RpcRequest::ClientWrite(request.clone()))
            .await
    }

    /// Adds node `id` at `node` to this client's group as a voter (a learner first, until it
    /// caught up); returns once the membership change is committed.
    pub async fn add_voter(
        &mut self,
        id: C::NodeId,
        node: C::Node,
    ) -> Result<ClientWriteResponse<C>, ClusterError<C>> {
        self.call_leader(|| RpcRequest::AddVoter {
            id: id.clone(),
            node: node.clone(),
        })
        .await
    }

    /// Sends `request()` to the leader, following `ForwardToLeader` and skipping nodes that do
    /// not answer, within the client's bounds.
    async fn call_leader(
        &mut self,
        request: impl Fn() -> RpcRequest<C>,
    ) -> Result<ClientWriteResponse<C>, ClusterError<C>> {
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
            let target = self.target.clone();
            let Some(connection) = self.connections.get_mut(&target) else {
                self.next_target();
                continue;
            };
            match connection
                .leader_request(&request(), self.rpc_timeout)
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
                    match forward.leader_id.clone() {
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

    /// Node `id`'s applied state in this client's group.
    pub async fn status(&mut self, id: &C::NodeId) -> Result<NodeStatus<C>, ClusterError<C>> {
        let timeout = self.rpc_timeout;
        let connection = self.connections.get_mut(id).ok_or(ClusterError::Io {
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
        ids: &[C::NodeId],
        min_index: u64,
        deadline: Duration,
    ) -> Result<Vec<NodeStatus<C>>, ClusterError<C>> {
        let started = Instant::now();
        let mut last = Vec::new();
        while started.elapsed() < deadline {
            last.clear();
            for id in ids {
                match self.status(id).await {
                    Ok(status) => last.push(status),
                    Err(error) => {
                        tracing::debug!(%id, %error, "status failed while waiting to converge");
                    }
                }
            }
            let converged = last.len() == ids.len()
                && last.iter().all(|s| {
                    s.last_applied == last[0].last_applied
                        && s.digest == last[0].digest
                        && s.last_applied
                            .as_ref()
                            .is_some_and(|l| l.index >= min_index)
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

/// The group of `key` among `groups` groups: a stable hash (crc32), so every client and node
/// routes a key alike.
pub fn group_of_key(key: &[u8], groups: u32) -> GroupId {
    assert!(groups > 0, "at least one group");
    crc32fast::hash(key) % groups
}

/// A client of every group of a sharded cluster: each request goes to the group of its key.
pub struct ShardedClient<C: KeelConfig = TypeConfig> {
    groups: Vec<Client<C>>,
}

impl<C: KeelConfig> ShardedClient<C>
where
    C::Node: NodeAddr,
{
    /// A client of groups `0..groups` of `members`.
    pub fn new(members: &BTreeMap<C::NodeId, C::Node>, groups: u32) -> Self {
        Self {
            groups: (0..groups.max(1))
                .map(|g| Client::for_group(members, g))
                .collect(),
        }
    }

    /// Sets the node tried first in every group.
    pub fn with_target(mut self, id: C::NodeId) -> Self {
        for client in &mut self.groups {
            client.target = id.clone();
        }
        self
    }

    /// The number of groups.
    pub fn groups(&self) -> u32 {
        self.groups.len() as u32
    }

    /// The client of group `group`.
    pub fn group(&mut self, group: GroupId) -> &mut Client<C> {
        &mut self.groups[group as usize]
    }

    /// Writes `request` to the group of `key` ([`group_of_key`]).
    pub async fn write_to(
        &mut self,
        key: &[u8],
        request: C::D,
    ) -> Result<ClientWriteResponse<C>, ClusterError<C>>
    where
        C::D: Clone,
    {
        let group = group_of_key(key, self.groups());
        self.groups[group as usize].write(request).await
    }
}

impl ShardedClient<TypeConfig> {
    /// Writes a key-value request to the group of its key.
    pub async fn write_kv(
        &mut self,
        request: KvRequest,
    ) -> Result<ClientWriteResponse<TypeConfig>, ClusterError<TypeConfig>> {
        let key = request.key().as_bytes().to_vec();
        self.write_to(&key, request).await
    }
}

/// Latencies and throughput of a batch of client writes.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// Writes acknowledged.
    pub writes: u64,
    /// Wall time of the whole batch.
    pub elapsed: Duration,
    /// One sample per write, in microseconds, sorted ascending.
    pub latencies_us: Vec<u64>,
    /// The keys acknowledged, by `k` (for checks after a failure).
    pub acknowledged: Vec<u64>,
}

impl LoadReport {
    /// Acknowledged writes per second.
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

/// Writes `set key-<k> = value(k)` for every `k` in `keys` to group 0 (first to `first_target`),
/// with `concurrency` clients in flight (each its own connections), on the current runtime.
pub async fn write_keys(
    members: &BTreeMap<u64, BasicNode>,
    first_target: u64,
    keys: std::ops::Range<u64>,
    concurrency: u64,
    value: fn(u64) -> String,
) -> Result<LoadReport, ClusterError> {
    let load = Load {
        groups: 1,
        keys,
        concurrency,
        value,
        stop_on_error: true,
    };
    load.run(members, Some(first_target)).await
}

/// A key-value write load over a sharded cluster: each key goes to its group.
#[derive(Debug, Clone)]
pub struct Load {
    /// Groups of the cluster.
    pub groups: u32,
    /// The `k` written (`key-<k>`).
    pub keys: std::ops::Range<u64>,
    /// Writers in flight (each with its own connections).
    pub concurrency: u64,
    /// The value of `k`.
    pub value: fn(u64) -> String,
    /// Stop at the first failed write (otherwise record only the acknowledged ones).
    pub stop_on_error: bool,
}

impl Load {
    /// Runs the load on the current compio runtime.
    pub async fn run(
        &self,
        members: &BTreeMap<u64, BasicNode>,
        first_target: Option<u64>,
    ) -> Result<LoadReport, ClusterError> {
        let concurrency = self.concurrency.max(1);
        let started = Instant::now();
        let mut workers = Vec::new();
        for worker in 0..concurrency {
            let mut client = ShardedClient::new(members, self.groups);
            if let Some(target) = first_target {
                client = client.with_target(target);
            }
            let load = self.clone();
            workers.push(compio::runtime::spawn(async move {
                let mut latencies = Vec::new();
                let mut acknowledged = Vec::new();
                let mut k = load.keys.start + worker;
                while k < load.keys.end {
                    let t0 = Instant::now();
                    let request = KvRequest::Set {
                        key: key_name(k),
                        value: (load.value)(k),
                    };
                    match client.write_kv(request).await {
                        Ok(_) => {
                            latencies.push(t0.elapsed().as_micros() as u64);
                            acknowledged.push(k);
                        }
                        Err(error) if load.stop_on_error => return Err(error),
                        Err(error) => tracing::debug!(k, %error, "write not acknowledged"),
                    }
                    k += concurrency;
                }
                Ok::<_, ClusterError>((latencies, acknowledged))
            }));
        }
        let mut report = LoadReport::default();
        for worker in workers {
            let (latencies, acknowledged) = worker.await.map_err(|_| ClusterError::Panicked)??;
            report.latencies_us.extend(latencies);
            report.acknowledged.extend(acknowledged);
        }
        report.elapsed = started.elapsed();
        report.writes = report.latencies_us.len() as u64;
        report.latencies_us.sort_unstable();
        report.acknowledged.sort_unstable();
        Ok(report)
    }
}

/// The key [`write_keys`] writes for `k`.
pub fn key_name(k: u64) -> String {
    format!("key-{k:08}")
}
