//! certfleet-bench: the DESIGN §9 benchmarks live in `benches/` (one file per figure); see
//! `README.md` for how to run them. Fixtures come from `certfleet_core::testing`; this library
//! holds only what the bench binaries share.

/// Whether this bench binary was started by `cargo bench` (which passes `--bench`) rather than
/// by `cargo test --benches`, which runs each bench once as a smoke test: then the benches use
/// their smallest sizes only, so a test run does not build million-certificate states.
#[must_use]
pub fn full_run() -> bool {
    std::env::args().any(|arg| arg == "--bench")
}

/// The sizes to measure: all of `sizes` under `cargo bench`, only `smoke` under `cargo test`.
#[must_use]
pub fn sizes(all: &[usize], smoke: usize) -> Vec<usize> {
    if full_run() {
        all.to_vec()
    } else {
        vec![smoke]
    }
}
