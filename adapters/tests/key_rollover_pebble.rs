//! Account key rollover (RFC 8555 §7.3.5) against a real Pebble: the adapter rolls the account
//! to a key made (and, in the node, replicated) beforehand; the new credentials then issue a
//! certificate end to end over HTTP-01 while Pebble refuses the old ones; asking again after
//! the CA switched is `Rolled` (a crash after the CA acted); a key another account holds, or
//! an old key the account no longer has, is `Refused` with what Pebble said; a CA that cannot
//! be reached is an error, never a refusal.

mod support;

use certfleet::acme::{
    AcmeClient, AcmeError, AcmeOptions, KeyChangeOutcome, Transport, credentials_with_new_key,
    key_thumbprint, roll_account_key,
};
use certfleet_core::command::FailureClass;
use certfleet_core::model::ChallengeKind;
use certfleet_core::order::{Action, AuthzStatus, CaError, OrderStatus, Outcome, classify};
use certfleet_core::{CertId, Cycle};
use support::acme_flow::{
    authorizations, create_order, finalize_and_download, ids, mark_ready, now, perform, sealer,
    settle,
};
use support::pebble::{Pebble, PebbleOptions};
use x509_parser::prelude::{FromDer, X509Certificate};

fn transport(pebble: &Pebble) -> Transport {
    Transport::Https {
        root_pem: Some(pebble.root_pem().to_vec()),
    }
}

/// A new account at Pebble, as its credentials JSON.
async fn register(pebble: &Pebble) -> String {
    let (_, credentials) = AcmeClient::register(
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
    credentials.to_string()
}

async fn client(pebble: &Pebble, credentials: &str) -> AcmeClient {
    AcmeClient::from_credentials(
        transport(pebble),
        credentials,
        sealer(),
        &AcmeOptions::default(),
        now(),
    )
    .await
    .expect("restore the account from its credentials")
}

async fn roll(pebble: &Pebble, old: &str, new: &str) -> Result<KeyChangeOutcome, AcmeError> {
    roll_account_key(transport(pebble), old, new, &AcmeOptions::default(), now()).await
}

/// `credentials` with the key of `key_of` (another account's key, for the same account).
fn with_key_of(credentials: &str, key_of: &str) -> String {
    let mut credentials: serde_json::Value = serde_json::from_str(credentials).unwrap();
    let key_of: serde_json::Value = serde_json::from_str(key_of).unwrap();
    credentials["key_pkcs8"] = key_of["key_pkcs8"].clone();
    credentials.to_string()
}

fn account_url(credentials: &str) -> String {
    let credentials: serde_json::Value = serde_json::from_str(credentials).unwrap();
    credentials["id"].as_str().unwrap().to_owned()
}

/// keyChange requests Pebble has handled (its log line per request names the path).
fn key_changes(pebble: &Pebble) -> usize {
    pebble
        .log()
        .lines()
        .filter(|line| line.contains("POST /rollover-account-key "))
        .count()
}

/// The refusal of a newOrder by the account `credentials` describe.
async fn new_order_refusal(pebble: &Pebble, credentials: &str) -> CaError {
    let client = client(pebble, credentials).await;
    let outcome = perform(
        &client,
        Action::CreateOrder {
            cert: CertId::parse("refused").unwrap(),
            cycle: Cycle(1),
            identifiers: ids(&["refused.rollover.certfleet.test"]),
            profile: None,
            replaces: None,
        },
    )
    .await;
    let Outcome::Failed(error) = outcome else {
        panic!("pebble accepted a newOrder signed by a key the account no longer has: {outcome:?}");
    };
    error
}

/// Pebble's refusal of a JWS whose `kid` names an account that now has another key: the
/// signature is checked against the account's current key (Pebble's `lookupJWK`).
fn assert_signature_refused(error: &CaError) {
    assert_eq!(error.status, Some(400), "{error:?}");
    assert_eq!(
        error.problem.as_deref(),
        Some("urn:ietf:params:acme:error:malformed"),
        "{error:?}"
    );
    assert!(
        error.detail.starts_with("JWS verification error"),
        "{}",
        error.detail
    );
    assert_eq!(classify(error), FailureClass::Permanent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_account_issues_with_the_new_key_and_pebble_refuses_the_old() {
    let Some(pebble) = Pebble::start_or_skip(PebbleOptions::default()) else {
        return;
    };
    let old = register(&pebble).await;
    let new = credentials_with_new_key(&old).unwrap();
    assert_ne!(key_thumbprint(&new).unwrap(), key_thumbprint(&old).unwrap());
    assert_eq!(
        roll(&pebble, &old, &new).await.unwrap(),
        KeyChangeOutcome::Rolled
    );
    assert_eq!(key_changes(&pebble), 1);

    // The same account, now under the new key, issues end to end.
    let client = client(&pebble, &new).await;
    assert_eq!(client.account_url(), account_url(&old));
    assert_eq!(client.thumbprint(), key_thumbprint(&new).unwrap());
    let names = ["rollover.certfleet.test"];
    let identifiers = ids(&names);
    let (order_url, authz_urls) = create_order(&client, &identifiers, None).await;
    let views = authorizations(&client, &order_url, &authz_urls).await;
    let challenge_urls = views
        .iter()
        .map(|view| {
            assert_eq!(view.status, AuthzStatus::Pending);
            let offer = view
                .challenges
                .iter()
                .find(|c| c.kind == ChallengeKind::Http01)
                .expect("pebble offers HTTP-01");
            // The key authorization ends with the new key's thumbprint (RFC 8555 §8.1).
            assert!(
                offer
                    .key_authorization
                    .ends_with(&format!(".{}", key_thumbprint(&new).unwrap())),
                "{}",
                offer.key_authorization
            );
            pebble.add_http01(&offer.token, &offer.key_authorization);
            offer.url.clone()
        })
        .collect();
    mark_ready(&client, &order_url, challenge_urls).await;
    let view = settle(&client, &order_url).await;
    assert_eq!(view.status, OrderStatus::Ready, "{view:?}");
    let issued = finalize_and_download(&client, &order_url, &identifiers).await;
    let (_, leaf) = X509Certificate::from_der(&issued.leaf_der).unwrap();
    let san = leaf.subject_alternative_name().unwrap().expect("SANs");
    assert_eq!(san.value.general_names.len(), 1);

    // The old credentials no longer speak for the account.
    let error = new_order_refusal(&pebble, &old).await;
    assert_signature_refused(&error);
    assert_eq!(pebble.orders_created(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_again_after_the_ca_switched_is_rolled() {
    let Some(pebble) = Pebble::start_or_skip(PebbleOptions::default()) else {
        return;
    };
    let old = register(&pebble).await;
    let new = credentials_with_new_key(&old).unwrap();
    assert_eq!(
        roll(&pebble, &old, &new).await.unwrap(),
        KeyChangeOutcome::Rolled
    );
    // The node crashed after Pebble switched and before it recorded so: the same call again.
    for _ in 0..2 {
        assert_eq!(
            roll(&pebble, &old, &new).await.unwrap(),
            KeyChangeOutcome::Rolled
        );
    }
    // The retries found the switch already made and asked for no other.
    assert_eq!(key_changes(&pebble), 1);
    // Still the one account under the new key, and the old key still refused.
    assert_eq!(client(&pebble, &new).await.account_url(), account_url(&old));
    assert_signature_refused(&new_order_refusal(&pebble, &old).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_to_a_key_another_account_holds_is_refused_naming_it() {
    let Some(pebble) = Pebble::start_or_skip(PebbleOptions::default()) else {
        return;
    };
    let ours = register(&pebble).await;
    let theirs = register(&pebble).await;
    let KeyChangeOutcome::Refused(reason) = roll(&pebble, &ours, &with_key_of(&ours, &theirs))
        .await
        .unwrap()
    else {
        panic!("rolled to another account's key");
    };
    assert_eq!(
        reason,
        format!(
            "the new key already belongs to another account at the CA: {}",
            account_url(&theirs)
        )
    );
    // Neither account changed: each still orders with its own key.
    for credentials in [&ours, &theirs] {
        let client = client(&pebble, credentials).await;
        create_order(&client, &ids(&["still.rollover.certfleet.test"]), None).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_from_a_key_the_account_no_longer_has_is_refused() {
    let Some(pebble) = Pebble::start_or_skip(PebbleOptions::default()) else {
        return;
    };
    let first = register(&pebble).await;
    let second = credentials_with_new_key(&first).unwrap();
    assert_eq!(
        roll(&pebble, &first, &second).await.unwrap(),
        KeyChangeOutcome::Rolled
    );
    // Another roll from the first key, to a third: the account is the second key's now.
    let third = credentials_with_new_key(&first).unwrap();
    let KeyChangeOutcome::Refused(reason) = roll(&pebble, &first, &third).await.unwrap() else {
        panic!("rolled from a key the account no longer has");
    };
    assert!(
        reason.starts_with(
            "the CA refused the key change: HTTP 400 malformed JWS verification error"
        ),
        "{reason}"
    );
    // The account stays with the second key.
    let client = client(&pebble, &second).await;
    create_order(&client, &ids(&["second.rollover.certfleet.test"]), None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_ca_is_an_error_not_a_refusal() {
    let Some(pebble) = Pebble::start_or_skip(PebbleOptions::default()) else {
        return;
    };
    let old = register(&pebble).await;
    let new = credentials_with_new_key(&old).unwrap();
    let via = transport(&pebble);
    let directory_url = pebble.directory_url().to_owned();
    drop(pebble); // kills Pebble: its port now refuses connections
    let error = roll_account_key(via, &old, &new, &AcmeOptions::default(), now())
        .await
        .expect_err("no CA, no verdict");
    let AcmeError::Ca(error) = error else {
        panic!("a CA error: {error:?}");
    };
    assert_eq!((error.status, error.problem.as_deref()), (None, None));
    assert!(
        error.detail.starts_with(&format!("GET {directory_url}: ")),
        "{}",
        error.detail
    );
    assert_eq!(classify(&error), FailureClass::Retryable);
}
