//! The core's ACME actions, one at a time, as the order driver sends them: shared by the tests
//! of the ACME adapter against Pebble and against the embedded CA.

use std::sync::Arc;
use std::time::Duration;

use certfleet::acme::{AcmeClient, KeySealer};
use certfleet::node::{Clock, SystemClock};
use certfleet::seal::{DataKey, Nonces};
use certfleet_core::model::{KeyType, SealedBlob};
use certfleet_core::name::Identifier;
use certfleet_core::order::{Action, AuthzView, OrderStatus, OrderView, Outcome};
use certfleet_core::{CertId, Cycle, UnixMillis};

/// Polls of an order before a test gives up (Pebble without sleeps answers in milliseconds).
pub const POLLS_MAX: u32 = 200;
pub const POLL_PAUSE: Duration = Duration::from_millis(50);

pub fn sealer() -> KeySealer {
    KeySealer::new(
        Arc::new(DataKey::new([1, 2, 3, 4], &[42; 32])),
        Arc::new(Nonces::new(7)),
    )
}

pub fn now() -> UnixMillis {
    SystemClock.now()
}

pub fn ids(names: &[&str]) -> Vec<Identifier> {
    names
        .iter()
        .map(|n| Identifier::parse(n).unwrap())
        .collect()
}

pub async fn perform(client: &AcmeClient, action: Action) -> Outcome {
    client.perform(action, now()).await
}

pub async fn create_order(
    client: &AcmeClient,
    identifiers: &[Identifier],
    replaces: Option<&str>,
) -> (String, Vec<String>) {
    let outcome = perform(
        client,
        Action::CreateOrder {
            cert: CertId::parse("test").unwrap(),
            cycle: Cycle(1),
            identifiers: identifiers.to_vec(),
            profile: None,
            replaces: replaces.map(Into::into),
        },
    )
    .await;
    let Outcome::OrderCreated {
        order_url,
        authorizations,
    } = outcome
    else {
        panic!("CreateOrder: {outcome:?}");
    };
    assert_eq!(authorizations.len(), identifiers.len());
    (order_url, authorizations)
}

pub async fn authorizations(
    client: &AcmeClient,
    order_url: &str,
    urls: &[String],
) -> Vec<AuthzView> {
    let outcome = perform(
        client,
        Action::FetchAuthorizations {
            order_url: order_url.into(),
            urls: urls.to_vec(),
        },
    )
    .await;
    let Outcome::Authorizations(views) = outcome else {
        panic!("FetchAuthorizations: {outcome:?}");
    };
    views
}

pub async fn mark_ready(client: &AcmeClient, order_url: &str, challenge_urls: Vec<String>) {
    let outcome = perform(
        client,
        Action::MarkReady {
            order_url: order_url.into(),
            urls: challenge_urls,
            members_behind: 0,
        },
    )
    .await;
    assert_eq!(outcome, Outcome::ChallengesReady);
}

/// Fetches the order until it leaves `pending`/`processing`.
pub async fn settle(client: &AcmeClient, order_url: &str) -> OrderView {
    for _ in 0..POLLS_MAX {
        let outcome = perform(
            client,
            Action::FetchOrder {
                order_url: order_url.into(),
            },
        )
        .await;
        let Outcome::Order(view) = outcome else {
            panic!("FetchOrder: {outcome:?}");
        };
        if !matches!(view.status, OrderStatus::Pending | OrderStatus::Processing) {
            return view;
        }
        tokio::time::sleep(POLL_PAUSE).await;
    }
    panic!("order {order_url} never settled");
}

pub async fn prepare_key(client: &AcmeClient) -> SealedBlob {
    let outcome = perform(
        client,
        Action::PrepareKey {
            key_type: KeyType::EcdsaP256,
        },
    )
    .await;
    let Outcome::KeyPrepared { key } = outcome else {
        panic!("PrepareKey: {outcome:?}");
    };
    key
}

pub struct Issued {
    pub leaf_der: Vec<u8>,
    pub chain_der: Vec<Vec<u8>>,
    pub not_before: UnixMillis,
    pub not_after: UnixMillis,
    pub ari_id: Option<String>,
    pub key: SealedBlob,
}

/// From a ready order: PrepareKey, Finalize, FetchOrder until valid, Download.
pub async fn finalize_and_download(
    client: &AcmeClient,
    order_url: &str,
    identifiers: &[Identifier],
) -> Issued {
    let key = prepare_key(client).await;
    let outcome = perform(
        client,
        Action::Finalize {
            order_url: order_url.into(),
            key: key.clone(),
            identifiers: identifiers.to_vec(),
        },
    )
    .await;
    let Outcome::Order(view) = outcome else {
        panic!("Finalize: {outcome:?}");
    };
    assert!(
        matches!(view.status, OrderStatus::Processing | OrderStatus::Valid),
        "{view:?}"
    );
    let view = settle(client, order_url).await;
    assert_eq!(view.status, OrderStatus::Valid, "{view:?}");
    let certificate_url = view
        .certificate_url
        .expect("a valid order names its certificate");
    let outcome = perform(
        client,
        Action::Download {
            order_url: order_url.into(),
            certificate_url,
        },
    )
    .await;
    let Outcome::Certificate {
        leaf_der,
        chain_der,
        not_before,
        not_after,
        ari_id,
    } = outcome
    else {
        panic!("Download: {outcome:?}");
    };
    Issued {
        leaf_der,
        chain_der,
        not_before,
        not_after,
        ari_id,
        key,
    }
}
