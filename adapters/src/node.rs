//! The node driver (DESIGN §5, §7): what the leader does with the replicated state.
//!
//! Every node runs [`NodeDriver::run`]. While a node leads, it ticks the core's planner and
//! turns intents into commits, and runs one task per open cycle that drives the core's
//! `OrderDriver`: each step is committed through Raft before the next call to the CA, and
//! before challenges are declared ready every member acknowledges it applied them
//! (`WaitApplied`), with a timeout whose firings are counted. A node that stops leading drops
//! its cycle tasks; the next leader resumes the cycles from their committed steps.
//!
//! Time comes from a [`Clock`] (skewed per node in the simulation) and the CA from an
//! [`Acme`] implementation (instant-acme in production; a model CA in tests).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use certfleet_core::command::{AriWindow, Failure, Op};
use certfleet_core::model::{IssuerId, SealedBlob};
use certfleet_core::order::{Action, CaError, OrderDriver, OrderStatus, Outcome, growing_delay_ms};
use certfleet_core::time::mix;
use certfleet_core::{CertId, Command, Intent, Response, Term, UnixMillis, plan};
use openraft::Raft;
use tokio::task::JoinHandle;

use crate::buggify;
use crate::mutation::{self, Mutation};
use crate::raft::StateMachineStore;
use crate::raft::network::{self, Peer};
use crate::raft::types::TypeConfig;

/// Where a node reads the time. Decisions use the leader's clock, committed in commands.
pub trait Clock: Send + Sync + 'static {
    /// Now, in milliseconds since the epoch.
    fn now(&self) -> UnixMillis;
}

/// The operating system's clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> UnixMillis {
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        UnixMillis(u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX))
    }
}

/// The CA (and key material) as the order driver sees it.
pub trait Acme: Send + Sync + 'static {
    /// Performs a CA action (or `PrepareKey`) and reports its outcome.
    fn perform(&self, action: Action, now: UnixMillis) -> impl Future<Output = Outcome> + Send;
    /// Fetches the ARI renewal window of a certificate (`None` when the poll failed).
    fn renewal_info(
        &self,
        ari_id: &str,
        now: UnixMillis,
    ) -> impl Future<Output = Option<AriWindow>> + Send;
    /// Makes sure the CA binds the account to the key of `new` (RFC 8555 §7.3.5), the account
    /// signing with `old` until then. Called again after any failure or crash, so it must
    /// find out first whether the CA already did.
    fn roll_account_key(
        &self,
        old: SealedBlob,
        new: SealedBlob,
        now: UnixMillis,
    ) -> impl Future<Output = RolloverOutcome> + Send;
}

/// What became of an account key rollover at the CA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RolloverOutcome {
    /// The CA binds the account to the new key.
    Rolled,
    /// The CA refused for good; the account keeps its key.
    Refused(String),
    /// Not known to have happened (transport, 5xx, 429): try again later.
    Failed(CaError),
}

/// How long a key rollover waits, per planner tick, for the cycle tasks to stop.
const ROLLOVER_DRAIN: Duration = Duration::from_secs(30);

/// Failed key rollover attempts in a row under this leadership, and when to try again.
#[derive(Debug, Default)]
struct RolloverPacing {
    failures: u32,
    next_at: UnixMillis,
}

/// Knobs of the driver.
#[derive(Clone, Debug)]
pub struct DriverConfig {
    /// Longest sleep between planner ticks.
    pub tick: Duration,
    /// How long the leader waits for every member to apply published challenges.
    pub apply_wait: Duration,
    /// Deadline of each commit.
    pub write_deadline: Duration,
    /// Seed of this node's choices (jitter and backoff seeds in commands).
    pub seed: u64,
}

impl Default for DriverConfig {
    fn default() -> Self {
        Self {
            tick: Duration::from_secs(1),
            apply_wait: Duration::from_secs(5),
            write_deadline: Duration::from_secs(10),
            seed: 0,
        }
    }
}

/// Counters a node exposes (metrics, simulation checks).
#[derive(Debug, Default)]
pub struct DriverStats {
    /// Cycles this node began or resumed as leader.
    pub cycles_driven: AtomicU64,
    /// Times the leader declared challenges ready with members still behind.
    pub apply_wait_timeouts: AtomicU64,
    /// Members that were behind at those times, in total.
    pub lagging_members: AtomicU64,
    /// Planner ticks run.
    pub planner_ticks: AtomicU64,
    /// Most due-index entries one tick examined (bounded by the policy's `scan_per_tick_max`).
    pub planner_scanned_max: AtomicU64,
    /// Most entries a tick examined that produced no intent: idle certificates cost nothing
    /// (SIMULATION I13), so this stays 0.
    pub planner_idle_scanned_max: AtomicU64,
    /// Most intents one tick emitted (bounded by the policy's `intents_per_tick_max`).
    pub planner_intents_max: AtomicU64,
}

/// One node's driver.
pub struct NodeDriver<C: Clock, A: Acme> {
    node: Shared<C, A>,
    draws: Arc<AtomicU64>,
}

/// What the driver and each of its cycle tasks share.
struct Shared<C: Clock, A: Acme> {
    raft: Raft<TypeConfig>,
    state_machine: StateMachineStore,
    clock: Arc<C>,
    acme: Arc<A>,
    config: DriverConfig,
    stats: Arc<DriverStats>,
}

impl<C: Clock, A: Acme> Clone for Shared<C, A> {
    fn clone(&self) -> Self {
        Self {
            raft: self.raft.clone(),
            state_machine: self.state_machine.clone(),
            clock: self.clock.clone(),
            acme: self.acme.clone(),
            config: self.config.clone(),
            stats: self.stats.clone(),
        }
    }
}

impl<C: Clock, A: Acme> Shared<C, A> {
    /// A quorum confirms this node leads, and the state is applied up to the read index.
    async fn confirm_leadership(&self) -> bool {
        let confirmed =
            tokio::time::timeout(self.config.write_deadline, self.raft.ensure_linearizable()).await;
        matches!(confirmed, Ok(Ok(_)))
    }

    /// The pause before trying again after a failed confirmation.
    async fn retry_pause(&self) {
        tokio::time::sleep(self.config.tick.min(Duration::from_millis(200))).await;
    }
}

impl<C: Clock, A: Acme> NodeDriver<C, A> {
    /// A driver for the node behind `raft`.
    pub fn new(
        raft: Raft<TypeConfig>,
        state_machine: StateMachineStore,
        clock: Arc<C>,
        acme: Arc<A>,
        config: DriverConfig,
    ) -> Self {
        let node = Shared {
            raft,
            state_machine,
            clock,
            acme,
            config,
            stats: Arc::default(),
        };
        Self {
            node,
            draws: Arc::default(),
        }
    }

    /// The driver's counters.
    #[must_use]
    pub fn stats(&self) -> Arc<DriverStats> {
        self.node.stats.clone()
    }

    /// Runs forever: leads while this node is the leader, waits otherwise.
    pub async fn run(self) {
        let id = self.node.raft.metrics().borrow().id;
        loop {
            let (leader, term) = {
                let metrics = self.node.raft.metrics().borrow().clone();
                (metrics.current_leader == Some(id), metrics.current_term)
            };
            if leader {
                self.lead(id, term).await;
            } else {
                self.node.retry_pause().await;
            }
        }
    }

    /// One leadership: plan and drive until this node no longer leads in `term`.
    async fn lead(&self, id: u64, term: u64) {
        // Confirm the leadership with a quorum and apply everything committed before this term
        // (a read index) before acting on the state: a node restarted with a vote of its own
        // believes it leads until it hears otherwise, and would drive cycles from a replay that
        // is behind the cluster. Found by the simulator (seed 1: a restarted node told the CA
        // a challenge was ready that the cluster had already withdrawn).
        if !self.node.confirm_leadership().await {
            self.node.retry_pause().await;
            return;
        }
        // Then apply this leader's whole log. A node restarted with a committed vote of its own
        // leads again in the same term without a new blank entry, so the read index can stop
        // short of what its earlier process proposed; its cycles would start from a state
        // that lacks them. Found by the simulator (seed 148666256: a leader proposed a
        // `processing` order's 87 s Retry-After, was killed, led again after its restart and
        // polled the order at once; the deferral was applied a moment later).
        let last = self
            .node
            .raft
            .metrics()
            .borrow()
            .last_log_index
            .unwrap_or(0);
        let mut applied = self.node.state_machine.applied_index();
        let caught_up = tokio::time::timeout(self.node.config.write_deadline, async {
            // The guard `wait_for` returns is not `Send`: drop it inside.
            applied.wait_for(|i| *i >= last).await.is_ok()
        })
        .await;
        if caught_up != Ok(true) {
            self.node.retry_pause().await;
            return;
        }
        let mut cycles: BTreeMap<CertId, JoinHandle<()>> = BTreeMap::new();
        let mut rollover = RolloverPacing::default();
        // Set while an account key rollover waits for the cycle tasks to stop (see
        // `CycleTask::drive`): one driver serves one issuer, so it holds every task.
        let (hold, held) = tokio::sync::watch::channel(false);
        loop {
            let metrics = self.node.raft.metrics().borrow().clone();
            if metrics.current_leader != Some(id) || metrics.current_term != term {
                break;
            }
            cycles.retain(|_, task| !task.is_finished());
            let now = self.node.clock.now();
            let tick = self
                .node
                .state_machine
                .read(|state| plan(state, now, Term(term)));
            self.record_tick(&tick);
            if !tick
                .intents
                .iter()
                .any(|intent| matches!(intent, Intent::RollAccountKey { .. }))
            {
                // No rollover in progress (any more): tasks started from now on run freely.
                hold.send_if_modified(|held| std::mem::replace(held, false));
            }
            let mut deferred = Vec::new();
            let mut committed = false;
            for intent in tick.intents {
                match intent {
                    Intent::NewOrder { ref cert, .. } | Intent::Resume { ref cert, .. } => {
                        let op = intent
                            .cycle_command(Term(term))
                            .expect("new orders and resumes are cycle commands");
                        // Only an applied command changes the plan; replanning after a rejection would loop.
                        committed |= self.commit(op).await.is_some_and(|r| r.is_accepted());
                        self.start_cycle(&mut cycles, cert.clone(), term, &held);
                    }
                    Intent::Drive { cert, .. } => self.start_cycle(&mut cycles, cert, term, &held),
                    Intent::Defer { cert, until } => deferred.push((cert, until)),
                    Intent::PollRenewalInfo {
                        cert,
                        cycle,
                        ari_id,
                    } => {
                        let window = self
                            .node
                            .acme
                            .renewal_info(&ari_id, self.node.clock.now())
                            .await;
                        let seed = self.draw();
                        let op = Op::RenewalInfoPolled {
                            cert,
                            cycle,
                            window,
                            retry_at: None,
                            seed,
                        };
                        committed |= self.commit(op).await.is_some();
                    }
                    Intent::RollAccountKey { issuer, old, new } => {
                        // The CA may hold either key until this is done: a cycle's call signed
                        // with the other one would fail. The cycle tasks stop at their next
                        // safe point (never between a CA call and the commit of its result:
                        // an aborted task could lose a created order's URL) and go on from
                        // their committed steps afterwards.
                        hold.send_replace(true);
                        if mutation::active(Mutation::AbortCyclesForRollover) {
                            for (_, task) in std::mem::take(&mut cycles) {
                                task.abort();
                            }
                        }
                        if !Self::drain(&mut cycles).await {
                            continue; // still stopping: try at the next tick
                        }
                        if self.roll_account_key(issuer, old, new, &mut rollover).await {
                            committed = true;
                            hold.send_replace(false);
                        }
                    }
                }
            }
            if !deferred.is_empty() {
                committed |= self
                    .commit(Op::CertsDeferred { items: deferred })
                    .await
                    .is_some();
            }
            if committed {
                continue; // the plan is valid until the next commit: plan again at once
            }
            let until_wake = tick.wake_at.map_or(self.node.config.tick, |at| {
                Duration::from_millis(at.ms_since(self.node.clock.now()))
            });
            let mut applied = self.node.state_machine.applied_index();
            // Wake on the planner's deadline, or as soon as anything is applied (a cycle
            // closed, a certificate was added).
            let _ = tokio::time::timeout(until_wake.min(self.node.config.tick), applied.changed())
                .await;
        }
        for (_, task) in cycles {
            task.abort();
        }
    }

    /// Waits for every cycle task to stop, for at most [`ROLLOVER_DRAIN`]; whether they all did.
    async fn drain(cycles: &mut BTreeMap<CertId, JoinHandle<()>>) -> bool {
        let _ = tokio::time::timeout(ROLLOVER_DRAIN, async {
            for task in cycles.values_mut() {
                let _ = task.await;
            }
        })
        .await;
        cycles.retain(|_, task| !task.is_finished());
        cycles.is_empty()
    }

    /// One attempt at an account key rollover, unless the last failure asked for a pause;
    /// whether its outcome was committed.
    async fn roll_account_key(
        &self,
        issuer: IssuerId,
        old: SealedBlob,
        new: SealedBlob,
        pacing: &mut RolloverPacing,
    ) -> bool {
        let now = self.node.clock.now();
        if now < pacing.next_at {
            return false;
        }
        let op = match self.node.acme.roll_account_key(old, new.clone(), now).await {
            RolloverOutcome::Rolled => Op::AccountKeyRolled {
                issuer,
                credentials: new,
            },
            RolloverOutcome::Refused(detail) => {
                tracing::error!(%issuer, %detail, "the CA refused the account key rollover");
                Op::AccountKeyRolloverRefused {
                    issuer,
                    credentials: new,
                    detail: Failure::clip_detail(&detail),
                }
            }
            RolloverOutcome::Failed(error) => {
                // Paced as the core paces retries inside an order (a second, doubling, to a
                // minute), or the CA's Retry-After if later.
                pacing.failures = pacing.failures.saturating_add(1);
                let after = now.plus_ms(growing_delay_ms(pacing.failures));
                pacing.next_at = error.retry_at.map_or(after, |at| at.max(after));
                tracing::warn!(%issuer, detail = %error.detail, failures = pacing.failures, "account key rollover failed; will retry");
                return false;
            }
        };
        *pacing = RolloverPacing::default();
        self.commit(op).await.is_some_and(|r| r.is_accepted())
    }

    fn record_tick(&self, tick: &certfleet_core::Plan) {
        let stats = &self.node.stats;
        stats.planner_ticks.fetch_add(1, Ordering::Relaxed);
        let scanned = u64::from(tick.scanned);
        stats
            .planner_scanned_max
            .fetch_max(scanned, Ordering::Relaxed);
        stats
            .planner_intents_max
            .fetch_max(tick.intents.len() as u64, Ordering::Relaxed);
        if tick.intents.is_empty() {
            stats
                .planner_idle_scanned_max
                .fetch_max(scanned, Ordering::Relaxed);
        }
    }

    fn start_cycle(
        &self,
        cycles: &mut BTreeMap<CertId, JoinHandle<()>>,
        cert: CertId,
        term: u64,
        held: &tokio::sync::watch::Receiver<bool>,
    ) {
        if cycles.get(&cert).is_some_and(|task| !task.is_finished()) {
            return;
        }
        let task = CycleTask {
            node: self.node.clone(),
            seed: self.draw(),
            term,
            held: held.clone(),
        };
        self.node
            .stats
            .cycles_driven
            .fetch_add(1, Ordering::Relaxed);
        cycles.insert(
            cert.clone(),
            tokio::spawn(async move { task.drive(cert).await }),
        );
    }

    async fn commit(&self, op: Op) -> Option<Response> {
        let command = Command {
            at: self.node.clock.now(),
            op,
        };
        network::write(&self.node.raft, command, self.node.config.write_deadline)
            .await
            .ok()
            .map(|w| w.response)
    }

    fn draw(&self) -> u64 {
        mix(
            self.node.config.seed,
            b"node-driver",
            self.draws.fetch_add(1, Ordering::Relaxed),
        )
    }
}

/// What one cycle's task needs.
struct CycleTask<C: Clock, A: Acme> {
    node: Shared<C, A>,
    seed: u64,
    term: u64,
    /// True while an account key rollover waits for this task to stop.
    held: tokio::sync::watch::Receiver<bool>,
}

impl<C: Clock, A: Acme> CycleTask<C, A> {
    async fn drive(self, cert: CertId) {
        let applied = *self.node.state_machine.applied_index().borrow();
        let made = self.node.state_machine.read(|state| {
            let open = state.cert(&cert)?.open.as_deref()?;
            // Only a cycle this term owns: if our ResumeOrder has not been applied (its commit
            // timed out), a driver for the old term would call the CA and then be fenced off,
            // again at every tick. Found by the simulator (seeds 25, 44, 92).
            (open.term == Term(self.term))
                .then(|| OrderDriver::new(cert.clone(), open, applied, self.seed))
        });
        let Some(mut driver) = made else { return };
        if mutation::active(Mutation::NewOrderWhileOpen) {
            self.mutant_new_order(&cert).await;
        }
        let mut held = self.held.clone();
        // From `MarkReady` until the order leaves `pending`, the CA is validating: a key
        // rollover now would change the key authorization it expects (RFC 8555 §8.1), and
        // fail the order. Such a task finishes its validation before it stops for one.
        let mut validating = false;
        loop {
            let now = self.node.clock.now();
            let action = self
                .node
                .state_machine
                .read(|state| driver.poll_action(state, now));
            let outcome = match action {
                Action::Done => return,
                Action::Wait => unreachable!("each action is performed before the next poll"),
                Action::Sleep { until } => {
                    // A sleeping task has nothing uncommitted: it may stop here.
                    if *held.borrow() && !validating {
                        return;
                    }
                    let sleep =
                        tokio::time::sleep(Duration::from_millis(until.ms_since(now).max(1)));
                    if validating {
                        sleep.await;
                    } else {
                        tokio::select! {
                            () = sleep => {}
                            _ = held.wait_for(|held| *held) => return,
                        }
                    }
                    continue;
                }
                Action::Commit(command) => match self.commit_until_known(command).await {
                    Some(outcome) => outcome,
                    None => return, // deposed: whoever leads resumes from what was committed
                },
                Action::WaitApplied { .. } if mutation::active(Mutation::ServeBeforeApplied) => {
                    Outcome::Applied { lagging: 0 }
                }
                Action::WaitApplied { index } => {
                    let lagging = self.wait_applied_everywhere(index).await;
                    if lagging > 0 {
                        self.node
                            .stats
                            .apply_wait_timeouts
                            .fetch_add(1, Ordering::Relaxed);
                        self.node
                            .stats
                            .lagging_members
                            .fetch_add(u64::from(lagging), Ordering::Relaxed);
                    }
                    Outcome::Applied { lagging }
                }
                ca_action => {
                    if !mutation::active(Mutation::SkipLeadershipCheck)
                        && !self.still_owns(&cert, validating).await
                    {
                        // Deposed, or held for a key rollover: whoever leads resumes from
                        // what was committed.
                        return;
                    }
                    let marks_ready = matches!(ca_action, Action::MarkReady { .. });
                    // The time of the call, not of the poll: the leadership check took a
                    // round trip, and a Retry-After is relative to the call.
                    let now = self.node.clock.now();
                    let mut outcome = self.node.acme.perform(ca_action, now).await;
                    buggify::delay(buggify::Point::AfterCaCall).await;
                    if let Outcome::Failed(error) = &mut outcome
                        && mutation::active(Mutation::IgnoreRetryAfter)
                    {
                        error.retry_at = None;
                    }
                    match &outcome {
                        Outcome::ChallengesReady if marks_ready => validating = true,
                        Outcome::Order(view) if view.status != OrderStatus::Pending => {
                            validating = false;
                        }
                        _ => {}
                    }
                    outcome
                }
            };
            driver.handle_outcome(self.node.clock.now(), outcome);
        }
    }

    /// Before each call to the CA: a quorum confirms this node still leads (a read index), and
    /// the state, applied up to it, still gives the cycle to this term and holds no key
    /// rollover of its issuer (unless the CA is `validating` the cycle's challenges, which
    /// finishes first).
    ///
    /// A deposed leader learns of it only when it next hears from the others; until then its
    /// applied state says it owns the cycle, and it would call the CA with what it remembers.
    /// Found by the simulator (seed 34 of the processing-order knob): a leader paused for 9 s
    /// woke up and polled an order 90 s before the Retry-After its successor had received.
    /// One heartbeat round per CA call costs far less than the call.
    async fn still_owns(&self, cert: &CertId, validating: bool) -> bool {
        loop {
            if self.node.confirm_leadership().await {
                // Confirmed leadership, but perhaps a newer one of this same node: a task of
                // an earlier term must stop, or it would call with what only it remembers
                // (seed 60: a node re-elected after a partition kept driving a cycle of its
                // old term and lost the Retry-After it got).
                if self.node.raft.metrics().borrow().current_term != self.term {
                    return false;
                }
                return self.node.state_machine.read(|state| {
                    let Some(record) = state.cert(cert) else {
                        return false;
                    };
                    let rolling = state
                        .account(&record.spec.issuer)
                        .is_some_and(|account| account.rollover.is_some());
                    record
                        .open
                        .as_deref()
                        .is_some_and(|open| open.term == Term(self.term))
                        && (validating || !rolling)
                });
            }
            let metrics = self.node.raft.metrics().borrow().clone();
            if metrics.current_term != self.term || metrics.current_leader != Some(metrics.id) {
                return false;
            }
            self.node.retry_pause().await;
        }
    }

    /// The `NewOrderWhileOpen` bug: a resumed cycle past `Begun` gets a fresh order anyway.
    async fn mutant_new_order(&self, cert: &CertId) {
        let order = self.node.state_machine.read(|state| {
            let record = state.cert(cert)?;
            let open = record.open.as_deref()?;
            (open.step.name() != certfleet_core::order::StepName::Begun).then(|| {
                Action::CreateOrder {
                    cert: cert.clone(),
                    cycle: open.cycle,
                    identifiers: record.spec.identifiers.clone(),
                    profile: None,
                    replaces: None,
                }
            })
        });
        if let Some(action) = order {
            let _ = self.node.acme.perform(action, self.node.clock.now()).await;
        }
    }

    /// Commits `command`, retrying the same command while its outcome is unknown and this node
    /// still leads in the cycle's term; `None` once deposed.
    ///
    /// Never give up and re-derive the step instead: the driver's next move after an unknown
    /// commit would repeat the CA call the command records (a second `newOrder` for one cycle).
    /// Found by the simulator: a leader cut off from its majority, still believing it led,
    /// placed 128 orders for one certificate, one per planner tick. A retried command that
    /// did commit the first time is rejected as out of order, which ends the driver cleanly.
    async fn commit_until_known(&self, command: Command) -> Option<Outcome> {
        let mut pause = Duration::from_millis(100);
        loop {
            match network::write(
                &self.node.raft,
                command.clone(),
                self.node.config.write_deadline,
            )
            .await
            {
                Ok(written) => {
                    return Some(match written.response {
                        Response::Accepted => Outcome::Committed {
                            index: written.index,
                        },
                        Response::Rejected(rejection) => Outcome::Rejected(rejection),
                    });
                }
                Err(_) if self.leads() => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(self.node.config.tick.max(Duration::from_secs(1)));
                }
                Err(_) => return None,
            }
        }
    }

    /// Whether this node still leads in the term it drives the cycle for.
    fn leads(&self) -> bool {
        let metrics = self.node.raft.metrics().borrow().clone();
        metrics.current_leader == Some(metrics.id) && metrics.current_term == self.term
    }

    /// Asks every member (voters and learners) to acknowledge it applied `index`; returns how
    /// many had not when the wait ended (DESIGN §5 step 3).
    async fn wait_applied_everywhere(&self, index: u64) -> u32 {
        let metrics = self.node.raft.metrics().borrow().clone();
        let me = metrics.id;
        let members: Vec<(u64, String)> = metrics
            .membership_config
            .nodes()
            .filter(|(id, _)| **id != me)
            .map(|(id, node)| (*id, node.addr.clone()))
            .collect();
        let wait = self.node.config.apply_wait;
        let mut asks = Vec::new();
        for (id, addr) in members {
            asks.push(tokio::spawn(async move {
                let mut peer = Peer::new(id, addr, wait);
                peer.wait_applied(index, wait)
                    .await
                    .is_ok_and(|applied| applied >= index)
            }));
        }
        let mut lagging =
            u32::from(network::wait_applied(&self.node.state_machine, index, wait).await < index);
        for ask in asks {
            if !ask.await.unwrap_or(false) {
                lagging += 1;
            }
        }
        lagging
    }
}

/// The core's model CA behind the [`Acme`] trait, for tests and the simulation: one shared
/// CA for the whole cluster.
#[derive(Debug)]
pub struct ModelAcme(pub std::sync::Mutex<certfleet_core::testing::ModelCa>);

impl ModelAcme {
    /// A model CA issuing certificates of `lifetime_ms`.
    #[must_use]
    pub fn new(lifetime_ms: u64) -> Self {
        Self(std::sync::Mutex::new(
            certfleet_core::testing::ModelCa::new(lifetime_ms),
        ))
    }

    /// Reads the CA's books.
    pub fn with<T>(&self, f: impl FnOnce(&certfleet_core::testing::ModelCa) -> T) -> T {
        f(&self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner))
    }
}

impl Acme for ModelAcme {
    async fn perform(&self, action: Action, now: UnixMillis) -> Outcome {
        let mut ca = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        ca.perform(&action, now)
            .unwrap_or_else(|| unreachable!("the driver sends the CA only CA actions"))
    }

    async fn renewal_info(&self, ari_id: &str, now: UnixMillis) -> Option<AriWindow> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .renewal_info(ari_id, now)
    }

    async fn roll_account_key(
        &self,
        old: SealedBlob,
        new: SealedBlob,
        _now: UnixMillis,
    ) -> RolloverOutcome {
        let mut ca = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // A model CA nobody bound a key to takes the first one it sees as the account's.
        if ca.account_key().is_none() {
            ca.bind_account_key(&old);
        }
        match ca.roll_account_key(&old, &new) {
            Ok(()) => RolloverOutcome::Rolled,
            Err(detail) => RolloverOutcome::Refused(detail),
        }
    }
}
