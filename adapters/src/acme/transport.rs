//! The HTTP seam under instant-acme: a wrapper around any [`HttpClient`] that puts a deadline on
//! every request and records what the adapter needs but instant-acme does not expose (the
//! response status, `Retry-After` and `Date`, and the URL of a request that got no answer).
//!
//! Records go to the *calling task*: [`recorded`] opens a task-local scope around one adapter
//! operation, the wrapper writes each exchange into it, and [`last`] reads the latest. The
//! account's client is shared by hundreds of concurrent cycles, so a "last response" kept in
//! the client itself would mix up the cycles; a task-local cannot.
//!
//! In production the inner client is hyper over rustls ([`https_client`]); the simulation
//! plugs its wire CA in through [`super::Transport::Custom`] and gets the same recording.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use certfleet_core::UnixMillis;
use certfleet_core::time::SECOND_MS;
use http::header::{DATE, RETRY_AFTER};
use http::{Method, Request};
use instant_acme::{BodyWrapper, BytesResponse, HttpClient};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// The longest a single request to the CA may take when the caller sets no other deadline.
pub const REQUEST_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);

/// One request and, if it came, its response's metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Exchange {
    /// The request method.
    pub(crate) method: Method,
    /// The request URL.
    pub(crate) url: String,
    /// The response status; `None` while in flight or when no response came.
    pub(crate) status: Option<u16>,
    /// The raw `Retry-After` header.
    pub(crate) retry_after: Option<String>,
    /// The raw `Date` header.
    pub(crate) date: Option<String>,
}

impl Exchange {
    /// The response's `Retry-After` as an instant on the caller's clock.
    pub(crate) fn retry_at(&self, now: UnixMillis) -> Option<UnixMillis> {
        retry_at(self.retry_after.as_deref()?, self.date.as_deref(), now)
    }
}

tokio::task_local! {
    /// The exchanges of the adapter operation running on this task (latest last).
    static EXCHANGES: RefCell<Vec<Exchange>>;
}

/// Exchanges kept per operation; an operation makes a handful (order, authorizations,
/// challenges), so older ones are dropped past this.
const EXCHANGES_KEPT_MAX: usize = 64;

/// Runs `operation` with a fresh record of its HTTP exchanges.
pub(crate) async fn recorded<T>(operation: impl Future<Output = T>) -> T {
    EXCHANGES.scope(RefCell::new(Vec::new()), operation).await
}

/// The latest exchange of the current operation (`None` outside [`recorded`] or before any).
pub(crate) fn last() -> Option<Exchange> {
    EXCHANGES
        .try_with(|exchanges| exchanges.borrow().last().cloned())
        .ok()
        .flatten()
}

fn begin(method: Method, url: String) {
    // Outside a recorded operation there is no one to tell; that is not an error.
    let _ = EXCHANGES.try_with(|exchanges| {
        let mut exchanges = exchanges.borrow_mut();
        if exchanges.len() == EXCHANGES_KEPT_MAX {
            exchanges.remove(0);
        }
        exchanges.push(Exchange {
            method,
            url,
            status: None,
            retry_after: None,
            date: None,
        });
    });
}

fn finish(response: &BytesResponse) {
    let header = |name| {
        response
            .parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let _ = EXCHANGES.try_with(|exchanges| {
        if let Some(last) = exchanges.borrow_mut().last_mut() {
            last.status = Some(response.parts.status.as_u16());
            last.retry_after = header(RETRY_AFTER);
            last.date = header(DATE);
        }
    });
}

/// An [`HttpClient`] that records every exchange of the calling task's operation and gives
/// up on a request after a deadline (a clogged link must fail, not hang).
pub struct Recording {
    inner: Arc<dyn HttpClient>,
    timeout: Duration,
}

impl Recording {
    /// Wraps `inner`; each request fails after `timeout`.
    #[must_use]
    pub fn new(inner: Box<dyn HttpClient>, timeout: Duration) -> Self {
        Self {
            inner: Arc::from(inner),
            timeout,
        }
    }
}

impl HttpClient for Recording {
    fn request(
        &self,
        request: Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let url = request.uri().to_string();
        begin(request.method().clone(), url.clone());
        let response = self.inner.request(request);
        let timeout = self.timeout;
        Box::pin(async move {
            // `select!` over a sleep rather than `time::timeout`: madsim's timeout future is
            // not `Send` (feasibility notes); `biased` keeps the choice deterministic.
            let result = tokio::select! {
                biased;
                result = response => result,
                () = tokio::time::sleep(timeout) => Err(instant_acme::Error::Other(
                    format!("no response from {url} within {} ms", timeout.as_millis()).into(),
                )),
            };
            if let Ok(response) = &result {
                finish(response);
            }
            result
        })
    }
}

/// The production client: hyper over rustls (ring), HTTPS only, trusting the roots in
/// `root_pem` when given (a test CA such as Pebble), else the platform's verifier.
pub(crate) fn https_client(root_pem: Option<&[u8]>) -> Result<Box<dyn HttpClient>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let builder = match root_pem {
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| format!("root certificate PEM: {e}"))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("root certificate refused: {e}"))?;
            }
            if roots.is_empty() {
                return Err("root certificate PEM holds no certificate".into());
            }
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("TLS configuration: {e}"))?
                .with_root_certificates(roots)
                .with_no_client_auth();
            builder.with_tls_config(config)
        }
        None => builder
            .with_provider_and_platform_verifier(provider)
            .map_err(|e| format!("platform certificate verifier: {e}"))?,
    };
    let connector = builder.https_only().enable_http1().build();
    let client: hyper_util::client::legacy::Client<_, BodyWrapper<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(connector);
    Ok(Box::new(client))
}

/// Plain HTTP/1.1 for a CA on loopback (see [`super::Transport::LoopbackHttp`]).
pub(crate) fn loopback_http_client() -> Box<dyn HttpClient> {
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let client: hyper_util::client::legacy::Client<_, BodyWrapper<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(connector);
    Box::new(client)
}

/// A `Retry-After` header value (RFC 9110 §10.2.3) as an instant on the caller's clock.
///
/// `delay-seconds` counts from `now`. An `HTTP-date` is turned into a delay against the
/// response's own `Date` header when there is one (the CA's clock and ours may disagree; only
/// the difference between its two times is meaningful), else against `now`. A date in the
/// past means "now". Anything unparseable is `None`.
#[must_use]
pub fn retry_at(retry_after: &str, date: Option<&str>, now: UnixMillis) -> Option<UnixMillis> {
    let value = retry_after.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Digits beyond u64 are "a very long time": saturate rather than ignore the CA.
        let seconds = value.parse::<u64>().unwrap_or(u64::MAX);
        return Some(now.plus_ms(seconds.saturating_mul(SECOND_MS)));
    }
    let at = epoch_ms(httpdate::parse_http_date(value).ok()?);
    let delay_ms = match date.and_then(|d| httpdate::parse_http_date(d.trim()).ok()) {
        Some(sent) => at.saturating_sub(epoch_ms(sent)),
        None => at.saturating_sub(now.0),
    };
    Some(now.plus_ms(delay_ms))
}

fn epoch_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: UnixMillis = UnixMillis(1_700_000_000_000);

    #[test]
    fn retry_after_in_seconds_counts_from_now() {
        assert_eq!(retry_at("120", None, NOW), Some(NOW.plus_ms(120_000)));
        assert_eq!(retry_at(" 0 ", None, NOW), Some(NOW));
        // A Date header does not matter for the seconds form.
        assert_eq!(
            retry_at("5", Some("Thu, 01 Jan 1970 00:00:00 GMT"), NOW),
            Some(NOW.plus_ms(5_000))
        );
        // Absurdly many seconds saturate instead of wrapping or being ignored.
        assert_eq!(
            retry_at("99999999999999999999999", None, NOW),
            Some(UnixMillis::MAX)
        );
    }

    #[test]
    fn retry_after_as_a_date_counts_from_the_response_date() {
        // The CA's clock is a day behind ours: only its own difference (90 s) counts.
        let date = "Sun, 06 Nov 1994 08:49:37 GMT";
        let later = "Sun, 06 Nov 1994 08:51:07 GMT";
        assert_eq!(retry_at(later, Some(date), NOW), Some(NOW.plus_ms(90_000)));
        // A Retry-After before the response's Date means "now".
        assert_eq!(retry_at(date, Some(later), NOW), Some(NOW));
    }

    #[test]
    fn retry_after_as_a_date_without_a_response_date_counts_from_now() {
        // NOW is 2023-11-14T22:13:20Z.
        let in_ten_minutes = "Tue, 14 Nov 2023 22:23:20 GMT";
        assert_eq!(
            retry_at(in_ten_minutes, None, NOW),
            Some(NOW.plus_ms(600_000))
        );
        assert_eq!(
            retry_at("Sun, 06 Nov 1994 08:49:37 GMT", None, NOW),
            Some(NOW)
        );
        // An unparseable Date header is as good as none.
        assert_eq!(
            retry_at(in_ten_minutes, Some("yesterday"), NOW),
            Some(NOW.plus_ms(600_000))
        );
    }

    #[test]
    fn garbage_retry_after_is_none_without_panicking() {
        for garbage in [
            "",
            "  ",
            "-5",
            "1.5",
            "soon",
            "12abc",
            "Sun, 32 Nov 1994 08:49:37 GMT",
            "\u{0}\u{ffff}",
            "+30",
        ] {
            assert_eq!(retry_at(garbage, None, NOW), None, "{garbage:?}");
            assert_eq!(
                retry_at(garbage, Some("Sun, 06 Nov 1994 08:49:37 GMT"), NOW),
                None
            );
        }
    }

    #[tokio::test]
    async fn exchanges_are_recorded_per_operation() {
        assert_eq!(last(), None, "outside an operation nothing is recorded");
        let inner = recorded(async {
            begin(Method::POST, "https://ca.test/order/1".into());
            last()
        })
        .await;
        assert_eq!(inner.map(|e| e.url), Some("https://ca.test/order/1".into()));
        // A new operation starts empty.
        assert_eq!(recorded(async { last() }).await, None);
    }
}
