//! [`MemDirectory`] and [`MemLock`]: the [`Directory`] seam over a [`MemFs`].
//!
//! This module owns the namespace operations of the simulator (open, create, list, rename,
//! remove, directory sync) and its locks, which key on (directory, name) and so hold whatever
//! happens to the lock file. It must never change the durable namespace except in
//! `Directory::sync`, never act through a handle from before a crash, and never mutate anything
//! through a read-only view.

use std::cell::Cell;
use std::io;

use super::{
    maybe_yield, not_found, stale_error, DirId, DirNode, Entry, FileNode, FsState, MemFs,
    MemStorage, ROOT,
};
use crate::dir::check_name;
use crate::{Directory, FaultOp, OpenMode, WriteMode};

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

/// An in-memory exclusive lock; released on drop or by a crash (power cut or process crash).
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

fn is_a_directory(path: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::IsADirectory,
        format!("{path} is a directory"),
    )
}

impl MemDirectory {
    /// The root of `fs`, read-write, valid in crash generation `generation`.
    pub(super) fn root(fs: MemFs, generation: u64) -> Self {
        Self {
            fs,
            dir: ROOT,
            path: "mem:".to_string(),
            read_only: false,
            generation,
        }
    }

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
            if let Some(error) = state.fault_failure(op, &path) {
                return Err(error);
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

    fn open_file_now(
        &self,
        name: &str,
        mode: OpenMode,
        writes: WriteMode,
    ) -> io::Result<MemStorage> {
        if mode != OpenMode::ReadOnly {
            self.check_writable("open for writing")?;
        }
        let mut state = self.fs.state.borrow_mut();
        self.begin(&mut state, Some(FaultOp::Open), Some(name))?;
        let path = self.child_path(name);
        let existing = state.dir(self.dir).live.get(name).copied();
        let id = match (existing, mode) {
            (Some(Entry::Dir(_)), _) => return Err(is_a_directory(&path)),
            (Some(Entry::File(_)), OpenMode::CreateNew) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{path} already exists"),
                ))
            }
            (Some(Entry::File(id)), _) => id,
            (None, OpenMode::ReadOnly | OpenMode::Existing) => return Err(not_found(&path)),
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
        let file = state.file_mut(id);
        file.last_path = path.clone();
        let len_bytes = file.live.len() as u64;
        Ok(MemStorage {
            fs: self.fs.clone(),
            file: id,
            generation: state.generation,
            read_only: mode == OpenMode::ReadOnly,
            write_through: writes != WriteMode::Buffered && mode != OpenMode::ReadOnly,
            direct: writes == WriteMode::Direct && mode != OpenMode::ReadOnly,
            len_bytes: Cell::new(len_bytes),
            path,
        })
    }

    fn open_dir_now(&self, name: &str, create: bool) -> io::Result<Self> {
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
            None => return Err(not_found(&path)),
        };
        Ok(MemDirectory {
            fs: self.fs.clone(),
            dir,
            path,
            read_only: self.read_only,
            generation: self.generation,
        })
    }

    fn rename_now(&self, from: &str, to: &str) -> io::Result<()> {
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
        Ok(())
    }

    fn remove_file_now(&self, name: &str) -> io::Result<()> {
        let mut state = self.fs.state.borrow_mut();
        self.begin(&mut state, Some(FaultOp::Remove), Some(name))?;
        let path = self.child_path(name);
        let dir = state.dir_mut(self.dir);
        match dir.live.get(name) {
            Some(Entry::File(_)) => {
                dir.live.remove(name);
                Ok(())
            }
            Some(Entry::Dir(_)) => Err(is_a_directory(&path)),
            None => Err(not_found(&path)),
        }
    }

    fn lock_now(&self, name: &str) -> io::Result<MemLock> {
        let mut state = self.fs.state.borrow_mut();
        self.begin(&mut state, None, Some(name))?;
        // Keyed on the name, not the file: removing or replacing the lock file while a holder
        // lives does not release the lock (as the directory flock of `FsDirectory` does not).
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
}

impl Directory for MemDirectory {
    type File = MemStorage;
    type Lock = MemLock;

    async fn open_file(&self, name: &str, mode: OpenMode) -> io::Result<MemStorage> {
        let result = self.open_file_now(name, mode, WriteMode::Buffered);
        maybe_yield(&self.fs).await;
        result
    }

    async fn open_file_write_through(&self, name: &str, mode: OpenMode) -> io::Result<MemStorage> {
        let result = self.open_file_now(name, mode, WriteMode::WriteThrough);
        maybe_yield(&self.fs).await;
        result
    }

    async fn open_file_direct(&self, name: &str, mode: OpenMode) -> io::Result<MemStorage> {
        let result = self.open_file_now(name, mode, WriteMode::Direct);
        maybe_yield(&self.fs).await;
        result
    }

    async fn open_dir(&self, name: &str, create: bool) -> io::Result<Self> {
        self.open_dir_now(name, create)
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
        self.rename_now(from, to)?;
        maybe_yield(&self.fs).await;
        Ok(())
    }

    async fn remove_file(&self, name: &str) -> io::Result<()> {
        self.check_writable("remove")?;
        self.remove_file_now(name)?;
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
        // Like `FsDirectory`: a writable directory creates the lock file (it appears in the
        // namespace); a read-only one never creates it and, when it is missing, still takes the
        // lock (there, the directory's flock alone).
        if !exists && !self.read_only {
            self.open_file_now(name, OpenMode::Create, WriteMode::Buffered)?;
        }
        self.lock_now(name)
    }

    fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn display_path(&self) -> String {
        self.path.clone()
    }
}
