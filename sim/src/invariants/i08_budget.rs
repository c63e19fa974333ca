//! I8: no 429 caused by certfleet's own pacing. The simulated CA enforces Let's Encrypt-like
//! limits (new orders per account, duplicate certificates) independently of the cluster's
//! budgets; every 429 it sends that was not injected as a fault is a violation.

use crate::ca::CaBooks;

/// Violations of I8 in the CA's books.
#[must_use]
pub fn check(books: &CaBooks) -> Vec<String> {
    books
        .pacing_429s
        .iter()
        .map(|limit| format!("I8 budget: the CA rate-limited certfleet: {limit}"))
        .collect()
}
