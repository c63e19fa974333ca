//! Everything the CA can be told: URLs, profiles, lifetimes, rate limits and faults.

use std::collections::{BTreeMap, BTreeSet};

/// One day in milliseconds.
pub const DAY_MS: u64 = 24 * HOUR_MS;
/// One hour in milliseconds.
pub const HOUR_MS: u64 = 3_600_000;

/// The CA's configuration. [`CaConfig::new`] gives Let's Encrypt's numbers and no faults.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CaConfig {
    /// Where the CA is reached, without a trailing slash (`http://127.0.0.1:14000`), the prefix
    /// of every URL it hands out and the base the JWS `url` header is checked against.
    pub base_url: String,
    /// Certificate profiles offered in the directory's `meta.profiles` (draft-aaron-acme-profiles).
    pub profiles: BTreeMap<String, Profile>,
    /// The profile of an order that names none; must be one of `profiles`.
    pub default_profile: String,
    /// Challenge types offered for DNS identifiers, in this order (wildcards only get dns-01,
    /// IP addresses never do: RFC 8738 §7).
    pub challenge_types: Vec<ChallengeKind>,
    /// Most identifiers in one order (Let's Encrypt: 100).
    pub identifiers_per_order_max: usize,
    /// How long an order lives (it also never outlives its authorizations).
    pub order_lifetime_ms: u64,
    /// How long a pending authorization lives.
    pub authz_pending_lifetime_ms: u64,
    /// How long a valid authorization lives, and may be reused.
    pub authz_valid_lifetime_ms: u64,
    /// Chance that a new order reuses a valid authorization of the same account and identifier.
    pub authz_reuse_percent: u8,
    /// How far a leaf's notBefore lies before its issuance (Let's Encrypt: one hour), so that
    /// clients with slow clocks do not see it as not yet valid.
    pub not_before_backdate_ms: u64,
    /// CSR key types accepted at finalize.
    pub accepted_key_types: BTreeSet<KeyType>,
    /// ARI renewal windows (RFC 9773).
    pub ari: AriConfig,
    /// Rate limits; `None` is no limit.
    pub limits: RateLimits,
    /// Injected faults for the simulation.
    pub faults: Faults,
    /// Nonces kept valid at once; the oldest is forgotten beyond this.
    pub nonces_max: usize,
    /// Certificates kept (for download, ARI and `replaces`) until their notAfter; beyond this
    /// the one expiring first is forgotten early.
    pub certificates_max: usize,
    /// Entries kept in the event log; the oldest is dropped beyond this (and counted).
    pub events_max: usize,
    /// Largest request body accepted.
    pub request_body_bytes_max: usize,
}

impl CaConfig {
    /// Let's Encrypt-like defaults for a CA at `base_url`: profiles `classic` (90 days, the
    /// default) and `shortlived` (160 hours), its rate limits, no faults.
    #[must_use]
    pub fn new(base_url: impl Into<String>) -> Self {
        let mut profiles = BTreeMap::new();
        profiles.insert(
            "classic".to_owned(),
            Profile {
                description: "90-day certificates".to_owned(),
                lifetime_ms: 90 * DAY_MS,
            },
        );
        profiles.insert(
            "shortlived".to_owned(),
            Profile {
                description: "160-hour certificates".to_owned(),
                lifetime_ms: 160 * HOUR_MS,
            },
        );
        Self {
            base_url: base_url.into().trim_end_matches('/').to_owned(),
            profiles,
            default_profile: "classic".to_owned(),
            challenge_types: vec![
                ChallengeKind::Http01,
                ChallengeKind::Dns01,
                ChallengeKind::TlsAlpn01,
            ],
            identifiers_per_order_max: 100,
            order_lifetime_ms: 7 * DAY_MS,
            authz_pending_lifetime_ms: 7 * DAY_MS,
            authz_valid_lifetime_ms: 30 * DAY_MS,
            authz_reuse_percent: 100,
            not_before_backdate_ms: HOUR_MS,
            accepted_key_types: [
                KeyType::EcdsaP256,
                KeyType::EcdsaP384,
                KeyType::Ed25519,
                KeyType::Rsa,
            ]
            .into_iter()
            .collect(),
            ari: AriConfig::default(),
            limits: RateLimits::lets_encrypt(),
            faults: Faults::default(),
            nonces_max: 100_000,
            certificates_max: 200_000,
            events_max: 100_000,
            request_body_bytes_max: 64 * 1024,
        }
    }

    /// The same with no rate limits at all (for the demo's first run, or tests that issue a lot).
    #[must_use]
    pub fn without_limits(mut self) -> Self {
        self.limits = RateLimits::none();
        self
    }

    /// Checks the configuration; [`crate::AcmeServer::new`] calls it.
    pub fn check(&self) -> Result<(), ConfigError> {
        let url = self
            .base_url
            .parse::<http::Uri>()
            .map_err(|e| ConfigError::new("base_url", &self.base_url, e.to_string()))?;
        if url.scheme().is_none() || url.authority().is_none() || url.query().is_some() {
            return Err(ConfigError::new(
                "base_url",
                &self.base_url,
                "an absolute http(s) URL without a query",
            ));
        }
        if !self.profiles.contains_key(&self.default_profile) {
            return Err(ConfigError::new(
                "default_profile",
                &self.default_profile,
                "must name one of the profiles",
            ));
        }
        if let Some((name, _)) = self.profiles.iter().find(|(_, p)| p.lifetime_ms < 1000) {
            return Err(ConfigError::new(
                "profiles",
                name,
                "lifetime must be at least a second",
            ));
        }
        for (field, percent) in [
            ("authz_reuse_percent", self.authz_reuse_percent),
            ("faults.bad_nonce_percent", self.faults.bad_nonce_percent),
            (
                "faults.server_error_percent",
                self.faults.server_error_percent,
            ),
            (
                "faults.retry_after_http_date_percent",
                self.faults.retry_after_http_date_percent,
            ),
            ("ari.renew_now_percent", self.ari.renew_now_percent),
        ] {
            if percent > 100 {
                return Err(ConfigError::new(
                    field,
                    &percent.to_string(),
                    "a percentage",
                ));
            }
        }
        if self.challenge_types.is_empty() {
            return Err(ConfigError::new(
                "challenge_types",
                "[]",
                "offer at least one",
            ));
        }
        if !(1..=1000).contains(&self.identifiers_per_order_max) {
            return Err(ConfigError::new(
                "identifiers_per_order_max",
                &self.identifiers_per_order_max.to_string(),
                "1 to 1000",
            ));
        }
        if self.ari.window_start_permille > self.ari.window_end_permille
            || self.ari.window_end_permille > 1000
        {
            return Err(ConfigError::new(
                "ari",
                &format!(
                    "{}..{}",
                    self.ari.window_start_permille, self.ari.window_end_permille
                ),
                "start <= end <= 1000",
            ));
        }
        for (field, limit) in self.limits.all() {
            if let Some(limit) = limit
                && (limit.count == 0 || limit.period_ms < 1000)
            {
                return Err(ConfigError::new(
                    field,
                    &format!("{}/{} ms", limit.count, limit.period_ms),
                    "count at least 1 and period at least a second",
                ));
            }
        }
        if self.nonces_max == 0 || self.certificates_max == 0 {
            return Err(ConfigError::new(
                "nonces_max/certificates_max",
                "0",
                "at least 1",
            ));
        }
        Ok(())
    }
}

/// A certificate profile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Profile {
    /// Shown in the directory.
    pub description: String,
    /// notAfter - notBefore of its leaves (the backdate included).
    pub lifetime_ms: u64,
}

/// The challenge types (RFC 8555 §8.3, §8.4; RFC 8737).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ChallengeKind {
    /// `http-01`.
    Http01,
    /// `dns-01`.
    Dns01,
    /// `tls-alpn-01`.
    TlsAlpn01,
}

impl ChallengeKind {
    /// The challenge `type` string.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http01 => "http-01",
            Self::Dns01 => "dns-01",
            Self::TlsAlpn01 => "tls-alpn-01",
        }
    }
}

/// CSR key types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KeyType {
    /// ECDSA on P-256.
    EcdsaP256,
    /// ECDSA on P-384.
    EcdsaP384,
    /// Ed25519 (Let's Encrypt does not take it; the simulation's deterministic keys are it).
    Ed25519,
    /// RSA, 2048 bits or more.
    Rsa,
}

/// ARI renewal windows: a fraction of each leaf's lifetime (RFC 9773 §4.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AriConfig {
    /// Window start, in thousandths of the lifetime after notBefore.
    pub window_start_permille: u16,
    /// Window end, in thousandths of the lifetime after notBefore.
    pub window_end_permille: u16,
    /// The `Retry-After` of renewalInfo responses (Let's Encrypt: six hours).
    pub retry_after_s: u64,
    /// Chance that a renewalInfo answer says "renew now" (a window in the past), drawn per
    /// request: the moving-window fault of SIMULATION "Faults: CA".
    pub renew_now_percent: u8,
}

impl Default for AriConfig {
    fn default() -> Self {
        Self {
            window_start_permille: 667,
            window_end_permille: 750,
            retry_after_s: 6 * 3600,
            renew_now_percent: 0,
        }
    }
}

/// A limit of `count` events per `period_ms`, as a GCRA (what Let's Encrypt runs, and what
/// `certfleet_core::budget::Rate` mirrors): a burst of `count`, then one every
/// `period_ms / count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Burst size, and events per period.
    pub count: u32,
    /// The period in milliseconds.
    pub period_ms: u64,
}

/// The rate limits (https://letsencrypt.org/docs/rate-limits/).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimits {
    /// New orders per account (LE: 300 per 3 hours).
    pub orders_per_account: Option<RateLimit>,
    /// Certificates per registered domain (LE: 50 per 7 days); an IP address is its own domain.
    pub certificates_per_domain: Option<RateLimit>,
    /// Certificates per exact set of identifiers (LE: 5 per 7 days).
    pub duplicate_certificates: Option<RateLimit>,
    /// Failed validations per account and identifier (LE: 5 per hour).
    pub failed_validations_per_identifier: Option<RateLimit>,
    /// New accounts, CA-wide (LE counts per IP address: 10 per 3 hours).
    pub new_accounts: Option<RateLimit>,
}

impl RateLimits {
    /// Let's Encrypt's published numbers.
    #[must_use]
    pub fn lets_encrypt() -> Self {
        Self {
            orders_per_account: Some(RateLimit {
                count: 300,
                period_ms: 3 * HOUR_MS,
            }),
            certificates_per_domain: Some(RateLimit {
                count: 50,
                period_ms: 7 * DAY_MS,
            }),
            duplicate_certificates: Some(RateLimit {
                count: 5,
                period_ms: 7 * DAY_MS,
            }),
            failed_validations_per_identifier: Some(RateLimit {
                count: 5,
                period_ms: HOUR_MS,
            }),
            new_accounts: Some(RateLimit {
                count: 10,
                period_ms: 3 * HOUR_MS,
            }),
        }
    }

    /// No limits.
    #[must_use]
    pub fn none() -> Self {
        Self {
            orders_per_account: None,
            certificates_per_domain: None,
            duplicate_certificates: None,
            failed_validations_per_identifier: None,
            new_accounts: None,
        }
    }

    fn all(&self) -> [(&'static str, Option<RateLimit>); 5] {
        [
            ("limits.orders_per_account", self.orders_per_account),
            (
                "limits.certificates_per_domain",
                self.certificates_per_domain,
            ),
            ("limits.duplicate_certificates", self.duplicate_certificates),
            (
                "limits.failed_validations_per_identifier",
                self.failed_validations_per_identifier,
            ),
            ("limits.new_accounts", self.new_accounts),
        ]
    }
}

/// Faults the CA injects, each drawn from its seeded generator (SIMULATION "Faults: CA").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Faults {
    /// Chance that a POST with a good nonce is refused with `badNonce` anyway.
    pub bad_nonce_percent: u8,
    /// Chance that any request is answered 503 with `Retry-After`.
    pub server_error_percent: u8,
    /// The `Retry-After` of injected 503s.
    pub server_error_retry_after_s: u64,
    /// Chance that a `Retry-After` is sent as an HTTP-date instead of seconds (RFC 9110
    /// §10.2.3 allows both; a client must read either, against the response's `Date`).
    pub retry_after_http_date_percent: u8,
    /// Finalized orders stay `processing` for a time drawn from this range (0..=0: issued at
    /// once, `valid` in the finalize response).
    pub processing_ms_min: u64,
    /// See `processing_ms_min`.
    pub processing_ms_max: u64,
}

/// An unusable configuration value (operator's fault).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config {field} = {value:?}: {reason}")]
pub struct ConfigError {
    /// The field.
    pub field: &'static str,
    /// Its value.
    pub value: String,
    /// What it must be.
    pub reason: String,
}

impl ConfigError {
    fn new(field: &'static str, value: &str, reason: impl Into<String>) -> Self {
        Self {
            field,
            value: value.to_owned(),
            reason: reason.into(),
        }
    }
}
