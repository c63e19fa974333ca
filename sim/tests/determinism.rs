//! I11: one seed, one trace. Runs a few seeds twice each, in processes of their own as the
//! runner does, and compares the whole output, trace included, byte for byte (CI runs a
//! 20-seed slice the same way and compares digests).
#![cfg(madsim)]

mod common;

#[test]
fn the_same_seed_gives_a_byte_identical_trace() {
    for seed in ["3", "11", "25"] {
        let first = common::sim(&["--seed", seed]);
        let second = common::sim(&["--seed", seed]);
        assert!(first.contains("\ndigest: "), "{first}");
        let differing: Vec<String> = first
            .lines()
            .zip(second.lines())
            .filter(|(a, b)| a != b)
            .take(6)
            .map(|(a, b)| format!("  {a}\n  {b}"))
            .collect();
        assert!(
            differing.is_empty(),
            "seed {seed}: the traces differ at\n{}",
            differing.join("\n")
        );
        assert_eq!(first, second);
    }
}

#[test]
fn a_seed_in_a_batch_gives_the_same_result_as_alone() {
    let batch = common::sim(&["--seeds", "3..6", "--jobs", "2"]);
    let alone = common::sim(&["--seed", "5", "--quiet"]);
    let line = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("seed 5 "))
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("no seed 5 line in:\n{text}"))
    };
    assert_eq!(line(&batch), line(&alone));
}
