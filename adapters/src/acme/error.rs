//! Errors at the ACME boundary: what the core's [`CaError`] carries, built from instant-acme's
//! error and the exchange [`super::transport`] recorded for it.

use std::fmt::Write as _;

use certfleet_core::UnixMillis;
use certfleet_core::order::CaError;

use super::transport::{self, Exchange};

/// The ACME problem type namespace (RFC 8555 §6.7).
pub const PROBLEM_PREFIX: &str = "urn:ietf:params:acme:error:";

/// A failure setting up an ACME account (registration or restoring credentials). Failures of
/// order work are not errors but [`certfleet_core::Outcome::Failed`] values.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AcmeError {
    /// The CA refused, or could not be reached.
    #[error("{}", describe(.0))]
    Ca(CaError),
    /// The stored account credentials are not what [`super::AcmeClient::register`] returns.
    #[error("ACME account credentials are malformed: {0}")]
    Credentials(String),
    /// The HTTPS client could not be built (a bad root certificate, no platform verifier).
    #[error("ACME HTTPS client: {0}")]
    Transport(String),
}

impl AcmeError {
    /// The CA's error, when the CA (or the way to it) failed.
    #[must_use]
    pub fn ca(&self) -> Option<&CaError> {
        match self {
            Self::Ca(error) => Some(error),
            _ => None,
        }
    }
}

/// A one-line description of a CA error, for logs and error messages.
#[must_use]
pub fn describe(error: &CaError) -> String {
    let mut line = String::new();
    if let Some(status) = error.status {
        let _ = write!(line, "HTTP {status} ");
    }
    if let Some(problem) = &error.problem {
        let _ = write!(
            line,
            "{} ",
            problem.strip_prefix(PROBLEM_PREFIX).unwrap_or(problem)
        );
    }
    line.push_str(&error.detail);
    if let Some(at) = error.retry_at {
        let _ = write!(line, " (retry at {at})");
    }
    line
}

/// Builds the core's error from instant-acme's, with the status and `Retry-After` of the last
/// exchange of the current operation.
pub(crate) fn ca_error(error: instant_acme::Error, now: UnixMillis) -> CaError {
    from_exchange(error, transport::last().as_ref(), now)
}

fn from_exchange(
    error: instant_acme::Error,
    exchange: Option<&Exchange>,
    now: UnixMillis,
) -> CaError {
    // The response that carried the error, if the last exchange failed at the HTTP level. A
    // problem can also arrive inside a 200 (a challenge's or an order's `error` field): then
    // the HTTP status and headers belong to a success and are not the error's.
    let failed_response = exchange.filter(|e| e.status.is_some_and(|s| s >= 400));
    let retry_at = failed_response.and_then(|e| e.retry_at(now));
    match error {
        instant_acme::Error::Api(problem) => CaError {
            status: failed_response.and_then(|e| e.status).or(problem.status),
            problem: problem.r#type.clone(),
            detail: problem_detail(&problem),
            retry_at,
            account_wide: false,
        },
        other => {
            let detail = match exchange {
                // The request went out and nothing (usable) came back: name where it went.
                Some(e) if e.status.is_none() => format!("{} {}: {other}", e.method, e.url),
                Some(e) => format!(
                    "{} {} answered {}: {other}",
                    e.method,
                    e.url,
                    e.status.unwrap_or(0)
                ),
                None => other.to_string(),
            };
            CaError {
                status: failed_response.and_then(|e| e.status),
                problem: None,
                detail,
                retry_at,
                account_wide: false,
            }
        }
    }
}

/// A failure on our side of the boundary (a key that will not open, an action that is not
/// the adapter's): no status, no problem type.
pub(crate) fn local(detail: impl Into<String>) -> CaError {
    CaError {
        status: None,
        problem: None,
        detail: detail.into(),
        retry_at: None,
        account_wide: false,
    }
}

/// A problem document in one line: its short type, then its detail.
pub(crate) fn problem_line(problem: &instant_acme::Problem) -> String {
    match &problem.r#type {
        Some(kind) => format!(
            "{}: {}",
            kind.strip_prefix(PROBLEM_PREFIX).unwrap_or(kind),
            problem_detail(problem)
        ),
        None => problem_detail(problem),
    }
}

/// The problem's detail with its subproblems (RFC 8555 §6.7.1), which name the identifiers.
fn problem_detail(problem: &instant_acme::Problem) -> String {
    let mut detail = problem
        .detail
        .clone()
        .unwrap_or_else(|| "the CA gave no detail".into());
    for sub in &problem.subproblems {
        detail.push_str("; ");
        if let Some(identifier) = &sub.identifier {
            let _ = write!(detail, "{}: ", identifier.authorized(false));
        }
        if let Some(kind) = &sub.r#type {
            let _ = write!(
                detail,
                "{} ",
                kind.strip_prefix(PROBLEM_PREFIX).unwrap_or(kind)
            );
        }
        detail.push_str(sub.detail.as_deref().unwrap_or(""));
    }
    detail
}

#[cfg(test)]
mod tests {
    use certfleet_core::command::FailureClass;
    use certfleet_core::order::classify;
    use http::Method;

    use super::*;

    const NOW: UnixMillis = UnixMillis(1_700_000_000_000);

    fn problem(json: &str) -> instant_acme::Error {
        instant_acme::Error::Api(serde_json::from_str(json).unwrap())
    }

    fn exchange(status: Option<u16>, retry_after: Option<&str>) -> Exchange {
        Exchange {
            method: Method::POST,
            url: "https://ca.test/acme/new-order".into(),
            status,
            retry_after: retry_after.map(Into::into),
            date: None,
        }
    }

    #[test]
    fn a_rate_limit_carries_status_problem_and_retry_after() {
        let error = from_exchange(
            problem(
                r#"{"type":"urn:ietf:params:acme:error:rateLimited","detail":"too many","status":429}"#,
            ),
            Some(&exchange(Some(429), Some("60"))),
            NOW,
        );
        assert_eq!(error.status, Some(429));
        assert_eq!(
            error.problem.as_deref(),
            Some("urn:ietf:params:acme:error:rateLimited")
        );
        assert_eq!(error.retry_at, Some(NOW.plus_ms(60_000)));
        assert_eq!(classify(&error), FailureClass::RateLimited);
    }

    #[test]
    fn a_problem_inside_a_success_takes_nothing_from_the_response() {
        // A challenge object with an `error` field comes back in a 200.
        let error = from_exchange(
            problem(
                r#"{"type":"urn:ietf:params:acme:error:unauthorized","detail":"wrong key authorization"}"#,
            ),
            Some(&exchange(Some(200), Some("3"))),
            NOW,
        );
        assert_eq!(error.status, None);
        assert_eq!(error.retry_at, None);
        assert_eq!(classify(&error), FailureClass::Permanent);
    }

    #[test]
    fn subproblems_name_their_identifiers() {
        let error = from_exchange(
            problem(
                r#"{"type":"urn:ietf:params:acme:error:rejectedIdentifier","detail":"some were rejected",
                   "subproblems":[{"type":"urn:ietf:params:acme:error:rejectedIdentifier",
                   "detail":"no","identifier":{"type":"dns","value":"bad.test"}}]}"#,
            ),
            Some(&exchange(Some(400), None)),
            NOW,
        );
        assert_eq!(
            error.detail,
            "some were rejected; bad.test: rejectedIdentifier no"
        );
    }

    #[test]
    fn a_transport_failure_names_the_url_and_has_no_status() {
        let error = from_exchange(
            instant_acme::Error::Other("connection refused".into()),
            Some(&exchange(None, None)),
            NOW,
        );
        assert_eq!(error.status, None);
        assert_eq!(error.problem, None);
        assert_eq!(
            error.detail,
            "POST https://ca.test/acme/new-order: connection refused"
        );
        assert_eq!(classify(&error), FailureClass::Retryable);
    }

    #[test]
    fn a_server_error_with_an_unreadable_body_keeps_its_status() {
        let body_error = serde_json::from_str::<serde_json::Value>("<html>").unwrap_err();
        let error = from_exchange(
            instant_acme::Error::Json(body_error),
            Some(&exchange(Some(503), Some("120"))),
            NOW,
        );
        assert_eq!(error.status, Some(503));
        assert_eq!(error.retry_at, Some(NOW.plus_ms(120_000)));
        assert!(error.detail.contains("answered 503"), "{}", error.detail);
        assert_eq!(classify(&error), FailureClass::Retryable);
    }
}
