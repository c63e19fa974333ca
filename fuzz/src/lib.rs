//! Fuzzing support for certfleet-core: the oracles the targets in `fuzz_targets/` run, shared
//! with the corpus replay test that runs on stable in CI (see README.md).

pub mod checks;
