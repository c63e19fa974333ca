//! I7: the CA's validation request, sent to a random node through the load balancer, finds the
//! challenge. Misses after the leader went ahead of lagging members (DESIGN §5 step 3) and at a
//! node that restarted since acknowledging are counted apart; they are 0 without faults.

use crate::ca::CaBooks;

/// Violations of I7 in the CA's books.
#[must_use]
pub fn check(books: &CaBooks) -> Vec<String> {
    books
        .misses
        .iter()
        .map(|miss| format!("I7 challenge: {miss}"))
        .collect()
}
