//! The ACME adapter against a real Pebble with real validation: the core's actions, performed
//! one at a time as the order driver sends them, issue certificates over HTTP-01 and
//! TLS-ALPN-01; a second client built from the same credentials (a new leader) resumes an
//! order by URL; CA refusals arrive as problems with status; rejected nonces surface as
//! `badNonce`. The answers come from pebble-challtestsrv.

mod support;

use std::sync::Arc;

use certfleet::acme::dns01::SolverFuture;
use certfleet::acme::{AcmeClient, AcmeOptions, Dns01Solver, Eab, Transport};
use certfleet_core::command::FailureClass;
use certfleet_core::model::ChallengeKind;
use certfleet_core::name::Identifier;
use certfleet_core::order::{
    Action, AuthzStatus, AuthzView, CaError, OrderStatus, Outcome, classify,
};
use rcgen::PublicKeyData as _;
use support::acme_flow::{
    Issued, authorizations, create_order, finalize_and_download, ids, mark_ready, now, perform,
    prepare_key, sealer, settle,
};
use support::pebble::{Pebble, PebbleOptions};
use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension, X509Certificate};

fn transport(pebble: &Pebble) -> Transport {
    Transport::Https {
        root_pem: Some(pebble.root_pem().to_vec()),
    }
}

async fn register(pebble: &Pebble) -> (AcmeClient, String) {
    let (client, credentials) = AcmeClient::register(
        transport(pebble),
        pebble.directory_url(),
        &["mailto:ops@certfleet.test"],
        None,
        sealer(),
        &AcmeOptions::default(),
        now(),
    )
    .await
    .expect("register an account at pebble");
    (client, credentials.to_string())
}

/// Publishes the answer of `kind` for every authorization at challtestsrv (with the key
/// authorization the adapter computed, or `wrong` instead) and returns the challenge URLs.
fn publish(
    pebble: &Pebble,
    views: &[AuthzView],
    kind: ChallengeKind,
    wrong: Option<&str>,
) -> Vec<String> {
    views
        .iter()
        .map(|view| {
            assert_eq!(view.status, AuthzStatus::Pending);
            let offer = view
                .challenges
                .iter()
                .find(|c| c.kind == kind)
                .unwrap_or_else(|| panic!("pebble offers no {kind} for {}", view.identifier));
            let answer = wrong.unwrap_or(&offer.key_authorization);
            match kind {
                ChallengeKind::Http01 => pebble.add_http01(&offer.token, answer),
                ChallengeKind::TlsAlpn01 => pebble.add_tlsalpn01(&view.identifier.value(), answer),
                ChallengeKind::Dns01 => {} // published by the adapter's DNS-01 solver
            }
            offer.url.clone()
        })
        .collect()
}

/// The whole sequence the order driver sends for one certificate.
async fn issue(
    pebble: &Pebble,
    client: &AcmeClient,
    names: &[&str],
    kind: ChallengeKind,
) -> Issued {
    let identifiers = ids(names);
    // Pebble has no ARI: a `replaces` must not keep the order from being created.
    let (order_url, authz_urls) = create_order(client, &identifiers, Some("AAAA.BBBB")).await;
    let views = authorizations(client, &order_url, &authz_urls).await;
    let challenge_urls = publish(pebble, &views, kind, None);
    mark_ready(client, &order_url, challenge_urls).await;
    let view = settle(client, &order_url).await;
    assert_eq!(view.status, OrderStatus::Ready, "{view:?}");
    finalize_and_download(client, &order_url, &identifiers).await
}

/// The leaf names exactly `identifiers`, carries the committed key, and was signed by the
/// first certificate of the chain, whose key id is the first half of the ARI id.
fn check_certificate(issued: &Issued, identifiers: &[Identifier]) {
    let (_, leaf) = X509Certificate::from_der(&issued.leaf_der).unwrap();
    let mut names: Vec<String> = leaf
        .subject_alternative_name()
        .unwrap()
        .expect("the leaf has SANs")
        .value
        .general_names
        .iter()
        .map(|name| match name {
            GeneralName::DNSName(dns) => (*dns).to_owned(),
            GeneralName::IPAddress(bytes) => {
                let octets: [u8; 4] = (*bytes).try_into().expect("IPv4 in these tests");
                std::net::Ipv4Addr::from(octets).to_string()
            }
            other => panic!("unexpected SAN {other:?}"),
        })
        .collect();
    names.sort();
    let mut expected: Vec<String> = identifiers.iter().map(Identifier::value).collect();
    expected.sort();
    assert_eq!(names, expected);

    // The certificate is for the key the cluster committed (KeyPrepared), not another.
    let der = sealer().open(&issued.key).unwrap();
    let key = rcgen::KeyPair::try_from(der.as_slice()).unwrap();
    assert_eq!(
        leaf.public_key().raw,
        key.subject_public_key_info().as_slice()
    );

    assert!(
        !issued.chain_der.is_empty(),
        "pebble sends at least one intermediate"
    );
    let (_, issuer) = X509Certificate::from_der(&issued.chain_der[0]).unwrap();
    assert_eq!(leaf.issuer(), issuer.subject());
    let aki = leaf
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => aki.key_identifier.clone(),
            _ => None,
        })
        .expect("pebble's leaves have an AKI");
    let ski = issuer
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(ski) => Some(ski.clone()),
            _ => None,
        })
        .expect("pebble's intermediate has an SKI");
    assert_eq!(aki.0, ski.0);
    let ari_id = issued
        .ari_id
        .as_deref()
        .expect("an ARI id from the AKI and serial");
    assert!(
        ari_id
            .split_once('.')
            .is_some_and(|(a, s)| !a.is_empty() && !s.is_empty())
    );

    assert_eq!(
        issued.not_before.0 / 1000,
        u64::try_from(leaf.validity().not_before.timestamp()).unwrap()
    );
    assert_eq!(
        issued.not_after.0 / 1000,
        u64::try_from(leaf.validity().not_after.timestamp()).unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http01_issuance_through_the_driver_actions_names_every_identifier() {
    let Some(pebble) = Pebble::start_or_skip(PebbleOptions::default()) else {
        return;
    };
    let (client, _) = register(&pebble).await;
    let names = [
        "www.http01.certfleet.test",
        "http01.certfleet.test",
        "127.0.0.1",
    ];
    let issued = issue(&pebble, &client, &names, ChallengeKind::Http01).await;
    check_certificate(&issued, &ids(&names));
    assert_eq!(pebble.orders_created(), 1);
    // Pebble 2.4 has no ARI: no window, and no error either.
    let ari_id = issued.ari_id.clone().unwrap();
    assert_eq!(client.renewal_info(&ari_id, now()).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn01_issuance_through_the_driver_actions_names_every_identifier() {
    let Some(pebble) = Pebble::start_or_skip(PebbleOptions::default()) else {
        return;
    };
    let (client, _) = register(&pebble).await;
    let names = ["alpn.certfleet.test", "www.alpn.certfleet.test"];
    let issued = issue(&pebble, &client, &names, ChallengeKind::TlsAlpn01).await;
    check_certificate(&issued, &ids(&names));
    assert_eq!(pebble.orders_created(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_resumes_the_order_by_url_with_the_same_account() {
    let Some(pebble) = Pebble::start_or_skip(PebbleOptions::default()) else {
        return;
    };
    let identifiers = ids(&["resume.certfleet.test"]);
    let (first, credentials) = register(&pebble).await;
    let (order_url, authz_urls) = create_order(&first, &identifiers, None).await;
    let seen_by_first = authorizations(&first, &order_url, &authz_urls).await;
    drop(first); // the leader is gone; the log holds the order URL and the credentials

    let second = AcmeClient::from_credentials(
        transport(&pebble),
        &credentials,
        sealer(),
        &AcmeOptions::default(),
        now(),
    )
    .await
    .unwrap();
    let views = authorizations(&second, &order_url, &authz_urls).await;
    // Same account, so the same key authorizations: published answers stay right. (Pebble
    // lists an authorization's challenges in a new order on every fetch.)
    let sorted = |mut views: Vec<AuthzView>| {
        for view in &mut views {
            view.challenges.sort_by(|a, b| a.url.cmp(&b.url));
        }
        views
    };
    assert_eq!(sorted(views.clone()), sorted(seen_by_first));
    let challenge_urls = publish(&pebble, &views, ChallengeKind::Http01, None);
    mark_ready(&second, &order_url, challenge_urls).await;
    assert_eq!(settle(&second, &order_url).await.status, OrderStatus::Ready);
    let issued = finalize_and_download(&second, &order_url, &identifiers).await;
    check_certificate(&issued, &identifiers);
    assert_eq!(pebble.orders_created(), 1, "resumed, not ordered again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_authorization_leaves_the_order_invalid_with_the_problem() {
    let Some(pebble) = Pebble::start_or_skip(PebbleOptions::default()) else {
        return;
    };
    let (client, _) = register(&pebble).await;
    let (order_url, authz_urls) =
        create_order(&client, &ids(&["wrong.certfleet.test"]), None).await;
    let views = authorizations(&client, &order_url, &authz_urls).await;
    let challenge_urls = publish(
        &pebble,
        &views,
        ChallengeKind::Http01,
        Some("not.the-key-authorization"),
    );
    mark_ready(&client, &order_url, challenge_urls).await;
    let view = settle(&client, &order_url).await;
    assert_eq!(view.status, OrderStatus::Invalid, "{view:?}");
    let error = view.error.expect("an invalid order says why");
    eprintln!("invalid order: {error}");
    assert!(
        error.contains("unauthorized") || error.contains("incorrectResponse"),
        "{error}"
    );
    let views = authorizations(&client, &order_url, &authz_urls).await;
    assert_eq!(views[0].status, AuthzStatus::Invalid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finalize_before_ready_is_refused_with_its_problem_and_status() {
    let Some(pebble) = Pebble::start_or_skip(PebbleOptions::default()) else {
        return;
    };
    let (client, _) = register(&pebble).await;
    let identifiers = ids(&["early.certfleet.test"]);
    let (order_url, _) = create_order(&client, &identifiers, None).await;
    let key = prepare_key(&client).await;
    let outcome = perform(
        &client,
        Action::Finalize {
            order_url: order_url.clone(),
            key,
            identifiers,
        },
    )
    .await;
    let Outcome::Failed(error) = outcome else {
        panic!("Finalize of a pending order: {outcome:?}");
    };
    assert_eq!(
        error.problem.as_deref(),
        Some("urn:ietf:params:acme:error:orderNotReady"),
        "{error:?}"
    );
    assert_eq!(error.status, Some(403));
    assert!(!error.account_wide);
    assert_eq!(classify(&error), FailureClass::Permanent);

    // With the CA gone, the same client reports a transport error naming the URL.
    drop(pebble);
    let outcome = perform(
        &client,
        Action::FetchOrder {
            order_url: order_url.clone(),
        },
    )
    .await;
    let Outcome::Failed(CaError {
        status: None,
        problem: None,
        detail,
        ..
    }) = &outcome
    else {
        panic!("FetchOrder with pebble gone: {outcome:?}");
    };
    assert!(detail.contains("https://localhost:"), "{detail}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_nonces_surface_as_bad_nonce_which_the_core_retries() {
    let options = PebbleOptions {
        nonce_reject_percent: 100,
        ..PebbleOptions::default()
    };
    let Some(pebble) = Pebble::start_or_skip(options) else {
        return;
    };
    // instant-acme retries a rejected nonce twice with the fresh one each rejection carries;
    // when every nonce is refused, the third refusal reaches us as the CA's problem.
    let error = AcmeClient::register(
        transport(&pebble),
        pebble.directory_url(),
        &[],
        None,
        sealer(),
        &AcmeOptions::default(),
        now(),
    )
    .await
    .unwrap_err();
    let error = error.ca().expect("a CA error").clone();
    assert_eq!(
        error.problem.as_deref(),
        Some("urn:ietf:params:acme:error:badNonce"),
        "{error:?}"
    );
    assert_eq!(error.status, Some(400));
    assert_eq!(classify(&error), FailureClass::Retryable);
}

/// A DNS-01 solver publishing in challtestsrv's DNS, which is Pebble's resolver.
struct ChallTestSrvDns {
    pebble: Arc<Pebble>,
    calls: std::sync::Mutex<Vec<String>>,
}

impl Dns01Solver for ChallTestSrvDns {
    fn present<'a>(&'a self, name: &'a str, value: &'a str) -> SolverFuture<'a> {
        self.pebble.set_txt(name, value);
        self.calls.lock().unwrap().push(format!("present {name}"));
        Box::pin(async { Ok(()) })
    }

    fn cleanup<'a>(&'a self, name: &'a str, _value: &'a str) -> SolverFuture<'a> {
        self.calls.lock().unwrap().push(format!("cleanup {name}"));
        Box::pin(async { Ok(()) })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns01_issuance_for_a_wildcard_publishes_through_the_solver_and_cleans_up() {
    let Some(pebble) = Pebble::start_or_skip(PebbleOptions::default()) else {
        return;
    };
    let pebble = Arc::new(pebble);
    let solver = Arc::new(ChallTestSrvDns {
        pebble: Arc::clone(&pebble),
        calls: std::sync::Mutex::new(Vec::new()),
    });
    let (client, _) = register(&pebble).await;
    let client = client.with_dns01(Arc::clone(&solver) as Arc<dyn Dns01Solver>);
    let names = ["*.wild.certfleet.test"];
    let issued = issue(&pebble, &client, &names, ChallengeKind::Dns01).await;
    check_certificate(&issued, &ids(&names));
    // Published before the CA was told (else validation fails), removed once the order left
    // `pending`.
    assert_eq!(
        *solver.calls.lock().unwrap(),
        [
            "present _acme-challenge.wild.certfleet.test",
            "cleanup _acme-challenge.wild.certfleet.test"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_account_binding_is_sent_when_the_ca_requires_it() {
    // Pebble's example key: base64url text, the raw HMAC key is what it decodes to.
    let kid = "kid-1";
    let key_text = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W";
    let Some(pebble) = Pebble::start_or_skip(PebbleOptions {
        eab: Some((kid.to_owned(), key_text.to_owned())),
        ..PebbleOptions::default()
    }) else {
        return;
    };
    let register = |eab: Option<Eab>| {
        let pebble = &pebble;
        async move {
            AcmeClient::register(
                transport(pebble),
                pebble.directory_url(),
                &["mailto:ops@certfleet.test"],
                eab.as_ref(),
                sealer(),
                &AcmeOptions::default(),
                now(),
            )
            .await
        }
    };
    let refused = register(None).await.map(|_| ()).unwrap_err();
    assert!(
        refused.to_string().contains("externalAccountRequired"),
        "{refused}"
    );
    let decoded =
        base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, key_text)
            .unwrap();
    let wrong = Eab {
        kid: kid.to_owned(),
        hmac_key: vec![0; decoded.len()].into(),
    };
    let refused = register(Some(wrong)).await.map(|_| ()).unwrap_err();
    assert!(refused.to_string().contains("unauthorized"), "{refused}");
    let right = Eab {
        kid: kid.to_owned(),
        hmac_key: decoded.into(),
    };
    let (client, credentials) = register(Some(right)).await.expect("bound account");
    assert!(!client.account_url().is_empty());
    assert!(!credentials.to_string().is_empty());
}
