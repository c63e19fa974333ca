//! certfleet's ACME certificate authority: an RFC 8555 server for the demo and the simulation.
//!
//! * [`AcmeServer`] is **sans-IO** and **deterministic**: [`AcmeServer::handle`] takes an
//!   `http::Request<Bytes>` and the time, and returns the response; every random choice (ids,
//!   nonces, tokens, serials, faults) comes from generators seeded by [`AcmeServer::new`], and
//!   the CA keys are Ed25519 derived from the seed (deterministic signatures). The same seed and
//!   the same calls give byte-identical responses. Validation is IO, so the core does not do
//!   it: a challenge the client marks ready becomes a [`Validation`] the host takes with
//!   [`AcmeServer::take_validations`] and answers with [`AcmeServer::validation_done`].
//! * [`serve`] binds it to a TCP listener with hyper (HTTP/1.1), on tokio or, through the
//!   `madsim-tokio` alias, on madsim, running validations with a [`Validate`] implementation;
//!   [`NetworkValidator`] does HTTP-01, TLS-ALPN-01 and DNS-01 (through a pluggable TXT lookup)
//!   against addresses a [`Resolver`] names.
//!
//! Surface: directory (with `meta.profiles` and `renewalInfo`), `newNonce`, JWS-verified
//! POSTs (ES256, ES384, EdDSA, RS256), accounts (`onlyReturnExisting`, deactivation), orders
//! with DNS, wildcard and IP identifiers, profiles and ARI `replaces`, authorizations with
//! http-01 / dns-01 / tls-alpn-01 and reuse, finalize with CSR checks and an optional
//! processing delay, PEM chain download, ARI renewalInfo, revocation; Let's Encrypt-like rate
//! limits; injected faults (badNonce, 503, processing delays, "renew now" windows); counters
//! ([`CaStats`]) and an event log ([`CaEvent`]). Not implemented: key rollover (`keyChange`),
//! external account binding, pre-authorization (`newAuthz`), alternate chains, CRLs/OCSP.

#![forbid(unsafe_code)]

mod config;
mod jws;
mod model;
mod pki;
mod problem;
mod rng;
mod serve;
mod server;
pub mod testing;

pub use config::{
    AriConfig, CaConfig, ChallengeKind, ConfigError, DAY_MS, Faults, HOUR_MS, KeyType, Profile,
    RateLimit, RateLimits,
};
pub use model::{
    CaEvent, CaSizes, CaStats, EventHook, Fault, Identifier, LimitKind, Validation, ValidationId,
};
pub use problem::ProblemType;
pub use serve::{
    AnyCertificate, Clock, MapResolver, MapTxt, NetworkValidator, Resolver, SystemClock, TxtLookup,
    Validate, ValidatorOptions, serve,
};
pub use server::{AcmeServer, CaError};
