//! stream: the open path's scan — one pass over every segment through one reused window, every
//! checksum checked once, each kept entry handed to the caller as it is parsed.
//!
//! Owns reading segments in bounded windows (memory is the window, at least one chunk or the
//! largest entry, plus the index; never a whole segment) and the look-ahead past the first stop,
//! which reads the rest of that file and each later file once. It must never write, and never
//! hand the consumer an entry the scan does not keep: it stops at the first stop, and what comes
//! before a stop is kept by every mode that accepts the log.

use keel_storage::{Directory, Storage};

use crate::error::JournalError;
use crate::format::{Binding, EntryKind, ENTRY_ALIGN_BYTES, SEGMENT_HEADER_BYTES};
use crate::live::LiveMap;
use crate::recovery::{Case, StopFact};
use crate::scan::{
    classify_with, end_link, parse_entries, segment_header, Evidence, Link, LogScan, Parsed,
    ScannedSegment, Stop,
};
use crate::segment::SegmentFile;
use crate::window::{open_segment, SegmentRead};

/// Bytes read per window by default (`JournalConfig::scan_window_bytes`), one read each, the next
/// window's read in flight while this one is parsed: 2 MiB measured best here (BENCHMARKS.md).
pub const WINDOW_BYTES: usize = 2 << 20;

/// What a scan hands its consumer, in log order.
#[derive(Debug, Clone, Copy)]
pub enum ScanEvent<'a> {
    /// A segment header: the watermarks known when the segment was created.
    Segment {
        /// The segment number.
        number: u64,
        /// Snapshot watermark recorded in the header.
        snapshot_op: u64,
        /// Commit watermark recorded in the header.
        commit_op: u64,
        /// Rewritten by compaction: its entries have fresh seqs and a chain of their own.
        rewritten: bool,
    },
    /// One valid entry the log keeps.
    Entry {
        /// Data, truncate, commit or snapshot marker.
        kind: EntryKind,
        /// The entry's seq.
        seq: u64,
        /// The op (the watermark, for markers).
        op: u64,
        /// The commit watermark known when it was written.
        commit_op: u64,
        /// Its header crc: the chain checksum the next entry carries.
        chain_crc: u32,
        /// The payload (empty for markers); valid only during the call.
        payload: &'a [u8],
    },
}

/// A consumer of scan events.
pub type Consumer<'c> = dyn FnMut(ScanEvent<'_>) + 'c;

/// Collects, from a scan's events, the live data entries with their payloads (the rule is
/// [`LiveMap`]'s): what the opened journal's index holds (minus ops beyond its ring), without
/// reading any entry again. Memory: every live payload.
#[derive(Debug, Default)]
pub struct LiveEntries {
    live: LiveMap<bytes::Bytes>,
}

impl LiveEntries {
    /// Takes one scan event.
    pub fn consume(&mut self, event: ScanEvent<'_>) {
        match event {
            ScanEvent::Segment { snapshot_op, .. } => self.live.set_snapshot(snapshot_op),
            ScanEvent::Entry {
                kind, op, payload, ..
            } => match kind {
                EntryKind::Data => {
                    self.live.insert(op, bytes::Bytes::copy_from_slice(payload));
                }
                EntryKind::Commit => {}
                EntryKind::Truncate => self.live.truncate_after(op),
                EntryKind::Snapshot => self.live.set_snapshot(op),
            },
        }
    }

    /// The live entries, by op.
    pub fn into_entries(self) -> std::collections::BTreeMap<u64, bytes::Bytes> {
        self.live.into_entries()
    }
}

/// Scans the journal directory to its first stop in one streaming pass, handing every kept entry
/// to `consumer`, and classifies that stop. The result has the shape `scan::scan_log` gives
/// without `keep_going`.
pub async fn scan_stream<D: Directory>(
    dir: &D,
    max_file_bytes: u64,
    window_bytes: usize,
    consumer: &mut Consumer<'_>,
) -> Result<LogScan, JournalError> {
    let mut scan = LogScan::listed(dir, max_file_bytes).await?;
    let files = scan.files.clone();
    let mut window = Vec::new();
    let mut link: Option<Link> = None;
    for index in 0..files.len() {
        let mut read = open_segment(
            dir,
            &files[index],
            max_file_bytes,
            window_bytes,
            &mut window,
        )
        .await?;
        let gap = index > 0 && files[index - 1].number.checked_add(1) != Some(files[index].number);
        let outcome = scan_segment(&mut read, &files[index], link, gap, consumer, &mut scan).await;
        scan.bytes_read += read.bytes_read;
        let (stop, rewritten, own) = match outcome? {
            Ok(next_link) => {
                link = Some(next_link);
                continue;
            }
            Err(found) => found,
        };
        drop(read);
        let mut later = Vec::new();
        for file in &files[index + 1..] {
            let mut other =
                open_segment(dir, file, max_file_bytes, window_bytes, &mut window).await?;
            later.push(other.evidence(0, Binding::Either(file.number)).await?);
            scan.bytes_read += other.bytes_read;
        }
        let later_refs: Vec<&Evidence> = later.iter().collect();
        // The chain state after the stop's last valid entry, when the stop lies among a valid
        // segment's entries (that segment is the last one recorded).
        let link_at_stop = scan
            .segments
            .last()
            .filter(|s| s.number == files[index].number)
            .map(|s| s.end_link);
        let at = classify_with(
            &files,
            index,
            stop,
            rewritten,
            &own,
            &later_refs,
            link_at_stop,
        );
        if at.case == Case::StrayAfterEnd {
            // The next segment starts the log at the stop: go on there.
            scan.record_stray(at);
            link = link_at_stop;
            continue;
        }
        scan.record_stop(at);
        break;
    }
    Ok(scan)
}

/// A stop, whether it lies in a rewritten segment, and what the rest of its file proves.
type Found = (Stop, bool, Evidence);

/// Parses a segment's entries from its header on, window by window, handing each to `consumer`:
/// the clean end's offset or the stop, and the chain state after the last valid entry.
async fn scan_entries<F: Storage>(
    read: &mut SegmentRead<'_, F>,
    mut link: Link,
    binding: Binding,
    entries: &mut Vec<crate::scan::EntryMeta>,
    consumer: &mut Consumer<'_>,
) -> Result<(Result<u64, Stop>, Link), JournalError> {
    let mut offset = SEGMENT_HEADER_BYTES as u64;
    loop {
        let at_eof = read.at_eof();
        let mut emit = |meta: &crate::scan::EntryMeta, payload: &[u8]| {
            consumer(ScanEvent::Entry {
                kind: meta.kind,
                seq: meta.seq,
                op: meta.op,
                commit_op: meta.commit_op,
                chain_crc: meta.header_crc,
                payload,
            })
        };
        let (parsed, after) = parse_entries(
            &read.window[read.start..],
            read.base,
            offset,
            link,
            binding,
            at_eof,
            entries,
            &mut emit,
        );
        link = after;
        match parsed {
            Parsed::End(end) => return Ok((Ok(end), link)),
            Parsed::Stop(stop) => return Ok((Err(stop), link)),
            Parsed::NeedMore {
                offset: at,
                len_bytes,
            } => {
                offset = at;
                read.load(at, len_bytes).await?;
            }
            Parsed::Zeroes(at) => {
                // A clean end only if the file is zero from here to its end, or (recycled) no
                // header of this life follows the terminator (`scan::parse::clean_end`).
                let clean = if binding.is_recycled() {
                    read.evidence(at, binding).await?.min_seq.is_none()
                } else {
                    read.first_nonzero(at).await?.is_none()
                };
                let end = match clean {
                    true => Ok(at),
                    false => Err(Stop {
                        offset_bytes: at,
                        fact: StopFact::BadEntryHeader,
                        expected_seq: link.next_seq,
                        op: None,
                        kind: None,
                    }),
                };
                return Ok((end, link));
            }
        }
    }
}

/// Scans one segment: `Ok(link after it)` at a clean end, `Err(stop…)` at a stop (the segment,
/// when its header is valid, is recorded in `scan` with its entries up to the stop either way).
async fn scan_segment<F: Storage>(
    read: &mut SegmentRead<'_, F>,
    file: &SegmentFile,
    link: Option<Link>,
    gap: bool,
    consumer: &mut Consumer<'_>,
    scan: &mut LogScan,
) -> Result<Result<Link, Found>, JournalError> {
    read.load(0, SEGMENT_HEADER_BYTES).await?;
    let header = segment_header(read.data(), file.number, link, gap);
    let header = match header {
        Ok(header) => header,
        Err(mut stop) => {
            let own = read.evidence(0, Binding::Either(file.number)).await?;
            if stop.expected_seq == u64::MAX {
                // First segment: its own entries tell which seqs it held.
                stop.expected_seq = own.min_seq.unwrap_or(u64::MAX);
            }
            return Ok(Err((stop, false, own)));
        }
    };
    consumer(ScanEvent::Segment {
        number: file.number,
        snapshot_op: header.snapshot_op,
        commit_op: header.commit_op,
        rewritten: header.is_rewritten(),
    });
    let mut entries = Vec::new();
    let start = Link {
        next_seq: header.first_seq,
        chain_crc: header.prev_crc,
    };
    let (end, entry_link) =
        scan_entries(read, start, header.binding(), &mut entries, consumer).await?;
    let data_end_bytes = match &end {
        Ok(end) => *end,
        Err(stop) => stop.offset_bytes,
    };
    scan.segments.push(ScannedSegment {
        number: file.number,
        name: file.name.clone(),
        header,
        entries,
        file_len_bytes: read.len_bytes,
        data_end_bytes,
        end_link: end_link(&header, entry_link),
    });
    match end {
        Ok(_) => Ok(Ok(end_link(&header, entry_link))),
        Err(stop) => {
            let own = read
                .evidence(
                    stop.offset_bytes + ENTRY_ALIGN_BYTES as u64,
                    header.binding(),
                )
                .await?;
            Ok(Err((stop, header.is_rewritten(), own)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::scan_log;
    use crate::{JournalConfig, MetadataJournal, RecoveryMode};
    use keel_storage::MemFs;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn run<F: std::future::Future>(future: F) -> F::Output {
        compio::runtime::Runtime::new().unwrap().block_on(future)
    }

    /// A journal of random-sized entries (some larger than a 512-B window), rewrites and markers.
    async fn build(fs: &MemFs, rng: &mut StdRng) -> JournalConfig {
        let config = JournalConfig {
            slot_count: 256,
            segment_bytes: [2048u64, 8192][rng.gen_range(0..2)],
            max_batch_bytes: 4096,
            max_inflight_bytes: 1 << 20,
            max_payload_bytes: 1500,
            preallocate: rng.gen_bool(0.5),
            sync_on_append: true,
            write_through: true,
            direct_io: false,
            scan_window_bytes: 512,
            write_back_bytes: 0,
        };
        let (j, _) = MetadataJournal::open(&fs.root(), config.clone(), RecoveryMode::default())
            .await
            .unwrap();
        let mut op = 0;
        for _ in 0..rng.gen_range(1..60) {
            if rng.gen_bool(0.1) && op > 1 {
                j.truncate_after(op - 1).await.unwrap();
                op -= 1;
            }
            op += 1;
            let len = rng.gen_range(0..1400);
            let payload: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            j.append(op, &payload).await.unwrap();
            if rng.gen_bool(0.2) {
                j.set_commit_op(op);
                j.persist_commit().await.unwrap();
            }
        }
        if rng.gen_bool(0.5) {
            j.close().await.unwrap();
        }
        config
    }

    /// Damages one segment at random: a bit flip, a cut, or a zeroed range.
    async fn damage(fs: &MemFs, rng: &mut StdRng) {
        let dir = fs.root().open_dir("journal", false).await.unwrap();
        let names = dir.list().await.unwrap();
        let name = &names[rng.gen_range(0..names.len())];
        let path = format!("journal/{name}");
        let len = fs.read_raw(&path).unwrap().len() as u64;
        if len == 0 {
            return;
        }
        match rng.gen_range(0..4) {
            3 if names.len() > 2 => {
                // A missing segment: the next one does not link.
                dir.remove_file(&names[rng.gen_range(0..names.len() - 1)])
                    .await
                    .unwrap();
            }
            0 => {
                // Bit rot happens to durable bytes: a file still being written (a spare under
                // preparation) may have none yet.
                let durable_len = fs.durable_bytes(&path).unwrap().len() as u64;
                if durable_len > 0 {
                    let at = rng.gen_range(0..durable_len);
                    fs.flip_bit(&path, at, rng.gen_range(0..8)).unwrap();
                }
            }
            1 | 3 => fs.cut_raw(&path, rng.gen_range(0..len)).unwrap(),
            _ => {
                let at = rng.gen_range(0..len);
                let n = rng.gen_range(1..700).min(len - at) as usize;
                fs.write_raw(&path, at, &vec![0u8; n]).unwrap();
            }
        }
    }

    /// The streaming scan (512-B windows, read whole or, cold, in 64-B pieces) finds exactly what
    /// the whole-file scan finds, on random logs with random damage, and hands the consumer
    /// exactly the entries it keeps.
    #[test]
    fn streaming_scan_agrees_with_the_whole_file_scan() {
        let mut stops = 0;
        let mut cases = std::collections::BTreeSet::new();
        for seed in 0..300u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let fs = MemFs::new(seed);
            // A third of the seeds take the cold read shape: 64-B reads, none ahead.
            fs.set_cold_reads(seed % 3 == 0);
            run(async {
                let config = build(&fs, &mut rng).await;
                if rng.gen_bool(0.8) {
                    damage(&fs, &mut rng).await;
                }
                let dir = fs.root().open_dir("journal", false).await.unwrap();
                let whole = scan_log(&dir, 1 << 30, false).await.unwrap();
                let mut seen = Vec::new();
                let streamed = scan_stream(&dir, 1 << 30, config.scan_window_bytes, &mut |event| {
                    if let ScanEvent::Entry { seq, payload, .. } = event {
                        seen.push((seq, crc32fast::hash(payload)));
                    }
                })
                .await
                .unwrap();
                let summary = |scan: &LogScan| {
                    let segments: Vec<_> = scan
                        .segments
                        .iter()
                        .map(|s| (s.number, s.entries.clone(), s.data_end_bytes, s.end_link))
                        .collect();
                    let stop = scan.first_stop.as_ref().map(|s| {
                        let mut ops = s.later_data_ops.clone();
                        ops.sort_unstable();
                        (s.file_index, s.stop, s.proofs, s.case, ops)
                    });
                    (segments, stop)
                };
                assert_eq!(summary(&streamed), summary(&whole), "seed {seed}");
                if let Some(stop) = &streamed.first_stop {
                    stops += 1;
                    cases.insert(format!("{:?}", stop.case));
                }
                let kept: Vec<_> = whole
                    .segments
                    .iter()
                    .flat_map(|s| s.entries.iter().map(|e| (e.seq, e.payload_crc)))
                    .collect();
                let seen_payload_crcs: Vec<_> = seen.clone();
                assert_eq!(kept.len(), seen_payload_crcs.len(), "seed {seed}");
                for ((seq, _), (seen_seq, _)) in kept.iter().zip(&seen_payload_crcs) {
                    assert_eq!(seq, seen_seq, "seed {seed}");
                }
            });
        }
        // The damage must reach the interesting paths, not only clean ends.
        assert!(stops > 100, "only {stops} of 300 seeds stopped");
        assert!(cases.len() >= 4, "cases reached: {cases:?}");
    }
}
