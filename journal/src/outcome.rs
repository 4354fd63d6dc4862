//! outcome: the typed names of what a scan found and what a repair did — the recovery table's
//! [`Case`] and the [`PlannedCut`] a repair makes. Reports, repairs and errors carry these enums;
//! the name strings exist only where a report is printed (`name()`, `Display`).
//!
//! Owns the cases' and cuts' printed names (docs/durability.md, docs/cli.md: part of the JSON
//! contract). It must never depend on another module of the crate (the error type, the table
//! and the reports all depend on it) and never decide anything: `recovery.rs` does.

use std::fmt;

/// The named cases of the recovery table (docs/durability.md). More may come: match with a
/// wildcard arm outside this crate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Case {
    /// The log ends at an entry boundary.
    CleanEnd,
    /// A partial last batch nothing vouches for.
    TornTail,
    /// A partial header of the newest segment nothing vouches for.
    TornSegmentHeader,
    /// A damaged entry that was durable.
    CorruptEntry,
    /// A damaged segment header that was durable.
    CorruptSegmentHeader,
    /// A valid entry that does not follow its predecessor.
    ChainBreak,
    /// A valid segment that is not the next one.
    SegmentMismatch,
    /// A segment of a newer format version.
    UnknownVersion,
    /// Bytes after a sealed segment's last entry that belong to no entry: the next segment's
    /// header starts the log exactly there.
    StrayAfterEnd,
}

impl Case {
    /// Every case, in the table's order.
    pub const ALL: [Case; 9] = [
        Case::CleanEnd,
        Case::TornTail,
        Case::TornSegmentHeader,
        Case::CorruptEntry,
        Case::CorruptSegmentHeader,
        Case::ChainBreak,
        Case::SegmentMismatch,
        Case::UnknownVersion,
        Case::StrayAfterEnd,
    ];

    /// The printed name (a problem's and an error's `kind`).
    pub fn name(self) -> &'static str {
        match self {
            Case::CleanEnd => "clean_end",
            Case::TornTail => "torn_tail",
            Case::TornSegmentHeader => "torn_segment_header",
            Case::CorruptEntry => "corrupt_entry",
            Case::CorruptSegmentHeader => "corrupt_segment_header",
            Case::ChainBreak => "chain_break",
            Case::SegmentMismatch => "segment_mismatch",
            Case::UnknownVersion => "unknown_version",
            Case::StrayAfterEnd => "stray_after_end",
        }
    }
}

impl fmt::Display for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The cut a plan will make (the table's order for the first stop), and the kind of the repair
/// that carried it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PlannedCut {
    /// A torn tail: bytes no proof vouches for.
    TornTail,
    /// Point-in-time: acknowledged ops are lost and reported.
    PointInTime,
}

impl PlannedCut {
    /// Both cuts.
    pub const ALL: [PlannedCut; 2] = [PlannedCut::TornTail, PlannedCut::PointInTime];

    /// The printed name (a repair's `kind`).
    pub fn name(self) -> &'static str {
        match self {
            PlannedCut::TornTail => "torn_tail",
            PlannedCut::PointInTime => "point_in_time_cut",
        }
    }
}

impl fmt::Display for PlannedCut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
