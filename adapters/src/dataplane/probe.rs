//! A real TLS client for checking what a node serves: `certfleet demo`'s final check and the
//! integration tests. It completes a rustls handshake with SNI, so the node must hold the key of
//! the certificate it shows (the handshake's signature is verified), and returns the chain.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls13_signature_with_raw_key};
use rustls::pki_types::{CertificateDer, ServerName, SubjectPublicKeyInfoDer, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use thiserror::Error;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Why a probe failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ProbeError {
    /// The name is not one a client can send as SNI.
    #[error("{name:?} is not a valid server name")]
    Name {
        /// The name.
        name: String,
    },
    /// TCP connect failed.
    #[error("connect to {addr}: {source}")]
    Connect {
        /// The node.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The handshake failed (no certificate for the name, a chain that does not verify, a key
    /// that does not match).
    #[error("TLS handshake with {addr} for {name}: {source}")]
    Handshake {
        /// The node.
        addr: SocketAddr,
        /// The SNI name.
        name: String,
        /// rustls' reason.
        source: std::io::Error,
    },
    /// The node took longer than the probe's timeout.
    #[error("{addr} did not complete a handshake for {name} within {timeout:?}")]
    Timeout {
        /// The node.
        addr: SocketAddr,
        /// The SNI name.
        name: String,
        /// The timeout.
        timeout: Duration,
    },
    /// The node completed a handshake without a certificate (cannot happen with rustls).
    #[error("{addr} sent no certificate for {name}")]
    NoCertificate {
        /// The node.
        addr: SocketAddr,
        /// The SNI name.
        name: String,
    },
}

/// How a probe judges the chain it is shown.
#[derive(Clone, Debug)]
pub enum Trust {
    /// Full WebPKI verification against these roots (the CA's root is known: the demo's
    /// embedded CA). The name must be in the leaf and the chain must lead to a root.
    Roots(Arc<RootCertStore>),
    /// The chain is only recorded; the handshake's signature is still verified against the
    /// leaf's public key, so the node proves it holds the key. For CAs whose root the caller
    /// does not have (Pebble issues from a root it generates at start; the caller compares the
    /// chain with what the cluster committed), and for TLS-ALPN-01 certificates, whose critical
    /// `acmeIdentifier` extension WebPKI refuses. TLS 1.3 only: only its signature can be
    /// checked against a bare key.
    Record,
}

/// Connects to `addr`, sends `name` as SNI, completes the handshake under `trust` and returns
/// the chain the node showed (leaf first).
pub async fn probe(
    addr: SocketAddr,
    name: &str,
    trust: &Trust,
    timeout: Duration,
) -> Result<Vec<CertificateDer<'static>>, ProbeError> {
    probe_alpn(addr, name, trust, &[b"http/1.1"], timeout).await
}

/// [`probe`] offering the ALPN protocols `alpn` (`acme-tls/1` alone is what a CA's TLS-ALPN-01
/// validation offers).
pub async fn probe_alpn(
    addr: SocketAddr,
    name: &str,
    trust: &Trust,
    alpn: &[&[u8]],
    timeout: Duration,
) -> Result<Vec<CertificateDer<'static>>, ProbeError> {
    let server_name = ServerName::try_from(name.to_owned()).map_err(|_| ProbeError::Name {
        name: name.to_owned(),
    })?;
    let connector = TlsConnector::from(client_config(trust, alpn));
    let handshake = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|source| ProbeError::Connect { addr, source })?;
        let mut tls = connector
            .connect(server_name, tcp)
            .await
            .map_err(|source| ProbeError::Handshake {
                addr,
                name: name.to_owned(),
                source,
            })?;
        let chain = tls
            .get_ref()
            .1
            .peer_certificates()
            .map(|certs| certs.iter().map(|c| c.clone().into_owned()).collect());
        let _ = tls.shutdown().await;
        chain.ok_or_else(|| ProbeError::NoCertificate {
            addr,
            name: name.to_owned(),
        })
    };
    tokio::time::timeout(timeout, handshake)
        .await
        .map_err(|_| ProbeError::Timeout {
            addr,
            name: name.to_owned(),
            timeout,
        })?
}

fn client_config(trust: &Trust, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = match trust {
        Trust::Roots(_) => rustls::DEFAULT_VERSIONS,
        Trust::Record => &[&rustls::version::TLS13],
    };
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        // Fails only for a provider without a suite for these versions; ring's has both.
        .expect("ring's default provider supports TLS 1.2 and 1.3");
    let config = match trust {
        Trust::Roots(roots) => builder.with_root_certificates(roots.clone()),
        Trust::Record => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(RecordOnly(provider))),
    };
    let mut config = config.with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// Accepts any chain but verifies the handshake signature with the leaf's key.
#[derive(Debug)]
struct RecordOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for RecordOnly {
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
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Never offered (TLS 1.3 only, see `Trust::Record`).
        Err(rustls::Error::General("TLS 1.2 is not offered".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // The key straight from the certificate, without WebPKI's judgement of the rest of it.
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
        })?;
        let spki = SubjectPublicKeyInfoDer::from(parsed.public_key().raw);
        verify_tls13_signature_with_raw_key(
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
