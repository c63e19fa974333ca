//! Buggify points (FoundationDB's BUGGIFY): places in the node where the simulation may
//! stretch time that real machines sometimes stretch, so that rare interleavings come up in
//! every batch instead of once a year.
//!
//! Off unless a simulation switches them on for a run ([`set`]); in a normal build every point
//! compiles to nothing. The switch is ours, not madsim's `buggify::enable`: that one also turns
//! on madsim's own points, among them a 1–5 s delay on 10 % of TCP connects, accepts and binds,
//! under which the cluster spends its runs electing leaders (thousands of terms per run, writes
//! timing out: see #4's notes). The draws come from madsim's seeded RNG and are made only when
//! the switch is on, so a run without buggify is the same run as before the points existed.
//! Like [`crate::mutation`], the switch is per thread: madsim runs a whole simulation on the
//! thread that calls `block_on`.

/// Where a point is, and how long it may stretch time there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Point {
    /// A CA response has arrived and the leader has not yet committed what it says (a slow
    /// leader: a GC pause, a busy core). The order exists at the CA while the log knows
    /// nothing of it; the leader may be deposed meanwhile.
    AfterCaCall,
    /// A Raft RPC has been handled and its reply not yet sent (a slow follower or a congested
    /// link, short of a partition).
    BeforeRpcReply,
    /// A member answers the leader's `WaitApplied` at once with what it has acknowledged so
    /// far, as if the acknowledgement were lost and the wait had timed out: the leader goes
    /// ahead counting the member as lagging (DESIGN §5 step 3).
    DropAppliedAck,
    /// A node sends its reply to an RPC twice (an acknowledgement duplicated): the caller's
    /// next call on that connection finds a stale reply ahead of its own.
    DuplicateReply,
}

impl Point {
    /// Chance that the point fires when reached, and the longest delay it adds.
    fn shape(self) -> (f64, u64) {
        match self {
            Self::AfterCaCall => (0.05, 3_000),
            Self::BeforeRpcReply => (0.002, 600),
            Self::DropAppliedAck => (0.02, 0),
            Self::DuplicateReply => (0.002, 0),
        }
    }
}

#[cfg(madsim)]
thread_local! {
    static ON: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Switches the buggify points on or off for simulations run on this thread.
#[cfg(madsim)]
pub fn set(on: bool) {
    ON.with(|cell| cell.set(on));
}

/// Under a simulation that switched buggify on, whether `point` fires this time (with its
/// chance); otherwise false.
#[must_use]
pub fn fires(point: Point) -> bool {
    let (chance, _) = point.shape();
    #[cfg(madsim)]
    if ON.with(std::cell::Cell::get) {
        use madsim::rand::Rng;
        return madsim::rand::thread_rng().gen_bool(chance);
    }
    let _ = chance;
    false
}

/// Under a simulation that switched buggify on, sometimes sleeps at `point`; otherwise
/// returns at once.
pub async fn delay(point: Point) {
    let (_, ms_max) = point.shape();
    if fires(point) {
        #[cfg(madsim)]
        {
            use madsim::rand::Rng;
            let ms = madsim::rand::thread_rng().gen_range(1..=ms_max.max(1));
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        }
    }
    let _ = ms_max;
}
