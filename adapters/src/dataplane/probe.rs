//! A real TLS client for checking what a node serves: `certfleet demo`'s final check and the
//! integration tests. It completes a rustls handshake with SNI, so the node must hold the key of
//! the certificate it shows (the handshake's signature is verified), and returns the chain.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use certfleet_ca::AnyCertificate;
use certfleet_core::{CertId, State};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
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
    /// `acmeIdentifier` extension WebPKI refuses (the check is the CA crate's validator's,
    /// [`AnyCertificate`]).
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

/// The chain `cert` has committed in `state`, leaf first: what every node must show for it.
#[must_use]
pub fn committed_chain(state: &State, cert: &CertId) -> Option<Vec<Vec<u8>>> {
    let current = state.cert(cert)?.current.as_ref()?;
    let mut ders = vec![current.leaf_der.clone()];
    ders.extend(state.chain(&current.chain)?.iter().cloned());
    Some(ders)
}

/// Probes `addr` for `name` and compares the chain shown with `committed` (leaf first, from
/// [`committed_chain`]); the reason, if it is not the same.
pub async fn shows_committed(
    addr: SocketAddr,
    name: &str,
    trust: &Trust,
    committed: Option<&[Vec<u8>]>,
    timeout: Duration,
) -> Result<(), String> {
    let shown = probe(addr, name, trust, timeout)
        .await
        .map_err(|error| error.to_string())?;
    let committed = committed.ok_or("a certificate the node has not committed")?;
    let shown: Vec<&[u8]> = shown.iter().map(|c| c.as_ref()).collect();
    let committed: Vec<&[u8]> = committed.iter().map(Vec::as_slice).collect();
    if shown == committed {
        Ok(())
    } else {
        Err(format!(
            "{addr} shows a chain for {name} other than the committed one"
        ))
    }
}

fn client_config(trust: &Trust, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        // Fails only for a provider without a suite for TLS 1.2 or 1.3; ring's has both.
        .expect("ring's default provider supports TLS 1.2 and 1.3");
    let config = match trust {
        Trust::Roots(roots) => builder.with_root_certificates(roots.clone()),
        Trust::Record => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate::new(provider))),
    };
    let mut config = config.with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}
