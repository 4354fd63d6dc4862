//! live: which entries of a log are live — the one rule every reader of the log applies.
//!
//! Owns what data entries, truncate markers and snapshot-watermark markers mean for the set of
//! live ops, read in log order: the newest entry of an op replaces an older one, a truncate marker
//! drops every op above its own, a snapshot watermark drops every op at or below it (and no
//! entry at or below it becomes live again). The open's index, keel-raft's log load and the
//! engine's replay all keep their live set here. It must never do I/O and never look at anything
//! but the op of an entry and the order entries come in.

use std::collections::BTreeMap;

/// The live ops of a log read so far, each with the caller's value for its newest entry.
#[derive(Debug)]
pub struct LiveMap<V> {
    entries: BTreeMap<u64, V>,
    snapshot_op: u64,
}

impl<V> Default for LiveMap<V> {
    fn default() -> Self {
        Self {
            entries: BTreeMap::new(),
            snapshot_op: 0,
        }
    }
}

impl<V> LiveMap<V> {
    /// The snapshot watermark so far (`None`: none). Ops start at 1 (an append at or below the watermark is refused, and the watermark starts at
    /// 0), so op 0 is never a snapshot's op: `None` is the only way to say "none".
    pub fn snapshot_op(&self) -> Option<u64> {
        (self.snapshot_op > 0).then_some(self.snapshot_op)
    }

    /// A data entry for `op`: it replaces any older one. Ignored at or below the watermark;
    /// returns whether it is live.
    pub fn insert(&mut self, op: u64, value: V) -> bool {
        if op <= self.snapshot_op {
            return false;
        }
        self.entries.insert(op, value);
        true
    }

    /// A truncate marker: every op above `op` is dropped.
    pub fn truncate_after(&mut self, op: u64) {
        self.entries.split_off(&op.saturating_add(1));
    }

    /// A snapshot watermark (a marker, or a segment header's): raised to `op` if higher, and
    /// every op at or below it dropped.
    pub fn set_snapshot(&mut self, op: u64) {
        if op > self.snapshot_op {
            self.snapshot_op = op;
            self.entries = self.entries.split_off(&op.saturating_add(1));
        }
    }

    /// Takes `op`'s value out (a caller done with it, e.g. a replay that applied it).
    pub fn remove(&mut self, op: u64) -> Option<V> {
        self.entries.remove(&op)
    }

    /// The live ops, ascending.
    pub fn ops(&self) -> impl Iterator<Item = u64> + '_ {
        self.entries.keys().copied()
    }

    /// The live entries by op.
    pub fn into_entries(self) -> BTreeMap<u64, V> {
        self.entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_drop_what_they_name_and_rewrites_replace() {
        let mut live = LiveMap::default();
        for op in 1..=6 {
            assert!(live.insert(op, op * 10));
        }
        assert!(live.insert(3, 31), "a rewrite replaces");
        live.truncate_after(4);
        live.set_snapshot(2);
        assert!(!live.insert(2, 0), "at or below the watermark");
        live.set_snapshot(1);
        assert_eq!(
            live.snapshot_op(),
            Some(2),
            "the watermark never moves down"
        );
        assert_eq!(live.remove(4), Some(40));
        assert_eq!(
            live.into_entries().into_iter().collect::<Vec<_>>(),
            vec![(3, 31)]
        );
    }
}
