//! The engine simulator's model: what the engine acknowledged (committed ops, durable commit
//! watermarks, prepares), which operation acknowledged each, which operations a misdirected or
//! lost write touched, and the check of a recovered engine against it.
//!
//! # The rule the check enforces
//! Recovery either refuses with an error that `is_corruption()` (allowed only for a damaged
//! snapshot with no fallback, or in seeds that injected misdirected or lost writes), or comes back
//! with every acknowledged op intact: the recovered applied op at least every durable commit
//! watermark the engine claimed, the state equal to the model's at that op, and every
//! acknowledged prepare above it with its bytes. The one exception is the journal's documented
//! limit (keel-journal crate docs, "Known limit"): a misdirected or lost write inside the final
//! acknowledged group, with nothing durable written after it, cannot be told from a torn write.
//! So a prepare (or a durable commit watermark) may be lost only when
//! - the fault touched it: the operation that acknowledged it (or issued the prepare) is one in
//!   which a misdirected or lost write fired (MemFs fault counts before and after each
//!   operation), or the first operation to make anything durable after such a write; or the
//!   prepare's journal entry, or its segment's header, changed later (the image diff of
//!   `sim_faults`: a misdirected write, or a compaction rewrite hit by a fault); or the device
//!   dropped its segment's header (checked before each power cut); and
//! - nothing recovered from the journal was issued after that operation (its entry's durable
//!   watermark would cover the operation, so the journal had to refuse instead).
//!
//! A lost truncation marker of such an operation may likewise bring back what it dropped. Silent
//! loss of anything no injected fault touched is always a violation.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};

use keel_engine::{KvStateMachine, StateMachine};
use keel_journal::EntryKind;

use crate::sim_faults::{payload_crc, Damage, Excuses};

/// An acknowledged prepare (kept on when it is committed).
#[derive(Debug, Clone)]
pub struct Prep {
    pub bytes: Vec<u8>,
    /// The operation that acknowledged it.
    pub group: u64,
    /// The operation it was issued in: its entry vouches for every earlier operation.
    pub issued: u64,
    /// Touched after it was written: its journal entry or segment header changed (a misdirected
    /// write, a faulted compaction rewrite), or the device dropped its segment's header.
    pub stray: bool,
}

/// What a recovery established, as the check reads it.
pub struct Recovered {
    /// The snapshot the state was restored from: ops up to it did not come from the journal.
    pub snapshot_op: u64,
    pub applied: u64,
    pub digest: u64,
    pub prepared: BTreeMap<u64, Vec<u8>>,
}

#[derive(Default)]
pub struct Model {
    /// Committed ops 1..=commit (index op - 1).
    pub committed: Vec<Prep>,
    /// Highest durable commit the engine claimed: recovery must reach at least this op.
    pub durable_commit: u64,
    /// The durable commit watermark at the last recovery, and each rise since with the
    /// operation that made it (a lost rise of a touched operation may be undone).
    pub base_durable_commit: u64,
    pub durable_rises: Vec<(u64, u64)>,
    /// Acknowledged prepares above `committed`.
    pub prepared: BTreeMap<u64, Prep>,
    /// Every payload attempted for an op above the commit since its last truncation (a failed
    /// or dropped prepare may or may not be on disk), with the operation it was issued in.
    pub attempted: BTreeMap<u64, Vec<(Vec<u8>, u64)>>,
    /// Every payload issued for an op above the recovered commit: what an excused loss may show.
    pub ever: BTreeMap<u64, Vec<Vec<u8>>>,
    /// Acknowledged truncations since the last recovery: their operation and what they dropped.
    pub truncations: Vec<Truncation>,
    /// Operation counter: each step of the workload and each recovery is one.
    pub operation: u64,
    /// Operations during which a misdirected or lost write fired.
    pub faulted: BTreeSet<u64>,
    /// The first acknowledging operation after each of those: its fsync was the first to cover
    /// the faulted bytes, and its entries chain to them.
    pub covering: BTreeSet<u64>,
    /// A misdirected or lost write fired and no operation has acknowledged anything since.
    pub uncovered_fault: bool,
    /// Operations whose commit or truncation marker a fault changed or cut off.
    pub stray_groups: BTreeSet<u64>,
}

/// An acknowledged truncation.
pub struct Truncation {
    pub group: u64,
    pub keep: u64,
    /// The prepares it dropped, which come back if its marker is lost.
    pub dropped: BTreeMap<u64, Prep>,
    /// Every payload attempted above `keep` before it (those may come back too).
    pub attempted: BTreeMap<u64, Vec<(Vec<u8>, u64)>>,
}

impl Truncation {
    /// Whether losing this marker may bring `op` back with `payload`.
    fn may_bring_back(&self, op: u64, payload: &[u8]) -> bool {
        self.dropped.get(&op).is_some_and(|p| p.bytes == payload)
            || self
                .attempted
                .get(&op)
                .is_some_and(|vs| vs.iter().any(|(b, _)| b == payload))
    }
}

impl Model {
    pub fn commit_op(&self) -> u64 {
        self.committed.len() as u64
    }

    pub fn state_through(&self, op: u64) -> KvStateMachine {
        let mut kv = KvStateMachine::new();
        for (i, p) in self.committed[..op as usize].iter().enumerate() {
            let _ = kv.apply(i as u64 + 1, &p.bytes);
        }
        kv
    }

    /// The highest op that `commit` may name now (contiguous acknowledged prepares).
    pub fn max_committable(&self) -> u64 {
        let mut op = self.commit_op();
        while self.prepared.contains_key(&(op + 1)) {
            op += 1;
        }
        op
    }

    pub fn next_op(&self) -> u64 {
        self.prepared
            .keys()
            .next_back()
            .copied()
            .unwrap_or(0)
            .max(self.commit_op())
            + 1
    }

    /// Ops below `next_op` with no acknowledged prepare (a dropped prepare): they must be
    /// prepared again before anything above them can commit.
    pub fn holes(&self) -> Vec<u64> {
        (self.commit_op() + 1..self.next_op())
            .filter(|op| !self.prepared.contains_key(op))
            .collect()
    }

    pub fn begin_operation(&mut self) -> u64 {
        self.operation += 1;
        self.operation
    }

    /// A misdirected or lost write fired during operation `index`.
    pub fn fault_in(&mut self, index: u64) {
        self.faulted.insert(index);
        self.uncovered_fault = true;
    }

    /// Every committed op (op `i + 1` at index `i`) and every prepared one, with its model.
    fn every_op_mut(&mut self) -> impl Iterator<Item = (u64, &mut Prep)> {
        let committed = self
            .committed
            .iter_mut()
            .enumerate()
            .map(|(i, p)| (i as u64 + 1, p));
        committed.chain(self.prepared.iter_mut().map(|(op, p)| (*op, p)))
    }

    /// This operation made something durable (an fsync covered every write before it).
    pub fn acknowledging(&mut self) {
        if std::mem::take(&mut self.uncovered_fault) {
            self.covering.insert(self.operation);
        }
    }

    /// Prepares (and commit or truncation markers) behind a segment header a fault destroyed,
    /// found before a crash.
    pub fn behind_damaged_header(&mut self, damage: &Damage) {
        for (op, prep) in self.every_op_mut() {
            if damage.data.contains(&(op, payload_crc(&prep.bytes))) {
                prep.stray = true;
            }
        }
        self.markers_touched(&damage.markers);
    }

    /// The operations whose commit or truncation marker is among `markers` (kind byte, op).
    fn markers_touched(&mut self, markers: &BTreeSet<(u8, u64)>) {
        for (group, value) in &self.durable_rises {
            if markers.contains(&(EntryKind::Commit as u8, *value)) {
                self.stray_groups.insert(*group);
            }
        }
        for truncation in &self.truncations {
            if markers.contains(&(EntryKind::Truncate as u8, truncation.keep)) {
                self.stray_groups.insert(truncation.group);
            }
        }
    }

    pub fn attempt(&mut self, op: u64, bytes: &[u8]) {
        let operation = self.operation;
        self.attempted
            .entry(op)
            .or_default()
            .push((bytes.to_vec(), operation));
        self.ever.entry(op).or_default().push(bytes.to_vec());
    }

    /// A prepare was refused with back-pressure: nothing was written.
    pub fn refused(&mut self, op: u64) {
        if let Some(versions) = self.attempted.get_mut(&op) {
            versions.pop();
        }
    }

    pub fn prepared_ok(&mut self, op: u64, bytes: Vec<u8>) {
        let prep = Prep {
            bytes,
            group: self.operation,
            issued: self.operation,
            stray: false,
        };
        self.prepared.insert(op, prep);
    }

    /// `commit(target)` applied every op up to `target`.
    pub fn committed_through(&mut self, target: u64) {
        for op in self.commit_op() + 1..=target {
            let prep = self.prepared.remove(&op).expect("committable");
            self.attempted.remove(&op);
            self.committed.push(prep);
        }
    }

    /// The engine's durable commit watermark after an operation.
    pub fn durable_is(&mut self, durable_commit: u64) {
        if durable_commit > self.durable_commit {
            self.durable_rises.push((self.operation, durable_commit));
            self.durable_commit = durable_commit;
        }
    }

    /// `truncate_after(keep)` returned: the prepares above `keep` are gone for good.
    pub fn truncated(&mut self, keep: u64) {
        let dropped = self.prepared.split_off(&(keep + 1));
        let attempted = self.attempted.split_off(&(keep + 1));
        self.truncations.push(Truncation {
            group: self.operation,
            keep,
            dropped,
            attempted,
        });
    }

    /// `truncate_after(keep)` failed or was dropped: unknown whether the marker is durable, so
    /// the prepares above `keep` may come back or not (they stay in `attempted`).
    pub fn truncate_unknown(&mut self, keep: u64) {
        self.prepared.split_off(&(keep + 1));
    }

    /// What the image diff found after an operation with a misdirected or lost write. Ops at or
    /// below `snapshot_op` are left out: the snapshot holds them, the journal no longer has to.
    pub fn apply_damage(&mut self, damage: &Damage, before_operation: u64, snapshot_op: u64) {
        for (op, prep) in self.every_op_mut() {
            if op <= snapshot_op || prep.issued >= before_operation {
                continue;
            }
            let key = (op, payload_crc(&prep.bytes));
            if damage.data.contains(&key) || !damage.located.contains(&key) {
                prep.stray = true;
            }
        }
        self.markers_touched(&damage.markers);
        for truncation in &self.truncations {
            let key = (EntryKind::Truncate as u8, truncation.keep);
            if truncation.group < before_operation && !damage.located_markers.contains(&key) {
                self.stray_groups.insert(truncation.group);
            }
        }
    }

    fn touched_groups(&self) -> BTreeSet<u64> {
        let mut touched: BTreeSet<u64> = self.faulted.union(&self.covering).copied().collect();
        touched.extend(&self.stray_groups);
        let dropped = self.truncations.iter().flat_map(|t| t.dropped.values());
        for prep in self
            .committed
            .iter()
            .chain(self.prepared.values())
            .chain(dropped)
        {
            if prep.stray || self.faulted.contains(&prep.issued) {
                touched.insert(prep.group);
            }
        }
        touched
    }

    /// The earliest operation a recovered prepare `(op, bytes)` could have been issued in.
    fn issued_of(&self, op: u64, bytes: &[u8]) -> Option<u64> {
        let acked = self.prepared.get(&op).filter(|p| p.bytes == bytes);
        let committed = op
            .checked_sub(1)
            .and_then(|i| self.committed.get(i as usize))
            .filter(|p| p.bytes == bytes);
        let attempted = self.attempted.get(&op).into_iter().flatten();
        acked
            .or(committed)
            .map(|p| p.issued)
            .into_iter()
            .chain(attempted.filter(|(b, _)| b == bytes).map(|(_, i)| *i))
            .min()
    }
}

/// What a check accepted beyond the strict rule.
#[derive(Debug, Default)]
pub struct Verdict {
    /// Acknowledged prepares (or commit watermarks) lost under the documented limit.
    pub lost_under_limit: u64,
}

impl Model {
    /// Checks a recovery against the model; the first violation is returned.
    pub fn check(&self, r: &Recovered) -> Result<Verdict, String> {
        let touched = self.touched_groups();
        // What recovered from the journal vouches for every operation before the one it was
        // issued in (ops restored from the snapshot came from no journal entry).
        let replayed = self
            .committed
            .iter()
            .take(r.applied as usize)
            .skip(r.snapshot_op as usize)
            .map(|p| p.issued);
        let recovered = r
            .prepared
            .iter()
            .filter_map(|(op, b)| self.issued_of(*op, b));
        let excuses = Excuses {
            newest: replayed.chain(recovered).max(),
            touched,
        };
        let mut verdict = Verdict::default();
        // Newest first: the newest rise a fault could not have undone must hold.
        let required = self
            .durable_rises
            .iter()
            .rev()
            .find(|(g, _)| !excuses.excusable(*g))
            .map_or(self.base_durable_commit, |(_, v)| *v);
        if r.applied < required {
            return Err(format!(
                "acknowledged commit lost: recovered {}, durable {} (required {required}, \
                 {excuses})",
                r.applied, self.durable_commit
            ));
        }
        verdict.lost_under_limit += self.durable_commit.saturating_sub(r.applied);
        if r.applied > self.commit_op() {
            return Err(format!(
                "applied {} beyond the issued commit {}",
                r.applied,
                self.commit_op()
            ));
        }
        if r.digest != self.state_through(r.applied).digest() {
            return Err(format!("state differs at op {}", r.applied));
        }
        verdict.lost_under_limit += self.check_prepared(r, &excuses)?;
        Ok(verdict)
    }

    /// Every acknowledged prepare above the recovered op comes back (or is excused), and every
    /// recovered prepare was written. Returns the excused losses.
    fn check_prepared(&self, r: &Recovered, excuses: &Excuses) -> Result<u64, String> {
        let mut excused = 0;
        let expected = self.expected_prepared(r.applied);
        for (op, prep) in &expected {
            match r.prepared.get(op) {
                Some(found) if *found == prep.bytes => {}
                found
                    if excuses.excusable(prep.group)
                        && found.is_none_or(|f| self.ever_had(*op, f)) =>
                {
                    excused += 1;
                }
                found => {
                    return Err(format!(
                        "acknowledged prepare {op} (group {}) {} ({excuses})",
                        prep.group,
                        if found.is_some() { "changed" } else { "lost" }
                    ))
                }
            }
        }
        for (op, payload) in &r.prepared {
            let known = expected.get(op).is_some_and(|p| p.bytes == *payload)
                || self
                    .attempted
                    .get(op)
                    .is_some_and(|vs| vs.iter().any(|(b, _)| b == payload))
                || (expected.get(op).is_some_and(|p| excuses.excusable(p.group))
                    && self.ever_had(*op, payload))
                || self
                    .truncations
                    .iter()
                    .any(|t| excuses.excusable(t.group) && t.may_bring_back(*op, payload));
            if !known {
                return Err(format!("recovered prepare {op} was never written"));
            }
        }
        Ok(excused)
    }

    /// Committed ops above the recovered one and acknowledged prepares: they must come back
    /// prepared.
    fn expected_prepared(&self, applied: u64) -> BTreeMap<u64, Prep> {
        let mut expected: BTreeMap<u64, Prep> = (applied + 1..=self.commit_op())
            .map(|op| (op, self.committed[op as usize - 1].clone()))
            .collect();
        expected.extend(self.prepared.iter().map(|(k, v)| (*k, v.clone())));
        expected
    }

    fn ever_had(&self, op: u64, bytes: &[u8]) -> bool {
        self.ever
            .get(&op)
            .is_some_and(|vs| vs.iter().any(|b| b == bytes))
    }

    /// The recovered op is the new durable commit watermark. After a process crash it may rest
    /// on a commit the device dropped (still in the page cache), so it is a rise of its own,
    /// touched when a misdirected or lost write fired since the last power cut.
    fn settle_durable_commit(&mut self, applied: u64, reopen: u64, power_cut: bool) {
        if power_cut {
            self.base_durable_commit = applied;
            self.durable_rises.clear();
        } else {
            self.durable_rises.retain(|(_, v)| *v <= applied);
            if applied > self.durable_commit {
                self.durable_rises.push((reopen, applied));
                if !self.faulted.is_empty() {
                    self.covering.insert(reopen);
                }
            }
        }
        self.durable_commit = applied;
    }

    /// Adopts what a passing recovery established. After a power cut everything recovered is
    /// durable, so what faults touched before no longer excuses anything.
    pub fn settle(&mut self, r: &Recovered, power_cut: bool) {
        let reopen = self.begin_operation();
        self.acknowledging();
        let expected = self.expected_prepared(r.applied);
        self.committed.truncate(r.applied as usize);
        self.settle_durable_commit(r.applied, reopen, power_cut);
        self.attempted.retain(|op, _| *op > r.applied);
        self.ever.retain(|op, _| *op > r.applied);
        let mut prepared = BTreeMap::new();
        for (op, payload) in &r.prepared {
            let prep = match expected.get(op).filter(|p| p.bytes == *payload) {
                Some(p) => p.clone(),
                None => Prep {
                    bytes: payload.clone(),
                    group: reopen,
                    issued: self.issued_of(*op, payload).unwrap_or(0),
                    stray: false,
                },
            };
            let versions = self.attempted.entry(*op).or_default();
            if !versions.iter().any(|(b, _)| b == payload) {
                versions.push((payload.clone(), prep.issued));
            }
            prepared.insert(*op, prep);
        }
        self.prepared = prepared;
        // After a process crash a truncation marker the device dropped is still in the page
        // cache: a later power cut can undo it, so it stays on record until then.
        if power_cut {
            self.truncations.clear();
            self.stray_groups.clear();
            self.faulted.clear();
            self.covering.clear();
            for prep in self.committed.iter_mut().chain(self.prepared.values_mut()) {
                prep.stray = false;
            }
        }
    }
}
