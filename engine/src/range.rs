//! range: an inclusive range of ops as every report names it (JSON `{"first", "last"}`, text
//! `100-24576`).
//!
//! Owns the one range type of the engine's reports and its conversions. It must never know what
//! the ops in a range mean (lost, torn, prepared): the report fields say that.

use serde::{Deserialize, Serialize};

/// An inclusive range of ops: `{"first": 100, "last": 24576}` in JSON, `100-24576` as text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpRange {
    /// The first op (JSON `first`).
    #[serde(rename = "first")]
    pub first_op: u64,
    /// The last op, at least `first_op` (JSON `last`).
    #[serde(rename = "last")]
    pub last_op: u64,
}

impl std::fmt::Display for OpRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.first_op == self.last_op {
            write!(f, "{}", self.first_op)
        } else {
            write!(f, "{}-{}", self.first_op, self.last_op)
        }
    }
}

impl OpRange {
    /// The part of the range inside `first..=last`, if any.
    pub fn clip(self, first: u64, last: u64) -> Option<OpRange> {
        let clipped = OpRange {
            first_op: self.first_op.max(first),
            last_op: self.last_op.min(last),
        };
        (clipped.first_op <= clipped.last_op).then_some(clipped)
    }
}

impl From<&std::ops::RangeInclusive<u64>> for OpRange {
    fn from(range: &std::ops::RangeInclusive<u64>) -> Self {
        OpRange {
            first_op: *range.start(),
            last_op: *range.end(),
        }
    }
}

/// Ascending ops → inclusive ranges.
pub(crate) fn to_ranges(ops: impl IntoIterator<Item = u64>) -> Vec<OpRange> {
    let mut out: Vec<OpRange> = Vec::new();
    for op in ops {
        match out.last_mut() {
            Some(r) if r.last_op.checked_add(1) == Some(op) => r.last_op = op,
            _ => out.push(OpRange {
                first_op: op,
                last_op: op,
            }),
        }
    }
    out
}
