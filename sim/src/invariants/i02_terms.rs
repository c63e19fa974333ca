//! I2: every accepted step of a cycle carries the cycle's term (DESIGN §5: a deposed leader
//! cannot commit progress). Checked against the open cycle as it was just before apply.

use certfleet_core::command::Op;

use crate::journal::Journal;

/// Violations of I2 in the journal.
#[must_use]
pub fn check(journal: &Journal) -> Vec<String> {
    let mut violations = Vec::new();
    for (index, record) in journal.accepted() {
        let Some(step) = record.command.op.step() else {
            continue;
        };
        // A failure arriving after its cycle was closed (a spec change, a removal) advances
        // nothing: `apply` takes only the CA's Retry-After it carries, to hold the next cycle.
        if record.open_before.is_none()
            && matches!(&record.command.op, Op::OrderFailed { failure, .. } if failure.retry_at.is_some())
        {
            continue;
        }
        if record.open_before != Some((step.cycle, step.term)) {
            violations.push(format!(
                "I2 term: index {index} accepted a step of {} cycle {} term {} while the open cycle was {:?}",
                step.cert, step.cycle, step.term, record.open_before
            ));
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::Applied;
    use certfleet::raft::state_machine::AppliedEntry;
    use certfleet_core::command::StepRef;
    use certfleet_core::{CertId, Command, Cycle, Response, State, Term, UnixMillis};

    fn finalized(term: u64, open: Option<(Cycle, Term)>) -> Journal {
        let mut journal = Journal::new(0);
        let command = Command {
            at: UnixMillis(1),
            op: Op::Finalized {
                step: StepRef {
                    cert: CertId::parse("a.example.com").expect("valid"),
                    cycle: Cycle(1),
                    term: Term(term),
                },
            },
        };
        journal.observe(&Applied {
            lifetime: (1, 0),
            now: UnixMillis(1),
            entry: &AppliedEntry {
                index: 1,
                entry_term: term,
                command: &command,
                response: &Response::Accepted,
                open_before: open,
                state: &State::default(),
            },
        });
        journal
    }

    #[test]
    fn a_step_of_the_owning_term_is_fine_and_a_stale_one_is_caught() {
        assert!(check(&finalized(2, Some((Cycle(1), Term(2))))).is_empty());
        assert_eq!(check(&finalized(1, Some((Cycle(1), Term(2))))).len(), 1);
        assert_eq!(check(&finalized(1, None)).len(), 1);
    }
}
