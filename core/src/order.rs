//! The order step machine (DESIGN §5).
//!
//! Two halves:
//! * [`OrderStep`] is the *committed* progress of a cycle, part of the replicated state. It
//!   moves only in [`OrderStep::advance`], called by `apply`.
//! * [`OrderDriver`] is the *leader's* sans-IO driver for one open cycle: it reads the committed
//!   step from the state, remembers what the CA last said, and answers "what next?" with an
//!   [`Action`]. The adapter performs the action and feeds the result back as an [`Outcome`].
//!   Each step is committed before the next external call, so a new leader resumes from the
//!   committed step with the same order URL and key ([`OrderDriver::new`] after `ResumeOrder`).

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use serde::{Deserialize, Serialize};

use crate::command::{Command, Failure, FailureClass, Op, StepRef};
use crate::error::Rejection;
use crate::model::{CertId, Challenge, ChallengeKind, Cycle, KeyType, SealedBlob, Term};
use crate::name::Identifier;
use crate::state::{OpenCycle, State};
use crate::time::{MINUTE_MS, SECOND_MS, UnixMillis};

/// Transient CA errors in a row before an order exists after which the cycle fails and backs
/// off (closing it then costs no order).
pub const CA_RETRIES_MAX: u32 = 3;
/// Transient CA errors in a row once an order exists after which the cycle gives the order up
/// (a 5xx, a reset, a refused nonce: with the growing delay capped at [`POLL_DELAY_MS_MAX`],
/// about a quarter of an hour). Giving up costs a second order for the cycle, which DESIGN §5
/// allows only for a lost leader: three in a row did it during a CA's bad minute (the wire
/// run's seed 19: two 503s on the order and one on `new-nonce` between them).
pub const CA_RETRIES_IN_ORDER_MAX: u32 = 20;

/// The longest `Retry-After` before an order exists that keeps the cycle open (the wait is
/// committed as `OrderDeferred`); a longer one closes the cycle with a committed backoff,
/// which releases its budget reservations.
pub const RETRY_AFTER_IN_MEMORY_MS_MAX: u64 = 10 * SECOND_MS;
/// Order polls (with growing delay, capped at [`POLL_DELAY_MS_MAX`]) before giving up on an order
/// stuck in `pending` or `processing` (about an hour).
pub const POLLS_MAX: u32 = 70;
/// The first delay between order polls.
pub const POLL_DELAY_MS_MIN: u64 = SECOND_MS;
/// The longest delay between order polls.
pub const POLL_DELAY_MS_MAX: u64 = MINUTE_MS;

/// The wait before the `n`-th poll or retry in a row: doubling from [`POLL_DELAY_MS_MIN`],
/// at most [`POLL_DELAY_MS_MAX`].
#[must_use]
pub fn growing_delay_ms(n: u32) -> u64 {
    // 2^6 s already passes the cap.
    POLL_DELAY_MS_MIN
        .saturating_mul(1 << n.min(6))
        .min(POLL_DELAY_MS_MAX)
}

/// The committed step of an open cycle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrderStep {
    /// `BeginOrder` committed; no order at the CA yet (as far as the log knows).
    Begun,
    /// The order URL is committed.
    OrderCreated {
        /// The order.
        order: OrderRef,
    },
    /// Challenges are published to every member.
    ChallengesPublished {
        /// The order.
        order: OrderRef,
        /// What every node answers.
        challenges: Vec<Challenge>,
    },
    /// The sealed key is committed; finalize may be sent.
    KeyPrepared {
        /// The order.
        order: OrderRef,
        /// Still answered until the cycle closes (CAs may validate late).
        challenges: Vec<Challenge>,
        /// The certificate key.
        key: SealedBlob,
    },
    /// The CA accepted the CSR; the certificate is being issued.
    Finalized {
        /// The order.
        order: OrderRef,
        /// Still answered until the cycle closes.
        challenges: Vec<Challenge>,
        /// The certificate key.
        key: SealedBlob,
    },
}

/// An order at the CA.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderRef {
    /// The order URL.
    pub url: String,
    /// Its authorization URLs.
    pub authorizations: Vec<String>,
}

/// Step names, for rejections and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StepName {
    /// `BeginOrder`.
    Begun,
    /// `OrderCreated`.
    OrderCreated,
    /// `ChallengesPublished`.
    ChallengesPublished,
    /// `KeyPrepared`.
    KeyPrepared,
    /// `Finalized`.
    Finalized,
    /// `CertIssued`.
    CertIssued,
    /// `OrderFailed`.
    OrderFailed,
    /// Not an order step.
    Other,
}

/// Where a step leads.
#[derive(Debug)]
pub(crate) enum Transition {
    /// The cycle stays open at this step.
    Open(OrderStep),
    /// The certificate was issued; carries the `Finalized` step it closed from.
    Issued(OrderStep),
    /// The cycle failed; carries the step it failed at.
    Failed(OrderStep),
}

impl OrderStep {
    /// The step's name.
    #[must_use]
    pub fn name(&self) -> StepName {
        match self {
            Self::Begun => StepName::Begun,
            Self::OrderCreated { .. } => StepName::OrderCreated,
            Self::ChallengesPublished { .. } => StepName::ChallengesPublished,
            Self::KeyPrepared { .. } => StepName::KeyPrepared,
            Self::Finalized { .. } => StepName::Finalized,
        }
    }

    /// The order, once created.
    #[must_use]
    pub fn order(&self) -> Option<&OrderRef> {
        match self {
            Self::Begun => None,
            Self::OrderCreated { order }
            | Self::ChallengesPublished { order, .. }
            | Self::KeyPrepared { order, .. }
            | Self::Finalized { order, .. } => Some(order),
        }
    }

    /// The challenges every member answers at this step.
    #[must_use]
    pub fn challenges(&self) -> &[Challenge] {
        match self {
            Self::Begun | Self::OrderCreated { .. } => &[],
            Self::ChallengesPublished { challenges, .. }
            | Self::KeyPrepared { challenges, .. }
            | Self::Finalized { challenges, .. } => challenges,
        }
    }

    /// The committed key, from `KeyPrepared` on.
    #[must_use]
    pub fn key(&self) -> Option<&SealedBlob> {
        match self {
            Self::KeyPrepared { key, .. } | Self::Finalized { key, .. } => Some(key),
            _ => None,
        }
    }

    /// The only place a cycle's step moves. On refusal returns the step unchanged and the name
    /// of the step that was proposed.
    pub(crate) fn advance(self, op: &Op) -> Result<Transition, (Self, StepName)> {
        Ok(match (self, op) {
            (
                Self::Begun,
                Op::OrderCreated {
                    order_url,
                    authorizations,
                    ..
                },
            ) => Transition::Open(Self::OrderCreated {
                order: OrderRef {
                    url: order_url.clone(),
                    authorizations: authorizations.clone(),
                },
            }),
            (Self::OrderCreated { order }, Op::ChallengesPublished { challenges, .. }) => {
                Transition::Open(Self::ChallengesPublished {
                    order,
                    challenges: challenges.clone(),
                })
            }
            (Self::ChallengesPublished { order, challenges }, Op::KeyPrepared { key, .. }) => {
                Transition::Open(Self::KeyPrepared {
                    order,
                    challenges,
                    key: key.clone(),
                })
            }
            (
                Self::KeyPrepared {
                    order,
                    challenges,
                    key,
                },
                Op::Finalized { .. },
            ) => Transition::Open(Self::Finalized {
                order,
                challenges,
                key,
            }),
            (last @ Self::Finalized { .. }, Op::CertIssued { .. }) => Transition::Issued(last),
            (last, Op::OrderFailed { .. }) => Transition::Failed(last),
            (committed, other) => return Err((committed, StepName::of(other))),
        })
    }
}

impl StepName {
    fn of(op: &Op) -> Self {
        match op {
            Op::BeginOrder { .. } => Self::Begun,
            Op::OrderCreated { .. } => Self::OrderCreated,
            Op::ChallengesPublished { .. } => Self::ChallengesPublished,
            Op::KeyPrepared { .. } => Self::KeyPrepared,
            Op::Finalized { .. } => Self::Finalized,
            Op::CertIssued { .. } => Self::CertIssued,
            Op::OrderFailed { .. } => Self::OrderFailed,
            _ => Self::Other,
        }
    }
}

impl fmt::Display for StepName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

// ---------------------------------------------------------------------------------------------
// The leader's driver.

/// An order's status at the CA (RFC 8555 §7.1.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OrderStatus {
    /// Failed; will not issue.
    Invalid,
    /// Authorizations not yet valid.
    Pending,
    /// Finalize accepted, certificate being issued.
    Processing,
    /// Authorizations valid; ready for finalize.
    Ready,
    /// Issued; the certificate URL is set.
    Valid,
}

/// An authorization's status at the CA (RFC 8555 §7.1.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthzStatus {
    /// Deactivated by the client.
    Deactivated,
    /// Expired.
    Expired,
    /// Validation failed.
    Invalid,
    /// Awaiting validation.
    Pending,
    /// Revoked.
    Revoked,
    /// Valid (possibly reused from an earlier order).
    Valid,
}

/// What the CA said about the order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderView {
    /// The status.
    pub status: OrderStatus,
    /// The certificate URL, once `valid`.
    pub certificate_url: Option<String>,
    /// The CA's `Retry-After`, as an instant.
    pub retry_at: Option<UnixMillis>,
    /// The order's `error` problem document detail, if `invalid`.
    pub error: Option<String>,
}

/// One authorization with the challenges the CA offers for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthzView {
    /// The identifier.
    pub identifier: Identifier,
    /// Its status.
    pub status: AuthzStatus,
    /// Offered challenges.
    pub challenges: Vec<ChallengeOffer>,
}

/// A challenge the CA offers, with the key authorization the adapter computed for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChallengeOffer {
    /// Kind.
    pub kind: ChallengeKind,
    /// URL.
    pub url: String,
    /// Token.
    pub token: String,
    /// `token.thumbprint`.
    pub key_authorization: String,
}

/// An error from the CA or on the way to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaError {
    /// HTTP status, if a response came back.
    pub status: Option<u16>,
    /// The ACME problem type.
    pub problem: Option<String>,
    /// Detail.
    pub detail: String,
    /// `Retry-After`, as an instant.
    pub retry_at: Option<UnixMillis>,
    /// Whether a rate limit applies to the whole account.
    pub account_wide: bool,
}

/// The next thing the adapter should do for a cycle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Propose this command through Raft; report [`Outcome::Committed`] or [`Outcome::Rejected`].
    Commit(Command),
    /// `newOrder` (RFC 8555 §7.4); report [`Outcome::OrderCreated`].
    CreateOrder {
        /// The certificate the order is for (for the adapter's logs and the simulated CA's
        /// books: orders are counted per cycle, SIMULATION I1).
        cert: CertId,
        /// The cycle the order is for.
        cycle: Cycle,
        /// Identifiers.
        identifiers: Vec<Identifier>,
        /// ACME profile.
        profile: Option<String>,
        /// ARI `replaces` (RFC 9773 §5).
        replaces: Option<String>,
    },
    /// Fetch the order by URL; report [`Outcome::Order`].
    FetchOrder {
        /// The order URL.
        order_url: String,
    },
    /// Fetch the authorizations; report [`Outcome::Authorizations`].
    FetchAuthorizations {
        /// The order they belong to (an ACME client reaches an authorization through its
        /// order: instant-acme has no fetch by authorization URL).
        order_url: String,
        /// Authorization URLs.
        urls: Vec<String>,
    },
    /// Wait until every member has applied `index` (DESIGN §5 step 3), with the configured
    /// timeout; report [`Outcome::Applied`].
    WaitApplied {
        /// The log index of `ChallengesPublished` (or later).
        index: u64,
    },
    /// Tell the CA the challenges are ready; report [`Outcome::ChallengesReady`].
    MarkReady {
        /// The order the challenges belong to (reached through it, as for
        /// [`Action::FetchAuthorizations`]).
        order_url: String,
        /// Challenge URLs.
        urls: Vec<String>,
        /// Members still behind when the leader went ahead after the apply wait timed out
        /// (DESIGN §5 step 3); 0 normally. Logged by the adapter; the simulated CA uses it to
        /// tell an excused validation miss from a bug (SIMULATION I7).
        members_behind: u32,
    },
    /// Generate and seal a key; report [`Outcome::KeyPrepared`].
    PrepareKey {
        /// The algorithm.
        key_type: KeyType,
    },
    /// Finalize with a CSR for the committed key; report [`Outcome::Order`].
    Finalize {
        /// The order URL.
        order_url: String,
        /// The committed sealed key.
        key: SealedBlob,
        /// The CSR's identifiers.
        identifiers: Vec<Identifier>,
    },
    /// Download the certificate; report [`Outcome::Certificate`].
    Download {
        /// The order the certificate was issued for (instant-acme downloads through it).
        order_url: String,
        /// The certificate URL.
        certificate_url: String,
    },
    /// Nothing to do before this instant.
    Sleep {
        /// When to poll again.
        until: UnixMillis,
    },
    /// An action is outstanding; poll again after reporting its outcome.
    Wait,
    /// The cycle is closed, or no longer this leader's: drop the driver.
    Done,
}

/// What happened when the adapter performed an [`Action`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The commit landed at this log index.
    Committed {
        /// Log index.
        index: u64,
    },
    /// `apply` refused the commit.
    Rejected(Rejection),
    /// `newOrder` succeeded.
    OrderCreated {
        /// Order URL.
        order_url: String,
        /// Authorization URLs.
        authorizations: Vec<String>,
    },
    /// The order's state (after fetch or finalize).
    Order(OrderView),
    /// The authorizations.
    Authorizations(Vec<AuthzView>),
    /// Every member applied the index, or the wait timed out with `lagging` members behind.
    Applied {
        /// Members still behind when the leader went ahead (counted; 0 normally).
        lagging: u32,
    },
    /// The CA accepted the ready signal.
    ChallengesReady,
    /// A key was generated and sealed.
    KeyPrepared {
        /// The sealed key.
        key: SealedBlob,
    },
    /// The certificate was downloaded and parsed.
    Certificate {
        /// Leaf DER.
        leaf_der: Vec<u8>,
        /// Intermediates DER.
        chain_der: Vec<Vec<u8>>,
        /// Validity start.
        not_before: UnixMillis,
        /// Validity end.
        not_after: UnixMillis,
        /// ARI id.
        ari_id: Option<String>,
    },
    /// The CA (or the way to it) failed.
    Failed(CaError),
}

/// The problem type of a failure on our side that no retry can fix, such as a key type this
/// build cannot generate: not an RFC 8555 type, so no CA sends it.
pub const LOCAL_PERMANENT_PROBLEM: &str = "urn:certfleet:error:localPermanent";

/// Classifies a CA error (RFC 8555 §6.7 problem types, then HTTP status).
#[must_use]
pub fn classify(error: &CaError) -> FailureClass {
    if error.problem.as_deref() == Some(LOCAL_PERMANENT_PROBLEM) {
        return FailureClass::Permanent;
    }
    let kind = error
        .problem
        .as_deref()
        .and_then(|p| p.strip_prefix("urn:ietf:params:acme:error:"));
    match kind {
        Some("rateLimited") => FailureClass::RateLimited,
        Some("badNonce" | "serverInternal") => FailureClass::Retryable,
        Some(
            "accountDoesNotExist"
            | "alreadyReplaced"
            | "alreadyRevoked"
            | "badCSR"
            | "badPublicKey"
            | "badRevocationReason"
            | "badSignatureAlgorithm"
            | "caa"
            | "compound"
            | "connection"
            | "dns"
            | "externalAccountRequired"
            | "incorrectResponse"
            | "invalidContact"
            | "invalidProfile"
            | "malformed"
            | "orderNotReady"
            | "rejectedIdentifier"
            | "tls"
            | "unauthorized"
            | "unsupportedContact"
            | "unsupportedIdentifier"
            | "userActionRequired",
        ) => FailureClass::Permanent,
        _ => match error.status {
            Some(429) => FailureClass::RateLimited,
            Some(status) if (400..500).contains(&status) && status != 408 => {
                FailureClass::Permanent
            }
            _ => FailureClass::Retryable, // 5xx, 408, transport errors
        },
    }
}

/// Drives one open cycle on the leader. Sans-IO: call [`OrderDriver::poll_action`], perform
/// the action, report with [`OrderDriver::handle_outcome`], repeat.
#[derive(Clone, Debug)]
pub struct OrderDriver {
    cert: CertId,
    cycle: Cycle,
    term: Term,
    seed: u64,
    applied_floor: u64,
    pending: Option<Pending>,
    not_before: UnixMillis,
    ca_retries: u32,
    polls: u32,
    created: Option<(String, Vec<String>)>,
    order: Option<OrderView>,
    authz: Option<Vec<AuthzView>>,
    publish_index: Option<u64>,
    acked: bool,
    lagging: u32,
    ready_sent: bool,
    key: Option<SealedBlob>,
    finalize_sent: bool,
    certificate: Option<Outcome>,
    failure: Option<Failure>,
    /// A `Retry-After` received inside the order, still to be committed (every one is).
    defer: Option<UnixMillis>,
    step: StepName,
    done: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pending {
    Commit,
    CommitPublished,
    Ca,
    Finalize,
}

impl OrderDriver {
    /// A driver for an open cycle owned by `term`. `applied_index` is the leader's applied
    /// index when it takes over: after a resume the `ChallengesPublished` entry is at or below
    /// it, so waiting for every member to apply it is enough. `seed` feeds backoff jitter.
    #[must_use]
    pub fn new(cert: CertId, open: &OpenCycle, applied_index: u64, seed: u64) -> Self {
        Self {
            cert,
            cycle: open.cycle,
            term: open.term,
            seed,
            applied_floor: applied_index,
            pending: None,
            // The CA's Retry-After received by an earlier owner of the cycle.
            not_before: open.not_before,
            ca_retries: 0,
            polls: 0,
            created: None,
            order: None,
            authz: None,
            publish_index: None,
            acked: false,
            lagging: 0,
            ready_sent: false,
            key: None,
            finalize_sent: false,
            certificate: None,
            failure: None,
            defer: None,
            step: open.step.name(),
            done: false,
        }
    }

    /// The certificate this driver works on.
    #[must_use]
    pub fn cert(&self) -> &CertId {
        &self.cert
    }

    /// Members that were still behind when the leader declared challenges ready.
    #[must_use]
    pub fn lagging_members(&self) -> u32 {
        self.lagging
    }

    /// What to do next, given the committed state.
    pub fn poll_action(&mut self, state: &State, now: UnixMillis) -> Action {
        if self.done {
            return Action::Done;
        }
        // Ownership first: a deposed leader stops even with an action outstanding, whose
        // result then goes nowhere.
        let Some(record) = state.cert(&self.cert) else {
            return self.finish();
        };
        let Some(open) = record
            .open
            .as_ref()
            .filter(|o| o.cycle == self.cycle && o.term == self.term)
        else {
            return self.finish();
        };
        if self.pending.is_some() {
            return Action::Wait;
        }
        self.step = open.step.name();
        if let Some(failure) = self.failure.take() {
            return self.fail(state, now, failure);
        }
        if let Some(until) = self.defer.take().filter(|until| *until > open.not_before) {
            let op = Op::OrderDeferred {
                step: self.step_ref(),
                until,
            };
            return self.commit(now, op, Pending::Commit);
        }
        if now < self.not_before {
            return Action::Sleep {
                until: self.not_before,
            };
        }
        let spec = &record.spec;
        match &open.step {
            OrderStep::Begun => match self.created.take() {
                Some((order_url, authorizations)) => self.commit(
                    now,
                    Op::OrderCreated {
                        step: self.step_ref(),
                        order_url,
                        authorizations,
                    },
                    Pending::Commit,
                ),
                None => {
                    // An account-wide 429 another cycle received holds this one too, even if
                    // it began before (SIMULATION I9). Found by the simulator (seed 36): a
                    // cycle retrying a 503 called `newOrder` minutes before the account's
                    // committed Retry-After.
                    if let Some(until) = state
                        .account(&spec.issuer)
                        .and_then(|a| a.throttled_until)
                        .filter(|until| *until > now)
                    {
                        return Action::Sleep { until };
                    }
                    let replaces = record.current.as_ref().and_then(|c| c.ari_id.clone());
                    let profile = spec.profile.acme_name().map(String::from);
                    self.call(Action::CreateOrder {
                        cert: self.cert.clone(),
                        cycle: self.cycle,
                        identifiers: spec.identifiers.clone(),
                        profile,
                        replaces,
                    })
                }
            },
            OrderStep::OrderCreated { order } => match self.authz.take() {
                None => self.call(Action::FetchAuthorizations {
                    order_url: order.url.clone(),
                    urls: order.authorizations.clone(),
                }),
                Some(authz) => match choose_challenges(&authz, spec.challenge) {
                    Ok(challenges) => self.commit(
                        now,
                        Op::ChallengesPublished {
                            step: self.step_ref(),
                            challenges,
                        },
                        Pending::CommitPublished,
                    ),
                    Err(failure) => self.fail(state, now, failure),
                },
            },
            OrderStep::ChallengesPublished { order, challenges } => {
                if !challenges.is_empty() && !self.acked {
                    return self.call(Action::WaitApplied {
                        index: self.publish_index.unwrap_or(self.applied_floor),
                    });
                }
                if !challenges.is_empty() && !self.ready_sent {
                    return self.call(Action::MarkReady {
                        order_url: order.url.clone(),
                        urls: challenges.iter().map(|c| c.url.clone()).collect(),
                        members_behind: self.lagging,
                    });
                }
                match self.order.as_ref().map(|o| o.status) {
                    None | Some(OrderStatus::Pending) => self.fetch_order(order),
                    Some(OrderStatus::Ready) => match self.key.take() {
                        Some(key) => self.commit(
                            now,
                            Op::KeyPrepared {
                                step: self.step_ref(),
                                key,
                            },
                            Pending::Commit,
                        ),
                        None => self.call(Action::PrepareKey {
                            key_type: spec.key_type,
                        }),
                    },
                    // Finalized by a deposed leader whose key was never committed: the
                    // certificate would be unusable, so this order is abandoned.
                    Some(OrderStatus::Processing | OrderStatus::Valid) => self.fail(
                        state,
                        now,
                        permanent("order was finalized with a key that was never committed"),
                    ),
                    Some(OrderStatus::Invalid) => self.order_invalid(state, now, challenges),
                }
            }
            OrderStep::KeyPrepared {
                order,
                key,
                challenges,
            } => match self.order.as_ref().map(|o| o.status) {
                None | Some(OrderStatus::Pending) => self.fetch_order(order),
                Some(OrderStatus::Ready) if !self.finalize_sent => {
                    self.pending = Some(Pending::Finalize);
                    Action::Finalize {
                        order_url: order.url.clone(),
                        key: key.clone(),
                        identifiers: spec.identifiers.clone(),
                    }
                }
                Some(OrderStatus::Ready) => self.fetch_order(order),
                Some(OrderStatus::Processing | OrderStatus::Valid) => self.commit(
                    now,
                    Op::Finalized {
                        step: self.step_ref(),
                    },
                    Pending::Commit,
                ),
                Some(OrderStatus::Invalid) => self.order_invalid(state, now, challenges),
            },
            OrderStep::Finalized {
                order,
                challenges,
                key,
            } => match self
                .order
                .as_ref()
                .map(|o| (o.status, o.certificate_url.clone()))
            {
                Some((OrderStatus::Valid, Some(certificate_url))) => {
                    match self.certificate.take() {
                        Some(Outcome::Certificate {
                            leaf_der,
                            chain_der,
                            not_before,
                            not_after,
                            ari_id,
                        }) => {
                            let op = Op::CertIssued {
                                step: self.step_ref(),
                                leaf_der,
                                chain_der,
                                not_before,
                                not_after,
                                ari_id,
                            };
                            self.commit(now, op, Pending::Commit)
                        }
                        _ => self.call(Action::Download {
                            order_url: order.url.clone(),
                            certificate_url,
                        }),
                    }
                }
                Some((OrderStatus::Valid, None)) => self.fail(
                    state,
                    now,
                    permanent("CA reported a valid order without a certificate URL"),
                ),
                // The CA lost or never saw our finalize: send it again with the committed key.
                Some((OrderStatus::Ready, _)) if !self.finalize_sent => {
                    self.pending = Some(Pending::Finalize);
                    Action::Finalize {
                        order_url: order.url.clone(),
                        key: key.clone(),
                        identifiers: spec.identifiers.clone(),
                    }
                }
                Some((OrderStatus::Invalid, _)) => self.order_invalid(state, now, challenges),
                _ => self.fetch_order(order),
            },
        }
    }

    /// Reports the outcome of the last action.
    pub fn handle_outcome(&mut self, now: UnixMillis, outcome: Outcome) {
        let pending = self.pending.take();
        match outcome {
            Outcome::Committed { index } => {
                if pending == Some(Pending::CommitPublished) {
                    self.publish_index = Some(index);
                }
            }
            Outcome::Rejected(_) => self.done = true,
            Outcome::OrderCreated {
                order_url,
                authorizations,
            } => {
                self.ca_retries = 0;
                self.created = Some((order_url, authorizations));
            }
            Outcome::Order(view) => {
                self.ca_retries = 0;
                if pending == Some(Pending::Finalize) {
                    self.finalize_sent = true;
                }
                if matches!(
                    view.status,
                    OrderStatus::Pending | OrderStatus::Processing | OrderStatus::Ready
                ) {
                    // Poll again later with growing delay, never before the CA's Retry-After
                    // (RFC 8555 §7.4, SIMULATION I9).
                    self.polls += 1;
                    let delay_ms = growing_delay_ms(self.polls);
                    self.not_before = now
                        .plus_ms(delay_ms)
                        .max(view.retry_at.unwrap_or(UnixMillis::ZERO));
                    self.record_retry_after(now, view.retry_at);
                    // A ready order is stuck only once finalize went out and it stayed ready.
                    let waiting = view.status != OrderStatus::Ready || self.finalize_sent;
                    if self.polls > POLLS_MAX && waiting {
                        let detail = format!(
                            "order stuck in {:?} after {} polls",
                            view.status, self.polls
                        );
                        self.failure = Some(Failure {
                            class: FailureClass::Retryable,
                            ..permanent(&detail)
                        });
                    }
                }
                // A ready order needs no wait before finalize; once finalize went out, `ready`
                // is polled like `processing` (a CA that kept answering `ready` had the driver
                // poll it back to back, 11,000 times in 40 minutes: sim seed 15 with late
                // validation).
                if view.status == OrderStatus::Ready && !self.finalize_sent {
                    self.not_before = view.retry_at.unwrap_or(UnixMillis::ZERO);
                    self.record_retry_after(now, view.retry_at);
                }
                self.order = Some(view);
            }
            Outcome::Authorizations(authz) => {
                self.ca_retries = 0;
                self.authz = Some(authz);
            }
            Outcome::Applied { lagging } => {
                self.acked = true;
                self.lagging = lagging;
            }
            Outcome::ChallengesReady => {
                self.ready_sent = true;
                self.order = None;
                self.not_before = now.plus_ms(POLL_DELAY_MS_MIN);
            }
            Outcome::KeyPrepared { key } => self.key = Some(key),
            certificate @ Outcome::Certificate { .. } => self.certificate = Some(certificate),
            Outcome::Failed(error) => self.ca_failed(now, pending, &error),
        }
    }

    fn ca_failed(&mut self, now: UnixMillis, pending: Option<Pending>, error: &CaError) {
        let failure = Failure {
            class: classify(error),
            problem: error.problem.clone(),
            detail: Failure::clip_detail(&error.detail),
            retry_at: error.retry_at,
            failed_identifiers: Vec::new(),
            account_wide: error.account_wide,
        };
        if pending == Some(Pending::Finalize) {
            // The CA may or may not have taken the CSR: learn which before anything else.
            self.order = None;
        }
        match failure.class {
            // Before an order exists, a refusal closes the cycle and the committed backoff
            // (with the CA's Retry-After) applies cluster-wide.
            FailureClass::RateLimited | FailureClass::Permanent if self.step == StepName::Begun => {
                self.failure = Some(failure);
            }
            // A long Retry-After before an order exists is committed the same way: held only
            // in this driver's memory, the next leader would call again at once (SIMULATION
            // I9; found by the simulator, seed 20: a CA down for maintenance, a leader change,
            // and `newOrder` 51 s before the CA's Retry-After).
            FailureClass::Retryable
                if self.step == StepName::Begun
                    && error
                        .retry_at
                        .is_some_and(|at| at.ms_since(now) > RETRY_AFTER_IN_MEMORY_MS_MAX) =>
            {
                self.failure = Some(failure);
            }
            FailureClass::RateLimited => {
                // Inside an order: wait for the CA, keep the order.
                self.not_before = error.retry_at.unwrap_or(now.plus_ms(MINUTE_MS)).max(now);
                self.record_retry_after(now, error.retry_at);
            }
            FailureClass::Permanent => self.failure = Some(failure),
            FailureClass::Retryable => {
                self.ca_retries += 1;
                let limit = if self.step == StepName::Begun {
                    CA_RETRIES_MAX
                } else {
                    CA_RETRIES_IN_ORDER_MAX
                };
                if self.ca_retries > limit {
                    self.failure = Some(failure);
                } else {
                    let delay_ms = growing_delay_ms(self.ca_retries);
                    self.not_before = now
                        .plus_ms(delay_ms)
                        .max(error.retry_at.unwrap_or(UnixMillis::ZERO));
                    self.record_retry_after(now, error.retry_at);
                }
            }
        }
    }

    /// A `Retry-After` inside an order is committed (`OrderDeferred`) before the wait, so a
    /// leader that takes the cycle over waits too. Found by the simulator (seed 13892295): a CA
    /// down for maintenance answered 503 with a 60 s `Retry-After`, the leader was cut off, and
    /// the next one polled the order at once. Short ones too (seed 44 of the processing-order
    /// knob: 5 s of `processing`, a leader change, a poll 1 s early): one commit costs less
    /// than the wait it records, and orders rarely send one.
    fn record_retry_after(&mut self, now: UnixMillis, retry_at: Option<UnixMillis>) {
        if let Some(at) = retry_at.filter(|at| *at > now) {
            self.defer = Some(self.defer.map_or(at, |d| d.max(at)));
        }
    }

    fn step_ref(&self) -> StepRef {
        StepRef {
            cert: self.cert.clone(),
            cycle: self.cycle,
            term: self.term,
        }
    }

    fn commit(&mut self, now: UnixMillis, op: Op, pending: Pending) -> Action {
        self.pending = Some(pending);
        Action::Commit(Command { at: now, op })
    }

    fn call(&mut self, action: Action) -> Action {
        self.pending = Some(Pending::Ca);
        action
    }

    fn fetch_order(&mut self, order: &OrderRef) -> Action {
        self.call(Action::FetchOrder {
            order_url: order.url.clone(),
        })
    }

    fn fail(&mut self, state: &State, now: UnixMillis, mut failure: Failure) -> Action {
        // `apply` refuses identifiers the certificate does not hold; a CA naming others must
        // not keep the cycle from closing.
        if let Some(record) = state.cert(&self.cert) {
            failure
                .failed_identifiers
                .retain(|id| record.spec.identifiers.contains(id));
        }
        if let Some(problem) = &mut failure.problem {
            *problem = crate::command::clip(problem, 256);
        }
        self.commit(
            now,
            Op::OrderFailed {
                step: self.step_ref(),
                failure,
                seed: self.seed,
            },
            Pending::Commit,
        )
    }

    fn order_invalid(
        &mut self,
        state: &State,
        now: UnixMillis,
        challenges: &[Challenge],
    ) -> Action {
        let detail = self
            .order
            .as_ref()
            .and_then(|o| o.error.clone())
            .unwrap_or_else(|| "order became invalid".into());
        // Which authorization failed is not in the order; count every challenged identifier
        // against the failed-validation budget, erring on the side of pacing.
        let mut failed: Vec<Identifier> = challenges.iter().map(|c| c.identifier.clone()).collect();
        failed.sort();
        failed.dedup();
        let failure = Failure {
            failed_identifiers: failed,
            ..permanent(&detail)
        };
        self.fail(state, now, failure)
    }

    fn finish(&mut self) -> Action {
        self.done = true;
        Action::Done
    }
}

/// Picks one challenge per pending authorization, of the kind the spec asks for.
fn choose_challenges(authz: &[AuthzView], kind: ChallengeKind) -> Result<Vec<Challenge>, Failure> {
    let mut chosen = Vec::new();
    for a in authz {
        match a.status {
            AuthzStatus::Valid => {} // reused authorization: nothing to prove
            AuthzStatus::Pending => {
                let Some(offer) = a.challenges.iter().find(|c| c.kind == kind) else {
                    return Err(permanent(&format!(
                        "CA offers no {kind} challenge for {}",
                        a.identifier
                    )));
                };
                chosen.push(Challenge {
                    identifier: a.identifier.clone(),
                    kind,
                    token: offer.token.clone(),
                    key_authorization: offer.key_authorization.clone(),
                    url: offer.url.clone(),
                });
            }
            status => {
                let failure =
                    permanent(&format!("authorization for {} is {status:?}", a.identifier));
                return Err(Failure {
                    failed_identifiers: alloc::vec![a.identifier.clone()],
                    ..failure
                });
            }
        }
    }
    Ok(chosen)
}

fn permanent(detail: &str) -> Failure {
    Failure {
        class: FailureClass::Permanent,
        problem: None,
        detail: Failure::clip_detail(detail),
        retry_at: None,
        failed_identifiers: Vec::new(),
        account_wide: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Response;
    use crate::model::RenewalReason;
    use crate::state::apply;
    use crate::testing::{ModelCa, account, spec};
    use crate::time::{DAY_MS, HOUR_MS};

    const T0: UnixMillis = UnixMillis(1_700_000_000_000);

    /// One leader's view: the state, a CA, a clock and a log index, without the planner.
    struct Leader {
        state: State,
        ca: ModelCa,
        now: UnixMillis,
        term: Term,
        index: u64,
        trace: Vec<&'static str>,
    }

    impl Leader {
        fn new(names: &[&str]) -> Self {
            let mut leader = Self {
                state: State::new(),
                ca: ModelCa::new(90 * DAY_MS),
                now: T0,
                term: Term(1),
                index: 0,
                trace: Vec::new(),
            };
            let issuer = crate::model::IssuerId::parse(crate::testing::ISSUER).unwrap();
            leader.commit(Op::SetAccount {
                issuer,
                account: account(),
            });
            leader.commit(Op::PutCert {
                spec: spec(names),
                seed: 1,
            });
            leader
        }

        fn cert(&self) -> CertId {
            self.state.certs().next().unwrap().0.clone()
        }

        fn commit(&mut self, op: Op) -> Response {
            self.index += 1;
            apply(&mut self.state, &Command { at: self.now, op }).0
        }

        fn begin(&mut self) -> OrderDriver {
            let cert = self.cert();
            let cycle = self.state.cert(&cert).unwrap().cycle.next();
            let op = Op::BeginOrder {
                cert: cert.clone(),
                cycle,
                term: self.term,
                reason: RenewalReason::Initial,
            };
            assert_eq!(self.commit(op), Response::Accepted);
            self.driver()
        }

        /// A new leader: later term, takes the cycle over, new driver.
        fn take_over(&mut self) -> OrderDriver {
            self.term = Term(self.term.0 + 1);
            let cert = self.cert();
            let cycle = self.state.cert(&cert).unwrap().open.as_ref().unwrap().cycle;
            assert_eq!(
                self.commit(Op::ResumeOrder {
                    cert,
                    cycle,
                    term: self.term
                }),
                Response::Accepted
            );
            self.driver()
        }

        fn driver(&self) -> OrderDriver {
            let cert = self.cert();
            OrderDriver::new(
                cert.clone(),
                self.state.cert(&cert).unwrap().open.as_ref().unwrap(),
                self.index,
                99,
            )
        }

        /// Runs the driver until `stop` matches the next action (returned, not performed) or it
        /// is done. Sleeps advance virtual time.
        fn run(&mut self, driver: &mut OrderDriver, stop: impl Fn(&Action) -> bool) -> Action {
            for _ in 0..500 {
                let action = driver.poll_action(&self.state, self.now);
                if stop(&action) || action == Action::Done {
                    return action;
                }
                self.perform(driver, action);
            }
            panic!("driver did not finish: {:?}", self.trace);
        }

        /// Performs one action the driver returned and reports its outcome.
        fn perform(&mut self, driver: &mut OrderDriver, action: Action) {
            self.trace.push(name(&action));
            let outcome = match action {
                Action::Commit(command) => match apply(&mut self.state, &command).0 {
                    Response::Accepted => {
                        self.index += 1;
                        Outcome::Committed { index: self.index }
                    }
                    Response::Rejected(r) => Outcome::Rejected(r),
                },
                Action::Sleep { until } => {
                    self.now = until;
                    return;
                }
                Action::Wait => panic!("an action is outstanding: {:?}", self.trace),
                other => self.ca.perform(&other, self.now).unwrap(),
            };
            driver.handle_outcome(self.now, outcome);
        }

        fn current_key(&self) -> SealedBlob {
            self.state
                .cert(&self.cert())
                .unwrap()
                .current
                .as_ref()
                .unwrap()
                .key
                .clone()
        }
    }

    fn name(action: &Action) -> &'static str {
        match action {
            Action::Commit(c) => match c.op {
                Op::OrderDeferred { .. } => "commit OrderDeferred",
                Op::OrderCreated { .. } => "commit OrderCreated",
                Op::ChallengesPublished { .. } => "commit ChallengesPublished",
                Op::KeyPrepared { .. } => "commit KeyPrepared",
                Op::Finalized { .. } => "commit Finalized",
                Op::CertIssued { .. } => "commit CertIssued",
                Op::OrderFailed { .. } => "commit OrderFailed",
                _ => "commit other",
            },
            Action::CreateOrder { .. } => "newOrder",
            Action::FetchOrder { .. } => "fetch order",
            Action::FetchAuthorizations { .. } => "fetch authz",
            Action::WaitApplied { .. } => "wait applied",
            Action::MarkReady { .. } => "ready",
            Action::PrepareKey { .. } => "prepare key",
            Action::Finalize { .. } => "finalize",
            Action::Download { .. } => "download",
            Action::Sleep { .. } => "sleep",
            Action::Wait => "wait",
            Action::Done => "done",
        }
    }

    fn never(_: &Action) -> bool {
        false
    }

    #[test]
    fn each_step_is_committed_before_the_next_call_to_the_ca() {
        let mut leader = Leader::new(&["www.example.com"]);
        let mut driver = leader.begin();
        assert_eq!(leader.run(&mut driver, never), Action::Done);
        assert_eq!(
            leader.trace,
            [
                "newOrder",
                "commit OrderCreated",
                "fetch authz",
                "commit ChallengesPublished",
                "wait applied",
                "ready",
                "sleep",
                "fetch order",
                "prepare key",
                "commit KeyPrepared",
                "finalize",
                "commit Finalized",
                "download",
                "commit CertIssued",
            ]
        );
        assert_eq!(leader.ca.new_orders, 1);
        assert!(leader.state.cert(&leader.cert()).unwrap().current.is_some());
    }

    #[test]
    fn challenges_are_declared_ready_only_after_every_member_applied_them() {
        let mut leader = Leader::new(&["www.example.com"]);
        let mut driver = leader.begin();
        let wait = leader.run(&mut driver, |a| matches!(a, Action::WaitApplied { .. }));
        // The index is the one ChallengesPublished was committed at (DESIGN §5 step 3).
        assert_eq!(
            wait,
            Action::WaitApplied {
                index: leader.index
            }
        );
        driver.handle_outcome(leader.now, Outcome::Applied { lagging: 1 });
        assert_eq!(driver.lagging_members(), 1, "a timed-out wait is counted");
        assert!(matches!(
            driver.poll_action(&leader.state, leader.now),
            Action::MarkReady { .. }
        ));
    }

    #[test]
    fn a_leader_killed_between_new_order_and_its_commit_costs_one_extra_order() {
        let mut leader = Leader::new(&["www.example.com"]);
        let mut driver = leader.begin();
        let action = leader.run(&mut driver, |a| {
            matches!(
                a,
                Action::Commit(Command {
                    op: Op::OrderCreated { .. },
                    ..
                })
            )
        });
        assert!(matches!(action, Action::Commit(_)));
        drop(driver); // killed: the CA has an order the log never learns about
        let mut driver = leader.take_over();
        assert_eq!(leader.run(&mut driver, never), Action::Done);
        assert_eq!(
            leader.ca.new_orders, 2,
            "bound: 1 + leadership changes in the window (DESIGN §5)"
        );
    }

    #[test]
    fn a_new_leader_resumes_a_committed_order_without_ordering_again() {
        for kill_before in [
            "fetch authz",
            "wait applied",
            "ready",
            "prepare key",
            "finalize",
            "download",
            "commit CertIssued",
        ] {
            let mut leader = Leader::new(&["www.example.com"]);
            let mut driver = leader.begin();
            leader.run(&mut driver, |a| name(a) == kill_before);
            let order_url = leader
                .state
                .cert(&leader.cert())
                .unwrap()
                .open
                .as_ref()
                .unwrap()
                .step
                .order()
                .unwrap()
                .url
                .clone();
            let mut driver = leader.take_over();
            let first = driver.poll_action(&leader.state, leader.now);
            if let Action::FetchOrder { order_url: url } = &first {
                assert_eq!(*url, order_url, "resumed by URL");
            }
            assert!(
                !matches!(first, Action::CreateOrder { .. }),
                "killed before {kill_before}"
            );
            leader.perform(&mut driver, first);
            assert_eq!(
                leader.run(&mut driver, never),
                Action::Done,
                "killed before {kill_before}"
            );
            assert_eq!(
                leader.ca.new_orders, 1,
                "killed before {kill_before}: no second order"
            );
            assert!(
                leader.state.cert(&leader.cert()).unwrap().current.is_some(),
                "killed before {kill_before}"
            );
        }
    }

    #[test]
    fn the_key_committed_before_finalize_is_the_key_of_the_issued_certificate() {
        let mut leader = Leader::new(&["www.example.com"]);
        let mut driver = leader.begin();
        leader.run(&mut driver, |a| matches!(a, Action::Finalize { .. }));
        let committed = leader
            .state
            .cert(&leader.cert())
            .unwrap()
            .open
            .as_ref()
            .unwrap()
            .step
            .key()
            .unwrap()
            .clone();
        let mut driver = leader.take_over();
        leader.run(&mut driver, never);
        assert_eq!(leader.current_key(), committed);
    }

    #[test]
    fn a_deposed_leaders_driver_stops_at_its_next_step() {
        let mut leader = Leader::new(&["www.example.com"]);
        let mut old = leader.begin();
        leader.run(&mut old, |a| name(a) == "fetch authz");
        let _new = leader.take_over();
        assert_eq!(
            old.poll_action(&leader.state, leader.now),
            Action::Done,
            "the cycle belongs to a newer term"
        );
    }

    #[test]
    fn a_lost_finalize_response_is_recovered_by_fetching_the_order() {
        let mut leader = Leader::new(&["www.example.com"]);
        leader.ca.faults.lose_finalize_response = 1;
        let mut driver = leader.begin();
        assert_eq!(leader.run(&mut driver, never), Action::Done);
        assert_eq!(
            leader.trace.iter().filter(|a| **a == "finalize").count(),
            1,
            "{:?}",
            leader.trace
        );
        assert!(leader.state.cert(&leader.cert()).unwrap().current.is_some());
    }

    #[test]
    fn an_order_still_ready_after_finalize_is_polled_with_growing_delays_then_given_up() {
        let mut leader = Leader::new(&["www.example.com"]);
        let mut driver = leader.begin();
        let finalize = leader.run(&mut driver, |a| name(a) == "finalize");
        assert_eq!(name(&finalize), "finalize");
        let ready = OrderView {
            status: OrderStatus::Ready,
            certificate_url: None,
            retry_at: None,
            error: None,
        };
        // The CA took the finalize and still says `ready`, as a CA whose late validation
        // re-readied the order did.
        driver.handle_outcome(leader.now, Outcome::Order(ready.clone()));
        let mut polls = 0;
        let mut last_poll = leader.now;
        loop {
            match driver.poll_action(&leader.state, leader.now) {
                Action::Sleep { until } => leader.now = until,
                Action::FetchOrder { .. } => {
                    polls += 1;
                    assert!(
                        polls == 1 || leader.now.ms_since(last_poll) >= POLL_DELAY_MS_MIN,
                        "poll {polls} came {} ms after the last",
                        leader.now.ms_since(last_poll)
                    );
                    last_poll = leader.now;
                    driver.handle_outcome(leader.now, Outcome::Order(ready.clone()));
                }
                Action::Commit(Command {
                    op: Op::OrderFailed { failure, .. },
                    ..
                }) => {
                    assert!(failure.detail.contains("stuck in Ready"), "{failure:?}");
                    break;
                }
                other => {
                    let step = name(&other);
                    assert!(step.starts_with("commit") && step != "commit CertIssued");
                    leader.perform(&mut driver, other);
                }
            }
            assert!(polls <= POLLS_MAX + 1, "never gave up");
        }
        // The views before finalize count towards the same limit.
        assert!(
            (POLLS_MAX - 2..=POLLS_MAX).contains(&polls),
            "{polls} polls"
        );
    }

    #[test]
    fn a_rate_limited_new_order_fails_the_cycle_with_the_cas_retry_after() {
        let mut leader = Leader::new(&["www.example.com"]);
        leader.ca.faults.rate_limit_new_orders = 1;
        leader.ca.faults.rate_limit_retry_ms = 3 * HOUR_MS;
        let mut driver = leader.begin();
        assert_eq!(leader.run(&mut driver, never), Action::Done);
        let record = leader.state.cert(&leader.cert()).unwrap();
        assert_eq!(record.retry_at, Some(T0.plus_ms(3 * HOUR_MS)));
        assert_eq!(
            record.last_failure.as_ref().unwrap().class,
            FailureClass::RateLimited
        );
        let issuer = &record.spec.issuer;
        assert_eq!(
            leader.state.account(issuer).unwrap().throttled_until,
            Some(T0.plus_ms(3 * HOUR_MS))
        );
    }

    fn unavailable_for(ms: u64, now: UnixMillis) -> Outcome {
        Outcome::Failed(CaError {
            status: Some(503),
            problem: Some("urn:ietf:params:acme:error:serverInternal".into()),
            detail: "down for maintenance".into(),
            retry_at: Some(now.plus_ms(ms)),
            account_wide: false,
        })
    }

    #[test]
    fn a_long_retry_after_before_an_order_exists_closes_the_cycle_to_commit_it() {
        let mut leader = Leader::new(&["www.example.com"]);
        let mut driver = leader.begin();
        let action = driver.poll_action(&leader.state, leader.now);
        assert!(matches!(action, Action::CreateOrder { .. }), "{action:?}");
        driver.handle_outcome(leader.now, unavailable_for(60 * SECOND_MS, leader.now));
        let Action::Commit(command) = driver.poll_action(&leader.state, leader.now) else {
            panic!("the failure is committed");
        };
        let Op::OrderFailed { failure, .. } = &command.op else {
            panic!("{command:?}");
        };
        assert_eq!(failure.retry_at, Some(T0.plus_ms(60 * SECOND_MS)));
        assert_eq!(apply(&mut leader.state, &command).0, Response::Accepted);
        let record = leader.state.cert(&leader.cert()).unwrap();
        assert!(record.retry_at.unwrap() >= T0.plus_ms(60 * SECOND_MS));

        // A short one keeps the cycle: committed, then waited out.
        let mut leader = Leader::new(&["www.example.com"]);
        let mut driver = leader.begin();
        let _ = driver.poll_action(&leader.state, leader.now);
        driver.handle_outcome(leader.now, unavailable_for(5 * SECOND_MS, leader.now));
        let action = driver.poll_action(&leader.state, leader.now);
        assert_eq!(name(&action), "commit OrderDeferred");
        leader.perform(&mut driver, action);
        let action = driver.poll_action(&leader.state, leader.now);
        assert_eq!(
            action,
            Action::Sleep {
                until: T0.plus_ms(5 * SECOND_MS)
            }
        );
    }

    #[test]
    fn a_long_retry_after_inside_an_order_is_committed_and_holds_the_next_leader() {
        let mut leader = Leader::new(&["www.example.com"]);
        let mut driver = leader.begin();
        let action = leader.run(&mut driver, |a| {
            matches!(a, Action::FetchAuthorizations { .. })
        });
        assert!(
            matches!(action, Action::FetchAuthorizations { .. }),
            "{action:?}"
        );
        let until = leader.now.plus_ms(60 * SECOND_MS);
        driver.handle_outcome(leader.now, unavailable_for(60 * SECOND_MS, leader.now));
        let Action::Commit(command) = driver.poll_action(&leader.state, leader.now) else {
            panic!("the wait is committed before it starts");
        };
        assert!(matches!(command.op, Op::OrderDeferred { until: u, .. } if u == until));
        leader.perform(&mut driver, Action::Commit(command));
        assert_eq!(
            driver.poll_action(&leader.state, leader.now),
            Action::Sleep { until }
        );

        // The leader dies; its successor resumes the cycle and waits out the same Retry-After.
        let mut next = leader.take_over();
        assert_eq!(
            next.poll_action(&leader.state, leader.now),
            Action::Sleep { until },
            "no call for the order before the CA's Retry-After"
        );
        leader.now = until;
        let action = next.poll_action(&leader.state, leader.now);
        assert!(
            matches!(action, Action::FetchAuthorizations { .. }),
            "{action:?}"
        );
        leader.perform(&mut next, action);
        assert_eq!(leader.run(&mut next, never), Action::Done);
        assert!(leader.state.cert(&leader.cert()).unwrap().current.is_some());

        // A stale owner cannot commit a wait, and a shorter wait never shortens a longer one.
        let mut leader = Leader::new(&["www.example.com"]);
        let _ = leader.begin();
        let cert = leader.cert();
        let step = |term| StepRef {
            cert: cert.clone(),
            cycle: Cycle(1),
            term,
        };
        let later = T0.plus_ms(HOUR_MS);
        let defer = |term, until| Op::OrderDeferred {
            step: step(term),
            until,
        };
        assert!(matches!(
            leader.commit(defer(Term(7), later)),
            Response::Rejected(Rejection::StaleTerm { .. })
        ));
        assert_eq!(leader.commit(defer(Term(1), later)), Response::Accepted);
        assert_eq!(
            leader.commit(defer(Term(1), T0.plus_ms(MINUTE_MS))),
            Response::Accepted
        );
        let open = leader.state.cert(&cert).unwrap().open.clone().unwrap();
        assert_eq!(open.not_before, later);
    }

    #[test]
    fn a_cycle_begun_before_an_account_wide_429_waits_for_its_retry_after() {
        let mut leader = Leader::new(&["www.example.com"]);
        let mut driver = leader.begin();
        let issuer = crate::model::IssuerId::parse(crate::testing::ISSUER).unwrap();
        let mut throttled = account();
        throttled.throttled_until = Some(T0.plus_ms(HOUR_MS));
        leader.commit(Op::SetAccount {
            issuer,
            account: throttled,
        });
        assert_eq!(
            driver.poll_action(&leader.state, leader.now),
            Action::Sleep {
                until: T0.plus_ms(HOUR_MS)
            },
            "no newOrder before the account's Retry-After"
        );
        leader.now = T0.plus_ms(HOUR_MS);
        assert!(matches!(
            driver.poll_action(&leader.state, leader.now),
            Action::CreateOrder { .. }
        ));
    }

    #[test]
    fn transient_ca_errors_are_retried_a_few_times_then_fail_the_cycle() {
        let mut leader = Leader::new(&["www.example.com"]);
        leader.ca.faults.unavailable = CA_RETRIES_MAX;
        let mut driver = leader.begin();
        leader.run(&mut driver, never);
        assert!(
            leader.state.cert(&leader.cert()).unwrap().current.is_some(),
            "recovered within the retries"
        );

        let mut leader = Leader::new(&["www.example.com"]);
        leader.ca.faults.unavailable = CA_RETRIES_MAX + 1;
        let mut driver = leader.begin();
        leader.run(&mut driver, never);
        let record = leader.state.cert(&leader.cert()).unwrap();
        assert!(record.current.is_none());
        assert_eq!(record.failures, 1);
        assert_eq!(
            record.last_failure.as_ref().unwrap().class,
            FailureClass::Retryable
        );
    }

    #[test]
    fn an_order_is_kept_through_a_bad_quarter_hour_of_transient_errors() {
        let run = |failures: u32| {
            let mut leader = Leader::new(&["www.example.com"]);
            let mut driver = leader.begin();
            let next = leader.run(&mut driver, |a| name(a) == "fetch authz");
            let started = leader.now;
            leader.ca.faults.unavailable = failures;
            leader.perform(&mut driver, next);
            leader.run(&mut driver, never);
            (leader, started)
        };
        let (leader, started) = run(CA_RETRIES_IN_ORDER_MAX);
        assert!(
            leader.state.cert(&leader.cert()).unwrap().current.is_some(),
            "issued from the same order"
        );
        assert_eq!(leader.ca.new_orders, 1);
        let waited = leader.now.ms_since(started);
        assert!(
            (10 * MINUTE_MS..30 * MINUTE_MS).contains(&waited),
            "retried for {waited} ms"
        );
        let (leader, _) = run(CA_RETRIES_IN_ORDER_MAX + 1);
        let record = leader.state.cert(&leader.cert()).unwrap();
        assert!(record.current.is_none(), "then the order is given up");
        assert_eq!(record.failures, 1);
    }

    #[test]
    fn an_invalid_authorization_fails_the_cycle_and_counts_the_identifier() {
        let mut leader = Leader::new(&["www.example.com"]);
        leader.ca.faults.invalid_authz = 1;
        let mut driver = leader.begin();
        leader.run(&mut driver, never);
        let record = leader.state.cert(&leader.cert()).unwrap();
        let failure = record.last_failure.as_ref().unwrap();
        assert_eq!(failure.class, FailureClass::Permanent);
        assert_eq!(
            failure.failed_identifiers,
            vec![Identifier::parse("www.example.com").unwrap()]
        );
        assert!(leader.state.open_count() == 0 && leader.state.challenges().count() == 0);
    }

    #[test]
    fn a_ca_that_processes_reuses_authorizations_and_rotates_its_chain() {
        let mut leader = Leader::new(&["www.example.com"]);
        leader.ca.faults.processing_ms = 30 * SECOND_MS;
        leader.ca.faults.reuse_authz = true;
        leader.ca.faults.chain_every = 1;
        let mut driver = leader.begin();
        assert_eq!(leader.run(&mut driver, never), Action::Done);
        let first = leader.state.cert(&leader.cert()).unwrap().current.clone();
        let first = first.expect("issued through a processing order");
        let after_finalize: Vec<&str> = leader
            .trace
            .iter()
            .skip_while(|step| **step != "finalize")
            .copied()
            .collect();
        assert!(
            after_finalize.contains(&"commit OrderDeferred"),
            "30 s of processing is committed: {after_finalize:?}"
        );
        let polls = after_finalize
            .iter()
            .filter(|s| **s == "fetch order")
            .count();
        assert!(
            polls <= 2,
            "polled before the Retry-After: {after_finalize:?}"
        );
        assert!(leader.trace.contains(&"ready"));

        // The next cycle finds the identifier validated: no challenge, no ready.
        leader.trace.clear();
        leader.now = first.not_after;
        let mut driver = leader.begin();
        assert_eq!(leader.run(&mut driver, never), Action::Done);
        assert!(!leader.trace.contains(&"ready"), "{:?}", leader.trace);
        let second = leader.state.cert(&leader.cert()).unwrap().current.clone();
        let second = second.expect("renewed");
        assert_ne!(second.chain, first.chain, "a new intermediate");
        assert!(leader.state.chain(&second.chain).is_some());
        assert!(
            leader.state.chain(&first.chain).is_none(),
            "the old chain is released with the last leaf that used it"
        );
    }

    #[test]
    fn reused_authorizations_skip_publishing_and_ready() {
        let mut leader = Leader::new(&["www.example.com"]);
        let mut driver = leader.begin();
        leader.run(&mut driver, |a| name(a) == "fetch authz");
        let _ = driver.poll_action(&leader.state, leader.now);
        let reused = AuthzView {
            identifier: Identifier::parse("www.example.com").unwrap(),
            status: AuthzStatus::Valid,
            challenges: vec![],
        };
        driver.handle_outcome(leader.now, Outcome::Authorizations(vec![reused]));
        let Action::Commit(Command {
            op: Op::ChallengesPublished { challenges, .. },
            ..
        }) = driver.poll_action(&leader.state, leader.now)
        else {
            panic!("expected the (empty) publication to be committed");
        };
        assert!(challenges.is_empty());
    }

    #[test]
    fn a_ca_offering_no_challenge_of_the_wanted_kind_fails_permanently() {
        let offers = vec![ChallengeOffer {
            kind: ChallengeKind::Dns01,
            url: "https://a/c".into(),
            token: "t".into(),
            key_authorization: "t.x".into(),
        }];
        let authz = AuthzView {
            identifier: Identifier::parse("www.example.com").unwrap(),
            status: AuthzStatus::Pending,
            challenges: offers,
        };
        let failure = choose_challenges(&[authz], ChallengeKind::Http01).unwrap_err();
        assert!(
            failure
                .detail
                .contains("no http-01 challenge for www.example.com"),
            "{}",
            failure.detail
        );
    }

    #[test]
    fn ca_errors_are_classified_by_problem_type_then_status() {
        let error = |status, kind: &str| CaError {
            status,
            problem: (!kind.is_empty()).then(|| format!("urn:ietf:params:acme:error:{kind}")),
            detail: String::new(),
            retry_at: None,
            account_wide: false,
        };
        assert_eq!(
            classify(&error(Some(429), "rateLimited")),
            FailureClass::RateLimited
        );
        assert_eq!(
            classify(&error(Some(400), "badNonce")),
            FailureClass::Retryable
        );
        assert_eq!(
            classify(&error(Some(500), "serverInternal")),
            FailureClass::Retryable
        );
        assert_eq!(
            classify(&error(Some(403), "unauthorized")),
            FailureClass::Permanent
        );
        assert_eq!(
            classify(&error(Some(400), "badCSR")),
            FailureClass::Permanent
        );
        assert_eq!(classify(&error(Some(429), "")), FailureClass::RateLimited);
        assert_eq!(classify(&error(Some(503), "")), FailureClass::Retryable);
        assert_eq!(classify(&error(Some(404), "")), FailureClass::Permanent);
        assert_eq!(
            classify(&error(None, "")),
            FailureClass::Retryable,
            "transport errors are transient"
        );
        assert_eq!(
            classify(&error(Some(400), "somethingNew")),
            FailureClass::Permanent
        );
    }

    #[test]
    fn order_polls_honour_retry_after_and_give_up_on_a_stuck_order() {
        let mut leader = Leader::new(&["www.example.com"]);
        let mut driver = leader.begin();
        leader.run(&mut driver, |a| name(a) == "fetch order");
        let _ = driver.poll_action(&leader.state, leader.now);
        let stuck = OrderView {
            status: OrderStatus::Pending,
            certificate_url: None,
            retry_at: Some(leader.now.plus_ms(HOUR_MS)),
            error: None,
        };
        driver.handle_outcome(leader.now, Outcome::Order(stuck.clone()));
        let action = driver.poll_action(&leader.state, leader.now);
        assert_eq!(
            name(&action),
            "commit OrderDeferred",
            "an hour is not kept in memory"
        );
        leader.perform(&mut driver, action);
        assert_eq!(
            driver.poll_action(&leader.state, leader.now),
            Action::Sleep {
                until: leader.now.plus_ms(HOUR_MS)
            }
        );
        for _ in 0..POLLS_MAX {
            let now = leader.now;
            let _ = driver.poll_action(&leader.state, UnixMillis::MAX);
            driver.handle_outcome(
                now,
                Outcome::Order(OrderView {
                    retry_at: None,
                    ..stuck.clone()
                }),
            );
        }
        let Action::Commit(Command {
            op: Op::OrderFailed { failure, .. },
            ..
        }) = driver.poll_action(&leader.state, UnixMillis::MAX)
        else {
            panic!("a stuck order fails the cycle");
        };
        assert_eq!(failure.class, FailureClass::Retryable);
        assert!(failure.detail.contains("stuck in Pending"));
    }
}
