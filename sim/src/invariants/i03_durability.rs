//! I3: every acknowledged admin write and every committed `CertIssued` survives. A write whose
//! outcome was unknown (timed out) is never assumed absent or present. The account's key is
//! part of it: an acknowledged key rollover ends bound at the CA or refused by it, and the key
//! every node holds is the one the CA holds.

use std::collections::BTreeMap;

use certfleet_core::command::Op;
use certfleet_core::model::{IssuerId, SealedBlob};
use certfleet_core::testing::ISSUER;
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

/// The account half of I3, on one node's final `state`: the key the node would sign with is
/// the one the CA holds (else the cluster is locked out of its account), no key rollover is
/// still in progress after healing, and every acknowledged rollover either bound its key at
/// the CA (`ca_keys`: every key the CA bound, in order) or was refused by it, as committed.
#[must_use]
pub fn check_account_key(
    host: u64,
    state: &State,
    acknowledged_rollovers: &[SealedBlob],
    ca_keys: &[SealedBlob],
    journal: &Journal,
) -> Vec<String> {
    let mut violations = Vec::new();
    let issuer = IssuerId::parse(ISSUER).expect("fixture issuer");
    let Some(account) = state.account(&issuer) else {
        return vec![format!("I3 durability: n{host} holds no account")];
    };
    if ca_keys
        .last()
        .is_some_and(|bound| *bound != account.credentials)
    {
        violations.push(format!(
            "I3 durability: n{host} signs with a key the CA does not hold (generation {:?} of {}): the account is locked out",
            ca_keys.iter().position(|k| *k == account.credentials),
            ca_keys.len()
        ));
    }
    if let Some(rollover) = &account.rollover {
        violations.push(format!(
            "I3 durability: n{host} still has the key rollover of {} in progress after healing",
            rollover.requested_at
        ));
    }
    let refused: Vec<&SealedBlob> = journal
        .accepted()
        .filter_map(|(_, record)| match &record.command.op {
            Op::AccountKeyRolloverRefused { credentials, .. } => Some(credentials),
            _ => None,
        })
        .collect();
    for (generation, key) in acknowledged_rollovers.iter().enumerate() {
        if !ca_keys.contains(key) && !refused.contains(&key) {
            violations.push(format!(
                "I3 durability: n{host}: acknowledged key rollover #{generation} was neither bound at the CA nor refused"
            ));
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;
    use certfleet_core::testing::{account, sealed};
    use certfleet_core::{Command, apply};

    /// A node's state: the registered account, then `ops` applied.
    fn state_after(ops: &[Op]) -> State {
        let mut state = State::new();
        let issuer = IssuerId::parse(ISSUER).expect("fixture issuer");
        let mut all = vec![Op::SetAccount {
            issuer,
            account: account(),
        }];
        all.extend_from_slice(ops);
        for op in all {
            let command = Command {
                at: UnixMillis(1),
                op,
            };
            assert!(apply(&mut state, &command).0.is_accepted());
        }
        state
    }

    fn roll(generation: u8) -> Op {
        Op::RollAccountKey {
            issuer: IssuerId::parse(ISSUER).expect("fixture issuer"),
            credentials: sealed(generation),
        }
    }

    fn rolled(generation: u8) -> Op {
        Op::AccountKeyRolled {
            issuer: IssuerId::parse(ISSUER).expect("fixture issuer"),
            credentials: sealed(generation),
        }
    }

    #[test]
    fn a_node_holding_another_key_than_the_ca_is_locked_out() {
        let registered = account().credentials;
        let ops = [roll(2), rolled(2)];
        let state = state_after(&ops);
        let journal = Journal::of_ops(&[(1, ops[0].clone()), (2, ops[1].clone())]);
        // The CA bound it too: clean.
        let both = [registered.clone(), sealed(2)];
        assert!(check_account_key(1, &state, &[sealed(2)], &both, &journal).is_empty());
        // The node committed a key the CA never bound (a rollover "finished" without the CA).
        let violations = check_account_key(1, &state, &[sealed(2)], &[registered], &journal);
        assert_eq!(violations.len(), 2, "{violations:#?}");
        assert!(violations[0].contains("locked out"));
        assert!(violations[1].contains("neither bound at the CA nor refused"));
    }

    #[test]
    fn a_rollover_left_in_progress_or_lost_is_named_and_a_refused_one_is_fine() {
        let registered = account().credentials;
        // Acknowledged, never finished.
        let ops = [roll(2)];
        let state = state_after(&ops);
        let journal = Journal::of_ops(&[(1, ops[0].clone())]);
        let violations = check_account_key(
            1,
            &state,
            &[sealed(2)],
            std::slice::from_ref(&registered),
            &journal,
        );
        assert_eq!(violations.len(), 2, "{violations:#?}");
        assert!(violations[0].contains("in progress after healing"));
        // Refused by the CA, as committed: the account keeps its key.
        let refused = Op::AccountKeyRolloverRefused {
            issuer: IssuerId::parse(ISSUER).expect("fixture issuer"),
            credentials: sealed(2),
            detail: "no keyChange".into(),
        };
        let ops = [roll(2), refused];
        let state = state_after(&ops);
        let journal = Journal::of_ops(&[(1, ops[0].clone()), (2, ops[1].clone())]);
        assert!(check_account_key(1, &state, &[sealed(2)], &[registered], &journal).is_empty());
    }
}
