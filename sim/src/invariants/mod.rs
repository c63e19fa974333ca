//! The invariants of SIMULATION.md, one file each, as checkers outside the code under test:
//! they read what the run recorded (the merged apply streams in the [`Journal`], the simulated
//! CA's books, the nodes' final states and counters) and return violations as sentences that
//! name the invariant first (`"I3 durability: …"`).
//!
//! Safety invariants are checked over the whole run (the journal keeps every applied entry,
//! with the time it was applied, and the per-node checks run as entries arrive); the liveness
//! ones after the healing phase.
//!
//! [`Journal`]: crate::journal::Journal

pub mod i01_orders;
pub mod i02_terms;
pub mod i03_durability;
pub mod i04_convergence;
pub mod i05_monotonic;
pub mod i06_validity;
pub mod i07_challenges;
pub mod i08_budget;
pub mod i09_retry_after;
pub mod i10_sealed;
pub mod i11_determinism;
pub mod i12_clock;
pub mod i13_bounded;
