//! I11: the same seed gives a byte-identical trace digest. A meta-invariant: one run cannot
//! check it, so CI runs a slice of seeds twice and compares (`.ci/run`), and
//! `sim/tests/determinism.rs` does the same for a few seeds. The digest covers everything the
//! trace records: options, faults, write outcomes, the CA's books, final state digests.

use sha2::{Digest, Sha256};

/// The digest of a run's trace.
#[must_use]
pub fn digest(trace: &str) -> [u8; 32] {
    Sha256::digest(trace.as_bytes()).into()
}
