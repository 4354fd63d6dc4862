//! Fault injection for [`MemFs`](super::MemFs): what can go wrong, when, and how often it did.
//!
//! This module owns the fault vocabulary ([`FaultOp`], [`FaultKind`], [`FaultTrigger`],
//! [`FaultRule`], [`FaultConfig`]), the decision whether a fault fires on one operation, the
//! seeded choice of where a misdirected write lands, and the [`FaultCounts`] a simulator reports.
//! It must never draw from the crash RNG (turning faults on must not change crash outcomes), and
//! never let a choice depend on anything but the seed and the sequence of operations.

use std::io;

use rand::Rng;

use super::{FileId, FsState, SECTOR_BYTES};

/// Operations that fault injection can target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum FaultOp {
    /// `Storage::read_at`.
    Read,
    /// `Storage::write_at`.
    Write,
    /// `Storage::truncate`.
    Truncate,
    /// `Storage::sync` (fdatasync of a file).
    Sync,
    /// `Directory::open_file`.
    Open,
    /// `Directory::sync` (fsync of a directory).
    DirSync,
    /// `Directory::rename`.
    Rename,
    /// `Directory::remove_file`.
    Remove,
    /// `Directory::list`.
    List,
}

/// What an injected fault does.
///
/// The write-only kinds ([`FaultKind::ShortWrite`], [`FaultKind::Misdirected`],
/// [`FaultKind::LostWrite`]) act as [`FaultKind::Io`] on every other operation, and on a write
/// they cannot take effect on (an empty buffer; a one-byte buffer for a short write).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FaultKind {
    /// The operation fails with `EIO` and changes nothing.
    Io,
    /// The operation fails with `ENOSPC` (`ErrorKind::StorageFull`) and changes nothing.
    NoSpace,
    /// Writes only: the first half of the buffer (at least one byte) is written and that count is
    /// returned, as a short write.
    ShortWrite,
    /// Writes only: the write reports full success, but its bytes land elsewhere (a device or
    /// firmware addressing bug): at another 512-byte-aligned offset of the same file that does
    /// not overlap the intended range, or in another file of the live namespace, chosen by the
    /// seeded fault RNG. The intended range keeps its old bytes; if the write was to extend the
    /// file, the file still grows to the intended end (the file system recorded the new size), the
    /// new bytes reading as zero. The stray bytes are an ordinary unsynced write where they landed.
    Misdirected,
    /// Writes only: the write reports success and reads see it (the page cache has it), but the
    /// device drops it: every later `Storage::sync` of the file reports success without making it
    /// durable, and the next power cut ([`MemFs::crash`](super::MemFs::crash)) brings the old
    /// bytes back.
    LostWrite,
}

/// When a [`FaultRule`] fires.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FaultTrigger {
    /// The `n`th matching operation (1-based, counted from [`MemFs::set_faults`]), once.
    ///
    /// [`MemFs::set_faults`]: super::MemFs::set_faults
    Nth(u64),
    /// Every matching operation from the `n`th on (1-based): a device that stays broken.
    From(u64),
    /// Each matching operation with this probability, from the seeded fault RNG.
    Probability(f64),
}

/// One fault: which operation, what happens, when, and optionally only on some paths.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultRule {
    /// The operation the rule applies to.
    pub op: FaultOp,
    /// What happens when it fires.
    pub kind: FaultKind,
    /// When it fires.
    pub trigger: FaultTrigger,
    /// Only operations on paths containing this string match (file path for file operations,
    /// directory path for directory operations; paths look like `mem:/journal/seg-1`).
    pub path_contains: Option<String>,
}

/// The faults of a [`MemFs`](super::MemFs): a list of rules and an optional disk budget.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FaultConfig {
    /// Checked in order for every operation; the first rule that fires decides the fault.
    pub rules: Vec<FaultRule>,
    /// When set, a write or truncate that would make the total size of all files exceed this many
    /// bytes fails with `ENOSPC` (`ErrorKind::StorageFull`) and changes nothing.
    pub disk_budget_bytes: Option<u64>,
}

impl FaultConfig {
    /// No faults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Fails the `n`th (1-based) operation `op` with `kind`, once.
    pub fn fail_nth(self, op: FaultOp, n: u64, kind: FaultKind) -> Self {
        self.with_trigger(op, kind, FaultTrigger::Nth(n))
    }

    /// Fails every operation `op` from the `n`th (1-based) on with `kind`.
    pub fn fail_from(self, op: FaultOp, n: u64, kind: FaultKind) -> Self {
        self.with_trigger(op, kind, FaultTrigger::From(n))
    }

    /// Fails each operation `op` with probability `probability` (seeded).
    pub fn fail_with_probability(self, op: FaultOp, probability: f64, kind: FaultKind) -> Self {
        self.with_trigger(op, kind, FaultTrigger::Probability(probability))
    }

    fn with_trigger(self, op: FaultOp, kind: FaultKind, trigger: FaultTrigger) -> Self {
        self.rule(FaultRule {
            op,
            kind,
            trigger,
            path_contains: None,
        })
    }

    /// Restricts the most recently added rule to paths containing `needle`.
    pub fn on_paths_containing(mut self, needle: &str) -> Self {
        if let Some(rule) = self.rules.last_mut() {
            rule.path_contains = Some(needle.to_string());
        }
        self
    }

    /// Adds a rule as given.
    pub fn rule(mut self, rule: FaultRule) -> Self {
        self.rules.push(rule);
        self
    }

    /// Caps the total size of all files (a full disk).
    pub fn disk_budget_bytes(mut self, budget_bytes: u64) -> Self {
        self.disk_budget_bytes = Some(budget_bytes);
        self
    }
}

/// How many faults of each kind a [`MemFs`](super::MemFs) injected since it was created (never
/// reset, not even by [`MemFs::set_faults`](super::MemFs::set_faults)), so a simulator can report
/// what its run actually exercised.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FaultCounts {
    /// [`MemFs::crash`](super::MemFs::crash) calls.
    pub power_cuts: u64,
    /// [`MemFs::process_crash`](super::MemFs::process_crash) calls.
    pub process_crashes: u64,
    /// Operations failed with `EIO` (including write-only kinds acting as [`FaultKind::Io`]).
    pub io_errors: u64,
    /// Operations failed with an injected [`FaultKind::NoSpace`].
    pub no_space: u64,
    /// Writes and truncates refused because they would pass the disk budget.
    pub disk_full: u64,
    /// Writes cut short by [`FaultKind::ShortWrite`].
    pub short_writes: u64,
    /// Writes through a direct handle that were aligned (they would bypass the page cache; see
    /// [`crate::Directory::open_file_direct`]). Not a fault: a count for tests.
    pub direct_writes: u64,
    /// [`crate::Storage::start_write_back`] calls (a hint with no effect on what a crash
    /// keeps: unsynced bytes may persist or not either way). Not a fault: a count for tests.
    pub write_back_hints: u64,
    /// Writes whose bytes landed elsewhere ([`FaultKind::Misdirected`]).
    pub misdirected_writes: u64,
    /// Writes the device dropped ([`FaultKind::LostWrite`]).
    pub lost_writes: u64,
    /// Bits flipped in durable data ([`MemFs::flip_bit`](super::MemFs::flip_bit) and
    /// [`MemFs::flip_random_bit`](super::MemFs::flip_random_bit)).
    pub bit_flips: u64,
}

/// The error an injected failure returns: the OS error's kind, with path and operation named.
pub(super) fn io_error(kind: FaultKind, what: &str, path: &str) -> io::Error {
    let os = match kind {
        FaultKind::NoSpace => libc::ENOSPC,
        FaultKind::Io | FaultKind::ShortWrite | FaultKind::Misdirected | FaultKind::LostWrite => {
            libc::EIO
        }
    };
    let base = io::Error::from_raw_os_error(os);
    io::Error::new(
        base.kind(),
        format!("{path}: injected fault on {what}: {base}"),
    )
}

/// Where a misdirected write's bytes land.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct StrayTarget {
    pub(super) file: FileId,
    pub(super) offset_bytes: u64,
}

impl FsState {
    /// Counts the operation and decides whether a fault fires on it. Write-only kinds come back
    /// as [`FaultKind::Io`] for every other operation.
    pub(super) fn fault(&mut self, op: FaultOp, path: &str) -> Option<FaultKind> {
        let count = {
            let count = self.op_counts.entry(op).or_insert(0);
            *count += 1;
            *count
        };
        let mut fired = None;
        for rule in &self.faults.rules {
            if rule.op != op {
                continue;
            }
            if let Some(needle) = &rule.path_contains {
                if !path.contains(needle.as_str()) {
                    continue;
                }
            }
            let fires = match rule.trigger {
                FaultTrigger::Nth(n) => count == n,
                FaultTrigger::From(n) => count >= n,
                // Drawn for every matching rule, fired or not, so the RNG stream depends only on
                // the sequence of operations.
                FaultTrigger::Probability(p) => self.fault_rng.gen_bool(p.clamp(0.0, 1.0)),
            };
            if fires && fired.is_none() {
                fired = Some(rule.kind);
            }
        }
        let fired = fired.map(|kind| match kind {
            FaultKind::ShortWrite | FaultKind::Misdirected | FaultKind::LostWrite
                if op != FaultOp::Write =>
            {
                FaultKind::Io
            }
            kind => kind,
        });
        if let Some(kind) = fired {
            tracing::debug!(?op, ?kind, path, count, "injecting fault");
        }
        fired
    }

    /// Counts a failure the caller is about to return for `kind`, and builds its error.
    pub(super) fn injected_failure(
        &mut self,
        kind: FaultKind,
        what: &str,
        path: &str,
    ) -> io::Error {
        match kind {
            FaultKind::NoSpace => self.counts.no_space += 1,
            _ => self.counts.io_errors += 1,
        }
        io_error(kind, what, path)
    }

    /// Counts the operation and, if a fault fires, returns the (counted) failure: for operations
    /// on which every fault kind is a plain failure.
    pub(super) fn fault_failure(&mut self, op: FaultOp, path: &str) -> Option<io::Error> {
        let kind = self.fault(op, path)?;
        Some(self.injected_failure(kind, &format!("{op:?}"), path))
    }

    /// Files reachable through the live namespace, in id order (deterministic).
    fn live_files(&self) -> Vec<FileId> {
        let mut files = Vec::new();
        let mut stack = vec![super::ROOT];
        while let Some(dir) = stack.pop() {
            for entry in self.dirs[&dir].live.values() {
                match *entry {
                    super::Entry::File(id) => files.push(id),
                    super::Entry::Dir(id) => stack.push(id),
                }
            }
        }
        files.sort_unstable();
        files.dedup();
        files
    }

    /// Chooses, with the fault RNG, where a misdirected write of `len_bytes` aimed at
    /// `offset_bytes` of `file` lands: half the time (when another live file exists) in another
    /// file, else in `file` itself; at a sector-aligned offset up to one sector past the target's
    /// live end, never overlapping the intended range in the same file.
    pub(super) fn misdirect_target(
        &mut self,
        file: FileId,
        offset_bytes: u64,
        len_bytes: u64,
    ) -> StrayTarget {
        let others: Vec<FileId> = self
            .live_files()
            .into_iter()
            .filter(|id| *id != file)
            .collect();
        let target = if !others.is_empty() && self.fault_rng.gen_bool(0.5) {
            others[self.fault_rng.gen_range(0..others.len())]
        } else {
            file
        };
        let target_len_bytes = self.files[&target].live.len() as u64;
        let last_sector = target_len_bytes / SECTOR_BYTES + 1;
        if target != file {
            let sector = self.fault_rng.gen_range(0..=last_sector);
            return StrayTarget {
                file: target,
                offset_bytes: sector * SECTOR_BYTES,
            };
        }
        // Same file: sectors whose range ends at or before the intended start, or start at or
        // after the intended end. The first sector after the intended end is always a candidate,
        // even past `last_sector`, so there is at least one.
        let before = if offset_bytes >= len_bytes {
            (offset_bytes - len_bytes) / SECTOR_BYTES + 1
        } else {
            0
        };
        let first_after = (offset_bytes + len_bytes).div_ceil(SECTOR_BYTES);
        let after = (last_sector + 1).saturating_sub(first_after).max(1);
        let pick = self.fault_rng.gen_range(0..before + after);
        let sector = if pick < before {
            pick
        } else {
            first_after + (pick - before)
        };
        StrayTarget {
            file,
            offset_bytes: sector * SECTOR_BYTES,
        }
    }
}
