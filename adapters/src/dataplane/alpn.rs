//! TLS-ALPN-01 (RFC 8737): challenge certificates, and the TLS listener every node runs.
//!
//! The CA opens a TLS connection to the identifier with SNI set to it and ALPN offering only
//! `acme-tls/1`, and expects a self-signed certificate whose subjectAltName is the identifier
//! and whose critical `acmeIdentifier` extension holds SHA-256 of the key authorization
//! (RFC 8737 §3). The [`SniResolver`] picks that certificate for `acme-tls/1` handshakes; the
//! same listener serves real certificates to everyone else.

use std::sync::Arc;
use std::time::Duration;

use certfleet_core::CertId;
use certfleet_core::name::Identifier;
use rcgen::{CertificateParams, CustomExtension, DnType, KeyPair};
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::sni::SniResolver;
use super::{ConnectionLimits, Dataplane};

/// The ALPN protocol id of TLS-ALPN-01 validation handshakes (RFC 8737 §6.2).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// The `acmeIdentifier` extension's OID, id-pe-acmeIdentifier (RFC 8737 §6.1).
pub const ACME_IDENTIFIER_OID: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 1, 31];

/// Why a TLS-ALPN-01 certificate could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AlpnError {
    /// rcgen refused the key or the certificate parameters.
    #[error("rcgen: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// rustls could not use the generated key.
    #[error("rustls: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Where the keys of TLS-ALPN-01 challenge certificates come from. The key proves nothing (the
/// CA checks the extension, not the key), so it only needs to be a key validators accept.
#[derive(Clone)]
pub enum ChallengeKeys {
    /// A fresh ECDSA P-256 key per challenge from ring's system random source (rcgen's
    /// `KeyPair::generate`): the algorithm every validator supports. Under madsim this is
    /// reproducible only through the vendored getrandom patch (feasibility notes).
    Generate,
    /// Ed25519 keys derived from this secret, the certificate id and the token: deterministic,
    /// for the simulation, where key generation draws from the node's seeded generator
    /// (DESIGN §8). Validators must accept Ed25519 (Go's crypto/tls, under Boulder and Pebble,
    /// does).
    Seeded([u8; 32]),
}

impl std::fmt::Debug for ChallengeKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the seed.
        match self {
            Self::Generate => f.write_str("Generate"),
            Self::Seeded(_) => f.write_str("Seeded(..)"),
        }
    }
}

impl ChallengeKeys {
    /// The key pair for the challenge `token` of `cert`.
    pub fn key_pair(&self, cert: &CertId, token: &str) -> Result<KeyPair, AlpnError> {
        match self {
            Self::Generate => Ok(KeyPair::generate()?),
            Self::Seeded(secret) => {
                let mut hash = Sha256::new();
                hash.update(b"certfleet tls-alpn-01 key\0");
                hash.update(secret);
                // Length-prefixed, so (cert, token) pairs cannot collide by shifting bytes.
                hash.update((cert.as_str().len() as u64).to_be_bytes());
                hash.update(cert.as_str());
                hash.update(token);
                let seed: [u8; 32] = hash.finalize().into();
                // PKCS#8 v1 of an Ed25519 private key (RFC 8410 §7): a fixed prefix, then the
                // 32-byte seed as an OCTET STRING inside the privateKey OCTET STRING.
                let mut der = zeroize::Zeroizing::new(Vec::with_capacity(48));
                der.extend_from_slice(&[
                    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04,
                    0x22, 0x04, 0x20,
                ]);
                der.extend_from_slice(&seed);
                Ok(KeyPair::try_from(&PrivatePkcs8KeyDer::from(
                    der.as_slice(),
                ))?)
            }
        }
    }
}

/// The SNI name the CA sends when validating `identifier`: the DNS name, or for an IP address
/// its reverse-mapping name (RFC 8738 §6: `in-addr.arpa` / `ip6.arpa`).
#[must_use]
pub fn sni_name(identifier: &Identifier) -> String {
    match identifier {
        Identifier::Dns(name) => name.as_str().to_owned(),
        Identifier::Ip(std::net::IpAddr::V4(ip)) => {
            let [a, b, c, d] = ip.octets();
            format!("{d}.{c}.{b}.{a}.in-addr.arpa")
        }
        Identifier::Ip(std::net::IpAddr::V6(ip)) => {
            let mut name = String::with_capacity(72);
            for byte in ip.octets().iter().rev() {
                name.push_str(&format!("{:x}.{:x}.", byte & 0x0f, byte >> 4));
            }
            name.push_str("ip6.arpa");
            name
        }
    }
}

/// The TLS-ALPN-01 certificate for `identifier` (RFC 8737 §3): self-signed with `key_pair`,
/// subjectAltName the identifier, and the critical `acmeIdentifier` extension holding the DER
/// OCTET STRING of SHA-256(`key_authorization`).
pub fn challenge_certificate(
    identifier: &Identifier,
    key_authorization: &str,
    key_pair: &KeyPair,
) -> Result<CertificateDer<'static>, AlpnError> {
    let digest = Sha256::digest(key_authorization.as_bytes());
    // `new` files a value that parses as an IP address as an iPAddress SAN (RFC 8738 §6) and
    // anything else as a dNSName.
    let mut params = CertificateParams::new(vec![identifier.value()])?;
    params
        .distinguished_name
        .push(DnType::CommonName, identifier.value());
    // rcgen writes the digest as a DER OCTET STRING and marks the extension critical.
    params.custom_extensions = vec![CustomExtension::new_acme_identifier(&digest)];
    Ok(params.self_signed(key_pair)?.der().clone())
}

/// [`challenge_certificate`] with its key, ready for rustls.
pub fn challenge_certified_key(
    identifier: &Identifier,
    key_authorization: &str,
    key_pair: &KeyPair,
) -> Result<Arc<CertifiedKey>, AlpnError> {
    let der = challenge_certificate(identifier, key_authorization, key_pair)?;
    let pkcs8 = zeroize::Zeroizing::new(key_pair.serialize_der());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8.as_slice()));
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)?;
    Ok(Arc::new(CertifiedKey::new(vec![der], signing)))
}

/// The rustls server configuration of the data plane's TLS listener: certificates by SNI from
/// `dataplane`, ALPN `acme-tls/1` and `http/1.1`.
#[must_use]
pub fn server_config(dataplane: Arc<Dataplane>) -> Arc<ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        // Fails only for a provider without a suite for TLS 1.2 or 1.3; ring's has both.
        .expect("ring's default provider supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver::new(dataplane)));
    // rustls picks the first of ours the client offers, so `acme-tls/1` first: a client offering
    // it is answered with the challenge certificate (the resolver's choice) and must get
    // `acme-tls/1` back (RFC 8737 §3), even if it also offered `http/1.1`.
    config.alpn_protocols = vec![ACME_TLS_ALPN.to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

/// Accepts TLS on `listener` until dropped, one task per connection (bounded by
/// [`ConnectionLimits`]): TLS-ALPN-01 validation handshakes get the challenge certificate and
/// are closed (RFC 8737 §4: nothing follows the handshake); other connections get a minimal
/// HTTP/1.1 answer naming the SNI the handshake selected, as a smoke test of the certificate.
pub async fn serve_tls(listener: TcpListener, dataplane: Arc<Dataplane>, limits: ConnectionLimits) {
    let acceptor = TlsAcceptor::from(server_config(dataplane));
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.connections_max));
    loop {
        let Some((stream, permit)) = super::accept(&listener, &slots).await else {
            continue;
        };
        let acceptor = acceptor.clone();
        let timeout = Duration::from_millis(limits.timeout_ms);
        tokio::spawn(async move {
            let _permit = permit;
            // One deadline for the whole connection: a client that stalls the handshake or the
            // request cannot hold a slot longer.
            let _ = tokio::time::timeout(timeout, async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return; // no certificate for that name, or a broken handshake
                };
                let (_, connection) = tls.get_ref();
                if connection.alpn_protocol() == Some(ACME_TLS_ALPN) {
                    let _ = tls.shutdown().await;
                    return;
                }
                let name = connection.server_name().unwrap_or_default().to_owned();
                // Read (at most 8 KiB of) the request head before answering, so that a
                // client writing its request does not see a reset.
                let mut head = Vec::with_capacity(1024);
                let mut buf = [0u8; 1024];
                while head.len() < 8 * 1024 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let body = format!("certfleet serves {name}\n");
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain; charset=utf-8\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(response.as_bytes()).await;
                let _ = tls.shutdown().await;
            })
            .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

    fn identifier(value: &str) -> Identifier {
        Identifier::parse(value).unwrap()
    }

    #[test]
    fn the_challenge_certificate_carries_the_digest_in_a_critical_acme_identifier() {
        let key = KeyPair::generate().unwrap();
        let key_authorization = "tok_en-1.thumbprint";
        let der =
            challenge_certificate(&identifier("www.example.com"), key_authorization, &key).unwrap();
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        let oid = x509_parser::der_parser::oid!(1.3.6.1.5.5.7.1.31);
        let extension = cert
            .extensions()
            .iter()
            .find(|e| e.oid == oid)
            .expect("acmeIdentifier present");
        assert!(extension.critical, "RFC 8737 §3: the extension is critical");
        let digest = Sha256::digest(key_authorization.as_bytes());
        // DER OCTET STRING: tag 0x04, length 32, the digest.
        let mut expected = vec![0x04, 0x20];
        expected.extend_from_slice(&digest);
        assert_eq!(extension.value, expected.as_slice());
        let san = cert.subject_alternative_name().unwrap().unwrap();
        assert_eq!(
            san.value.general_names,
            vec![GeneralName::DNSName("www.example.com")]
        );
        assert_eq!(cert.issuer(), cert.subject(), "self-signed");
    }

    #[test]
    fn an_ip_challenge_names_the_address_and_is_asked_for_by_its_reverse_name() {
        let key = KeyPair::generate().unwrap();
        let der = challenge_certificate(&identifier("192.0.2.5"), "t.x", &key).unwrap();
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        assert_eq!(
            san.value.general_names,
            vec![GeneralName::IPAddress(&[192, 0, 2, 5])]
        );
        assert_eq!(sni_name(&identifier("192.0.2.5")), "5.2.0.192.in-addr.arpa");
        assert_eq!(
            sni_name(&identifier("2001:db8::1")),
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa"
        );
    }

    #[test]
    fn seeded_challenge_keys_are_deterministic_and_distinct_per_token() {
        let keys = ChallengeKeys::Seeded([7; 32]);
        let cert = CertId::parse("www.example.com").unwrap();
        let a = keys.key_pair(&cert, "tok1").unwrap();
        let again = keys.key_pair(&cert, "tok1").unwrap();
        let b = keys.key_pair(&cert, "tok2").unwrap();
        assert_eq!(a.public_key_raw(), again.public_key_raw());
        assert_ne!(a.public_key_raw(), b.public_key_raw());
        // And rustls can sign with the certificate made from it.
        challenge_certified_key(&identifier("www.example.com"), "tok1.x", &a).unwrap();
    }
}
