//! Recovery replays from the journal's one streaming scan; when a later entry supersedes an op
//! the streaming replay already applied (prepared again after a point-in-time recovery), it
//! replays by reads from the final index instead, so the state is the newest committed entries.

mod common;

use common::{payload, small_config};
use keel_engine::{encode_set, Engine, EngineConfig, KvStateMachine, RecoveryMode, StateMachine};
use keel_storage::{MemDirectory, MemFs};

type KvEngine = Engine<MemDirectory, KvStateMachine>;

async fn open(fs: &MemFs, config: EngineConfig) -> (KvEngine, keel_engine::RecoveryReport) {
    Engine::open(fs.root(), config, KvStateMachine::new())
        .await
        .expect("open")
}

fn second_version(op: u64) -> Vec<u8> {
    let mut out = Vec::new();
    encode_set(
        format!("k{}", op % 7).as_bytes(),
        format!("second {op}").as_bytes(),
        &mut out,
    )
    .unwrap();
    out
}

/// A log in which op 3 is written, covered by a commit marker, and written again afterwards (the
/// engine never does this itself; a log from another writer, or a future rule, might). The
/// streaming replay applies op 3 before it sees the newer entry, notices, and recovery replays
/// by reads: the state holds the newest entry, as the recovery rule says.
#[compio::test]
async fn an_applied_op_superseded_later_in_the_log_replays_its_newest_entry() {
    let fs = MemFs::new(301);
    let config = small_config();
    {
        let (journal, _) = keel_journal::MetadataJournal::open(
            &fs.root(),
            config.journal.clone(),
            RecoveryMode::TolerateTornTail,
        )
        .await
        .unwrap();
        for op in 1..=5 {
            journal.append(op, &payload(op)).await.unwrap();
        }
        journal.set_commit_op(4);
        journal.persist_commit().await.unwrap();
        journal.append(3, &second_version(3)).await.unwrap();
        journal.set_commit_op(5);
        journal.persist_commit().await.unwrap();
        journal.close().await.unwrap();
    }
    let (engine, report) = open(&fs, config).await;
    assert_eq!(report.applied_op, 5, "{report:?}");
    let mut expected = KvStateMachine::new();
    for op in 1..=5 {
        let command = if op == 3 {
            second_version(3)
        } else {
            payload(op)
        };
        expected.apply(op, &command).unwrap();
    }
    assert_eq!(engine.state_machine().digest(), expected.digest());
}
