//! An application with its own types on keel-raft: a replicated service registry.
//!
//! The application brings its own request enum, response, node type and state machine, declares
//! its openraft type configuration through keel-raft's re-export of openraft (it depends on
//! keel-raft alone), and uses only keel-raft's public API:
//!
//! 1. starts node 1 alone and initializes a one-node group;
//! 2. starts nodes 2 and 3 and adds them as voters (one node to three);
//! 3. registers and deregisters service instances through the leader (each answer is the
//!    service's instance count after the command);
//! 4. stops node 1 (the leader) and keeps registering through the new leader;
//! 5. stops everything and opens node 2's store offline to list the registry it recovered.
//!
//! ```sh
//! cargo run --release -p keel-raft --example registry
//! ```

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::process::ExitCode;
use std::time::Duration;

use keel_raft::cluster::{raft_config, Client, Medium, NodeConfig, NodeHandle};
use keel_raft::compio::runtime::Runtime;
use keel_raft::network::NodeAddr;
use keel_raft::openraft;
use keel_raft::openraft::alias::LogIdOf;
use keel_raft::{AppStateMachine, StoreConfig};
use serde::{Deserialize, Serialize};

/// A registry command: the application's own request type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RegistryCommand {
    /// Adds (or moves) `instance` of `service`, reachable at `endpoint`.
    Register {
        service: String,
        instance: u32,
        endpoint: String,
    },
    /// Removes `instance` of `service`.
    Deregister { service: String, instance: u32 },
}

impl fmt::Display for RegistryCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegistryCommand::Register {
                service, instance, ..
            } => write!(f, "register {service}/{instance}"),
            RegistryCommand::Deregister { service, instance } => {
                write!(f, "deregister {service}/{instance}")
            }
        }
    }
}

/// The answer to a command: how many instances the service has after it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryReply {
    pub instances: u32,
}

/// A registry node: its address and the zone it runs in.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryNode {
    pub addr: String,
    pub zone: String,
}

impl NodeAddr for RegistryNode {
    fn addr(&self) -> &str {
        &self.addr
    }
}

openraft::declare_raft_types!(
    /// The registry's openraft type configuration, on keel-raft's compio runtime.
    pub RegistryConfig:
        D = RegistryCommand,
        R = RegistryReply,
        NodeId = u32,
        Node = RegistryNode,
        AsyncRuntime = keel_raft::CompioRuntime,
);

/// The registry's state: service → instance → endpoint.
#[derive(Debug, Default)]
pub struct Registry {
    services: BTreeMap<String, BTreeMap<u32, String>>,
}

impl AppStateMachine<RegistryConfig> for Registry {
    fn apply(
        &mut self,
        _log_id: &LogIdOf<RegistryConfig>,
        command: Option<&RegistryCommand>,
    ) -> RegistryReply {
        let service = match command {
            None => return RegistryReply::default(),
            Some(RegistryCommand::Register {
                service,
                instance,
                endpoint,
            }) => {
                let instances = self.services.entry(service.clone()).or_default();
                instances.insert(*instance, endpoint.clone());
                service
            }
            Some(RegistryCommand::Deregister { service, instance }) => {
                if let Some(instances) = self.services.get_mut(service) {
                    instances.remove(instance);
                    if instances.is_empty() {
                        self.services.remove(service);
                    }
                }
                service
            }
        };
        RegistryReply {
            instances: self.services.get(service).map_or(0, |i| i.len() as u32),
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        serde_json::to_vec(&self.services).expect("strings and integers encode")
    }

    fn restore(&mut self, bytes: &[u8]) -> Result<(), keel_raft::machine::RestoreError> {
        self.services =
            serde_json::from_slice(bytes).map_err(|e| keel_raft::machine::RestoreError {
                reason: e.to_string(),
            })?;
        Ok(())
    }
}

fn main() -> ExitCode {
    common::init_tracing();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

type Nodes = BTreeMap<u32, RegistryNode>;

fn start(
    id: u32,
    nodes: &Nodes,
    base: &std::path::Path,
    initialize: bool,
) -> Result<NodeHandle<RegistryConfig>, Box<dyn std::error::Error>> {
    let listener = std::net::TcpListener::bind(nodes[&id].addr())?;
    let config = NodeConfig::<RegistryConfig> {
        id,
        dir: base.join(format!("node-{id}")),
        // The group starts as this node alone; the others join through `add_voter`.
        members: BTreeMap::from([(id, nodes[&id].clone())]),
        initialize,
        shards: 1,
        medium: Medium::Disk,
        raft: raft_config(500, 100)?,
        store: StoreConfig::for_snapshot_policy(500, 100),
    };
    Ok(NodeHandle::spawn::<Registry>(config, listener)?)
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let temp = tempfile::tempdir()?;
    // Reserve three loopback ports (std sets SO_REUSEADDR, so each node rebinds its own).
    let mut nodes = Nodes::new();
    for (id, zone) in [(1, "a"), (2, "b"), (3, "c")] {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .to_string();
        let zone = zone.to_string();
        nodes.insert(id, RegistryNode { addr, zone });
    }
    let mut handles = BTreeMap::new();
    handles.insert(1, start(1, &nodes, temp.path(), true)?);
    let runtime = Runtime::new()?;
    let mut client = Client::<RegistryConfig>::new(&nodes);
    let register = |service: &str, instance: u32| RegistryCommand::Register {
        service: service.to_string(),
        instance,
        endpoint: format!("10.0.0.{instance}:8080"),
    };
    let reply = runtime.block_on(client.write(register("billing", 1)))?;
    println!("one node: billing has {} instance(s)", reply.data.instances);

    for id in [2, 3] {
        handles.insert(id, start(id, &nodes, temp.path(), false)?);
        let change = runtime.block_on(client.add_voter(id, nodes[&id].clone()))?;
        let voters: BTreeSet<u32> = change
            .membership
            .map(|m| m.voter_ids().collect())
            .unwrap_or_default();
        println!("node {id} joined; voters now {voters:?}");
    }
    for instance in 2..=4 {
        let reply = runtime.block_on(client.write(register("billing", instance)))?;
        println!("billing has {} instance(s)", reply.data.instances);
    }
    let deregister = RegistryCommand::Deregister {
        service: "billing".into(),
        instance: 1,
    };
    let reply = runtime.block_on(client.write(deregister))?;
    println!(
        "after deregistering 1: {} instance(s)",
        reply.data.instances
    );

    if let Some(leader) = handles.remove(&1) {
        leader.shutdown()?;
    }
    println!("node 1 stopped");
    let reply = runtime.block_on(client.write(register("search", 7)))?;
    println!(
        "search has {} instance(s) (via the new leader)",
        reply.data.instances
    );
    runtime.block_on(client.wait_converged(&[2, 3], 1, Duration::from_secs(30)))?;
    for (_, handle) in handles {
        handle.shutdown()?;
    }

    print_store(&runtime, &temp.path().join("node-2"))
}

/// Opens a node's store offline with the application's own types and lists its registry.
fn print_store(runtime: &Runtime, dir: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    let services = runtime.block_on(async {
        let root = keel_raft::storage::FsDirectory::open_with(
            dir,
            keel_raft::storage::DirAccess::Existing,
        )
        .await?;
        let config = StoreConfig::for_snapshot_policy(500, 100);
        let (_log, sm, report) =
            keel_raft::open::<RegistryConfig, Registry, _>(root, config).await?;
        println!(
            "{}: snapshot {:?}, {} entries replayed",
            dir.display(),
            report.snapshot,
            report.replayed
        );
        Ok::<_, Box<dyn std::error::Error>>(sm.read(|r| r.services.clone()))
    })?;
    for (service, instances) in services {
        println!("  {service}: {instances:?}");
    }
    Ok(())
}
