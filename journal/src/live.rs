//! live: which entries of a log are live — the one rule every reader of the log applies.
//!
//! Owns what data entries, truncate markers and snapshot-watermark markers mean for the set of
//! live ops, read in log order: the newest entry of an op replaces an older one, a truncate marker
//! drops every op above its own, a snapshot watermark drops every op at or below it (and no
//! entry at or below it becomes live again). The open's index, keel-raft's log load and the
//! engine's replay all keep their live set here. It must never do I/O and never look at anything
//! but the op of an entry and the order entries come in.

use std::collections::{BTreeMap, VecDeque};

/// The live ops of a log read so far, each with the caller's value for its newest entry.
///
/// Kept as one run sorted by op: a log's ops arrive ascending, so an insert is a push at the
/// back, a truncate a cut at the back and a watermark a cut at the front (a `BTreeMap` cost
/// 55 ns an entry on the open's path, BENCHMARKS.md). An op older than the newest costs a binary
/// search and, when new, a shift.
#[derive(Debug)]
pub struct LiveMap<V> {
    entries: VecDeque<(u64, V)>,
    snapshot_op: u64,
}

impl<V> Default for LiveMap<V> {
    fn default() -> Self {
        Self {
            entries: VecDeque::new(),
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

    /// Where `op` is, or would go, in the sorted run.
    fn position(&self, op: u64) -> Result<usize, usize> {
        position_in(&self.entries, op)
    }

    /// A data entry for `op`: it replaces any older one. Ignored at or below the watermark;
    /// returns whether it is live.
    pub fn insert(&mut self, op: u64, value: V) -> bool {
        if op <= self.snapshot_op {
            return false;
        }
        match self.entries.back() {
            Some(&(last, _)) if last >= op => match self.position(op) {
                Ok(at) => self.entries[at].1 = value,
                Err(at) => self.entries.insert(at, (op, value)),
            },
            _ => self.entries.push_back((op, value)),
        }
        true
    }

    /// A truncate marker: every op above `op` is dropped.
    pub fn truncate_after(&mut self, op: u64) {
        let keep = self.entries.partition_point(|&(o, _)| o <= op);
        self.entries.truncate(keep);
    }

    /// A snapshot watermark (a marker, or a segment header's): raised to `op` if higher, and
    /// every op at or below it dropped.
    pub fn set_snapshot(&mut self, op: u64) {
        if op > self.snapshot_op {
            self.snapshot_op = op;
            let drop = self.entries.partition_point(|&(o, _)| o <= op);
            self.entries.drain(..drop);
        }
    }

    /// Takes `op`'s value out (a caller done with it, e.g. a replay that applied it).
    pub fn remove(&mut self, op: u64) -> Option<V> {
        let at = self.position(op).ok()?;
        self.entries.remove(at).map(|(_, value)| value)
    }

    /// The live ops, ascending.
    pub fn ops(&self) -> impl Iterator<Item = u64> + '_ {
        self.entries.iter().map(|&(op, _)| op)
    }

    /// The live entries, ascending by op.
    pub fn into_sorted(self) -> VecDeque<(u64, V)> {
        self.entries
    }

    /// The live entries by op.
    pub fn into_entries(self) -> BTreeMap<u64, V> {
        // Sorted input: the map is built in one pass.
        self.entries.into_iter().collect()
    }
}

/// Where `op` is, or would go, in a run sorted by op ([`LiveMap::into_sorted`]'s).
pub(crate) fn position_in<V>(run: &VecDeque<(u64, V)>, op: u64) -> Result<usize, usize> {
    run.binary_search_by_key(&op, |&(o, _)| o)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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

    #[derive(Debug, Clone)]
    enum Step {
        Insert(u64),
        Truncate(u64),
        Snapshot(u64),
        Remove(u64),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (0u64..64).prop_map(Step::Insert),
            1 => (0u64..64).prop_map(Step::Truncate),
            1 => (0u64..64).prop_map(Step::Snapshot),
            1 => (0u64..64).prop_map(Step::Remove),
        ]
    }

    proptest! {
        /// The sorted run keeps exactly what the rule says, checked against a map that applies
        /// the rule literally, for any order of inserts, rewrites and markers.
        #[test]
        fn the_sorted_run_agrees_with_the_rule(steps in proptest::collection::vec(step(), 0..200)) {
            let mut live = LiveMap::default();
            let mut model: BTreeMap<u64, usize> = BTreeMap::new();
            let mut watermark = 0u64;
            for (i, step) in steps.iter().enumerate() {
                match *step {
                    Step::Insert(op) => {
                        let expect = op > watermark;
                        if expect {
                            model.insert(op, i);
                        }
                        prop_assert_eq!(live.insert(op, i), expect);
                    }
                    Step::Truncate(op) => {
                        model.retain(|&o, _| o <= op);
                        live.truncate_after(op);
                    }
                    Step::Snapshot(op) => {
                        watermark = watermark.max(op);
                        model.retain(|&o, _| o > watermark);
                        live.set_snapshot(op);
                    }
                    Step::Remove(op) => prop_assert_eq!(live.remove(op), model.remove(&op)),
                }
                prop_assert!(live.ops().eq(model.keys().copied()));
            }
            prop_assert_eq!(live.snapshot_op(), (watermark > 0).then_some(watermark));
            prop_assert_eq!(live.into_entries(), model);
        }
    }
}
