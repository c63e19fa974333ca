//! The ACME adapter (DESIGN §5): the core's order [`Action`]s performed against a real CA with
//! instant-acme, behind the node's [`Acme`] seam.
//!
//! Each action is one ACME operation; the core's `OrderDriver` sequences them, commits each
//! result through Raft before the next, and does all polling and waiting itself (instant-acme's
//! `poll_*` helpers sleep on real tokio and panic under madsim, so they are never called).
//! instant-acme reaches authorizations, challenges and certificates only through their
//! [`Order`](instant_acme::Order), so those actions fetch the order first:
//!
//! | action | requests |
//! | --- | --- |
//! | `CreateOrder` | newOrder (with `profile`, and ARI `replaces` when the CA has ARI) |
//! | `FetchOrder` | order |
//! | `FetchAuthorizations` | order, then each authorization |
//! | `MarkReady` | order, each authorization, then `{}` to each challenge (DNS-01: the hook first) |
//! | `PrepareKey` | none: a key generated and sealed here |
//! | `Finalize` | order, then finalize with a CSR signed by the unsealed committed key |
//! | `Download` | order, then the certificate chain |
//!
//! Every failure is an [`Outcome::Failed`] with the HTTP status, problem type and `Retry-After`
//! of the response that carried it ([`transport`] records them, since instant-acme does not expose
//! them); `Retry-After` becomes an instant on the caller's clock `now`, never on
//! `SystemTime::now()` (DESIGN §5). instant-acme retries `badNonce` itself (3 attempts with the
//! nonce each rejection carries); the adapter sends the action again for up to
//! `BAD_NONCE_ROUNDS_MAX` more rounds (a refused request was never processed), and only then
//! reports the `badNonce` problem, which the core's `classify` retries.
//!
//! One account per issuer serves the whole cluster: [`AcmeClient::register`] returns its
//! credentials as JSON for the node to seal and replicate, and every leader rebuilds the same
//! account with [`AcmeClient::from_credentials`].

pub mod certificate;
pub mod dns01;
mod error;
mod key_change;
pub mod keys;
pub mod transport;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use certfleet_core::UnixMillis;
use certfleet_core::command::AriWindow;
use certfleet_core::model::{ChallengeKind, KeyType, SealedBlob};
use certfleet_core::name::Identifier;
use certfleet_core::order::{
    Action, AuthzStatus, AuthzView, CaError, ChallengeOffer, OrderStatus, OrderView, Outcome,
};
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, ExternalAccountKey,
    HttpClient, NewAccount, NewOrder, Order, OrderState,
};
use tracing::{debug, warn};
use zeroize::Zeroizing;

pub use self::dns01::{Dns01Solver, ExecHook, HookError};
pub use self::error::{AcmeError, PROBLEM_PREFIX, describe};
use self::error::{ca_error, local};
pub use self::key_change::{
    KeyChangeOutcome, credentials_with_new_key, key_thumbprint, roll_account_key,
};
pub use self::keys::KeySealer;

/// How the adapter reaches the CA.
pub enum Transport {
    /// HTTPS with hyper and rustls (ring), trusting the certificates in this PEM (a test CA's
    /// root, such as Pebble's), or the platform's verifier when `None`.
    Https {
        /// Root certificates, PEM.
        root_pem: Option<Vec<u8>>,
    },
    /// Plain HTTP, for a CA on this machine only (the demo's embedded CA): RFC 8555 §6.1
    /// requires HTTPS, and [`Transport::for_directory`] chooses this only for a loopback host.
    LoopbackHttp,
    /// Any [`HttpClient`]: the simulation's wire CA, or a test double.
    Custom(Box<dyn HttpClient>),
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Https { root_pem } => f
                .debug_struct("Https")
                .field("root_pem", &root_pem.as_ref().map(|pem| pem.len()))
                .finish(),
            Self::LoopbackHttp => f.write_str("LoopbackHttp"),
            Self::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

impl Transport {
    /// The transport for `directory_url`: HTTPS (trusting `root_pem`, else the platform's
    /// roots), or plain HTTP when the URL is `http://` to a loopback host. Plain HTTP anywhere
    /// else is refused, naming the URL: account requests must not cross a network in clear.
    pub fn for_directory(
        directory_url: &str,
        root_pem: Option<Vec<u8>>,
    ) -> Result<Self, AcmeError> {
        let Some(rest) = directory_url.strip_prefix("http://") else {
            return Ok(Self::Https { root_pem });
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let host = match authority.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or_default(),
            None => authority.split(':').next().unwrap_or_default(),
        };
        let loopback = host.eq_ignore_ascii_case("localhost")
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if loopback {
            Ok(Self::LoopbackHttp)
        } else {
            Err(AcmeError::Transport(format!(
                "{directory_url}: plain http is only accepted for a CA on this machine \
                 (localhost, 127.0.0.0/8, ::1); use https"
            )))
        }
    }

    fn into_client(self, timeout: Duration) -> Result<Box<dyn HttpClient>, AcmeError> {
        let inner = match self {
            Self::Https { root_pem } => {
                transport::https_client(root_pem.as_deref()).map_err(AcmeError::Transport)?
            }
            Self::LoopbackHttp => transport::loopback_http_client(),
            Self::Custom(client) => client,
        };
        Ok(Box::new(transport::Recording::new(inner, timeout)))
    }
}

/// External account binding (RFC 8555 §7.3.4): the CA's key id and its HMAC key (raw bytes,
/// already decoded from the CA's base64url).
#[derive(Clone)]
pub struct Eab {
    /// Key id.
    pub kid: String,
    /// HMAC key.
    pub hmac_key: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for Eab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Eab")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// Knobs of the adapter.
#[derive(Clone, Debug)]
pub struct AcmeOptions {
    /// Deadline of each HTTP request to the CA.
    pub request_timeout: Duration,
}

impl Default for AcmeOptions {
    fn default() -> Self {
        Self {
            request_timeout: transport::REQUEST_TIMEOUT_DEFAULT,
        }
    }
}

/// One ACME account at one CA, performing the core's actions.
pub struct AcmeClient {
    account: Account,
    sealer: KeySealer,
    dns01: Option<Arc<dyn Dns01Solver>>,
    /// DNS-01 records published per order URL, removed once the order leaves `pending`.
    published: Mutex<BTreeMap<String, Vec<(String, String)>>>,
}

impl std::fmt::Debug for AcmeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcmeClient")
            .field("account", &self.account.id())
            .field("dns01", &self.dns01.is_some())
            .finish_non_exhaustive()
    }
}

impl AcmeClient {
    /// Registers a new account at the CA whose directory is `directory_url` (terms of service
    /// agreed) and returns the client with the account's credentials as JSON. The credentials
    /// hold the account's private key in clear: seal them before they go anywhere. `now` (the
    /// caller's clock) dates a `Retry-After` in the error.
    pub async fn register(
        via: Transport,
        directory_url: &str,
        contact: &[&str],
        eab: Option<&Eab>,
        sealer: KeySealer,
        options: &AcmeOptions,
        now: UnixMillis,
    ) -> Result<(Self, Zeroizing<String>), AcmeError> {
        let http = via.into_client(options.request_timeout)?;
        let eab = eab.map(|eab| ExternalAccountKey::new(eab.kid.clone(), &eab.hmac_key));
        let new_account = NewAccount {
            contact,
            terms_of_service_agreed: true,
            only_return_existing: false,
        };
        let created = transport::recorded(async {
            Account::builder_with_http(http)
                .create(&new_account, directory_url.to_owned(), eab.as_ref())
                .await
                .map_err(|e| AcmeError::Ca(ca_error(e, now)))
        })
        .await?;
        let (account, credentials) = created;
        let json = serde_json::to_string(&credentials)
            .map_err(|e| AcmeError::Credentials(e.to_string()))?;
        Ok((Self::new(account, sealer), Zeroizing::new(json)))
    }

    /// Rebuilds the account from credentials [`AcmeClient::register`] returned (a new leader
    /// reusing the cluster's account). Fetches the CA's directory.
    pub async fn from_credentials(
        via: Transport,
        credentials_json: &str,
        sealer: KeySealer,
        options: &AcmeOptions,
        now: UnixMillis,
    ) -> Result<Self, AcmeError> {
        let credentials: AccountCredentials = serde_json::from_str(credentials_json)
            .map_err(|e| AcmeError::Credentials(e.to_string()))?;
        let http = via.into_client(options.request_timeout)?;
        let account = transport::recorded(async {
            Account::builder_with_http(http)
                .from_credentials(credentials)
                .await
                .map_err(|e| AcmeError::Ca(ca_error(e, now)))
        })
        .await?;
        Ok(Self::new(account, sealer))
    }

    fn new(account: Account, sealer: KeySealer) -> Self {
        Self {
            account,
            sealer,
            dns01: None,
            published: Mutex::new(BTreeMap::new()),
        }
    }

    /// Publishes DNS-01 answers through `solver` (without one, DNS-01 challenges fail).
    #[must_use]
    pub fn with_dns01(mut self, solver: Arc<dyn Dns01Solver>) -> Self {
        self.dns01 = Some(solver);
        self
    }

    /// The account URL (its id at the CA).
    #[must_use]
    pub fn account_url(&self) -> &str {
        self.account.id()
    }

    /// The account key's RFC 7638 thumbprint, the second half of every key authorization.
    #[must_use]
    pub fn thumbprint(&self) -> &str {
        self.account.key_thumbprint()
    }

    async fn dispatch(&self, action: Action, now: UnixMillis) -> Result<Outcome, CaError> {
        match action {
            Action::CreateOrder {
                cert,
                cycle,
                identifiers,
                profile,
                replaces,
            } => {
                debug!(%cert, ?cycle, "newOrder");
                self.create_order(&identifiers, profile.as_deref(), replaces.as_deref(), now)
                    .await
            }
            Action::FetchOrder { order_url } => {
                let order = self.order(&order_url, now).await?;
                let view = view(order.into_parts().1, now);
                if view.status != OrderStatus::Pending {
                    self.clean_up_dns(&order_url).await;
                }
                Ok(Outcome::Order(view))
            }
            Action::FetchAuthorizations { order_url, urls } => {
                self.authorizations(&order_url, &urls, now).await
            }
            Action::MarkReady {
                order_url,
                urls,
                members_behind,
            } => {
                if members_behind > 0 {
                    warn!(%order_url, members_behind, "challenges ready with members behind");
                }
                self.mark_ready(&order_url, &urls, now).await
            }
            Action::PrepareKey { key_type } => self.prepare_key(key_type),
            Action::Finalize {
                order_url,
                key,
                identifiers,
            } => self.finalize(&order_url, &key, &identifiers, now).await,
            Action::Download {
                order_url,
                certificate_url,
            } => self.download(&order_url, &certificate_url, now).await,
            misuse @ (Action::Commit(_)
            | Action::WaitApplied { .. }
            | Action::Sleep { .. }
            | Action::Wait
            | Action::Done) => Err(local(format!(
                "{} is the node's to perform, not the ACME adapter's",
                action_name(&misuse)
            ))),
        }
    }

    async fn create_order(
        &self,
        identifiers: &[Identifier],
        profile: Option<&str>,
        replaces: Option<&str>,
        now: UnixMillis,
    ) -> Result<Outcome, CaError> {
        let identifiers: Vec<instant_acme::Identifier> =
            identifiers.iter().map(acme_identifier).collect();
        let new_order = || {
            let order = NewOrder::new(&identifiers);
            match profile {
                Some(profile) => order.profile(profile),
                None => order,
            }
        };
        let replaced = replaces.and_then(|id| {
            let id = certificate_identifier(id);
            if id.is_none() {
                warn!(
                    replaces,
                    "ARI id is not `<aki>.<serial>`; ordering without `replaces`"
                );
            }
            id
        });
        let result = match replaced {
            Some(id) => match self.account.new_order(&new_order().replaces(id)).await {
                // instant-acme refuses `replaces` before sending anything when the directory
                // has no `renewalInfo` (Pebble 2.4, many CAs): the order goes without it.
                Err(instant_acme::Error::Unsupported(_)) => {
                    self.account.new_order(&new_order()).await
                }
                // The certificate was already replaced (by an order a deposed leader placed, or
                // by another client of the account): `replaces` only buys the ARI exemption,
                // so the renewal goes on without it rather than failing (draft-ietf-acme-ari
                // §5).
                Err(instant_acme::Error::Api(problem))
                    if problem.r#type.as_deref() == Some(ALREADY_REPLACED) =>
                {
                    warn!(
                        replaces,
                        "the CA says the certificate was already replaced; ordering without `replaces`"
                    );
                    self.account.new_order(&new_order()).await
                }
                other => other,
            },
            None => self.account.new_order(&new_order()).await,
        };
        let mut order = result.map_err(|e| {
            let mut error = ca_error(e, now);
            // A rate limit on newOrder holds every order of the account (SIMULATION I9).
            error.account_wide = error.problem.as_deref() == Some(RATE_LIMITED);
            error
        })?;
        let authorizations = order
            .state()
            .authorizations
            .iter()
            .map(|a| a.url.clone())
            .collect();
        Ok(Outcome::OrderCreated {
            order_url: order.url().to_owned(),
            authorizations,
        })
    }

    async fn order(&self, order_url: &str, now: UnixMillis) -> Result<Order, CaError> {
        self.account
            .order(order_url.to_owned())
            .await
            .map_err(|e| ca_error(e, now))
    }

    async fn authorizations(
        &self,
        order_url: &str,
        urls: &[String],
        now: UnixMillis,
    ) -> Result<Outcome, CaError> {
        let mut order = self.order(order_url, now).await?;
        let thumbprint = self.account.key_thumbprint();
        let mut views = Vec::with_capacity(urls.len());
        let mut found = Vec::with_capacity(urls.len());
        let mut stream = order.authorizations();
        while let Some(authz) = stream.next().await {
            let authz = authz.map_err(|e| ca_error(e, now))?;
            if !urls.iter().any(|u| u == authz.url()) {
                continue;
            }
            found.push(authz.url().to_owned());
            let named = authz.identifier().to_string();
            let identifier = Identifier::parse(&named)
                .map_err(|e| local(format!("CA authorization {} is for {e}", authz.url())))?;
            let mut challenges = Vec::with_capacity(authz.challenges.len());
            for challenge in &authz.challenges {
                let Some(kind) = challenge_kind(&challenge.r#type) else {
                    continue; // a kind certfleet does not answer
                };
                if !is_token(&challenge.token) {
                    return Err(local(format!(
                        "CA challenge {} has a token that is not base64url: refusing to serve it",
                        challenge.url
                    )));
                }
                challenges.push(ChallengeOffer {
                    kind,
                    url: challenge.url.clone(),
                    token: challenge.token.clone(),
                    // RFC 8555 §8.1: token '.' base64url(JWK thumbprint).
                    key_authorization: format!("{}.{thumbprint}", challenge.token),
                });
            }
            views.push(AuthzView {
                identifier,
                status: authz_status(authz.status),
                challenges,
            });
        }
        if let Some(missing) = urls.iter().find(|u| !found.contains(u)) {
            return Err(local(format!(
                "authorization {missing} is not part of order {order_url}"
            )));
        }
        Ok(Outcome::Authorizations(views))
    }

    async fn mark_ready(
        &self,
        order_url: &str,
        urls: &[String],
        now: UnixMillis,
    ) -> Result<Outcome, CaError> {
        let mut order = self.order(order_url, now).await?;
        let mut remaining: Vec<&String> = urls.iter().collect();
        let mut stream = order.authorizations();
        while let Some(authz) = stream.next().await {
            let mut authz = authz.map_err(|e| ca_error(e, now))?;
            let Some((position, kind)) = authz.challenges.iter().find_map(|c| {
                let position = remaining.iter().position(|u| **u == c.url)?;
                Some((position, c.r#type.clone()))
            }) else {
                continue;
            };
            let url = remaining.swap_remove(position);
            let mut challenge =
                authz
                    .challenge(kind)
                    .filter(|c| c.url == *url)
                    .ok_or_else(|| {
                        local(format!(
                            "challenge {url} is offered twice in its authorization"
                        ))
                    })?;
            if challenge.r#type == ChallengeType::Dns01 {
                let name = dns01::record_name(&challenge.identifier().to_string());
                let value = challenge.key_authorization().dns_value();
                let Some(solver) = &self.dns01 else {
                    return Err(local(format!(
                        "challenge {url} is dns-01 and no DNS hook is configured"
                    )));
                };
                solver
                    .present(&name, &value)
                    .await
                    .map_err(|e| local(e.to_string()))?;
                self.published
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .entry(order_url.to_owned())
                    .or_default()
                    .push((name, value));
            }
            challenge.set_ready().await.map_err(|e| ca_error(e, now))?;
        }
        if let Some(missing) = remaining.first() {
            return Err(local(format!(
                "challenge {missing} is not part of order {order_url}"
            )));
        }
        Ok(Outcome::ChallengesReady)
    }

    /// Removes the DNS-01 records of an order that has left `pending` (best effort: a failed
    /// cleanup leaves a stale TXT record, which harms nothing but tidiness).
    async fn clean_up_dns(&self, order_url: &str) {
        let Some(solver) = &self.dns01 else { return };
        let records = self
            .published
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(order_url)
            .unwrap_or_default();
        for (name, value) in records {
            if let Err(error) = solver.cleanup(&name, &value).await {
                warn!(%error, "DNS-01 cleanup failed");
            }
        }
    }

    fn prepare_key(&self, key_type: KeyType) -> Result<Outcome, CaError> {
        if !keys::SUPPORTED.contains(&key_type) {
            // Retrying cannot help: fail the cycle permanently, naming the key type, instead of
            // retrying forever (the certificate shows the error; a spec change fixes it).
            return Err(CaError {
                problem: Some(certfleet_core::order::LOCAL_PERMANENT_PROBLEM.into()),
                ..local(format!(
                    "key type {key_type:?} cannot be generated by this build (ring has no RSA \
                     key generation); use one of {:?}",
                    keys::SUPPORTED
                ))
            });
        }
        let der = keys::generate(key_type).map_err(local)?;
        Ok(Outcome::KeyPrepared {
            key: self.sealer.seal(&der),
        })
    }

    async fn finalize(
        &self,
        order_url: &str,
        key: &SealedBlob,
        identifiers: &[Identifier],
        now: UnixMillis,
    ) -> Result<Outcome, CaError> {
        let der = self
            .sealer
            .open(key)
            .map_err(|e| local(format!("committed key: {e}")))?;
        let csr = keys::csr(&der, identifiers).map_err(local)?;
        drop(der);
        let mut order = self.order(order_url, now).await?;
        order
            .finalize_csr(&csr)
            .await
            .map_err(|e| ca_error(e, now))?;
        Ok(Outcome::Order(view(order.into_parts().1, now)))
    }

    async fn download(
        &self,
        order_url: &str,
        certificate_url: &str,
        now: UnixMillis,
    ) -> Result<Outcome, CaError> {
        let mut order = self.order(order_url, now).await?;
        if order.state().certificate.as_deref() != Some(certificate_url) {
            warn!(
                order_url,
                certificate_url,
                current = ?order.state().certificate,
                "the order names another certificate URL; downloading the order's"
            );
        }
        let pem = order
            .certificate()
            .await
            .map_err(|e| ca_error(e, now))?
            .ok_or_else(|| local(format!("order {order_url} is still processing")))?;
        let issued = certificate::parse_chain(pem.as_bytes())
            .map_err(|e| local(format!("certificate of order {order_url}: {e}")))?;
        Ok(Outcome::Certificate {
            leaf_der: issued.leaf_der,
            chain_der: issued.chain_der,
            not_before: issued.not_before,
            not_after: issued.not_after,
            ari_id: issued.ari_id,
        })
    }
}

// Not an `Acme`: one client holds one account key for good, while the cluster's account can
// roll its key (`ClusterAcme` rebuilds its client from the committed credentials).
impl AcmeClient {
    /// Performs one of the core's actions (or `PrepareKey`) and reports its outcome; `now`
    /// (the caller's clock) dates a `Retry-After`.
    pub async fn perform(&self, action: Action, now: UnixMillis) -> Outcome {
        let name = action_name(&action);
        let mut rounds = 0;
        loop {
            match transport::recorded(self.dispatch(action.clone(), now)).await {
                Ok(outcome) => return outcome,
                // A CA refuses a bad nonce before it processes anything (RFC 8555 §6.5), so the
                // action can be sent again as it is. instant-acme tries three nonces; a run of
                // refusals longer than that must not reach the core as a failure, which inside
                // an order counts towards abandoning it for a new one (found by the wire
                // simulation: 35% injected badNonce, one certificate ordered twice).
                Err(error)
                    if error.problem.as_deref() == Some(BAD_NONCE)
                        && rounds < BAD_NONCE_ROUNDS_MAX =>
                {
                    rounds += 1;
                    debug!(
                        action = name,
                        rounds, "badNonce after instant-acme's retries; again"
                    );
                }
                Err(error) => {
                    debug!(action = name, error = %describe(&error), "ACME action failed");
                    return Outcome::Failed(error);
                }
            }
        }
    }

    /// Polls the CA's ARI `renewalInfo` for a certificate (`None` when the CA has no ARI or
    /// the poll failed).
    pub async fn renewal_info(&self, ari_id: &str, _now: UnixMillis) -> Option<AriWindow> {
        let id = certificate_identifier(ari_id)?;
        let (info, _poll_again) = match transport::recorded(self.account.renewal_info(&id)).await {
            Ok(answer) => answer,
            Err(instant_acme::Error::Unsupported(_)) => return None, // the CA has no ARI
            Err(error) => {
                debug!(ari_id, %error, "ARI poll failed");
                return None;
            }
        };
        // Bounds before 1970 or past u64 milliseconds are not windows.
        let window = &info.suggested_window;
        let start = u64::try_from(window.start.unix_timestamp_nanos() / 1_000_000).ok()?;
        let end = u64::try_from(window.end.unix_timestamp_nanos() / 1_000_000).ok()?;
        let (start, end) = (UnixMillis(start), UnixMillis(end));
        // RFC 9773 §4.2: a window whose end is not after its start is invalid.
        (end > start).then_some(AriWindow { start, end })
    }
}

const RATE_LIMITED: &str = "urn:ietf:params:acme:error:rateLimited";
const BAD_NONCE: &str = "urn:ietf:params:acme:error:badNonce";

/// Extra rounds of instant-acme's own three `badNonce` attempts before the adapter reports
/// the refusal: at a 35% refusal rate twelve in a row happen once in 300,000 requests.
const BAD_NONCE_ROUNDS_MAX: u32 = 3;
const ALREADY_REPLACED: &str = "urn:ietf:params:acme:error:alreadyReplaced";

fn acme_identifier(identifier: &Identifier) -> instant_acme::Identifier {
    match identifier {
        Identifier::Dns(name) => instant_acme::Identifier::Dns(name.as_str().to_owned()),
        Identifier::Ip(ip) => instant_acme::Identifier::Ip(*ip),
    }
}

/// `<aki>.<serial>` into instant-acme's identifier (RFC 9773 §4.1).
fn certificate_identifier(ari_id: &str) -> Option<instant_acme::CertificateIdentifier<'_>> {
    let (aki, serial) = ari_id.split_once('.')?;
    (is_token(aki) && is_token(serial)).then(|| instant_acme::CertificateIdentifier {
        authority_key_identifier: aki.into(),
        serial: serial.into(),
    })
}

/// A base64url token (RFC 8555 §8.3), which the data plane can serve as a path segment.
fn is_token(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= 1024
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn challenge_kind(kind: &ChallengeType) -> Option<ChallengeKind> {
    match kind {
        ChallengeType::Http01 => Some(ChallengeKind::Http01),
        ChallengeType::Dns01 => Some(ChallengeKind::Dns01),
        ChallengeType::TlsAlpn01 => Some(ChallengeKind::TlsAlpn01),
        _ => None,
    }
}

fn authz_status(status: AuthorizationStatus) -> AuthzStatus {
    match status {
        AuthorizationStatus::Pending => AuthzStatus::Pending,
        AuthorizationStatus::Valid => AuthzStatus::Valid,
        AuthorizationStatus::Invalid => AuthzStatus::Invalid,
        AuthorizationStatus::Revoked => AuthzStatus::Revoked,
        AuthorizationStatus::Expired => AuthzStatus::Expired,
        AuthorizationStatus::Deactivated => AuthzStatus::Deactivated,
    }
}

/// The core's view of an order, with the `Retry-After` of the response that carried it.
fn view(state: OrderState, now: UnixMillis) -> OrderView {
    let status = match state.status {
        instant_acme::OrderStatus::Pending => OrderStatus::Pending,
        instant_acme::OrderStatus::Ready => OrderStatus::Ready,
        instant_acme::OrderStatus::Processing => OrderStatus::Processing,
        instant_acme::OrderStatus::Valid => OrderStatus::Valid,
        instant_acme::OrderStatus::Invalid => OrderStatus::Invalid,
    };
    OrderView {
        status,
        certificate_url: state.certificate,
        retry_at: transport::last().and_then(|e| e.retry_at(now)),
        error: state.error.as_ref().map(error::problem_line),
    }
}

fn action_name(action: &Action) -> &'static str {
    match action {
        Action::Commit(_) => "Commit",
        Action::CreateOrder { .. } => "CreateOrder",
        Action::FetchOrder { .. } => "FetchOrder",
        Action::FetchAuthorizations { .. } => "FetchAuthorizations",
        Action::WaitApplied { .. } => "WaitApplied",
        Action::MarkReady { .. } => "MarkReady",
        Action::PrepareKey { .. } => "PrepareKey",
        Action::Finalize { .. } => "Finalize",
        Action::Download { .. } => "Download",
        Action::Sleep { .. } => "Sleep",
        Action::Wait => "Wait",
        Action::Done => "Done",
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::Pin;

    use bytes::Bytes;
    use certfleet_core::command::FailureClass;
    use certfleet_core::model::{CertId, Cycle};
    use certfleet_core::order::classify;
    use instant_acme::{BodyWrapper, BytesResponse};

    use super::*;
    use crate::seal::{DataKey, Nonces};

    const NOW: UnixMillis = UnixMillis(1_700_000_000_000);

    /// Credentials in instant-acme's pre-0.4 form, which carry the directory's URLs, so that
    /// no directory is fetched (instant-acme's own test vector key).
    const CREDENTIALS: &str = r#"{"id":"https://ca.test/acct/1","key_pkcs8":"MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgJVWC_QzOTCS5vtsJp2IG-UDc8cdDfeoKtxSZxaznM-mhRANCAAQenCPoGgPFTdPJ7VLLKt56RxPlYT1wNXnHc54PEyBg3LxKaH0-sJkX0mL8LyPEdsfL_Oz4TxHkWLJGrXVtNhfH","urls":{"newNonce":"https://ca.test/nonce","newAccount":"https://ca.test/account","newOrder":"https://ca.test/order"}}"#;

    /// A CA that hands out nonces and answers every POST with `status` and `body`, or refuses
    /// connections when `status` is 0.
    struct CannedCa {
        status: u16,
        retry_after: Option<&'static str>,
        body: &'static str,
    }

    impl HttpClient for CannedCa {
        fn request(
            &self,
            request: http::Request<BodyWrapper<Bytes>>,
        ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>>
        {
            let response = if request.method() == http::Method::HEAD {
                Ok(http::Response::builder()
                    .status(200)
                    .header("Replay-Nonce", "nonce")
                    .body(BodyWrapper::from(Vec::new()))
                    .unwrap())
            } else if self.status == 0 {
                Err(instant_acme::Error::Other("connection refused".into()))
            } else {
                let mut response = http::Response::builder()
                    .status(self.status)
                    .header("Replay-Nonce", "nonce")
                    .header("Content-Type", "application/problem+json");
                if let Some(seconds) = self.retry_after {
                    response = response.header("Retry-After", seconds);
                }
                Ok(response
                    .body(BodyWrapper::from(self.body.as_bytes().to_vec()))
                    .unwrap())
            };
            Box::pin(async move { response.map(BytesResponse::from) })
        }
    }

    async fn client(ca: CannedCa) -> AcmeClient {
        let sealer = KeySealer::new(
            Arc::new(DataKey::new([9; 4], &[9; 32])),
            Arc::new(Nonces::new(9)),
        );
        AcmeClient::from_credentials(
            Transport::Custom(Box::new(ca)),
            CREDENTIALS,
            sealer,
            &AcmeOptions::default(),
            NOW,
        )
        .await
        .unwrap()
    }

    fn new_order() -> Action {
        Action::CreateOrder {
            cert: CertId::parse("example.com").unwrap(),
            cycle: Cycle(1),
            identifiers: vec![Identifier::parse("example.com").unwrap()],
            profile: None,
            replaces: None,
        }
    }

    #[tokio::test]
    async fn a_rate_limit_on_new_order_holds_the_whole_account_until_retry_after() {
        let ca = client(CannedCa {
            status: 429,
            retry_after: Some("30"),
            body: r#"{"type":"urn:ietf:params:acme:error:rateLimited","detail":"too many new orders"}"#,
        })
        .await;
        let Outcome::Failed(error) = ca.perform(new_order(), NOW).await else {
            panic!("a 429 is a failure");
        };
        assert_eq!(
            error,
            CaError {
                status: Some(429),
                problem: Some(RATE_LIMITED.into()),
                detail: "too many new orders".into(),
                retry_at: Some(NOW.plus_ms(30_000)),
                account_wide: true,
            }
        );
        assert_eq!(classify(&error), FailureClass::RateLimited);
        // The same refusal on an order's own URL holds only that order.
        let fetch = Action::FetchOrder {
            order_url: "https://ca.test/order/1".into(),
        };
        let Outcome::Failed(error) = ca.perform(fetch, NOW).await else {
            panic!("a 429 is a failure");
        };
        assert!(!error.account_wide);
    }

    #[tokio::test]
    async fn an_unreachable_ca_is_a_failure_naming_the_url() {
        let ca = client(CannedCa {
            status: 0,
            retry_after: None,
            body: "",
        })
        .await;
        let Outcome::Failed(error) = ca.perform(new_order(), NOW).await else {
            panic!("no connection is a failure");
        };
        assert_eq!((error.status, error.problem.as_deref()), (None, None));
        assert_eq!(
            error.detail,
            "POST https://ca.test/order: connection refused"
        );
        assert_eq!(classify(&error), FailureClass::Retryable);
    }

    #[tokio::test]
    async fn actions_that_are_not_the_adapters_fail_by_name_without_panicking() {
        let ca = client(CannedCa {
            status: 500,
            retry_after: None,
            body: "{}",
        })
        .await;
        for (action, name) in [
            (Action::Wait, "Wait"),
            (Action::Done, "Done"),
            (Action::WaitApplied { index: 3 }, "WaitApplied"),
            (Action::Sleep { until: NOW }, "Sleep"),
        ] {
            let Outcome::Failed(error) = ca.perform(action, NOW).await else {
                panic!("{name} is not the adapter's");
            };
            assert!(error.detail.starts_with(name), "{}", error.detail);
        }
    }

    #[tokio::test]
    async fn prepare_key_seals_supported_keys_and_refuses_rsa_by_name() {
        let ca = client(CannedCa {
            status: 500,
            retry_after: None,
            body: "{}",
        })
        .await;
        let action = Action::PrepareKey {
            key_type: KeyType::EcdsaP384,
        };
        let Outcome::KeyPrepared { key } = ca.perform(action, NOW).await else {
            panic!("P-384 is supported");
        };
        let der = ca.sealer.open(&key).unwrap();
        assert!(rcgen::KeyPair::try_from(der.as_slice()).is_ok());
        let action = Action::PrepareKey {
            key_type: KeyType::Rsa2048,
        };
        let Outcome::Failed(error) = ca.perform(action, NOW).await else {
            panic!("RSA is not supported");
        };
        assert!(
            error.detail.contains("Rsa2048 cannot be generated"),
            "{}",
            error.detail
        );
        // Permanent: the cycle fails and backs off instead of retrying a key it cannot make.
        assert_eq!(classify(&error), FailureClass::Permanent);
    }
}
