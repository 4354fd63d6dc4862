//! `--baseline`: the same ops written by a plain `std::fs` loop on each shard's thread, beside
//! the keel run, so the table can hold keel against what the disk gives without it: each op framed
//! as `len: u32, crc32: u32, payload` (the least a log must do), into a preallocated file (as the
//! journal's segments are), durable per op (`every`), per `inflight` ops (`batch`) or at the end
//! (`none`).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use keel_engine::Histogram;
use serde::Serialize;

use super::workload::Workload;
use super::SyncMode;
use crate::cli::CliError;

/// Frame header of the plain loop: length and crc32.
const FRAME_HEADER_BYTES: usize = 8;

/// The plain loop's figures, over all shards.
#[derive(Debug, Clone, Serialize)]
pub struct Baseline {
    pub ops_per_sec: f64,
    pub mb_per_sec: f64,
    pub fsyncs: u64,
    pub p50_us: u64,
    pub p99_us: u64,
}

/// What one shard's loop does.
struct Plan {
    shard: usize,
    path: PathBuf,
    ops: u64,
    group: usize,
    sync: SyncMode,
    workload: Workload,
}

/// What one shard's loop measured.
struct Measured {
    elapsed: Duration,
    fsyncs: u64,
    latency_us: Histogram,
}

/// Runs the plain loop on `shards` threads at once in `dir`, `ops` in total; removes its files.
pub fn run(
    dir: &Path,
    shards: usize,
    ops: u64,
    group: usize,
    sync: SyncMode,
    workload: Workload,
) -> Result<Baseline, CliError> {
    let mut threads = Vec::with_capacity(shards);
    for shard in 0..shards {
        let plan = Plan {
            shard,
            path: dir.join(format!("baseline-{shard}.log")),
            ops: super::share_of(ops, shards, shard),
            group: if sync == SyncMode::Every { 1 } else { group },
            sync,
            workload,
        };
        threads.push(thread::spawn(move || run_shard(&plan)));
    }
    let mut measured = Vec::with_capacity(shards);
    for (shard, thread) in threads.into_iter().enumerate() {
        let result = thread.join().map_err(|_| CliError::ShardDied {
            shard,
            reason: "the baseline thread panicked".into(),
        })?;
        measured.push(result?);
    }
    Ok(summarize(&measured, ops, workload.entry_bytes))
}

fn summarize(measured: &[Measured], ops: u64, entry_bytes: usize) -> Baseline {
    let elapsed = measured
        .iter()
        .map(|m| m.elapsed)
        .max()
        .unwrap_or_default()
        .as_secs_f64()
        .max(1e-9);
    let mut latency = Histogram::new();
    for m in measured {
        latency.merge(&m.latency_us);
    }
    Baseline {
        ops_per_sec: ops as f64 / elapsed,
        mb_per_sec: (ops * entry_bytes as u64) as f64 / elapsed / 1e6,
        fsyncs: measured.iter().map(|m| m.fsyncs).sum(),
        p50_us: latency.quantile(0.5),
        p99_us: latency.quantile(0.99),
    }
}

fn io_error(plan: &Plan, what: &str) -> impl Fn(std::io::Error) -> CliError {
    let context = format!("baseline {what} {}", plan.path.display());
    move |source| CliError::io(context.clone(), source)
}

fn run_shard(plan: &Plan) -> Result<Measured, CliError> {
    let frame_bytes = FRAME_HEADER_BYTES + plan.workload.entry_bytes;
    let file = preallocated(plan, plan.ops as usize * frame_bytes)?;
    let mut latency_us = Histogram::new();
    let mut fsyncs = 0;
    let mut buffer = Vec::with_capacity(plan.group * frame_bytes);
    let started = Instant::now();
    let mut op = 0;
    while op < plan.ops {
        let group_started = Instant::now();
        let count = (plan.ops - op).min(plan.group as u64);
        buffer.clear();
        for i in 0..count {
            frame(&plan.workload.payload(plan.shard, op + i + 1)?, &mut buffer);
        }
        file.write_all_at(&buffer, op * frame_bytes as u64)
            .map_err(io_error(plan, "write"))?;
        if plan.sync != SyncMode::None {
            file.sync_data().map_err(io_error(plan, "fdatasync"))?;
            fsyncs += 1;
        }
        let micros = group_started.elapsed().as_micros() as u64;
        for _ in 0..count {
            latency_us.record(micros.max(1));
        }
        op += count;
    }
    file.sync_data().map_err(io_error(plan, "fdatasync"))?;
    let elapsed = started.elapsed();
    drop(file);
    std::fs::remove_file(&plan.path).map_err(io_error(plan, "remove"))?;
    Ok(Measured {
        elapsed,
        fsyncs: fsyncs + 1,
        latency_us,
    })
}

/// A file of `len_bytes` zeroes, written and made durable before the clock starts.
fn preallocated(plan: &Plan, len_bytes: usize) -> Result<File, CliError> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&plan.path)
        .map_err(io_error(plan, "create"))?;
    let zeroes = vec![0u8; 1 << 20];
    let mut offset = 0;
    while offset < len_bytes {
        let n = zeroes.len().min(len_bytes - offset);
        file.write_all_at(&zeroes[..n], offset as u64)
            .map_err(io_error(plan, "preallocate"))?;
        offset += n;
    }
    file.sync_all().map_err(io_error(plan, "fsync"))?;
    Ok(file)
}

fn frame(payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
}
