//! The public vocabulary of the CA: identifiers, validations, events and counters.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use crate::config::ChallengeKind;

/// An ACME identifier (RFC 8555 §9.7.7, RFC 8738).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Identifier {
    /// A DNS name, lower case; in an order it may start with `*.` (a wildcard).
    Dns(String),
    /// An IP address.
    Ip(IpAddr),
}

impl Identifier {
    /// The `type` string.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Dns(_) => "dns",
            Self::Ip(_) => "ip",
        }
    }

    /// The `value` string (IP addresses in their canonical text form).
    #[must_use]
    pub fn value(&self) -> String {
        match self {
            Self::Dns(name) => name.clone(),
            Self::Ip(ip) => ip.to_string(),
        }
    }

    pub(crate) fn to_json(&self) -> serde_json::Value {
        serde_json::json!({"type": self.kind(), "value": self.value()})
    }
}

impl fmt::Display for Identifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Dns(name) => f.write_str(name),
            Self::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// The id of one validation attempt, unique per server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ValidationId(pub u64);

impl fmt::Display for ValidationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}

/// A validation the host must perform (the core does no IO): the client said the challenge is
/// ready (RFC 8555 §7.5.1). Answer with [`crate::AcmeServer::validation_done`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Validation {
    /// Its id.
    pub id: ValidationId,
    /// The challenge type.
    pub kind: ChallengeKind,
    /// What to validate: for a wildcard, the name without `*.` (dns-01 looks up
    /// `_acme-challenge.<name>`).
    pub identifier: Identifier,
    /// The challenge token.
    pub token: String,
    /// `token || '.' || base64url(JWK thumbprint)` (RFC 8555 §8.1).
    pub key_authorization: String,
}

/// Which rate limit refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LimitKind {
    /// New orders per account.
    OrdersPerAccount,
    /// Certificates per registered domain.
    CertificatesPerDomain,
    /// Certificates per exact identifier set.
    DuplicateCertificates,
    /// Failed validations per account and identifier.
    FailedValidations,
    /// New accounts.
    NewAccounts,
}

/// A fault the CA injected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// A good nonce refused with `badNonce`.
    BadNonce,
    /// A 503 with `Retry-After`.
    ServerError,
}

/// What happened at the CA, in order, for the simulation and tests to assert on. Resources are
/// named by their URLs, as clients (and certfleet's log) know them.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CaEvent {
    /// A new account.
    AccountCreated {
        /// When.
        at_ms: u64,
        /// Its URL (the `kid`).
        account: String,
    },
    /// A new order.
    OrderCreated {
        /// When.
        at_ms: u64,
        /// Its account.
        account: String,
        /// Its URL.
        order: String,
        /// Its identifier values, sorted.
        identifiers: Vec<String>,
        /// Its profile.
        profile: String,
        /// The ARI certID it replaces.
        replaces: Option<String>,
    },
    /// An order got a valid authorization from earlier instead of a new one.
    AuthorizationReused {
        /// When.
        at_ms: u64,
        /// The order.
        order: String,
        /// The authorization's URL.
        authorization: String,
    },
    /// A client asked for a challenge to be validated; the host has a [`Validation`] to run.
    ValidationRequested {
        /// When.
        at_ms: u64,
        /// The validation.
        id: ValidationId,
        /// Its type.
        kind: ChallengeKind,
        /// Its identifier's value.
        identifier: String,
    },
    /// A validation passed; its authorization is valid.
    ValidationSucceeded {
        /// When.
        at_ms: u64,
        /// The validation.
        id: ValidationId,
        /// Its identifier's value.
        identifier: String,
    },
    /// A validation failed; its authorization (and orders using it) are invalid.
    ValidationFailed {
        /// When.
        at_ms: u64,
        /// The validation.
        id: ValidationId,
        /// Its identifier's value.
        identifier: String,
        /// Why.
        detail: String,
    },
    /// Every authorization of an order is valid.
    OrderReady {
        /// When.
        at_ms: u64,
        /// The order.
        order: String,
    },
    /// An order became invalid.
    OrderInvalid {
        /// When.
        at_ms: u64,
        /// The order.
        order: String,
        /// Why.
        detail: String,
    },
    /// A certificate was signed for a finalized order.
    CertificateIssued {
        /// When.
        at_ms: u64,
        /// The order.
        order: String,
        /// The certificate's URL.
        certificate: String,
        /// Its ARI certID.
        ari_id: String,
        /// Its names, sorted.
        identifiers: Vec<String>,
        /// notBefore.
        not_before_ms: u64,
        /// notAfter.
        not_after_ms: u64,
    },
    /// An order's certificate became downloadable (after the processing delay).
    OrderValid {
        /// When.
        at_ms: u64,
        /// The order.
        order: String,
    },
    /// A certificate was revoked.
    CertificateRevoked {
        /// When.
        at_ms: u64,
        /// Its ARI certID.
        ari_id: String,
    },
    /// A request was refused by a rate limit.
    RateLimited {
        /// When.
        at_ms: u64,
        /// The limit.
        limit: LimitKind,
        /// What it counted (account URL, domain, identifier set, …).
        key: String,
        /// The `Retry-After` sent.
        retry_after_s: u64,
    },
    /// A fault was injected.
    FaultInjected {
        /// When.
        at_ms: u64,
        /// Which.
        fault: Fault,
        /// The request path.
        path: String,
    },
}

/// A host's callback for each [`CaEvent`] as it happens (see
/// [`crate::AcmeServer::set_event_hook`]).
pub type EventHook = Box<dyn FnMut(&CaEvent) + Send>;

/// Counters the simulation and the demo read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CaStats {
    /// Requests handled.
    pub requests: u64,
    /// Accounts created.
    pub accounts_created: u64,
    /// Orders created.
    pub orders_created: u64,
    /// Orders created per identifier value (`*.` kept); grows with the names ever ordered.
    pub orders_per_identifier: BTreeMap<String, u64>,
    /// Authorizations created.
    pub authorizations_created: u64,
    /// Authorizations reused.
    pub authorizations_reused: u64,
    /// Validations handed to the host.
    pub validations_requested: u64,
    /// Validations that passed.
    pub validations_succeeded: u64,
    /// Validations that failed.
    pub validations_failed: u64,
    /// Certificates issued.
    pub certificates_issued: u64,
    /// Certificates revoked.
    pub certificates_revoked: u64,
    /// Requests refused by a rate limit.
    pub rate_limited: u64,
    /// Requests refused for a genuinely bad nonce.
    pub bad_nonces: u64,
    /// Good nonces refused by the fault.
    pub bad_nonces_injected: u64,
    /// 503s injected.
    pub server_errors_injected: u64,
    /// `Retry-After`s sent as an HTTP-date (injected).
    pub http_date_retry_afters: u64,
    /// Events dropped from the front of a full log.
    pub events_dropped: u64,
}

/// Records an [`crate::AcmeServer`] holds: everything but accounts expires (orders and
/// authorizations at their `expires`, certificates at notAfter or beyond
/// [`crate::CaConfig::certificates_max`], nonces beyond [`crate::CaConfig::nonces_max`], rate
/// buckets when full again), so these stay bounded under any load.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaSizes {
    /// Accounts (never expire; bounded by the new-accounts limit).
    pub accounts: usize,
    /// Orders.
    pub orders: usize,
    /// Authorizations.
    pub authorizations: usize,
    /// Certificates.
    pub certificates: usize,
    /// Nonces issued and not yet used.
    pub nonces: usize,
    /// Pending timers (expiries, processing delays, rate buckets).
    pub timers: usize,
    /// Rate-limit buckets that are not full.
    pub rate_buckets: usize,
    /// Entries in the event log.
    pub events: usize,
}
