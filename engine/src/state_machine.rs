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
    /// The op rejected.
    pub op: u64,
    /// Why (the state machine's words).
    pub reason: String,
}

/// Snapshot bytes that a state machine could not restore from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot restore state: {reason}")]
pub struct RestoreError {
    /// Why (the state machine's words).
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

    /// A frozen copy of the state that a checkpoint serializes piece by piece, between awaits,
    /// while commits go on changing the live state. Its pieces, concatenated, must be exactly
    /// [`StateMachine::snapshot`]'s bytes at the moment of this call.
    ///
    /// The default serializes the whole state here, at once (the core is held for as long as
    /// `snapshot` takes); a state machine with a cheap copy (a persistent map, as
    /// [`crate::KvStateMachine`] has) returns a source that serializes lazily.
    fn snapshot_source(&self) -> Box<dyn SnapshotSource> {
        Box::new(WholeSnapshot {
            bytes: self.snapshot(),
            written: false,
        })
    }
}

/// A frozen state being serialized, one piece per call (see [`StateMachine::snapshot_source`]).
pub trait SnapshotSource {
    /// Appends the next piece of the snapshot's bytes to `out`: about `max_bytes`, more only
    /// when one item is larger. Returns false once every byte has been appended.
    fn write_piece(&mut self, max_bytes: usize, out: &mut Vec<u8>) -> bool;
}

/// The default source: bytes serialized up front, handed over in one piece.
struct WholeSnapshot {
    bytes: Vec<u8>,
    written: bool,
}

impl SnapshotSource for WholeSnapshot {
    fn write_piece(&mut self, _max_bytes: usize, out: &mut Vec<u8>) -> bool {
        if !self.written {
            out.append(&mut self.bytes);
            self.written = true;
        }
        false
    }
}
