//! I5: per node, the applied index, the term and each certificate's cycle never decrease; the
//! served `not_after` never decreases except on removal.
//!
//! The applied index, cycles and `not_after` are in-memory state, rebuilt from the log after a
//! restart, so they are followed per process lifetime as entries are applied ([`on_apply`]);
//! the term is durable (the vote), so it is followed across restarts ([`Terms`]).

use std::collections::BTreeMap;

use certfleet_core::{CertId, Cycle, UnixMillis};

use crate::journal::Applied;

/// What one node lifetime has applied so far.
#[derive(Clone, Debug, Default)]
pub struct Watch {
    index: u64,
    certs: BTreeMap<CertId, (Cycle, Option<UnixMillis>)>,
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
            let now = (record.cycle, record.current.as_ref().map(|c| c.not_after));
            if let Some(before) = watch.certs.get(cert)
                && (now.0 < before.0 || now.1 < before.1)
            {
                violations.push(format!(
                    "I5 monotonic: n{host} {cert} went from (cycle {}, not_after {:?}) to (cycle {}, not_after {:?}) at index {}",
                    before.0, before.1, now.0, now.1, applied.index
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
