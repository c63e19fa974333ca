//! The data plane's servers on real sockets: TLS handshakes by SNI (exact, wildcard, none),
//! TLS-ALPN-01 answered only to `acme-tls/1`, and HTTP-01 over TCP.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use certfleet_core::model::{Challenge, ChallengeKind};
use certfleet_core::name::Identifier;
use certfleet_core::{CertId, UnixMillis};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::probe::{self, ProbeError, Trust};
use super::{
    ChallengeKeys, ChallengeTable, ConnectionLimits, Dataplane, ServedChallenge, alpn, http01,
};
use crate::seal::{DataKey, Nonces};

const TIMEOUT: Duration = Duration::from_secs(5);

fn served(cert: &str, names: &[&str]) -> Arc<super::ServedCert> {
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
            .unwrap();
    let leaf = params.self_signed(&key).unwrap();
    let data_key = DataKey::new([1; 4], &[1; 32]);
    let sealed = data_key.seal(&key.serialize_der(), Nonces::new(1).next());
    Arc::new(
        super::build_served(
            &CertId::parse(cert).unwrap(),
            leaf.der().to_vec(),
            Some(vec![]),
            sealed,
            UnixMillis(1),
            &data_key,
        )
        .unwrap(),
    )
}

fn challenge(name: &str, kind: ChallengeKind, token: &str) -> Challenge {
    Challenge {
        identifier: Identifier::parse(name).unwrap(),
        kind,
        token: token.to_owned(),
        key_authorization: format!("{token}.thumbprint"),
        url: format!("https://ca.test/chall/{token}"),
    }
}

/// A data plane serving `certs` and `challenges`, with its TLS and HTTP-01 servers on loopback.
async fn serving(
    certs: &[Arc<super::ServedCert>],
    challenges: &[(&str, Challenge)],
) -> (Arc<Dataplane>, SocketAddr, SocketAddr) {
    let dataplane = Arc::new(Dataplane::new(ChallengeKeys::Generate));
    let mut table = super::CertTable::default();
    for cert in certs {
        table.insert(cert.clone());
    }
    dataplane.certs.store(Arc::new(table));
    let mut table = ChallengeTable::default();
    for (cert, challenge) in challenges {
        let cert = CertId::parse(cert).unwrap();
        let built = dataplane
            .build_challenge(&cert, challenge.clone())
            .unwrap()
            .unwrap();
        table.insert(Arc::new(ServedChallenge { ..built }));
    }
    dataplane.challenges.store(Arc::new(table));
    let tls = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (tls_addr, http_addr) = (tls.local_addr().unwrap(), http.local_addr().unwrap());
    tokio::spawn(alpn::serve_tls(
        tls,
        dataplane.clone(),
        ConnectionLimits::default(),
    ));
    tokio::spawn(http01::serve_http01(
        http,
        dataplane.clone(),
        ConnectionLimits::default(),
    ));
    (dataplane, tls_addr, http_addr)
}

#[tokio::test]
async fn a_handshake_gets_the_certificate_for_its_sni_exact_before_wildcard() {
    let exact = served("exact", &["a.example.com"]);
    let wild = served("wild", &["*.example.com"]);
    let (_, tls, _) = serving(&[exact.clone(), wild.clone()], &[]).await;
    for (name, want) in [
        ("a.example.com", &exact),
        ("b.example.com", &wild),
        ("B.EXAMPLE.COM", &wild),
    ] {
        let chain = probe::probe(tls, name, &Trust::Record, TIMEOUT)
            .await
            .unwrap();
        assert_eq!(chain[0].as_ref(), want.leaf_der(), "{name}");
    }
    // No certificate covers it: the handshake fails rather than showing another's names.
    for name in ["example.com", "x.a.example.com", "other.test"] {
        let refused = probe::probe(tls, name, &Trust::Record, TIMEOUT).await;
        assert!(
            matches!(refused, Err(ProbeError::Handshake { .. })),
            "{name}: {refused:?}"
        );
    }
}

#[tokio::test]
async fn tls_alpn_01_is_answered_only_to_acme_tls_and_only_with_the_challenge_certificate() {
    let real = served("real", &["www.example.com"]);
    let published = challenge("www.example.com", ChallengeKind::TlsAlpn01, "tok1");
    let (_, tls, _) = serving(std::slice::from_ref(&real), &[("real", published.clone())]).await;
    let validation = probe::probe_alpn(
        tls,
        "www.example.com",
        &Trust::Record,
        &[alpn::ACME_TLS_ALPN],
        TIMEOUT,
    )
    .await
    .unwrap();
    assert_eq!(
        validation.len(),
        1,
        "a self-signed challenge certificate alone"
    );
    let (_, cert) = X509Certificate::from_der(validation[0].as_ref()).unwrap();
    let digest = <sha2::Sha256 as sha2::Digest>::digest(published.key_authorization.as_bytes());
    let oid = x509_parser::der_parser::oid!(1.3.6.1.5.5.7.1.31);
    let extension = cert.extensions().iter().find(|e| e.oid == oid).unwrap();
    assert_eq!(&extension.value[2..], digest.as_slice());
    // A normal client gets the real certificate for the same name.
    let normal = probe::probe(tls, "www.example.com", &Trust::Record, TIMEOUT)
        .await
        .unwrap();
    assert_eq!(normal[0].as_ref(), real.leaf_der());
    // A validation for a name with no challenge published gets nothing, not the real one.
    let (_, tls, _) = serving(&[real], &[]).await;
    let refused = probe::probe_alpn(
        tls,
        "www.example.com",
        &Trust::Record,
        &[alpn::ACME_TLS_ALPN],
        TIMEOUT,
    )
    .await;
    assert!(
        matches!(refused, Err(ProbeError::Handshake { .. })),
        "{refused:?}"
    );
}

async fn http_get(addr: SocketAddr, path: &str, host: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(TIMEOUT, stream.read_to_string(&mut response))
        .await
        .unwrap()
        .unwrap();
    response
}

#[tokio::test]
async fn http_01_answers_published_tokens_over_tcp_and_redirects_the_rest() {
    let published = challenge("www.example.com", ChallengeKind::Http01, "tok-A_1");
    let (_, _, http) = serving(&[], &[("c", published)]).await;
    let answer = http_get(
        http,
        "/.well-known/acme-challenge/tok-A_1",
        "www.example.com",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("\r\n\r\ntok-A_1.thumbprint"), "{answer}");
    let missing = http_get(http, "/.well-known/acme-challenge/nope", "www.example.com").await;
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
    let other = http_get(http, "/login?x=1", "www.example.com").await;
    assert!(other.starts_with("HTTP/1.1 308"), "{other}");
    assert!(
        other
            .to_ascii_lowercase()
            .contains("location: https://www.example.com/login?x=1"),
        "{other}"
    );
}

#[tokio::test]
async fn a_slow_client_is_cut_off_and_does_not_block_others() {
    let published = challenge("www.example.com", ChallengeKind::Http01, "t");
    let dataplane = Arc::new(Dataplane::new(ChallengeKeys::Generate));
    let mut table = ChallengeTable::default();
    let cert = CertId::parse("c").unwrap();
    table.insert(Arc::new(
        dataplane
            .build_challenge(&cert, published)
            .unwrap()
            .unwrap(),
    ));
    dataplane.challenges.store(Arc::new(table));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let limits = ConnectionLimits {
        timeout_ms: 300,
        connections_max: 2,
    };
    tokio::spawn(http01::serve_http01(listener, dataplane, limits));
    // Two connections that never send a byte take both slots...
    let _a = TcpStream::connect(addr).await.unwrap();
    let _b = TcpStream::connect(addr).await.unwrap();
    // ...until their deadline; then a real request is answered.
    let started = tokio::time::Instant::now();
    let answer = http_get(addr, "/.well-known/acme-challenge/t", "www.example.com").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(3));
}
