//! `certfleet demo`: a real cluster on loopback issuing real certificates and serving them.
//!
//! Voters plus edges, each a [`FleetNode`] with Raft over TCP, a data plane (HTTP-01 and TLS
//! listeners on `127.0.0.<n>`, the same two ports on every node so that a CA validating a name
//! may reach any of them, as behind a load balancer) and, on voters, the leader's driver. The
//! CA is the embedded one (no network needed) or any ACME directory. Once every certificate is
//! issued, a real TLS client asks every node for every certificate and compares the chain with
//! what the cluster committed.
//!
//! Propagation is measured per certificate from its commit (the first node to apply its
//! `CertIssued`) to the moment the last node's data plane serves that log index.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use certfleet_core::budget::Rate;
use certfleet_core::command::Op;
use certfleet_core::model::{CertRequest, CertSpec, ChallengeKind, IssuerId, Policy};
use certfleet_core::time::HOUR_MS;
use certfleet_core::{CertId, Command};
use serde::Serialize;
use thiserror::Error;
use tokio::net::TcpListener;

use crate::account::{self, CaEndpoint, ClusterAcme};
use crate::acme::{AcmeOptions, KeySealer};
use crate::dataplane::export::{ExportConfig, Exporter};
use crate::dataplane::probe::{self, Trust};
use crate::dataplane::{ChallengeKeys, Dataplane};
use crate::demo::embedded::EmbeddedCa;
use crate::fleet::{self, DataplaneListeners, FleetNode};
use crate::node::{Clock, DriverConfig, SystemClock};
use crate::raft::network;
use crate::raft::state_machine::{AppliedEntry, ApplyObserver};
use crate::seal::{DataKey, Nonces};

/// The issuer id the demo registers its account under.
pub const DEMO_ISSUER: &str = "demo";

/// Where the demo's certificates come from.
#[derive(Clone, Debug)]
pub enum DemoCa {
    /// An ACME directory: its URL, and extra roots (PEM) for its HTTPS. It must be able to
    /// reach the nodes' data planes on `127.0.0.<n>` at the demo's ports.
    Directory {
        /// The directory URL.
        url: String,
        /// Roots for the directory's HTTPS (a test CA's); `None`: the platform's.
        root_pem: Option<Vec<u8>>,
    },
    /// The embedded CA ([`EmbeddedCa`]), started for the demo, its keys and choices from
    /// `seed`. Its root is known, so the final check verifies every chain fully (WebPKI).
    Embedded {
        /// The CA's seed.
        seed: u64,
    },
}

/// Options of a cluster demo.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// Voters (3 or 5 make sense; 1 to 7 accepted).
    pub voters: u8,
    /// Edges (learners that serve but never vote).
    pub edges: u8,
    /// Certificates to issue.
    pub certs: u32,
    /// The data plane's HTTP-01 port on every node (0: any free one, the same on all).
    pub http01_port: u16,
    /// The data plane's TLS port on every node (0: any free one, the same on all).
    pub tls_port: u16,
    /// Give up if not every certificate is issued and served by then.
    pub timeout: Duration,
    /// Where the last node (an edge, if any) exports PEM files in certbot's layout, if given.
    pub export_dir: Option<std::path::PathBuf>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            voters: 3,
            edges: 1,
            certs: 1000,
            http01_port: 0,
            tls_port: 0,
            timeout: Duration::from_secs(600),
            export_dir: None,
        }
    }
}

/// What a cluster demo did.
#[derive(Clone, Debug, Serialize)]
pub struct ClusterReport {
    /// Which CA issued.
    pub ca: String,
    /// Nodes in all (voters and edges).
    pub nodes: u32,
    /// Voters among them.
    pub voters: u32,
    /// Certificates asked for.
    pub certs: u32,
    /// Certificates issued (committed with a leaf).
    pub issued: u64,
    /// ACME orders sent to the CA.
    pub orders: u64,
    /// Orders per issued certificate (1.0: none ordered twice).
    pub orders_per_cert: f64,
    /// Every node served every certificate, as committed, to a real TLS client.
    pub all_served: bool,
    /// TLS handshakes made for that check.
    pub handshakes: u64,
    /// Seconds from the first certificate added to the last one served by every node.
    pub seconds: f64,
    /// Issued certificates per second over that time.
    pub certs_per_second: f64,
    /// Certificate committed → served by every node, median (ms).
    pub propagation_ms_p50: f64,
    /// … 99th percentile (ms).
    pub propagation_ms_p99: f64,
    /// … maximum (ms).
    pub propagation_ms_max: f64,
    /// Certificates the last node exported as PEM files (with `--export-dir`).
    pub exported: Option<u64>,
}

/// Why a cluster demo failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// An option is out of range.
    #[error("--{option} {value} is out of range: {reason}")]
    Option {
        /// The option.
        option: &'static str,
        /// The value given.
        value: u64,
        /// The range.
        reason: &'static str,
    },
    /// A socket could not be bound.
    #[error("bind {what}: {source}")]
    Bind {
        /// Which listener.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// The cluster did not start or form.
    #[error(transparent)]
    Fleet(#[from] fleet::FleetError),
    /// A setup write (account, policy, certificates) failed.
    #[error("{0}")]
    Setup(String),
    /// The PEM export could not start.
    #[error("export: {0}")]
    Export(#[from] crate::dataplane::export::ExportError),
    /// Not everything was issued in time.
    #[error("{issued} of {certs} certificates issued after {after:?}{hint}")]
    Timeout {
        /// Issued when the demo gave up.
        issued: u64,
        /// Asked for.
        certs: u32,
        /// How long it ran.
        after: Duration,
        /// What the nodes report, if anything helps.
        hint: String,
    },
}

/// Propagation bookkeeping: when each `CertIssued` was first applied, and when each node's
/// data plane reached each index.
#[derive(Debug, Default)]
struct Timeline {
    committed: HashMap<u64, Instant>,
    served: HashMap<u64, Vec<(u64, Instant)>>,
}

fn lock(timeline: &Mutex<Timeline>) -> std::sync::MutexGuard<'_, Timeline> {
    timeline
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn node_ip(node: u64) -> Ipv4Addr {
    fleet::loopback_ip(node)
}

/// [`fleet::bind_same_port`], its error named for the demo.
async fn same_port(count: u64, port: u16, what: &str) -> Result<Vec<TcpListener>, ClusterError> {
    fleet::bind_same_port(count, port)
        .await
        .map_err(|source| ClusterError::Bind {
            what: what.to_owned(),
            source,
        })
}

/// The demo's certificate `i`: one name, 40 per registered domain (`shopN.test`: the core paces 50 per domain per week), every third validated with
/// TLS-ALPN-01 and the rest with HTTP-01.
fn demo_spec(i: u32) -> Result<(CertSpec, String), ClusterError> {
    let name = format!("www{i}.shop{}.test", i / 40);
    let request = CertRequest {
        identifiers: vec![name.clone()],
        issuer: DEMO_ISSUER.into(),
        challenge: if i % 3 == 2 {
            ChallengeKind::TlsAlpn01
        } else {
            ChallengeKind::Http01
        },
        ..CertRequest::default()
    };
    let spec = CertSpec::from_request(&request)
        .map_err(|error| ClusterError::Setup(format!("certificate {name}: {error}")))?;
    Ok((spec, name))
}

fn check(options: &ClusterOptions) -> Result<(), ClusterError> {
    if !(1..=7).contains(&options.voters) {
        return Err(ClusterError::Option {
            option: "nodes",
            value: options.voters.into(),
            reason: "1 to 7 voters",
        });
    }
    if options.edges > 7 {
        return Err(ClusterError::Option {
            option: "edges",
            value: options.edges.into(),
            reason: "0 to 7",
        });
    }
    if options.certs == 0 || options.certs > 100_000 {
        return Err(ClusterError::Option {
            option: "certs",
            value: options.certs.into(),
            reason: "1 to 100000",
        });
    }
    Ok(())
}

/// Runs the demo against `ca`, calling `progress` with a line now and then.
pub async fn run(
    options: &ClusterOptions,
    ca: DemoCa,
    mut progress: impl FnMut(&str),
) -> Result<ClusterReport, ClusterError> {
    check(options)?;
    let count = u64::from(options.voters) + u64::from(options.edges);
    let mut http01 = same_port(count, options.http01_port, "the HTTP-01 listener").await?;
    let mut tls = same_port(count, options.tls_port, "the TLS listener").await?;
    let tls_port = tls[0]
        .local_addr()
        .map_err(|source| ClusterError::Bind {
            what: "the TLS listener".into(),
            source,
        })?
        .port();
    let http01_port = http01[0]
        .local_addr()
        .map_err(|source| ClusterError::Bind {
            what: "the HTTP-01 listener".into(),
            source,
        })?
        .port();

    let (endpoint, orders, trust, ca_name) = match ca {
        DemoCa::Directory { url, root_pem } => {
            let counted = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let endpoint = CaEndpoint {
                directory_url: url.clone(),
                root_pem,
                options: AcmeOptions::default(),
            };
            (endpoint, OrderCount::Counted(counted), Trust::Record, url)
        }
        DemoCa::Embedded { seed } => {
            let ips = (1..=count).map(node_ip).collect();
            let embedded = EmbeddedCa::start(seed, ips, http01_port, tls_port)
                .await
                .map_err(ClusterError::Setup)?;
            let mut roots = rustls::RootCertStore::empty();
            roots
                .add(embedded.root_der.clone().into())
                .map_err(|error| ClusterError::Setup(format!("the CA's root: {error}")))?;
            let endpoint = CaEndpoint {
                directory_url: embedded.directory_url.clone(),
                root_pem: None,
                options: AcmeOptions::default(),
            };
            let name = format!("embedded CA at {}", embedded.directory_url);
            (
                endpoint,
                OrderCount::Ca(Arc::new(embedded)),
                Trust::Roots(Arc::new(roots)),
                name,
            )
        }
    };
    progress(&format!(
        "{} voters + {} edges on 127.0.0.1-{count} (HTTP-01 :{http01_port}, TLS :{tls_port}); CA: {ca_name}",
        options.voters, options.edges
    ));

    let issuer = IssuerId::parse(DEMO_ISSUER)
        .map_err(|error| ClusterError::Setup(format!("issuer id: {error}")))?;
    let data_key = Arc::new(DataKey::generate(*b"demo"));
    let timeline = Arc::new(Mutex::new(Timeline::default()));
    let mut nodes: Vec<(FleetNode, Arc<Dataplane>)> = Vec::new();
    for id in 1..=count {
        let listener = TcpListener::bind((node_ip(id), 0))
            .await
            .map_err(|source| ClusterError::Bind {
                what: format!("node {id}'s Raft listener"),
                source,
            })?;
        let mut node = FleetNode::start_observed(
            id,
            listener,
            fleet::raft_config(),
            Some(observe_commits(&timeline)),
        )
        .await?;
        let dataplane = node.serve_dataplane(
            data_key.clone(),
            ChallengeKeys::Generate,
            DataplaneListeners {
                http01: Some(http01.remove(0)),
                tls: Some(tls.remove(0)),
                ..DataplaneListeners::default()
            },
        );
        node.attach(tokio::spawn(record_served(
            id,
            dataplane.clone(),
            timeline.clone(),
        )));
        if id <= u64::from(options.voters) {
            let sealer = KeySealer::new(data_key.clone(), Arc::new(Nonces::new(id)));
            let acme = ClusterAcme::new(
                issuer.clone(),
                endpoint.clone(),
                node.state_machine.clone(),
                sealer,
            );
            let config = DriverConfig {
                tick: Duration::from_millis(200),
                apply_wait: Duration::from_secs(2),
                seed: id,
                ..DriverConfig::default()
            };
            match &orders {
                OrderCount::Counted(counted) => {
                    let acme = Counting {
                        inner: acme,
                        orders: counted.clone(),
                    };
                    node.run_driver(config, Arc::new(SystemClock), Arc::new(acme));
                }
                OrderCount::Ca(_) => {
                    node.run_driver(config, Arc::new(SystemClock), Arc::new(acme));
                }
            }
        }
        nodes.push((node, dataplane));
    }
    let exported = match &options.export_dir {
        Some(root) => {
            let exporter = Exporter::new(ExportConfig::new(root), data_key.clone())?;
            let counters = exporter.counters();
            progress(&format!(
                "node {count} exports PEM files to {}",
                exporter.live().display()
            ));
            let (last, dataplane) = nodes
                .last_mut()
                .ok_or_else(|| ClusterError::Setup("no nodes".into()))?;
            last.attach(tokio::spawn(exporter.follow(dataplane.clone())));
            Some(counters)
        }
        None => None,
    };
    let refs: Vec<&FleetNode> = nodes.iter().map(|(node, _)| node).collect();
    fleet::form(&refs, usize::from(options.voters), Duration::from_secs(30)).await?;
    progress("cluster formed");

    let first = &nodes[0].0;
    let sealer = KeySealer::new(data_key.clone(), Arc::new(Nonces::new(1000)));
    account::register(
        &first.raft,
        issuer.clone(),
        &endpoint,
        &["mailto:demo@certfleet.test"],
        &sealer,
        SystemClock.now(),
    )
    .await
    .map_err(ClusterError::Setup)?;
    // The demo's CA is ours to ask: Let's Encrypt's budgets (300 orders per 3 hours) would
    // pace a thousand certificates over ten hours.
    let policy = Policy {
        new_orders: Rate {
            count: 1_000_000,
            period_ms: 3 * HOUR_MS,
        },
        ..Policy::default()
    };
    write(first, Op::SetPolicy { policy }).await?;
    progress("account registered and replicated");

    let started = Instant::now();
    let mut certs: Vec<(CertId, String)> = Vec::with_capacity(options.certs as usize);
    // A window of tasks awaited oldest first (madsim's tokio has no `JoinSet`, and this module
    // must compile under the simulation's cfg).
    let mut adds = std::collections::VecDeque::new();
    for i in 0..options.certs {
        let (spec, name) = demo_spec(i)?;
        certs.push((spec.cert_id(), name));
        let raft = nodes[(i as usize) % nodes.len()].0.raft.clone();
        // A few writes in flight: each commit is a Raft round trip, and one at a time would
        // make adding a thousand certificates the slow part.
        if adds.len() >= 32
            && let Some(oldest) = adds.pop_front()
        {
            flatten(oldest.await)?;
        }
        adds.push_back(tokio::spawn(async move {
            let command = Command {
                at: SystemClock.now(),
                op: Op::PutCert {
                    spec,
                    seed: u64::from(i),
                },
            };
            write_raft(&raft, command).await
        }));
    }
    while let Some(oldest) = adds.pop_front() {
        flatten(oldest.await)?;
    }
    progress(&format!(
        "{} certificates added in {:.1} s",
        options.certs,
        started.elapsed().as_secs_f64()
    ));

    let ids: Vec<CertId> = certs.iter().map(|(id, _)| id.clone()).collect();
    let deadline = started + options.timeout;
    let mut last_report = Instant::now();
    loop {
        let issued: Vec<u64> = nodes
            .iter()
            .map(|(_, dataplane)| {
                let table = dataplane.certs();
                ids.iter().filter(|id| table.get(id).is_some()).count() as u64
            })
            .collect();
        if issued.iter().all(|&n| n == u64::from(options.certs)) {
            break;
        }
        if Instant::now() > deadline {
            return Err(ClusterError::Timeout {
                issued: issued.iter().copied().min().unwrap_or(0),
                certs: options.certs,
                after: started.elapsed(),
                hint: format!("; served per node {issued:?}; {}", orders.describe()),
            });
        }
        if last_report.elapsed() >= Duration::from_secs(1) {
            last_report = Instant::now();
            progress(&format!(
                "{:>6.1} s  served per node {issued:?} of {}, {} orders",
                started.elapsed().as_secs_f64(),
                options.certs,
                orders.get()
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    progress(&format!(
        "every node serves all {} certificates after {seconds:.1} s; checking with a TLS client",
        options.certs
    ));

    let (all_served, handshakes) =
        check_served(&nodes, &certs, tls_port, &trust, &mut progress).await;
    let orders = orders.get();
    let issued = nodes[0].0.state_machine.read(|state| {
        ids.iter()
            .filter(|id| state.cert(id).is_some_and(|r| r.current.is_some()))
            .count() as u64
    });
    let propagation = propagation(&lock(&timeline), count);
    let exported = match exported {
        Some(counters) => {
            // The export follows the data plane a moment behind (fsync per certificate).
            let until = Instant::now() + Duration::from_secs(60);
            while counters.written() < issued && Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Some(counters.written())
        }
        None => None,
    };
    for (node, _) in nodes {
        node.kill().await;
    }
    Ok(ClusterReport {
        ca: ca_name,
        nodes: count as u32,
        voters: options.voters.into(),
        certs: options.certs,
        issued,
        orders,
        orders_per_cert: if issued == 0 {
            0.0
        } else {
            orders as f64 / issued as f64
        },
        all_served,
        handshakes,
        seconds,
        certs_per_second: issued as f64 / seconds.max(f64::EPSILON),
        propagation_ms_p50: percentile(&propagation, 50.0),
        propagation_ms_p99: percentile(&propagation, 99.0),
        propagation_ms_max: propagation.last().copied().unwrap_or(0.0),
        exported,
    })
}

/// Where the demo's order count comes from.
enum OrderCount {
    /// Counted at the nodes' ACME adapters (an external CA).
    Counted(Arc<std::sync::atomic::AtomicU64>),
    /// Counted by the embedded CA itself (which lives as long as this).
    Ca(Arc<EmbeddedCa>),
}

impl OrderCount {
    fn get(&self) -> u64 {
        match self {
            Self::Counted(counted) => counted.load(std::sync::atomic::Ordering::Relaxed),
            Self::Ca(ca) => ca.orders_created(),
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::Counted(_) => format!("{} orders sent", self.get()),
            Self::Ca(ca) => ca.describe(),
        }
    }
}

/// An [`crate::node::Acme`] that counts the orders it creates.
struct Counting<A> {
    inner: A,
    orders: Arc<std::sync::atomic::AtomicU64>,
}

impl<A: crate::node::Acme> crate::node::Acme for Counting<A> {
    async fn perform(
        &self,
        action: certfleet_core::order::Action,
        now: certfleet_core::UnixMillis,
    ) -> certfleet_core::order::Outcome {
        let creates = matches!(action, certfleet_core::order::Action::CreateOrder { .. });
        let outcome = self.inner.perform(action, now).await;
        if creates {
            // Counted whatever the outcome: a failed create may still have reached the CA.
            self.orders
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        outcome
    }

    async fn renewal_info(
        &self,
        ari_id: &str,
        now: certfleet_core::UnixMillis,
    ) -> Option<certfleet_core::command::AriWindow> {
        self.inner.renewal_info(ari_id, now).await
    }

    async fn roll_account_key(
        &self,
        old: certfleet_core::model::SealedBlob,
        new: certfleet_core::model::SealedBlob,
        now: certfleet_core::UnixMillis,
    ) -> crate::node::RolloverOutcome {
        self.inner.roll_account_key(old, new, now).await
    }
}

fn flatten(
    done: Result<Result<(), ClusterError>, tokio::task::JoinError>,
) -> Result<(), ClusterError> {
    done.map_err(|error| ClusterError::Setup(format!("adding a certificate: {error}")))?
}

async fn write(node: &FleetNode, op: Op) -> Result<(), ClusterError> {
    let command = Command {
        at: SystemClock.now(),
        op,
    };
    write_raft(&node.raft, command).await
}

async fn write_raft(
    raft: &openraft::Raft<crate::raft::types::TypeConfig>,
    command: Command,
) -> Result<(), ClusterError> {
    let what = format!("{:?}", std::mem::discriminant(&command.op));
    let written = network::write(raft, command, Duration::from_secs(30))
        .await
        .map_err(|error| ClusterError::Setup(format!("commit {what}: {error}")))?;
    if written.response.is_accepted() {
        Ok(())
    } else {
        Err(ClusterError::Setup(format!(
            "the cluster refused a setup command: {:?}",
            written.response
        )))
    }
}

/// Records when each accepted `CertIssued` is first applied anywhere (its commit, near enough:
/// the leader applies right after the commit).
fn observe_commits(timeline: &Arc<Mutex<Timeline>>) -> ApplyObserver {
    let timeline = timeline.clone();
    Arc::new(move |entry: &AppliedEntry<'_>| {
        if matches!(entry.command.op, Op::CertIssued { .. }) && entry.response.is_accepted() {
            lock(&timeline)
                .committed
                .entry(entry.index)
                .or_insert_with(Instant::now);
        }
    })
}

/// Records every index node `id`'s data plane publishes as served, with the time.
async fn record_served(id: u64, dataplane: Arc<Dataplane>, timeline: Arc<Mutex<Timeline>>) {
    let mut served = dataplane.served_index();
    loop {
        let index = *served.borrow_and_update();
        lock(&timeline)
            .served
            .entry(id)
            .or_default()
            .push((index, Instant::now()));
        if served.changed().await.is_err() {
            return;
        }
    }
}

/// Propagation of each committed certificate in ms, sorted: from its commit to the time the
/// last of the `count` nodes served its index.
fn propagation(timeline: &Timeline, count: u64) -> Vec<f64> {
    let mut out = Vec::with_capacity(timeline.committed.len());
    for (&index, &committed) in &timeline.committed {
        let mut last = Some(committed);
        for node in 1..=count {
            let reached = timeline
                .served
                .get(&node)
                .and_then(|seen| seen.iter().find(|(at, _)| *at >= index))
                .map(|(_, when)| *when);
            last = match (last, reached) {
                (Some(a), Some(b)) => Some(a.max(b)),
                _ => None,
            };
        }
        if let Some(last) = last {
            out.push(last.saturating_duration_since(committed).as_secs_f64() * 1000.0);
        }
    }
    out.sort_by(f64::total_cmp);
    out
}

/// The `p`th percentile of sorted `values` (nearest rank), 0 if empty.
fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

/// Asks every node for every certificate with a real TLS client; compares the chain with the
/// committed one. Returns whether all matched and how many handshakes were made.
async fn check_served(
    nodes: &[(FleetNode, Arc<Dataplane>)],
    certs: &[(CertId, String)],
    tls_port: u16,
    trust: &Trust,
    progress: &mut impl FnMut(&str),
) -> (bool, u64) {
    let mut handshakes = 0;
    let mut failures = 0u64;
    for (node, _) in nodes {
        let addr = SocketAddr::from((node_ip(node.id), tls_port));
        let mut checks = std::collections::VecDeque::new();
        for (cert, name) in certs {
            let committed = node
                .state_machine
                .read(|state| probe::committed_chain(state, cert));
            let (name, trust) = (name.clone(), trust.clone());
            checks.push_back(tokio::spawn(async move {
                let verdict = probe::shows_committed(
                    addr,
                    &name,
                    &trust,
                    committed.as_deref(),
                    Duration::from_secs(10),
                )
                .await;
                (name, verdict)
            }));
            if checks.len() >= 64
                && let Some(oldest) = checks.pop_front()
            {
                handshakes += 1;
                failures += u64::from(!judge(node.id, oldest.await, progress));
            }
        }
        while let Some(oldest) = checks.pop_front() {
            handshakes += 1;
            failures += u64::from(!judge(node.id, oldest.await, progress));
        }
    }
    (failures == 0, handshakes)
}

/// Whether one check passed; a failure is reported through `progress`.
fn judge(
    node: u64,
    done: Result<(String, Result<(), String>), tokio::task::JoinError>,
    progress: &mut impl FnMut(&str),
) -> bool {
    match done {
        Ok((_, Ok(()))) => true,
        Ok((name, Err(reason))) => {
            progress(&format!("node {node} does not serve {name}: {reason}"));
            false
        }
        Err(error) => {
            progress(&format!("node {node}: a check failed to run: {error}"));
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&values, 50.0), 50.0);
        assert_eq!(percentile(&values, 99.0), 99.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }

    #[test]
    fn propagation_waits_for_the_last_node() {
        let t0 = Instant::now();
        let mut timeline = Timeline::default();
        timeline.committed.insert(5, t0);
        timeline
            .served
            .insert(1, vec![(5, t0 + Duration::from_millis(2))]);
        timeline.served.insert(
            2,
            vec![
                (4, t0 + Duration::from_millis(1)),
                (9, t0 + Duration::from_millis(30)),
            ],
        );
        assert_eq!(propagation(&timeline, 2), vec![30.0]);
        // A node that never served it: not counted as propagated.
        assert!(propagation(&timeline, 3).is_empty());
    }

    #[test]
    fn options_out_of_range_are_named() {
        let options = ClusterOptions {
            voters: 0,
            ..ClusterOptions::default()
        };
        assert_eq!(
            check(&options).unwrap_err().to_string(),
            "--nodes 0 is out of range: 1 to 7 voters"
        );
    }
}
