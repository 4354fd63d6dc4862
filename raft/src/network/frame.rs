//! Frames on the wire: `len:u32 big-endian` + body, the hello, and the binary encoding of a
//! body. Nothing here knows what a message means.

use std::io;

use compio::buf::{BufResult, IntoInner, IoBuf};
use compio::io::{AsyncReadExt, AsyncWriteExt};
use compio::net::TcpStream;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{Hello, MAX_FRAME_BYTES};
use crate::codec;

/// Writes one frame (header and body in a single buffer, so a single write).
pub async fn write_frame(stream: &mut TcpStream, body: &[u8]) -> io::Result<()> {
    if body.len() > MAX_FRAME_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("frame of {} bytes exceeds {MAX_FRAME_BYTES}", body.len()),
        ));
    }
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
    buf.extend_from_slice(body);
    let BufResult(result, _) = stream.write_all(buf).await;
    result
}

/// Reads one frame's body.
pub async fn read_frame(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let len = stream.read_u32().await? as usize;
    check_frame_len(len)?;
    // compio's read_exact fills the buffer's capacity, so pin it to exactly `len` bytes.
    let BufResult(result, slice) = stream
        .read_exact(Vec::<u8>::with_capacity(len).slice(..len))
        .await;
    result?;
    Ok(slice.into_inner())
}

fn check_frame_len(len: usize) -> io::Result<()> {
    if len > MAX_FRAME_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds {MAX_FRAME_BYTES}"),
        ));
    }
    Ok(())
}

/// Reads a new connection's [`Hello`] with blocking std I/O (the node's listener thread).
pub fn read_hello(stream: &mut std::net::TcpStream) -> io::Result<Hello> {
    use std::io::Read;
    let mut len = [0u8; 4];
    stream.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    // A hello is a few bytes; anything longer is not a keel-raft client.
    if len > 64 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("hello frame of {len} bytes"),
        ));
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body)?;
    let hello: Hello = decode(&body)?;
    if hello.magic != Hello::MAGIC {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a keel-raft connection (bad hello magic)",
        ));
    }
    Ok(hello)
}

/// The binary encoding of `value`, as an `io::Error` on failure.
pub fn encode<T: Serialize>(value: &T) -> io::Result<Vec<u8>> {
    codec::encode(value).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Decodes a frame body [`encode`] wrote.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> io::Result<T> {
    codec::decode(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}
