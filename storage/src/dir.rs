//! FsDirectory: the directory seam on the real file system. (Stub: filled in by the storage work.)
#[derive(Clone)]
pub struct FsDirectory {}
