//! Properties of `apply`, snapshots and the planner over random command sequences.
//!
//! Commands are generated as abstract choices and made concrete against the current state, so
//! most are plausible (right cycle, right term, the next step) and sequences reach every step,
//! while a share are stale, out of order or for unknown certificates.

use certfleet_core::command::{AriWindow, Failure, FailureClass, Op, StepRef};
use certfleet_core::model::{Challenge, ChallengeKind, RenewalReason};
use certfleet_core::name::Identifier;
use certfleet_core::order::OrderStep;
use certfleet_core::snapshot::{SnapshotReader, SnapshotWriter};
use certfleet_core::testing::{Harness, ISSUER, account, sealed, spec};
use certfleet_core::time::{DAY_MS, HOUR_MS};
use certfleet_core::{
    CertId, Command, Cycle, Intent, IssuerId, Policy, Response, State, Term, UnixMillis, apply,
    plan,
};
use proptest::prelude::*;
use proptest::strategy::ValueTree;

/// Cases per property: the default, or `PROPTEST_CASES` for a soak.
fn cases(default: u32) -> u32 {
    #[allow(clippy::disallowed_methods, reason = "a soak sets PROPTEST_CASES")]
    let from_env = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok());
    from_env.unwrap_or(default)
}

const T0: UnixMillis = UnixMillis(1_700_000_000_000);
const NAMES: [&str; 4] = [
    "a.example.com",
    "b.example.com",
    "c.example.org",
    "d.example.org",
];

#[derive(Clone, Debug)]
struct Choice {
    kind: u8,
    cert: u8,
    plausible: bool,
    pick: u8,
    dt_ms: u32,
    seed: u64,
}

fn choice() -> impl Strategy<Value = Choice> {
    (
        0u8..18,
        0u8..4,
        prop::bool::weighted(0.85),
        any::<u8>(),
        0u32..(3 * HOUR_MS as u32),
        any::<u64>(),
    )
        .prop_map(|(kind, cert, plausible, pick, dt_ms, seed)| Choice {
            kind,
            cert,
            plausible,
            pick,
            dt_ms,
            seed,
        })
}

fn genesis() -> State {
    let mut state = State::new();
    let issuer = IssuerId::parse(ISSUER).unwrap();
    assert!(
        apply(
            &mut state,
            &Command {
                at: T0,
                op: Op::SetAccount {
                    issuer,
                    account: account()
                }
            }
        )
        .0
        .is_accepted()
    );
    state
}

/// Makes a choice concrete against `state`.
fn materialize(state: &State, c: &Choice) -> Op {
    let name = NAMES[c.cert as usize];
    let cert = CertId::parse(name).unwrap();
    let record = state.cert(&cert);
    let open = record.and_then(|r| r.open.as_ref());
    let (cycle, term) = match (open, c.plausible) {
        (Some(open), true) => (open.cycle, open.term),
        _ => (Cycle(u64::from(c.pick % 3)), Term(u64::from(c.pick % 4))),
    };
    let step = StepRef {
        cert: cert.clone(),
        cycle,
        term,
    };
    // A plausible order step is the open cycle's next one, so deep sequences are common.
    let kind = match (open, c.plausible, c.kind) {
        (Some(open), true, 5..=9) => match open.step {
            OrderStep::Begun => 5,
            OrderStep::OrderCreated { .. } => 6,
            OrderStep::ChallengesPublished { .. } => 7,
            OrderStep::KeyPrepared { .. } => 8,
            OrderStep::Finalized { .. } => 9,
        },
        _ => c.kind,
    };
    let identifier = Identifier::parse(name).unwrap();
    let token = format!("t{}", c.seed % 1000);
    let challenge = Challenge {
        identifier: identifier.clone(),
        kind: ChallengeKind::Http01,
        token: token.clone(),
        key_authorization: format!("{token}.thumb"),
        url: format!("https://ca.test/c/{token}"),
    };
    match kind {
        0 | 1 => Op::PutCert {
            spec: spec(&[name]),
            seed: c.seed,
        },
        2 => Op::RemoveCert { cert },
        3 => {
            let next = record.map_or(Cycle(1), |r| r.cycle.next());
            let cycle = if c.plausible { next } else { cycle };
            Op::BeginOrder {
                cert,
                cycle,
                term: Term(1 + u64::from(c.pick % 3)),
                reason: RenewalReason::Scheduled,
            }
        }
        4 => Op::ResumeOrder {
            cert,
            cycle,
            term: Term(term.0 + u64::from(c.pick % 2)),
        },
        5 => Op::OrderCreated {
            step,
            order_url: format!("https://ca.test/o/{}", c.seed % 97),
            authorizations: vec![format!("https://ca.test/a/{}", c.seed % 89)],
        },
        6 => Op::ChallengesPublished {
            step,
            challenges: if c.pick.is_multiple_of(4) {
                vec![]
            } else {
                vec![challenge]
            },
        },
        7 => Op::KeyPrepared {
            step,
            key: sealed(c.pick),
        },
        8 => Op::Finalized { step },
        9 => {
            let not_before = state.clock();
            let lifetime_ms = [6, 45, 90][c.pick as usize % 3] * DAY_MS;
            let ari_id = (c.pick.is_multiple_of(2)).then(|| format!("ari.{}", c.seed % 1000));
            let chain = vec![vec![0x30, c.pick % 3]];
            Op::CertIssued {
                step,
                leaf_der: c.seed.to_le_bytes().to_vec(),
                chain_der: chain,
                not_before,
                not_after: not_before.plus_ms(lifetime_ms),
                ari_id,
            }
        }
        10 => {
            let class = [
                FailureClass::Permanent,
                FailureClass::RateLimited,
                FailureClass::Retryable,
            ][c.pick as usize % 3];
            let failed = if c.pick.is_multiple_of(2) {
                vec![identifier]
            } else {
                vec![]
            };
            let retry_at = (c.pick.is_multiple_of(5)).then(|| state.clock().plus_ms(HOUR_MS));
            let failure = Failure {
                class,
                problem: None,
                detail: "x".into(),
                retry_at,
                failed_identifiers: failed,
                account_wide: c.pick.is_multiple_of(7),
            };
            Op::OrderFailed {
                step,
                failure,
                seed: c.seed,
            }
        }
        11 => {
            let current = record
                .and_then(|r| r.current.as_ref())
                .map_or(Cycle(0), |cur| cur.cycle);
            let start = state.clock().plus_ms(c.seed % (60 * DAY_MS));
            let window = (!c.pick.is_multiple_of(3)).then_some(AriWindow {
                start,
                end: start.plus_ms(DAY_MS),
            });
            Op::RenewalInfoPolled {
                cert,
                cycle: current,
                window,
                retry_at: None,
                seed: c.seed,
            }
        }
        12 => Op::CertsDeferred {
            items: vec![(cert, state.clock().plus_ms(c.seed % DAY_MS))],
        },
        13 => Op::OrderDeferred {
            step,
            until: state.clock().plus_ms(c.seed % HOUR_MS),
        },
        15..=17 => {
            let issuer = IssuerId::parse(ISSUER).unwrap();
            let pending = state
                .account(&issuer)
                .and_then(|a| a.rollover.as_ref())
                .map(|r| r.credentials.clone());
            let credentials = match pending {
                Some(pending) if c.plausible && kind != 15 => pending,
                _ => sealed(c.pick),
            };
            match kind {
                15 => Op::RollAccountKey {
                    issuer,
                    credentials,
                },
                16 => Op::AccountKeyRolled {
                    issuer,
                    credentials,
                },
                _ => Op::AccountKeyRolloverRefused {
                    issuer,
                    credentials,
                    detail: "refused".into(),
                },
            }
        }
        _ => {
            let count = 1 + u32::from(c.pick % 4);
            let rate = certfleet_core::budget::Rate {
                count,
                period_ms: HOUR_MS,
            };
            Op::SetPolicy {
                policy: Policy {
                    orders_in_flight_max: 2 + u32::from(c.pick % 3),
                    new_orders: rate,
                    ..Policy::default()
                },
            }
        }
    }
}

/// Applies choices to `state`, returning the concrete log.
fn run(state: &mut State, choices: &[Choice]) -> Vec<Command> {
    let mut log = Vec::with_capacity(choices.len());
    let mut at = T0;
    for c in choices {
        // One command in eight comes from a leader whose clock is behind.
        at = if c.pick.is_multiple_of(8) {
            at.minus_ms(u64::from(c.dt_ms))
        } else {
            at.plus_ms(u64::from(c.dt_ms))
        };
        let command = Command {
            at,
            op: materialize(state, c),
        };
        apply(state, &command);
        log.push(command);
    }
    log
}

fn check_structure(state: &State) {
    let open: Vec<&CertId> = state
        .certs()
        .filter(|(_, r)| r.open.is_some())
        .map(|(id, _)| id)
        .collect();
    let indexed: Vec<&CertId> = state.open_cycles().map(|(id, _)| id).collect();
    assert_eq!(open, indexed, "the open-cycle index matches the records");
    for (id, record) in state.certs() {
        if let Some(cycle) = &record.open {
            assert_eq!(
                cycle.cycle, record.cycle,
                "{id}: the open cycle is the last begun"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(256)))]

    /// SIMULATION I4: same log, same state.
    #[test]
    fn replicas_fed_the_same_commands_have_equal_digests(choices in prop::collection::vec(choice(), 1..120)) {
        let mut leader = genesis();
        let log = run(&mut leader, &choices);
        let mut follower = genesis();
        for command in &log {
            apply(&mut follower, command);
        }
        prop_assert_eq!(leader.digest(), follower.digest());
        prop_assert_eq!(leader.clock(), follower.clock());
    }

    /// Snapshot install then the rest of the log equals replaying the whole log.
    #[test]
    fn a_snapshot_round_trip_preserves_the_digest(choices in prop::collection::vec(choice(), 1..120), cut in any::<prop::sample::Index>()) {
        let mut replayed = genesis();
        let log = run(&mut replayed, &choices);
        let cut = cut.index(log.len() + 1);
        let mut prefix = genesis();
        for command in &log[..cut] {
            apply(&mut prefix, command);
        }
        let mut installed = SnapshotReader::read_all(&SnapshotWriter::to_vec(&prefix)).unwrap();
        prop_assert_eq!(installed.digest(), prefix.digest());
        for command in &log[cut..] {
            apply(&mut installed, command);
        }
        prop_assert_eq!(installed.digest(), replayed.digest());
    }

    /// Never two open cycles for one certificate; the open index always matches the records.
    #[test]
    fn no_command_sequence_leaves_two_open_cycles_for_one_certificate(choices in prop::collection::vec(choice(), 1..150)) {
        let mut state = genesis();
        let mut at = T0;
        for c in &choices {
            at = at.plus_ms(u64::from(c.dt_ms));
            let op = materialize(&state, c);
            let open_before = op.cert().and_then(|id| state.cert(id)).and_then(|r| r.open.clone());
            let is_begin = matches!(op, Op::BeginOrder { .. });
            let (response, _) = apply(&mut state, &Command { at, op });
            if is_begin && open_before.is_some() {
                prop_assert!(!response.is_accepted(), "BeginOrder accepted while a cycle was open");
            }
            check_structure(&state);
        }
    }

    /// DESIGN §5: a step from a term that does not own the cycle changes nothing.
    #[test]
    fn a_stale_term_step_never_changes_state(choices in prop::collection::vec(choice(), 1..100), step in choice(), skew in 1u64..3) {
        let mut state = genesis();
        run(&mut state, &choices);
        let Some((cert, open)) = state.open_cycles().next().map(|(id, o)| (id.clone(), o.clone())) else { return Ok(()) };
        let mut stale = step.clone();
        stale.kind = 5 + stale.kind % 6; // an order step
        stale.cert = NAMES.iter().position(|n| *n == cert.as_str()).unwrap() as u8;
        stale.plausible = true;
        let mut op = materialize(&state, &stale);
        let wrong_term = if open.term.0 >= skew && stale.pick % 2 == 0 { Term(open.term.0 - skew) } else { Term(open.term.0 + skew) };
        match &mut op {
            Op::OrderCreated { step, .. } | Op::ChallengesPublished { step, .. } | Op::KeyPrepared { step, .. }
            | Op::Finalized { step } | Op::CertIssued { step, .. } | Op::OrderFailed { step, .. } => step.term = wrong_term,
            _ => unreachable!("kinds 5..=10 are order steps"),
        }
        let digest = state.digest();
        let at = state.clock().plus_ms(1);
        let (response, events) = apply(&mut state, &Command { at, op });
        prop_assert!(matches!(response, Response::Rejected(_)));
        prop_assert!(events.is_empty());
        prop_assert_eq!(state.digest(), digest);
    }

    /// The planner never touches a certificate with an open cycle except to drive or resume
    /// it, and every new order it plans fits the budgets: `apply` (which enforces them)
    /// accepts all of them in order.
    #[test]
    fn the_planner_respects_open_cycles_and_budgets(choices in prop::collection::vec(choice(), 1..150), later_ms in 0u64..(10 * DAY_MS), term in 1u64..5) {
        let mut state = genesis();
        run(&mut state, &choices);
        let now = state.clock().plus_ms(later_ms);
        let plan = plan(&state, now, Term(term));
        let in_flight_max = state.policy().orders_in_flight_max as usize;
        let mut opened = 0;
        // One issuer: while its key rolls, the CA may hold either key, so nothing else is planned.
        let rolling = state.accounts().any(|(_, a)| a.rollover.is_some());
        for intent in &plan.intents {
            prop_assert!(
                !rolling || matches!(intent, Intent::RollAccountKey { .. }),
                "{:?} planned during a key rollover", intent
            );
            match intent {
                Intent::RollAccountKey { issuer, old, new } => {
                    let account = state.account(issuer).unwrap();
                    prop_assert_eq!(&account.credentials, old);
                    prop_assert_eq!(account.rollover.as_ref().map(|r| &r.credentials), Some(new));
                }
                Intent::NewOrder { cert, cycle, reason } => {
                    prop_assert!(state.cert(cert).unwrap().open.is_none(), "new order for {} with an open cycle", cert);
                    let op = Op::BeginOrder { cert: cert.clone(), cycle: *cycle, term: Term(term), reason: *reason };
                    let (response, _) = apply(&mut state, &Command { at: now, op });
                    prop_assert_eq!(response, Response::Accepted, "planned order for {} refused", cert);
                    opened += 1;
                }
                Intent::Drive { cert, .. } | Intent::Resume { cert, .. } => {
                    prop_assert!(state.cert(cert).unwrap().open.is_some());
                }
                Intent::Defer { cert, .. } | Intent::PollRenewalInfo { cert, .. } => {
                    prop_assert!(state.cert(cert).unwrap().open.is_none());
                }
            }
        }
        prop_assert!(state.open_count() <= in_flight_max.max(state.open_count() - opened), "in-flight limit exceeded");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(24)))]

    /// With budgets allowing it, every certificate is issued once a burst of CA faults has
    /// passed, and from then on is always served unexpired, across many renewals
    /// (SIMULATION I6). The fault burst (up to 20 refused calls and 2 invalid authorizations)
    /// can fail several cycles in a row, which is what drives the backoff to its cap.
    #[test]
    fn renewal_always_happens_before_expiry_when_budgets_allow(
        seed in any::<u64>(),
        count in 1usize..30,
        lifetime_days in prop::sample::select(vec![6u64, 45, 90]),
        unavailable in 0u32..20,
        invalid in 0u32..3,
    ) {
        let mut h = Harness::new(seed, T0, lifetime_days * DAY_MS);
        h.ca.faults.unavailable = unavailable;
        h.ca.faults.invalid_authz = invalid;
        let names: Vec<String> = (0..count).map(|i| format!("n{i}.d{}.example", i % 7)).collect();
        h.add(&names.iter().map(String::as_str).collect::<Vec<_>>());
        // First issuance: within the backoff schedule (1 min, 10 min, 100 min, then daily).
        let served = |h: &Harness| h.records().all(|(_, r)| r.current.as_ref().is_some_and(|c| c.not_after > h.now));
        let deadline = T0.plus_ms(5 * DAY_MS);
        while !served(&h) {
            prop_assert!(h.now < deadline, "not every certificate was issued within 5 days: {:?}", h.stats);
            let until = h.now.plus_ms(HOUR_MS);
            h.run_until(until);
        }
        let step_ms = lifetime_days * DAY_MS / 10;
        for _ in 0..30 {
            let until = h.now.plus_ms(step_ms);
            h.run_until(until);
            for (id, record) in h.records() {
                let current = record.current.as_ref();
                prop_assert!(current.is_some_and(|c| c.not_after > h.now), "{} expired at {}", id, h.now);
            }
        }
        prop_assert_eq!(h.stats.rejected, 0);
        for (set, orders) in &h.ca.orders_per_set {
            let issued = h.ca.issued_per_set.get(set).copied().unwrap_or(0);
            prop_assert!(*orders <= issued + u64::from(invalid) + u64::from(unavailable), "{}: {} orders for {} certificates", set, orders, issued);
        }
    }

    /// A CA that fails a renewal several times in a row still gets the certificate renewed
    /// before it expires: the backoff is capped by the remaining validity.
    #[test]
    fn a_failing_renewal_is_retried_densely_enough_to_beat_expiry(
        seed in any::<u64>(),
        failed_cycles in 4u32..8,
    ) {
        let mut h = Harness::new(seed, T0, 6 * DAY_MS);
        h.add(&["a.example.com"]);
        h.run_until(T0.plus_ms(HOUR_MS));
        let first = h.records().next().unwrap().1.current.clone().unwrap();
        // Every renewal cycle now fails (4 refused calls fail one cycle), for `failed_cycles`.
        h.ca.faults.unavailable = failed_cycles * (certfleet_core::order::CA_RETRIES_MAX + 1);
        h.run_until(first.not_after.minus_ms(1));
        let record = h.records().next().unwrap().1;
        let current = record.current.as_ref().unwrap();
        prop_assert!(current.cycle > first.cycle, "still on the first certificate, {} failures", record.failures);
        prop_assert!(current.not_after > h.now);
    }
}

#[test]
fn open_cycles_reach_every_step_under_the_generator() {
    // Guards the generator: if it stopped producing deep sequences, the properties above
    // would pass vacuously.
    let mut reached = std::collections::BTreeSet::new();
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    for _ in 0..200 {
        let choices = prop::collection::vec(choice(), 50..150)
            .new_tree(&mut runner)
            .unwrap()
            .current();
        let mut state = genesis();
        let mut at = T0;
        for c in &choices {
            at = at.plus_ms(u64::from(c.dt_ms));
            let op = materialize(&state, c);
            apply(&mut state, &Command { at, op });

            for (_, open) in state.open_cycles() {
                reached.insert(match open.step {
                    OrderStep::Begun => 0,
                    OrderStep::OrderCreated { .. } => 1,
                    OrderStep::ChallengesPublished { .. } => 2,
                    OrderStep::KeyPrepared { .. } => 3,
                    OrderStep::Finalized { .. } => 4,
                });
            }
            if state.certs().any(|(_, r)| r.current.is_some()) {
                reached.insert(5);
            }
        }
    }
    assert_eq!(reached.len(), 6, "steps reached: {reached:?}");
}
