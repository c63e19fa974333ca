//! Account key rollover (RFC 8555 §7.3.5) to a key the caller already holds.
//!
//! instant-acme's `Account::update_key` generates the new key itself and switches the account
//! at the CA before the caller can keep it: a crash in between locks the cluster out of its
//! account. certfleet turns the order around: [`credentials_with_new_key`] makes the new
//! credentials, the node seals them and commits them through Raft, and only then
//! [`roll_account_key`] asks the CA. Any step may be repeated after a crash at any point, so
//! every call first asks the CA whether it already binds the account to the new key (RFC 8555
//! §7.3.1 `onlyReturnExisting`, signed by the new key) and sends `keyChange` only if not.
//!
//! The JWS are built here with ring rather than by instant-acme, which signs only with the key
//! of an `Account` and keeps its JWS types private. The requests go through the client the
//! [`Transport`] builds, so they get the same deadline and exchange recording as every other
//! request of the adapter, and errors are built from them the same way.

use base64::prelude::{BASE64_URL_SAFE_NO_PAD, Engine as _};
use bytes::Bytes;
use certfleet_core::UnixMillis;
use certfleet_core::order::CaError;
use http::header::{CONTENT_TYPE, LOCATION, USER_AGENT};
use http::{Method, Request};
use instant_acme::{BodyWrapper, HttpClient};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use serde::{Deserialize, Serialize};
use tracing::{debug, info};
use zeroize::{Zeroize, Zeroizing};

use super::error::{ca_error, describe, local};
use super::{AcmeError, AcmeOptions, Transport, transport};

/// What became of a key change that reached a verdict. Failures that a retry may cure
/// (transport errors, 5xx, 429) are `Err` instead, so the caller keeps both keys and asks again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyChangeOutcome {
    /// The CA binds the account to the new key (it did now, or had already).
    Rolled,
    /// The CA refused for good; a retry cannot help (no `keyChange` in the directory, the new
    /// key belongs to another account, the old key is no longer the account's and the new one
    /// is not either, malformed). Names the CA's problem or the other account.
    Refused(String),
}

/// New credentials JSON for the same account (same `id`, same directory) with a fresh ECDSA
/// P-256 key (instant-acme's key type), in clear: the caller seals it.
///
/// Fails with [`AcmeError::Credentials`] when `old_credentials_json` is not what
/// [`super::AcmeClient::register`] returns.
pub fn credentials_with_new_key(
    old_credentials_json: &str,
) -> Result<Zeroizing<String>, AcmeError> {
    let old = Credentials::parse(old_credentials_json)?;
    // An account whose key cannot sign cannot roll to anything: say so now, not at the CA.
    AccountKey::from_credentials(&old)?;
    let rng = SystemRandom::new();
    // ring's `Document` is not zeroized on drop; its bytes live only until this returns.
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .map_err(|e| AcmeError::Ca(local(format!("generating the new account key: {e}"))))?;
    let new = Credentials {
        id: old.id.clone(),
        key_pkcs8: BASE64_URL_SAFE_NO_PAD.encode(pkcs8.as_ref()),
        directory: old.directory.clone(),
        urls: old.urls.clone(),
    };
    // Room for the whole document up front: a buffer that grows leaves copies of the key in
    // the memory it frees, and only the final buffer is zeroized.
    let mut json = Zeroizing::new(Vec::with_capacity(
        CREDENTIALS_OVERHEAD + new.key_pkcs8.len() + old_credentials_json.len(),
    ));
    serde_json::to_writer(&mut *json, &new).map_err(|e| AcmeError::Credentials(e.to_string()))?;
    let json = String::from_utf8(std::mem::take(&mut *json))
        .map_err(|e| AcmeError::Credentials(e.to_string()))?;
    Ok(Zeroizing::new(json))
}

/// The RFC 7638 thumbprint (SHA-256, base64url) of the credentials' account key: the same
/// value as instant-acme's `Account::key_thumbprint`, to tell keys apart without the CA.
pub fn key_thumbprint(credentials_json: &str) -> Result<String, AcmeError> {
    let credentials = Credentials::parse(credentials_json)?;
    Ok(AccountKey::from_credentials(&credentials)?.thumbprint())
}

/// Whether the CA already binds the account to `new`'s key, and if not, rolls it there.
///
/// Safe to call again after a crash at any point: the CA is asked first (newAccount with
/// `onlyReturnExisting`, signed by the new key, RFC 8555 §7.3.1), and `keyChange` is sent only
/// when the new key is no account's yet. `Err` is a failure a retry may cure (the CA was not
/// reached, answered 5xx, or 429 with its `Retry-After` as `retry_at` on `now`'s clock); it is
/// also [`AcmeError::Credentials`] when either credentials are unreadable or the two are not
/// for the same account, which no retry cures.
pub async fn roll_account_key(
    via: Transport,
    old_credentials_json: &str,
    new_credentials_json: &str,
    options: &AcmeOptions,
    now: UnixMillis,
) -> Result<KeyChangeOutcome, AcmeError> {
    let old = Credentials::parse(old_credentials_json)?;
    let new = Credentials::parse(new_credentials_json)?;
    if old.id != new.id || old.directory != new.directory {
        return Err(AcmeError::Credentials(format!(
            "the new credentials are for account {} at {:?}, the old ones for account {} at {:?}",
            new.id, new.directory, old.id, old.directory
        )));
    }
    let old_key = AccountKey::from_credentials(&old)?;
    let new_key = AccountKey::from_credentials(&new)?;
    let http = via.into_client(options.request_timeout)?;
    transport::recorded(async {
        let mut session = Session::open(http, &old, now).await?;
        session.roll(&old.id, &old_key, &new_key).await
    })
    .await
}

const BAD_NONCE: &str = "urn:ietf:params:acme:error:badNonce";
const ACCOUNT_DOES_NOT_EXIST: &str = "urn:ietf:params:acme:error:accountDoesNotExist";
const UNAUTHORIZED: &str = "urn:ietf:params:acme:error:unauthorized";
const JOSE_JSON: &str = "application/jose+json";
const CLIENT_USER_AGENT: &str = concat!("certfleet/", env!("CARGO_PKG_VERSION"));

/// Attempts of one request while the CA refuses its nonce. A refused nonce means the request
/// was not processed (RFC 8555 §6.5), so sending it again is safe; Pebble refuses 5% by default.
const BAD_NONCE_ATTEMPTS_MAX: u32 = 5;

/// Bytes of credentials JSON beyond the old document and the new key: field names, quotes.
const CREDENTIALS_OVERHEAD: usize = 256;

/// instant-acme's `AccountCredentials` as it serializes them (its fields are private): the
/// account URL, the PKCS#8 key in base64url, and the directory URL or (credentials from
/// before instant-acme 0.4) the directory's URLs themselves.
#[derive(Deserialize, Serialize)]
struct Credentials {
    id: String,
    key_pkcs8: String,
    // instant-acme writes `"directory":null` for the old form; so do these.
    #[serde(default)]
    directory: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    urls: Option<serde_json::Value>,
}

impl Drop for Credentials {
    fn drop(&mut self) {
        self.key_pkcs8.zeroize();
    }
}

impl Credentials {
    fn parse(json: &str) -> Result<Self, AcmeError> {
        let credentials: Self =
            serde_json::from_str(json).map_err(|e| AcmeError::Credentials(e.to_string()))?;
        if credentials.directory.is_none() && credentials.urls.is_none() {
            return Err(credentials.no_way_to_the_ca());
        }
        Ok(credentials)
    }

    fn no_way_to_the_ca(&self) -> AcmeError {
        AcmeError::Credentials(format!(
            "account {} has neither `directory` nor `urls`: no way to its CA",
            self.id
        ))
    }
}

/// The directory resources a key change uses (RFC 8555 §7.1.1).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Directory {
    new_nonce: String,
    new_account: String,
    key_change: Option<String>,
}

/// An account key: ECDSA P-256, the only kind instant-acme generates and loads.
struct AccountKey {
    pair: EcdsaKeyPair,
    rng: SystemRandom,
}

impl AccountKey {
    fn from_credentials(credentials: &Credentials) -> Result<Self, AcmeError> {
        let der = Zeroizing::new(
            BASE64_URL_SAFE_NO_PAD
                .decode(&credentials.key_pkcs8)
                .map_err(|e| {
                    AcmeError::Credentials(format!(
                        "`key_pkcs8` of account {} is not base64url: {e}",
                        credentials.id
                    ))
                })?,
        );
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der, &rng).map_err(
            |e| {
                AcmeError::Credentials(format!(
                    "`key_pkcs8` of account {} is not an ECDSA P-256 PKCS#8 key: {e}",
                    credentials.id
                ))
            },
        )?;
        Ok(Self { pair, rng })
    }

    /// The public key as a JWK (RFC 7518 §6.2.1): the uncompressed point's coordinates.
    fn jwk(&self) -> Jwk {
        // ring's P-256 public key is always the 65-byte uncompressed point 0x04 || x || y
        // (SEC 1 §2.3.3), so this slicing cannot panic.
        let point = self.pair.public_key().as_ref();
        let (x, y) = point[1..].split_at(32);
        Jwk {
            crv: "P-256",
            kty: "EC",
            x: BASE64_URL_SAFE_NO_PAD.encode(x),
            y: BASE64_URL_SAFE_NO_PAD.encode(y),
        }
    }

    /// RFC 7638 §3: SHA-256 over the required members in lexicographic order without
    /// whitespace ([`Jwk::canonical`]).
    fn thumbprint(&self) -> String {
        let canonical = self.jwk().canonical();
        BASE64_URL_SAFE_NO_PAD.encode(ring::digest::digest(
            &ring::digest::SHA256,
            canonical.as_bytes(),
        ))
    }

    /// A flattened JWS (RFC 7515 §7.2.2) with ES256: the signature is r || s, 64 bytes
    /// (RFC 7518 §3.4), which is ring's `FIXED` encoding.
    fn sign(&self, protected: &Protected<'_>, payload: &[u8]) -> Result<Jws, AcmeError> {
        let protected = BASE64_URL_SAFE_NO_PAD.encode(to_json(protected)?);
        let payload = BASE64_URL_SAFE_NO_PAD.encode(payload);
        let signature = self
            .pair
            .sign(&self.rng, format!("{protected}.{payload}").as_bytes())
            .map_err(|e| AcmeError::Ca(local(format!("signing with an account key: {e}"))))?;
        Ok(Jws {
            protected,
            payload,
            signature: BASE64_URL_SAFE_NO_PAD.encode(signature.as_ref()),
        })
    }
}

/// An EC public key's JWK with exactly the members RFC 7638 §3.2 hashes, in its order.
#[derive(Serialize)]
struct Jwk {
    crv: &'static str,
    kty: &'static str,
    x: String,
    y: String,
}

impl Jwk {
    fn canonical(&self) -> String {
        // Spelled out rather than left to serde: these exact bytes are what RFC 7638 hashes.
        // Base64url coordinates need no escaping.
        format!(
            r#"{{"crv":"{}","kty":"{}","x":"{}","y":"{}"}}"#,
            self.crv, self.kty, self.x, self.y
        )
    }
}

/// A JWS protected header (RFC 8555 §6.2): `jwk` for a key no account is known by yet (and
/// for keyChange's inner JWS), `kid` for an account's request; `nonce` on every JWS the server
/// checks for replay, which excludes keyChange's inner one (RFC 8555 §7.3.5).
#[derive(Serialize)]
struct Protected<'a> {
    alg: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    jwk: Option<Jwk>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kid: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nonce: Option<&'a str>,
    url: &'a str,
}

impl<'a> Protected<'a> {
    fn with_jwk(key: &AccountKey, nonce: Option<&'a str>, url: &'a str) -> Self {
        Self {
            alg: "ES256",
            jwk: Some(key.jwk()),
            kid: None,
            nonce,
            url,
        }
    }

    fn with_kid(account: &'a str, nonce: &'a str, url: &'a str) -> Self {
        Self {
            alg: "ES256",
            jwk: None,
            kid: Some(account),
            nonce: Some(nonce),
            url,
        }
    }
}

#[derive(Serialize)]
struct Jws {
    protected: String,
    payload: String,
    signature: String,
}

/// keyChange's inner payload (RFC 8555 §7.3.5).
#[derive(Serialize)]
struct KeyChange<'a> {
    account: &'a str,
    #[serde(rename = "oldKey")]
    old_key: Jwk,
}

fn to_json(value: &impl Serialize) -> Result<Vec<u8>, AcmeError> {
    serde_json::to_vec(value).map_err(|e| AcmeError::Ca(local(format!("encoding a JWS: {e}"))))
}

/// A response, read whole.
struct Answer {
    status: u16,
    location: Option<String>,
    nonce: Option<String>,
    body: Bytes,
}

impl Answer {
    fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// A refusal that retrying cannot change: a 4xx other than 429 (RFC 8555 §6.6).
    fn is_refusal(&self) -> bool {
        (400..500).contains(&self.status) && self.status != 429
    }

    /// The problem type of an error response, when its body is a problem document.
    fn problem_type(&self) -> Option<String> {
        if self.is_success() {
            return None;
        }
        serde_json::from_slice::<instant_acme::Problem>(&self.body)
            .ok()
            .and_then(|problem| problem.r#type)
    }

    /// The error this response carries, with its status and `Retry-After` (read from the
    /// exchange [`transport`] recorded, which is this response's: requests here go one at a
    /// time).
    fn error(&self, now: UnixMillis) -> CaError {
        let error = match serde_json::from_slice::<instant_acme::Problem>(&self.body) {
            Ok(problem) => instant_acme::Error::Api(problem),
            Err(e) => instant_acme::Error::Json(e),
        };
        ca_error(error, now)
    }
}

/// Whether the CA binds some account to the new key.
enum Probe {
    /// Ours.
    Ours,
    /// No account.
    Unbound,
    /// Another account, or a refusal that means the key cannot become ours.
    Refused(String),
}

/// The requests of one key change, with the nonce the last answer carried.
struct Session {
    http: Box<dyn HttpClient>,
    directory: Directory,
    nonce: Option<String>,
    now: UnixMillis,
}

impl Session {
    /// Fetches the directory (or takes the URLs of old-form credentials).
    async fn open(
        http: Box<dyn HttpClient>,
        credentials: &Credentials,
        now: UnixMillis,
    ) -> Result<Self, AcmeError> {
        let directory = match (&credentials.directory, &credentials.urls) {
            (Some(url), _) => {
                let request = Request::builder()
                    .method(Method::GET)
                    .uri(url)
                    .header(USER_AGENT, CLIENT_USER_AGENT)
                    .body(BodyWrapper::default())
                    .map_err(|e| bad_url(url, &e))?;
                let answer = send(&*http, request, now).await?;
                if !answer.is_success() {
                    return Err(AcmeError::Ca(answer.error(now)));
                }
                serde_json::from_slice(&answer.body)
                    .map_err(|e| AcmeError::Ca(ca_error(instant_acme::Error::Json(e), now)))?
            }
            (None, Some(urls)) => Directory::deserialize(urls).map_err(|e| {
                AcmeError::Credentials(format!(
                    "`urls` of account {} are not a directory: {e}",
                    credentials.id
                ))
            })?,
            (None, None) => return Err(credentials.no_way_to_the_ca()),
        };
        Ok(Self {
            http,
            directory,
            nonce: None,
            now,
        })
    }

    async fn roll(
        &mut self,
        account: &str,
        old_key: &AccountKey,
        new_key: &AccountKey,
    ) -> Result<KeyChangeOutcome, AcmeError> {
        match self.probe(account, new_key).await? {
            Probe::Ours => {
                debug!(account, "the CA already binds the account to the new key");
                return Ok(KeyChangeOutcome::Rolled);
            }
            Probe::Refused(reason) => return Ok(KeyChangeOutcome::Refused(reason)),
            Probe::Unbound => {}
        }
        let Some(url) = self.directory.key_change.clone() else {
            return Ok(KeyChangeOutcome::Refused(
                "the CA's directory has no keyChange resource (RFC 8555 §7.3.5)".into(),
            ));
        };
        // RFC 8555 §7.3.5: the inner JWS, by the new key, names the account and its old key;
        // the outer, by the old key as the account, carries it. The inner has no nonce, so the
        // same one goes out again after a badNonce.
        let inner = new_key.sign(
            &Protected::with_jwk(new_key, None, &url),
            &to_json(&KeyChange {
                account,
                old_key: old_key.jwk(),
            })?,
        )?;
        let inner = to_json(&inner)?;
        let answer = self
            .post(&url, |nonce| {
                old_key.sign(&Protected::with_kid(account, nonce, &url), &inner)
            })
            .await?;
        if answer.is_success() {
            info!(account, "the CA rolled the account key");
            return Ok(KeyChangeOutcome::Rolled);
        }
        if answer.status == 409 {
            // RFC 8555 §7.3.5: the new key is already an account's, named in Location.
            return Ok(match answer.location.as_deref() {
                Some(location) if location == account => KeyChangeOutcome::Rolled,
                Some(location) => KeyChangeOutcome::Refused(other_account(location)),
                None => KeyChangeOutcome::Refused(format!(
                    "the CA refused the key change: {}",
                    describe(&answer.error(self.now))
                )),
            });
        }
        if !answer.is_refusal() {
            return Err(AcmeError::Ca(answer.error(self.now)));
        }
        let refusal = describe(&answer.error(self.now));
        // The account may have moved to the new key since the probe (another node's call that
        // got through): then the refusal only says the old key is no longer the account's.
        match self.probe(account, new_key).await? {
            Probe::Ours => Ok(KeyChangeOutcome::Rolled),
            Probe::Unbound | Probe::Refused(_) => Ok(KeyChangeOutcome::Refused(format!(
                "the CA refused the key change: {refusal}"
            ))),
        }
    }

    /// RFC 8555 §7.3.1: newAccount with `onlyReturnExisting`, signed by `key`, answers with
    /// the URL of the account `key` belongs to, or `accountDoesNotExist`; it never creates one.
    async fn probe(&mut self, account: &str, key: &AccountKey) -> Result<Probe, AcmeError> {
        let url = self.directory.new_account.clone();
        let payload = br#"{"onlyReturnExisting":true}"#;
        let answer = self
            .post(&url, |nonce| {
                key.sign(&Protected::with_jwk(key, Some(nonce), &url), payload)
            })
            .await?;
        if answer.is_success() {
            return match answer.location.as_deref() {
                Some(location) if location == account => Ok(Probe::Ours),
                Some(location) => Ok(Probe::Refused(other_account(location))),
                None => Err(AcmeError::Ca(ca_error(
                    instant_acme::Error::Str("newAccount answered without a Location"),
                    self.now,
                ))),
            };
        }
        if !answer.is_refusal() {
            return Err(AcmeError::Ca(answer.error(self.now)));
        }
        match answer.problem_type().as_deref() {
            Some(ACCOUNT_DOES_NOT_EXIST) => Ok(Probe::Unbound),
            // The key is a deactivated account's (RFC 8555 §7.3.6): it can never be ours.
            Some(UNAUTHORIZED) => Ok(Probe::Refused(format!(
                "the new key belongs to an account the CA will not use: {}",
                describe(&answer.error(self.now))
            ))),
            _ => Ok(Probe::Refused(format!(
                "the CA refused to look the new key up: {}",
                describe(&answer.error(self.now))
            ))),
        }
    }

    /// POSTs the JWS `jws(nonce)` builds to `url`, again with the nonce of each `badNonce`
    /// refusal (a few times, then an error), and keeps the nonce of the last answer for the
    /// next request.
    async fn post(
        &mut self,
        url: &str,
        jws: impl Fn(&str) -> Result<Jws, AcmeError>,
    ) -> Result<Answer, AcmeError> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let nonce = match self.nonce.take() {
                Some(nonce) => nonce,
                None => self.new_nonce().await?,
            };
            let body = to_json(&jws(&nonce)?)?;
            let request = Request::builder()
                .method(Method::POST)
                .uri(url)
                .header(USER_AGENT, CLIENT_USER_AGENT)
                .header(CONTENT_TYPE, JOSE_JSON)
                .body(BodyWrapper::from(body))
                .map_err(|e| bad_url(url, &e))?;
            let answer = send(&*self.http, request, self.now).await?;
            self.nonce.clone_from(&answer.nonce);
            if answer.problem_type().as_deref() != Some(BAD_NONCE) {
                return Ok(answer);
            }
            // Still unprocessed: a 4xx, but no refusal of the request itself.
            if attempts == BAD_NONCE_ATTEMPTS_MAX {
                return Err(AcmeError::Ca(answer.error(self.now)));
            }
            debug!(url, attempts, "badNonce; again with the nonce it carried");
        }
    }

    /// A fresh nonce from newNonce (RFC 8555 §7.2).
    async fn new_nonce(&self) -> Result<String, AcmeError> {
        let url = &self.directory.new_nonce;
        let request = Request::builder()
            .method(Method::HEAD)
            .uri(url)
            .header(USER_AGENT, CLIENT_USER_AGENT)
            .body(BodyWrapper::default())
            .map_err(|e| bad_url(url, &e))?;
        let answer = send(&*self.http, request, self.now).await?;
        if !answer.is_success() {
            return Err(AcmeError::Ca(answer.error(self.now)));
        }
        answer.nonce.ok_or_else(|| {
            AcmeError::Ca(ca_error(
                instant_acme::Error::Str("newNonce answered without a Replay-Nonce"),
                self.now,
            ))
        })
    }
}

/// Sends `request` and reads the whole answer; no answer is a transport error naming the URL.
async fn send(
    http: &dyn HttpClient,
    request: Request<BodyWrapper<Bytes>>,
    now: UnixMillis,
) -> Result<Answer, AcmeError> {
    let mut response = http
        .request(request)
        .await
        .map_err(|e| AcmeError::Ca(ca_error(e, now)))?;
    let header = |name: &str| {
        response
            .parts
            .headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    };
    let location = header(LOCATION.as_str());
    let nonce = header("Replay-Nonce");
    let status = response.parts.status.as_u16();
    let body = response
        .body
        .into_bytes()
        .await
        .map_err(|e| AcmeError::Ca(ca_error(instant_acme::Error::Other(e), now)))?;
    Ok(Answer {
        status,
        location,
        nonce,
        body,
    })
}

fn bad_url(url: &str, error: &http::Error) -> AcmeError {
    AcmeError::Ca(local(format!(
        "{url} is not a URL a request can go to: {error}"
    )))
}

fn other_account(location: &str) -> String {
    format!("the new key already belongs to another account at the CA: {location}")
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::{Arc, Mutex};

    use certfleet_core::command::FailureClass;
    use certfleet_core::order::classify;
    use http_body_util::BodyExt as _;
    use instant_acme::{Account, AccountCredentials, BytesResponse};
    use ring::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};

    use super::*;

    const NOW: UnixMillis = UnixMillis(1_700_000_000_000);
    const ACCOUNT: &str = "https://ca.test/acct/1";

    /// instant-acme's own test vector key, in the old credentials form that carries the
    /// directory's URLs (so nothing is fetched).
    const CREDENTIALS: &str = r#"{"id":"https://ca.test/acct/1","key_pkcs8":"MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgJVWC_QzOTCS5vtsJp2IG-UDc8cdDfeoKtxSZxaznM-mhRANCAAQenCPoGgPFTdPJ7VLLKt56RxPlYT1wNXnHc54PEyBg3LxKaH0-sJkX0mL8LyPEdsfL_Oz4TxHkWLJGrXVtNhfH","urls":{"newNonce":"https://ca.test/nonce","newAccount":"https://ca.test/account","newOrder":"https://ca.test/order","keyChange":"https://ca.test/key-change"}}"#;

    /// One request as the scripted CA saw it.
    #[derive(Clone, Debug)]
    struct Seen {
        method: Method,
        url: String,
        body: Vec<u8>,
    }

    /// One scripted answer to a POST.
    struct Scripted {
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: String,
    }

    /// A CA answering each POST with the next scripted answer, and every HEAD with a fresh
    /// nonce; it records what it was sent.
    #[derive(Clone, Default)]
    struct ScriptedCa {
        posts: Arc<Mutex<Vec<Scripted>>>,
        seen: Arc<Mutex<Vec<Seen>>>,
    }

    impl ScriptedCa {
        fn answer(self, status: u16, headers: &[(&'static str, &str)], body: &str) -> Self {
            let headers = headers.iter().map(|(n, v)| (*n, (*v).to_owned())).collect();
            self.posts.lock().unwrap().push(Scripted {
                status,
                headers,
                body: body.to_owned(),
            });
            self
        }

        fn seen(&self) -> Vec<Seen> {
            self.seen.lock().unwrap().clone()
        }
    }

    impl HttpClient for ScriptedCa {
        fn request(
            &self,
            request: Request<BodyWrapper<Bytes>>,
        ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>>
        {
            let method = request.method().clone();
            let url = request.uri().to_string();
            let posts = self.posts.clone();
            let seen = self.seen.clone();
            Box::pin(async move {
                let body = request.into_body().collect().await.unwrap().to_bytes();
                let count = {
                    let mut seen = seen.lock().unwrap();
                    seen.push(Seen {
                        method: method.clone(),
                        url,
                        body: body.to_vec(),
                    });
                    seen.len()
                };
                let nonce = format!("nonce-{count}");
                if method == Method::HEAD {
                    let response = http::Response::builder()
                        .status(200)
                        .header("Replay-Nonce", nonce)
                        .body(BodyWrapper::from(Vec::new()))
                        .unwrap();
                    return Ok(BytesResponse::from(response));
                }
                let mut posts = posts.lock().unwrap();
                assert!(!posts.is_empty(), "the CA was sent more than was scripted");
                let Scripted {
                    status,
                    headers,
                    body,
                } = posts.remove(0);
                let mut response = http::Response::builder()
                    .status(status)
                    .header("Replay-Nonce", nonce);
                for (name, value) in headers {
                    response = response.header(name, value);
                }
                let response = response.body(BodyWrapper::from(body.into_bytes())).unwrap();
                Ok(BytesResponse::from(response))
            })
        }
    }

    async fn roll(ca: &ScriptedCa, new: &str) -> Result<KeyChangeOutcome, AcmeError> {
        roll_account_key(
            Transport::Custom(Box::new(ca.clone())),
            CREDENTIALS,
            new,
            &AcmeOptions::default(),
            NOW,
        )
        .await
    }

    fn problem(kind: &str) -> String {
        format!(r#"{{"type":"urn:ietf:params:acme:error:{kind}","detail":"the CA says {kind}"}}"#)
    }

    fn decode_json(segment: &str) -> serde_json::Value {
        serde_json::from_slice(&BASE64_URL_SAFE_NO_PAD.decode(segment).unwrap()).unwrap()
    }

    /// The JWS's header and payload, after checking its signature with `jwk`'s key.
    fn verified(jws: &serde_json::Value, jwk: &serde_json::Value) -> (serde_json::Value, Vec<u8>) {
        let field = |name: &str| jws[name].as_str().unwrap().to_owned();
        let (protected, payload) = (field("protected"), field("payload"));
        let coordinate = |name: &str| {
            BASE64_URL_SAFE_NO_PAD
                .decode(jwk[name].as_str().unwrap())
                .unwrap()
        };
        let point = [vec![4], coordinate("x"), coordinate("y")].concat();
        let signature = BASE64_URL_SAFE_NO_PAD.decode(field("signature")).unwrap();
        assert_eq!(signature.len(), 64, "ES256 is r || s");
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
            .verify(format!("{protected}.{payload}").as_bytes(), &signature)
            .expect("the signature verifies with the JWK's key");
        (
            decode_json(&protected),
            BASE64_URL_SAFE_NO_PAD.decode(payload).unwrap(),
        )
    }

    fn jwk_of(credentials: &str) -> serde_json::Value {
        let credentials = Credentials::parse(credentials).unwrap();
        serde_json::to_value(AccountKey::from_credentials(&credentials).unwrap().jwk()).unwrap()
    }

    /// A client that instant-acme's `from_credentials` never calls for old-form credentials.
    struct Unreachable;

    impl HttpClient for Unreachable {
        fn request(
            &self,
            _: Request<BodyWrapper<Bytes>>,
        ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>>
        {
            panic!("old-form credentials need no directory");
        }
    }

    async fn instant_acme_thumbprint(credentials: &str) -> String {
        let credentials: AccountCredentials = serde_json::from_str(credentials).unwrap();
        let account = Account::builder_with_http(Box::new(Unreachable))
            .from_credentials(credentials)
            .await
            .unwrap();
        account.key_thumbprint().to_owned()
    }

    #[tokio::test]
    async fn the_thumbprint_is_instant_acmes() {
        let ours = key_thumbprint(CREDENTIALS).unwrap();
        assert_eq!(ours, instant_acme_thumbprint(CREDENTIALS).await);
        assert_eq!(ours.len(), 43, "SHA-256 in base64url without padding");
        // The JWK the thumbprint hashes: RFC 7638 §3.2's members, in its order.
        let canonical = {
            let credentials = Credentials::parse(CREDENTIALS).unwrap();
            AccountKey::from_credentials(&credentials)
                .unwrap()
                .jwk()
                .canonical()
        };
        assert!(
            canonical.starts_with(r#"{"crv":"P-256","kty":"EC","x":""#),
            "{canonical}"
        );
    }

    #[tokio::test]
    async fn new_credentials_keep_the_account_and_directory_and_change_the_key() {
        let new = credentials_with_new_key(CREDENTIALS).unwrap();
        let (old_json, new_json): (serde_json::Value, serde_json::Value) = (
            serde_json::from_str(CREDENTIALS).unwrap(),
            serde_json::from_str(&new).unwrap(),
        );
        assert_eq!(new_json["id"], old_json["id"]);
        assert_eq!(new_json["urls"], old_json["urls"]);
        assert_eq!(new_json["directory"], serde_json::Value::Null);
        assert_ne!(new_json["key_pkcs8"], old_json["key_pkcs8"]);
        // instant-acme loads them, with another key.
        let thumbprint = instant_acme_thumbprint(&new).await;
        assert_eq!(thumbprint, key_thumbprint(&new).unwrap());
        assert_ne!(thumbprint, key_thumbprint(CREDENTIALS).unwrap());
        // The directory form keeps its URL.
        let current = CREDENTIALS.replace(
            r#""urls":{"newNonce":"https://ca.test/nonce","newAccount":"https://ca.test/account","newOrder":"https://ca.test/order","keyChange":"https://ca.test/key-change"}"#,
            r#""directory":"https://ca.test/dir""#,
        );
        let new: serde_json::Value =
            serde_json::from_str(&credentials_with_new_key(&current).unwrap()).unwrap();
        assert_eq!(new["directory"], "https://ca.test/dir");
        assert_eq!(new["id"], ACCOUNT);
        assert!(new.get("urls").is_none());
    }

    #[tokio::test]
    async fn malformed_credentials_are_a_credentials_error_naming_the_fault() {
        let not_base64 = CREDENTIALS.replace("MIGHAgEAMBMG", "MIGH*gEAMBMG");
        let not_p256 = CREDENTIALS.replace("MIGHAgEAMBMG", "AAAAAgEAMBMG");
        let no_ca = r#"{"id":"https://ca.test/acct/1","key_pkcs8":"AAAA"}"#;
        for (json, says) in [
            ("", "EOF"),
            ("not json", "expected"),
            (
                r#"{"id":"https://ca.test/acct/1"}"#,
                "missing field `key_pkcs8`",
            ),
            (no_ca, "neither `directory` nor `urls`"),
            (&not_base64, "not base64url"),
            (&not_p256, "not an ECDSA P-256 PKCS#8 key"),
        ] {
            for error in [
                key_thumbprint(json).unwrap_err(),
                credentials_with_new_key(json).unwrap_err(),
                roll_account_key(
                    Transport::Custom(Box::new(Unreachable)),
                    json,
                    CREDENTIALS,
                    &AcmeOptions::default(),
                    NOW,
                )
                .await
                .unwrap_err(),
            ] {
                let AcmeError::Credentials(detail) = &error else {
                    panic!("{json:?}: {error:?}");
                };
                assert!(detail.contains(says), "{json:?}: {detail}");
            }
        }
        // Credentials of two accounts do not make a key change.
        let other = CREDENTIALS.replace("acct/1", "acct/2");
        let error = roll(&ScriptedCa::default(), &other).await.unwrap_err();
        assert!(
            matches!(&error, AcmeError::Credentials(d) if d.contains("acct/2")),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn an_unbound_key_is_rolled_with_an_outer_jws_by_the_old_key_around_an_inner_by_the_new()
    {
        let new = credentials_with_new_key(CREDENTIALS).unwrap();
        let ca = ScriptedCa::default()
            .answer(400, &[], &problem("accountDoesNotExist"))
            .answer(200, &[], "{}");
        assert_eq!(roll(&ca, &new).await.unwrap(), KeyChangeOutcome::Rolled);
        let seen = ca.seen();
        let urls: Vec<_> = seen
            .iter()
            .map(|s| (s.method.as_str(), s.url.as_str()))
            .collect();
        assert_eq!(
            urls,
            [
                ("HEAD", "https://ca.test/nonce"),
                ("POST", "https://ca.test/account"),
                ("POST", "https://ca.test/key-change"),
            ]
        );
        let (old_jwk, new_jwk) = (jwk_of(CREDENTIALS), jwk_of(&new));

        // The probe: by the new key, with its JWK, asking only for an existing account.
        let probe: serde_json::Value = serde_json::from_slice(&seen[1].body).unwrap();
        let (header, payload) = verified(&probe, &new_jwk);
        assert_eq!(header["jwk"], new_jwk);
        assert_eq!(header["nonce"], "nonce-1");
        assert_eq!(header["url"], "https://ca.test/account");
        assert!(header.get("kid").is_none());
        assert_eq!(payload, br#"{"onlyReturnExisting":true}"#);

        // keyChange: the outer by the old key as the account, with the probe's answer's nonce.
        let outer: serde_json::Value = serde_json::from_slice(&seen[2].body).unwrap();
        let (header, payload) = verified(&outer, &old_jwk);
        assert_eq!(header["alg"], "ES256");
        assert_eq!(header["kid"], ACCOUNT);
        assert_eq!(header["nonce"], "nonce-2");
        assert_eq!(header["url"], "https://ca.test/key-change");
        assert!(header.get("jwk").is_none());
        // The inner by the new key, with its JWK, no nonce and no kid.
        let inner: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        let (header, payload) = verified(&inner, &new_jwk);
        assert_eq!(
            header,
            serde_json::json!({"alg": "ES256", "jwk": new_jwk, "url": "https://ca.test/key-change"})
        );
        let payload: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(
            payload,
            serde_json::json!({"account": ACCOUNT, "oldKey": old_jwk})
        );
    }

    #[tokio::test]
    async fn a_key_the_ca_already_binds_to_the_account_is_rolled_without_a_key_change() {
        let new = credentials_with_new_key(CREDENTIALS).unwrap();
        let ca = ScriptedCa::default().answer(200, &[("Location", ACCOUNT)], "{}");
        assert_eq!(roll(&ca, &new).await.unwrap(), KeyChangeOutcome::Rolled);
        assert_eq!(ca.seen().len(), 2, "a nonce and the probe");
    }

    #[tokio::test]
    async fn a_key_of_another_account_is_refused_naming_it() {
        let new = credentials_with_new_key(CREDENTIALS).unwrap();
        let other = "https://ca.test/acct/2";
        // Found by the probe.
        let ca = ScriptedCa::default().answer(200, &[("Location", other)], "{}");
        let KeyChangeOutcome::Refused(reason) = roll(&ca, &new).await.unwrap() else {
            panic!("another account's key");
        };
        assert!(reason.contains(other), "{reason}");
        // Or by keyChange's conflict (another account took the key after the probe).
        let ca = ScriptedCa::default()
            .answer(400, &[], &problem("accountDoesNotExist"))
            .answer(409, &[("Location", other)], "");
        let KeyChangeOutcome::Refused(reason) = roll(&ca, &new).await.unwrap() else {
            panic!("another account's key");
        };
        assert!(reason.contains(other), "{reason}");
        // A conflict naming our own account means the CA had already switched.
        let ca = ScriptedCa::default()
            .answer(400, &[], &problem("accountDoesNotExist"))
            .answer(409, &[("Location", ACCOUNT)], "");
        assert_eq!(roll(&ca, &new).await.unwrap(), KeyChangeOutcome::Rolled);
    }

    #[tokio::test]
    async fn a_refused_key_change_is_checked_against_a_second_probe() {
        let new = credentials_with_new_key(CREDENTIALS).unwrap();
        // The old key is no longer the account's, and the new one is not either.
        let ca = ScriptedCa::default()
            .answer(400, &[], &problem("accountDoesNotExist"))
            .answer(400, &[], &problem("malformed"))
            .answer(400, &[], &problem("accountDoesNotExist"));
        let KeyChangeOutcome::Refused(reason) = roll(&ca, &new).await.unwrap() else {
            panic!("refused");
        };
        assert!(
            reason.contains("HTTP 400 malformed the CA says malformed"),
            "{reason}"
        );
        // The refusal came because the account had meanwhile moved to the new key.
        let ca = ScriptedCa::default()
            .answer(400, &[], &problem("accountDoesNotExist"))
            .answer(400, &[], &problem("malformed"))
            .answer(200, &[("Location", ACCOUNT)], "{}");
        assert_eq!(roll(&ca, &new).await.unwrap(), KeyChangeOutcome::Rolled);
    }

    #[tokio::test]
    async fn bad_nonces_are_retried_with_the_nonce_each_refusal_carries() {
        let new = credentials_with_new_key(CREDENTIALS).unwrap();
        let ca = ScriptedCa::default()
            .answer(400, &[], &problem("badNonce"))
            .answer(400, &[], &problem("accountDoesNotExist"))
            .answer(400, &[], &problem("badNonce"))
            .answer(200, &[], "");
        assert_eq!(roll(&ca, &new).await.unwrap(), KeyChangeOutcome::Rolled);
        let nonces: Vec<serde_json::Value> = ca.seen()[1..]
            .iter()
            .map(|s| {
                let jws: serde_json::Value = serde_json::from_slice(&s.body).unwrap();
                decode_json(jws["protected"].as_str().unwrap())["nonce"].clone()
            })
            .collect();
        assert_eq!(nonces, ["nonce-1", "nonce-2", "nonce-3", "nonce-4"]);
        // Past the limit the refusal is an error, for the caller to retry later.
        let mut ca = ScriptedCa::default();
        for _ in 0..BAD_NONCE_ATTEMPTS_MAX {
            ca = ca.answer(400, &[], &problem("badNonce"));
        }
        let error = roll(&ca, &new).await.unwrap_err();
        let ca_error = error.ca().expect("a CA error");
        assert_eq!(ca_error.problem.as_deref(), Some(BAD_NONCE));
    }

    #[tokio::test]
    async fn rate_limits_and_server_errors_are_errors_with_retry_at_never_refusals() {
        let new = credentials_with_new_key(CREDENTIALS).unwrap();
        let ca = ScriptedCa::default()
            .answer(400, &[], &problem("accountDoesNotExist"))
            .answer(429, &[("Retry-After", "30")], &problem("rateLimited"));
        let error = roll(&ca, &new).await.unwrap_err();
        let ca_error = error.ca().expect("a CA error");
        assert_eq!(ca_error.status, Some(429));
        assert_eq!(ca_error.retry_at, Some(NOW.plus_ms(30_000)));
        assert_eq!(classify(ca_error), FailureClass::RateLimited);

        let ca = ScriptedCa::default().answer(503, &[], "<html>down</html>");
        let error = roll(&ca, &new).await.unwrap_err();
        let ca_error = error.ca().expect("a CA error");
        assert_eq!(ca_error.status, Some(503));
        assert!(
            ca_error
                .detail
                .contains("https://ca.test/account answered 503"),
            "{}",
            ca_error.detail
        );
        assert_eq!(classify(ca_error), FailureClass::Retryable);
    }

    #[tokio::test]
    async fn a_directory_without_key_change_is_refused() {
        let old = CREDENTIALS.replace(r#","keyChange":"https://ca.test/key-change""#, "");
        let new = credentials_with_new_key(&old).unwrap();
        let ca = ScriptedCa::default().answer(400, &[], &problem("accountDoesNotExist"));
        let outcome = roll_account_key(
            Transport::Custom(Box::new(ca)),
            &old,
            &new,
            &AcmeOptions::default(),
            NOW,
        )
        .await
        .unwrap();
        let KeyChangeOutcome::Refused(reason) = outcome else {
            panic!("no keyChange");
        };
        assert!(reason.contains("no keyChange"), "{reason}");
    }
}
