//! manifest: `DIR/MANIFEST`, what an engine directory says about itself — format version, a
//! random directory id made at creation, the journal's slot count and segment size, the shard
//! index in a shard set, the keel version that wrote it, and the commit watermark of the last
//! clean close.
//!
//! Owns the file's text format and the rule "the directory's geometry wins over the caller's":
//! an open adopts the recorded slot count and segment size (a ring smaller than the one the log
//! was written with would lose ops, a false missing-ops verdict), and refuses, with an error
//! naming both values, a shard index or a configuration that cannot hold what the directory
//! holds. It must never rewrite a manifest it could not read (a refused open changes nothing), and
//! never write one anywhere but through `atomic_replace` (temp, fsync, rename, directory fsync).
//!
//! Format: UTF-8 lines `key=value`, in this order, the last one the crc32 of every byte before it:
//!
//! ```text
//! keel-manifest
//! format_version=1
//! directory_id=<32 hex digits>
//! slot_count=65536
//! segment_bytes=67108864
//! shard_index=3            (absent outside a shard set)
//! keel_version=0.1.0
//! closed_commit_op=1200    (the commit watermark of the last clean close; 0: none yet)
//! crc32=0x1234abcd
//! ```

use std::fmt;

use keel_storage::{Directory, OpenMode, Storage};

use crate::error::{EngineError, ManifestError};

/// The manifest's file name in an engine directory.
pub const MANIFEST_FILE: &str = "MANIFEST";
/// The manifest format this build writes and reads (a newer one is refused, never rewritten).
pub const MANIFEST_VERSION: u32 = 1;
const FIRST_LINE: &str = "keel-manifest";
/// A manifest is a few hundred bytes; anything this large is not one.
const MAX_MANIFEST_BYTES: u64 = 64 << 10;

/// A directory's identity: 16 random bytes made when the directory was created. Zero means
/// "none" (snapshots written before identities, or by stores without a manifest).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct DirectoryId(pub [u8; 16]);

impl DirectoryId {
    /// A new random id (never zero).
    pub fn random() -> Result<Self, EngineError> {
        let mut bytes = [0u8; 16];
        getrandom::getrandom(&mut bytes)
            .map_err(|e| EngineError::Config(format!("no randomness for a directory id: {e}")))?;
        bytes[0] |= 1;
        Ok(DirectoryId(bytes))
    }

    /// True for the zero id ("unknown").
    pub fn is_none(&self) -> bool {
        self.0 == [0u8; 16]
    }

    fn parse(text: &str) -> Option<Self> {
        if text.len() != 32 {
            return None;
        }
        let mut bytes = [0u8; 16];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(DirectoryId(bytes))
    }
}

impl fmt::Display for DirectoryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// What `DIR/MANIFEST` records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The manifest's format version (at most [`MANIFEST_VERSION`] to be read).
    pub format_version: u32,
    /// The directory's random id, given at creation; every snapshot carries it.
    pub directory_id: DirectoryId,
    /// The journal's slot count at creation (the slot rule depends on it).
    pub slot_count: u64,
    /// The journal's segment size at creation.
    pub segment_bytes: u64,
    /// The shard index in a shard set (`None`: not a shard).
    pub shard_index: Option<u64>,
    /// The keel version that wrote the manifest last.
    pub keel_version: String,
    /// The commit watermark the last clean close made durable (0: none yet): every op up to it
    /// was committed, whatever a later cut leaves in the journal.
    pub closed_commit_op: u64,
}

impl Manifest {
    /// A manifest for a new directory.
    pub fn new(
        slot_count: u64,
        segment_bytes: u64,
        shard_index: Option<u64>,
    ) -> Result<Self, EngineError> {
        Ok(Manifest {
            format_version: MANIFEST_VERSION,
            directory_id: DirectoryId::random()?,
            slot_count,
            segment_bytes,
            shard_index,
            keel_version: env!("CARGO_PKG_VERSION").to_string(),
            closed_commit_op: 0,
        })
    }
    /// The file's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut text = format!(
            "{FIRST_LINE}\nformat_version={}\ndirectory_id={}\nslot_count={}\nsegment_bytes={}\n",
            self.format_version, self.directory_id, self.slot_count, self.segment_bytes
        );
        if let Some(shard) = self.shard_index {
            text.push_str(&format!("shard_index={shard}\n"));
        }
        text.push_str(&format!(
            "keel_version={}\nclosed_commit_op={}\n",
            self.keel_version, self.closed_commit_op
        ));
        let crc = crc32fast::hash(text.as_bytes());
        text.push_str(&format!("crc32={crc:#010x}\n"));
        text.into_bytes()
    }

    /// Parses and checks the file's bytes (`file` names it in errors).
    pub fn decode(file: &str, bytes: &[u8]) -> Result<Self, ManifestError> {
        let damaged = |reason: String| ManifestError::Damaged {
            file: file.to_string(),
            reason,
        };
        let text = std::str::from_utf8(bytes).map_err(|_| damaged("not UTF-8".into()))?;
        let body_end = text
            .trim_end_matches('\n')
            .rfind('\n')
            .map(|i| i + 1)
            .ok_or_else(|| damaged("no checksum line".into()))?;
        let stored = text[body_end..]
            .trim_end()
            .strip_prefix("crc32=0x")
            .and_then(|hex| u32::from_str_radix(hex, 16).ok())
            .ok_or_else(|| damaged("the last line is not crc32=0x<8 hex digits>".into()))?;
        let computed = crc32fast::hash(&bytes[..body_end]);
        if stored != computed {
            return Err(damaged(format!(
                "checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
            )));
        }
        let mut lines = text[..body_end].lines();
        if lines.next() != Some(FIRST_LINE) {
            return Err(damaged(format!("the first line is not {FIRST_LINE}")));
        }
        let fields: Vec<(&str, &str)> = lines.filter_map(|line| line.split_once('=')).collect();
        let get = |key: &str| fields.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
        let number = |key: &'static str| -> Result<u64, ManifestError> {
            get(key)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| damaged(format!("{key} is missing or not a number")))
        };
        let format_version = number("format_version")? as u32;
        if format_version > MANIFEST_VERSION {
            return Err(ManifestError::NewerVersion {
                file: file.to_string(),
                version: format_version,
                supported: MANIFEST_VERSION,
            });
        }
        let directory_id = get("directory_id")
            .and_then(DirectoryId::parse)
            .ok_or_else(|| damaged("directory_id is missing or not 32 hex digits".into()))?;
        let shard_index = match get("shard_index") {
            None => None,
            Some(v) => Some(
                v.parse()
                    .map_err(|_| damaged("shard_index is not a number".into()))?,
            ),
        };
        Ok(Manifest {
            format_version,
            directory_id,
            slot_count: number("slot_count")?,
            segment_bytes: number("segment_bytes")?,
            shard_index,
            keel_version: get("keel_version").unwrap_or("unknown").to_string(),
            closed_commit_op: number("closed_commit_op")?,
        })
    }
}

fn path_of<D: Directory>(root: &D) -> String {
    format!("{}/{MANIFEST_FILE}", root.display_path())
}

/// Reads `root/MANIFEST` without changing anything; `None` when there is none.
pub async fn read_manifest<D: Directory>(root: &D) -> Result<Option<Manifest>, EngineError> {
    let path = path_of(root);
    let io = |e| EngineError::io("read manifest", path.clone(), e);
    if !root.exists(MANIFEST_FILE).await.map_err(io)? {
        return Ok(None);
    }
    let file = root
        .open_file(MANIFEST_FILE, OpenMode::ReadOnly)
        .await
        .map_err(io)?;
    if file.len() > MAX_MANIFEST_BYTES {
        return Err(ManifestError::Damaged {
            file: path,
            reason: format!("{} bytes, more than a manifest holds", file.len()),
        }
        .into());
    }
    let bytes = file
        .read_exact_at(0, file.len() as usize)
        .await
        .map_err(io)?;
    Ok(Some(Manifest::decode(&path, &bytes)?))
}

/// Replaces `root/MANIFEST` atomically and durably.
pub(crate) async fn write_manifest<D: Directory>(
    root: &D,
    manifest: &Manifest,
) -> Result<(), EngineError> {
    keel_storage::atomic_replace(root, MANIFEST_FILE, manifest.encode())
        .await
        .map_err(|e| EngineError::durable("write manifest", e))
}

/// Makes `config` agree with what the directory records: the slot count and segment size are
/// adopted (logged when they differ), the shard index must match. Read-only.
pub(crate) fn adopt(
    manifest: &Manifest,
    file: &str,
    config: &mut crate::EngineConfig,
) -> Result<(), ManifestError> {
    if let (Some(recorded), Some(configured)) = (manifest.shard_index, config.shard_index) {
        if recorded != configured {
            return Err(ManifestError::Mismatch {
                file: file.to_string(),
                field: "shard_index",
                recorded: recorded.to_string(),
                configured: configured.to_string(),
            });
        }
    }
    let journal = &mut config.journal;
    if journal.slot_count != manifest.slot_count || journal.segment_bytes != manifest.segment_bytes
    {
        tracing::info!(
            file,
            recorded_slot_count = manifest.slot_count,
            configured_slot_count = journal.slot_count,
            recorded_segment_bytes = manifest.segment_bytes,
            "adopting the directory's recorded geometry"
        );
    }
    // The margin scales with the ring: a quarter of it when the caller's margin no longer fits.
    if config.checkpoint_margin_ops > manifest.slot_count {
        config.checkpoint_margin_ops = manifest.slot_count / 4;
    }
    journal.slot_count = manifest.slot_count;
    journal.segment_bytes = manifest.segment_bytes;
    Ok(())
}

/// Reads the manifest (if any) and adopts it into `config`; for the read-only paths.
pub async fn adopt_manifest<D: Directory>(
    root: &D,
    config: &mut crate::EngineConfig,
) -> Result<Option<Manifest>, EngineError> {
    let manifest = read_manifest(root).await?;
    if let Some(manifest) = &manifest {
        adopt(manifest, &path_of(root), config)?;
        config.validate()?;
    }
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            format_version: 1,
            directory_id: DirectoryId([7u8; 16]),
            slot_count: 1 << 20,
            segment_bytes: 1 << 20,
            shard_index: Some(3),
            keel_version: "0.1.0".into(),
            closed_commit_op: 42,
        }
    }

    #[test]
    fn round_trips_and_detects_every_flip() {
        let manifest = sample();
        let bytes = manifest.encode();
        assert_eq!(Manifest::decode("m", &bytes).unwrap(), manifest);
        let mut none = manifest.clone();
        none.shard_index = None;
        assert_eq!(Manifest::decode("m", &none.encode()).unwrap(), none);
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x04;
            assert!(Manifest::decode("m", &bad).is_err(), "byte {i}");
        }
        assert!(Manifest::decode("m", &bytes[..bytes.len() / 2]).is_err());
    }

    #[test]
    fn a_newer_version_is_refused_not_damage() {
        let mut manifest = sample();
        manifest.format_version = MANIFEST_VERSION + 1;
        let err = Manifest::decode("m", &manifest.encode()).unwrap_err();
        assert!(
            matches!(err, ManifestError::NewerVersion { version, .. } if version == 2),
            "{err}"
        );
    }

    #[test]
    fn adoption_takes_the_geometry_and_checks_the_shard() {
        let manifest = sample();
        let mut config = crate::EngineConfig::default();
        adopt(&manifest, "m", &mut config).unwrap();
        assert_eq!(config.journal.slot_count, 1 << 20);
        assert_eq!(config.journal.segment_bytes, 1 << 20);
        config.shard_index = Some(2);
        let err = adopt(&manifest, "m", &mut config).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("shard_index 3") && text.contains("asks for 2"),
            "{text}"
        );
    }

    #[test]
    fn ids_are_random_and_never_zero() {
        let a = DirectoryId::random().unwrap();
        let b = DirectoryId::random().unwrap();
        assert!(a != b && !a.is_none());
        assert_eq!(DirectoryId::parse(&a.to_string()), Some(a));
    }
}
