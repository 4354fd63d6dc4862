//! A keel-raft store's own files, read-only, for every tool: `raft-meta` (its header, documented
//! in raft/src/meta.rs: magic `KRAFTMTA`, version, body length, body crc32, header crc32 of bytes
//! 0..20; the JSON body is openraft's and not interpreted here) and `raft-snapshots/*.snap`
//! (keel's snapshot header; the payload is openraft's). The binary does not depend on keel-raft:
//! these checks read the bytes.

use std::path::Path;

use keel_engine::{decode_snapshot_file, parse_snapshot_file_name, SnapshotInfo};
use serde::Serialize;

use super::target::{RAFT_META_FILE, RAFT_SNAPSHOTS_DIR};
use super::CliError;

const META_MAGIC: &[u8; 8] = b"KRAFTMTA";
const META_HEADER_BYTES: usize = 24;
const META_VERSION: u32 = 1;

/// What the meta file's header says.
#[derive(Debug, Clone, Serialize)]
pub struct MetaInfo {
    pub file: String,
    pub len_bytes: u64,
    pub valid: bool,
    pub problem: Option<String>,
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// Why `bytes` are not a whole meta file, if they are not.
fn meta_problem(bytes: &[u8]) -> Option<String> {
    if bytes.len() < META_HEADER_BYTES {
        return Some(format!(
            "{} bytes, shorter than the 24-byte header",
            bytes.len()
        ));
    }
    if &bytes[0..8] != META_MAGIC {
        return Some("bad magic".into());
    }
    if le_u32(&bytes[20..24]) != crc32fast::hash(&bytes[0..20]) {
        return Some("header checksum mismatch".into());
    }
    let version = le_u32(&bytes[8..12]);
    if version != META_VERSION {
        return Some(format!(
            "format version {version}, this build reads {META_VERSION}"
        ));
    }
    let body_len = le_u32(&bytes[12..16]) as usize;
    if bytes.len() != META_HEADER_BYTES + body_len {
        return Some(format!(
            "body length {body_len} does not match the file's {} bytes",
            bytes.len()
        ));
    }
    (le_u32(&bytes[16..20]) != crc32fast::hash(&bytes[META_HEADER_BYTES..]))
        .then(|| "body checksum mismatch".to_string())
}

/// Checks `DIR/raft-meta`; `None` when there is none (a store that never voted).
pub fn check_meta(root: &Path) -> Result<Option<MetaInfo>, CliError> {
    let path = root.join(RAFT_META_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(CliError::io(format!("reading {}", path.display()), source)),
    };
    let problem = meta_problem(&bytes);
    Ok(Some(MetaInfo {
        file: path.display().to_string(),
        len_bytes: bytes.len() as u64,
        valid: problem.is_none(),
        problem,
    }))
}

/// Checks every `DIR/raft-snapshots/<20 digits>.snap` (header, op, length, payload crc32).
pub fn check_snapshots(root: &Path) -> Result<Vec<SnapshotInfo>, CliError> {
    let dir = root.join(RAFT_SNAPSHOTS_DIR);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(CliError::io(format!("listing {}", dir.display()), source)),
    };
    let mut infos = Vec::new();
    for entry in entries {
        let entry =
            entry.map_err(|source| CliError::io(format!("listing {}", dir.display()), source))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(op) = parse_snapshot_file_name(&name) else {
            continue;
        };
        let path = entry.path();
        let bytes = std::fs::read(&path)
            .map_err(|source| CliError::io(format!("reading {}", path.display()), source))?;
        let problem = decode_snapshot_file(op, &bytes).err();
        infos.push(SnapshotInfo {
            op,
            file: path.display().to_string(),
            len_bytes: bytes.len() as u64,
            valid: problem.is_none(),
            problem,
        });
    }
    infos.sort_by_key(|info| info.op);
    Ok(infos)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(body: &[u8]) -> Vec<u8> {
        let mut out = META_MAGIC.to_vec();
        out.extend_from_slice(&META_VERSION.to_le_bytes());
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
        let crc = crc32fast::hash(&out[0..20]);
        out.extend_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn a_whole_meta_file_passes_and_every_flip_fails() {
        let bytes = meta(br#"{"vote":null,"last_purged":null}"#);
        assert_eq!(meta_problem(&bytes), None);
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            assert!(meta_problem(&bad).is_some(), "byte {i}");
        }
    }
}
