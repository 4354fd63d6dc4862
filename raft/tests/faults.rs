//! I/O faults (keel's `MemFs` fault injection): a failed write is reported, never acknowledged,
//! and poisons the store instead of being retried into an unknown state; what was acknowledged
//! before survives a crash.

mod common;

use common::{init_tracing, set_entry};
use futures::stream;
use keel_raft::typ::{Entry, Vote};
use keel_raft::{StoreConfig, TypeConfig};
use keel_storage::{FaultConfig, FaultKind, FaultOp, MemFs};
use openraft::storage::{IOFlushed, RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::type_config::TypeConfigExt;
use openraft::{RaftLogReader, RaftSnapshotBuilder};

fn entries(from: u64, to: u64) -> Vec<Entry> {
    (from..to)
        .map(|i| set_entry(1, i, "k", &i.to_string()))
        .collect()
}

#[test]
/// The journal writes through (`O_DSYNC`), so its durability point is the write itself: a
/// failed write is what a failed fsync was (keel-journal's tests cover the fsync of the
/// write + fdatasync path).
fn failed_journal_write_fails_the_callback_and_poisons_the_store() {
    init_tracing();
    TypeConfig::run(async {
        let fs = MemFs::new(7);
        let (mut log, sm, _) = keel_raft::open_kv(fs.root(), StoreConfig::default())
            .await
            .unwrap();
        log.blocking_append(entries(0, 10)).await.unwrap();

        fs.set_faults(FaultConfig::new().fail_from(FaultOp::Write, 1, FaultKind::Io));
        let (tx, rx) = TypeConfig::oneshot();
        log.append(entries(10, 15), IOFlushed::signal(tx))
            .await
            .unwrap();
        let flushed = rx.await.unwrap();
        assert!(
            flushed.is_err(),
            "an append whose durable write failed was acknowledged"
        );
        // Every later operation reports the failure rather than pretending.
        assert!(log.get_log_state().await.is_err());
        assert!(log.save_vote(&Vote::new(2, 1)).await.is_err());
        let (tx, rx) = TypeConfig::oneshot();
        let appended = log.append(entries(15, 16), IOFlushed::signal(tx)).await;
        assert!(appended.is_err() || rx.await.unwrap().is_err());

        fs.clear_faults();
        fs.crash();
        drop((log, sm));
        let (mut log, _sm, report) = keel_raft::open_kv(fs.root(), StoreConfig::default())
            .await
            .unwrap();
        let recovered = log.try_get_log_entries(..).await.unwrap();
        assert!(
            recovered.len() >= 10,
            "acknowledged entries lost: {report:?}"
        );
        assert_eq!(recovered[..10], entries(0, 10)[..]);
        assert_eq!(
            log.read_vote().await.unwrap(),
            None,
            "the failed vote is not there"
        );
    });
}

#[test]
fn failed_vote_write_keeps_the_previous_vote() {
    init_tracing();
    for op in [
        FaultOp::Write,
        FaultOp::Sync,
        FaultOp::Rename,
        FaultOp::DirSync,
    ] {
        TypeConfig::run(async {
            let fs = MemFs::new(11);
            let (mut log, sm, _) = keel_raft::open_kv(fs.root(), StoreConfig::default())
                .await
                .unwrap();
            log.save_vote(&Vote::new(1, 1)).await.unwrap();
            fs.set_faults(
                FaultConfig::new()
                    .fail_nth(op, 1, FaultKind::Io)
                    .on_paths_containing("raft-meta"),
            );
            // Directory syncs name the directory, not the file: match the root for those.
            if op == FaultOp::DirSync {
                fs.set_faults(FaultConfig::new().fail_nth(op, 1, FaultKind::Io));
            }
            assert!(log.save_vote(&Vote::new(2, 1)).await.is_err(), "{op:?}");
            assert_eq!(
                log.read_vote().await.unwrap(),
                Some(Vote::new(1, 1)),
                "{op:?}"
            );
            fs.clear_faults();
            fs.crash();
            drop((log, sm));
            let (mut log, _sm, _) = keel_raft::open_kv(fs.root(), StoreConfig::default())
                .await
                .unwrap();
            let vote = log.read_vote().await.unwrap();
            // Only a failed directory fsync may leave the new vote in place (the rename itself
            // happened); it must then be the complete new one, never a torn mix.
            assert!(
                vote == Some(Vote::new(1, 1))
                    || (op == FaultOp::DirSync && vote == Some(Vote::new(2, 1))),
                "{op:?}: {vote:?}"
            );
        });
    }
}

#[test]
fn failed_snapshot_persist_keeps_the_current_snapshot() {
    init_tracing();
    TypeConfig::run(async {
        let fs = MemFs::new(13);
        let (_log, mut sm, _) = keel_raft::open_kv(fs.root(), StoreConfig::default())
            .await
            .unwrap();
        let apply = |sm: &mut keel_raft::KvStateMachineStore<_>, es: Vec<Entry>| {
            let items: Vec<_> = es.into_iter().map(|e| Ok((e, None))).collect();
            let mut sm = sm.clone();
            async move { sm.apply(stream::iter(items)).await.unwrap() }
        };
        apply(&mut sm, entries(0, 5)).await;
        let first = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        apply(&mut sm, entries(5, 9)).await;
        fs.set_faults(
            FaultConfig::new()
                .fail_nth(FaultOp::Sync, 1, FaultKind::Io)
                .on_paths_containing("raft-snapshots"),
        );
        assert!(sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .is_err());
        fs.clear_faults();
        let current = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta, first.meta);
        assert_eq!(current.snapshot.into_inner(), first.snapshot.into_inner());
    });
}
