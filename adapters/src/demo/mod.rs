//! `certfleet demo` and `certfleet lifecycle`: the product end to end on one machine, without
//! a network.
//!
//! * [`cluster`]: a real cluster (voters and an edge, each with Raft over TCP, a data plane
//!   with HTTP-01 and TLS listeners, and the leader's driver) on loopback, issuing from the
//!   embedded ACME CA or a given ACME directory, checked by a real TLS client;
//! * [`lifecycle`]: the lifecycle core alone, one leader against the model CA in virtual
//!   time, renewing for months in seconds.

pub mod cluster;
pub mod embedded;
pub mod lifecycle;

pub use lifecycle::{DemoError, DemoOptions, DemoReport, run};
