//! Counters and histograms an operator needs: cheap to record (a few adds), no global state, and
//! mergeable so a shard set can aggregate its shards.

use std::fmt;

use serde::ser::SerializeStruct;
use serde::{Serialize, Serializer};

/// Largest value a [`Histogram`] tells apart: one hour in microseconds. Larger values are
/// recorded as this (a latency histogram's "at least an hour").
pub const HISTOGRAM_MAX_VALUE: u64 = 3_600_000_000;
/// Significant decimal digits a [`Histogram`] keeps: a quantile is within 0.1% of the value.
const HISTOGRAM_SIGNIFICANT_DIGITS: u8 = 3;

/// A histogram of `u64` values (latencies in microseconds, batch sizes, …): keel's one histogram
/// type, used by the engine's stats, the `keel bench` command and the benches.
///
/// An [`hdrhistogram`] with fixed bounds `0..=`[`HISTOGRAM_MAX_VALUE`] at 3 significant digits
/// (about 190 KiB), so recording is O(1) and never reallocates, quantiles are within 0.1% and
/// two histograms always merge. Serializes as a summary (`count`, `min`, `max`, `mean`, `p50`,
/// `p99`, `p999`).
#[derive(Clone, PartialEq)]
pub struct Histogram {
    inner: hdrhistogram::Histogram<u64>,
}

impl Default for Histogram {
    fn default() -> Self {
        let inner = hdrhistogram::Histogram::new_with_bounds(
            1,
            HISTOGRAM_MAX_VALUE,
            HISTOGRAM_SIGNIFICANT_DIGITS,
        )
        .unwrap_or_else(|_| unreachable!("bounds 1..=1 h at 3 digits are valid"));
        Self { inner }
    }
}

impl fmt::Debug for Histogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The summary, not the ~24,000 counters.
        f.debug_struct("Histogram")
            .field("count", &self.count())
            .field("min", &self.min())
            .field("max", &self.max())
            .field("p50", &self.quantile(0.5))
            .field("p99", &self.quantile(0.99))
            .finish()
    }
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one value (values above [`HISTOGRAM_MAX_VALUE`] count as it).
    pub fn record(&mut self, value: u64) {
        self.inner.saturating_record(value);
    }

    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.inner.len()
    }

    /// The smallest value, to 3 digits (0 when empty).
    pub fn min(&self) -> u64 {
        if self.count() == 0 {
            0
        } else {
            self.inner.min()
        }
    }

    /// The largest value, to 3 digits (0 when empty).
    pub fn max(&self) -> u64 {
        if self.count() == 0 {
            0
        } else {
            self.inner.max()
        }
    }

    /// The mean, to 3 digits (0 when empty).
    pub fn mean(&self) -> f64 {
        if self.count() == 0 {
            0.0
        } else {
            self.inner.mean()
        }
    }

    /// The value at quantile `q` (0.0..=1.0, clamped), to 3 digits; 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count() == 0 {
            return 0;
        }
        self.inner.value_at_quantile(q.clamp(0.0, 1.0))
    }

    /// Adds `other`'s samples into this histogram.
    pub fn merge(&mut self, other: &Histogram) {
        // Same bounds on both sides: the addition cannot run out of range.
        self.inner
            .add(&other.inner)
            .unwrap_or_else(|_| unreachable!("histograms of equal bounds always merge"));
    }
}

impl Serialize for Histogram {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("Histogram", 7)?;
        s.serialize_field("count", &self.count())?;
        s.serialize_field("min", &self.min())?;
        s.serialize_field("max", &self.max())?;
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
    /// Journal segments made of a dead segment's file (recycled behind checkpoints' compaction:
    /// no zero-fill; docs/performance.md, "Recycled segments").
    pub segments_recycled: u64,
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
        self.segments_recycled += other.segments_recycled;
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
    fn quantiles_are_within_a_thousandth() {
        let mut h = Histogram::new();
        for v in 1..=10_000u64 {
            h.record(v);
        }
        for (q, exact) in [(0.5, 5000.0), (0.99, 9900.0), (0.999, 9990.0)] {
            let got = h.quantile(q) as f64;
            assert!((got - exact).abs() / exact <= 0.001, "q{q}: {got}");
        }
        // The top of the value's 3-digit bucket: never below the value, at most 0.1% above.
        assert!(
            (10_000..=10_010).contains(&h.quantile(1.0)),
            "{}",
            h.quantile(1.0)
        );
        assert!((10_000..=10_010).contains(&h.max()), "{}", h.max());
        assert_eq!(h.min(), 1);
        assert_eq!(h.count(), 10_000);
        assert!((h.mean() - 5000.5).abs() < 5.0, "{}", h.mean());
    }

    #[test]
    fn an_empty_histogram_reads_zero() {
        let h = Histogram::new();
        assert_eq!((h.count(), h.min(), h.max(), h.quantile(0.5)), (0, 0, 0, 0));
        assert_eq!(h.mean(), 0.0);
    }

    #[test]
    fn values_past_the_bound_count_as_the_bound() {
        let mut h = Histogram::new();
        h.record(0);
        h.record(u64::MAX);
        assert_eq!(h.count(), 2);
        assert_eq!(h.min(), 0);
        let max = h.max();
        assert!(
            (HISTOGRAM_MAX_VALUE..=HISTOGRAM_MAX_VALUE + HISTOGRAM_MAX_VALUE / 1000).contains(&max)
        );
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
