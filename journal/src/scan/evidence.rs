//! evidence: what the bytes past a stop prove (later valid headers, their durable watermarks,
//! a later segment's header) and the classification of the stop from it. Reads later files
//! once per scan; never writes.

use keel_storage::Directory;

use super::{valid_headers, Link, Stop, StopAt};
use crate::error::JournalError;
use crate::format::{Binding, EntryKind, SegmentHeader, ENTRY_ALIGN_BYTES};
use crate::recovery::{classify, Proofs, StopFact};
use crate::segment::{self, SegmentFile};

/// What one stretch of a segment file proves about the bytes before it: found by looking past a
/// stop for valid entry headers (8-aligned) and, for a whole later file, its segment header.
#[derive(Debug, Clone)]
pub struct Evidence {
    /// What the headers' crcs cover: the file's segment header's binding once it is read (a
    /// recycled file's older life is never evidence), either candidate while it is unknown.
    pub binding: Binding,
    /// Highest `durable_seq` a valid entry header claims.
    pub max_durable: u64,
    /// Lowest seq of a valid entry header (for a first segment whose own header is damaged).
    pub min_seq: Option<u64>,
    /// Ops of valid data entry headers (what a cut would remove).
    pub data_ops: Vec<u64>,
    /// The file's valid segment header, when the stretch began at offset 0: its `first_seq` is a
    /// proof, and does it start the log where an earlier segment's entries stop?
    pub header: Option<SegmentHeader>,
    /// While the binding is [`Binding::Either`]: what the headers valid as version 1 entries
    /// prove. [`Self::finish`] keeps them only if no header is valid as the file's recycled
    /// life, so the older life of a recycled file with a damaged header is never evidence.
    plain: Option<Box<Evidence>>,
}

impl Evidence {
    /// No evidence yet, of a stretch whose entries are under `binding`.
    pub fn new(binding: Binding) -> Self {
        Self {
            binding,
            max_durable: 0,
            min_seq: None,
            data_ops: Vec::new(),
            header: None,
            plain: None,
        }
    }

    /// Done adding: settles a file of unknown binding (its segment header damaged) on the
    /// recycled life when any header is valid as one, else on version 1; `binding` then says
    /// which.
    pub fn finish(mut self) -> Self {
        if let Some(plain) = self.plain.take() {
            if self.min_seq.is_none() {
                let header = self.header;
                self = *plain;
                self.header = header;
            } else if let Binding::Either(number) = self.binding {
                self.binding = Binding::Segment(number);
            }
        }
        self
    }

    fn record(&mut self, bytes: &[u8], from_offset: u64, binding: Binding) {
        for (_, h) in valid_headers(bytes, from_offset, binding) {
            self.max_durable = self.max_durable.max(h.durable_seq);
            self.min_seq = Some(self.min_seq.map_or(h.seq, |m| m.min(h.seq)));
            if h.kind == EntryKind::Data {
                self.data_ops.push(h.op);
            }
        }
    }

    /// Adds the valid entry headers in `bytes` (the file's bytes from offset `base`) at or after
    /// file offset `from`; with `whole_file`, also the segment header at `bytes[0..]`.
    pub fn add(&mut self, bytes: &[u8], base: u64, from: u64, whole_file: bool) {
        if whole_file && base == 0 {
            if let Ok(header) = SegmentHeader::decode(bytes) {
                self.header = Some(header);
                self.binding = header.binding();
            }
        }
        let from_offset = from.saturating_sub(base);
        match self.binding {
            Binding::Either(number) => {
                self.record(bytes, from_offset, Binding::Segment(number));
                let plain = self
                    .plain
                    .get_or_insert_with(|| Box::new(Evidence::new(Binding::Plain)));
                plain.record(bytes, from_offset, Binding::Plain);
            }
            binding => self.record(bytes, from_offset, binding),
        }
    }

    /// The evidence of the whole file of segment `number`, read once.
    pub fn of_file(bytes: &[u8], number: u64) -> Self {
        let mut evidence = Evidence::new(Binding::Either(number));
        evidence.add(bytes, 0, 0, true);
        evidence.finish()
    }
}

/// Classifies a stop in file `index` from what the rest of that file (`own`) and every later file
/// (`later`, in order) prove, with the proofs of durability they give. `link_at_stop` is the
/// chain state after the stop's last valid entry, when the stop lies among a valid segment's
/// entries (the next segment's header may then start the log right there: `sealed`).
pub fn classify_with(
    files: &[SegmentFile],
    index: usize,
    stop: Stop,
    rewritten: bool,
    own: &Evidence,
    later: &[&Evidence],
    link_at_stop: Option<Link>,
) -> StopAt {
    let max_durable = later
        .iter()
        .map(|e| e.max_durable)
        .chain([own.max_durable])
        .max()
        .unwrap_or(0);
    // The highest seq a later segment header proves durable (its `first_seq - 1`).
    let header_proven_seq = later
        .iter()
        .filter_map(|e| e.header.map(|h| h.first_seq))
        .map(|first| first.saturating_sub(1))
        .max()
        .unwrap_or(0);
    let later_segment_header = later.iter().any(|e| e.header.is_some());
    let known = stop.expected_seq != u64::MAX;
    let proofs = Proofs {
        watermark: known && max_durable >= stop.expected_seq,
        // A rotation writes a header only after fsyncing every older segment, so a later valid
        // header proves the entries before its `first_seq`, and proves a damaged segment header
        // is not the torn header of the newest segment whatever seq it would have started at.
        // Entries in the damaged segment's own file prove its header durable too: a segment's
        // header is fsynced before any entry goes in.
        segment_header: if stop.fact == StopFact::BadSegmentHeader {
            later_segment_header || own.min_seq.is_some()
        } else {
            known && header_proven_seq >= stop.expected_seq
        },
        rewritten,
        sealed: sealed_at(
            files,
            index,
            later.first().and_then(|e| e.header),
            link_at_stop,
        ),
    };
    let case = classify(stop.fact, proofs);
    let mut later_data_ops: Vec<u64> = own
        .data_ops
        .iter()
        .chain(later.iter().flat_map(|e| e.data_ops.iter()))
        .copied()
        .collect();
    if let (Some(op), Some(EntryKind::Data)) = (stop.op, stop.kind) {
        later_data_ops.push(op);
    }
    StopAt {
        file_index: index,
        file: files[index].name.clone(),
        stop,
        proofs,
        case,
        later_data_ops,
    }
}

/// Whether the next file is the next segment and its header (`next_header`) starts the log at
/// `link_at_stop`, the chain state after the last valid entry of file `index`.
fn sealed_at(
    files: &[SegmentFile],
    index: usize,
    next_header: Option<SegmentHeader>,
    link_at_stop: Option<Link>,
) -> bool {
    let (Some(link), Some(header), Some(next)) = (link_at_stop, next_header, files.get(index + 1))
    else {
        return false;
    };
    files[index].number.checked_add(1) == Some(next.number)
        && header.segment_no == next.number
        && header.first_seq == link.next_seq
        && header.prev_crc == link.chain_crc
}

/// Looks past a stop (rest of this file, every later file) and classifies it. Each later file's
/// evidence is read once per scan and cached in `later_cache`, whatever the number of stops.
#[allow(clippy::too_many_arguments)]
pub(super) async fn classify_stop<D: Directory>(
    dir: &D,
    files: &[SegmentFile],
    index: usize,
    bytes: &[u8],
    stop: Stop,
    rewritten: bool,
    link_at_stop: Option<Link>,
    binding: Binding,
    max_file_bytes: u64,
    later_cache: &mut Vec<Option<Evidence>>,
) -> Result<StopAt, JournalError> {
    let mut own = Evidence::new(binding);
    own.add(
        bytes,
        0,
        stop.offset_bytes + ENTRY_ALIGN_BYTES as u64,
        false,
    );
    let own = own.finish();
    later_cache.resize(files.len(), None);
    for later in index + 1..files.len() {
        if later_cache[later].is_none() {
            let other = segment::read_whole(dir, &files[later].name, max_file_bytes).await?;
            later_cache[later] = Some(Evidence::of_file(&other, files[later].number));
        }
    }
    let later: Vec<&Evidence> = later_cache[index + 1..].iter().flatten().collect();
    Ok(classify_with(
        files,
        index,
        stop,
        rewritten,
        &own,
        &later,
        link_at_stop,
    ))
}
