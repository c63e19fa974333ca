//! The replicated state and `apply`.
//!
//! `apply` is total and deterministic: the same log gives the same state on every node. Every
//! command is checked completely before anything is changed, so a rejected command leaves the
//! state exactly as it was (SIMULATION I2, I5). Committed time is clamped: the state clock is
//! the maximum `at` ever accepted (I12).

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::mem;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::budget::{BudgetKey, Budgets};
use crate::command::{
    AriWindow, Command, DEFER_BATCH_MAX, Failure, FailureClass, Op, Response, StepRef,
};
use crate::error::Rejection;
use crate::event::Event;
use crate::model::{
    Account, CertId, CertSpec, ChainId, Challenge, Cycle, IssuedCert, IssuerId, KeyRollover,
    Policy, RenewalReason, SealedBlob, Term, URL_LEN_MAX,
};
use crate::order::{OrderStep, Transition};
use crate::plan::{retry_at, schedule};
use crate::time::{UnixMillis, draw_below};

/// The largest leaf or intermediate certificate accepted, DER.
pub const CERT_DER_LEN_MAX: usize = 64 * 1024;
/// The most intermediates in a chain.
pub const CHAIN_LEN_MAX: usize = 8;
/// The most challenges one cycle publishes (one per identifier).
pub const CHALLENGES_MAX: usize = crate::model::IDENTIFIERS_MAX;
/// The longest challenge token accepted.
pub const TOKEN_LEN_MAX: usize = 256;

/// The whole replicated state of a cluster.
#[derive(Clone, Debug, Default)]
pub struct State {
    pub(crate) clock: UnixMillis,
    pub(crate) policy: Policy,
    pub(crate) accounts: BTreeMap<IssuerId, Account>,
    pub(crate) certs: BTreeMap<CertId, CertRecord>,
    pub(crate) chains: BTreeMap<ChainId, InternedChain>,
    pub(crate) budgets: Budgets,
    // Derived indexes, rebuilt on snapshot install, never digested.
    pub(crate) due: BTreeSet<(UnixMillis, CertId)>,
    pub(crate) open: BTreeSet<CertId>,
}

/// One managed certificate: its spec, its current certificate, its open cycle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertRecord {
    /// What to issue.
    pub spec: CertSpec,
    /// Seed for this certificate's jitter draws, from the `PutCert` that added it.
    pub seed: u64,
    /// When it was added.
    pub added_at: UnixMillis,
    /// The last cycle begun (0: never).
    pub cycle: Cycle,
    /// The open cycle, if an order is in progress (boxed: most records have none).
    pub open: Option<Box<OpenCycle>>,
    /// The certificate being served.
    pub current: Option<IssuedCert>,
    /// The spec changed since `current` was issued: renew now.
    pub spec_changed: bool,
    /// The spec's identifiers differ from those of `current`: the next certificate is not a
    /// renewal in Let's Encrypt's sense (same identifier set), so it counts against the
    /// per-domain budget.
    pub identifiers_changed: bool,
    /// Consecutive failed cycles.
    pub failures: u32,
    /// Not before this instant (backoff or the CA's `Retry-After`).
    pub retry_at: Option<UnixMillis>,
    /// The last failure, for operators (boxed: rare).
    pub last_failure: Option<Box<Failure>>,
    /// A budget blocks this certificate until then.
    pub deferred_until: Option<UnixMillis>,
    /// ARI state for the current certificate (boxed: only with CAs offering ARI).
    pub ari: Option<Box<AriState>>,
    // The due-index key this record is filed under (derived).
    #[serde(skip)]
    pub(crate) indexed_at: Option<UnixMillis>,
}

/// An order in progress (DESIGN §5).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenCycle {
    /// The cycle number.
    pub cycle: Cycle,
    /// The term that owns the cycle: only its steps are accepted.
    pub term: Term,
    /// When it began.
    pub begun_at: UnixMillis,
    /// Why.
    pub reason: RenewalReason,
    /// The committed step.
    pub step: OrderStep,
    /// No call to the CA for this order before this instant: a long `Retry-After` the CA sent
    /// inside the order, committed so a resuming leader honours it.
    pub not_before: UnixMillis,
}

/// What the CA said about renewing the current certificate (RFC 9773).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AriState {
    /// The cycle of the certificate this is about.
    pub cycle: Cycle,
    /// The last window received.
    pub window: Option<AriWindow>,
    /// The point chosen inside the window, once per window (DESIGN §6).
    pub chosen_at: Option<UnixMillis>,
    /// The next poll, at least `ari_poll_interval_ms` after the last.
    pub next_poll_at: UnixMillis,
}

/// Intermediates shared by many leaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InternedChain {
    /// DER certificates, leaf-most first.
    pub ders: Vec<Vec<u8>>,
    /// Leaves referring to it.
    pub refs: u64,
}

/// Applies one committed command. Total: every input gets an answer, none panics.
pub fn apply(state: &mut State, command: &Command) -> (Response, Vec<Event>) {
    let now = state.clock.max(command.at);
    let mut events = Vec::new();
    match state.apply_op(&command.op, now, &mut events) {
        Ok(()) => {
            state.clock = now;
            state.budgets.prune(now);
            (Response::Accepted, events)
        }
        Err(rejection) => {
            assert!(events.is_empty(), "a rejected command emitted events");
            (Response::Rejected(rejection), Vec::new())
        }
    }
}

impl State {
    /// An empty state with the default policy.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The committed clock: the latest `at` accepted.
    #[must_use]
    pub fn clock(&self) -> UnixMillis {
        self.clock
    }

    /// The policy in force.
    #[must_use]
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// One certificate.
    #[must_use]
    pub fn cert(&self, cert: &CertId) -> Option<&CertRecord> {
        self.certs.get(cert)
    }

    /// All certificates, by id.
    pub fn certs(&self) -> impl Iterator<Item = (&CertId, &CertRecord)> {
        self.certs.iter()
    }

    /// Number of managed certificates.
    #[must_use]
    pub fn cert_count(&self) -> usize {
        self.certs.len()
    }

    /// One issuer's account.
    #[must_use]
    pub fn account(&self, issuer: &IssuerId) -> Option<&Account> {
        self.accounts.get(issuer)
    }

    /// Every issuer's account.
    pub fn accounts(&self) -> impl Iterator<Item = (&IssuerId, &Account)> {
        self.accounts.iter()
    }

    /// The interned intermediates of a chain.
    #[must_use]
    pub fn chain(&self, id: &ChainId) -> Option<&[Vec<u8>]> {
        self.chains.get(id).map(|chain| chain.ders.as_slice())
    }

    /// The rate budgets.
    #[must_use]
    pub fn budgets(&self) -> &Budgets {
        &self.budgets
    }

    /// Certificates with an open cycle (bounded by `orders_in_flight_max`).
    pub fn open_cycles(&self) -> impl Iterator<Item = (&CertId, &OpenCycle)> {
        self.open
            .iter()
            .filter_map(|id| Some((id, self.certs.get(id)?.open.as_deref()?)))
    }

    /// Number of open cycles.
    #[must_use]
    pub fn open_count(&self) -> usize {
        self.open.len()
    }

    /// Every challenge the cluster must answer now (for a data plane rebuilding its maps).
    pub fn challenges(&self) -> impl Iterator<Item = (&CertId, &Challenge)> {
        self.open_cycles()
            .flat_map(|(id, open)| open.step.challenges().iter().map(move |c| (id, c)))
    }

    /// Due-index entries at or before `now`, earliest first.
    pub(crate) fn due_until(&self, now: UnixMillis) -> impl Iterator<Item = &(UnixMillis, CertId)> {
        self.due.iter().take_while(move |(at, _)| *at <= now)
    }

    /// The first due-index entry after `now`.
    pub(crate) fn due_after(&self, now: UnixMillis) -> Option<UnixMillis> {
        // Every key at or before `now` sorts below (now + 1, ""): a range query, O(log n),
        // whatever the number of certificates already due (SIMULATION I13).
        match self.due.first() {
            Some((at, _)) if *at > now => Some(*at), // nothing due: the common tick
            None => None,
            Some(_) => {
                let after = (now.plus_ms(1), CertId::min());
                self.due.range(after..).next().map(|(at, _)| *at)
            }
        }
    }

    /// SHA-256 over the canonical encoding of the replicated state (the snapshot records):
    /// equal on every replica that applied the same log (SIMULATION I4).
    #[must_use]
    pub fn digest(&self) -> [u8; 32] {
        let mut hasher = Sha256::new();
        crate::snapshot::for_each_record(self, |payload| hasher.update(payload));
        hasher.finalize().into()
    }

    fn apply_op(
        &mut self,
        op: &Op,
        now: UnixMillis,
        events: &mut Vec<Event>,
    ) -> Result<(), Rejection> {
        match op {
            Op::PutCert { spec, seed } => self.put_cert(spec, *seed, now, events),
            Op::RemoveCert { cert } => self.remove_cert(cert, now, events),
            Op::SetAccount { issuer, account } => self.set_account(issuer, account),
            Op::SetPolicy { policy } => self.set_policy(policy),
            Op::BeginOrder {
                cert,
                cycle,
                term,
                reason,
            } => self.begin_order(cert, *cycle, *term, *reason, now),
            Op::ResumeOrder { cert, cycle, term } => self.resume_order(cert, *cycle, *term, now),
            Op::OrderCreated {
                step,
                order_url,
                authorizations,
            } => {
                check_url("order URL", order_url)?;
                if authorizations.is_empty() || authorizations.len() > CHALLENGES_MAX {
                    return Err(invalid(format_args!(
                        "order has {} authorizations",
                        authorizations.len()
                    )));
                }
                for url in authorizations {
                    check_url("authorization URL", url)?;
                }
                self.advance(step, op, now, events)
            }
            Op::ChallengesPublished { step, challenges } => {
                let spec = &self.fenced(step)?.spec;
                check_challenges(spec, challenges)?;
                self.advance(step, op, now, events)
            }
            Op::KeyPrepared { step, key } => {
                key.check()
                    .map_err(|reason| Rejection::Invalid { reason })?;
                self.advance(step, op, now, events)
            }
            Op::Finalized { step } => self.advance(step, op, now, events),
            Op::CertIssued {
                step,
                leaf_der,
                chain_der,
                not_before,
                not_after,
                ari_id,
            } => {
                check_certificate(
                    leaf_der,
                    chain_der,
                    *not_before,
                    *not_after,
                    ari_id.as_deref(),
                )?;
                self.advance(step, op, now, events)
            }
            Op::OrderFailed { step, failure, .. } => {
                if self.late_retry_after(step, failure, now) {
                    return Ok(());
                }
                check_failure(&self.fenced(step)?.spec, failure)?;
                self.advance(step, op, now, events)
            }
            Op::RenewalInfoPolled {
                cert,
                cycle,
                window,
                retry_at,
                seed,
            } => self.renewal_info_polled(cert, *cycle, *window, *retry_at, *seed, now),
            Op::CertsDeferred { items } => self.certs_deferred(items, now),
            Op::OrderDeferred { step, until } => self.order_deferred(step, *until),
            Op::RollAccountKey {
                issuer,
                credentials,
            } => self.roll_account_key(issuer, credentials, now),
            Op::AccountKeyRolled {
                issuer,
                credentials,
            } => self.account_key_rolled(issuer, credentials, events),
            Op::AccountKeyRolloverRefused {
                issuer,
                credentials,
                detail,
            } => {
                if detail.len() > Failure::DETAIL_LEN_MAX {
                    return Err(invalid(format_args!(
                        "rollover refusal detail of {} bytes (at most {})",
                        detail.len(),
                        Failure::DETAIL_LEN_MAX
                    )));
                }
                self.rollover_in_progress(issuer, credentials)?;
                if let Some(account) = self.accounts.get_mut(issuer) {
                    account.rollover = None;
                }
                Ok(())
            }
        }
    }

    fn roll_account_key(
        &mut self,
        issuer: &IssuerId,
        credentials: &SealedBlob,
        now: UnixMillis,
    ) -> Result<(), Rejection> {
        credentials
            .check()
            .map_err(|reason| Rejection::Invalid { reason })?;
        let account = self
            .accounts
            .get_mut(issuer)
            .ok_or_else(|| Rejection::UnknownIssuer {
                issuer: issuer.clone(),
            })?;
        if account.account_url.is_none() {
            return Err(invalid(format_args!(
                "issuer {issuer}'s account is not registered at the CA: nothing to roll"
            )));
        }
        if account.credentials == *credentials {
            return Err(invalid(format_args!(
                "issuer {issuer}'s account already uses this key"
            )));
        }
        match &account.rollover {
            // A client repeating a request whose answer it lost.
            Some(rollover) if rollover.credentials == *credentials => Ok(()),
            // Replacing it could strand the key the CA may already hold.
            Some(rollover) => Err(invalid(format_args!(
                "issuer {issuer} has a key rollover in progress since {}: it must finish first",
                rollover.requested_at
            ))),
            None => {
                account.rollover = Some(KeyRollover {
                    credentials: credentials.clone(),
                    requested_at: now,
                });
                Ok(())
            }
        }
    }

    /// Fencing of a rollover's outcome: only the rollover in progress, with these credentials.
    fn rollover_in_progress(
        &self,
        issuer: &IssuerId,
        credentials: &SealedBlob,
    ) -> Result<(), Rejection> {
        let account = self
            .accounts
            .get(issuer)
            .ok_or_else(|| Rejection::UnknownIssuer {
                issuer: issuer.clone(),
            })?;
        match &account.rollover {
            Some(rollover) if rollover.credentials == *credentials => Ok(()),
            Some(_) => Err(invalid(format_args!(
                "issuer {issuer}'s key rollover in progress has other credentials"
            ))),
            None => Err(invalid(format_args!(
                "issuer {issuer} has no key rollover in progress"
            ))),
        }
    }

    fn account_key_rolled(
        &mut self,
        issuer: &IssuerId,
        credentials: &SealedBlob,
        events: &mut Vec<Event>,
    ) -> Result<(), Rejection> {
        self.rollover_in_progress(issuer, credentials)?;
        if let Some(account) = self.accounts.get_mut(issuer) {
            account.credentials = credentials.clone();
            account.rollover = None;
        }
        // Key authorizations name the account key (RFC 8555 §8.1): published ones now answer
        // for a key the CA no longer holds. Cycles that have not got past their challenges go
        // back to fetching authorizations, and publish again with the new key.
        for cert in &self.open {
            let Some(record) = self.certs.get_mut(cert) else {
                continue;
            };
            if record.spec.issuer != *issuer {
                continue;
            }
            let Some(open) = record.open.as_mut() else {
                continue;
            };
            if let OrderStep::ChallengesPublished { order, challenges } = &mut open.step {
                let withdrawn = mem::take(challenges);
                open.step = OrderStep::OrderCreated {
                    order: order.clone(),
                };
                events.extend(
                    withdrawn
                        .into_iter()
                        .map(|challenge| Event::ChallengeWithdrawn {
                            cert: cert.clone(),
                            challenge,
                        }),
                );
            }
        }
        Ok(())
    }

    fn put_cert(
        &mut self,
        spec: &CertSpec,
        seed: u64,
        now: UnixMillis,
        events: &mut Vec<Event>,
    ) -> Result<(), Rejection> {
        spec.check().map_err(invalid)?;
        if !self.accounts.contains_key(&spec.issuer) {
            return Err(Rejection::UnknownIssuer {
                issuer: spec.issuer.clone(),
            });
        }
        let id = spec.cert_id();
        let Some(record) = self.certs.get(&id) else {
            let record = CertRecord {
                spec: spec.clone(),
                seed,
                added_at: now,
                cycle: Cycle(0),
                open: None,
                current: None,
                spec_changed: false,
                identifiers_changed: false,
                failures: 0,
                retry_at: None,
                last_failure: None,
                deferred_until: None,
                ari: None,
                indexed_at: None,
            };
            self.certs.insert(id.clone(), record);
            self.reindex(&id);
            return Ok(());
        };
        if record.spec == *spec {
            return Ok(()); // idempotent: the same spec again changes nothing
        }
        // A wait the CA gave the open cycle (committed by `OrderDeferred`) outlives the cycle the
        // spec change closes (SIMULATION I9; found by the simulator, seed 223993684: a 503 with
        // a 60 s Retry-After on `newOrder`, the certificate modified, and the next cycle's
        // `newOrder` 58 s early).
        let open_wait = record.open.as_ref().map(|open| open.not_before);
        self.close_cycle(&id, now, events);
        let record = self.certs.get_mut(&id).expect("checked above");
        record.identifiers_changed |=
            record.current.is_some() && record.spec.identifiers != spec.identifiers;
        record.spec = spec.clone();
        record.spec_changed = record.current.is_some();
        record.failures = 0;
        // A new spec restarts our own backoff, but not the CA's: its last Retry-After still
        // holds (SIMULATION I9; found by the simulator, seed 68: a modification during a CA
        // outage sent `newOrder` 48 s before the CA's Retry-After).
        record.retry_at = record
            .last_failure
            .as_ref()
            .and_then(|f| f.retry_at)
            .max(open_wait)
            .filter(|at| *at > now);
        record.deferred_until = None;
        self.reindex(&id);
        Ok(())
    }

    fn remove_cert(
        &mut self,
        cert: &CertId,
        now: UnixMillis,
        events: &mut Vec<Event>,
    ) -> Result<(), Rejection> {
        if !self.certs.contains_key(cert) {
            return Err(Rejection::UnknownCert { cert: cert.clone() });
        }
        self.close_cycle(cert, now, events);
        self.unindex(cert);
        let record = self.certs.remove(cert).expect("checked above");
        if let Some(current) = &record.current {
            self.release_chain(&current.chain);
        }
        events.push(Event::CertRemoved { cert: cert.clone() });
        Ok(())
    }

    fn set_account(&mut self, issuer: &IssuerId, account: &Account) -> Result<(), Rejection> {
        IssuerId::parse(issuer.as_str()).map_err(invalid)?;
        check_url("directory URL", &account.directory_url)?;
        if let Some(url) = &account.account_url {
            check_url("account URL", url)?;
        }
        if account.contact.len() > 10 {
            return Err(invalid("more than 10 contacts"));
        }
        if let Some(bad) = account
            .contact
            .iter()
            .find(|c| !c.starts_with("mailto:") || c.len() > 320)
        {
            return Err(invalid(format_args!(
                "contact {bad:?} is not a mailto: URI"
            )));
        }
        account
            .credentials
            .check()
            .map_err(|reason| Rejection::Invalid { reason })?;
        if account.rollover.is_some() {
            return Err(invalid(
                "an account is set without a key rollover (RollAccountKey begins one)",
            ));
        }
        if let Some(old) = self.accounts.get(issuer)
            && old.rollover.is_some()
            && old.account_url == account.account_url
        {
            // The CA may already hold the new key: dropping it could lock the account out.
            return Err(invalid(format_args!(
                "issuer {issuer}'s account has a key rollover in progress: it must finish first"
            )));
        }
        self.accounts.insert(issuer.clone(), account.clone());
        Ok(())
    }

    fn set_policy(&mut self, policy: &Policy) -> Result<(), Rejection> {
        policy.check().map_err(invalid)?;
        self.policy = policy.clone();
        // Renewal points depend on the policy: refile every certificate (rare, O(n)).
        let ids: Vec<CertId> = self.certs.keys().cloned().collect();
        for id in &ids {
            self.reindex(id);
        }
        Ok(())
    }

    fn begin_order(
        &mut self,
        cert: &CertId,
        cycle: Cycle,
        term: Term,
        reason: RenewalReason,
        now: UnixMillis,
    ) -> Result<(), Rejection> {
        let record = self
            .certs
            .get(cert)
            .ok_or_else(|| Rejection::UnknownCert { cert: cert.clone() })?;
        if let Some(open) = &record.open {
            return Err(Rejection::CycleOpen {
                cert: cert.clone(),
                cycle: open.cycle,
            });
        }
        if cycle != record.cycle.next() {
            return Err(Rejection::WrongCycle {
                cert: cert.clone(),
                expected: record.cycle.next(),
                got: cycle,
            });
        }
        let issuer = &record.spec.issuer;
        let account = self
            .accounts
            .get(issuer)
            .ok_or_else(|| Rejection::UnknownIssuer {
                issuer: issuer.clone(),
            })?;
        if let Some(until) = account.throttled_until.filter(|until| *until > now) {
            return Err(Rejection::IssuerThrottled {
                issuer: issuer.clone(),
                until,
            });
        }
        if let Err((key, available_at)) = admit(&self.budgets, &self.policy, record, now, None) {
            return Err(Rejection::BudgetExhausted { key, available_at });
        }
        for (key, rate) in reservations(&self.policy, record) {
            self.budgets.consume(&key, rate, now);
        }
        let record = self.certs.get_mut(cert).expect("checked above");
        // A cycle begun while its certificate is under a Retry-After starts by waiting it out.
        // The planner never begins one then, but its intent can meet a failure committed in
        // between (CI seed 119046499: a spec change closed the cycle, the late 503 with its
        // 60 s Retry-After landed after the new cycle was planned, and `newOrder` went out
        // 170 ms after the 503).
        let not_before = record
            .retry_at
            .filter(|at| *at > now)
            .unwrap_or(UnixMillis::ZERO);
        record.cycle = cycle;
        record.deferred_until = None;
        record.open = Some(Box::new(OpenCycle {
            cycle,
            term,
            begun_at: now,
            reason,
            step: OrderStep::Begun,
            not_before,
        }));
        self.open.insert(cert.clone());
        self.reindex(cert);
        Ok(())
    }

    fn resume_order(
        &mut self,
        cert: &CertId,
        cycle: Cycle,
        term: Term,
        now: UnixMillis,
    ) -> Result<(), Rejection> {
        let record = self
            .certs
            .get_mut(cert)
            .ok_or_else(|| Rejection::UnknownCert { cert: cert.clone() })?;
        let open = record
            .open
            .as_mut()
            .ok_or_else(|| Rejection::NoOpenCycle { cert: cert.clone() })?;
        if open.cycle != cycle {
            return Err(Rejection::WrongCycle {
                cert: cert.clone(),
                expected: open.cycle,
                got: cycle,
            });
        }
        if term <= open.term {
            return Err(Rejection::TermNotNewer {
                cert: cert.clone(),
                term,
                owner: open.term,
            });
        }
        open.term = term;
        // Resumed before its order URL was committed, the cycle calls `newOrder` again, and the
        // CA counts every order it creates (the lost leader's may exist): the resumer takes
        // another new-orders token and waits for one. Found by the days run (seed 2): 960
        // certificates imported at exactly 300 orders per 3 hours, leaders lost mid-import,
        // and the CA answered 429.
        if matches!(open.step, OrderStep::Begun) {
            let key = BudgetKey::NewOrders {
                issuer: record.spec.issuer.clone(),
            };
            let rate = self.policy.new_orders;
            let available = self.budgets.available_at(&key, rate);
            self.budgets.consume(&key, rate, now);
            open.not_before = open.not_before.max(available);
        }
        Ok(())
    }

    /// The fencing check of DESIGN §5: the cycle is open, is the one named, and belongs to the
    /// proposing term.
    /// A failure of the certificate's last cycle that arrives after a spec change or removal
    /// closed it: nothing is left to advance, but a `Retry-After` it carries is still the CA's
    /// word and holds the next cycle (SIMULATION I9; found by the simulator, seed 223993684:
    /// `newOrder` got a 503 with a 60 s Retry-After, a modification closed the cycle before the
    /// failure was committed, the failure was refused, and the next cycle called `newOrder` 58 s
    /// early). It can only lengthen a wait. Returns whether the command was taken this way.
    fn late_retry_after(&mut self, step: &StepRef, failure: &Failure, now: UnixMillis) -> bool {
        let Some(until) = failure.retry_at.filter(|until| *until > now) else {
            return false;
        };
        let Some(record) = self.certs.get_mut(&step.cert) else {
            return false;
        };
        if record.open.is_some() || record.cycle != step.cycle {
            return false;
        }
        record.retry_at = Some(record.retry_at.map_or(until, |at| at.max(until)));
        self.reindex(&step.cert);
        true
    }

    fn fenced(&self, step: &StepRef) -> Result<&CertRecord, Rejection> {
        let cert = &step.cert;
        let record = self
            .certs
            .get(cert)
            .ok_or_else(|| Rejection::UnknownCert { cert: cert.clone() })?;
        let open = record
            .open
            .as_ref()
            .ok_or_else(|| Rejection::NoOpenCycle { cert: cert.clone() })?;
        if open.cycle != step.cycle {
            return Err(Rejection::WrongCycle {
                cert: cert.clone(),
                expected: open.cycle,
                got: step.cycle,
            });
        }
        if open.term != step.term {
            return Err(Rejection::StaleTerm {
                cert: cert.clone(),
                cycle: open.cycle,
                term: step.term,
                owner: open.term,
            });
        }
        Ok(record)
    }

    /// Moves a fenced cycle one step (content already checked), with the step's effects.
    fn advance(
        &mut self,
        step: &StepRef,
        op: &Op,
        now: UnixMillis,
        events: &mut Vec<Event>,
    ) -> Result<(), Rejection> {
        self.fenced(step)?;
        let cert = &step.cert;
        let record = self.certs.get_mut(cert).expect("fenced");
        let open = record.open.as_mut().expect("fenced");
        let committed = mem::replace(&mut open.step, OrderStep::Begun);
        let transition = match committed.advance(op) {
            Ok(transition) => transition,
            Err((committed, got)) => {
                let at = committed.name();
                open.step = committed;
                return Err(Rejection::OutOfOrder {
                    cert: cert.clone(),
                    at,
                    got,
                });
            }
        };
        match transition {
            Transition::Open(next) => {
                if let Op::ChallengesPublished { challenges, .. } = op {
                    for challenge in challenges {
                        events.push(Event::ChallengePublished {
                            cert: cert.clone(),
                            challenge: challenge.clone(),
                        });
                    }
                }
                open.step = next;
            }
            Transition::Issued(last) => {
                // `advance` issues only from Finalized, which always holds the committed key.
                let key = last.key().cloned().expect("Finalized holds a key");
                open.step = last;
                let Op::CertIssued {
                    leaf_der,
                    chain_der,
                    not_before,
                    not_after,
                    ari_id,
                    ..
                } = op
                else {
                    unreachable!("advance issues only on CertIssued");
                };
                let chain = self.intern_chain(chain_der);
                let issued = IssuedCert {
                    cycle: step.cycle,
                    leaf_der: leaf_der.clone(),
                    chain,
                    key,
                    not_before: *not_before,
                    not_after: *not_after,
                    issued_at: now,
                    ari_id: ari_id.clone(),
                };
                self.finish_cycle(cert, events);
                let record = self.certs.get_mut(cert).expect("fenced");
                let old = record.current.replace(issued);
                record.spec_changed = false;
                record.identifiers_changed = false;
                record.failures = 0;
                record.retry_at = None;
                record.last_failure = None;
                record.ari = None;
                if let Some(old) = old {
                    self.release_chain(&old.chain);
                }
                events.push(Event::CertActivated {
                    cert: cert.clone(),
                    not_after: *not_after,
                });
            }
            Transition::Failed(last) => {
                let Op::OrderFailed { failure, seed, .. } = op else {
                    unreachable!("advance fails only on OrderFailed");
                };
                let refund = !matches!(last, OrderStep::Finalized { .. });
                open.step = last;
                if refund {
                    self.refund_reservations(cert, now);
                }
                self.finish_cycle(cert, events);
                for identifier in &failure.failed_identifiers {
                    let issuer = self.certs[cert].spec.issuer.clone();
                    let key = BudgetKey::FailedAuthz {
                        issuer,
                        identifier: identifier.value(),
                    };
                    self.budgets.consume(&key, self.policy.failed_authz, now);
                }
                let record = self.certs.get_mut(cert).expect("fenced");
                record.failures = record.failures.saturating_add(1);
                let not_after = record.current.as_ref().map(|c| c.not_after);
                record.retry_at = Some(retry_at(
                    cert,
                    record.seed ^ seed,
                    record.failures,
                    now,
                    not_after,
                    failure.retry_at,
                ));
                record.last_failure = Some(Box::new(failure.clone()));
                if failure.account_wide
                    && failure.class == FailureClass::RateLimited
                    && let (Some(until), Some(account)) =
                        (failure.retry_at, self.accounts.get_mut(&record.spec.issuer))
                {
                    account.throttled_until =
                        Some(account.throttled_until.map_or(until, |t| t.max(until)));
                }
            }
        }
        self.reindex(cert);
        Ok(())
    }

    fn renewal_info_polled(
        &mut self,
        cert: &CertId,
        cycle: Cycle,
        window: Option<AriWindow>,
        retry_at: Option<UnixMillis>,
        seed: u64,
        now: UnixMillis,
    ) -> Result<(), Rejection> {
        let record = self
            .certs
            .get(cert)
            .ok_or_else(|| Rejection::UnknownCert { cert: cert.clone() })?;
        let current_cycle = record.current.as_ref().map_or(Cycle(0), |c| c.cycle);
        if current_cycle != cycle || record.current.is_none() {
            return Err(Rejection::StaleRenewalInfo {
                cert: cert.clone(),
                got: cycle,
                current: current_cycle,
            });
        }
        if let Some(w) = window.filter(|w| w.end <= w.start) {
            return Err(invalid(format_args!(
                "ARI window ends ({}) before it starts ({})",
                w.end, w.start
            )));
        }
        let interval_ms = self.policy.ari_poll_interval_ms;
        let record = self.certs.get_mut(cert).expect("checked above");
        let previous = record.ari.take().filter(|a| a.cycle == cycle);
        let chosen_at = match (window, &previous) {
            // The same window again keeps its committed point (chosen once, DESIGN §6).
            (Some(w), Some(prev)) if prev.window == Some(w) => prev.chosen_at,
            (Some(w), _) => Some(w.start.plus_ms(draw_below(
                seed,
                cert.as_str().as_bytes(),
                cycle.0,
                w.end.ms_since(w.start),
            ))),
            (None, Some(prev)) => prev.chosen_at,
            (None, None) => None,
        };
        let next_poll_at = now
            .plus_ms(interval_ms)
            .max(retry_at.unwrap_or(UnixMillis::ZERO));
        let window = window.or(previous.and_then(|p| p.window));
        record.ari = Some(Box::new(AriState {
            cycle,
            window,
            chosen_at,
            next_poll_at,
        }));
        self.reindex(cert);
        Ok(())
    }

    fn certs_deferred(
        &mut self,
        items: &[(CertId, UnixMillis)],
        now: UnixMillis,
    ) -> Result<(), Rejection> {
        if items.len() > DEFER_BATCH_MAX {
            return Err(invalid(format_args!(
                "{} deferrals exceed the batch limit of {DEFER_BATCH_MAX}",
                items.len()
            )));
        }
        // Entries for certificates removed or started since the planner looked are skipped:
        // the batch is advice, and skipping is deterministic.
        for (cert, until) in items {
            let Some(record) = self.certs.get_mut(cert) else {
                continue;
            };
            if record.open.is_some() || *until <= now {
                continue;
            }
            record.deferred_until = Some(record.deferred_until.map_or(*until, |d| d.max(*until)));
            self.reindex(cert);
        }
        Ok(())
    }

    fn order_deferred(&mut self, step: &StepRef, until: UnixMillis) -> Result<(), Rejection> {
        self.fenced(step)?;
        let open = self
            .certs
            .get_mut(&step.cert)
            .and_then(|r| r.open.as_mut())
            .expect("fenced");
        // Never earlier than a wait committed before: a later, shorter Retry-After does not
        // cancel an earlier, longer one.
        open.not_before = open.not_before.max(until);
        Ok(())
    }

    /// Closes an open cycle without an outcome (removal, spec change), refunding what the
    /// order had reserved unless the CA may already have issued.
    fn close_cycle(&mut self, cert: &CertId, now: UnixMillis, events: &mut Vec<Event>) {
        let Some(open) = self.certs.get(cert).and_then(|r| r.open.as_ref()) else {
            return;
        };
        if !matches!(open.step, OrderStep::Finalized { .. }) {
            self.refund_reservations(cert, now);
        }
        self.finish_cycle(cert, events);
        self.reindex(cert);
    }

    /// Drops the open cycle and withdraws its challenges.
    fn finish_cycle(&mut self, cert: &CertId, events: &mut Vec<Event>) {
        let record = self.certs.get_mut(cert).expect("caller checked");
        let open = record.open.take().expect("caller checked");
        for challenge in open.step.challenges() {
            events.push(Event::ChallengeWithdrawn {
                cert: cert.clone(),
                challenge: challenge.clone(),
            });
        }
        self.open.remove(cert);
    }

    fn refund_reservations(&mut self, cert: &CertId, now: UnixMillis) {
        for (key, rate) in reservations(&self.policy, &self.certs[cert]) {
            if !matches!(key, BudgetKey::NewOrders { .. }) {
                self.budgets.refund(&key, rate, now);
            }
        }
    }

    fn intern_chain(&mut self, ders: &[Vec<u8>]) -> ChainId {
        let id = chain_id(ders);
        let chain = self.chains.entry(id).or_insert_with(|| InternedChain {
            ders: ders.to_vec(),
            refs: 0,
        });
        chain.refs += 1;
        id
    }

    fn release_chain(&mut self, id: &ChainId) {
        let chain = self
            .chains
            .get_mut(id)
            .expect("a served certificate's chain is interned");
        chain.refs -= 1;
        if chain.refs == 0 {
            self.chains.remove(id);
        }
    }

    /// Files a certificate in the due index under its current schedule.
    pub(crate) fn reindex(&mut self, cert: &CertId) {
        self.unindex(cert);
        let Some(record) = self.certs.get(cert) else {
            return;
        };
        let Some(at) = schedule(cert, record, &self.policy).map(|s| s.wake_at()) else {
            return;
        };
        self.due.insert((at, cert.clone()));
        self.certs.get_mut(cert).expect("present").indexed_at = Some(at);
    }

    fn unindex(&mut self, cert: &CertId) {
        let Some(record) = self.certs.get_mut(cert) else {
            return;
        };
        if let Some(at) = record.indexed_at.take() {
            let removed = self.due.remove(&(at, cert.clone()));
            assert!(removed, "due index out of step with record {cert}");
        }
    }
}

/// Checks every budget a new order of `record` needs at `now`. On failure names the blocking
/// budget with the latest availability. `overlay` holds reservations the planner already made
/// in this tick.
pub(crate) fn admit(
    budgets: &Budgets,
    policy: &Policy,
    record: &CertRecord,
    now: UnixMillis,
    overlay: Option<&BTreeMap<BudgetKey, UnixMillis>>,
) -> Result<(), (BudgetKey, UnixMillis)> {
    let empty = BTreeMap::new();
    let overlay = overlay.unwrap_or(&empty);
    let mut blocked: Option<(BudgetKey, UnixMillis)> = None;
    let spec = &record.spec;
    let checks = reservations(policy, record)
        .into_iter()
        .chain(spec.identifiers.iter().map(|identifier| {
            let key = BudgetKey::FailedAuthz {
                issuer: spec.issuer.clone(),
                identifier: identifier.value(),
            };
            (key, policy.failed_authz)
        }));
    for (key, rate) in checks {
        let available_at = budgets.available_at_with(overlay, &key, rate);
        if available_at > now && blocked.as_ref().is_none_or(|(_, at)| available_at > *at) {
            blocked = Some((key, available_at));
        }
    }
    blocked.map_or(Ok(()), Err)
}

/// The budgets a new order consumes: one new order, one certificate for the exact identifier
/// set, and one per registered domain unless it is a renewal (the last two are refunded if no
/// certificate results).
///
/// Let's Encrypt's "renewal exemption": a certificate with exactly the identifier set of a
/// previously issued one does not count against Certificates per Registered Domain, but does
/// count as a duplicate (https://letsencrypt.org/docs/rate-limits/). Without it, 25 six-day
/// certificates under one domain (58 renewals a week) would be starved by the 50 a week limit.
pub(crate) fn reservations(
    policy: &Policy,
    record: &CertRecord,
) -> Vec<(BudgetKey, crate::budget::Rate)> {
    let spec = &record.spec;
    let renewal = record.current.is_some() && !record.identifiers_changed;
    let issuer = &spec.issuer;
    let mut keys = Vec::with_capacity(2 + spec.identifiers.len());
    keys.push((
        BudgetKey::NewOrders {
            issuer: issuer.clone(),
        },
        policy.new_orders,
    ));
    let domains = if renewal {
        Vec::new()
    } else {
        spec.budget_domains()
    };
    for domain in domains {
        keys.push((
            BudgetKey::CertsPerDomain {
                issuer: issuer.clone(),
                domain,
            },
            policy.certs_per_domain,
        ));
    }
    keys.push((
        BudgetKey::CertsPerSet {
            issuer: issuer.clone(),
            set: spec.identifier_set(),
        },
        policy.certs_per_set,
    ));
    keys
}

/// The id of an intermediate chain: SHA-256 over length-prefixed DER blocks.
#[must_use]
pub fn chain_id(ders: &[Vec<u8>]) -> ChainId {
    let mut hasher = Sha256::new();
    for der in ders {
        hasher.update((der.len() as u64).to_le_bytes());
        hasher.update(der);
    }
    ChainId(hasher.finalize().into())
}

fn invalid(reason: impl ToString) -> Rejection {
    Rejection::Invalid {
        reason: reason.to_string(),
    }
}

fn check_url(what: &str, url: &str) -> Result<(), Rejection> {
    let scheme_ok = url.starts_with("https://") || url.starts_with("http://");
    if !scheme_ok || url.len() > URL_LEN_MAX || url.chars().any(|c| c.is_control() || c == ' ') {
        let shown: String = url.chars().take(80).collect();
        return Err(invalid(format_args!(
            "{what} {shown:?} is not an http(s) URL of at most {URL_LEN_MAX} bytes"
        )));
    }
    Ok(())
}

fn check_challenges(spec: &CertSpec, challenges: &[Challenge]) -> Result<(), Rejection> {
    if challenges.len() > spec.identifiers.len() {
        return Err(invalid(format_args!(
            "{} challenges for {} identifiers",
            challenges.len(),
            spec.identifiers.len()
        )));
    }
    for challenge in challenges {
        if !spec.identifiers.contains(&challenge.identifier) {
            return Err(invalid(format_args!(
                "challenge for {} which the certificate does not hold",
                challenge.identifier
            )));
        }
        // Tokens become URL paths and file names on every node: base64url only (RFC 8555 §8.1).
        let token = &challenge.token;
        let base64url = |s: &str| {
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if token.is_empty() || token.len() > TOKEN_LEN_MAX || !base64url(token) {
            let shown: String = token.chars().take(80).collect();
            return Err(invalid(format_args!(
                "challenge token {shown:?} is not base64url"
            )));
        }
        let thumbprint = challenge
            .key_authorization
            .strip_prefix(token.as_str())
            .and_then(|rest| rest.strip_prefix('.'));
        if !thumbprint.is_some_and(|t| !t.is_empty() && t.len() <= 128 && base64url(t)) {
            return Err(invalid(format_args!(
                "key authorization for token {token} is not token.thumbprint (RFC 8555 §8.1)"
            )));
        }
        check_url("challenge URL", &challenge.url)?;
    }
    let mut tokens: Vec<&str> = challenges.iter().map(|c| c.token.as_str()).collect();
    tokens.sort_unstable();
    if tokens.windows(2).any(|w| w[0] == w[1]) {
        return Err(invalid("two challenges share a token"));
    }
    Ok(())
}

fn check_certificate(
    leaf: &[u8],
    chain: &[Vec<u8>],
    not_before: UnixMillis,
    not_after: UnixMillis,
    ari_id: Option<&str>,
) -> Result<(), Rejection> {
    if leaf.is_empty() || leaf.len() > CERT_DER_LEN_MAX {
        return Err(invalid(format_args!(
            "leaf certificate of {} bytes",
            leaf.len()
        )));
    }
    if chain.len() > CHAIN_LEN_MAX
        || chain
            .iter()
            .any(|der| der.is_empty() || der.len() > CERT_DER_LEN_MAX)
    {
        return Err(invalid(format_args!(
            "chain of {} certificates is empty or oversize",
            chain.len()
        )));
    }
    if not_after <= not_before {
        return Err(invalid(format_args!(
            "certificate expires ({not_after}) before it starts ({not_before})"
        )));
    }
    if ari_id.is_some_and(|id| id.is_empty() || id.len() > 512) {
        return Err(invalid(
            "ARI certificate id is empty or longer than 512 bytes",
        ));
    }
    Ok(())
}

fn check_failure(spec: &CertSpec, failure: &Failure) -> Result<(), Rejection> {
    if failure.detail.len() > Failure::DETAIL_LEN_MAX
        || failure.problem.as_ref().is_some_and(|p| p.len() > 256)
    {
        return Err(invalid("failure detail or problem type too long"));
    }
    if let Some(id) = failure
        .failed_identifiers
        .iter()
        .find(|id| !spec.identifiers.contains(id))
    {
        return Err(invalid(format_args!(
            "failed identifier {id} is not on the certificate"
        )));
    }
    Ok(())
}

/// The secret parts of a sealed key are never printed; this helper exists for tests that want
/// a syntactically valid blob.
#[doc(hidden)]
#[must_use]
pub fn test_sealed_blob(fill: u8) -> SealedBlob {
    let mut bytes = SealedBlob::MAGIC.to_vec();
    bytes.resize(SealedBlob::LEN_MIN + 32, fill);
    SealedBlob::new(bytes).expect("valid envelope")
}

#[cfg(test)]
mod tests;
