//! A node: its shards (one thread, compio runtime, store and raft group each), the listener
//! that hands each connection to its shard, and the handle that stops, kills and restarts them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use keel_engine::KvStateMachine;
use keel_journal::JournalStats;
use keel_storage::DirAccess;
use keel_storage::{Directory, FsDirectory, MemFs};
use openraft::errors::{InitializeError, RaftError};
use openraft::{BasicNode, Config};

use super::{io_error, ClusterError, MAX_NODE_LIFETIME, MAX_SHARDS, POLL_INTERVAL};
use crate::machine::{AppStateMachine, EntryCommand};
use crate::network::{
    read_hello, serve_connection, GroupContext, GroupId, NetworkFactory, NodeAddr, HELLO_TIMEOUT,
};
use crate::store::{open, StoreConfig};
use crate::{KeelConfig, TypeConfig};
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
    /// [`super::Client::add_voter`]) lists itself.
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
                let root = FsDirectory::open_with(&dir, DirAccess::Create)
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
