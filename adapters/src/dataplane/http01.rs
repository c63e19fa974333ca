//! The port-80 responder: HTTP-01 answers (RFC 8555 §8.3) and a redirect to https for the rest.
//!
//! Every node answers every published token: the CA's request may land on any node behind the
//! load balancer (DESIGN §1). One request per connection, headers bounded, the body never
//! read, and one deadline per connection, so a slow or hostile client costs a bounded slot.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::{ChallengeTable, ConnectionLimits, Dataplane};

/// Where HTTP-01 tokens are asked for (RFC 8555 §8.3).
pub const CHALLENGE_PATH: &str = "/.well-known/acme-challenge/";

/// The longest request head accepted (hyper's smallest buffer): a CA's request is a few hundred
/// bytes.
pub const REQUEST_HEAD_BYTES_MAX: usize = 8192;

/// The most header fields accepted in one request.
pub const HEADERS_MAX: usize = 32;

/// Serves HTTP-01 on `listener` until dropped, one task per connection (bounded by `limits`).
pub async fn serve_http01(
    listener: TcpListener,
    dataplane: Arc<Dataplane>,
    limits: ConnectionLimits,
) {
    let mut builder = http1::Builder::new();
    builder
        // One request per connection: nothing to gain from keep-alive here, and it means an
        // unread body is never drained.
        .keep_alive(false)
        .max_buf_size(REQUEST_HEAD_BYTES_MAX)
        .max_headers(HEADERS_MAX)
        // hyper's own timeout needs hyper's timer, which sleeps on the real tokio (panics under
        // madsim); the per-connection deadline below covers it.
        .header_read_timeout(None);
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.connections_max));
    loop {
        let Some((stream, permit)) = super::accept(&listener, &slots).await else {
            continue;
        };
        let dataplane = Arc::clone(&dataplane);
        let connection = builder.serve_connection(
            TokioIo::new(stream),
            service_fn(move |request: Request<hyper::body::Incoming>| {
                let response = respond(&dataplane.challenge_table(), &request);
                async move { Ok::<_, Infallible>(response) }
            }),
        );
        let timeout = Duration::from_millis(limits.timeout_ms);
        // Our `tokio::spawn` (madsim's under --cfg madsim), never hyper's executor helpers.
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tokio::time::timeout(timeout, connection).await;
        });
    }
}

/// The answer to one request, from the challenges published now:
/// * `GET`/`HEAD /.well-known/acme-challenge/<token>`: 200 with the key authorization as
///   `text/plain` if the token is published, else 404; other methods there get 405;
/// * anything else: 308 to `https://<host><path>` (RFC 9110 §15.4.9 keeps the method), 400 if
///   the request names no usable host.
pub fn respond<B>(challenges: &ChallengeTable, request: &Request<B>) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    if let Some(token) = path.strip_prefix(CHALLENGE_PATH) {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "GET or HEAD only\n");
            response
                .headers_mut()
                .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        return match challenges.http01(token) {
            // RFC 8555 §8.3: the body is the key authorization, nothing else (no newline).
            Some(key_authorization) => plain(StatusCode::OK, key_authorization.to_owned()),
            None => plain(StatusCode::NOT_FOUND, "no such challenge\n"),
        };
    }
    let Some(host) = request_host(request) else {
        return plain(StatusCode::BAD_REQUEST, "no usable Host header\n");
    };
    let target = request
        .uri()
        .path_and_query()
        .map(http::uri::PathAndQuery::as_str)
        .filter(|p| p.starts_with('/'))
        .unwrap_or("/");
    let location = format!("https://{host}{target}");
    match header::HeaderValue::try_from(location) {
        Ok(location) => {
            let mut response = plain(StatusCode::PERMANENT_REDIRECT, "");
            response.headers_mut().insert(header::LOCATION, location);
            response
        }
        Err(_) => plain(StatusCode::BAD_REQUEST, "unusable request target\n"),
    }
}

/// The host to redirect to, without its port (https has its own): the authority of an
/// absolute-form target, else the Host header (RFC 9112 §3.2.2). Only hostname characters or
/// a bracketed IPv6 literal pass, so the Location header cannot be steered elsewhere.
fn request_host<B>(request: &Request<B>) -> Option<String> {
    let authority = match request.uri().authority() {
        Some(authority) => authority.clone(),
        None => {
            let raw = request.headers().get(header::HOST)?.to_str().ok()?;
            raw.parse::<http::uri::Authority>().ok()?
        }
    };
    if authority.as_str().contains('@') {
        return None; // userinfo has no place in a Host (RFC 9110 §7.2)
    }
    let host = authority.host();
    let valid = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => {
            !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        }
    };
    valid.then(|| host.to_ascii_lowercase())
}

fn plain(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(uri: &str, host: Option<&str>) -> Request<()> {
        let mut builder = Request::get(uri);
        if let Some(host) = host {
            builder = builder.header(header::HOST, host);
        }
        builder.body(()).unwrap()
    }

    fn location(response: &Response<Full<Bytes>>) -> &str {
        response.headers()[header::LOCATION].to_str().unwrap()
    }

    #[test]
    fn everything_but_a_challenge_is_redirected_to_https_without_the_port() {
        let table = ChallengeTable::default();
        let response = respond(&table, &get("/a/b?c=d", Some("WWW.Example.com:80")));
        assert_eq!(response.status(), StatusCode::PERMANENT_REDIRECT);
        assert_eq!(location(&response), "https://www.example.com/a/b?c=d");
        let response = respond(&table, &get("/", Some("[2001:db8::1]:8080")));
        assert_eq!(location(&response), "https://[2001:db8::1]/");
        let response = respond(&table, &get("http://other.example.net/x", Some("ignored")));
        assert_eq!(location(&response), "https://other.example.net/x");
    }

    #[test]
    fn a_request_without_a_usable_host_is_refused() {
        let table = ChallengeTable::default();
        for host in [
            None,
            Some(""),
            Some("a@b.example"),
            Some("a/b"),
            Some("[nope]"),
        ] {
            let response = respond(&table, &get("/x", host));
            assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{host:?}");
        }
    }

    #[test]
    fn an_unpublished_token_is_not_found_and_other_methods_not_allowed() {
        let table = ChallengeTable::default();
        let response = respond(&table, &get("/.well-known/acme-challenge/abc", None));
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        let post = Request::post("/.well-known/acme-challenge/abc")
            .body(())
            .unwrap();
        assert_eq!(
            respond(&table, &post).status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }
}
