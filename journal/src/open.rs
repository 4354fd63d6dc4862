//! open: deciding what opening a journal will do, then doing it.
//!
//! Owns the two phases of an open. [`MetadataJournal::plan`] scans and classifies without touching
//! anything (a refusal is returned from here, so a refused open changes nothing), and
//! [`MetadataJournal::open_planned`] carries the plan out: directories made durable, the cut the
//! table ordered, leftover compaction temps quarantined, the index built. It must never write in the
//! planning phase, and never remove a byte in the second phase that the plan did not name.

use std::collections::BTreeMap;
use std::rc::Rc;

use keel_storage::{Directory, OpenMode, Storage};

use crate::format::EntryKind;
use crate::live::LiveMap;
use crate::outcome::{Case, PlannedCut};
use crate::recovery::{action, op_ranges, Action};
use crate::repair;
use crate::scan::{self, LogScan};
use crate::slots::{Location, SlotRing};
use crate::stream::{scan_stream, ScanEvent};
use crate::writer::WriterState;
use crate::{
    max_file_bytes, problem, refuse, summarize, JournalConfig, JournalError, JournalStats,
    MetadataJournal, RecoveryMode, ScanReport, SegmentHandle, State,
};

/// What opening the journal will do, decided by a read-only scan.
pub struct OpenPlan<D: Directory> {
    config: JournalConfig,
    dir: Option<D>,
    scan: LogScan,
    cut: Option<PlannedCut>,
    report: ScanReport,
    index: Index,
}

/// The index a scan replays to: what the journal will hold once opened.
#[derive(Debug, Clone, Default)]
struct Index {
    snapshot_op: u64,
    commit_op: u64,
    /// Ascending by op.
    live: std::collections::VecDeque<(u64, Location)>,
}

impl<D: Directory> OpenPlan<D> {
    /// The report as it will read once the plan is carried out (repairs are filled in then).
    pub fn report(&self) -> &ScanReport {
        &self.report
    }

    /// The cut the plan will make, if any.
    pub fn cut(&self) -> Option<PlannedCut> {
        self.cut
    }

    /// The journal's snapshot watermark after the open (`None`: no checkpoint yet). Ops start at 1 (an append at or below the watermark is refused, and the watermark starts at
    /// 0), so op 0 is never a snapshot's op: `None` is the only way to say "none".
    pub fn snapshot_op(&self) -> Option<u64> {
        (self.index.snapshot_op > 0).then_some(self.index.snapshot_op)
    }

    /// The highest commit watermark the kept entries carry (0: none).
    pub fn commit_op(&self) -> u64 {
        self.index.commit_op
    }

    /// The ops the journal will hold above its snapshot watermark, ascending.
    pub fn live_ops(&self) -> impl Iterator<Item = u64> + '_ {
        self.index.live.iter().map(|&(op, _)| op)
    }

    /// True when the journal will hold a live entry for `op` once opened.
    pub fn holds(&self, op: u64) -> bool {
        crate::live::position_in(&self.index.live, op).is_ok()
    }

    /// Leftover compaction temp files the open will quarantine.
    pub fn temp_files(&self) -> &[String] {
        &self.scan.temps
    }
}

/// Replays the kept segments into the index the slot ring is built from. An op beyond the ring
/// (the log was written with a larger `slot_count`) is left out with a warning rather than
/// evicting another; the plan's live ops say so, so callers see the gap before anything opens.
fn replay_index(scan: &LogScan, slot_count: u64) -> Index {
    let mut live = LiveMap::default();
    let mut commit_op = 0u64;
    for seg in &scan.segments {
        live.set_snapshot(seg.header.snapshot_op);
        commit_op = commit_op.max(seg.header.commit_op);
        for e in &seg.entries {
            commit_op = commit_op.max(e.commit_op);
            match e.kind {
                EntryKind::Data => {
                    let location = Location {
                        segment: seg.number,
                        offset_bytes: e.offset_bytes,
                        len_bytes: e.len_bytes,
                    };
                    live.insert(e.op, location);
                }
                EntryKind::Truncate => live.truncate_after(e.op),
                EntryKind::Snapshot => live.set_snapshot(e.op),
                EntryKind::Commit => commit_op = commit_op.max(e.op),
            }
        }
    }
    let mut index = Index {
        snapshot_op: live.snapshot_op().unwrap_or(0),
        commit_op,
        live: live.into_sorted(),
    };
    let snapshot = index.snapshot_op;
    index.live.retain(|&(op, _)| {
        let fits = crate::slots::check_op(op, snapshot, slot_count).is_ok();
        if !fits {
            tracing::warn!(
                op,
                snapshot_op = snapshot,
                slot_count,
                "journal: op beyond the slot ring on open (slot_count shrank?), not indexed"
            );
        }
        fits
    });
    index
}

/// Op ranges as an operator reads them: `1-3, 5`.
fn ranges_text(ranges: &[std::ops::RangeInclusive<u64>]) -> String {
    let text: Vec<String> = ranges
        .iter()
        .map(|r| format!("{}-{}", r.start(), r.end()))
        .collect();
    text.join(", ")
}

impl<D: Directory> MetadataJournal<D> {
    /// Opens (creating if absent) the journal under `root`, scanning every segment and applying
    /// `mode`'s repairs: [`MetadataJournal::plan`] then [`MetadataJournal::open_planned`].
    /// Read-only directories are scanned without any repair (verify).
    pub async fn open(
        root: &D,
        config: JournalConfig,
        mode: RecoveryMode,
    ) -> Result<(Self, ScanReport), JournalError> {
        let plan = Self::plan(root, config, mode).await?;
        Self::open_planned(root, plan).await
    }

    /// Decides what opening the journal under `root` in `mode` will do, without creating,
    /// writing or removing anything. A refusal is returned here.
    pub async fn plan(
        root: &D,
        config: JournalConfig,
        mode: RecoveryMode,
    ) -> Result<OpenPlan<D>, JournalError> {
        Self::plan_with(root, config, mode, &mut |_| {}).await
    }

    /// [`MetadataJournal::plan`], handing every entry the log keeps (and every segment header)
    /// to `consumer` during its one streaming pass, in log order, so a caller can rebuild its
    /// state without reading the entries again. If the plan is a refusal, the consumer has seen
    /// the entries before the damage; it is the caller's to discard what it built.
    pub async fn plan_with(
        root: &D,
        config: JournalConfig,
        mode: RecoveryMode,
        consumer: &mut dyn FnMut(ScanEvent<'_>),
    ) -> Result<OpenPlan<D>, JournalError> {
        config.validate()?;
        let dir = match root.open_dir("journal", false).await {
            Ok(dir) => Some(dir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(JournalError::io("open journal dir", root.display_path(), e)),
        };
        let scan = match &dir {
            Some(dir) => {
                scan_stream(
                    dir,
                    max_file_bytes(&config),
                    config.scan_window_bytes,
                    consumer,
                )
                .await?
            }
            None => LogScan::default(),
        };
        let mut report = ScanReport::default();
        let mut cut = None;
        if let Some(stop) = &scan.first_stop {
            report.problems.push(problem(stop));
            match action(stop.case, mode) {
                Action::Nothing => {}
                Action::Refuse => {
                    tracing::warn!(
                        segment = %stop.file,
                        offset_bytes = stop.stop.offset_bytes,
                        op = stop.stop.op,
                        case = stop.case.name(),
                        proof_watermark = stop.proofs.watermark,
                        proof_segment_header = stop.proofs.segment_header,
                        ?mode,
                        "journal: refusing to open"
                    );
                    return Err(refuse(stop));
                }
                Action::QuarantineAndCut => {
                    cut = Some(PlannedCut::TornTail);
                    report.torn_ops = op_ranges(stop.later_data_ops.clone());
                }
                Action::CutPointInTime => {
                    cut = Some(PlannedCut::PointInTime);
                    report.lost_ops = op_ranges(stop.later_data_ops.clone());
                }
            }
        }
        report_strays(&scan, &mut report);
        summarize(&scan, &mut report);
        let index = replay_index(&scan, config.slot_count);
        Ok(OpenPlan {
            config,
            dir,
            scan,
            cut,
            report,
            index,
        })
    }

    /// Carries out `plan` (made by [`MetadataJournal::plan`] on the same `root`, with nothing
    /// else writing the journal in between: the caller holds the directory lock).
    pub async fn open_planned(
        root: &D,
        plan: OpenPlan<D>,
    ) -> Result<(Self, ScanReport), JournalError> {
        let OpenPlan {
            config,
            dir,
            mut scan,
            cut,
            mut report,
            index,
        } = plan;
        if root.is_read_only() {
            if let Some(stop) = &scan.first_stop {
                if cut.is_some() {
                    tracing::warn!(segment = %stop.file, offset_bytes = stop.stop.offset_bytes,
                        case = stop.case.name(), "journal: read-only, not repairing");
                }
            }
            let dir = dir.unwrap_or_else(|| root.clone());
            let journal = Self::from_index(dir, config, true, &scan, index);
            journal.open_segments(&scan).await?;
            return Ok((journal, report));
        }
        // Every directory the journal depends on is made durable before anything in it is
        // acknowledged: a process that crashed earlier may have left entries in the page cache.
        let dir = keel_storage::open_dir_durable(root, "journal")
            .await
            .map_err(|e| JournalError::durable("open journal dir", e))?;
        if let (Some(cut), Some(stop)) = (cut, scan.first_stop.clone()) {
            report.repairs = repair::cut(root, &dir, &scan, cut).await?;
            if cut == PlannedCut::PointInTime {
                tracing::warn!(segment = %stop.file, offset_bytes = stop.stop.offset_bytes,
                    op = stop.stop.op, lost_ops = %ranges_text(&report.lost_ops),
                    "journal: point-in-time cut lost acknowledged ops");
            }
            // The files after the stop are gone; the stop's segment now ends there (or is gone
            // too, when the stop was its header).
            scan.files.truncate(stop.file_index + 1);
            if stop.stop.offset_bytes == 0 {
                scan.files.pop();
            } else if let Some(last) = scan.segments.last_mut() {
                last.file_len_bytes = last.data_end_bytes;
            }
        }
        if !scan.temps.is_empty() {
            repair::quarantine_temps(root, &dir, &scan.temps, scan.max_file_bytes).await?;
        }
        let mut journal = Self::from_index(dir, config, false, &scan, index);
        journal.open_segments(&scan).await?;
        journal.prepare_tail().await?;
        journal.adopt_found_spare().await;
        journal.start_writer();
        Ok((journal, report))
    }

    /// Builds the in-memory state (slot ring, writer chain state) from a scan and its index.
    fn from_index(
        dir: D,
        config: JournalConfig,
        read_only: bool,
        scan: &LogScan,
        index: Index,
    ) -> Self {
        let Index {
            snapshot_op: snapshot,
            commit_op: commit,
            live,
        } = index;
        let mut slots = SlotRing::new(config.slot_count, snapshot);
        for (op, location) in live {
            // `replay_index` kept only ops the ring holds, each in a slot of its own.
            assert!(
                slots.insert(op, location).is_ok(),
                "op {op} does not fit the ring"
            );
        }
        let w = writer_state(scan);
        let state = State {
            slots,
            segments: BTreeMap::new(),
            w,
            poisoned: None,
            commit_set: commit,
            commit_written: commit,
            commit_durable: commit,
            snapshot_encoded: snapshot,
            compacting: false,
            stats: JournalStats::default(),
        };
        Self {
            dir,
            config,
            read_only,
            state: Rc::new(std::cell::RefCell::new(state)),
            writer: None,
        }
    }

    async fn open_segments(&self, scan: &LogScan) -> Result<(), JournalError> {
        let mode = if self.read_only {
            OpenMode::ReadOnly
        } else {
            OpenMode::Existing
        };
        for seg in &scan.segments {
            let opened = self
                .dir
                .open_file_as(&seg.name, mode, self.segment_writes())
                .await;
            let file = opened
                .map_err(|e| JournalError::io("open segment", self.file_path(&seg.name), e))?;
            self.state.borrow_mut().segments.insert(
                seg.number,
                SegmentHandle {
                    file: Some(Rc::new(file)),
                    len_bytes: seg.file_len_bytes,
                    name: seg.name.clone(),
                    end_link: seg.end_link,
                    entry_count: seg.entries.len() as u64,
                    binding: seg.header.binding(),
                },
            );
        }
        Ok(())
    }

    /// Makes what the scan read durable (a process crash leaves it in the page cache only, and
    /// the next entries will claim it durable). Only the last kept segment needs the fsync: every
    /// earlier one is followed by a valid segment header, which a rotation writes only after
    /// fsyncing everything before it. Nothing is preallocated here: the writer grows the active
    /// segment's zeroed space ahead of its first write (`write_group`), so an open writes nothing.
    async fn prepare_tail(&self) -> Result<(), JournalError> {
        let last: Option<(Rc<D::File>, String)> = self
            .state
            .borrow()
            .segments
            .values()
            .next_back()
            .and_then(|h| h.file.clone().map(|f| (f, h.name.clone())));
        if let Some((file, name)) = last {
            file.sync()
                .await
                .map_err(|e| JournalError::io("fsync on open", self.file_path(&name), e))?;
        }
        self.release_idle_handles();
        Ok(())
    }
}

/// The writer's chain state and cursor after the kept segments.
fn writer_state(scan: &LogScan) -> WriterState {
    let (link, cursor, next_number, rewritten_last) = match scan.segments.last() {
        Some(last) => (
            last.end_link,
            Some((last.number, last.data_end_bytes, last.header.binding())),
            last.number + 1,
            last.header.is_rewritten(),
        ),
        None => (
            scan::Link {
                next_seq: 1,
                chain_crc: 0,
            },
            None,
            scan.files.first().map_or(0, |f| f.number),
            false,
        ),
    };
    let mut w = WriterState::new(link, cursor, next_number);
    // The tail is covered when the log ends with a close marker: a commit marker written
    // after an fsync of everything before it.
    w.tail_uncovered = scan
        .segments
        .iter()
        .rev()
        .find_map(|seg| seg.entries.last())
        .is_some_and(|last| !(last.kind == EntryKind::Commit && last.durable_seq + 1 == last.seq));
    if rewritten_last {
        // Never append to a compacted segment: its chain is closed by `link_crc`.
        w.needs_rotation = true;
    }
    w
}

/// Adds the stray bytes after sealed segment ends (which cut nothing) to `report`, after the
/// stop: callers take the first problem for the stop.
fn report_strays(scan: &LogScan, report: &mut ScanReport) {
    let strays = scan
        .problems
        .iter()
        .filter(|p| p.case == Case::StrayAfterEnd);
    report.problems.extend(strays.map(problem));
}
