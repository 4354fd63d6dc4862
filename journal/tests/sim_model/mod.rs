//! The journal simulator's model: every version of every op it issued, what became of it
//! (pending, written, acknowledged), which operation acknowledged it, and which operations a
//! misdirected or lost write touched; and the check of a reopened journal against it.
//!
//! # The rule the check enforces
//! Recovery either refuses with `Corrupt` (allowed only in seeds that injected misdirected or lost
//! writes, or a bit flip) or comes back with every acknowledged op intact (after process crashes
//! alone, in seeds without such writes, every op written to the page cache too), except for the
//! journal's documented limit (crate docs, "Known limit"): nothing after the final acknowledged
//! group vouches for it, so a misdirected or lost write inside that group, with nothing durable
//! written after it, cannot be told from a torn write and is cut. An acknowledged op may therefore
//! be missing (or show an older version) only when
//! - the fault touched it: its group (the operation that acknowledged it) is one in which a
//!   misdirected or lost write fired, or one that issued the op's version did (MemFs fault counts
//!   before and after each operation), or the first operation to acknowledge anything after such
//!   a write (its fsync was the first to cover the faulted bytes, and its entries chain to them);
//!   or the op's entry, or its segment's header, changed later (the image diff of `sim_faults`: a
//!   misdirected write landed there, or a compaction rewrote the segment with a faulted write); or
//!   the device dropped the header of the op's segment (checked before each power cut); or a
//!   newer version of the op was touched (it may have let compaction drop this one); and
//! - nothing present after recovery was issued after that group was acknowledged (and no marker
//!   no fault touched was): such an entry's durable watermark covers the group, so the journal had
//!   to refuse instead.
//!
//! Markers follow the same rule: a truncation, snapshot watermark or commit marker of a touched
//! group with nothing after it may be undone. Silent loss of anything no injected fault touched
//! is always a violation.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};

use keel_journal::EntryKind;

use crate::sim_faults::{payload_crc, Damage, Excuses};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Issued, not resolved (in flight, dropped or failed): may or may not be on disk.
    Pending,
    /// Resolved without an fsync (`sync_on_append = false`): in the journal's buffer or the page
    /// cache; any crash may lose it.
    Written,
    /// Covered by an fsync the journal reported.
    Acked,
}

/// One version of an op, as the workload issued it.
#[derive(Debug, Clone)]
pub struct Version {
    pub bytes: Vec<u8>,
    pub fate: Fate,
    /// The operation that acknowledged it (meaningful once `Acked`).
    pub group: u64,
    /// The operation it was issued in: its entry's durable watermark covers every earlier group.
    pub issued: u64,
    /// Touched after it was written: its entry or segment header changed (a misdirected write,
    /// a faulted compaction rewrite), or the device dropped its segment's header.
    pub stray: bool,
}

/// Every version of one op since it was last removed (by an acknowledged truncation or snapshot),
/// in issue order, which is log order.
#[derive(Debug, Default, Clone)]
pub struct History {
    pub versions: Vec<Version>,
    /// The operation of a truncation that failed or was dropped and covers this op: every
    /// version issued before it may be gone (a version issued after it is not).
    pub maybe_removed: Option<u64>,
}

impl History {
    /// Version `i` was acknowledged: an uncertain truncation before it no longer matters.
    fn acked(&mut self, i: usize, group: u64) {
        let version = &mut self.versions[i];
        version.fate = Fate::Acked;
        version.group = group;
        if self.maybe_removed.is_some_and(|t| version.issued > t) {
            self.maybe_removed = None;
        }
    }

    fn last_acked(&self) -> Option<usize> {
        self.versions.iter().rposition(|v| v.fate == Fate::Acked)
    }

    /// The version a check requires: the last acknowledged one, or with `strict_written` the
    /// last written one when it is newer (after a process crash the page cache still has it).
    fn required(&self, strict_written: bool) -> Option<usize> {
        let acked = self.last_acked();
        let written = self.versions.iter().rposition(|v| v.fate == Fate::Written);
        match (acked, written) {
            (a, Some(w)) if strict_written && a.is_none_or(|a| w > a) => Some(w),
            (a, _) => a,
        }
    }

    /// Versions that may be what a reopen shows without any excuse: the required one and all
    /// issued after it (or every version, when none is acknowledged).
    fn allowed(&self) -> &[Version] {
        &self.versions[self.last_acked().unwrap_or(0)..]
    }

    fn has(&self, bytes: &[u8]) -> bool {
        self.versions.iter().any(|v| v.bytes == bytes)
    }
}

/// An acknowledged truncation, snapshot watermark or commit marker since the last check.
#[derive(Debug, Clone)]
pub struct MarkerEvent {
    pub kind: EntryKind,
    pub group: u64,
    /// The marker's op (truncate point, snapshot op, commit op).
    pub value: u64,
    /// The watermark before it (snapshot and commit markers).
    pub previous: u64,
    /// Every version it removed (of an op's history since its last removal): if the marker's
    /// group is cut, one of them may come back.
    pub removed: BTreeMap<u64, Vec<Version>>,
    /// Its entry changed after it was written (or could no longer be found).
    pub stray: bool,
    /// Snapshot watermarks issued before it whose calls never returned (dropped or failed): they
    /// may be durable, so if this marker's group is lost one of them may show instead of
    /// `previous`.
    pub superseded_pending: Vec<u64>,
}

#[derive(Debug, Default)]
pub struct Model {
    pub ops: BTreeMap<u64, History>,
    pub snapshot_op: u64,
    pub commit_op: u64,
    /// Snapshot watermarks whose call has not returned (or was dropped, or failed): maybe
    /// durable. With the operation each was issued in.
    pub pending_snapshots: BTreeMap<u64, u64>,
    pub markers: Vec<MarkerEvent>,
    /// Operation counter: each workload phase and each reopen is one.
    pub operation: u64,
    /// Operations during which a misdirected or lost write fired.
    pub faulted: BTreeSet<u64>,
    /// The first acknowledging operation after each of those: its fsync was the first to cover
    /// the faulted bytes, and its entries chain to them.
    pub covering: BTreeSet<u64>,
    /// A misdirected or lost write fired and no operation has acknowledged anything since.
    pub uncovered_fault: bool,
    /// The incarnation failed (an injected error, or poisoning): stop issuing.
    pub poisoned: bool,
    pub acks: u64,
}

/// What a check accepted beyond the strict rule.
#[derive(Debug, Default)]
pub struct Verdict {
    /// Acknowledged ops missing or older, excused by the documented limit.
    pub lost_under_limit: u64,
    /// Which ops, for traces.
    pub excused: Vec<u64>,
}

impl Model {
    pub fn begin_operation(&mut self) -> u64 {
        self.operation += 1;
        self.operation
    }

    /// A misdirected or lost write fired during operation `index`.
    pub fn fault_in(&mut self, index: u64) {
        self.faulted.insert(index);
        self.uncovered_fault = true;
    }

    /// This operation acknowledged something (an fsync covered every write before it).
    fn acknowledging(&mut self) {
        if std::mem::take(&mut self.uncovered_fault) {
            self.covering.insert(self.operation);
        }
    }

    /// Versions (and markers) behind a segment header a fault destroyed, found before a crash.
    pub fn behind_damaged_header(&mut self, damage: &Damage) {
        for (&op, history) in self.ops.iter_mut() {
            for version in &mut history.versions {
                if damage.data.contains(&(op, payload_crc(&version.bytes))) {
                    version.stray = true;
                }
            }
        }
        for marker in &mut self.markers {
            if damage.markers.contains(&(marker.kind as u8, marker.value)) {
                marker.stray = true;
            }
        }
    }

    pub fn issue(&mut self, op: u64, bytes: &[u8]) {
        let version = Version {
            bytes: bytes.to_vec(),
            fate: Fate::Pending,
            group: 0,
            issued: self.operation,
            stray: false,
        };
        self.ops.entry(op).or_default().versions.push(version);
    }

    /// An append returned: written (no fsync) or acknowledged.
    pub fn resolved(&mut self, op: u64, bytes: &[u8], acked: bool) {
        let operation = self.operation;
        let history = self.ops.get_mut(&op).expect("issued");
        let i = history
            .versions
            .iter()
            .rposition(|v| v.fate == Fate::Pending && v.bytes == bytes)
            .expect("the pending version");
        if acked {
            history.acked(i, operation);
            self.acks += 1;
            self.acknowledging();
        } else {
            history.versions[i].fate = Fate::Written;
        }
    }

    /// An fsync covered every write before it: each op's newest written version (when nothing
    /// newer is acknowledged) is acknowledged by this operation.
    pub fn flushed(&mut self) {
        self.acknowledging();
        let operation = self.operation;
        for history in self.ops.values_mut() {
            let written = history
                .versions
                .iter()
                .rposition(|v| v.fate == Fate::Written);
            if let Some(w) = written.filter(|&w| history.last_acked().is_none_or(|a| a < w)) {
                history.acked(w, operation);
                self.acks += 1;
            }
        }
    }

    fn marker(&mut self, kind: EntryKind, value: u64, previous: u64) -> &mut MarkerEvent {
        self.markers.push(MarkerEvent {
            kind,
            group: self.operation,
            value,
            previous,
            removed: BTreeMap::new(),
            stray: false,
            superseded_pending: Vec::new(),
        });
        self.markers.last_mut().expect("just pushed")
    }

    /// `truncate_after(t)` returned: durable, ops above `t` gone.
    pub fn truncated(&mut self, t: u64) {
        self.flushed();
        let removed = self.ops.split_off(&(t + 1));
        self.marker(EntryKind::Truncate, t, 0).removed = all_versions(removed);
    }

    /// `truncate_after(t)` failed or was dropped: ops above `t` may be gone.
    pub fn truncate_unknown(&mut self, t: u64) {
        let operation = self.operation;
        for history in self.ops.range_mut(t + 1..).map(|(_, h)| h) {
            history.maybe_removed = Some(operation);
        }
    }

    /// `set_snapshot_op(s)` is about to be called.
    pub fn snapshot_pending(&mut self, s: u64) {
        self.pending_snapshots.insert(s, self.operation);
    }

    /// `set_snapshot_op(s)` returned: durable, ops at or below `s` gone.
    pub fn snapshot_set(&mut self, s: u64) {
        self.flushed();
        let kept = self.ops.split_off(&(s + 1));
        let removed = std::mem::replace(&mut self.ops, kept);
        let previous = self.snapshot_op;
        let superseded: Vec<u64> = self
            .pending_snapshots
            .keys()
            .copied()
            .filter(|&p| p <= s && p > previous)
            .collect();
        let marker = self.marker(EntryKind::Snapshot, s, previous);
        marker.removed = all_versions(removed);
        marker.superseded_pending = superseded;
        self.snapshot_op = self.snapshot_op.max(s);
        self.pending_snapshots.retain(|&p, _| p > s);
    }

    /// `persist_commit()` returned with watermark `c`.
    pub fn commit_persisted(&mut self, c: u64) {
        self.flushed();
        let previous = self.commit_op;
        self.marker(EntryKind::Commit, c, previous);
        self.commit_op = self.commit_op.max(c);
    }

    /// What the image diff found after an operation with a misdirected or lost write: versions
    /// whose entry changed, or that could not be located at all (they sat after earlier damage).
    pub fn apply_damage(&mut self, damage: &Damage, before_operation: u64) {
        for (&op, history) in self.ops.iter_mut() {
            for version in &mut history.versions {
                if version.fate == Fate::Pending || version.issued >= before_operation {
                    continue;
                }
                let key = (op, payload_crc(&version.bytes));
                if damage.data.contains(&key) || !damage.located.contains(&key) {
                    version.stray = true;
                }
            }
        }
        for marker in &mut self.markers {
            let key = (marker.kind as u8, marker.value);
            if damage.markers.contains(&key) || !damage.located_markers.contains(&key) {
                marker.stray = true;
            }
        }
    }

    /// Groups a misdirected or lost write touched.
    fn touched_groups(&self) -> BTreeSet<u64> {
        let mut touched: BTreeSet<u64> = self.faulted.union(&self.covering).copied().collect();
        // Versions a marker removed count too: the marker's own group may have acknowledged
        // them just before (a truncation's fsync covers the writes before it).
        let removed = self
            .markers
            .iter()
            .flat_map(|m| m.removed.values().flatten());
        for version in self.ops.values().flat_map(|h| &h.versions).chain(removed) {
            if version.fate == Fate::Acked
                && (version.stray || self.faulted.contains(&version.issued))
            {
                touched.insert(version.group);
            }
        }
        touched.extend(self.markers.iter().filter(|m| m.stray).map(|m| m.group));
        touched
    }

    /// The earliest operation a present `(op, bytes)` could have been issued in.
    fn issued_of(&self, op: u64, bytes: &[u8]) -> Option<u64> {
        self.ops
            .get(&op)
            .into_iter()
            .flat_map(|h| &h.versions)
            .filter(|v| v.bytes == bytes)
            .map(|v| v.issued)
            .min()
    }

    pub fn has_acked(&self) -> bool {
        self.ops.values().any(|h| h.last_acked().is_some())
    }

    /// Acknowledged ops above `snapshot` with their required bytes (the point-in-time check).
    pub fn acked_ops(&self) -> impl Iterator<Item = (u64, &History)> + '_ {
        self.ops
            .iter()
            .filter(|(_, h)| h.last_acked().is_some())
            .map(|(op, h)| (*op, h))
    }

    /// Checks a reopened journal (its live ops and watermarks) against the model; the first
    /// violation is returned. `strict_written`: only process crashes since the last check, and no
    /// misdirected or lost writes in the seed, so written versions must be there too.
    pub fn check(
        &self,
        live: &BTreeMap<u64, Vec<u8>>,
        snapshot: u64,
        commit: u64,
        strict_written: bool,
    ) -> Result<Verdict, String> {
        let touched = self.touched_groups();
        // Present versions vouch for every group acknowledged before they were issued, and so
        // does every marker no fault touched (it is durable).
        let newest_present = live
            .iter()
            .filter_map(|(op, bytes)| self.issued_of(*op, bytes))
            .chain(
                self.markers
                    .iter()
                    .filter(|m| !touched.contains(&m.group))
                    .map(|m| m.group),
            )
            .max();
        let excuses = Excuses {
            touched,
            newest: newest_present,
        };
        let excusable = |g: u64| excuses.excusable(g);
        self.check_watermarks(snapshot, commit, &excusable)?;
        for (op, bytes) in live {
            if *op <= snapshot {
                return Err(format!("op {op} at or below snapshot {snapshot} is live"));
            }
            if !self.may_be_present(*op, bytes, &excusable) {
                let versions: Vec<(usize, u64)> = self
                    .ops
                    .get(op)
                    .map(|h| {
                        h.versions
                            .iter()
                            .map(|v| (v.bytes.len(), v.group))
                            .collect()
                    })
                    .unwrap_or_default();
                return Err(format!(
                    "op {op} has bytes nobody acknowledged or issued ({} bytes; versions as \
                     (bytes, group): {versions:?})",
                    bytes.len()
                ));
            }
        }
        self.check_required(live, snapshot, strict_written, &excuses)
    }

    /// Every required version above `snapshot` is present, or excused by the documented limit.
    fn check_required(
        &self,
        live: &BTreeMap<u64, Vec<u8>>,
        snapshot: u64,
        strict_written: bool,
        excuses: &Excuses,
    ) -> Result<Verdict, String> {
        let mut verdict = Verdict::default();
        for (op, history) in self.ops.range(snapshot + 1..) {
            let Some(required) = history.required(strict_written) else {
                continue;
            };
            let found = live.get(op);
            let tail = &history.versions[required..];
            if found.is_some_and(|f| tail.iter().any(|v| &v.bytes == f))
                || (found.is_none() && history.maybe_removed.is_some())
            {
                continue;
            }
            let version = &history.versions[required];
            // A newer version a fault touched may have been made durable (a flush the model
            // never saw return) and let compaction drop this one; then losing it loses the op.
            let superseded_by_touched = tail[1..].iter().any(|v| {
                (v.stray || self.faulted.contains(&v.issued))
                    && excuses.newest.is_none_or(|n| n <= v.issued)
            });
            let excused = version.fate == Fate::Acked
                && (excuses.excusable(version.group) || superseded_by_touched)
                && found.is_none_or(|f| history.has(f));
            if !excused {
                let fate = match version.fate {
                    Fate::Acked => "acknowledged",
                    _ => "written",
                };
                return Err(format!(
                    "{fate} op {op} ({} bytes, group {}) is {} (touched groups {:?}, newest \
                     present issued in {:?})",
                    version.bytes.len(),
                    version.group,
                    if found.is_some() {
                        "changed"
                    } else {
                        "missing"
                    },
                    excuses.touched,
                    excuses.newest
                ));
            }
            verdict.lost_under_limit += 1;
            verdict.excused.push(*op);
        }
        Ok(verdict)
    }

    fn check_watermarks(
        &self,
        snapshot: u64,
        commit: u64,
        excusable: &dyn Fn(u64) -> bool,
    ) -> Result<(), String> {
        // Newest first: a lost marker of a touched group lets the one before it show.
        let mut snapshots = vec![self.snapshot_op];
        let mut required_commit = self.commit_op;
        for marker in self.markers.iter().rev() {
            if !excusable(marker.group) {
                break;
            }
            match marker.kind {
                EntryKind::Snapshot => {
                    snapshots.push(marker.previous);
                    snapshots.extend(&marker.superseded_pending);
                }
                EntryKind::Commit => required_commit = required_commit.min(marker.previous),
                _ => {}
            }
        }
        let floor = snapshots.iter().copied().min().unwrap_or(0);
        let pending = self.pending_snapshots.contains_key(&snapshot) && snapshot >= floor;
        if !snapshots.contains(&snapshot) && !pending {
            return Err(format!(
                "snapshot_op {snapshot}, acknowledged {} (allowed {snapshots:?}, pending {:?})",
                self.snapshot_op, self.pending_snapshots
            ));
        }
        if commit < required_commit {
            return Err(format!(
                "commit_op {commit} below acknowledged {} (required {required_commit})",
                self.commit_op
            ));
        }
        Ok(())
    }

    fn may_be_present(&self, op: u64, bytes: &[u8], excusable: &dyn Fn(u64) -> bool) -> bool {
        if let Some(history) = self.ops.get(&op) {
            if history.allowed().iter().any(|v| v.bytes == bytes) {
                return true;
            }
            let last = history.last_acked().map(|a| &history.versions[a]);
            if last.is_some_and(|v| excusable(v.group)) && history.has(bytes) {
                return true;
            }
        }
        // A lost truncation or snapshot marker brings back what it removed.
        self.markers
            .iter()
            .rev()
            .take_while(|m| excusable(m.group))
            .any(|m| {
                m.removed
                    .get(&op)
                    .is_some_and(|vs| vs.iter().any(|v| v.bytes == bytes))
            })
    }

    /// After a passing check the recovered journal is the new truth: every op present is
    /// acknowledged (the open made it durable), keeping the group and issue operation of the
    /// version it matched. After a power cut everything present is durable, so what faults
    /// touched before no longer excuses anything.
    pub fn settle(
        &mut self,
        live: BTreeMap<u64, Vec<u8>>,
        snapshot: u64,
        commit: u64,
        power_cut: bool,
    ) {
        let reopen = self.begin_operation();
        self.acknowledging();
        let mut ops = BTreeMap::new();
        for (op, bytes) in live {
            let history = self.ops.get(&op);
            let matched_at =
                history.and_then(|h| h.versions.iter().rposition(|v| v.bytes == bytes));
            let matched = matched_at.map(|i| history.expect("matched").versions[i].clone());
            // After a process crash the page cache may show a version whose write the device
            // dropped (a lost write): a later power cut can bring back an older one, which the
            // present version's faulted group then excuses. A power cut settles everything.
            let mut versions: Vec<Version> = match (power_cut, matched_at, history) {
                (false, Some(i), Some(h)) => h.versions[..i].to_vec(),
                _ => Vec::new(),
            };
            let mut version = matched.unwrap_or(Version {
                bytes,
                fate: Fate::Pending,
                group: reopen,
                issued: 0,
                stray: false,
            });
            if version.fate != Fate::Acked {
                version.fate = Fate::Acked;
                version.group = reopen;
            }
            if power_cut {
                version.stray = false;
            }
            versions.push(version);
            ops.insert(
                op,
                History {
                    versions,
                    maybe_removed: None,
                },
            );
        }
        self.ops = ops;
        if power_cut {
            self.faulted.clear();
            self.covering.clear();
            self.markers.clear();
        } else {
            self.adopt_watermarks(snapshot, commit, reopen);
        }
        self.snapshot_op = snapshot;
        self.commit_op = commit;
        self.pending_snapshots.clear();
        self.poisoned = false;
    }

    /// After a process crash the page cache may hold a marker whose write the device dropped: a
    /// later power cut can still undo it. The markers since the last power cut stay, and a
    /// watermark the reopen showed above the acknowledged one becomes a marker of its own (of
    /// the operation that issued it; a commit watermark rides on any entry, so it counts as
    /// touched whenever a misdirected or lost write fired).
    fn adopt_watermarks(&mut self, snapshot: u64, commit: u64, reopen: u64) {
        if snapshot > self.snapshot_op {
            let group = self
                .pending_snapshots
                .get(&snapshot)
                .copied()
                .unwrap_or(reopen);
            let previous = self.snapshot_op;
            self.marker(EntryKind::Snapshot, snapshot, previous).group = group;
        }
        if commit > self.commit_op {
            let previous = self.commit_op;
            let touched = !self.faulted.is_empty();
            let marker = self.marker(EntryKind::Commit, commit, previous);
            marker.group = reopen;
            marker.stray = touched;
        }
        self.markers.sort_by_key(|m| m.group);
    }
}

/// The versions a removal dropped, for the check of a lost marker.
fn all_versions(removed: BTreeMap<u64, History>) -> BTreeMap<u64, Vec<Version>> {
    removed
        .into_iter()
        .map(|(op, h)| (op, h.versions))
        .collect()
}
