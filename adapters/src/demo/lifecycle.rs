//! `certfleet demo`: the lifecycle core, end to end, on one machine and without a network.
//!
//! Until the cluster exists (issue #4) the demo runs the core alone: one leader's planner,
//! `apply` and order drivers against the model CA of `certfleet_core::testing`, in virtual time.
//! It imports a batch of certificates, issues them within Let's Encrypt's rate budgets, and
//! keeps renewing them for the given number of days, then checks that every certificate is
//! served unexpired and that no certificate was ordered twice in one cycle.

use std::time::Instant;

use certfleet_core::testing::Harness;
use certfleet_core::time::{DAY_MS, MINUTE_MS};
use certfleet_core::{State, UnixMillis};
use serde::Serialize;
use thiserror::Error;

/// Options of a demo run.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Certificates to import.
    pub certs: u32,
    /// Virtual days to run.
    pub days: u32,
    /// Lifetime of issued certificates in days.
    pub lifetime_days: u32,
    /// Seed of every choice in the run (the same seed gives the same run).
    pub seed: u64,
}

/// What a demo run did.
#[derive(Clone, Debug, Serialize)]
pub struct DemoReport {
    /// What ran: the core alone, one leader, model CA.
    pub mode: &'static str,
    /// Nodes (one leader until the cluster exists).
    pub nodes: u32,
    /// Certificates managed.
    pub certs: u32,
    /// Virtual days simulated.
    pub virtual_days: u32,
    /// Certificates issued (first issuance and renewals).
    pub issued: u64,
    /// Renewals among them.
    pub renewals: u64,
    /// Orders the CA received.
    pub orders: u64,
    /// Orders per issued certificate (1.0: no duplicate orders).
    pub orders_per_issued: f64,
    /// Every certificate is served and unexpired at the end.
    pub all_served: bool,
    /// Hours of virtual time until every certificate was first issued (the budget pacing).
    pub initial_issuance_hours: f64,
    /// Most due-index entries one planner tick examined.
    pub planner_scanned_max: u32,
    /// Log entries applied.
    pub log_entries: u64,
    /// Digest of the final state (the same seed gives the same digest).
    pub state_digest: String,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// Why a demo could not run.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DemoError {
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
}

/// A fixed start so runs are reproducible: 2026-01-01T00:00:00Z.
const START: UnixMillis = UnixMillis(1_767_225_600_000);

/// Runs the demo, calling `progress` with a line now and then.
pub fn run(options: &DemoOptions, mut progress: impl FnMut(&str)) -> Result<DemoReport, DemoError> {
    check(options)?;
    let wall = Instant::now();
    let lifetime_ms = u64::from(options.lifetime_days) * DAY_MS;
    let mut h = Harness::new(options.seed, START, lifetime_ms);
    let names: Vec<String> = (0..options.certs)
        .map(|i| format!("www{i}.shop{}.example", i / 25))
        .collect();
    h.add(&names.iter().map(String::as_str).collect::<Vec<_>>());
    progress(&format!(
        "imported {} certificates; one leader, model CA, {}-day lifetimes, Let's Encrypt budgets",
        options.certs, options.lifetime_days
    ));

    let mut initial_issuance_hours = None;
    let end = START.plus_ms(u64::from(options.days) * DAY_MS);
    while h.now < end {
        // Fine steps until the import is issued (to time it), then quarter days.
        let step_ms = if initial_issuance_hours.is_none() {
            MINUTE_MS
        } else {
            DAY_MS / 4
        };
        h.run_until(h.now.plus_ms(step_ms).min(end));
        let served = served_count(&h.state, h.now);
        if initial_issuance_hours.is_none() && served == options.certs as usize {
            initial_issuance_hours = Some(h.now.ms_since(START) as f64 / 3_600_000.0);
        }
        if h.now.ms_since(START).is_multiple_of(10 * DAY_MS) || h.now == end {
            let day = h.now.ms_since(START) / DAY_MS;
            progress(&format!(
                "day {day:>3}: {served} served, {} issued, {} orders at the CA",
                h.stats.issued, h.ca.new_orders
            ));
        }
    }
    let issued = h.stats.issued;
    let orders = h.ca.new_orders;
    let digest: String = h
        .state
        .digest()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(DemoReport {
        mode: "core-only: one leader, model CA, virtual time (cluster: issue #4, real ACME: issue #5)",
        nodes: 1,
        certs: options.certs,
        virtual_days: options.days,
        issued,
        renewals: issued.saturating_sub(u64::from(options.certs)),
        orders,
        orders_per_issued: if issued == 0 {
            0.0
        } else {
            orders as f64 / issued as f64
        },
        all_served: served_count(&h.state, h.now) == options.certs as usize,
        initial_issuance_hours: initial_issuance_hours.unwrap_or(f64::NAN),
        planner_scanned_max: h.stats.scanned_max,
        log_entries: h.stats.entries,
        state_digest: digest,
        seconds: wall.elapsed().as_secs_f64(),
    })
}

fn check(options: &DemoOptions) -> Result<(), DemoError> {
    if options.certs == 0 || options.certs > 200_000 {
        return Err(DemoError::Option {
            option: "certs",
            value: options.certs.into(),
            reason: "1 to 200000",
        });
    }
    if options.days == 0 || options.days > 3650 {
        return Err(DemoError::Option {
            option: "days",
            value: options.days.into(),
            reason: "1 to 3650",
        });
    }
    if options.lifetime_days < 2 || options.lifetime_days > 398 {
        return Err(DemoError::Option {
            option: "lifetime-days",
            value: options.lifetime_days.into(),
            reason: "2 to 398",
        });
    }
    Ok(())
}

fn served_count(state: &State, now: UnixMillis) -> usize {
    state
        .certs()
        .filter(|(_, r)| r.current.as_ref().is_some_and(|c| c.not_after > now))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_demo_issues_renews_and_orders_once_per_certificate() {
        let options = DemoOptions {
            certs: 40,
            days: 100,
            lifetime_days: 45,
            seed: 7,
        };
        let report = run(&options, |_| {}).unwrap();
        assert!(report.all_served);
        // 100 days at a renewal every ~30 days: 1 issuance and 3 renewals each.
        assert_eq!(report.issued, 40 * 4);
        assert_eq!(
            report.orders, report.issued,
            "one order per issued certificate"
        );
        assert!(report.initial_issuance_hours <= 6.0);
    }

    #[test]
    fn the_same_seed_gives_the_same_state() {
        let options = DemoOptions {
            certs: 10,
            days: 20,
            lifetime_days: 6,
            seed: 3,
        };
        let a = run(&options, |_| {}).unwrap();
        let b = run(&options, |_| {}).unwrap();
        assert_eq!(a.state_digest, b.state_digest);
        let c = run(&DemoOptions { seed: 4, ..options }, |_| {}).unwrap();
        assert_ne!(a.state_digest, c.state_digest);
    }

    #[test]
    fn options_out_of_range_are_named() {
        let err = run(
            &DemoOptions {
                certs: 0,
                days: 1,
                lifetime_days: 90,
                seed: 0,
            },
            |_| {},
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "--certs 0 is out of range: 1 to 200000");
    }
}
