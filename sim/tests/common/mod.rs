//! Running the seed runner from a test: every run in a process of its own, as the runner does
//! for a batch (see its docs for why a second run in one process would not replay a seed).

use std::process::Command;

/// The runner's standard output for `args` (its exit status is part of the output's lines).
pub(crate) fn sim(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_certfleet-sim"))
        .args(args)
        .output()
        .expect("the seed runner starts");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The `key=value` fields of the first line starting with `prefix`.
#[allow(
    dead_code,
    reason = "each test binary uses its own part of the helpers"
)]
pub(crate) fn fields(output: &str, prefix: &str) -> Vec<(String, String)> {
    output
        .lines()
        .find_map(|line| line.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?} in:\n{output}"))
        .split_whitespace()
        .filter_map(|f| f.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}
