//! An application's own types for the tests: a counter service (its own command enum, `i64`
//! response, own node type, openraft's *standard* leader id) and its state machine.

use std::collections::BTreeMap;
use std::fmt;

use keel_engine::RestoreError;
use keel_raft::openraft;
use keel_raft::openraft::alias::LogIdOf;
use keel_raft::AppStateMachine;
use serde::{Deserialize, Serialize};

/// A counter service's command: its own request enum, not key-value strings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CounterCommand {
    Add { counter: u32, by: i64 },
    Reset { counter: u32 },
}

impl fmt::Display for CounterCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

/// A node of the counter service: its own address type.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterNode {
    pub host: String,
    pub port: u16,
}

openraft::declare_raft_types!(
    /// The counter service's type configuration.
    pub CounterConfig:
        D = CounterCommand,
        R = i64,
        NodeId = u64,
        Node = CounterNode,
        LeaderId = openraft::impls::leader_id_std::LeaderId<Self::Term, Self::NodeId>,
        AsyncRuntime = keel_raft::CompioRuntime,
);

/// The counters by id.
#[derive(Debug, Default)]
pub struct Counters(pub BTreeMap<u32, i64>);

impl AppStateMachine<CounterConfig> for Counters {
    fn apply(&mut self, _log_id: &LogIdOf<CounterConfig>, command: Option<&CounterCommand>) -> i64 {
        match command {
            None => 0,
            Some(CounterCommand::Add { counter, by }) => {
                let value = self.0.entry(*counter).or_default();
                *value = value.wrapping_add(*by);
                *value
            }
            Some(CounterCommand::Reset { counter }) => self.0.remove(counter).unwrap_or(0),
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        serde_json::to_vec(&self.0).expect("a map of integers encodes")
    }

    fn restore(&mut self, bytes: &[u8]) -> Result<(), RestoreError> {
        self.0 = serde_json::from_slice(bytes).map_err(|e| RestoreError {
            reason: e.to_string(),
        })?;
        Ok(())
    }
}
