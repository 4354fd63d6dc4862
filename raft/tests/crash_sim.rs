//! The store under keel's crash model, per raft group: two groups' stores (as two shards of a
//! node) in their own directories of one `MemFs`, random raft-shaped workloads interleaved
//! between them, a crash of the whole file system at a random moment (appends still in flight,
//! and half the time in the middle of a vote, a purge or a truncation), reopen, and check each
//! group against its model. A crash is a power cut, a process crash (the
//! page cache survives), or a process crash followed, one life later, by a power cut.
//!
//! Invariants after every crash + reopen, for each group against its own model:
//! - every entry whose `IOFlushed` callback fired is present, byte for byte (unless purged, or
//!   truncated by a `truncate_after` that returned);
//! - every entry present is the newest one written at its index (a truncated or overwritten
//!   entry never comes back), and the log is contiguous after the last purged id;
//! - the vote and the last purged id are exactly the last ones whose call returned, or the one
//!   of the call the crash interrupted (all or nothing);
//! - the committed id is at most the last one saved, and its entry is in the log;
//! - the current snapshot is the last one built, and the state machine is that snapshot plus the
//!   log replayed up to the recovered committed id.
//!
//! `KEEL_TEST_ROUNDS=n` sets the number of seeds (default 40); `KEEL_RAFT_SIM_SEED=s` replays one.

mod common;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use common::{init_tracing, set_entry};
use futures::stream;
use keel_engine::KvStateMachine;
use keel_raft::typ::{Entry, LogId, Vote};
use keel_raft::{StoreConfig, TypeConfig};
use keel_storage::{open_dir_durable, MemDirectory, MemFs};
use openraft::storage::{IOFlushed, RaftLogStorage, RaftStateMachine};
use openraft::type_config::TypeConfigExt;
use openraft::{RaftLogReader, RaftSnapshotBuilder};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const LIVES_PER_SEED: u32 = 3;
/// Raft groups (shards) of the simulated node, each its own store on the one crashing disk.
const GROUPS: usize = 2;
const MAX_STEPS_PER_LIFE: u32 = 120;

fn rounds() -> u64 {
    std::env::var("KEEL_TEST_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40)
        .clamp(1, 10_000)
}

/// What the workload knows was written and acknowledged.
#[derive(Debug, Default, Clone)]
struct Model {
    /// Bumped at each crash: a callback that fires after the crash instant does not count.
    life: u32,
    /// Newest entry written at each live index, and whether its callback fired.
    entries: BTreeMap<u64, (Entry, bool)>,
    vote: Option<Vote>,
    last_purged: Option<LogId>,
    committed: Option<LogId>,
    /// The last snapshot built (durable on return): its last log id.
    snapshot: Option<Option<LogId>>,
    /// An operation the crash cut short: its effect may or may not have become durable.
    interrupted: Option<Interrupted>,
}

#[derive(Debug, Clone)]
enum Interrupted {
    Vote(Vote),
    Purge(LogId),
    Truncate { first_gone: u64 },
}

fn small_config() -> StoreConfig {
    let mut config = StoreConfig::for_snapshot_policy(100, 20);
    // Small segments, so purges delete and rewrite segments during the run.
    config.journal.segment_bytes = 16 << 10;
    config
}

#[test]
fn crash_model_never_loses_acknowledged_state() {
    init_tracing();
    let seeds: Vec<u64> = match std::env::var("KEEL_RAFT_SIM_SEED") {
        Ok(seed) => vec![seed.parse().expect("KEEL_RAFT_SIM_SEED")],
        Err(_) => (0..rounds()).collect(),
    };
    let mut totals = Totals::default();
    let seed_count = seeds.len();
    for seed in seeds {
        let t = TypeConfig::run(one_seed(seed));
        totals.crashes += t.crashes;
        totals.crashes_in_flight += t.crashes_in_flight;
        totals.acked_checked += t.acked_checked;
        totals.repairs += t.repairs;
        totals.gaps += t.gaps;
        totals.interrupted += t.interrupted;
        totals.interrupted_durable += t.interrupted_durable;
        totals.power_cuts += t.power_cuts;
        totals.process_crashes += t.process_crashes;
        totals.process_crash_then_power_cut += t.process_crash_then_power_cut;
    }
    // The run must have exercised what it claims to.
    eprintln!("{totals:?}");
    assert!(totals.crashes_in_flight > 0 && totals.acked_checked > 0);
    if seed_count >= 20 {
        assert!(totals.process_crash_then_power_cut > 0 && totals.process_crashes > 0);
    }
}

/// Yields to the executor once (lets the spawned append tasks and the journal's writer run).
struct YieldOnce(bool);

impl std::future::Future for YieldOnce {
    type Output = ();
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.0 {
            return std::task::Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}

/// Coverage counters, so a run that stops exercising crashes mid-write is noticed.
#[derive(Debug, Default)]
struct Totals {
    crashes: u64,
    crashes_in_flight: u64,
    acked_checked: u64,
    repairs: u64,
    gaps: u64,
    interrupted: u64,
    /// Interrupted operations whose effect was found durable (the rest were cut before it).
    interrupted_durable: u64,
    power_cuts: u64,
    process_crashes: u64,
    /// Process crash, a life of work, then a power cut.
    process_crash_then_power_cut: u64,
}

/// How a life ends: a power cut (as this simulator always did), a process crash that leaves the
/// page cache, or a process crash now and a power cut at the end of the next life: what that life
/// recovered (and acknowledged) must survive it, which catches a restart that builds on data or
/// directory entries the dead process never made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Restart {
    PowerCut,
    ProcessCrash,
    ProcessCrashThenPowerCut,
}

impl Restart {
    fn choose(rng: &mut SmallRng) -> Self {
        match rng.gen_range(0..4) {
            0 | 1 => Restart::PowerCut,
            2 => Restart::ProcessCrash,
            _ => Restart::ProcessCrashThenPowerCut,
        }
    }
}

type Stores = (
    keel_raft::LogStore<TypeConfig, MemDirectory>,
    keel_raft::KvStateMachineStore<MemDirectory>,
);

/// Reopens the store, checks it against the model, and adopts what it recovered.
async fn reopen_and_check(
    seed: u64,
    life: u32,
    fs: &MemFs,
    group: usize,
    model: &Rc<RefCell<Model>>,
    term: &mut u64,
    totals: &mut Totals,
) -> Stores {
    // Each group's store in its own directory of the one file system: a crash hits all at once.
    let root = open_dir_durable(&fs.root(), &format!("shard-{group}"))
        .await
        .unwrap_or_else(|e| panic!("seed {seed} life {life} group {group}: open dir: {e}"));
    let (mut log, mut sm, report) = keel_raft::open_kv(root, small_config())
        .await
        .unwrap_or_else(|e| panic!("seed {seed} life {life} group {group}: reopen failed: {e}"));
    let frozen = model.borrow().clone();
    totals.interrupted_durable += u64::from(interrupted_took_effect(&frozen, &mut log).await);
    totals.acked_checked += check(seed, life, &frozen, &mut log, &mut sm, &report).await;
    totals.repairs += report.journal.repairs.len() as u64;
    totals.gaps += u64::from(report.discarded_after_gap.is_some());
    let entries = log.try_get_log_entries(..).await.unwrap();
    // What the state machine applied is committed whatever the log's committed id says (that is
    // written with a later entry, so a crash can leave it behind): like openraft, which starts
    // from the larger of the two, the workload never truncates or applies it again.
    let (applied, _) = sm.applied_state().await.unwrap();
    let committed = log.read_committed().await.unwrap().max(applied);
    let vote = log.read_vote().await.unwrap();
    let last_purged = log.get_log_state().await.unwrap().last_purged_log_id;
    {
        let mut m = model.borrow_mut();
        adopt_recovered(&mut m, entries, committed);
        m.vote = vote;
        m.last_purged = last_purged;
        m.interrupted = None;
    }
    if let Some(vote) = model.borrow().vote {
        *term = (*term).max(vote.leader_id.term);
    }
    (log, sm)
}

/// Cuts power or crashes the process (see [`Restart`]); returns whether a power cut is due at
/// the end of the next life.
fn crash(fs: &MemFs, rng: &mut SmallRng, power_cut_due: bool, totals: &mut Totals) -> bool {
    let restart = if power_cut_due {
        totals.process_crash_then_power_cut += 1;
        Restart::PowerCut
    } else {
        Restart::choose(rng)
    };
    if restart == Restart::PowerCut {
        totals.power_cuts += 1;
        fs.crash();
    } else {
        totals.process_crashes += 1;
        fs.process_crash();
    }
    restart == Restart::ProcessCrashThenPowerCut
}

/// One raft group of the simulated node: its model, term and open store.
struct Group {
    model: Rc<RefCell<Model>>,
    term: u64,
    stores: Option<Stores>,
}

async fn one_seed(seed: u64) -> Totals {
    let mut totals = Totals::default();
    let fs = MemFs::new(seed);
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut groups: Vec<Group> = (0..GROUPS)
        .map(|_| Group {
            model: Rc::new(RefCell::new(Model::default())),
            term: 1,
            stores: None,
        })
        .collect();
    // Set by a process crash that a power cut must follow at the end of the next life.
    let mut power_cut_due = false;
    let mut life = 0;
    while life < LIVES_PER_SEED || power_cut_due {
        for (index, g) in groups.iter_mut().enumerate() {
            let stores =
                reopen_and_check(seed, life, &fs, index, &g.model, &mut g.term, &mut totals).await;
            g.stores = Some(stores);
        }
        // The groups' steps interleave, as shards' writes do on one disk.
        let crash_at = rng.gen_range(1..=MAX_STEPS_PER_LIFE);
        for _ in 0..crash_at {
            let g = &mut groups[rng.gen_range(0..GROUPS)];
            let Some((log, sm)) = g.stores.as_mut() else {
                unreachable!("opened above");
            };
            step(&mut rng, &g.model, log, sm, &mut g.term).await;
        }
        // Half the time the crash comes in the middle of a vote, a purge or a truncation.
        let mut yields = rng.gen_range(0..6);
        let g = &mut groups[rng.gen_range(0..GROUPS)];
        if let Some((log, _)) = g.stores.as_ref() {
            if rng.gen_bool(0.5) && start_interrupted(&mut rng, &g.model, log, &mut g.term) {
                totals.interrupted += 1;
                yields = rng.gen_range(0..16);
            }
        }
        // The crash, with appends possibly in flight; the old stores' tasks now hit stale
        // handles and fail, which poisons them. Let the in-flight I/O get partway first: a
        // random number of polls of the other tasks.
        for _ in 0..yields {
            YieldOnce(false).await;
        }
        totals.crashes += 1;
        let mut in_flight = false;
        for g in &groups {
            g.model.borrow_mut().life += 1;
            in_flight |= g
                .stores
                .as_ref()
                .is_some_and(|(log, _)| log.pending_appends() > 0);
        }
        totals.crashes_in_flight += u64::from(in_flight);
        power_cut_due = crash(&fs, &mut rng, power_cut_due, &mut totals);
        for g in &mut groups {
            drop(g.stores.take());
        }
        TypeConfig::sleep(std::time::Duration::from_millis(1)).await;
        life += 1;
    }
    // The last crash is checked too.
    for (index, g) in groups.iter_mut().enumerate() {
        drop(reopen_and_check(seed, life, &fs, index, &g.model, &mut g.term, &mut totals).await);
    }
    totals
}

async fn step(
    rng: &mut SmallRng,
    model: &Rc<RefCell<Model>>,
    log: &mut keel_raft::LogStore<TypeConfig, MemDirectory>,
    sm: &mut keel_raft::KvStateMachineStore<MemDirectory>,
    term: &mut u64,
) {
    let next = {
        let m = model.borrow();
        m.entries
            .keys()
            .next_back()
            .map(|i| i + 1)
            .or(m.last_purged.map(|p| p.index + 1))
            .unwrap_or(0)
    };
    match rng.gen_range(0..100) {
        // Append a batch; its callback marks the entries acknowledged.
        0..=54 => {
            let count = rng.gen_range(1..=6);
            let entries: Vec<Entry> = (next..next + count)
                .map(|i| set_entry(*term, i, &format!("k{}", i % 17), &format!("v{i}-{term}")))
                .collect();
            for entry in &entries {
                model
                    .borrow_mut()
                    .entries
                    .insert(entry.log_id.index, (entry.clone(), false));
            }
            let (tx, rx) = TypeConfig::oneshot();
            log.append(entries.clone(), IOFlushed::signal(tx))
                .await
                .unwrap();
            let model = model.clone();
            let life = model.borrow().life;
            compio::runtime::spawn(async move {
                if let Ok(Ok(())) = rx.await {
                    let mut m = model.borrow_mut();
                    if m.life != life {
                        return;
                    }
                    for entry in entries {
                        // Only if it is still the entry at that index (not truncated since).
                        if let Some((current, acked)) = m.entries.get_mut(&entry.log_id.index) {
                            if *current == entry {
                                *acked = true;
                            }
                        }
                    }
                }
            })
            .detach();
        }
        // A new term: vote, and a leader of that term may rewrite the unacknowledged tail.
        55..=62 => {
            *term += 1;
            let vote = Vote::new(*term, 1);
            log.save_vote(&vote).await.unwrap();
            model.borrow_mut().vote = Some(vote);
        }
        63..=72 => {
            // Truncate above the committed id (raft never truncates committed entries).
            let (floor, last) = {
                let m = model.borrow();
                let floor = m
                    .committed
                    .max(m.last_purged)
                    .map(|c| c.index + 1)
                    .unwrap_or(0);
                (floor, m.entries.keys().next_back().copied())
            };
            if let Some(last) = last.filter(|l| *l >= floor) {
                let keep = rng.gen_range(floor..=last);
                let keep_id = if keep == floor {
                    let m = model.borrow();
                    m.committed.max(m.last_purged)
                } else {
                    Some(model.borrow().entries[&(keep - 1)].0.log_id)
                };
                log.truncate_after(keep_id).await.unwrap();
                let first_gone = keep_id.map(|k| k.index + 1).unwrap_or(0);
                model.borrow_mut().entries.split_off(&first_gone);
            }
        }
        // Commit and apply a prefix of the acknowledged entries.
        73..=86 => {
            let (from, upto) = {
                let m = model.borrow();
                let from = m.committed.map(|c| c.index + 1).unwrap_or(0);
                let acked_prefix = m
                    .entries
                    .range(from..)
                    .take_while(|(_, (_, acked))| *acked)
                    .map(|(i, _)| *i)
                    .last();
                (from, acked_prefix)
            };
            if let Some(upto) = upto {
                let entries: Vec<Entry> = model
                    .borrow()
                    .entries
                    .range(from..=upto)
                    .map(|(_, (e, _))| e.clone())
                    .collect();
                let committed = entries.last().map(|e| e.log_id);
                log.save_committed(committed).await.unwrap();
                model.borrow_mut().committed = committed;
                let items = entries.into_iter().map(|e| Ok((e, None)));
                sm.apply(stream::iter(items)).await.unwrap();
            }
        }
        // Snapshot the state machine.
        87..=91 => {
            let snapshot = sm
                .get_snapshot_builder()
                .await
                .build_snapshot()
                .await
                .unwrap();
            model.borrow_mut().snapshot = Some(snapshot.meta.last_log_id);
        }
        // Purge behind the snapshot.
        92..=95 => {
            let target = {
                let m = model.borrow();
                m.snapshot
                    .flatten()
                    .filter(|s| Some(*s) > m.last_purged)
                    .and_then(|s| m.entries.get(&s.index).map(|(e, _)| e.log_id))
            };
            if let Some(upto) = target {
                log.purge(upto).await.unwrap();
                let mut m = model.borrow_mut();
                m.last_purged = Some(upto);
                m.entries = m.entries.split_off(&(upto.index + 1));
            }
        }
        // Let the I/O run for a while.
        _ => TypeConfig::sleep(std::time::Duration::from_micros(rng.gen_range(0..300))).await,
    }
}

async fn check(
    seed: u64,
    life: u32,
    model: &Model,
    log: &mut keel_raft::LogStore<TypeConfig, MemDirectory>,
    sm: &mut keel_raft::KvStateMachineStore<MemDirectory>,
    report: &keel_raft::OpenReport,
) -> u64 {
    let ctx = format!("seed {seed} life {life}");
    let state = log.get_log_state().await.unwrap();
    let vote = log.read_vote().await.unwrap();
    let (maybe_vote, maybe_purged, maybe_gone) = match &model.interrupted {
        Some(Interrupted::Vote(v)) => (Some(*v), None, None),
        Some(Interrupted::Purge(p)) => (None, Some(*p), None),
        Some(Interrupted::Truncate { first_gone }) => (None, None, Some(*first_gone)),
        None => (None, None, None),
    };
    // An interrupted call is all or nothing: the old value or the new one, never a mix.
    assert!(
        state.last_purged_log_id == model.last_purged
            || (maybe_purged.is_some() && state.last_purged_log_id == maybe_purged),
        "{ctx}: last purged {:?}, model {:?} / {maybe_purged:?}",
        state.last_purged_log_id,
        model.last_purged
    );
    assert!(
        vote == model.vote || (maybe_vote.is_some() && vote == maybe_vote),
        "{ctx}: vote {vote:?}, model {:?} / {maybe_vote:?}",
        model.vote
    );
    let entries = log.try_get_log_entries(..).await.unwrap();
    let first = state.last_purged_log_id.map(|p| p.index + 1).unwrap_or(0);
    for (offset, entry) in entries.iter().enumerate() {
        let index = entry.log_id.index;
        assert_eq!(index, first + offset as u64, "{ctx}: log not contiguous");
        let written = model.entries.get(&index).map(|(e, _)| e);
        assert_eq!(
            Some(entry),
            written,
            "{ctx}: index {index} is not the newest written"
        );
    }
    let present = entries.len() as u64;
    let mut acked_checked = 0;
    for (index, (_, acked)) in model.entries.range(first..) {
        if *acked && maybe_gone.is_none_or(|gone| *index < gone) {
            acked_checked += 1;
            assert!(
                *index < first + present,
                "{ctx}: acknowledged index {index} lost ({report:?})"
            );
        }
    }
    let committed = log.read_committed().await.unwrap();
    assert!(
        committed <= model.committed.max(model.last_purged).max(maybe_purged),
        "{ctx}: committed ahead"
    );
    if let Some(c) = committed {
        let in_log = entries.iter().any(|e| e.log_id == c);
        assert!(
            in_log || Some(c) == state.last_purged_log_id,
            "{ctx}: committed {c} not in the log"
        );
    }
    let snapshot = sm
        .get_current_snapshot()
        .await
        .unwrap()
        .map(|s| s.meta.last_log_id);
    assert_eq!(snapshot, model.snapshot, "{ctx}: current snapshot");

    // The state machine: the snapshot's state plus the log up to the recovered committed id.
    let mut expected = KvStateMachine::new();
    let (applied, _) = sm.applied_state().await.unwrap();
    let replay_upto = committed.max(snapshot.flatten());
    assert_eq!(applied, replay_upto, "{ctx}: applied state");
    if let Some(upto) = replay_upto {
        // Every entry up to it, from the model (acknowledged entries survive, so they are there).
        for (index, (entry, _)) in model.entries.range(..=upto.index) {
            let _ = index;
            if let openraft::EntryPayload::Normal(request) = &entry.payload {
                use keel_engine::StateMachine;
                let bytes = request.to_command_bytes().unwrap();
                expected
                    .apply(keel_raft::op_of(entry.log_id.index), &bytes)
                    .unwrap();
            }
        }
        if state.last_purged_log_id.is_none() {
            assert_eq!(sm.digest(), expected.digest(), "{ctx}: state machine");
        }
    }
    acked_checked
}

/// After a reopen the recovered log is the new truth: every entry in it was found durable, so
/// a later crash must not lose it either (it counts as acknowledged from now on).
fn adopt_recovered(model: &mut Model, entries: Vec<Entry>, committed: Option<LogId>) {
    model.entries = entries
        .into_iter()
        .map(|e| (e.log_id.index, (e, true)))
        .collect();
    model.committed = committed;
}

/// Starts a vote, purge or truncation on a clone of the store without awaiting it, so that the
/// crash lands inside it. Returns false when no such operation applies right now.
fn start_interrupted(
    rng: &mut SmallRng,
    model: &Rc<RefCell<Model>>,
    log: &keel_raft::LogStore<TypeConfig, MemDirectory>,
    term: &mut u64,
) -> bool {
    let mut store = log.clone();
    let mut m = model.borrow_mut();
    match rng.gen_range(0..3) {
        0 => {
            *term += 1;
            let vote = Vote::new(*term, 1);
            m.interrupted = Some(Interrupted::Vote(vote));
            compio::runtime::spawn(async move {
                let _ = store.save_vote(&vote).await;
            })
            .detach();
            true
        }
        1 => {
            let target = m
                .snapshot
                .flatten()
                .filter(|s| Some(*s) > m.last_purged)
                .and_then(|s| m.entries.get(&s.index).map(|(e, _)| e.log_id));
            let Some(upto) = target else {
                return false;
            };
            m.interrupted = Some(Interrupted::Purge(upto));
            compio::runtime::spawn(async move {
                let _ = store.purge(upto).await;
            })
            .detach();
            true
        }
        _ => {
            let floor_id = m.committed.max(m.last_purged);
            let floor = floor_id.map(|c| c.index + 1).unwrap_or(0);
            let Some(last) = m
                .entries
                .keys()
                .next_back()
                .copied()
                .filter(|l| *l >= floor)
            else {
                return false;
            };
            let keep = rng.gen_range(floor..=last);
            let keep_id = if keep == floor {
                floor_id
            } else {
                Some(m.entries[&(keep - 1)].0.log_id)
            };
            let first_gone = keep_id.map(|k| k.index + 1).unwrap_or(0);
            m.interrupted = Some(Interrupted::Truncate { first_gone });
            compio::runtime::spawn(async move {
                let _ = store.truncate_after(keep_id).await;
            })
            .detach();
            true
        }
    }
}

/// Whether the interrupted operation's effect is what the reopened store shows.
async fn interrupted_took_effect(
    model: &Model,
    log: &mut keel_raft::LogStore<TypeConfig, MemDirectory>,
) -> bool {
    match &model.interrupted {
        None => false,
        Some(Interrupted::Vote(v)) => log.read_vote().await.unwrap() == Some(*v),
        Some(Interrupted::Purge(p)) => {
            log.get_log_state().await.unwrap().last_purged_log_id == Some(*p)
        }
        Some(Interrupted::Truncate { first_gone }) => {
            let had_some = model.entries.range(first_gone..).next().is_some();
            had_some
                && log
                    .try_get_log_entries(*first_gone..)
                    .await
                    .unwrap()
                    .is_empty()
        }
    }
}
