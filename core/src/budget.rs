//! Rate budgets: token buckets mirroring the CA's published limits (DESIGN §6, SIMULATION I8).
//!
//! Each bucket is kept as a GCRA "theoretical arrival time" (the algorithm Let's Encrypt's own
//! limiter uses): one instant per key, no background refill. A bucket whose arrival time is in
//! the past is full and is dropped from the map, so the map holds only keys that were used
//! recently, never one entry per certificate. Budgets are part of the replicated state: a new
//! leader sees exactly what the previous one spent.

use alloc::collections::{BTreeMap, BTreeSet};
use core::fmt;

use serde::{Deserialize, Serialize};

use crate::error::PolicyError;
use crate::model::IssuerId;
use crate::time::{SECOND_MS, UnixMillis};

/// A limit of `count` events per `period_ms`, refilling one event every `period_ms / count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rate {
    /// Burst size, and events per period.
    pub count: u32,
    /// The period in milliseconds.
    pub period_ms: u64,
}

/// What a budget is counted against.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum BudgetKey {
    /// Certificates per exact identifier set (the comma-joined values).
    CertsPerSet {
        /// The issuer.
        issuer: IssuerId,
        /// The identifier set.
        set: String,
    },
    /// Certificates per registered domain.
    CertsPerDomain {
        /// The issuer.
        issuer: IssuerId,
        /// The registered domain (or IP address).
        domain: String,
    },
    /// Failed authorizations per identifier per account.
    FailedAuthz {
        /// The issuer.
        issuer: IssuerId,
        /// The identifier value.
        identifier: String,
    },
    /// New orders per account.
    NewOrders {
        /// The issuer.
        issuer: IssuerId,
    },
}

/// The replicated bucket table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Budgets {
    arrival: BTreeMap<BudgetKey, UnixMillis>,
    // The same entries ordered by arrival time, so full buckets are pruned from the front.
    by_arrival: BTreeSet<(UnixMillis, BudgetKey)>,
}

impl Rate {
    /// Milliseconds for one event to refill; at least 1.
    #[must_use]
    pub fn interval_ms(self) -> u64 {
        (self.period_ms / u64::from(self.count.max(1))).max(1)
    }

    /// How far ahead of `now` the arrival time may run before the bucket is empty.
    fn burst_ms(self) -> u64 {
        self.interval_ms()
            .saturating_mul(u64::from(self.count.saturating_sub(1)))
    }

    pub(crate) fn check(self, field: &'static str) -> Result<(), PolicyError> {
        if self.count == 0 || self.count > 1_000_000 {
            return Err(PolicyError {
                field,
                value: self.count.into(),
                reason: "count must be in 1..=1000000",
            });
        }
        if self.period_ms < SECOND_MS {
            return Err(PolicyError {
                field,
                value: self.period_ms,
                reason: "period must be at least one second",
            });
        }
        Ok(())
    }
}

impl Budgets {
    /// The earliest instant at which one more event fits under `rate` (`<= now`: available now).
    #[must_use]
    pub fn available_at(&self, key: &BudgetKey, rate: Rate) -> UnixMillis {
        self.available_at_from(self.arrival.get(key).copied(), rate)
    }

    /// Like [`Budgets::available_at`], reading the arrival time through an overlay first (the
    /// planner's own reservations within one tick).
    #[must_use]
    pub fn available_at_with(
        &self,
        overlay: &BTreeMap<BudgetKey, UnixMillis>,
        key: &BudgetKey,
        rate: Rate,
    ) -> UnixMillis {
        let arrival = overlay.get(key).or_else(|| self.arrival.get(key)).copied();
        self.available_at_from(arrival, rate)
    }

    /// The stored arrival time of a bucket (`None`: full).
    #[must_use]
    pub fn arrival(&self, key: &BudgetKey) -> Option<UnixMillis> {
        self.arrival.get(key).copied()
    }

    /// Takes one event at `now`. The caller has checked availability; taking from an empty
    /// bucket still counts (the CA counted it), pushing availability further out.
    pub fn consume(&mut self, key: &BudgetKey, rate: Rate, now: UnixMillis) {
        let arrival = Self::arrival_after_consume(self.arrival.get(key).copied(), rate, now);
        self.set(key, arrival, now);
    }

    /// The arrival time after one event at `now`, starting from `arrival`.
    #[must_use]
    pub fn arrival_after_consume(
        arrival: Option<UnixMillis>,
        rate: Rate,
        now: UnixMillis,
    ) -> UnixMillis {
        arrival.unwrap_or(now).max(now).plus_ms(rate.interval_ms())
    }

    /// Gives back one event reserved at an order's start that never became a certificate.
    pub fn refund(&mut self, key: &BudgetKey, rate: Rate, now: UnixMillis) {
        let Some(arrival) = self.arrival.get(key).copied() else {
            return; // already full
        };
        self.set(key, arrival.minus_ms(rate.interval_ms()).max(now), now);
    }

    /// Drops full buckets (arrival time at or before `now`); they are the same as absent.
    pub fn prune(&mut self, now: UnixMillis) {
        while let Some((arrival, _)) = self.by_arrival.first() {
            if *arrival > now {
                break;
            }
            // The loop just saw a first element.
            let (_, key) = self.by_arrival.pop_first().expect("first() was Some");
            self.arrival.remove(&key);
        }
        debug_assert_eq!(self.arrival.len(), self.by_arrival.len());
    }

    /// The non-full buckets, in key order (for snapshots and digests).
    pub fn iter(&self) -> impl Iterator<Item = (&BudgetKey, UnixMillis)> {
        self.arrival.iter().map(|(key, at)| (key, *at))
    }

    /// Number of non-full buckets.
    #[must_use]
    pub fn len(&self) -> usize {
        self.arrival.len()
    }

    /// Whether every bucket is full.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.arrival.is_empty()
    }

    /// Restores one bucket from a snapshot.
    pub(crate) fn restore(&mut self, key: BudgetKey, arrival: UnixMillis) {
        if let Some(old) = self.arrival.insert(key.clone(), arrival) {
            self.by_arrival.remove(&(old, key.clone()));
        }
        self.by_arrival.insert((arrival, key));
    }

    fn available_at_from(&self, arrival: Option<UnixMillis>, rate: Rate) -> UnixMillis {
        arrival.map_or(UnixMillis::ZERO, |arrival| {
            arrival.minus_ms(rate.burst_ms())
        })
    }

    fn set(&mut self, key: &BudgetKey, arrival: UnixMillis, now: UnixMillis) {
        if let Some(old) = self.arrival.remove(key) {
            self.by_arrival.remove(&(old, key.clone()));
        }
        if arrival > now {
            self.arrival.insert(key.clone(), arrival);
            self.by_arrival.insert((arrival, key.clone()));
        }
    }
}

impl fmt::Display for BudgetKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::CertsPerSet { issuer, set } => {
                write!(f, "certificates per identifier set {set} ({issuer})")
            }
            Self::CertsPerDomain { issuer, domain } => {
                write!(f, "certificates per domain {domain} ({issuer})")
            }
            Self::FailedAuthz { issuer, identifier } => {
                write!(f, "failed authorizations for {identifier} ({issuer})")
            }
            Self::NewOrders { issuer } => write!(f, "new orders ({issuer})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::HOUR_MS;

    fn key() -> BudgetKey {
        BudgetKey::NewOrders {
            issuer: IssuerId::parse("le").unwrap(),
        }
    }

    #[test]
    fn a_full_bucket_allows_its_burst_then_refills_one_per_interval() {
        // Let's Encrypt: 300 new orders per 3 hours, one back every 36 s.
        let rate = Rate {
            count: 300,
            period_ms: 3 * HOUR_MS,
        };
        assert_eq!(rate.interval_ms(), 36_000);
        let mut budgets = Budgets::default();
        let now = UnixMillis(1_000_000);
        for _ in 0..300 {
            assert!(budgets.available_at(&key(), rate) <= now);
            budgets.consume(&key(), rate, now);
        }
        let next = budgets.available_at(&key(), rate);
        assert_eq!(next, now.plus_ms(36_000));
        budgets.prune(next);
        assert_eq!(budgets.len(), 1, "still not full after one refill");
        budgets.prune(now.plus_ms(3 * HOUR_MS));
        assert!(budgets.is_empty(), "full again after one period");
    }

    #[test]
    fn a_refund_returns_one_event() {
        let rate = Rate {
            count: 2,
            period_ms: 10_000,
        };
        let mut budgets = Budgets::default();
        let now = UnixMillis(100);
        budgets.consume(&key(), rate, now);
        budgets.consume(&key(), rate, now);
        assert!(budgets.available_at(&key(), rate) > now);
        budgets.refund(&key(), rate, now);
        assert!(budgets.available_at(&key(), rate) <= now);
        budgets.refund(&key(), rate, now);
        assert!(budgets.is_empty(), "a refund down to full drops the entry");
        budgets.refund(&key(), rate, now);
        assert!(budgets.is_empty(), "refunding a full bucket is a no-op");
    }

    #[test]
    fn overlays_see_reservations_made_in_the_same_tick() {
        let rate = Rate {
            count: 1,
            period_ms: 10_000,
        };
        let budgets = Budgets::default();
        let now = UnixMillis(50);
        let mut overlay = BTreeMap::new();
        assert!(budgets.available_at_with(&overlay, &key(), rate) <= now);
        overlay.insert(key(), Budgets::arrival_after_consume(None, rate, now));
        assert_eq!(
            budgets.available_at_with(&overlay, &key(), rate),
            now.plus_ms(10_000)
        );
    }
}
