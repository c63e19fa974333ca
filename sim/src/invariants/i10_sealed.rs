//! I10: no log entry, snapshot or trace holds an unsealed private key. Every key field must be
//! a sealed envelope, and no encoded entry, snapshot or trace may contain a PEM private key.

use certfleet_core::State;
use certfleet_core::command::{Op, encode};
use certfleet_core::snapshot::SnapshotWriter;

use crate::journal::Journal;

const PEM_MARKER: &[u8] = b"PRIVATE KEY";

fn holds_pem(bytes: &[u8]) -> bool {
    bytes.windows(PEM_MARKER.len()).any(|w| w == PEM_MARKER)
}

/// Violations of I10 in the journal, a final state's snapshot and the trace.
#[must_use]
pub fn check(journal: &Journal, state: &State, trace: &str) -> Vec<String> {
    let mut violations = Vec::new();
    for (index, record) in &journal.entries {
        let key = match &record.command.op {
            Op::KeyPrepared { key, .. } => Some(key),
            Op::SetAccount { account, .. } => Some(&account.credentials),
            _ => None,
        };
        if let Some(Err(problem)) = key.map(|k| k.check()) {
            violations.push(format!("I10 sealed: index {index}: {problem}"));
        }
        if holds_pem(&encode(&record.command)) {
            violations.push(format!("I10 sealed: index {index} holds a PEM private key"));
        }
    }
    if holds_pem(&SnapshotWriter::to_vec(state)) {
        violations.push("I10 sealed: a snapshot holds a PEM private key".into());
    }
    if holds_pem(trace.as_bytes()) {
        violations.push("I10 sealed: the trace holds a PEM private key".into());
    }
    violations
}
