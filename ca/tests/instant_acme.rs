//! instant-acme 0.8.5, the client certfleet uses, against the CA on real tokio: over loopback
//! HTTP with real HTTP-01 and TLS-ALPN-01 validations, and in process (its `HttpClient` trait)
//! for the determinism check. Every certificate chain is verified against `root_pem()` with
//! rustls' webpki verifier.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use certfleet_ca::{
    AcmeServer, CaConfig, CaEvent, ChallengeKind, MapResolver, MapTxt, NetworkValidator,
    ProblemType, RateLimit, SystemClock, ValidatorOptions, serve,
};
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use instant_acme::{
    Account, AuthorizationStatus, BodyWrapper, BytesResponse, CertificateIdentifier, ChallengeType,
    Error, HttpClient, Identifier, NewAccount, NewOrder, Order, OrderStatus,
};
use rcgen::{CertificateParams, CustomExtension, DistinguishedName, KeyPair};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{RootCertStore, ServerConfig};
use tokio::net::TcpListener;
use x509_parser::prelude::{FromDer, X509Certificate};

const BAD_NONCE: &str = "urn:ietf:params:acme:error:badNonce";

/// Tokens to key authorizations, as a node's HTTP-01 responder holds them.
type Tokens = Arc<Mutex<BTreeMap<String, String>>>;

/// A loopback HTTP-01 responder.
async fn http01_responder() -> (SocketAddr, Tokens) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tokens: Tokens = Arc::default();
    let served = Arc::clone(&tokens);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let tokens = Arc::clone(&served);
            tokio::spawn(async move {
                let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let token = request
                        .uri()
                        .path()
                        .strip_prefix("/.well-known/acme-challenge/")
                        .unwrap_or_default()
                        .to_owned();
                    let answer = tokens.lock().unwrap().get(&token).cloned();
                    async move {
                        let mut response = http::Response::new(Full::new(Bytes::from(
                            answer.clone().unwrap_or_default(),
                        )));
                        if answer.is_none() {
                            *response.status_mut() = http::StatusCode::NOT_FOUND;
                        }
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, tokens)
}

/// A loopback TLS-ALPN-01 responder serving one challenge certificate, set once known.
async fn tls_alpn_responder() -> (SocketAddr, Arc<Mutex<Option<Arc<ServerConfig>>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config: Arc<Mutex<Option<Arc<ServerConfig>>>> = Arc::default();
    let served = Arc::clone(&config);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let Some(config) = served.lock().unwrap().clone() else {
                continue;
            };
            tokio::spawn(async move {
                let acceptor = tokio_rustls::TlsAcceptor::from(config);
                if let Ok(mut tls) = acceptor.accept(stream).await {
                    use tokio::io::AsyncWriteExt;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    (addr, config)
}

/// Always the one challenge certificate: `with_single_cert` would refuse it, since webpki does
/// not know the critical acmeIdentifier extension.
#[derive(Debug)]
struct OneCert(Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for OneCert {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }
}

/// The RFC 8737 certificate for `name`, in a rustls config offering only `acme-tls/1`.
fn alpn_config(name: &str, key_authorization_digest: &[u8]) -> Arc<ServerConfig> {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec![name.to_owned()]).unwrap();
    params.custom_extensions = vec![CustomExtension::new_acme_identifier(
        key_authorization_digest,
    )];
    let cert = params.self_signed(&key).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing = rustls::crypto::ring::sign::any_supported_type(&key).unwrap();
    let certified = rustls::sign::CertifiedKey::new(vec![cert.der().clone()], signing);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(OneCert(Arc::new(certified))));
    config.alpn_protocols = vec![b"acme-tls/1".to_vec()];
    Arc::new(config)
}

struct Ca {
    directory: String,
    server: Arc<Mutex<AcmeServer>>,
}

async fn start_ca(configure: impl FnOnce(&mut CaConfig), resolver: MapResolver) -> Ca {
    start_ca_with_txt(configure, resolver, MapTxt::new()).await
}

async fn start_ca_with_txt(
    configure: impl FnOnce(&mut CaConfig),
    resolver: MapResolver,
    txt: MapTxt,
) -> Ca {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let mut config = CaConfig::new(&base);
    config.not_before_backdate_ms = 0;
    configure(&mut config);
    let server = Arc::new(Mutex::new(AcmeServer::new(config, 7).unwrap()));
    let options = ValidatorOptions {
        timeout_ms: 5_000,
        ..ValidatorOptions::default()
    };
    let validator = Arc::new(NetworkValidator::new(resolver, txt, options).unwrap());
    tokio::spawn(serve(
        listener,
        Arc::clone(&server),
        validator,
        Arc::new(SystemClock),
    ));
    let directory = server.lock().unwrap().directory_url();
    Ca { directory, server }
}

fn plain_http() -> HyperClient<HttpConnector, BodyWrapper<Bytes>> {
    HyperClient::builder(TokioExecutor::new()).build(HttpConnector::new())
}

fn is_bad_nonce(error: &Error) -> bool {
    matches!(error, Error::Api(problem) if problem.r#type.as_deref() == Some(BAD_NONCE))
}

/// The error of a call expected to fail (instant-acme's `Order` is not `Debug`).
fn refused<T>(result: Result<T, Error>) -> Error {
    match result {
        Ok(_) => panic!("expected a refusal"),
        Err(error) => error,
    }
}

fn problem_type(error: &Error) -> Option<String> {
    match error {
        Error::Api(problem) => problem.r#type.clone(),
        _ => None,
    }
}

/// Retries `$call` while it fails with badNonce: instant-acme itself retries a POST only three
/// times, so at high injected rates a flow needs the caller's retry too (as certfleet's
/// adapter must have).
macro_rules! retry_bad_nonce {
    ($call:expr) => {{
        let mut attempts = 0;
        loop {
            match $call {
                Err(error) if is_bad_nonce(&error) && attempts < 50 => attempts += 1,
                other => break other,
            }
        }
    }};
}

async fn account(ca: &Ca) -> Account {
    let new_account = NewAccount {
        contact: &[],
        terms_of_service_agreed: true,
        only_return_existing: false,
    };
    let (account, _) = retry_bad_nonce!(
        Account::builder_with_http(Box::new(plain_http()))
            .create(&new_account, ca.directory.clone(), None)
            .await
    )
    .unwrap();
    account
}

/// Polls until the order leaves pending (our own sleeps: DESIGN §5).
async fn settle(order: &mut Order) -> OrderStatus {
    for _ in 0..200 {
        let status = retry_bad_nonce!(order.refresh().await).unwrap().status;
        if status != OrderStatus::Pending && status != OrderStatus::Processing {
            if status == OrderStatus::Invalid {
                eprintln!("order invalid: {:?}", order.state().error);
            }
            return status;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("order did not settle");
}

/// Answers every pending authorization with `kind`, publishing what `publish` is told.
async fn answer_challenges(
    order: &mut Order,
    kind: ChallengeType,
    mut publish: impl FnMut(&str, &str, &str),
) {
    let mut authorizations = order.authorizations();
    while let Some(result) = authorizations.next().await {
        let mut authz = result.unwrap();
        if authz.status != AuthorizationStatus::Pending {
            continue;
        }
        let mut challenge = authz.challenge(kind.clone()).unwrap();
        let identifier = challenge.identifier().to_string();
        let key_authorization = challenge.key_authorization();
        publish(&identifier, &challenge.token, key_authorization.as_str());
        retry_bad_nonce!(challenge.set_ready().await).unwrap();
    }
}

async fn download(order: &mut Order) -> String {
    for _ in 0..200 {
        if let Some(chain) = retry_bad_nonce!(order.certificate().await).unwrap() {
            return chain;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no certificate");
}

/// HTTP-01 issuance of `names` with the responder; returns the PEM chain.
async fn issue_http01(account: &Account, tokens: &Tokens, names: &[&str]) -> String {
    let identifiers: Vec<Identifier> = names.iter().map(|n| Identifier::Dns((*n).into())).collect();
    let mut order =
        retry_bad_nonce!(account.new_order(&NewOrder::new(&identifiers)).await).unwrap();
    answer_challenges(
        &mut order,
        ChallengeType::Http01,
        |_, token, key_authorization| {
            tokens
                .lock()
                .unwrap()
                .insert(token.to_owned(), key_authorization.to_owned());
        },
    )
    .await;
    assert_eq!(settle(&mut order).await, OrderStatus::Ready);
    retry_bad_nonce!(order.finalize().await).unwrap();
    download(&mut order).await
}

fn chain_ders(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

/// rustls' webpki verifier, trusting only the CA's root.
fn verify(server: &AcmeServer, chain: &str, name: &str) -> Result<(), rustls::Error> {
    let root = CertificateDer::from_pem_slice(server.root_pem().as_bytes()).unwrap();
    let mut roots = RootCertStore::empty();
    roots.add(root).unwrap();
    let verifier = WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .unwrap();
    let certs = chain_ders(chain);
    verifier
        .verify_server_cert(
            &certs[0],
            &certs[1..],
            &ServerName::try_from(name.to_owned()).unwrap(),
            &[],
            UnixTime::now(),
        )
        .map(|_| ())
}

#[tokio::test]
async fn http01_issuance_end_to_end_gives_a_chain_webpki_accepts_under_the_root() {
    let (responder, tokens) = http01_responder().await;
    let resolver = MapResolver::new().with("*", ChallengeKind::Http01, responder);
    let ca = start_ca(|_| {}, resolver).await;
    let account = account(&ca).await;
    let chain = issue_http01(&account, &tokens, &["a.example.test", "b.example.test"]).await;
    assert_eq!(chain_ders(&chain).len(), 2, "leaf and intermediate");
    let server = ca.server.lock().unwrap();
    verify(&server, &chain, "a.example.test").unwrap();
    verify(&server, &chain, "b.example.test").unwrap();
    assert!(
        verify(&server, &chain, "c.example.test").is_err(),
        "a name not in the SANs"
    );
    let stats = server.stats();
    assert_eq!(
        (stats.validations_succeeded, stats.certificates_issued),
        (2, 1)
    );
}

#[tokio::test]
async fn tls_alpn01_issuance_end_to_end_checks_the_challenge_certificate() {
    let (responder, config) = tls_alpn_responder().await;
    let resolver = MapResolver::new().with("*", ChallengeKind::TlsAlpn01, responder);
    let ca = start_ca(|_| {}, resolver).await;
    let account = account(&ca).await;
    let identifiers = [Identifier::Dns("alpn.example.test".into())];
    let mut order = account
        .new_order(&NewOrder::new(&identifiers))
        .await
        .unwrap();
    answer_challenges(
        &mut order,
        ChallengeType::TlsAlpn01,
        |identifier, _, key_authorization| {
            let digest = ring::digest::digest(&ring::digest::SHA256, key_authorization.as_bytes());
            *config.lock().unwrap() = Some(alpn_config(identifier, digest.as_ref()));
        },
    )
    .await;
    assert_eq!(settle(&mut order).await, OrderStatus::Ready);
    order.finalize().await.unwrap();
    let chain = download(&mut order).await;
    verify(&ca.server.lock().unwrap(), &chain, "alpn.example.test").unwrap();
}

#[tokio::test]
async fn a_tls_alpn_certificate_for_the_wrong_key_authorization_fails_the_order() {
    let (responder, config) = tls_alpn_responder().await;
    let resolver = MapResolver::new().with("*", ChallengeKind::TlsAlpn01, responder);
    let ca = start_ca(|_| {}, resolver).await;
    let account = account(&ca).await;
    let identifiers = [Identifier::Dns("alpn.example.test".into())];
    let mut order = account
        .new_order(&NewOrder::new(&identifiers))
        .await
        .unwrap();
    answer_challenges(&mut order, ChallengeType::TlsAlpn01, |identifier, _, _| {
        let digest = ring::digest::digest(&ring::digest::SHA256, b"not the key authorization");
        *config.lock().unwrap() = Some(alpn_config(identifier, digest.as_ref()));
    })
    .await;
    assert_eq!(settle(&mut order).await, OrderStatus::Invalid);
}

#[tokio::test]
async fn a_wildcard_is_issued_through_dns01_txt_records() {
    let txt = MapTxt::new();
    let ca = start_ca_with_txt(|_| {}, MapResolver::new(), txt.clone()).await;
    let account = account(&ca).await;
    let identifiers = [Identifier::Dns("*.wild.example.test".into())];
    let mut order = account
        .new_order(&NewOrder::new(&identifiers))
        .await
        .unwrap();
    let mut authorizations = order.authorizations();
    while let Some(result) = authorizations.next().await {
        let mut authz = result.unwrap();
        assert!(authz.wildcard);
        assert!(
            authz
                .challenges
                .iter()
                .all(|c| c.r#type == ChallengeType::Dns01),
            "wildcards: dns-01 only"
        );
        let mut challenge = authz.challenge(ChallengeType::Dns01).unwrap();
        let Identifier::Dns(base) = challenge.identifier().identifier else {
            panic!("a DNS identifier")
        };
        let name = format!("_acme-challenge.{base}");
        txt.set(&name, vec![challenge.key_authorization().dns_value()]);
        challenge.set_ready().await.unwrap();
    }
    assert_eq!(settle(&mut order).await, OrderStatus::Ready);
    order.finalize().await.unwrap();
    let chain = download(&mut order).await;
    verify(
        &ca.server.lock().unwrap(),
        &chain,
        "anything.wild.example.test",
    )
    .unwrap();
}

#[tokio::test]
async fn issuance_completes_with_half_the_nonces_refused() {
    let (responder, tokens) = http01_responder().await;
    let resolver = MapResolver::new().with("*", ChallengeKind::Http01, responder);
    let ca = start_ca(|c| c.faults.bad_nonce_percent = 50, resolver).await;
    let account = account(&ca).await;
    let chain = issue_http01(&account, &tokens, &["nonce.example.test"]).await;
    let server = ca.server.lock().unwrap();
    verify(&server, &chain, "nonce.example.test").unwrap();
    assert!(server.stats().bad_nonces_injected > 0);
}

#[tokio::test]
async fn a_wrong_key_authorization_makes_the_authorization_and_the_order_invalid() {
    let (responder, tokens) = http01_responder().await;
    let resolver = MapResolver::new().with("*", ChallengeKind::Http01, responder);
    let ca = start_ca(|_| {}, resolver).await;
    let account = account(&ca).await;
    let identifiers = [Identifier::Dns("wrong.example.test".into())];
    let mut order = account
        .new_order(&NewOrder::new(&identifiers))
        .await
        .unwrap();
    answer_challenges(
        &mut order,
        ChallengeType::Http01,
        |_, token, key_authorization| {
            tokens
                .lock()
                .unwrap()
                .insert(token.to_owned(), format!("{key_authorization}x"));
        },
    )
    .await;
    assert_eq!(settle(&mut order).await, OrderStatus::Invalid);
    let state = order.refresh().await.unwrap();
    let error = state.error.clone().unwrap();
    assert_eq!(
        error.r#type.as_deref(),
        Some(ProblemType::IncorrectResponse.urn())
    );
    let mut authorizations = order.authorizations();
    let mut authz = authorizations.next().await.unwrap().unwrap();
    assert_eq!(
        authz.refresh().await.unwrap().status,
        AuthorizationStatus::Invalid
    );
}

#[tokio::test]
async fn the_order_rate_limit_answers_429_rate_limited() {
    let ca = start_ca(
        |c| {
            c.limits.orders_per_account = Some(RateLimit {
                count: 1,
                period_ms: 3_600_000,
            })
        },
        MapResolver::new(),
    )
    .await;
    let account = account(&ca).await;
    let identifiers = [Identifier::Dns("limit.example.test".into())];
    account
        .new_order(&NewOrder::new(&identifiers))
        .await
        .unwrap();
    let error = refused(account.new_order(&NewOrder::new(&identifiers)).await);
    let Error::Api(problem) = &error else {
        panic!("{error}")
    };
    assert_eq!(
        problem.r#type.as_deref(),
        Some(ProblemType::RateLimited.urn())
    );
    assert_eq!(problem.status, Some(429));
    let server = ca.server.lock().unwrap();
    assert!(matches!(
        server.events().last(),
        Some(CaEvent::RateLimited {
            retry_after_s: 3600,
            ..
        })
    ));
}

#[tokio::test]
async fn replaces_and_renewal_info_work_through_instant_acme() {
    let (responder, tokens) = http01_responder().await;
    let resolver = MapResolver::new().with("*", ChallengeKind::Http01, responder);
    let ca = start_ca(|_| {}, resolver).await;
    let account = account(&ca).await;
    let chain = issue_http01(&account, &tokens, &["ari.example.test"]).await;
    let leaf = chain_ders(&chain).remove(0);
    let cert_id = CertificateIdentifier::try_from(&leaf).unwrap();

    let (info, retry_after) = account.renewal_info(&cert_id).await.unwrap();
    assert_eq!(retry_after.as_secs().div_ceil(60), 360, "six hours");
    let (_, parsed) = X509Certificate::from_der(&leaf).unwrap();
    let not_before = parsed.validity().not_before.timestamp();
    let not_after = parsed.validity().not_after.timestamp();
    let (start, end) = (
        info.suggested_window.start.unix_timestamp(),
        info.suggested_window.end.unix_timestamp(),
    );
    assert!(not_before < start && start < end && end < not_after);

    let identifiers = [Identifier::Dns("ari.example.test".into())];
    let renewal = NewOrder::new(&identifiers).replaces(cert_id.clone());
    let order = account.new_order(&renewal).await.unwrap();
    let (_, state) = order.into_parts();
    assert_eq!(state.replaces, Some(cert_id.clone()));
    let again = refused(account.new_order(&renewal).await);
    assert_eq!(
        problem_type(&again).as_deref(),
        Some(ProblemType::AlreadyReplaced.urn())
    );
}

#[tokio::test]
async fn profiles_are_offered_checked_and_set_the_lifetime() {
    let (responder, tokens) = http01_responder().await;
    let resolver = MapResolver::new().with("*", ChallengeKind::Http01, responder);
    let ca = start_ca(|_| {}, resolver).await;
    let account = account(&ca).await;
    let mut offered: Vec<String> = account.profiles().map(|p| p.name.to_owned()).collect();
    offered.sort();
    assert_eq!(offered, ["classic", "shortlived"]);
    let identifiers = [Identifier::Dns("short.example.test".into())];
    let error = refused(
        account
            .new_order(&NewOrder::new(&identifiers).profile("forever"))
            .await,
    );
    assert_eq!(
        problem_type(&error).as_deref(),
        Some(ProblemType::InvalidProfile.urn())
    );
    let mut order = account
        .new_order(&NewOrder::new(&identifiers).profile("shortlived"))
        .await
        .unwrap();
    assert_eq!(order.state().profile.as_deref(), Some("shortlived"));
    answer_challenges(
        &mut order,
        ChallengeType::Http01,
        |_, token, key_authorization| {
            tokens
                .lock()
                .unwrap()
                .insert(token.to_owned(), key_authorization.to_owned());
        },
    )
    .await;
    assert_eq!(settle(&mut order).await, OrderStatus::Ready);
    order.finalize().await.unwrap();
    let leaf = chain_ders(&download(&mut order).await).remove(0);
    let (_, parsed) = X509Certificate::from_der(&leaf).unwrap();
    let validity = parsed.validity();
    assert_eq!(
        validity.not_after.timestamp() - validity.not_before.timestamp(),
        160 * 3600
    );
}

#[tokio::test]
async fn a_csr_for_other_names_is_refused_as_bad_csr() {
    let (responder, tokens) = http01_responder().await;
    let resolver = MapResolver::new().with("*", ChallengeKind::Http01, responder);
    let ca = start_ca(|_| {}, resolver).await;
    let account = account(&ca).await;
    let identifiers = [Identifier::Dns("csr.example.test".into())];
    let mut order = account
        .new_order(&NewOrder::new(&identifiers))
        .await
        .unwrap();
    answer_challenges(
        &mut order,
        ChallengeType::Http01,
        |_, token, key_authorization| {
            tokens
                .lock()
                .unwrap()
                .insert(token.to_owned(), key_authorization.to_owned());
        },
    )
    .await;
    assert_eq!(settle(&mut order).await, OrderStatus::Ready);
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(vec!["csr.example.test".into(), "extra.example.test".into()])
            .unwrap();
    params.distinguished_name = DistinguishedName::new();
    let csr = params.serialize_request(&key).unwrap();
    let error = order.finalize_csr(csr.der()).await.unwrap_err();
    assert_eq!(
        problem_type(&error).as_deref(),
        Some(ProblemType::BadCsr.urn())
    );
    // The order is still ready for a correct CSR.
    order.finalize().await.unwrap();
    download(&mut order).await;
}

/// instant-acme's transport into an `AcmeServer` in this process, recording every call so that
/// a second server can be fed exactly the same ones. Validations are answered `Ok` at once:
/// this checks determinism, not validation.
struct InProcess {
    server: Arc<Mutex<AcmeServer>>,
    now_ms: Arc<AtomicU64>,
    transcript: Arc<Mutex<Vec<Call>>>,
}

#[expect(clippy::large_enum_variant, reason = "a short test transcript")]
enum Call {
    Request {
        method: http::Method,
        uri: http::Uri,
        headers: http::HeaderMap,
        body: Bytes,
        now_ms: u64,
        response: String,
    },
    Validated {
        id: certfleet_ca::ValidationId,
        now_ms: u64,
    },
}

fn render(response: &http::Response<Bytes>) -> String {
    format!(
        "{} {:?} {:?}",
        response.status(),
        response.headers(),
        response.body()
    )
}

impl HttpClient for InProcess {
    fn request(
        &self,
        request: http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, Error>> + Send>> {
        let (server, transcript) = (Arc::clone(&self.server), Arc::clone(&self.transcript));
        let now_ms = self.now_ms.fetch_add(1_000, Ordering::SeqCst);
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let Ok(body) = body
                .collect()
                .await
                .map(http_body_util::Collected::to_bytes);
            let (method, uri, headers) = (
                parts.method.clone(),
                parts.uri.clone(),
                parts.headers.clone(),
            );
            let mut server = server.lock().unwrap();
            let response = server.handle(http::Request::from_parts(parts, body.clone()), now_ms);
            let mut transcript = transcript.lock().unwrap();
            transcript.push(Call::Request {
                method,
                uri,
                headers,
                body,
                now_ms,
                response: render(&response),
            });
            for validation in server.take_validations() {
                server.validation_done(validation.id, Ok(()), now_ms);
                transcript.push(Call::Validated {
                    id: validation.id,
                    now_ms,
                });
            }
            Ok(BytesResponse::from(response.map(Full::new)))
        })
    }
}

#[tokio::test]
async fn two_servers_with_the_same_seed_answer_instant_acmes_requests_byte_for_byte() {
    let config = || {
        let mut config = CaConfig::new("http://ca.test");
        config.faults.bad_nonce_percent = 30;
        config.faults.processing_ms_min = 1_000;
        config.faults.processing_ms_max = 4_000;
        config
    };
    let first = Arc::new(Mutex::new(AcmeServer::new(config(), 99).unwrap()));
    let transcript = Arc::new(Mutex::new(Vec::new()));
    let http = InProcess {
        server: Arc::clone(&first),
        now_ms: Arc::new(AtomicU64::new(1_750_000_000_000)),
        transcript: Arc::clone(&transcript),
    };
    let new_account = NewAccount {
        contact: &[],
        terms_of_service_agreed: true,
        only_return_existing: false,
    };
    let (account, _) = retry_bad_nonce!(
        Account::builder_with_http(Box::new(InProcess {
            server: Arc::clone(&http.server),
            now_ms: Arc::clone(&http.now_ms),
            transcript: Arc::clone(&http.transcript),
        }))
        .create(&new_account, "http://ca.test/directory".into(), None)
        .await
    )
    .unwrap();
    for names in [
        &["a.example.test"][..],
        &["b.example.test", "c.example.test"],
    ] {
        let identifiers: Vec<Identifier> =
            names.iter().map(|n| Identifier::Dns((*n).into())).collect();
        let mut order =
            retry_bad_nonce!(account.new_order(&NewOrder::new(&identifiers)).await).unwrap();
        answer_challenges(&mut order, ChallengeType::Http01, |_, _, _| {}).await;
        assert_eq!(settle(&mut order).await, OrderStatus::Ready);
        retry_bad_nonce!(order.finalize().await).unwrap();
        download(&mut order).await;
    }

    let mut second = AcmeServer::new(config(), 99).unwrap();
    assert_eq!(second.root_pem(), first.lock().unwrap().root_pem());
    let transcript = transcript.lock().unwrap();
    assert!(transcript.len() > 20);
    for call in transcript.iter() {
        match call {
            Call::Request {
                method,
                uri,
                headers,
                body,
                now_ms,
                response,
            } => {
                let mut request = http::Request::new(body.clone());
                *request.method_mut() = method.clone();
                *request.uri_mut() = uri.clone();
                *request.headers_mut() = headers.clone();
                assert_eq!(&render(&second.handle(request, *now_ms)), response);
            }
            Call::Validated { id, now_ms } => {
                assert!(second.validation_done(*id, Ok(()), *now_ms));
            }
        }
    }
    let first = first.lock().unwrap();
    assert_eq!(
        format!("{:?}", first.events().collect::<Vec<_>>()),
        format!("{:?}", second.events().collect::<Vec<_>>())
    );
    assert!(first.stats().bad_nonces_injected > 0);
    assert_eq!(first.stats().certificates_issued, 2);
}
