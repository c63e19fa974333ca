//! A real cluster on loopback: openraft, our stores and our TCP network, on real tokio.
//!
//! Three voters elect a leader, replicate certificate commands, forward writes sent to a
//! follower, survive the leader's death, and bring a late learner (an edge) up to date
//! through a snapshot; every node ends with the same state digest.

mod common;

use std::time::Duration;

use certfleet::raft::network::Peer;
use certfleet_core::command::Op;
use certfleet_core::testing::{ISSUER, account, spec};
use certfleet_core::{CertId, IssuerId, Response};
use common::{WAIT, converge, leader_of, start_cluster, start_node, write};

fn put(name: &str) -> Op {
    Op::PutCert {
        spec: spec(&[name]),
        seed: 1,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_voters_replicate_forward_writes_and_agree() {
    let nodes = start_cluster(3).await;
    let leader = leader_of(&nodes).await;
    let follower = nodes.iter().find(|n| n.id != leader).unwrap();
    assert_eq!(
        write(
            follower,
            Op::SetAccount {
                issuer: IssuerId::parse(ISSUER).unwrap(),
                account: account()
            }
        )
        .await,
        Response::Accepted
    );
    for i in 0..20 {
        assert_eq!(
            write(follower, put(&format!("n{i}.example.com"))).await,
            Response::Accepted
        );
    }
    // A rejection is an answer, replicated like any entry.
    let rejected = write(
        follower,
        Op::RemoveCert {
            cert: CertId::parse("missing.example.com").unwrap(),
        },
    )
    .await;
    assert!(matches!(rejected, Response::Rejected(_)));
    converge(&nodes.iter().collect::<Vec<_>>()).await;
    assert!(
        nodes
            .iter()
            .all(|n| n.state_machine.read(|s| s.cert_count()) == 20)
    );

    // WaitApplied over the wire: answered at once when reached, after the timeout when not.
    let applied = *nodes[2].state_machine.applied_index().borrow();
    let mut peer = Peer::new(3, nodes[2].addr.to_string(), Duration::from_secs(5));
    assert!(
        peer.wait_applied(applied, Duration::from_secs(5))
            .await
            .unwrap()
            >= applied
    );
    let started = std::time::Instant::now();
    assert_eq!(
        peer.wait_applied(applied + 1_000, Duration::from_millis(200))
            .await
            .unwrap(),
        applied
    );
    assert!(started.elapsed() >= Duration::from_millis(200));

    for node in nodes {
        node.kill().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_takes_over_and_nothing_acknowledged_is_lost() {
    let mut nodes = start_cluster(3).await;
    let first = leader_of(&nodes).await;
    let via = nodes.iter().find(|n| n.id == first).unwrap();
    write(
        via,
        Op::SetAccount {
            issuer: IssuerId::parse(ISSUER).unwrap(),
            account: account(),
        },
    )
    .await;
    let mut acknowledged = Vec::new();
    for i in 0..15 {
        let name = format!("before{i}.example.com");
        assert_eq!(write(via, put(&name)).await, Response::Accepted);
        acknowledged.push(name);
    }
    let position = nodes.iter().position(|n| n.id == first).unwrap();
    nodes.remove(position).kill().await;
    let second = leader_of(&nodes).await;
    assert_ne!(second, first);
    for i in 0..15 {
        let name = format!("after{i}.example.com");
        assert_eq!(write(&nodes[0], put(&name)).await, Response::Accepted);
        acknowledged.push(name);
    }
    converge(&nodes.iter().collect::<Vec<_>>()).await;
    for node in &nodes {
        for name in &acknowledged {
            let id = CertId::parse(name).unwrap();
            assert!(
                node.state_machine.read(|s| s.cert(&id).is_some()),
                "node {} lost {name}",
                node.id
            );
        }
    }
    for node in nodes {
        node.kill().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_edge_learner_catches_up_through_a_snapshot() {
    let mut nodes = start_cluster(3).await;
    let leader = leader_of(&nodes).await;
    let via = nodes.iter().find(|n| n.id == leader).unwrap();
    write(
        via,
        Op::SetAccount {
            issuer: IssuerId::parse(ISSUER).unwrap(),
            account: account(),
        },
    )
    .await;
    for i in 0..120 {
        write(via, put(&format!("n{i}.example.com"))).await;
    }
    // Wait until the leader has snapshotted and purged the start of the log.
    via.raft
        .wait(Some(WAIT))
        .metrics(
            |m| m.purged.is_some_and(|p| p.index > 5),
            "log purged after a snapshot",
        )
        .await
        .unwrap();
    let edge = start_node(4, None).await;
    via.raft.add_learner(4, edge.member(), true).await.unwrap();
    nodes.push(edge);
    converge(&nodes.iter().collect::<Vec<_>>()).await;
    let edge = nodes.last().unwrap();
    assert!(
        edge.state_machine.snapshot_installs() >= 1,
        "the edge was brought up by a snapshot"
    );
    assert_eq!(edge.state_machine.read(|s| s.cert_count()), 120);
    for node in nodes {
        node.kill().await;
    }
}
