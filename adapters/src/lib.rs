//! certfleet: the IO side of certfleet-core.
//!
//! What exists today is the lifecycle demo ([`demo`]): the core's planner, `apply` and order
//! driver running as one leader against a model CA in virtual time. The replicated cluster
//! (openraft, node driver, simulation) is issue #4; the real ACME client, data plane and the
//! cluster demo are issue #5. Nothing here pretends to be those.

pub mod demo;
pub mod node;
pub mod raft;
