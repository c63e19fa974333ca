//! The replicated model: certificate specs, accounts, issued certificates, policy.

use core::fmt;

use serde::{Deserialize, Serialize};

use crate::budget::Rate;
use crate::error::{PolicyError, SpecError};
use crate::name::Identifier;
use crate::time::{DAY_MS, HOUR_MS, UnixMillis};

/// Identifiers per certificate that any profile allows (Let's Encrypt's ceiling).
pub const IDENTIFIERS_MAX: usize = 100;
/// Identifiers per certificate with the `tlsserver` and `shortlived` profiles.
pub const IDENTIFIERS_MAX_MODERN: usize = 25;
/// Length of operator labels, issuer ids and profile names.
pub const FIELD_LEN_MAX: usize = 64;
/// Length of URLs we keep (directory, order, authorization, challenge, certificate).
pub const URL_LEN_MAX: usize = 2048;

/// A Raft term, as carried by order-step commands for fencing (DESIGN §5).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Term(pub u64);

/// A renewal cycle number of one certificate: 1 for the first order, +1 for each renewal.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Cycle(pub u64);

impl Cycle {
    /// The cycle after this one (saturating: a snapshot may carry any value, and `apply` must
    /// stay total).
    #[must_use]
    pub const fn next(self) -> Self {
        Self(self.0.saturating_add(1))
    }
}

/// The stable key of a certificate record: an operator-given label, or the sorted,
/// normalized identifier set joined by commas.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CertId(String);

/// Which ACME account (and CA) issues a certificate: `letsencrypt`, `staging`, `pebble`, ….
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct IssuerId(String);

/// The certificate key algorithm.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub enum KeyType {
    /// ECDSA on P-256 (the default: small, fast, universally supported).
    #[default]
    EcdsaP256,
    /// ECDSA on P-384.
    EcdsaP384,
    /// RSA 2048.
    Rsa2048,
    /// RSA 3072.
    Rsa3072,
    /// RSA 4096.
    Rsa4096,
}

/// The ACME profile requested at `newOrder` (draft-aaron-acme-profiles).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Profile {
    /// No profile field: the CA's default.
    #[default]
    Default,
    /// Let's Encrypt `classic` (90 days).
    Classic,
    /// Let's Encrypt `shortlived` (about 6 days; the only one allowing IP identifiers).
    ShortLived,
    /// Let's Encrypt `tlsserver` (45 days, at most 25 identifiers).
    TlsServer,
    /// Another CA's profile, by name.
    Other(String),
}

/// How the CA validates control of an identifier (RFC 8555 §8, RFC 8737).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub enum ChallengeKind {
    /// A TXT record under `_acme-challenge`, published through a hook.
    Dns01,
    /// An HTTP response on port 80, served by every node's data plane.
    #[default]
    Http01,
    /// A self-signed certificate on port 443 with ALPN `acme-tls/1`, served by every node.
    TlsAlpn01,
}

/// A validated, normalized certificate specification.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertSpec {
    /// Sorted, deduplicated, normalized identifiers.
    pub identifiers: Vec<Identifier>,
    /// The key algorithm.
    pub key_type: KeyType,
    /// The ACME profile.
    pub profile: Profile,
    /// How the CA validates.
    pub challenge: ChallengeKind,
    /// Which account issues it.
    pub issuer: IssuerId,
    /// An operator-given name, which then is the certificate's id.
    pub label: Option<String>,
}

/// What an operator asks for, before validation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertRequest {
    /// Identifiers as typed.
    pub identifiers: Vec<String>,
    /// Key algorithm.
    pub key_type: KeyType,
    /// Profile name (`classic`, `shortlived`, `tlsserver`, another CA's, or empty).
    pub profile: String,
    /// Challenge kind.
    pub challenge: ChallengeKind,
    /// Issuer id.
    pub issuer: String,
    /// Optional label.
    pub label: Option<String>,
}

/// An opaque AES-256-GCM sealed secret (account or certificate key).
///
/// The adapters seal with the cluster data key before a key enters a command; the core only
/// checks the envelope (magic and minimum length) so a plaintext key can never be committed by
/// mistake (DESIGN §4, SIMULATION I10). Layout: `"cfs1" | key id (4) | nonce (12) | ciphertext |
/// tag (16)`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedBlob(#[serde(with = "serde_bytes")] Vec<u8>);

/// An ACME account, one per issuer for the whole cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// The CA's directory URL.
    pub directory_url: String,
    /// The account URL (`kid`), once registered.
    pub account_url: Option<String>,
    /// Contact URIs (`mailto:`).
    pub contact: Vec<String>,
    /// The sealed account credentials.
    pub credentials: SealedBlob,
    /// Until when the CA asked this account to wait (account-wide 429).
    pub throttled_until: Option<UnixMillis>,
    /// A key rollover in progress: its new key is committed before the CA hears of it.
    pub rollover: Option<KeyRollover>,
}

/// An account key rollover in progress (RFC 8555 §7.3.5, DESIGN §4).
///
/// The new key is committed before the CA is asked to bind it, so that a leader dying right
/// after the CA acted leaves the key the CA now expects in the log: the next leader checks which
/// key the CA holds and finishes. Until `AccountKeyRolled` the CA may hold either key, so the
/// planner starts no other work for the issuer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRollover {
    /// The account's credentials with the new key, sealed.
    pub credentials: SealedBlob,
    /// When the rollover was committed.
    pub requested_at: UnixMillis,
}

/// Identifies an interned intermediate chain: SHA-256 over its length-prefixed DER blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ChainId(pub [u8; 32]);

/// A certificate the CA issued and the cluster serves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedCert {
    /// The cycle that issued it.
    pub cycle: Cycle,
    /// The leaf certificate, DER.
    #[serde(with = "serde_bytes")]
    pub leaf_der: Vec<u8>,
    /// The intermediates, interned in the state (many leaves share one chain).
    pub chain: ChainId,
    /// The sealed private key.
    pub key: SealedBlob,
    /// Validity start.
    pub not_before: UnixMillis,
    /// Validity end.
    pub not_after: UnixMillis,
    /// When it was committed.
    pub issued_at: UnixMillis,
    /// The ARI certificate identifier (RFC 9773 §4.1), if the CA supports ARI.
    pub ari_id: Option<String>,
}

/// A challenge the cluster answers while a cycle is open (DESIGN §5 step 3).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    /// The identifier it proves.
    pub identifier: Identifier,
    /// Its kind.
    pub kind: ChallengeKind,
    /// The challenge token (base64url, RFC 8555 §8.1).
    pub token: String,
    /// `token || '.' || thumbprint`: the HTTP-01 body, the TLS-ALPN-01 digest input, the DNS-01
    /// digest input.
    pub key_authorization: String,
    /// The challenge URL, to tell the CA it is ready.
    pub url: String,
}

/// Why a cycle was begun.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum RenewalReason {
    /// Inside the CA's ARI window.
    Ari,
    /// Less than the emergency fraction of the lifetime left.
    Emergency,
    /// Never issued yet.
    Initial,
    /// Retrying after a failed cycle.
    Retry,
    /// The fixed fraction of the lifetime has passed.
    Scheduled,
    /// The operator changed the spec.
    SpecChanged,
}

/// Cluster-wide lifecycle policy, replicated (`SetPolicy`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Renew after this fraction of the lifetime (permille; 667 = 2/3).
    pub renew_permille: u16,
    /// The fraction for lifetimes under `short_lifetime_ms` (permille; 500 = 1/2).
    pub renew_short_permille: u16,
    /// Below this lifetime the short fraction applies (10 days).
    pub short_lifetime_ms: u64,
    /// Renew at once, overriding ARI, with less than this fraction left (permille; 50 = 1/20).
    pub emergency_permille: u16,
    /// Renewal jitter: up to this fraction of the lifetime earlier (permille).
    pub jitter_permille: u16,
    /// Cycles open at once across the cluster.
    pub orders_in_flight_max: u32,
    /// Intents one planner tick may emit.
    pub intents_per_tick_max: u32,
    /// Due-index entries one planner tick may examine.
    pub scan_per_tick_max: u32,
    /// Minimum interval between ARI polls of one certificate (12 h: twice a day).
    pub ari_poll_interval_ms: u64,
    /// New orders per account (Let's Encrypt: 300 per 3 hours).
    pub new_orders: Rate,
    /// Certificates per registered domain (50 per 7 days).
    pub certs_per_domain: Rate,
    /// Certificates per exact identifier set (5 per 7 days).
    pub certs_per_set: Rate,
    /// Failed authorizations per identifier per account (5 per hour).
    pub failed_authz: Rate,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            renew_permille: 667,
            renew_short_permille: 500,
            short_lifetime_ms: 10 * DAY_MS,
            emergency_permille: 50,
            jitter_permille: 20,
            orders_in_flight_max: 256,
            intents_per_tick_max: 1024,
            scan_per_tick_max: 4096,
            ari_poll_interval_ms: 12 * HOUR_MS,
            new_orders: Rate {
                count: 300,
                period_ms: 3 * HOUR_MS,
            },
            certs_per_domain: Rate {
                count: 50,
                period_ms: 7 * DAY_MS,
            },
            certs_per_set: Rate {
                count: 5,
                period_ms: 7 * DAY_MS,
            },
            failed_authz: Rate {
                count: 5,
                period_ms: HOUR_MS,
            },
        }
    }
}

impl Policy {
    /// Checks every field's range, naming the first one out of range.
    pub fn check(&self) -> Result<(), PolicyError> {
        let permille = |field, value: u16, min: u16| {
            if value < min || value >= 1000 {
                return Err(PolicyError {
                    field,
                    value: value.into(),
                    reason: "must be in 1..1000 permille",
                });
            }
            Ok(())
        };
        permille("renew_permille", self.renew_permille, 1)?;
        permille("renew_short_permille", self.renew_short_permille, 1)?;
        permille("emergency_permille", self.emergency_permille, 1)?;
        if self.jitter_permille >= 500 {
            let value = self.jitter_permille.into();
            return Err(PolicyError {
                field: "jitter_permille",
                value,
                reason: "must be below 500",
            });
        }
        let renew_max = self.renew_permille.max(self.renew_short_permille);
        if u32::from(self.emergency_permille) + u32::from(renew_max) >= 1000 {
            let value = self.emergency_permille.into();
            let reason = "leaves no time between the renewal point and the emergency point";
            return Err(PolicyError {
                field: "emergency_permille",
                value,
                reason,
            });
        }
        let bounded = |field, value: u64, min: u64, max: u64, reason| {
            if value < min || value > max {
                return Err(PolicyError {
                    field,
                    value,
                    reason,
                });
            }
            Ok(())
        };
        bounded(
            "orders_in_flight_max",
            self.orders_in_flight_max.into(),
            1,
            100_000,
            "must be in 1..=100000",
        )?;
        bounded(
            "intents_per_tick_max",
            self.intents_per_tick_max.into(),
            1,
            100_000,
            "must be in 1..=100000",
        )?;
        bounded(
            "scan_per_tick_max",
            self.scan_per_tick_max.into(),
            1,
            1_000_000,
            "must be in 1..=1000000",
        )?;
        bounded(
            "ari_poll_interval_ms",
            self.ari_poll_interval_ms,
            // At most twice a day per certificate, whatever the operator sets.
            12 * HOUR_MS,
            30 * DAY_MS,
            "must be between 12 hours and 30 days",
        )?;
        bounded(
            "short_lifetime_ms",
            self.short_lifetime_ms,
            0,
            365 * DAY_MS,
            "must be at most 365 days",
        )?;
        for (field, rate) in [
            ("new_orders", self.new_orders),
            ("certs_per_domain", self.certs_per_domain),
            ("certs_per_set", self.certs_per_set),
            ("failed_authz", self.failed_authz),
        ] {
            rate.check(field)?;
        }
        Ok(())
    }
}

impl CertSpec {
    /// Validates and normalizes an operator's request.
    pub fn from_request(request: &CertRequest) -> Result<Self, SpecError> {
        let profile = Profile::parse(&request.profile)?;
        let issuer = IssuerId::parse(&request.issuer)?;
        let label = request.label.as_deref().map(parse_label).transpose()?;
        let mut identifiers = request
            .identifiers
            .iter()
            .map(|raw| Identifier::parse(raw))
            .collect::<Result<Vec<_>, _>>()?;
        identifiers.sort();
        identifiers.dedup();
        let spec = Self {
            identifiers,
            key_type: request.key_type,
            profile,
            challenge: request.challenge,
            issuer,
            label,
        };
        spec.check_rules()?;
        Ok(spec)
    }

    /// Re-checks a spec decoded from bytes: normalized, sorted, and within the rules.
    pub fn check(&self) -> Result<(), SpecError> {
        if !self.identifiers.iter().all(Identifier::is_normalized) {
            return Err(SpecError::NotNormalized {
                what: "an identifier",
            });
        }
        if !self.identifiers.windows(2).all(|w| w[0] < w[1]) {
            return Err(SpecError::NotNormalized {
                what: "identifiers are not sorted and unique",
            });
        }
        IssuerId::parse(&self.issuer.0)?;
        if let Profile::Other(name) = &self.profile {
            Profile::parse(name)?;
        }
        if let Some(label) = &self.label {
            parse_label(label)?;
        }
        self.check_rules()
    }

    /// The id this spec is stored under.
    #[must_use]
    pub fn cert_id(&self) -> CertId {
        if let Some(label) = &self.label {
            return CertId(label.clone());
        }
        CertId(self.identifier_set())
    }

    /// The identifier values joined by commas: the key of the per-set budget.
    #[must_use]
    pub fn identifier_set(&self) -> String {
        let values: Vec<String> = self.identifiers.iter().map(Identifier::value).collect();
        values.join(",")
    }

    /// The distinct registered domains (per-domain budget keys), sorted.
    #[must_use]
    pub fn budget_domains(&self) -> Vec<String> {
        let mut domains: Vec<String> = self
            .identifiers
            .iter()
            .map(Identifier::budget_domain)
            .collect();
        domains.sort();
        domains.dedup();
        domains
    }

    fn check_rules(&self) -> Result<(), SpecError> {
        if self.identifiers.is_empty() {
            return Err(SpecError::NoIdentifiers);
        }
        let max = self.profile.identifiers_max();
        if self.identifiers.len() > max {
            let profile = self.profile.to_string();
            return Err(SpecError::TooManyIdentifiers {
                count: self.identifiers.len(),
                max,
                profile,
            });
        }
        for identifier in &self.identifiers {
            match identifier {
                Identifier::Ip(ip) if self.profile != Profile::ShortLived => {
                    let profile = self.profile.to_string();
                    return Err(SpecError::IpNeedsShortlived {
                        ip: ip.to_string(),
                        profile,
                    });
                }
                Identifier::Ip(ip) if self.challenge == ChallengeKind::Dns01 => {
                    return Err(SpecError::IpWithDns01 { ip: ip.to_string() });
                }
                Identifier::Dns(name)
                    if name.is_wildcard() && self.challenge != ChallengeKind::Dns01 =>
                {
                    let challenge = self.challenge.to_string();
                    return Err(SpecError::WildcardNeedsDns01 {
                        name: name.to_string(),
                        challenge,
                    });
                }
                _ => {}
            }
        }
        Ok(())
    }
}

impl Profile {
    /// Parses a profile name; the empty string is the CA's default.
    pub fn parse(name: &str) -> Result<Self, SpecError> {
        Ok(match name {
            "" => Self::Default,
            "classic" => Self::Classic,
            "shortlived" => Self::ShortLived,
            "tlsserver" => Self::TlsServer,
            other => {
                check_field("profile", other, |b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
                })?;
                Self::Other(other.to_owned())
            }
        })
    }

    /// The ACME `profile` field, if any.
    #[must_use]
    pub fn acme_name(&self) -> Option<&str> {
        match self {
            Self::Default => None,
            Self::Classic => Some("classic"),
            Self::ShortLived => Some("shortlived"),
            Self::TlsServer => Some("tlsserver"),
            Self::Other(name) => Some(name),
        }
    }

    /// How many identifiers one certificate may hold with this profile.
    #[must_use]
    pub fn identifiers_max(&self) -> usize {
        match self {
            Self::ShortLived | Self::TlsServer => IDENTIFIERS_MAX_MODERN,
            Self::Default | Self::Classic | Self::Other(_) => IDENTIFIERS_MAX,
        }
    }
}

impl IssuerId {
    /// Parses an issuer id: 1–64 of `a-z 0-9 - _`, starting with a letter or digit.
    pub fn parse(raw: &str) -> Result<Self, SpecError> {
        check_field("issuer", raw, |b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
        })?;
        Ok(Self(raw.to_owned()))
    }

    /// The id as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl CertId {
    /// Parses a certificate id as an operator types it: a label, or an identifier list.
    pub fn parse(raw: &str) -> Result<Self, SpecError> {
        if raw.is_empty() || raw.len() > IDENTIFIERS_MAX * 256 {
            return Err(SpecError::BadField {
                field: "certificate id",
                value: raw.chars().take(80).collect(),
                reason: "has a bad length",
            });
        }
        Ok(Self(raw.to_owned()))
    }

    /// The id as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The smallest id in sort order (a range bound; not a valid certificate id).
    pub(crate) const fn min() -> Self {
        Self(String::new())
    }
}

impl SealedBlob {
    /// The envelope's magic prefix.
    pub const MAGIC: [u8; 4] = *b"cfs1";
    /// Magic, key id, nonce and tag: the shortest valid blob seals zero bytes.
    pub const LEN_MIN: usize = 4 + 4 + 12 + 16;
    /// Larger blobs are refused (an RSA 4096 key in PKCS#8 is about 2.4 KiB).
    pub const LEN_MAX: usize = 16 * 1024;

    /// Wraps sealed bytes, checking the envelope.
    pub fn new(bytes: Vec<u8>) -> Result<Self, String> {
        let blob = Self(bytes);
        blob.check()?;
        Ok(blob)
    }

    /// Checks the envelope of a blob decoded from bytes.
    pub fn check(&self) -> Result<(), String> {
        if self.0.len() < Self::LEN_MIN || self.0.len() > Self::LEN_MAX {
            return Err(format!(
                "sealed key of {} bytes is outside {}..={}",
                self.0.len(),
                Self::LEN_MIN,
                Self::LEN_MAX
            ));
        }
        if self.0[..4] != Self::MAGIC {
            return Err("sealed key does not start with the \"cfs1\" envelope: refusing what may be a plaintext key".into());
        }
        Ok(())
    }

    /// The sealed bytes.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SealedBlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Sealed bytes are harmless, but logs need only their size.
        write!(f, "SealedBlob({} bytes)", self.0.len())
    }
}

impl IssuedCert {
    /// The validity period in milliseconds.
    #[must_use]
    pub fn lifetime_ms(&self) -> u64 {
        self.not_after.ms_since(self.not_before)
    }
}

/// Checks an operator-supplied label: 1–64 of `a-z A-Z 0-9 . _ -`, not starting with a dot.
fn parse_label(raw: &str) -> Result<String, SpecError> {
    check_field("label", raw, |b| {
        b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-'
    })?;
    if raw.starts_with('.') || raw.contains("..") {
        return Err(SpecError::BadField {
            field: "label",
            value: raw.to_owned(),
            reason: "must not start with a dot or contain \"..\"",
        });
    }
    Ok(raw.to_owned())
}

fn check_field(
    field: &'static str,
    raw: &str,
    allowed: impl Fn(u8) -> bool,
) -> Result<(), SpecError> {
    let value = || raw.chars().take(80).collect::<String>();
    if raw.is_empty() || raw.len() > FIELD_LEN_MAX {
        return Err(SpecError::BadField {
            field,
            value: value(),
            reason: "must be 1 to 64 characters",
        });
    }
    if !raw.bytes().all(allowed) {
        return Err(SpecError::BadField {
            field,
            value: value(),
            reason: "has a character that is not allowed",
        });
    }
    Ok(())
}

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for Cycle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for CertId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for IssuerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.acme_name().unwrap_or("(CA default)"))
    }
}

impl fmt::Display for ChallengeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Dns01 => "dns-01",
            Self::Http01 => "http-01",
            Self::TlsAlpn01 => "tls-alpn-01",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(names: &[&str]) -> CertRequest {
        CertRequest {
            identifiers: names.iter().map(|n| (*n).to_owned()).collect(),
            issuer: "le".into(),
            ..CertRequest::default()
        }
    }

    #[test]
    fn identifiers_are_sorted_and_deduplicated_into_a_stable_id() {
        let spec = CertSpec::from_request(&request(&[
            "b.example.com",
            "A.example.com",
            "a.example.com",
        ]))
        .unwrap();
        assert_eq!(spec.cert_id().as_str(), "a.example.com,b.example.com");
        assert!(spec.check().is_ok());
    }

    #[test]
    fn a_label_becomes_the_id() {
        let mut req = request(&["a.example.com"]);
        req.label = Some("shop-frontend".into());
        assert_eq!(
            CertSpec::from_request(&req).unwrap().cert_id().as_str(),
            "shop-frontend"
        );
        req.label = Some("../etc".into());
        assert!(matches!(
            CertSpec::from_request(&req),
            Err(SpecError::BadField { field: "label", .. })
        ));
    }

    #[test]
    fn no_identifiers_is_rejected() {
        assert_eq!(
            CertSpec::from_request(&request(&[])),
            Err(SpecError::NoIdentifiers)
        );
    }

    #[test]
    fn more_than_100_identifiers_is_rejected_and_25_with_modern_profiles() {
        let names: Vec<String> = (0..101).map(|i| format!("n{i}.example.com")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let err = CertSpec::from_request(&request(&refs)).unwrap_err();
        assert!(
            matches!(
                err,
                SpecError::TooManyIdentifiers {
                    count: 101,
                    max: 100,
                    ..
                }
            ),
            "{err}"
        );
        let mut req = request(&refs[..26]);
        req.profile = "tlsserver".into();
        assert!(matches!(
            CertSpec::from_request(&req),
            Err(SpecError::TooManyIdentifiers { max: 25, .. })
        ));
        req.identifiers.truncate(25);
        assert!(CertSpec::from_request(&req).is_ok());
    }

    #[test]
    fn ip_identifiers_need_the_shortlived_profile_and_not_dns01() {
        let err = CertSpec::from_request(&request(&["192.0.2.7"])).unwrap_err();
        assert!(matches!(err, SpecError::IpNeedsShortlived { .. }), "{err}");
        let mut req = request(&["192.0.2.7"]);
        req.profile = "shortlived".into();
        assert!(CertSpec::from_request(&req).is_ok());
        req.challenge = ChallengeKind::Dns01;
        assert!(matches!(
            CertSpec::from_request(&req),
            Err(SpecError::IpWithDns01 { .. })
        ));
    }

    #[test]
    fn wildcards_need_dns01() {
        let err = CertSpec::from_request(&request(&["*.example.com"])).unwrap_err();
        assert!(err.to_string().contains("*.example.com"), "{err}");
        let mut req = request(&["*.example.com"]);
        req.challenge = ChallengeKind::Dns01;
        assert!(CertSpec::from_request(&req).is_ok());
    }

    #[test]
    fn bad_issuer_and_profile_names_are_rejected() {
        let mut req = request(&["a.example.com"]);
        req.issuer = "Let's Encrypt".into();
        assert!(matches!(
            CertSpec::from_request(&req),
            Err(SpecError::BadField {
                field: "issuer",
                ..
            })
        ));
        let mut req = request(&["a.example.com"]);
        req.profile = "no spaces".into();
        assert!(matches!(
            CertSpec::from_request(&req),
            Err(SpecError::BadField {
                field: "profile",
                ..
            })
        ));
    }

    #[test]
    fn a_bad_identifier_is_named_in_the_error() {
        let err = CertSpec::from_request(&request(&["ok.example.com", "bad_name.example.com"]))
            .unwrap_err();
        assert!(err.to_string().contains("bad_name.example.com"), "{err}");
    }

    #[test]
    fn decoded_specs_out_of_normal_form_are_caught() {
        let mut spec =
            CertSpec::from_request(&request(&["a.example.com", "b.example.com"])).unwrap();
        spec.identifiers.reverse();
        assert!(matches!(spec.check(), Err(SpecError::NotNormalized { .. })));
    }

    #[test]
    fn sealed_blobs_refuse_plaintext() {
        assert!(
            SealedBlob::new(
                b"-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49".to_vec()
            )
            .is_err()
        );
        assert!(SealedBlob::new(b"cfs1".to_vec()).is_err());
        let mut ok = SealedBlob::MAGIC.to_vec();
        ok.resize(SealedBlob::LEN_MIN + 32, 7);
        assert!(SealedBlob::new(ok).is_ok());
    }

    #[test]
    fn default_policy_is_valid_and_out_of_range_fields_are_named() {
        assert_eq!(Policy::default().check(), Ok(()));
        let policy = Policy {
            renew_permille: 1000,
            ..Policy::default()
        };
        assert_eq!(policy.check().unwrap_err().field, "renew_permille");
        let policy = Policy {
            emergency_permille: 400,
            ..Policy::default()
        };
        assert_eq!(policy.check().unwrap_err().field, "emergency_permille");
        let policy = Policy {
            ari_poll_interval_ms: HOUR_MS,
            ..Policy::default()
        };
        assert_eq!(policy.check().unwrap_err().field, "ari_poll_interval_ms");
        let policy = Policy {
            orders_in_flight_max: 0,
            ..Policy::default()
        };
        assert_eq!(policy.check().unwrap_err().field, "orders_in_flight_max");
        let policy = Policy {
            new_orders: Rate {
                count: 0,
                period_ms: 1,
            },
            ..Policy::default()
        };
        assert_eq!(policy.check().unwrap_err().field, "new_orders");
    }
}
