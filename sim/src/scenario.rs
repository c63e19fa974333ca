//! Named scenarios (SIMULATION "Process": targeted kills of the leader inside each protocol
//! window): the options that set one up, and the facts a test checks afterwards.

use std::fmt;

use certfleet_core::command::Op;
use certfleet_core::{CertId, Cycle, Term};

use crate::SimOptions;
use crate::ca::Window;
use crate::journal::Journal;

/// The options of `seed` with no fault drawn, for scenarios that inject exactly one.
#[must_use]
pub fn quiet(seed: u64) -> SimOptions {
    SimOptions {
        crashes: 0,
        clogs: 0,
        partitions: 0,
        pauses: 0,
        churns: 0,
        skew_ms_max: 0,
        clock_jumps: 0,
        ca_down: 0,
        ca_rate_limited: 0,
        ca_invalid_authz: 0,
        ca_lost_finalize: 0,
        lossy: 0,
        flaps: 0,
        disk_errors: 0,
        buggify: false,
        ca_down_long: false,
        replacements: 0,
        kill_windows: Vec::new(),
        key_rollovers: 0,
        writes: 20,
        ..SimOptions::from_seed(seed)
    }
}

/// The scenarios [`named`] knows.
pub const NAMES: [&str; 5] = [
    "kill-after-new-order",
    "kill-after-challenges-ready",
    "kill-after-finalize",
    "kill-after-key-change",
    "clog-leader",
];

/// The scenario called `name` (one of [`NAMES`]) on `seed`.
///
/// `clog-leader`: the CA goes down for four minutes as the bulk import's cycles start, and
/// answers each call with a 503 and a `Retry-After` (at most a minute) that the leader commits
/// as a wait; then the leader is cut off from its peers (not from the CA) for 60–90 s. A
/// successor takes the cycles over, calls when the waits end, and is told to wait again. The
/// old leader, waking from the same waits and still believing it leads, must not call the CA
/// for them: it confirms its leadership with a quorum before every call (DESIGN §5), which it
/// cannot get. Without that check it calls before the successor's `Retry-After` (I9).
#[must_use]
pub fn named(name: &str, seed: u64) -> Option<SimOptions> {
    if name == "clog-leader" {
        let mut options = quiet(seed);
        options.clogs = 1;
        options.clog_leader = true;
        return Some(options);
    }
    if name == "kill-after-key-change" {
        // One account key rollover, and the leader killed as soon as the CA bound the new key.
        let mut options = quiet(seed);
        options.key_rollovers = 1;
        options.kill_windows = vec![Window::AfterKeyChange];
        return Some(options);
    }
    let window = Window::ALL
        .into_iter()
        .find(|w| name.strip_prefix("kill-") == Some(w.name()))?;
    let mut options = quiet(seed);
    options.kill_windows = vec![window];
    Some(options)
}

/// The report of the kill scenario `name` (a `kill-…` of [`NAMES`]) after its run; `None` if
/// its kill did not fire.
#[must_use]
pub fn kill_report(name: &str, journal: &Journal, books: &crate::ca::CaBooks) -> Option<String> {
    if name == "kill-after-key-change" {
        KeyChangeReport::of(journal, books).map(|report| report.to_string())
    } else {
        KillReport::of(journal, books).map(|report| report.to_string())
    }
}

/// What happened to an account key rollover whose leader was killed right after the CA bound
/// the new key ([`Window::AfterKeyChange`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyChangeReport {
    /// The callers' terms of every key change the CA made or confirmed, in order.
    pub key_changes: Vec<u64>,
    /// Keys the account has had at the CA (the registered one included).
    pub account_keys: u64,
    /// The term of the `AccountKeyRolled` entry, if one was committed.
    pub rolled_in: Option<u64>,
}

impl KeyChangeReport {
    /// Reads it from a run's journal and the CA's books; `None` if the kill did not fire.
    #[must_use]
    pub fn of(journal: &Journal, books: &crate::ca::CaBooks) -> Option<Self> {
        books
            .kills
            .iter()
            .find(|kill| kill.window == Window::AfterKeyChange)?;
        let rolled_in = journal.accepted().find_map(|(_, r)| match &r.command.op {
            Op::AccountKeyRolled { .. } => Some(r.entry_term),
            _ => None,
        });
        Some(Self {
            key_changes: books.key_changes.clone(),
            account_keys: books.account_keys,
            rolled_in,
        })
    }

    /// Whether a later leader found the key already bound and committed it: the killed
    /// leader's change, then the next leader's confirmation, which committed the outcome, and
    /// no key besides the registered one and the new one.
    #[must_use]
    pub fn finished_by_next_leader(&self) -> bool {
        let (Some(first), Some(last)) = (self.key_changes.first(), self.key_changes.last()) else {
            return false;
        };
        self.key_changes.len() >= 2
            && last > first
            && self.rolled_in == Some(*last)
            && self.account_keys == 2
    }
}

impl fmt::Display for KeyChangeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let terms: Vec<String> = self.key_changes.iter().map(u64::to_string).collect();
        write!(
            f,
            "window={} key_changes={} account_keys={} rolled_in={} finished_by_next_leader={}",
            Window::AfterKeyChange.name(),
            terms.join(","),
            self.account_keys,
            self.rolled_in
                .map_or_else(|| "none".into(), |t| t.to_string()),
            self.finished_by_next_leader()
        )
    }
}

/// What happened to the cycle a leader kill hit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KillReport {
    /// The window.
    pub window: Window,
    /// The certificate.
    pub cert: CertId,
    /// The cycle.
    pub cycle: Cycle,
    /// The order the killed leader was working on.
    pub order_url: String,
    /// Whether that order's URL was committed (`OrderCreated`).
    pub order_committed: bool,
    /// Orders the CA created for the cycle.
    pub orders: u64,
    /// The terms that owned the cycle, in log order (`BeginOrder`, then each `ResumeOrder`).
    pub owners: Vec<Term>,
    /// The term whose leader committed `CertIssued`, if one did.
    pub issued_by: Option<Term>,
}

impl KillReport {
    /// Reads what happened from a run's journal and the CA's books; `None` if no kill fired.
    #[must_use]
    pub fn of(journal: &Journal, books: &crate::ca::CaBooks) -> Option<Self> {
        let kill = books
            .kills
            .iter()
            .find(|kill| kill.window != Window::AfterKeyChange)?;
        let created = journal.accepted().find_map(|(_, r)| match &r.command.op {
            Op::OrderCreated {
                step, order_url, ..
            } if *order_url == kill.order_url => Some((step.cert.clone(), step.cycle)),
            _ => None,
        });
        let order_committed = created.is_some();
        // An order never committed is the first of a cycle that paid for a second one.
        let (cert, cycle) = created.or_else(|| {
            books
                .orders_by_cycle
                .iter()
                .find(|(_, n)| **n >= 2)
                .map(|(key, _)| key.clone())
        })?;
        let owners = journal
            .accepted()
            .filter_map(|(_, r)| match &r.command.op {
                Op::BeginOrder {
                    cert: c,
                    cycle: y,
                    term,
                    ..
                }
                | Op::ResumeOrder {
                    cert: c,
                    cycle: y,
                    term,
                } if *c == cert && *y == cycle => Some(*term),
                _ => None,
            })
            .collect();
        let issued_by = journal.accepted().find_map(|(_, r)| match &r.command.op {
            Op::CertIssued { step, .. } if step.cert == cert && step.cycle == cycle => {
                Some(step.term)
            }
            _ => None,
        });
        let orders = books
            .orders_by_cycle
            .get(&(cert.clone(), cycle))
            .copied()
            .unwrap_or(0);
        Some(Self {
            window: kill.window,
            cert,
            cycle,
            order_url: kill.order_url.clone(),
            order_committed,
            orders,
            owners,
            issued_by,
        })
    }

    /// Whether the leader after the kill took the cycle over and issued the certificate.
    #[must_use]
    pub fn finished_by_next_leader(&self) -> bool {
        self.owners.len() >= 2
            && self.issued_by.is_some()
            && self.issued_by == self.owners.last().copied()
    }
}

impl fmt::Display for KillReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let owners: Vec<String> = self.owners.iter().map(|t| t.0.to_string()).collect();
        write!(
            f,
            "window={} cert={} cycle={} order_committed={} orders={} owners={} issued_by={} finished_by_next_leader={}",
            self.window.name(),
            self.cert,
            self.cycle,
            self.order_committed,
            self.orders,
            owners.join(","),
            self.issued_by
                .map_or_else(|| "none".into(), |t| t.0.to_string()),
            self.finished_by_next_leader()
        )
    }
}
