//! I6: while the CA is reachable and a majority is connected, no certificate is served expired
//! or inside its safety margin; after healing every due certificate is renewed.
//!
//! The harness samples every node's served certificates through the healthy phase, after a
//! grace period for the cluster to come back ([`check_served`]), and checks the final state
//! ([`check_final`]).

use std::collections::BTreeMap;

use certfleet_core::command::Op;
use certfleet_core::{CertId, State, UnixMillis};

use crate::journal::Journal;

/// The safety margin: a certificate with less than this fraction of its lifetime left
/// (permille) counts as failing I6, like one already expired. The policy renews at 2/3 of the
/// lifetime, so a healthy cluster never comes near it.
pub const MARGIN_PERMILLE: u64 = 50;

/// Violations on `host` at `now`: a certificate unissued, expired or inside its margin, that
/// was due more than `grace_ms` ago. Due: added, and not backing off (a `retry_at` from the
/// safety phase's failures, capped by the core at a quarter of the remaining validity, is
/// respected).
#[must_use]
pub fn check_served(host: u64, state: &State, now: UnixMillis, grace_ms: u64) -> Vec<String> {
    let mut violations = Vec::new();
    for (id, record) in state.certs() {
        let due_since = record
            .added_at
            .max(record.retry_at.unwrap_or(UnixMillis::ZERO));
        if now.ms_since(due_since) < grace_ms {
            continue;
        }
        match &record.current {
            None => violations.push(format!(
                "I6 validity: n{host} serves no certificate for {id} at {now}"
            )),
            Some(current) => {
                let lifetime = current.not_after.ms_since(current.not_before);
                let margin = lifetime * MARGIN_PERMILLE / 1000;
                if current.not_after.ms_since(now) <= margin {
                    violations.push(format!(
                        "I6 validity: n{host} serves {id} until {} at {now} (cycle {}, open {:?}, failures {}, retry_at {:?}, deferred {:?})",
                        current.not_after,
                        record.cycle,
                        record.open.as_ref().map(|o| o.step.name()),
                        record.failures,
                        record.retry_at,
                        record.deferred_until,
                    ));
                }
            }
        }
    }
    violations
}

/// Violations of the final state: every certificate issued and unexpired.
#[must_use]
pub fn check_final(host: u64, state: &State, now: UnixMillis, grace_ms: u64) -> Vec<String> {
    check_served(host, state, now, grace_ms)
}

/// Violations of "a certificate told to renew now is renewed" (RFC 9773 §4.2; the liveness
/// half of I6): every committed ARI window already past when it was applied (the CA's "renew
/// now", or a window that moved behind the present) is followed in the log by an issuance or
/// a removal of that certificate. The liveness phase gives every such renewal a fault-free
/// day, so one still missing at the end is stuck, not slow.
#[must_use]
pub fn check_renew_now(journal: &Journal) -> (u64, Vec<String>) {
    let mut pending: BTreeMap<CertId, (u64, UnixMillis)> = BTreeMap::new();
    let mut told = 0;
    for (index, record) in &journal.entries {
        if !record.accepted {
            continue;
        }
        match &record.command.op {
            Op::RenewalInfoPolled {
                cert,
                window: Some(window),
                ..
            } if window.end < record.applied_at => {
                told += 1;
                pending
                    .entry(cert.clone())
                    .or_insert((*index, record.applied_at));
            }
            Op::CertIssued { step, .. } => {
                pending.remove(&step.cert);
            }
            Op::RemoveCert { cert } => {
                pending.remove(cert);
            }
            _ => {}
        }
    }
    let violations = pending
        .into_iter()
        .map(|(cert, (index, at))| {
            format!(
                "I6 validity: {cert} was told to renew now (ARI window past, index {index}, at {at}) and never renewed"
            )
        })
        .collect();
    (told, violations)
}

#[cfg(test)]
mod tests {
    use super::*;
    use certfleet_core::Cycle;
    use certfleet_core::command::{AriWindow, StepRef};
    use certfleet_core::model::Term;

    fn cert(name: &str) -> CertId {
        CertId::parse(name).expect("valid")
    }

    fn polled(name: &str, start: u64, end: u64) -> Op {
        Op::RenewalInfoPolled {
            cert: cert(name),
            cycle: Cycle(1),
            window: Some(AriWindow {
                start: UnixMillis(start),
                end: UnixMillis(end),
            }),
            retry_at: None,
            seed: 1,
        }
    }

    fn issued(name: &str) -> Op {
        Op::CertIssued {
            step: StepRef {
                cert: cert(name),
                cycle: Cycle(2),
                term: Term(1),
            },
            leaf_der: vec![1],
            chain_der: vec![],
            not_before: UnixMillis(0),
            not_after: UnixMillis(1),
            ari_id: None,
        }
    }

    #[test]
    fn a_certificate_told_to_renew_now_must_be_renewed_or_removed() {
        let journal = Journal::of_ops(&[
            // Renewed after a "renew now": fine.
            (1_000, polled("a.example.com", 100, 200)),
            (2_000, issued("a.example.com")),
            // Removed instead: fine.
            (3_000, polled("b.example.com", 100, 200)),
            (
                4_000,
                Op::RemoveCert {
                    cert: cert("b.example.com"),
                },
            ),
            // A window still ahead is no "renew now".
            (5_000, polled("c.example.com", 9_000, 10_000)),
            // Told, and never renewed: stuck.
            (6_000, polled("d.example.com", 100, 200)),
            // Issued before it was told does not count.
            (7_000, issued("e.example.com")),
            (8_000, polled("e.example.com", 100, 200)),
        ]);
        let (told, violations) = check_renew_now(&journal);
        assert_eq!(told, 4);
        assert_eq!(violations.len(), 2, "{violations:#?}");
        assert!(violations[0].contains("d.example.com"));
        assert!(violations[1].contains("e.example.com"));
    }
}
