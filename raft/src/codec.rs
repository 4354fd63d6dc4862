//! The binary encoding of log entries (journal payloads) and network frames.
//!
//! Both are [postcard](https://docs.rs/postcard) (serde, varint integers, no field names) behind
//! one format byte, so a reader can tell the encoding from the bytes alone:
//!
//! ```text
//! byte 0      format: 0x01 = postcard (what this crate writes)
//! bytes 1..   the postcard encoding of the value
//! ```
//!
//! A journal payload whose first byte is `{` is the JSON that keel-raft wrote before the binary
//! encoding; it is still decoded, so a store written by an older build opens unchanged (its new
//! entries are binary). This module must never write JSON, and never decode a byte it did not
//! check the format of.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The format byte of a postcard encoding.
pub const FORMAT_POSTCARD: u8 = 0x01;
/// The first byte of a legacy JSON log entry (an object).
const LEGACY_JSON_FIRST_BYTE: u8 = b'{';

/// Why a value could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// postcard refused the value or the bytes.
    #[error("binary encoding: {0}")]
    Binary(#[from] postcard::Error),
    /// serde_json refused the value or the bytes (the meta file, snapshot meta, legacy entries).
    #[error("json encoding: {0}")]
    Json(#[from] serde_json::Error),
    /// The bytes start with a format byte this build does not know.
    #[error("unknown format byte {byte:#04x} (expected {FORMAT_POSTCARD:#04x})")]
    UnknownFormat {
        /// The byte found.
        byte: u8,
    },
    /// There were no bytes at all.
    #[error("empty encoding")]
    Empty,
}

/// Appends the format byte and the postcard encoding of `value` to `out`.
pub fn encode_into<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), CodecError> {
    out.push(FORMAT_POSTCARD);
    let taken = std::mem::take(out);
    *out = postcard::to_extend(value, taken)?;
    Ok(())
}

/// The format byte and the postcard encoding of `value`.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::new();
    encode_into(value, &mut out)?;
    Ok(out)
}

/// Decodes bytes [`encode`] wrote. Trailing bytes are refused: a frame or payload holds exactly
/// one value, so extra bytes mean damage or a mismatched type.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    match bytes.first() {
        None => Err(CodecError::Empty),
        Some(&FORMAT_POSTCARD) => {
            let (value, rest) = postcard::take_from_bytes(&bytes[1..])?;
            if rest.is_empty() {
                Ok(value)
            } else {
                Err(CodecError::Binary(postcard::Error::DeserializeBadEncoding))
            }
        }
        Some(&byte) => Err(CodecError::UnknownFormat { byte }),
    }
}

/// Decodes a journal payload: the binary encoding, or a legacy JSON entry.
pub fn decode_log_payload<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    match bytes.first() {
        Some(&LEGACY_JSON_FIRST_BYTE) => Ok(serde_json::from_slice(bytes)?),
        _ => decode(bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_refuses_damage_and_reads_legacy_json() {
        let value = (7u64, String::from("seven"), Some(vec![1u8, 2, 3]));
        let bytes = encode(&value).unwrap();
        assert_eq!(bytes[0], FORMAT_POSTCARD);
        assert_eq!(
            decode::<(u64, String, Option<Vec<u8>>)>(&bytes).unwrap(),
            value
        );
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode::<(u64, String, Option<Vec<u8>>)>(&longer).is_err());
        assert!(decode::<(u64, String, Option<Vec<u8>>)>(&bytes[..bytes.len() - 1]).is_err());
        assert!(matches!(
            decode::<u64>(&[0x02, 0]),
            Err(CodecError::UnknownFormat { byte: 0x02 })
        ));
        assert!(matches!(decode::<u64>(&[]), Err(CodecError::Empty)));
        let json = serde_json::to_vec(&serde_json::json!({"a": 1})).unwrap();
        let back: std::collections::BTreeMap<String, u64> = decode_log_payload(&json).unwrap();
        assert_eq!(back["a"], 1);
        assert_eq!(
            decode_log_payload::<u64>(&encode(&5u64).unwrap()).unwrap(),
            5
        );
    }
}
