//! The simulated CA: the core's model CA behind the node's [`Acme`] trait, with what a real
//! CA adds that the checkers need (SIMULATION "Faults: CA").
//!
//! * **Its own clock.** The CA stamps certificates and rate limits with true (simulated) time;
//!   the leader's clock, skewed, only turns a `Retry-After` into the instant it reports back,
//!   as a real adapter does with the relative header.
//! * **Let's Encrypt-like limits**, kept independently of the cluster's budgets (a GCRA per
//!   account for new orders, per identifier set for duplicate certificates). A 429 from a limit
//!   is certfleet's own pacing failing (I8).
//! * **Retry-After bookkeeping**: a request for a resource before the `Retry-After` it last
//!   received is an I9 violation.
//! * **Validation through the load balancer**: marking a challenge ready makes the CA ask one
//!   node, picked from the seed, for the answer, reading that node's applied state (I7). A miss
//!   fails the authorization, as it would at a real CA.
//! * **Injected faults**: downtime windows (503 with `Retry-After`), 429 bursts, invalid
//!   authorizations, lost finalize responses; and a hook that kills the leader inside a protocol
//!   window, for the harness to act on.
//!
//! The wire-level RFC 8555 CA that instant-acme talks to replaces the model underneath with
//! issue #5; the books and checks here stay.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use certfleet::node::{Acme, Clock, RolloverOutcome, SystemClock};
use certfleet::raft::StateMachineStore;
use certfleet::raft::types::TypeConfig;
use certfleet_core::budget::Rate;
use certfleet_core::command::AriWindow;
use certfleet_core::model::{IssuerId, SealedBlob};
use certfleet_core::order::{Action, CaError, Outcome};
use certfleet_core::testing::{ISSUER, ModelCa};
use certfleet_core::time::mix;
use certfleet_core::{CertId, Cycle, UnixMillis};
use openraft::Raft;

/// A protocol window in which the harness may kill the leader (SIMULATION "Process").
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Window {
    /// After the CA created the order, before `OrderCreated` commits.
    AfterNewOrder,
    /// After `ChallengesPublished` committed and the CA was told they are ready.
    AfterChallengesReady,
    /// After the CA finalized the order, before `CertIssued` commits.
    AfterFinalize,
    /// After the CA bound the account to a new key, before `AccountKeyRolled` commits. Not an
    /// order window: not in [`Window::ALL`], and drawn only for runs that roll the key.
    AfterKeyChange,
}

impl Window {
    /// Every order window.
    pub const ALL: [Self; 3] = [
        Self::AfterNewOrder,
        Self::AfterChallengesReady,
        Self::AfterFinalize,
    ];

    /// A short name for traces.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::AfterNewOrder => "after-new-order",
            Self::AfterChallengesReady => "after-challenges-ready",
            Self::AfterFinalize => "after-finalize",
            Self::AfterKeyChange => "after-key-change",
        }
    }
}

/// A request to kill the leader now: the CA has just done `window`'s call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KillRequest {
    /// The window.
    pub window: Window,
    /// The order the call was about (for "the next leader resumes the same order").
    pub order_url: String,
}

/// Faults the CA injects, from the seed.
#[derive(Clone, Debug, Default)]
pub struct CaFaultPlan {
    /// Downtime windows, in true time: every call answers 503 with a `Retry-After`.
    pub down: Vec<(UnixMillis, UnixMillis)>,
    /// From each instant, the next `newOrder` gets an account-wide 429 with this `Retry-After`
    /// (ms).
    pub rate_limited: Vec<(UnixMillis, u64)>,
    /// Orders whose authorizations the CA makes invalid.
    pub invalid_authz: u32,
    /// Finalize responses the CA loses (it did finalize).
    pub lost_finalize: u32,
    /// Leader kills to request, one per window in order, each at the first matching call.
    pub kills: Vec<Window>,
    /// Nodes each validation asks (Let's Encrypt's multi-perspective validation); all must
    /// answer.
    pub perspectives: u64,
    /// Finalized orders stay `processing` this long.
    pub processing_ms: u64,
    /// Authorizations of identifiers validated before come back `valid`.
    pub reuse_authz: bool,
    /// The intermediate chain changes every this many issuances (0: never).
    pub chain_every: u64,
    /// Certificates carry ARI ids (orders then name the one they replace) and renewal info
    /// is served.
    pub ari: bool,
    /// ARI windows move between polls.
    pub ari_moves: bool,
    /// ARI polls answered "renew now".
    pub ari_renew_now: u32,
    /// An identifier set's last order comes back while `pending` or `ready`.
    pub reuse_orders: bool,
    /// Validation happens up to this long after `MarkReady`, each perspective at its own
    /// moment (0: at once).
    pub late_validation_ms: u64,
    /// Per mille of calls that fail with a 500 or a connection reset.
    pub flaky_permille: u64,
}

/// One perspective's validation of a challenge, due later (`late_validation_ms`).
#[derive(Clone, Debug)]
struct LateCheck {
    due: UnixMillis,
    url: String,
    members_behind: u32,
    /// Keys the account had had when the CA was told the challenge is ready.
    keys_at_ready: usize,
}

/// A node the load balancer can send the CA's validation request to.
#[derive(Clone, Debug)]
pub struct Backend {
    /// The node's applied state.
    pub state_machine: StateMachineStore,
    /// True time its process started.
    pub started_at: UnixMillis,
}

/// What the CA saw: the books the invariants read.
#[derive(Clone, Debug, Default)]
pub struct CaBooks {
    /// Orders created per (certificate, cycle) (I1).
    pub orders_by_cycle: BTreeMap<(CertId, Cycle), u64>,
    /// Orders created.
    pub orders: u64,
    /// Validation requests sent to nodes.
    pub validations: u64,
    /// Misses after the leader went ahead of lagging members (counted, allowed: I7).
    pub misses_after_timeout: u64,
    /// Misses at a node that restarted after acknowledging (counted, allowed: I7).
    pub misses_after_restart: u64,
    /// Misses of a challenge no node holds any more: a deposed leader's late call (counted,
    /// allowed: I7).
    pub misses_withdrawn: u64,
    /// Misses nothing excuses (I7 violations).
    pub misses: Vec<String>,
    /// 429s from the CA's limits, not injected (I8 violations).
    pub pacing_429s: Vec<String>,
    /// Requests before a received `Retry-After` (I9 violations).
    pub early_requests: Vec<String>,
    /// Requests shortly after an account-wide `Retry-After` was sent, while the cluster could
    /// not yet know of it (other cycles' calls already under way; counted, allowed).
    pub early_requests_in_flight: u64,
    /// Requests before a Retry-After that another leadership received: one deposed or cut off
    /// before it could commit it, or one newer than the (deposed, unaware) caller.
    pub early_requests_lost_with_leader: u64,
    /// Injected faults that fired, by kind.
    pub faults_fired: BTreeMap<&'static str, u64>,
    /// Kill requests made.
    pub kills: Vec<KillRequest>,
    /// The term of the caller of each account key change the CA made (a repeated request for
    /// a key already bound counts too: it is how a leader finishes a rollover its predecessor
    /// began).
    pub key_changes: Vec<u64>,
    /// Keys the account has had, the registered one included.
    pub account_keys: u64,
    /// Calls refused because they were signed with a key that is not the account's.
    pub wrong_key_calls: Vec<String>,
    /// Validations that found no answer because the account key changed after the CA was
    /// told the challenge was ready (and before it looked).
    pub misses_after_key_change: u64,
}

/// How long after restarting a node may miss a challenge it acknowledged before (its own
/// replay may be behind the acknowledgment it gave in its previous life). The leader's apply
/// wait plus the time to mark ready.
pub const RESTART_EXCUSE_MS: u64 = 5_000;
/// How long other cycles' calls already under way may follow an account-wide 429: the 429
/// reaches the rest of the cluster through a commit (one write deadline).
pub const RETRY_AFTER_PROPAGATION_MS: u64 = 6_000;

/// A CA outage at least this long counts as a long one (`ca-down-long`): longer than a
/// certificate's renewal window, so certificates expire during it and all come due at once.
pub const LONG_OUTAGE_MS: u64 = 15 * 60 * 1000;

/// The simulated CA.
pub struct SimCa {
    inner: Mutex<Inner>,
    kill_tx: tokio::sync::mpsc::UnboundedSender<KillRequest>,
}

struct Inner {
    model: ModelCa,
    faults: CaFaultPlan,
    new_orders: Rate,
    certs_per_set: Rate,
    /// GCRA arrival times, per limit key.
    arrivals: BTreeMap<String, UnixMillis>,
    /// Retry-After instants (true time) handed out, per resource: until when, whether
    /// account-wide, and the leadership of the caller it was sent to.
    blocked_until: BTreeMap<String, (UnixMillis, bool, Leadership, UnixMillis)>,
    /// The caller's own clock reading for the current call (what it turns a `Retry-After`
    /// into an instant with).
    caller_now: UnixMillis,
    /// Who makes the current call.
    caller: Leadership,
    /// When each node last resumed from a pause (true time).
    resumed: BTreeMap<u64, UnixMillis>,
    /// Set for the final convergence check: calls wait, unanswered.
    frozen: bool,
    backends: BTreeMap<u64, Backend>,
    /// Nodes out of the membership, hence of the load balancer.
    withdrawn: std::collections::BTreeSet<u64>,
    seed: u64,
    picks: u64,
    /// True time the CA started (traces show times relative to it).
    origin: UnixMillis,
    skew_ms_max: u64,
    books: CaBooks,
    /// Validations told of and not yet done, in the order they fall due.
    late: Vec<LateCheck>,
    /// Draws of the flaky fault so far.
    flaky_draws: u64,
    /// `CERTFLEET_SIM_VERBOSE` was set: every call is logged (read once, not at every call).
    verbose: bool,
}

impl std::fmt::Debug for SimCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimCa").finish_non_exhaustive()
    }
}

impl SimCa {
    /// A CA issuing `lifetime_ms` certificates, limiting new orders and duplicate certificates
    /// to the given rates, injecting `faults`; kill requests go to `kill_tx`. Requests up to
    /// `skew_ms_max` early count as on time (the leader's clock may be that far ahead).
    #[must_use]
    pub fn new(
        lifetime_ms: u64,
        limits: (Rate, Rate),
        faults: CaFaultPlan,
        seed: u64,
        skew_ms_max: u64,
        kill_tx: tokio::sync::mpsc::UnboundedSender<KillRequest>,
    ) -> Self {
        let mut model = ModelCa::new(lifetime_ms);
        model.faults.invalid_authz = faults.invalid_authz;
        model.faults.lose_finalize_response = faults.lost_finalize;
        model.faults.processing_ms = faults.processing_ms;
        model.faults.reuse_authz = faults.reuse_authz;
        model.faults.chain_every = faults.chain_every;
        model.faults.ari_moves = faults.ari_moves;
        model.faults.ari_renew_now = faults.ari_renew_now;
        model.faults.reuse_orders = faults.reuse_orders;
        model.ari = faults.ari;
        Self {
            inner: Mutex::new(Inner {
                model,
                faults,
                new_orders: limits.0,
                certs_per_set: limits.1,
                arrivals: BTreeMap::new(),
                blocked_until: BTreeMap::new(),
                caller_now: UnixMillis::ZERO,
                caller: Leadership::default(),
                resumed: BTreeMap::new(),
                frozen: false,
                backends: BTreeMap::new(),
                withdrawn: std::collections::BTreeSet::new(),
                seed,
                picks: 0,
                origin: SystemClock.now(),
                skew_ms_max,
                books: CaBooks::default(),
                late: Vec::new(),
                flaky_draws: 0,
                verbose: std::env::var_os("CERTFLEET_SIM_VERBOSE").is_some(),
            }),
            kill_tx,
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Puts a node behind the load balancer (at its start).
    pub fn add_backend(&self, host: u64, backend: Backend) {
        let mut inner = self.inner();
        // A node restarted while out of the membership stays out of the load balancer.
        if !inner.withdrawn.contains(&host) {
            inner.backends.insert(host, backend);
        }
    }

    /// Takes a node out of the load balancer while it is out of the membership: its restarts
    /// do not put it back. Found by seed 10903: an edge removed from the cluster, then
    /// crashed and restarted, was back behind the load balancer with a state nobody updated.
    pub fn withdraw(&self, host: u64) {
        let mut inner = self.inner();
        inner.backends.remove(&host);
        inner.withdrawn.insert(host);
    }

    /// Puts a node back behind the load balancer.
    pub fn readmit(&self, host: u64, backend: Backend) {
        let mut inner = self.inner();
        inner.withdrawn.remove(&host);
        inner.backends.insert(host, backend);
    }

    /// Takes a node out (at its crash).
    pub fn remove_backend(&self, host: u64) {
        self.inner().backends.remove(&host);
    }

    /// Stops answering: every call from now on waits for good. For the final convergence
    /// check: with 20-minute certificates the leader commits a renewal step every few hundred
    /// milliseconds, and on a slow network the edges can trail it by an entry or two for a
    /// whole minute (seed 60175); without answers, the cycles stop committing.
    pub fn freeze(&self) {
        self.inner().frozen = true;
    }

    /// Waits while the CA is frozen.
    async fn unless_frozen(&self) {
        while self.inner().frozen {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    }

    /// Binds the account to `key` (its registration): from then on calls signed with another
    /// key are refused and key authorizations name the bound key.
    pub fn bind_account_key(&self, key: &SealedBlob) {
        self.inner().model.bind_account_key(key);
    }

    /// The account's keys in the order the CA bound them, the last one current.
    #[must_use]
    pub fn account_keys(&self) -> Vec<SealedBlob> {
        self.inner().model.account_keys().to_vec()
    }

    /// A copy of the books.
    #[must_use]
    pub fn books(&self) -> CaBooks {
        let inner = self.inner();
        let mut books = inner.books.clone();
        let model = &inner.model;
        books.account_keys = model.account_keys().len() as u64;
        // Counted with the faults so a batch's totals show them; only where they happened.
        for (class, count) in [
            ("key-rollover", books.key_changes.len() as u64),
            ("wrong-key-call", books.wrong_key_calls.len() as u64),
            ("validation-after-key-change", books.misses_after_key_change),
        ] {
            if count > 0 {
                books.faults_fired.insert(class, count);
            }
        }
        books.faults_fired.insert(
            "invalid-authz",
            u64::from(inner.faults.invalid_authz - model.faults.invalid_authz),
        );
        books.faults_fired.insert(
            "lost-finalize",
            u64::from(inner.faults.lost_finalize - model.faults.lose_finalize_response),
        );
        books
            .faults_fired
            .insert("ari-renew-now", model.renew_now.len() as u64);
        books.faults_fired.insert("ari-polls", model.ari_polls);
        books
    }

    /// Drops every remaining injected fault (the liveness phase heals the CA).
    pub fn heal(&self) {
        let mut inner = self.inner();
        inner.faults.down.clear();
        inner.faults.rate_limited.clear();
        inner.faults.kills.clear();
        // What was planned but never fired is no longer planned (the books count what fired).
        inner.faults.invalid_authz -= inner.model.faults.invalid_authz;
        inner.faults.lost_finalize -= inner.model.faults.lose_finalize_response;
        inner.model.faults.invalid_authz = 0;
        inner.model.faults.lose_finalize_response = 0;
        // A "renew now" in the last minutes of the run could not be seen through.
        inner.model.faults.ari_renew_now = 0;
        inner.faults.flaky_permille = 0;
        inner.faults.late_validation_ms = 0;
    }
}

/// The resource a call is about, for `Retry-After` bookkeeping, and whether a 429 on it covers
/// the whole account.
fn resource(action: &Action) -> String {
    match action {
        Action::CreateOrder { cert, .. } => format!("newOrder {cert}"),
        Action::FetchOrder { order_url } | Action::Finalize { order_url, .. } => order_url.clone(),
        Action::FetchAuthorizations { urls, .. } | Action::MarkReady { urls, .. } => {
            urls.first().cloned().unwrap_or_default()
        }
        Action::Download {
            certificate_url, ..
        } => certificate_url.clone(),
        _ => String::new(),
    }
}

const ACCOUNT: &str = "account";

/// What a flaky CA does to one call.
enum Flaky {
    No,
    Refuse(Outcome),
    LoseResponse,
}

impl Flaky {
    /// How the verbose log marks the call.
    fn label(&self) -> &'static str {
        match self {
            Self::No => "",
            Self::LoseResponse => " (response lost)",
            Self::Refuse(_) => " (refused: flaky)",
        }
    }
}

/// A failure without `Retry-After`: a 5xx (`status`), or a transport error (`0`: no response).
fn refused_plain(status: u16, detail: &str) -> Outcome {
    Outcome::Failed(plain_error(status, detail))
}

fn plain_error(status: u16, detail: &str) -> CaError {
    CaError {
        status: (status != 0).then_some(status),
        problem: (status != 0).then(|| "urn:ietf:params:acme:error:serverInternal".to_owned()),
        detail: detail.to_owned(),
        retry_at: None,
        account_wide: false,
    }
}

fn refused(status: u16, kind: &str, detail: String, retry_at: UnixMillis, wide: bool) -> Outcome {
    Outcome::Failed(retry_error(status, kind, detail, retry_at, wide))
}

/// A refusal with a `Retry-After` (`retry_at` on the caller's clock).
fn retry_error(
    status: u16,
    kind: &str,
    detail: String,
    retry_at: UnixMillis,
    wide: bool,
) -> CaError {
    CaError {
        status: Some(status),
        problem: Some(format!("urn:ietf:params:acme:error:{kind}")),
        detail,
        retry_at: Some(retry_at),
        account_wide: wide,
    }
}

/// What the CA answers while it is down until `end`: a 503 with a `Retry-After` of at most
/// a minute.
fn down_error(end: UnixMillis, true_now: UnixMillis, now: UnixMillis) -> CaError {
    let retry_ms = end.ms_since(true_now).min(60_000);
    retry_error(
        503,
        "serverInternal",
        "the CA is down for maintenance".into(),
        now.plus_ms(retry_ms),
        false,
    )
}

impl Inner {
    /// The kill armed for `window`, if any, taken (each window kills once) and booked.
    fn take_kill(
        &mut self,
        window: Window,
        order_url: impl FnOnce() -> String,
    ) -> Option<KillRequest> {
        let position = self.faults.kills.iter().position(|w| *w == window)?;
        self.faults.kills.remove(position);
        let request = KillRequest {
            window,
            order_url: order_url(),
        };
        self.books.kills.push(request.clone());
        Some(request)
    }

    /// The outage under way at `true_now`, if any: its start and end.
    fn outage(&self, true_now: UnixMillis) -> Option<(UnixMillis, UnixMillis)> {
        self.faults
            .down
            .iter()
            .find(|(start, end)| *start <= true_now && true_now < *end)
            .copied()
    }

    /// I9: a call for a resource (or, for new orders, the account) before its Retry-After.
    fn check_retry_after(&mut self, action: &Action, key: &str, true_now: UnixMillis) {
        let mut keys = vec![key.to_owned()];
        if matches!(action, Action::CreateOrder { .. }) {
            keys.push(ACCOUNT.into());
        }
        for key in keys {
            let Some(&(until, account_wide, receiver, sent_until)) = self.blocked_until.get(&key)
            else {
                continue;
            };
            // Two clocks may each be off by the bound, in opposite directions.
            if true_now.0 + 2 * self.skew_ms_max >= until.0 {
                continue;
            }
            if account_wide && self.recently_blocked(&key, true_now) {
                self.books.early_requests_in_flight += 1;
                continue;
            }
            // A Retry-After reaches one leader; the cluster knows it once that leader commits
            // it. Two losses no client avoids are counted apart: the leader that received it
            // was deposed or cut off before it could commit it (a later leader calls), and a
            // deposed leader that does not know it yet, stalled between its leadership check
            // and its call (a process pause), calls with what it knew.
            let sent = self.arrivals.get(&format!("sent {key}")).copied();
            let caller = self.caller;
            let stalled = self
                .resumed
                .get(&caller.node)
                .is_some_and(|resumed| sent.is_some_and(|sent| *resumed >= sent));
            let lost = if caller.term < receiver.term {
                stalled
            } else if caller != receiver {
                // A later term, or the same term led again by the receiver's node after a
                // restart (openraft keeps a committed vote across restarts): a new process
                // knows only what was committed.
                !self.wait_committed(&key, sent_until)
            } else {
                false
            };
            if lost {
                self.books.early_requests_lost_with_leader += 1;
                continue;
            }
            self.books.early_requests.push(format!(
                "{} for {key} at +{} ms, {} ms before the Retry-After (sent to {receiver}, called by {caller})",
                action_name(action),
                true_now.ms_since(self.origin),
                until.ms_since(true_now),
            ));
        }
    }

    fn recently_blocked(&self, key: &str, true_now: UnixMillis) -> bool {
        self.arrivals
            .get(&format!("sent {key}"))
            .is_some_and(|sent| true_now.ms_since(*sent) <= RETRY_AFTER_PROPAGATION_MS)
    }

    /// Whether the furthest node's applied state holds a wait for `key` until about `until`:
    /// an open cycle's committed Retry-After (order URLs, and `newOrder` at `Begun`), a closed
    /// cycle's backoff (`newOrder`), or the account's throttle.
    fn wait_committed(&self, key: &str, sent_until: UnixMillis) -> bool {
        let Some(furthest) = self
            .backends
            .values()
            .max_by_key(|b| *b.state_machine.applied_index().borrow())
        else {
            return false;
        };
        // The instant the receiving leader was sent, on its own clock, is what it commits (or
        // a later one): an earlier, shorter wait is not this one. Comparing true times with the
        // skew bound as slack took a wait committed a minute before for this one (CI seed
        // 85693191: 503s a minute apart through a long outage, skew up to 26 s).
        let holds = |at: Option<UnixMillis>| at.is_some_and(|at| at >= sent_until);
        furthest.state_machine.read(|state| {
            // One issuer in the simulation.
            let throttled = state
                .certs()
                .next()
                .and_then(|(_, record)| state.account(&record.spec.issuer))
                .is_some_and(|account| holds(account.throttled_until));
            if key == ACCOUNT {
                return throttled;
            }
            if let Some(cert) = key.strip_prefix("newOrder ") {
                return throttled
                    || state.certs().any(|(id, record)| {
                        id.as_str() == cert
                            && (holds(record.retry_at)
                                || holds(record.open.as_ref().map(|o| o.not_before)))
                    });
            }
            state.open_cycles().any(|(_, open)| {
                open.step.order().is_some_and(|order| {
                    // The order itself, or a URL under it (authorizations, challenges).
                    key.strip_prefix(order.url.as_str())
                        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
                }) && holds(Some(open.not_before))
            })
        })
    }

    fn block(&mut self, key: &str, until: UnixMillis, account_wide: bool, true_now: UnixMillis) {
        let sent_until = self.caller_now.plus_ms(until.ms_since(true_now));
        self.blocked_until.insert(
            key.to_owned(),
            (until, account_wide, self.caller, sent_until),
        );
        self.arrivals.insert(format!("sent {key}"), true_now);
    }

    /// A GCRA limit (as Let's Encrypt's): `Some(retry_at)` when `key` is over `rate`; else,
    /// with `take`, counts one event.
    fn over_limit(
        &mut self,
        key: &str,
        rate: Rate,
        true_now: UnixMillis,
        take: bool,
    ) -> Option<UnixMillis> {
        let interval = rate.interval_ms();
        let burst = interval * u64::from(rate.count.max(1));
        let arrival = self
            .arrivals
            .get(key)
            .copied()
            .unwrap_or(true_now)
            .max(true_now);
        let after = arrival.plus_ms(interval);
        if after.ms_since(true_now) > burst {
            return Some(arrival.plus_ms(interval).minus_ms(burst));
        }
        if take {
            self.arrivals.insert(key.to_owned(), after);
        }
        None
    }

    /// Schedules each perspective's validation of `urls` at its own moment within
    /// `late_validation_ms`; the challenges stay `pending` until the last one looked.
    fn validate_later(&mut self, urls: &[String], members_behind: u32, true_now: UnixMillis) {
        for url in urls {
            // Being validated already, or validated: a repeated `MarkReady` changes nothing.
            if self.late.iter().any(|check| &check.url == url) || !self.model.challenge_pending(url)
            {
                continue;
            }
            for _ in 0..self.faults.perspectives.max(1) {
                self.picks += 1;
                let delay = mix(self.seed, b"late-validation", self.picks)
                    % self.faults.late_validation_ms.max(1);
                self.late.push(LateCheck {
                    due: true_now.plus_ms(delay),
                    url: url.clone(),
                    members_behind,
                    keys_at_ready: self.model.account_keys().len(),
                });
            }
        }
        self.late.sort_by_key(|check| check.due);
    }

    /// Does the validations due by `true_now` (a CA validates on its own schedule; here at the
    /// first call it gets after the due time, which only makes them later), and completes a
    /// challenge once its last perspective has looked.
    fn run_late(&mut self, true_now: UnixMillis) {
        let due = self.late.partition_point(|check| check.due <= true_now);
        let checks: Vec<LateCheck> = self.late.drain(..due).collect();
        for check in checks {
            let url = std::slice::from_ref(&check.url);
            let key_changed = self.model.account_keys().len() != check.keys_at_ready;
            self.validate(url, check.members_behind, key_changed, true_now, 1);
            if !self.late.iter().any(|c| c.url == check.url) {
                self.model.complete_validation(url);
                *self
                    .books
                    .faults_fired
                    .entry("late-validation")
                    .or_default() += 1;
            }
        }
    }

    /// Whether this call meets a flaky CA: refused before the CA acts (a 500 without
    /// `Retry-After`, or a reset), or its response lost after the CA acted where a retry is
    /// safe.
    fn flaky(&mut self, action: &Action) -> Flaky {
        // A lost `newOrder` response leaves an order nobody knows of, unless the CA gives it
        // back on the retry (order reuse): without reuse no client can avoid a second order,
        // which DESIGN §5 counts on the order URL coming back to exclude.
        let retry_safe = match action {
            Action::CreateOrder { .. } => self.faults.reuse_orders,
            _ => true,
        };
        self.flaky_draw(retry_safe)
    }

    /// [`Inner::flaky`] for a call whose response may be lost after the CA acted only if
    /// `retry_safe`.
    fn flaky_draw(&mut self, retry_safe: bool) -> Flaky {
        if self.faults.flaky_permille == 0 {
            return Flaky::No;
        }
        self.flaky_draws += 1;
        let roll = mix(self.seed, b"flaky", self.flaky_draws) % 1000;
        if roll >= self.faults.flaky_permille {
            return Flaky::No;
        }
        *self.books.faults_fired.entry("ca-flaky").or_default() += 1;
        match roll % 3 {
            0 => Flaky::Refuse(refused_plain(500, "internal error (injected)")),
            2 if retry_safe => Flaky::LoseResponse,
            _ => Flaky::Refuse(refused_plain(0, "connection reset (injected)")),
        }
    }

    /// Picks the node the load balancer sends the validation request to, and checks its answer.
    /// `key_changed`: the account key changed since the CA was told the challenges were
    /// ready, so it now expects another key authorization (RFC 8555 §8.1).
    fn validate(
        &mut self,
        urls: &[String],
        members_behind: u32,
        key_changed: bool,
        true_now: UnixMillis,
        perspectives: u64,
    ) {
        // Every perspective (Let's Encrypt validates from several) reaches its own node.
        let checks = urls
            .iter()
            .flat_map(|url| std::iter::repeat_n(url, perspectives.max(1) as usize));
        let mut failed: Vec<String> = Vec::new();
        for url in checks {
            if failed.contains(url) {
                continue;
            }
            self.books.validations += 1;
            self.picks += 1;
            let hosts: Vec<u64> = self.backends.keys().copied().collect();
            if hosts.is_empty() {
                continue;
            }
            let pick = mix(self.seed, b"load-balancer", self.picks) % hosts.len() as u64;
            let host = hosts[pick as usize];
            let (token, key_authorization) = self.model.expected_answer(url);
            let holds = |backend: &Backend| {
                backend.state_machine.read(|state| {
                    state
                        .challenges()
                        .any(|(_, c)| c.token == token && c.key_authorization == key_authorization)
                })
            };
            let backend = &self.backends[&host];
            if holds(backend) {
                continue;
            }
            // The node furthest along is the committed state's best witness.
            let furthest = self
                .backends
                .values()
                .max_by_key(|b| *b.state_machine.applied_index().borrow());
            let held_anywhere = furthest.is_some_and(holds);
            self.model.fail_validation(url);
            failed.push(url.clone());
            if key_changed {
                // What every node was told to answer names the old key. A leader that lives
                // waits for its validations before it rolls the key; one that died after
                // `MarkReady` took that knowledge with it, and its successor rolled the key
                // while the CA was still validating: the order fails, a new cycle follows.
                self.books.misses_after_key_change += 1;
            } else if !held_anywhere {
                // The furthest node does not hold it: the cycle moved on (failed, taken over) and the call came
                // from a leader that was deposed without knowing it yet. Raft fences commits,
                // not calls to the CA (DESIGN §5).
                self.books.misses_withdrawn += 1;
            } else if members_behind > 0 {
                self.books.misses_after_timeout += 1;
            } else if true_now.ms_since(backend.started_at) <= RESTART_EXCUSE_MS {
                self.books.misses_after_restart += 1;
            } else {
                let applied = *backend.state_machine.applied_index().borrow();
                self.books.misses.push(format!(
                    "n{host} had no answer for {token} at {true_now} though the leader reported every member applied it (n{host} applied index {applied}, up for {} ms)",
                    true_now.ms_since(backend.started_at)
                ));
            }
        }
    }
}

fn action_name(action: &Action) -> &'static str {
    match action {
        Action::CreateOrder { .. } => "newOrder",
        Action::FetchOrder { .. } => "fetch order",
        Action::FetchAuthorizations { .. } => "fetch authorizations",
        Action::MarkReady { .. } => "ready",
        Action::Finalize { .. } => "finalize",
        Action::Download { .. } => "download",
        _ => "other",
    }
}

/// Who makes a call: a node's process and the Raft term it believes it leads in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Leadership {
    /// 0: the caller knows it does not lead (it has seen a newer term).
    term: u64,
    node: u64,
    /// Which process of the node (a restart starts a new one, with empty memory).
    incarnation: u64,
}

impl std::fmt::Display for Leadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "n{}#{} in term {}",
            self.node, self.incarnation, self.term
        )
    }
}

/// The CA as one node reaches it: calls carry the node's leadership, so the CA's books know
/// which leadership each `Retry-After` went to.
pub struct NodeCa {
    ca: Arc<SimCa>,
    raft: Raft<TypeConfig>,
    state_machine: StateMachineStore,
    /// The simulation's one issuer, whose committed key signs the calls.
    issuer: IssuerId,
    incarnation: u64,
}

impl NodeCa {
    /// `raft`'s calls to `ca`, from the `incarnation`th process of its node, signed with the
    /// account key committed in `state_machine`, as the production adapter signs.
    #[must_use]
    pub fn new(
        ca: Arc<SimCa>,
        raft: Raft<TypeConfig>,
        state_machine: StateMachineStore,
        incarnation: u64,
    ) -> Self {
        Self {
            ca,
            raft,
            state_machine,
            issuer: IssuerId::parse(ISSUER).expect("the fixture issuer is valid"),
            incarnation,
        }
    }

    /// The leadership the node believes it holds: term 0 if it knows it does not lead (it has
    /// seen a newer term), so nothing it hears can be committed by it.
    fn caller(&self) -> Leadership {
        let metrics = self.raft.metrics().borrow().clone();
        let term = if metrics.current_leader == Some(metrics.id) {
            metrics.current_term
        } else {
            0
        };
        Leadership {
            term,
            node: metrics.id,
            incarnation: self.incarnation,
        }
    }
}

impl Acme for NodeCa {
    async fn perform(&self, action: Action, now: UnixMillis) -> Outcome {
        let key = self
            .state_machine
            .read(|state| state.account(&self.issuer).map(|a| a.credentials.clone()));
        self.ca.unless_frozen().await;
        self.ca.perform_as(self.caller(), key, action, now).await
    }

    async fn renewal_info(&self, ari_id: &str, now: UnixMillis) -> Option<AriWindow> {
        self.ca.unless_frozen().await;
        self.ca.renewal_info(ari_id, now)
    }

    async fn roll_account_key(
        &self,
        old: SealedBlob,
        new: SealedBlob,
        now: UnixMillis,
    ) -> RolloverOutcome {
        self.ca.unless_frozen().await;
        self.ca.roll_key_as(self.caller(), &old, &new, now).await
    }
}

impl SimCa {
    /// A node resumed from a pause: a call it was about to make when it stopped goes out now,
    /// whatever its leadership check said before the pause.
    pub fn note_resume(&self, node: u64) {
        self.inner().resumed.insert(node, SystemClock.now());
    }

    /// `caller`'s `keyChange` from `old` to `new` (RFC 8555 §7.3.5), with the CA's outages and
    /// flaky calls (a lost response after the CA bound the key included), and the leader
    /// killed right after the CA acted when [`Window::AfterKeyChange`] is armed.
    async fn roll_key_as(
        &self,
        caller: Leadership,
        old: &SealedBlob,
        new: &SealedBlob,
        now: UnixMillis,
    ) -> RolloverOutcome {
        let true_now = SystemClock.now();
        let (outcome, kill) = {
            let mut inner = self.inner();
            let inner = &mut *inner;
            if let Some((_, end)) = inner.outage(true_now) {
                *inner.books.faults_fired.entry("ca-down").or_default() += 1;
                return RolloverOutcome::Failed(down_error(end, true_now, now));
            }
            let flaky = inner.flaky_draw(true);
            if inner.verbose {
                eprintln!(
                    "ca +{} ms: keyChange from {caller}{}",
                    true_now.ms_since(inner.origin),
                    flaky.label()
                );
            }
            if let Flaky::Refuse(Outcome::Failed(error)) = flaky {
                return RolloverOutcome::Failed(error);
            }
            match inner.model.roll_account_key(old, new) {
                Err(detail) => (RolloverOutcome::Refused(detail), None),
                Ok(()) => {
                    inner.books.key_changes.push(caller.term);
                    if matches!(flaky, Flaky::LoseResponse) {
                        // Bound, but the leader never hears it: the next attempt must find out.
                        return RolloverOutcome::Failed(plain_error(
                            0,
                            "connection reset after the CA acted",
                        ));
                    }
                    let kill = inner.take_kill(Window::AfterKeyChange, String::new);
                    (RolloverOutcome::Rolled, kill)
                }
            }
        };
        self.deliver(kill).await;
        outcome
    }

    /// Sends a kill request to the harness, and holds the answer while the leader dies: it
    /// never gets to commit what it was told.
    async fn deliver(&self, kill: Option<KillRequest>) {
        if let Some(request) = kill {
            let _ = self.kill_tx.send(request);
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    /// A call from `caller`, signed with `key` (`None`: the node holds no account).
    async fn perform_as(
        &self,
        caller: Leadership,
        signed_with: Option<SealedBlob>,
        action: Action,
        now: UnixMillis,
    ) -> Outcome {
        let true_now = SystemClock.now();
        let (outcome, kill) = {
            let mut inner = self.inner();
            let inner = &mut *inner;
            inner.caller = caller;
            inner.caller_now = now;
            if matches!(action, Action::PrepareKey { .. }) {
                return inner
                    .model
                    .perform(&action, true_now)
                    .unwrap_or_else(|| unreachable!("PrepareKey is the model's"));
            }
            inner.run_late(true_now);
            let key = resource(&action);
            inner.check_retry_after(&action, &key, true_now);
            if let Some((start, end)) = inner.outage(true_now) {
                let class = if end.ms_since(start) >= LONG_OUTAGE_MS {
                    "ca-down-long"
                } else {
                    "ca-down"
                };
                *inner.books.faults_fired.entry(class).or_default() += 1;
                if inner.verbose {
                    eprintln!(
                        "ca +{} ms: 503 to {} ({key})",
                        true_now.ms_since(inner.origin),
                        action_name(&action)
                    );
                }
                let retry_ms = end.ms_since(true_now).min(60_000);
                inner.block(&key, true_now.plus_ms(retry_ms), false, true_now);
                return Outcome::Failed(down_error(end, true_now, now));
            }
            // A CA verifies the JWS before anything else: a call signed with a key the account
            // no longer has is refused. Only a leader deposed without knowing it should meet
            // this; the books name every one.
            if let Some(bound) = inner.model.account_key()
                && signed_with.as_ref() != Some(bound)
            {
                let call = format!("{} {key} from {caller} at {true_now}", action_name(&action));
                if inner.verbose {
                    eprintln!("ca: 401 to {call}: signed with another key");
                }
                inner.books.wrong_key_calls.push(call);
                return Outcome::Failed(CaError {
                    status: Some(401),
                    problem: Some("urn:ietf:params:acme:error:unauthorized".into()),
                    detail: "JWS signed with a key that is not the account's".into(),
                    retry_at: None,
                    account_wide: true,
                });
            }
            let flaky = inner.flaky(&action);
            if inner.verbose {
                eprintln!(
                    "ca +{} ms: {} {key} from {caller}{}",
                    true_now.ms_since(inner.origin),
                    action_name(&action),
                    flaky.label()
                );
            }
            let mut account_arrival = None;
            let lose_response = match flaky {
                Flaky::No => false,
                Flaky::LoseResponse => true,
                Flaky::Refuse(outcome) => return outcome,
            };
            if let Action::CreateOrder {
                cert,
                cycle,
                identifiers,
                ..
            } = &action
            {
                let due = inner
                    .faults
                    .rate_limited
                    .iter()
                    .position(|(at, _)| *at <= true_now);
                if let Some(position) = due {
                    let (_, retry_ms) = inner.faults.rate_limited.remove(position);
                    if inner.verbose {
                        eprintln!(
                            "ca +{} ms: 429 to {cert} cycle {cycle}, Retry-After {retry_ms} ms",
                            true_now.ms_since(inner.origin)
                        );
                    }
                    *inner.books.faults_fired.entry("rate-limited").or_default() += 1;
                    inner.block(ACCOUNT, true_now.plus_ms(retry_ms), true, true_now);
                    return refused(
                        429,
                        "rateLimited",
                        "too many new orders (injected)".into(),
                        now.plus_ms(retry_ms),
                        true,
                    );
                }
                account_arrival = inner.arrivals.get(ACCOUNT).copied();
                let (new_orders, per_set) = (inner.new_orders, inner.certs_per_set);
                let set: Vec<String> = identifiers.iter().map(|i| i.value()).collect();
                // Duplicate certificates count issued certificates (taken at finalize), new
                // orders count orders.
                let limits = [
                    (
                        format!("set {}", set.join(",")),
                        per_set,
                        false,
                        false,
                        "duplicate certificates",
                    ),
                    (
                        ACCOUNT.to_owned(),
                        new_orders,
                        true,
                        true,
                        "new orders per account",
                    ),
                ];
                for (limit_key, rate, wide, take, what) in limits {
                    if let Some(retry_at) = inner.over_limit(&limit_key, rate, true_now, take) {
                        inner
                            .books
                            .pacing_429s
                            .push(format!("{what}: {cert} cycle {cycle} at {true_now}"));
                        let retry_ms = retry_at.ms_since(true_now);
                        let blocked = if wide { ACCOUNT } else { key.as_str() };
                        inner.block(blocked, retry_at, wide, true_now);
                        return refused(
                            429,
                            "rateLimited",
                            format!("too many {what}"),
                            now.plus_ms(retry_ms),
                            wide,
                        );
                    }
                }
            }
            let issued_before = match &action {
                Action::Finalize { identifiers, .. } => {
                    let set: Vec<String> = identifiers.iter().map(|i| i.value()).collect();
                    inner
                        .model
                        .issued_per_set
                        .get(&set.join(","))
                        .copied()
                        .unwrap_or(0)
                }
                _ => 0,
            };
            let reused_before = inner.model.reused_orders;
            let outcome = match &action {
                Action::MarkReady {
                    urls,
                    members_behind,
                    ..
                } if inner.faults.late_validation_ms > 0 => {
                    inner.validate_later(urls, *members_behind, true_now);
                    Some(Outcome::ChallengesReady)
                }
                Action::MarkReady {
                    urls,
                    members_behind,
                    ..
                } => {
                    let perspectives = inner.faults.perspectives;
                    inner.validate(urls, *members_behind, false, true_now, perspectives);
                    inner.model.perform(&action, true_now)
                }
                _ => inner.model.perform(&action, true_now),
            }
            .unwrap_or_else(|| unreachable!("the driver sends the CA only CA actions"));
            if inner.model.reused_orders > reused_before {
                *inner.books.faults_fired.entry("order-reused").or_default() += 1;
                // A reused order is no new order: Let's Encrypt does not count it against the
                // account's limit, and certfleet's budget never does.
                match account_arrival {
                    Some(arrival) => inner.arrivals.insert(ACCOUNT.to_owned(), arrival),
                    None => inner.arrivals.remove(ACCOUNT),
                };
            }
            if let Action::Finalize { identifiers, .. } = &action {
                // Issued even when the response is lost: the CA counts what it signed.
                let set: Vec<String> = identifiers.iter().map(|i| i.value()).collect();
                let set = set.join(",");
                let signed = inner.model.issued_per_set.get(&set).copied().unwrap_or(0);
                if signed > issued_before {
                    let key = format!("set {set}");
                    let interval = inner.certs_per_set.interval_ms();
                    let arrival = inner.arrivals.get(&key).copied().unwrap_or(true_now);
                    inner
                        .arrivals
                        .insert(key, arrival.max(true_now).plus_ms(interval));
                }
            }
            if inner.verbose
                && let Action::CreateOrder { cert, cycle, .. } = &action
            {
                eprintln!(
                    "ca +{} ms: newOrder {cert} cycle {cycle}: {}",
                    true_now.ms_since(inner.origin),
                    match &outcome {
                        Outcome::OrderCreated { order_url, .. } => order_url.as_str(),
                        _ => "refused",
                    }
                );
            }
            // A reused order is not a new one (I1 counts what the CA created).
            if let (Action::CreateOrder { cert, cycle, .. }, Outcome::OrderCreated { .. }) =
                (&action, &outcome)
                && inner.model.reused_orders == reused_before
            {
                inner.books.orders += 1;
                *inner
                    .books
                    .orders_by_cycle
                    .entry((cert.clone(), *cycle))
                    .or_default() += 1;
            }
            let window = match (&action, &outcome) {
                (Action::CreateOrder { .. }, Outcome::OrderCreated { .. }) => {
                    Some(Window::AfterNewOrder)
                }
                (Action::MarkReady { .. }, Outcome::ChallengesReady) => {
                    Some(Window::AfterChallengesReady)
                }
                (Action::Finalize { .. }, Outcome::Order(_)) => Some(Window::AfterFinalize),
                _ => None,
            };
            // A lost response reaches no leader: nothing to kill it for.
            let window = window.filter(|_| !lose_response);
            let kill = window.and_then(|window| {
                inner.take_kill(window, || match (&action, &outcome) {
                    (_, Outcome::OrderCreated { order_url, .. })
                    | (Action::Finalize { order_url, .. }, _) => order_url.clone(),
                    (Action::MarkReady { urls, .. }, _) => urls
                        .first()
                        .and_then(|url| url.split("/authz/").next())
                        .unwrap_or_default()
                        .to_owned(),
                    _ => String::new(),
                })
            });
            if lose_response {
                return refused_plain(0, "connection reset after the CA acted");
            }
            // A `processing` order's Retry-After: kept in the books (I9) unless the reply goes
            // to a leader killed before it arrives, and sent as the relative header it is,
            // which the leader's clock turns into an instant.
            let outcome = match outcome {
                Outcome::Order(mut view) => {
                    if let Some(at) = view.retry_at.filter(|at| *at > true_now) {
                        if kill.is_none() {
                            inner.block(&key, at, false, true_now);
                        }
                        view.retry_at = Some(now.plus_ms(at.ms_since(true_now)));
                    }
                    Outcome::Order(view)
                }
                other => other,
            };
            (outcome, kill)
        };
        self.deliver(kill).await;
        outcome
    }

    fn renewal_info(&self, ari_id: &str, _now: UnixMillis) -> Option<AriWindow> {
        // The CA answers by its own clock, not the (skewed) leader's.
        let true_now = SystemClock.now();
        self.inner().model.renewal_info(ari_id, true_now)
    }
}
