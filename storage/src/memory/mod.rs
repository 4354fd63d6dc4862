//! MemStorage: an in-memory file system with a seeded crash model and fault injection.
//!
//! This module owns the simulator's idea of a disk and the [`MemFs`] handle to it: the shared
//! state, path resolution, and the hand-made damage a test applies directly (raw writes, cuts,
//! bit flips). Its submodules own the rest: `crash` (pending ops, syncs, power cuts, process
//! crashes), `faults` (what can be injected, and the counts of what was), `directory`
//! ([`MemDirectory`], [`MemLock`]) and `storage` ([`MemStorage`]).
//!
//! It must never be nondeterministic: every collection it iterates is ordered (`BTreeMap`), every
//! random choice comes from the seeded RNGs, and no choice depends on addresses or time. It must
//! never hold a `RefCell` borrow across an await.
//!
//! The model:
//! - `Storage::sync` on a file makes all its completed writes and truncates durable (whichever
//!   handle issued them), except writes the device dropped ([`FaultKind::LostWrite`]).
//! - A namespace change (create, rename, remove, creating a subdirectory) is durable only after
//!   `Directory::sync` of the directory that holds the entry.
//! - On a power cut ([`MemFs::crash`]), each unsynced write, in issue order, is kept, lost, or
//!   torn (a prefix of it, or a random subset of the 512-byte sectors it touches); a dropped write
//!   is always lost; each unsynced truncate is kept or lost; every directory reverts to its
//!   durable entries; files no durable entry reaches vanish; all locks are released; every handle
//!   opened before the crash becomes stale.
//! - On a process crash ([`MemFs::process_crash`]) the OS and its page cache survive: handles
//!   become stale and locks are released, but contents and namespace stay exactly as they were,
//!   durable or not, for a later power cut to decide.

mod crash;
mod directory;
mod faults;
mod storage;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::rc::Rc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::dir::check_name;
use crash::{apply_write, FileNode, PendingOp};

pub use crash::{CrashEvent, CrashReport, ProcessCrashReport, WriteOutcome};
pub use directory::{MemDirectory, MemLock};
pub use faults::{FaultConfig, FaultCounts, FaultKind, FaultOp, FaultRule, FaultTrigger};
pub use storage::MemStorage;

/// Sector size of the torn-write model: a torn write keeps some of the sectors it touches; a
/// misdirected write lands on a multiple of it.
pub const SECTOR_BYTES: u64 = 512;

type FileId = u64;
type DirId = u64;

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

struct FsState {
    seed: u64,
    /// Bumped by every crash (power cut or process); handles remember the one they were opened in.
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
    counts: FaultCounts,
    file_sync_count: u64,
    dir_sync_count: u64,
    yield_on_io: bool,
    /// What `Storage::cached` answers: reads look as if they went to the disk.
    cold_reads: bool,
}

const ROOT: DirId = 0;

fn stale_error(path: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        format!("{path}: stale handle (opened before a crash)"),
    )
}

fn not_found(path: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{path}: not found"))
}

impl FsState {
    fn new_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn total_live_bytes(&self) -> u64 {
        self.files.values().map(|f| f.live.len() as u64).sum()
    }

    /// Fails with ENOSPC if growing `file` to `new_len_bytes` would exceed the disk budget.
    fn check_budget(&mut self, file: FileId, new_len_bytes: u64, path: &str) -> io::Result<()> {
        if let Some(budget_bytes) = self.faults.disk_budget_bytes {
            let old_len_bytes = self.files[&file].live.len() as u64;
            if new_len_bytes > old_len_bytes
                && self.total_live_bytes() + (new_len_bytes - old_len_bytes) > budget_bytes
            {
                self.counts.disk_full += 1;
                return Err(faults::io_error(
                    FaultKind::NoSpace,
                    "write (disk budget)",
                    path,
                ));
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

    fn file_mut(&mut self, file: FileId) -> &mut FileNode {
        self.files.get_mut(&file).expect("file node exists")
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
            entry = *self
                .dir(dir)
                .live
                .get(part)
                .ok_or_else(|| not_found(&format!("mem:/{path}")))?;
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

    /// Resolves `path` to a file, creating it durably (in a directory that exists) if missing.
    fn resolve_or_create_durably(&mut self, path: &str) -> io::Result<FileId> {
        match self.resolve(path) {
            Ok(Entry::File(id)) => Ok(id),
            Ok(Entry::Dir(_)) => Err(io::Error::new(
                io::ErrorKind::IsADirectory,
                format!("mem:/{path} is a directory"),
            )),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
                check_name(name)?;
                let Entry::Dir(dir) = self.resolve(parent)? else {
                    return Err(io::Error::new(
                        io::ErrorKind::NotADirectory,
                        format!("mem:/{parent} is not a directory"),
                    ));
                };
                let id = self.new_id();
                self.files.insert(id, FileNode::new(format!("mem:/{path}")));
                let dir = self.dir_mut(dir);
                dir.live.insert(name.to_string(), Entry::File(id));
                dir.durable.insert(name.to_string(), Entry::File(id));
                Ok(id)
            }
            Err(error) => Err(error),
        }
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
                counts: FaultCounts::default(),
                file_sync_count: 0,
                dir_sync_count: 0,
                yield_on_io: true,
                cold_reads: false,
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
        MemDirectory::root(self.clone(), generation)
    }

    /// The root directory, read-only: every mutation fails with `PermissionDenied`.
    pub fn root_read_only(&self) -> MemDirectory {
        self.root().read_only()
    }

    /// Simulates a power cut (see the module docs) and reports what happened.
    pub fn crash(&self) -> CrashReport {
        let report = self.state.borrow_mut().crash();
        tracing::debug!(
            kept = report.writes_kept,
            lost = report.writes_lost,
            torn = report.writes_torn,
            reverted = report.entries_reverted,
            "simulated power cut"
        );
        report
    }

    /// Simulates the process dying while the OS and its page cache survive (`kill -9`, a panic
    /// that aborts): every file and directory handle opened before becomes stale and every lock
    /// is released, but live contents and the live namespace stay exactly as they are, and what
    /// was not durable stays not durable: a later [`MemFs::crash`] (the power cut) can still lose
    /// it. Reports what was left pending.
    pub fn process_crash(&self) -> ProcessCrashReport {
        let report = self.state.borrow_mut().process_crash();
        tracing::debug!(
            unsynced_writes = report.unsynced_writes,
            unsynced_truncates = report.unsynced_truncates,
            unsynced_entries = report.unsynced_entries,
            locks_released = report.locks_released,
            "simulated process crash"
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

    /// How many faults of each kind were injected since creation.
    pub fn fault_counts(&self) -> FaultCounts {
        self.state.borrow().counts
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
        let id = state.resolve_or_create_durably(path)?;
        let file = state.file_mut(id);
        apply_write(&mut file.durable, offset_bytes, data);
        apply_write(&mut file.live, offset_bytes, data);
        Ok(())
    }

    /// Cuts `path` to `len_bytes`, durably and bypassing faults (a hand-made torn file). Pending
    /// unsynced ops are dropped so that what reads see is exactly the cut file (bytes of a write
    /// the device dropped included: they are in what reads see).
    pub fn cut_raw(&self, path: &str, len_bytes: u64) -> io::Result<()> {
        let mut state = self.state.borrow_mut();
        let id = state.resolve_file(path)?;
        let file = state.file_mut(id);
        file.pending.clear();
        file.live.truncate(len_bytes as usize);
        file.durable = file.live.clone();
        Ok(())
    }

    /// Whether reads are to look as if they went to the disk: [`Storage::cached`] then answers
    /// `Some(false)` for every file (else `Some(true)`), so a reader that picks its read shape by
    /// where the bytes are takes its cold shape here.
    ///
    /// [`Storage::cached`]: crate::Storage::cached
    pub fn set_cold_reads(&self, cold: bool) {
        self.state.borrow_mut().cold_reads = cold;
    }

    /// Flips bit `bit` (0 = least significant) of the byte at `offset_bytes` of `path`'s durable
    /// data (media corruption). Reads see it too unless an unsynced op covers that byte.
    pub fn flip_bit(&self, path: &str, offset_bytes: u64, bit: u8) -> io::Result<()> {
        let mut state = self.state.borrow_mut();
        let id = state.resolve_file(path)?;
        let file = state.file_mut(id);
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
            PendingOp::Write {
                offset_bytes, data, ..
            } => {
                *offset_bytes <= offset as u64 && (offset as u64) < offset_bytes + data.len() as u64
            }
        });
        if !covered && offset < file.live.len() {
            file.live[offset] ^= mask;
        }
        state.counts.bit_flips += 1;
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

/// Yields once when the file system is set to (see [`MemFs::set_yield_on_io`]).
async fn maybe_yield(fs: &MemFs) {
    if fs.yield_on_io() {
        crate::yield_now().await;
    }
}
