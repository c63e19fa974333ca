//! Errors, one enum per boundary, classified by blame.
//!
//! * [`NameError`], [`SpecError`], [`PolicyError`]: the operator gave bad input.
//! * [`Rejection`]: `apply` refused a command (stale term, wrong cycle, out-of-order step, …).
//!   It is an answer, not a failure: openraft needs a response for every entry.
//! * [`DecodeError`], [`SnapshotError`]: bytes from the network or disk are not ours.

use thiserror::Error;

use crate::budget::BudgetKey;
use crate::model::{CertId, Cycle, IssuerId, Term};
use crate::order::StepName;
use crate::time::UnixMillis;

/// An identifier the operator gave is not certifiable.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("identifier {input:?} {reason}")]
pub struct NameError {
    /// The input as given (truncated to 80 characters).
    pub input: String,
    /// Why it was refused, as a predicate ("is a public suffix, not a registrable domain").
    pub reason: &'static str,
}

/// A certificate request is not valid.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SpecError {
    /// One identifier is bad.
    #[error(transparent)]
    Name(#[from] NameError),
    /// No identifiers were given.
    #[error("a certificate needs at least one identifier")]
    NoIdentifiers,
    /// Too many identifiers for the CA or profile.
    #[error("{count} identifiers is more than the {max} allowed with profile {profile}")]
    TooManyIdentifiers {
        /// Identifiers after deduplication.
        count: usize,
        /// The ceiling.
        max: usize,
        /// The profile whose ceiling applies.
        profile: String,
    },
    /// IP identifiers need the shortlived profile (Let's Encrypt issues them only there).
    #[error("IP identifier {ip} needs profile \"shortlived\", not {profile}")]
    IpNeedsShortlived {
        /// The address.
        ip: String,
        /// The profile asked for.
        profile: String,
    },
    /// Wildcards can only be validated with DNS-01 (RFC 8555 §7.1.3).
    #[error("wildcard {name} can only be validated with dns-01, not {challenge}")]
    WildcardNeedsDns01 {
        /// The wildcard name.
        name: String,
        /// The challenge kind asked for.
        challenge: String,
    },
    /// IP identifiers cannot be validated with DNS-01 (RFC 8738 §7).
    #[error("IP identifier {ip} cannot be validated with dns-01")]
    IpWithDns01 {
        /// The address.
        ip: String,
    },
    /// A name field (label, issuer, profile) has characters or a length we do not allow.
    #[error("{field} {value:?} {reason}")]
    BadField {
        /// Which field.
        field: &'static str,
        /// The value given (truncated).
        value: String,
        /// Why.
        reason: &'static str,
    },
    /// Bytes decoded as a spec are not in normalized form.
    #[error("certificate spec is not normalized: {what}")]
    NotNormalized {
        /// What is out of form.
        what: &'static str,
    },
}

/// A policy is out of range.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("policy field {field} = {value} {reason}")]
pub struct PolicyError {
    /// Which field.
    pub field: &'static str,
    /// The value given.
    pub value: u64,
    /// Why it is refused.
    pub reason: &'static str,
}

/// Why `apply` refused a command. The state is unchanged by a rejected command.
#[derive(Clone, Debug, PartialEq, Eq, Error, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum Rejection {
    /// The certificate is not in the state (never added, or removed).
    #[error("certificate {cert} is not managed")]
    UnknownCert {
        /// The certificate.
        cert: CertId,
    },
    /// No account is configured for the issuer.
    #[error("no account for issuer {issuer}")]
    UnknownIssuer {
        /// The issuer.
        issuer: IssuerId,
    },
    /// A step from a term that does not own the cycle: a deposed leader (DESIGN §5).
    #[error(
        "certificate {cert} cycle {cycle}: step from term {term} but the cycle belongs to term {owner}"
    )]
    StaleTerm {
        /// The certificate.
        cert: CertId,
        /// The cycle.
        cycle: Cycle,
        /// The command's term.
        term: Term,
        /// The term owning the cycle.
        owner: Term,
    },
    /// The command names another cycle than the one open (or the next one).
    #[error("certificate {cert}: command for cycle {got}, expected {expected}")]
    WrongCycle {
        /// The certificate.
        cert: CertId,
        /// The cycle the state expects.
        expected: Cycle,
        /// The cycle in the command.
        got: Cycle,
    },
    /// An order step arrived but no cycle is open.
    #[error("certificate {cert} has no open cycle")]
    NoOpenCycle {
        /// The certificate.
        cert: CertId,
    },
    /// `BeginOrder` while a cycle is open: never two orders at once for one certificate.
    #[error("certificate {cert} already has cycle {cycle} open")]
    CycleOpen {
        /// The certificate.
        cert: CertId,
        /// The open cycle.
        cycle: Cycle,
    },
    /// A step that does not follow the committed one.
    #[error("certificate {cert}: step {got} cannot follow {at}")]
    OutOfOrder {
        /// The certificate.
        cert: CertId,
        /// The committed step.
        at: StepName,
        /// The step proposed.
        got: StepName,
    },
    /// `ResumeOrder` from a term not newer than the owner.
    #[error("certificate {cert}: term {term} cannot take over a cycle owned by term {owner}")]
    TermNotNewer {
        /// The certificate.
        cert: CertId,
        /// The command's term.
        term: Term,
        /// The owning term.
        owner: Term,
    },
    /// Starting the order would exceed a rate budget.
    #[error("budget {key} exhausted until {available_at}")]
    BudgetExhausted {
        /// The exhausted budget.
        key: BudgetKey,
        /// When one more unit becomes available.
        available_at: UnixMillis,
    },
    /// The CA asked the account to wait (429 with Retry-After on an account-wide limit).
    #[error("issuer {issuer} is throttled until {until}")]
    IssuerThrottled {
        /// The issuer.
        issuer: IssuerId,
        /// Until when.
        until: UnixMillis,
    },
    /// The command carries invalid data (spec, policy, key blob, challenge, certificate).
    #[error("invalid command: {reason}")]
    Invalid {
        /// What is wrong, naming the value.
        reason: String,
    },
    /// A renewal-info result for a certificate that has been renewed since.
    #[error("certificate {cert}: renewal info is for cycle {got}, current is {current}")]
    StaleRenewalInfo {
        /// The certificate.
        cert: CertId,
        /// The cycle the info was fetched for.
        got: Cycle,
        /// The current certificate's cycle.
        current: Cycle,
    },
}

/// Bytes could not be decoded as a command.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Nothing to decode.
    #[error("empty input")]
    Empty,
    /// A wire version this build does not know.
    #[error("unknown encoding version {version} (this build reads version {supported})")]
    UnknownVersion {
        /// The version byte found.
        version: u8,
        /// The version this build reads.
        supported: u8,
    },
    /// Larger than any command we would write.
    #[error("{len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// The length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The payload is not a valid encoding.
    #[error("malformed payload: {0}")]
    Malformed(String),
    /// Bytes were left after the value.
    #[error("{0} trailing bytes after the value")]
    Trailing(usize),
}

/// A snapshot stream is not valid.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// A frame's length field exceeds the limit (corruption, or not a snapshot).
    #[error("frame {index} claims {len} bytes, more than the limit of {max}")]
    FrameTooLarge {
        /// The frame index.
        index: u64,
        /// The claimed length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// A frame's checksum does not match.
    #[error("frame {index}: checksum mismatch (stored {stored:08x}, computed {computed:08x})")]
    Checksum {
        /// The frame index.
        index: u64,
        /// Stored CRC-32.
        stored: u32,
        /// Computed CRC-32.
        computed: u32,
    },
    /// A frame could not be decoded.
    #[error("frame {index}: {source}")]
    Decode {
        /// The frame index.
        index: u64,
        /// Why.
        source: DecodeError,
    },
    /// Records came in an order the format does not allow.
    #[error("frame {index}: {reason}")]
    Structure {
        /// The frame index.
        index: u64,
        /// What was wrong.
        reason: &'static str,
    },
    /// A record carries invalid content.
    #[error("frame {index}: invalid record: {reason}")]
    Invalid {
        /// The frame index.
        index: u64,
        /// What was wrong.
        reason: String,
    },
    /// The stream ended before the footer.
    #[error("snapshot truncated after {frames} frames")]
    Truncated {
        /// Complete frames read.
        frames: u64,
    },
    /// The footer's record count or digest disagrees with what was read.
    #[error("snapshot footer mismatch: {what}")]
    Footer {
        /// Which check failed.
        what: &'static str,
    },
}
