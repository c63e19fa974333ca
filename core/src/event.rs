//! Events: what `apply` tells the data plane changed.

use crate::model::{CertId, Challenge};
use crate::time::UnixMillis;

/// A change the data plane acts on (swap the SNI map, serve or stop serving a challenge).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A new certificate is served for `cert` (read it from the state).
    CertActivated {
        /// The certificate.
        cert: CertId,
        /// Its expiry.
        not_after: UnixMillis,
    },
    /// `cert` is no longer managed: stop serving it.
    CertRemoved {
        /// The certificate.
        cert: CertId,
    },
    /// Answer this challenge (HTTP-01 token, TLS-ALPN-01 certificate, DNS-01 record).
    ChallengePublished {
        /// The certificate whose cycle published it.
        cert: CertId,
        /// The challenge.
        challenge: Challenge,
    },
    /// Stop answering this challenge.
    ChallengeWithdrawn {
        /// The certificate whose cycle published it.
        cert: CertId,
        /// The challenge.
        challenge: Challenge,
    },
}
