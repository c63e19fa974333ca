//! Heap bytes per certificate record (DESIGN §9: 1M certificates in under 4 GiB RSS per node).
//!
//! Not a criterion bench: a plain `main` that counts every allocation through a wrapper around
//! the system allocator, builds [`testing::populated_state`] at each size, and prints the live
//! heap bytes (and live allocations) it holds per certificate, divided out over `n`. The counted
//! bytes are what the program asked for; the RSS column adds the allocator's own overhead
//! (headers, size classes) and is approximate. The last column is the snapshot's bytes per
//! certificate.
//!
//! Run with `cargo bench -p certfleet-bench --bench memory`. Under `cargo test` (no `--bench`
//! argument) it runs one small size as a smoke test.

use std::alloc::System;
use std::time::Instant;

use certfleet_core::command::Failure;
use certfleet_core::model::IssuedCert;
use certfleet_core::snapshot::SnapshotWriter;
use certfleet_core::state::{AriState, CertRecord, OpenCycle};
use certfleet_core::{CertSpec, State, UnixMillis, testing};
use stats_alloc::{Region, StatsAlloc};

/// Every allocation of this process goes through the counter.
#[global_allocator]
static GLOBAL: StatsAlloc<System> = StatsAlloc::system();

/// Certificate counts measured by `cargo bench`.
const SIZES: [usize; 3] = [10_000, 100_000, 1_000_000];
/// The size measured under `cargo test`.
const SMOKE_SIZE: usize = 1_000;
/// Leaf size, DER (a typical ECDSA P-256 leaf).
const LEAF_LEN: usize = 1200;
/// The states' clock.
const NOW: UnixMillis = UnixMillis(1_700_000_000_000);
/// The writer's hand-off chunk, as in the snapshot bench.
const CHUNK_LEN: usize = 64 * 1024;

/// What one size measured.
struct Footprint {
    count: usize,
    heap_bytes: u64,
    allocations: u64,
    rss_bytes: Option<u64>,
    snapshot_bytes: u64,
    build_ms: u128,
}

fn main() {
    let sizes = certfleet_bench::sizes(&SIZES, SMOKE_SIZE);
    let rss_baseline = rss_bytes();
    println!(
        "memory per certificate record, leaf {LEAF_LEN} bytes DER, one shared 1200-byte intermediate"
    );
    // The record lives inline in the map's nodes; these are its largest parts.
    println!(
        "size_of: CertRecord {} = spec {} + open {} + current {} + last_failure {} + ari {} + the rest",
        size_of::<CertRecord>(),
        size_of::<CertSpec>(),
        size_of::<Option<Box<OpenCycle>>>(),
        size_of::<Option<IssuedCert>>(),
        size_of::<Option<Box<Failure>>>(),
        size_of::<Option<Box<AriState>>>(),
    );
    println!();
    println!(
        "{:>9} | {:>11} | {:>11} | {:>11} | {:>11} | {:>15} | {:>9}",
        "certs",
        "heap B/cert",
        "minus leaf",
        "allocs/cert",
        "~RSS B/cert",
        "snapshot B/cert",
        "build"
    );
    println!("{}", "-".repeat(99));
    for count in sizes {
        let footprint = measure(count, rss_baseline);
        let n = footprint.count as u64;
        let heap_per_cert = footprint.heap_bytes / n;
        let rss = footprint
            .rss_bytes
            .map_or_else(|| "n/a".to_owned(), |rss| (rss / n).to_string());
        println!(
            "{:>9} | {:>11} | {:>11} | {:>11.1} | {:>11} | {:>15} | {:>7}ms",
            footprint.count,
            heap_per_cert,
            heap_per_cert - LEAF_LEN as u64,
            footprint.allocations as f64 / n as f64,
            rss,
            footprint.snapshot_bytes / n,
            footprint.build_ms,
        );
        assert!(
            heap_per_cert >= LEAF_LEN as u64,
            "every record holds its leaf"
        );
    }
}

/// Builds a state of `count` certificates and measures what it holds.
fn measure(count: usize, rss_baseline: Option<u64>) -> Footprint {
    let region = Region::new(&GLOBAL);
    let started = Instant::now();
    let state = testing::populated_state(count, NOW, LEAF_LEN);
    let build_ms = started.elapsed().as_millis();
    let change = region.change();
    let heap_bytes = change
        .bytes_allocated
        .saturating_sub(change.bytes_deallocated) as u64;
    let allocations = change.allocations.saturating_sub(change.deallocations) as u64;
    // Sizes run in increasing order and each state is dropped before the next is built, so the
    // process's RSS is dominated by the state alive now.
    let rss = rss_bytes()
        .zip(rss_baseline)
        .map(|(now, base)| now.saturating_sub(base));
    assert_eq!(state.cert_count(), count);
    let snapshot_bytes = snapshot_len(&state);
    Footprint {
        count,
        heap_bytes,
        allocations,
        rss_bytes: rss,
        snapshot_bytes,
        build_ms,
    }
}

/// The length of `state`'s snapshot, streamed without holding it whole.
fn snapshot_len(state: &State) -> u64 {
    let mut writer = SnapshotWriter::new(state);
    let mut buf = Vec::with_capacity(2 * CHUNK_LEN);
    let mut total = 0u64;
    while writer.next_frame(&mut buf) {
        if buf.len() >= CHUNK_LEN {
            total += buf.len() as u64;
            buf.clear();
        }
    }
    total + buf.len() as u64
}

/// The process's resident set, from `/proc/self/statm` (Linux); `None` elsewhere.
fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}
