//! The sans-IO ACME server: requests in, responses and validations out; time is an argument
//! and every random choice comes from generators seeded at construction.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::IpAddr;

use base64::Engine;
use base64::prelude::BASE64_URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use serde_json::{Map, Value, json};

use crate::config::{CaConfig, ChallengeKind, ConfigError, RateLimit};
use crate::jws::{Jwk, Jws, Signer};
use crate::model::{
    CaEvent, CaSizes, CaStats, EventHook, Fault, Identifier, LimitKind, Validation, ValidationId,
};
use crate::pki::{self, LeafRequest, Pki};
use crate::problem::{Problem, ProblemType};
use crate::rng::SeededRng;

/// Why an [`AcmeServer`] could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The CA certificates could not be made.
    #[error("making the CA certificates: {0}")]
    Pki(#[from] rcgen::Error),
}

/// An RFC 8555 ACME server with no IO: [`AcmeServer::handle`] answers one HTTP request at a
/// given time, [`AcmeServer::take_validations`] yields the challenge checks the host must run,
/// and [`AcmeServer::validation_done`] takes their results. The same seed, fed the same calls,
/// gives byte-identical answers.
pub struct AcmeServer {
    config: CaConfig,
    /// `scheme://authority` of the base URL: with a request's path, the URL a JWS must name.
    origin: String,
    /// The base URL's path prefix (may be empty).
    prefix: String,
    pki: Pki,
    ids: SeededRng,
    nonce_rng: SeededRng,
    faults: SeededRng,
    now_ms: u64,
    nonces: BTreeSet<String>,
    nonce_order: VecDeque<String>,
    accounts: BTreeMap<String, Account>,
    accounts_by_key: BTreeMap<String, String>,
    orders: BTreeMap<String, Order>,
    authzs: BTreeMap<String, Authz>,
    /// Challenge id → its authorization.
    challenges: BTreeMap<String, String>,
    /// (account, identifier value, wildcard) → a valid authorization to reuse.
    reusable: BTreeMap<(String, String, bool), String>,
    certs: BTreeMap<String, Cert>,
    certs_by_ari: BTreeMap<String, String>,
    certs_by_expiry: BTreeSet<(u64, String)>,
    timers: BTreeSet<(u64, Timer)>,
    /// GCRA arrival times per (limit, key), as `certfleet_core::budget` keeps them.
    arrivals: BTreeMap<(LimitKind, String), u64>,
    pending_validations: Vec<Validation>,
    in_flight: BTreeMap<ValidationId, (String, String)>,
    next_validation: u64,
    stats: CaStats,
    events: VecDeque<CaEvent>,
    event_hook: Option<EventHook>,
}

impl std::fmt::Debug for AcmeServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcmeServer")
            .field("base_url", &self.config.base_url)
            .field("now_ms", &self.now_ms)
            .field("accounts", &self.accounts.len())
            .field("orders", &self.orders.len())
            .field("authzs", &self.authzs.len())
            .field("certs", &self.certs.len())
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKind {
    ExpireOrder,
    ExpireAuthz,
    /// A processing order's certificate becomes available.
    OrderIssued,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Record(TimerKind, String),
    /// A GCRA bucket may be full again: drop its arrival time.
    Limit(LimitKind, String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AccountStatus {
    Valid,
    Deactivated,
}

struct Account {
    jwk: Jwk,
    thumbprint: String,
    contact: Vec<String>,
    status: AccountStatus,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OrderStatus {
    Pending,
    Ready,
    Processing,
    Valid,
    Invalid,
}

impl OrderStatus {
    fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Ready => "ready",
            Self::Processing => "processing",
            Self::Valid => "valid",
            Self::Invalid => "invalid",
        }
    }
}

struct Order {
    account: String,
    identifiers: Vec<Identifier>,
    authzs: Vec<String>,
    status: OrderStatus,
    expires_ms: u64,
    profile: String,
    replaces: Option<String>,
    error: Option<Problem>,
    certificate: Option<String>,
    issued_at_ms: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AuthzStatus {
    Pending,
    Valid,
    Invalid,
    Deactivated,
}

impl AuthzStatus {
    fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Valid => "valid",
            Self::Invalid => "invalid",
            Self::Deactivated => "deactivated",
        }
    }
}

struct Authz {
    account: String,
    identifier: Identifier,
    wildcard: bool,
    status: AuthzStatus,
    expires_ms: u64,
    challenges: Vec<Challenge>,
    /// Orders that use this authorization (one, or more when reused).
    orders: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChallengeStatus {
    Pending,
    Processing,
    Valid,
    Invalid,
}

impl ChallengeStatus {
    fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Processing => "processing",
            Self::Valid => "valid",
            Self::Invalid => "invalid",
        }
    }
}

struct Challenge {
    id: String,
    kind: ChallengeKind,
    token: String,
    status: ChallengeStatus,
    validated_ms: Option<u64>,
    error: Option<Problem>,
}

/// Whether a certificate was replaced (ARI `replaces`, RFC 9773 §5).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Replacement {
    None,
    /// An order names it in `replaces`; it counts as replaced while that order may still
    /// succeed.
    Ordered(String),
    /// A replacing order was finalized.
    Done,
}

struct Cert {
    account: String,
    der: Vec<u8>,
    chain_pem: String,
    ari_id: String,
    not_before_ms: u64,
    not_after_ms: u64,
    revoked: bool,
    replaced: Replacement,
}

/// What a verified POST carries.
struct Post {
    jws: Jws,
    /// The account, for `kid` requests.
    account: Option<String>,
    /// The verifying key.
    jwk: Jwk,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum KeyMode {
    /// newAccount: a `jwk` (RFC 8555 §6.2).
    Jwk,
    /// Everything else: a `kid`.
    Kid,
}

/// Bytes of random ids (resource URLs), nonces, and challenge tokens (RFC 8555 §8.1: at least
/// 128 bits of entropy).
const ID_BYTES: usize = 12;
const NONCE_BYTES: usize = 16;
const TOKEN_BYTES: usize = 32;

impl AcmeServer {
    /// A server with `config`, whose keys, ids, nonces, tokens and faults all derive from
    /// `seed`.
    pub fn new(config: CaConfig, seed: u64) -> Result<Self, CaError> {
        config.check()?;
        // `check` parsed the base URL, so this split cannot fail; fall back to the whole URL.
        let (origin, prefix) = split_base(&config.base_url);
        Ok(Self {
            origin,
            prefix,
            pki: Pki::new(seed)?,
            ids: SeededRng::new(seed, "ids"),
            nonce_rng: SeededRng::new(seed, "nonces"),
            faults: SeededRng::new(seed, "faults"),
            now_ms: 0,
            nonces: BTreeSet::new(),
            nonce_order: VecDeque::new(),
            accounts: BTreeMap::new(),
            accounts_by_key: BTreeMap::new(),
            orders: BTreeMap::new(),
            authzs: BTreeMap::new(),
            challenges: BTreeMap::new(),
            reusable: BTreeMap::new(),
            certs: BTreeMap::new(),
            certs_by_ari: BTreeMap::new(),
            certs_by_expiry: BTreeSet::new(),
            timers: BTreeSet::new(),
            arrivals: BTreeMap::new(),
            pending_validations: Vec::new(),
            in_flight: BTreeMap::new(),
            next_validation: 0,
            stats: CaStats::default(),
            events: VecDeque::new(),
            event_hook: None,
            config,
        })
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &CaConfig {
        &self.config
    }

    /// The directory URL to give clients.
    #[must_use]
    pub fn directory_url(&self) -> String {
        self.url("/directory")
    }

    /// The root certificate (PEM), for clients to trust.
    #[must_use]
    pub fn root_pem(&self) -> &str {
        &self.pki.root_pem
    }

    /// The root certificate (DER).
    #[must_use]
    pub fn root_der(&self) -> &[u8] {
        &self.pki.root_der
    }

    /// The intermediate certificate (PEM), which every chain carries after the leaf.
    #[must_use]
    pub fn intermediate_pem(&self) -> &str {
        &self.pki.intermediate_pem
    }

    /// The intermediate certificate (DER).
    #[must_use]
    pub fn intermediate_der(&self) -> &[u8] {
        &self.pki.intermediate_der
    }

    /// The counters.
    #[must_use]
    pub fn stats(&self) -> &CaStats {
        &self.stats
    }

    /// The event log, oldest first.
    pub fn events(&self) -> impl Iterator<Item = &CaEvent> {
        self.events.iter()
    }

    /// Calls `hook` with every event from now on, at the moment it happens: inside the
    /// [`AcmeServer::handle`], [`AcmeServer::validation_done`] or [`AcmeServer::tick`] call
    /// that causes it, so before a response it belongs to is returned. A host that must act
    /// between the CA's decision and the client seeing it (the simulation kills a leader in
    /// exactly that window) cannot get there by reading [`AcmeServer::events`] after the
    /// call. The hook sees events even when [`CaConfig::events_max`] keeps none. It runs on
    /// the caller's thread with the server borrowed, so it should only record or send the
    /// event; it cannot call back into the server.
    pub fn set_event_hook(&mut self, hook: Option<EventHook>) {
        self.event_hook = hook;
    }

    /// Drains the event log.
    pub fn take_events(&mut self) -> Vec<CaEvent> {
        self.events.drain(..).collect()
    }

    /// Validations requested since the last call, for the host to run.
    pub fn take_validations(&mut self) -> Vec<Validation> {
        std::mem::take(&mut self.pending_validations)
    }

    /// How many records the CA holds now, for memory-bound checks.
    #[must_use]
    pub fn sizes(&self) -> CaSizes {
        CaSizes {
            accounts: self.accounts.len(),
            orders: self.orders.len(),
            authorizations: self.authzs.len(),
            certificates: self.certs.len(),
            nonces: self.nonces.len(),
            timers: self.timers.len(),
            rate_buckets: self.arrivals.len(),
            events: self.events.len(),
        }
    }

    /// Moves the CA's clock to `now_ms` (never backwards) and runs what is due: expiry of
    /// orders, authorizations and certificates, processing orders becoming valid. `handle`
    /// and `validation_done` call it; hosts may call it to expire state while idle.
    pub fn tick(&mut self, now_ms: u64) -> u64 {
        self.now_ms = self.now_ms.max(now_ms);
        let now = self.now_ms;
        while let Some((at, _)) = self.timers.first() {
            if *at > now {
                break;
            }
            let Some((_, timer)) = self.timers.pop_first() else {
                break;
            };
            match timer {
                Timer::Record(TimerKind::ExpireOrder, id) => self.expire_order(&id, now),
                Timer::Record(TimerKind::ExpireAuthz, id) => self.expire_authz(&id, now),
                Timer::Record(TimerKind::OrderIssued, id) => self.advance_order(&id, now),
                Timer::Limit(kind, key) => {
                    let entry = (kind, key);
                    if self
                        .arrivals
                        .get(&entry)
                        .is_some_and(|arrival| *arrival <= now)
                    {
                        self.arrivals.remove(&entry);
                    }
                }
            }
        }
        while let Some((not_after_ms, _)) = self.certs_by_expiry.first() {
            if *not_after_ms > now {
                break;
            }
            let Some((_, id)) = self.certs_by_expiry.pop_first() else {
                break;
            };
            self.forget_cert(&id);
        }
        now
    }

    /// Answers one HTTP request at `now_ms`. Never panics on any input: every refusal is an
    /// RFC 7807 problem, and every response carries a fresh `Replay-Nonce`.
    pub fn handle(&mut self, request: Request<Bytes>, now_ms: u64) -> Response<Bytes> {
        let now = self.tick(now_ms);
        self.stats.requests += 1;
        let mut response = if self.faults.chance(self.config.faults.server_error_percent) {
            self.stats.server_errors_injected += 1;
            self.event(CaEvent::FaultInjected {
                at_ms: now,
                fault: Fault::ServerError,
                path: request.uri().path().to_owned(),
            });
            Problem::new(
                ProblemType::ServerInternal,
                "injected fault: service unavailable",
            )
            .with_status(StatusCode::SERVICE_UNAVAILABLE)
            .with_retry_after_s(self.config.faults.server_error_retry_after_s)
            .into_response()
        } else {
            match self.route(&request, now) {
                Ok(response) => response,
                Err(problem) => problem.into_response(),
            }
        };
        self.decorate(&mut response);
        self.date(&mut response, now);
        response
    }

    /// Stamps the response with the CA's `Date` (RFC 9110 §6.6.1: a server with a clock sends
    /// one), and now and then restates a `Retry-After` in seconds as the HTTP-date it stands
    /// for: clients must read both forms, the date against this `Date`.
    fn date(&mut self, response: &mut Response<Bytes>, now: u64) {
        let whole_s = now / 1000;
        let headers = response.headers_mut();
        headers.insert(header::DATE, http_date(whole_s));
        let seconds = headers
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        // No draw at 0 %, so configurations without the fault keep their random sequence.
        let percent = self.config.faults.retry_after_http_date_percent;
        if let Some(seconds) = seconds
            && percent > 0
            && self.faults.chance(percent)
        {
            self.stats.http_date_retry_afters += 1;
            response.headers_mut().insert(
                header::RETRY_AFTER,
                http_date(whole_s.saturating_add(seconds)),
            );
        }
    }

    /// The answer to a request whose body was larger than
    /// [`CaConfig::request_body_bytes_max`], for a binding that stops reading it.
    pub fn payload_too_large(&mut self, now_ms: u64) -> Response<Bytes> {
        self.tick(now_ms);
        let mut response = Problem::malformed("request body too large")
            .with_status(StatusCode::PAYLOAD_TOO_LARGE)
            .into_response();
        self.decorate(&mut response);
        response
    }

    /// The result of validation `id` at `now_ms`: `Ok` makes the challenge and its authorization
    /// valid, `Err(detail)` makes them invalid (RFC 8555 §7.5.1), and the orders using the
    /// authorization move on. Returns false for an unknown, finished or expired validation.
    pub fn validation_done(
        &mut self,
        id: ValidationId,
        result: Result<(), String>,
        now_ms: u64,
    ) -> bool {
        let now = self.tick(now_ms);
        let Some((authz_id, challenge_id)) = self.in_flight.remove(&id) else {
            return false;
        };
        let valid_lifetime_ms = self.config.authz_valid_lifetime_ms;
        let Some(authz) = self.authzs.get_mut(&authz_id) else {
            return false;
        };
        let Some(challenge) = authz.challenges.iter_mut().find(|c| c.id == challenge_id) else {
            return false;
        };
        if challenge.status != ChallengeStatus::Processing || authz.status != AuthzStatus::Pending {
            return false;
        }
        let identifier = authz.identifier.value();
        let account = authz.account.clone();
        let wildcard = authz.wildcard;
        let orders = authz.orders.clone();
        match result {
            Ok(()) => {
                challenge.status = ChallengeStatus::Valid;
                challenge.validated_ms = Some(now);
                authz.status = AuthzStatus::Valid;
                authz.expires_ms = now.saturating_add(valid_lifetime_ms);
                let expires_ms = authz.expires_ms;
                self.timers.insert((
                    expires_ms,
                    Timer::Record(TimerKind::ExpireAuthz, authz_id.clone()),
                ));
                self.reusable
                    .insert((account, identifier.clone(), wildcard), authz_id);
                self.stats.validations_succeeded += 1;
                self.event(CaEvent::ValidationSucceeded {
                    at_ms: now,
                    id,
                    identifier,
                });
            }
            Err(detail) => {
                let problem = Problem::new(ProblemType::IncorrectResponse, detail.clone())
                    .with_status(StatusCode::FORBIDDEN);
                challenge.status = ChallengeStatus::Invalid;
                challenge.error = Some(problem);
                authz.status = AuthzStatus::Invalid;
                if let Some(limit) = self.config.limits.failed_validations_per_identifier {
                    self.consume(
                        LimitKind::FailedValidations,
                        format!("{account} {identifier}"),
                        limit,
                        now,
                    );
                }
                self.stats.validations_failed += 1;
                self.event(CaEvent::ValidationFailed {
                    at_ms: now,
                    id,
                    identifier,
                    detail,
                });
            }
        }
        for order in orders {
            self.advance_order(&order, now);
        }
        true
    }

    fn route(&mut self, request: &Request<Bytes>, now: u64) -> Result<Response<Bytes>, Problem> {
        let full_path = request.uri().path();
        let Some(path) = full_path.strip_prefix(self.prefix.as_str()) else {
            return Err(Problem::not_found(format!("no resource at {full_path}")));
        };
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let method = request.method();
        let post = |allowed: bool| {
            if allowed {
                Ok(())
            } else {
                Err(method_not_allowed("POST"))
            }
        };
        match segments.as_slice() {
            ["directory"] => {
                if method != Method::GET && method != Method::HEAD {
                    return Err(method_not_allowed("GET"));
                }
                Ok(self.directory())
            }
            ["new-nonce"] => {
                // RFC 8555 §7.2: HEAD answers 200, GET 204.
                let status = match *method {
                    Method::HEAD => StatusCode::OK,
                    Method::GET => StatusCode::NO_CONTENT,
                    _ => return Err(method_not_allowed("GET, HEAD")),
                };
                let mut response = Response::new(Bytes::new());
                *response.status_mut() = status;
                Ok(response)
            }
            ["renewal-info", id] => {
                if method != Method::GET {
                    return Err(method_not_allowed("GET"));
                }
                self.renewal_info(id, now)
            }
            ["new-account"] => {
                post(method == Method::POST)?;
                self.new_account(request, now)
            }
            ["new-order"] => {
                post(method == Method::POST)?;
                self.new_order(request, now)
            }
            ["revoke-cert"] => {
                post(method == Method::POST)?;
                self.revoke(request, now)
            }
            ["acct", id] => {
                post(method == Method::POST)?;
                self.account(request, id, now)
            }
            ["acct", id, "orders"] => {
                post(method == Method::POST)?;
                self.account_orders(request, id, now)
            }
            ["order", id] => {
                post(method == Method::POST)?;
                self.order(request, id, now)
            }
            ["order", id, "finalize"] => {
                post(method == Method::POST)?;
                self.finalize(request, id, now)
            }
            ["authz", id] => {
                post(method == Method::POST)?;
                self.authorization(request, id, now)
            }
            ["chall", id] => {
                post(method == Method::POST)?;
                self.challenge(request, id, now)
            }
            ["cert", id] => {
                post(method == Method::POST)?;
                self.certificate(request, id, now)
            }
            _ => Err(Problem::not_found(format!("no resource at {full_path}"))),
        }
    }

    fn directory(&self) -> Response<Bytes> {
        let profiles: Map<String, Value> = self
            .config
            .profiles
            .iter()
            .map(|(name, profile)| (name.clone(), Value::String(profile.description.clone())))
            .collect();
        json_response(
            StatusCode::OK,
            &json!({
                "newNonce": self.url("/new-nonce"),
                "newAccount": self.url("/new-account"),
                "newOrder": self.url("/new-order"),
                "revokeCert": self.url("/revoke-cert"),
                "renewalInfo": self.url("/renewal-info"),
                "meta": {
                    "profiles": profiles,
                    "externalAccountRequired": false,
                },
            }),
        )
    }

    /// RFC 8555 §6.2–6.5: a flattened JWS whose `url` is this request's URL, with a nonce we
    /// issued and not yet took back, signed by the key it names.
    fn verify_post(
        &mut self,
        request: &Request<Bytes>,
        mode: KeyMode,
        now: u64,
    ) -> Result<Post, Problem> {
        let content_type = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            });
        if content_type.as_deref() != Some("application/jose+json") {
            return Err(
                Problem::malformed("Content-Type must be application/jose+json")
                    .with_status(StatusCode::UNSUPPORTED_MEDIA_TYPE),
            );
        }
        if request.body().len() > self.config.request_body_bytes_max {
            return Err(Problem::malformed("request body too large")
                .with_status(StatusCode::PAYLOAD_TOO_LARGE));
        }
        let jws = Jws::parse(request.body())?;
        let expected_url = format!("{}{}", self.origin, request.uri().path());
        if jws.url != expected_url {
            // RFC 8555 §6.4.
            return Err(Problem::unauthorized(format!(
                "JWS url {:?} is not the request URL {expected_url:?}",
                jws.url
            )));
        }
        if !self.nonces.remove(&jws.nonce) {
            self.stats.bad_nonces += 1;
            return Err(Problem::new(ProblemType::BadNonce, "unknown or used nonce"));
        }
        if self.faults.chance(self.config.faults.bad_nonce_percent) {
            self.stats.bad_nonces_injected += 1;
            self.event(CaEvent::FaultInjected {
                at_ms: now,
                fault: Fault::BadNonce,
                path: request.uri().path().to_owned(),
            });
            return Err(Problem::new(
                ProblemType::BadNonce,
                "injected fault: nonce refused",
            ));
        }
        let (account, jwk) = match (&jws.signer, mode) {
            (Signer::Jwk(jwk), KeyMode::Jwk) => (None, jwk.clone()),
            (Signer::Kid(kid), KeyMode::Kid) => {
                let account_prefix = self.url("/acct/");
                let id = kid
                    .strip_prefix(account_prefix.as_str())
                    .filter(|id| self.accounts.contains_key(*id))
                    .ok_or_else(|| {
                        Problem::new(
                            ProblemType::AccountDoesNotExist,
                            format!("no account {kid:?}"),
                        )
                    })?;
                let account = &self.accounts[id];
                if account.status != AccountStatus::Valid {
                    return Err(Problem::unauthorized("account is deactivated"));
                }
                (Some(id.to_owned()), account.jwk.clone())
            }
            (Signer::Jwk(_), KeyMode::Kid) => {
                return Err(Problem::malformed("this request must be signed with a kid"));
            }
            (Signer::Kid(_), KeyMode::Jwk) => {
                return Err(Problem::malformed("newAccount must be signed with a jwk"));
            }
        };
        jws.verify(&jwk)?;
        Ok(Post { jws, account, jwk })
    }

    /// [`Self::verify_post`] for a `kid` request, returning the account id.
    fn verify_kid(&mut self, request: &Request<Bytes>, now: u64) -> Result<(Jws, String), Problem> {
        let post = self.verify_post(request, KeyMode::Kid, now)?;
        let account = post
            .account
            .ok_or_else(|| Problem::malformed("this request must be signed with a kid"))?;
        Ok((post.jws, account))
    }

    fn new_account(
        &mut self,
        request: &Request<Bytes>,
        now: u64,
    ) -> Result<Response<Bytes>, Problem> {
        let post = self.verify_post(request, KeyMode::Jwk, now)?;
        let payload = post.jws.payload_object()?;
        let thumbprint = post.jwk.thumbprint();
        // RFC 8555 §7.3.1: the same key finds the same account, answered with 200.
        if let Some(id) = self.accounts_by_key.get(&thumbprint).cloned() {
            let account = &self.accounts[&id];
            if account.status != AccountStatus::Valid {
                return Err(Problem::unauthorized("account is deactivated"));
            }
            let mut response = json_response(StatusCode::OK, &self.account_json(&id));
            set_location(&mut response, &self.url(&format!("/acct/{id}")));
            return Ok(response);
        }
        if payload
            .get("onlyReturnExisting")
            .and_then(Value::as_bool)
            .unwrap_or(false)
        {
            return Err(Problem::new(
                ProblemType::AccountDoesNotExist,
                "no account for this key",
            ));
        }
        let contact = contacts(&payload)?;
        if let Some(limit) = self.config.limits.new_accounts {
            self.check_limit(LimitKind::NewAccounts, String::new(), limit, now)?;
            self.consume(LimitKind::NewAccounts, String::new(), limit, now);
        }
        let id = self.fresh_id(|s, id| s.accounts.contains_key(id));
        self.accounts.insert(
            id.clone(),
            Account {
                jwk: post.jwk,
                thumbprint: thumbprint.clone(),
                contact,
                status: AccountStatus::Valid,
            },
        );
        self.accounts_by_key.insert(thumbprint, id.clone());
        self.stats.accounts_created += 1;
        let url = self.url(&format!("/acct/{id}"));
        self.event(CaEvent::AccountCreated {
            at_ms: now,
            account: url.clone(),
        });
        let mut response = json_response(StatusCode::CREATED, &self.account_json(&id));
        set_location(&mut response, &url);
        Ok(response)
    }

    fn account(
        &mut self,
        request: &Request<Bytes>,
        id: &str,
        now: u64,
    ) -> Result<Response<Bytes>, Problem> {
        let (jws, account) = self.verify_kid(request, now)?;
        if account != id {
            return Err(Problem::unauthorized("the kid is not this account"));
        }
        if jws.payload.is_some() {
            let payload = jws.payload_object()?;
            if let Some(status) = payload.get("status") {
                if status != "deactivated" {
                    return Err(Problem::malformed("an account can only be deactivated"));
                }
                if let Some(record) = self.accounts.get_mut(id) {
                    record.status = AccountStatus::Deactivated;
                }
            }
            if payload.contains_key("contact") {
                let contact = contacts(&payload)?;
                if let Some(record) = self.accounts.get_mut(id) {
                    record.contact = contact;
                }
            }
        }
        Ok(json_response(StatusCode::OK, &self.account_json(id)))
    }

    fn account_orders(
        &mut self,
        request: &Request<Bytes>,
        id: &str,
        now: u64,
    ) -> Result<Response<Bytes>, Problem> {
        let (_, account) = self.verify_kid(request, now)?;
        if account != id {
            return Err(Problem::unauthorized("the kid is not this account"));
        }
        let orders: Vec<String> = self
            .orders
            .iter()
            .filter(|(_, order)| order.account == account)
            .map(|(order_id, _)| self.url(&format!("/order/{order_id}")))
            .collect();
        Ok(json_response(StatusCode::OK, &json!({ "orders": orders })))
    }

    fn new_order(
        &mut self,
        request: &Request<Bytes>,
        now: u64,
    ) -> Result<Response<Bytes>, Problem> {
        let (jws, account) = self.verify_kid(request, now)?;
        let payload = jws.payload_object()?;
        if payload.contains_key("notBefore") || payload.contains_key("notAfter") {
            return Err(Problem::malformed(
                "notBefore and notAfter are not supported",
            ));
        }
        let identifiers = self.parse_identifiers(payload.get("identifiers"))?;
        let profile = match payload.get("profile") {
            None | Some(Value::Null) => self.config.default_profile.clone(),
            Some(Value::String(name)) if self.config.profiles.contains_key(name) => name.clone(),
            Some(other) => {
                return Err(Problem::new(
                    ProblemType::InvalidProfile,
                    format!("profile {other} is not offered"),
                ));
            }
        };
        let names: Vec<String> = identifiers.iter().map(Identifier::value).collect();
        let replaces = match payload.get("replaces") {
            None | Some(Value::Null) => None,
            Some(Value::String(ari_id)) => {
                self.check_replaces(ari_id, &account, &names)?;
                Some(ari_id.clone())
            }
            Some(_) => return Err(Problem::malformed("replaces is not a string")),
        };
        self.check_order_limits(&account, &identifiers, &names, now)?;
        if let Some(limit) = self.config.limits.orders_per_account {
            self.consume(
                LimitKind::OrdersPerAccount,
                self.account_url(&account),
                limit,
                now,
            );
        }

        let order_id = self.fresh_id(|s, id| s.orders.contains_key(id));
        let order_url = self.url(&format!("/order/{order_id}"));
        let mut expires_ms = now.saturating_add(self.config.order_lifetime_ms);
        let mut authz_ids = Vec::with_capacity(identifiers.len());
        for identifier in &identifiers {
            let (base, wildcard) = split_wildcard(identifier);
            let key = (account.clone(), base.value(), wildcard);
            let reusable = self
                .reusable
                .get(&key)
                .filter(|id| {
                    self.authzs.get(*id).is_some_and(|authz| {
                        authz.status == AuthzStatus::Valid && authz.expires_ms > now
                    })
                })
                .cloned();
            let reused = match reusable {
                Some(id) if self.faults.chance(self.config.authz_reuse_percent) => Some(id),
                _ => None,
            };
            let authz_id = match reused {
                Some(id) => {
                    self.stats.authorizations_reused += 1;
                    let authorization = self.url(&format!("/authz/{id}"));
                    self.event(CaEvent::AuthorizationReused {
                        at_ms: now,
                        order: order_url.clone(),
                        authorization,
                    });
                    id
                }
                None => self.create_authz(&account, base, wildcard, now),
            };
            if let Some(authz) = self.authzs.get_mut(&authz_id) {
                authz.orders.push(order_id.clone());
                // An order never outlives its authorizations (RFC 8555 §7.1.3).
                expires_ms = expires_ms.min(authz.expires_ms);
            }
            authz_ids.push(authz_id);
        }
        if let Some(ari_id) = &replaces
            && let Some(cert) = self
                .certs_by_ari
                .get(ari_id)
                .and_then(|id| self.certs.get_mut(id))
        {
            cert.replaced = Replacement::Ordered(order_id.clone());
        }
        self.orders.insert(
            order_id.clone(),
            Order {
                account: account.clone(),
                identifiers,
                authzs: authz_ids,
                status: OrderStatus::Pending,
                expires_ms,
                profile: profile.clone(),
                replaces: replaces.clone(),
                error: None,
                certificate: None,
                issued_at_ms: None,
            },
        );
        self.timers.insert((
            expires_ms,
            Timer::Record(TimerKind::ExpireOrder, order_id.clone()),
        ));
        self.stats.orders_created += 1;
        for name in &names {
            *self
                .stats
                .orders_per_identifier
                .entry(name.clone())
                .or_default() += 1;
        }
        let account_url = self.account_url(&account);
        self.event(CaEvent::OrderCreated {
            at_ms: now,
            account: account_url,
            order: order_url.clone(),
            identifiers: names,
            profile,
            replaces,
        });
        self.advance_order(&order_id, now);
        let mut response = self.order_response(&order_id, StatusCode::CREATED, now)?;
        set_location(&mut response, &order_url);
        Ok(response)
    }

    /// RFC 9773 §5: `replaces` names a certificate of this account, sharing a name with the
    /// new order, not already replaced.
    fn check_replaces(&self, ari_id: &str, account: &str, names: &[String]) -> Result<(), Problem> {
        let Some(cert) = self
            .certs_by_ari
            .get(ari_id)
            .and_then(|id| self.certs.get(id))
        else {
            return Err(Problem::malformed(format!(
                "replaces names no certificate we know: {ari_id:?}"
            )));
        };
        if cert.account != account {
            return Err(Problem::unauthorized(
                "replaces names a certificate of another account",
            ));
        }
        let cert_names = cert_names(&cert.der);
        if !names.iter().any(|name| cert_names.contains(name)) {
            return Err(Problem::malformed(
                "the order shares no identifier with the certificate it replaces",
            ));
        }
        let replaced = match &cert.replaced {
            Replacement::None => false,
            Replacement::Done => true,
            Replacement::Ordered(order) => self
                .orders
                .get(order)
                .is_some_and(|o| o.status != OrderStatus::Invalid),
        };
        if replaced {
            return Err(Problem::new(
                ProblemType::AlreadyReplaced,
                format!("certificate {ari_id} was already replaced"),
            ));
        }
        Ok(())
    }

    fn check_order_limits(
        &mut self,
        account: &str,
        identifiers: &[Identifier],
        names: &[String],
        now: u64,
    ) -> Result<(), Problem> {
        let limits = self.config.limits;
        let mut checks: Vec<(LimitKind, String, RateLimit)> = Vec::new();
        if let Some(limit) = limits.orders_per_account {
            checks.push((
                LimitKind::OrdersPerAccount,
                self.account_url(account),
                limit,
            ));
        }
        if let Some(limit) = limits.failed_validations_per_identifier {
            for identifier in identifiers {
                let (base, _) = split_wildcard(identifier);
                checks.push((
                    LimitKind::FailedValidations,
                    format!("{account} {}", base.value()),
                    limit,
                ));
            }
        }
        if let Some(limit) = limits.certificates_per_domain {
            for domain in registered_domains(identifiers) {
                checks.push((LimitKind::CertificatesPerDomain, domain, limit));
            }
        }
        if let Some(limit) = limits.duplicate_certificates {
            checks.push((LimitKind::DuplicateCertificates, names.join(","), limit));
        }
        for (kind, key, limit) in checks {
            self.check_limit(kind, key, limit, now)?;
        }
        Ok(())
    }

    fn create_authz(
        &mut self,
        account: &str,
        identifier: Identifier,
        wildcard: bool,
        now: u64,
    ) -> String {
        let id = self.fresh_id(|s, id| s.authzs.contains_key(id));
        let kinds: Vec<ChallengeKind> = self
            .config
            .challenge_types
            .iter()
            .copied()
            .filter(|kind| offered(*kind, &identifier, wildcard))
            .collect();
        let mut challenges = Vec::with_capacity(kinds.len());
        for kind in kinds {
            let challenge_id = self.fresh_id(|s, id| s.challenges.contains_key(id));
            let token = self.ids.token(TOKEN_BYTES);
            self.challenges.insert(challenge_id.clone(), id.clone());
            challenges.push(Challenge {
                id: challenge_id,
                kind,
                token,
                status: ChallengeStatus::Pending,
                validated_ms: None,
                error: None,
            });
        }
        let expires_ms = now.saturating_add(self.config.authz_pending_lifetime_ms);
        self.authzs.insert(
            id.clone(),
            Authz {
                account: account.to_owned(),
                identifier,
                wildcard,
                status: AuthzStatus::Pending,
                expires_ms,
                challenges,
                orders: Vec::new(),
            },
        );
        self.timers.insert((
            expires_ms,
            Timer::Record(TimerKind::ExpireAuthz, id.clone()),
        ));
        self.stats.authorizations_created += 1;
        id
    }

    /// The one place an order's status moves (RFC 8555 §7.1.6): pending → ready when every
    /// authorization is valid, → invalid when one fails or goes; processing → valid when the
    /// processing delay is over. Ready → processing happens in `finalize`, the only request
    /// that moves an order by itself.
    fn advance_order(&mut self, order_id: &str, now: u64) {
        let Some(order) = self.orders.get(order_id) else {
            return;
        };
        let next = match order.status {
            OrderStatus::Pending => {
                let mut all_valid = true;
                let mut failed = None;
                for authz_id in &order.authzs {
                    match self.authzs.get(authz_id).map(|a| (a.status, &a.identifier)) {
                        Some((AuthzStatus::Valid, _)) => {}
                        Some((AuthzStatus::Pending, _)) => all_valid = false,
                        Some((status, identifier)) => {
                            failed = Some(format!(
                                "authorization for {identifier} is {}",
                                status.as_str()
                            ));
                            break;
                        }
                        None => {
                            failed = Some("an authorization expired".to_owned());
                            break;
                        }
                    }
                }
                match failed {
                    Some(detail) => Some((OrderStatus::Invalid, Some(detail))),
                    None if all_valid => Some((OrderStatus::Ready, None)),
                    None => None,
                }
            }
            OrderStatus::Processing => match order.issued_at_ms {
                Some(at) if at <= now => Some((OrderStatus::Valid, None)),
                _ => None,
            },
            OrderStatus::Ready | OrderStatus::Valid | OrderStatus::Invalid => None,
        };
        let Some((status, detail)) = next else {
            return;
        };
        let order_url = self.url(&format!("/order/{order_id}"));
        let error = match (&detail, status) {
            (Some(detail), OrderStatus::Invalid) => {
                Some(self.order_error(order_id, detail.clone()))
            }
            _ => None,
        };
        if let Some(order) = self.orders.get_mut(order_id) {
            order.status = status;
            order.error = error;
        }
        let event = match status {
            OrderStatus::Ready => CaEvent::OrderReady {
                at_ms: now,
                order: order_url,
            },
            OrderStatus::Valid => CaEvent::OrderValid {
                at_ms: now,
                order: order_url,
            },
            OrderStatus::Invalid => CaEvent::OrderInvalid {
                at_ms: now,
                order: order_url,
                detail: detail.unwrap_or_default(),
            },
            OrderStatus::Pending | OrderStatus::Processing => return,
        };
        self.event(event);
    }

    /// The error of an invalid order: the failed challenge's problem when there is one.
    fn order_error(&self, order_id: &str, detail: String) -> Problem {
        let failed = self.orders.get(order_id).and_then(|order| {
            order.authzs.iter().find_map(|id| {
                self.authzs
                    .get(id)?
                    .challenges
                    .iter()
                    .find_map(|c| c.error.clone())
            })
        });
        failed.unwrap_or_else(|| Problem::unauthorized(detail).with_status(StatusCode::FORBIDDEN))
    }

    fn order(
        &mut self,
        request: &Request<Bytes>,
        id: &str,
        now: u64,
    ) -> Result<Response<Bytes>, Problem> {
        let (jws, account) = self.verify_kid(request, now)?;
        if jws.payload.is_some() {
            return Err(Problem::malformed("orders are read with POST-as-GET"));
        }
        self.owned_order(id, &account)?;
        self.advance_order(id, now);
        self.order_response(id, StatusCode::OK, now)
    }

    fn owned_order(&self, id: &str, account: &str) -> Result<&Order, Problem> {
        let order = self
            .orders
            .get(id)
            .ok_or_else(|| Problem::not_found(format!("no order {id}")))?;
        if order.account != account {
            return Err(Problem::unauthorized(
                "the order belongs to another account",
            ));
        }
        Ok(order)
    }

    fn finalize(
        &mut self,
        request: &Request<Bytes>,
        id: &str,
        now: u64,
    ) -> Result<Response<Bytes>, Problem> {
        let (jws, account) = self.verify_kid(request, now)?;
        self.owned_order(id, &account)?;
        self.advance_order(id, now);
        let payload = jws.payload_object()?;
        let csr_der = payload
            .get("csr")
            .and_then(Value::as_str)
            .and_then(|csr| BASE64_URL_SAFE_NO_PAD.decode(csr).ok())
            .ok_or_else(|| Problem::malformed("finalize needs a base64url csr"))?;
        let order = self.owned_order(id, &account)?;
        if order.status != OrderStatus::Ready {
            return Err(Problem::new(
                ProblemType::OrderNotReady,
                format!("order is {}, not ready", order.status.as_str()),
            ));
        }
        let csr = pki::parse_csr(&csr_der, &self.config.accepted_key_types)
            .map_err(|detail| Problem::new(ProblemType::BadCsr, detail))?;
        let names: Vec<String> = order.identifiers.iter().map(Identifier::value).collect();
        let expected: BTreeSet<String> = names.iter().cloned().collect();
        if csr.names != expected {
            return Err(Problem::new(
                ProblemType::BadCsr,
                format!(
                    "CSR names {:?} are not the order's identifiers {expected:?}",
                    csr.names
                ),
            ));
        }
        let lifetime_ms = self
            .config
            .profiles
            .get(&order.profile)
            .map_or(90 * crate::config::DAY_MS, |p| p.lifetime_ms);
        let replaces = order.replaces.clone();
        let identifiers = order.identifiers.clone();
        // Whole seconds: X.509 times have no fraction, and the events should say what the
        // certificate says.
        let not_before_ms = now.saturating_sub(self.config.not_before_backdate_ms) / 1000 * 1000;
        let not_after_ms = not_before_ms.saturating_add(lifetime_ms) / 1000 * 1000;
        let mut serial = [0u8; 16];
        self.ids.fill(&mut serial);
        serial[0] = (serial[0] & 0x7f).max(1);
        let leaf = self
            .pki
            .issue(&LeafRequest {
                names: &names,
                key: &csr.key,
                serial,
                not_before_ms,
                not_after_ms,
            })
            .map_err(|detail| Problem::new(ProblemType::ServerInternal, detail))?;

        let cert_id = self.fresh_id(|s, id| s.certs.contains_key(id));
        let cert_url = self.url(&format!("/cert/{cert_id}"));
        let mut chain_pem = leaf.pem;
        chain_pem.push_str(&self.pki.intermediate_pem);
        if let Some(old) = self
            .certs_by_ari
            .insert(leaf.ari_id.clone(), cert_id.clone())
        {
            // Serials come from the seeded stream; a collision would need 2^64 certificates.
            self.forget_cert(&old);
            self.certs_by_ari
                .insert(leaf.ari_id.clone(), cert_id.clone());
        }
        self.certs.insert(
            cert_id.clone(),
            Cert {
                account: account.clone(),
                der: leaf.der,
                chain_pem,
                ari_id: leaf.ari_id.clone(),
                not_before_ms,
                not_after_ms,
                revoked: false,
                replaced: Replacement::None,
            },
        );
        self.certs_by_expiry.insert((not_after_ms, cert_id.clone()));
        while self.certs.len() > self.config.certificates_max {
            let Some((_, oldest)) = self.certs_by_expiry.pop_first() else {
                break;
            };
            self.forget_cert(&oldest);
        }
        if let Some(ari_id) = &replaces
            && let Some(old) = self
                .certs_by_ari
                .get(ari_id)
                .and_then(|id| self.certs.get_mut(id))
        {
            old.replaced = Replacement::Done;
        }
        let limits = self.config.limits;
        if let Some(limit) = limits.certificates_per_domain {
            for domain in registered_domains(&identifiers) {
                self.consume(LimitKind::CertificatesPerDomain, domain, limit, now);
            }
        }
        if let Some(limit) = limits.duplicate_certificates {
            self.consume(
                LimitKind::DuplicateCertificates,
                names.join(","),
                limit,
                now,
            );
        }
        let delay_ms = self.faults.between(
            self.config.faults.processing_ms_min,
            self.config.faults.processing_ms_max,
        );
        let issued_at_ms = now.saturating_add(delay_ms);
        if let Some(order) = self.orders.get_mut(id) {
            order.status = OrderStatus::Processing;
            order.certificate = Some(cert_id);
            order.issued_at_ms = Some(issued_at_ms);
        }
        self.stats.certificates_issued += 1;
        let order_url = self.url(&format!("/order/{id}"));
        self.event(CaEvent::CertificateIssued {
            at_ms: now,
            order: order_url,
            certificate: cert_url,
            ari_id: leaf.ari_id,
            identifiers: names,
            not_before_ms,
            not_after_ms,
        });
        if delay_ms > 0 {
            self.timers.insert((
                issued_at_ms,
                Timer::Record(TimerKind::OrderIssued, id.to_owned()),
            ));
        }
        self.advance_order(id, now);
        self.order_response(id, StatusCode::OK, now)
    }

    fn order_response(
        &self,
        id: &str,
        status: StatusCode,
        now: u64,
    ) -> Result<Response<Bytes>, Problem> {
        let order = self
            .orders
            .get(id)
            .ok_or_else(|| Problem::not_found(format!("no order {id}")))?;
        let mut body = json!({
            "status": order.status.as_str(),
            "expires": rfc3339(order.expires_ms),
            "identifiers": order.identifiers.iter().map(Identifier::to_json).collect::<Vec<_>>(),
            "authorizations": order.authzs.iter().map(|a| self.url(&format!("/authz/{a}"))).collect::<Vec<_>>(),
            "finalize": self.url(&format!("/order/{id}/finalize")),
            "profile": order.profile,
        });
        if let Some(replaces) = &order.replaces {
            body["replaces"] = json!(replaces);
        }
        if let Some(error) = &order.error {
            body["error"] = error.to_json();
        }
        if order.status == OrderStatus::Valid
            && let Some(cert) = &order.certificate
        {
            body["certificate"] = json!(self.url(&format!("/cert/{cert}")));
        }
        let mut response = json_response(status, &body);
        if order.status == OrderStatus::Processing {
            // RFC 8555 §7.4: tell the client when to poll again.
            let wait_ms = order.issued_at_ms.unwrap_or(now).saturating_sub(now);
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(wait_ms.div_ceil(1000).max(1)),
            );
        }
        Ok(response)
    }

    fn authorization(
        &mut self,
        request: &Request<Bytes>,
        id: &str,
        now: u64,
    ) -> Result<Response<Bytes>, Problem> {
        let (jws, account) = self.verify_kid(request, now)?;
        let authz = self
            .authzs
            .get(id)
            .ok_or_else(|| Problem::not_found(format!("no authorization {id}")))?;
        if authz.account != account {
            return Err(Problem::unauthorized(
                "the authorization belongs to another account",
            ));
        }
        if jws.payload.is_some() {
            let payload = jws.payload_object()?;
            match payload.get("status") {
                None => {}
                // RFC 8555 §7.5.2.
                Some(status) if status == "deactivated" => {
                    let (key, orders) = {
                        let Some(authz) = self.authzs.get_mut(id) else {
                            return Err(Problem::not_found(format!("no authorization {id}")));
                        };
                        if !matches!(authz.status, AuthzStatus::Pending | AuthzStatus::Valid) {
                            return Err(Problem::malformed(format!(
                                "authorization is {}",
                                authz.status.as_str()
                            )));
                        }
                        authz.status = AuthzStatus::Deactivated;
                        (
                            (
                                authz.account.clone(),
                                authz.identifier.value(),
                                authz.wildcard,
                            ),
                            authz.orders.clone(),
                        )
                    };
                    if self.reusable.get(&key).is_some_and(|a| a == id) {
                        self.reusable.remove(&key);
                    }
                    for order in orders {
                        self.advance_order(&order, now);
                    }
                }
                Some(_) => {
                    return Err(Problem::malformed(
                        "an authorization can only be deactivated",
                    ));
                }
            }
        }
        self.authz_response(id)
    }

    fn authz_response(&self, id: &str) -> Result<Response<Bytes>, Problem> {
        let authz = self
            .authzs
            .get(id)
            .ok_or_else(|| Problem::not_found(format!("no authorization {id}")))?;
        let mut body = json!({
            "identifier": authz.identifier.to_json(),
            "status": authz.status.as_str(),
            "expires": rfc3339(authz.expires_ms),
            "challenges": authz.challenges.iter().map(|c| self.challenge_json(c)).collect::<Vec<_>>(),
        });
        if authz.wildcard {
            body["wildcard"] = json!(true);
        }
        Ok(json_response(StatusCode::OK, &body))
    }

    fn challenge_json(&self, challenge: &Challenge) -> Value {
        let mut value = json!({
            "type": challenge.kind.as_str(),
            "url": self.url(&format!("/chall/{}", challenge.id)),
            "status": challenge.status.as_str(),
            "token": challenge.token,
        });
        if let Some(at) = challenge.validated_ms {
            value["validated"] = json!(rfc3339(at));
        }
        if let Some(error) = &challenge.error {
            value["error"] = error.to_json();
        }
        value
    }

    /// RFC 8555 §7.5.1: a POST with a payload (`{}`) asks for validation; a POST-as-GET reads.
    fn challenge(
        &mut self,
        request: &Request<Bytes>,
        id: &str,
        now: u64,
    ) -> Result<Response<Bytes>, Problem> {
        let (jws, account) = self.verify_kid(request, now)?;
        let authz_id = self
            .challenges
            .get(id)
            .cloned()
            .ok_or_else(|| Problem::not_found(format!("no challenge {id}")))?;
        let thumbprint = self
            .accounts
            .get(&account)
            .map(|a| a.thumbprint.clone())
            .unwrap_or_default();
        let authz = self
            .authzs
            .get_mut(&authz_id)
            .ok_or_else(|| Problem::not_found(format!("no challenge {id}")))?;
        if authz.account != account {
            return Err(Problem::unauthorized(
                "the challenge belongs to another account",
            ));
        }
        if jws.payload.is_some() {
            jws.payload_object()?;
            let busy = authz
                .challenges
                .iter()
                .any(|c| c.status == ChallengeStatus::Processing);
            let identifier = authz.identifier.clone();
            let pending = authz.status == AuthzStatus::Pending && !busy;
            if let Some(challenge) = authz
                .challenges
                .iter_mut()
                .find(|c| c.id == id && c.status == ChallengeStatus::Pending)
                .filter(|_| pending)
            {
                challenge.status = ChallengeStatus::Processing;
                let validation = Validation {
                    id: ValidationId(self.next_validation),
                    kind: challenge.kind,
                    identifier: identifier.clone(),
                    token: challenge.token.clone(),
                    key_authorization: format!("{}.{thumbprint}", challenge.token),
                };
                self.next_validation += 1;
                self.in_flight
                    .insert(validation.id, (authz_id.clone(), id.to_owned()));
                self.stats.validations_requested += 1;
                let event = CaEvent::ValidationRequested {
                    at_ms: now,
                    id: validation.id,
                    kind: validation.kind,
                    identifier: identifier.value(),
                };
                self.pending_validations.push(validation);
                self.event(event);
            }
        }
        let authz = self
            .authzs
            .get(&authz_id)
            .ok_or_else(|| Problem::not_found(format!("no challenge {id}")))?;
        let challenge = authz
            .challenges
            .iter()
            .find(|c| c.id == id)
            .ok_or_else(|| Problem::not_found(format!("no challenge {id}")))?;
        let mut response = json_response(StatusCode::OK, &self.challenge_json(challenge));
        let up = format!("<{}>;rel=\"up\"", self.url(&format!("/authz/{authz_id}")));
        if let Ok(value) = HeaderValue::try_from(up) {
            response.headers_mut().append(header::LINK, value);
        }
        Ok(response)
    }

    fn certificate(
        &mut self,
        request: &Request<Bytes>,
        id: &str,
        now: u64,
    ) -> Result<Response<Bytes>, Problem> {
        let (jws, account) = self.verify_kid(request, now)?;
        if jws.payload.is_some() {
            return Err(Problem::malformed("certificates are read with POST-as-GET"));
        }
        let cert = self
            .certs
            .get(id)
            .ok_or_else(|| Problem::not_found(format!("no certificate {id}")))?;
        if cert.account != account {
            return Err(Problem::unauthorized(
                "the certificate belongs to another account",
            ));
        }
        let mut response = Response::new(Bytes::from(cert.chain_pem.clone()));
        // RFC 8555 §9.1.
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/pem-certificate-chain"),
        );
        Ok(response)
    }

    /// RFC 8555 §7.6, by the account that ordered the certificate.
    fn revoke(&mut self, request: &Request<Bytes>, now: u64) -> Result<Response<Bytes>, Problem> {
        let (jws, account) = self.verify_kid(request, now)?;
        let payload = jws.payload_object()?;
        let der = payload
            .get("certificate")
            .and_then(Value::as_str)
            .and_then(|c| BASE64_URL_SAFE_NO_PAD.decode(c).ok())
            .ok_or_else(|| Problem::malformed("revokeCert needs a base64url certificate"))?;
        match payload.get("reason") {
            None => {}
            // RFC 5280 §5.3.1 codes Let's Encrypt accepts.
            Some(reason) if [0, 1, 3, 4, 5, 9].iter().any(|r| reason == r) => {}
            Some(reason) => {
                return Err(Problem::new(
                    ProblemType::BadRevocationReason,
                    format!("revocation reason {reason} is not accepted"),
                ));
            }
        }
        let ari_id = pki::ari_id(&der).map_err(Problem::malformed)?;
        let cert_id = self
            .certs_by_ari
            .get(&ari_id)
            .cloned()
            .filter(|id| self.certs.get(id).is_some_and(|c| c.der == der))
            .ok_or_else(|| Problem::not_found("no such certificate"))?;
        let Some(cert) = self.certs.get_mut(&cert_id) else {
            return Err(Problem::not_found("no such certificate"));
        };
        if cert.account != account {
            return Err(Problem::unauthorized(
                "the certificate belongs to another account",
            ));
        }
        if cert.revoked {
            return Err(Problem::new(ProblemType::AlreadyRevoked, "already revoked"));
        }
        cert.revoked = true;
        self.stats.certificates_revoked += 1;
        self.event(CaEvent::CertificateRevoked { at_ms: now, ari_id });
        Ok(Response::new(Bytes::new()))
    }

    /// RFC 9773 §4.2: a suggested renewal window and when to ask again.
    fn renewal_info(&mut self, ari_id: &str, now: u64) -> Result<Response<Bytes>, Problem> {
        let well_formed = ari_id.split_once('.').is_some_and(|(aki, serial)| {
            !aki.is_empty()
                && !serial.is_empty()
                && !serial.contains('.')
                && BASE64_URL_SAFE_NO_PAD.decode(aki).is_ok()
                && BASE64_URL_SAFE_NO_PAD.decode(serial).is_ok()
        });
        if !well_formed {
            return Err(Problem::malformed(format!(
                "{ari_id:?} is not an ARI certID"
            )));
        }
        let cert = self
            .certs_by_ari
            .get(ari_id)
            .and_then(|id| self.certs.get(id))
            .ok_or_else(|| Problem::not_found(format!("no certificate {ari_id}")))?;
        let (not_before_ms, not_after_ms, revoked) =
            (cert.not_before_ms, cert.not_after_ms, cert.revoked);
        let ari = self.config.ari;
        let renew_now = self.faults.chance(ari.renew_now_percent);
        let (start_ms, end_ms) = if revoked || renew_now {
            // A window in the past: renew now (RFC 9773 §4.2).
            (
                now.saturating_sub(2 * crate::config::HOUR_MS),
                now.saturating_sub(crate::config::HOUR_MS),
            )
        } else {
            let lifetime_ms = not_after_ms.saturating_sub(not_before_ms);
            let at = |permille: u16| {
                not_before_ms
                    .saturating_add((u128::from(lifetime_ms) * u128::from(permille) / 1000) as u64)
            };
            (at(ari.window_start_permille), at(ari.window_end_permille))
        };
        let mut response = json_response(
            StatusCode::OK,
            &json!({"suggestedWindow": {"start": rfc3339(start_ms), "end": rfc3339(end_ms)}}),
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(ari.retry_after_s));
        Ok(response)
    }

    /// RFC 8555 §7.1.4 identifiers: DNS names (a leading `*.` for wildcards) and IP addresses
    /// (RFC 8738), normalized, without duplicates, sorted.
    fn parse_identifiers(&self, value: Option<&Value>) -> Result<Vec<Identifier>, Problem> {
        let list = value
            .and_then(Value::as_array)
            .filter(|list| !list.is_empty())
            .ok_or_else(|| Problem::malformed("identifiers must be a non-empty array"))?;
        if list.len() > self.config.identifiers_per_order_max {
            return Err(Problem::new(
                ProblemType::RejectedIdentifier,
                format!(
                    "{} identifiers; at most {} per order",
                    list.len(),
                    self.config.identifiers_per_order_max
                ),
            ));
        }
        let mut set = BTreeSet::new();
        for item in list {
            let kind = item.get("type").and_then(Value::as_str);
            let value = item
                .get("value")
                .and_then(Value::as_str)
                .ok_or_else(|| Problem::malformed("identifier has no string value"))?;
            let identifier = match kind {
                Some("dns") => {
                    let name = value.to_ascii_lowercase();
                    let base = name.strip_prefix("*.").unwrap_or(&name);
                    if !valid_dns_name(base) {
                        return Err(Problem::new(
                            ProblemType::RejectedIdentifier,
                            format!("{value:?} is not a valid DNS name"),
                        ));
                    }
                    Identifier::Dns(name)
                }
                Some("ip") => Identifier::Ip(value.parse::<IpAddr>().map_err(|_| {
                    Problem::new(
                        ProblemType::RejectedIdentifier,
                        format!("{value:?} is not an IP address"),
                    )
                })?),
                other => {
                    return Err(Problem::new(
                        ProblemType::UnsupportedIdentifier,
                        format!("identifier type {other:?} is not supported"),
                    ));
                }
            };
            let (base, wildcard) = split_wildcard(&identifier);
            if !self
                .config
                .challenge_types
                .iter()
                .any(|kind| offered(*kind, &base, wildcard))
            {
                return Err(Problem::new(
                    ProblemType::RejectedIdentifier,
                    format!("no offered challenge type can validate {identifier}"),
                ));
            }
            set.insert(identifier);
        }
        Ok(set.into_iter().collect())
    }

    fn check_limit(
        &mut self,
        kind: LimitKind,
        key: String,
        limit: RateLimit,
        now: u64,
    ) -> Result<(), Problem> {
        let interval_ms = interval_ms(limit);
        let burst_ms = interval_ms.saturating_mul(u64::from(limit.count.saturating_sub(1)));
        let available_at = self
            .arrivals
            .get(&(kind, key.clone()))
            .map_or(0, |arrival| arrival.saturating_sub(burst_ms));
        if available_at <= now {
            return Ok(());
        }
        let retry_after_s = (available_at - now).div_ceil(1000).max(1);
        self.stats.rate_limited += 1;
        self.event(CaEvent::RateLimited {
            at_ms: now,
            limit: kind,
            key: key.clone(),
            retry_after_s,
        });
        Err(Problem::new(
            ProblemType::RateLimited,
            format!("too many requests for {kind:?} {key:?}; retry after {retry_after_s} s"),
        )
        .with_retry_after_s(retry_after_s))
    }

    fn consume(&mut self, kind: LimitKind, key: String, limit: RateLimit, now: u64) {
        let entry = (kind, key);
        let arrival = self
            .arrivals
            .get(&entry)
            .copied()
            .unwrap_or(now)
            .max(now)
            .saturating_add(interval_ms(limit));
        self.arrivals.insert(entry.clone(), arrival);
        self.timers
            .insert((arrival, Timer::Limit(entry.0, entry.1)));
    }

    fn expire_order(&mut self, id: &str, now: u64) {
        if self
            .orders
            .get(id)
            .is_none_or(|order| order.expires_ms > now)
        {
            return;
        }
        let Some(order) = self.orders.remove(id) else {
            return;
        };
        for authz_id in &order.authzs {
            if let Some(authz) = self.authzs.get_mut(authz_id) {
                authz.orders.retain(|o| o != id);
            }
        }
    }

    fn expire_authz(&mut self, id: &str, now: u64) {
        if self
            .authzs
            .get(id)
            .is_none_or(|authz| authz.expires_ms > now)
        {
            return;
        }
        let Some(authz) = self.authzs.remove(id) else {
            return;
        };
        for challenge in &authz.challenges {
            self.challenges.remove(&challenge.id);
        }
        let key = (
            authz.account.clone(),
            authz.identifier.value(),
            authz.wildcard,
        );
        if self.reusable.get(&key).is_some_and(|a| a == id) {
            self.reusable.remove(&key);
        }
        self.in_flight.retain(|_, (authz_id, _)| authz_id != id);
        for order in &authz.orders {
            self.advance_order(order, now);
        }
    }

    fn forget_cert(&mut self, id: &str) {
        if let Some(cert) = self.certs.remove(id) {
            self.certs_by_expiry
                .remove(&(cert.not_after_ms, id.to_owned()));
            if self.certs_by_ari.get(&cert.ari_id).is_some_and(|c| c == id) {
                self.certs_by_ari.remove(&cert.ari_id);
            }
        }
    }

    fn account_json(&self, id: &str) -> Value {
        let Some(account) = self.accounts.get(id) else {
            return Value::Null;
        };
        json!({
            "status": match account.status {
                AccountStatus::Valid => "valid",
                AccountStatus::Deactivated => "deactivated",
            },
            "contact": account.contact,
            "key": account.jwk.to_json(),
            "orders": self.url(&format!("/acct/{id}/orders")),
        })
    }

    fn account_url(&self, id: &str) -> String {
        self.url(&format!("/acct/{id}"))
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.config.base_url)
    }

    /// A fresh random id that `taken` does not know (a repeat would need 2^48 ids; retrying
    /// keeps even that from aliasing two resources).
    fn fresh_id(&mut self, taken: impl Fn(&Self, &str) -> bool) -> String {
        loop {
            let id = self.ids.token(ID_BYTES);
            if !taken(self, &id) {
                return id;
            }
        }
    }

    fn event(&mut self, event: CaEvent) {
        if let Some(hook) = &mut self.event_hook {
            hook(&event);
        }
        if self.events.len() >= self.config.events_max {
            self.events.pop_front();
            self.stats.events_dropped += 1;
        }
        if self.config.events_max > 0 {
            self.events.push_back(event);
        }
    }

    /// Headers every response carries: a fresh nonce (RFC 8555 §6.5), no caching, and the
    /// directory as `index` (§7.1).
    fn decorate(&mut self, response: &mut Response<Bytes>) {
        let nonce = self.nonce_rng.token(NONCE_BYTES);
        if self.nonce_order.len() >= self.config.nonces_max
            && let Some(old) = self.nonce_order.pop_front()
        {
            self.nonces.remove(&old);
        }
        self.nonces.insert(nonce.clone());
        self.nonce_order.push_back(nonce.clone());
        let headers = response.headers_mut();
        if let Ok(value) = HeaderValue::try_from(nonce) {
            headers.insert("replay-nonce", value);
        }
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        let index = format!("<{}>;rel=\"index\"", self.directory_url());
        if let Ok(value) = HeaderValue::try_from(index) {
            headers.append(header::LINK, value);
        }
    }
}

fn method_not_allowed(allow: &'static str) -> Problem {
    Problem::malformed(format!("method not allowed; use {allow}"))
        .with_status(StatusCode::METHOD_NOT_ALLOWED)
}

fn json_response(status: StatusCode, body: &Value) -> Response<Bytes> {
    let mut response = Response::new(Bytes::from(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn set_location(response: &mut Response<Bytes>, url: &str) {
    if let Ok(value) = HeaderValue::try_from(url) {
        response.headers_mut().insert(header::LOCATION, value);
    }
}

fn contacts(payload: &Map<String, Value>) -> Result<Vec<String>, Problem> {
    match payload.get("contact") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| {
                item.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| Problem::malformed("contact entries must be strings"))
            })
            .collect(),
        Some(_) => Err(Problem::malformed("contact must be an array")),
    }
}

/// The identifier an authorization is for, and whether it came from a wildcard.
fn split_wildcard(identifier: &Identifier) -> (Identifier, bool) {
    match identifier {
        Identifier::Dns(name) => match name.strip_prefix("*.") {
            Some(base) => (Identifier::Dns(base.to_owned()), true),
            None => (identifier.clone(), false),
        },
        Identifier::Ip(_) => (identifier.clone(), false),
    }
}

/// Which challenges can validate what: wildcards only dns-01 (RFC 8555 §7.1.3), IP addresses
/// never dns-01 (RFC 8738 §7).
fn offered(kind: ChallengeKind, identifier: &Identifier, wildcard: bool) -> bool {
    match (kind, identifier) {
        (ChallengeKind::Dns01, Identifier::Dns(_)) => true,
        (_, Identifier::Dns(_)) => !wildcard,
        (ChallengeKind::Dns01, Identifier::Ip(_)) => false,
        (_, Identifier::Ip(_)) => true,
    }
}

/// LDH labels of 1–63 characters, at least two of them, 253 characters at most, and a last
/// label that is not all digits (so that it is not an IPv4 address in disguise).
fn valid_dns_name(name: &str) -> bool {
    if name.is_empty() || name.len() > 253 {
        return false;
    }
    let labels: Vec<&str> = name.split('.').collect();
    labels.len() >= 2
        && labels.iter().all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
        && labels
            .last()
            .is_some_and(|last| !last.bytes().all(|b| b.is_ascii_digit()))
}

/// The registered domains of an order, as Let's Encrypt counts certificates per domain: the
/// public-suffix-list domain of each name, an IP address as itself.
fn registered_domains(identifiers: &[Identifier]) -> BTreeSet<String> {
    identifiers
        .iter()
        .map(|identifier| match split_wildcard(identifier).0 {
            Identifier::Dns(name) => psl::domain_str(&name).unwrap_or(&name).to_owned(),
            Identifier::Ip(ip) => ip.to_string(),
        })
        .collect()
}

fn cert_names(der: &[u8]) -> BTreeSet<String> {
    use x509_parser::extensions::GeneralName;
    use x509_parser::prelude::{FromDer, X509Certificate};
    let mut names = BTreeSet::new();
    if let Ok((_, cert)) = X509Certificate::from_der(der)
        && let Ok(Some(san)) = cert.subject_alternative_name()
    {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(dns) => {
                    names.insert(dns.to_ascii_lowercase());
                }
                GeneralName::IPAddress(bytes) => {
                    if let Some(ip) = pki::ip_from_bytes(bytes) {
                        names.insert(ip.to_string());
                    }
                }
                _ => {}
            }
        }
    }
    names
}

fn interval_ms(limit: RateLimit) -> u64 {
    (limit.period_ms / u64::from(limit.count.max(1))).max(1)
}

/// An IMF-fixdate for `unix_s` seconds since the epoch (past year 9999: the last second of it,
/// as `rfc3339` does).
fn http_date(unix_s: u64) -> HeaderValue {
    let at = std::time::UNIX_EPOCH
        .checked_add(std::time::Duration::from_secs(unix_s.min(253_402_300_799)))
        .unwrap_or(std::time::UNIX_EPOCH);
    HeaderValue::try_from(httpdate::fmt_http_date(at))
        .unwrap_or_else(|_| HeaderValue::from_static("Fri, 31 Dec 9999 23:59:59 GMT"))
}

fn rfc3339(ms: u64) -> String {
    let formatted = i128::from(ms)
        .checked_mul(1_000_000)
        .and_then(|nanos| time::OffsetDateTime::from_unix_timestamp_nanos(nanos).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        });
    formatted.unwrap_or_else(|| "9999-12-31T23:59:59Z".to_owned())
}

/// `scheme://authority` and the path prefix of a base URL that `CaConfig::check` accepted.
fn split_base(base_url: &str) -> (String, String) {
    match base_url.parse::<http::Uri>() {
        Ok(uri) => match (uri.scheme_str(), uri.authority()) {
            (Some(scheme), Some(authority)) => (
                format!("{scheme}://{authority}"),
                uri.path().trim_end_matches('/').to_owned(),
            ),
            _ => (base_url.to_owned(), String::new()),
        },
        Err(_) => (base_url.to_owned(), String::new()),
    }
}

#[cfg(test)]
mod tests;
