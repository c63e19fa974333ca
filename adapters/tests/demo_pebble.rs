//! `certfleet demo --directory`: the demo's cluster against a real ACME server (Pebble) instead
//! of the embedded CA, with Pebble validating against the demo's own data planes.

mod support;

use std::time::Duration;

use certfleet::demo::cluster::{self, ClusterOptions, DemoCa};
use support::pebble::{Pebble, PebbleOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_issues_from_pebble_and_every_node_serves_every_certificate() {
    // The demo binds its data planes on 127.0.0.1-4 at these ports; Pebble's DNS answers
    // 127.0.0.1 for every name, so node 1 answers Pebble's validations.
    let ports = [0u16; 2].map(|_| {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    });
    let Some(pebble) = Pebble::start_or_skip(PebbleOptions {
        http01_port: Some(ports[0]),
        tlsalpn01_port: Some(ports[1]),
        ..PebbleOptions::default()
    }) else {
        return;
    };
    let options = ClusterOptions {
        voters: 3,
        edges: 1,
        certs: 20,
        http01_port: ports[0],
        tls_port: ports[1],
        timeout: Duration::from_secs(60),
        export_dir: None,
    };
    let ca = DemoCa::Directory {
        url: pebble.directory_url().to_owned(),
        root_pem: Some(pebble.root_pem().to_vec()),
    };
    let report = cluster::run(&options, ca, |line| eprintln!("{line}"))
        .await
        .unwrap_or_else(|error| panic!("{error}\npebble log tail:\n{}", tail(&pebble)));
    assert_eq!(report.issued, 20);
    assert!(report.all_served, "{report:?}");
    assert_eq!(report.handshakes, 4 * 20);
    assert_eq!(report.orders, 20, "counted at the adapter: {report:?}");
    assert_eq!(pebble.orders_created(), 20, "and at Pebble");
}

fn tail(pebble: &Pebble) -> String {
    let log = pebble.log();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
