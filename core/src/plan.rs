//! Renewal planning (DESIGN §6): pure, and proportional to the work due, not to the number of
//! certificates.
//!
//! Every certificate without an open cycle is filed in a due index under the instant it next
//! needs attention ([`schedule`]). A planner tick walks the index only up to `now`, and at most
//! `scan_per_tick_max` entries, so a million idle certificates cost nothing (SIMULATION I13).

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::string::String;
use alloc::vec::Vec;

use crate::budget::{BudgetKey, Budgets};
use crate::model::{CertId, Cycle, IssuerId, Policy, RenewalReason, SealedBlob, Term};
use crate::state::{CertRecord, State, admit, reservations};
use crate::time::{DAY_MS, MINUTE_MS, UnixMillis, draw_below};

/// Backoff after 1, 2, 3 and 4+ consecutive failed cycles: 1 min, 10 min, 100 min, then daily.
pub const BACKOFF_MS: [u64; 4] = [MINUTE_MS, 10 * MINUTE_MS, 100 * MINUTE_MS, DAY_MS];
/// The longest backoff of a certificate that has never been issued (nothing served, so no
/// validity to pace against): the third step. A day-long wait would leave a newly added name
/// unserved for a day after a CA outage or a run of 429s; found by a 24-hour soak run, where
/// certificates added at the start failed four times and were not ordered again for 20 hours.
pub const UNISSUED_BACKOFF_MAX_MS: u64 = 100 * MINUTE_MS;

/// What the leader should do. Imperatives; the adapter turns them into commands and drivers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Intent {
    /// A budget blocks this certificate until `until`: commit `CertsDeferred` (batched) so the
    /// due index stops offering it.
    Defer {
        /// The certificate.
        cert: CertId,
        /// When the budget frees up.
        until: UnixMillis,
    },
    /// An open cycle owned by this leader's term: make sure a driver runs it.
    Drive {
        /// The certificate.
        cert: CertId,
        /// The cycle.
        cycle: Cycle,
    },
    /// Start a cycle: commit `BeginOrder`.
    NewOrder {
        /// The certificate.
        cert: CertId,
        /// The next cycle number.
        cycle: Cycle,
        /// Why.
        reason: RenewalReason,
    },
    /// Poll ARI `renewalInfo` for the current certificate (RFC 9773).
    PollRenewalInfo {
        /// The certificate.
        cert: CertId,
        /// The current certificate's cycle.
        cycle: Cycle,
        /// Its ARI id.
        ari_id: String,
    },
    /// An open cycle owned by an older term: commit `ResumeOrder`, then drive it.
    Resume {
        /// The certificate.
        cert: CertId,
        /// The cycle.
        cycle: Cycle,
    },
    /// An account key rollover is in progress: make sure the CA holds the new key, then
    /// commit `AccountKeyRolled` (or `AccountKeyRolloverRefused`). Until then no other intent
    /// names a certificate of the issuer: the CA may hold either key, and a call signed with
    /// the other one fails.
    RollAccountKey {
        /// The issuer.
        issuer: IssuerId,
        /// The account's credentials now.
        old: SealedBlob,
        /// The credentials with the new key.
        new: SealedBlob,
    },
}

impl Intent {
    /// The command that starts or takes over a cycle for the leader of `term`: `BeginOrder` for
    /// `NewOrder`, `ResumeOrder` for `Resume`. Other intents are not one command each.
    #[must_use]
    pub fn cycle_command(&self, term: Term) -> Option<crate::command::Op> {
        use crate::command::Op;
        match self {
            Self::NewOrder {
                cert,
                cycle,
                reason,
            } => Some(Op::BeginOrder {
                cert: cert.clone(),
                cycle: *cycle,
                term,
                reason: *reason,
            }),
            Self::Resume { cert, cycle } => Some(Op::ResumeOrder {
                cert: cert.clone(),
                cycle: *cycle,
                term,
            }),
            Self::Defer { .. }
            | Self::Drive { .. }
            | Self::PollRenewalInfo { .. }
            | Self::RollAccountKey { .. } => None,
        }
    }
}

/// The result of one planner tick.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// What to do now.
    pub intents: Vec<Intent>,
    /// When to tick again at the latest if nothing else happens (quinn's `poll_timeout`).
    ///
    /// Valid until the next commit: entries at or before `now` are answered by the intents, so
    /// a leader that commits anything (an order step, a deferral, an ARI result) plans again
    /// before sleeping, and one whose intents failed retries them with its own backoff.
    pub wake_at: Option<UnixMillis>,
    /// Due-index entries examined: bounded by policy, independent of idle certificates.
    pub scanned: u32,
}

/// When a certificate next needs attention.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// When to begin the next cycle.
    pub renew_at: UnixMillis,
    /// Why it will be begun.
    pub reason: RenewalReason,
    /// When to poll ARI, if the CA offers it.
    pub ari_poll_at: Option<UnixMillis>,
}

impl Schedule {
    /// The due-index key: the earlier of renewal and ARI poll.
    #[must_use]
    pub fn wake_at(&self) -> UnixMillis {
        self.ari_poll_at
            .map_or(self.renew_at, |poll| poll.min(self.renew_at))
    }
}

/// One planner tick for the leader of `term` at `now`.
#[must_use]
pub fn plan(state: &State, now: UnixMillis, term: Term) -> Plan {
    let policy = state.policy();
    let mut out = Plan {
        wake_at: state.due_after(now),
        ..Plan::default()
    };
    let mut rolling: BTreeSet<&IssuerId> = BTreeSet::new();
    for (issuer, account) in state.accounts() {
        if let Some(rollover) = &account.rollover {
            rolling.insert(issuer);
            out.intents.push(Intent::RollAccountKey {
                issuer: issuer.clone(),
                old: account.credentials.clone(),
                new: rollover.credentials.clone(),
            });
        }
    }
    let held = |cert: &CertId| {
        !rolling.is_empty()
            && state
                .cert(cert)
                .is_some_and(|record| rolling.contains(&record.spec.issuer))
    };
    for (cert, open) in state.open_cycles() {
        if held(cert) {
            continue;
        }
        // An open cycle of a newer term means this node is no longer leader: leave it.
        if open.term < term {
            out.intents.push(Intent::Resume {
                cert: cert.clone(),
                cycle: open.cycle,
            });
        } else if open.term == term {
            out.intents.push(Intent::Drive {
                cert: cert.clone(),
                cycle: open.cycle,
            });
        }
    }
    let mut slots = (policy.orders_in_flight_max as usize).saturating_sub(state.open_count());
    let mut overlay: BTreeMap<BudgetKey, UnixMillis> = BTreeMap::new();
    // Certificates of each issuer deferred behind its order budget in this tick, in due order.
    let mut queued: BTreeMap<&IssuerId, u64> = BTreeMap::new();
    let mut emitted = 0u32;
    for (_, cert) in state.due_until(now) {
        if out.scanned >= policy.scan_per_tick_max || emitted >= policy.intents_per_tick_max {
            out.wake_at = Some(now); // more is due: tick again at once
            break;
        }
        let record = state
            .cert(cert)
            .expect("the due index holds only managed certificates");
        if rolling.contains(&record.spec.issuer) {
            // Neither scanned nor emitted: the rollover's commit makes the leader plan again.
            continue;
        }
        let sched = schedule(cert, record, policy)
            .expect("the due index holds only certificates without an open cycle");
        if sched.renew_at <= now && slots == 0 {
            // Every in-flight slot is taken: nothing more can start until a cycle closes, and
            // that is a commit, after which the leader plans again. Not a reason to spin.
            break;
        }
        out.scanned += 1;
        if sched.renew_at <= now {
            let issuer = &record.spec.issuer;
            let throttled_until = state
                .account(issuer)
                .and_then(|a| a.throttled_until)
                .filter(|until| *until > now);
            let admitted = match throttled_until {
                Some(until) => Err((
                    BudgetKey::NewOrders {
                        issuer: issuer.clone(),
                    },
                    until,
                )),
                None => admit(state.budgets(), policy, record, now, Some(&overlay)),
            };
            match admitted {
                Ok(()) => {
                    for (key, rate) in reservations(policy, record) {
                        let arrival = overlay
                            .get(&key)
                            .copied()
                            .or_else(|| state.budgets().arrival(&key));
                        overlay.insert(key, Budgets::arrival_after_consume(arrival, rate, now));
                    }
                    out.intents.push(Intent::NewOrder {
                        cert: cert.clone(),
                        cycle: record.cycle.next(),
                        reason: sched.reason,
                    });
                    slots -= 1;
                }
                // The account's order budget (or the CA's account-wide Retry-After) gates every
                // certificate of the issuer. Each waiting certificate is deferred to the slot it
                // would get in due order, one refill interval apart, so a bulk import is spread
                // over time by the due index itself and later ticks see only what may start.
                Err((BudgetKey::NewOrders { .. }, until)) => {
                    let position = queued.entry(issuer).or_default();
                    let slot =
                        until.plus_ms(position.saturating_mul(policy.new_orders.interval_ms()));
                    *position += 1;
                    out.intents.push(Intent::Defer {
                        cert: cert.clone(),
                        until: slot,
                    });
                }
                Err((_, until)) => {
                    out.intents.push(Intent::Defer {
                        cert: cert.clone(),
                        until,
                    });
                }
            }
            emitted += 1;
        } else if let (Some(poll_at), Some(current)) = (sched.ari_poll_at, &record.current)
            && poll_at <= now
            && let Some(ari_id) = &current.ari_id
        {
            out.intents.push(Intent::PollRenewalInfo {
                cert: cert.clone(),
                cycle: current.cycle,
                ari_id: ari_id.clone(),
            });
            emitted += 1;
        }
    }
    out
}

/// When a certificate without an open cycle next needs attention; `None` while a cycle is open.
#[must_use]
pub fn schedule(cert: &CertId, record: &CertRecord, policy: &Policy) -> Option<Schedule> {
    if record.open.is_some() {
        return None;
    }
    let (mut renew_at, mut reason, ari_poll_at) = match &record.current {
        None => (record.added_at, RenewalReason::Initial, None),
        Some(current) => {
            let lifetime_ms = current.lifetime_ms();
            let emergency_at = current
                .not_after
                .minus_ms(permille_of(lifetime_ms, policy.emergency_permille));
            let ari = record.ari.as_ref().filter(|a| a.cycle == current.cycle);
            let (at, reason) = if record.spec_changed {
                (UnixMillis::ZERO, RenewalReason::SpecChanged)
            } else if let Some(chosen) = ari.and_then(|a| a.chosen_at) {
                // ARI's point, unless it lies past the emergency point (DESIGN §6).
                if chosen < emergency_at {
                    (chosen, RenewalReason::Ari)
                } else {
                    (emergency_at, RenewalReason::Emergency)
                }
            } else {
                let permille = if lifetime_ms < policy.short_lifetime_ms {
                    policy.renew_short_permille
                } else {
                    policy.renew_permille
                };
                let point = current
                    .not_before
                    .plus_ms(permille_of(lifetime_ms, permille));
                let jitter_range_ms = permille_of(lifetime_ms, policy.jitter_permille) + 1;
                let jitter_ms = draw_below(
                    record.seed,
                    cert.as_str().as_bytes(),
                    current.cycle.0,
                    jitter_range_ms,
                );
                (
                    point.minus_ms(jitter_ms).min(emergency_at),
                    RenewalReason::Scheduled,
                )
            };
            let poll = current.ari_id.as_ref().map(|_| {
                ari.map_or(
                    current.issued_at.plus_ms(policy.ari_poll_interval_ms),
                    |a| a.next_poll_at,
                )
            });
            (at, reason, poll)
        }
    };
    // A Retry-After kept across a spec change holds with no failure counted (`put_cert`).
    if let Some(retry) = record.retry_at {
        renew_at = renew_at.max(retry);
        if record.failures > 0 {
            reason = RenewalReason::Retry;
        }
    }
    if let Some(deferred) = record.deferred_until {
        renew_at = renew_at.max(deferred);
    }
    Some(Schedule {
        renew_at,
        reason,
        ari_poll_at,
    })
}

/// The instant after the `failures`-th consecutive failure at `now` before which the
/// certificate is not retried: the backoff step (1 min, 10 min, 100 min, then daily) plus up to
/// 10% jitter, but never more than a quarter of the validity the served certificate has left
/// (`not_after`), nor than [`UNISSUED_BACKOFF_MAX_MS`] with nothing served, and never before
/// the CA's `Retry-After` (SIMULATION I9).
///
/// The cap keeps the backoff far below the renewal margin (SIMULATION I6): a short CA outage
/// that fails a few cycles in a row must not park a 6-day certificate, renewing with 3 days
/// left, for a whole day at a time. As expiry nears retries get denser, still within the rate
/// budgets, which `apply` enforces on every order.
#[must_use]
pub fn retry_at(
    cert: &CertId,
    seed: u64,
    failures: u32,
    now: UnixMillis,
    not_after: Option<UnixMillis>,
    ca_retry_at: Option<UnixMillis>,
) -> UnixMillis {
    let step = (failures.clamp(1, 4) - 1) as usize;
    let base_ms = BACKOFF_MS[step];
    let jitter_ms = draw_below(
        seed,
        cert.as_str().as_bytes(),
        u64::from(failures),
        base_ms / 10 + 1,
    );
    let cap_ms = not_after.map_or(UNISSUED_BACKOFF_MAX_MS, |end| {
        (end.ms_since(now) / 4).max(MINUTE_MS)
    });
    now.plus_ms((base_ms + jitter_ms).min(cap_ms))
        .max(ca_retry_at.unwrap_or(UnixMillis::ZERO))
}

/// `ms * permille / 1000` without overflow.
#[must_use]
pub fn permille_of(ms: u64, permille: u16) -> u64 {
    // A u64 times a u16 fits in a u128; the quotient is at most `ms`.
    u64::try_from(u128::from(ms) * u128::from(permille) / 1000).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::Rate;
    use crate::command::{Command, Op};
    use crate::model::CertSpec;
    use crate::state::apply;
    use crate::testing::{Harness, account, populated_state, spec};
    use crate::time::HOUR_MS;

    const T0: UnixMillis = UnixMillis(1_700_000_000_000);

    fn state_with(specs: &[CertSpec], policy: Policy) -> State {
        let mut state = State::new();
        let issuer = IssuerId::parse(crate::testing::ISSUER).unwrap();
        let ops = [
            Op::SetAccount {
                issuer,
                account: account(),
            },
            Op::SetPolicy { policy },
        ];
        for op in ops.into_iter().chain(specs.iter().map(|s| Op::PutCert {
            spec: s.clone(),
            seed: 5,
        })) {
            assert!(apply(&mut state, &Command { at: T0, op }).0.is_accepted());
        }
        state
    }

    fn names(n: usize, domain: &str) -> Vec<CertSpec> {
        (0..n)
            .map(|i| spec(&[format!("n{i}.{domain}").as_str()]))
            .collect()
    }

    #[test]
    fn a_tick_with_nothing_due_examines_nothing() {
        let state = populated_state(2_000, T0, 16);
        let plan = plan(&state, T0, Term(1));
        assert!(plan.intents.is_empty());
        assert_eq!(plan.scanned, 0);
        assert!(
            plan.wake_at.unwrap() > T0,
            "it knows when the first renewal is due"
        );
    }

    #[test]
    fn the_next_wake_up_is_found_without_walking_the_certificates_already_due() {
        // 2,000 certificates due now and one due later: the wake-up is the later one, and
        // finding it must not depend on how many are due (the scan cap bounds the rest).
        let mut specs = names(2_000, "example.com");
        specs.push(spec(&["later.example.org"]));
        let mut state = state_with(
            &specs[..2_000],
            Policy {
                scan_per_tick_max: 10,
                ..Policy::default()
            },
        );
        let later = T0.plus_ms(DAY_MS);
        let op = Op::PutCert {
            spec: specs[2_000].clone(),
            seed: 1,
        };
        assert!(
            apply(&mut state, &Command { at: later, op })
                .0
                .is_accepted()
        );
        assert_eq!(state.due_after(later.minus_ms(1)), Some(later));
        assert_eq!(state.due_after(later), None);
        let plan = plan(&state, later.minus_ms(1), Term(1));
        assert_eq!(plan.scanned, 10);
        assert_eq!(
            plan.wake_at,
            Some(later.minus_ms(1)),
            "more is due now: tick again at once"
        );
    }

    #[test]
    fn new_certificates_get_a_new_order_at_once() {
        let state = state_with(&names(2, "example.com"), Policy::default());
        let plan = plan(&state, T0, Term(1));
        let expected: Vec<Intent> = ["n0.example.com", "n1.example.com"]
            .into_iter()
            .map(|n| Intent::NewOrder {
                cert: CertId::parse(n).unwrap(),
                cycle: Cycle(1),
                reason: RenewalReason::Initial,
            })
            .collect();
        assert_eq!(plan.intents, expected);
        assert_eq!(plan.scanned, 2);
    }

    #[test]
    fn renewal_is_at_two_thirds_of_a_long_lifetime_and_half_of_a_short_one_minus_jitter() {
        for (lifetime_days, permille) in [(90u64, 667u16), (45, 667), (6, 500)] {
            let mut h = Harness::new(3, T0, lifetime_days * DAY_MS);
            h.add(&["a.example.com"]);
            h.run_until(T0.plus_ms(HOUR_MS));
            let id = CertId::parse("a.example.com").unwrap();
            let record = h.state.cert(&id).unwrap();
            let current = record.current.as_ref().unwrap();
            let sched = schedule(&id, record, h.state.policy()).unwrap();
            let lifetime_ms = lifetime_days * DAY_MS;
            let point = current
                .not_before
                .plus_ms(permille_of(lifetime_ms, permille));
            let jitter_max_ms = permille_of(lifetime_ms, 20);
            assert_eq!(sched.reason, RenewalReason::Scheduled);
            assert!(
                sched.renew_at <= point && sched.renew_at >= point.minus_ms(jitter_max_ms),
                "{lifetime_days} d"
            );
        }
    }

    #[test]
    fn emergency_renewal_overrides_a_late_ari_point() {
        let mut h = Harness::new(4, T0, 90 * DAY_MS);
        h.ca.ari = true;
        h.add(&["a.example.com"]);
        h.run_until(T0.plus_ms(HOUR_MS));
        let id = CertId::parse("a.example.com").unwrap();
        let current = h.state.cert(&id).unwrap().current.clone().unwrap();
        // The CA suggests renewing one day before expiry: past the 1/20 emergency point.
        let window = crate::command::AriWindow {
            start: current.not_after.minus_ms(DAY_MS),
            end: current.not_after.minus_ms(DAY_MS / 2),
        };
        let op = Op::RenewalInfoPolled {
            cert: id.clone(),
            cycle: current.cycle,
            window: Some(window),
            retry_at: None,
            seed: 1,
        };
        assert!(h.commit(op).is_accepted());
        let sched = schedule(&id, h.state.cert(&id).unwrap(), h.state.policy()).unwrap();
        assert_eq!(sched.reason, RenewalReason::Emergency);
        assert_eq!(
            sched.renew_at,
            current.not_after.minus_ms(permille_of(90 * DAY_MS, 50))
        );
    }

    #[test]
    fn a_renew_now_from_the_ca_renews_at_once_and_moving_windows_renew_in_time() {
        let mut h = Harness::new(5, T0, 6 * DAY_MS);
        h.ca.ari = true;
        h.ca.faults.ari_moves = true;
        h.add(&["a.example.com", "b.example.com", "c.example.com"]);
        h.run_until(T0.plus_ms(2 * DAY_MS));
        let issued_before = h.stats.issued;
        // The next polls (12-hourly, one per certificate) say "renew now".
        h.ca.faults.ari_renew_now = 3;
        h.run_until(T0.plus_ms(3 * DAY_MS));
        assert_eq!(h.ca.renew_now.len(), 3, "every certificate was told");
        assert_eq!(h.stats.issued, issued_before + 3, "and renewed");
        for (id, record) in h.records() {
            let current = record.current.as_ref().unwrap();
            let (_, told_at) =
                h.ca.renew_now
                    .iter()
                    .find(|(set, _)| set == id.as_str())
                    .unwrap();
            assert!(
                current.issued_at >= *told_at && current.issued_at.ms_since(*told_at) < MINUTE_MS,
                "{id} renewed {} ms after it was told",
                current.issued_at.ms_since(*told_at)
            );
        }
        // Three weeks of windows that move between polls: no certificate expires, and each
        // renews at the usual pace, not at every move.
        h.run_until(T0.plus_ms(24 * DAY_MS));
        assert!(h.ca.ari_polls > 100, "{} polls", h.ca.ari_polls);
        for (id, record) in h.records() {
            let current = record.current.as_ref().unwrap();
            assert!(current.not_after > h.now, "{id} expired");
        }
        let cycles_per_cert = h.stats.issued as f64 / 3.0;
        // 24 days of 6-day certificates renewed at about 2/3 to 3/4 of their lifetime.
        assert!((5.0..=8.0).contains(&cycles_per_cert), "{cycles_per_cert}");
    }

    #[test]
    fn open_cycles_are_resumed_by_a_newer_term_and_driven_by_their_own() {
        let mut state = state_with(&names(1, "example.com"), Policy::default());
        let cert = CertId::parse("n0.example.com").unwrap();
        let op = Op::BeginOrder {
            cert: cert.clone(),
            cycle: Cycle(1),
            term: Term(3),
            reason: RenewalReason::Initial,
        };
        assert!(apply(&mut state, &Command { at: T0, op }).0.is_accepted());
        assert_eq!(
            plan(&state, T0, Term(3)).intents,
            vec![Intent::Drive {
                cert: cert.clone(),
                cycle: Cycle(1)
            }]
        );
        assert_eq!(
            plan(&state, T0, Term(4)).intents,
            vec![Intent::Resume {
                cert,
                cycle: Cycle(1)
            }]
        );
        assert!(
            plan(&state, T0, Term(2)).intents.is_empty(),
            "a stale leader leaves it alone"
        );
    }

    #[test]
    fn the_planner_never_opens_more_cycles_than_the_in_flight_limit() {
        let policy = Policy {
            orders_in_flight_max: 3,
            ..Policy::default()
        };
        let state = state_with(&names(10, "example.com"), policy);
        let plan = plan(&state, T0, Term(1));
        assert_eq!(
            plan.intents
                .iter()
                .filter(|i| matches!(i, Intent::NewOrder { .. }))
                .count(),
            3
        );
    }

    /// Commits what a leader would: new orders as `BeginOrder`, deferrals in one batch.
    fn commit_plan(state: &mut State, plan: &Plan, now: UnixMillis) {
        let mut deferred = Vec::new();
        for intent in &plan.intents {
            if let Some(op) = intent.cycle_command(Term(1)) {
                let accepted = apply(state, &Command { at: now, op }).0.is_accepted();
                assert!(accepted, "apply agrees with the planner");
                continue;
            }
            if let Intent::Defer { cert, until } = intent {
                deferred.push((cert.clone(), *until));
            }
        }
        if !deferred.is_empty() {
            let op = Op::CertsDeferred { items: deferred };
            assert!(apply(state, &Command { at: now, op }).0.is_accepted());
        }
    }

    /// The instants a plan defers certificates to, in plan order.
    fn deferrals(plan: &Plan) -> Vec<UnixMillis> {
        let until = |i: &Intent| match i {
            Intent::Defer { until, .. } => Some(*until),
            _ => None,
        };
        plan.intents.iter().filter_map(until).collect()
    }

    fn new_orders(plan: &Plan) -> usize {
        plan.intents
            .iter()
            .filter(|i| matches!(i, Intent::NewOrder { .. }))
            .count()
    }

    #[test]
    fn a_bulk_import_is_paced_by_the_new_order_budget() {
        // 500 new certificates across 50 domains; the account allows 300 orders, then 1 per 36 s.
        let specs: Vec<CertSpec> = (0..500)
            .map(|i| spec(&[format!("n{i}.d{}.example", i % 50).as_str()]))
            .collect();
        let policy = Policy {
            orders_in_flight_max: 10_000,
            ..Policy::default()
        };
        let mut state = state_with(&specs, policy);
        let first = plan(&state, T0, Term(1));
        assert_eq!(new_orders(&first), 300);
        // The other 200 wait for their slots, one refill interval apart, in due order.
        let slots = deferrals(&first);
        let expected: Vec<UnixMillis> = (0..200).map(|k| T0.plus_ms(36_000 * (k + 1))).collect();
        assert_eq!(slots, expected);
        commit_plan(&mut state, &first, T0);
        let idle = plan(&state, T0.plus_ms(35_999), Term(1));
        assert!(
            idle.intents
                .iter()
                .all(|i| matches!(i, Intent::Drive { .. }))
        );
        assert_eq!(
            idle.wake_at,
            Some(T0.plus_ms(36_000)),
            "wakes at the first slot"
        );
        assert_eq!(new_orders(&plan(&state, T0.plus_ms(36_000), Term(1))), 1);
    }

    #[test]
    fn a_huge_import_never_makes_the_leader_spin() {
        // 20,000 certificates at once: far beyond the scan and intent limits of one tick. At any
        // instant the leader must settle after a bounded number of ticks, each committing
        // progress, and then sleep until a later instant (SIMULATION I13).
        let specs: Vec<CertSpec> = (0..20_000)
            .map(|i| spec(&[format!("n{i}.d{}.example", i / 40).as_str()]))
            .collect();
        let policy = Policy {
            orders_in_flight_max: 100_000,
            ..Policy::default()
        };
        let mut state = state_with(&specs, policy);
        let mut now = T0;
        let mut started = 0;
        for _instant in 0..400 {
            let mut ticks = 0;
            let wake_at = loop {
                let plan = plan(&state, now, Term(1));
                assert!(plan.scanned <= state.policy().scan_per_tick_max);
                if plan
                    .intents
                    .iter()
                    .all(|i| matches!(i, Intent::Drive { .. }))
                {
                    assert_ne!(
                        plan.wake_at,
                        Some(now),
                        "asked to tick again with nothing to do"
                    );
                    break plan.wake_at;
                }
                started += new_orders(&plan);
                commit_plan(&mut state, &plan, now);
                ticks += 1;
                assert!(ticks <= 25, "the leader does not settle at {now}");
            };
            let Some(next) = wake_at else { break };
            now = next;
        }
        // 300 at once, then one per 36 s for the 399 following wake-ups.
        assert_eq!(started, 300 + 399);
        assert_eq!(state.open_count(), started);
    }

    #[test]
    fn a_full_in_flight_window_ends_the_tick_without_asking_to_spin() {
        let policy = Policy {
            orders_in_flight_max: 2,
            scan_per_tick_max: 3,
            ..Policy::default()
        };
        let mut state = state_with(&names(20, "example.com"), policy);
        let first = plan(&state, T0, Term(1));
        assert_eq!(new_orders(&first), 2);
        commit_plan(&mut state, &first, T0);
        let full = plan(&state, T0, Term(1));
        assert_eq!(full.scanned, 0);
        assert_ne!(full.wake_at, Some(T0));
    }

    #[test]
    fn a_certificate_blocked_by_its_domain_budget_is_deferred() {
        let policy = Policy {
            certs_per_domain: Rate {
                count: 2,
                period_ms: 7 * DAY_MS,
            },
            ..Policy::default()
        };
        let state = state_with(&names(3, "example.com"), policy);
        let plan = plan(&state, T0, Term(1));
        let interval_ms = 7 * DAY_MS / 2;
        assert!(
            matches!(&plan.intents[..], [Intent::NewOrder { .. }, Intent::NewOrder { .. }, Intent::Defer { until, .. }] if *until == T0.plus_ms(interval_ms)),
            "{:?}",
            plan.intents
        );
    }

    #[test]
    fn a_throttled_issuer_gets_no_new_orders_until_its_retry_after() {
        let mut state = state_with(&names(2, "example.com"), Policy::default());
        let issuer = IssuerId::parse(crate::testing::ISSUER).unwrap();
        let mut throttled = account();
        throttled.throttled_until = Some(T0.plus_ms(HOUR_MS));
        let op = Op::SetAccount {
            issuer,
            account: throttled,
        };
        assert!(apply(&mut state, &Command { at: T0, op }).0.is_accepted());
        let plan_now = plan(&state, T0, Term(1));
        assert_eq!(new_orders(&plan_now), 0);
        // Both wait for the Retry-After, then resume one refill interval apart.
        let until = deferrals(&plan_now);
        assert_eq!(
            until,
            vec![T0.plus_ms(HOUR_MS), T0.plus_ms(HOUR_MS + 36_000)]
        );
        assert_eq!(
            new_orders(&plan(&state, T0.plus_ms(HOUR_MS), Term(1))),
            2,
            "uncommitted deferrals change nothing"
        );
    }

    #[test]
    fn a_tick_examines_at_most_the_scan_limit_and_asks_to_run_again() {
        let policy = Policy {
            scan_per_tick_max: 5,
            orders_in_flight_max: 10_000,
            ..Policy::default()
        };
        let state = state_with(&names(20, "example.com"), policy);
        let plan = plan(&state, T0, Term(1));
        assert_eq!(plan.scanned, 5);
        assert_eq!(plan.intents.len(), 5);
        assert_eq!(plan.wake_at, Some(T0));
    }

    #[test]
    fn backoff_steps_are_one_ten_and_hundred_minutes_then_daily() {
        let cert = CertId::parse("a.example.com").unwrap();
        let long_lived = Some(T0.plus_ms(90 * DAY_MS));
        for (failures, base_ms) in [
            (1, MINUTE_MS),
            (2, 10 * MINUTE_MS),
            (3, 100 * MINUTE_MS),
            (4, DAY_MS),
            (9, DAY_MS),
        ] {
            let at = retry_at(&cert, 42, failures, T0, long_lived, None);
            assert!(
                at >= T0.plus_ms(base_ms) && at <= T0.plus_ms(base_ms + base_ms / 10),
                "failure {failures}"
            );
        }
        assert_eq!(
            retry_at(&cert, 42, 1, T0, None, Some(T0.plus_ms(DAY_MS))),
            T0.plus_ms(DAY_MS),
            "Retry-After wins when later"
        );
    }

    #[test]
    fn a_certificate_never_issued_is_never_parked_for_a_day() {
        let cert = CertId::parse("new.example.com").unwrap();
        for failures in [4, 5, 30] {
            let at = retry_at(&cert, 7, failures, T0, None, None);
            assert_eq!(
                at,
                T0.plus_ms(UNISSUED_BACKOFF_MAX_MS),
                "failure {failures}"
            );
        }
        let late = T0.plus_ms(5 * HOUR_MS);
        assert_eq!(
            retry_at(&cert, 7, 4, T0, None, Some(late)),
            late,
            "the CA's Retry-After still wins"
        );
    }

    #[test]
    fn backoff_never_exceeds_a_quarter_of_the_remaining_validity() {
        let cert = CertId::parse("a.example.com").unwrap();
        // A 6-day certificate failing its renewal with 3 days left: daily would waste a third
        // of the margin per try; the cap is 18 h, and it shrinks as expiry nears.
        let at = retry_at(&cert, 1, 5, T0, Some(T0.plus_ms(3 * DAY_MS)), None);
        assert_eq!(at, T0.plus_ms(18 * HOUR_MS));
        let at = retry_at(&cert, 1, 5, T0, Some(T0.plus_ms(HOUR_MS)), None);
        assert_eq!(at, T0.plus_ms(15 * MINUTE_MS));
        let at = retry_at(&cert, 1, 5, T0, Some(T0.plus_ms(MINUTE_MS)), None);
        assert_eq!(at, T0.plus_ms(MINUTE_MS), "never denser than once a minute");
        let late = T0.plus_ms(2 * DAY_MS);
        let at = retry_at(&cert, 1, 5, T0, Some(T0.plus_ms(HOUR_MS)), Some(late));
        assert_eq!(at, late, "the CA's Retry-After still wins");
        // Long lifetimes keep the specified schedule.
        let at = retry_at(&cert, 1, 4, T0, Some(T0.plus_ms(30 * DAY_MS)), None);
        assert!(at >= T0.plus_ms(DAY_MS));
    }

    #[test]
    fn permille_arithmetic_does_not_overflow() {
        assert_eq!(permille_of(u64::MAX, 1000), u64::MAX);
        assert_eq!(permille_of(90 * DAY_MS, 667), 5_186_592_000);
    }
}
