//! FileStorage: a compio file used by one core. (Stub: filled in by the storage work.)
#[derive(Debug, Clone, Default)]
pub struct FileOptions {
    pub preallocate: bool,
}
pub struct FileStorage {}
