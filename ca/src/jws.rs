//! JWS in the flattened JSON serialization, as ACME uses it (RFC 8555 §6.2, RFC 7515), JWKs
//! (RFC 7517/7518/8037) and their thumbprints (RFC 7638).
//!
//! Parsing is strict and never panics: every defect of untrusted input is a [`Problem`].

use base64::Engine;
use base64::prelude::BASE64_URL_SAFE_NO_PAD;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde_json::{Map, Value};

use crate::problem::{Problem, ProblemType};
use crate::rng::sha256;

/// The `alg` values accepted, as listed in a `badSignatureAlgorithm` problem.
pub(crate) const ALGORITHMS: [&str; 4] = ["ES256", "ES384", "EdDSA", "RS256"];

/// A JWS signature algorithm we verify.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Alg {
    Es256,
    Es384,
    EdDsa,
    Rs256,
}

impl Alg {
    fn parse(value: &str) -> Option<Self> {
        match value {
            "ES256" => Some(Self::Es256),
            "ES384" => Some(Self::Es384),
            "EdDSA" => Some(Self::EdDsa),
            "RS256" => Some(Self::Rs256),
            _ => None,
        }
    }
}

/// A public key from a `jwk` header, kept as its canonical members.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Jwk {
    /// `kty` EC: `crv` P-256 or P-384, coordinates.
    Ec { p384: bool, x: Vec<u8>, y: Vec<u8> },
    /// `kty` OKP, `crv` Ed25519 (RFC 8037).
    Ed25519 { x: Vec<u8> },
    /// `kty` RSA, modulus and exponent.
    Rsa { n: Vec<u8>, e: Vec<u8> },
}

impl Jwk {
    pub(crate) fn parse(value: &Value) -> Result<Self, Problem> {
        let object = value
            .as_object()
            .ok_or_else(|| Problem::malformed("jwk is not a JSON object"))?;
        let member = |name: &str| -> Result<Vec<u8>, Problem> {
            let text = object
                .get(name)
                .and_then(Value::as_str)
                .ok_or_else(|| Problem::malformed(format!("jwk has no string member {name:?}")))?;
            b64(text)
                .map_err(|_| Problem::malformed(format!("jwk member {name:?} is not base64url")))
        };
        let kty = object.get("kty").and_then(Value::as_str);
        let crv = object.get("crv").and_then(Value::as_str);
        match (kty, crv) {
            (Some("EC"), Some(curve @ ("P-256" | "P-384"))) => {
                let p384 = curve == "P-384";
                let (x, y) = (member("x")?, member("y")?);
                let size = if p384 { 48 } else { 32 };
                if x.len() != size || y.len() != size {
                    return Err(Problem::malformed(format!(
                        "jwk {curve} coordinates must be {size} bytes"
                    )));
                }
                Ok(Self::Ec { p384, x, y })
            }
            (Some("OKP"), Some("Ed25519")) => {
                let x = member("x")?;
                if x.len() != 32 {
                    return Err(Problem::malformed("jwk Ed25519 key must be 32 bytes"));
                }
                Ok(Self::Ed25519 { x })
            }
            (Some("RSA"), _) => {
                let (n, e) = (member("n")?, member("e")?);
                // ring verifies 2048..=8192-bit moduli; say so here rather than as a bad signature.
                let bits = n.iter().skip_while(|b| **b == 0).count() * 8;
                if !(2048..=8192).contains(&bits) {
                    return Err(Problem::new(
                        ProblemType::BadSignatureAlgorithm,
                        format!("RSA modulus of about {bits} bits; 2048 to 8192 accepted"),
                    ));
                }
                Ok(Self::Rsa { n, e })
            }
            _ => Err(Problem::new(
                ProblemType::BadSignatureAlgorithm,
                format!("unsupported jwk kty {kty:?} crv {crv:?}"),
            )),
        }
    }

    /// The JWK with only its required members, in lexicographic order (RFC 7638 §3.2): both
    /// the thumbprint input and the form we store.
    pub(crate) fn canonical_json(&self) -> String {
        let e = |bytes: &[u8]| BASE64_URL_SAFE_NO_PAD.encode(bytes);
        match self {
            Self::Ec { p384, x, y } => format!(
                r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
                if *p384 { "P-384" } else { "P-256" },
                e(x),
                e(y)
            ),
            Self::Ed25519 { x } => format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#, e(x)),
            Self::Rsa { n, e: exponent } => {
                format!(r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#, e(exponent), e(n))
            }
        }
    }

    /// base64url(SHA-256 thumbprint) (RFC 7638), the account-key half of key authorizations
    /// (RFC 8555 §8.1).
    pub(crate) fn thumbprint(&self) -> String {
        BASE64_URL_SAFE_NO_PAD.encode(sha256(self.canonical_json().as_bytes()))
    }

    pub(crate) fn to_json(&self) -> Value {
        // Our own output of `canonical_json` is valid JSON.
        serde_json::from_str(&self.canonical_json()).unwrap_or(Value::Null)
    }

    /// Whether `alg` is the algorithm of this key type (RFC 7518 §3.1, RFC 8037 §3.1).
    fn matches(&self, alg: Alg) -> bool {
        matches!(
            (self, alg),
            (Self::Ec { p384: false, .. }, Alg::Es256)
                | (Self::Ec { p384: true, .. }, Alg::Es384)
                | (Self::Ed25519 { .. }, Alg::EdDsa)
                | (Self::Rsa { .. }, Alg::Rs256)
        )
    }

    /// Verifies `signature` over `message` with ring.
    pub(crate) fn verify(&self, alg: Alg, message: &[u8], signature: &[u8]) -> Result<(), Problem> {
        if !self.matches(alg) {
            let mut problem = Problem::new(
                ProblemType::BadSignatureAlgorithm,
                format!("alg {alg:?} does not match the key type"),
            );
            problem.algorithms = true;
            return Err(problem);
        }
        let verified = match self {
            Self::Ec { p384, x, y } => {
                // JWS ECDSA signatures are r || s (RFC 7518 §3.4), ring's FIXED format.
                let mut point = Vec::with_capacity(1 + x.len() + y.len());
                point.push(0x04);
                point.extend_from_slice(x);
                point.extend_from_slice(y);
                let algorithm = if *p384 {
                    &signature::ECDSA_P384_SHA384_FIXED
                } else {
                    &signature::ECDSA_P256_SHA256_FIXED
                };
                UnparsedPublicKey::new(algorithm, point).verify(message, signature)
            }
            Self::Ed25519 { x } => {
                UnparsedPublicKey::new(&signature::ED25519, x).verify(message, signature)
            }
            Self::Rsa { n, e } => RsaPublicKeyComponents { n, e }.verify(
                &signature::RSA_PKCS1_2048_8192_SHA256,
                message,
                signature,
            ),
        };
        verified.map_err(|_| Problem::malformed("JWS signature does not verify"))
    }
}

/// Who signed: a new key (`newAccount`) or an account URL.
#[derive(Clone, Debug)]
pub(crate) enum Signer {
    Jwk(Jwk),
    Kid(String),
}

/// A parsed, not yet verified, JWS.
#[derive(Clone, Debug)]
pub(crate) struct Jws {
    pub(crate) alg: Alg,
    pub(crate) signer: Signer,
    pub(crate) nonce: String,
    pub(crate) url: String,
    /// `None`: an empty payload, a POST-as-GET (RFC 8555 §6.3).
    pub(crate) payload: Option<Vec<u8>>,
    signing_input: Vec<u8>,
    signature: Vec<u8>,
}

impl Jws {
    /// Parses a flattened JWS (RFC 7515 §7.2.2) with the ACME header rules of RFC 8555 §6.2.
    pub(crate) fn parse(body: &[u8]) -> Result<Self, Problem> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| Problem::malformed(format!("request body is not JSON: {e}")))?;
        let object = value
            .as_object()
            .ok_or_else(|| Problem::malformed("request body is not a JSON object"))?;
        for key in object.keys() {
            match key.as_str() {
                "protected" | "payload" | "signature" => {}
                // RFC 8555 §6.2: no unprotected header, and one signature only.
                other => {
                    return Err(Problem::malformed(format!(
                        "unexpected JWS member {other:?} (flattened serialization, no unprotected header)"
                    )));
                }
            }
        }
        let text = |name: &str| -> Result<&str, Problem> {
            object
                .get(name)
                .and_then(Value::as_str)
                .ok_or_else(|| Problem::malformed(format!("JWS has no string member {name:?}")))
        };
        let (protected_b64, payload_b64, signature_b64) =
            (text("protected")?, text("payload")?, text("signature")?);
        let protected = b64(protected_b64)
            .map_err(|_| Problem::malformed("JWS protected header is not base64url"))?;
        let header: Value = serde_json::from_slice(&protected)
            .map_err(|_| Problem::malformed("JWS protected header is not JSON"))?;
        let Value::Object(header) = header else {
            return Err(Problem::malformed("JWS protected header is not an object"));
        };
        let signature =
            b64(signature_b64).map_err(|_| Problem::malformed("JWS signature is not base64url"))?;
        let payload = if payload_b64.is_empty() {
            None
        } else {
            Some(b64(payload_b64).map_err(|_| Problem::malformed("JWS payload is not base64url"))?)
        };
        if header.contains_key("crit") {
            return Err(Problem::malformed(
                "JWS crit header parameters are not understood",
            ));
        }
        let alg_name = header
            .get("alg")
            .and_then(Value::as_str)
            .ok_or_else(|| Problem::malformed("JWS header has no alg"))?;
        let Some(alg) = Alg::parse(alg_name) else {
            let mut problem = Problem::new(
                ProblemType::BadSignatureAlgorithm,
                format!("JWS alg {alg_name:?} is not supported"),
            );
            problem.algorithms = true;
            return Err(problem);
        };
        let url = header
            .get("url")
            .and_then(Value::as_str)
            .ok_or_else(|| Problem::malformed("JWS header has no url"))?
            .to_owned();
        // A missing nonce is a bad nonce (RFC 8555 §6.5), so clients retry with a fresh one.
        let nonce = header
            .get("nonce")
            .and_then(Value::as_str)
            .ok_or_else(|| Problem::new(ProblemType::BadNonce, "JWS header has no nonce"))?
            .to_owned();
        let signer = match (header.get("jwk"), header.get("kid")) {
            (Some(jwk), None) => Signer::Jwk(Jwk::parse(jwk)?),
            (None, Some(Value::String(kid))) => Signer::Kid(kid.clone()),
            (None, Some(_)) => return Err(Problem::malformed("JWS kid is not a string")),
            _ => {
                return Err(Problem::malformed(
                    "JWS header must have exactly one of jwk and kid",
                ));
            }
        };
        let mut signing_input = Vec::with_capacity(protected_b64.len() + 1 + payload_b64.len());
        signing_input.extend_from_slice(protected_b64.as_bytes());
        signing_input.push(b'.');
        signing_input.extend_from_slice(payload_b64.as_bytes());
        Ok(Self {
            alg,
            signer,
            nonce,
            url,
            payload,
            signing_input,
            signature,
        })
    }

    /// Verifies the signature with `key`.
    pub(crate) fn verify(&self, key: &Jwk) -> Result<(), Problem> {
        key.verify(self.alg, &self.signing_input, &self.signature)
    }

    /// The payload as a JSON object (`{}` counts; a POST-as-GET does not).
    pub(crate) fn payload_object(&self) -> Result<Map<String, Value>, Problem> {
        let Some(payload) = &self.payload else {
            return Err(Problem::malformed(
                "this request needs a payload, not POST-as-GET",
            ));
        };
        match serde_json::from_slice(payload) {
            Ok(Value::Object(object)) => Ok(object),
            _ => Err(Problem::malformed("JWS payload is not a JSON object")),
        }
    }
}

/// Strict base64url without padding (RFC 7515 §2): padding, other alphabets and non-canonical
/// trailing bits are refused.
pub(crate) fn b64(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    BASE64_URL_SAFE_NO_PAD.decode(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestKey;
    use serde_json::json;

    fn jws(key: &TestKey, header: Value, payload: &str) -> Vec<u8> {
        let protected = BASE64_URL_SAFE_NO_PAD.encode(header.to_string());
        let payload = BASE64_URL_SAFE_NO_PAD.encode(payload);
        let signature = key.sign(format!("{protected}.{payload}").as_bytes());
        json!({"protected": protected, "payload": payload, "signature": BASE64_URL_SAFE_NO_PAD.encode(signature)})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn an_ed25519_jws_verifies_and_a_flipped_bit_does_not() {
        let key = TestKey::ed25519([3; 32]);
        let header = json!({"alg": "EdDSA", "jwk": key.jwk(), "nonce": "n", "url": "http://ca/x"});
        let body = jws(&key, header, "{}");
        let parsed = Jws::parse(&body).unwrap();
        let Signer::Jwk(jwk) = &parsed.signer else {
            panic!("jwk expected")
        };
        parsed.verify(jwk).unwrap();
        let mut bad = parsed.clone();
        bad.signature[0] ^= 1;
        assert_eq!(bad.verify(jwk).unwrap_err().kind, ProblemType::Malformed);
    }

    #[test]
    fn es256_and_es384_jws_verify() {
        for key in [TestKey::p256(), TestKey::p384()] {
            let header = json!({"alg": key.alg(), "jwk": key.jwk(), "nonce": "n", "url": "u"});
            let parsed = Jws::parse(&jws(&key, header, "{}")).unwrap();
            let Signer::Jwk(jwk) = &parsed.signer else {
                panic!("jwk expected")
            };
            parsed.verify(jwk).unwrap();
            assert_eq!(jwk.thumbprint(), key.thumbprint());
        }
    }

    #[test]
    fn an_unsupported_alg_is_a_bad_signature_algorithm_listing_ours() {
        let key = TestKey::ed25519([3; 32]);
        let header = json!({"alg": "HS256", "kid": "k", "nonce": "n", "url": "u"});
        let problem = Jws::parse(&jws(&key, header, "{}")).unwrap_err();
        assert_eq!(problem.kind, ProblemType::BadSignatureAlgorithm);
        assert_eq!(problem.to_json()["algorithms"][0], "ES256");
    }

    #[test]
    fn alg_must_match_the_key_type() {
        let key = TestKey::ed25519([3; 32]);
        let header = json!({"alg": "ES256", "jwk": key.jwk(), "nonce": "n", "url": "u"});
        let parsed = Jws::parse(&jws(&key, header, "{}")).unwrap();
        let Signer::Jwk(jwk) = &parsed.signer else {
            panic!("jwk expected")
        };
        assert_eq!(
            parsed.verify(jwk).unwrap_err().kind,
            ProblemType::BadSignatureAlgorithm
        );
    }

    #[test]
    fn structural_defects_are_malformed() {
        let key = TestKey::ed25519([3; 32]);
        let both = json!({"alg": "EdDSA", "jwk": key.jwk(), "kid": "k", "nonce": "n", "url": "u"});
        assert_eq!(
            Jws::parse(&jws(&key, both, "{}")).unwrap_err().kind,
            ProblemType::Malformed
        );
        let no_url = json!({"alg": "EdDSA", "kid": "k", "nonce": "n"});
        assert_eq!(
            Jws::parse(&jws(&key, no_url, "{}")).unwrap_err().kind,
            ProblemType::Malformed
        );
        let no_nonce = json!({"alg": "EdDSA", "kid": "k", "url": "u"});
        assert_eq!(
            Jws::parse(&jws(&key, no_nonce, "{}")).unwrap_err().kind,
            ProblemType::BadNonce
        );
        let mut unprotected: Value = serde_json::from_slice(&jws(
            &key,
            json!({"alg": "EdDSA", "kid": "k", "nonce": "n", "url": "u"}),
            "{}",
        ))
        .unwrap();
        unprotected["header"] = json!({});
        assert_eq!(
            Jws::parse(unprotected.to_string().as_bytes())
                .unwrap_err()
                .kind,
            ProblemType::Malformed
        );
        for garbage in [&b""[..], b"[]", b"{\"protected\":1}", b"\xff"] {
            assert_eq!(
                Jws::parse(garbage).unwrap_err().kind,
                ProblemType::Malformed
            );
        }
    }

    #[test]
    fn the_thumbprint_matches_rfc_7638s_example() {
        // RFC 7638 §3.1.
        let n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
        let jwk = Jwk::parse(
            &json!({"kty": "RSA", "n": n, "e": "AQAB", "alg": "RS256", "kid": "2011-04-29"}),
        )
        .unwrap();
        assert_eq!(
            jwk.thumbprint(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
        assert_eq!(jwk.to_json()["kty"], "RSA");
    }
}
