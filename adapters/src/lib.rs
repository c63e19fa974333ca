//! certfleet: the IO side of certfleet-core.
//!
//! What exists today: the lifecycle demo ([`demo`]: the core's planner, `apply` and order
//! driver as one leader against a model CA in virtual time), the openraft glue ([`raft`]), the
//! leader's driver ([`node`]), which the simulation runs as a cluster, the instant-acme adapter
//! ([`acme`]) with the cluster's shared account ([`account`]), key sealing ([`seal`]), and the
//! runner that starts and joins real nodes on sockets ([`fleet`]). The data plane and the
//! cluster demo are still to come (issue #5).

pub mod account;
pub mod acme;
pub mod buggify;
pub mod dataplane;
pub mod demo;
pub mod fleet;
pub mod mutation;
pub mod node;
pub mod raft;
pub mod seal;
