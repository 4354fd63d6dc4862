//! FsDirectory: the directory seam on the real file system.
//!
//! This module owns every namespace operation keel performs on disk: opening and creating files
//! and subdirectories, listing, renaming, removing, fsyncing a directory, and the `flock` that keeps
//! a second process out of a data directory. Upper layers must never call `std::fs` themselves.
//! It must never follow a name out of its directory (names are single path components), and never
//! mutate anything when opened read-only.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use compio::fs::OpenOptions;

use crate::file::{FileOptions, FileStorage};
use crate::{Directory, OpenMode, WriteMode};

/// One directory on the real file system.
#[derive(Debug, Clone)]
pub struct FsDirectory {
    path: PathBuf,
    read_only: bool,
    file_options: FileOptions,
}

/// An exclusive `flock` on a directory and on one file in it; released when dropped (the fds are
/// closed) or when the process dies.
///
/// The directory's flock is what excludes a second holder: it holds even when the lock file is
/// removed or replaced under a live holder (a second opener would otherwise create a new file and
/// lock that). The file's flock is kept so that a keel that locks only the file still conflicts.
#[derive(Debug)]
pub struct FsLock {
    /// Held only to keep the file's open file description, and with it its lock, alive. `None`
    /// when a read-only directory found no lock file. Declared first so it is released first:
    /// the reverse of the order the locks were taken in.
    _file: Option<fs::File>,
    /// Held only to keep the directory's open file description, and its lock, alive.
    _dir: fs::File,
    path: PathBuf,
}

impl FsLock {
    /// The lock file (which may be missing, for a read-only directory).
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// `flock(LOCK_EX | LOCK_NB)` on `file`; `WouldBlock` naming `lock_path` if someone holds it.
fn flock_exclusive(file: &fs::File, locked: &Path, lock_path: &Path) -> io::Result<()> {
    // SAFETY: the fd is valid for the duration of the call (owned by `file`); flock has no
    // memory-safety preconditions.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(());
    }
    let error = io::Error::last_os_error();
    if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
        return Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            format!(
                "{} is locked: {} is held by another process or another open of this directory",
                lock_path.display(),
                locked.display()
            ),
        ));
    }
    Err(with_path(error, locked))
}

/// fsync of a directory: makes its entries (creates, renames, removes) durable.
async fn fsync_dir(path: &Path) -> io::Result<()> {
    let dir = OpenOptions::new()
        .read(true)
        .open(path)
        .await
        .map_err(|error| with_path(error, path))?;
    dir.sync_all()
        .await
        .map_err(|error| with_path(error, path))?;
    dir.close().await
}

/// The directory holding `path`'s entry; `None` for a root.
fn parent_dir(path: &Path) -> Option<PathBuf> {
    let parent = path.parent()?;
    if parent.as_os_str().is_empty() {
        Some(PathBuf::from("."))
    } else {
        Some(parent.to_path_buf())
    }
}

/// Creates every missing directory of `path`, outermost first; returns the ones this call
/// created.
async fn create_missing_dirs(path: &Path) -> io::Result<Vec<PathBuf>> {
    let mut missing = Vec::new();
    for ancestor in path.ancestors() {
        if ancestor.as_os_str().is_empty() {
            break;
        }
        match compio::fs::metadata(ancestor).await {
            Err(error) if error.kind() == io::ErrorKind::NotFound => missing.push(ancestor),
            // Exists (or cannot be inspected: the create below reports that precisely).
            _ => break,
        }
    }
    let mut created = Vec::new();
    for dir in missing.into_iter().rev() {
        match compio::fs::create_dir(dir).await {
            Ok(()) => created.push(dir.to_path_buf()),
            // Another process got there first; it may not have synced, which the caller covers
            // by syncing `path` and its parent in any case.
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
            Err(error) => return Err(with_path(error, dir)),
        }
    }
    Ok(created)
}

/// Fsyncs the parent of every directory in `created`, and `path` and its parent: each new entry
/// is durable in the directory that holds it, and `path`'s own entries (and its entry, which a
/// crashed earlier process may have created without syncing) are too. Deepest first.
async fn sync_created_dirs(path: &Path, created: &[PathBuf]) -> io::Result<()> {
    let mut to_sync: BTreeSet<PathBuf> = created.iter().filter_map(|dir| parent_dir(dir)).collect();
    to_sync.insert(path.to_path_buf());
    to_sync.extend(parent_dir(path));
    let mut ordered: Vec<PathBuf> = to_sync.into_iter().collect();
    ordered.sort_by_key(|dir| std::cmp::Reverse(dir.components().count()));
    for dir in ordered {
        fsync_dir(&dir).await?;
    }
    tracing::debug!(path = %path.display(), created = created.len(), "directory created durably");
    Ok(())
}

/// Refuses names that would leave the directory or are not a single entry.
pub(crate) fn check_name(name: &str) -> io::Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid entry name {name:?}: must be one path component"),
        ));
    }
    Ok(())
}

/// How [`FsDirectory::open_with`] opens a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirAccess {
    /// Read-write, creating the directory and its parents when missing (durably: see
    /// [`FsDirectory::open_with`]).
    Create,
    /// Read-write; the directory must exist.
    Existing,
    /// Read-only; the directory must exist. Every mutation fails with `PermissionDenied`.
    ReadOnly,
}

impl FsDirectory {
    /// Opens the directory at `path` as `access` says.
    ///
    /// [`DirAccess::Create`] is durable: it fsyncs the parent of every directory it created, and
    /// always `path` itself and its parent, since a process that crashed earlier may have
    /// created them without syncing.
    pub async fn open_with(path: impl AsRef<Path>, access: DirAccess) -> io::Result<Self> {
        let path = path.as_ref().to_path_buf();
        let read_only = access == DirAccess::ReadOnly;
        let durable_create = access == DirAccess::Create;
        let created = if durable_create {
            create_missing_dirs(&path).await?
        } else {
            Vec::new()
        };
        let metadata = compio::fs::metadata(&path).await.map_err(|error| {
            io::Error::new(error.kind(), format!("{}: {error}", path.display()))
        })?;
        if !metadata.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("{} is not a directory", path.display()),
            ));
        }
        if durable_create {
            sync_created_dirs(&path, &created).await?;
        }
        Ok(Self {
            path,
            read_only,
            file_options: FileOptions::default(),
        })
    }

    /// The same directory, handing `options` to every file it opens from now on (and to the
    /// directories opened from it).
    pub fn with_file_options(mut self, options: FileOptions) -> Self {
        self.file_options = options;
        self
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn entry_path(&self, name: &str) -> io::Result<PathBuf> {
        check_name(name)?;
        Ok(self.path.join(name))
    }

    fn check_writable(&self, what: &str) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{}: {what} in a read-only directory", self.path.display()),
            ));
        }
        Ok(())
    }
}

impl FsDirectory {
    /// Opens a file per `mode`; `writes` adds `O_DSYNC` (see
    /// [`Directory::open_file_write_through`]) and a second, `O_DIRECT` descriptor for aligned
    /// writes (see [`Directory::open_file_direct`]).
    async fn open_file_with(
        &self,
        name: &str,
        mode: OpenMode,
        writes: WriteMode,
    ) -> io::Result<FileStorage> {
        let path = self.entry_path(name)?;
        let mut options = OpenOptions::new();
        options.read(true);
        match mode {
            OpenMode::ReadOnly => {}
            OpenMode::Existing => {
                options.write(true);
            }
            OpenMode::Create => {
                options.write(true).create(true);
            }
            OpenMode::CreateNew => {
                options.write(true).create_new(true);
            }
        }
        let read_only = mode == OpenMode::ReadOnly;
        let write_through = writes != WriteMode::Buffered && !read_only;
        if write_through {
            options.custom_flags(libc::O_DSYNC);
        }
        if !read_only {
            self.check_writable("open for writing")?;
        }
        let file = options
            .open(&path)
            .await
            .map_err(|error| with_path(error, &path))?;
        let len_bytes = file.metadata().await?.len();
        tracing::trace!(path = %path.display(), ?mode, len_bytes, write_through, "opened file");
        let storage = FileStorage::from_file(
            file,
            len_bytes,
            read_only,
            self.file_options.clone(),
            path.display().to_string(),
        );
        let direct = if writes == WriteMode::Direct && !read_only {
            open_direct(&path).await
        } else {
            None
        };
        Ok(storage.with_write_through(write_through, direct))
    }
}

/// A second descriptor of `path` for aligned writes, `O_DIRECT | O_DSYNC`; `None` (with a note in
/// the log) where the file system refuses `O_DIRECT`, so the handle stays plain write-through.
async fn open_direct(path: &Path) -> Option<compio::fs::File> {
    let mut options = OpenOptions::new();
    options
        .write(true)
        .custom_flags(libc::O_DSYNC | libc::O_DIRECT);
    match options.open(path).await {
        Ok(file) => Some(file),
        Err(error) => {
            tracing::debug!(path = %path.display(), %error, "O_DIRECT refused; writing through the page cache");
            None
        }
    }
}

/// Adds the path to an error so the message says where it happened.
fn with_path(error: io::Error, path: &Path) -> io::Error {
    io::Error::new(error.kind(), format!("{}: {error}", path.display()))
}

impl Directory for FsDirectory {
    type File = FileStorage;
    type Lock = FsLock;

    async fn open_file(&self, name: &str, mode: OpenMode) -> io::Result<FileStorage> {
        self.open_file_with(name, mode, WriteMode::Buffered).await
    }

    async fn open_file_write_through(&self, name: &str, mode: OpenMode) -> io::Result<FileStorage> {
        self.open_file_with(name, mode, WriteMode::WriteThrough)
            .await
    }

    async fn open_file_direct(&self, name: &str, mode: OpenMode) -> io::Result<FileStorage> {
        self.open_file_with(name, mode, WriteMode::Direct).await
    }

    async fn open_dir(&self, name: &str, create: bool) -> io::Result<Self> {
        let path = self.entry_path(name)?;
        if create && !self.read_only {
            match compio::fs::create_dir(&path).await {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
                Err(error) => return Err(with_path(error, &path)),
            }
        }
        let access = if self.read_only {
            DirAccess::ReadOnly
        } else {
            DirAccess::Existing
        };
        let dir = FsDirectory::open_with(&path, access).await?;
        Ok(dir.with_file_options(self.file_options.clone()))
    }

    async fn list(&self) -> io::Result<Vec<String>> {
        let path = self.path.clone();
        // Directory listing has no io_uring opcode; it runs on compio's blocking pool.
        compio::runtime::spawn_blocking(move || -> io::Result<Vec<String>> {
            let mut names = Vec::new();
            for entry in fs::read_dir(&path).map_err(|error| with_path(error, &path))? {
                let entry = entry?;
                match entry.file_name().into_string() {
                    Ok(name) => names.push(name),
                    Err(raw) => {
                        tracing::warn!(dir = %path.display(), ?raw, "skipping non-UTF-8 entry")
                    }
                }
            }
            names.sort();
            Ok(names)
        })
        .await
        .map_err(|_| io::Error::other("directory listing task panicked"))?
    }

    async fn exists(&self, name: &str) -> io::Result<bool> {
        let path = self.entry_path(name)?;
        match compio::fs::symlink_metadata(&path).await {
            Ok(_) => Ok(true),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(error) => Err(with_path(error, &path)),
        }
    }

    async fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.check_writable("rename")?;
        let from_path = self.entry_path(from)?;
        let to_path = self.entry_path(to)?;
        compio::fs::rename(&from_path, &to_path)
            .await
            .map_err(|error| {
                io::Error::new(
                    error.kind(),
                    format!(
                        "rename {} -> {}: {error}",
                        from_path.display(),
                        to_path.display()
                    ),
                )
            })
    }

    async fn remove_file(&self, name: &str) -> io::Result<()> {
        self.check_writable("remove")?;
        let path = self.entry_path(name)?;
        compio::fs::remove_file(&path)
            .await
            .map_err(|error| with_path(error, &path))
    }

    async fn sync(&self) -> io::Result<()> {
        self.check_writable("sync")?;
        fsync_dir(&self.path).await
    }

    async fn lock(&self, name: &str) -> io::Result<FsLock> {
        let path = self.entry_path(name)?;
        // The directory first: its lock holds whatever happens to the file `name`.
        let dir = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open(&self.path)
            .map_err(|error| with_path(error, &self.path))?;
        flock_exclusive(&dir, &self.path, &path)?;
        // A read-only directory may lock an existing file (to keep writers out while it reads)
        // but must not create one; without one, the directory's lock is the whole lock.
        let file = if self.read_only {
            match fs::OpenOptions::new().read(true).open(&path) {
                Ok(file) => Some(file),
                Err(error) if error.kind() == io::ErrorKind::NotFound => None,
                Err(error) => return Err(with_path(error, &path)),
            }
        } else {
            let file = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|error| with_path(error, &path))?;
            Some(file)
        };
        if let Some(file) = &file {
            flock_exclusive(file, &path, &path)?;
        }
        tracing::debug!(path = %path.display(), file_locked = file.is_some(), "lock taken");
        Ok(FsLock {
            _file: file,
            _dir: dir,
            path,
        })
    }

    fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn display_path(&self) -> String {
        self.path.display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parent_dir_of_a_relative_single_component_is_the_current_directory() {
        assert_eq!(parent_dir(Path::new("data")), Some(PathBuf::from(".")));
        assert_eq!(parent_dir(Path::new("a/b")), Some(PathBuf::from("a")));
        assert_eq!(parent_dir(Path::new("/a")), Some(PathBuf::from("/")));
        assert_eq!(parent_dir(Path::new("/")), None);
    }
}
