//! I3: every acknowledged admin write and every committed `CertIssued` survives. A write whose
//! outcome was unknown (timed out) is never assumed absent or present.

use std::collections::BTreeMap;

use certfleet_core::command::Op;
use certfleet_core::{CertId, State, UnixMillis};

use crate::journal::Journal;

/// Violations of I3 in one node's final `state`, given the acknowledged certificate writes.
#[must_use]
pub fn check(host: u64, state: &State, acknowledged: &[CertId], journal: &Journal) -> Vec<String> {
    // What the log says must be there at the end: certificates not removed afterwards, and the
    // latest issued validity of each.
    let mut removed_after: BTreeMap<&CertId, u64> = BTreeMap::new();
    let mut issued: BTreeMap<&CertId, UnixMillis> = BTreeMap::new();
    for (index, record) in journal.accepted() {
        match &record.command.op {
            Op::RemoveCert { cert } => {
                removed_after.insert(cert, index);
                issued.remove(cert);
            }
            Op::CertIssued {
                step, not_after, ..
            } => {
                let latest = issued.entry(&step.cert).or_insert(*not_after);
                *latest = (*latest).max(*not_after);
            }
            _ => {}
        }
    }
    let mut violations = Vec::new();
    for cert in acknowledged {
        if state.cert(cert).is_none() && !removed_after.contains_key(cert) {
            violations.push(format!("I3 durability: n{host} lost acknowledged {cert}"));
        }
    }
    for (cert, not_after) in issued {
        let held = state
            .cert(cert)
            .and_then(|r| r.current.as_ref())
            .map(|c| c.not_after);
        if held.is_none_or(|held| held < not_after) {
            violations.push(format!(
                "I3 durability: n{host} holds {cert} until {held:?}, but a certificate until {not_after} was committed"
            ));
        }
    }
    violations
}
