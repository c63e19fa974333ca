//! A three-node cluster issuing from a real Pebble with real validation against the nodes'
//! own data planes: the account is registered once and replicated sealed, every leader
//! rebuilds it from the replicated state, and the leader is killed mid-run. Pebble's log must
//! show at most one order per certificate plus one per leader kill (DESIGN §5).
//!
//! The nodes listen on 127.0.0.1, 127.0.0.2 and 127.0.0.3 (HTTP-01 and TLS on the same two
//! ports on each), and Pebble's DNS maps each certificate's name to one of them, so most
//! challenges are answered by a node that did not create them: what a node answers comes from
//! the replicated state, and the leader declares a challenge ready only once every node's data
//! plane serves it. Every third certificate validates with TLS-ALPN-01, the rest with HTTP-01.
//! At the end a real TLS client checks that every surviving node serves every certificate.

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use certfleet::account::{self, CaEndpoint, ClusterAcme};
use certfleet::acme::{AcmeOptions, KeySealer};
use certfleet::dataplane::probe::{self, Trust};
use certfleet::dataplane::{ChallengeKeys, Dataplane};
use certfleet::fleet::{self, DataplaneListeners, FleetNode};
use certfleet::node::{Clock, DriverConfig, SystemClock};
use certfleet::raft::StateMachineStore;
use certfleet::raft::network;
use certfleet::seal::{DataKey, Nonces};
use certfleet_core::model::{CertRequest, CertSpec, ChallengeKind};
use certfleet_core::testing::ISSUER;
use certfleet_core::{CertId, Command, IssuerId, Op};
use support::pebble::{Pebble, PebbleOptions};
use tokio::net::TcpListener;

const CERTS: usize = 200;
const NODES: u8 = 3;

fn issued(state_machine: &StateMachineStore, certs: &[CertId]) -> usize {
    state_machine.read(|state| {
        certs
            .iter()
            .filter(|id| state.cert(id).is_some_and(|r| r.current.is_some()))
            .count()
    })
}

fn node_ip(node: u8) -> Ipv4Addr {
    fleet::loopback_ip(node.into())
}

/// One port free on 127.0.0.1 to 127.0.0.`NODES`, bound on each (Pebble validates every name
/// on the same port).
async fn same_port_everywhere() -> Vec<TcpListener> {
    fleet::bind_same_port(NODES.into(), 0).await.unwrap()
}

/// Certificate `i`: 40 names per registered domain (the core paces 50 per domain per week),
/// every third on TLS-ALPN-01.
fn request(i: usize) -> CertSpec {
    let request = CertRequest {
        identifiers: vec![format!("w{i}.d{}.test", i / 40)],
        issuer: ISSUER.into(),
        challenge: if i % 3 == 2 {
            ChallengeKind::TlsAlpn01
        } else {
            ChallengeKind::Http01
        },
        ..CertRequest::default()
    };
    CertSpec::from_request(&request).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_issue_from_pebble_once_per_certificate_through_a_leader_kill() {
    let mut http01 = same_port_everywhere().await;
    let mut tls = same_port_everywhere().await;
    let http01_port = http01[0].local_addr().unwrap().port();
    let tls_port = tls[0].local_addr().unwrap().port();
    let Some(pebble) = Pebble::start_or_skip(PebbleOptions {
        http01_port: Some(http01_port),
        tlsalpn01_port: Some(tls_port),
        ..PebbleOptions::default()
    }) else {
        return;
    };
    let data_key = Arc::new(DataKey::new(*b"test", &[7; 32]));
    let ca = CaEndpoint {
        directory_url: pebble.directory_url().to_owned(),
        root_pem: Some(pebble.root_pem().to_vec()),
        options: AcmeOptions::default(),
    };
    let issuer = IssuerId::parse(ISSUER).unwrap();

    let mut nodes: Vec<(FleetNode, Arc<Dataplane>)> = Vec::new();
    for id in 1..=u64::from(NODES) {
        let listener = fleet::bind_loopback().await.unwrap();
        let mut node = FleetNode::start(id, listener, fleet::raft_config())
            .await
            .unwrap();
        let dataplane = node.serve_dataplane(
            data_key.clone(),
            ChallengeKeys::Generate,
            DataplaneListeners {
                http01: Some(http01.remove(0)),
                tls: Some(tls.remove(0)),
                ..DataplaneListeners::default()
            },
        );
        let sealer = KeySealer::new(data_key.clone(), Arc::new(Nonces::new(id)));
        let acme = ClusterAcme::new(
            issuer.clone(),
            ca.clone(),
            node.state_machine.clone(),
            sealer,
        );
        let config = DriverConfig {
            tick: Duration::from_millis(200),
            apply_wait: Duration::from_secs(2),
            seed: id,
            ..DriverConfig::default()
        };
        node.run_driver(config, Arc::new(SystemClock), Arc::new(acme));
        nodes.push((node, dataplane));
    }
    let refs: Vec<&FleetNode> = nodes.iter().map(|(n, _)| n).collect();
    fleet::form(&refs, usize::from(NODES), Duration::from_secs(20))
        .await
        .unwrap();

    let sealer = KeySealer::new(data_key.clone(), Arc::new(Nonces::new(100)));
    account::register(
        &nodes[1].0.raft,
        issuer.clone(),
        &ca,
        &["mailto:ops@certfleet.test"],
        &sealer,
        SystemClock.now(),
    )
    .await
    .expect("the account is registered and committed");

    let mut certs = Vec::new();
    let mut names = Vec::new();
    for i in 0..CERTS {
        let spec = request(i);
        let name = format!("w{i}.d{}.test", i / 40);
        // Spread the names over the nodes, so that most validations reach a node that did not
        // publish the challenge.
        pebble.add_a(&name, node_ip(1 + (i % usize::from(NODES)) as u8));
        certs.push(spec.cert_id());
        names.push(name);
        let command = Command {
            at: SystemClock.now(),
            op: Op::PutCert {
                spec,
                seed: i as u64,
            },
        };
        let written = network::write(&nodes[2].0.raft, command, Duration::from_secs(10))
            .await
            .unwrap();
        assert!(written.response.is_accepted(), "{:?}", written.response);
    }

    let started = tokio::time::Instant::now();
    let deadline = started + Duration::from_secs(240);
    let killed = loop {
        let most = nodes
            .iter()
            .map(|(n, _)| issued(&n.state_machine, &certs))
            .max();
        if most >= Some(CERTS / 4)
            && let Some(leader) = nodes.iter().position(|(n, _)| n.leads())
        {
            let (node, _) = nodes.remove(leader);
            let id = node.id;
            node.kill().await;
            eprintln!(
                "killed leader n{id} after {:?}, {most:?} issued",
                started.elapsed()
            );
            break id;
        }
        assert!(tokio::time::Instant::now() < deadline, "too little issued");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    loop {
        let counts: Vec<usize> = nodes
            .iter()
            .map(|(n, _)| issued(&n.state_machine, &certs))
            .collect();
        if counts.iter().all(|&c| c == CERTS) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "after killing n{killed}: issued per survivor {counts:?} of {CERTS}; pebble log tail:\n{}",
            pebble
                .log()
                .lines()
                .rev()
                .take(20)
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    eprintln!("all {CERTS} issued on every survivor after {seconds:.1} s");

    // Every survivor serves every certificate, as committed, to a real TLS client (which
    // checks the handshake's signature against the leaf: the node holds the key).
    for (node, dataplane) in &nodes {
        let served = dataplane.served_index();
        let applied = *node.state_machine.applied_index().borrow();
        let mut served = served.clone();
        tokio::time::timeout(
            Duration::from_secs(10),
            served.wait_for(|at| *at >= applied),
        )
        .await
        .expect("the data plane catches up")
        .unwrap();
        let ip = node_ip(u8::try_from(node.id).unwrap());
        for (cert, name) in certs.iter().zip(&names) {
            let committed = node
                .state_machine
                .read(|state| probe::committed_chain(state, cert));
            assert!(committed.is_some(), "n{} committed {name}", node.id);
            probe::shows_committed(
                SocketAddr::from((ip, tls_port)),
                name,
                &Trust::Record,
                committed.as_deref(),
                Duration::from_secs(5),
            )
            .await
            .unwrap_or_else(|reason| panic!("n{} does not serve {name}: {reason}", node.id));
        }
        assert_eq!(dataplane.skipped(), 0, "n{} skipped something", node.id);
        assert!(dataplane.challenges().is_empty(), "challenges withdrawn");
    }

    // The certificates are Pebble's: real DER for the names asked.
    let leaf = nodes[0].0.state_machine.read(|state| {
        state
            .cert(&certs[0])
            .unwrap()
            .current
            .clone()
            .unwrap()
            .leaf_der
    });
    let (_, parsed) = x509_parser::parse_x509_certificate(&leaf).expect("a real certificate");
    let sans = parsed
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>();
    assert_eq!(sans, vec![format!("DNSName({})", names[0])]);

    let orders = pebble.orders_created();
    eprintln!(
        "pebble saw {orders} orders for {CERTS} certificates and 1 leader kill \
         ({:.1} certificates/s)",
        CERTS as f64 / seconds
    );
    assert!(
        orders <= CERTS + 1,
        "{orders} orders for {CERTS} certificates and one leader kill"
    );
    for (node, _) in nodes {
        node.kill().await;
    }
}
