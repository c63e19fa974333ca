//! The Raft state machine: `certfleet_core::State` behind openraft's `RaftStateMachine`.
//!
//! Every entry gets an answer (openraft's contract): normal entries go through
//! `certfleet_core::apply`, blank and membership entries answer `Accepted`. Snapshots are the
//! core's framed, checksummed format; installing one rebuilds the state and its indexes.
//!
//! One fencing check lives here rather than in the core, because only the log knows it: an
//! order command must carry the term of the log entry it arrived in. A leader can only speak
//! for its own term, so a command built by a deposed leader and replayed by another cannot
//! take over a cycle (DESIGN §5).
//!
//! Readers (the data plane, the leader's planner, `WaitApplied` answers) share the state
//! through [`StateMachineStore::read`] and follow the applied index through
//! [`StateMachineStore::applied_index`].

use std::io::Cursor;
use std::sync::{Arc, Mutex, MutexGuard};

use certfleet_core::snapshot::{SnapshotReader, SnapshotWriter};
use certfleet_core::{Command, Cycle, Event, Op, Rejection, Response, State, Term, apply};
use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{BasicNode, EntryPayload, RaftSnapshotBuilder, StorageIOError, StoredMembership};
use tokio::sync::watch;

use super::types::{Entry, LogId, NodeId, StorageError, TypeConfig};
use crate::mutation::Mutation;

/// The state machine handle; clones share the state.
#[derive(Clone)]
pub struct StateMachineStore {
    inner: Arc<Mutex<Inner>>,
    applied: watch::Sender<u64>,
    observer: Option<ApplyObserver>,
    disk: SnapshotDisk,
    /// What this node acknowledges to `WaitApplied`: its data plane's served index once one
    /// follows the store ([`StateMachineStore::acknowledge_through`]), else the applied index.
    acknowledged: Arc<std::sync::OnceLock<watch::Receiver<u64>>>,
}

/// Where the last snapshot a node built or installed survives its process: what a restart
/// restores the state machine from, before openraft replays the log after it. In memory, for
/// tests and the simulation (the simulation keeps one per host across restarts); the durable
/// store writes it to disk.
#[derive(Clone, Debug, Default)]
pub struct SnapshotDisk(Arc<Mutex<Option<StoredSnapshot>>>);

impl SnapshotDisk {
    fn slot(&self) -> MutexGuard<'_, Option<StoredSnapshot>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Keeps `snapshot` (written whole, as a durable store renames a synced file into place).
    fn keep(&self, snapshot: StoredSnapshot) {
        *self.slot() = Some(snapshot);
    }

    /// The index of the snapshot kept, if any.
    #[must_use]
    pub fn last_index(&self) -> Option<u64> {
        self.slot()
            .as_ref()
            .and_then(|s| s.meta.last_log_id)
            .map(|id| id.index)
    }
}

impl std::fmt::Debug for StateMachineStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMachineStore")
            .field("applied", &*self.applied.borrow())
            .field("observed", &self.observer.is_some())
            .finish_non_exhaustive()
    }
}

/// One applied command, as an [`ApplyObserver`] sees it.
#[derive(Debug)]
pub struct AppliedEntry<'a> {
    /// The entry's log index.
    pub index: u64,
    /// The term of the entry (of the leader that appended it).
    pub entry_term: u64,
    /// The command as it is in the log.
    pub command: &'a Command,
    /// What `apply` answered.
    pub response: &'a Response,
    /// The cycle and owning term of the command's certificate's open cycle, before apply.
    pub open_before: Option<(Cycle, Term)>,
    /// The state after apply.
    pub state: &'a State,
}

/// Called for every applied command, under the state lock (keep it short): the simulation's
/// checkers watch every node's apply stream through it.
pub type ApplyObserver = Arc<dyn Fn(&AppliedEntry<'_>) + Send + Sync>;

#[derive(Debug, Default)]
struct Inner {
    state: State,
    last_applied: Option<LogId>,
    membership: StoredMembership<NodeId, BasicNode>,
    snapshot: Option<StoredSnapshot>,
    snapshot_seq: u64,
    events: Vec<Event>,
    /// Events are only kept once a data plane drains them: without one they would pile up for
    /// as long as the node runs.
    keep_events: bool,
    installs: u64,
}

#[derive(Clone, Debug)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, BasicNode>,
    bytes: Vec<u8>,
}

/// Builds snapshots from a copy of the state taken when the builder was made.
#[derive(Debug)]
pub struct SnapshotBuilder {
    store: StateMachineStore,
}

impl Default for StateMachineStore {
    fn default() -> Self {
        Self::new()
    }
}

impl StateMachineStore {
    /// An empty state machine.
    #[must_use]
    pub fn new() -> Self {
        let (applied, _) = watch::channel(0);
        Self {
            inner: Arc::default(),
            applied,
            observer: None,
            disk: SnapshotDisk::default(),
            acknowledged: Arc::default(),
        }
    }

    /// An empty state machine whose every applied command is shown to `observer`.
    #[must_use]
    pub fn with_observer(observer: ApplyObserver) -> Self {
        Self {
            observer: Some(observer),
            ..Self::new()
        }
    }

    /// A state machine restored from the snapshot `disk` kept (empty if none), keeping later
    /// snapshots there; applied commands are shown to `observer`. openraft then replays the
    /// committed log after the snapshot.
    pub fn open(
        disk: SnapshotDisk,
        observer: Option<ApplyObserver>,
    ) -> Result<Self, certfleet_core::error::SnapshotError> {
        let store = Self {
            observer,
            disk,
            ..Self::new()
        };
        let kept = store.disk.slot().clone();
        if let Some(snapshot) = kept {
            let state = SnapshotReader::read_all(&snapshot.bytes)?;
            let index = snapshot.meta.last_log_id.map_or(0, |id| id.index);
            {
                let mut inner = store.inner();
                inner.state = state;
                inner.last_applied = snapshot.meta.last_log_id;
                inner.membership = snapshot.meta.last_membership.clone();
                inner.snapshot = Some(snapshot);
            }
            store.applied.send_replace(index);
        }
        Ok(store)
    }

    /// Reads the state under the lock (keep the closure short: apply waits for it).
    pub fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.inner().state)
    }

    /// The last applied log index (0 before any), as a watch: the data plane and `WaitApplied`
    /// answers follow it.
    #[must_use]
    pub fn applied_index(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }

    /// The index this node acknowledges to a `WaitApplied` (DESIGN §5 step 3): what its data
    /// plane serves, once [`StateMachineStore::acknowledge_through`] named it, else the applied
    /// index. Applied is not enough when a data plane follows the state asynchronously: the CA
    /// could ask for a challenge the node has applied but does not answer yet (seen against
    /// Pebble: authorizations went invalid).
    #[must_use]
    pub fn acknowledged_index(&self) -> watch::Receiver<u64> {
        match self.acknowledged.get() {
            Some(served) => served.clone(),
            None => self.applied_index(),
        }
    }

    /// Makes `served` (a data plane's served index) what this node acknowledges from now on.
    /// The first call wins: a node has one data plane.
    pub fn acknowledge_through(&self, served: watch::Receiver<u64>) {
        let _ = self.acknowledged.set(served);
    }

    /// Starts keeping data-plane events for [`StateMachineStore::drain_events`]; events applied
    /// before are not kept (the first reader rebuilds from the state instead).
    pub fn keep_events(&self) {
        self.inner().keep_events = true;
    }

    /// Data-plane events applied since the last call, in order (none before
    /// [`StateMachineStore::keep_events`]).
    pub fn drain_events(&self) -> Vec<Event> {
        std::mem::take(&mut self.inner().events)
    }

    /// How many snapshots were installed (the data plane rebuilds its maps after one).
    #[must_use]
    pub fn snapshot_installs(&self) -> u64 {
        self.inner().installs
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        // The state is only mutated inside `apply` between checks, with no await; a panic there
        // is a core assertion, which already failed the node.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// An order command must carry the term of the entry it is in.
fn check_entry_term(command: &Command, entry_term: u64) -> Option<Rejection> {
    let term = match &command.op {
        Op::BeginOrder { term, .. } | Op::ResumeOrder { term, .. } => *term,
        Op::OrderCreated { step, .. }
        | Op::ChallengesPublished { step, .. }
        | Op::KeyPrepared { step, .. }
        | Op::Finalized { step }
        | Op::CertIssued { step, .. }
        | Op::OrderFailed { step, .. } => step.term,
        _ => return None,
    };
    (term.0 != entry_term).then(|| Rejection::Invalid {
        reason: format!("order command for term {term} arrived in an entry of term {entry_term}"),
    })
}

/// Applies one command after the entry-term check.
fn apply_entry(inner: &mut Inner, command: &Command, entry_term: u64) -> Response {
    if crate::mutation::active(Mutation::SkipTermCheck) {
        // The bug: a step is taken as the open cycle's own, whoever proposed it.
        let mut forged = command.clone();
        if let Some(step) = forged.op.step_mut()
            && let Some(open) = inner.state.cert(&step.cert).and_then(|r| r.open.as_deref())
        {
            step.term = open.term;
        }
        let (response, events) = apply(&mut inner.state, &forged);
        keep(inner, events);
        return response;
    }
    if let Some(rejection) = check_entry_term(command, entry_term) {
        return Response::Rejected(rejection);
    }
    let (response, events) = apply(&mut inner.state, command);
    keep(inner, events);
    response
}

fn keep(inner: &mut Inner, events: Vec<Event>) {
    if inner.keep_events {
        inner.events.extend(events);
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId>, StoredMembership<NodeId, BasicNode>), StorageError> {
        let inner = self.inner();
        Ok((inner.last_applied, inner.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut responses = Vec::new();
        let last_index = {
            let mut inner = self.inner();
            for entry in entries {
                inner.last_applied = Some(entry.log_id);
                let response = match entry.payload {
                    EntryPayload::Blank => Response::Accepted,
                    EntryPayload::Membership(membership) => {
                        inner.membership = StoredMembership::new(Some(entry.log_id), membership);
                        Response::Accepted
                    }
                    EntryPayload::Normal(command) => {
                        let inner = &mut *inner;
                        let open_before = self.observer.as_ref().and_then(|_| {
                            let open = inner.state.cert(command.op.cert()?)?.open.as_deref()?;
                            Some((open.cycle, open.term))
                        });
                        let response = apply_entry(inner, &command, entry.log_id.leader_id.term);
                        if let Some(observer) = &self.observer {
                            observer(&AppliedEntry {
                                index: entry.log_id.index,
                                entry_term: entry.log_id.leader_id.term,
                                command: &command,
                                response: &response,
                                open_before,
                                state: &inner.state,
                            });
                        }
                        response
                    }
                };
                responses.push(response);
            }
            inner.last_applied.map_or(0, |id| id.index)
        };
        self.applied.send_replace(last_index);
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            store: self.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let bytes = snapshot.into_inner();
        let state = SnapshotReader::read_all(&bytes)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        let index = meta.last_log_id.map_or(0, |id| id.index);
        {
            let mut inner = self.inner();
            inner.state = state;
            inner.last_applied = meta.last_log_id;
            inner.membership = meta.last_membership.clone();
            let snapshot = StoredSnapshot {
                meta: meta.clone(),
                bytes,
            };
            self.disk.keep(snapshot.clone());
            inner.snapshot = Some(snapshot);
            inner.installs += 1;
            inner.events.clear();
        }
        self.applied.send_replace(index);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        Ok(self.inner().snapshot.clone().map(|stored| Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.bytes)),
        }))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        // Copy what the snapshot describes under the lock, encode outside it: apply goes on.
        let (state, last_applied, membership, seq) = {
            let mut inner = self.store.inner();
            inner.snapshot_seq += 1;
            (
                inner.state.clone(),
                inner.last_applied,
                inner.membership.clone(),
                inner.snapshot_seq,
            )
        };
        let bytes = SnapshotWriter::to_vec(&state);
        let snapshot_id = match last_applied {
            Some(id) => format!("{}-{}-{seq}", id.leader_id.term, id.index),
            None => format!("0-0-{seq}"),
        };
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership: membership,
            snapshot_id,
        };
        let snapshot = StoredSnapshot {
            meta: meta.clone(),
            bytes: bytes.clone(),
        };
        self.store.disk.keep(snapshot.clone());
        self.store.inner().snapshot = Some(snapshot);
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}
