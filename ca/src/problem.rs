//! RFC 7807 problem documents with ACME's error types (RFC 8555 §6.7).

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use serde_json::json;

/// The ACME error types this CA answers with (RFC 8555 §6.7; `alreadyReplaced` from RFC 9773,
/// `invalidProfile` from draft-aaron-acme-profiles).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum ProblemType {
    /// The request names an account that does not exist.
    AccountDoesNotExist,
    /// The certificate named in `replaces` was already replaced.
    AlreadyReplaced,
    /// The certificate was already revoked.
    AlreadyRevoked,
    /// The CSR is unacceptable.
    BadCsr,
    /// The JWS nonce is unknown, used or expired.
    BadNonce,
    /// The revocation reason is not allowed.
    BadRevocationReason,
    /// The JWS algorithm is not supported.
    BadSignatureAlgorithm,
    /// The server could not connect to the validation target.
    Connection,
    /// The response to a challenge did not match.
    IncorrectResponse,
    /// The requested profile is not offered.
    InvalidProfile,
    /// The request is malformed.
    Malformed,
    /// The order is not in a state that allows the request.
    OrderNotReady,
    /// A rate limit was exceeded.
    RateLimited,
    /// The server will not issue for the identifier.
    RejectedIdentifier,
    /// The server failed (or pretends to, as a fault).
    ServerInternal,
    /// The TLS handshake of a validation failed.
    Tls,
    /// The client lacks authorization for the request.
    Unauthorized,
    /// The identifier type is not supported.
    UnsupportedIdentifier,
}

impl ProblemType {
    /// The `type` URN.
    #[must_use]
    pub fn urn(self) -> &'static str {
        match self {
            Self::AccountDoesNotExist => "urn:ietf:params:acme:error:accountDoesNotExist",
            Self::AlreadyReplaced => "urn:ietf:params:acme:error:alreadyReplaced",
            Self::AlreadyRevoked => "urn:ietf:params:acme:error:alreadyRevoked",
            Self::BadCsr => "urn:ietf:params:acme:error:badCSR",
            Self::BadNonce => "urn:ietf:params:acme:error:badNonce",
            Self::BadRevocationReason => "urn:ietf:params:acme:error:badRevocationReason",
            Self::BadSignatureAlgorithm => "urn:ietf:params:acme:error:badSignatureAlgorithm",
            Self::Connection => "urn:ietf:params:acme:error:connection",
            Self::IncorrectResponse => "urn:ietf:params:acme:error:incorrectResponse",
            Self::InvalidProfile => "urn:ietf:params:acme:error:invalidProfile",
            Self::Malformed => "urn:ietf:params:acme:error:malformed",
            Self::OrderNotReady => "urn:ietf:params:acme:error:orderNotReady",
            Self::RateLimited => "urn:ietf:params:acme:error:rateLimited",
            Self::RejectedIdentifier => "urn:ietf:params:acme:error:rejectedIdentifier",
            Self::ServerInternal => "urn:ietf:params:acme:error:serverInternal",
            Self::Tls => "urn:ietf:params:acme:error:tls",
            Self::Unauthorized => "urn:ietf:params:acme:error:unauthorized",
            Self::UnsupportedIdentifier => "urn:ietf:params:acme:error:unsupportedIdentifier",
        }
    }

    /// The HTTP status this CA answers the problem with.
    #[must_use]
    pub fn status(self) -> StatusCode {
        match self {
            Self::Unauthorized | Self::OrderNotReady => StatusCode::FORBIDDEN,
            Self::AlreadyReplaced => StatusCode::CONFLICT,
            Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Self::ServerInternal => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// One problem answer: type, detail, and what goes into headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Problem {
    pub(crate) kind: ProblemType,
    pub(crate) detail: String,
    pub(crate) status: StatusCode,
    pub(crate) retry_after_s: Option<u64>,
    /// For `badSignatureAlgorithm`: the algorithms we accept (RFC 8555 §6.2).
    pub(crate) algorithms: bool,
}

impl Problem {
    pub(crate) fn new(kind: ProblemType, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
            status: kind.status(),
            retry_after_s: None,
            algorithms: false,
        }
    }

    pub(crate) fn malformed(detail: impl Into<String>) -> Self {
        Self::new(ProblemType::Malformed, detail)
    }

    pub(crate) fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(ProblemType::Unauthorized, detail)
    }

    pub(crate) fn not_found(detail: impl Into<String>) -> Self {
        Self::malformed(detail).with_status(StatusCode::NOT_FOUND)
    }

    pub(crate) fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    pub(crate) fn with_retry_after_s(mut self, seconds: u64) -> Self {
        self.retry_after_s = Some(seconds);
        self
    }

    /// The JSON object, as it appears in an order's or a challenge's `error` field.
    pub(crate) fn to_json(&self) -> serde_json::Value {
        let mut value = json!({
            "type": self.kind.urn(),
            "detail": self.detail,
            "status": self.status.as_u16(),
        });
        if self.algorithms {
            value["algorithms"] = json!(crate::jws::ALGORITHMS);
        }
        value
    }

    pub(crate) fn into_response(self) -> Response<Bytes> {
        let body = serde_json::to_vec(&self.to_json()).unwrap_or_default();
        let mut response = Response::new(Bytes::from(body));
        *response.status_mut() = self.status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(seconds) = self.retry_after_s {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}
