//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`) and every saved crash
//! (`fuzz/regressions/<target>/`) through the fuzz targets' own oracles, on the stable toolchain
//! and without cargo-fuzz, so CI catches a decoder or `apply` regression that a fuzzer once
//! found or that a seed exercises. See fuzz/README.md.
//!
//! The oracles are not copied: `fuzz/src/checks.rs` is compiled into this test as a module, so
//! the fuzz targets and this test can never check different things.

#![allow(
    clippy::disallowed_methods,
    reason = "the replay test reads the committed corpus files"
)]

use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use certfleet_core::Op;
use certfleet_core::command::decode;

#[allow(unreachable_pub, dead_code)]
#[path = "../../fuzz/src/checks.rs"]
mod checks;

#[test]
fn every_command_seed_and_regression_decodes_round_trips_and_applies_without_panicking() {
    replay("command_decode", checks::check_command);
}

#[test]
fn every_snapshot_seed_and_regression_reads_in_any_chunking_and_round_trips() {
    replay("snapshot_decode", checks::check_snapshot);
}

#[test]
fn the_command_corpus_holds_a_decodable_seed_for_every_op_variant() {
    let mut seen = [false; VARIANTS];
    for path in inputs("command_decode") {
        if let Ok(command) = decode(&read(&path)) {
            seen[variant(&command.op)] = true;
        }
    }
    let missing: Vec<usize> = (0..VARIANTS).filter(|i| !seen[*i]).collect();
    assert!(
        missing.is_empty(),
        "no seed for Op variants {missing:?}: add them to fuzz/examples/make_corpus.rs and rerun it"
    );
}

const VARIANTS: usize = 18;

/// Exhaustive on purpose: a new `Op` variant fails to compile here until it is given an index
/// (and then the test above asks for a seed of it).
fn variant(op: &Op) -> usize {
    match op {
        Op::PutCert { .. } => 0,
        Op::RemoveCert { .. } => 1,
        Op::SetAccount { .. } => 2,
        Op::SetPolicy { .. } => 3,
        Op::BeginOrder { .. } => 4,
        Op::ResumeOrder { .. } => 5,
        Op::OrderCreated { .. } => 6,
        Op::ChallengesPublished { .. } => 7,
        Op::KeyPrepared { .. } => 8,
        Op::Finalized { .. } => 9,
        Op::CertIssued { .. } => 10,
        Op::OrderFailed { .. } => 11,
        Op::RenewalInfoPolled { .. } => 12,
        Op::CertsDeferred { .. } => 13,
        Op::OrderDeferred { .. } => 14,
        Op::RollAccountKey { .. } => 15,
        Op::AccountKeyRolled { .. } => 16,
        Op::AccountKeyRolloverRefused { .. } => 17,
    }
}

/// Runs `check` on every input of `target`, reporting every failing file, not just the first.
fn replay(target: &str, check: fn(&[u8])) {
    let files = inputs(target);
    assert!(
        files.len() >= 10,
        "the committed corpus of {target} is missing or nearly empty: {files:?}"
    );
    let failures: Vec<String> = files
        .iter()
        .filter_map(|path| {
            let bytes = read(path);
            // The panic message itself is printed by the default hook, above the file name.
            panic::catch_unwind(AssertUnwindSafe(|| check(&bytes)))
                .err()
                .map(|_| format!("{} ({})", path.display(), hex(&bytes)))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} {target} inputs fail:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

/// The seed corpus and the saved crashes of a target, sorted; dot files (`.gitkeep`) skipped.
fn inputs(target: &str) -> Vec<PathBuf> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("fuzz");
    let mut files = Vec::new();
    for dir in [
        fuzz.join("corpus").join(target),
        fuzz.join("regressions").join(target),
    ] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry
                .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
                .path();
            let hidden = path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'));
            if path.is_file() && !hidden {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn hex(bytes: &[u8]) -> String {
    const SHOWN_MAX: usize = 256;
    let mut out: String = bytes
        .iter()
        .take(SHOWN_MAX)
        .map(|b| format!("{b:02x}"))
        .collect();
    if bytes.len() > SHOWN_MAX {
        out.push_str(&format!("… {} bytes", bytes.len()));
    }
    out
}
