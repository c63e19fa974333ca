//! certfleet-sim: the cluster under madsim deterministic simulation (DESIGN §8, SIMULATION.md).
//!
//! Build and run with the simulator switched on, in its own target directory:
//!
//! ```sh
//! RUSTFLAGS="--cfg madsim" CARGO_TARGET_DIR=$HOME/.cache/certfleet/madsim \
//!     cargo run -p certfleet-sim --release -- --seeds 0..200
//! ```
//!
//! What a run covers today: voters and edge learners as simulated hosts running the
//! production Raft glue (log store, state machine, TCP network) on openraft; a workload of
//! certificate writes sent to random nodes; seeded faults (crash and restart losing unsynced
//! log writes, network clogging); then a healing phase that checks convergence (I4), that no
//! acknowledged write is lost (I3) and that applied indexes never go back within a process
//! lifetime (I5). Each run ends in a trace digest that must be byte-identical for a seed (I11).
//!
//! Not yet: the leader's node driver and the simulated CA, so the order-cycle invariants
//! (I1, I2, I6–I10, I12, I13) and the checker mutations are still to come (issue #4).

pub mod ca;
#[cfg(madsim)]
pub mod cluster;
pub mod invariants;
pub mod journal;
pub mod options;
pub mod scenario;

pub use options::SimOptions;
