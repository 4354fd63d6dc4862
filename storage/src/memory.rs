//! MemStorage: an in-memory file system with a seeded crash model and fault injection.
//!
//! This module owns the simulator's idea of a disk: for every file the bytes already durable and
//! the list of writes and truncates not yet covered by a sync; for every directory the entries
//! already durable and the live ones. [`MemFs::crash`] throws away what a power cut may throw away,
//! choosing with a seeded RNG, so a failing seed replays byte for byte. It also injects faults:
//! I/O errors by schedule or probability, bit flips in synced data, a full disk.
//!
//! It must never be nondeterministic: every collection it iterates is ordered (`BTreeMap`), every
//! random choice comes from the seeded RNGs, and no choice depends on addresses or time. It must
//! never hold a `RefCell` borrow across an await.
//!
//! The model:
//! - `Storage::sync` on a file makes all its completed writes and truncates durable (whichever
//!   handle issued them).
//! - A namespace change (create, rename, remove, creating a subdirectory) is durable only after
//!   `Directory::sync` of the directory that holds the entry.
//! - On a crash, each unsynced write, in issue order, is kept, lost, or torn (a prefix of it, or a
//!   random subset of the 512-byte sectors it touches); each unsynced truncate is kept or lost;
//!   every directory reverts to its durable entries; files no durable entry reaches vanish; all
//!   locks are released; every handle opened before the crash becomes stale.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::rc::Rc;

use compio::buf::{BufResult, IoBuf, IoBufMut};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::dir::check_name;
use crate::file::{read_exact_at_impl, write_all_at_impl};
use crate::{Directory, OpenMode, Storage};

/// Sector size of the torn-write model: a torn write keeps some of the sectors it touches.
pub const SECTOR_BYTES: u64 = 512;

type FileId = u64;
type DirId = u64;

/// Operations that fault injection can target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// The operation fails with `EIO` and changes nothing.
    Io,
    /// The operation fails with `ENOSPC` (`ErrorKind::StorageFull`) and changes nothing.
    NoSpace,
    /// Writes only: the first half of the buffer (at least one byte) is written and that count is
    /// returned, as a short write. Other operations treat it as [`FaultKind::Io`].
    ShortWrite,
}

/// When a [`FaultRule`] fires.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FaultTrigger {
    /// The `n`th matching operation (1-based, counted from [`MemFs::set_faults`]), once.
    Nth(u64),
    /// Every matching operation from the `n`th on (1-based): a device that stays broken.
    From(u64),
    /// Each matching operation with this probability, from the seeded fault RNG.
    Probability(f64),
}

/// One fault: which operation, what happens, when, and optionally only on some paths.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultRule {
    pub op: FaultOp,
    pub kind: FaultKind,
    pub trigger: FaultTrigger,
    /// Only operations on paths containing this string match (file path for file operations,
    /// directory path for directory operations; paths look like `mem:/journal/seg-1`).
    pub path_contains: Option<String>,
}

/// The faults of a [`MemFs`]: a list of rules and an optional disk budget.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FaultConfig {
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
    pub fn fail_nth(mut self, op: FaultOp, n: u64, kind: FaultKind) -> Self {
        self.rules.push(FaultRule {
            op,
            kind,
            trigger: FaultTrigger::Nth(n),
            path_contains: None,
        });
        self
    }

    /// Fails every operation `op` from the `n`th (1-based) on with `kind`.
    pub fn fail_from(mut self, op: FaultOp, n: u64, kind: FaultKind) -> Self {
        self.rules.push(FaultRule {
            op,
            kind,
            trigger: FaultTrigger::From(n),
            path_contains: None,
        });
        self
    }

    /// Fails each operation `op` with probability `probability` (seeded).
    pub fn fail_with_probability(mut self, op: FaultOp, probability: f64, kind: FaultKind) -> Self {
        self.rules.push(FaultRule {
            op,
            kind,
            trigger: FaultTrigger::Probability(probability),
            path_contains: None,
        });
        self
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

/// What a crash did to one unsynced operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The whole write reached the disk.
    Kept,
    /// None of it did.
    Lost,
    /// Only its first `kept_bytes` bytes did.
    TornPrefix { kept_bytes: u64 },
    /// Only these sectors did (file offsets of the kept pieces' starts; each piece runs to the
    /// next 512-byte boundary or the end of the write).
    TornSectors { kept_offsets_bytes: Vec<u64> },
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
    pub offset_bytes: u64,
    pub len_bytes: u64,
    pub outcome: WriteOutcome,
}

/// What [`MemFs::crash`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CrashReport {
    /// Every unsynced write and truncate, per file in path order, each file's in issue order.
    pub events: Vec<CrashEvent>,
    pub writes_kept: usize,
    pub writes_lost: usize,
    pub writes_torn: usize,
    /// Directory entries whose unsynced change (create, rename, remove) was undone.
    pub entries_reverted: usize,
}

#[derive(Debug, Clone)]
enum PendingOp {
    Write { offset_bytes: u64, data: Vec<u8> },
    Truncate { len_bytes: u64 },
}

#[derive(Debug)]
struct FileNode {
    durable: Vec<u8>,
    /// What reads see: `durable` with every pending op applied.
    live: Vec<u8>,
    pending: Vec<PendingOp>,
    /// For reports and fault path filters.
    last_path: String,
}

impl FileNode {
    fn new(path: String) -> Self {
        Self {
            durable: Vec::new(),
            live: Vec::new(),
            pending: Vec::new(),
            last_path: path,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    File(FileId),
    Dir(DirId),
}

#[derive(Debug, Default)]
struct DirNode {
    live: BTreeMap<String, Entry>,
    durable: BTreeMap<String, Entry>,
}

fn apply_write(bytes: &mut Vec<u8>, offset_bytes: u64, data: &[u8]) {
    let start = offset_bytes as usize;
    let end = start + data.len();
    if bytes.len() < end {
        bytes.resize(end, 0);
    }
    bytes[start..end].copy_from_slice(data);
}

fn apply_truncate(bytes: &mut Vec<u8>, len_bytes: u64) {
    bytes.resize(len_bytes as usize, 0);
}

struct FsState {
    seed: u64,
    /// Bumped by every crash; handles remember the one they were opened in.
    generation: u64,
    next_id: u64,
    files: BTreeMap<FileId, FileNode>,
    dirs: BTreeMap<DirId, DirNode>,
    /// (directory, name) pairs locked right now.
    locks: BTreeSet<(DirId, String)>,
    crash_rng: StdRng,
    fault_rng: StdRng,
    faults: FaultConfig,
    op_counts: BTreeMap<FaultOp, u64>,
    file_sync_count: u64,
    dir_sync_count: u64,
    yield_on_io: bool,
}

const ROOT: DirId = 0;

fn io_error(kind: FaultKind, what: &str, path: &str) -> io::Error {
    let os = match kind {
        FaultKind::NoSpace => libc::ENOSPC,
        FaultKind::Io | FaultKind::ShortWrite => libc::EIO,
    };
    let base = io::Error::from_raw_os_error(os);
    io::Error::new(
        base.kind(),
        format!("{path}: injected fault on {what}: {base}"),
    )
}

fn stale_error(path: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        format!("{path}: stale handle (opened before a crash)"),
    )
}

fn read_only_error(path: &str, what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!("{path}: {what} on a read-only handle"),
    )
}

impl FsState {
    fn new_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Counts the operation and decides whether a fault fires on it.
    fn fault(&mut self, op: FaultOp, path: &str) -> Option<FaultKind> {
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
        if let Some(kind) = fired {
            tracing::debug!(?op, ?kind, path, count, "injecting fault");
        }
        fired
    }

    fn total_live_bytes(&self) -> u64 {
        self.files.values().map(|f| f.live.len() as u64).sum()
    }

    /// Fails with ENOSPC if growing `file` to `new_len_bytes` would exceed the disk budget.
    fn check_budget(&self, file: FileId, new_len_bytes: u64, path: &str) -> io::Result<()> {
        if let Some(budget_bytes) = self.faults.disk_budget_bytes {
            let old_len_bytes = self.files[&file].live.len() as u64;
            if new_len_bytes > old_len_bytes
                && self.total_live_bytes() + (new_len_bytes - old_len_bytes) > budget_bytes
            {
                return Err(io_error(FaultKind::NoSpace, "write (disk budget)", path));
            }
        }
        Ok(())
    }

    fn dir(&self, dir: DirId) -> &DirNode {
        &self.dirs[&dir]
    }

    fn dir_mut(&mut self, dir: DirId) -> &mut DirNode {
        self.dirs.get_mut(&dir).expect("directory node exists")
    }

    /// Resolves a `/`-separated path from the root through live entries.
    fn resolve(&self, path: &str) -> io::Result<Entry> {
        let mut entry = Entry::Dir(ROOT);
        for part in path.split('/').filter(|p| !str::is_empty(p)) {
            let Entry::Dir(dir) = entry else {
                return Err(io::Error::new(
                    io::ErrorKind::NotADirectory,
                    format!("mem:/{path}: a file is in the way"),
                ));
            };
            entry = *self.dir(dir).live.get(part).ok_or_else(|| {
                io::Error::new(io::ErrorKind::NotFound, format!("mem:/{path}: not found"))
            })?;
        }
        Ok(entry)
    }

    fn resolve_file(&self, path: &str) -> io::Result<FileId> {
        match self.resolve(path)? {
            Entry::File(id) => Ok(id),
            Entry::Dir(_) => Err(io::Error::new(
                io::ErrorKind::IsADirectory,
                format!("mem:/{path} is a directory"),
            )),
        }
    }

    fn crash(&mut self) -> CrashReport {
        let mut report = CrashReport::default();
        // Namespace first: every directory reverts to its durable entries.
        for dir in self.dirs.values_mut() {
            let mut reverted = 0;
            let names: BTreeSet<&String> = dir.live.keys().chain(dir.durable.keys()).collect();
            for name in names {
                if dir.live.get(name) != dir.durable.get(name) {
                    reverted += 1;
                }
            }
            report.entries_reverted += reverted;
            dir.live = dir.durable.clone();
        }
        // Drop what no durable entry reaches any more.
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

        // Contents: replay unsynced ops onto the durable bytes, each with a seeded fate. Files are
        // visited in path order so the RNG stream does not depend on id allocation details.
        let mut order: Vec<(String, FileId)> = self
            .files
            .iter()
            .map(|(id, f)| (f.last_path.clone(), *id))
            .collect();
        order.sort();
        for (path, id) in order {
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
                            path: path.clone(),
                            offset_bytes: len_bytes,
                            len_bytes: 0,
                            outcome: if keep {
                                WriteOutcome::TruncateKept
                            } else {
                                WriteOutcome::TruncateLost
                            },
                        });
                    }
                    PendingOp::Write { offset_bytes, data } => {
                        let outcome = match self.crash_rng.gen_range(0..3u8) {
                            0 => {
                                apply_write(&mut bytes, offset_bytes, &data);
                                report.writes_kept += 1;
                                WriteOutcome::Kept
                            }
                            1 => {
                                report.writes_lost += 1;
                                WriteOutcome::Lost
                            }
                            _ => {
                                report.writes_torn += 1;
                                if self.crash_rng.gen_bool(0.5) {
                                    let kept_bytes = if data.is_empty() {
                                        0
                                    } else {
                                        self.crash_rng.gen_range(0..data.len())
                                    };
                                    apply_write(&mut bytes, offset_bytes, &data[..kept_bytes]);
                                    WriteOutcome::TornPrefix {
                                        kept_bytes: kept_bytes as u64,
                                    }
                                } else {
                                    let mut kept_offsets_bytes = Vec::new();
                                    let end_bytes = offset_bytes + data.len() as u64;
                                    let mut piece_start = offset_bytes;
                                    while piece_start < end_bytes {
                                        let piece_end = ((piece_start / SECTOR_BYTES + 1)
                                            * SECTOR_BYTES)
                                            .min(end_bytes);
                                        if self.crash_rng.gen_bool(0.5) {
                                            let from = (piece_start - offset_bytes) as usize;
                                            let to = (piece_end - offset_bytes) as usize;
                                            apply_write(&mut bytes, piece_start, &data[from..to]);
                                            kept_offsets_bytes.push(piece_start);
                                        }
                                        piece_start = piece_end;
                                    }
                                    WriteOutcome::TornSectors { kept_offsets_bytes }
                                }
                            }
                        };
                        report.events.push(CrashEvent {
                            path: path.clone(),
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
        self.locks.clear();
        self.generation += 1;
        report
    }
}

/// An in-memory file system. Cheap to clone (all clones share one state); `!Send`.
#[derive(Clone)]
pub struct MemFs {
    state: Rc<RefCell<FsState>>,
}

impl std::fmt::Debug for MemFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.state.borrow();
        f.debug_struct("MemFs")
            .field("seed", &state.seed)
            .field("generation", &state.generation)
            .field("files", &state.files.len())
            .finish()
    }
}

impl MemFs {
    /// An empty file system whose crashes and probabilistic faults follow `seed`.
    pub fn new(seed: u64) -> Self {
        let mut dirs = BTreeMap::new();
        dirs.insert(ROOT, DirNode::default());
        Self {
            state: Rc::new(RefCell::new(FsState {
                seed,
                generation: 0,
                next_id: ROOT,
                files: BTreeMap::new(),
                dirs,
                locks: BTreeSet::new(),
                crash_rng: StdRng::seed_from_u64(seed),
                // A different stream, so that turning faults on does not change crash outcomes.
                fault_rng: StdRng::seed_from_u64(seed ^ 0x9e37_79b9_7f4a_7c15),
                faults: FaultConfig::default(),
                op_counts: BTreeMap::new(),
                file_sync_count: 0,
                dir_sync_count: 0,
                yield_on_io: true,
            })),
        }
    }

    /// The seed this file system was made with.
    pub fn seed(&self) -> u64 {
        self.state.borrow().seed
    }

    /// The root directory, read-write.
    pub fn root(&self) -> MemDirectory {
        let generation = self.state.borrow().generation;
        MemDirectory {
            fs: self.clone(),
            dir: ROOT,
            path: "mem:".to_string(),
            read_only: false,
            generation,
        }
    }

    /// The root directory, read-only: every mutation fails with `PermissionDenied`.
    pub fn root_read_only(&self) -> MemDirectory {
        MemDirectory {
            read_only: true,
            ..self.root()
        }
    }

    /// Simulates a power cut (see the module docs) and reports what happened.
    pub fn crash(&self) -> CrashReport {
        let report = self.state.borrow_mut().crash();
        tracing::debug!(
            kept = report.writes_kept,
            lost = report.writes_lost,
            torn = report.writes_torn,
            reverted = report.entries_reverted,
            "simulated crash"
        );
        report
    }

    /// Replaces the fault configuration and restarts the per-operation counters that
    /// [`FaultTrigger::Nth`] and [`FaultTrigger::From`] count against.
    pub fn set_faults(&self, faults: FaultConfig) {
        let mut state = self.state.borrow_mut();
        state.faults = faults;
        state.op_counts.clear();
    }

    /// Removes every fault and the disk budget.
    pub fn clear_faults(&self) {
        self.set_faults(FaultConfig::default());
    }

    /// How many operations of kind `op` ran since the last [`MemFs::set_faults`].
    pub fn op_count(&self, op: FaultOp) -> u64 {
        self.state.borrow().op_counts.get(&op).copied().unwrap_or(0)
    }

    /// Successful file syncs (`Storage::sync`) since creation.
    pub fn sync_count(&self) -> u64 {
        self.state.borrow().file_sync_count
    }

    /// Successful directory syncs since creation.
    pub fn dir_sync_count(&self) -> u64 {
        self.state.borrow().dir_sync_count
    }

    /// Whether every storage operation yields to the executor once (default on), so that tasks
    /// interleave as they would on io_uring.
    pub fn set_yield_on_io(&self, yield_on_io: bool) {
        self.state.borrow_mut().yield_on_io = yield_on_io;
    }

    /// True if `path` (relative to the root, `/`-separated) exists in the live namespace.
    pub fn exists(&self, path: &str) -> bool {
        self.state.borrow().resolve(path).is_ok()
    }

    /// The bytes a read of `path` sees now (durable plus unsynced).
    pub fn read_raw(&self, path: &str) -> io::Result<Vec<u8>> {
        let state = self.state.borrow();
        let id = state.resolve_file(path)?;
        Ok(state.files[&id].live.clone())
    }

    /// The durable bytes of `path`: what a crash right now would start from.
    pub fn durable_bytes(&self, path: &str) -> io::Result<Vec<u8>> {
        let state = self.state.borrow();
        let id = state.resolve_file(path)?;
        Ok(state.files[&id].durable.clone())
    }

    /// Overwrites bytes of `path` at `offset_bytes`, durably and bypassing faults (a hand-made
    /// corrupt file). Creates the file, durably, if it does not exist. Unsynced ops on it stay
    /// pending.
    pub fn write_raw(&self, path: &str, offset_bytes: u64, data: &[u8]) -> io::Result<()> {
        let mut state = self.state.borrow_mut();
        let id = match state.resolve(path) {
            Ok(Entry::File(id)) => id,
            Ok(Entry::Dir(_)) => {
                return Err(io::Error::new(
                    io::ErrorKind::IsADirectory,
                    format!("mem:/{path} is a directory"),
                ))
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                let (parent, name) = match path.rsplit_once('/') {
                    Some((parent, name)) => (parent, name),
                    None => ("", path),
                };
                check_name(name)?;
                let Entry::Dir(dir) = state.resolve(parent)? else {
                    return Err(io::Error::new(
                        io::ErrorKind::NotADirectory,
                        format!("mem:/{parent} is not a directory"),
                    ));
                };
                let id = state.new_id();
                state
                    .files
                    .insert(id, FileNode::new(format!("mem:/{path}")));
                let dir = state.dir_mut(dir);
                dir.live.insert(name.to_string(), Entry::File(id));
                dir.durable.insert(name.to_string(), Entry::File(id));
                id
            }
            Err(error) => return Err(error),
        };
        let file = state.files.get_mut(&id).expect("resolved file exists");
        apply_write(&mut file.durable, offset_bytes, data);
        apply_write(&mut file.live, offset_bytes, data);
        Ok(())
    }

    /// Cuts `path` to `len_bytes`, durably and bypassing faults (a hand-made torn file). Pending
    /// unsynced ops are dropped so that what reads see is exactly the cut file.
    pub fn cut_raw(&self, path: &str, len_bytes: u64) -> io::Result<()> {
        let mut state = self.state.borrow_mut();
        let id = state.resolve_file(path)?;
        let file = state.files.get_mut(&id).expect("resolved file exists");
        file.pending.clear();
        file.live.truncate(len_bytes as usize);
        file.durable = file.live.clone();
        Ok(())
    }

    /// Flips bit `bit` (0 = least significant) of the byte at `offset_bytes` of `path`'s durable
    /// data (media corruption). Reads see it too unless an unsynced op covers that byte.
    pub fn flip_bit(&self, path: &str, offset_bytes: u64, bit: u8) -> io::Result<()> {
        let mut state = self.state.borrow_mut();
        let id = state.resolve_file(path)?;
        let file = state.files.get_mut(&id).expect("resolved file exists");
        let offset = offset_bytes as usize;
        if offset >= file.durable.len() || bit > 7 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "mem:/{path}: no durable bit {bit} at offset {offset_bytes} (durable length {})",
                    file.durable.len()
                ),
            ));
        }
        let mask = 1u8 << bit;
        file.durable[offset] ^= mask;
        let covered = file.pending.iter().any(|op| match op {
            PendingOp::Truncate { .. } => true,
            PendingOp::Write { offset_bytes, data } => {
                *offset_bytes <= offset as u64 && (offset as u64) < offset_bytes + data.len() as u64
            }
        });
        if !covered && offset < file.live.len() {
            file.live[offset] ^= mask;
        }
        Ok(())
    }

    /// Flips one seeded-random bit of `path`'s durable data; returns (offset, bit), or `None` if
    /// the file has no durable bytes.
    pub fn flip_random_bit(&self, path: &str) -> io::Result<Option<(u64, u8)>> {
        let (offset_bytes, bit) = {
            let mut state = self.state.borrow_mut();
            let id = state.resolve_file(path)?;
            let len_bytes = state.files[&id].durable.len();
            if len_bytes == 0 {
                return Ok(None);
            }
            let offset_bytes = state.fault_rng.gen_range(0..len_bytes) as u64;
            let bit = state.fault_rng.gen_range(0..8u8);
            (offset_bytes, bit)
        };
        self.flip_bit(path, offset_bytes, bit)?;
        Ok(Some((offset_bytes, bit)))
    }

    fn yield_on_io(&self) -> bool {
        self.state.borrow().yield_on_io
    }
}

async fn maybe_yield(fs: &MemFs) {
    if fs.yield_on_io() {
        crate::yield_now().await;
    }
}

/// One directory of a [`MemFs`].
#[derive(Clone)]
pub struct MemDirectory {
    fs: MemFs,
    dir: DirId,
    /// `mem:` for the root, `mem:/journal` below it.
    path: String,
    read_only: bool,
    generation: u64,
}

impl std::fmt::Debug for MemDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemDirectory")
            .field("path", &self.path)
            .field("read_only", &self.read_only)
            .finish()
    }
}

/// An in-memory exclusive lock; released on drop or by a crash.
#[derive(Debug)]
pub struct MemLock {
    fs: MemFs,
    key: (DirId, String),
    generation: u64,
}

impl Drop for MemLock {
    fn drop(&mut self) {
        let mut state = self.fs.state.borrow_mut();
        // A crash already released it, and someone may have taken it again since.
        if state.generation == self.generation {
            state.locks.remove(&self.key);
        }
    }
}

impl MemDirectory {
    /// The file system this directory belongs to.
    pub fn fs(&self) -> &MemFs {
        &self.fs
    }

    /// The same directory, read-only.
    pub fn read_only(&self) -> Self {
        Self {
            read_only: true,
            ..self.clone()
        }
    }

    fn child_path(&self, name: &str) -> String {
        if self.dir == ROOT {
            format!("mem:/{name}")
        } else {
            format!("{}/{name}", self.path)
        }
    }

    /// Checks the handle is fresh and the name is valid; counts the op and applies faults.
    fn begin(
        &self,
        state: &mut FsState,
        op: Option<FaultOp>,
        name: Option<&str>,
    ) -> io::Result<()> {
        if state.generation != self.generation {
            return Err(stale_error(&self.path));
        }
        if let Some(name) = name {
            check_name(name)?;
        }
        if let Some(op) = op {
            let path = match name {
                Some(name) => self.child_path(name),
                None => self.path.clone(),
            };
            if let Some(kind) = state.fault(op, &path) {
                return Err(io_error(kind, &format!("{op:?}"), &path));
            }
        }
        Ok(())
    }

    fn check_writable(&self, what: &str) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{}: {what} in a read-only directory", self.path),
            ));
        }
        Ok(())
    }

    fn open_file_now(&self, name: &str, mode: OpenMode) -> io::Result<MemStorage> {
        if mode != OpenMode::ReadOnly {
            self.check_writable("open for writing")?;
        }
        let mut state = self.fs.state.borrow_mut();
        self.begin(&mut state, Some(FaultOp::Open), Some(name))?;
        let path = self.child_path(name);
        let existing = state.dir(self.dir).live.get(name).copied();
        let id = match (existing, mode) {
            (Some(Entry::Dir(_)), _) => {
                return Err(io::Error::new(
                    io::ErrorKind::IsADirectory,
                    format!("{path} is a directory"),
                ))
            }
            (Some(Entry::File(_)), OpenMode::CreateNew) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{path} already exists"),
                ))
            }
            (Some(Entry::File(id)), _) => id,
            (None, OpenMode::ReadOnly | OpenMode::Existing) => {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{path}: not found"),
                ))
            }
            (None, OpenMode::Create | OpenMode::CreateNew) => {
                let id = state.new_id();
                state.files.insert(id, FileNode::new(path.clone()));
                state
                    .dir_mut(self.dir)
                    .live
                    .insert(name.to_string(), Entry::File(id));
                id
            }
        };
        let file = state.files.get_mut(&id).expect("entry points at a file");
        file.last_path = path.clone();
        let len_bytes = file.live.len() as u64;
        Ok(MemStorage {
            fs: self.fs.clone(),
            file: id,
            generation: state.generation,
            read_only: mode == OpenMode::ReadOnly,
            len_bytes: Cell::new(len_bytes),
            path,
        })
    }
}

impl Directory for MemDirectory {
    type File = MemStorage;
    type Lock = MemLock;

    async fn open_file(&self, name: &str, mode: OpenMode) -> io::Result<MemStorage> {
        let result = self.open_file_now(name, mode);
        maybe_yield(&self.fs).await;
        result
    }

    async fn open_dir(&self, name: &str, create: bool) -> io::Result<Self> {
        let mut state = self.fs.state.borrow_mut();
        self.begin(&mut state, None, Some(name))?;
        let path = self.child_path(name);
        let dir = match state.dir(self.dir).live.get(name).copied() {
            Some(Entry::Dir(dir)) => dir,
            Some(Entry::File(_)) => {
                return Err(io::Error::new(
                    io::ErrorKind::NotADirectory,
                    format!("{path} is a file"),
                ))
            }
            None if create => {
                self.check_writable("create directory")?;
                let dir = state.new_id();
                state.dirs.insert(dir, DirNode::default());
                state
                    .dir_mut(self.dir)
                    .live
                    .insert(name.to_string(), Entry::Dir(dir));
                dir
            }
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{path}: not found"),
                ))
            }
        };
        Ok(MemDirectory {
            fs: self.fs.clone(),
            dir,
            path,
            read_only: self.read_only,
            generation: self.generation,
        })
    }

    async fn list(&self) -> io::Result<Vec<String>> {
        let names = {
            let mut state = self.fs.state.borrow_mut();
            self.begin(&mut state, Some(FaultOp::List), None)?;
            state.dir(self.dir).live.keys().cloned().collect()
        };
        maybe_yield(&self.fs).await;
        Ok(names)
    }

    async fn exists(&self, name: &str) -> io::Result<bool> {
        let mut state = self.fs.state.borrow_mut();
        self.begin(&mut state, None, Some(name))?;
        Ok(state.dir(self.dir).live.contains_key(name))
    }

    async fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.check_writable("rename")?;
        {
            let mut state = self.fs.state.borrow_mut();
            check_name(to)?;
            self.begin(&mut state, Some(FaultOp::Rename), Some(from))?;
            let from_path = self.child_path(from);
            let to_path = self.child_path(to);
            let dir = state.dir_mut(self.dir);
            let entry = dir.live.remove(from).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("rename {from_path} -> {to_path}: source not found"),
                )
            })?;
            dir.live.insert(to.to_string(), entry);
            if let Entry::File(id) = entry {
                if let Some(file) = state.files.get_mut(&id) {
                    file.last_path = to_path;
                }
            }
        }
        maybe_yield(&self.fs).await;
        Ok(())
    }

    async fn remove_file(&self, name: &str) -> io::Result<()> {
        self.check_writable("remove")?;
        {
            let mut state = self.fs.state.borrow_mut();
            self.begin(&mut state, Some(FaultOp::Remove), Some(name))?;
            let path = self.child_path(name);
            let dir = state.dir_mut(self.dir);
            match dir.live.get(name) {
                Some(Entry::File(_)) => {
                    dir.live.remove(name);
                }
                Some(Entry::Dir(_)) => {
                    return Err(io::Error::new(
                        io::ErrorKind::IsADirectory,
                        format!("{path} is a directory"),
                    ))
                }
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("{path}: not found"),
                    ))
                }
            }
        }
        maybe_yield(&self.fs).await;
        Ok(())
    }

    async fn sync(&self) -> io::Result<()> {
        self.check_writable("sync")?;
        {
            let mut state = self.fs.state.borrow_mut();
            self.begin(&mut state, Some(FaultOp::DirSync), None)?;
            let dir = state.dir_mut(self.dir);
            dir.durable = dir.live.clone();
            state.dir_sync_count += 1;
        }
        maybe_yield(&self.fs).await;
        Ok(())
    }

    async fn lock(&self, name: &str) -> io::Result<MemLock> {
        let exists = self.exists(name).await?;
        if !exists {
            if self.read_only {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!(
                        "{}: not found (read-only, cannot create)",
                        self.child_path(name)
                    ),
                ));
            }
            // Like flock on a created file: the lock file appears in the namespace.
            self.open_file_now(name, OpenMode::Create)?;
        }
        let mut state = self.fs.state.borrow_mut();
        self.begin(&mut state, None, Some(name))?;
        let key = (self.dir, name.to_string());
        if !state.locks.insert(key.clone()) {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!(
                    "{} is locked: held by another open of this directory",
                    self.child_path(name)
                ),
            ));
        }
        Ok(MemLock {
            fs: self.fs.clone(),
            key,
            generation: state.generation,
        })
    }

    fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn display_path(&self) -> String {
        self.path.clone()
    }
}

/// One file of a [`MemFs`], as opened by one handle.
pub struct MemStorage {
    fs: MemFs,
    file: FileId,
    generation: u64,
    read_only: bool,
    len_bytes: Cell<u64>,
    path: String,
}

impl std::fmt::Debug for MemStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemStorage")
            .field("path", &self.path)
            .field("len_bytes", &self.len_bytes.get())
            .field("read_only", &self.read_only)
            .finish()
    }
}

impl MemStorage {
    /// The path this handle was opened at.
    pub fn path(&self) -> &str {
        &self.path
    }

    fn begin(&self, state: &mut FsState, op: FaultOp) -> io::Result<Option<FaultKind>> {
        if state.generation != self.generation {
            return Err(stale_error(&self.path));
        }
        if self.read_only && matches!(op, FaultOp::Write | FaultOp::Truncate | FaultOp::Sync) {
            return Err(read_only_error(&self.path, &format!("{op:?}")));
        }
        Ok(state.fault(op, &self.path))
    }

    fn read_now<B: IoBufMut>(&self, offset_bytes: u64, buf: &mut B) -> io::Result<usize> {
        let mut state = self.fs.state.borrow_mut();
        if let Some(kind) = self.begin(&mut state, FaultOp::Read)? {
            return Err(io_error(kind, "read", &self.path));
        }
        let live = &state.files[&self.file].live;
        let start = (offset_bytes as usize).min(live.len());
        let dst = buf.as_uninit();
        let n = dst.len().min(live.len() - start);
        for (d, s) in dst[..n].iter_mut().zip(&live[start..start + n]) {
            d.write(*s);
        }
        // SAFETY: the first `n` bytes of the buffer were initialized just above, and `n` is at
        // most its capacity. `advance_to` mirrors compio's read (length = max(length, n)).
        unsafe { buf.advance_to(n) };
        Ok(n)
    }

    fn write_now(&self, offset_bytes: u64, data: &[u8]) -> io::Result<usize> {
        let mut state = self.fs.state.borrow_mut();
        let fault = self.begin(&mut state, FaultOp::Write)?;
        let data = match fault {
            None => data,
            Some(FaultKind::ShortWrite) if data.len() > 1 => &data[..data.len() / 2],
            Some(kind) => return Err(io_error(kind, "write", &self.path)),
        };
        let end_bytes = offset_bytes + data.len() as u64;
        state.check_budget(self.file, end_bytes, &self.path)?;
        let file = state.files.get_mut(&self.file).expect("open file exists");
        apply_write(&mut file.live, offset_bytes, data);
        file.pending.push(PendingOp::Write {
            offset_bytes,
            data: data.to_vec(),
        });
        self.len_bytes.set(self.len_bytes.get().max(end_bytes));
        Ok(data.len())
    }

    fn truncate_now(&self, len_bytes: u64) -> io::Result<()> {
        let mut state = self.fs.state.borrow_mut();
        if let Some(kind) = self.begin(&mut state, FaultOp::Truncate)? {
            return Err(io_error(kind, "truncate", &self.path));
        }
        state.check_budget(self.file, len_bytes, &self.path)?;
        let file = state.files.get_mut(&self.file).expect("open file exists");
        apply_truncate(&mut file.live, len_bytes);
        file.pending.push(PendingOp::Truncate { len_bytes });
        self.len_bytes.set(len_bytes);
        Ok(())
    }

    fn sync_now(&self) -> io::Result<()> {
        let mut state = self.fs.state.borrow_mut();
        if let Some(kind) = self.begin(&mut state, FaultOp::Sync)? {
            return Err(io_error(kind, "sync", &self.path));
        }
        let file = state.files.get_mut(&self.file).expect("open file exists");
        file.pending.clear();
        file.durable = file.live.clone();
        state.file_sync_count += 1;
        Ok(())
    }
}

impl Storage for MemStorage {
    async fn read_at<B: IoBufMut>(&self, offset_bytes: u64, mut buf: B) -> BufResult<usize, B> {
        let result = self.read_now(offset_bytes, &mut buf);
        maybe_yield(&self.fs).await;
        BufResult(result, buf)
    }

    async fn write_at<B: IoBuf>(&self, offset_bytes: u64, buf: B) -> BufResult<usize, B> {
        let result = self.write_now(offset_bytes, buf.as_init());
        maybe_yield(&self.fs).await;
        BufResult(result, buf)
    }

    async fn truncate(&self, len_bytes: u64) -> io::Result<()> {
        let result = self.truncate_now(len_bytes);
        maybe_yield(&self.fs).await;
        result
    }

    async fn sync(&self) -> io::Result<()> {
        let result = self.sync_now();
        maybe_yield(&self.fs).await;
        result
    }

    fn len(&self) -> u64 {
        self.len_bytes.get()
    }

    fn reserve_append(&self, len_bytes: u64) -> u64 {
        let offset_bytes = self.len_bytes.get();
        self.len_bytes.set(offset_bytes + len_bytes);
        offset_bytes
    }

    async fn write_all_at<B: IoBuf>(&self, offset_bytes: u64, buf: B) -> BufResult<(), B> {
        write_all_at_impl(self, offset_bytes, buf).await
    }

    async fn read_exact_at(&self, offset_bytes: u64, len_bytes: usize) -> io::Result<Vec<u8>> {
        read_exact_at_impl(self, offset_bytes, len_bytes).await
    }
}
