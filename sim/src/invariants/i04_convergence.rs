//! I4: after healing, every voter and edge reaches the same applied index and state digest;
//! and the state is what the log says it is: replaying the committed commands into an empty
//! state, and writing and reading a snapshot of it, give the same digest. (Nodes that applied a
//! different command at one index are caught as entries arrive: see the journal.)

use certfleet_core::snapshot::{SnapshotReader, SnapshotWriter};
use certfleet_core::{State, apply};

use crate::journal::Journal;

/// Entries reported one by one; the rest are counted.
const REPORTED_MAX: usize = 5;

/// One node's view at the end: `(last log index, applied index, state digest)`.
pub type NodeView = (u64, u64, [u8; 32]);

/// The common digest when every node is up and all agree; `None` while they do not.
#[must_use]
pub fn agreed(views: &[Option<NodeView>]) -> Option<[u8; 32]> {
    let first = (*views.first()?)?;
    let top = views.iter().flatten().map(|v| v.0).max()?;
    let all = views.iter().all(|v| {
        v.is_some_and(|(log, applied, digest)| log == top && applied == top && digest == first.2)
    });
    (all && top > 0).then_some(first.2)
}

/// Replays the journal's accepted commands and round-trips the result through a snapshot;
/// violations when either differs from the digest the nodes agreed on.
#[must_use]
pub fn check_replay(journal: &Journal, agreed: [u8; 32]) -> Vec<String> {
    let mut violations = Vec::new();
    let mut state = State::default();
    let mut differing = 0;
    for (index, record) in journal.accepted() {
        let (response, _) = apply(&mut state, &record.command);
        if !response.is_accepted() {
            differing += 1;
            if differing <= REPORTED_MAX {
                violations.push(format!(
                    "I4 replay: index {index} was accepted on a node but rejected on replay: {response:?}"
                ));
            }
        }
    }
    if differing > REPORTED_MAX {
        violations.push(format!(
            "I4 replay: {} more entries accepted on a node were rejected on replay",
            differing - REPORTED_MAX
        ));
    }
    if state.digest() != agreed {
        violations.push("I4 replay: replaying the committed log gives a different state digest than the nodes hold".into());
    }
    let bytes = SnapshotWriter::to_vec(&state);
    match SnapshotReader::read_all(&bytes) {
        Ok(installed) if installed.digest() == state.digest() => {}
        Ok(_) => {
            violations.push("I4 snapshot: an installed snapshot has a different digest".into())
        }
        Err(error) => violations.push(format!(
            "I4 snapshot: a written snapshot does not read back: {error}"
        )),
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_agree_only_when_all_are_up_at_the_same_index_and_digest() {
        let view = Some((5, 5, [1; 32]));
        assert_eq!(agreed(&[view, view]), Some([1; 32]));
        assert_eq!(agreed(&[view, None]), None);
        assert_eq!(agreed(&[view, Some((5, 4, [1; 32]))]), None);
        assert_eq!(agreed(&[view, Some((5, 5, [2; 32]))]), None);
        assert_eq!(agreed(&[Some((0, 0, [1; 32]))]), None);
    }
}
