//! Seed → options: every parameter of a run comes from its seed (SIMULATION "A run", step 1).

use std::fmt;

use certfleet::mutation::Mutation;
pub use certfleet_core::time::DAY_MS;
use certfleet_core::time::mix;

use crate::ca::Window;

/// The standard safety phase: workload and faults (three certificate lifetimes); a soak run
/// ([`SimOptions::soak`]) is longer.
pub const SAFETY_MS: u64 = 60 * 60 * 1000;
/// Certificate lifetime of the standard run (20 minutes: three lifetimes per safety phase).
pub const CERT_LIFETIME_MS: u64 = 20 * 60 * 1000;
/// The standard liveness phase: no faults; certificates must keep renewing (two lifetimes).
pub const LIVENESS_MS: u64 = 40 * 60 * 1000;
/// The days mode's safety phase (SIMULATION "A run", step 2: at least 14 virtual days).
pub const DAYS_SAFETY_MS: u64 = 14 * DAY_MS;
/// The days mode's faults: this many standard hours' worth, spread over its 14 days.
pub const DAYS_FAULT_HOURS: u64 = 48;

/// The shape of one simulation run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimOptions {
    /// The seed (also madsim's).
    pub seed: u64,
    /// Raft voters: 3 or 5.
    pub voters: u64,
    /// Edge learners: 1 to 3.
    pub edges: u64,
    /// Certificate writes in the workload (adds, then modifications and removals).
    pub writes: u64,
    /// Of those, the share sent at once at the start (a bulk import), in percent.
    pub bulk_percent: u64,
    /// Crash-and-restart faults during the safety phase.
    pub crashes: u64,
    /// Of those, the ones with a long outage (minutes: the node falls far behind), in percent.
    pub long_outage_percent: u64,
    /// Single-node isolations.
    pub clogs: u64,
    /// Swizzle-clogs (FoundationDB): a random half of the hosts clogged one by one, then
    /// unclogged in another order.
    pub swizzles: u64,
    /// Partitions of the hosts into two sides (symmetric or one-way).
    pub partitions: u64,
    /// Process pauses (the node stops, its peers time out, it resumes where it was).
    pub pauses: u64,
    /// Membership changes: an edge removed and added back, or a voter demoted to learner and
    /// promoted again.
    pub churns: u64,
    /// Largest one-way network latency in milliseconds (madsim's send latency is 1..this).
    pub latency_ms_max: u64,
    /// Virtual milliseconds between log syncs on every node (writes in between die in a crash).
    pub sync_interval_ms: u64,
    /// Unsynced entries a crash keeps (a torn write), at most.
    pub torn_keep_max: usize,
    /// Largest clock error of any node, in milliseconds (offset, drift and jumps together).
    pub skew_ms_max: u64,
    /// Clock step jumps during the safety phase.
    pub clock_jumps: u64,
    /// CA downtime windows.
    pub ca_down: u64,
    /// Injected account-wide 429s on `newOrder`.
    pub ca_rate_limited: u64,
    /// Orders whose authorizations the CA makes invalid.
    pub ca_invalid_authz: u32,
    /// Finalize responses the CA loses.
    pub ca_lost_finalize: u32,
    /// Nodes each validation asks (1–3 perspectives).
    pub ca_perspectives: u64,
    /// How long finalized orders stay `processing` (0: valid at once).
    pub ca_processing_ms: u64,
    /// Whether the CA reuses valid authorizations.
    pub ca_reuse_authz: bool,
    /// The CA changes its intermediate chain every this many issuances (0: never).
    pub ca_chain_every: u64,
    /// Whether the CA offers ARI (RFC 9773).
    pub ca_ari: bool,
    /// Periods of message loss, 1–30 % of packets each. madsim's TCP resends a lost packet
    /// after a backoff (1 ms, doubling), so loss shows as delay and reordering of deadlines,
    /// as on a real lossy link; a lost connection attempt is refused.
    pub lossy: u64,
    /// Flapping partitions: a side cut off and reconnected every 0.2–3 s for up to a minute.
    pub flaps: u64,
    /// Disk errors (a failed log read, write or fsync): openraft stops the node, and the
    /// harness restarts it as a supervisor would.
    pub disk_errors: u64,
    /// Buggify points on (`certfleet::buggify`): a leader slow between a CA response and its
    /// commit, Raft replies held back.
    pub buggify: bool,
    /// Voters replaced by a new host with an empty disk (the old one decommissioned for good).
    pub replacements: u64,
    /// One CA outage of 20–40 minutes (one to two certificate lifetimes): certificates expire
    /// during it and all come due when it ends.
    pub ca_down_long: bool,
    /// Protocol windows in which the leader is killed (SIMULATION "targeted kills").
    pub kill_windows: Vec<Window>,
    /// The first clog isolates whoever leads while the bulk import's cycles are in flight
    /// (the `clog-leader` scenario; never drawn from the seed): a leader cut off from its
    /// peers but not from the CA, its cycles mid-step while a successor takes them over.
    pub clog_leader: bool,
    /// Length of the safety phase, in virtual milliseconds (one hour; [`SimOptions::soak`]
    /// makes it longer).
    pub safety_ms: u64,
    /// Length of the liveness phase, in virtual milliseconds.
    pub liveness_ms: u64,
    /// Lifetime of the certificates the CA issues.
    pub lifetime_ms: u64,
    /// The production timescale ([`SimOptions::days`]): lifetimes of days, the production
    /// policy and Let's Encrypt's own limits, a name per registered domain, hours-long CA
    /// outages. Otherwise lifetimes of minutes, with the policy's periods scaled to them.
    pub days: bool,
    /// The CA's ARI windows move between polls (each poll may suggest another window).
    pub ca_ari_moves: bool,
    /// ARI polls the CA answers with "renew now" (a window already past, as after a
    /// revocation incident).
    pub ca_ari_renew_now: u32,
    /// Whether the CA returns an identifier set's last order while it is still `pending` or
    /// `ready` instead of creating another (Let's Encrypt's order reuse).
    pub ca_reuse_orders: bool,
    /// The CA validates up to this long after it is told a challenge is ready, each
    /// perspective at its own moment (0: at once): late and repeated validation.
    pub ca_late_validation_ms: u64,
    /// Per mille of CA calls that fail with a 500 (no `Retry-After`) or a connection reset,
    /// before the CA acts or, where a retry is safe, after it (the response lost).
    pub ca_flaky_permille: u64,
    /// Account key rollovers in the workload (SIMULATION "Workload"), each an admin write
    /// at a random point of the safety phase after the bulk import.
    pub key_rollovers: u64,
    /// A known bug switched back on (tests and `--mutation`; never drawn from the seed).
    pub mutation: Option<Mutation>,
}

impl SimOptions {
    /// The options of `seed`.
    #[must_use]
    pub fn from_seed(seed: u64) -> Self {
        let draw = |what: &[u8], bound: u64| mix(seed, what, 0) % bound;
        let key_rollovers = draw(b"key-rollovers", 3);
        let mut kill_windows: Vec<Window> = Window::ALL
            .into_iter()
            .filter(|w| draw(w.name().as_bytes(), 3) == 0)
            .collect();
        let key_change = Window::AfterKeyChange;
        if key_rollovers > 0 && draw(key_change.name().as_bytes(), 2) == 0 {
            kill_windows.push(key_change);
        }
        Self {
            seed,
            voters: if draw(b"voters", 2) == 0 { 3 } else { 5 },
            edges: 1 + draw(b"edges", 3),
            writes: 20 + draw(b"writes", 60),
            bulk_percent: 20 + draw(b"bulk", 60),
            crashes: draw(b"crashes", 6),
            long_outage_percent: draw(b"long-outage", 50),
            clogs: draw(b"clogs", 4),
            swizzles: draw(b"swizzles", 2),
            partitions: draw(b"partitions", 3),
            pauses: draw(b"pauses", 3),
            churns: draw(b"churns", 3),
            latency_ms_max: 1 + draw(b"latency", 100),
            sync_interval_ms: 1 + draw(b"sync", 30),
            torn_keep_max: draw(b"torn", 3) as usize,
            skew_ms_max: if draw(b"skewed", 4) == 0 {
                0
            } else {
                2_000 + draw(b"skew", 58_000)
            },
            clock_jumps: draw(b"clock-jumps", 3),
            ca_down: draw(b"ca-down", 3),
            ca_rate_limited: draw(b"ca-429", 4),
            ca_invalid_authz: draw(b"ca-invalid", 4) as u32,
            ca_lost_finalize: draw(b"ca-lost", 3) as u32,
            ca_perspectives: 1 + draw(b"ca-perspectives", 3),
            ca_processing_ms: if draw(b"ca-processing", 2) == 0 {
                0
            } else {
                1_000 + draw(b"ca-processing-ms", 180_000)
            },
            ca_reuse_authz: draw(b"ca-reuse", 2) == 0,
            ca_chain_every: if draw(b"ca-chains", 2) == 0 {
                0
            } else {
                5 + draw(b"ca-chain-every", 45)
            },
            ca_ari: draw(b"ca-ari", 2) == 0,
            lossy: draw(b"lossy", 3),
            flaps: u64::from(draw(b"flaps", 3) == 0),
            disk_errors: draw(b"disk-errors", 4),
            buggify: draw(b"buggify", 3) == 0,
            ca_down_long: draw(b"ca-down-long", 6) == 0,
            replacements: u64::from(draw(b"replacements", 4) == 0),
            kill_windows,
            clog_leader: false,
            safety_ms: SAFETY_MS,
            liveness_ms: LIVENESS_MS,
            lifetime_ms: CERT_LIFETIME_MS,
            days: false,
            ca_ari_moves: draw(b"ca-ari-moves", 2) == 0,
            ca_ari_renew_now: draw(b"ca-ari-renew-now", 4) as u32,
            ca_reuse_orders: draw(b"ca-reuse-orders", 2) == 0,
            ca_late_validation_ms: if draw(b"ca-late", 2) == 0 {
                0
            } else {
                1_000 + draw(b"ca-late-ms", 29_000)
            },
            ca_flaky_permille: if draw(b"ca-flaky", 2) == 0 {
                0
            } else {
                5 + draw(b"ca-flaky-permille", 46)
            },
            key_rollovers,
            mutation: None,
        }
    }

    /// The same seed at the production timescale (SIMULATION "A run", steps 1–2; `--days`):
    /// lifetimes of 6, 45 or 90 days, 200–2,000 certificates, a 14-day safety phase and a
    /// day-long liveness phase, the production policy (12-hour ARI polls, daily backoff,
    /// Let's Encrypt's 300 new orders per 3 hours and 5 duplicates per week, which the CA
    /// enforces too), and [`DAYS_FAULT_HOURS`] standard hours' worth of faults spread over
    /// the 14 days. What it adds to the standard run is the policy's day-scale constants
    /// and ARI: polled every 12 hours, so a run of minutes never polls it.
    #[must_use]
    pub fn days(self) -> Self {
        let seed = self.seed;
        let draw = |what: &[u8], bound: u64| mix(seed, what, 0) % bound;
        let mut options = self.soak(DAYS_FAULT_HOURS);
        options.days = true;
        options.safety_ms = DAYS_SAFETY_MS;
        options.liveness_ms = DAY_MS;
        options.lifetime_ms = [6, 45, 90][draw(b"days-lifetime", 3) as usize] * DAY_MS;
        options.writes = 200 + draw(b"days-writes", 1_801);
        // Several renew-now answers over 14 days of 12-hourly polls.
        options.ca_ari = true;
        options.ca_ari_renew_now = 5 + draw(b"days-renew-now", 20) as u32;
        options
    }

    /// The same run stretched to a safety phase of `hours` virtual hours (the soak mode,
    /// `--safety-hours`): every fault count grows in proportion, so a day-long run sees a day's
    /// worth of crashes, partitions, outages and leader kills, each placed by the seed across
    /// the whole phase, while the workload keeps its size, spread over the phase with long
    /// idle stretches. (Scaling the certificates too would outgrow the CA's rate limits with
    /// 20-minute lifetimes: a 24-hour run with 860 certificates could not renew them all, by
    /// arithmetic, not by a bug.) One hour is the standard run.
    #[must_use]
    pub fn soak(mut self, hours: u64) -> Self {
        let k = hours.max(1);
        self.safety_ms = k * SAFETY_MS;
        for count in [
            &mut self.crashes,
            &mut self.clogs,
            &mut self.swizzles,
            &mut self.partitions,
            &mut self.pauses,
            &mut self.churns,
            &mut self.clock_jumps,
            &mut self.ca_down,
            &mut self.ca_rate_limited,
            &mut self.lossy,
            &mut self.flaps,
            &mut self.disk_errors,
            &mut self.replacements,
        ] {
            *count *= k;
        }
        let k32 = u32::try_from(k).unwrap_or(u32::MAX);
        self.ca_invalid_authz = self.ca_invalid_authz.saturating_mul(k32);
        self.ca_lost_finalize = self.ca_lost_finalize.saturating_mul(k32);
        self
    }

    /// Fault classes [`SimOptions::without`] can switch off, by name.
    pub const CLASSES: [&'static str; 22] = [
        "crashes",
        "clogs",
        "swizzles",
        "partitions",
        "pauses",
        "churns",
        "clock-jumps",
        "ca-down",
        "ca-down-long",
        "ca-429",
        "ca-invalid",
        "ca-lost-finalize",
        "kills",
        "lossy",
        "flaps",
        "disk-errors",
        "buggify",
        "replacements",
        "ca-ari",
        "ca-late-validation",
        "ca-flaky",
        "key-rollovers",
    ];

    /// The same options with the fault class `class` (one of [`SimOptions::CLASSES`]) switched
    /// off: for replaying a seed without one kind of fault, to see which one it needs, or a
    /// seed found before a class existed.
    ///
    /// # Errors
    /// An unknown class name.
    pub fn without(mut self, class: &str) -> Result<Self, String> {
        match class {
            "crashes" => self.crashes = 0,
            "clogs" => self.clogs = 0,
            "swizzles" => self.swizzles = 0,
            "partitions" => self.partitions = 0,
            "pauses" => self.pauses = 0,
            "churns" => self.churns = 0,
            "clock-jumps" => self.clock_jumps = 0,
            "ca-down" => self.ca_down = 0,
            "ca-down-long" => self.ca_down_long = false,
            "ca-429" => self.ca_rate_limited = 0,
            "ca-invalid" => self.ca_invalid_authz = 0,
            "ca-lost-finalize" => self.ca_lost_finalize = 0,
            "kills" => self.kill_windows.clear(),
            "lossy" => self.lossy = 0,
            "flaps" => self.flaps = 0,
            "disk-errors" => self.disk_errors = 0,
            "buggify" => self.buggify = false,
            "replacements" => self.replacements = 0,
            "ca-late-validation" => self.ca_late_validation_ms = 0,
            "ca-flaky" => self.ca_flaky_permille = 0,
            "key-rollovers" => {
                self.key_rollovers = 0;
                self.kill_windows.retain(|w| *w != Window::AfterKeyChange);
            }
            "ca-ari" => {
                self.ca_ari_moves = false;
                self.ca_ari_renew_now = 0;
            }
            other => {
                return Err(format!(
                    "no fault class {other:?}; known: {}",
                    Self::CLASSES.join(", ")
                ));
            }
        }
        Ok(self)
    }

    /// The same options with `mutation` switched on.
    #[must_use]
    pub fn with_mutation(mut self, mutation: Option<Mutation>) -> Self {
        self.mutation = mutation;
        self
    }
}

impl fmt::Display for SimOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kills: Vec<&str> = self.kill_windows.iter().map(|w| w.name()).collect();
        write!(
            f,
            "seed={} voters={} edges={} writes={} bulk={}% crashes={} long={}% clogs={} swizzles={} partitions={} pauses={} churns={} latency_ms<={} sync_ms={} torn_max={} skew_ms<={} jumps={} ca_down={} ca_429={} ca_invalid={} ca_lost_finalize={} ca_perspectives={} ca_processing_ms={} ca_reuse_authz={} ca_chain_every={} ca_ari={} lossy={} flaps={} disk_errors={} buggify={} ca_down_long={} replacements={} kills=[{}]",
            self.seed,
            self.voters,
            self.edges,
            self.writes,
            self.bulk_percent,
            self.crashes,
            self.long_outage_percent,
            self.clogs,
            self.swizzles,
            self.partitions,
            self.pauses,
            self.churns,
            self.latency_ms_max,
            self.sync_interval_ms,
            self.torn_keep_max,
            self.skew_ms_max,
            self.clock_jumps,
            self.ca_down,
            self.ca_rate_limited,
            self.ca_invalid_authz,
            self.ca_lost_finalize,
            self.ca_perspectives,
            self.ca_processing_ms,
            self.ca_reuse_authz,
            self.ca_chain_every,
            self.ca_ari,
            self.lossy,
            self.flaps,
            self.disk_errors,
            self.buggify,
            self.ca_down_long,
            self.replacements,
            kills.join(",")
        )?;
        if self.clog_leader {
            write!(f, " clog_leader")?;
        }
        write!(
            f,
            " ca_ari_moves={} ca_ari_renew_now={} ca_reuse_orders={} ca_late_ms={} ca_flaky={}‰ key_rollovers={}",
            self.ca_ari_moves,
            self.ca_ari_renew_now,
            self.ca_reuse_orders,
            self.ca_late_validation_ms,
            self.ca_flaky_permille,
            self.key_rollovers
        )?;
        if self.safety_ms != SAFETY_MS {
            write!(f, " safety_ms={}", self.safety_ms)?;
        }
        if self.days {
            write!(
                f,
                " days lifetime_ms={} liveness_ms={}",
                self.lifetime_ms, self.liveness_ms
            )?;
        }
        if let Some(mutation) = self.mutation {
            write!(f, " mutation={}", mutation.name())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_a_function_of_the_seed_and_stay_in_range() {
        for seed in 0..500 {
            let options = SimOptions::from_seed(seed);
            assert_eq!(options, SimOptions::from_seed(seed));
            assert!(matches!(options.voters, 3 | 5));
            assert!((1..=3).contains(&options.edges));
            assert!((20..80).contains(&options.writes));
            assert!(options.skew_ms_max < 60_000);
            assert!(options.mutation.is_none());
        }
        let shapes: std::collections::BTreeSet<(u64, u64)> = (0..100)
            .map(|s| {
                let o = SimOptions::from_seed(s);
                (o.voters, o.edges)
            })
            .collect();
        assert_eq!(shapes.len(), 6, "every topology appears");
    }

    #[test]
    fn every_class_can_be_switched_off_and_an_unknown_one_is_named() {
        let seed = (0..100)
            .find(|&s| {
                let o = SimOptions::from_seed(s);
                o.lossy > 0 && o.disk_errors > 0 && o.buggify && o.crashes > 0
            })
            .expect("some seed draws these");
        let mut options = SimOptions::from_seed(seed);
        for class in SimOptions::CLASSES {
            options = options.without(class).expect("a known class");
        }
        let quiet = options;
        assert_eq!((quiet.lossy, quiet.disk_errors, quiet.crashes), (0, 0, 0));
        assert_eq!(
            (quiet.ca_flaky_permille, quiet.ca_late_validation_ms),
            (0, 0)
        );
        assert!(!quiet.buggify && quiet.kill_windows.is_empty());
        assert_eq!(quiet.key_rollovers, 0);
        assert_eq!(
            quiet.writes,
            SimOptions::from_seed(seed).writes,
            "the workload stays"
        );
        let error = SimOptions::from_seed(seed).without("floods").unwrap_err();
        assert!(error.contains("floods") && error.contains("disk-errors"));
    }

    #[test]
    fn a_soak_run_scales_the_workload_and_faults_with_its_length() {
        let one = SimOptions::from_seed(7);
        let day = SimOptions::from_seed(7).soak(24);
        assert_eq!(day.safety_ms, 24 * one.safety_ms);
        assert_eq!(day.writes, one.writes, "the workload keeps its size");
        assert_eq!(day.crashes, 24 * one.crashes);
        assert_eq!(day.ca_invalid_authz, 24 * one.ca_invalid_authz);
        assert_eq!(
            (day.voters, day.latency_ms_max),
            (one.voters, one.latency_ms_max)
        );
        assert_eq!(
            SimOptions::from_seed(7).soak(1),
            one,
            "one hour is the standard run"
        );
        assert!(day.to_string().contains("safety_ms=86400000"));
    }

    #[test]
    fn a_days_run_has_lifetimes_of_days_hundreds_of_certificates_and_two_weeks_of_safety() {
        let runs: Vec<SimOptions> = (0..60).map(|s| SimOptions::from_seed(s).days()).collect();
        for (seed, days) in runs.iter().enumerate() {
            let standard = SimOptions::from_seed(seed as u64);
            assert!(days.days && !standard.days);
            assert!([6, 45, 90].contains(&(days.lifetime_ms / DAY_MS)));
            assert_eq!(days.lifetime_ms % DAY_MS, 0);
            assert!((200..=2_000).contains(&days.writes));
            assert_eq!(days.safety_ms, 14 * DAY_MS);
            assert_eq!(days.liveness_ms, DAY_MS);
            assert!(days.ca_ari && days.ca_ari_renew_now >= 5);
            assert_eq!(days.crashes, DAYS_FAULT_HOURS * standard.crashes);
            assert_eq!(
                (days.voters, days.edges, days.latency_ms_max),
                (standard.voters, standard.edges, standard.latency_ms_max),
                "the same cluster"
            );
            assert!(days.to_string().contains(" days lifetime_ms="));
        }
        let lifetimes: std::collections::BTreeSet<u64> =
            runs.iter().map(|o| o.lifetime_ms / DAY_MS).collect();
        assert_eq!(lifetimes.len(), 3, "every lifetime appears");
        let standard = SimOptions::from_seed(3);
        assert_eq!(
            (standard.lifetime_ms, standard.liveness_ms),
            (CERT_LIFETIME_MS, LIVENESS_MS)
        );
    }

    #[test]
    fn every_fault_class_is_drawn_by_some_seed_of_a_small_batch() {
        let batch: Vec<SimOptions> = (0..50).map(SimOptions::from_seed).collect();
        assert!(batch.iter().any(|o| o.crashes > 0));
        assert!(batch.iter().any(|o| o.partitions > 0));
        assert!(batch.iter().any(|o| o.swizzles > 0));
        assert!(batch.iter().any(|o| o.pauses > 0));
        assert!(batch.iter().any(|o| o.churns > 0));
        assert!(batch.iter().any(|o| o.skew_ms_max > 0 && o.clock_jumps > 0));
        assert!(batch.iter().any(|o| o.ca_down > 0 && o.ca_rate_limited > 0));
        assert!(batch.iter().any(|o| o.lossy > 0 && o.flaps > 0));
        assert!(batch.iter().any(|o| o.disk_errors > 0 && o.buggify));
        assert!(batch.iter().any(|o| o.ca_down_long && o.replacements > 0));
        assert!(
            batch
                .iter()
                .any(|o| o.ca_reuse_orders && o.ca_flaky_permille > 0)
        );
        assert!(
            batch
                .iter()
                .any(|o| o.ca_late_validation_ms > 0 && o.ca_ari_moves)
        );
        for window in Window::ALL {
            assert!(batch.iter().any(|o| o.kill_windows.contains(&window)));
        }
        assert!(
            batch
                .iter()
                .any(|o| o.key_rollovers == 2 && o.kill_windows.contains(&Window::AfterKeyChange))
        );
        assert!(
            batch
                .iter()
                .all(|o| o.key_rollovers > 0 || !o.kill_windows.contains(&Window::AfterKeyChange))
        );
    }
}
