//! `apply` scenarios: given this state and command, exactly this response, change and events.
//! Every rejection path has a test, and every rejection is checked to leave the digest alone.

use super::*;
use crate::command::{AriWindow, Failure, FailureClass, Op, StepRef};
use crate::model::{ChallengeKind, Profile};
use crate::order::StepName;
use crate::testing::{ISSUER, account, sealed, spec, spec_with};
use crate::time::{DAY_MS, HOUR_MS, MINUTE_MS};

const T0: UnixMillis = UnixMillis(1_700_000_000_000);

/// The open cycle of the fixtures' certificate.
fn open_cycle(state: &State) -> OpenCycle {
    state
        .cert(&id("www.example.com"))
        .and_then(|record| record.open.as_deref().cloned())
        .expect("a cycle is open")
}

fn issuer() -> IssuerId {
    IssuerId::parse(ISSUER).unwrap()
}

fn id(name: &str) -> CertId {
    CertId::parse(name).unwrap()
}

fn run(state: &mut State, at: UnixMillis, op: Op) -> (Response, Vec<Event>) {
    apply(state, &Command { at, op })
}

fn ok(state: &mut State, at: UnixMillis, op: Op) -> Vec<Event> {
    let (response, events) = run(state, at, op.clone());
    assert_eq!(response, Response::Accepted, "{op:?}");
    events
}

/// Applies `op` expecting a rejection; checks the state is byte-for-byte unchanged.
fn rejected(state: &mut State, at: UnixMillis, op: Op) -> Rejection {
    let digest = state.digest();
    let clock = state.clock();
    let due = state.due.clone();
    let (response, events) = run(state, at, op);
    assert!(events.is_empty());
    assert_eq!(
        state.digest(),
        digest,
        "a rejected command changed the state"
    );
    assert_eq!(state.clock(), clock, "a rejected command moved the clock");
    assert_eq!(state.due, due, "a rejected command changed the due index");
    match response {
        Response::Rejected(rejection) => rejection,
        Response::Accepted => panic!("expected a rejection"),
    }
}

fn step(cert: &str, cycle: u64, term: u64) -> StepRef {
    StepRef {
        cert: id(cert),
        cycle: Cycle(cycle),
        term: Term(term),
    }
}

fn challenge(name: &str, token: &str) -> Challenge {
    Challenge {
        identifier: crate::name::Identifier::parse(name).unwrap(),
        kind: ChallengeKind::Http01,
        token: token.into(),
        key_authorization: format!("{token}.thumb_print-1"),
        url: format!("https://acme.test/chall/{token}"),
    }
}

/// A state with an account and the certificate `www.example.com`.
fn with_cert() -> State {
    let mut state = State::new();
    ok(
        &mut state,
        T0,
        Op::SetAccount {
            issuer: issuer(),
            account: account(),
        },
    );
    ok(
        &mut state,
        T0,
        Op::PutCert {
            spec: spec(&["www.example.com"]),
            seed: 9,
        },
    );
    state
}

/// `with_cert`, with cycle 1 opened by term 1 and moved to `until`.
fn at_step(until: StepName) -> State {
    let mut state = with_cert();
    let cert = "www.example.com";
    ok(
        &mut state,
        T0,
        Op::BeginOrder {
            cert: id(cert),
            cycle: Cycle(1),
            term: Term(1),
            reason: RenewalReason::Initial,
        },
    );
    let ops = [
        (
            StepName::OrderCreated,
            Op::OrderCreated {
                step: step(cert, 1, 1),
                order_url: "https://acme.test/order/1".into(),
                authorizations: vec!["https://acme.test/authz/1".into()],
            },
        ),
        (
            StepName::ChallengesPublished,
            Op::ChallengesPublished {
                step: step(cert, 1, 1),
                challenges: vec![challenge(cert, "tok1")],
            },
        ),
        (
            StepName::KeyPrepared,
            Op::KeyPrepared {
                step: step(cert, 1, 1),
                key: sealed(5),
            },
        ),
        (
            StepName::Finalized,
            Op::Finalized {
                step: step(cert, 1, 1),
            },
        ),
    ];
    for (name, op) in ops {
        if until == StepName::Begun {
            break;
        }
        ok(&mut state, T0, op);
        if name == until {
            break;
        }
    }
    state
}

/// Runs a whole cycle `n` of `cert` for term 1 at T0, issuing a certificate of `lifetime_ms`.
fn full_cycle(state: &mut State, cert: &str, n: u64, lifetime_ms: u64) {
    let s = step(cert, n, 1);
    let reason = RenewalReason::Scheduled;
    ok(
        state,
        T0,
        Op::BeginOrder {
            cert: id(cert),
            cycle: Cycle(n),
            term: Term(1),
            reason,
        },
    );
    let order_url = format!("https://ca.test/o/{cert}/{n}");
    let authorizations = vec![format!("https://ca.test/a/{cert}/{n}")];
    ok(
        state,
        T0,
        Op::OrderCreated {
            step: s.clone(),
            order_url,
            authorizations,
        },
    );
    ok(
        state,
        T0,
        Op::ChallengesPublished {
            step: s.clone(),
            challenges: vec![],
        },
    );
    ok(
        state,
        T0,
        Op::KeyPrepared {
            step: s.clone(),
            key: sealed(1),
        },
    );
    ok(state, T0, Op::Finalized { step: s });
    ok(state, T0, issued(cert, n, 1, T0, lifetime_ms));
}

fn issued(cert: &str, cycle: u64, term: u64, not_before: UnixMillis, lifetime_ms: u64) -> Op {
    Op::CertIssued {
        step: step(cert, cycle, term),
        leaf_der: vec![0x30, 1, 2, 3],
        chain_der: vec![vec![0x30, 9, 9]],
        not_before,
        not_after: not_before.plus_ms(lifetime_ms),
        ari_id: Some("aaa.bbb".into()),
    }
}

fn failure(class: FailureClass) -> Failure {
    Failure {
        class,
        problem: None,
        detail: "boom".into(),
        retry_at: None,
        failed_identifiers: vec![],
        account_wide: false,
    }
}

/// `www.example.com` gets another key type at `at`: a spec change, which closes its open cycle.
fn change_spec(state: &mut State, at: UnixMillis) {
    let mut changed = spec(&["www.example.com"]);
    changed.key_type = crate::model::KeyType::EcdsaP384;
    ok(
        state,
        at,
        Op::PutCert {
            spec: changed,
            seed: 1,
        },
    );
}

/// Cycle 1 of `www.example.com` fails at `at` with the CA's Retry-After `until` (accepted even
/// after a spec change closed the cycle).
fn fail_late(state: &mut State, at: UnixMillis, until: UnixMillis) {
    let mut late = failure(FailureClass::Retryable);
    late.retry_at = Some(until);
    ok(
        state,
        at,
        Op::OrderFailed {
            step: step("www.example.com", 1, 1),
            failure: late,
            seed: 3,
        },
    );
}

// ---- The happy path ----

#[test]
fn a_full_cycle_publishes_then_withdraws_challenges_and_activates_the_certificate() {
    let mut state = with_cert();
    let cert = "www.example.com";
    assert_eq!(state.open_count(), 0);
    ok(
        &mut state,
        T0,
        Op::BeginOrder {
            cert: id(cert),
            cycle: Cycle(1),
            term: Term(1),
            reason: RenewalReason::Initial,
        },
    );
    assert_eq!(state.open_count(), 1);
    assert!(
        state.due.is_empty(),
        "an open cycle is not in the due index"
    );
    ok(
        &mut state,
        T0,
        Op::OrderCreated {
            step: step(cert, 1, 1),
            order_url: "https://acme.test/order/1".into(),
            authorizations: vec!["https://acme.test/authz/1".into()],
        },
    );
    let events = ok(
        &mut state,
        T0,
        Op::ChallengesPublished {
            step: step(cert, 1, 1),
            challenges: vec![challenge(cert, "tok1")],
        },
    );
    assert_eq!(
        events,
        vec![Event::ChallengePublished {
            cert: id(cert),
            challenge: challenge(cert, "tok1")
        }]
    );
    assert_eq!(state.challenges().count(), 1);
    ok(
        &mut state,
        T0,
        Op::KeyPrepared {
            step: step(cert, 1, 1),
            key: sealed(5),
        },
    );
    ok(
        &mut state,
        T0,
        Op::Finalized {
            step: step(cert, 1, 1),
        },
    );
    let events = ok(
        &mut state,
        T0.plus_ms(5),
        issued(cert, 1, 1, T0, 90 * DAY_MS),
    );
    assert_eq!(
        events,
        vec![
            Event::ChallengeWithdrawn {
                cert: id(cert),
                challenge: challenge(cert, "tok1")
            },
            Event::CertActivated {
                cert: id(cert),
                not_after: T0.plus_ms(90 * DAY_MS)
            },
        ]
    );
    let record = state.cert(&id(cert)).unwrap();
    assert!(record.open.is_none());
    let current = record.current.as_ref().unwrap();
    assert_eq!(
        current.key,
        sealed(5),
        "the committed key is the served key"
    );
    assert_eq!(state.chain(&current.chain), Some(&[vec![0x30, 9, 9]][..]));
    assert_eq!(state.open_count(), 0);
    assert_eq!(state.due.len(), 1, "back in the due index for renewal");
    assert_eq!(state.challenges().count(), 0);
}

#[test]
fn committed_time_never_goes_backwards() {
    let mut state = with_cert();
    ok(
        &mut state,
        T0.plus_ms(1000),
        Op::SetPolicy {
            policy: Policy::default(),
        },
    );
    assert_eq!(state.clock(), T0.plus_ms(1000));
    // A new leader with a clock behind commits: the state clock stays (SIMULATION I12).
    ok(
        &mut state,
        T0,
        Op::BeginOrder {
            cert: id("www.example.com"),
            cycle: Cycle(1),
            term: Term(2),
            reason: RenewalReason::Initial,
        },
    );
    assert_eq!(state.clock(), T0.plus_ms(1000));
    let begun_at = state
        .cert(&id("www.example.com"))
        .unwrap()
        .open
        .as_ref()
        .unwrap()
        .begun_at;
    assert_eq!(
        begun_at,
        T0.plus_ms(1000),
        "the clamped time is the one recorded"
    );
}

#[test]
fn putting_the_same_spec_again_changes_nothing() {
    let mut state = with_cert();
    let digest = state.digest();
    ok(
        &mut state,
        T0.plus_ms(10),
        Op::PutCert {
            spec: spec(&["www.example.com"]),
            seed: 77,
        },
    );
    let record = state.cert(&id("www.example.com")).unwrap();
    assert_eq!(record.seed, 9, "the original seed is kept");
    assert_eq!(record.added_at, T0);
    assert_ne!(state.digest(), digest, "only the committed clock moved");
}

#[test]
fn changing_a_spec_abandons_the_open_cycle_and_renews_at_once() {
    let mut state = at_step(StepName::Finalized);
    ok(
        &mut state,
        T0,
        issued("www.example.com", 1, 1, T0, 90 * DAY_MS),
    );
    ok(
        &mut state,
        T0,
        Op::BeginOrder {
            cert: id("www.example.com"),
            cycle: Cycle(2),
            term: Term(1),
            reason: RenewalReason::Scheduled,
        },
    );
    let mut changed = spec(&["www.example.com"]);
    changed.key_type = crate::model::KeyType::EcdsaP384;
    ok(
        &mut state,
        T0.plus_ms(1),
        Op::PutCert {
            spec: changed.clone(),
            seed: 1,
        },
    );
    let record = state.cert(&id("www.example.com")).unwrap();
    assert!(record.open.is_none(), "the old cycle is closed");
    assert_eq!(record.spec, changed);
    assert!(record.spec_changed);
    let sched = schedule(&id("www.example.com"), record, state.policy()).unwrap();
    assert_eq!(sched.reason, RenewalReason::SpecChanged);
    assert!(sched.renew_at <= T0, "due at once");
}

#[test]
fn removing_a_certificate_with_an_open_cycle_closes_it_cleanly() {
    let mut state = at_step(StepName::ChallengesPublished);
    let before = state.budgets().len();
    assert!(before > 0, "the order reserved budgets");
    let events = ok(
        &mut state,
        T0.plus_ms(1),
        Op::RemoveCert {
            cert: id("www.example.com"),
        },
    );
    assert_eq!(
        events,
        vec![
            Event::ChallengeWithdrawn {
                cert: id("www.example.com"),
                challenge: challenge("www.example.com", "tok1")
            },
            Event::CertRemoved {
                cert: id("www.example.com")
            },
        ]
    );
    assert_eq!(state.cert_count(), 0);
    assert_eq!(state.open_count(), 0);
    assert!(state.due.is_empty());
    assert_eq!(state.challenges().count(), 0);
    // Only the new-order unit stays spent: the CA counted the order, not a certificate.
    assert_eq!(state.budgets().len(), 1);
}

#[test]
fn a_cycle_resumed_before_its_order_was_committed_spends_and_waits_for_another_new_order() {
    let key = BudgetKey::NewOrders {
        issuer: IssuerId::parse(ISSUER).unwrap(),
    };
    let mut state = at_step(StepName::Begun);
    // One new order a minute: the cycle's own spent the minute.
    let mut policy = state.policy().clone();
    policy.new_orders = crate::budget::Rate {
        count: 1,
        period_ms: MINUTE_MS,
    };
    ok(&mut state, T0, Op::SetPolicy { policy });
    let before = state.budgets().arrival(&key);
    let available = state
        .budgets()
        .available_at(&key, state.policy().new_orders);
    assert!(available > T0.plus_ms(1), "the bucket is spent for a while");
    let resume = |term| Op::ResumeOrder {
        cert: id("www.example.com"),
        cycle: Cycle(1),
        term: Term(term),
    };
    ok(&mut state, T0.plus_ms(1), resume(2));
    let open = open_cycle(&state);
    assert!(
        state.budgets().arrival(&key) > before,
        "another order spent"
    );
    assert_eq!(
        open.not_before, available,
        "the second newOrder waits for its token"
    );
    // Once the order URL is committed, a takeover resumes that order: nothing to spend.
    let mut state = at_step(StepName::OrderCreated);
    let spent = state.budgets().arrival(&key);
    ok(&mut state, T0.plus_ms(1), resume(2));
    assert_eq!(state.budgets().arrival(&key), spent);
}

#[test]
fn chains_are_interned_and_released_with_their_last_leaf() {
    let mut state = at_step(StepName::Finalized);
    ok(
        &mut state,
        T0,
        issued("www.example.com", 1, 1, T0, 90 * DAY_MS),
    );
    ok(
        &mut state,
        T0,
        Op::PutCert {
            spec: spec(&["api.example.com"]),
            seed: 1,
        },
    );
    full_cycle(&mut state, "api.example.com", 1, 90 * DAY_MS);
    assert_eq!(state.chains.len(), 1, "two leaves, one interned chain");
    assert_eq!(state.chains.values().next().unwrap().refs, 2);
    ok(
        &mut state,
        T0,
        Op::RemoveCert {
            cert: id("www.example.com"),
        },
    );
    assert_eq!(state.chains.values().next().unwrap().refs, 1);
    ok(
        &mut state,
        T0,
        Op::RemoveCert {
            cert: id("api.example.com"),
        },
    );
    assert!(state.chains.is_empty());
}

#[test]
fn a_failed_cycle_backs_off_and_honours_the_cas_retry_after() {
    let mut state = at_step(StepName::OrderCreated);
    ok(
        &mut state,
        T0,
        Op::OrderFailed {
            step: step("www.example.com", 1, 1),
            failure: failure(FailureClass::Retryable),
            seed: 3,
        },
    );
    let record = state.cert(&id("www.example.com")).unwrap();
    assert_eq!(record.failures, 1);
    let retry = record.retry_at.unwrap();
    assert!(
        retry >= T0.plus_ms(MINUTE_MS) && retry <= T0.plus_ms(MINUTE_MS + MINUTE_MS / 10),
        "1 min + ≤10% jitter: {retry}"
    );
    // Second failure: the CA's Retry-After (2 h) beats the 10 min step.
    ok(
        &mut state,
        retry,
        Op::BeginOrder {
            cert: id("www.example.com"),
            cycle: Cycle(2),
            term: Term(1),
            reason: RenewalReason::Retry,
        },
    );
    let mut f = failure(FailureClass::RateLimited);
    f.retry_at = Some(retry.plus_ms(2 * HOUR_MS));
    ok(
        &mut state,
        retry,
        Op::OrderFailed {
            step: step("www.example.com", 2, 1),
            failure: f,
            seed: 3,
        },
    );
    let record = state.cert(&id("www.example.com")).unwrap();
    assert_eq!(record.failures, 2);
    assert_eq!(record.retry_at, Some(retry.plus_ms(2 * HOUR_MS)));
    assert!(record.last_failure.is_some());
}

#[test]
fn changing_a_spec_restarts_the_backoff_but_keeps_the_cas_retry_after() {
    let mut state = at_step(StepName::OrderCreated);
    let mut f = failure(FailureClass::Retryable);
    f.retry_at = Some(T0.plus_ms(2 * HOUR_MS));
    ok(
        &mut state,
        T0,
        Op::OrderFailed {
            step: step("www.example.com", 1, 1),
            failure: f,
            seed: 3,
        },
    );
    change_spec(&mut state, T0.plus_ms(1));
    let record = state.cert(&id("www.example.com")).unwrap();
    assert_eq!(record.failures, 0, "our own backoff starts over");
    assert_eq!(record.retry_at, Some(T0.plus_ms(2 * HOUR_MS)));
    let sched = schedule(&id("www.example.com"), record, state.policy()).unwrap();
    assert!(
        sched.renew_at >= T0.plus_ms(2 * HOUR_MS),
        "not before the CA's Retry-After: {sched:?}"
    );

    // A Retry-After already past is dropped with the rest of the backoff.
    let mut changed_again = spec(&["www.example.com"]);
    changed_again.key_type = crate::model::KeyType::EcdsaP256;
    ok(
        &mut state,
        T0.plus_ms(3 * HOUR_MS),
        Op::PutCert {
            spec: changed_again,
            seed: 1,
        },
    );
    assert_eq!(state.cert(&id("www.example.com")).unwrap().retry_at, None);
}

#[test]
fn changing_a_spec_keeps_a_retry_after_the_open_cycle_was_waiting_out() {
    // Seed 223993684: `newOrder` got a 503 with a 60 s Retry-After, committed on the open
    // cycle; the certificate was modified, which closes the cycle, and the next cycle called
    // `newOrder` 58 s early.
    let mut state = at_step(StepName::Begun);
    let until = T0.plus_ms(60_000);
    ok(
        &mut state,
        T0,
        Op::OrderDeferred {
            step: step("www.example.com", 1, 1),
            until,
        },
    );
    change_spec(&mut state, T0.plus_ms(2_000));
    let record = state.cert(&id("www.example.com")).unwrap();
    assert!(record.open.is_none(), "the spec change closed the cycle");
    assert_eq!(record.retry_at, Some(until));
    let sched = schedule(&id("www.example.com"), record, state.policy()).unwrap();
    assert!(
        sched.renew_at >= until,
        "not before the CA's Retry-After: {sched:?}"
    );
}

#[test]
fn a_failure_arriving_after_a_spec_change_closed_its_cycle_still_holds_its_retry_after() {
    // Seed 223993684: the spec change landed between `newOrder`'s 503 and the commit of the
    // failure carrying its 60 s Retry-After.
    let mut state = at_step(StepName::Begun);
    change_spec(&mut state, T0.plus_ms(1_000));
    // Without a Retry-After there is nothing to keep: refused as before.
    let refused = rejected(
        &mut state,
        T0.plus_ms(1_500),
        Op::OrderFailed {
            step: step("www.example.com", 1, 1),
            failure: failure(FailureClass::Retryable),
            seed: 3,
        },
    );
    assert!(
        matches!(refused, Rejection::NoOpenCycle { .. }),
        "{refused:?}"
    );
    let until = T0.plus_ms(60_000);
    fail_late(&mut state, T0.plus_ms(2_000), until);
    let record = state.cert(&id("www.example.com")).unwrap();
    assert!(record.open.is_none());
    assert_eq!(record.retry_at, Some(until));
    let sched = schedule(&id("www.example.com"), record, state.policy()).unwrap();
    assert!(
        sched.renew_at >= until,
        "the new spec waits for the CA: {sched:?}"
    );
}

#[test]
fn a_cycle_begun_under_a_retry_after_waits_it_out() {
    // CI seed 119046499: the next cycle was planned from the state right after a spec change,
    // the late failure with its 60 s Retry-After committed before the plan's `BeginOrder`,
    // and the new cycle called `newOrder` 170 ms after the CA's 503.
    let mut state = at_step(StepName::Begun);
    change_spec(&mut state, T0.plus_ms(1_000));
    let until = T0.plus_ms(60_000);
    fail_late(&mut state, T0.plus_ms(2_000), until);
    ok(
        &mut state,
        T0.plus_ms(2_050),
        Op::BeginOrder {
            cert: id("www.example.com"),
            cycle: Cycle(2),
            term: Term(1),
            reason: RenewalReason::Initial,
        },
    );
    let open = open_cycle(&state);
    assert_eq!(open.not_before, until, "the new cycle starts by waiting");
    let driver = crate::order::OrderDriver::new(id("www.example.com"), &open, 0, 9);
    let mut driver = driver;
    assert_eq!(
        driver.poll_action(&state, T0.plus_ms(2_100)),
        crate::order::Action::Sleep { until },
        "no newOrder before the CA's Retry-After"
    );
}

#[test]
fn failed_authorizations_count_against_the_identifier_budget() {
    let mut state = at_step(StepName::ChallengesPublished);
    let mut f = failure(FailureClass::Permanent);
    f.failed_identifiers = vec![crate::name::Identifier::parse("www.example.com").unwrap()];
    ok(
        &mut state,
        T0,
        Op::OrderFailed {
            step: step("www.example.com", 1, 1),
            failure: f,
            seed: 1,
        },
    );
    let key = BudgetKey::FailedAuthz {
        issuer: issuer(),
        identifier: "www.example.com".into(),
    };
    assert!(state.budgets().arrival(&key).is_some());
}

#[test]
fn renewal_info_picks_a_point_once_per_window() {
    let mut state = at_step(StepName::Finalized);
    ok(
        &mut state,
        T0,
        issued("www.example.com", 1, 1, T0, 90 * DAY_MS),
    );
    let window = AriWindow {
        start: T0.plus_ms(60 * DAY_MS),
        end: T0.plus_ms(62 * DAY_MS),
    };
    let poll = |seed| Op::RenewalInfoPolled {
        cert: id("www.example.com"),
        cycle: Cycle(1),
        window: Some(window),
        retry_at: None,
        seed,
    };
    ok(&mut state, T0.plus_ms(DAY_MS), poll(1));
    let ari = state
        .cert(&id("www.example.com"))
        .unwrap()
        .ari
        .clone()
        .unwrap();
    let chosen = ari.chosen_at.unwrap();
    assert!(chosen >= window.start && chosen < window.end);
    assert_eq!(
        ari.next_poll_at,
        T0.plus_ms(DAY_MS + 12 * HOUR_MS),
        "at most twice a day"
    );
    // The same window with another seed keeps the committed point.
    ok(&mut state, T0.plus_ms(2 * DAY_MS), poll(2));
    assert_eq!(
        state
            .cert(&id("www.example.com"))
            .unwrap()
            .ari
            .as_ref()
            .unwrap()
            .chosen_at,
        Some(chosen)
    );
    // A moved window ("renew now") picks again, inside the new window.
    let now_window = AriWindow {
        start: T0.plus_ms(2 * DAY_MS),
        end: T0.plus_ms(2 * DAY_MS + HOUR_MS),
    };
    let op = Op::RenewalInfoPolled {
        cert: id("www.example.com"),
        cycle: Cycle(1),
        window: Some(now_window),
        retry_at: None,
        seed: 2,
    };
    ok(&mut state, T0.plus_ms(2 * DAY_MS), op);
    let record = state.cert(&id("www.example.com")).unwrap();
    let chosen = record.ari.as_ref().unwrap().chosen_at.unwrap();
    assert!(chosen >= now_window.start && chosen < now_window.end);
    let sched = schedule(&id("www.example.com"), record, state.policy()).unwrap();
    assert_eq!((sched.renew_at, sched.reason), (chosen, RenewalReason::Ari));
}

#[test]
fn deferrals_skip_unknown_and_busy_certificates() {
    let mut state = at_step(StepName::Begun);
    ok(
        &mut state,
        T0,
        Op::PutCert {
            spec: spec(&["idle.example.com"]),
            seed: 1,
        },
    );
    let items = vec![
        (id("gone.example.com"), T0.plus_ms(DAY_MS)),
        (id("www.example.com"), T0.plus_ms(DAY_MS)),
        (id("idle.example.com"), T0.plus_ms(DAY_MS)),
    ];
    ok(&mut state, T0, Op::CertsDeferred { items });
    assert_eq!(
        state.cert(&id("idle.example.com")).unwrap().deferred_until,
        Some(T0.plus_ms(DAY_MS))
    );
    assert_eq!(
        state.cert(&id("www.example.com")).unwrap().deferred_until,
        None
    );
}

// ---- One test per rejection ----

#[test]
fn unknown_certificates_are_rejected_for_every_certificate_command() {
    let mut state = with_cert();
    let missing = "missing.example.com";
    let ops = [
        Op::RemoveCert { cert: id(missing) },
        Op::BeginOrder {
            cert: id(missing),
            cycle: Cycle(1),
            term: Term(1),
            reason: RenewalReason::Initial,
        },
        Op::ResumeOrder {
            cert: id(missing),
            cycle: Cycle(1),
            term: Term(2),
        },
        Op::Finalized {
            step: step(missing, 1, 1),
        },
        Op::RenewalInfoPolled {
            cert: id(missing),
            cycle: Cycle(1),
            window: None,
            retry_at: None,
            seed: 0,
        },
    ];
    for op in ops {
        assert_eq!(
            rejected(&mut state, T0, op),
            Rejection::UnknownCert { cert: id(missing) }
        );
    }
}

#[test]
fn a_certificate_for_an_issuer_without_account_is_rejected() {
    let mut state = State::new();
    let err = rejected(
        &mut state,
        T0,
        Op::PutCert {
            spec: spec(&["www.example.com"]),
            seed: 1,
        },
    );
    assert_eq!(err, Rejection::UnknownIssuer { issuer: issuer() });
}

#[test]
fn deposed_leader_cannot_commit_order_created() {
    let mut state = at_step(StepName::Begun);
    // Term 2 takes the cycle over; term 1's late step is fenced off (DESIGN §5).
    ok(
        &mut state,
        T0,
        Op::ResumeOrder {
            cert: id("www.example.com"),
            cycle: Cycle(1),
            term: Term(2),
        },
    );
    let op = Op::OrderCreated {
        step: step("www.example.com", 1, 1),
        order_url: "https://acme.test/order/9".into(),
        authorizations: vec!["https://acme.test/authz/9".into()],
    };
    let err = rejected(&mut state, T0, op);
    assert_eq!(
        err,
        Rejection::StaleTerm {
            cert: id("www.example.com"),
            cycle: Cycle(1),
            term: Term(1),
            owner: Term(2)
        }
    );
}

#[test]
fn a_step_from_a_newer_term_that_did_not_resume_is_also_stale() {
    let mut state = at_step(StepName::OrderCreated);
    let op = Op::ChallengesPublished {
        step: step("www.example.com", 1, 3),
        challenges: vec![],
    };
    assert!(matches!(
        rejected(&mut state, T0, op),
        Rejection::StaleTerm { owner: Term(1), .. }
    ));
}

#[test]
fn begin_order_with_a_skipped_cycle_number_is_rejected() {
    let mut state = with_cert();
    let op = Op::BeginOrder {
        cert: id("www.example.com"),
        cycle: Cycle(2),
        term: Term(1),
        reason: RenewalReason::Initial,
    };
    assert_eq!(
        rejected(&mut state, T0, op),
        Rejection::WrongCycle {
            cert: id("www.example.com"),
            expected: Cycle(1),
            got: Cycle(2)
        }
    );
}

#[test]
fn a_step_for_another_cycle_is_rejected() {
    let mut state = at_step(StepName::Begun);
    let op = Op::KeyPrepared {
        step: step("www.example.com", 2, 1),
        key: sealed(1),
    };
    assert!(matches!(
        rejected(&mut state, T0, op),
        Rejection::WrongCycle {
            expected: Cycle(1),
            got: Cycle(2),
            ..
        }
    ));
    let op = Op::ResumeOrder {
        cert: id("www.example.com"),
        cycle: Cycle(7),
        term: Term(9),
    };
    assert!(matches!(
        rejected(&mut state, T0, op),
        Rejection::WrongCycle { .. }
    ));
}

#[test]
fn steps_without_an_open_cycle_are_rejected() {
    let mut state = with_cert();
    let op = Op::Finalized {
        step: step("www.example.com", 1, 1),
    };
    assert_eq!(
        rejected(&mut state, T0, op),
        Rejection::NoOpenCycle {
            cert: id("www.example.com")
        }
    );
    let op = Op::ResumeOrder {
        cert: id("www.example.com"),
        cycle: Cycle(1),
        term: Term(2),
    };
    assert_eq!(
        rejected(&mut state, T0, op),
        Rejection::NoOpenCycle {
            cert: id("www.example.com")
        }
    );
}

#[test]
fn a_second_begin_order_while_a_cycle_is_open_is_rejected() {
    let mut state = at_step(StepName::Begun);
    let op = Op::BeginOrder {
        cert: id("www.example.com"),
        cycle: Cycle(2),
        term: Term(1),
        reason: RenewalReason::Initial,
    };
    assert_eq!(
        rejected(&mut state, T0, op),
        Rejection::CycleOpen {
            cert: id("www.example.com"),
            cycle: Cycle(1)
        }
    );
}

#[test]
fn steps_out_of_order_are_rejected() {
    let mut state = at_step(StepName::Begun);
    let op = Op::KeyPrepared {
        step: step("www.example.com", 1, 1),
        key: sealed(1),
    };
    let err = rejected(&mut state, T0, op);
    assert_eq!(
        err,
        Rejection::OutOfOrder {
            cert: id("www.example.com"),
            at: StepName::Begun,
            got: StepName::KeyPrepared
        }
    );
    let mut state = at_step(StepName::KeyPrepared);
    let err = rejected(&mut state, T0, issued("www.example.com", 1, 1, T0, DAY_MS));
    assert_eq!(
        err,
        Rejection::OutOfOrder {
            cert: id("www.example.com"),
            at: StepName::KeyPrepared,
            got: StepName::CertIssued
        }
    );
    let op = Op::OrderCreated {
        step: step("www.example.com", 1, 1),
        order_url: "https://acme.test/o".into(),
        authorizations: vec!["https://acme.test/a".into()],
    };
    assert!(matches!(
        rejected(&mut state, T0, op),
        Rejection::OutOfOrder {
            got: StepName::OrderCreated,
            ..
        }
    ));
}

#[test]
fn resume_from_a_term_not_newer_is_rejected() {
    let mut state = at_step(StepName::Begun);
    let op = Op::ResumeOrder {
        cert: id("www.example.com"),
        cycle: Cycle(1),
        term: Term(1),
    };
    assert_eq!(
        rejected(&mut state, T0, op),
        Rejection::TermNotNewer {
            cert: id("www.example.com"),
            term: Term(1),
            owner: Term(1)
        }
    );
}

#[test]
fn an_order_beyond_the_budget_is_rejected() {
    let mut state = with_cert();
    let policy = Policy {
        new_orders: crate::budget::Rate {
            count: 1,
            period_ms: HOUR_MS,
        },
        ..Policy::default()
    };
    ok(&mut state, T0, Op::SetPolicy { policy });
    ok(
        &mut state,
        T0,
        Op::PutCert {
            spec: spec(&["other.example.com"]),
            seed: 2,
        },
    );
    ok(
        &mut state,
        T0,
        Op::BeginOrder {
            cert: id("www.example.com"),
            cycle: Cycle(1),
            term: Term(1),
            reason: RenewalReason::Initial,
        },
    );
    let op = Op::BeginOrder {
        cert: id("other.example.com"),
        cycle: Cycle(1),
        term: Term(1),
        reason: RenewalReason::Initial,
    };
    let err = rejected(&mut state, T0.plus_ms(1), op.clone());
    assert_eq!(
        err,
        Rejection::BudgetExhausted {
            key: BudgetKey::NewOrders { issuer: issuer() },
            available_at: T0.plus_ms(HOUR_MS)
        }
    );
    ok(&mut state, T0.plus_ms(HOUR_MS), op);
}

#[test]
fn an_account_wide_rate_limit_throttles_the_issuer() {
    let mut state = at_step(StepName::Begun);
    let mut f = failure(FailureClass::RateLimited);
    f.retry_at = Some(T0.plus_ms(3 * HOUR_MS));
    f.account_wide = true;
    ok(
        &mut state,
        T0,
        Op::OrderFailed {
            step: step("www.example.com", 1, 1),
            failure: f,
            seed: 1,
        },
    );
    ok(
        &mut state,
        T0,
        Op::PutCert {
            spec: spec(&["other.example.com"]),
            seed: 2,
        },
    );
    let op = Op::BeginOrder {
        cert: id("other.example.com"),
        cycle: Cycle(1),
        term: Term(1),
        reason: RenewalReason::Initial,
    };
    let err = rejected(&mut state, T0.plus_ms(HOUR_MS), op);
    assert_eq!(
        err,
        Rejection::IssuerThrottled {
            issuer: issuer(),
            until: T0.plus_ms(3 * HOUR_MS)
        }
    );
}

#[test]
fn renewal_info_for_a_replaced_certificate_is_stale() {
    let mut state = at_step(StepName::Finalized);
    ok(
        &mut state,
        T0,
        issued("www.example.com", 1, 1, T0, 90 * DAY_MS),
    );
    let op = Op::RenewalInfoPolled {
        cert: id("www.example.com"),
        cycle: Cycle(0),
        window: None,
        retry_at: None,
        seed: 0,
    };
    let err = rejected(&mut state, T0, op);
    assert_eq!(
        err,
        Rejection::StaleRenewalInfo {
            cert: id("www.example.com"),
            got: Cycle(0),
            current: Cycle(1)
        }
    );
    let mut fresh = with_cert();
    let op = Op::RenewalInfoPolled {
        cert: id("www.example.com"),
        cycle: Cycle(0),
        window: None,
        retry_at: None,
        seed: 0,
    };
    assert!(
        matches!(
            rejected(&mut fresh, T0, op),
            Rejection::StaleRenewalInfo { .. }
        ),
        "nothing issued yet"
    );
}

fn assert_invalid(state: &mut State, op: Op, needle: &str) {
    match rejected(state, T0, op) {
        Rejection::Invalid { reason } => assert!(
            reason.contains(needle),
            "{reason:?} does not mention {needle:?}"
        ),
        other => panic!("expected Invalid mentioning {needle:?}, got {other:?}"),
    }
}

#[test]
fn invalid_admin_commands_are_rejected_naming_the_value() {
    let mut state = with_cert();
    let mut unsorted = spec(&["a.example.com", "b.example.com"]);
    unsorted.identifiers.reverse();
    assert_invalid(
        &mut state,
        Op::PutCert {
            spec: unsorted,
            seed: 0,
        },
        "not normalized",
    );
    let mut ip = spec_with(&["192.0.2.1"], ChallengeKind::Http01, Profile::ShortLived);
    ip.profile = Profile::Classic;
    assert_invalid(&mut state, Op::PutCert { spec: ip, seed: 0 }, "shortlived");
    let policy = Policy {
        renew_permille: 0,
        ..Policy::default()
    };
    assert_invalid(&mut state, Op::SetPolicy { policy }, "renew_permille");
    let mut plaintext = account();
    plaintext.credentials = serde_plaintext_blob();
    assert_invalid(
        &mut state,
        Op::SetAccount {
            issuer: issuer(),
            account: plaintext,
        },
        "plaintext",
    );
    let mut bad_url = account();
    bad_url.directory_url = "ftp://acme.test/dir".into();
    assert_invalid(
        &mut state,
        Op::SetAccount {
            issuer: issuer(),
            account: bad_url,
        },
        "ftp://acme.test/dir",
    );
    let mut bad_contact = account();
    bad_contact.contact = vec!["tel:+1555".into()];
    assert_invalid(
        &mut state,
        Op::SetAccount {
            issuer: issuer(),
            account: bad_contact,
        },
        "tel:+1555",
    );
    let items = (0..=DEFER_BATCH_MAX)
        .map(|_| (id("www.example.com"), T0))
        .collect();
    assert_invalid(&mut state, Op::CertsDeferred { items }, "batch limit");
}

/// A blob that decodes fine but is not in the sealed envelope: what a plaintext key would be.
fn serde_plaintext_blob() -> SealedBlob {
    let pem =
        b"-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n".to_vec();
    // A newtype over bytes encodes as the bytes: decode the PEM as if it came off the wire.
    let bytes = postcard::to_allocvec(&pem).unwrap();
    postcard::from_bytes(&bytes).unwrap()
}

#[test]
fn invalid_order_steps_are_rejected_naming_the_value() {
    let s = || step("www.example.com", 1, 1);
    let mut state = at_step(StepName::Begun);
    let op = Op::OrderCreated {
        step: s(),
        order_url: "not a url".into(),
        authorizations: vec!["https://acme.test/a".into()],
    };
    assert_invalid(&mut state, op, "not a url");
    let op = Op::OrderCreated {
        step: s(),
        order_url: "https://acme.test/o".into(),
        authorizations: vec![],
    };
    assert_invalid(&mut state, op, "0 authorizations");

    let mut state = at_step(StepName::OrderCreated);
    let op = Op::ChallengesPublished {
        step: s(),
        challenges: vec![challenge("www.example.com", "../../etc/passwd")],
    };
    assert_invalid(&mut state, op, "not base64url");
    let mut wrong_ka = challenge("www.example.com", "tok1");
    wrong_ka.key_authorization = "other.thumb".into();
    assert_invalid(
        &mut state,
        Op::ChallengesPublished {
            step: s(),
            challenges: vec![wrong_ka],
        },
        "token.thumbprint",
    );
    let foreign = challenge("evil.example.net", "tok2");
    assert_invalid(
        &mut state,
        Op::ChallengesPublished {
            step: s(),
            challenges: vec![foreign],
        },
        "evil.example.net",
    );
    let twice = vec![
        challenge("www.example.com", "tok1"),
        challenge("www.example.com", "tok1"),
    ];
    assert_invalid(
        &mut state,
        Op::ChallengesPublished {
            step: s(),
            challenges: twice,
        },
        "challenges for 1 identifiers",
    );

    let mut state = at_step(StepName::ChallengesPublished);
    assert_invalid(
        &mut state,
        Op::KeyPrepared {
            step: s(),
            key: serde_plaintext_blob(),
        },
        "plaintext",
    );

    let mut state = at_step(StepName::Finalized);
    let mut op = issued("www.example.com", 1, 1, T0, DAY_MS);
    if let Op::CertIssued { not_after, .. } = &mut op {
        *not_after = T0;
    }
    assert_invalid(&mut state, op, "expires");
    let mut op = issued("www.example.com", 1, 1, T0, DAY_MS);
    if let Op::CertIssued { leaf_der, .. } = &mut op {
        leaf_der.clear();
    }
    assert_invalid(&mut state, op, "leaf certificate of 0 bytes");
    let mut op = issued("www.example.com", 1, 1, T0, DAY_MS);
    if let Op::CertIssued { chain_der, .. } = &mut op {
        *chain_der = vec![vec![1]; CHAIN_LEN_MAX + 1];
    }
    assert_invalid(&mut state, op, "chain of 9");

    let mut f = failure(FailureClass::Permanent);
    f.failed_identifiers = vec![crate::name::Identifier::parse("evil.example.net").unwrap()];
    assert_invalid(
        &mut state,
        Op::OrderFailed {
            step: s(),
            failure: f,
            seed: 0,
        },
        "evil.example.net",
    );
    let mut f = failure(FailureClass::Permanent);
    f.detail = "x".repeat(Failure::DETAIL_LEN_MAX + 1);
    assert_invalid(
        &mut state,
        Op::OrderFailed {
            step: s(),
            failure: f,
            seed: 0,
        },
        "too long",
    );

    ok(&mut state, T0, issued("www.example.com", 1, 1, T0, DAY_MS));
    let window = AriWindow {
        start: T0.plus_ms(10),
        end: T0,
    };
    let op = Op::RenewalInfoPolled {
        cert: id("www.example.com"),
        cycle: Cycle(1),
        window: Some(window),
        retry_at: None,
        seed: 0,
    };
    assert_invalid(&mut state, op, "ARI window");
}

#[test]
fn renewals_are_exempt_from_the_per_domain_budget_but_not_the_per_set_one() {
    let mut state = with_cert();
    let policy = Policy {
        certs_per_domain: crate::budget::Rate {
            count: 1,
            period_ms: 7 * DAY_MS,
        },
        ..Policy::default()
    };
    ok(&mut state, T0, Op::SetPolicy { policy });
    let cert = "www.example.com";
    let cycle = |state: &mut State, n: u64| full_cycle(state, cert, n, 6 * DAY_MS);
    cycle(&mut state, 1);
    // The domain's one unit is spent, yet the renewal (same identifier set) may start.
    cycle(&mut state, 2);
    // A new name under the same domain is not a renewal: the domain budget applies.
    ok(
        &mut state,
        T0,
        Op::PutCert {
            spec: spec(&["new.example.com"]),
            seed: 3,
        },
    );
    let op = Op::BeginOrder {
        cert: id("new.example.com"),
        cycle: Cycle(1),
        term: Term(1),
        reason: RenewalReason::Initial,
    };
    assert!(matches!(
        rejected(&mut state, T0, op),
        Rejection::BudgetExhausted {
            key: BudgetKey::CertsPerDomain { .. },
            ..
        }
    ));
    // Changing the identifiers of an issued certificate makes its next issuance count again.
    let mut shop = spec(&["shop.example.net"]);
    shop.label = Some("shop".into());
    ok(
        &mut state,
        T0,
        Op::PutCert {
            spec: shop.clone(),
            seed: 4,
        },
    );
    full_cycle(&mut state, "shop", 1, 6 * DAY_MS);
    let mut wider = shop.clone();
    wider
        .identifiers
        .push(crate::name::Identifier::parse("www.shop.example.net").unwrap());
    wider.identifiers.sort();
    ok(
        &mut state,
        T0,
        Op::PutCert {
            spec: wider,
            seed: 5,
        },
    );
    assert!(state.cert(&id("shop")).unwrap().identifiers_changed);
    let op = Op::BeginOrder {
        cert: id("shop"),
        cycle: Cycle(2),
        term: Term(1),
        reason: RenewalReason::SpecChanged,
    };
    let err = rejected(&mut state, T0, op);
    assert!(
        matches!(&err, Rejection::BudgetExhausted { key: BudgetKey::CertsPerDomain { domain, .. }, .. } if domain == "example.net"),
        "{err}"
    );
}

fn roll(credentials: SealedBlob) -> Op {
    Op::RollAccountKey {
        issuer: issuer(),
        credentials,
    }
}

fn rolled(credentials: SealedBlob) -> Op {
    Op::AccountKeyRolled {
        issuer: issuer(),
        credentials,
    }
}

#[test]
fn a_key_rollover_is_committed_then_finished_by_the_same_credentials_only() {
    let mut state = with_cert();
    let new = sealed(7);
    assert!(ok(&mut state, T0, roll(new.clone())).is_empty());
    let rollover = state.account(&issuer()).unwrap().rollover.clone().unwrap();
    assert_eq!(rollover.credentials, new);
    assert_eq!(rollover.requested_at, T0);
    // A client repeating its request after losing the answer: accepted, nothing changes.
    let digest = state.digest();
    ok(&mut state, T0, roll(new.clone()));
    assert_eq!(state.digest(), digest);
    // Another key while one is in progress could strand the key the CA may already hold.
    assert_invalid(&mut state, roll(sealed(8)), "in progress");
    // So could setting the account again.
    assert_invalid(
        &mut state,
        Op::SetAccount {
            issuer: issuer(),
            account: account(),
        },
        "in progress",
    );
    // Only the rollover in progress finishes.
    assert_invalid(&mut state, rolled(sealed(8)), "other credentials");
    ok(&mut state, T0, rolled(new.clone()));
    let finished = state.account(&issuer()).unwrap();
    assert_eq!(finished.credentials, new);
    assert_eq!(finished.rollover, None);
    // A late duplicate of the outcome (a deposed leader's retry) is refused, harmlessly.
    assert_invalid(
        &mut state,
        rolled(new.clone()),
        "no key rollover in progress",
    );
    assert_invalid(&mut state, roll(new), "already uses this key");
}

#[test]
fn a_refused_rollover_keeps_the_key_and_bad_rollovers_are_named() {
    let mut state = with_cert();
    let old = state.account(&issuer()).unwrap().credentials.clone();
    ok(&mut state, T0, roll(sealed(7)));
    let refused = |credentials, detail: &str| Op::AccountKeyRolloverRefused {
        issuer: issuer(),
        credentials,
        detail: detail.into(),
    };
    assert_invalid(
        &mut state,
        refused(sealed(7), &"x".repeat(Failure::DETAIL_LEN_MAX + 1)),
        "detail",
    );
    assert_invalid(&mut state, refused(sealed(8), "no"), "other credentials");
    ok(&mut state, T0, refused(sealed(7), "keyChange not offered"));
    let kept = state.account(&issuer()).unwrap();
    assert_eq!(kept.credentials, old);
    assert_eq!(kept.rollover, None);
    // Nothing to roll to in clear, for an issuer without an account, or before registration.
    assert_invalid(&mut state, roll(serde_plaintext_blob()), "plaintext");
    let other = IssuerId::parse("zerossl").unwrap();
    assert_eq!(
        rejected(
            &mut state,
            T0,
            Op::RollAccountKey {
                issuer: other.clone(),
                credentials: sealed(7)
            }
        ),
        Rejection::UnknownIssuer { issuer: other }
    );
    let mut unregistered = account();
    unregistered.account_url = None;
    ok(
        &mut state,
        T0,
        Op::SetAccount {
            issuer: issuer(),
            account: unregistered.clone(),
        },
    );
    assert_invalid(&mut state, roll(sealed(7)), "not registered");
    // An account cannot arrive with a rollover in it: RollAccountKey is the one way in.
    unregistered.rollover = Some(KeyRollover {
        credentials: sealed(7),
        requested_at: T0,
    });
    assert_invalid(
        &mut state,
        Op::SetAccount {
            issuer: issuer(),
            account: unregistered,
        },
        "without a key rollover",
    );
}

#[test]
fn a_rolled_key_withdraws_published_challenges_to_be_published_again() {
    // Key authorizations name the account key: published ones are stale once the key rolls.
    let mut state = at_step(StepName::ChallengesPublished);
    let published = open_cycle(&state).step.challenges().to_vec();
    assert!(!published.is_empty());
    ok(&mut state, T0, roll(sealed(7)));
    let events = ok(&mut state, T0, rolled(sealed(7)));
    let withdrawn: Vec<Challenge> = events
        .into_iter()
        .map(|event| match event {
            Event::ChallengeWithdrawn { challenge, .. } => challenge,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(withdrawn, published);
    let open = open_cycle(&state);
    assert_eq!(open.step.name(), StepName::OrderCreated);
    assert_eq!(
        open.step.order().map(|o| o.url.as_str()),
        Some("https://acme.test/order/1"),
        "the same order goes on"
    );
    assert_eq!(state.challenges().count(), 0);
    // The cycle publishes again, with the new key's answers, under the same term.
    ok(
        &mut state,
        T0,
        Op::ChallengesPublished {
            step: step("www.example.com", 1, 1),
            challenges: vec![challenge("www.example.com", "tok-new")],
        },
    );
    // A cycle past its challenges (the CA validated them) keeps going untouched.
    let mut state = at_step(StepName::KeyPrepared);
    ok(&mut state, T0, roll(sealed(7)));
    assert!(ok(&mut state, T0, rolled(sealed(7))).is_empty());
    assert_eq!(open_cycle(&state).step.name(), StepName::KeyPrepared);
}
