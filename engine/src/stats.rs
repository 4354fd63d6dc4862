//! Counters and histograms an operator needs: cheap to record (a few adds), no global state, and
//! mergeable so a shard set can aggregate its shards.

use serde::ser::SerializeStruct;
use serde::{Serialize, Serializer};

/// Values below this are counted exactly, one bucket each.
const EXACT_BELOW: u64 = 16;
/// Sub-buckets per power of two above `EXACT_BELOW`: relative error at most 1/8.
const SUB_BUCKETS: u64 = 8;
const SUB_BITS: u32 = 3;
/// 16 exact buckets, then 8 per power of two for exponents 4..=63.
const BUCKETS: usize = (EXACT_BELOW + (64 - 4) * SUB_BUCKETS) as usize;

/// A log-linear histogram of `u64` values (latencies in microseconds, batch sizes, …).
///
/// Fixed memory (496 buckets), O(1) recording, percentiles accurate to 1/8 of the value.
/// Serializes as a summary (`count`, `min`, `max`, `mean`, `p50`, `p99`, `p999`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Histogram {
    buckets: Vec<u64>,
    count: u64,
    sum: u128,
    min: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: vec![0; BUCKETS],
            count: 0,
            sum: 0,
            min: u64::MAX,
            max: 0,
        }
    }
}

fn bucket_of(value: u64) -> usize {
    if value < EXACT_BELOW {
        return value as usize;
    }
    let exp = 63 - value.leading_zeros(); // >= 4
    let sub = (value >> (exp - SUB_BITS)) & (SUB_BUCKETS - 1);
    (EXACT_BELOW + u64::from(exp - 4) * SUB_BUCKETS + sub) as usize
}

/// The largest value that falls in bucket `index`.
fn bucket_upper(index: usize) -> u64 {
    let index = index as u64;
    if index < EXACT_BELOW {
        return index;
    }
    let exp = (index - EXACT_BELOW) / SUB_BUCKETS + 4;
    let sub = (index - EXACT_BELOW) % SUB_BUCKETS;
    let width = 1u64 << (exp - u64::from(SUB_BITS));
    let lower = (SUB_BUCKETS + sub) << (exp - u64::from(SUB_BITS));
    lower.saturating_add(width - 1)
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one value.
    pub fn record(&mut self, value: u64) {
        self.buckets[bucket_of(value)] += 1;
        self.count += 1;
        self.sum += u128::from(value);
        self.min = self.min.min(value);
        self.max = self.max.max(value);
    }

    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The smallest value (0 when empty).
    pub fn min(&self) -> u64 {
        if self.count == 0 {
            0
        } else {
            self.min
        }
    }

    /// The largest value (0 when empty).
    pub fn max(&self) -> u64 {
        self.max
    }

    /// The sum of all values.
    pub fn sum(&self) -> u128 {
        self.sum
    }

    /// The mean (0 when empty).
    pub fn mean(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum as f64 / self.count as f64
        }
    }

    /// The value at quantile `q` (0.0..=1.0), as the upper bound of its bucket clamped to the
    /// largest value seen; 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let q = q.clamp(0.0, 1.0);
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0u64;
        for (index, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return bucket_upper(index).min(self.max).max(self.min());
            }
        }
        self.max
    }

    /// Adds `other`'s samples into this histogram.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a += b;
        }
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }
}

impl Serialize for Histogram {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("Histogram", 7)?;
        s.serialize_field("count", &self.count)?;
        s.serialize_field("min", &self.min())?;
        s.serialize_field("max", &self.max)?;
        s.serialize_field("mean", &self.mean())?;
        s.serialize_field("p50", &self.quantile(0.5))?;
        s.serialize_field("p99", &self.quantile(0.99))?;
        s.serialize_field("p999", &self.quantile(0.999))?;
        s.end()
    }
}

/// The engine's counters. `Engine::stats()` returns a copy; a shard set merges its shards'.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct EngineStats {
    /// Prepares acknowledged durable.
    pub appends: u64,
    /// Payload bytes of acknowledged prepares.
    pub append_bytes: u64,
    /// Prepares that failed (journal error, full, bad op).
    pub append_errors: u64,
    /// From the call to the durable acknowledgement, microseconds.
    pub append_latency_us: Histogram,
    /// Calls to `commit` that advanced the watermark.
    pub commits: u64,
    /// Ops applied to the state machine (including replay at open).
    pub applied_ops: u64,
    /// Ops whose command the state machine rejected (applied as no-ops).
    pub apply_rejections: u64,
    /// fdatasync calls the journal issued.
    pub fsyncs: u64,
    /// Total time in journal fdatasync, nanoseconds (the journal reports a sum, not a histogram).
    pub fsync_nanos_total: u64,
    /// Group-commit batches the journal wrote.
    pub journal_batches: u64,
    /// Prepares acknowledged per group-commit batch, sampled at each `stats()` call from the
    /// journal's counters since the previous call (so its shape follows the sampling period).
    pub batch_ops: Histogram,
    /// Completed checkpoints.
    pub checkpoints: u64,
    /// Checkpoints that failed at some step.
    pub checkpoint_failures: u64,
    /// Checkpoint duration from snapshot to the old snapshots' removal, microseconds.
    pub checkpoint_duration_us: Histogram,
    /// Size of the last snapshot written, bytes.
    pub last_snapshot_bytes: u64,
    /// Op of the newest durable snapshot.
    pub snapshot_op: u64,
    /// Repairs performed by recovery (journal torn tails and cuts, quarantined snapshots).
    pub repairs: u64,
    /// Time `open` took, microseconds.
    pub recovery_duration_us: u64,
    /// Ops replayed at open.
    pub replayed_ops: u64,
    /// Live journal segments.
    pub segments_live: u64,
}

impl EngineStats {
    /// Adds `other` into `self` (a shard set's aggregate). Per-engine gauges (`snapshot_op`,
    /// `last_snapshot_bytes`) take the maximum; counters and histograms add.
    pub fn merge(&mut self, other: &EngineStats) {
        self.appends += other.appends;
        self.append_bytes += other.append_bytes;
        self.append_errors += other.append_errors;
        self.append_latency_us.merge(&other.append_latency_us);
        self.commits += other.commits;
        self.applied_ops += other.applied_ops;
        self.apply_rejections += other.apply_rejections;
        self.fsyncs += other.fsyncs;
        self.fsync_nanos_total += other.fsync_nanos_total;
        self.journal_batches += other.journal_batches;
        self.batch_ops.merge(&other.batch_ops);
        self.checkpoints += other.checkpoints;
        self.checkpoint_failures += other.checkpoint_failures;
        self.checkpoint_duration_us
            .merge(&other.checkpoint_duration_us);
        self.last_snapshot_bytes = self.last_snapshot_bytes.max(other.last_snapshot_bytes);
        self.snapshot_op = self.snapshot_op.max(other.snapshot_op);
        self.repairs += other.repairs;
        self.recovery_duration_us = self.recovery_duration_us.max(other.recovery_duration_us);
        self.replayed_ops += other.replayed_ops;
        self.segments_live += other.segments_live;
    }

    /// Mean fdatasync latency in microseconds (0 with no fsync).
    pub fn fsync_mean_us(&self) -> f64 {
        if self.fsyncs == 0 {
            0.0
        } else {
            self.fsync_nanos_total as f64 / self.fsyncs as f64 / 1000.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_value_in_order() {
        let mut previous_upper = None;
        for index in 0..BUCKETS {
            let upper = bucket_upper(index);
            if let Some(p) = previous_upper {
                assert!(upper > p, "bucket {index}");
            }
            assert_eq!(bucket_of(upper), index);
            previous_upper = Some(upper);
        }
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
        for v in [0, 1, 15, 16, 17, 100, 1000, 123_456_789] {
            assert!(bucket_upper(bucket_of(v)) >= v);
        }
    }

    #[test]
    fn quantiles_are_within_an_eighth() {
        let mut h = Histogram::new();
        for v in 1..=10_000u64 {
            h.record(v);
        }
        for (q, exact) in [(0.5, 5000.0), (0.99, 9900.0), (0.999, 9990.0)] {
            let got = h.quantile(q) as f64;
            assert!((got - exact).abs() / exact <= 0.125, "q{q}: {got}");
        }
        assert_eq!(h.quantile(1.0), 10_000);
        assert_eq!(h.min(), 1);
        assert_eq!(Histogram::new().quantile(0.5), 0);
    }

    #[test]
    fn merge_adds_samples() {
        let mut a = Histogram::new();
        let mut b = Histogram::new();
        a.record(10);
        b.record(1_000);
        a.merge(&b);
        assert_eq!(a.count(), 2);
        assert_eq!(a.min(), 10);
        assert_eq!(a.max(), 1_000);
    }
}
