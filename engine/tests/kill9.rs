//! Real crashes: a child process runs an engine on a real directory (prepare, commit, automatic
//! checkpoints) and reports each durable commit watermark after it is durable; the parent
//! `kill -9`s it mid-stream, recovers, and checks that every reported commit survived and the
//! state equals the model's.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use common::{model_through, payload};
use keel_engine::{Engine, EngineConfig, KvStateMachine};
use keel_storage::DirAccess;
use keel_storage::FsDirectory;

const CHILD_ENV: &str = "KEEL_ENGINE_KILL_CHILD_DIR";
/// Upper bound on the child's ops, so a child whose parent died does not run forever.
const CHILD_MAX_OPS: u64 = 200_000;

fn config() -> EngineConfig {
    let mut config = common::small_config();
    config.journal.slot_count = 128;
    config.journal.segment_bytes = 16 << 10;
    config.checkpoint_margin_ops = 32;
    config
}

/// Not a test of its own: the child half of `kill_9_mid_stream_loses_no_reported_commit`.
#[test]
fn kill_child_helper() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let runtime = compio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let root = FsDirectory::open_with(&dir, DirAccess::Create)
            .await
            .unwrap();
        let (engine, _) = Engine::open(root, config(), KvStateMachine::new())
            .await
            .unwrap();
        let mut out = std::io::stdout().lock();
        for op in 1..=CHILD_MAX_OPS {
            engine.append(op, &payload(op)).await.unwrap();
            engine.commit(op).await.unwrap();
            if op % 7 == 0 {
                engine.persist_commit().await.unwrap();
            }
            // Printed only after the watermark is durable: the parent holds us to it.
            writeln!(out, "ACK {}", engine.durable_commit_op()).unwrap();
            out.flush().unwrap();
        }
    });
}

/// Kills the child if the parent's checks panic first, so no child outlives the test.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn kill_9_mid_stream_loses_no_reported_commit() {
    for kill_after_acks in [150u64, 400, 700] {
        let tmp = tempfile::tempdir().unwrap();
        let mut child = KillOnDrop(
            Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "kill_child_helper",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD_ENV, tmp.path())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let mut lines = BufReader::new(child.0.stdout.take().unwrap()).lines();
        let mut acked = 0u64;
        let mut seen = 0u64;
        while seen < kill_after_acks {
            let line = lines.next().expect("child died early").unwrap();
            if let Some(n) = line.strip_prefix("ACK ") {
                acked = acked.max(n.trim().parse().unwrap());
                seen += 1;
            }
        }
        drop(child); // SIGKILL, then reap

        let runtime = compio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let root = FsDirectory::open_with(tmp.path(), DirAccess::Existing)
                .await
                .unwrap();
            let (engine, report) = Engine::open(root, config(), KvStateMachine::new())
                .await
                .unwrap();
            assert!(
                report.applied_op >= acked,
                "kill after {kill_after_acks}: reported {acked} durable, recovered {report:?}"
            );
            assert_eq!(*engine.state_machine(), model_through(report.applied_op));
            assert!(
                report.snapshot_op > 0,
                "automatic checkpoints ran: {report:?}"
            );
        });
    }
}
