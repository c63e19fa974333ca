//! Planner golden scenarios: plain-text files in `core/tests/data/*.txt`.
//!
//! Each file builds a state through real commands, then asks the planner what to do at given
//! instants and compares the answer with the expected lines. `UPDATE_GOLDEN=1 cargo test -p
//! certfleet-core --test golden` rewrites the expectations (review the diff!).
//!
//! Directives, one per line (`#` starts a comment; times are offsets from T0 like `+90d`,
//! `+1h30m`, `-5m`):
//! * `at +T`: set the leader's clock.
//! * `policy key=value…`: `in_flight=N`, `scan=N`, `intents=N`, `new_orders=N/+T`,
//!   `per_domain=N/+T`, `per_set=N/+T`, `failed_authz=N/+T`.
//! * `add NAME…`: one certificate with these names.
//! * `issue NAME lifetime=+T [ari=ID]`: a whole cycle, issued now with that lifetime.
//! * `ari NAME start=+T end=+T [seed=N]`: an ARI poll result for the current certificate.
//! * `begin NAME term=N`: open a cycle and leave it open.
//! * `fail NAME [retry=+T] [class=permanent|rate-limited|retryable] [account-wide]`: open a cycle
//!   and fail it.
//! * `plan term=N`: followed by the expected intents and a `wake_at=… scanned=N` line, ended by
//!   a blank line.
//! * `commit`: commit the last plan's new orders and deferrals.

#![allow(
    clippy::disallowed_methods,
    reason = "the golden runner reads its scenario files and UPDATE_GOLDEN"
)]

use std::fmt::Write as _;
use std::path::Path;

use certfleet_core::budget::Rate;
use certfleet_core::command::{AriWindow, Failure, FailureClass, Op, StepRef};
use certfleet_core::model::RenewalReason;
use certfleet_core::testing::{ISSUER, account, sealed, spec};
use certfleet_core::time::{DAY_MS, HOUR_MS, MINUTE_MS, SECOND_MS};
use certfleet_core::{
    CertId, Command, Intent, IssuerId, Plan, State, Term, UnixMillis, apply, plan,
};

const T0: UnixMillis = UnixMillis(1_700_000_000_000);

struct Scenario {
    state: State,
    now: UnixMillis,
    last_plan: Option<(Plan, Term)>,
}

impl Scenario {
    fn new() -> Self {
        let mut scenario = Self {
            state: State::new(),
            now: T0,
            last_plan: None,
        };
        let issuer = IssuerId::parse(ISSUER).unwrap();
        scenario.commit(Op::SetAccount {
            issuer,
            account: account(),
        });
        scenario
    }

    fn commit(&mut self, op: Op) {
        let (response, _) = apply(
            &mut self.state,
            &Command {
                at: self.now,
                op: op.clone(),
            },
        );
        assert!(response.is_accepted(), "{op:?} was refused: {response:?}");
    }

    fn id(&self, name: &str) -> CertId {
        CertId::parse(name).unwrap()
    }

    fn begin(&mut self, name: &str, term: Term) -> StepRef {
        let cert = self.id(name);
        let cycle = self
            .state
            .cert(&cert)
            .unwrap_or_else(|| panic!("no certificate {name}"))
            .cycle
            .next();
        self.commit(Op::BeginOrder {
            cert: cert.clone(),
            cycle,
            term,
            reason: RenewalReason::Scheduled,
        });
        StepRef { cert, cycle, term }
    }

    fn directive(&mut self, line: &str) {
        let mut words = line.split_whitespace();
        let verb = words.next().unwrap();
        let args: Vec<&str> = words.collect();
        let kv = |key: &str| {
            args.iter()
                .find_map(|a| a.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        };
        match verb {
            "at" => self.now = T0.plus_signed(offset(args[0])),
            "policy" => {
                let mut policy = self.state.policy().clone();
                for arg in &args {
                    let (key, value) = arg.split_once('=').unwrap();
                    match key {
                        "in_flight" => policy.orders_in_flight_max = value.parse().unwrap(),
                        "scan" => policy.scan_per_tick_max = value.parse().unwrap(),
                        "intents" => policy.intents_per_tick_max = value.parse().unwrap(),
                        "new_orders" => policy.new_orders = rate(value),
                        "per_domain" => policy.certs_per_domain = rate(value),
                        "per_set" => policy.certs_per_set = rate(value),
                        "failed_authz" => policy.failed_authz = rate(value),
                        other => panic!("unknown policy key {other}"),
                    }
                }
                self.commit(Op::SetPolicy { policy });
            }
            "add" => self.commit(Op::PutCert {
                spec: spec(&args),
                seed: 1,
            }),
            "issue" => {
                let step = self.begin(args[0], Term(1));
                let lifetime_ms = offset(kv("lifetime").expect("lifetime=")) as u64;
                self.commit(Op::OrderCreated {
                    step: step.clone(),
                    order_url: "https://ca.test/order".into(),
                    authorizations: vec!["https://ca.test/authz".into()],
                });
                self.commit(Op::ChallengesPublished {
                    step: step.clone(),
                    challenges: vec![],
                });
                self.commit(Op::KeyPrepared {
                    step: step.clone(),
                    key: sealed(1),
                });
                self.commit(Op::Finalized { step: step.clone() });
                self.commit(Op::CertIssued {
                    step,
                    leaf_der: vec![0x30],
                    chain_der: vec![vec![0x30]],
                    not_before: self.now,
                    not_after: self.now.plus_ms(lifetime_ms),
                    ari_id: kv("ari").map(String::from),
                });
            }
            "ari" => {
                let cert = self.id(args[0]);
                let cycle = self
                    .state
                    .cert(&cert)
                    .unwrap()
                    .current
                    .as_ref()
                    .unwrap()
                    .cycle;
                let start = T0.plus_signed(offset(kv("start").unwrap()));
                let end = T0.plus_signed(offset(kv("end").unwrap()));
                let seed = kv("seed").map_or(1, |s| s.parse().unwrap());
                self.commit(Op::RenewalInfoPolled {
                    cert,
                    cycle,
                    window: Some(AriWindow { start, end }),
                    retry_at: None,
                    seed,
                });
            }
            "begin" => {
                let term = Term(kv("term").unwrap().parse().unwrap());
                self.begin(args[0], term);
            }
            "fail" => {
                let step = self.begin(args[0], Term(1));
                let class = match kv("class").unwrap_or("retryable") {
                    "permanent" => FailureClass::Permanent,
                    "rate-limited" => FailureClass::RateLimited,
                    _ => FailureClass::Retryable,
                };
                let failure = Failure {
                    class,
                    problem: None,
                    detail: "scenario".into(),
                    retry_at: kv("retry").map(|r| self.now.plus_signed(offset(r))),
                    failed_identifiers: vec![],
                    account_wide: args.contains(&"account-wide"),
                };
                self.commit(Op::OrderFailed {
                    step,
                    failure,
                    seed: 1,
                });
            }
            "commit" => {
                let (plan, term) = self
                    .last_plan
                    .take()
                    .expect("commit needs a plan before it");
                let mut deferred = Vec::new();
                for intent in plan.intents {
                    match intent {
                        Intent::NewOrder {
                            cert,
                            cycle,
                            reason,
                        } => self.commit(Op::BeginOrder {
                            cert,
                            cycle,
                            term,
                            reason,
                        }),
                        Intent::Defer { cert, until } => deferred.push((cert, until)),
                        _ => {}
                    }
                }
                if !deferred.is_empty() {
                    self.commit(Op::CertsDeferred { items: deferred });
                }
            }
            other => panic!("unknown directive {other:?}"),
        }
    }

    fn plan(&mut self, term: Term) -> String {
        let plan = plan(&self.state, self.now, term);
        let mut out = String::new();
        for intent in &plan.intents {
            match intent {
                Intent::Defer { cert, until } => {
                    writeln!(out, "defer {cert} until={}", show(*until))
                }
                Intent::Drive { cert, cycle } => writeln!(out, "drive {cert} cycle={cycle}"),
                Intent::NewOrder {
                    cert,
                    cycle,
                    reason,
                } => writeln!(out, "new-order {cert} cycle={cycle} reason={reason:?}"),
                Intent::PollRenewalInfo {
                    cert,
                    cycle,
                    ari_id,
                } => writeln!(out, "poll-ari {cert} cycle={cycle} id={ari_id}"),
                Intent::Resume { cert, cycle } => writeln!(out, "resume {cert} cycle={cycle}"),
                Intent::RollAccountKey { issuer, .. } => {
                    writeln!(out, "roll-account-key {issuer}")
                }
            }
            .unwrap();
        }
        let wake = plan.wake_at.map_or_else(|| "never".to_owned(), show);
        writeln!(out, "wake_at={wake} scanned={}", plan.scanned).unwrap();
        self.last_plan = Some((plan, term));
        out
    }
}

trait PlusSigned {
    fn plus_signed(self, ms: i64) -> Self;
}

impl PlusSigned for UnixMillis {
    fn plus_signed(self, ms: i64) -> Self {
        if ms >= 0 {
            self.plus_ms(ms.unsigned_abs())
        } else {
            self.minus_ms(ms.unsigned_abs())
        }
    }
}

/// `+1d2h30m15s250ms`, `-5m`, `+0` → milliseconds.
fn offset(text: &str) -> i64 {
    let (sign, rest) = match text.as_bytes().first() {
        Some(b'-') => (-1, &text[1..]),
        Some(b'+') => (1, &text[1..]),
        _ => panic!("offset {text:?} must start with + or -"),
    };
    let mut total: i64 = 0;
    let mut number = String::new();
    let mut chars = rest.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = if c == 'm' && chars.peek() == Some(&'s') {
            chars.next();
            1
        } else {
            match c {
                'd' => DAY_MS,
                'h' => HOUR_MS,
                'm' => MINUTE_MS,
                's' => SECOND_MS,
                _ => panic!("unit {c:?} in {text:?}"),
            }
        };
        total += number.parse::<i64>().unwrap() * unit as i64;
        number.clear();
    }
    if !number.is_empty() {
        total += number.parse::<i64>().unwrap();
    }
    sign * total
}

/// The inverse of `offset`, relative to T0.
fn show(at: UnixMillis) -> String {
    let (sign, mut ms) = if at >= T0 {
        ("+", at.ms_since(T0))
    } else {
        ("-", T0.ms_since(at))
    };
    if ms == 0 {
        return "+0".into();
    }
    let mut out = sign.to_owned();
    for (unit_ms, unit) in [
        (DAY_MS, "d"),
        (HOUR_MS, "h"),
        (MINUTE_MS, "m"),
        (SECOND_MS, "s"),
        (1, "ms"),
    ] {
        if ms >= unit_ms {
            write!(out, "{}{unit}", ms / unit_ms).unwrap();
            ms %= unit_ms;
        }
    }
    out
}

fn rate(text: &str) -> Rate {
    let (count, period) = text.split_once('/').expect("N/+period");
    Rate {
        count: count.parse().unwrap(),
        period_ms: offset(period) as u64,
    }
}

/// Runs one file; returns the file as it should read (expectations recomputed).
fn run_file(text: &str) -> String {
    let mut scenario = Scenario::new();
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        out.push_str(line);
        out.push('\n');
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if let Some(term) = trimmed.strip_prefix("plan term=") {
            // Skip the old expectation up to the blank line; write the actual one.
            while lines.peek().is_some_and(|l| !l.trim().is_empty()) {
                lines.next();
            }
            out.push_str(&scenario.plan(Term(term.parse().unwrap())));
            continue;
        }
        scenario.directive(trimmed);
    }
    out
}

#[test]
fn planner_golden_scenarios() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 8,
        "expected the golden scenarios in {}",
        dir.display()
    );
    let mut failures = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let actual = run_file(&text);
        if actual != text {
            if update {
                std::fs::write(&path, &actual).unwrap();
            } else {
                failures.push(format!("--- {}\n{}", path.display(), diff(&text, &actual)));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "golden mismatches (UPDATE_GOLDEN=1 rewrites them):\n{}",
        failures.join("\n")
    );
}

fn diff(expected: &str, actual: &str) -> String {
    let mut out = String::new();
    for (i, (e, a)) in expected.lines().zip(actual.lines()).enumerate() {
        if e != a {
            writeln!(out, "line {}:\n  expected: {e}\n  actual:   {a}", i + 1).unwrap();
        }
    }
    let (e, a) = (expected.lines().count(), actual.lines().count());
    if e != a {
        writeln!(out, "expected {e} lines, got {a}").unwrap();
    }
    out
}
