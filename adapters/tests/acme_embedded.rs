//! The ACME adapter against certfleet's own RFC 8555 CA (`certfleet-ca`) on loopback, for what
//! Pebble 2.4 lacks: ARI (`renewalInfo`, `replaces`, recovery from `alreadyReplaced`) and
//! profiles. Validation is real: the CA fetches HTTP-01 answers from a responder in the test.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use certfleet::acme::{AcmeClient, AcmeOptions, Transport};
use certfleet_ca::{
    AcmeServer, CaConfig, CaEvent, ChallengeKind as CaKind, MapTxt, NetworkValidator,
};
use certfleet_core::model::ChallengeKind;
use certfleet_core::order::{Action, OrderStatus, Outcome};
use certfleet_core::{CertId, Cycle};
use support::acme_flow::{
    Issued, authorizations, finalize_and_download, ids, mark_ready, now, perform, sealer, settle,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

type Answers = Arc<Mutex<HashMap<String, String>>>;

/// A minimal HTTP-01 responder: `GET /.well-known/acme-challenge/<token>` from `answers`.
async fn responder(answers: Answers) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let answers = answers.clone();
            tokio::spawn(async move {
                let mut head = vec![0u8; 4096];
                let n = stream.read(&mut head).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&head[..n]).into_owned();
                let token = head
                    .split_whitespace()
                    .nth(1)
                    .and_then(|path| path.strip_prefix("/.well-known/acme-challenge/"))
                    .unwrap_or_default()
                    .to_owned();
                let body = answers.lock().unwrap().get(&token).cloned();
                let response = match body {
                    Some(body) => format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    ),
                    None => {
                        "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                            .to_owned()
                    }
                };
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    addr
}

struct Ca {
    server: Arc<Mutex<AcmeServer>>,
    client: AcmeClient,
    answers: Answers,
}

async fn start() -> Ca {
    let answers: Answers = Arc::default();
    let http01 = responder(answers.clone()).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = AcmeServer::new(CaConfig::new(base).without_limits(), 5).unwrap();
    let directory = server.directory_url();
    let server = Arc::new(Mutex::new(server));
    let resolver = move |_: &certfleet_ca::Identifier, kind: CaKind| match kind {
        CaKind::Http01 => vec![http01],
        _ => vec![],
    };
    let validator = NetworkValidator::new(resolver, MapTxt::new(), Default::default()).unwrap();
    tokio::spawn(certfleet_ca::serve(
        listener,
        server.clone(),
        Arc::new(validator),
        Arc::new(certfleet_ca::SystemClock),
    ));
    let (client, _) = AcmeClient::register(
        Transport::for_directory(&directory, None).unwrap(),
        &directory,
        &["mailto:ops@certfleet.test"],
        None,
        sealer(),
        &AcmeOptions::default(),
        now(),
    )
    .await
    .expect("register at the embedded CA");
    Ca {
        server,
        client,
        answers,
    }
}

impl Ca {
    async fn create_order(
        &self,
        names: &[&str],
        profile: Option<&str>,
        replaces: Option<&str>,
    ) -> Outcome {
        perform(
            &self.client,
            Action::CreateOrder {
                cert: CertId::parse("test").unwrap(),
                cycle: Cycle(1),
                identifiers: ids(names),
                profile: profile.map(Into::into),
                replaces: replaces.map(Into::into),
            },
        )
        .await
    }

    /// One certificate through every action, HTTP-01.
    async fn issue(&self, names: &[&str], profile: Option<&str>, replaces: Option<&str>) -> Issued {
        let Outcome::OrderCreated {
            order_url,
            authorizations: urls,
        } = self.create_order(names, profile, replaces).await
        else {
            panic!("CreateOrder failed");
        };
        let views = authorizations(&self.client, &order_url, &urls).await;
        let mut ready = Vec::new();
        for view in &views {
            let offer = view
                .challenges
                .iter()
                .find(|c| c.kind == ChallengeKind::Http01)
                .unwrap();
            self.answers
                .lock()
                .unwrap()
                .insert(offer.token.clone(), offer.key_authorization.clone());
            ready.push(offer.url.clone());
        }
        mark_ready(&self.client, &order_url, ready).await;
        let view = settle(&self.client, &order_url).await;
        assert_eq!(view.status, OrderStatus::Ready, "{view:?}");
        finalize_and_download(&self.client, &order_url, &ids(names)).await
    }

    /// The `replaces` value of every order the CA created, in order.
    fn replaces_seen(&self) -> Vec<Option<String>> {
        self.server
            .lock()
            .unwrap()
            .events()
            .filter_map(|event| match event {
                CaEvent::OrderCreated { replaces, .. } => Some(replaces.clone()),
                _ => None,
            })
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ari_window_replaces_and_recovery_from_already_replaced() {
    let ca = start().await;
    let issued = ca.issue(&["www.ari.test"], None, None).await;
    let ari_id = issued
        .ari_id
        .clone()
        .expect("the CA's leaves carry an AKI: an ARI id");

    // renewalInfo: a window inside the certificate's lifetime.
    let window = ca
        .client
        .renewal_info(&ari_id, now())
        .await
        .expect("the CA answers renewalInfo");
    assert!(issued.not_before < window.start, "{window:?}");
    assert!(
        window.start < window.end && window.end < issued.not_after,
        "{window:?}"
    );

    // The renewal names the certificate it replaces...
    let renewed = ca.issue(&["www.ari.test"], None, Some(&ari_id)).await;
    // ...and a second renewal of the same certificate (a deposed leader's, say) is refused by
    // the CA with alreadyReplaced; the adapter orders again without `replaces`.
    let again = ca
        .create_order(&["www.ari.test"], None, Some(&ari_id))
        .await;
    assert!(matches!(again, Outcome::OrderCreated { .. }), "{again:?}");
    let seen = ca.replaces_seen();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(seen[0], None);
    assert!(
        seen[1].is_some(),
        "the renewal named the replaced certificate: {seen:?}"
    );
    assert_eq!(seen[2], None, "the retry went without `replaces`: {seen:?}");
    assert_ne!(renewed.leaf_der, issued.leaf_der);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_reaches_the_ca_and_an_unknown_one_is_a_permanent_failure() {
    let ca = start().await;
    let classic = ca
        .issue(&["classic.profile.test"], Some("classic"), None)
        .await;
    let short = ca
        .issue(&["short.profile.test"], Some("shortlived"), None)
        .await;
    let lifetime = |i: &Issued| i.not_after.ms_since(i.not_before);
    assert!(
        lifetime(&short) < lifetime(&classic),
        "shortlived {} ms, classic {} ms",
        lifetime(&short),
        lifetime(&classic)
    );
    let unknown = ca
        .create_order(&["x.profile.test"], Some("nope"), None)
        .await;
    let Outcome::Failed(error) = unknown else {
        panic!("an unknown profile was accepted: {unknown:?}");
    };
    assert_eq!(
        error.problem.as_deref(),
        Some("urn:ietf:params:acme:error:invalidProfile"),
        "{error:?}"
    );
    assert_eq!(
        certfleet_core::order::classify(&error),
        certfleet_core::command::FailureClass::Permanent
    );
}
