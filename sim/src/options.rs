//! Seed → options: every parameter of a run comes from its seed (SIMULATION "A run", step 1).

use std::fmt;

use certfleet_core::time::mix;

/// The shape of one simulation run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimOptions {
    /// The seed (also madsim's).
    pub seed: u64,
    /// Raft voters: 3 or 5.
    pub voters: u64,
    /// Edge learners: 1 to 3.
    pub edges: u64,
    /// Certificate writes in the workload.
    pub writes: u64,
    /// Crash-and-restart faults during the workload.
    pub crashes: u64,
    /// Network clog faults during the workload.
    pub clogs: u64,
    /// Virtual milliseconds between log syncs on every node (writes in between die in a crash).
    pub sync_interval_ms: u64,
    /// Unsynced entries a crash keeps (a torn write), at most.
    pub torn_keep_max: usize,
}

impl SimOptions {
    /// The options of `seed`.
    #[must_use]
    pub fn from_seed(seed: u64) -> Self {
        let draw = |what: &[u8], bound: u64| mix(seed, what, 0) % bound;
        Self {
            seed,
            voters: if draw(b"voters", 2) == 0 { 3 } else { 5 },
            edges: 1 + draw(b"edges", 3),
            writes: 20 + draw(b"writes", 60),
            crashes: draw(b"crashes", 4),
            clogs: draw(b"clogs", 4),
            sync_interval_ms: 1 + draw(b"sync", 30),
            torn_keep_max: draw(b"torn", 3) as usize,
        }
    }
}

impl fmt::Display for SimOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed={} voters={} edges={} writes={} crashes={} clogs={} sync_ms={} torn_max={}",
            self.seed,
            self.voters,
            self.edges,
            self.writes,
            self.crashes,
            self.clogs,
            self.sync_interval_ms,
            self.torn_keep_max
        )
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
        }
        let shapes: std::collections::BTreeSet<(u64, u64)> = (0..100)
            .map(|s| {
                let o = SimOptions::from_seed(s);
                (o.voters, o.edges)
            })
            .collect();
        assert_eq!(shapes.len(), 6, "every topology appears");
    }
}
