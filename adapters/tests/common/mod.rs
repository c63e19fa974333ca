//! A loopback cluster for the integration tests: openraft, our stores and our TCP network on
//! real tokio, optionally with each node running the node driver against one shared model CA.

#![allow(
    dead_code,
    unreachable_pub,
    reason = "each test binary uses part of this module"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use certfleet::fleet::{self, FleetNode};
use certfleet::node::{DriverConfig, ModelAcme, SystemClock};
use certfleet::raft::network;
use certfleet::raft::types::NodeId;
use certfleet_core::command::Op;
use certfleet_core::{Command, Response, UnixMillis};
use openraft::{BasicNode, Config, SnapshotPolicy};

pub const T0: UnixMillis = UnixMillis(1_700_000_000_000);
pub const WAIT: Duration = Duration::from_secs(10);

/// A node of the product's own fleet runner.
pub type Node = FleetNode;

/// Raft timing for tests: fast elections, and snapshots often with little log kept, so a late
/// learner needs a snapshot.
fn test_config() -> Arc<Config> {
    let config = Config {
        heartbeat_interval: 100,
        election_timeout_min: 400,
        election_timeout_max: 800,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(40),
        max_in_snapshot_log_to_keep: 5,
        purge_batch_size: 1,
        ..Config::default()
    };
    Arc::new(config.validate().unwrap())
}

/// Starts node `id`; with `acme`, it also runs the node driver against that shared CA.
pub async fn start_node(id: NodeId, acme: Option<Arc<ModelAcme>>) -> Node {
    let listener = fleet::bind_loopback().await.unwrap();
    let mut node = FleetNode::start(id, listener, test_config()).await.unwrap();
    if let Some(acme) = acme {
        let config = DriverConfig {
            tick: Duration::from_millis(200),
            apply_wait: Duration::from_secs(2),
            seed: id,
            ..DriverConfig::default()
        };
        node.run_driver(config, Arc::new(SystemClock), acme);
    }
    node
}

pub async fn start_cluster(n: u64) -> Vec<Node> {
    start_cluster_with(n, None).await
}

/// A cluster whose nodes all run the node driver against one shared CA (when given).
pub async fn start_cluster_with(n: u64, acme: Option<Arc<ModelAcme>>) -> Vec<Node> {
    let mut nodes = Vec::new();
    for id in 1..=n {
        nodes.push(start_node(id, acme.clone()).await);
    }
    let members: BTreeMap<NodeId, BasicNode> = nodes.iter().map(|n| (n.id, n.member())).collect();
    nodes[0].raft.initialize(members).await.unwrap();
    nodes
}

pub async fn leader_of(nodes: &[Node]) -> NodeId {
    let metrics = nodes[0]
        .raft
        .wait(Some(WAIT))
        .metrics(
            |m| {
                m.current_leader
                    .is_some_and(|l| nodes.iter().any(|n| n.id == l))
            },
            "a live leader",
        )
        .await
        .unwrap();
    metrics.current_leader.unwrap()
}

/// Writes through `via` as the admin API does: forwarded to the leader, waiting out elections.
pub async fn write(via: &Node, op: Op) -> Response {
    network::write(&via.raft, Command { at: T0, op }, WAIT)
        .await
        .unwrap()
        .response
}

pub async fn converge(nodes: &[&Node]) {
    let index = nodes
        .iter()
        .map(|n| n.raft.metrics().borrow().last_log_index.unwrap_or(0))
        .max()
        .unwrap();
    for node in nodes {
        node.raft
            .wait(Some(WAIT))
            .applied_index_at_least(Some(index), "caught up")
            .await
            .unwrap();
    }
    let digests: BTreeSet<[u8; 32]> = nodes.iter().map(|n| n.digest()).collect();
    assert_eq!(
        digests.len(),
        1,
        "nodes disagree after applying index {index}"
    );
}
