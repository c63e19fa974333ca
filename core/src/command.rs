//! Commands: what goes into the Raft log, and its versioned binary encoding.
//!
//! Commands are facts in past tense (`OrderCreated`, `CertIssued`) or explicit requests
//! (`BeginOrder`, `PutCert`). Each carries the leader's timestamp `at`; order steps carry the
//! leader's `term` for fencing (DESIGN §5).
//!
//! # Wire format
//! One version byte ([`WIRE_VERSION`]) followed by the command in postcard 1.x encoding. postcard
//! was chosen because its wire format is specified and frozen for 1.x, it is compact (varints,
//! no field names), and it is maintained; bincode is unmaintained (RUSTSEC-2025-0141). Decoding
//! refuses inputs over [`COMMAND_LEN_MAX`]; postcard never preallocates from a length field
//! beyond the remaining input, so hostile lengths cannot force large allocations.

use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use crate::error::{DecodeError, Rejection};
use crate::model::{
    Account, CertId, CertSpec, Challenge, Cycle, IssuerId, Policy, RenewalReason, SealedBlob, Term,
};
use crate::name::Identifier;
use crate::time::UnixMillis;

/// The encoding version this build writes and reads (2: accounts carry a key rollover in
/// progress, and the rollover's three ops).
pub const WIRE_VERSION: u8 = 2;
/// The largest encoded command accepted (a certificate chain fits many times over).
pub const COMMAND_LEN_MAX: usize = 4 * 1024 * 1024;
/// The most entries in one `CertsDeferred` batch.
pub const DEFER_BATCH_MAX: usize = 10_000;

/// A replicated command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// The leader's clock when it proposed the command; `apply` never lets state time go back.
    pub at: UnixMillis,
    /// What to do.
    pub op: Op,
}

/// The operations. Variants are grouped: admin requests, then the order cycle in step order,
/// then maintenance facts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Add a certificate, or change an existing one's spec (which renews it).
    PutCert {
        /// The validated spec.
        spec: CertSpec,
        /// Seed for this certificate's jitter draws.
        seed: u64,
    },
    /// Stop managing a certificate; an open cycle is closed.
    RemoveCert {
        /// The certificate.
        cert: CertId,
    },
    /// Set an issuer's ACME account.
    SetAccount {
        /// The issuer.
        issuer: IssuerId,
        /// The account.
        account: Account,
    },
    /// Replace the lifecycle policy.
    SetPolicy {
        /// The new policy.
        policy: Policy,
    },
    /// DESIGN §5 step 1: open a cycle, owned by `term`, reserving rate budgets.
    BeginOrder {
        /// The certificate.
        cert: CertId,
        /// The new cycle number.
        cycle: Cycle,
        /// The leader's term.
        term: Term,
        /// Why.
        reason: RenewalReason,
    },
    /// A new leader takes over an open cycle: later steps must carry its term.
    ResumeOrder {
        /// The certificate.
        cert: CertId,
        /// The open cycle.
        cycle: Cycle,
        /// The new leader's term.
        term: Term,
    },
    /// DESIGN §5 step 2: the CA created the order; its URL is committed before any challenge.
    OrderCreated {
        /// Fencing.
        step: StepRef,
        /// The order URL.
        order_url: String,
        /// The authorization URLs.
        authorizations: Vec<String>,
    },
    /// DESIGN §5 step 3: challenges every member must answer.
    ChallengesPublished {
        /// Fencing.
        step: StepRef,
        /// One per authorization that needs validation (empty if all were already valid).
        challenges: Vec<Challenge>,
    },
    /// DESIGN §5 step 4: the certificate key, sealed, committed before finalize.
    KeyPrepared {
        /// Fencing.
        step: StepRef,
        /// The sealed private key.
        key: SealedBlob,
    },
    /// DESIGN §5 step 5: the CA accepted the CSR.
    Finalized {
        /// Fencing.
        step: StepRef,
    },
    /// The certificate was downloaded: the cycle closes and the certificate is served.
    CertIssued {
        /// Fencing.
        step: StepRef,
        /// Leaf certificate, DER.
        #[serde(with = "serde_bytes")]
        leaf_der: Vec<u8>,
        /// Intermediates, DER, leaf-most first.
        chain_der: Vec<Vec<u8>>,
        /// Validity start (from the leaf).
        not_before: UnixMillis,
        /// Validity end (from the leaf).
        not_after: UnixMillis,
        /// The ARI certificate identifier, if the CA offers ARI.
        ari_id: Option<String>,
    },
    /// The cycle failed: it closes and the certificate backs off.
    OrderFailed {
        /// Fencing.
        step: StepRef,
        /// What happened.
        failure: Failure,
        /// Seed for the backoff jitter.
        seed: u64,
    },
    /// Result of an ARI `renewalInfo` poll (RFC 9773) for the current certificate.
    RenewalInfoPolled {
        /// The certificate.
        cert: CertId,
        /// The cycle of the certificate the info is about.
        cycle: Cycle,
        /// The suggested window, or `None` if the poll failed.
        window: Option<AriWindow>,
        /// The CA's `Retry-After`, as an instant.
        retry_at: Option<UnixMillis>,
        /// Seed for the point chosen inside the window.
        seed: u64,
    },
    /// The planner found these certificates blocked by a budget until the given instants.
    CertsDeferred {
        /// Certificate and the instant its budget frees up.
        items: Vec<(CertId, UnixMillis)>,
    },
    /// The CA asked for a wait inside an open order (`Retry-After` on a poll or a refused
    /// call) longer than a driver keeps in memory: committed so that the next leader, resuming
    /// the cycle, waits too (SIMULATION I9).
    OrderDeferred {
        /// Fencing.
        step: StepRef,
        /// No call for this order before this instant.
        until: UnixMillis,
    },
    /// Begin rolling an issuer's account key: the credentials with the new key, sealed,
    /// committed before the CA is asked (DESIGN §4). Repeating the same request is accepted.
    RollAccountKey {
        /// The issuer.
        issuer: IssuerId,
        /// The account's credentials with the new key.
        credentials: SealedBlob,
    },
    /// The CA binds the account to the new key: it becomes the account's key. Published
    /// challenges of the issuer's open cycles are withdrawn and published again, since their
    /// key authorizations name the old key.
    AccountKeyRolled {
        /// The issuer.
        issuer: IssuerId,
        /// The credentials of the rollover (fencing: only the one in progress).
        credentials: SealedBlob,
    },
    /// The CA refused the rollover for good: the account keeps its key.
    AccountKeyRolloverRefused {
        /// The issuer.
        issuer: IssuerId,
        /// The credentials of the rollover (fencing: only the one in progress).
        credentials: SealedBlob,
        /// The CA's reason (at most [`Failure::DETAIL_LEN_MAX`] bytes).
        detail: String,
    },
}

/// Names the cycle an order step belongs to, and the term that proposes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRef {
    /// The certificate.
    pub cert: CertId,
    /// The cycle.
    pub cycle: Cycle,
    /// The proposing leader's term.
    pub term: Term,
}

/// An ARI suggested renewal window (RFC 9773 §4.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AriWindow {
    /// Start of the window.
    pub start: UnixMillis,
    /// End of the window.
    pub end: UnixMillis,
}

/// How a CA outcome is treated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum FailureClass {
    /// Will not succeed by retrying this order (bad CSR, unauthorized, invalid order).
    Permanent,
    /// The CA said `rateLimited` (HTTP 429); wait until its `Retry-After`.
    RateLimited,
    /// Transient: network, 5xx, `badNonce` beyond the client's retries.
    Retryable,
}

/// Why a cycle failed, as committed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// The class.
    pub class: FailureClass,
    /// The ACME problem type (`urn:ietf:params:acme:error:…`), if the CA sent one.
    pub problem: Option<String>,
    /// Human-readable detail (at most [`Failure::DETAIL_LEN_MAX`] bytes).
    pub detail: String,
    /// The CA's `Retry-After`, as an instant.
    pub retry_at: Option<UnixMillis>,
    /// Identifiers whose authorization failed (they count against the failed-validation budget).
    pub failed_identifiers: Vec<Identifier>,
    /// Whether the CA's limit applies to the whole account (then every order of the issuer waits).
    pub account_wide: bool,
}

impl Failure {
    /// Longest detail kept in the log.
    pub const DETAIL_LEN_MAX: usize = 1024;

    /// `detail` cut to [`Failure::DETAIL_LEN_MAX`] bytes on a character boundary.
    #[must_use]
    pub fn clip_detail(detail: &str) -> String {
        clip(detail, Self::DETAIL_LEN_MAX)
    }
}

/// `text` cut to at most `len_max` bytes on a character boundary.
pub(crate) fn clip(text: &str, len_max: usize) -> String {
    let mut end = text.len().min(len_max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].into()
}

/// The answer `apply` gives for every entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Applied.
    Accepted,
    /// Refused; the state is unchanged.
    Rejected(Rejection),
}

impl Response {
    /// Whether the command was applied.
    #[must_use]
    pub fn is_accepted(&self) -> bool {
        matches!(self, Self::Accepted)
    }
}

impl Op {
    /// The certificate an op is about, if any (for routing and logging).
    #[must_use]
    pub fn cert(&self) -> Option<&CertId> {
        match self {
            Self::PutCert { .. }
            | Self::SetAccount { .. }
            | Self::SetPolicy { .. }
            | Self::CertsDeferred { .. }
            | Self::RollAccountKey { .. }
            | Self::AccountKeyRolled { .. }
            | Self::AccountKeyRolloverRefused { .. } => None,
            Self::RemoveCert { cert }
            | Self::BeginOrder { cert, .. }
            | Self::ResumeOrder { cert, .. }
            | Self::RenewalInfoPolled { cert, .. } => Some(cert),
            Self::OrderCreated { step, .. }
            | Self::ChallengesPublished { step, .. }
            | Self::KeyPrepared { step, .. }
            | Self::Finalized { step }
            | Self::CertIssued { step, .. }
            | Self::OrderFailed { step, .. }
            | Self::OrderDeferred { step, .. } => Some(&step.cert),
        }
    }

    /// The step reference of a cycle step (`OrderCreated` … `OrderDeferred`).
    #[must_use]
    pub fn step(&self) -> Option<&StepRef> {
        match self {
            Self::OrderCreated { step, .. }
            | Self::ChallengesPublished { step, .. }
            | Self::KeyPrepared { step, .. }
            | Self::Finalized { step }
            | Self::CertIssued { step, .. }
            | Self::OrderFailed { step, .. }
            | Self::OrderDeferred { step, .. } => Some(step),
            _ => None,
        }
    }

    /// The step reference of a cycle step, to change (the simulation's mutations forge terms).
    pub fn step_mut(&mut self) -> Option<&mut StepRef> {
        match self {
            Self::OrderCreated { step, .. }
            | Self::ChallengesPublished { step, .. }
            | Self::KeyPrepared { step, .. }
            | Self::Finalized { step }
            | Self::CertIssued { step, .. }
            | Self::OrderFailed { step, .. }
            | Self::OrderDeferred { step, .. } => Some(step),
            _ => None,
        }
    }
}

/// Encodes a command: version byte, then postcard.
#[must_use]
pub fn encode(command: &Command) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    encode_into(command, &mut out);
    out
}

/// Appends the encoding of a command to `out`.
pub fn encode_into(command: &Command, out: &mut Vec<u8>) {
    encode_value(command, out);
}

/// Decodes a command, refusing unknown versions, oversize input, malformed and trailing bytes.
pub fn decode(bytes: &[u8]) -> Result<Command, DecodeError> {
    decode_value(bytes, COMMAND_LEN_MAX)
}

/// Versioned postcard encoding of any record (commands, snapshot records).
pub(crate) fn encode_value<T: Serialize>(value: &T, out: &mut Vec<u8>) {
    out.push(WIRE_VERSION);
    let taken = core::mem::take(out);
    // Serializing our own in-memory types into a Vec cannot fail: postcard's only errors are
    // for unsupported serde shapes (none used here) or a full fixed buffer (a Vec grows).
    *out = postcard::to_extend(value, taken).expect("postcard encoding into a Vec is infallible");
}

/// Versioned postcard decoding with a length ceiling.
pub(crate) fn decode_value<T: for<'de> Deserialize<'de>>(
    bytes: &[u8],
    len_max: usize,
) -> Result<T, DecodeError> {
    let (&version, payload) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if version != WIRE_VERSION {
        return Err(DecodeError::UnknownVersion {
            version,
            supported: WIRE_VERSION,
        });
    }
    if bytes.len() > len_max {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            max: len_max,
        });
    }
    let (value, rest) = postcard::take_from_bytes::<T>(payload)
        .map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(DecodeError::Trailing(rest.len()));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Command {
        Command {
            at: UnixMillis(1_700_000_000_000),
            op: Op::BeginOrder {
                cert: CertId::parse("www.example.com").unwrap(),
                cycle: Cycle(3),
                term: Term(7),
                reason: RenewalReason::Scheduled,
            },
        }
    }

    #[test]
    fn commands_round_trip_through_the_wire_format() {
        let bytes = encode(&sample());
        assert_eq!(bytes[0], WIRE_VERSION);
        assert_eq!(decode(&bytes), Ok(sample()));
    }

    /// version 2 | at (varint) | Op variant 4 | "www.example.com" | cycle 3 | term 7 | Scheduled.
    const PINNED: &[u8] = &[
        2, 128, 208, 149, 255, 188, 49, 4, 15, 119, 119, 119, 46, 101, 120, 97, 109, 112, 108, 101,
        46, 99, 111, 109, 3, 7, 4,
    ];

    #[test]
    fn the_wire_format_is_pinned() {
        // A change here breaks every replica reading an old log: bump WIRE_VERSION instead.
        let bytes = encode(&sample());
        assert_eq!(bytes, PINNED);
    }

    #[test]
    fn empty_input_is_an_error() {
        assert_eq!(decode(&[]), Err(DecodeError::Empty));
    }

    #[test]
    fn an_unknown_version_is_named() {
        let mut bytes = encode(&sample());
        bytes[0] = 9;
        assert_eq!(
            decode(&bytes),
            Err(DecodeError::UnknownVersion {
                version: 9,
                supported: WIRE_VERSION
            })
        );
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut bytes = encode(&sample());
        bytes.push(0);
        assert_eq!(decode(&bytes), Err(DecodeError::Trailing(1)));
    }

    #[test]
    fn truncated_and_garbage_input_is_malformed_not_a_panic() {
        let bytes = encode(&sample());
        for len in 1..bytes.len() {
            assert!(
                matches!(decode(&bytes[..len]), Err(DecodeError::Malformed(_))),
                "prefix {len}"
            );
        }
        assert!(matches!(
            decode(&[WIRE_VERSION, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn a_huge_length_field_does_not_allocate_its_claim() {
        // Op::CertsDeferred (variant 13) with a claimed item count of 2^63.
        let mut bytes = vec![WIRE_VERSION, 0x80, 0x01, 13];
        bytes.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
        assert!(matches!(decode(&bytes), Err(DecodeError::Malformed(_))));
    }

    #[test]
    fn oversize_input_is_refused_before_parsing() {
        let mut bytes = vec![WIRE_VERSION];
        bytes.resize(COMMAND_LEN_MAX + 1, 0);
        assert!(matches!(decode(&bytes), Err(DecodeError::TooLarge { .. })));
    }
}
