//! What the checkers see of a run: every node's apply stream, merged by log index, with the
//! facts per node-lifetime that the safety invariants follow as they happen.
//!
//! Every host's state machine reports each applied command through an observer
//! ([`certfleet::raft::state_machine::ApplyObserver`]). Committed entries are the same on every
//! node (Raft's log matching), so the journal keeps one record per index and flags any node
//! that applied a different command at an index another node already applied (I4). The
//! records are what I1, I2, I3 and I10 are checked against at the end of a run; I5 and I12 are
//! checked per node as entries arrive, because they are about order in time.

use std::collections::BTreeMap;

use certfleet::raft::state_machine::AppliedEntry;
use certfleet_core::{Command, Cycle, Term, UnixMillis};

use crate::invariants::{i05_monotonic, i12_clock};

/// One applied command, as first seen by any node.
#[derive(Clone, Debug)]
pub struct Record {
    /// The term of the entry.
    pub entry_term: u64,
    /// The command.
    pub command: Command,
    /// Whether `apply` accepted it.
    pub accepted: bool,
    /// The open cycle (number, owning term) of the command's certificate before apply.
    pub open_before: Option<(Cycle, Term)>,
    /// True (simulated) time when it was first applied.
    pub applied_at: UnixMillis,
}

/// A host's process lifetime: `(host, incarnation)`.
pub type Lifetime = (u64, u64);

/// What one node lifetime has applied so far (for the per-node invariants).
#[derive(Clone, Debug, Default)]
struct NodeWatch {
    monotonic: i05_monotonic::Watch,
    clock: UnixMillis,
}

/// A leader that crashed: which host, when, in which term.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaderCrash {
    /// True time of the crash.
    pub at: UnixMillis,
    /// The term it led.
    pub term: u64,
}

/// The merged apply streams of every node, and what was found while merging.
#[derive(Clone, Debug, Default)]
pub struct Journal {
    /// One record per log index.
    pub entries: BTreeMap<u64, Record>,
    /// Leaders crashed, in order.
    pub leader_crashes: Vec<LeaderCrash>,
    /// Violations found as entries arrived (I4 log matching, I5, I12).
    pub violations: Vec<String>,
    /// The bound on clock skew the run configured (I12).
    pub skew_ms_max: u64,
    nodes: BTreeMap<Lifetime, NodeWatch>,
}

/// An applied entry as one node lifetime reported it, at a true time.
#[derive(Clone, Copy, Debug)]
pub struct Applied<'a> {
    /// The node lifetime that applied it.
    pub lifetime: Lifetime,
    /// True time now.
    pub now: UnixMillis,
    /// What the state machine's observer saw.
    pub entry: &'a AppliedEntry<'a>,
}

impl<'a> std::ops::Deref for Applied<'a> {
    type Target = AppliedEntry<'a>;

    fn deref(&self) -> &AppliedEntry<'a> {
        self.entry
    }
}

impl Journal {
    /// A journal for a run whose clocks are skewed by at most `skew_ms_max`.
    #[must_use]
    pub fn new(skew_ms_max: u64) -> Self {
        Self {
            skew_ms_max,
            ..Self::default()
        }
    }

    /// Takes one applied entry from one node.
    pub fn observe(&mut self, applied: &Applied<'_>) {
        let host = applied.lifetime.0;
        match self.entries.get(&applied.index) {
            Some(first) if first.command != *applied.command => {
                self.violations.push(format!(
                    "I4 log matching: n{host} applied a different command at index {} than an earlier node (term {} vs {})",
                    applied.index, applied.entry_term, first.entry_term
                ));
            }
            Some(_) => {}
            None => {
                // `CERTFLEET_SIM_WATCH=<certificate>` prints every command about it as it is
                // first applied (for reading a failing seed).
                if let (Some(watch), Some(cert)) = (
                    std::env::var_os("CERTFLEET_SIM_WATCH"),
                    applied.command.op.cert(),
                ) && watch == cert.as_str()
                {
                    eprintln!(
                        "journal {} @{} term {} {:?} -> {:?}",
                        applied.index,
                        applied.now,
                        applied.entry_term,
                        applied.command,
                        applied.response
                    );
                }
                i12_clock::on_first_apply(applied, self.skew_ms_max, &mut self.violations);
                self.entries.insert(
                    applied.index,
                    Record {
                        entry_term: applied.entry_term,
                        command: applied.command.clone(),
                        accepted: applied.response.is_accepted(),
                        open_before: applied.open_before,
                        applied_at: applied.now,
                    },
                );
            }
        }
        let watch = self.nodes.entry(applied.lifetime).or_default();
        i05_monotonic::on_apply(&mut watch.monotonic, applied, &mut self.violations);
        i12_clock::on_apply(&mut watch.clock, applied, &mut self.violations);
    }

    /// Records a leader's crash.
    pub fn leader_crashed(&mut self, crash: LeaderCrash) {
        self.leader_crashes.push(crash);
    }

    /// Accepted commands in log order.
    pub fn accepted(&self) -> impl Iterator<Item = (u64, &Record)> {
        self.entries
            .iter()
            .filter(|(_, r)| r.accepted)
            .map(|(i, r)| (*i, r))
    }
}

#[cfg(test)]
impl Journal {
    /// The journal of `ops` applied in order by one node, each at its instant (for tests).
    pub(crate) fn of_ops(ops: &[(u64, certfleet_core::Op)]) -> Self {
        let mut journal = Self::new(0);
        let state = certfleet_core::State::default();
        for (i, (at, op)) in ops.iter().enumerate() {
            let command = Command {
                at: UnixMillis(*at),
                op: op.clone(),
            };
            journal.observe(&Applied {
                lifetime: (1, 0),
                now: UnixMillis(*at),
                entry: &AppliedEntry {
                    index: i as u64 + 1,
                    entry_term: 1,
                    command: &command,
                    response: &certfleet_core::Response::Accepted,
                    open_before: None,
                    state: &state,
                },
            });
        }
        journal
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use certfleet_core::command::Op;
    use certfleet_core::testing::spec;
    use certfleet_core::{Response, State};

    fn put(at: u64, name: &str) -> Command {
        Command {
            at: UnixMillis(at),
            op: Op::PutCert {
                spec: spec(&[name]),
                seed: 1,
            },
        }
    }

    fn feed(journal: &mut Journal, lifetime: Lifetime, index: u64, command: &Command, now: u64) {
        let state = State::default();
        journal.observe(&Applied {
            lifetime,
            now: UnixMillis(now),
            entry: &AppliedEntry {
                index,
                entry_term: 1,
                command,
                response: &Response::Accepted,
                open_before: None,
                state: &state,
            },
        });
    }

    #[test]
    fn two_nodes_applying_the_same_entries_is_clean() {
        let mut journal = Journal::new(1_000);
        let (a, b) = (put(10, "a.example.com"), put(20, "b.example.com"));
        for node in [1, 2] {
            feed(&mut journal, (node, 0), 1, &a, 10);
            feed(&mut journal, (node, 0), 2, &b, 20);
        }
        assert!(journal.violations.is_empty(), "{:?}", journal.violations);
        assert_eq!(journal.entries.len(), 2);
    }

    #[test]
    fn a_different_command_at_an_applied_index_breaks_log_matching() {
        let mut journal = Journal::new(1_000);
        feed(&mut journal, (1, 0), 1, &put(10, "a.example.com"), 10);
        feed(&mut journal, (2, 0), 1, &put(10, "b.example.com"), 10);
        assert!(journal.violations[0].starts_with("I4 log matching"));
    }

    #[test]
    fn an_index_going_back_within_a_lifetime_is_caught_but_not_across_a_restart() {
        let mut journal = Journal::new(1_000);
        let a = put(10, "a.example.com");
        feed(&mut journal, (1, 0), 2, &a, 10);
        feed(&mut journal, (1, 1), 1, &put(5, "c.example.com"), 10);
        assert!(journal.violations.is_empty(), "a restart replays from 1");
        feed(&mut journal, (1, 0), 1, &put(5, "c.example.com"), 10);
        assert!(journal.violations[0].starts_with("I5 monotonic"));
    }

    #[test]
    fn a_stamp_from_beyond_the_skew_bound_is_caught() {
        let mut journal = Journal::new(1_000);
        feed(&mut journal, (1, 0), 1, &put(2_001, "a.example.com"), 1_000);
        assert!(journal.violations[0].starts_with("I12 clock"));
    }
}
