//! config: [`EngineConfig`], the tunables of one engine, with each field's default and limit.
//!
//! Owns the defaults and the limits and their check ([`EngineConfig::validate`]). It must never
//! touch a directory: the open validates a config before it reads anything.

use std::fmt;

use keel_journal::{JournalConfig, RecoveryMode};

use crate::error::EngineError;
#[cfg(any(test, feature = "testing"))]
use crate::step::StepHook;
#[cfg(doc)]
use crate::{StepAction, MAX_SHARDS};

/// Upper bound on `EngineConfig::max_snapshot_bytes`: a snapshot is built in memory.
pub const MAX_SNAPSHOT_BYTES_LIMIT: u64 = 4 << 30;

/// Tunables of one engine. Every quantity has a limit (checked by [`EngineConfig::validate`]).
#[derive(Clone)]
pub struct EngineConfig {
    /// The journal's configuration (slot count, segment size, group-commit bounds, …). Default
    /// [`JournalConfig::default`] with `max_batch_bytes` raised to twice `max_payload_bytes` (2 MiB),
    /// so one maximal entry fits a batch; limits as [`JournalConfig`] documents them.
    pub journal: JournalConfig,
    /// What recovery may repair (docs/durability.md). Default
    /// [`RecoveryMode::TolerateTornTail`].
    pub recovery_mode: RecoveryMode,
    /// Checkpoint automatically (at the end of `commit`) when the journal's remaining capacity
    /// falls below this many ops. 0 disables the automatic trigger. Default a quarter of
    /// `journal.slot_count` (256); at most `journal.slot_count`.
    pub checkpoint_margin_ops: u64,
    /// Largest snapshot accepted on write and on read. Default 1 GiB; 1 B to
    /// [`MAX_SNAPSHOT_BYTES_LIMIT`] (4 GiB).
    pub max_snapshot_bytes: u64,
    /// Test-only seam (the `testing` feature): called at every step boundary of the checkpoint
    /// coordinator; returning [`StepAction::Halt`] stops the checkpoint there, as a crash would.
    /// Default `None`.
    #[cfg(any(test, feature = "testing"))]
    pub step_hook: Option<StepHook>,
    /// Move the journal's watermark only to the *previous* snapshot at each checkpoint, so the
    /// journal always covers the gap between the two snapshots kept: a damaged newest snapshot
    /// can then always fall back to the older one. Costs journal capacity (the ring holds up to
    /// two checkpoint intervals) and checkpoints about twice as often under the automatic
    /// trigger. Default false: the watermark moves to the new snapshot.
    pub journal_covers_previous_snapshot: bool,
    /// This engine's index in a shard set (`ShardSet` sets it; default `None`; below
    /// [`MAX_SHARDS`]). Recorded in the directory's manifest at creation; an open with a
    /// different index is refused.
    pub shard_index: Option<u64>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        let mut journal = JournalConfig::default();
        // The journal's defaults pair a 1 MiB payload limit with a 1 MiB batch, which cannot
        // hold one maximal entry (header + payload): give the batch room for it.
        journal.max_batch_bytes = journal
            .max_batch_bytes
            .max(journal.max_payload_bytes.saturating_mul(2));
        Self {
            // A quarter of the ring: enough headroom that appends in flight while the checkpoint
            // runs do not hit `Full`.
            checkpoint_margin_ops: journal.slot_count / 4,
            journal,
            recovery_mode: RecoveryMode::TolerateTornTail,
            max_snapshot_bytes: 1 << 30,
            #[cfg(any(test, feature = "testing"))]
            step_hook: None,
            journal_covers_previous_snapshot: false,
            shard_index: None,
        }
    }
}

impl fmt::Debug for EngineConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut f = f.debug_struct("EngineConfig");
        f.field("journal", &self.journal)
            .field("recovery_mode", &self.recovery_mode)
            .field("checkpoint_margin_ops", &self.checkpoint_margin_ops)
            .field("max_snapshot_bytes", &self.max_snapshot_bytes);
        #[cfg(any(test, feature = "testing"))]
        f.field("step_hook", &self.step_hook.as_ref().map(|_| "set"));
        f.field(
            "journal_covers_previous_snapshot",
            &self.journal_covers_previous_snapshot,
        )
        .field("shard_index", &self.shard_index)
        .finish()
    }
}

impl EngineConfig {
    /// Checks every bound; `open` calls it.
    pub fn validate(&self) -> Result<(), EngineError> {
        self.journal.validate()?;
        if self.max_snapshot_bytes == 0 || self.max_snapshot_bytes > MAX_SNAPSHOT_BYTES_LIMIT {
            return Err(EngineError::Config(format!(
                "max_snapshot_bytes {} not in 1..={MAX_SNAPSHOT_BYTES_LIMIT}",
                self.max_snapshot_bytes
            )));
        }
        if self.checkpoint_margin_ops > self.journal.slot_count {
            return Err(EngineError::Config(format!(
                "checkpoint_margin_ops {} exceeds slot_count {}",
                self.checkpoint_margin_ops, self.journal.slot_count
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid() {
        EngineConfig::default().validate().unwrap();
    }

    #[test]
    fn out_of_bounds_config_is_refused() {
        let mut config = EngineConfig {
            max_snapshot_bytes: 0,
            ..EngineConfig::default()
        };
        assert!(matches!(config.validate(), Err(EngineError::Config(_))));
        config.max_snapshot_bytes = MAX_SNAPSHOT_BYTES_LIMIT + 1;
        assert!(config.validate().is_err());
        config.max_snapshot_bytes = 1 << 20;
        config.checkpoint_margin_ops = config.journal.slot_count + 1;
        assert!(config.validate().is_err());
        config.checkpoint_margin_ops = 0;
        config.journal.slot_count = 3; // not a power of two: the journal's own check
        assert!(matches!(config.validate(), Err(EngineError::Journal(_))));
    }
}
