//! certfleet-core: the certificate lifecycle as a pure, deterministic state machine.
//!
//! This crate is **sans-IO and fully deterministic**: it has no networking, no files, no
//! threads, reads no clock, no environment and no random source. Time enters only as a
//! [`UnixMillis`] argument and randomness only as seeds carried in commands, mixed by
//! [`time::mix`]. The same log therefore yields the same state, byte for byte, on every node and
//! in every replay (`core/clippy.toml` bans the escape hatches; CI checks the dependency tree).
//!
//! The main types:
//! * [`State`] and [`apply`]: the replicated state machine. `apply(&mut State, &Command)` is total:
//!   every command gets a [`Response`] and the data-plane [`Event`]s it caused; a stale term, a
//!   wrong cycle or an out-of-order step is a [`Rejection`] that leaves the state untouched.
//! * [`plan()`]: the leader's renewal planner, `plan(&State, now, term) -> Plan`, whose cost
//!   follows the work due, not the number of certificates.
//! * [`OrderDriver`]: the leader's sans-IO driver of one ACME order cycle (DESIGN §5), in the
//!   shape of quinn-proto: `poll_action` → perform → `handle_outcome`.
//! * [`snapshot`]: framed, checksummed, incremental snapshots whose digest is [`State::digest`].
//! * [`command::encode`] / [`command::decode`]: the versioned wire format of commands.

#![forbid(unsafe_code)]

extern crate alloc;

pub mod budget;
pub mod command;
pub mod error;
pub mod event;
pub mod model;
pub mod name;
pub mod order;
pub mod plan;
pub mod snapshot;
pub mod state;
pub mod testing;
pub mod time;

pub use command::{Command, Op, Response};
pub use error::Rejection;
pub use event::Event;
pub use model::{CertId, CertSpec, Cycle, IssuerId, Policy, Term};
pub use order::{Action, OrderDriver, Outcome};
pub use plan::{Intent, Plan, plan};
pub use state::{State, apply};
pub use time::UnixMillis;
