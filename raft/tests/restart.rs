//! Durability across a restart, which openraft's suite never checks (it never reopens a store):
//! write, drop, reopen — log state, entries, vote, committed id and state machine identical.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{
    init_tracing, log_id, membership_entry, open_store, open_store_after_shutdown, set_entry,
};
use futures::stream;
use keel_raft::typ::{Entry, LogId, LogState, SnapshotMeta, StoredMembership, Vote};
use keel_raft::{KvStateMachineStore, LogStore, StoreConfig, TypeConfig};
use keel_storage::DirAccess;
use keel_storage::FsDirectory;
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::type_config::TypeConfigExt;
use openraft::{RaftLogReader, RaftSnapshotBuilder};

/// Everything a restart must bring back.
#[derive(Debug, PartialEq)]
struct Observed {
    log_state: LogState,
    entries: Vec<Entry>,
    vote: Option<Vote>,
    committed: Option<LogId>,
    applied: (Option<LogId>, StoredMembership),
    digest: u64,
    keys: usize,
    snapshot: Option<SnapshotMeta>,
}

async fn observe(
    log: &mut LogStore<TypeConfig, FsDirectory>,
    sm: &mut KvStateMachineStore<FsDirectory>,
) -> Observed {
    Observed {
        log_state: log.get_log_state().await.unwrap(),
        entries: log.try_get_log_entries(..).await.unwrap(),
        vote: log.read_vote().await.unwrap(),
        committed: log.read_committed().await.unwrap(),
        applied: sm.applied_state().await.unwrap(),
        digest: sm.digest(),
        keys: sm.len(),
        snapshot: sm.get_current_snapshot().await.unwrap().map(|s| s.meta),
    }
}

async fn apply(sm: &mut KvStateMachineStore<FsDirectory>, entries: Vec<Entry>) {
    let items = entries.into_iter().map(|e| Ok((e, None)));
    sm.apply(stream::iter(items)).await.unwrap();
}

/// Writes a log with a membership entry, 120 sets (some overwriting), a vote, a snapshot, a
/// purge below it, a truncation of an uncommitted suffix, and a commit point; returns the
/// committed index.
async fn write_history(
    log: &mut LogStore<TypeConfig, FsDirectory>,
    sm: &mut KvStateMachineStore<FsDirectory>,
) -> u64 {
    let mut entries = vec![membership_entry(1, 0, &[1, 2, 3])];
    for i in 1..=120u64 {
        entries.push(set_entry(1, i, &format!("k{}", i % 70), &format!("v{i}")));
    }
    // Several appends, like openraft's batches.
    for chunk in entries.chunks(25) {
        log.blocking_append(chunk.to_vec()).await.unwrap();
    }
    log.save_vote(&Vote::new(1, 1)).await.unwrap();

    // Apply and snapshot up to 60, purge up to 40 (openraft keeps some log behind a snapshot).
    apply(sm, entries[..=60].to_vec()).await;
    let snapshot = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    assert_eq!(snapshot.meta.last_log_id, Some(log_id(1, 1, 60)));
    log.purge(log_id(1, 1, 40)).await.unwrap();

    // An uncommitted suffix from term 1 is replaced by term 2's entries.
    log.truncate_after(Some(log_id(1, 1, 110))).await.unwrap();
    log.save_vote(&Vote::new(2, 2)).await.unwrap();
    let replacement: Vec<Entry> = (111..=130u64)
        .map(|i| set_entry(2, i, &format!("t2-{i}"), "x"))
        .collect();
    log.blocking_append(replacement.clone()).await.unwrap();

    let committed = 115;
    let mut all = entries[..=110].to_vec();
    all.extend(replacement);
    log.save_committed(Some(all[committed as usize].log_id))
        .await
        .unwrap();
    apply(sm, all[61..=committed as usize].to_vec()).await;
    committed
}

#[test]
fn reopen_after_clean_shutdown_is_identical() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    TypeConfig::run(async {
        let (mut log, mut sm, _) = open_store(dir.path(), StoreConfig::default()).await;
        let committed = write_history(&mut log, &mut sm).await;
        let before = observe(&mut log, &mut sm).await;
        assert_eq!(before.applied.0.map(|l| l.index), Some(committed));
        assert_eq!(before.log_state.last_purged_log_id, Some(log_id(1, 1, 40)));
        assert_eq!(before.entries.len(), 90, "41..=130");
        log.sync().await.unwrap();
        drop((log, sm));

        let (mut log, mut sm, report) = open_store(dir.path(), StoreConfig::default()).await;
        let after = observe(&mut log, &mut sm).await;
        assert_eq!(after, before);
        assert_eq!(report.snapshot, Some(log_id(1, 1, 60)));
        assert_eq!(
            report.replayed,
            committed - 60,
            "snapshot + replay up to committed"
        );
        assert!(report.discarded_after_gap.is_none());
    });
}

#[test]
fn reopen_after_plain_drop_keeps_the_idle_commit_watermark() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    TypeConfig::run(async {
        let (mut log, mut sm, _) = open_store(dir.path(), StoreConfig::default()).await;
        write_history(&mut log, &mut sm).await;
        let before = observe(&mut log, &mut sm).await;
        // No sync: the delayed commit marker must make the watermark durable once idle.
        TypeConfig::sleep(Duration::from_millis(100)).await;
        drop((log, sm));

        let (mut log, mut sm, _) = open_store(dir.path(), StoreConfig::default()).await;
        assert_eq!(observe(&mut log, &mut sm).await, before);
    });
}

#[test]
fn truncated_entries_stay_gone_and_the_log_continues() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    TypeConfig::run(async {
        let (mut log, _sm, _) = open_store(dir.path(), StoreConfig::default()).await;
        let entries: Vec<Entry> = (0..20)
            .map(|i| set_entry(1, i, "k", &i.to_string()))
            .collect();
        log.blocking_append(entries.clone()).await.unwrap();
        log.truncate_after(Some(log_id(1, 1, 9))).await.unwrap();
        drop((log, _sm));

        let (mut log, sm, report) = open_store(dir.path(), StoreConfig::default()).await;
        assert_eq!(report.last_index, Some(9));
        assert_eq!(
            log.try_get_log_entries(..).await.unwrap(),
            entries[..10].to_vec()
        );
        // Re-appending over the truncated range after a restart works and survives another one.
        let more: Vec<Entry> = (10..15).map(|i| set_entry(3, i, "k", "new")).collect();
        log.blocking_append(more.clone()).await.unwrap();
        drop((log, sm));

        let (mut log, _sm, _) = open_store(dir.path(), StoreConfig::default()).await;
        let mut expected = entries[..10].to_vec();
        expected.extend(more);
        assert_eq!(log.try_get_log_entries(..).await.unwrap(), expected);
    });
}

#[test]
fn a_second_open_of_the_same_directory_is_refused() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    TypeConfig::run(async {
        let first = open_store(dir.path(), StoreConfig::default()).await;
        let root = FsDirectory::open_with(dir.path(), DirAccess::Existing)
            .await
            .unwrap();
        let second = keel_raft::open_kv(root, StoreConfig::default()).await;
        assert!(second.is_err(), "two stores on one directory");
        drop(first);
        let root = FsDirectory::open_with(dir.path(), DirAccess::Existing)
            .await
            .unwrap();
        assert!(keel_raft::open_kv(root, StoreConfig::default())
            .await
            .is_ok());
    });
}

/// A whole raft node: writes through openraft, shutdown, restart on the same directory.
#[test]
fn single_node_raft_restarts_with_the_same_state() {
    use std::collections::BTreeMap;

    use keel_raft::network::NetworkFactory;
    use keel_raft::KvRequest;
    use openraft::BasicNode;

    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    // Snapshot every 50 entries, keep 10: the restart loads a snapshot and replays the rest.
    let raft_config = Arc::new(keel_raft::cluster::raft_config(50, 10).unwrap());
    let store_config = StoreConfig::for_snapshot_policy(50, 10);
    TypeConfig::run(async {
        let (log, sm, _) = open_store(dir.path(), store_config.clone()).await;
        let raft = keel_raft::Raft::new(
            1,
            raft_config.clone(),
            NetworkFactory::new(0),
            log.clone(),
            sm.clone(),
        )
        .await
        .unwrap();
        let members = BTreeMap::from([(1, BasicNode::new("127.0.0.1:1"))]);
        raft.initialize(members).await.unwrap();
        raft.wait(Some(Duration::from_secs(10)))
            .leader_with_quorum_acked(None, "single node leads")
            .await
            .unwrap();
        for i in 0..200 {
            let request = KvRequest::Set {
                key: format!("key-{:03}", i % 150),
                value: format!("value-{i}"),
            };
            raft.client_write(request).await.unwrap();
        }
        let applied = sm.last_applied();
        let digest = sm.digest();
        assert_eq!(sm.len(), 150);
        assert!(
            sm.current_snapshot_meta().is_some(),
            "the policy built a snapshot"
        );
        raft.shutdown().await.unwrap();
        log.sync().await.unwrap();
        drop((raft, log, sm));

        let (log, sm, report) = open_store_after_shutdown(dir.path(), store_config).await;
        assert!(report.snapshot.is_some());
        assert!(report.last_purged.is_some(), "purged behind the snapshot");
        assert_eq!(
            sm.last_applied(),
            applied,
            "applied state back before raft starts"
        );
        assert_eq!(sm.digest(), digest);
        let raft = keel_raft::Raft::new(1, raft_config, NetworkFactory::new(0), log, sm.clone())
            .await
            .unwrap();
        let metrics = raft
            .wait(Some(Duration::from_secs(10)))
            .metrics(|m| m.current_leader == Some(1), "re-elected")
            .await
            .unwrap();
        assert!(metrics.last_applied >= applied);
        raft.client_write(KvRequest::Delete {
            key: "key-000".into(),
        })
        .await
        .unwrap();
        assert_eq!(sm.len(), 149);
        assert!(sm.last_applied() > applied);
        raft.shutdown().await.unwrap();
    });
}

/// Batches can reach the disk out of order (the journal admits appends past its in-flight bound
/// in any order); an entry above a hole was never acknowledged, because callbacks fire in order.
/// Open must cut the log at the hole, durably.
#[test]
fn open_cuts_the_log_at_a_gap_and_the_cut_sticks() {
    use keel_journal::{MetadataJournal, RecoveryMode};

    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig::default();
    TypeConfig::run(async {
        {
            // Write the journal directly: indexes 0..=5, then 8..=10 (6 and 7 never made it).
            let root = FsDirectory::open_with(dir.path(), DirAccess::Create)
                .await
                .unwrap();
            let (journal, _) = MetadataJournal::open(
                &root,
                config.journal.clone(),
                RecoveryMode::TolerateTornTail,
            )
            .await
            .unwrap();
            for index in (0..=5).chain(8..=10) {
                let entry = set_entry(1, index, "k", &index.to_string());
                let payload = serde_json::to_vec(&entry).unwrap();
                journal
                    .append(keel_raft::op_of(index), &payload)
                    .await
                    .unwrap();
            }
            journal.close().await.unwrap();
        }
        let (mut log, sm, report) = open_store(dir.path(), config.clone()).await;
        assert_eq!(report.discarded_after_gap, Some(6));
        assert_eq!(report.last_index, Some(5));
        assert_eq!(log.try_get_log_entries(..).await.unwrap().len(), 6);
        // Appending 6.. continues the log; the old 8..=10 must not come back after a restart.
        let more: Vec<Entry> = (6..=7).map(|i| set_entry(2, i, "k", "new")).collect();
        log.blocking_append(more).await.unwrap();
        drop((log, sm));

        let (mut log, _sm, report) = open_store(dir.path(), config).await;
        assert_eq!(report.discarded_after_gap, None);
        assert_eq!(report.last_index, Some(7));
        let entries = log.try_get_log_entries(..).await.unwrap();
        assert_eq!(entries.len(), 8);
        assert!(entries[6..].iter().all(|e| e.log_id.leader_id.term == 2));
    });
}

type CounterStore = (
    LogStore<common::counter::CounterConfig, FsDirectory>,
    keel_raft::StateMachineStore<
        common::counter::CounterConfig,
        common::counter::Counters,
        FsDirectory,
    >,
    keel_raft::OpenReport<common::counter::CounterConfig>,
);

async fn open_counter_store(path: &std::path::Path) -> CounterStore {
    let root = FsDirectory::open_with(path, DirAccess::Create)
        .await
        .unwrap();
    keel_raft::open(root, StoreConfig::default()).await.unwrap()
}

fn counter_log_id(
    term: u64,
    index: u64,
) -> keel_raft::openraft::alias::LogIdOf<common::counter::CounterConfig> {
    use keel_raft::openraft::alias::{LeaderIdOf, LogIdOf};
    use keel_raft::openraft::vote::RaftLeaderIdExt;
    type C = common::counter::CounterConfig;
    LogIdOf::<C>::new(LeaderIdOf::<C>::new_committed(term, 1), index)
}

/// The same durability with an application's own type configuration (its own command enum,
/// node type and openraft's standard leader id) and state machine: a vote, appends, a snapshot,
/// a purge, a truncation and a commit point survive a clean restart, and the machine is the
/// snapshot plus the log replayed up to the committed id.
#[test]
fn reopen_with_an_application_config_is_identical() {
    use common::counter::{CounterCommand, CounterConfig};
    use keel_raft::openraft::alias::{EntryOf, VoteOf};
    use keel_raft::openraft::entry::RaftEntry;
    use keel_raft::openraft::Membership;

    let (open, log_id) = (open_counter_store, counter_log_id);
    let add = |index: u64| CounterCommand::Add {
        counter: (index % 3) as u32,
        by: index as i64,
    };

    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    CounterConfig::run(async {
        let (mut log, mut sm, _) = open(dir.path()).await;
        let voters = std::collections::BTreeSet::from([1u64, 2, 3]);
        let mut entries: Vec<EntryOf<CounterConfig>> = vec![RaftEntry::new_membership(
            log_id(1, 0),
            Membership::new_with_defaults(vec![voters], []),
        )];
        entries.extend((1..=60).map(|i| RaftEntry::new_normal(log_id(1, i), add(i))));
        log.blocking_append(entries.clone()).await.unwrap();
        let vote = VoteOf::<CounterConfig>::new(1, 1);
        log.save_vote(&vote).await.unwrap();
        let items = entries[..=30].iter().cloned().map(|e| Ok((e, None)));
        sm.apply(stream::iter(items)).await.unwrap();
        let snapshot = sm.get_snapshot_builder().await.build_snapshot().await;
        assert_eq!(snapshot.unwrap().meta.last_log_id, Some(log_id(1, 30)));
        log.purge(log_id(1, 20)).await.unwrap();
        log.truncate_after(Some(log_id(1, 50))).await.unwrap();
        log.save_committed(Some(log_id(1, 45))).await.unwrap();
        let items = entries[31..=45].iter().cloned().map(|e| Ok((e, None)));
        sm.apply(stream::iter(items)).await.unwrap();
        let before = (
            log.get_log_state().await.unwrap(),
            log.try_get_log_entries(..).await.unwrap(),
            sm.applied_state().await.unwrap(),
            sm.read(|c| c.0.clone()),
        );
        log.sync().await.unwrap();
        drop((log, sm));

        let (mut log, mut sm, report) = open(dir.path()).await;
        let after = (
            log.get_log_state().await.unwrap(),
            log.try_get_log_entries(..).await.unwrap(),
            sm.applied_state().await.unwrap(),
            sm.read(|c| c.0.clone()),
        );
        assert_eq!(after.0, before.0);
        assert_eq!(after.1.len(), 30, "21..=50");
        assert_eq!(format!("{:?}", after.1), format!("{:?}", before.1));
        assert_eq!(after.2, before.2);
        assert_eq!(after.3, before.3);
        assert_eq!(log.read_vote().await.unwrap(), Some(vote));
        assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, 45)));
        assert_eq!(report.snapshot, Some(log_id(1, 30)));
        assert_eq!(report.replayed, 15, "31..=45 replayed onto the snapshot");
        // The counters, computed independently: counter c holds the sum of i ≡ c (mod 3).
        let mut expected = std::collections::BTreeMap::new();
        for i in 1..=45u64 {
            *expected.entry((i % 3) as u32).or_insert(0i64) += i as i64;
        }
        assert_eq!(after.3, expected);
    });
}

/// A store whose log an earlier build wrote as JSON opens unchanged: its JSON entries decode,
/// the state replays from them, and new entries (binary) follow them.
#[test]
fn a_log_written_as_json_by_an_earlier_build_still_opens() {
    use keel_journal::MetadataJournal;

    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig::default();
    let legacy: Vec<Entry> = (0..20u64)
        .map(|i| set_entry(1, i, &format!("k{i}"), &format!("v{i}")))
        .collect();
    TypeConfig::run(async {
        // What an earlier build left: the whole entry as JSON at op index + 1, committed to 14.
        let root = FsDirectory::open_with(dir.path(), DirAccess::Create)
            .await
            .unwrap();
        let (journal, _) =
            MetadataJournal::open(&root, config.journal.clone(), config.recovery_mode)
                .await
                .unwrap();
        for entry in &legacy {
            let json = serde_json::to_vec(entry).unwrap();
            assert_eq!(json[0], b'{');
            journal
                .append(keel_raft::op_of(entry.log_id.index), &json)
                .await
                .unwrap();
        }
        journal.set_commit_op(keel_raft::op_of(14));
        journal.persist_commit().await.unwrap();
        journal.flush().await.unwrap();
        drop(journal);

        let (mut log, sm, report) = open_store(dir.path(), config.clone()).await;
        assert_eq!(log.try_get_log_entries(..).await.unwrap(), legacy);
        assert_eq!(report.replayed, 15, "0..=14 replayed from the JSON entries");
        assert_eq!(sm.get("k14").as_deref(), Some("v14"));
        assert_eq!(sm.get("k15"), None, "above the commit watermark");
        let newer = vec![set_entry(1, 20, "k20", "v20")];
        log.blocking_append(newer.clone()).await.unwrap();
        log.sync().await.unwrap();
        drop((log, sm));

        let (mut log, _sm, _) = open_store(dir.path(), config).await;
        let mut expected = legacy.clone();
        expected.extend(newer);
        assert_eq!(log.try_get_log_entries(..).await.unwrap(), expected);
    });
}
