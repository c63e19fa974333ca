//! Account key rollover (RFC 8555 §7.3.5, DESIGN §4) in a three-node cluster against a real
//! Pebble: the new key is committed through Raft before the CA hears of it, the leader's driver
//! has Pebble bind it, and the cluster goes on issuing with it. Pebble's log says how many
//! `keyChange` requests reached it, and the old credentials, opened with the data key, must be
//! refused by Pebble afterwards: the CA holds the key the cluster holds.
//!
//! The nodes listen on 127.0.0.1 to 127.0.0.3 (HTTP-01 and TLS on the same two ports on each),
//! as in `pebble_cluster.rs`, and Pebble's DNS spreads the names over them.

mod support;

use std::sync::Arc;
use std::time::Duration;

use certfleet::account::{self, CaEndpoint, ClusterAcme};
use certfleet::acme::{AcmeClient, AcmeOptions, KeySealer, Transport, key_thumbprint};
use certfleet::dataplane::ChallengeKeys;
use certfleet::fleet::{self, DataplaneListeners, FleetNode};
use certfleet::node::{Clock, DriverConfig, SystemClock};
use certfleet::raft::network;
use certfleet::seal::{DataKey, Nonces};
use certfleet_core::model::{Account, CertRequest, CertSpec, ChallengeKind, SealedBlob};
use certfleet_core::name::Identifier;
use certfleet_core::order::{Action, Outcome};
use certfleet_core::testing::ISSUER;
use certfleet_core::{CertId, Command, Cycle, IssuerId, Op};
use support::pebble::{Pebble, PebbleOptions};
use tokio::time::Instant;

const NODES: u8 = 3;
/// Each test's waits together: Pebble issues about 30 certificates a second here, so this is
/// slack for a loaded machine, not a pace.
const TEST_DEADLINE: Duration = Duration::from_secs(45);
/// What Pebble logs once per `keyChange` request (the path of its `keyChange` URL).
const KEY_CHANGE_LOG_LINE: &str = "POST /rollover-account-key ";

/// A running cluster, its CA and the key that seals its secrets.
struct Cluster {
    nodes: Vec<FleetNode>,
    data_key: Arc<DataKey>,
    // Last: dropped (killed) after the nodes stop calling it.
    pebble: Pebble,
}

impl Cluster {
    /// Starts Pebble and three nodes validating against the nodes' own data planes, forms the
    /// cluster and registers the account; `None` when Pebble is not installed.
    async fn start() -> Option<Self> {
        let mut http01 = fleet::bind_same_port(NODES.into(), 0).await.unwrap();
        let mut tls = fleet::bind_same_port(NODES.into(), 0).await.unwrap();
        let pebble = Pebble::start_or_skip(PebbleOptions {
            http01_port: Some(http01[0].local_addr().unwrap().port()),
            tlsalpn01_port: Some(tls[0].local_addr().unwrap().port()),
            ..PebbleOptions::default()
        })?;
        let data_key = Arc::new(DataKey::new(*b"test", &[7; 32]));
        let ca = CaEndpoint {
            directory_url: pebble.directory_url().to_owned(),
            root_pem: Some(pebble.root_pem().to_vec()),
            options: AcmeOptions::default(),
        };
        let mut nodes = Vec::new();
        for id in 1..=u64::from(NODES) {
            let listener = fleet::bind_loopback().await.unwrap();
            let mut node = FleetNode::start(id, listener, fleet::raft_config())
                .await
                .unwrap();
            node.serve_dataplane(
                data_key.clone(),
                ChallengeKeys::Generate,
                DataplaneListeners {
                    http01: Some(http01.remove(0)),
                    tls: Some(tls.remove(0)),
                    ..DataplaneListeners::default()
                },
            );
            let acme = ClusterAcme::new(
                issuer(),
                ca.clone(),
                node.state_machine.clone(),
                KeySealer::new(data_key.clone(), Arc::new(Nonces::new(id))),
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
        fleet::form(&refs, usize::from(NODES), Duration::from_secs(20))
            .await
            .unwrap();
        account::register(
            &nodes[0].raft,
            issuer(),
            &ca,
            &["mailto:ops@certfleet.test"],
            &sealer(&data_key, 100),
            SystemClock.now(),
        )
        .await
        .expect("the account is registered and committed");
        Some(Self {
            nodes,
            data_key,
            pebble,
        })
    }

    /// Puts certificates `range` through the first node, each name answered by one of
    /// `answered_by` (node ids: a killed node answers nothing). Every third validates with
    /// TLS-ALPN-01, the rest with HTTP-01.
    async fn put_certs(&self, range: std::ops::Range<usize>, answered_by: &[u64]) -> Vec<CertId> {
        let mut certs = Vec::new();
        for i in range {
            let name = format!("k{i}.d{}.test", i / 40);
            let node = answered_by[i % answered_by.len()];
            self.pebble.add_a(&name, fleet::loopback_ip(node));
            let request = CertRequest {
                identifiers: vec![name],
                issuer: ISSUER.into(),
                challenge: if i % 3 == 2 {
                    ChallengeKind::TlsAlpn01
                } else {
                    ChallengeKind::Http01
                },
                ..CertRequest::default()
            };
            let spec = CertSpec::from_request(&request).unwrap();
            certs.push(spec.cert_id());
            let command = Command {
                at: SystemClock.now(),
                op: Op::PutCert {
                    spec,
                    seed: i as u64,
                },
            };
            let written = network::write(&self.nodes[0].raft, command, Duration::from_secs(10))
                .await
                .unwrap();
            assert!(written.response.is_accepted(), "{:?}", written.response);
        }
        certs
    }

    /// Most of `certs` any node has issued.
    fn issued_most(&self, certs: &[CertId]) -> usize {
        self.nodes
            .iter()
            .map(|node| issued(node, certs))
            .max()
            .unwrap_or(0)
    }

    /// Polls until `check` holds; at `deadline` panics with what it last said and Pebble's
    /// log tail.
    async fn wait_until(
        &self,
        deadline: Instant,
        mut check: impl FnMut(&Self) -> Result<(), String>,
    ) {
        loop {
            let Err(waiting) = check(self) else { return };
            assert!(
                Instant::now() < deadline,
                "{waiting}; pebble log tail:\n{}",
                self.pebble
                    .log()
                    .lines()
                    .rev()
                    .take(20)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Ok once every node has committed `credentials` as the account's and has no rollover
    /// in progress.
    fn rolled_everywhere(&self, credentials: &SealedBlob) -> Result<(), String> {
        for node in &self.nodes {
            let account = account_on(node);
            if account.rollover.is_some() || account.credentials != *credentials {
                return Err(format!(
                    "n{} has not finished the rollover: in progress {}, new credentials {}",
                    node.id,
                    account.rollover.is_some(),
                    account.credentials == *credentials
                ));
            }
        }
        Ok(())
    }

    /// Ok once every node has issued every one of `certs`.
    fn issued_everywhere(&self, certs: &[CertId]) -> Result<(), String> {
        let counts: Vec<(u64, usize)> = self
            .nodes
            .iter()
            .map(|node| (node.id, issued(node, certs)))
            .collect();
        if counts.iter().all(|&(_, count)| count == certs.len()) {
            Ok(())
        } else {
            Err(format!("issued per node {counts:?} of {}", certs.len()))
        }
    }

    /// The credentials JSON inside `blob`.
    fn open(&self, blob: &SealedBlob) -> String {
        let json = sealer(&self.data_key, 102).open(blob).unwrap();
        String::from_utf8(json.to_vec()).unwrap()
    }

    /// The CA holds the key of `new` and not that of `old`: their thumbprints differ, the
    /// account is the same, and a newOrder signed with `old` is refused.
    async fn assert_ca_holds_new_key(&self, old: &SealedBlob, new: &SealedBlob) {
        let (old, new) = (self.open(old), self.open(new));
        assert_ne!(key_thumbprint(&old).unwrap(), key_thumbprint(&new).unwrap());
        let account_url = |json: &str| {
            let json: serde_json::Value = serde_json::from_str(json).unwrap();
            json["id"].as_str().unwrap().to_owned()
        };
        assert_eq!(account_url(&old), account_url(&new), "the same account");
        let client = AcmeClient::from_credentials(
            Transport::Https {
                root_pem: Some(self.pebble.root_pem().to_vec()),
            },
            &old,
            sealer(&self.data_key, 103),
            &AcmeOptions::default(),
            SystemClock.now(),
        )
        .await
        .expect("the directory is fetched without signing");
        let order = Action::CreateOrder {
            cert: CertId::parse("old-key").unwrap(),
            cycle: Cycle(1),
            identifiers: vec![Identifier::parse("old-key.rollover.test").unwrap()],
            profile: None,
            replaces: None,
        };
        let outcome = client.perform(order, SystemClock.now()).await;
        // Pebble checks a `kid` JWS against the account's current key (its `lookupJWK`).
        let Outcome::Failed(error) = outcome else {
            panic!("pebble accepted a newOrder signed with the old account key: {outcome:?}");
        };
        assert_eq!(error.status, Some(400), "{error:?}");
        assert!(
            error.detail.starts_with("JWS verification error"),
            "{error:?}"
        );
    }

    /// `keyChange` requests Pebble has handled.
    fn key_changes(&self) -> usize {
        self.pebble
            .log()
            .lines()
            .filter(|line| line.contains(KEY_CHANGE_LOG_LINE))
            .count()
    }

    async fn stop(self) {
        for node in self.nodes {
            node.kill().await;
        }
    }
}

fn issuer() -> IssuerId {
    IssuerId::parse(ISSUER).unwrap()
}

/// A sealer on the cluster's data key with its own nonce stream (`seed` apart from the nodes').
fn sealer(data_key: &Arc<DataKey>, seed: u64) -> KeySealer {
    KeySealer::new(data_key.clone(), Arc::new(Nonces::new(seed)))
}

fn account_on(node: &FleetNode) -> Account {
    node.state_machine
        .read(|state| state.account(&issuer()).cloned())
        .expect("the account is committed")
}

fn issued(node: &FleetNode, certs: &[CertId]) -> usize {
    node.state_machine.read(|state| {
        certs
            .iter()
            .filter(|id| state.cert(id).is_some_and(|r| r.current.is_some()))
            .count()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_key_rolled_through_a_follower_mid_issuance_keeps_every_certificate_coming() {
    const FIRST: usize = 30;
    const LATER: usize = 10;
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    let started = Instant::now();
    let deadline = started + TEST_DEADLINE;
    let all_nodes: Vec<u64> = cluster.nodes.iter().map(|node| node.id).collect();
    let mut certs = cluster.put_certs(0..FIRST, &all_nodes).await;
    let registered = account_on(&cluster.nodes[0]).credentials;

    // A few issued and the rest in flight: roll now, through a node that does not lead.
    cluster
        .wait_until(deadline, |c| match c.issued_most(&certs) {
            issued if issued >= 3 => Ok(()),
            issued => Err(format!("{issued} of {FIRST} issued before the rollover")),
        })
        .await;
    let follower = cluster
        .nodes
        .iter()
        .find(|node| !node.leads())
        .expect("two of three nodes follow");
    let issued_at_roll = cluster.issued_most(&certs);
    let new = account::begin_key_rollover(
        &follower.raft,
        &follower.state_machine,
        issuer(),
        &sealer(&cluster.data_key, 101),
        SystemClock.now(),
    )
    .await
    .expect("the rollover is committed through the follower");
    eprintln!(
        "rollover committed through follower n{} after {:?}, {issued_at_roll} of {FIRST} issued",
        follower.id,
        started.elapsed()
    );
    cluster
        .wait_until(deadline, |c| c.rolled_everywhere(&new))
        .await;
    eprintln!(
        "rolled on every node after {:?}, {} of {FIRST} issued",
        started.elapsed(),
        cluster.issued_most(&certs)
    );

    certs.extend(cluster.put_certs(FIRST..FIRST + LATER, &all_nodes).await);
    cluster
        .wait_until(deadline, |c| c.issued_everywhere(&certs))
        .await;
    eprintln!(
        "all {} issued on every node after {:?}",
        certs.len(),
        started.elapsed()
    );

    let orders = cluster.pebble.orders_created();
    let key_changes = cluster.key_changes();
    eprintln!(
        "pebble saw {key_changes} keyChange and {orders} orders for {} certificates",
        certs.len()
    );
    assert_eq!(key_changes, 1, "one keyChange for one rollover");
    // A cycle whose challenge Pebble was validating when the key changed may fail and order
    // again.
    assert!(
        orders <= certs.len() + 2,
        "{orders} orders for {} certificates and one rollover",
        certs.len()
    );
    cluster.assert_ca_holds_new_key(&registered, &new).await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_during_a_key_rollover_leaves_the_survivors_to_finish_it() {
    const FIRST: usize = 6;
    const LATER: usize = 10;
    let Some(mut cluster) = Cluster::start().await else {
        return;
    };
    let started = Instant::now();
    let deadline = started + TEST_DEADLINE;
    let all_nodes: Vec<u64> = cluster.nodes.iter().map(|node| node.id).collect();
    let first = cluster.put_certs(0..FIRST, &all_nodes).await;
    // Everything issued before the kill: a name the killed node answers would fail validation.
    cluster
        .wait_until(deadline, |c| c.issued_everywhere(&first))
        .await;
    let registered = account_on(&cluster.nodes[0]).credentials;

    // Through the leader, whose driver plans the rollover as soon as it applies it: the kill
    // lands before, during or after its calls to the CA.
    cluster
        .wait_until(deadline, |c| {
            if c.nodes.iter().any(FleetNode::leads) {
                Ok(())
            } else {
                Err("no node leads".into())
            }
        })
        .await;
    let through = cluster
        .nodes
        .iter()
        .position(FleetNode::leads)
        .expect("a node leads");
    let new = account::begin_key_rollover(
        &cluster.nodes[through].raft,
        &cluster.nodes[through].state_machine,
        issuer(),
        &sealer(&cluster.data_key, 101),
        SystemClock.now(),
    )
    .await
    .expect("the rollover is committed");
    let leader = cluster
        .nodes
        .iter()
        .position(FleetNode::leads)
        .unwrap_or(through);
    let killed = cluster.nodes.remove(leader);
    let killed_id = killed.id;
    killed.kill().await;
    let key_changes_at_kill = cluster.key_changes();
    eprintln!(
        "killed leader n{killed_id} after {:?}, {key_changes_at_kill} keyChange by then",
        started.elapsed()
    );

    cluster
        .wait_until(deadline, |c| c.rolled_everywhere(&new))
        .await;
    eprintln!("survivors rolled after {:?}", started.elapsed());

    // New certificates issue only if Pebble binds the account to the key the cluster holds.
    let survivors: Vec<u64> = cluster.nodes.iter().map(|node| node.id).collect();
    let later = cluster.put_certs(FIRST..FIRST + LATER, &survivors).await;
    cluster
        .wait_until(deadline, |c| c.issued_everywhere(&later))
        .await;
    eprintln!(
        "all {} issued on both survivors after {:?}",
        FIRST + LATER,
        started.elapsed()
    );

    let key_changes = cluster.key_changes();
    eprintln!(
        "pebble saw {key_changes} keyChange and {} orders for {} certificates",
        cluster.pebble.orders_created(),
        FIRST + LATER
    );
    // The next leader asks Pebble first whether it already holds the new key.
    assert!(key_changes <= 1, "{key_changes} keyChange for one rollover");
    cluster.assert_ca_holds_new_key(&registered, &new).await;
    cluster.stop().await;
}
