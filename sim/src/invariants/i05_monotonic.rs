//! I5: per node, the applied index, the term and each certificate's cycle never decrease; the
//! served `not_after` never decreases except on removal.
//!
//! The applied index, cycles and `not_after` are in-memory state, rebuilt from the log after a
//! restart, so they are followed per process lifetime as entries are applied ([`on_apply`]);
//! the term is durable (the vote), so it is followed across restarts ([`Terms`]). A
//! certificate removed and added again is another certificate: the checks follow each one by
//! the instant it was added, since a snapshot install may carry a removal and the re-adding
//! together, past the watch (CI seed 238465954: a node that had served w15 in cycle 1 next saw
//! it, removed and re-added inside a snapshot, in cycle 1 with nothing served yet).

use std::collections::BTreeMap;

use certfleet_core::{CertId, Cycle, UnixMillis};

use crate::journal::Applied;

/// What one node lifetime has applied so far.
#[derive(Clone, Debug, Default)]
pub struct Watch {
    index: u64,
    /// Per certificate: when it was added, its cycle, what it serves until.
    certs: BTreeMap<CertId, (UnixMillis, Cycle, Option<UnixMillis>)>,
}

/// Checks one applied entry against what the same node lifetime applied before.
pub fn on_apply(watch: &mut Watch, applied: &Applied<'_>, violations: &mut Vec<String>) {
    let (host, incarnation) = applied.lifetime;
    if applied.index <= watch.index {
        violations.push(format!(
            "I5 monotonic: n{host} (incarnation {incarnation}) applied index {} after {}",
            applied.index, watch.index
        ));
    }
    watch.index = applied.index;
    let Some(cert) = applied.command.op.cert() else {
        return;
    };
    match applied.state.cert(cert) {
        None => {
            watch.certs.remove(cert);
        }
        Some(record) => {
            let now = (
                record.added_at,
                record.cycle,
                record.current.as_ref().map(|c| c.not_after),
            );
            if let Some(before) = watch.certs.get(cert)
                && before.0 == now.0
                && (now.1 < before.1 || now.2 < before.2)
            {
                violations.push(format!(
                    "I5 monotonic: n{host} {cert} went from (cycle {}, not_after {:?}) to (cycle {}, not_after {:?}) at index {}",
                    before.1, before.2, now.1, now.2, applied.index
                ));
            }
            watch.certs.insert(cert.clone(), now);
        }
    }
}

/// The highest term each host has reported.
#[derive(Clone, Debug, Default)]
pub struct Terms(BTreeMap<u64, u64>);

impl Terms {
    /// Records `host`'s current term; a violation if it went back.
    pub fn sample(&mut self, host: u64, term: u64, violations: &mut Vec<String>) {
        let seen = self.0.entry(host).or_insert(term);
        if term < *seen {
            violations.push(format!(
                "I5 monotonic: n{host} term went from {seen} to {term}"
            ));
        }
        *seen = (*seen).max(term);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_term_going_back_is_caught_even_across_restarts() {
        let mut terms = Terms::default();
        let mut violations = Vec::new();
        terms.sample(1, 3, &mut violations);
        terms.sample(1, 3, &mut violations);
        terms.sample(2, 1, &mut violations);
        assert!(violations.is_empty());
        terms.sample(1, 2, &mut violations);
        assert_eq!(violations.len(), 1);
    }
}
