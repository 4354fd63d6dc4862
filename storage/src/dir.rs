//! FsDirectory: the directory seam on the real file system.
//!
//! This module owns every namespace operation keel performs on disk: opening and creating files
//! and subdirectories, listing, renaming, removing, fsyncing a directory, and the `flock` that keeps
//! a second process out of a data directory. Upper layers must never call `std::fs` themselves.
//! It must never follow a name out of its directory (names are single path components), and never
//! mutate anything when opened read-only.

use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use compio::fs::OpenOptions;

use crate::file::{FileOptions, FileStorage};
use crate::{Directory, OpenMode};

/// One directory on the real file system.
#[derive(Debug, Clone)]
pub struct FsDirectory {
    path: PathBuf,
    read_only: bool,
    file_options: FileOptions,
}

/// An exclusive `flock` on one file; released when dropped (the fd is closed) or when the
/// process dies.
#[derive(Debug)]
pub struct FsLock {
    /// Held only to keep the open file description, and with it the lock, alive.
    _file: fs::File,
    path: PathBuf,
}

impl FsLock {
    /// The locked file.
    pub fn path(&self) -> &Path {
        &self.path
    }
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

impl FsDirectory {
    /// Opens the directory at `path`, creating it (and its parents) when `create` is set.
    /// A read-only directory refuses every mutation with `PermissionDenied`.
    pub async fn open(path: impl AsRef<Path>, create: bool, read_only: bool) -> io::Result<Self> {
        let path = path.as_ref().to_path_buf();
        if create && !read_only {
            compio::fs::create_dir_all(&path).await?;
        }
        let metadata = compio::fs::metadata(&path).await.map_err(|error| {
            io::Error::new(error.kind(), format!("{}: {error}", path.display()))
        })?;
        if !metadata.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("{} is not a directory", path.display()),
            ));
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

/// Adds the path to an error so the message says where it happened.
fn with_path(error: io::Error, path: &Path) -> io::Error {
    io::Error::new(error.kind(), format!("{}: {error}", path.display()))
}

impl Directory for FsDirectory {
    type File = FileStorage;
    type Lock = FsLock;

    async fn open_file(&self, name: &str, mode: OpenMode) -> io::Result<FileStorage> {
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
        if !read_only {
            self.check_writable("open for writing")?;
        }
        let file = options
            .open(&path)
            .await
            .map_err(|error| with_path(error, &path))?;
        let len_bytes = file.metadata().await?.len();
        tracing::trace!(path = %path.display(), ?mode, len_bytes, "opened file");
        Ok(FileStorage::from_file(
            file,
            len_bytes,
            read_only,
            self.file_options.clone(),
            path.display().to_string(),
        ))
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
        let dir = FsDirectory::open(&path, false, self.read_only).await?;
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
        // fsync on a directory fd makes its entries (creates, renames, removes) durable.
        let dir = OpenOptions::new()
            .read(true)
            .open(&self.path)
            .await
            .map_err(|error| with_path(error, &self.path))?;
        dir.sync_all()
            .await
            .map_err(|error| with_path(error, &self.path))?;
        dir.close().await
    }

    async fn lock(&self, name: &str) -> io::Result<FsLock> {
        let path = self.entry_path(name)?;
        // A read-only directory may lock an existing file (to keep writers out while it reads)
        // but must not create one.
        let file = if self.read_only {
            fs::OpenOptions::new().read(true).open(&path)
        } else {
            fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
        }
        .map_err(|error| with_path(error, &path))?;
        // SAFETY: the fd is valid for the duration of the call (owned by `file`); flock has no
        // memory-safety preconditions.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let error = io::Error::last_os_error();
            if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!(
                        "{} is locked: held by another process or another open of this directory",
                        path.display()
                    ),
                ));
            }
            return Err(with_path(error, &path));
        }
        tracing::debug!(path = %path.display(), "lock taken");
        Ok(FsLock { _file: file, path })
    }

    fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn display_path(&self) -> String {
        self.path.display().to_string()
    }
}
