//! Untrusted input never panics the CA: any request bytes get an answer, with a nonce.

use bytes::Bytes;
use certfleet_ca::testing::{TestClient, TestKey, body_json, location, replay_nonce};
use certfleet_ca::{AcmeServer, CaConfig};
use http::{Method, Request, header};
use proptest::prelude::*;
use serde_json::Value;

const BASE: &str = "http://ca.test";
const T0: u64 = 1_750_000_000_000;

/// A server with one account and one order, and the URLs a client could name.
fn populated() -> (AcmeServer, TestClient, Vec<String>) {
    let mut server = AcmeServer::new(CaConfig::new(BASE), 1).unwrap();
    let mut client = TestClient::new(TestKey::ed25519([5; 32]), BASE);
    client.new_account(&mut server, T0);
    let response = client.new_order(&mut server, &["a.example.com"], T0);
    let order = body_json(&response);
    let mut urls: Vec<String> = [
        "/new-account",
        "/new-order",
        "/revoke-cert",
        "/directory",
        "/new-nonce",
        "/renewal-info/AAAA.BBBB",
        "/nowhere",
    ]
    .iter()
    .map(|path| format!("{BASE}{path}"))
    .collect();
    urls.push(client.kid.clone().unwrap());
    urls.push(format!("{}/orders", client.kid.clone().unwrap()));
    urls.push(location(&response).unwrap());
    urls.push(order["finalize"].as_str().unwrap().to_owned());
    let authz = order["authorizations"][0].as_str().unwrap().to_owned();
    let authz_json = body_json(&client.post(&mut server, &authz, None, T0));
    urls.push(authz);
    for challenge in authz_json["challenges"].as_array().unwrap() {
        urls.push(challenge["url"].as_str().unwrap().to_owned());
    }
    (server, client, urls)
}

fn assert_answered(response: &http::Response<Bytes>) {
    assert!(
        replay_nonce(response).is_some(),
        "every response has a nonce"
    );
    if !response.status().is_success() {
        let problem = body_json(response);
        assert!(
            problem["type"]
                .as_str()
                .is_some_and(|t| t.starts_with("urn:ietf:params:acme:error:")),
            "{problem}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_bytes_as_a_post_body_get_a_problem_not_a_panic(
        body in proptest::collection::vec(any::<u8>(), 0..600),
        which in any::<prop::sample::Index>(),
    ) {
        let (mut server, _, urls) = populated();
        let url = which.get(&urls);
        let mut request = Request::new(Bytes::from(body));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = url.strip_prefix(BASE).unwrap().parse().unwrap();
        request.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/jose+json"),
        );
        let response = server.handle(request, T0);
        prop_assert!(!response.status().is_success());
        assert_answered(&response);
    }

    #[test]
    fn any_signed_payload_to_any_resource_gets_an_answer_not_a_panic(
        payload in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..300)),
        json in proptest::option::of("[{}\\[\\]\":,a-z0-9 .*-]{0,80}"),
        which in any::<prop::sample::Index>(),
    ) {
        let (mut server, mut client, urls) = populated();
        let url = which.get(&urls).clone();
        // Raw bytes, or JSON-ish text that often parses, or a POST-as-GET.
        let value = match (json, payload) {
            (Some(text), _) => serde_json::from_str::<Value>(&text).ok(),
            (None, Some(bytes)) => Some(Value::String(String::from_utf8_lossy(&bytes).into_owned())),
            (None, None) => None,
        };
        let response = client.post(&mut server, &url, value.as_ref(), T0);
        assert_answered(&response);
    }

    #[test]
    fn any_method_and_path_get_an_answer_not_a_panic(
        method in "[A-Z]{1,8}",
        path in "/[a-z0-9./%_-]{0,60}",
        body in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let (mut server, _, _) = populated();
        let mut request = Request::new(Bytes::from(body));
        *request.method_mut() = Method::from_bytes(method.as_bytes()).unwrap();
        let Ok(uri) = path.parse() else { return Ok(()); };
        *request.uri_mut() = uri;
        let response = server.handle(request, T0);
        assert_answered(&response);
    }
}
