//! slots: the ring index from op to where its newest live entry lives on disk.
//!
//! Owns the rule "op x lives in slot x % slot_count" and the back-pressure bound
//! `x - snapshot_op <= slot_count`. It must never evict a live op to make room (that is `Full`),
//! and never do I/O: callers hand it locations of entries already written.

/// Where one entry lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// The segment's number.
    pub segment: u64,
    /// Where the entry's header starts in that segment.
    pub offset_bytes: u64,
    /// Whole entry on disk (header + payload + padding).
    pub len_bytes: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    op: u64,
    location: Location,
}

/// A slot as the ring stores it: 24 bytes instead of the 40 of `Option<Slot>`, because the ring
/// is the journal's one per-op structure (16 Mi slots at most: 384 MiB rather than 640 MiB) and a
/// buffered append writes one slot into memory nothing has touched for a whole lap of the ring.
/// `[op, segment, offset_units << 32 | len_bytes]`; empty is all zeroes (every entry is at least
/// its 64-byte header, so `len_bytes` is never 0). The offset is kept in 8-byte units:
/// entries start 8-byte aligned, and a segment file is at most 16 GiB (`max_file_bytes`), so
/// `u32` units reach 32 GiB.
type PackedSlot = [u64; 3];

/// Entries start on this boundary, so offsets are stored divided by it.
const OFFSET_UNIT_BYTES: u64 = crate::format::ENTRY_ALIGN_BYTES as u64;

const EMPTY_SLOT: PackedSlot = [0; 3];

/// `count` empty slots, every page written now. Not `vec![EMPTY_SLOT; count]`: that allocates
/// zeroed memory whose pages the appends then fault in, each first as the shared zero page (the
/// insert reads the old slot) and then copied on write, with a TLB shootdown of the core running
/// the kernel's I/O worker: buffered 128-B appends ran 5.4-6.0 M/s that way against 6.9-7.7 M/s
/// with the ring written at open (five alternated runs of one loop, 2 M appends each).
fn written_empty_slots(count: usize) -> Vec<PackedSlot> {
    let mut slots = Vec::with_capacity(count);
    slots.resize(count, EMPTY_SLOT);
    slots
}

fn pack(slot: Option<Slot>) -> PackedSlot {
    let Some(Slot { op, location }) = slot else {
        return EMPTY_SLOT;
    };
    assert!(location.len_bytes > 0, "an entry has a header");
    assert!(
        location.offset_bytes % OFFSET_UNIT_BYTES == 0,
        "entries are 8-byte aligned"
    );
    let offset_units = u32::try_from(location.offset_bytes / OFFSET_UNIT_BYTES)
        .expect("a segment file is at most 16 GiB (max_file_bytes)");
    [
        op,
        location.segment,
        u64::from(offset_units) << 32 | u64::from(location.len_bytes),
    ]
}

fn unpack(packed: PackedSlot) -> Option<Slot> {
    let [op, segment, place] = packed;
    let len_bytes = place as u32;
    (len_bytes > 0).then_some(Slot {
        op,
        location: Location {
            segment,
            offset_bytes: (place >> 32) * OFFSET_UNIT_BYTES,
            len_bytes,
        },
    })
}

/// Why an op cannot take a slot ([`check_op`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SlotRefusal {
    /// The op is at or below the snapshot watermark: its state is in the snapshot already.
    BelowSnapshot {
        /// The watermark.
        snapshot_op: u64,
    },
    /// The op is more than `slot_count` past the watermark: its slot still holds a live op
    /// (checkpoint, so the watermark moves up, or use a larger ring).
    Full {
        /// The watermark.
        snapshot_op: u64,
        /// How far past it the op is.
        distance: u64,
    },
}

/// The ring. Invariant: every occupied slot holds an op in `(snapshot_op, snapshot_op + slot_count]`
/// — so the ops of occupied slots are distinct and `slot_of(op)` is unique among them.
#[derive(Debug, Clone)]
pub struct SlotRing {
    slots: Vec<PackedSlot>,
    slot_count: u64,
    snapshot_op: u64,
    last_op: Option<u64>,
    /// Occupied slots per segment, so "does anything live point into segment N" is a lookup,
    /// not a walk over the ring (the writer asks at every rotation).
    per_segment: SegmentCounts,
}

/// Occupied slots per segment, and the bytes their entries take. The segment the last insert
/// went to (the write cursor's, nearly always) is counted apart, so an append changes its count
/// without a map lookup (the map's insert was a tenth of a buffered append's cost). Invariant:
/// `hot_segment` is never a key of `cold`.
#[derive(Debug, Clone, Default)]
struct SegmentCounts {
    hot_segment: u64,
    hot: Occupied,
    cold: std::collections::BTreeMap<u64, Occupied>,
}

/// One segment's occupied slots and their entries' bytes on disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Occupied {
    slots: u64,
    entry_bytes: u64,
}

impl SegmentCounts {
    fn add(&mut self, segment: u64, entry_bytes: u32) {
        if segment != self.hot_segment {
            if self.hot.slots > 0 {
                let previous = self.cold.insert(self.hot_segment, self.hot);
                assert!(previous.is_none(), "the hot segment is never in the map");
            }
            self.hot_segment = segment;
            self.hot = self.cold.remove(&segment).unwrap_or_default();
        }
        self.hot.slots += 1;
        self.hot.entry_bytes += u64::from(entry_bytes);
    }

    fn remove(&mut self, segment: u64, entry_bytes: u32) {
        let counted = if segment == self.hot_segment {
            &mut self.hot
        } else {
            self.cold
                .get_mut(&segment)
                .expect("an occupied slot is counted")
        };
        assert!(counted.slots > 0, "an occupied slot is counted");
        assert!(
            counted.entry_bytes >= u64::from(entry_bytes),
            "an occupied slot's bytes are counted"
        );
        counted.slots -= 1;
        counted.entry_bytes -= u64::from(entry_bytes);
        if counted.slots == 0 && segment != self.hot_segment {
            self.cold.remove(&segment);
        }
    }

    fn get(&self, segment: u64) -> Occupied {
        if segment == self.hot_segment {
            self.hot
        } else {
            self.cold.get(&segment).copied().unwrap_or_default()
        }
    }
}

impl SlotRing {
    /// `slot_count` must be a power of two (checked by the config validation).
    pub fn new(slot_count: u64, snapshot_op: u64) -> Self {
        assert!(slot_count.is_power_of_two());
        Self {
            slots: written_empty_slots(slot_count as usize),
            slot_count,
            snapshot_op,
            last_op: None,
            per_segment: SegmentCounts::default(),
        }
    }

    /// Puts `slot` at `index`, keeping the per-segment counts.
    fn set(&mut self, index: usize, slot: Option<Slot>) {
        if let Some(old) = unpack(self.slots[index]) {
            self.per_segment
                .remove(old.location.segment, old.location.len_bytes);
        }
        if let Some(new) = slot {
            self.per_segment
                .add(new.location.segment, new.location.len_bytes);
        }
        self.slots[index] = pack(slot);
    }

    /// Whether any occupied slot points into `segment`.
    pub fn references(&self, segment: u64) -> bool {
        self.per_segment.get(segment).slots > 0
    }

    /// The bytes on disk of the entries occupied slots point to in `segment` (a lookup, not a
    /// walk over the ring: compaction asks it on the core while appends wait).
    pub fn live_bytes_in(&self, segment: u64) -> u64 {
        self.per_segment.get(segment).entry_bytes
    }

    fn index(&self, op: u64) -> usize {
        (op & (self.slot_count - 1)) as usize
    }

    pub fn snapshot_op(&self) -> u64 {
        self.snapshot_op
    }

    /// Highest live op (above the snapshot watermark), if any.
    pub fn last_op(&self) -> Option<u64> {
        self.last_op
    }

    /// Whether `op` may be appended now.
    pub fn check(&self, op: u64) -> Result<(), SlotRefusal> {
        check_op(op, self.snapshot_op, self.slot_count)
    }

    /// Records that the newest entry for `op` is at `location` (a rewrite supersedes).
    pub fn insert(&mut self, op: u64, location: Location) -> Result<(), SlotRefusal> {
        self.check(op)?;
        let index = self.index(op);
        assert!(
            unpack(self.slots[index]).is_none_or(|s| s.op == op || s.op <= self.snapshot_op),
            "slot {index} holds a live op other than {op}"
        );
        self.set(index, Some(Slot { op, location }));
        self.last_op = Some(self.last_op.map_or(op, |last| last.max(op)));
        Ok(())
    }

    /// Location of the newest live entry for `op`.
    pub fn get(&self, op: u64) -> Option<Location> {
        if op <= self.snapshot_op {
            return None;
        }
        match unpack(self.slots[self.index(op)]) {
            Some(slot) if slot.op == op => Some(slot.location),
            _ => None,
        }
    }

    /// Drops every op above `op`.
    pub fn truncate_after(&mut self, op: u64) {
        let Some(last) = self.last_op else { return };
        if last <= op {
            return;
        }
        // Live ops lie in (snapshot_op, last]; at most slot_count of them.
        let from = op.max(self.snapshot_op) + 1;
        for x in from..=last {
            let index = self.index(x);
            if unpack(self.slots[index]).is_some_and(|s| s.op == x) {
                self.set(index, None);
            }
        }
        self.last_op = self.highest_live_at_or_below(op);
    }

    /// Moves the snapshot watermark up to `op` (never down); frees slots at or below it.
    pub fn set_snapshot(&mut self, op: u64) {
        if op <= self.snapshot_op {
            return;
        }
        let old = self.snapshot_op;
        let clear_to = op.min(old.saturating_add(self.slot_count));
        for x in old + 1..=clear_to {
            let index = self.index(x);
            if unpack(self.slots[index]).is_some_and(|s| s.op == x) {
                self.set(index, None);
            }
        }
        self.snapshot_op = op;
        if self.last_op.is_some_and(|last| last <= op) {
            self.last_op = None;
        }
    }

    fn highest_live_at_or_below(&self, op: u64) -> Option<u64> {
        let mut x = op;
        while x > self.snapshot_op {
            if self.get(x).is_some() {
                return Some(x);
            }
            x -= 1;
            if op - x >= self.slot_count {
                break;
            }
        }
        None
    }

    /// How many more ops fit above the highest of the watermark and the last live op.
    pub fn remaining_capacity(&self) -> u64 {
        let top = self.last_op.unwrap_or(0).max(self.snapshot_op);
        self.snapshot_op
            .saturating_add(self.slot_count)
            .saturating_sub(top)
    }

    /// Live (op, location) pairs, ascending by op.
    pub fn live(&self) -> Vec<(u64, Location)> {
        let mut out: Vec<(u64, Location)> = self
            .slots
            .iter()
            .filter_map(|s| unpack(*s))
            .filter(|s| s.op > self.snapshot_op)
            .map(|s| (s.op, s.location))
            .collect();
        out.sort_unstable_by_key(|(op, _)| *op);
        out
    }

    /// Points `op` at `to` only if it still points at `from` (compaction moved that entry; a newer
    /// rewrite that landed meanwhile must win).
    pub fn relocate(&mut self, op: u64, from: Location, to: Location) -> bool {
        let index = self.index(op);
        match unpack(self.slots[index]) {
            Some(slot) if slot.op == op && slot.location == from => {
                self.set(index, Some(Slot { op, location: to }));
                true
            }
            _ => false,
        }
    }
}

/// The journal's append rule: op `op` may take its slot (`op % slot_count`) when it lies in
/// `(snapshot_op, snapshot_op + slot_count]`. Shared by the ring, the writer's early check and
/// every layer that must refuse an op before the journal would (keel-raft's log store), so there
/// is one copy of the rule.
pub fn check_op(op: u64, snapshot_op: u64, slot_count: u64) -> Result<(), SlotRefusal> {
    if op <= snapshot_op {
        return Err(SlotRefusal::BelowSnapshot { snapshot_op });
    }
    let distance = op - snapshot_op;
    if distance > slot_count {
        return Err(SlotRefusal::Full {
            snapshot_op,
            distance,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[derive(Debug, Clone)]
    enum Action {
        Append(u64),
        Truncate(u64),
        Snapshot(u64),
    }

    proptest! {
        /// The hot-segment counts agree with a plain map after any adds and removes of counted
        /// segments.
        #[test]
        fn segment_counts_match_a_map(steps in proptest::collection::vec((0u64..6, any::<bool>(), 1u32..100), 0..300)) {
            let mut counts = SegmentCounts::default();
            // Per segment, the sizes of its counted entries (a remove takes one of them back).
            let mut model: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
            for (segment, add, bytes) in steps {
                if add {
                    counts.add(segment, bytes);
                    model.entry(segment).or_default().push(bytes);
                } else if let Some(bytes) = model.get_mut(&segment).and_then(|sizes| sizes.pop()) {
                    counts.remove(segment, bytes);
                }
                for s in 0..6 {
                    let sizes = model.get(&s).map(Vec::as_slice).unwrap_or_default();
                    let expected = Occupied {
                        slots: sizes.len() as u64,
                        entry_bytes: sizes.iter().map(|&b| u64::from(b)).sum(),
                    };
                    prop_assert_eq!(counts.get(s), expected);
                }
            }
        }
    }

    fn action() -> impl Strategy<Value = Action> {
        prop_oneof![
            6 => (0u64..80).prop_map(Action::Append),
            1 => (0u64..80).prop_map(Action::Truncate),
            1 => (0u64..80).prop_map(Action::Snapshot),
        ]
    }

    /// Three appends per segment, of varied sizes.
    fn loc(n: u64) -> Location {
        Location {
            segment: n / 3,
            offset_bytes: n * 8,
            len_bytes: 32 + (n % 5) as u32 * 16,
        }
    }

    proptest! {
        /// Packing keeps every location a segment file can hold: offsets up to 16 GiB (8-byte
        /// aligned), any entry length, any op and segment number.
        #[test]
        fn packed_slots_round_trip(
            op in any::<u64>(),
            segment in any::<u64>(),
            offset_units in 0u64..(16 << 30) / OFFSET_UNIT_BYTES,
            len_bytes in 1u32..,
        ) {
            let slot = Slot {
                op,
                location: Location { segment, offset_bytes: offset_units * OFFSET_UNIT_BYTES, len_bytes },
            };
            prop_assert_eq!(unpack(pack(Some(slot))), Some(slot));
            prop_assert_eq!(unpack(pack(None)), None);
        }
    }

    proptest! {
        /// The ring against a BTreeMap model under out-of-order appends, rewrites, truncations
        /// and snapshot moves (slot_count 16 so wrap-around and Full happen often).
        #[test]
        fn ring_matches_model(actions in proptest::collection::vec(action(), 1..200)) {
            let slot_count = 16;
            let mut ring = SlotRing::new(slot_count, 0);
            let mut model: BTreeMap<u64, Location> = BTreeMap::new();
            let mut snapshot = 0u64;
            for (i, a) in actions.iter().enumerate() {
                match *a {
                    Action::Append(op) => {
                        let expect = if op <= snapshot {
                            Err(SlotRefusal::BelowSnapshot { snapshot_op: snapshot })
                        } else if op - snapshot > slot_count {
                            Err(SlotRefusal::Full { snapshot_op: snapshot, distance: op - snapshot })
                        } else {
                            Ok(())
                        };
                        let got = ring.insert(op, loc(i as u64));
                        prop_assert_eq!(got, expect);
                        if got.is_ok() { model.insert(op, loc(i as u64)); }
                    }
                    Action::Truncate(op) => {
                        ring.truncate_after(op);
                        model.retain(|&k, _| k <= op);
                    }
                    Action::Snapshot(op) => {
                        ring.set_snapshot(op);
                        snapshot = snapshot.max(op);
                        model.retain(|&k, _| k > snapshot);
                    }
                }
                for op in 0..100 {
                    prop_assert_eq!(ring.get(op), model.get(&op).copied(), "op {}", op);
                }
                prop_assert_eq!(ring.last_op(), model.keys().next_back().copied());
                let live: Vec<(u64, Location)> = model.iter().map(|(k, v)| (*k, *v)).collect();
                prop_assert_eq!(ring.live(), live);
                for segment in 0..actions.len() as u64 {
                    let referenced = model.values().any(|l| l.segment == segment);
                    prop_assert_eq!(ring.references(segment), referenced, "segment {}", segment);
                    let bytes: u64 = model
                        .values()
                        .filter(|l| l.segment == segment)
                        .map(|l| u64::from(l.len_bytes))
                        .sum();
                    prop_assert_eq!(ring.live_bytes_in(segment), bytes, "segment {}", segment);
                }
                let top = model.keys().next_back().copied().unwrap_or(0).max(snapshot);
                prop_assert_eq!(ring.remaining_capacity(), snapshot + slot_count - top);
            }
        }
    }

    #[test]
    fn full_at_exact_bound() {
        let mut ring = SlotRing::new(4, 10);
        assert!(ring.insert(14, loc(1)).is_ok());
        assert_eq!(
            ring.insert(15, loc(1)),
            Err(SlotRefusal::Full {
                snapshot_op: 10,
                distance: 5
            })
        );
        assert_eq!(
            ring.insert(10, loc(1)),
            Err(SlotRefusal::BelowSnapshot { snapshot_op: 10 })
        );
    }
}
