//! Planner tick with nothing due, at 10k, 100k and 1M certificates (DESIGN §9: independent of
//! N, under 1 ms at 1M).
//!
//! Each state is built once, outside the timed region, by [`testing::populated_state`]: every
//! certificate is issued and its renewal point lies after `now`, so a tick should examine no
//! due-index entry and cost the same at every size (DESIGN §6, SIMULATION I13). The figure to
//! read is the ratio of the 1M time to the 10k time.
//!
//! Run with `cargo bench -p certfleet-bench --bench planner`. `cargo test --benches` runs it
//! once at 1k certificates as a smoke test.

use std::hint::black_box;
use std::time::{Duration, Instant};

use certfleet_core::{Term, UnixMillis, plan, testing};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

/// Certificate counts.
const SIZES: [usize; 3] = [10_000, 100_000, 1_000_000];
/// The size run under `cargo test --benches`.
const SMOKE_SIZE: usize = 1_000;
/// Leaf size in the state (the planner never reads leaves; kept realistic for memory layout).
const LEAF_LEN: usize = 1200;
/// The instant of every tick: the states' clock, before any renewal point.
const NOW: UnixMillis = UnixMillis(1_700_000_000_000);

/// One tick per iteration at each size.
fn tick_with_nothing_due(c: &mut Criterion) {
    let mut group = c.benchmark_group("planner/nothing_due");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50);
    for count in certfleet_bench::sizes(&SIZES, SMOKE_SIZE) {
        let built = Instant::now();
        let state = testing::populated_state(count, NOW, LEAF_LEN);
        eprintln!(
            "planner: built {count} certificates in {:.2?}",
            built.elapsed()
        );
        assert_eq!(state.cert_count(), count);
        // Precondition, outside timing: nothing is due, so the tick examines nothing.
        let tick = plan(&state, NOW, Term(1));
        assert!(
            tick.intents.is_empty(),
            "{count} certificates: intents {:?}",
            tick.intents
        );
        assert_eq!(
            tick.scanned, 0,
            "{count} certificates: the tick scanned the due index"
        );
        assert!(
            tick.wake_at.is_some_and(|at| at > NOW),
            "the next renewal point lies ahead"
        );
        group.bench_with_input(BenchmarkId::from_parameter(count), &state, |b, state| {
            b.iter(|| plan(black_box(state), black_box(NOW), Term(1)));
        });
        drop(state); // one state alive at a time: the 1M one holds about 2.6 GB
    }
    group.finish();
}

criterion_group!(benches, tick_with_nothing_due);
criterion_main!(benches);
