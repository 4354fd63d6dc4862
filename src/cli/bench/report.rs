//! The bench's figures, aggregated over shards: the readable table and the `--json` object
//! (docs/cli.md's keys `ops`, `ops_per_sec`, `mb_per_sec`, `fsyncs`, `latency_us` {`p50`,`p99`,
//! `p999`}, `checkpoints`, `recovery_ms`, `state_verified`, plus more).

use std::time::Duration;

use keel_engine::{EngineStats, Histogram};
use serde::Serialize;

use super::baseline::Baseline;
use super::driver::ShardResult;
use super::Settings;

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
    pub mean: f64,
    pub max: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckpointTimes {
    pub mean: f64,
    pub max: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub ops: u64,
    pub ops_per_sec: f64,
    pub mb_per_sec: f64,
    pub fsyncs: u64,
    pub latency_us: Latency,
    pub checkpoints: u64,
    pub recovery_ms: f64,
    pub state_verified: bool,
    pub shards: usize,
    pub sync: &'static str,
    pub inflight: usize,
    pub entry_bytes: usize,
    pub checkpoint_every: u64,
    pub elapsed_s: f64,
    pub fsync_mean_us: f64,
    pub mean_batch_ops: f64,
    pub checkpoint_ms: CheckpointTimes,
    pub replayed_ops: u64,
    pub state_digests: Vec<String>,
    pub interrupted: bool,
    pub dir: Option<String>,
    /// `--baseline`: the plain write + fdatasync loop on the same ops.
    pub baseline: Option<Baseline>,
}

impl BenchReport {
    pub fn new(settings: &Settings, results: &[ShardResult], interrupted: bool) -> Self {
        let ops: u64 = results.iter().map(|r| r.ops).sum();
        let elapsed = wall_time(results).as_secs_f64().max(1e-9);
        let mut stats = EngineStats::default();
        let mut latency = Histogram::new();
        for result in results {
            stats.merge(&result.stats);
            latency.merge(&result.latency_us);
        }
        let recovery = results.iter().map(|r| r.recovery).max().unwrap_or_default();
        Self {
            ops,
            ops_per_sec: ops as f64 / elapsed,
            mb_per_sec: (ops * settings.entry_bytes as u64) as f64 / elapsed / 1e6,
            fsyncs: stats.fsyncs,
            latency_us: latency_of(&latency),
            checkpoints: stats.checkpoints,
            recovery_ms: recovery.as_secs_f64() * 1000.0,
            state_verified: results.iter().all(|r| r.verified),
            shards: results.len(),
            sync: settings.sync.name(),
            inflight: settings.depth,
            entry_bytes: settings.entry_bytes,
            checkpoint_every: settings.checkpoint_every,
            elapsed_s: elapsed,
            fsync_mean_us: stats.fsync_mean_us(),
            mean_batch_ops: stats.appends as f64 / stats.journal_batches.max(1) as f64,
            checkpoint_ms: CheckpointTimes {
                mean: stats.checkpoint_duration_us.mean() / 1000.0,
                max: stats.checkpoint_duration_us.max() as f64 / 1000.0,
            },
            replayed_ops: results.iter().map(|r| r.report.replayed).sum(),
            state_digests: results
                .iter()
                .map(|r| format!("{:016x}", r.digest))
                .collect(),
            interrupted,
            dir: settings.keep_dir.clone(),
            baseline: None,
        }
    }

    /// The readable table.
    pub fn table(&self) -> String {
        let mut out = format!(
            "keel bench: {} shard(s), {} ops of {} B, sync {} ({} in flight), checkpoint every {} ops{}\n",
            self.shards,
            self.ops,
            self.entry_bytes,
            self.sync,
            self.inflight,
            self.checkpoint_every,
            if self.interrupted { " — INTERRUPTED" } else { "" },
        );
        for (name, value) in self.rows() {
            out.push_str(&format!("  {name:<15} {value}\n"));
        }
        if let Some(baseline) = &self.baseline {
            out.push_str(&format!(
                "  {:<15} {:.0} ops/s   {:.2} MB/s   p50 {} µs   p99 {} µs   {} fsyncs   (keel at {:.0}%)\n",
                "plain loop",
                baseline.ops_per_sec,
                baseline.mb_per_sec,
                baseline.p50_us,
                baseline.p99_us,
                baseline.fsyncs,
                100.0 * self.ops_per_sec / baseline.ops_per_sec.max(1e-9),
            ));
        }
        if let Some(dir) = &self.dir {
            out.push_str(&format!("  {:<15} {dir}\n", "directory"));
        }
        out
    }

    /// The table's named rows, in order.
    fn rows(&self) -> [(&'static str, String); 7] {
        let lat = &self.latency_us;
        [
            (
                "throughput",
                format!(
                    "{:.0} ops/s   {:.2} MB/s   ({:.2} s)",
                    self.ops_per_sec, self.mb_per_sec, self.elapsed_s
                ),
            ),
            (
                "latency",
                format!(
                    "p50 {} µs   p99 {} µs   p999 {} µs   max {} µs",
                    lat.p50, lat.p99, lat.p999, lat.max
                ),
            ),
            (
                "fsyncs",
                format!("{}   (mean {:.0} µs)", self.fsyncs, self.fsync_mean_us),
            ),
            (
                "mean batch",
                format!("{:.1} ops per group commit", self.mean_batch_ops),
            ),
            (
                "checkpoints",
                format!(
                    "{}   (mean {:.1} ms, max {:.1} ms)",
                    self.checkpoints, self.checkpoint_ms.mean, self.checkpoint_ms.max
                ),
            ),
            (
                "recovery",
                format!(
                    "{:.1} ms   ({} ops replayed)",
                    self.recovery_ms, self.replayed_ops
                ),
            ),
            (
                "state verified",
                if self.state_verified {
                    "yes (digest equal after reopen)".to_string()
                } else {
                    "NO: the recovered state differs".to_string()
                },
            ),
        ]
    }
}

/// From the first shard's start to the last shard's end.
fn wall_time(results: &[ShardResult]) -> Duration {
    let start = results.iter().map(|r| r.started).min();
    let end = results.iter().map(|r| r.finished).max();
    match (start, end) {
        (Some(start), Some(end)) => end.duration_since(start),
        _ => Duration::ZERO,
    }
}

fn latency_of(histogram: &Histogram) -> Latency {
    Latency {
        p50: histogram.quantile(0.5),
        p99: histogram.quantile(0.99),
        p999: histogram.quantile(0.999),
        mean: histogram.mean(),
        max: histogram.max(),
    }
}
