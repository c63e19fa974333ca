//! I9: no request for a resource or account before the `Retry-After` it last received (less
//! the configured clock skew: the leader's clock turns the header into an instant). Calls of
//! other cycles already under way when an account-wide 429 arrived are counted apart: the
//! cluster learns of the 429 through a commit.

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
