//! A loopback cluster for the integration tests: openraft, our stores and our TCP network on
//! real tokio, optionally with each node running the node driver against one shared model CA.

#![allow(
    dead_code,
    unreachable_pub,
    reason = "each test binary uses part of this module"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use certfleet::node::{DriverConfig, ModelAcme, NodeDriver, SystemClock};
use certfleet::raft::log_store::SyncMode;
use certfleet::raft::network::{self, Network};
use certfleet::raft::types::{NodeId, TypeConfig};
use certfleet::raft::{MemLogStore, StateMachineStore};
use certfleet_core::command::Op;
use certfleet_core::{Command, Response, UnixMillis};
use openraft::{BasicNode, Config, Raft, SnapshotPolicy};
use tokio::task::JoinHandle;

pub const T0: UnixMillis = UnixMillis(1_700_000_000_000);
pub const WAIT: Duration = Duration::from_secs(10);

pub struct Node {
    pub id: NodeId,
    pub addr: SocketAddr,
    pub raft: Raft<TypeConfig>,
    pub state_machine: StateMachineStore,
    server: JoinHandle<std::io::Result<()>>,
    driver: Option<JoinHandle<()>>,
}

impl Node {
    pub async fn start(id: NodeId) -> Self {
        Self::start_with(id, None).await
    }

    /// A node that also runs the node driver against `acme`.
    pub async fn start_with(id: NodeId, acme: Option<Arc<ModelAcme>>) -> Self {
        let config = Config {
            heartbeat_interval: 100,
            election_timeout_min: 400,
            election_timeout_max: 800,
            // Snapshot often and keep little log, so a late learner needs a snapshot.
            snapshot_policy: SnapshotPolicy::LogsSinceLast(40),
            max_in_snapshot_log_to_keep: 5,
            purge_batch_size: 1,
            ..Config::default()
        };
        let config = Arc::new(config.validate().unwrap());
        let log = MemLogStore::new(SyncMode::Immediate);
        let state_machine = StateMachineStore::new();
        let raft = Raft::new(id, config, Network::default(), log, state_machine.clone())
            .await
            .unwrap();
        let listener = network::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(network::serve(
            listener,
            raft.clone(),
            state_machine.clone(),
        ));
        let driver = acme.map(|acme| {
            let config = DriverConfig {
                tick: Duration::from_millis(200),
                apply_wait: Duration::from_secs(2),
                seed: id,
                ..DriverConfig::default()
            };
            let driver = NodeDriver::new(
                raft.clone(),
                state_machine.clone(),
                Arc::new(SystemClock),
                acme,
                config,
            );
            tokio::spawn(driver.run())
        });
        Self {
            id,
            addr,
            raft,
            state_machine,
            server,
            driver,
        }
    }

    pub fn node(&self) -> BasicNode {
        BasicNode {
            addr: self.addr.to_string(),
        }
    }

    pub async fn stop(self) {
        self.server.abort();
        if let Some(driver) = &self.driver {
            driver.abort();
        }
        self.raft.shutdown().await.unwrap();
    }

    pub fn digest(&self) -> [u8; 32] {
        self.state_machine.read(|s| s.digest())
    }
}

pub async fn start_cluster(n: u64) -> Vec<Node> {
    start_cluster_with(n, None).await
}

/// A cluster whose nodes all run the node driver against one shared CA (when given).
pub async fn start_cluster_with(n: u64, acme: Option<Arc<ModelAcme>>) -> Vec<Node> {
    let mut nodes = Vec::new();
    for id in 1..=n {
        nodes.push(Node::start_with(id, acme.clone()).await);
    }
    let members: BTreeMap<NodeId, BasicNode> = nodes.iter().map(|n| (n.id, n.node())).collect();
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
