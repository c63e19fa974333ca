//! Apply throughput: commands per second through [`certfleet_core::apply`] (DESIGN §9).
//!
//! Two figures, both over a state that already holds [`BASE_CERTS`] issued certificates so map
//! lookups have a realistic depth:
//! * `apply/full_cycle`: a new certificate through the whole issuance cycle, seven commands
//!   (`PutCert`, `BeginOrder`, `OrderCreated`, `ChallengesPublished`, `KeyPrepared`,
//!   `Finalized`, `CertIssued`; DESIGN §5), every one accepted. Leaves and the intermediate are
//!   [`DER_LEN`] bytes, so the cost of copying and interning them is included.
//! * `apply/stale_term`: the five order steps from a deposed leader's term, every one rejected
//!   by the fencing check (DESIGN §5) and leaving the state untouched.
//!
//! Commands are built outside the timed region; only `apply` and dropping its answer are timed.
//! Run with `cargo bench -p certfleet-bench --bench apply`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use certfleet_core::command::StepRef;
use certfleet_core::model::{Challenge, ChallengeKind, RenewalReason};
use certfleet_core::time::{DAY_MS, SECOND_MS};
use certfleet_core::{
    Command, Cycle, Op, Rejection, Response, State, Term, UnixMillis, apply, testing,
};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// Issued certificates in the state every command is applied to.
const BASE_CERTS: usize = 10_000;
/// Bytes of each leaf and of the shared intermediate (a typical ECDSA leaf is ~1.2 KB DER).
const DER_LEN: usize = 1200;
/// Commands in one issuance cycle.
const CYCLE_COMMANDS: u64 = 7;
/// Stale steps in one rejection round.
const STALE_COMMANDS: u64 = 5;
/// Virtual time between two commands: 7 x 6 s per cycle stays above the default policy's
/// new-order refill interval (300 per 3 h = one per 36 s), so no budget ever blocks.
const COMMAND_INTERVAL_MS: u64 = 6 * SECOND_MS;
/// The virtual instant the base state was built at.
const START: UnixMillis = UnixMillis(1_700_000_000_000);

/// The seven commands that take new certificate `index` from nothing to issued, starting at
/// `at` and spaced [`COMMAND_INTERVAL_MS`] apart.
fn issuance_cycle(index: usize, at: UnixMillis) -> [Command; 7] {
    // 40 certificates per registered domain, under the default 50-per-domain budget.
    let name = format!("n{index}.e{}.example", index / 40);
    let spec = testing::spec(&[name.as_str()]);
    let cert = spec.cert_id();
    let step = StepRef {
        cert: cert.clone(),
        cycle: Cycle(1),
        term: Term(1),
    };
    let order_url = format!("https://acme.test/order/{index}");
    // RFC 8555 §8.1: the token is base64url and the key authorization is token.thumbprint.
    let token = format!("tok{index}");
    let challenge = Challenge {
        identifier: spec.identifiers[0].clone(),
        kind: ChallengeKind::Http01,
        key_authorization: format!("{token}.Ml8a2Yl1Qp3XoR2vG5uN7xBq0wZkTj4sHdEe6Fc9OaU"),
        token,
        url: format!("{order_url}/authz/0/chall/http-01"),
    };
    let at_step = |k: u64| at.plus_ms(k * COMMAND_INTERVAL_MS);
    let issued_at = at_step(6);
    [
        Command {
            at: at_step(0),
            op: Op::PutCert {
                spec,
                seed: index as u64,
            },
        },
        Command {
            at: at_step(1),
            op: Op::BeginOrder {
                cert,
                cycle: Cycle(1),
                term: Term(1),
                reason: RenewalReason::Initial,
            },
        },
        Command {
            at: at_step(2),
            op: Op::OrderCreated {
                step: step.clone(),
                authorizations: vec![format!("{order_url}/authz/0")],
                order_url,
            },
        },
        Command {
            at: at_step(3),
            op: Op::ChallengesPublished {
                step: step.clone(),
                challenges: vec![challenge],
            },
        },
        Command {
            at: at_step(4),
            op: Op::KeyPrepared {
                step: step.clone(),
                key: testing::sealed((index % 251) as u8),
            },
        },
        Command {
            at: at_step(5),
            op: Op::Finalized { step: step.clone() },
        },
        Command {
            at: issued_at,
            op: Op::CertIssued {
                step,
                leaf_der: leaf(index),
                chain_der: vec![vec![0x30; DER_LEN]],
                not_before: issued_at,
                not_after: issued_at.plus_ms(90 * DAY_MS),
                ari_id: None,
            },
        },
    ]
}

/// A distinct leaf of [`DER_LEN`] bytes.
fn leaf(index: usize) -> Vec<u8> {
    let mut der = vec![0x30; DER_LEN];
    der[..8].copy_from_slice(&(index as u64).to_le_bytes());
    der
}

/// The five order steps for `cert`'s cycle 2 from `term`, each valid in content.
fn stale_steps(state: &State, term: Term) -> Vec<Command> {
    let (cert, record) = state
        .certs()
        .next()
        .expect("the base state holds certificates");
    let step = StepRef {
        cert: cert.clone(),
        cycle: Cycle(2),
        term,
    };
    let at = state.clock();
    let token = "staleToken".to_owned();
    let challenge = Challenge {
        identifier: record.spec.identifiers[0].clone(),
        kind: ChallengeKind::Http01,
        key_authorization: format!("{token}.thumbprint"),
        token,
        url: "https://acme.test/chall/stale".into(),
    };
    let ops = [
        Op::OrderCreated {
            step: step.clone(),
            order_url: "https://acme.test/order/stale".into(),
            authorizations: vec!["https://acme.test/authz/stale".into()],
        },
        Op::ChallengesPublished {
            step: step.clone(),
            challenges: vec![challenge],
        },
        Op::KeyPrepared {
            step: step.clone(),
            key: testing::sealed(7),
        },
        Op::Finalized { step: step.clone() },
        Op::CertIssued {
            step,
            leaf_der: leaf(0),
            chain_der: vec![vec![0x30; DER_LEN]],
            not_before: at,
            not_after: at.plus_ms(90 * DAY_MS),
            ari_id: None,
        },
    ];
    ops.into_iter().map(|op| Command { at, op }).collect()
}

/// The base state: [`BASE_CERTS`] issued certificates with nothing due, default policy.
fn base_state() -> State {
    testing::populated_state(BASE_CERTS, START, DER_LEN)
}

/// Seven accepted commands per new certificate; the state is cloned from the base per sample so
/// it grows only by that sample's certificates.
fn full_cycle(c: &mut Criterion) {
    let base = base_state();
    // Precondition, outside timing: one cycle is accepted end to end and issues.
    let mut probe = base.clone();
    let cycle = issuance_cycle(0, START);
    for command in &cycle {
        let (response, _) = apply(&mut probe, command);
        assert_eq!(response, Response::Accepted, "{:?}", command.op);
    }
    let cert = cycle[1]
        .op
        .cert()
        .expect("BeginOrder names its certificate");
    assert!(
        probe.cert(cert).and_then(|r| r.current.as_ref()).is_some(),
        "the cycle issued"
    );
    drop(probe);

    let mut group = c.benchmark_group("apply");
    group.throughput(Throughput::Elements(CYCLE_COMMANDS));
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .sample_size(30);
    group.bench_function("full_cycle", |b| {
        b.iter_custom(|iters| {
            let mut state = base.clone();
            let cycles: Vec<[Command; 7]> = (0..iters as usize)
                .map(|i| {
                    issuance_cycle(
                        i,
                        START.plus_ms(i as u64 * CYCLE_COMMANDS * COMMAND_INTERVAL_MS),
                    )
                })
                .collect();
            let mut accepted = 0u64;
            let start = Instant::now();
            for cycle in &cycles {
                for command in cycle {
                    let (response, events) = apply(&mut state, command);
                    accepted += u64::from(response.is_accepted());
                    black_box(events);
                }
            }
            let elapsed = start.elapsed();
            assert_eq!(
                accepted,
                iters * CYCLE_COMMANDS,
                "every command of every cycle is accepted"
            );
            assert_eq!(state.cert_count(), BASE_CERTS + iters as usize);
            drop((state, cycles)); // outside timing
            elapsed
        });
    });
    group.finish();
}

/// Five rejected steps per iteration: a cycle owned by term 2 receives every later step from
/// term 1.
fn stale_term(c: &mut Criterion) {
    let mut state = base_state();
    let (cert, record) = state
        .certs()
        .next()
        .expect("the base state holds certificates");
    let begin = Command {
        at: state.clock(),
        op: Op::BeginOrder {
            cert: cert.clone(),
            cycle: record.cycle.next(),
            term: Term(2),
            reason: RenewalReason::Scheduled,
        },
    };
    assert_eq!(apply(&mut state, &begin).0, Response::Accepted);
    let steps = stale_steps(&state, Term(1));
    let digest = state.digest();
    // Precondition, outside timing: each step is refused by the fencing check, not by content.
    for command in &steps {
        let (response, events) = apply(&mut state, command);
        assert!(
            matches!(response, Response::Rejected(Rejection::StaleTerm { .. })),
            "{:?} gave {response:?}",
            command.op
        );
        assert!(events.is_empty());
    }

    let mut group = c.benchmark_group("apply");
    group.throughput(Throughput::Elements(STALE_COMMANDS));
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    group.bench_function("stale_term", |b| {
        b.iter(|| {
            for command in &steps {
                black_box(apply(&mut state, black_box(command)));
            }
        });
    });
    group.finish();
    // Postcondition: rejections left the state exactly as it was (SIMULATION I2).
    assert_eq!(state.digest(), digest);
}

criterion_group!(benches, full_cycle, stale_term);
criterion_main!(benches);
