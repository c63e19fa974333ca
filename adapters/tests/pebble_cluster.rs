//! A three-node cluster issuing from a real Pebble with real validation: the account is
//! registered once and replicated sealed, every leader rebuilds it from the replicated state,
//! and the leader is killed mid-run. Pebble's log must show at most one order per certificate
//! plus one per leader kill (DESIGN §5).
//!
//! Until the data plane lands, each node hands the challenges it applies to
//! pebble-challtestsrv from inside apply, so a challenge is answerable before the node
//! acknowledges its index to the leader's `WaitApplied`, and what Pebble validates is exactly
//! what the cluster committed.

mod support;

use std::sync::Arc;
use std::time::Duration;

use certfleet::account::{self, CaEndpoint, ClusterAcme};
use certfleet::acme::{AcmeOptions, KeySealer};
use certfleet::fleet::{self, FleetNode};
use certfleet::node::{Clock, DriverConfig, SystemClock};
use certfleet::raft::StateMachineStore;
use certfleet::raft::network;
use certfleet::raft::state_machine::{AppliedEntry, ApplyObserver};
use certfleet::seal::{DataKey, Nonces};
use certfleet_core::model::ChallengeKind;
use certfleet_core::testing::{ISSUER, spec};
use certfleet_core::{CertId, Command, IssuerId, Op};
use support::pebble::{Pebble, PebbleOptions};

const CERTS: usize = 30;

fn issued(state_machine: &StateMachineStore, certs: &[CertId]) -> usize {
    state_machine.read(|state| {
        certs
            .iter()
            .filter(|id| state.cert(id).is_some_and(|r| r.current.is_some()))
            .count()
    })
}

/// The stand-in for a node's data plane: HTTP-01 answers published as they are applied.
fn answer(pebble: &Arc<Pebble>) -> ApplyObserver {
    let pebble = pebble.clone();
    Arc::new(move |entry: &AppliedEntry<'_>| {
        if let Op::ChallengesPublished { challenges, .. } = &entry.command.op
            && entry.response.is_accepted()
        {
            for challenge in challenges {
                if challenge.kind == ChallengeKind::Http01 {
                    // Blocking, inside apply: a test-only cost of a few milliseconds.
                    tokio::task::block_in_place(|| {
                        pebble.add_http01(&challenge.token, &challenge.key_authorization);
                    });
                }
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_issue_from_pebble_once_per_certificate_through_a_leader_kill() {
    let Some(pebble) = Pebble::start_or_skip(PebbleOptions::default()) else {
        return;
    };
    let pebble = Arc::new(pebble);
    let data_key = Arc::new(DataKey::new(*b"test", &[7; 32]));
    let ca = CaEndpoint {
        directory_url: pebble.directory_url().to_owned(),
        root_pem: Some(pebble.root_pem().to_vec()),
        options: AcmeOptions::default(),
    };
    let issuer = IssuerId::parse(ISSUER).unwrap();

    let mut nodes: Vec<FleetNode> = Vec::new();
    for id in 1..=3 {
        let listener = fleet::bind_loopback().await.unwrap();
        let mut node =
            FleetNode::start_observed(id, listener, fleet::raft_config(), Some(answer(&pebble)))
                .await
                .unwrap();
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
        nodes.push(node);
    }
    let refs: Vec<&FleetNode> = nodes.iter().collect();
    fleet::form(&refs, 3, Duration::from_secs(20))
        .await
        .unwrap();

    let sealer = KeySealer::new(data_key.clone(), Arc::new(Nonces::new(100)));
    account::register(
        &nodes[1].raft,
        issuer.clone(),
        &ca,
        &["mailto:ops@certfleet.test"],
        &sealer,
        SystemClock.now(),
    )
    .await
    .expect("the account is registered and committed");

    let mut certs = Vec::new();
    for i in 0..CERTS {
        let spec = spec(&[&format!("w{i}.fleet.test")]);
        certs.push(spec.cert_id());
        let command = Command {
            at: SystemClock.now(),
            op: Op::PutCert {
                spec,
                seed: i as u64,
            },
        };
        let written = network::write(&nodes[2].raft, command, Duration::from_secs(10))
            .await
            .unwrap();
        assert!(written.response.is_accepted(), "{:?}", written.response);
    }

    let started = tokio::time::Instant::now();
    let deadline = started + Duration::from_secs(90);
    let killed = loop {
        let most = nodes.iter().map(|n| issued(&n.state_machine, &certs)).max();
        if most >= Some(3)
            && let Some(leader) = nodes.iter().position(FleetNode::leads)
        {
            let node = nodes.remove(leader);
            let id = node.id;
            node.kill().await;
            eprintln!(
                "killed leader n{id} after {:?}, {most:?} issued",
                started.elapsed()
            );
            break id;
        }
        assert!(tokio::time::Instant::now() < deadline, "nothing issued");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    loop {
        let counts: Vec<usize> = nodes
            .iter()
            .map(|n| issued(&n.state_machine, &certs))
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
    eprintln!(
        "all {CERTS} issued on every survivor after {:?}",
        started.elapsed()
    );

    // The certificates are Pebble's: real DER for the names asked.
    let leaf = nodes[0].state_machine.read(|state| {
        state
            .cert(&certs[0])
            .unwrap()
            .current
            .clone()
            .unwrap()
            .leaf_der
    });
    let (_, parsed) = x509_parser::parse_x509_certificate(&leaf).expect("a real certificate");
    let names = parsed
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>();
    assert_eq!(names, vec!["DNSName(w0.fleet.test)".to_string()]);

    let orders = pebble.orders_created();
    eprintln!("pebble saw {orders} orders for {CERTS} certificates and 1 leader kill");
    assert!(
        orders <= CERTS + 1,
        "{orders} orders for {CERTS} certificates and one leader kill"
    );
    for node in nodes {
        node.kill().await;
    }
}
