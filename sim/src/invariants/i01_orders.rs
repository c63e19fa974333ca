//! I1: orders per (certificate, cycle) at the CA ≤ 1 + leadership changes between the cycle's
//! `BeginOrder` and its `OrderCreated` (DESIGN §5).
//!
//! Counted exactly: a leader only calls `newOrder` for a cycle its term owns (its `BeginOrder`
//! or `ResumeOrder` was applied), and once per owning lifetime. So the bound for a cycle is the
//! number of distinct terms that owned it before `OrderCreated`, plus the crashes of a leader of
//! one of those terms inside that window (a leader that restarts may lead again in the same
//! term, with a fresh driver that has not seen the order it placed).

use std::collections::{BTreeMap, BTreeSet};

use certfleet_core::command::Op;
use certfleet_core::{CertId, Cycle, UnixMillis};

use crate::ca::CaBooks;
use crate::journal::Journal;

/// What I1 found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Violations.
    pub violations: Vec<String>,
    /// Cycles begun.
    pub cycles: u64,
    /// Orders the CA created.
    pub orders: u64,
    /// Orders beyond one per cycle, all within their bounds (the cost of leadership changes).
    pub extra_orders: u64,
}

#[derive(Default)]
struct Window {
    owners: BTreeSet<u64>,
    begun_at: UnixMillis,
    created_at: Option<UnixMillis>,
}

/// Checks the CA's orders against the owning terms in the journal.
#[must_use]
pub fn check(journal: &Journal, books: &CaBooks) -> Report {
    // A certificate removed and added again counts its cycles from 1 again, so one key may
    // have several windows; the CA's orders for the key are held against their sum.
    let mut windows: BTreeMap<(CertId, Cycle), Vec<Window>> = BTreeMap::new();
    for (_, record) in journal.accepted() {
        match &record.command.op {
            Op::BeginOrder {
                cert, cycle, term, ..
            } => {
                let mut window = Window {
                    begun_at: record.applied_at,
                    ..Window::default()
                };
                window.owners.insert(term.0);
                windows
                    .entry((cert.clone(), *cycle))
                    .or_default()
                    .push(window);
            }
            Op::ResumeOrder { cert, cycle, term } => {
                if let Some(window) = windows
                    .get_mut(&(cert.clone(), *cycle))
                    .and_then(|w| w.last_mut())
                    && window.created_at.is_none()
                {
                    window.owners.insert(term.0);
                }
            }
            Op::OrderCreated { step, .. } => {
                if let Some(window) = windows
                    .get_mut(&(step.cert.clone(), step.cycle))
                    .and_then(|w| w.last_mut())
                {
                    window.created_at.get_or_insert(record.applied_at);
                }
            }
            _ => {}
        }
    }
    let mut report = Report {
        cycles: windows.values().map(|w| w.len() as u64).sum(),
        orders: books.orders,
        ..Report::default()
    };
    for ((cert, cycle), &orders) in &books.orders_by_cycle {
        let key = (cert.clone(), *cycle);
        let Some(key_windows) = windows.get(&key) else {
            report.violations.push(format!(
                "I1 duplicate orders: {orders} orders for {cert} cycle {cycle}, which never began"
            ));
            continue;
        };
        let (mut owners, mut crashes) = (0, 0);
        for window in key_windows {
            let end = window.created_at.unwrap_or(UnixMillis(u64::MAX));
            owners += window.owners.len() as u64;
            crashes += journal
                .leader_crashes
                .iter()
                .filter(|c| {
                    window.owners.contains(&c.term) && window.begun_at <= c.at && c.at <= end
                })
                .count() as u64;
        }
        let bound = owners + crashes;
        if orders > bound {
            report.violations.push(format!(
                "I1 duplicate orders: {cert} cycle {cycle} has {orders} orders, bound {bound} ({owners} owning terms over {} windows, {crashes} leader crashes before OrderCreated)",
                key_windows.len()
            ));
        }
        report.extra_orders += orders.saturating_sub(1);
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::LeaderCrash;
    use certfleet_core::Term;
    use certfleet_core::command::StepRef;
    use certfleet_core::model::RenewalReason;

    fn cert() -> CertId {
        CertId::parse("a.example.com").expect("valid")
    }

    fn journal_of(ops: &[(u64, Op)]) -> Journal {
        Journal::of_ops(ops)
    }

    fn begin(term: u64) -> Op {
        Op::BeginOrder {
            cert: cert(),
            cycle: Cycle(1),
            term: Term(term),
            reason: RenewalReason::Initial,
        }
    }

    fn resume(term: u64) -> Op {
        Op::ResumeOrder {
            cert: cert(),
            cycle: Cycle(1),
            term: Term(term),
        }
    }

    fn created(term: u64) -> Op {
        Op::OrderCreated {
            step: StepRef {
                cert: cert(),
                cycle: Cycle(1),
                term: Term(term),
            },
            order_url: "https://ca.test/order/1".into(),
            authorizations: vec![],
        }
    }

    fn books(orders: u64) -> CaBooks {
        let mut books = CaBooks {
            orders,
            ..CaBooks::default()
        };
        books.orders_by_cycle.insert((cert(), Cycle(1)), orders);
        books
    }

    #[test]
    fn one_order_per_owning_term_is_within_the_bound() {
        let journal = journal_of(&[(10, begin(1)), (20, resume(2)), (30, created(2))]);
        assert!(check(&journal, &books(2)).violations.is_empty());
        assert!(!check(&journal, &books(3)).violations.is_empty());
    }

    #[test]
    fn a_resume_after_order_created_earns_no_extra_order() {
        let journal = journal_of(&[(10, begin(1)), (20, created(1)), (30, resume(2))]);
        let report = check(&journal, &books(2));
        assert_eq!(report.violations.len(), 1, "{report:?}");
        assert!(report.violations[0].starts_with("I1 duplicate orders"));
    }

    #[test]
    fn a_leader_crash_inside_the_window_earns_one_order() {
        let mut journal = journal_of(&[(10, begin(1)), (30, created(1))]);
        journal.leader_crashed(LeaderCrash {
            at: UnixMillis(20),
            term: 1,
        });
        assert!(check(&journal, &books(2)).violations.is_empty());
        let mut late = journal_of(&[(10, begin(1)), (30, created(1))]);
        late.leader_crashed(LeaderCrash {
            at: UnixMillis(40),
            term: 1,
        });
        assert!(!check(&late, &books(2)).violations.is_empty());
    }
}
