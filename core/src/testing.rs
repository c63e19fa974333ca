//! Test support: a model CA and a single-leader harness, both pure and deterministic.
//!
//! The [`Harness`] runs the leader's loop the way the node driver will (planner tick, commit
//! intents, drive each open cycle's [`OrderDriver`] against a CA), in virtual time and without
//! Raft: every commit is applied at once at the next log index. [`ModelCa`] answers the driver's
//! actions at the level of [`Outcome`]s and counts orders per identifier set, so tests can check
//! the protocol's promises (one order per cycle, renewal before expiry, budgets) over months of
//! virtual time in milliseconds of real time. The wire-level CA lives in the simulator.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use crate::command::{AriWindow, Command, Op};
use crate::model::{
    Account, CertId, CertRequest, CertSpec, ChallengeKind, IssuedCert, IssuerId, Profile,
    SealedBlob, Term,
};
use crate::name::Identifier;
use crate::order::{
    Action, AuthzStatus, AuthzView, CaError, ChallengeOffer, OrderDriver, OrderStatus, OrderView,
    Outcome,
};
use crate::plan::{Intent, plan};
use crate::state::{CertRecord, State, apply, test_sealed_blob};
use crate::time::{DAY_MS, HOUR_MS, UnixMillis, mix};
use crate::{Cycle, Response};

/// The issuer every fixture uses.
pub const ISSUER: &str = "le";

/// A valid account for [`ISSUER`].
#[must_use]
pub fn account() -> Account {
    Account {
        directory_url: "https://acme.test/directory".into(),
        account_url: Some("https://acme.test/acct/1".into()),
        contact: alloc::vec!["mailto:ops@example.com".into()],
        credentials: test_sealed_blob(1),
        throttled_until: None,
        rollover: None,
    }
}

/// A validated spec for `names` under [`ISSUER`], HTTP-01, default profile.
#[must_use]
pub fn spec(names: &[&str]) -> CertSpec {
    let request = CertRequest {
        identifiers: names.iter().map(|n| (*n).into()).collect(),
        issuer: ISSUER.into(),
        ..CertRequest::default()
    };
    CertSpec::from_request(&request).expect("fixture names are valid")
}

/// A state holding `count` issued certificates `c{i}.d{i / 40}.example` (40 per registered
/// domain), built directly rather than through seven commands each, for benchmarks at a
/// million. Leaves are `leaf_len` bytes; all share one chain. Renewal points are spread over
/// 90-day lifetimes that end between `now + 35 days` and `now + 90 days`, so nothing is due at
/// `now`.
#[must_use]
pub fn populated_state(count: usize, now: UnixMillis, leaf_len: usize) -> State {
    let mut state = State::new();
    state.clock = now;
    state
        .accounts
        .insert(IssuerId::parse(ISSUER).expect("valid"), account());
    let chain = alloc::vec![alloc::vec![0x30u8; 1200]];
    let chain_id = crate::state::chain_id(&chain);
    state.chains.insert(
        chain_id,
        crate::state::InternedChain {
            ders: chain,
            refs: 0,
        },
    );
    for i in 0..count {
        let name = format!("c{i}.d{}.example", i / 40);
        let spec = spec(&[name.as_str()]);
        let id = spec.cert_id();
        let seed = mix(0, id.as_str().as_bytes(), i as u64);
        // Renewal falls at 2/3 of 90 days (30 days before expiry, up to 1.8 days earlier with
        // jitter), so expiries from 35 days out leave nothing due at `now`.
        let offset_ms = 35 * DAY_MS + seed % (55 * DAY_MS);
        let not_after = now.plus_ms(offset_ms);
        let mut leaf = alloc::vec![0u8; leaf_len];
        leaf[..8.min(leaf_len)].copy_from_slice(&seed.to_le_bytes()[..8.min(leaf_len)]);
        let record = CertRecord {
            spec,
            seed,
            added_at: UnixMillis::ZERO,
            cycle: Cycle(1),
            open: None,
            current: Some(IssuedCert {
                cycle: Cycle(1),
                leaf_der: leaf,
                chain: chain_id,
                key: test_sealed_blob((i % 251) as u8),
                not_before: not_after.minus_ms(90 * DAY_MS),
                not_after,
                issued_at: not_after.minus_ms(90 * DAY_MS),
                ari_id: None,
            }),
            spec_changed: false,
            identifiers_changed: false,
            failures: 0,
            retry_at: None,
            last_failure: None,
            deferred_until: None,
            ari: None,
            indexed_at: None,
        };
        state.certs.insert(id.clone(), record);
        state.reindex(&id);
    }
    if let Some(chain) = state.chains.get_mut(&chain_id) {
        chain.refs = count as u64;
    }
    if count == 0 {
        state.chains.clear();
    }
    state
}

/// Faults the model CA injects, each counted down as it fires.
#[derive(Clone, Debug, Default)]
pub struct CaFaults {
    /// Refuse the next `n` `newOrder`s with 429 and this `Retry-After` (ms from now).
    pub rate_limit_new_orders: u32,
    /// The `Retry-After` of those refusals.
    pub rate_limit_retry_ms: u64,
    /// Fail the next `n` CA calls of any kind with a 503.
    pub unavailable: u32,
    /// Make the next `n` orders' authorizations invalid on validation.
    pub invalid_authz: u32,
    /// Lose the response of the next `n` finalize calls (the CA processes them).
    pub lose_finalize_response: u32,
    /// How long a finalized order stays `processing` before it is `valid` (0: at once). The
    /// order's view carries a `Retry-After` until then.
    pub processing_ms: u64,
    /// Reuse authorizations: an identifier validated before comes back `valid` in a new order
    /// (RFC 8555 §7.4, as Let's Encrypt does for 7 hours).
    pub reuse_authz: bool,
    /// Change the intermediate chain every this many issuances (0: never), as a CA rotating
    /// its intermediates does.
    pub chain_every: u64,
    /// ARI windows move: each poll may suggest a window up to a sixth of the lifetime earlier
    /// than the last (RFC 9773 §4.2: a CA may change its suggestion at any time).
    pub ari_moves: bool,
    /// Answer the next `n` ARI polls with "renew now": a window already past (RFC 9773
    /// §4.2, as after a revocation incident).
    pub ari_renew_now: u32,
    /// Reuse orders: a `newOrder` for an identifier set whose last order is still `pending` or
    /// `ready` returns that order (Let's Encrypt does), and no new order is created.
    pub reuse_orders: bool,
}

/// A model ACME CA answering at the level of driver outcomes.
#[derive(Clone, Debug)]
pub struct ModelCa {
    /// Lifetime of issued certificates.
    pub lifetime_ms: u64,
    /// Whether certificates carry an ARI id and renewal info is served.
    pub ari: bool,
    /// The ARI window the CA suggests, relative to not_after (start, end before expiry).
    pub ari_window_before_expiry_ms: (u64, u64),
    /// Fault injection.
    pub faults: CaFaults,
    /// Orders created, per identifier set.
    pub orders_per_set: BTreeMap<String, u64>,
    /// Certificates issued, per identifier set.
    pub issued_per_set: BTreeMap<String, u64>,
    /// All `newOrder` calls.
    pub new_orders: u64,
    /// ARI polls answered.
    pub ari_polls: u64,
    /// "Renew now" answers: the identifier set and when.
    pub renew_now: Vec<(String, UnixMillis)>,
    /// `newOrder` calls answered with an existing order.
    pub reused_orders: u64,
    /// Calls refused because they were signed with a key that is not the account's.
    pub wrong_key_calls: u64,
    /// The account's keys in the order they were bound, the last one current (empty: keys are
    /// not checked, every call is taken as signed by the account's one key).
    keys: Vec<SealedBlob>,
    orders: BTreeMap<String, ModelOrder>,
    /// The last order per identifier set (for order reuse).
    last_order: BTreeMap<String, String>,
    certificates: BTreeMap<String, (UnixMillis, String)>,
    validated: alloc::collections::BTreeSet<Identifier>,
    issued: u64,
    next_id: u64,
}

#[derive(Clone, Debug)]
struct ModelOrder {
    set: String,
    status: OrderStatus,
    /// When a `processing` order becomes `valid`.
    valid_at: UnixMillis,
    authz: Vec<(String, Identifier, AuthzStatus)>,
    fail_validation: bool,
    certificate_url: Option<String>,
}

impl ModelCa {
    /// A CA issuing certificates of `lifetime_ms`, without ARI or faults.
    #[must_use]
    pub fn new(lifetime_ms: u64) -> Self {
        Self {
            lifetime_ms,
            ari: false,
            ari_window_before_expiry_ms: (lifetime_ms / 3, lifetime_ms / 4),
            faults: CaFaults::default(),
            orders_per_set: BTreeMap::new(),
            issued_per_set: BTreeMap::new(),
            new_orders: 0,
            ari_polls: 0,
            renew_now: Vec::new(),
            reused_orders: 0,
            wrong_key_calls: 0,
            keys: Vec::new(),
            orders: BTreeMap::new(),
            last_order: BTreeMap::new(),
            certificates: BTreeMap::new(),
            validated: alloc::collections::BTreeSet::new(),
            issued: 0,
            next_id: 0,
        }
    }

    /// Binds the account to `key` (its registration): from now on calls name the key that
    /// signed them ([`ModelCa::perform_signed`]) and key authorizations name that key.
    pub fn bind_account_key(&mut self, key: &SealedBlob) {
        self.keys = alloc::vec![key.clone()];
    }

    /// The key the account is bound to, if keys are checked.
    #[must_use]
    pub fn account_key(&self) -> Option<&SealedBlob> {
        self.keys.last()
    }

    /// Every key the account was bound to, the last one current.
    #[must_use]
    pub fn account_keys(&self) -> &[SealedBlob] {
        &self.keys
    }

    /// The `keyChange` request (RFC 8555 §7.3.5), signed with `old` around `new`: `Ok` when
    /// the account is bound to `new` afterwards (now, or already: a repeated request after a
    /// lost response), `Err` with the CA's reason when it refuses.
    pub fn roll_account_key(&mut self, old: &SealedBlob, new: &SealedBlob) -> Result<(), String> {
        match self.keys.last() {
            Some(current) if current == new => Ok(()),
            Some(current) if current == old => {
                if self.keys.contains(new) {
                    return Err("the new key was this account's before".into());
                }
                self.keys.push(new.clone());
                Ok(())
            }
            Some(_) => Err("the request is signed with a key that is not the account's".into()),
            None => Err("no account key is bound".into()),
        }
    }

    /// The thumbprint stand-in of `key`: one per key generation (`thumbprint` for the first,
    /// so runs without a rollover answer as before keys were modelled).
    fn thumbprint(&self, key: Option<&SealedBlob>) -> String {
        match key.and_then(|key| self.keys.iter().position(|k| k == key)) {
            None | Some(0) => "thumbprint".into(),
            Some(generation) => format!("thumbprint{generation}"),
        }
    }

    /// [`ModelCa::perform`] for a call signed with `key`: a CA call signed with a key that is
    /// not the account's is refused (`unauthorized`), as a CA verifying the JWS would.
    pub fn perform_signed(
        &mut self,
        action: &Action,
        key: &SealedBlob,
        now: UnixMillis,
    ) -> Option<Outcome> {
        if Self::is_ca_call(action) && self.keys.last().is_some_and(|current| current != key) {
            self.wrong_key_calls += 1;
            return Some(Outcome::Failed(error(
                401,
                "unauthorized",
                "JWS signed with a key that is not the account's",
                None,
            )));
        }
        self.perform_with(action, Some(key), now)
    }

    fn is_ca_call(action: &Action) -> bool {
        matches!(
            action,
            Action::CreateOrder { .. }
                | Action::FetchOrder { .. }
                | Action::FetchAuthorizations { .. }
                | Action::MarkReady { .. }
                | Action::Finalize { .. }
                | Action::Download { .. }
        )
    }

    /// Performs a CA (or key) action; `None` for actions that are not the CA's.
    pub fn perform(&mut self, action: &Action, now: UnixMillis) -> Option<Outcome> {
        let key = self.keys.last().cloned();
        self.perform_with(action, key.as_ref(), now)
    }

    fn perform_with(
        &mut self,
        action: &Action,
        key: Option<&SealedBlob>,
        now: UnixMillis,
    ) -> Option<Outcome> {
        let is_ca_call = Self::is_ca_call(action);
        if is_ca_call && self.faults.unavailable > 0 {
            self.faults.unavailable -= 1;
            return Some(Outcome::Failed(error(
                503,
                "serverInternal",
                "try later",
                None,
            )));
        }
        Some(match action {
            Action::CreateOrder { identifiers, .. } => self.create_order(identifiers, now),
            Action::FetchAuthorizations { urls, .. } => self.authorizations(urls, key),
            Action::MarkReady { urls, .. } => self.mark_ready(urls),
            Action::FetchOrder { order_url } => match self.orders.get_mut(order_url) {
                Some(order) => {
                    if order.status == OrderStatus::Processing && now >= order.valid_at {
                        order.status = OrderStatus::Valid;
                    }
                    Outcome::Order(view(order))
                }
                None => Outcome::Failed(error(404, "malformed", "no such order", None)),
            },
            Action::Finalize { order_url, .. } => self.finalize(order_url, now),
            Action::Download {
                certificate_url, ..
            } => self.download(certificate_url, now),
            Action::PrepareKey { .. } => {
                self.next_id += 1;
                Outcome::KeyPrepared {
                    key: test_sealed_blob((self.next_id % 251) as u8),
                }
            }
            Action::WaitApplied { .. } => Outcome::Applied { lagging: 0 },
            Action::Commit(_) | Action::Sleep { .. } | Action::Wait | Action::Done => return None,
        })
    }

    /// The token and key authorization a node must answer for `challenge_url` now: the key
    /// authorization names the account's current key (RFC 8555 §8.1).
    #[must_use]
    pub fn expected_answer(&self, challenge_url: &str) -> (String, String) {
        let authz_url = challenge_url.split("/chall/").next().unwrap_or_default();
        let token = challenge_token(authz_url);
        let key_authorization = format!("{token}.{}", self.thumbprint(self.keys.last()));
        (token, key_authorization)
    }

    /// Makes the order behind `challenge_url` fail validation when it is marked ready (the
    /// simulation's CA found no answer at the node it asked).
    pub fn fail_validation(&mut self, challenge_url: &str) {
        let order_url = challenge_url.split("/authz/").next().unwrap_or_default();
        if let Some(order) = self.orders.get_mut(order_url) {
            order.fail_validation = true;
        }
    }

    /// Answers an ARI poll for a certificate at `now`.
    pub fn renewal_info(&mut self, ari_id: &str, now: UnixMillis) -> Option<AriWindow> {
        let (not_after, set) = self.certificates.get(ari_id)?;
        let (not_after, set) = (*not_after, set.clone());
        self.ari_polls += 1;
        if self.faults.ari_renew_now > 0 {
            self.faults.ari_renew_now -= 1;
            self.renew_now.push((set, now));
            return Some(AriWindow {
                start: now.minus_ms(2 * HOUR_MS),
                end: now.minus_ms(HOUR_MS),
            });
        }
        let (start_before, end_before) = self.ari_window_before_expiry_ms;
        let shift = if self.faults.ari_moves {
            mix(11, ari_id.as_bytes(), self.ari_polls) % (self.lifetime_ms / 6 + 1)
        } else {
            0
        };
        Some(AriWindow {
            start: not_after.minus_ms(start_before + shift),
            end: not_after.minus_ms(end_before + shift),
        })
    }

    fn create_order(&mut self, identifiers: &[Identifier], now: UnixMillis) -> Outcome {
        if self.faults.rate_limit_new_orders > 0 {
            self.faults.rate_limit_new_orders -= 1;
            let retry_at = now.plus_ms(self.faults.rate_limit_retry_ms);
            return Outcome::Failed(CaError {
                account_wide: true,
                ..error(429, "rateLimited", "too many new orders", Some(retry_at))
            });
        }
        let set: Vec<String> = identifiers.iter().map(Identifier::value).collect();
        let set = set.join(",");
        if self.faults.reuse_orders
            && let Some(url) = self.last_order.get(&set)
            && let Some(order) = self.orders.get(url)
            && matches!(order.status, OrderStatus::Pending | OrderStatus::Ready)
        {
            self.reused_orders += 1;
            return Outcome::OrderCreated {
                order_url: url.clone(),
                authorizations: order.authz.iter().map(|(u, _, _)| u.clone()).collect(),
            };
        }
        self.next_id += 1;
        self.new_orders += 1;
        let url = format!("https://acme.test/order/{}", self.next_id);
        self.last_order.insert(set.clone(), url.clone());
        *self.orders_per_set.entry(set.clone()).or_default() += 1;
        let reuse = self.faults.reuse_authz;
        let authz: Vec<(String, Identifier, AuthzStatus)> = identifiers
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let status = if reuse && self.validated.contains(id) {
                    AuthzStatus::Valid
                } else {
                    AuthzStatus::Pending
                };
                (format!("{url}/authz/{i}"), id.clone(), status)
            })
            .collect();
        let fail_validation = self.faults.invalid_authz > 0;
        if fail_validation {
            self.faults.invalid_authz -= 1;
        }
        let urls = authz.iter().map(|(u, _, _)| u.clone()).collect();
        let all_valid = authz.iter().all(|(_, _, s)| *s == AuthzStatus::Valid);
        let order = ModelOrder {
            set,
            status: if all_valid {
                OrderStatus::Ready
            } else {
                OrderStatus::Pending
            },
            valid_at: UnixMillis::ZERO,
            authz,
            fail_validation,
            certificate_url: None,
        };
        self.orders.insert(url.clone(), order);
        Outcome::OrderCreated {
            order_url: url,
            authorizations: urls,
        }
    }

    /// The authorizations at `urls`, with key authorizations as the client signing with `key`
    /// computes them.
    fn authorizations(&self, urls: &[String], key: Option<&SealedBlob>) -> Outcome {
        let thumbprint = self.thumbprint(key);
        let mut views = Vec::new();
        for url in urls {
            let Some(order_url) = url.split("/authz/").next() else {
                continue;
            };
            let Some(order) = self.orders.get(order_url) else {
                return Outcome::Failed(error(404, "malformed", "no such authorization", None));
            };
            let Some((_, identifier, status)) = order.authz.iter().find(|(u, _, _)| u == url)
            else {
                continue;
            };
            let token = challenge_token(url);
            let offers = [
                ChallengeKind::Http01,
                ChallengeKind::TlsAlpn01,
                ChallengeKind::Dns01,
            ]
            .into_iter()
            .map(|kind| ChallengeOffer {
                kind,
                url: format!("{url}/chall/{kind}"),
                token: token.clone(),
                key_authorization: format!("{token}.{thumbprint}"),
            })
            .collect();
            views.push(AuthzView {
                identifier: identifier.clone(),
                status: *status,
                challenges: offers,
            });
        }
        Outcome::Authorizations(views)
    }

    /// Whether the authorization behind `challenge_url` still waits for validation.
    #[must_use]
    pub fn challenge_pending(&self, challenge_url: &str) -> bool {
        let authz_url = challenge_url.split("/chall/").next().unwrap_or_default();
        let order_url = challenge_url.split("/authz/").next().unwrap_or_default();
        self.orders.get(order_url).is_some_and(|order| {
            order
                .authz
                .iter()
                .any(|(u, _, s)| u == authz_url && *s == AuthzStatus::Pending)
        })
    }

    /// Completes the validation of the challenges at `urls`, as a `MarkReady` does at once
    /// (for a CA that validates later than it is told to).
    pub fn complete_validation(&mut self, urls: &[String]) {
        self.mark_ready(urls);
    }

    fn mark_ready(&mut self, urls: &[String]) -> Outcome {
        for url in urls {
            let Some(order_url) = url.split("/authz/").next() else {
                continue;
            };
            let Some(order) = self.orders.get_mut(order_url) else {
                continue;
            };
            let authz_url = url.split("/chall/").next().unwrap_or_default();
            let fail = order.fail_validation;
            for (u, identifier, status) in &mut order.authz {
                if u == authz_url && *status == AuthzStatus::Pending {
                    *status = if fail {
                        AuthzStatus::Invalid
                    } else {
                        self.validated.insert(identifier.clone());
                        AuthzStatus::Valid
                    };
                }
            }
            // Only a pending order moves: one finalized (or failed) stays as it is, however
            // late a validation completes.
            if order.status != OrderStatus::Pending {
                continue;
            }
            if order
                .authz
                .iter()
                .any(|(_, _, s)| *s == AuthzStatus::Invalid)
            {
                order.status = OrderStatus::Invalid;
            } else if order.authz.iter().all(|(_, _, s)| *s == AuthzStatus::Valid) {
                order.status = OrderStatus::Ready;
            }
        }
        Outcome::ChallengesReady
    }

    fn finalize(&mut self, order_url: &str, now: UnixMillis) -> Outcome {
        let lose = self.faults.lose_finalize_response > 0;
        let Some(order) = self.orders.get_mut(order_url) else {
            return Outcome::Failed(error(404, "malformed", "no such order", None));
        };
        if order.status != OrderStatus::Ready {
            return Outcome::Failed(error(403, "orderNotReady", "order is not ready", None));
        }
        self.next_id += 1;
        if self.faults.processing_ms > 0 {
            order.status = OrderStatus::Processing;
            order.valid_at = now.plus_ms(self.faults.processing_ms);
        } else {
            order.status = OrderStatus::Valid;
        }
        order.certificate_url = Some(format!("https://acme.test/cert/{}", self.next_id));
        *self.issued_per_set.entry(order.set.clone()).or_default() += 1;
        let answer = view(order);
        if lose {
            self.faults.lose_finalize_response -= 1;
            return Outcome::Failed(error(0, "", "connection reset", None));
        }
        Outcome::Order(answer)
    }

    fn download(&mut self, certificate_url: &str, now: UnixMillis) -> Outcome {
        let Some(order) = self
            .orders
            .values()
            .find(|o| o.certificate_url.as_deref() == Some(certificate_url))
        else {
            return Outcome::Failed(error(404, "malformed", "no such certificate", None));
        };
        let serial = mix(3, certificate_url.as_bytes(), 0);
        let set = order.set.clone();
        let not_before = now;
        let not_after = not_before.plus_ms(self.lifetime_ms);
        let ari_id = self.ari.then(|| format!("ari.{serial:x}"));
        if let Some(id) = &ari_id {
            self.certificates.insert(id.clone(), (not_after, set));
        }
        let mut leaf = serial.to_le_bytes().to_vec();
        leaf.extend_from_slice(certificate_url.as_bytes());
        self.issued += 1;
        let generation = match self.faults.chain_every {
            0 => 0,
            every => self.issued / every,
        };
        Outcome::Certificate {
            leaf_der: leaf,
            chain_der: alloc::vec![alloc::vec![0x30, 0x82, 1, (2 + generation % 250) as u8]],
            not_before,
            not_after,
            ari_id,
        }
    }
}

fn challenge_token(authz_url: &str) -> String {
    format!("tok{}", mix(7, authz_url.as_bytes(), 0))
}

fn view(order: &ModelOrder) -> OrderView {
    OrderView {
        status: order.status,
        // Only a valid order's certificate can be downloaded.
        certificate_url: order
            .certificate_url
            .clone()
            .filter(|_| order.status == OrderStatus::Valid),
        retry_at: (order.status == OrderStatus::Processing).then_some(order.valid_at),
        error: None,
    }
}

fn error(status: u16, kind: &str, detail: &str, retry_at: Option<UnixMillis>) -> CaError {
    CaError {
        status: (status != 0).then_some(status),
        problem: (!kind.is_empty()).then(|| format!("urn:ietf:params:acme:error:{kind}")),
        detail: detail.into(),
        retry_at,
        account_wide: false,
    }
}

/// Counters the harness keeps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HarnessStats {
    /// Commands applied (accepted or not).
    pub entries: u64,
    /// Commands rejected by `apply`.
    pub rejected: u64,
    /// Cycles begun.
    pub cycles: u64,
    /// Certificates issued.
    pub issued: u64,
    /// Cycles failed.
    pub failed: u64,
    /// Largest number of due-index entries one tick examined.
    pub scanned_max: u32,
    /// Leader changes.
    pub leader_changes: u64,
}

/// One leader, its log and a model CA, in virtual time.
#[derive(Debug)]
pub struct Harness {
    /// The replicated state (as applied by the leader).
    pub state: State,
    /// Every command appended, accepted or not, in log order.
    pub log: Vec<Command>,
    /// Virtual now.
    pub now: UnixMillis,
    /// The leader's term.
    pub term: Term,
    /// The CA.
    pub ca: ModelCa,
    /// Counters.
    pub stats: HarnessStats,
    drivers: BTreeMap<CertId, OrderDriver>,
    seed: u64,
}

impl Harness {
    /// A leader at `now` with an account for [`ISSUER`] and a CA issuing `lifetime_ms`.
    #[must_use]
    pub fn new(seed: u64, now: UnixMillis, lifetime_ms: u64) -> Self {
        let mut harness = Self {
            state: State::new(),
            log: Vec::new(),
            now,
            term: Term(1),
            ca: ModelCa::new(lifetime_ms),
            stats: HarnessStats::default(),
            drivers: BTreeMap::new(),
            seed,
        };
        let issuer = IssuerId::parse(ISSUER).expect("valid");
        let account = account();
        harness.ca.bind_account_key(&account.credentials);
        let response = harness.commit(Op::SetAccount { issuer, account });
        assert_eq!(response, Response::Accepted);
        harness
    }

    /// Appends and applies one command at `now`.
    pub fn commit(&mut self, op: Op) -> Response {
        let command = Command { at: self.now, op };
        let (response, _events) = apply(&mut self.state, &command);
        self.log.push(command);
        self.stats.entries += 1;
        if !response.is_accepted() {
            self.stats.rejected += 1;
        }
        response
    }

    /// Adds one certificate per name.
    pub fn add(&mut self, names: &[&str]) {
        for name in names {
            let seed = self.next_seed();
            let response = self.commit(Op::PutCert {
                spec: spec(&[name]),
                seed,
            });
            assert_eq!(response, Response::Accepted, "adding {name}");
        }
    }

    /// A new leader takes over: a later term, no drivers (they died with the old leader).
    pub fn change_leader(&mut self) {
        self.term = Term(self.term.0 + 1);
        self.drivers.clear();
        self.stats.leader_changes += 1;
    }

    /// Drops the drivers without a term change (used to test resumption by the same code path).
    pub fn open_driver_count(&self) -> usize {
        self.drivers.len()
    }

    /// One planner tick and one pass over every driver until it sleeps. Returns when the leader
    /// next needs to wake.
    pub fn tick(&mut self) -> Option<UnixMillis> {
        let plan = plan(&self.state, self.now, self.term);
        self.stats.scanned_max = self.stats.scanned_max.max(plan.scanned);
        let mut deferred = Vec::new();
        for intent in plan.intents {
            match intent {
                Intent::NewOrder { ref cert, .. } | Intent::Resume { ref cert, .. } => {
                    let op = intent
                        .cycle_command(self.term)
                        .expect("new orders and resumes are cycle commands");
                    let begins = matches!(intent, Intent::NewOrder { .. });
                    if self.commit(op).is_accepted() {
                        self.stats.cycles += u64::from(begins);
                        self.start_driver(cert);
                    }
                }
                Intent::Drive { cert, .. } => {
                    if !self.drivers.contains_key(&cert) {
                        self.start_driver(&cert);
                    }
                }
                Intent::Defer { cert, until } => deferred.push((cert, until)),
                Intent::PollRenewalInfo {
                    cert,
                    cycle,
                    ari_id,
                } => {
                    let window = self.ca.renewal_info(&ari_id, self.now);
                    let seed = self.next_seed();
                    self.commit(Op::RenewalInfoPolled {
                        cert,
                        cycle,
                        window,
                        retry_at: None,
                        seed,
                    });
                }
                Intent::RollAccountKey { issuer, old, new } => {
                    // As the node driver: the issuer's cycles stop while the CA may hold
                    // either key, and are driven again from their committed steps after.
                    self.drivers.clear();
                    let op = match self.ca.roll_account_key(&old, &new) {
                        Ok(()) => Op::AccountKeyRolled {
                            issuer,
                            credentials: new,
                        },
                        Err(detail) => Op::AccountKeyRolloverRefused {
                            issuer,
                            credentials: new,
                            detail,
                        },
                    };
                    self.commit(op);
                }
            }
        }
        if !deferred.is_empty() {
            self.commit(Op::CertsDeferred { items: deferred });
        }
        let mut wake_at = plan.wake_at;
        let certs: Vec<CertId> = self.drivers.keys().cloned().collect();
        for cert in certs {
            if let Some(until) = self.drive(&cert) {
                wake_at = Some(wake_at.map_or(until, |w| w.min(until)));
            }
        }
        wake_at
    }

    /// Runs ticks until `until`, jumping virtual time to each wake-up (at least one second).
    ///
    /// A tick that committed anything changed the due index after the plan was made, so the
    /// leader plans again at the same instant before sleeping (bounded, so a livelock fails).
    pub fn run_until(&mut self, until: UnixMillis) {
        let mut ticks_at_instant = 0u32;
        while self.now < until {
            let entries = self.stats.entries;
            let wake_at = self.tick();
            if self.stats.entries != entries {
                ticks_at_instant += 1;
                assert!(
                    ticks_at_instant < 10_000,
                    "leader loop does not settle at {}",
                    self.now
                );
                continue;
            }
            ticks_at_instant = 0;
            let next = wake_at.unwrap_or(until).max(self.now.plus_ms(1_000));
            self.now = next.min(until);
        }
        self.tick();
    }

    /// Every certificate's current record.
    pub fn records(&self) -> impl Iterator<Item = (&CertId, &CertRecord)> {
        self.state.certs()
    }

    fn start_driver(&mut self, cert: &CertId) {
        let seed = self.next_seed();
        let Some(open) = self.state.cert(cert).and_then(|r| r.open.as_ref()) else {
            return;
        };
        let driver = OrderDriver::new(cert.clone(), open, self.stats.entries, seed);
        self.drivers.insert(cert.clone(), driver);
    }

    /// Drives one cycle until it sleeps or finishes; returns its wake-up instant.
    fn drive(&mut self, cert: &CertId) -> Option<UnixMillis> {
        // A cycle makes at most a few dozen moves between sleeps; a livelock fails loudly.
        for _ in 0..256 {
            let driver = self.drivers.get_mut(cert)?;
            let action = driver.poll_action(&self.state, self.now);
            let outcome = match action {
                Action::Commit(command) => {
                    let closes =
                        matches!(command.op, Op::CertIssued { .. } | Op::OrderFailed { .. });
                    let issued = matches!(command.op, Op::CertIssued { .. });
                    let response = self.commit(command.op);
                    match response {
                        Response::Accepted => {
                            if closes && issued {
                                self.stats.issued += 1;
                            } else if closes {
                                self.stats.failed += 1;
                            }
                            Outcome::Committed {
                                index: self.stats.entries,
                            }
                        }
                        Response::Rejected(rejection) => Outcome::Rejected(rejection),
                    }
                }
                Action::Sleep { until } => return Some(until),
                Action::Wait => panic!("the harness performs every action synchronously"),
                Action::Done => {
                    self.drivers.remove(cert);
                    return None;
                }
                other => {
                    let key = self
                        .state
                        .account(&IssuerId::parse(ISSUER).expect("valid"))
                        .map(|account| account.credentials.clone())
                        .expect("the harness registers its account");
                    self.ca
                        .perform_signed(&other, &key, self.now)
                        .expect("a CA action")
                }
            };
            let driver = self.drivers.get_mut(cert)?;
            driver.handle_outcome(self.now, outcome);
        }
        panic!("driver for {cert} made 256 moves without sleeping");
    }

    fn next_seed(&mut self) -> u64 {
        self.seed = mix(self.seed, b"harness", self.stats.entries);
        self.seed
    }
}

/// A profile-free spec with the given challenge kind (for wildcard and ALPN fixtures).
#[must_use]
pub fn spec_with(names: &[&str], challenge: ChallengeKind, profile: Profile) -> CertSpec {
    let request = CertRequest {
        identifiers: names.iter().map(|n| (*n).into()).collect(),
        issuer: ISSUER.into(),
        challenge,
        profile: profile.acme_name().unwrap_or_default().into(),
        ..CertRequest::default()
    };
    CertSpec::from_request(&request).expect("fixture spec is valid")
}

/// A sealed-looking blob for tests.
#[must_use]
pub fn sealed(fill: u8) -> SealedBlob {
    test_sealed_blob(fill)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leader_issues_and_renews_every_certificate_for_a_year() {
        let start = UnixMillis(1_700_000_000_000);
        let mut h = Harness::new(1, start, 90 * DAY_MS);
        h.add(&["a.example.com", "b.example.com", "c.example.org"]);
        h.run_until(start.plus_ms(365 * DAY_MS));
        for (id, record) in h.records() {
            let current = record.current.as_ref().expect("issued");
            assert!(current.not_after > h.now, "{id} expired");
        }
        // 365 days at a renewal every ~60 days: 1 initial + 6 renewals per certificate.
        assert_eq!(h.stats.issued, 3 * 7, "{:?}", h.stats);
        assert_eq!(h.stats.cycles, h.stats.issued);
        assert!(
            h.ca.orders_per_set.values().all(|n| *n == 7),
            "{:?}",
            h.ca.orders_per_set
        );
        assert_eq!(h.stats.rejected, 0);
    }

    #[test]
    fn twenty_five_six_day_certificates_per_domain_keep_renewing() {
        // 25 certificates renewing every 3 days is 58 a week for one registered domain, above
        // the 50 a week limit: only the renewal exemption keeps them all valid.
        let start = UnixMillis(1_700_000_000_000);
        let mut h = Harness::new(2, start, 6 * DAY_MS);
        let names: Vec<String> = (0..25).map(|i| format!("n{i}.example.com")).collect();
        h.add(&names.iter().map(String::as_str).collect::<Vec<_>>());
        for day in 1..=30 {
            h.run_until(start.plus_ms(day * DAY_MS));
            for (id, record) in h.records() {
                assert!(
                    record.current.as_ref().is_some_and(|c| c.not_after > h.now),
                    "{id} expired on day {day}"
                );
            }
        }
    }

    #[test]
    fn an_account_key_rolls_over_through_a_leader_dying_after_the_ca_acted() {
        let start = UnixMillis(1_700_000_000_000);
        let mut h = Harness::new(3, start, 6 * DAY_MS);
        let issuer = IssuerId::parse(ISSUER).expect("valid");
        h.add(&["a.example.com", "b.example.com"]);
        h.run_until(start.plus_ms(DAY_MS));
        assert_eq!(h.stats.issued, 2);
        let old = account().credentials;
        let first = sealed(41);
        assert!(
            h.commit(Op::RollAccountKey {
                issuer: issuer.clone(),
                credentials: first.clone(),
            })
            .is_accepted()
        );
        // The leader asks the CA, which binds the new key, and dies before committing it.
        h.ca.roll_account_key(&old, &first)
            .expect("the CA holds the old key");
        h.change_leader();
        // Its successor asks again: the CA already holds the new key, which is what counts.
        h.run_until(start.plus_ms(2 * DAY_MS));
        let account = h.state.account(&issuer).expect("registered");
        assert_eq!(account.credentials, first);
        assert_eq!(account.rollover, None);
        assert_eq!(h.ca.account_key(), Some(&first));
        // A second rollover, then renewals for weeks: every call is signed with the key the CA
        // holds, and the certificates stay valid.
        let second = sealed(42);
        assert!(
            h.commit(Op::RollAccountKey {
                issuer: issuer.clone(),
                credentials: second.clone(),
            })
            .is_accepted()
        );
        for day in 3..=20 {
            h.run_until(start.plus_ms(day * DAY_MS));
            for (id, record) in h.records() {
                assert!(
                    record.current.as_ref().is_some_and(|c| c.not_after > h.now),
                    "{id} expired on day {day}"
                );
            }
        }
        assert_eq!(h.ca.account_key(), Some(&second));
        assert_eq!(
            h.state.account(&issuer).map(|a| &a.credentials),
            Some(&second)
        );
        assert_eq!(h.ca.wrong_key_calls, 0);
        assert!(h.stats.issued >= 2 + 2 * 5, "{:?}", h.stats);
        // A key the CA no longer holds is refused, as a CA verifying signatures does.
        let refused = h.ca.perform_signed(
            &Action::FetchOrder {
                order_url: "https://acme.test/order/1".into(),
            },
            &old,
            h.now,
        );
        assert!(
            matches!(
                refused,
                Some(Outcome::Failed(CaError {
                    status: Some(401),
                    ..
                }))
            ),
            "{refused:?}"
        );
        // Rolling back to a key the account had before is refused, and the account keeps its key.
        assert!(
            h.commit(Op::RollAccountKey {
                issuer: issuer.clone(),
                credentials: first.clone(),
            })
            .is_accepted()
        );
        h.run_until(h.now.plus_ms(HOUR_MS));
        assert_eq!(
            h.state
                .account(&issuer)
                .map(|a| (&a.credentials, &a.rollover)),
            Some((&second, &None))
        );
        assert_eq!(h.ca.account_key(), Some(&second));
    }
}
