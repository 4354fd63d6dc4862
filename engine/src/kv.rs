//! [`KvStateMachine`]: an ordered map of bytes to bytes with set/delete commands, used by the
//! tests, the simulator and `keel bench`.
//!
//! Command encoding (little-endian), compact because the bench measures journal throughput and a
//! fat encoding would measure the encoder:
//!
//! ```text
//! set:    0x01  key_len:u32  key  value_len:u32  value
//! delete: 0x02  key_len:u32  key
//! ```
//!
//! Snapshot encoding, deterministic because the map is ordered:
//!
//! ```text
//! magic "KVS1"  count:u64  { key_len:u32 key value_len:u32 value } * count
//! ```

use std::ops::Bound;

use bytes::Bytes;
use imbl::OrdMap;

use crate::state_machine::{ApplyError, RestoreError, SnapshotSource, StateMachine};

/// Largest key a command may carry.
pub const MAX_KEY_BYTES: usize = 64 << 10;
/// Largest value a command may carry.
pub const MAX_VALUE_BYTES: usize = 1 << 20;

const TAG_SET: u8 = 1;
const TAG_DELETE: u8 = 2;
const SNAPSHOT_MAGIC: &[u8; 4] = b"KVS1";

/// One key-value command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvCommand {
    /// Sets `key` to `value`.
    Set {
        /// At most [`MAX_KEY_BYTES`].
        key: Vec<u8>,
        /// At most [`MAX_VALUE_BYTES`].
        value: Vec<u8>,
    },
    /// Removes `key` (a missing key is no error).
    Delete {
        /// At most [`MAX_KEY_BYTES`].
        key: Vec<u8>,
    },
}

/// A command could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KvCodecError {
    /// A key above [`MAX_KEY_BYTES`].
    #[error("key of {len_bytes} bytes exceeds {MAX_KEY_BYTES}")]
    KeyTooLarge {
        /// The key's length.
        len_bytes: usize,
    },
    /// A value above [`MAX_VALUE_BYTES`].
    #[error("value of {len_bytes} bytes exceeds {MAX_VALUE_BYTES}")]
    ValueTooLarge {
        /// The value's length.
        len_bytes: usize,
    },
    /// The first byte names no command.
    #[error("unknown command tag {0:#04x}")]
    UnknownTag(u8),
    /// The bytes end inside a field.
    #[error("command truncated: needed {needed_bytes} bytes at offset {offset_bytes}")]
    Truncated {
        /// Where the field starts.
        offset_bytes: usize,
        /// Bytes the field needs.
        needed_bytes: usize,
    },
    /// Bytes left after a whole command (holds their count).
    #[error("{0} trailing bytes after the command")]
    Trailing(usize),
    /// No bytes at all.
    #[error("empty command")]
    Empty,
}

fn check_sizes(key: &[u8], value: Option<&[u8]>) -> Result<(), KvCodecError> {
    if key.len() > MAX_KEY_BYTES {
        return Err(KvCodecError::KeyTooLarge {
            len_bytes: key.len(),
        });
    }
    if let Some(value) = value {
        if value.len() > MAX_VALUE_BYTES {
            return Err(KvCodecError::ValueTooLarge {
                len_bytes: value.len(),
            });
        }
    }
    Ok(())
}

/// Appends the encoding of `set key value` to `out` (the bench reuses one buffer).
pub fn encode_set(key: &[u8], value: &[u8], out: &mut Vec<u8>) -> Result<(), KvCodecError> {
    check_sizes(key, Some(value))?;
    out.reserve(1 + 4 + key.len() + 4 + value.len());
    out.push(TAG_SET);
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    out.extend_from_slice(value);
    Ok(())
}

/// Appends the encoding of `delete key` to `out`.
pub fn encode_delete(key: &[u8], out: &mut Vec<u8>) -> Result<(), KvCodecError> {
    check_sizes(key, None)?;
    out.reserve(1 + 4 + key.len());
    out.push(TAG_DELETE);
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(key);
    Ok(())
}

/// A bounds-checked reader over a byte slice; every read names what was missing.
struct Cursor<'a> {
    bytes: &'a [u8],
    offset_bytes: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, len_bytes: usize) -> Result<&'a [u8], KvCodecError> {
        let end = self
            .offset_bytes
            .checked_add(len_bytes)
            .filter(|end| *end <= self.bytes.len())
            .ok_or(KvCodecError::Truncated {
                offset_bytes: self.offset_bytes,
                needed_bytes: len_bytes,
            })?;
        let out = &self.bytes[self.offset_bytes..end];
        self.offset_bytes = end;
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32, KvCodecError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, KvCodecError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    /// A length-prefixed field whose length is checked against `max_bytes` before slicing.
    fn field(
        &mut self,
        max_bytes: usize,
        too_large: fn(usize) -> KvCodecError,
    ) -> Result<&'a [u8], KvCodecError> {
        let len_bytes = self.u32()? as usize;
        if len_bytes > max_bytes {
            return Err(too_large(len_bytes));
        }
        self.take(len_bytes)
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.offset_bytes
    }
}

fn key_too_large(len_bytes: usize) -> KvCodecError {
    KvCodecError::KeyTooLarge { len_bytes }
}

fn value_too_large(len_bytes: usize) -> KvCodecError {
    KvCodecError::ValueTooLarge { len_bytes }
}

/// A decoded command borrowing from its bytes (apply does not copy until it inserts).
enum KvCommandRef<'a> {
    Set { key: &'a [u8], value: &'a [u8] },
    Delete { key: &'a [u8] },
}

fn decode_ref(bytes: &[u8]) -> Result<KvCommandRef<'_>, KvCodecError> {
    let mut cursor = Cursor {
        bytes,
        offset_bytes: 0,
    };
    let tag = *cursor
        .take(1)
        .map_err(|_| KvCodecError::Empty)?
        .first()
        .ok_or(KvCodecError::Empty)?;
    let command = match tag {
        TAG_SET => {
            let key = cursor.field(MAX_KEY_BYTES, key_too_large)?;
            let value = cursor.field(MAX_VALUE_BYTES, value_too_large)?;
            KvCommandRef::Set { key, value }
        }
        TAG_DELETE => {
            let key = cursor.field(MAX_KEY_BYTES, key_too_large)?;
            KvCommandRef::Delete { key }
        }
        other => return Err(KvCodecError::UnknownTag(other)),
    };
    if cursor.remaining() != 0 {
        return Err(KvCodecError::Trailing(cursor.remaining()));
    }
    Ok(command)
}

impl KvCommand {
    /// The command's bytes, as an op payload.
    pub fn encode(&self) -> Result<Vec<u8>, KvCodecError> {
        let mut out = Vec::new();
        match self {
            KvCommand::Set { key, value } => encode_set(key, value, &mut out)?,
            KvCommand::Delete { key } => encode_delete(key, &mut out)?,
        }
        Ok(out)
    }

    /// Parses a command; never panics on arbitrary bytes.
    pub fn decode(bytes: &[u8]) -> Result<KvCommand, KvCodecError> {
        Ok(match decode_ref(bytes)? {
            KvCommandRef::Set { key, value } => KvCommand::Set {
                key: key.to_vec(),
                value: value.to_vec(),
            },
            KvCommandRef::Delete { key } => KvCommand::Delete { key: key.to_vec() },
        })
    }
}

/// An ordered map of bytes to bytes.
///
/// A persistent map (`imbl::OrdMap`, keys and values as shared `Bytes`): cloning it is O(1) and
/// later changes copy only the nodes they touch, so a checkpoint serializes a frozen copy piece
/// by piece ([`StateMachine::snapshot_source`]) while commits keep applying.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KvStateMachine {
    map: OrdMap<Bytes, Bytes>,
    /// Sum of key and value lengths, for stats and snapshot sizing.
    data_bytes: u64,
}

impl KvStateMachine {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.map.get(key).map(|v| &v[..])
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Bytes of keys and values held.
    pub fn data_bytes(&self) -> u64 {
        self.data_bytes
    }

    /// Every `(key, value)`, ascending by key.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.map.iter().map(|(k, v)| (&k[..], &v[..]))
    }

    /// A 64-bit digest of the whole state (FNV-1a over the snapshot encoding): equal states give
    /// equal digests, so tests and `keel bench` compare states without keeping two copies.
    pub fn digest(&self) -> u64 {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        let mut feed = |bytes: &[u8]| {
            for b in bytes {
                hash ^= u64::from(*b);
                hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
            }
        };
        feed(&(self.map.len() as u64).to_le_bytes());
        for (k, v) in &self.map {
            feed(&(k.len() as u32).to_le_bytes());
            feed(k);
            feed(&(v.len() as u32).to_le_bytes());
            feed(v);
        }
        hash
    }

    /// Applies a command directly (the simulator's model uses this too).
    pub fn apply_command(&mut self, command: &KvCommand) {
        match command {
            KvCommand::Set { key, value } => self.set(key, value),
            KvCommand::Delete { key } => self.delete(key),
        }
    }

    fn set(&mut self, key: &[u8], value: &[u8]) {
        let value = Bytes::copy_from_slice(value);
        match self.map.get_mut(key) {
            Some(old) => {
                self.data_bytes = self.data_bytes - old.len() as u64 + value.len() as u64;
                *old = value;
            }
            None => {
                self.data_bytes += (key.len() + value.len()) as u64;
                self.map.insert(Bytes::copy_from_slice(key), value);
            }
        }
    }

    fn delete(&mut self, key: &[u8]) {
        if let Some(old) = self.map.remove(key) {
            self.data_bytes -= (key.len() + old.len()) as u64;
        }
    }
}

impl StateMachine for KvStateMachine {
    fn apply(&mut self, op: u64, command: &[u8]) -> Result<(), ApplyError> {
        match decode_ref(command).map_err(|e| ApplyError {
            op,
            reason: e.to_string(),
        })? {
            KvCommandRef::Set { key, value } => self.set(key, value),
            KvCommandRef::Delete { key } => self.delete(key),
        }
        Ok(())
    }

    fn snapshot(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(12 + self.data_bytes as usize + 8 * self.map.len());
        let mut source = self.frozen();
        while source.write_piece(usize::MAX, &mut out) {}
        out
    }

    fn snapshot_source(&self) -> Box<dyn SnapshotSource> {
        Box::new(self.frozen())
    }

    fn restore(&mut self, bytes: &[u8]) -> Result<(), RestoreError> {
        let fail = |e: KvCodecError| RestoreError {
            reason: e.to_string(),
        };
        let mut cursor = Cursor {
            bytes,
            offset_bytes: 0,
        };
        if cursor.take(4).map_err(fail)? != SNAPSHOT_MAGIC {
            return Err(RestoreError {
                reason: "bad key-value snapshot magic".into(),
            });
        }
        let count = cursor.u64().map_err(fail)?;
        let mut restored = KvStateMachine::new();
        let mut previous: Option<&[u8]> = None;
        for _ in 0..count {
            let key = cursor.field(MAX_KEY_BYTES, key_too_large).map_err(fail)?;
            let value = cursor
                .field(MAX_VALUE_BYTES, value_too_large)
                .map_err(fail)?;
            // Strictly ascending keys: the encoding is canonical, so a duplicate or an out-of-order
            // key means the bytes were not written by `snapshot()`.
            if previous.is_some_and(|p| p >= key) {
                return Err(RestoreError {
                    reason: "keys not strictly ascending".into(),
                });
            }
            previous = Some(key);
            restored.set(key, value);
        }
        if cursor.remaining() != 0 {
            return Err(fail(KvCodecError::Trailing(cursor.remaining())));
        }
        *self = restored;
        Ok(())
    }
}

impl KvStateMachine {
    /// An O(1) frozen copy of the map, serialized lazily.
    fn frozen(&self) -> KvSnapshot {
        KvSnapshot {
            map: self.map.clone(),
            after: None,
            header_written: false,
        }
    }
}

/// A frozen copy of the map being serialized in key order (see the module docs' encoding).
struct KvSnapshot {
    map: OrdMap<Bytes, Bytes>,
    /// The last key written; the next piece starts after it.
    after: Option<Bytes>,
    header_written: bool,
}

impl SnapshotSource for KvSnapshot {
    fn write_piece(&mut self, max_bytes: usize, out: &mut Vec<u8>) -> bool {
        let start = out.len();
        if !self.header_written {
            out.extend_from_slice(SNAPSHOT_MAGIC);
            out.extend_from_slice(&(self.map.len() as u64).to_le_bytes());
            self.header_written = true;
        }
        let from = match &self.after {
            Some(key) => Bound::Excluded(&key[..]),
            None => Bound::Unbounded,
        };
        let mut items = self
            .map
            .range::<_, [u8]>((from, Bound::Unbounded))
            .peekable();
        let mut last = None;
        // At least one item per call, so every call makes progress.
        while let Some((k, v)) = items.next_if(|_| last.is_none() || out.len() - start < max_bytes)
        {
            out.extend_from_slice(&(k.len() as u32).to_le_bytes());
            out.extend_from_slice(k);
            out.extend_from_slice(&(v.len() as u32).to_le_bytes());
            out.extend_from_slice(v);
            last = Some(k.clone());
        }
        let more = items.peek().is_some();
        drop(items);
        if last.is_some() {
            self.after = last;
        }
        more
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn set_and_delete_apply() {
        let mut kv = KvStateMachine::new();
        let mut buf = Vec::new();
        encode_set(b"a", b"1", &mut buf).unwrap();
        kv.apply(1, &buf).unwrap();
        assert_eq!(kv.get(b"a"), Some(&b"1"[..]));
        buf.clear();
        encode_delete(b"a", &mut buf).unwrap();
        kv.apply(2, &buf).unwrap();
        assert_eq!(kv.get(b"a"), None);
        assert_eq!(kv.data_bytes(), 0);
    }

    #[test]
    fn malformed_command_is_rejected_without_change() {
        let mut kv = KvStateMachine::new();
        kv.apply(
            1,
            &KvCommand::Set {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
            }
            .encode()
            .unwrap(),
        )
        .unwrap();
        let before = kv.clone();
        for bad in [
            &[][..],
            &[9],
            &[1, 5, 0, 0, 0, b'a'],
            &[2, 1, 0, 0, 0, b'k', 0],
        ] {
            assert!(kv.apply(2, bad).is_err(), "{bad:?}");
            assert_eq!(kv, before);
        }
    }

    #[test]
    fn oversized_fields_are_refused() {
        let mut out = Vec::new();
        assert!(encode_set(&vec![0; MAX_KEY_BYTES + 1], b"", &mut out).is_err());
        assert!(encode_set(b"k", &vec![0; MAX_VALUE_BYTES + 1], &mut out).is_err());
        // A length field claiming more than the limit is refused before any allocation.
        let mut bytes = vec![TAG_SET];
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            KvCommand::decode(&bytes),
            Err(KvCodecError::KeyTooLarge {
                len_bytes: u32::MAX as usize
            })
        );
    }

    #[test]
    fn restore_rejects_non_canonical_snapshot() {
        let mut kv = KvStateMachine::new();
        let mut bytes = SNAPSHOT_MAGIC.to_vec();
        bytes.extend_from_slice(&2u64.to_le_bytes());
        for _ in 0..2 {
            bytes.extend_from_slice(&1u32.to_le_bytes());
            bytes.push(b'k');
            bytes.extend_from_slice(&0u32.to_le_bytes());
        }
        assert!(kv.restore(&bytes).is_err());
        assert!(kv.is_empty());
    }

    fn command() -> impl Strategy<Value = KvCommand> {
        let key = proptest::collection::vec(0u8..4, 0..3);
        let value = proptest::collection::vec(any::<u8>(), 0..8);
        prop_oneof![
            (key.clone(), value).prop_map(|(key, value)| KvCommand::Set { key, value }),
            key.prop_map(|key| KvCommand::Delete { key }),
        ]
    }

    proptest! {
        #[test]
        fn codec_round_trips(command in command()) {
            let bytes = command.encode().unwrap();
            prop_assert_eq!(KvCommand::decode(&bytes).unwrap(), command);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = KvCommand::decode(&bytes);
            let mut kv = KvStateMachine::new();
            let _ = kv.restore(&bytes);
        }

        #[test]
        fn snapshot_restore_round_trips(commands in proptest::collection::vec(command(), 0..40)) {
            let mut kv = KvStateMachine::new();
            for (i, c) in commands.iter().enumerate() {
                kv.apply(i as u64 + 1, &c.encode().unwrap()).unwrap();
            }
            let mut restored = KvStateMachine::new();
            restored.restore(&kv.snapshot()).unwrap();
            prop_assert_eq!(restored.digest(), kv.digest());
            prop_assert_eq!(&restored, &kv);
            // Deterministic: equal states encode to equal bytes.
            prop_assert_eq!(restored.snapshot(), kv.snapshot());
        }

        /// A snapshot source taken before more commands apply yields, piece by piece of any
        /// size, exactly the snapshot of the state when it was taken.
        #[test]
        fn snapshot_pieces_are_the_frozen_snapshot(
            before in proptest::collection::vec(command(), 0..40),
            after in proptest::collection::vec(command(), 0..40),
            piece_bytes in 1usize..64,
        ) {
            let mut kv = KvStateMachine::new();
            for (i, c) in before.iter().enumerate() {
                kv.apply(i as u64 + 1, &c.encode().unwrap()).unwrap();
            }
            let expected = kv.snapshot();
            let mut source = kv.snapshot_source();
            let mut pieces = Vec::new();
            let mut more = true;
            let mut calls = 0;
            while more {
                // The live state changes between pieces, as commits do during a checkpoint.
                if let Some(c) = after.get(calls) {
                    kv.apply(100 + calls as u64, &c.encode().unwrap()).unwrap();
                }
                more = source.write_piece(piece_bytes, &mut pieces);
                calls += 1;
                prop_assert!(calls <= expected.len() + 1, "a source that never ends");
            }
            prop_assert_eq!(pieces, expected);
        }
    }
}
