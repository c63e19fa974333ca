//! Named scenarios (SIMULATION "Process"): the leader killed inside each protocol window of an
//! order, and the cycle finished by the next leader — with the same order where its URL was
//! committed, and with one extra order (DESIGN §5's bound) where it was not; and the leader
//! killed right after the CA bound a new account key, the rollover finished by the next one.
#![cfg(madsim)]

mod common;

/// Runs the scenario `kill-<window>` and returns its report's fields.
fn killed(window: &str) -> std::collections::BTreeMap<String, String> {
    let output = common::sim(&[
        "--seed",
        "7",
        "--quiet",
        "--scenario",
        &format!("kill-{window}"),
    ]);
    assert!(
        output.starts_with("seed 7 ok"),
        "the run is clean:\n{output}"
    );
    let fields: std::collections::BTreeMap<String, String> =
        common::fields(&output, "scenario: ").into_iter().collect();
    assert_eq!(fields["window"], window, "{output}");
    assert_eq!(
        fields["finished_by_next_leader"], "true",
        "the next leader took the cycle over and issued the certificate:\n{output}"
    );
    fields
}

#[test]
fn a_leader_killed_after_new_order_costs_one_order_and_the_next_leader_finishes_the_cycle() {
    let report = killed("after-new-order");
    assert_eq!(
        report["order_committed"], "false",
        "the order URL died with the leader"
    );
    assert_eq!(report["orders"], "2", "one wasted order, no more");
}

#[test]
fn a_leader_killed_after_challenges_ready_is_followed_by_a_leader_resuming_the_same_order() {
    let report = killed("after-challenges-ready");
    assert_eq!(report["order_committed"], "true");
    assert_eq!(report["orders"], "1", "the same order, not a new one");
}

#[test]
fn a_leader_killed_after_finalize_is_followed_by_a_leader_resuming_the_same_order() {
    let report = killed("after-finalize");
    assert_eq!(report["order_committed"], "true");
    assert_eq!(report["orders"], "1", "the same order, not a new one");
}

#[test]
fn a_leader_killed_after_the_ca_bound_a_new_account_key_is_followed_by_a_leader_committing_it() {
    // The killed leader's keyChange, then the next leader's: it finds the key already bound
    // (RFC 8555 leaves the account on the new key) and commits it.
    let report = killed("after-key-change");
    assert_eq!(
        report["account_keys"], "2",
        "the registered key and the committed new one, no third"
    );
}
