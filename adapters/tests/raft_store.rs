//! The Raft stores: openraft's own storage conformance suite, crash semantics of the in-memory
//! log, and the state machine's answers, fencing and snapshots.

use std::time::Duration;

use certfleet::raft::log_store::{DiskFault, SyncMode};
use certfleet::raft::state_machine::SnapshotDisk;
use certfleet::raft::types::{Entry, LogId, StorageError, TypeConfig};
use certfleet::raft::{MemLogStore, StateMachineStore};
use certfleet_core::command::Op;
use certfleet_core::model::RenewalReason;
use certfleet_core::testing::{Harness, ISSUER, account};
use certfleet_core::time::DAY_MS;
use certfleet_core::{CertId, Command, Cycle, IssuerId, Response, Term, UnixMillis};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, EntryPayload, RaftLogReader, RaftSnapshotBuilder};

struct Builder(SyncMode);

impl StoreBuilder<TypeConfig, MemLogStore, StateMachineStore> for Builder {
    async fn build(&self) -> Result<((), MemLogStore, StateMachineStore), StorageError> {
        Ok(((), MemLogStore::new(self.0), StateMachineStore::new()))
    }
}

#[test]
fn the_log_store_and_state_machine_pass_openrafts_storage_suite() {
    Suite::test_all(Builder(SyncMode::Immediate)).unwrap();
}

const T0: UnixMillis = UnixMillis(1_700_000_000_000);

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn entry(term: u64, index: u64, payload: EntryPayload<TypeConfig>) -> Entry {
    Entry {
        log_id: log_id(term, index),
        payload,
    }
}

fn blank(term: u64, index: u64) -> Entry {
    entry(term, index, EntryPayload::Blank)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn an_append_is_acknowledged_only_once_synced() {
    runtime().block_on(async {
        let mut store = MemLogStore::new(SyncMode::Deferred);
        let mut appending = store.clone();
        let append =
            tokio::spawn(
                async move { appending.blocking_append([blank(1, 1), blank(1, 2)]).await },
            );
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !append.is_finished(),
            "acknowledged before the entries were durable"
        );
        assert_eq!(store.unsynced_len(), 2);
        store.sync();
        append.await.unwrap().unwrap();
        assert_eq!(store.unsynced_len(), 0);
        assert_eq!(store.try_get_log_entries(..).await.unwrap().len(), 2);
    });
}

#[test]
fn a_crash_loses_unsynced_writes_and_may_keep_a_torn_prefix() {
    runtime().block_on(async {
        let mut store = MemLogStore::new(SyncMode::Deferred);
        let mut writer = store.clone();
        let first = tokio::spawn(async move { writer.blocking_append([blank(1, 1)]).await });
        tokio::task::yield_now().await;
        store.sync();
        first.await.unwrap().unwrap();
        // Three more entries, never synced.
        let mut writer = store.clone();
        let lost = tokio::spawn(async move {
            writer
                .blocking_append([blank(1, 2), blank(1, 3), blank(1, 4)])
                .await
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(
            store.try_get_log_entries(..).await.unwrap().len(),
            4,
            "reads see unsynced writes"
        );
        let report = store.crash(1);
        assert_eq!((report.lost, report.kept), (2, 1));
        let indexes: Vec<u64> = store
            .try_get_log_entries(..)
            .await
            .unwrap()
            .iter()
            .map(|e| e.log_id.index)
            .collect();
        assert_eq!(
            indexes,
            [1, 2],
            "the durable entry and a torn prefix of one"
        );
        assert!(
            lost.await.unwrap().is_err(),
            "the waiting append learns its write is gone"
        );
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id, Some(log_id(1, 2)));
    });
}

#[test]
fn a_vote_is_durable_when_save_vote_returns() {
    runtime().block_on(async {
        let mut store = MemLogStore::new(SyncMode::Deferred);
        let vote = openraft::Vote::new(3, 2);
        store.save_vote(&vote).await.unwrap();
        store.crash(0);
        assert_eq!(store.read_vote().await.unwrap(), Some(vote));
    });
}

#[test]
fn an_injected_disk_error_fails_its_operation_once_and_writes_nothing() {
    runtime().block_on(async {
        let mut store = MemLogStore::new(SyncMode::Immediate);
        store.blocking_append([blank(1, 1)]).await.unwrap();
        store.inject(DiskFault::Write);
        let refused = store.blocking_append([blank(1, 2)]).await;
        assert!(refused.is_err(), "the armed write fails");
        assert_eq!(
            store.get_log_state().await.unwrap().last_log_id,
            Some(log_id(1, 1)),
            "a failed append writes nothing"
        );
        store.blocking_append([blank(1, 2)]).await.unwrap();
        store.inject(DiskFault::Read);
        assert!(store.try_get_log_entries(..).await.is_err());
        assert_eq!(store.try_get_log_entries(..).await.unwrap().len(), 2);
        store.inject(DiskFault::Write);
        assert!(store.save_vote(&openraft::Vote::new(2, 1)).await.is_err());
        assert_eq!(
            store.read_vote().await.unwrap(),
            None,
            "a failed vote is not kept"
        );
        assert_eq!(store.faults_fired(), 3);
        store.inject(DiskFault::Read);
        store.disarm();
        assert!(store.try_get_log_entries(..).await.is_ok(), "disarmed");
    });
}

#[test]
fn a_failed_fsync_reports_an_error_and_leaves_its_appends_to_the_crash() {
    runtime().block_on(async {
        let store = MemLogStore::new(SyncMode::Deferred);
        let mut writer = store.clone();
        let append = tokio::spawn(async move { writer.blocking_append([blank(1, 1)]).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        store.inject(DiskFault::Sync);
        store.sync();
        assert!(
            append.await.unwrap().is_err(),
            "the append waiting for the failed fsync hears of it"
        );
        assert_eq!(store.unsynced_len(), 1, "nothing is known to be on disk");
        assert_eq!(store.crash(0).lost, 1);
    });
}

#[test]
fn a_node_stops_on_a_disk_error() {
    runtime().block_on(async {
        let log = MemLogStore::new(SyncMode::Immediate);
        let raft = openraft::Raft::<TypeConfig>::new(
            1,
            certfleet::fleet::raft_config(),
            certfleet::raft::network::Network::default(),
            log.clone(),
            StateMachineStore::new(),
        )
        .await
        .unwrap();
        raft.initialize(std::collections::BTreeMap::from([(
            1,
            openraft::BasicNode::default(),
        )]))
        .await
        .unwrap();
        raft.wait(Some(Duration::from_secs(5)))
            .state(openraft::ServerState::Leader, "leads")
            .await
            .unwrap();
        log.inject(DiskFault::Write);
        let command = Command {
            at: T0,
            op: Op::SetAccount {
                issuer: IssuerId::parse(ISSUER).unwrap(),
                account: account(),
            },
        };
        assert!(raft.client_write(command).await.is_err());
        let stopped = raft
            .wait(Some(Duration::from_secs(5)))
            .metrics(|m| m.running_state.is_err(), "stopped")
            .await;
        assert!(
            stopped.is_ok(),
            "openraft stops the node on a storage error"
        );
        assert_eq!(log.faults_fired(), 1);
    });
}

/// Log entries for a real run: the core harness's commands at term 1, after a blank entry.
fn harness_entries() -> Vec<Entry> {
    let mut h = Harness::new(5, T0, 90 * DAY_MS);
    h.add(&["a.example.com", "b.example.com", "c.example.org"]);
    h.run_until(T0.plus_ms(70 * DAY_MS));
    let mut entries = vec![blank(1, 1)];
    for (i, command) in h.log.iter().enumerate() {
        // The harness runs as term 1; its order commands carry Term(1).
        entries.push(entry(
            1,
            i as u64 + 2,
            EntryPayload::Normal(command.clone()),
        ));
    }
    entries
}

#[test]
fn every_entry_gets_an_answer_and_replicas_agree() {
    runtime().block_on(async {
        let entries = harness_entries();
        let mut a = StateMachineStore::new();
        a.keep_events();
        let mut b = StateMachineStore::new();
        let answers = a.apply(entries.clone()).await.unwrap();
        assert_eq!(answers.len(), entries.len());
        assert!(answers.iter().all(Response::is_accepted));
        // Another replica applying the same log in other batch sizes ends in the same state.
        for chunk in entries.chunks(7) {
            b.apply(chunk.to_vec()).await.unwrap();
        }
        assert_eq!(a.read(|s| s.digest()), b.read(|s| s.digest()));
        assert_eq!(*a.applied_index().borrow(), entries.len() as u64);
        assert!(
            a.drain_events()
                .iter()
                .any(|e| matches!(e, certfleet_core::Event::CertActivated { .. }))
        );
    });
}

#[test]
fn a_snapshot_installs_to_the_state_that_replay_reaches() {
    runtime().block_on(async {
        let entries = harness_entries();
        let mut leader = StateMachineStore::new();
        leader.apply(entries.clone()).await.unwrap();
        let snapshot = leader
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        let mut follower = StateMachineStore::new();
        follower
            .install_snapshot(&snapshot.meta, snapshot.snapshot)
            .await
            .unwrap();
        assert_eq!(follower.read(|s| s.digest()), leader.read(|s| s.digest()));
        let (applied, _) = follower.applied_state().await.unwrap();
        assert_eq!(applied, entries.last().map(|e| e.log_id));
        assert_eq!(follower.snapshot_installs(), 1);
        let current = follower.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta, snapshot.meta);
    });
}

#[test]
fn a_restart_restores_the_kept_snapshot_and_replays_the_rest() {
    runtime().block_on(async {
        let entries = harness_entries();
        let (head, tail) = entries.split_at(entries.len() / 2);
        let disk = SnapshotDisk::default();
        let mut before = StateMachineStore::open(disk.clone(), None).unwrap();
        before.apply(head.to_vec()).await.unwrap();
        let snapshot = before
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        before.apply(tail.to_vec()).await.unwrap();
        assert_eq!(disk.last_index(), Some(head.len() as u64));

        // The process dies; its successor opens the same disk.
        let mut after = StateMachineStore::open(disk, None).unwrap();
        let (applied, _) = after.applied_state().await.unwrap();
        assert_eq!(
            applied, snapshot.meta.last_log_id,
            "restored up to the snapshot"
        );
        assert_eq!(*after.applied_index().borrow(), head.len() as u64);
        after.apply(tail.to_vec()).await.unwrap();
        assert_eq!(after.read(|s| s.digest()), before.read(|s| s.digest()));
    });
}

#[test]
fn an_installed_snapshot_is_kept_for_the_next_restart() {
    runtime().block_on(async {
        let entries = harness_entries();
        let mut leader = StateMachineStore::new();
        leader.apply(entries.clone()).await.unwrap();
        let snapshot = leader
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        let disk = SnapshotDisk::default();
        let mut follower = StateMachineStore::open(disk.clone(), None).unwrap();
        follower
            .install_snapshot(&snapshot.meta, snapshot.snapshot)
            .await
            .unwrap();
        let restarted = StateMachineStore::open(disk, None).unwrap();
        assert_eq!(restarted.read(|s| s.digest()), leader.read(|s| s.digest()));
    });
}

#[test]
fn a_corrupt_snapshot_is_refused_and_changes_nothing() {
    runtime().block_on(async {
        let mut leader = StateMachineStore::new();
        leader.apply(harness_entries()).await.unwrap();
        let snapshot = leader
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        let mut bytes = snapshot.snapshot.into_inner();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x40;
        let mut follower = StateMachineStore::new();
        let before = follower.read(|s| s.digest());
        let result = follower
            .install_snapshot(&snapshot.meta, Box::new(std::io::Cursor::new(bytes)))
            .await;
        assert!(result.is_err());
        assert_eq!(follower.read(|s| s.digest()), before);
    });
}

#[test]
fn an_order_command_must_carry_the_term_of_its_entry() {
    runtime().block_on(async {
        let mut sm = StateMachineStore::new();
        let issuer = IssuerId::parse(ISSUER).unwrap();
        let setup = [
            Op::SetAccount { issuer, account: account() },
            Op::PutCert { spec: certfleet_core::testing::spec(&["a.example.com"]), seed: 1 },
        ];
        let entries: Vec<Entry> = setup
            .into_iter()
            .enumerate()
            .map(|(i, op)| entry(2, i as u64 + 1, EntryPayload::Normal(Command { at: T0, op })))
            .collect();
        sm.apply(entries).await.unwrap();
        // A BeginOrder stamped with term 1 inside an entry of term 2: a leader speaking for
        // another term.
        let begin = |term| Op::BeginOrder {
            cert: CertId::parse("a.example.com").unwrap(),
            cycle: Cycle(1),
            term: Term(term),
            reason: RenewalReason::Initial,
        };
        let answers = sm.apply([entry(2, 3, EntryPayload::Normal(Command { at: T0, op: begin(1) }))]).await.unwrap();
        assert!(matches!(&answers[0], Response::Rejected(certfleet_core::Rejection::Invalid { reason }) if reason.contains("term 1") && reason.contains("term 2")));
        let answers = sm.apply([entry(2, 4, EntryPayload::Normal(Command { at: T0, op: begin(2) }))]).await.unwrap();
        assert_eq!(answers[0], Response::Accepted);
    });
}
