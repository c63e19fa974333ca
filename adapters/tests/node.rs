//! The node driver on a real three-node cluster (loopback, real tokio) against one shared
//! model CA: certificates are ordered once, every step committed, every node ends up holding
//! every certificate, and a new leader resumes open cycles by their committed order URL.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use certfleet::node::ModelAcme;
use certfleet_core::command::Op;
use certfleet_core::testing::{ISSUER, account, spec};
use certfleet_core::time::DAY_MS;
use certfleet_core::{IssuerId, Response};
use common::{Node, converge, leader_of, start_cluster_with, write};

const CERTS: usize = 10;

async fn add_certs(via: &Node) {
    let issuer = IssuerId::parse(ISSUER).unwrap();
    assert_eq!(
        write(
            via,
            Op::SetAccount {
                issuer,
                account: account()
            }
        )
        .await,
        Response::Accepted
    );
    for i in 0..CERTS {
        let op = Op::PutCert {
            spec: spec(&[format!("n{i}.example.com").as_str()]),
            seed: i as u64,
        };
        assert_eq!(write(via, op).await, Response::Accepted);
    }
}

fn issued_everywhere(nodes: &[Node]) -> bool {
    nodes.iter().all(|n| {
        n.state_machine.read(|s| {
            s.cert_count() == CERTS
                && s.certs()
                    .all(|(_, r)| r.current.is_some() && r.open.is_none())
        })
    })
}

async fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_issues_every_certificate_once_and_every_node_holds_it() {
    let acme = Arc::new(ModelAcme::new(90 * DAY_MS));
    let nodes = start_cluster_with(3, Some(acme.clone())).await;
    let leader = leader_of(&nodes).await;
    // Through a follower, as an operator's CLI might land: forwarded to the leader.
    add_certs(nodes.iter().find(|n| n.id != leader).unwrap()).await;
    wait_for(
        "every certificate issued on every node",
        Duration::from_secs(30),
        || issued_everywhere(&nodes),
    )
    .await;
    converge(&nodes.iter().collect::<Vec<_>>()).await;
    assert_eq!(
        acme.with(|ca| ca.new_orders),
        CERTS as u64,
        "one order per certificate"
    );
    assert!(acme.with(|ca| ca.orders_per_set.values().all(|n| *n == 1)));
    for node in nodes {
        node.kill().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_resumes_open_cycles_by_their_committed_order() {
    let acme = Arc::new(ModelAcme::new(90 * DAY_MS));
    let mut nodes = start_cluster_with(3, Some(acme.clone())).await;
    let first = leader_of(&nodes).await;
    let position = nodes.iter().position(|n| n.id == first).unwrap();
    add_certs(&nodes[position]).await;
    // Kill the leader while cycles are open with their orders committed.
    wait_for("orders committed", Duration::from_secs(30), || {
        nodes[position]
            .state_machine
            .read(|s| s.open_cycles().any(|(_, open)| open.step.order().is_some()))
    })
    .await;
    let in_window = nodes[position].state_machine.read(|s| {
        s.open_cycles()
            .filter(|(_, o)| o.step.order().is_none())
            .count()
    });
    nodes.remove(position).kill().await;
    let second = leader_of(&nodes).await;
    assert_ne!(second, first);
    wait_for(
        "every certificate issued on the survivors",
        Duration::from_secs(30),
        || issued_everywhere(&nodes),
    )
    .await;
    converge(&nodes.iter().collect::<Vec<_>>()).await;
    // DESIGN §5: orders per cycle ≤ 1 + leadership changes inside the newOrder → commit
    // window; cycles past OrderCreated are resumed by URL and cost no order.
    let orders = acme.with(|ca| ca.new_orders);
    assert!(
        orders <= (CERTS + in_window) as u64,
        "{orders} orders for {CERTS} certificates ({in_window} in the window)"
    );
    for node in nodes {
        node.kill().await;
    }
}
