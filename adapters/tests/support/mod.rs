//! Harnesses shared by the integration tests that need real external servers.

#![allow(
    dead_code,
    unreachable_pub,
    reason = "each test binary uses part of this module"
)]

pub mod acme_flow;
pub mod pebble;
