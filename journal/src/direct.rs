//! direct: aligned group writes, for segments opened with an `O_DIRECT` descriptor
//! (`JournalConfig::direct_io`).
//!
//! Owns turning one run's bytes at an unaligned offset into one aligned write: the partial block
//! before the run (kept from the previous write, else read once from the file), the run, and zero
//! padding to the end of its last block. It must never change a byte before the run's offset
//! (they are written again exactly as the file holds them, as the page cache's write-back of a
//! partial page would) and never write past the run anything but zeroes, which is what a segment
//! holds past its write cursor (preallocated zeroes, or nothing yet).

use keel_storage::{BufResult, IoBuf, Storage, DIRECT_ALIGN_BYTES};

use compio::buf::IntoInner;

/// The bytes of a segment's last partial block, as the last aligned write left them.
#[derive(Debug)]
struct Tail {
    segment: u64,
    block_start_bytes: u64,
    bytes: Vec<u8>,
}

/// The writer's state for aligned writes: the last partial block and a staging buffer (reused;
/// at most one run plus two blocks).
#[derive(Debug, Default)]
pub(crate) struct DirectWrites {
    tail: Option<Tail>,
    staging: Vec<u8>,
}

impl DirectWrites {
    /// Writes `data` at `offset_bytes` of `segment`'s `file` as one aligned write from the start
    /// of its first block, and keeps the partial block before `offset_bytes + next_bytes`, where
    /// the next write starts (all of `data` but a recycled segment's terminator, which the next
    /// run overwrites).
    pub(crate) async fn write<F: Storage>(
        &mut self,
        file: &F,
        segment: u64,
        offset_bytes: u64,
        data: &[u8],
        next_bytes: usize,
    ) -> std::io::Result<()> {
        assert!(!data.is_empty(), "an empty run is never written");
        assert!(
            next_bytes <= data.len(),
            "the next write starts within this one"
        );
        let align = DIRECT_ALIGN_BYTES as u64;
        let block_start_bytes = offset_bytes / align * align;
        let prefix_len = (offset_bytes - block_start_bytes) as usize;
        let prefix = match self.tail.take() {
            Some(tail)
                if tail.segment == segment
                    && tail.block_start_bytes == block_start_bytes
                    && tail.bytes.len() == prefix_len =>
            {
                tail.bytes
            }
            _ if prefix_len == 0 => Vec::new(),
            // A new segment's header, or the first write after open: read once.
            _ => file.read_exact_at(block_start_bytes, prefix_len).await?,
        };
        let padded_bytes = (prefix_len + data.len()).next_multiple_of(DIRECT_ALIGN_BYTES);
        let mut buf = std::mem::take(&mut self.staging);
        buf.clear();
        buf.reserve(padded_bytes + DIRECT_ALIGN_BYTES);
        // Within the reserved capacity, so what follows never moves the buffer.
        let start = buf.as_ptr().align_offset(DIRECT_ALIGN_BYTES);
        buf.resize(start, 0);
        buf.extend_from_slice(&prefix);
        buf.extend_from_slice(data);
        buf.resize(start + padded_bytes, 0);
        assert_eq!(
            buf.as_ptr().align_offset(DIRECT_ALIGN_BYTES),
            start,
            "the buffer never moved"
        );
        let BufResult(result, slice) = file
            .write_all_at(block_start_bytes, buf.slice(start..start + padded_bytes))
            .await;
        let buf = slice.into_inner();
        if result.is_ok() {
            let end_bytes = offset_bytes + next_bytes as u64;
            let tail_start_bytes = end_bytes / align * align;
            let from = start + (tail_start_bytes - block_start_bytes) as usize;
            let to = start + (end_bytes - block_start_bytes) as usize;
            let mut bytes = prefix;
            bytes.clear();
            bytes.extend_from_slice(&buf[from..to]);
            self.tail = Some(Tail {
                segment,
                block_start_bytes: tail_start_bytes,
                bytes,
            });
        }
        self.staging = buf;
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_storage::{Directory, MemFs, OpenMode};

    /// Aligned writes of runs at arbitrary offsets leave the file exactly as plain writes of the
    /// same runs would, and every one of them is aligned.
    #[test]
    fn aligned_writes_equal_plain_writes() {
        compio::runtime::Runtime::new().unwrap().block_on(async {
            let fs = MemFs::new(7);
            let dir = fs.root();
            let direct = dir.open_file_direct("d", OpenMode::Create).await.unwrap();
            let plain = dir.open_file("p", OpenMode::Create).await.unwrap();
            let header = vec![9u8; 100];
            for f in [&direct, &plain] {
                let BufResult(r, _) = f.write_all_at(0, header.clone()).await;
                r.unwrap();
            }
            let mut writes = DirectWrites::default();
            let mut offset = header.len() as u64;
            for (i, len) in [1usize, 37, 4096, 4000, 9000, 96, 1, 8192]
                .into_iter()
                .enumerate()
            {
                let data: Vec<u8> = (0..len).map(|b| (b as u8) ^ (i as u8 + 1)).collect();
                writes
                    .write(&direct, 0, offset, &data, data.len())
                    .await
                    .unwrap();
                let BufResult(r, _) = plain.write_all_at(offset, data).await;
                r.unwrap();
                offset += len as u64;
            }
            let end = offset as usize;
            let got = direct.read_exact_at(0, end).await.unwrap();
            let want = plain.read_exact_at(0, end).await.unwrap();
            assert_eq!(got, want);
            let padded = direct.len() as usize;
            assert_eq!(padded % DIRECT_ALIGN_BYTES, 0, "the file ends on a block");
            let past = direct
                .read_exact_at(end as u64, padded - end)
                .await
                .unwrap();
            assert!(past.iter().all(|&b| b == 0), "only zeroes past the run");
            assert_eq!(
                fs.fault_counts().direct_writes,
                8,
                "every write was aligned"
            );
        });
    }
}
