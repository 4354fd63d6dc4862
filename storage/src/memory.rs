//! MemStorage: in-memory files with a crash model and fault injection. (Stub.)
pub struct MemFs {}
#[derive(Clone)]
pub struct MemDirectory {}
pub struct MemStorage {}
pub struct CrashReport {}
pub struct FaultConfig {}
pub enum FaultKind {}
pub enum FaultOp {}
