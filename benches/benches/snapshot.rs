//! Snapshot write and read at 100k and 1M certificates with ~1.2 KB leaves (DESIGN §9: build
//! plus install of 1M certificates under 10 s).
//!
//! * `snapshot/write`: [`SnapshotWriter::next_frame`] into one reused buffer, handed off (and
//!   cleared) every [`CHUNK_LEN`] bytes the way the Raft adapter streams it.
//! * `snapshot/read`: [`SnapshotReader::feed`] in [`CHUNK_LEN`] chunks, then
//!   [`SnapshotReader::finish`], which checks every CRC, the record order, each record's
//!   content and the footer digest. Dropping the rebuilt state is not timed.
//!
//! Throughput is snapshot bytes per second. One iteration at 1M takes seconds, so sampling is
//! flat with ten samples and a short measurement time.
//!
//! Run with `cargo bench -p certfleet-bench --bench snapshot`. `cargo test --benches` runs it
//! once at 1k certificates as a smoke test.

use std::hint::black_box;
use std::time::{Duration, Instant};

use certfleet_core::snapshot::{SnapshotReader, SnapshotWriter};
use certfleet_core::{State, UnixMillis, testing};
use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};

/// Certificate counts.
const SIZES: [usize; 2] = [100_000, 1_000_000];
/// The size run under `cargo test --benches`.
const SMOKE_SIZE: usize = 1_000;
/// Leaf size, DER (a typical ECDSA P-256 leaf).
const LEAF_LEN: usize = 1200;
/// The transport chunk: the writer hands off and the reader is fed this many bytes at a time.
const CHUNK_LEN: usize = 64 * 1024;
/// The states' clock.
const NOW: UnixMillis = UnixMillis(1_700_000_000_000);

/// Streams a whole snapshot of `state` through `buf`, clearing it every [`CHUNK_LEN`] bytes;
/// returns the snapshot's length.
fn write_snapshot(state: &State, buf: &mut Vec<u8>) -> u64 {
    let mut writer = SnapshotWriter::new(state);
    let mut total = 0u64;
    buf.clear();
    while writer.next_frame(buf) {
        if buf.len() >= CHUNK_LEN {
            total += buf.len() as u64;
            black_box(buf.as_slice());
            buf.clear();
        }
    }
    total += buf.len() as u64;
    black_box(buf.as_slice());
    buf.clear();
    total
}

/// Rebuilds a state from `bytes` fed in [`CHUNK_LEN`] chunks.
fn read_snapshot(bytes: &[u8]) -> State {
    let mut reader = SnapshotReader::new();
    for chunk in bytes.chunks(CHUNK_LEN) {
        reader.feed(chunk).expect("a snapshot we wrote reads back");
    }
    reader.finish().expect("a snapshot we wrote is complete")
}

/// Write and read at each size; one state (and one snapshot) alive at a time.
fn write_and_read(c: &mut Criterion) {
    let mut group = c.benchmark_group("snapshot");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(10));
    for count in certfleet_bench::sizes(&SIZES, SMOKE_SIZE) {
        let built = Instant::now();
        let state = testing::populated_state(count, NOW, LEAF_LEN);
        eprintln!(
            "snapshot: built {count} certificates in {:.2?}",
            built.elapsed()
        );
        let bytes = SnapshotWriter::to_vec(&state);
        let len = bytes.len() as u64;
        eprintln!(
            "snapshot: {count} certificates, {len} bytes, {} bytes per certificate",
            len / count as u64
        );
        // Precondition, outside timing: the snapshot reads back to the same state.
        assert_eq!(
            read_snapshot(&bytes).digest(),
            state.digest(),
            "round trip at {count}"
        );
        group.throughput(Throughput::Bytes(len));

        let mut buf = Vec::with_capacity(2 * CHUNK_LEN);
        group.bench_with_input(BenchmarkId::new("write", count), &state, |b, state| {
            b.iter(|| assert_eq!(write_snapshot(state, &mut buf), len));
        });
        drop(state);

        group.bench_with_input(BenchmarkId::new("read", count), &bytes, |b, bytes| {
            b.iter_custom(|iters| {
                let mut elapsed = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    let state = read_snapshot(bytes);
                    elapsed += start.elapsed();
                    assert_eq!(state.cert_count(), count);
                    drop(state); // outside timing
                }
                elapsed
            });
        });
    }
    group.finish();
}

criterion_group!(benches, write_and_read);
criterion_main!(benches);
