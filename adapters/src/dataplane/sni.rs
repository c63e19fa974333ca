//! Certificate selection by SNI: the seam between rustls and the data plane's tables.
//!
//! A ClientHello without SNI gets no certificate, and the handshake fails: every name the
//! cluster serves is a DNS name a client can send (RFC 6066 §3 carries no IP literals), and a
//! default certificate would show a client someone else's names. IP certificates (RFC 8738)
//! are in the table but only reachable by a lookup that knows the local address.

use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::Dataplane;
use super::alpn::ACME_TLS_ALPN;
use certfleet_core::name::NAME_LEN_MAX;

/// A rustls certificate resolver over a [`Dataplane`]'s tables.
///
/// If the ClientHello offers ALPN `acme-tls/1` it answers only with the TLS-ALPN-01 challenge
/// certificate published for that name, never a real certificate, and nothing if none is
/// published (RFC 8737 §3: the validation handshake must not be answered with a certificate
/// that could pass for the challenge, nor a challenge certificate shown to normal clients).
#[derive(Debug)]
pub struct SniResolver {
    dataplane: Arc<Dataplane>,
}

impl SniResolver {
    /// A resolver reading `dataplane`'s current tables at every handshake.
    #[must_use]
    pub fn new(dataplane: Arc<Dataplane>) -> Self {
        Self { dataplane }
    }

    /// What [`ResolvesServerCert::resolve`] answers for an SNI name and whether the client
    /// offered `acme-tls/1`; separated from rustls' `ClientHello`, which tests cannot build.
    #[must_use]
    pub fn lookup(&self, server_name: Option<&str>, acme_tls: bool) -> Option<Arc<CertifiedKey>> {
        let name = normalize(server_name?)?;
        if acme_tls {
            return self.dataplane.challenge_table().alpn(&name).cloned();
        }
        let table = self.dataplane.cert_table();
        table.resolve(&name).map(|served| served.certified.clone())
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let acme_tls = client_hello
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN));
        self.lookup(client_hello.server_name(), acme_tls)
    }
}

/// A DNS name as the tables file it: ASCII lower case, one trailing dot dropped. `None` for
/// what no certificate can match (empty, too long, a literal `*` from a client, bytes outside
/// a hostname's). Wildcard SAN entries (`*.example.com`) from a leaf are kept as they are.
#[must_use]
pub fn normalize(name: &str) -> Option<String> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > NAME_LEN_MAX {
        return None;
    }
    let (wildcard, rest) = match name.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, name),
    };
    // Letters, digits, hyphens and dots (RFC 1123 §2.1), and underscores, which real names
    // carry (`_acme-challenge`) though no public CA issues for them.
    let hostname = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_';
    if rest.is_empty() || !rest.bytes().all(hostname) || rest.split('.').any(str::is_empty) {
        return None;
    }
    let mut out = String::with_capacity(name.len());
    if wildcard {
        out.push_str("*.");
    }
    out.push_str(&rest.to_ascii_lowercase());
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_matched_case_insensitively_and_with_a_trailing_dot() {
        assert_eq!(
            normalize("WWW.Example.COM.").as_deref(),
            Some("www.example.com")
        );
        assert_eq!(normalize("*.Example.com").as_deref(), Some("*.example.com"));
        assert_eq!(
            normalize("a_b.example.com").as_deref(),
            Some("a_b.example.com")
        );
    }

    #[test]
    fn names_no_certificate_can_match_are_refused() {
        for bad in [
            "",
            ".",
            "a..example.com",
            ".example.com",
            "a.*.example.com",
            "*.",
            "é.com",
        ] {
            assert_eq!(normalize(bad), None, "{bad:?}");
        }
        assert_eq!(normalize(&"a.".repeat(130)), None, "longer than 253 octets");
    }

    #[test]
    fn without_sni_nothing_is_served() {
        let dataplane = Arc::new(Dataplane::new(super::super::ChallengeKeys::Generate));
        let resolver = SniResolver::new(dataplane);
        assert!(resolver.lookup(None, false).is_none());
        assert!(resolver.lookup(None, true).is_none());
        assert!(resolver.lookup(Some("www.example.com"), false).is_none());
    }
}
