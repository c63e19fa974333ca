//! certfleet-sim: the cluster under madsim deterministic simulation (DESIGN §8, SIMULATION.md).
//!
//! Build and run with the simulator switched on, in its own target directory:
//!
//! ```sh
//! RUSTFLAGS="--cfg madsim" CARGO_TARGET_DIR=$HOME/.cache/certfleet/madsim \
//!     cargo run -p certfleet-sim --release -- --seeds 0..200
//! ```
//!
//! A run (SIMULATION "A run"): seed → options ([`options`]); voters and edge learners as
//! simulated hosts running the production Raft glue and node driver against one simulated CA
//! ([`ca`]); a one-hour safety phase of workload and faults; healing; a 40-minute liveness
//! phase; convergence; then every invariant ([`invariants`], one file each) over what the run
//! recorded ([`journal`]). Named scenarios live in [`scenario`] and `sim/tests/`.
//!
//! [`wire`] runs the production ACME path instead: instant-acme over simulated TCP to the RFC
//! 8555 CA of `certfleet-ca`, validations against the nodes' data planes, with CA faults and a
//! leader kill; it has its own checks, not yet the invariants I1–I13 (which read the model CA).
//!
//! Not yet: the invariant harness over the wire CA, membership churn, persisted snapshots in
//! the simulated store.

pub mod ca;
#[cfg(madsim)]
pub mod cluster;
pub mod invariants;
pub mod journal;
pub mod options;
pub mod scenario;
#[cfg(madsim)]
pub mod wire;

pub use options::SimOptions;
