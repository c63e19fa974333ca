//! I13: planner work per tick does not grow with idle certificates, and every queue is bounded.
//! Checked from each node's driver counters (a tick that emitted nothing examined nothing;
//! no tick examined or emitted more than the policy allows) and the state (open cycles within
//! `orders_in_flight_max`).

use certfleet::node::DriverStats;
use certfleet_core::{Policy, State};
use std::sync::atomic::Ordering;

/// Violations of I13 in one node's driver counters.
#[must_use]
pub fn check_driver(host: u64, stats: &DriverStats, policy: &Policy) -> Vec<String> {
    let mut violations = Vec::new();
    let idle = stats.planner_idle_scanned_max.load(Ordering::Relaxed);
    if idle > 0 {
        violations.push(format!(
            "I13 bounded: n{host}'s planner examined {idle} entries in a tick that had nothing to do"
        ));
    }
    let scanned = stats.planner_scanned_max.load(Ordering::Relaxed);
    if scanned > u64::from(policy.scan_per_tick_max) {
        violations.push(format!(
            "I13 bounded: n{host}'s planner examined {scanned} entries in one tick (max {})",
            policy.scan_per_tick_max
        ));
    }
    let intents = stats.planner_intents_max.load(Ordering::Relaxed);
    if intents > u64::from(policy.intents_per_tick_max) {
        violations.push(format!(
            "I13 bounded: n{host}'s planner emitted {intents} intents in one tick (max {})",
            policy.intents_per_tick_max
        ));
    }
    violations
}

/// Violations of I13 in a state: more cycles open than the policy allows.
#[must_use]
pub fn check_state(host: u64, state: &State) -> Vec<String> {
    let open = state.certs().filter(|(_, r)| r.open.is_some()).count() as u64;
    let max = u64::from(state.policy().orders_in_flight_max);
    if open > max {
        vec![format!(
            "I13 bounded: n{host} has {open} cycles open (max {max})"
        )]
    } else {
        Vec::new()
    }
}
