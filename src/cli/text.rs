//! How ops and op ranges read in text output: `-` for none, `100-24576` for a range.

use keel_engine::OpRange;

/// An op, or `-`.
pub fn op(op: Option<u64>) -> String {
    op.map_or_else(|| "-".to_string(), |op| op.to_string())
}

/// `first-last`, `first` when they are equal, or `-` when there are none.
pub fn op_span(first: Option<u64>, last: Option<u64>) -> String {
    match (first, last) {
        (Some(first), Some(last)) => OpRange {
            first_op: first,
            last_op: last,
        }
        .to_string(),
        _ => "-".to_string(),
    }
}

/// Ranges as `1-3, 5`.
pub fn ranges(ranges: &[OpRange]) -> String {
    ranges
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_read_without_rust_syntax() {
        assert_eq!(op_span(Some(100), Some(24576)), "100-24576");
        assert_eq!(op_span(Some(7), Some(7)), "7");
        assert_eq!(op_span(None, None), "-");
        let list = [
            OpRange {
                first_op: 1,
                last_op: 3,
            },
            OpRange {
                first_op: 5,
                last_op: 5,
            },
        ];
        assert_eq!(ranges(&list), "1-3, 5");
    }
}
