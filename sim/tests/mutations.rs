//! The checkers bite (SIMULATION "A run", step 5): each known bug, switched back on through a
//! simulation-only switch (`certfleet::mutation`, the runner's `--mutation`), is caught by the
//! invariant meant for it on a seed that is clean without the bug.
#![cfg(madsim)]

mod common;

/// Asserts `seed` is clean as it is, and violates `invariant` with `mutation` on.
fn caught(mutation: &str, seed: u64, invariant: &str) {
    let seed_arg = seed.to_string();
    let clean = common::sim(&["--seed", &seed_arg, "--quiet"]);
    assert!(
        clean.starts_with(&format!("seed {seed} ok")),
        "seed {seed} must be clean without the bug:\n{clean}"
    );
    let mutated = common::sim(&["--seed", &seed_arg, "--quiet", "--mutation", mutation]);
    assert!(
        mutated
            .lines()
            .any(|line| line.starts_with(&format!("  {invariant}"))),
        "seed {seed} with {mutation} should violate {invariant}:\n{mutated}"
    );
}

// Seeds found with `certfleet-sim --seeds 0..100 --mutation NAME` (0..40 for the last).

#[test]
fn skipping_the_term_check_in_apply_is_caught_by_i2() {
    caught("skip-term-check", 79, "I2 term");
}

#[test]
fn a_new_order_while_a_cycle_is_open_is_caught_by_i1() {
    caught("new-order-while-open", 1, "I1 duplicate orders");
}

#[test]
fn serving_a_challenge_before_every_member_applied_it_is_caught_by_i7() {
    caught("serve-before-applied", 0, "I7 challenge");
}

#[test]
fn ignoring_retry_after_is_caught_by_i9() {
    caught("ignore-retry-after", 0, "I9 retry-after");
}

#[test]
fn acknowledging_unsynced_writes_is_caught_by_i3() {
    caught("ack-unsynced-writes", 39, "I3 durability");
}

#[test]
fn calling_the_ca_without_confirming_the_leadership_is_caught_by_i9() {
    caught("skip-leadership-check", 60, "I9 retry-after");
}
