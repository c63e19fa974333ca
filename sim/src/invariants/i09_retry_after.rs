//! I9: no request for a resource or account before the `Retry-After` it last received (less
//! the configured clock skew: the leader's clock turns the header into an instant). Two kinds of
//! early call are counted apart, because the cluster learns of a `Retry-After` only through a
//! commit by the leader that received it: calls of other cycles already under way when an
//! account-wide 429 arrived, and calls by another leadership: a later one when the one that
//! received the header was deposed or cut off before it committed it (the CA knows each
//! caller's term, and checks the furthest node's state for the committed wait), or an earlier
//! one, deposed without knowing it, whose process was paused between its leadership check and
//! its call (the CA is told of every resume). The same leadership calling early, a later one
//! ignoring a committed wait, or a deposed one calling without a pause to excuse it, is a
//! violation.

use crate::ca::CaBooks;

/// Violations of I9 in the CA's books.
#[must_use]
pub fn check(books: &CaBooks) -> Vec<String> {
    books
        .early_requests
        .iter()
        .map(|request| format!("I9 retry-after: {request}"))
        .collect()
}
