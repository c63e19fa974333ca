//! A cluster of real nodes on real sockets: the pieces every certfleet process runs (Raft with
//! its RPC server, the state machine, the leader's [`NodeDriver`]), started and joined the
//! same way by `certfleet demo` and the integration tests (DESIGN §7: the demo is the node's
//! code wired in one process, never a second implementation).
//!
//! The log store is the in-memory one (durable storage on redb is a later issue), so a killed
//! node here loses its disk: it is a crash of the process *and* its disk, which the cluster
//! must survive as long as a quorum remains.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use openraft::{BasicNode, Config, Raft};
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::dataplane::{ChallengeKeys, ConnectionLimits, Dataplane, alpn, http01};
use crate::node::{Acme, Clock, DriverConfig, DriverStats, NodeDriver};
use crate::raft::StateMachineStore;
use crate::raft::log_store::{MemLogStore, SyncMode};
use crate::raft::network::{self, Network};
use crate::raft::state_machine::ApplyObserver;
use crate::raft::types::{NodeId, TypeConfig};
use crate::seal::DataKey;

/// Why a node could not start or a cluster could not form.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum FleetError {
    /// Raft refused to start or to change the membership.
    #[error("node {node}: {what}: {reason}")]
    Raft {
        /// The node.
        node: NodeId,
        /// What was attempted.
        what: &'static str,
        /// openraft's answer.
        reason: String,
    },
    /// A socket could not be read.
    #[error("node {node}: {what}: {source}")]
    Io {
        /// The node.
        node: NodeId,
        /// What was attempted.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// No leader emerged in time.
    #[error("no leader after {after:?}")]
    NoLeader {
        /// How long we waited.
        after: Duration,
    },
}

/// Where a node's data plane listens; `None` leaves that server out.
#[derive(Debug, Default)]
pub struct DataplaneListeners {
    /// Port 80's role: HTTP-01 answers and the redirect to https.
    pub http01: Option<TcpListener>,
    /// Port 443's role: certificates by SNI and TLS-ALPN-01 answers.
    pub tls: Option<TcpListener>,
    /// Connection bounds of both.
    pub limits: ConnectionLimits,
}

/// Raft timing for nodes on one machine or one data centre: elections within about a second.
///
/// openraft 0.9 drops an AppendEntries that has not answered within one heartbeat interval, so
/// the heartbeat must outlast the worst round trip plus a follower's fsync: 150 ms is for one
/// data centre, and a control plane spread over regions needs more (the simulation's buggify
/// knobs found a cluster that replicated nothing with a 40 ms heartbeat over 150 ms round trips).
#[must_use]
pub fn raft_config() -> Arc<Config> {
    let config = Config {
        cluster_name: "certfleet".into(),
        heartbeat_interval: 150,
        election_timeout_min: 600,
        election_timeout_max: 1200,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(5_000),
        max_in_snapshot_log_to_keep: 1_000,
        ..Config::default()
    };
    // The literals above satisfy `validate` (heartbeat < election timeout min < max).
    Arc::new(config.validate().expect("a valid static config"))
}

/// One running node.
pub struct FleetNode {
    /// Its Raft id.
    pub id: NodeId,
    /// Where its Raft RPC server listens.
    pub addr: SocketAddr,
    /// Its Raft handle.
    pub raft: Raft<TypeConfig>,
    /// Its state machine (the data plane and tests read the applied state here).
    pub state_machine: StateMachineStore,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for FleetNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetNode")
            .field("id", &self.id)
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl FleetNode {
    /// Starts node `id` serving Raft on `listener` with `config` ([`raft_config`] unless a
    /// test needs other timing). It replicates but does not act as a leader until
    /// [`FleetNode::run_driver`].
    pub async fn start(
        id: NodeId,
        listener: TcpListener,
        config: Arc<Config>,
    ) -> Result<Self, FleetError> {
        Self::start_observed(id, listener, config, None).await
    }

    /// [`FleetNode::start`], showing every applied entry to `observer` inside apply (before
    /// the node acknowledges the index to a `WaitApplied`).
    pub async fn start_observed(
        id: NodeId,
        listener: TcpListener,
        config: Arc<Config>,
        observer: Option<ApplyObserver>,
    ) -> Result<Self, FleetError> {
        let addr = listener.local_addr().map_err(|source| FleetError::Io {
            node: id,
            what: "read the RPC listener's address",
            source,
        })?;
        let state_machine = match observer {
            Some(observer) => StateMachineStore::with_observer(observer),
            None => StateMachineStore::new(),
        };
        let raft = Raft::new(
            id,
            config,
            Network::default(),
            MemLogStore::new(SyncMode::Immediate),
            state_machine.clone(),
        )
        .await
        .map_err(|error| FleetError::Raft {
            node: id,
            what: "start raft",
            reason: error.to_string(),
        })?;
        let server = {
            let (raft, state_machine) = (raft.clone(), state_machine.clone());
            tokio::spawn(async move {
                if let Err(error) = network::serve(listener, raft, state_machine).await {
                    tracing::error!(node = id, %error, "raft RPC server stopped");
                }
            })
        };
        Ok(Self {
            id,
            addr,
            raft,
            state_machine,
            tasks: vec![server],
        })
    }

    /// Runs the node driver (the leader's work, DESIGN §5) on `clock` against `acme`; returns
    /// its counters.
    pub fn run_driver<C: Clock, A: Acme>(
        &mut self,
        config: DriverConfig,
        clock: Arc<C>,
        acme: Arc<A>,
    ) -> Arc<DriverStats> {
        let driver = NodeDriver::new(
            self.raft.clone(),
            self.state_machine.clone(),
            clock,
            acme,
            config,
        );
        let stats = driver.stats();
        self.tasks.push(tokio::spawn(driver.run()));
        stats
    }

    /// The digest of the node's applied state (equal on nodes that applied the same log).
    #[must_use]
    pub fn digest(&self) -> [u8; 32] {
        self.state_machine.read(certfleet_core::State::digest)
    }

    /// The node's address as Raft members know it.
    #[must_use]
    pub fn member(&self) -> BasicNode {
        BasicNode {
            addr: self.addr.to_string(),
        }
    }

    /// Whether this node believes it leads.
    #[must_use]
    pub fn leads(&self) -> bool {
        let metrics = self.raft.metrics().borrow().clone();
        metrics.current_leader == Some(self.id)
    }

    /// Starts the node's data plane (DESIGN §2): tables that follow the applied state, the
    /// HTTP-01 responder on `listeners.http01` and the TLS listener (certificates by SNI and
    /// TLS-ALPN-01) on `listeners.tls`, each if given. From now on the node acknowledges to a
    /// `WaitApplied` only what its data plane serves, so a CA asking any node for a challenge
    /// the leader declared ready finds it answered.
    pub fn serve_dataplane(
        &mut self,
        data_key: Arc<DataKey>,
        challenge_keys: ChallengeKeys,
        listeners: DataplaneListeners,
    ) -> Arc<Dataplane> {
        let dataplane = Arc::new(Dataplane::new(challenge_keys));
        self.state_machine
            .acknowledge_through(dataplane.served_index());
        self.tasks.push(tokio::spawn(
            Arc::clone(&dataplane).follow(self.state_machine.clone(), data_key),
        ));
        let limits = listeners.limits;
        if let Some(listener) = listeners.http01 {
            self.tasks.push(tokio::spawn(http01::serve_http01(
                listener,
                Arc::clone(&dataplane),
                limits,
            )));
        }
        if let Some(listener) = listeners.tls {
            self.tasks.push(tokio::spawn(alpn::serve_tls(
                listener,
                Arc::clone(&dataplane),
                limits,
            )));
        }
        dataplane
    }

    /// Adds a task that lives and dies with the node (its data plane servers, say).
    pub fn attach(&mut self, task: JoinHandle<()>) {
        self.tasks.push(task);
    }

    /// Stops the node at once, as a crash would: its tasks are aborted mid-flight, its sockets
    /// closed, and its in-memory disk dropped.
    pub async fn kill(self) {
        for task in &self.tasks {
            task.abort();
        }
        // Shutdown only stops openraft's own tasks; nothing is flushed that a crash would keep.
        let _ = self.raft.shutdown().await;
    }
}

/// Forms a cluster: the first `voters` nodes are initialized as voters, the rest join through
/// the leader as learners (edges). Waits until every node is a member.
pub async fn form(
    nodes: &[&FleetNode],
    voters: usize,
    deadline: Duration,
) -> Result<(), FleetError> {
    let started = tokio::time::Instant::now();
    let members: BTreeMap<NodeId, BasicNode> = nodes
        .iter()
        .take(voters)
        .map(|node| (node.id, node.member()))
        .collect();
    let first = nodes[0];
    first
        .raft
        .initialize(members)
        .await
        .map_err(|error| FleetError::Raft {
            node: first.id,
            what: "initialize the cluster",
            reason: error.to_string(),
        })?;
    for edge in &nodes[voters..] {
        loop {
            let remaining = deadline.saturating_sub(started.elapsed());
            if remaining.is_zero() {
                return Err(FleetError::NoLeader {
                    after: started.elapsed(),
                });
            }
            let Some(leader) = nodes.iter().find(|node| node.leads()) else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            // Blocking: returns once the learner has caught up with the leader's log.
            let added = tokio::time::timeout(
                remaining,
                leader.raft.add_learner(edge.id, edge.member(), true),
            )
            .await;
            match added {
                Ok(Ok(_)) => break,
                Ok(Err(error)) => {
                    tracing::debug!(edge = edge.id, %error, "add learner: retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(_) => {
                    return Err(FleetError::NoLeader {
                        after: started.elapsed(),
                    });
                }
            }
        }
    }
    // `add_learner` returns once the leader has replicated to the edge; each node learns the
    // membership when it stores the entry, a moment later. Callers may rely on every node
    // knowing the whole cluster.
    let ids: Vec<NodeId> = nodes.iter().map(|node| node.id).collect();
    for node in nodes {
        let remaining = deadline.saturating_sub(started.elapsed());
        let ids = ids.clone();
        node.raft
            .wait(Some(remaining))
            .metrics(
                move |m| {
                    let members = m.membership_config.membership();
                    members.voter_ids().count() == voters
                        && ids.iter().all(|id| members.get_node(id).is_some())
                },
                "the whole membership",
            )
            .await
            .map_err(|error| FleetError::Raft {
                node: node.id,
                what: "learn the membership",
                reason: error.to_string(),
            })?;
    }
    Ok(())
}

/// Binds a loopback listener on a free port (tests and the demo).
pub async fn bind_loopback() -> std::io::Result<TcpListener> {
    TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await
}

/// The loopback address of node `node` of a cluster on one machine: `127.0.0.<node>` (nodes
/// are numbered from 1; past 254 every node gets 127.0.0.1, which only the caller can avoid).
#[must_use]
pub fn loopback_ip(node: u64) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::new(127, 0, 0, u8::try_from(node).unwrap_or(1))
}

/// Binds the same port on 127.0.0.1 to 127.0.0.`count` (`port` 0: a free one, tried up to 50
/// times): nodes on one machine that a CA must reach on one port, as behind a load balancer.
pub async fn bind_same_port(count: u64, port: u16) -> std::io::Result<Vec<TcpListener>> {
    let attempts = if port == 0 { 50 } else { 1 };
    let mut last = None;
    for _ in 0..attempts {
        let first = TcpListener::bind((loopback_ip(1), port)).await?;
        let chosen = first.local_addr()?.port();
        let mut listeners = vec![first];
        for node in 2..=count {
            match TcpListener::bind((loopback_ip(node), chosen)).await {
                Ok(listener) => listeners.push(listener),
                Err(error) => {
                    last = Some(std::io::Error::new(
                        error.kind(),
                        format!("{}:{chosen}: {error}", loopback_ip(node)),
                    ));
                    break;
                }
            }
        }
        if listeners.len() as u64 == count {
            return Ok(listeners);
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no port free on every node's address")))
}
