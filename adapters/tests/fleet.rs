//! `fleet::form`, as the demo uses it: three voters and an edge (a learner) join one cluster,
//! a write sent to the edge is forwarded to the leader, and the edge ends up holding every
//! certificate the leader issued.

mod common;

use std::sync::Arc;
use std::time::Duration;

use certfleet::fleet;
use certfleet::node::ModelAcme;
use certfleet_core::command::Op;
use certfleet_core::testing::{ISSUER, account, spec};
use certfleet_core::time::DAY_MS;
use certfleet_core::{IssuerId, Response};
use common::{Node, converge, start_node, write};

const CERTS: usize = 12;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_joins_through_form_forwards_writes_and_holds_every_certificate() {
    let ca = Arc::new(ModelAcme::new(90 * DAY_MS));
    let mut nodes = Vec::new();
    for id in 1..=4 {
        nodes.push(start_node(id, Some(ca.clone())).await);
    }
    let refs: Vec<&Node> = nodes.iter().collect();
    fleet::form(&refs, 3, Duration::from_secs(20))
        .await
        .expect("the cluster forms");
    let edge = &nodes[3];
    let voters = edge
        .raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .voter_ids()
        .count();
    assert_eq!(voters, 3, "the fourth node is a learner, not a voter");

    let issuer = IssuerId::parse(ISSUER).unwrap();
    let set_account = Op::SetAccount {
        issuer,
        account: account(),
    };
    assert_eq!(write(edge, set_account).await, Response::Accepted);
    let mut certs = Vec::new();
    for i in 0..CERTS {
        let spec = spec(&[&format!("w{i}.example.com")]);
        certs.push(spec.cert_id());
        let put = Op::PutCert {
            spec,
            seed: i as u64,
        };
        assert_eq!(write(edge, put).await, Response::Accepted);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !edge.state_machine.read(|state| {
        certs
            .iter()
            .all(|id| state.cert(id).is_some_and(|r| r.current.is_some()))
    }) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the edge lacks certificates"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    converge(&nodes.iter().collect::<Vec<_>>()).await;
    assert_eq!(ca.with(|ca| ca.new_orders), CERTS as u64);
    for node in nodes {
        node.kill().await;
    }
}
