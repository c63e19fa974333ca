//! A minimal ACME client that drives an [`AcmeServer`] in process, with no network: for unit
//! tests, property tests, determinism checks, and simulation tests that want the CA without
//! instant-acme. It signs real JWS (so the server's checks all run) and keeps the nonce of the
//! last response, as RFC 8555 §6.5 clients do.

use base64::Engine;
use base64::prelude::BASE64_URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{Request, Response, header};
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair,
    KeyPair,
};
use serde_json::{Value, json};

use crate::AcmeServer;
use crate::rng::sha256;

/// An account key that signs JWS.
pub enum TestKey {
    /// Ed25519 from a seed: deterministic signatures, so requests are reproducible.
    Ed25519(Ed25519KeyPair),
    /// ECDSA P-256 (random signatures).
    P256(EcdsaKeyPair, SystemRandom),
    /// ECDSA P-384 (random signatures).
    P384(EcdsaKeyPair, SystemRandom),
}

impl std::fmt::Debug for TestKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.alg())
    }
}

impl TestKey {
    /// An Ed25519 key from `seed`.
    #[must_use]
    pub fn ed25519(seed: [u8; 32]) -> Self {
        // Any 32 bytes are an Ed25519 private key; `from_seed_unchecked` only fails on length.
        match Ed25519KeyPair::from_seed_unchecked(&seed) {
            Ok(key) => Self::Ed25519(key),
            Err(_) => unreachable!("a 32-byte seed is always an Ed25519 key"),
        }
    }

    /// A fresh P-256 key.
    ///
    /// # Panics
    /// If the system random source fails.
    #[must_use]
    pub fn p256() -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .expect("system random source");
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .expect("a key ring just generated");
        Self::P256(key, rng)
    }

    /// A fresh P-384 key.
    ///
    /// # Panics
    /// If the system random source fails.
    #[must_use]
    pub fn p384() -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &rng)
            .expect("system random source");
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .expect("a key ring just generated");
        Self::P384(key, rng)
    }

    /// The JWS `alg`.
    #[must_use]
    pub fn alg(&self) -> &'static str {
        match self {
            Self::Ed25519(_) => "EdDSA",
            Self::P256(..) => "ES256",
            Self::P384(..) => "ES384",
        }
    }

    /// The public JWK.
    #[must_use]
    pub fn jwk(&self) -> Value {
        let e = |b: &[u8]| BASE64_URL_SAFE_NO_PAD.encode(b);
        match self {
            Self::Ed25519(key) => {
                json!({"kty": "OKP", "crv": "Ed25519", "x": e(key.public_key().as_ref())})
            }
            Self::P256(key, _) | Self::P384(key, _) => {
                let point = &key.public_key().as_ref()[1..];
                let (x, y) = point.split_at(point.len() / 2);
                let crv = if matches!(self, Self::P256(..)) {
                    "P-256"
                } else {
                    "P-384"
                };
                json!({"kty": "EC", "crv": crv, "x": e(x), "y": e(y)})
            }
        }
    }

    /// base64url(SHA-256 JWK thumbprint) (RFC 7638).
    #[must_use]
    pub fn thumbprint(&self) -> String {
        let jwk = self.jwk();
        let members = |names: &[&str]| {
            let parts: Vec<String> = names
                .iter()
                .map(|name| format!("\"{name}\":{}", jwk[*name]))
                .collect();
            format!("{{{}}}", parts.join(","))
        };
        let canonical = match self {
            Self::Ed25519(_) => members(&["crv", "kty", "x"]),
            _ => members(&["crv", "kty", "x", "y"]),
        };
        BASE64_URL_SAFE_NO_PAD.encode(sha256(canonical.as_bytes()))
    }

    /// Signs `message`.
    ///
    /// # Panics
    /// If ECDSA signing fails (the system random source failed).
    #[must_use]
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        match self {
            Self::Ed25519(key) => key.sign(message).as_ref().to_vec(),
            Self::P256(key, rng) | Self::P384(key, rng) => key
                .sign(rng, message)
                .expect("ECDSA signing")
                .as_ref()
                .to_vec(),
        }
    }
}

/// An in-process ACME client for one account.
#[derive(Debug)]
pub struct TestClient {
    /// The account key.
    pub key: TestKey,
    /// The account URL once created.
    pub kid: Option<String>,
    /// The nonce of the last response.
    pub nonce: Option<String>,
    base_url: String,
}

impl TestClient {
    /// A client of the CA at `base_url` with `key`.
    #[must_use]
    pub fn new(key: TestKey, base_url: &str) -> Self {
        Self {
            key,
            kid: None,
            nonce: None,
            base_url: base_url.trim_end_matches('/').to_owned(),
        }
    }

    /// `base_url` + `path`.
    #[must_use]
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// A signed POST request for `url` (`payload` `None`: POST-as-GET), with `nonce`.
    #[must_use]
    pub fn request(&self, url: &str, nonce: &str, payload: Option<&Value>) -> Request<Bytes> {
        let mut header = json!({"alg": self.key.alg(), "nonce": nonce, "url": url});
        match &self.kid {
            Some(kid) => header["kid"] = json!(kid),
            None => header["jwk"] = self.key.jwk(),
        }
        let protected = BASE64_URL_SAFE_NO_PAD.encode(header.to_string());
        let payload = payload.map_or(String::new(), |p| {
            BASE64_URL_SAFE_NO_PAD.encode(p.to_string())
        });
        let signature = self.key.sign(format!("{protected}.{payload}").as_bytes());
        let body = json!({
            "protected": protected,
            "payload": payload,
            "signature": BASE64_URL_SAFE_NO_PAD.encode(signature),
        });
        let path = url.strip_prefix(&self.base_url).unwrap_or(url);
        let mut request = Request::new(Bytes::from(body.to_string()));
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = path.parse().unwrap_or_default();
        request.headers_mut().insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/jose+json"),
        );
        request
    }

    /// A fresh nonce from `newNonce`.
    pub fn fresh_nonce(&mut self, server: &mut AcmeServer, now_ms: u64) -> String {
        let mut request = Request::new(Bytes::new());
        *request.method_mut() = http::Method::HEAD;
        *request.uri_mut() = self
            .url("/new-nonce")
            .strip_prefix(&self.base_url)
            .unwrap_or("/new-nonce")
            .parse()
            .unwrap_or_default();
        let response = server.handle(request, now_ms);
        replay_nonce(&response).unwrap_or_default()
    }

    /// Signs and sends a POST to `url`, using (and then replacing) the stored nonce.
    pub fn post(
        &mut self,
        server: &mut AcmeServer,
        url: &str,
        payload: Option<&Value>,
        now_ms: u64,
    ) -> Response<Bytes> {
        let nonce = match self.nonce.take() {
            Some(nonce) => nonce,
            None => self.fresh_nonce(server, now_ms),
        };
        let response = server.handle(self.request(url, &nonce, payload), now_ms);
        self.nonce = replay_nonce(&response);
        response
    }

    /// newAccount; stores the account URL on success.
    pub fn new_account(&mut self, server: &mut AcmeServer, now_ms: u64) -> Response<Bytes> {
        let url = self.url("/new-account");
        let response = self.post(
            server,
            &url,
            Some(&json!({"termsOfServiceAgreed": true})),
            now_ms,
        );
        if response.status().is_success() {
            self.kid = location(&response);
        }
        response
    }

    /// newOrder for DNS names.
    pub fn new_order(
        &mut self,
        server: &mut AcmeServer,
        names: &[&str],
        now_ms: u64,
    ) -> Response<Bytes> {
        let identifiers: Vec<Value> = names
            .iter()
            .map(|name| json!({"type": "dns", "value": name}))
            .collect();
        let url = self.url("/new-order");
        self.post(
            server,
            &url,
            Some(&json!({"identifiers": identifiers})),
            now_ms,
        )
    }
}

/// The `Replay-Nonce` of a response.
#[must_use]
pub fn replay_nonce<B>(response: &Response<B>) -> Option<String> {
    response
        .headers()
        .get("replay-nonce")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The `Location` of a response.
#[must_use]
pub fn location<B>(response: &Response<B>) -> Option<String> {
    response
        .headers()
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The JSON body of a response (`Null` if it is not JSON).
#[must_use]
pub fn body_json(response: &Response<Bytes>) -> Value {
    serde_json::from_slice(response.body()).unwrap_or(Value::Null)
}
