//! certfleet: the IO side of certfleet-core.
//!
//! What exists today: the lifecycle demo ([`demo`]: the core's planner, `apply` and order
//! driver as one leader against a model CA in virtual time), the openraft glue ([`raft`]) and
//! the leader's driver ([`node`]), which the simulation runs as a cluster. The real ACME
//! client, data plane and the cluster demo are issue #5.

pub mod demo;
pub mod mutation;
pub mod node;
pub mod raft;
