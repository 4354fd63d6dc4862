//! The raft meta file `DIR/raft-meta`: the vote and the last purged log id.
//!
//! Neither fits the journal: the vote is not a log entry (and must survive a `truncate_after` of
//! the whole log), and the last purged log id carries a term the journal's snapshot watermark
//! (an op number) cannot hold. Both change rarely (elections, purges), so replacing a small file
//! atomically (temp + fsync + rename + directory fsync) costs nothing in the write
//! path, while keeping the vote durable before `save_vote` returns, as openraft requires.
//!
//! Format (little-endian): a 24-byte header then a JSON body.
//!
//! ```text
//! offset  size  field
//!      0     8  magic "KRAFTMTA"
//!      8     4  format version (1)
//!     12     4  body length in bytes
//!     16     4  crc32 of the body
//!     20     4  crc32 of bytes 0..20
//! ```

use keel_storage::{atomic_replace, Directory};
use serde::{Deserialize, Serialize};

use crate::durable::{le_u32, read_all};
use crate::error::RaftStoreError;
use openraft::alias::{LogIdOf, VoteOf};
use openraft::RaftTypeConfig;

/// Name of the meta file in the store's root directory.
pub const META_FILE: &str = "raft-meta";
const META_MAGIC: &[u8; 8] = b"KRAFTMTA";
const META_VERSION: u32 = 1;
const META_HEADER_BYTES: usize = 24;
/// The body holds two small values; anything bigger is damage, not data.
const MAX_META_BODY_BYTES: usize = 64 << 10;

/// What the meta file holds. The body stays JSON (any application's vote and log id types,
/// readable by the `keel` tool); it is written once per election or purge, never per entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound = "")]
pub(crate) struct Meta<C: RaftTypeConfig> {
    pub vote: Option<VoteOf<C>>,
    pub last_purged: Option<LogIdOf<C>>,
}

impl<C: RaftTypeConfig> Default for Meta<C> {
    fn default() -> Self {
        Self {
            vote: None,
            last_purged: None,
        }
    }
}

pub(crate) fn encode<C: RaftTypeConfig>(meta: &Meta<C>) -> Result<Vec<u8>, RaftStoreError> {
    let body = serde_json::to_vec(meta).map_err(|e| RaftStoreError::encode("raft meta", e))?;
    let mut out = Vec::with_capacity(META_HEADER_BYTES + body.len());
    out.extend_from_slice(META_MAGIC);
    out.extend_from_slice(&META_VERSION.to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    let header_crc = crc32fast::hash(&out[0..20]);
    out.extend_from_slice(&header_crc.to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

pub(crate) fn decode<C: RaftTypeConfig>(
    file: &str,
    bytes: &[u8],
) -> Result<Meta<C>, RaftStoreError> {
    let damaged = |reason: String| RaftStoreError::Damaged {
        file: file.to_string(),
        reason,
    };
    if bytes.len() < META_HEADER_BYTES {
        return Err(damaged(format!(
            "{} bytes, shorter than the {META_HEADER_BYTES}-byte header",
            bytes.len()
        )));
    }
    if &bytes[0..8] != META_MAGIC {
        return Err(damaged("bad magic".into()));
    }
    if le_u32(&bytes[20..24]) != crc32fast::hash(&bytes[0..20]) {
        return Err(damaged("header checksum mismatch".into()));
    }
    let version = le_u32(&bytes[8..12]);
    if version != META_VERSION {
        return Err(damaged(format!("unsupported format version {version}")));
    }
    let len = le_u32(&bytes[12..16]) as usize;
    if len > MAX_META_BODY_BYTES || bytes.len() != META_HEADER_BYTES + len {
        return Err(damaged(format!(
            "body length {len} does not match the file's {} bytes",
            bytes.len()
        )));
    }
    let body = &bytes[META_HEADER_BYTES..];
    if le_u32(&bytes[16..20]) != crc32fast::hash(body) {
        return Err(damaged("body checksum mismatch".into()));
    }
    serde_json::from_slice(body).map_err(|e| RaftStoreError::decode("raft meta", e))
}

/// Loads the meta file; the default (no vote, nothing purged) when there is none yet.
///
/// A damaged file is an error, not a reset: it is only ever replaced by an atomic rename, so
/// damage means the disk lost acknowledged bytes, and forgetting a vote could elect two leaders.
pub(crate) async fn load<C: RaftTypeConfig, D: Directory>(
    root: &D,
) -> Result<Meta<C>, RaftStoreError> {
    match read_all(root, META_FILE).await? {
        None => Ok(Meta::default()),
        Some(bytes) => decode(&format!("{}/{META_FILE}", root.display_path()), &bytes),
    }
}

/// Replaces the meta file atomically; durable on return.
pub(crate) async fn store<C: RaftTypeConfig, D: Directory>(
    root: &D,
    meta: &Meta<C>,
) -> Result<(), RaftStoreError> {
    Ok(atomic_replace(root, META_FILE, encode(meta)?).await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::typ::Vote;
    use crate::TypeConfig;

    #[test]
    fn round_trip_and_damage() {
        let meta = Meta::<TypeConfig> {
            vote: Some(Vote::new(3, 2)),
            last_purged: None,
        };
        let bytes = encode(&meta).unwrap();
        assert_eq!(decode::<TypeConfig>("m", &bytes).unwrap(), meta);
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert!(
                decode::<TypeConfig>("m", &bad).is_err(),
                "flip at byte {i} accepted"
            );
        }
        assert!(decode::<TypeConfig>("m", &bytes[..bytes.len() - 1]).is_err());
    }
}
