//! The [`StateMachine`] trait: what the engine applies committed ops to and snapshots.

/// A command an op carried could not be applied.
///
/// Applying must be deterministic: every replica sees the same bytes and must reach the same
/// state. So a malformed command is not a crash and not a stop: the engine counts it, logs it,
/// and treats the op as applied with no effect (every replica rejects it the same way). A state
/// machine must therefore reject a command *before* changing anything.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("op {op} rejected: {reason}")]
pub struct ApplyError {
    pub op: u64,
    pub reason: String,
}

/// Snapshot bytes that a state machine could not restore from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot restore state: {reason}")]
pub struct RestoreError {
    pub reason: String,
}

/// A deterministic state machine driven by the engine.
///
/// The engine calls [`StateMachine::apply`] for each committed op, in op order, exactly once per
/// incarnation (after a restart, ops above the snapshot are replayed into the restored state).
pub trait StateMachine {
    /// Applies op `op`'s command bytes. On `Err`, the state must be unchanged.
    fn apply(&mut self, op: u64, command: &[u8]) -> Result<(), ApplyError>;

    /// The whole state as bytes. Must be deterministic: equal states give equal bytes.
    fn snapshot(&self) -> Vec<u8>;

    /// Replaces the whole state with the one `bytes` encodes. On `Err`, the state must be
    /// unchanged (decode fully before swapping in).
    fn restore(&mut self, bytes: &[u8]) -> Result<(), RestoreError>;
}
