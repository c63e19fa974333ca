//! Time and randomness as values.
//!
//! The core never reads a clock or a random source. Time arrives as a [`UnixMillis`] argument
//! (the leader's clock, committed in each command's `at`), and every "random" choice is a pure
//! [`mix`] of a seed carried in a command, the certificate id and the cycle, so every replica
//! and every replay of the log makes the same choice.

use serde::{Deserialize, Serialize};

/// One second in milliseconds.
pub const SECOND_MS: u64 = 1_000;
/// One minute in milliseconds.
pub const MINUTE_MS: u64 = 60 * SECOND_MS;
/// One hour in milliseconds.
pub const HOUR_MS: u64 = 60 * MINUTE_MS;
/// One day in milliseconds.
pub const DAY_MS: u64 = 24 * HOUR_MS;

/// Milliseconds since the Unix epoch, as committed by a leader.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct UnixMillis(pub u64);

impl UnixMillis {
    /// The epoch.
    pub const ZERO: Self = Self(0);
    /// The end of time; used as "never" in comparisons.
    pub const MAX: Self = Self(u64::MAX);

    /// This instant plus `ms`, saturating at [`UnixMillis::MAX`].
    #[must_use]
    pub const fn plus_ms(self, ms: u64) -> Self {
        Self(self.0.saturating_add(ms))
    }

    /// This instant minus `ms`, saturating at the epoch.
    #[must_use]
    pub const fn minus_ms(self, ms: u64) -> Self {
        Self(self.0.saturating_sub(ms))
    }

    /// Milliseconds from `earlier` to `self`, zero if `earlier` is later.
    #[must_use]
    pub const fn ms_since(self, earlier: Self) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl core::fmt::Display for UnixMillis {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

/// A deterministic 64-bit mix of a command's seed, a key and a counter.
///
/// This is how the core makes "random" choices (renewal jitter, the point inside an ARI
/// window, backoff jitter): the same inputs give the same output on every replica, forever.
/// The function is part of the replicated semantics: changing it changes which instant a
/// replayed log picks, so it is pinned by a test.
#[must_use]
pub fn mix(seed: u64, key: &[u8], counter: u64) -> u64 {
    // FNV-1a over the key, then SplitMix64 finalisation over the combination: cheap, stable,
    // and well distributed for the small ranges we draw from.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let mut z = seed ^ hash ^ counter.rotate_left(32);
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A deterministic draw in `0..bound` (0 when `bound` is 0).
#[must_use]
pub fn draw_below(seed: u64, key: &[u8], counter: u64, bound: u64) -> u64 {
    if bound == 0 {
        return 0;
    }
    mix(seed, key, counter) % bound
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_is_pinned_because_replayed_logs_depend_on_it() {
        // If this changes, every committed jitter and ARI point changes on replay.
        assert_eq!(mix(0, b"", 0), 14_087_677_454_934_409_008);
        assert_eq!(mix(7, b"example.com", 3), mix(7, b"example.com", 3));
        assert_ne!(mix(7, b"example.com", 3), mix(7, b"example.com", 4));
        assert_ne!(mix(7, b"example.com", 3), mix(8, b"example.com", 3));
    }

    #[test]
    fn draws_stay_below_their_bound() {
        for counter in 0..1000 {
            assert!(draw_below(99, b"k", counter, 17) < 17);
        }
        assert_eq!(draw_below(99, b"k", 1, 0), 0);
    }

    #[test]
    fn time_arithmetic_saturates_instead_of_wrapping() {
        assert_eq!(UnixMillis::MAX.plus_ms(1), UnixMillis::MAX);
        assert_eq!(UnixMillis(5).minus_ms(10), UnixMillis::ZERO);
        assert_eq!(UnixMillis(5).ms_since(UnixMillis(10)), 0);
        assert_eq!(UnixMillis(15).ms_since(UnixMillis(10)), 5);
    }
}
