//! certfleet-sim: deterministic simulation of a certfleet cluster under madsim.
//!
//! Not built yet: the cluster harness, fault injection, simulated CA, invariants I1–I13 and the
//! seed runner arrive with issue #4 (see shared/SIMULATION.md). Until then the core's own
//! single-leader harness (`certfleet_core::testing::Harness`) and its property tests cover the
//! lifecycle logic; this crate deliberately exports nothing.
