//! An in-memory Raft log store with crash semantics, for the simulation and tests.
//!
//! The store keeps two copies: the *live* log every read sees, and the *durable* log a crash
//! leaves behind. A write becomes durable at the next [`MemLogStore::sync`]; only then is
//! openraft told the entries are persisted (`LogFlushed`), so a node never acknowledges what a
//! crash could take away. [`MemLogStore::crash`] drops every write after the last sync, and
//! may keep a prefix of the last unsynced append (a torn write), which Raft must tolerate:
//! those entries were never acknowledged.
//!
//! The store is a cheap handle around shared state, so the simulation keeps one outside a
//! node's lifetime and hands it to the node again after a restart (madsim reruns a node's
//! init closure on restart; the "disk" must outlive it).
//!
//! Votes and the committed index are made durable before the call returns: openraft requires
//! a vote to be persisted before it acts on it.
//!
//! [`MemLogStore::inject`] arms a disk error for the simulation (a failed read, write or
//! fsync). openraft stops the node on any storage error (`Fatal::StorageError`), as a real
//! node must: after a failed fsync nothing says what reached the disk (PostgreSQL's
//! "fsyncgate"), so the only safe way on is a restart from what the disk holds. A failed sync
//! therefore leaves its entries unsynced, for the crash that follows to take.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, RaftLogReader, StorageIOError, Vote};

use super::types::{Entry, LogId, NodeId, StorageError, TypeConfig};

/// A disk error the simulation injects; each fails the next operation of its kind, once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DiskFault {
    /// Reading log entries fails.
    Read,
    /// Writing fails: an append, a vote, the committed index, a truncation or a purge.
    Write,
    /// The next sync (fsync) fails: its appends stay unsynced and openraft hears of an error.
    Sync,
}

fn injected(fault: DiskFault) -> AnyError {
    AnyError::error(format!("injected disk error ({fault:?})"))
}

/// When appended entries become durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SyncMode {
    /// At once, inside `append` (a store that fsyncs every append).
    #[default]
    Immediate,
    /// Only at an explicit [`MemLogStore::sync`] (batched fsync); the simulation calls it on
    /// its own schedule so crashes can land between a write and its sync.
    Deferred,
}

/// An in-memory log store handle; clones share the same "disk".
#[derive(Clone, Debug, Default)]
pub struct MemLogStore {
    disk: Arc<Mutex<Disk>>,
    /// Signalled at every append, for a batched fsync that sleeps while nothing is unsynced.
    appended: Arc<tokio::sync::Notify>,
}

#[derive(Default)]
struct Disk {
    mode: SyncMode,
    live: LogData,
    durable: LogData,
    /// Entries appended since the last sync, in order (for torn writes).
    unsynced: Vec<Entry>,
    /// Flush callbacks waiting for the next sync.
    waiting: Vec<LogFlushed<TypeConfig>>,
    /// Armed disk errors, each failing the next operation of its kind.
    armed: Vec<DiskFault>,
    /// Injected errors that fired.
    fired: u64,
}

impl Disk {
    /// Whether an armed `fault` fails this operation (disarming it).
    fn fails(&mut self, fault: DiskFault) -> bool {
        let Some(at) = self.armed.iter().position(|armed| *armed == fault) else {
            return false;
        };
        self.armed.remove(at);
        self.fired += 1;
        true
    }

    /// The error of an injected write failure, if one is armed (disarming it).
    fn write_fails(&mut self) -> Option<StorageError> {
        self.fails(DiskFault::Write)
            .then(|| StorageIOError::write_logs(injected(DiskFault::Write)).into())
    }
}

#[derive(Clone, Debug, Default)]
struct LogData {
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId>,
    last_purged: Option<LogId>,
    entries: BTreeMap<u64, Entry>,
}

impl Debug for Disk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Disk")
            .field("mode", &self.mode)
            .field("live_entries", &self.live.entries.len())
            .field("durable_entries", &self.durable.entries.len())
            .field("unsynced", &self.unsynced.len())
            .field("waiting", &self.waiting.len())
            .finish()
    }
}

/// What a crash did to the store (for the simulation's counters).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CrashReport {
    /// Unsynced entries lost.
    pub lost: usize,
    /// Unsynced entries kept by a torn write.
    pub kept: usize,
}

impl MemLogStore {
    /// An empty store with the given sync mode.
    #[must_use]
    pub fn new(mode: SyncMode) -> Self {
        let store = Self::default();
        store.disk().mode = mode;
        store
    }

    /// Arms `fault`: the next operation of its kind fails (once).
    pub fn inject(&self, fault: DiskFault) {
        self.disk().armed.push(fault);
    }

    /// Disarms every injected error that has not fired.
    pub fn disarm(&self) {
        self.disk().armed.clear();
    }

    /// Injected errors that fired so far.
    #[must_use]
    pub fn faults_fired(&self) -> u64 {
        self.disk().fired
    }

    /// The term of the vote on disk (what a restart reads back), 0 before the first vote.
    #[must_use]
    pub fn durable_term(&self) -> u64 {
        self.disk()
            .durable
            .vote
            .map_or(0, |vote| vote.leader_id().term)
    }

    /// Returns once something was appended since the last call returned (at once if it was
    /// meanwhile): a batched fsync waits here instead of waking on a timer through idle days
    /// (a 1 ms sync timer was most of a 14-day simulation's time).
    pub async fn appended(&self) {
        self.appended.notified().await;
    }

    /// Makes every write durable and tells openraft the waiting appends are persisted.
    pub fn sync(&self) {
        let waiting = {
            let mut disk = self.disk();
            // An fsync with nothing to write cannot lose anything: the fault waits for one that can.
            if !disk.waiting.is_empty() && disk.fails(DiskFault::Sync) {
                // Nothing is known to be on disk: the appends stay unsynced, and openraft,
                // told of the error, stops the node.
                let waiting = std::mem::take(&mut disk.waiting);
                drop(disk);
                for flushed in waiting {
                    flushed.log_io_completed(Err(io::Error::other("injected fsync error")));
                }
                return;
            }
            // Only appends are ever pending (votes, the committed index, truncation and purge
            // are durable at once), so syncing moves the unsynced entries: O(new writes), not
            // O(log). Found by the simulator: copying the whole log at every sync made a run
            // with a 1 ms sync interval crawl.
            let disk = &mut *disk;
            for entry in disk.unsynced.drain(..) {
                disk.durable.entries.insert(entry.log_id.index, entry);
            }
            debug_assert_eq!(disk.durable.entries.len(), disk.live.entries.len());
            std::mem::take(&mut disk.waiting)
        };
        // Outside the lock: the callbacks wake openraft's tasks.
        for flushed in waiting {
            flushed.log_io_completed(Ok(()));
        }
    }

    /// A crash: the live log reverts to the durable one, keeping the first `torn_keep` entries
    /// of the unsynced appends (a torn write). Pending flush callbacks are dropped, as the
    /// process that waited for them is gone.
    pub fn crash(&self, torn_keep: usize) -> CrashReport {
        let mut disk = self.disk();
        let unsynced = std::mem::take(&mut disk.unsynced);
        let mut live = disk.durable.clone();
        let kept = torn_keep.min(unsynced.len());
        for entry in unsynced.iter().take(kept) {
            live.entries.insert(entry.log_id.index, entry.clone());
        }
        disk.live = live.clone();
        disk.durable = live;
        disk.waiting.clear();
        CrashReport {
            lost: unsynced.len() - kept,
            kept,
        }
    }

    /// Entries appended but not yet durable.
    #[must_use]
    pub fn unsynced_len(&self) -> usize {
        self.disk().unsynced.len()
    }

    /// Every live entry (for checkers that scan the log, e.g. for plaintext keys).
    #[must_use]
    pub fn entries(&self) -> Vec<Entry> {
        self.disk().live.entries.values().cloned().collect()
    }

    fn disk(&self) -> MutexGuard<'_, Disk> {
        // A panic while holding this lock already failed the node (and the test); the data is
        // plain values, never left half-updated across an await, so recovering it is sound.
        self.disk
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl RaftLogReader<TypeConfig> for MemLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let mut disk = self.disk();
        if disk.fails(DiskFault::Read) {
            return Err(StorageIOError::read_logs(injected(DiskFault::Read)).into());
        }
        Ok(disk
            .live
            .entries
            .range(range)
            .map(|(_, e)| e.clone())
            .collect())
    }
}

impl RaftLogStorage<TypeConfig> for MemLogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let disk = self.disk();
        let last_purged_log_id = disk.live.last_purged;
        let last_log_id = disk
            .live
            .entries
            .values()
            .next_back()
            .map(|e| e.log_id)
            .or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        let mut disk = self.disk();
        if disk.fails(DiskFault::Write) {
            return Err(StorageIOError::write_vote(injected(DiskFault::Write)).into());
        }
        disk.live.vote = Some(*vote);
        disk.durable.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        Ok(self.disk().live.vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let mut disk = self.disk();
        if let Some(error) = disk.write_fails() {
            return Err(error);
        }
        disk.live.committed = committed;
        disk.durable.committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.disk().live.committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mode = {
            let mut disk = self.disk();
            if let Some(error) = disk.write_fails() {
                return Err(error);
            }
            for entry in entries {
                disk.live.entries.insert(entry.log_id.index, entry.clone());
                disk.unsynced.push(entry);
            }
            disk.waiting.push(callback);
            disk.mode
        };
        self.appended.notify_one();
        if mode == SyncMode::Immediate {
            self.sync();
        } else if crate::mutation::active(crate::mutation::Mutation::AckUnsyncedWrites) {
            // The bug: durable in name only; the entries stay in `unsynced` for a crash to take.
            let waiting = std::mem::take(&mut self.disk().waiting);
            for flushed in waiting {
                flushed.log_io_completed(Ok(()));
            }
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Truncation removes uncommitted entries; making it durable at once is what a real
        // store does (a crash must not resurrect entries a new leader overwrote).
        let mut disk = self.disk();
        if let Some(error) = disk.write_fails() {
            return Err(error);
        }
        let index = log_id.index;
        disk.live.entries.split_off(&index);
        disk.durable.entries.split_off(&index);
        disk.unsynced.retain(|e| e.log_id.index < index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut disk = self.disk();
        if let Some(error) = disk.write_fails() {
            return Err(error);
        }
        let disk = &mut *disk;
        for data in [&mut disk.live, &mut disk.durable] {
            assert!(data.last_purged <= Some(log_id), "purge went backwards");
            data.last_purged = Some(log_id);
            let keep = data.entries.split_off(&(log_id.index + 1));
            data.entries = keep;
        }
        Ok(())
    }
}
