//! One simulated cluster run: hosts, workload, faults, healing, invariants, trace digest.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use certfleet::node::{Clock, DriverConfig, ModelAcme, NodeDriver, SystemClock};
use certfleet::raft::log_store::SyncMode;
use certfleet::raft::network::{self, Network};
use certfleet::raft::types::{NodeId, TypeConfig};
use certfleet::raft::{MemLogStore, StateMachineStore};
use certfleet_core::command::Op;
use certfleet_core::testing::{ISSUER, account, spec};
use certfleet_core::time::mix;
use certfleet_core::{CertId, Command, IssuerId, Response, UnixMillis};
use madsim::net::NetSim;
use madsim::runtime::{Handle, NodeHandle};
use openraft::{BasicNode, Config, Raft};
use sha2::{Digest, Sha256};

use crate::SimOptions;

/// Appends a line to the trace; with `CERTFLEET_SIM_VERBOSE` set, also prints it as it happens.
macro_rules! note {
    ($trace:expr, $($arg:tt)*) => {{
        let line = format!($($arg)*);
        if std::env::var_os("CERTFLEET_SIM_VERBOSE").is_some() {
            eprintln!("{line}");
        }
        let trace: &mut String = &mut *$trace;
        trace.push_str(&line);
        trace.push('\n');
    }};
}

/// The RPC port every host listens on.
pub const RPC_PORT: u16 = 7000;
/// Virtual time the healed cluster gets to converge (SIMULATION liveness phase).
pub const CONVERGE_MS_MAX: u64 = 60_000;
/// Lifetime of certificates the simulated CA issues: short, so renewals happen within a run.
pub const CERT_LIFETIME_MS: u64 = 20 * 60 * 1000;
/// Healthy virtual time after the workload, during which certificates keep renewing.
pub const IDLE_MS: u64 = 60 * 60 * 1000;

/// Virtual time one run may take at most; past it the run is stuck.
pub const VIRTUAL_SECS_MAX: u64 = 3 * 3_600;

/// What one run found.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// SHA-256 over the run's trace: options, faults, write outcomes, final state digests.
    pub trace_digest: [u8; 32],
    /// Invariant violations, empty for a clean run.
    pub violations: Vec<String>,
    /// Writes acknowledged as committed.
    pub acknowledged: usize,
    /// Writes whose outcome is unknown (timed out or failed).
    pub unknown: usize,
    /// Leader changes observed.
    pub leader_changes: u64,
    /// Unsynced log entries lost to crashes, and kept by torn writes.
    pub entries_lost: usize,
    /// Unsynced log entries kept by torn writes.
    pub entries_torn: usize,
    /// The trace itself (printed when replaying one seed).
    pub trace: String,
    /// Order cycles begun across all certificates.
    pub cycles: u64,
    /// Orders the CA received (DESIGN §5: at most cycles + leadership changes in the window).
    pub orders: u64,
}

impl Outcome {
    /// The outcome of a run that panicked (a core assertion, or the time limit: stuck).
    #[must_use]
    pub fn panicked(panic: &(dyn std::any::Any + Send)) -> Self {
        let message = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("a panic without a message");
        Self {
            trace_digest: Sha256::digest(message.as_bytes()).into(),
            violations: vec![format!("run panicked: {message}")],
            acknowledged: 0,
            unknown: 0,
            leader_changes: 0,
            entries_lost: 0,
            entries_torn: 0,
            trace: String::new(),
            cycles: 0,
            orders: 0,
        }
    }
}

/// The running incarnation of a host: its Raft handle and state machine (`None` while down).
type Incarnation = Arc<Mutex<Option<(Raft<TypeConfig>, StateMachineStore)>>>;

struct Host {
    id: NodeId,
    addr: SocketAddr,
    node: NodeHandle,
    log: MemLogStore,
    live: Incarnation,
    up: bool,
    /// Process lifetimes (restarts) so far; applied indexes are monotonic within one (I5).
    incarnation: u64,
    /// Crashes while this host was the leader.
    leader_crashes: u64,
}

impl Host {
    fn live(&self) -> MutexGuard<'_, Option<(Raft<TypeConfig>, StateMachineStore)>> {
        self.live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn raft(&self) -> Option<Raft<TypeConfig>> {
        self.live().as_ref().map(|(raft, _)| raft.clone())
    }

    fn state_machine(&self) -> Option<StateMachineStore> {
        self.live().as_ref().map(|(_, sm)| sm.clone())
    }
}

/// A deterministic stream of choices from the seed (the core's `mix`), independent of
/// madsim's internal RNG so a fault schedule reads the same across madsim versions.
struct Choices {
    seed: u64,
    counter: u64,
}

impl Choices {
    fn below(&mut self, bound: u64) -> u64 {
        self.counter += 1;
        mix(self.seed, b"sim-choice", self.counter) % bound.max(1)
    }
}

fn raft_config() -> Arc<Config> {
    let config = Config {
        heartbeat_interval: 100,
        election_timeout_min: 400,
        election_timeout_max: 800,
        // Keep the whole log: a restarted node rebuilds its in-memory state machine from it
        // (persisted snapshots in the simulated store are still to come).
        snapshot_policy: openraft::SnapshotPolicy::Never,
        ..Config::default()
    };
    Arc::new(config.validate().expect("a valid static config"))
}

fn start_host(handle: &Handle, id: NodeId, options: &SimOptions, acme: &Arc<ModelAcme>) -> Host {
    let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, id as u8));
    let addr = SocketAddr::new(ip, RPC_PORT);
    // The "disk" outlives the process: created here, handed to every incarnation.
    let log = MemLogStore::new(SyncMode::Deferred);
    let live: Incarnation = Arc::default();
    let sync_every = Duration::from_millis(options.sync_interval_ms);
    let (init_log, init_live, init_acme) = (log.clone(), live.clone(), acme.clone());
    let driver_seed = mix(options.seed, b"driver", id);
    let node = handle
        .create_node()
        .name(format!("n{id}"))
        .ip(ip)
        .init(move || {
            let (log, live, acme) = (init_log.clone(), init_live.clone(), init_acme.clone());
            async move {
                let state_machine = StateMachineStore::new();
                let raft = Raft::new(
                    id,
                    raft_config(),
                    Network::default(),
                    log.clone(),
                    state_machine.clone(),
                )
                .await
                .expect("raft starts on a valid store");
                *live
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) =
                    Some((raft.clone(), state_machine.clone()));
                // The leader's work: planner and order cycles against the shared CA.
                let config = DriverConfig {
                    tick: Duration::from_secs(1),
                    apply_wait: Duration::from_secs(2),
                    write_deadline: Duration::from_secs(5),
                    seed: driver_seed,
                };
                let driver = NodeDriver::new(
                    raft.clone(),
                    state_machine.clone(),
                    Arc::new(SystemClock),
                    acme,
                    config,
                );
                tokio::spawn(driver.run());
                // Batched fsync: entries between syncs are what a crash takes away.
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(sync_every).await;
                        log.sync();
                    }
                });
                let listener = network::bind(addr)
                    .await
                    .expect("the host's RPC port is free");
                if let Err(error) = network::serve(listener, raft, state_machine).await {
                    eprintln!("n{id}: rpc server stopped: {error}");
                }
            }
        })
        .build();
    Host {
        id,
        addr,
        node,
        log,
        live,
        up: true,
        incarnation: 0,
        leader_crashes: 0,
    }
}

/// The admin client's address: a host of its own, as an operator's machine would be.
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 1);

/// Runs one simulated cluster for `options` (inside a madsim runtime seeded with the seed).
/// The workload and the checks run on a client host, so writes reach the cluster over the
/// simulated network like an operator's would.
pub async fn run(options: &SimOptions) -> Outcome {
    let handle = Handle::current();
    let client = handle
        .create_node()
        .name("client")
        .ip(IpAddr::V4(CLIENT_IP))
        .build();
    let options = options.clone();
    client
        .spawn(async move { run_on_client(&options).await })
        .await
        .expect("the client host does not crash")
}

async fn run_on_client(options: &SimOptions) -> Outcome {
    let handle = Handle::current();
    let started = tokio::time::Instant::now();
    let mut trace = String::new();
    note!(&mut trace, "{options}");
    let mut violations = Vec::new();
    let acme = Arc::new(ModelAcme::new(CERT_LIFETIME_MS));
    let mut hosts: Vec<Host> = (1..=options.voters + options.edges)
        .map(|id| start_host(&handle, id, options, &acme))
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;

    // Bootstrap: voters from host 1; edges join as learners through whoever leads.
    let voters: BTreeMap<NodeId, BasicNode> = hosts
        .iter()
        .take(options.voters as usize)
        .map(|h| {
            (
                h.id,
                BasicNode {
                    addr: h.addr.to_string(),
                },
            )
        })
        .collect();
    hosts[0]
        .raft()
        .expect("host 1 is up")
        .initialize(voters)
        .await
        .expect("initialize a fresh cluster");
    for host in hosts.iter().skip(options.voters as usize) {
        let node = BasicNode {
            addr: host.addr.to_string(),
        };
        let mut added = false;
        for _ in 0..100 {
            if let Some(leader) = leader(&hosts).await
                && leader
                    .add_learner(host.id, node.clone(), false)
                    .await
                    .is_ok()
            {
                added = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if !added {
            violations.push(format!("edge n{} could not join", host.id));
        }
    }

    let issuer = IssuerId::parse(ISSUER).expect("fixture issuer");
    // Setup: a policy for the simulated lifetimes, and the account.
    let policy = sim_policy();
    for op in [
        Op::SetPolicy { policy },
        Op::SetAccount {
            issuer: issuer.clone(),
            account: account(),
        },
    ] {
        let Some(raft) = hosts[0].raft() else { break };
        match network::write(
            &raft,
            Command {
                at: UnixMillis(0),
                op,
            },
            Duration::from_secs(30),
        )
        .await
        {
            Ok(written) if written.response.is_accepted() => {}
            other => violations.push(format!("setup write failed: {other:?}")),
        }
    }

    // Workload with faults interleaved, every choice drawn from the seed.
    let mut choices = Choices {
        seed: options.seed,
        counter: 0,
    };
    let mut faults: Vec<(u64, Fault)> = Vec::new();
    let span = options.writes;
    for _ in 0..options.crashes {
        let target = 1 + choices.below(options.voters + options.edges);
        let at = choices.below(span);
        let outage = 1 + choices.below(6);
        faults.push((at, Fault::Crash { target, outage }));
    }
    for _ in 0..options.clogs {
        let target = 1 + choices.below(options.voters + options.edges);
        let at = choices.below(span);
        let length = 1 + choices.below(6);
        faults.push((at, Fault::Clog { target, length }));
    }
    faults.sort();
    let mut pending_restore: Vec<(u64, Fault)> = Vec::new();
    let mut acknowledged: Vec<String> = Vec::new();
    let mut unknown = 0usize;
    let (mut entries_lost, mut entries_torn) = (0, 0);
    for step in 0..options.writes {
        for (_, fault) in pending_restore.iter().filter(|(at, _)| *at == step) {
            restore(&handle, &mut hosts, fault, &mut trace, started);
        }
        pending_restore.retain(|(at, _)| *at != step);
        let name = format!("w{step}.example.com");
        let op = Op::PutCert {
            spec: spec(&[name.as_str()]),
            seed: step,
        };
        let via = choices.below(hosts.len() as u64) as usize;
        let command = Command {
            at: SystemClock.now(),
            op,
        };
        let in_flight = match hosts[via].raft().filter(|_| hosts[via].up) {
            Some(raft) => Some(tokio::spawn(async move {
                network::write(&raft, command, Duration::from_secs(5))
                    .await
                    .map(|w| w.response)
            })),
            None => {
                note!(
                    &mut trace,
                    "{:>8} write {name} skipped: n{} down",
                    elapsed(started),
                    via + 1
                );
                None
            }
        };
        // Faults land while the write is in flight: between an append and its sync is where a
        // crash takes entries away (SIMULATION disk faults).
        tokio::time::sleep(Duration::from_millis(choices.below(4))).await;
        for (_, fault) in faults.iter().filter(|(at, _)| *at == step) {
            let (lost, torn) = inject(
                &handle,
                &mut hosts,
                fault,
                &mut choices,
                options,
                &mut trace,
                started,
            );
            entries_lost += lost;
            entries_torn += torn;
            pending_restore.push((step + fault.duration(), fault.clone()));
        }
        let Some(task) = in_flight else { continue };
        match task.await.expect("a write task does not panic") {
            Ok(Response::Accepted) => {
                acknowledged.push(name.clone());
                note!(
                    &mut trace,
                    "{:>8} write {name} via n{}: acknowledged",
                    elapsed(started),
                    via + 1
                );
            }
            Ok(Response::Rejected(rejection)) => {
                note!(
                    &mut trace,
                    "{:>8} write {name}: rejected {rejection}",
                    elapsed(started)
                );
            }
            Err(error) => {
                unknown += 1;
                note!(
                    &mut trace,
                    "{:>8} write {name}: unknown ({error})",
                    elapsed(started)
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(choices.below(50))).await;
    }

    // Liveness phase: every fault removed and every host up first (faults whose restore step
    // fell after the last write would otherwise outlast the workload: found by seed 258079485,
    // whose cluster spent the "healthy" hour without a majority), then healthy time in which
    // certificates renew several times (SIMULATION I6's liveness form: T_heal of health before
    // the check), then convergence within a bound.
    let net = NetSim::current();
    for (_, fault) in pending_restore.drain(..) {
        restore(&handle, &mut hosts, &fault, &mut trace, started);
    }
    for host in &hosts {
        net.unclog_node(host.node.id());
    }
    tokio::time::sleep(Duration::from_millis(IDLE_MS)).await;
    let converged = converge(&hosts).await;
    let leader_changes =
        leader_changes(&hosts) + hosts.iter().map(|h| h.leader_crashes).sum::<u64>();
    match converged {
        Err(why) => violations.push(format!("I4 convergence: {why}")),
        Ok(digest) => {
            note!(&mut trace, "converged: {}", hex(&digest));
        }
    }
    // I3: every acknowledged write is on every node.
    for host in &hosts {
        let Some(sm) = host.state_machine() else {
            continue;
        };
        for name in acknowledged.iter().filter(|n| *n != "account") {
            let id = CertId::parse(name).expect("generated names are valid");
            if !sm.read(|s| s.cert(&id).is_some()) {
                violations.push(format!(
                    "I3 durability: n{} lost acknowledged {name}",
                    host.id
                ));
            }
        }
    }
    // I6 (liveness form) and I1 on the leader's final state.
    let (cycles, orders) = check_orders(&hosts, &acme, leader_changes, &mut violations);
    note!(&mut trace, "cycles={cycles} orders={orders}");
    note!(
        &mut trace,
        "acknowledged={} unknown={unknown} lost={entries_lost} torn={entries_torn}",
        acknowledged.len()
    );
    for host in &hosts {
        if let Some(raft) = host.raft() {
            raft.shutdown().await.ok();
        }
    }
    Outcome {
        trace_digest: Sha256::digest(trace.as_bytes()).into(),
        trace,
        violations,
        cycles,
        orders,
        acknowledged: acknowledged.len(),
        unknown,
        leader_changes,
        entries_lost,
        entries_torn,
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    /// Kill a host, restart it `outage` workload steps later.
    Crash { target: u64, outage: u64 },
    /// Cut a host off the network for `length` steps.
    Clog { target: u64, length: u64 },
}

impl Fault {
    fn duration(&self) -> u64 {
        match self {
            Self::Crash { outage, .. } => *outage,
            Self::Clog { length, .. } => *length,
        }
    }
}

fn inject(
    handle: &Handle,
    hosts: &mut [Host],
    fault: &Fault,
    choices: &mut Choices,
    options: &SimOptions,
    trace: &mut String,
    started: tokio::time::Instant,
) -> (usize, usize) {
    match fault {
        Fault::Crash { target, .. } => {
            let host = &mut hosts[*target as usize - 1];
            if !host.up {
                return (0, 0);
            }
            // A leader's crash is a leadership change even when it comes back leading in the
            // same term (openraft resumes a committed self-vote), so I1 counts it.
            let was_leader = host.raft().is_some_and(|raft| {
                let metrics = raft.metrics().borrow().clone();
                metrics.current_leader == Some(metrics.id)
            });
            if was_leader {
                host.leader_crashes += 1;
            }
            handle.kill(host.node.id());
            *host.live() = None;
            let torn_keep = choices.below(options.torn_keep_max as u64 + 1) as usize;
            let report = host.log.crash(torn_keep);
            host.up = false;
            note!(
                trace,
                "{:>8} crash n{} (lost {}, torn {})",
                elapsed(started),
                host.id,
                report.lost,
                report.kept
            );
            (report.lost, report.kept)
        }
        Fault::Clog { target, .. } => {
            NetSim::current().clog_node(hosts[*target as usize - 1].node.id());
            note!(trace, "{:>8} clog n{target}", elapsed(started));
            (0, 0)
        }
    }
}

fn restore(
    handle: &Handle,
    hosts: &mut [Host],
    fault: &Fault,
    trace: &mut String,
    started: tokio::time::Instant,
) {
    match fault {
        Fault::Crash { target, .. } => {
            let host = &mut hosts[*target as usize - 1];
            if host.up {
                return;
            }
            handle.restart(host.node.id());
            host.up = true;
            host.incarnation += 1;
            note!(trace, "{:>8} restart n{}", elapsed(started), host.id);
        }
        Fault::Clog { target, .. } => {
            NetSim::current().unclog_node(hosts[*target as usize - 1].node.id());
            note!(trace, "{:>8} unclog n{target}", elapsed(started));
        }
    }
}

/// The Raft handle of the node that currently leads, if one is known and up.
async fn leader(hosts: &[Host]) -> Option<Raft<TypeConfig>> {
    for host in hosts.iter().filter(|h| h.up) {
        let Some(raft) = host.raft() else { continue };
        let leader = raft.metrics().borrow().current_leader;
        if let Some(id) = leader {
            return hosts
                .iter()
                .find(|h| h.id == id && h.up)
                .and_then(Host::raft);
        }
    }
    None
}

/// Waits until every host applied the same index and holds the same state digest.
async fn converge(hosts: &[Host]) -> Result<[u8; 32], String> {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(CONVERGE_MS_MAX);
    // Give restarted hosts a moment to come up before reading them.
    tokio::time::sleep(Duration::from_millis(100)).await;
    loop {
        let mut seen = Vec::new();
        for host in hosts {
            let (Some(raft), Some(sm)) = (host.raft(), host.state_machine()) else {
                seen.push(None);
                continue;
            };
            let metrics = raft.metrics().borrow().clone();
            let applied = metrics.last_applied.map_or(0, |id| id.index);
            seen.push(Some((
                metrics.last_log_index.unwrap_or(0),
                applied,
                sm.read(|s| s.digest()),
            )));
        }
        let all_up = seen.iter().all(Option::is_some);
        let values: Vec<(u64, u64, [u8; 32])> = seen.into_iter().flatten().collect();
        let top = values.iter().map(|v| v.0).max().unwrap_or(0);
        if all_up
            && top > 0
            && values
                .iter()
                .all(|v| v.0 == top && v.1 == top && v.2 == values[0].2)
        {
            return Ok(values[0].2);
        }
        if tokio::time::Instant::now() >= deadline {
            let summary: Vec<String> = values
                .iter()
                .map(|(log, applied, d)| {
                    format!("log {log} applied {applied} digest {}", &hex(d)[..8])
                })
                .collect();
            return Err(format!(
                "not converged after {CONVERGE_MS_MAX} ms: {}",
                summary.join("; ")
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn leader_changes(hosts: &[Host]) -> u64 {
    hosts
        .iter()
        .filter_map(Host::raft)
        .map(|raft| raft.metrics().borrow().current_term)
        .max()
        .unwrap_or(0)
        .saturating_sub(1)
}

fn elapsed(started: tokio::time::Instant) -> u128 {
    started.elapsed().as_millis()
}

/// Lower-case hex.
#[must_use]
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The lifecycle policy for 20-minute certificates: Let's Encrypt's budgets (300 orders per 3 h,
/// 5 duplicates a week) would rightly stop renewals every 10 minutes of up to 80 certificates,
/// so the simulation scales the budgets with the lifetimes.
fn sim_policy() -> certfleet_core::Policy {
    use certfleet_core::budget::Rate;
    certfleet_core::Policy {
        new_orders: Rate {
            count: 10_000,
            period_ms: 3 * 3_600_000,
        },
        certs_per_set: Rate {
            count: 1_000,
            period_ms: 7 * 24 * 3_600_000,
        },
        certs_per_domain: Rate {
            count: 10_000,
            period_ms: 7 * 24 * 3_600_000,
        },
        ari_poll_interval_ms: 12 * 3_600_000,
        ..certfleet_core::Policy::default()
    }
}

/// Every certificate is issued and unexpired at the end (I6, liveness form), and no identifier
/// set saw more orders than its cycles plus the cluster's leadership changes (I1). Returns the
/// cycles begun and the orders the CA received.
fn check_orders(
    hosts: &[Host],
    acme: &ModelAcme,
    leader_changes: u64,
    violations: &mut Vec<String>,
) -> (u64, u64) {
    let Some(sm) = hosts.iter().find_map(Host::state_machine) else {
        return (0, 0);
    };
    let now = SystemClock.now();
    let (orders_per_set, orders) = acme.with(|ca| (ca.orders_per_set.clone(), ca.new_orders));
    let mut cycles = 0;
    sm.read(|state| {
        for (id, record) in state.certs() {
            cycles += record.cycle.0;
            match &record.current {
                Some(current) if current.not_after > now => {}
                Some(current) => {
                    let sched = certfleet_core::plan::schedule(id, record, state.policy());
                    violations.push(format!(
                        "I6 validity: {id} is expired after healing (now {now}, not_after {}, cycle {}, open {:?}, failures {}, retry_at {:?}, deferred {:?}, schedule {sched:?}, new_orders budget {:?}, policy new_orders {:?})",
                        current.not_after,
                        record.cycle,
                        record.open.as_ref().map(|o| o.step.name()),
                        record.failures,
                        record.retry_at,
                        record.deferred_until,
                        state.budgets().arrival(&certfleet_core::budget::BudgetKey::NewOrders { issuer: record.spec.issuer.clone() }),
                        state.policy().new_orders,
                    ))
                }
                None => violations.push(format!("I6 validity: {id} was never issued")),
            }
            let set = record.spec.identifier_set();
            let ordered = orders_per_set.get(&set).copied().unwrap_or(0);
            if ordered > record.cycle.0 + leader_changes {
                violations.push(format!(
                    "I1 duplicate orders: {id} has {ordered} orders for {} cycles with {leader_changes} leadership changes",
                    record.cycle.0
                ));
            }
        }
    });
    (cycles, orders)
}
