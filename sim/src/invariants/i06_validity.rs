//! I6: while the CA is reachable and a majority is connected, no certificate is served expired
//! or inside its safety margin; after healing every due certificate is renewed.
//!
//! The harness samples every node's served certificates through the healthy phase, after a
//! grace period for the cluster to come back ([`check_served`]), and checks the final state
//! ([`check_final`]).

use certfleet_core::{State, UnixMillis};

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
