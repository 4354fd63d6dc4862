//! A key-value write load over a (sharded) cluster, for the tests and the benchmark example.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use openraft::BasicNode;

use super::{ClusterError, ShardedClient};
use crate::kv::KvRequest;
/// Latencies and throughput of a batch of client writes.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// Writes acknowledged.
    pub writes: u64,
    /// Wall time of the whole batch.
    pub elapsed: Duration,
    /// One sample per write, in microseconds, sorted ascending.
    pub latencies_us: Vec<u64>,
    /// The keys acknowledged, by `k` (for checks after a failure).
    pub acknowledged: Vec<u64>,
}

impl LoadReport {
    /// Acknowledged writes per second.
    pub fn writes_per_sec(&self) -> f64 {
        self.writes as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The `p`-th percentile (0..=100) latency in microseconds (0 without samples).
    pub fn percentile_us(&self, p: f64) -> u64 {
        if self.latencies_us.is_empty() {
            return 0;
        }
        let rank = (p / 100.0 * (self.latencies_us.len() - 1) as f64).round() as usize;
        self.latencies_us[rank.min(self.latencies_us.len() - 1)]
    }
}

/// Writes `set key-<k> = value(k)` for every `k` in `keys` to group 0 (first to `first_target`),
/// with `concurrency` clients in flight (each its own connections), on the current runtime.
pub async fn write_keys(
    members: &BTreeMap<u64, BasicNode>,
    first_target: u64,
    keys: std::ops::Range<u64>,
    concurrency: u64,
    value: fn(u64) -> String,
) -> Result<LoadReport, ClusterError> {
    let load = Load {
        groups: 1,
        keys,
        concurrency,
        value,
        stop_on_error: true,
    };
    load.run(members, Some(first_target)).await
}

/// A key-value write load over a sharded cluster: each key goes to its group.
#[derive(Debug, Clone)]
pub struct Load {
    /// Groups of the cluster.
    pub groups: u32,
    /// The `k` written (`key-<k>`).
    pub keys: std::ops::Range<u64>,
    /// Writers in flight (each with its own connections).
    pub concurrency: u64,
    /// The value of `k`.
    pub value: fn(u64) -> String,
    /// Stop at the first failed write (otherwise record only the acknowledged ones).
    pub stop_on_error: bool,
}

impl Load {
    /// Runs the load on the current compio runtime.
    pub async fn run(
        &self,
        members: &BTreeMap<u64, BasicNode>,
        first_target: Option<u64>,
    ) -> Result<LoadReport, ClusterError> {
        let concurrency = self.concurrency.max(1);
        let started = Instant::now();
        let mut workers = Vec::new();
        for worker in 0..concurrency {
            let mut client = ShardedClient::new(members, self.groups);
            if let Some(target) = first_target {
                client = client.with_target(target);
            }
            let load = self.clone();
            workers.push(compio::runtime::spawn(async move {
                let mut latencies = Vec::new();
                let mut acknowledged = Vec::new();
                let mut k = load.keys.start + worker;
                while k < load.keys.end {
                    let t0 = Instant::now();
                    let request = KvRequest::Set {
                        key: key_name(k),
                        value: (load.value)(k),
                    };
                    match client.write_kv(request).await {
                        Ok(_) => {
                            latencies.push(t0.elapsed().as_micros() as u64);
                            acknowledged.push(k);
                        }
                        Err(error) if load.stop_on_error => return Err(error),
                        Err(error) => tracing::debug!(k, %error, "write not acknowledged"),
                    }
                    k += concurrency;
                }
                Ok::<_, ClusterError>((latencies, acknowledged))
            }));
        }
        let mut report = LoadReport::default();
        for worker in workers {
            let (latencies, acknowledged) = worker.await.map_err(|_| ClusterError::Panicked)??;
            report.latencies_us.extend(latencies);
            report.acknowledged.extend(acknowledged);
        }
        report.elapsed = started.elapsed();
        report.writes = report.latencies_us.len() as u64;
        report.latencies_us.sort_unstable();
        report.acknowledged.sort_unstable();
        Ok(report)
    }
}

/// The key [`write_keys`] writes for `k`.
pub fn key_name(k: u64) -> String {
    format!("key-{k:08}")
}
