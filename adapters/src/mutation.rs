//! Simulation-only switches that put known bugs back (SIMULATION "A run", step 5), so a test
//! can show the simulator's invariants catch each one without editing code.
//!
//! In a normal build [`active`] is a constant `false` and every switch compiles away. Under
//! `--cfg madsim` the active mutation is per thread: madsim runs a whole simulated cluster on
//! the thread that calls `block_on`, and `cargo test` runs tests on parallel threads, so a
//! process-wide switch would leak from one test into another.

/// A known bug the simulator must catch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Mutation {
    /// `apply` accepts a step whatever its term: a deposed leader's progress lands (I2).
    SkipTermCheck,
    /// A leader that resumes a cycle places a new order instead of continuing the committed
    /// one (I1).
    NewOrderWhileOpen,
    /// The leader declares challenges ready without waiting for every member to apply them,
    /// and says nobody lagged (I7).
    ServeBeforeApplied,
    /// The CA's `Retry-After` is dropped before the core sees it (I9).
    IgnoreRetryAfter,
    /// The log store tells openraft an append is durable before it is synced, so a crash
    /// takes away entries the node acknowledged (I3, I4).
    AckUnsyncedWrites,
    /// A leader calls the CA without confirming, before each call, that it still leads in the
    /// cycle's term: a deposed leader calls with what it remembers (I9).
    SkipLeadershipCheck,
    /// For an account key rollover the leader aborts its cycle tasks instead of letting them
    /// stop at a safe point: one aborted between `newOrder` and the commit of the order's URL
    /// orders again under the same leader (I1; this session's first rollover driver, seed
    /// 50184).
    AbortCyclesForRollover,
}

impl Mutation {
    /// Every mutation.
    pub const ALL: [Self; 7] = [
        Self::SkipTermCheck,
        Self::NewOrderWhileOpen,
        Self::ServeBeforeApplied,
        Self::IgnoreRetryAfter,
        Self::AckUnsyncedWrites,
        Self::SkipLeadershipCheck,
        Self::AbortCyclesForRollover,
    ];

    /// The switch's name on the command line (`--mutation <name>`).
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::SkipTermCheck => "skip-term-check",
            Self::NewOrderWhileOpen => "new-order-while-open",
            Self::ServeBeforeApplied => "serve-before-applied",
            Self::IgnoreRetryAfter => "ignore-retry-after",
            Self::AckUnsyncedWrites => "ack-unsynced-writes",
            Self::SkipLeadershipCheck => "skip-leadership-check",
            Self::AbortCyclesForRollover => "abort-cycles-for-rollover",
        }
    }

    /// The mutation called `name`.
    #[must_use]
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }
}

#[cfg(madsim)]
thread_local! {
    static ACTIVE: std::cell::Cell<Option<Mutation>> = const { std::cell::Cell::new(None) };
}

/// Turns `mutation` on (or every mutation off) for simulations run on this thread.
#[cfg(madsim)]
pub fn set(mutation: Option<Mutation>) {
    ACTIVE.with(|active| active.set(mutation));
}

/// Whether `mutation` is on.
#[cfg(madsim)]
#[must_use]
pub fn active(mutation: Mutation) -> bool {
    ACTIVE.with(|active| active.get() == Some(mutation))
}

/// Whether `mutation` is on: never, outside the simulation.
#[cfg(not(madsim))]
#[must_use]
#[inline(always)]
pub const fn active(_mutation: Mutation) -> bool {
    false
}
