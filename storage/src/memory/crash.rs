//! The crash model of [`MemFs`](super::MemFs): pending operations, what a sync makes durable,
//! what a power cut keeps, and what a process crash leaves behind.
//!
//! This module owns each file's durable bytes and its list of operations not yet durable, the
//! rule a file sync follows (durable + every pending op the device did not drop, in issue order),
//! the seeded fate of every unsynced operation at a power cut ([`FsState::crash`]), and the
//! process crash that only invalidates handles and locks ([`FsState::process_crash`]). It must
//! never draw from the fault RNG, never let a write the device dropped become durable, and never
//! touch live contents or the live namespace in a process crash.

use std::collections::BTreeSet;

use rand::Rng;

use super::{DirNode, Entry, FileId, FsState, ROOT, SECTOR_BYTES};

/// One operation on a file that no sync has made durable yet.
#[derive(Debug, Clone)]
pub(super) enum PendingOp {
    /// A write; `lost` when the device dropped it ([`FaultKind::LostWrite`]): reads see it, no
    /// sync makes it durable, and a power cut always loses it.
    ///
    /// [`FaultKind::LostWrite`]: super::FaultKind::LostWrite
    Write {
        offset_bytes: u64,
        data: Vec<u8>,
        lost: bool,
    },
    /// A truncate (shrinking or zero-extending).
    Truncate { len_bytes: u64 },
}

/// One file's bytes: durable, live, and the operations between them.
#[derive(Debug)]
pub(super) struct FileNode {
    /// What a power cut right now starts from.
    pub(super) durable: Vec<u8>,
    /// What reads see: the page cache. `durable` with every pending op applied, except that a
    /// lost write a sync skipped stays here (and in `pending`) without reaching `durable`.
    pub(super) live: Vec<u8>,
    /// In issue order. After a sync only lost writes remain.
    pub(super) pending: Vec<PendingOp>,
    /// For reports and fault path filters.
    pub(super) last_path: String,
}

impl FileNode {
    pub(super) fn new(path: String) -> Self {
        Self {
            durable: Vec::new(),
            live: Vec::new(),
            pending: Vec::new(),
            last_path: path,
        }
    }

    /// What `Storage::sync` does: every pending op the device did not drop becomes durable, in
    /// issue order (so a later write over a lost one is durable where it wrote, and the old bytes
    /// stay elsewhere). Lost writes stay pending, so a power cut reports them lost. `live` is
    /// left as it is: the page cache still holds the lost bytes.
    pub(super) fn sync(&mut self) {
        for op in std::mem::take(&mut self.pending) {
            match op {
                PendingOp::Write { lost: true, .. } => self.pending.push(op),
                PendingOp::Write {
                    offset_bytes, data, ..
                } => apply_write(&mut self.durable, offset_bytes, &data),
                PendingOp::Truncate { len_bytes } => apply_truncate(&mut self.durable, len_bytes),
            }
        }
    }
}

pub(super) fn apply_write(bytes: &mut Vec<u8>, offset_bytes: u64, data: &[u8]) {
    let start = offset_bytes as usize;
    let end = start + data.len();
    if bytes.len() < end {
        bytes.resize(end, 0);
    }
    bytes[start..end].copy_from_slice(data);
}

pub(super) fn apply_truncate(bytes: &mut Vec<u8>, len_bytes: u64) {
    bytes.resize(len_bytes as usize, 0);
}

/// What a crash did to one unsynced operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The whole write reached the disk.
    Kept,
    /// None of it did (always the fate of a write the device dropped).
    Lost,
    /// Only its first `kept_bytes` bytes did.
    TornPrefix {
        /// How many leading bytes of the write survived.
        kept_bytes: u64,
    },
    /// Only these sectors did (file offsets of the kept pieces' starts; each piece runs to the
    /// next 512-byte boundary or the end of the write).
    TornSectors {
        /// File offsets where the surviving pieces start, ascending.
        kept_offsets_bytes: Vec<u64>,
    },
    /// An unsynced truncate that survived.
    TruncateKept,
    /// An unsynced truncate that was undone.
    TruncateLost,
}

/// One unsynced operation and its fate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrashEvent {
    /// The file's path when it was last opened (`mem:/journal/seg-1`).
    pub path: String,
    /// The write's offset, or a truncate's new length.
    pub offset_bytes: u64,
    /// The write's length; 0 for a truncate.
    pub len_bytes: u64,
    /// What the crash did to it.
    pub outcome: WriteOutcome,
}

/// What [`MemFs::crash`](super::MemFs::crash) did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CrashReport {
    /// Every unsynced write and truncate, per file in path order, each file's in issue order.
    pub events: Vec<CrashEvent>,
    /// Unsynced writes that survived whole.
    pub writes_kept: usize,
    /// Unsynced writes that vanished (including writes the device dropped).
    pub writes_lost: usize,
    /// Unsynced writes that survived in part.
    pub writes_torn: usize,
    /// Directory entries whose unsynced change (create, rename, remove) was undone.
    pub entries_reverted: usize,
}

/// What [`MemFs::process_crash`](super::MemFs::process_crash) left behind: all of it still
/// pending, for a later power cut to decide.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessCrashReport {
    /// Writes not yet durable (including writes the device dropped), over all files.
    pub unsynced_writes: usize,
    /// Truncates not yet durable, over all files.
    pub unsynced_truncates: usize,
    /// Directory entries whose create, rename or remove is not yet durable.
    pub unsynced_entries: usize,
    /// Locks the dead process held, now released.
    pub locks_released: usize,
}

/// Entries of `dir` whose live state differs from the durable one.
fn unsynced_entries(dir: &DirNode) -> usize {
    let names: BTreeSet<&String> = dir.live.keys().chain(dir.durable.keys()).collect();
    names
        .into_iter()
        .filter(|name| dir.live.get(*name) != dir.durable.get(*name))
        .count()
}

impl FsState {
    /// A power cut: see the module docs of `memory` for the model.
    pub(super) fn crash(&mut self) -> CrashReport {
        let mut report = CrashReport::default();
        // Namespace first: every directory reverts to its durable entries.
        for dir in self.dirs.values_mut() {
            report.entries_reverted += unsynced_entries(dir);
            dir.live = dir.durable.clone();
        }
        self.drop_unreachable();
        // Contents: replay unsynced ops onto the durable bytes, each with a seeded fate. Files are
        // visited in path order so the RNG stream does not depend on id allocation details.
        let mut order: Vec<(String, FileId)> = self
            .files
            .iter()
            .map(|(id, f)| (f.last_path.clone(), *id))
            .collect();
        order.sort();
        for (path, id) in order {
            self.replay_file(id, &path, &mut report);
        }
        self.locks.clear();
        self.generation += 1;
        self.counts.power_cuts += 1;
        report
    }

    /// Drops files and directories no durable entry reaches any more.
    fn drop_unreachable(&mut self) {
        let mut reachable_files = BTreeSet::new();
        let mut reachable_dirs = BTreeSet::new();
        let mut stack = vec![ROOT];
        while let Some(dir) = stack.pop() {
            if !reachable_dirs.insert(dir) {
                continue;
            }
            for entry in self.dirs[&dir].durable.values() {
                match *entry {
                    Entry::File(id) => {
                        reachable_files.insert(id);
                    }
                    Entry::Dir(id) => stack.push(id),
                }
            }
        }
        self.files.retain(|id, _| reachable_files.contains(id));
        self.dirs.retain(|id, _| reachable_dirs.contains(id));
    }

    /// Replays one file's pending ops onto its durable bytes with seeded fates; the result is
    /// both durable and live.
    fn replay_file(&mut self, id: FileId, path: &str, report: &mut CrashReport) {
        let file = self.files.get_mut(&id).expect("file in order exists");
        let mut bytes = std::mem::take(&mut file.durable);
        for op in std::mem::take(&mut file.pending) {
            match op {
                PendingOp::Truncate { len_bytes } => {
                    let keep = self.crash_rng.gen_bool(0.5);
                    if keep {
                        apply_truncate(&mut bytes, len_bytes);
                    }
                    report.events.push(CrashEvent {
                        path: path.to_string(),
                        offset_bytes: len_bytes,
                        len_bytes: 0,
                        outcome: if keep {
                            WriteOutcome::TruncateKept
                        } else {
                            WriteOutcome::TruncateLost
                        },
                    });
                }
                PendingOp::Write {
                    offset_bytes,
                    data,
                    lost,
                } => {
                    // A dropped write draws nothing: its fate is fixed, and the crash RNG stream
                    // stays the one a run without lost writes would see for the other ops.
                    let outcome = if lost {
                        WriteOutcome::Lost
                    } else {
                        write_fate(&mut self.crash_rng, &mut bytes, offset_bytes, &data)
                    };
                    match outcome {
                        WriteOutcome::Kept => report.writes_kept += 1,
                        WriteOutcome::Lost => report.writes_lost += 1,
                        _ => report.writes_torn += 1,
                    }
                    report.events.push(CrashEvent {
                        path: path.to_string(),
                        offset_bytes,
                        len_bytes: data.len() as u64,
                        outcome,
                    });
                }
            }
        }
        file.live = bytes.clone();
        file.durable = bytes;
    }

    /// A process crash: see [`MemFs::process_crash`](super::MemFs::process_crash).
    pub(super) fn process_crash(&mut self) -> ProcessCrashReport {
        let mut report = ProcessCrashReport {
            locks_released: self.locks.len(),
            ..ProcessCrashReport::default()
        };
        for file in self.files.values() {
            for op in &file.pending {
                match op {
                    PendingOp::Write { .. } => report.unsynced_writes += 1,
                    PendingOp::Truncate { .. } => report.unsynced_truncates += 1,
                }
            }
        }
        report.unsynced_entries = self.dirs.values().map(unsynced_entries).sum();
        self.locks.clear();
        self.generation += 1;
        self.counts.process_crashes += 1;
        report
    }
}

/// Decides with `rng` whether an unsynced write is kept, lost or torn, and applies what survives.
fn write_fate(
    rng: &mut impl Rng,
    bytes: &mut Vec<u8>,
    offset_bytes: u64,
    data: &[u8],
) -> WriteOutcome {
    match rng.gen_range(0..3u8) {
        0 => {
            apply_write(bytes, offset_bytes, data);
            WriteOutcome::Kept
        }
        1 => WriteOutcome::Lost,
        _ if rng.gen_bool(0.5) => {
            let kept_bytes = if data.is_empty() {
                0
            } else {
                rng.gen_range(0..data.len())
            };
            apply_write(bytes, offset_bytes, &data[..kept_bytes]);
            WriteOutcome::TornPrefix {
                kept_bytes: kept_bytes as u64,
            }
        }
        _ => {
            let mut kept_offsets_bytes = Vec::new();
            let end_bytes = offset_bytes + data.len() as u64;
            let mut piece_start = offset_bytes;
            while piece_start < end_bytes {
                let piece_end = ((piece_start / SECTOR_BYTES + 1) * SECTOR_BYTES).min(end_bytes);
                if rng.gen_bool(0.5) {
                    let from = (piece_start - offset_bytes) as usize;
                    let to = (piece_end - offset_bytes) as usize;
                    apply_write(bytes, piece_start, &data[from..to]);
                    kept_offsets_bytes.push(piece_start);
                }
                piece_start = piece_end;
            }
            WriteOutcome::TornSectors { kept_offsets_bytes }
        }
    }
}
