//! The production ACME path under simulation (`certfleet_sim::wire`): three voters and an edge
//! issue from the RFC 8555 CA over simulated TCP through instant-acme, with `badNonce`, 503
//! and processing-delay faults, validations sent to random nodes, and the leader killed once:
//! at a count of issued certificates, or in a protocol window (the instant the CA created an
//! order, was told a challenge is ready, or signed a certificate).
//! Simulation builds only (`RUSTFLAGS="--cfg madsim"`), like every test here.
#![cfg(madsim)]

mod common;

use certfleet_sim::wire::{self, EDGES, VOTERS, WireKill, WireOptions};

#[test]
fn a_wire_run_issues_every_certificate_on_every_survivor_through_a_leader_kill() {
    // Seeds 1–3 kill in the three windows, 4 at a count of issued certificates.
    for seed in [1, 2, 3, 4] {
        let options = WireOptions::from_seed(seed);
        let report = wire::run(seed, options.clone());
        eprint!("{report}");
        assert!(report.violations.is_empty(), "seed {seed}:\n{report}");
        assert!(report.killed.is_some(), "seed {seed}: no leader was killed");
        let survivors = usize::try_from(VOTERS + EDGES - 1).unwrap();
        assert_eq!(report.issued.len(), survivors, "seed {seed}:\n{report}");
        assert!(
            report.issued.values().all(|&n| n == options.certs),
            "seed {seed}:\n{report}"
        );
        // DESIGN §5: one order per certificate, plus at most one for each cycle the killed
        // leader had open without a committed order URL (the run checks each certificate).
        assert!(
            report.orders <= (options.certs + report.begun_at_kill.len()) as u64,
            "seed {seed}:\n{report}"
        );
        assert_eq!(report.validations_failed, 0, "seed {seed}:\n{report}");
        assert_eq!(
            report.probes_ok,
            options.certs * survivors,
            "seed {seed}:\n{report}"
        );
        // The faults fired and were survived, not configured away.
        assert!(report.bad_nonces_injected > 0, "seed {seed}:\n{report}");
        assert!(report.rate_limited > 0, "seed {seed}:\n{report}");
    }
}

fn digest(output: &str) -> String {
    output
        .lines()
        .find_map(|line| line.strip_prefix("digest: "))
        .unwrap_or_else(|| panic!("no digest in:\n{output}"))
        .to_owned()
}

#[test]
fn the_same_seed_gives_a_byte_identical_wire_trace_and_another_seed_another() {
    // Processes of their own, as the runner replays a seed (see its docs).
    let first = common::sim(&["--seed", "7", "--wire"]);
    let second = common::sim(&["--seed", "7", "--wire"]);
    let other = common::sim(&["--seed", "8", "--wire"]);
    assert!(first.contains("wire seed 7 ok "), "{first}");
    assert_eq!(first, second, "seed 7 ran twice");
    assert_eq!(digest(&first).len(), 64);
    assert_ne!(
        digest(&first),
        digest(&other),
        "seeds 7 and 8:\n{first}\n{other}"
    );
}

#[test]
fn a_wire_run_issues_everything_when_bad_nonces_outlast_instant_acmes_retries() {
    // At 35% a POST meets three refusals in a row about once in 23: instant-acme gives up
    // and the adapter must report a retryable `badNonce`, which the core retries.
    let options = WireOptions {
        bad_nonce_percent: 35,
        kill: WireKill::None,
        ..WireOptions::default()
    };
    let report = wire::run(5, options.clone());
    eprint!("{report}");
    assert!(report.violations.is_empty(), "{report}");
    assert!(
        report.issued.values().all(|&n| n == options.certs),
        "{report}"
    );
    assert!(report.orders <= options.certs as u64, "{report}");
    assert!(report.bad_nonces_injected > 100, "{report}");
}

#[test]
fn the_runner_replaces_the_seeds_kill_with_the_one_asked_for() {
    // Seed 4 kills at a count of issued certificates on its own.
    let output = common::sim(&["--seed", "4", "--wire", "--wire-kill", "after-finalize"]);
    assert!(output.contains("wire seed 4 ok "), "{output}");
    assert!(
        output.contains("kill: plan=after-finalize ")
            && output.contains(" window=after-finalize ")
            && output.contains(" resumed=true"),
        "{output}"
    );
}
