//! The IO side: the [`AcmeServer`] on a TCP listener (HTTP/1.1 via hyper), and validations
//! over the network.
//!
//! Runs on real tokio and, through the `madsim-tokio` alias, on madsim: every task is spawned
//! with our `tokio::spawn` and every deadline is our `tokio::time::timeout`, never hyper-util's
//! executor or timer (which bind to the real tokio and panic under madsim). Plain HTTP: the
//! embedded CA listens on loopback (the demo) or the simulated network, and instant-acme takes
//! an `http://` directory through any `HttpClient` (its hyper-util legacy client over an
//! `HttpConnector`, or the simulation's own).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use base64::Engine;
use base64::prelude::BASE64_URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, SubjectPublicKeyInfoDer, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::config::ChallengeKind;
use crate::model::{Identifier, Validation};
use crate::pki::ip_from_bytes;
use crate::rng::sha256;
use crate::server::AcmeServer;

/// The ALPN protocol of TLS-ALPN-01 handshakes (RFC 8737 §6.2).
const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// The id-pe-acmeIdentifier extension (RFC 8737 §6.1).
const ACME_IDENTIFIER_OID: &str = "1.3.6.1.5.5.7.1.31";

/// The longest a client connection lives: instant-acme keeps connections alive between
/// requests; a stalled or forgotten one frees its task after this.
const CONNECTION_MS_MAX: u64 = 60_000;

/// Where the CA reads the time.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The system clock (virtual under madsim, which intercepts `clock_gettime`).
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

impl<F> Clock for F
where
    F: Fn() -> u64 + Send + Sync + 'static,
{
    fn now_ms(&self) -> u64 {
        self()
    }
}

/// Runs one validation; `Err` carries the detail the client will read in the challenge's error.
pub trait Validate: Send + Sync + 'static {
    /// Checks `validation` (RFC 8555 §8). Must end: bound it with a deadline.
    fn validate(&self, validation: &Validation) -> impl Future<Output = Result<(), String>> + Send;
}

/// Where a validation connects: the addresses (with ports) behind an identifier, per challenge
/// type. The demo maps every name to a random node (the load balancer); a real CA would ask DNS
/// and use ports 80 and 443.
pub trait Resolver: Send + Sync + 'static {
    /// The candidates, tried in order until one answers.
    fn resolve(&self, identifier: &Identifier, kind: ChallengeKind) -> Vec<SocketAddr>;
}

impl<F> Resolver for F
where
    F: Fn(&Identifier, ChallengeKind) -> Vec<SocketAddr> + Send + Sync + 'static,
{
    fn resolve(&self, identifier: &Identifier, kind: ChallengeKind) -> Vec<SocketAddr> {
        self(identifier, kind)
    }
}

/// A fixed [`Resolver`]: per identifier value, or `*` for every other name.
#[derive(Clone, Debug, Default)]
pub struct MapResolver {
    entries: BTreeMap<(String, ChallengeKind), Vec<SocketAddr>>,
}

impl MapResolver {
    /// An empty map (every lookup finds nothing).
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Sends `kind` validations of `identifier` (`*`: any) to `addr`.
    #[must_use]
    pub fn with(mut self, identifier: &str, kind: ChallengeKind, addr: SocketAddr) -> Self {
        self.entries
            .entry((identifier.to_owned(), kind))
            .or_default()
            .push(addr);
        self
    }
}

impl Resolver for MapResolver {
    fn resolve(&self, identifier: &Identifier, kind: ChallengeKind) -> Vec<SocketAddr> {
        self.entries
            .get(&(identifier.value(), kind))
            .or_else(|| self.entries.get(&("*".to_owned(), kind)))
            .cloned()
            .unwrap_or_default()
    }
}

/// TXT records for DNS-01: the simulation and the demo provide a map instead of DNS.
pub trait TxtLookup: Send + Sync + 'static {
    /// The TXT values at `name` (`_acme-challenge.<identifier>`).
    fn txt(&self, name: &str) -> Vec<String>;
}

/// A shared, mutable [`TxtLookup`].
#[derive(Clone, Debug, Default)]
pub struct MapTxt(Arc<Mutex<BTreeMap<String, Vec<String>>>>);

impl MapTxt {
    /// An empty zone.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces the TXT values at `name`.
    pub fn set(&self, name: &str, values: Vec<String>) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.to_ascii_lowercase(), values);
    }
}

impl TxtLookup for MapTxt {
    fn txt(&self, name: &str) -> Vec<String> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&name.to_ascii_lowercase())
            .cloned()
            .unwrap_or_default()
    }
}

/// Bounds of [`NetworkValidator`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ValidatorOptions {
    /// Deadline of one attempt (connect, handshake, request, body).
    pub timeout_ms: u64,
    /// Largest HTTP-01 body read.
    pub body_bytes_max: usize,
    /// Attempts per validation, each resolving afresh (multi-perspective validation: in the
    /// demo each may land on another node).
    pub perspectives: u8,
    /// Attempts that must pass.
    pub quorum: u8,
}

impl Default for ValidatorOptions {
    fn default() -> Self {
        Self {
            timeout_ms: 10_000,
            body_bytes_max: 8 * 1024,
            perspectives: 1,
            quorum: 1,
        }
    }
}

/// Validates over the network: HTTP-01 (RFC 8555 §8.3), TLS-ALPN-01 (RFC 8737), and DNS-01
/// (§8.4) through a [`TxtLookup`].
#[derive(Debug)]
pub struct NetworkValidator<R, T> {
    resolver: R,
    txt: T,
    options: ValidatorOptions,
    tls: Arc<ClientConfig>,
}

impl<R: Resolver, T: TxtLookup> NetworkValidator<R, T> {
    /// A validator connecting where `resolver` says, reading TXT records from `txt`.
    pub fn new(resolver: R, txt: T, options: ValidatorOptions) -> Result<Self, rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth();
        // RFC 8737 §3: offer exactly `acme-tls/1`.
        tls.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
        Ok(Self {
            resolver,
            txt,
            options,
            tls: Arc::new(tls),
        })
    }

    async fn attempt(&self, validation: &Validation) -> Result<(), String> {
        if validation.kind == ChallengeKind::Dns01 {
            return self.dns01(validation);
        }
        let candidates = self
            .resolver
            .resolve(&validation.identifier, validation.kind);
        if candidates.is_empty() {
            return Err(format!(
                "no address for {} ({})",
                validation.identifier,
                validation.kind.as_str()
            ));
        }
        let timeout = Duration::from_millis(self.options.timeout_ms);
        let mut failure = String::new();
        for addr in candidates {
            let attempt = async {
                match validation.kind {
                    ChallengeKind::Http01 => self.http01(addr, validation).await,
                    _ => self.tls_alpn01(addr, validation).await,
                }
            };
            match tokio::time::timeout(timeout, attempt).await {
                Ok(Ok(())) => return Ok(()),
                // The peer answered: its answer decides.
                Ok(Err(Failure::Answer(detail))) => return Err(detail),
                Ok(Err(Failure::Connect(detail))) => failure = detail,
                Err(_) => {
                    failure = format!("{addr}: no answer within {} ms", self.options.timeout_ms);
                }
            }
        }
        Err(failure)
    }

    fn dns01(&self, validation: &Validation) -> Result<(), String> {
        let name = format!("_acme-challenge.{}", validation.identifier);
        let expected =
            BASE64_URL_SAFE_NO_PAD.encode(sha256(validation.key_authorization.as_bytes()));
        let records = self.txt.txt(&name);
        if records.contains(&expected) {
            Ok(())
        } else {
            Err(format!(
                "no TXT record at {name} holds the key authorization digest ({} records)",
                records.len()
            ))
        }
    }

    async fn http01(&self, addr: SocketAddr, validation: &Validation) -> Result<(), Failure> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| Failure::Connect(format!("connecting to {addr}: {e}")))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| Failure::Connect(format!("HTTP with {addr}: {e}")))?;
        // Drives the connection; ends when `sender` is dropped.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let host = match &validation.identifier {
            Identifier::Dns(name) => name.clone(),
            Identifier::Ip(IpAddr::V6(ip)) => format!("[{ip}]"),
            Identifier::Ip(ip) => ip.to_string(),
        };
        let request = Request::get(format!("/.well-known/acme-challenge/{}", validation.token))
            .header(header::HOST, host)
            .header(header::USER_AGENT, "certfleet-ca validator")
            .header(header::ACCEPT, "*/*")
            .body(Empty::<Bytes>::new())
            .map_err(|e| Failure::Answer(format!("building the request: {e}")))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| Failure::Connect(format!("HTTP with {addr}: {e}")))?;
        let status = response.status();
        if status != StatusCode::OK {
            return Err(Failure::Answer(format!(
                "{addr} answered {status} for the HTTP-01 token"
            )));
        }
        let body = Limited::new(response.into_body(), self.options.body_bytes_max)
            .collect()
            .await
            .map_err(|e| Failure::Answer(format!("{addr}: reading the body: {e}")))?
            .to_bytes();
        // RFC 8555 §8.3: the body is the key authorization, exactly.
        if body == validation.key_authorization.as_bytes() {
            Ok(())
        } else {
            let shown: String = String::from_utf8_lossy(&body).chars().take(100).collect();
            Err(Failure::Answer(format!(
                "{addr} answered {shown:?}, not the key authorization"
            )))
        }
    }

    async fn tls_alpn01(&self, addr: SocketAddr, validation: &Validation) -> Result<(), Failure> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| Failure::Connect(format!("connecting to {addr}: {e}")))?;
        let sni = sni_name(&validation.identifier);
        let server_name = ServerName::try_from(sni.clone())
            .map_err(|e| Failure::Answer(format!("SNI {sni:?}: {e}")))?;
        let tls = TlsConnector::from(Arc::clone(&self.tls))
            .connect(server_name, stream)
            .await
            .map_err(|e| Failure::Answer(format!("TLS handshake with {addr}: {e}")))?;
        let (_, connection) = tls.get_ref();
        if connection.alpn_protocol() != Some(ACME_TLS_ALPN) {
            return Err(Failure::Answer(format!(
                "{addr} did not negotiate acme-tls/1"
            )));
        }
        let leaf = connection
            .peer_certificates()
            .and_then(<[CertificateDer<'_>]>::first)
            .ok_or_else(|| Failure::Answer(format!("{addr} sent no certificate")))?;
        check_alpn_certificate(leaf, &validation.identifier, &validation.key_authorization)
            .map_err(|detail| Failure::Answer(format!("{addr}: {detail}")))
    }
}

impl<R: Resolver, T: TxtLookup> Validate for NetworkValidator<R, T> {
    async fn validate(&self, validation: &Validation) -> Result<(), String> {
        let perspectives = self.options.perspectives.max(1);
        let quorum = self.options.quorum.clamp(1, perspectives);
        let (mut passed, mut failure) = (0u8, String::new());
        for _ in 0..perspectives {
            match self.attempt(validation).await {
                Ok(()) => passed += 1,
                Err(detail) => failure = detail,
            }
        }
        if passed >= quorum {
            Ok(())
        } else {
            Err(failure)
        }
    }
}

enum Failure {
    /// No answer from this address: try the next one.
    Connect(String),
    /// The address answered wrongly: the validation fails.
    Answer(String),
}

/// RFC 8737 §3: a self-signed certificate, one subjectAltName (the identifier), and a critical
/// acmeIdentifier extension holding the DER OCTET STRING of SHA-256(key authorization).
fn check_alpn_certificate(
    der: &[u8],
    identifier: &Identifier,
    key_authorization: &str,
) -> Result<(), String> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| format!("certificate does not parse: {e}"))?;
    if cert.subject().as_raw() != cert.issuer().as_raw() {
        return Err("the certificate is not self-signed".to_owned());
    }
    cert.verify_signature(None)
        .map_err(|e| format!("the self-signature does not verify: {e}"))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("subjectAltName: {e}"))?
        .ok_or("the certificate has no subjectAltName")?;
    let names = &san.value.general_names;
    let matches = match (names.as_slice(), identifier) {
        ([GeneralName::DNSName(dns)], Identifier::Dns(name)) => dns.eq_ignore_ascii_case(name),
        ([GeneralName::IPAddress(bytes)], Identifier::Ip(ip)) => ip_from_bytes(bytes) == Some(*ip),
        _ => false,
    };
    if !matches {
        return Err(format!(
            "the subjectAltName must be exactly {identifier}, found {} names",
            names.len()
        ));
    }
    let extension = cert
        .extensions()
        .iter()
        .find(|e| e.oid.to_id_string() == ACME_IDENTIFIER_OID)
        .ok_or("the certificate has no acmeIdentifier extension")?;
    if !extension.critical {
        return Err("the acmeIdentifier extension is not critical".to_owned());
    }
    let mut expected = vec![0x04, 0x20];
    expected.extend_from_slice(&sha256(key_authorization.as_bytes()));
    if extension.value != expected.as_slice() {
        return Err("the acmeIdentifier does not hold SHA-256 of the key authorization".to_owned());
    }
    Ok(())
}

/// The SNI of a TLS-ALPN-01 handshake: the DNS name, or for an IP address its reverse-mapping
/// name (RFC 8738 §6).
fn sni_name(identifier: &Identifier) -> String {
    match identifier {
        Identifier::Dns(name) => name.clone(),
        Identifier::Ip(IpAddr::V4(ip)) => {
            let [a, b, c, d] = ip.octets();
            format!("{d}.{c}.{b}.{a}.in-addr.arpa")
        }
        Identifier::Ip(IpAddr::V6(ip)) => {
            let mut name = String::with_capacity(72);
            for byte in ip.octets().iter().rev() {
                name.push_str(&format!("{:x}.{:x}.", byte & 0x0f, byte >> 4));
            }
            name.push_str("ip6.arpa");
            name
        }
    }
}

/// Accepts any certificate chain (TLS-ALPN-01 certificates are self-signed; what they hold is
/// checked after the handshake) but still checks the handshake signatures, so the peer proves
/// it holds the certificate's key. Also what certfleet's TLS probe uses when it only records
/// the chain a node shows.
#[derive(Debug)]
pub struct AnyCertificate(Arc<CryptoProvider>);

impl AnyCertificate {
    /// A verifier checking handshake signatures with `provider`'s algorithms.
    #[must_use]
    pub fn new(provider: Arc<CryptoProvider>) -> Self {
        Self(provider)
    }
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // rustls' TLS 1.2 helper has no raw-key form; the TLS 1.3 one covers the ECDSA, EdDSA
        // and RSA-PSS schemes, and refuses RSA PKCS#1 handshake signatures.
        self.verify_tls13_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // By the raw key: webpki refuses to parse a certificate with a critical extension it
        // does not know, and acmeIdentifier is one.
        let (_, parsed) = X509Certificate::from_der(cert).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
        })?;
        let spki = SubjectPublicKeyInfoDer::from(parsed.public_key().raw.to_vec());
        rustls::crypto::verify_tls13_signature_with_raw_key(
            message,
            &spki,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Serves `server` on `listener` until the future is dropped: one task per connection
/// (HTTP/1.1, keep-alive, each connection bounded in time), one task per validation, run by
/// `validator` and reported back at `clock`'s time.
pub async fn serve<V: Validate, C: Clock>(
    listener: TcpListener,
    server: Arc<Mutex<AcmeServer>>,
    validator: Arc<V>,
    clock: Arc<C>,
) {
    let mut builder = http1::Builder::new();
    // hyper's own header timeout needs hyper's timer, which sleeps on the real tokio (panics
    // under madsim); the per-connection deadline below covers it.
    builder.header_read_timeout(None);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of descriptors or similar: back off instead of spinning.
                tracing::warn!(%error, "certfleet-ca: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (server, validator, clock) = (
            Arc::clone(&server),
            Arc::clone(&validator),
            Arc::clone(&clock),
        );
        let connection =
            builder.serve_connection(
                TokioIo::new(stream),
                service_fn(move |request: Request<Incoming>| {
                    let (server, validator, clock) = (
                        Arc::clone(&server),
                        Arc::clone(&validator),
                        Arc::clone(&clock),
                    );
                    async move {
                        Ok::<_, Infallible>(respond(request, &server, &validator, &clock).await)
                    }
                }),
            );
        tokio::spawn(async move {
            let _ =
                tokio::time::timeout(Duration::from_millis(CONNECTION_MS_MAX), connection).await;
        });
    }
}

async fn respond<V: Validate, C: Clock>(
    request: Request<Incoming>,
    server: &Arc<Mutex<AcmeServer>>,
    validator: &Arc<V>,
    clock: &Arc<C>,
) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let limit = lock(server).config().request_body_bytes_max;
    let body = match Limited::new(body, limit).collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => {
            return lock(server)
                .payload_too_large(clock.now_ms())
                .map(Full::new);
        }
    };
    let (response, validations) = {
        let mut server = lock(server);
        let response = server.handle(Request::from_parts(parts, body), clock.now_ms());
        (response, server.take_validations())
    };
    for validation in validations {
        let (server, validator, clock) =
            (Arc::clone(server), Arc::clone(validator), Arc::clone(clock));
        tokio::spawn(async move {
            let result = validator.validate(&validation).await;
            if let Err(detail) = &result {
                tracing::debug!(id = %validation.id, %detail, "certfleet-ca: validation failed");
            }
            lock(&server).validation_done(validation.id, result, clock.now_ms());
        });
    }
    response.map(Full::new)
}

/// The server never panics while holding the lock, but if something did, the state is still
/// the last consistent one between two calls: keep serving.
fn lock(server: &Mutex<AcmeServer>) -> MutexGuard<'_, AcmeServer> {
    server.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, CustomExtension, KeyPair};

    fn alpn_cert(names: Vec<String>, digest_of: &str, critical: bool) -> Vec<u8> {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names).unwrap();
        let mut extension = CustomExtension::new_acme_identifier(&sha256(digest_of.as_bytes()));
        extension.set_criticality(critical);
        params.custom_extensions = vec![extension];
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn a_proper_tls_alpn_certificate_passes_and_each_defect_fails() {
        let id = Identifier::Dns("a.example.com".into());
        let good = alpn_cert(vec!["a.example.com".into()], "tok.thumb", true);
        check_alpn_certificate(&good, &id, "tok.thumb").unwrap();
        assert!(check_alpn_certificate(&good, &id, "tok.other").is_err());
        let two_names = alpn_cert(
            vec!["a.example.com".into(), "b.example.com".into()],
            "tok.thumb",
            true,
        );
        assert!(check_alpn_certificate(&two_names, &id, "tok.thumb").is_err());
        let not_critical = alpn_cert(vec!["a.example.com".into()], "tok.thumb", false);
        assert!(check_alpn_certificate(&not_critical, &id, "tok.thumb").is_err());
        let other_name = alpn_cert(vec!["b.example.com".into()], "tok.thumb", true);
        assert!(check_alpn_certificate(&other_name, &id, "tok.thumb").is_err());
        let ip = Identifier::Ip("192.0.2.7".parse().unwrap());
        let ip_cert = alpn_cert(vec!["192.0.2.7".into()], "tok.thumb", true);
        check_alpn_certificate(&ip_cert, &ip, "tok.thumb").unwrap();
    }

    #[test]
    fn ip_identifiers_use_reverse_names_as_sni() {
        let v4 = Identifier::Ip("192.0.2.7".parse().unwrap());
        assert_eq!(sni_name(&v4), "7.2.0.192.in-addr.arpa");
    }

    #[test]
    fn dns01_looks_for_the_digest_at_the_challenge_name() {
        let txt = MapTxt::new();
        let validator =
            NetworkValidator::new(MapResolver::new(), txt.clone(), ValidatorOptions::default())
                .unwrap();
        let validation = Validation {
            id: crate::ValidationId(1),
            kind: ChallengeKind::Dns01,
            identifier: Identifier::Dns("example.com".into()),
            token: "tok".into(),
            key_authorization: "tok.thumb".into(),
        };
        assert!(validator.dns01(&validation).is_err());
        txt.set(
            "_acme-challenge.example.com",
            vec![BASE64_URL_SAFE_NO_PAD.encode(sha256(b"tok.thumb"))],
        );
        validator.dns01(&validation).unwrap();
    }
}
